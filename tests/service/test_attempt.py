"""An attempt resumes only a checkpoint its lineage wrote (by SHA-256), whatever the stores hold."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import threading
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from irnn_search.search.validate import load_spec
from irnn_search.service import attempt as attempt_module
from irnn_search.service.attempt import LAST_SHA256, Attempt
from irnn_search.service.studies import load_studies, open_studies
from irnn_search.service.worker import work
from irnn_search.tracking import TrackingError
from tests.service.test_search import _spec
from tests.test_train import plant_payload


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeStore:
    """The artifact store's side of ``Tracker`` that ``Attempt.prepare`` uses: one ``last.pt``."""

    retry_interval_s = 60.0

    def __init__(self, source: Path | None) -> None:
        self.source = source
        self.fetched = 0
        self.down_for = 0  # fetches that meet MLflow unreachable (``check`` fails meanwhile)
        self.checked = 0

    def check(self, *, timeout_s: float = 10.0) -> None:
        self.checked += 1
        if self.fetched <= self.down_for:
            raise TrackingError("cannot reach MLflow at http://mlflow:5000: connection refused")

    def fetch_checkpoint(self, run_id: str, artifact_dir: str, dest: str | Path) -> str | None:
        self.fetched += 1
        if self.source is None or self.fetched <= self.down_for:
            return None
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.source, Path(dest) / "last.pt")
        return run_id


def _checkpoints(tmp_path: Path, steps: tuple[int, ...]) -> list[Path]:
    """Real ``last.pt`` files of one tiny run, stopped after each number of steps."""
    from irnn_search.train import train
    from tests.test_train import _run

    out = []
    for n in steps:
        model, task, config = _run(steps=n)
        train(model, task, config, checkpoint_dir=tmp_path / "run")
        out.append(tmp_path / f"last-{n}.pt")
        shutil.copyfile(tmp_path / "run" / "last.pt", out[-1])
    return out


def _attempt(tmp_path: Path, store: FakeStore, written: list[str]) -> tuple[Attempt, Path]:
    spec = dataclasses.replace(load_spec(_spec(tmp_path)), warm_start=False)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="tiny.irnn")
    study.enqueue_trial({}, user_attrs={"lineage": 0, "mlflow_run_id": "run-0", f"{LAST_SHA256}0": written})
    attempt = Attempt(study.ask(), spec, "irnn", device="cpu", checkpoint_root=tmp_path / "c", tracker=store)  # type: ignore[arg-type]
    attempt.begin()
    return attempt, tmp_path / "c" / "tiny.irnn" / "trial-0" / "seed-0"


def test_a_planted_checkpoint_in_the_artifact_store_is_set_aside_unloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    planted, marker = tmp_path / "planted.pt", tmp_path / "ran"
    plant_payload(planted, marker)
    attempt, ckpt = _attempt(tmp_path, FakeStore(planted), ["0" * 64])
    with caplog.at_level(logging.WARNING):
        attempt.prepare(0, 0)
    assert not (ckpt / "last.pt").exists() and (ckpt / "last.pt.rejected").read_bytes() == planted.read_bytes()
    assert not marker.exists()
    assert "not one this trial wrote" in caplog.text and "restarts from step 0" in caplog.text


def test_a_resume_while_mlflow_restarts_waits_for_the_checkpoint_rather_than_restart_from_step_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the chaos soak: the artifact store is unreachable for the first fetches (a
    restarting MLflow server); the attempt waits and resumes the lineage's checkpoint."""
    monkeypatch.setattr(attempt_module, "FETCH_RETRY_S", 0.01)
    (new,) = _checkpoints(tmp_path, (20,))
    store = FakeStore(new)
    store.down_for = 3
    attempt, ckpt = _attempt(tmp_path, store, [_sha(new)])
    with caplog.at_level(logging.WARNING):
        attempt.prepare(0, 0)
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 20
    assert store.fetched == 4 and "waiting up to" in caplog.text and "restarts from step 0" not in caplog.text


def test_a_lineage_with_no_checkpoint_in_a_reachable_store_does_not_wait(tmp_path: Path) -> None:
    (new,) = _checkpoints(tmp_path, (20,))
    store = FakeStore(None)
    _attempt(tmp_path, store, [_sha(new)])[0].prepare(0, 0)
    assert store.fetched == 2 and store.checked == 1, "asked once, found reachable, asked once more"


def test_a_stale_local_checkpoint_gives_way_to_the_newer_one_in_the_artifact_store(tmp_path: Path) -> None:
    old, new = _checkpoints(tmp_path, (10, 20))
    attempt, ckpt = _attempt(tmp_path, FakeStore(new), [_sha(new), _sha(old)])
    ckpt.mkdir(parents=True)
    shutil.copyfile(old, ckpt / "last.pt")
    attempt.prepare(0, 0)
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 20


def test_the_newest_local_checkpoint_is_resumed_without_asking_the_artifact_store(tmp_path: Path) -> None:
    (new,) = _checkpoints(tmp_path, (10,))
    store = FakeStore(None)
    attempt, ckpt = _attempt(tmp_path, store, [_sha(new)])
    ckpt.mkdir(parents=True)
    shutil.copyfile(new, ckpt / "last.pt")
    attempt.prepare(0, 0)
    assert (ckpt / "last.pt").read_bytes() == new.read_bytes() and store.fetched == 0


def test_an_earlier_checkpoint_the_trial_wrote_is_resumed_when_the_newest_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = _checkpoints(tmp_path, (10, 20))
    attempt, ckpt = _attempt(tmp_path, FakeStore(old), [_sha(new), _sha(old)])
    with caplog.at_level(logging.WARNING):
        attempt.prepare(0, 0)
    assert torch.load(ckpt / "last.pt", weights_only=True)["step"] == 10
    assert "resumes from an earlier checkpoint (1 before the newest" in caplog.text


def test_a_corrupt_local_checkpoint_restarts_the_trial_and_the_lineage_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = dataclasses.replace(load_spec(_spec(tmp_path, steps=3000, trials=1, lr="1e-3", clip="1")), warm_start=False)
    studies = open_studies(spec, storage)
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    work({s.study_name: s for s in studies.values()}, checkpoint_root=tmp_path / "ckpt", stop=stop)
    first = studies["irnn"].trials[0]
    last = Path(first.user_attrs["checkpoint_dir"]) / "seed-0" / "last.pt"
    assert first.user_attrs["outcome"] == "interrupted" and first.user_attrs[f"{LAST_SHA256}0"][0] == _sha(last)
    last.write_bytes(last.read_bytes()[:200])  # torn (a full disk, a bad copy)
    with caplog.at_level(logging.WARNING):
        work(load_studies(storage), checkpoint_root=tmp_path / "ckpt", stop=threading.Event())
    retry = studies["irnn"].trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == first.number
    assert min(retry.intermediate_values) == 10  # started again from step 0
    assert "restarts from step 0" in caplog.text


def test_a_lineage_requeued_before_digests_existed_resumes_its_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An upgrade in the middle of a study: the re-queued trial has no recorded digests, because the
    # version that wrote its checkpoint recorded none. Its progress is kept (loaded as tensors only).
    from irnn_search.service.attempt import DIGESTS

    (ckpt_file,) = _checkpoints(tmp_path, (10,))
    spec = dataclasses.replace(load_spec(_spec(tmp_path)), warm_start=False)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="tiny.irnn")
    study.enqueue_trial({}, user_attrs={"lineage": 0, "retry_of": 0, "mlflow_run_id": "run-0"})
    trial = study.ask()
    attempt = Attempt(trial, spec, "irnn", device="cpu", checkpoint_root=tmp_path / "c", tracker=FakeStore(None))  # type: ignore[arg-type]
    attempt.begin()
    ckpt = tmp_path / "c" / "tiny.irnn" / "trial-0" / "seed-0"
    ckpt.mkdir(parents=True)
    shutil.copyfile(ckpt_file, ckpt / "last.pt")
    with caplog.at_level(logging.WARNING):
        attempt.prepare(0, 0)
    assert (ckpt / "last.pt").read_bytes() == ckpt_file.read_bytes()
    assert "predates checkpoint digests" in caplog.text
    assert trial.user_attrs[DIGESTS] == 1  # later attempts of this lineage check digests
