"""The report's test-split evaluation loads only the best checkpoint its trial wrote, as tensors."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import optuna
import pytest

from irnn_search.search.validate import load_spec
from irnn_search.service import attempt
from irnn_search.service.report import evaluate_best
from irnn_search.service.studies import open_studies
from irnn_search.service.worker import work
from tests.service.test_search import _spec
from tests.test_train import plant_payload


@pytest.fixture
def study_and_best(tmp_path: Path):  # type: ignore[no-untyped-def]
    spec = dataclasses.replace(load_spec(_spec(tmp_path, steps=20, trials=1)), warm_start=False)
    study = open_studies(spec, f"sqlite:///{tmp_path / 'optuna.db'}")["irnn"]
    work({study.study_name: study}, checkpoint_root=tmp_path / "ckpt", stop=threading.Event())
    (best,) = study.trials
    return study, Path(best.user_attrs["checkpoint_dir"]) / "seed-0" / "best.pt"


def test_the_best_checkpoint_written_is_evaluated_on_the_test_split(study_and_best) -> None:  # type: ignore[no-untyped-def]
    study, _ = study_and_best
    result = evaluate_best(study)
    assert result is not None and result["step"] in (10, 20) and "mse" in result["metrics"]


@pytest.mark.parametrize("digest_recorded", [True, False])
def test_a_planted_best_checkpoint_is_not_evaluated_and_never_runs(
    study_and_best,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    digest_recorded: bool,
) -> None:
    study, best = study_and_best
    if not digest_recorded:  # a trial of an older version: the loader alone must refuse it
        monkeypatch.setattr(attempt, "BEST_SHA256", "no_such_attr_seed")
    plant_payload(best, tmp_path / "ran")
    with caplog.at_level(logging.WARNING):
        assert evaluate_best(study) is None
    assert not (tmp_path / "ran").exists()
    assert ("SHA-256 differs" if digest_recorded else "was refused") in caplog.text


def test_the_cached_test_value_is_recomputed_when_the_best_trial_improved(study_and_best) -> None:  # type: ignore[no-untyped-def]
    # The adding study's report showed the test MSE of an LSTM's earlier best checkpoint after the
    # same trial had improved: the cache was keyed by trial only.
    study, _ = study_and_best
    first = evaluate_best(study)
    assert first is not None
    stale = {**first, "step": first["step"] - 10, "metrics": {"mse": 123.0, "loss": 123.0}}
    study.set_user_attr("test_eval", stale)  # what an evaluation of an earlier best left behind
    again = evaluate_best(study)
    assert again is not None and again["metrics"] == first["metrics"] and again["step"] == first["step"]


def test_a_configuration_trained_on_several_seeds_reports_its_spread(tmp_path: Path) -> None:
    """``seeds = [0, 1, 2]``: the best trial's value per seed is kept, and the report gives its
    mean, sample standard deviation and range: the error bar a comparison of models needs."""
    import statistics
    import threading

    from irnn_search.search.validate import load_spec
    from irnn_search.service.report import render, rows_for
    from irnn_search.service.studies import open_studies
    from irnn_search.service.worker import open_for_work, work
    from tests.service.test_search import _spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    path = _spec(tmp_path, trials=1, steps=20)
    path.write_text(
        path.read_text().replace("batch_size = 8\n", "batch_size = 8\nseeds = [0, 1, 2]\nwarm_start = false\n")
    )
    spec = load_spec(path)
    open_studies(spec, storage)
    studies, janitor = open_for_work(storage, None, heartbeat_s=1, grace_s=3)
    assert work(studies, checkpoint_root=tmp_path / "c", stop=threading.Event(), janitor=janitor) == 1

    (row,) = rows_for(spec, storage)
    assert sorted(row.seed_values) == [0, 1, 2]
    (trial,) = optuna.load_study(study_name=row.study, storage=storage).trials
    assert trial.value == pytest.approx(statistics.fmean(row.seed_values.values()))  # a trial's value: the mean
    assert len(set(row.seed_values.values())) == 3, "the seeds trained differently"
    md = render([row], "md", spec=spec)
    mean, sd = statistics.fmean(row.seed_values.values()), statistics.stdev(row.seed_values.values())
    assert f"over 3 seeds: {mean:.4g} ± {sd:.2g}" in md
