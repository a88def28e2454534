"""A task and a model family from another installed package (tests/plugin_pkg) work like built-ins.

The package is "installed" the way importlib.metadata sees any installed distribution: a
``*.dist-info`` folder (METADATA, entry_points.txt) in a sys.path folder, its entry points copied
from tests/plugin_pkg/pyproject.toml, and the package's source on sys.path.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from irnn_search import plugins
from irnn_search.cli import app
from irnn_search.models import MODELS, ModelError, model_class, model_names
from irnn_search.search.spec import SpecError
from irnn_search.search.validate import load_spec
from irnn_search.tasks import TASK_NAMES, TaskError, task_class, task_names

PLUGIN_PKG = Path(__file__).parent / "plugin_pkg"
runner = CliRunner()

SPEC = """
[study]
description = "a plugin task and a plugin family"
task = "recall"
task_options = { T = 5, val_size = 64 }
steps = 20
report_every = 10
batch_size = 8
pruner = { name = "none" }
budget = { trials = 2 }

[models.gru]
hidden_size = 8
lr = { low = 1e-3, high = 1e-2, log = true }

[models.irnn]
hidden_size = 8
"""


def _install(site: Path, entry_points: dict[str, dict[str, str]], name: str = "irnn-plugin-demo") -> None:
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True)
    dist.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    dist.joinpath("entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
            for group, eps in entry_points.items()
        )
    )


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    declared = tomllib.loads((PLUGIN_PKG / "pyproject.toml").read_text())["project"]["entry-points"]
    _install(tmp_path / "site", declared)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(PLUGIN_PKG))
    plugins.refresh()
    yield
    plugins.refresh()
    sys.modules.pop("irnn_plugin_demo", None)


def test_without_plugins_only_the_built_ins_are_listed() -> None:
    plugins.refresh()
    assert task_names() == TASK_NAMES and model_names() == tuple(MODELS)


@pytest.mark.usefixtures("plugin")
def test_a_plugin_task_and_family_are_listed_after_the_built_ins() -> None:
    assert task_names() == (*TASK_NAMES, "recall") and model_names() == (*MODELS, "gru")
    tasks = json.loads(runner.invoke(app, ["tasks", "--json"]).stdout)
    models = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    recall = next(t for t in tasks if t["name"] == "recall")
    assert recall["metric"] == "mae" and [o["name"] for o in recall["options"]] == ["T", "val_size"]
    gru = next(m for m in models if m["name"] == "gru")
    assert gru["description"].startswith("GRU") and gru["options"][0]["default"] == 32


@pytest.mark.usefixtures("plugin")
def test_a_spec_may_use_them_and_the_task_declares_its_metrics(tmp_path: Path) -> None:
    path = tmp_path / "plugged.toml"
    path.write_text(SPEC)
    spec = load_spec(path)
    # val_mae comes from RecallTask.metrics and its direction from RecallTask.direction: no table in
    # irnn_search knows "mae"
    assert spec.task == "recall" and spec.objective == "val_mae" and spec.direction == "minimize"
    assert spec.model("gru").family == "gru" and spec.model("irnn").family == "irnn"
    path.write_text(SPEC.replace("budget = { trials = 2 }", 'budget = { trials = 2 }\nobjective = "val_accuracy"'))
    with pytest.raises(SpecError, match="allowed: val_loss, val_mae"):
        load_spec(path)


@pytest.mark.usefixtures("plugin")
def test_train_runs_a_plugin_family_on_a_plugin_task() -> None:
    args = ["train", "--task", "recall", "--model", "gru", "-t", "T=5", "--hidden", "8", "--steps", "20", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "recall" and summary["model"] == "gru" and summary["outcome"] == "completed"
    assert summary["steps"] == 20 and summary["metric"] == "val_mae" and summary["baseline"]["mae"] == 0.5
    assert 0 <= summary["final"]["val_mae"] < 2


@pytest.mark.usefixtures("plugin")
def test_train_packed_refuses_a_family_without_a_packed_form_in_one_line() -> None:
    args = ["train", "--task", "recall", "--model", "gru", "-t", "T=5", "--hidden", "8", "--steps", "20", "--packed"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--packed" in errors[0] and "'gru' has no packed implementation" in errors[0]
    assert "drop --packed" in result.output


@pytest.mark.usefixtures("plugin")
def test_workers_train_and_report_them_and_an_unpacked_family_trains_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from irnn_search.service.report import render, rows_for
    from irnn_search.service.studies import load_studies, open_studies
    from irnn_search.service.worker import work

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = tmp_path / "plugged.toml"
    path.write_text(SPEC)
    spec = load_spec(path)
    open_studies(spec, storage)
    studies = load_studies(storage)
    with caplog.at_level(logging.WARNING, logger="irnn_search.service.worker"):
        ran = work(studies, checkpoint_root=tmp_path / "ckpt", stop=threading.Event(), pack=2)
    assert ran == 4
    assert "study plugged.gru trains one trial at a time: model family 'gru' has no packed implementation" in (
        caplog.text
    )
    done = [t for t in studies["plugged.gru"].trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and all(t.user_attrs["outcome"] == "complete" for t in done)
    rows = {r.model: r for r in rows_for(spec, storage)}
    assert rows["gru"].family == "gru" and rows["gru"].task == "recall" and rows["gru"].complete == 2
    assert "val_mae" in render(list(rows.values()), "md", spec=spec)


def test_a_broken_plugin_fails_alone_with_its_distribution_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(
        tmp_path,
        {
            "irnn_search.tasks": {"nowhere": "no_such_module:Task", "adding": "no_such_module:Task"},
            "irnn_search.models": {"misnamed": "irnn_search.models.irnn:IRNN", "notamodel": "json:dumps"},
        },
        name="broken-plugin",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.refresh()
    try:
        # a plugin cannot take a built-in's name; the built-in stays
        assert task_names().count("adding") == 1 and task_class("adding").__module__ == "irnn_search.tasks.adding"
        with pytest.raises(TaskError, match=r"task 'nowhere' \(no_such_module:Task, from broken-plugin 0.1.0\) cannot"):
            task_class("nowhere")
        with pytest.raises(ModelError, match="has family = 'irnn': it must equal the entry point's name"):
            model_class("misnamed")
        with pytest.raises(ModelError, match=r"is not a subclass of irnn_search\.models\.RecurrentModel"):
            model_class("notamodel")
        result = runner.invoke(app, ["tasks", "--json"])
        assert result.exit_code == 0 and "adding" in {t["name"] for t in json.loads(result.stdout)}
        assert "task 'nowhere'" in result.stderr
    finally:
        plugins.refresh()


def test_a_plugin_task_states_its_facts_like_a_built_in_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A plugin's smaller copy task: its class attributes alone make the warm start use the copy
    # settings published for its size (T = 200: the nnRNN ones) and keep copy results out of its report.
    from irnn_search.search.literature import published_results, select_published
    from irnn_search.search.validate import parse_spec
    from irnn_search.service.report import render

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tiny_copy.py").write_text(
        "from irnn_search.tasks.copy import CopyTask\n\n\n"
        "class TinyCopy(CopyTask):\n"
        '    name = "tiny-copy"\n'
        '    smoke_of = "copy"\n'
    )
    _install(tmp_path / "site", {"irnn_search.tasks": {"tiny-copy": "tiny_copy:TinyCopy"}}, name="tiny-copy")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    plugins.refresh()
    try:
        text = SPEC.replace('task = "recall"', 'task = "tiny-copy"').replace("T = 5, val_size = 64", "T = 200")
        spec = parse_spec(text.replace("[models.gru]", "[models.exprnn]"), default_name="tiny")
        assert spec.objective == "val_loss" and spec.direction == "minimize"
        refs = [p.ref for p in select_published(spec, "exprnn")]
        assert refs == ["nnr-copy-exprnn-128", "nnr-copy-exprnn-176"]
        assert published_results("tiny-copy", "exprnn") == []
        assert "a smoke task never borrows published numbers" in render([], "md", spec=spec)
    finally:
        plugins.refresh()
        sys.modules.pop("tiny_copy", None)
