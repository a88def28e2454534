"""An environmental failure (missing data, a device that does not exist) is refused before any trial
is spent: it never fails a trial, counts against a budget or consumes a queued published-settings
trial (issue 17, item 14)."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from irnn_search.cli import app
from irnn_search.search.validate import load_spec
from irnn_search.service.attempt import UNFIT
from irnn_search.service.budget import usage
from irnn_search.service.studies import open_studies
from irnn_search.service.worker import work

SPEC = """
[study]
description = "test: digits-smoke without its data"
task = "digits-smoke"
task_options = {{ {options} }}
steps = 4
report_every = 2
batch_size = 8
seeds = [0]
pruner = {{ name = "none" }}
budget = {{ trials = 3 }}

[models.irnn]
hidden_size = 4
optimizer = "adam"
lr = {{ low = 1e-3, high = 1e-2, log = true }}
clip = 1
identity_scale = {{ low = 0.1, high = 1.0 }}
"""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI", "IRNN_SEARCH_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _spec(tmp_path: Path, options: str) -> Path:
    path = tmp_path / "nodata.toml"
    path.write_text(SPEC.format(options=options))
    return path


def _no_study_created(home: Path) -> bool:
    db = home / "optuna.db"
    return not db.exists() or not optuna.get_all_study_summaries(f"sqlite:///{db}")


def test_launch_without_the_data_is_one_line_exit_2_and_creates_no_trial(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("IRNN_SEARCH_DATA_DIR", str(empty))
    result = CliRunner().invoke(app, ["launch", str(_spec(tmp_path, "")), "--workers", "2"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "t10k-images-idx3-ubyte" in result.output and str(empty) in result.output
    assert _no_study_created(home)


def test_launch_offline_with_an_empty_cache_is_one_line_exit_2_and_creates_no_trial(tmp_path: Path, home: Path) -> None:
    options = f'cache_dir = "{tmp_path / "cache"}", mirrors = ["http://127.0.0.1:9/"]'
    result = CliRunner().invoke(app, ["launch", str(_spec(tmp_path, options)), "--no-track"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "could not download" in result.output and "127.0.0.1:9" in result.output
    assert _no_study_created(home)


def test_launch_on_a_device_that_does_not_exist_is_refused_before_any_trial(tmp_path: Path, home: Path) -> None:
    result = CliRunner().invoke(app, ["launch", str(_spec(tmp_path, "")), "--device", "cuda:99"])
    assert result.exit_code == 2 and "cuda:99" in result.output, result.output
    assert _no_study_created(home)


def test_a_worker_without_the_data_releases_the_trial_and_stops_taking_the_study(tmp_path: Path) -> None:
    """What slips past the checks at start (the data removed meanwhile) releases the trial: it is
    re-queued, the budget and the queued published settings are untouched, and the worker does
    not fail the study's trials one by one."""
    empty = tmp_path / "empty"
    empty.mkdir()
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = load_spec(_spec(tmp_path, f'data_dir = "{empty}"'))
    (study,) = open_studies(spec, storage).values()
    queued = [t.params for t in study.trials if t.state == TrialState.WAITING]
    assert queued, "the published settings are queued first"

    ran = work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=threading.Event())

    trials = study.get_trials(deepcopy=False)
    assert ran == 1, [(t.number, t.state.name, t.user_attrs.get("outcome")) for t in trials]
    (released,) = [t for t in trials if t.state == TrialState.FAIL]
    assert released.user_attrs["outcome"] == "interrupted" and "t10k-images" in released.user_attrs[UNFIT]
    assert usage(study).finished == 0  # nothing counted against the budget
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(map(str, (t.params for t in waiting))) == sorted(map(str, queued))  # none consumed
    assert all(t.user_attrs.get("source") == "published" for t in waiting)
    again = [t for t in waiting if t.user_attrs.get("retry_of") == released.number]
    assert len(again) == 1 and UNFIT not in again[0].user_attrs


def test_a_worker_that_can_run_none_of_its_studies_says_why_once_and_exits_2(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(app, ["launch", str(_spec(tmp_path, "")), "--no-run", "--no-track"]).exit_code == 0
    monkeypatch.setenv("IRNN_SEARCH_DATA_DIR", str(empty))
    result = CliRunner().invoke(app, ["worker", "--no-track"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "t10k-images" in result.output, result.output
    study = optuna.load_study(study_name="nodata.irnn", storage=f"sqlite:///{home / 'optuna.db'}")
    assert all(t.state == TrialState.WAITING for t in study.trials)


# -- sizes (issue 17, item 3) -------------------------------------------------------------------
def test_train_with_a_sequence_that_cannot_fit_is_refused_up_front_in_one_line() -> None:
    result = CliRunner().invoke(app, ["train", "--T", "10000000", "--steps", "2"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--T = 10,000,000" in lines[0] and "GB" in lines[0], result.output


def test_launch_with_a_hidden_size_that_cannot_fit_names_the_key_and_creates_nothing(
    tmp_path: Path, home: Path
) -> None:
    spec = tmp_path / "huge.toml"
    text = (
        SPEC.format(options="")
        .replace('"digits-smoke"', '"adding"')
        .replace("hidden_size = 4", "hidden_size = 1000000")
    )
    spec.write_text(text)
    result = CliRunner().invoke(app, ["launch", str(spec), "--no-track"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "models.irnn.hidden_size = 1,000,000" in lines[0] and "GB" in lines[0], result.output
    assert _no_study_created(home)


def test_the_estimate_grows_with_each_size_and_the_built_in_specs_fit_4_gb(monkeypatch: pytest.MonkeyPatch) -> None:
    from irnn_search.bundled import builtin_specs
    from irnn_search.service import preflight

    base = {"hidden": 100, "seq_len": 1000, "batch": 16, "input_size": 2, "output_size": 1}
    act, rest = preflight.trial_bytes("irnn", **base)
    assert act == 1000 * 16 * 100 * 4 * preflight.ACTIVATION_FLOATS["irnn"]
    for key in ("hidden", "seq_len", "batch"):
        assert sum(preflight.trial_bytes("irnn", **{**base, key: base[key] * 10})) > act + rest
    assert preflight.trial_bytes("lstm", **base)[0] > act  # four gates and a cell
    monkeypatch.setattr(preflight, "device_memory", lambda device: (4 * 10**9, "4 GB"))
    for name, path in builtin_specs().items():
        assert preflight.spec_memory_problem(load_spec(path), "cpu") is None, name
