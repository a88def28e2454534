"""``service.status``: what ``status`` and a launch's progress table show, as data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from irnn_search.search.validate import load_spec
from irnn_search.service.ledger import Ledger
from irnn_search.service.status import StorageUnreadable, progress, published_progress, status_data
from irnn_search.service.storage import DEVICE_S
from irnn_search.service.studies import open_studies
from tests.service.test_search import _spec


@pytest.fixture
def storage(tmp_path: Path) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _finish(study: optuna.Study, n: int, *, device_s: float) -> None:
    for _ in range(n):
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1, user_attrs={DEVICE_S: device_s}))


def test_the_eta_is_the_trials_left_at_the_pace_so_far_shared_by_the_workers(tmp_path: Path, storage: str) -> None:
    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=10)), warm_start=False)
    studies = open_studies(spec, storage)
    (p,) = progress(spec, studies, workers=2)
    assert (p.model, p.budget, p.trials_left) == ("irnn", 10, None)  # nothing finished: no pace yet

    _finish(studies["irnn"], 4, device_s=90.0)
    (p,) = progress(spec, studies, workers=2)
    assert p.usage.finished == 4 and p.trials_left == 6
    assert p.eta_min == pytest.approx(6 * 90.0 / 2 / 60)  # 6 trials of 90 s, on 2 workers: 4.5 min

    _finish(studies["irnn"], 6, device_s=90.0)
    (p,) = progress(spec, studies, workers=2)
    assert p.trials_left == 0


def test_published_settings_are_counted_once_and_still_to_run_until_they_ran(tmp_path: Path, storage: str) -> None:
    studies = open_studies(load_spec(_spec(tmp_path)), storage)
    queued = len(studies["irnn"].trials)
    assert queued >= 1
    assert published_progress(studies) == (queued, queued)


def test_status_lists_the_studies_and_asks_the_ledger_only_when_there_are_some(tmp_path: Path, storage: str) -> None:
    def no_ledger() -> Ledger | None:
        raise AssertionError("the ledger is not opened for an empty storage")

    assert status_data(storage, ledger=no_ledger) == {"studies": [], "workers": None}

    open_studies(load_spec(_spec(tmp_path)), storage)
    data = status_data(storage, ledger=lambda: None)  # our database cannot be opened: no workers shown
    (row,) = data["studies"]
    assert (row["study"], row["model"], row["complete"], row["best"]) == ("tiny.irnn", "irnn", 0, None)
    assert data["workers"] is None

    ledger = Ledger(f"sqlite:///{tmp_path / 'irnn.db'}", auto_upgrade=True)
    worker = ledger.start_worker("cpu")
    try:
        (w,) = status_data(storage, ledger=lambda: ledger)["workers"] or []
        assert (w["id"], w["device"], w["study"]) == (worker, "cpu", None)
    finally:
        ledger.stop_worker(worker)


def test_an_unreadable_storage_is_one_error_holding_the_drivers(tmp_path: Path) -> None:
    with pytest.raises(StorageUnreadable) as caught:
        status_data(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'optuna.db'}", ledger=lambda: None)
    assert caught.value.cause is caught.value.__cause__
    assert str(caught.value) == str(caught.value.cause)
