"""A trial re-run alone (``service.rerun.rerun_alone``, what the pruning audit and the reproduce
check train) retraces it: an unpacked trial with the ordinary loop, a trial trained in a pack
through the packed path as a pack of one (``irnn-search train --packed``), bit for bit."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from irnn_search.search.spec import StudySpec
from irnn_search.search.validate import load_spec
from irnn_search.service.rerun import rerun_alone
from irnn_search.service.studies import open_studies
from irnn_search.service.worker import work

SPEC = """
[study]
description = "test: re-run a trial alone"
task = "adding"
task_options = { T = 10, val_size = 64, test_size = 64 }
steps = 40
report_every = 10
batch_size = 8
pruner = { name = "none" }
budget = { trials = 2 }
warm_start = false

[models.irnn]
hidden_size = 8
optimizer = "adam"
lr = { low = 1e-3, high = 1e-2, log = true }
clip = 1
"""


def _searched(tmp_path: Path, text: str, pack: int = 1) -> tuple[StudySpec, optuna.Study, list[FrozenTrial]]:
    """The spec ``text``, its IRNN study run to its budget by one worker (``pack``), and its
    complete trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "spec.toml"
    path.write_text(text)
    spec = load_spec(path)
    study = open_studies(spec, f"sqlite:///{tmp_path / 'optuna.db'}", None)["irnn"]
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=threading.Event(), pack=pack)
    return spec, study, [t for t in study.trials if t.state == TrialState.COMPLETE]


def test_a_trial_rerun_alone_reaches_its_value_and_another_seed_does_not(tmp_path: Path) -> None:
    spec, _, done = _searched(tmp_path, SPEC)
    assert len(done) == 2 and done[0].params["lr"] != done[1].params["lr"]
    for t in done:
        result = rerun_alone(spec, "irnn", t.params)
        assert result.best["val_mse"] == pytest.approx(t.value, rel=1e-6)
        assert {int(h["step"]): h["val_mse"] for h in result.history} == pytest.approx(t.intermediate_values, rel=1e-6)
    other = rerun_alone(spec, "irnn", done[0].params, seed=7)
    assert other.best["val_mse"] != pytest.approx(done[0].value, rel=1e-6)


PACKED_SPEC = SPEC.replace("budget = { trials = 2 }", "budget = { trials = 3 }").replace(
    'optimizer = "adam"', 'optimizer = ["adam", "rmsprop"]'
)


def test_a_packed_trial_rerun_as_a_pack_of_one_retraces_it_bit_for_bit(tmp_path: Path) -> None:
    # Three trials with different hyperparameters share one pack; each re-run alone as a pack of one
    # lands on exactly the values it reported in the pack (on CPU a member's arithmetic does not
    # depend on its pack), and so does its reproduce line from the report, run as a user would.
    import json
    import shlex

    from typer.testing import CliRunner

    from irnn_search.cli import app
    from irnn_search.service.report import model_row

    spec, study, done = _searched(tmp_path, PACKED_SPEC, pack=3)
    assert len(done) == 3 and all(t.user_attrs.get("pack_slots") == 3 for t in done)
    assert len({(t.params["optimizer"], t.params["lr"]) for t in done}) == 3
    for t in done:
        result = rerun_alone(spec, "irnn", t.params, packed=True)
        assert {int(h["step"]): h["val_mse"] for h in result.history} == t.intermediate_values
        assert result.best["val_mse"] == t.value
    row = model_row(study)
    assert row.reproduce is not None and row.reproduce.endswith(" --packed")
    again = CliRunner().invoke(app, [*shlex.split(row.reproduce)[1:], "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["best"]["val_mse"] == row.best_value
