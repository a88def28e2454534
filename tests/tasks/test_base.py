"""The facts every task class states about itself (what specs, warm starts and reports read)."""

from __future__ import annotations

import dataclasses

import pytest

from irnn_search.tasks import TASK_NAMES, Task, task_class


@pytest.mark.parametrize("name", TASK_NAMES)
def test_the_size_option_is_an_option_of_the_task(name: str) -> None:
    cls = task_class(name)
    if cls.size_option is not None:
        assert cls.size_option in {f.name for f in dataclasses.fields(cls.config_cls)}


def test_sized_and_smoke_tasks_are_the_ones_the_literature_needs() -> None:
    sized = {name: task_class(name).size_option for name in TASK_NAMES if task_class(name).size_option}
    assert sized == {"adding": "T", "copy": "T", "ptb": "bptt", "ptb-smoke": "bptt"}
    smoke = {name: task_class(name).smoke_of for name in TASK_NAMES if task_class(name).smoke_of}
    assert smoke == {"digits-smoke": "smnist", "digits-smoke-permuted": "pmnist", "ptb-smoke": "ptb"}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_smoke_task_shrinks_a_real_task_that_reports_the_same_metrics(name: str) -> None:
    cls = task_class(name)
    if cls.smoke_of is None:
        return
    real = task_class(cls.smoke_of)
    assert real.smoke_of is None
    assert (real.metric, real.direction, real.reported_metrics()) == (cls.metric, cls.direction, cls.reported_metrics())


def test_metric_direction_common_names_then_the_primary_metric_else_unknown() -> None:
    class Recall(Task):  # only the class attributes matter here
        name = "recall"
        metric = "mae"
        direction = "minimize"

    assert Recall.reported_metrics() == ("loss", "mae")
    assert Recall.metric_direction("mae") == "minimize"
    assert Recall.metric_direction("loss") == "minimize"
    assert Recall.metric_direction("accuracy") == "maximize"
    assert Recall.metric_direction("f1") is None
    assert task_class("copy").metric_direction("accuracy") == "maximize"
    assert task_class("ptb").metric_direction("bpc") == "minimize"
