"""The MLflow tracking module against a real embedded SQLite store (no server, no mocks)."""

from __future__ import annotations

import json
import logging
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from irnn_search.masking import mask_secrets
from irnn_search.tracking import OUTCOME_STATUS, Tracker, TrackingError

SPEC = {"name": "adding-smoke", "task": {"name": "adding", "T": 50}, "budget": {"trials": 4}, "lr": [1e-4, 1e-2]}


@pytest.fixture(scope="module", autouse=True)
def _no_telemetry() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tracker(uri: str) -> Tracker:
    # One store for the whole file: MLflow migrates a fresh SQLite schema on first use (seconds).
    return Tracker(uri, None)


@pytest.fixture(scope="module")
def client(uri: str, tracker: Tracker) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def parent(tracker: Tracker) -> tuple[str, str]:
    """(experiment id, parent run id) of a study shared by the tests that need children."""
    experiment_id = tracker.experiment("copy")
    run_id = tracker.parent_run(
        experiment_id=experiment_id,
        study_name="copy-smoke.irnn",
        task="copy",
        model="irnn",
        family="irnn",
        spec=SPEC,
        launch_id=1,
    )
    return experiment_id, run_id


def _trial(tracker: Tracker, parent: tuple[str, str], number: int, **kwargs: Any) -> str:
    experiment_id, parent_run_id = parent
    return tracker.trial_run(
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        study_name="copy-smoke.irnn",
        trial_number=number,
        params=kwargs.pop("params", {"lr": 0.001}),
        **kwargs,
    )


def _png(path: Path) -> Path:
    """A valid 1x1 grey PNG, written without matplotlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )
    return path


def test_one_experiment_per_task_created_once_with_artifacts_beside_the_database(
    tracker: Tracker, uri: str, home: Path, client: MlflowClient
) -> None:
    first = tracker.experiment("adding")
    assert tracker.experiment("adding") == first
    # A second process (here: a second tracker with an empty cache) finds the same experiment.
    assert Tracker(uri, None).experiment("adding") == first
    assert tracker.experiment("smnist") != first

    experiment = client.get_experiment(first)
    assert experiment.name == "irnn-search/adding"
    assert experiment.artifact_location == (home / "mlartifacts" / "adding").as_uri()
    assert [e.name for e in client.search_experiments()].count("irnn-search/adding") == 1


def test_experiment_refuses_a_task_name_that_is_not_a_plain_name(tracker: Tracker) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        tracker.experiment("../adding")


def test_parent_run_is_idempotent_and_stores_the_spec(tracker: Tracker, uri: str, client: MlflowClient) -> None:
    experiment_id = tracker.experiment("adding")
    kwargs: dict[str, Any] = dict(
        experiment_id=experiment_id,
        study_name="adding-smoke.lstm",
        task="adding",
        model="lstm",
        family="lstm",
        spec=SPEC,
        launch_id=7,
    )
    run_id = tracker.parent_run(**kwargs)
    assert tracker.parent_run(**kwargs) == run_id
    assert Tracker(uri, None).parent_run(**kwargs) == run_id

    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "adding-smoke.lstm"
    assert {k: v for k, v in run.data.tags.items() if k.startswith("irnn.")} == {
        "irnn.study": "adding-smoke.lstm",
        "irnn.role": "study",
        "irnn.task": "adding",
        "irnn.model": "lstm",
        "irnn.family": "lstm",
        "irnn.launch_id": "7",
    }
    assert [a.path for a in client.list_artifacts(run_id)] == ["spec.json"]
    assert json.loads(Path(client.download_artifacts(run_id, "spec.json")).read_text()) == SPEC
    found = client.search_runs([experiment_id], "tags.`irnn.study` = 'adding-smoke.lstm'")
    assert [r.info.run_id for r in found] == [run_id]

    tracker.finish_parent(run_id)
    assert client.get_run(run_id).info.status == "FINISHED"
    # The study got more work (a later launch with a larger budget): the same run is reopened.
    assert tracker.parent_run(**kwargs) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    tracker.finish_parent(run_id, status="FINISHED")
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        tracker.finish_parent(run_id, status="DONE")


def test_trial_run_is_a_child_with_params_and_linking_tags(
    tracker: Tracker, parent: tuple[str, str], client: MlflowClient
) -> None:
    experiment_id, parent_run_id = parent
    params = {"lr": 0.00125, "clip": None, "optimizer": "rmsprop", "hidden": 100, "identity_scale": 1.0}
    first = _trial(tracker, parent, 3, params=params, tags={"irnn.published": True})
    resumed = _trial(tracker, parent, 5, params=params, resumed_from=first)

    run = client.get_run(first)
    assert run.info.experiment_id == experiment_id
    assert run.info.run_name == "irnn-trial-3"
    assert run.data.params == {
        "lr": "0.00125",
        "clip": "none",
        "optimizer": "rmsprop",
        "hidden": "100",
        "identity_scale": "1.0",
    }
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent_run_id
    assert (tags["irnn.study"], tags["irnn.trial"], tags["irnn.role"]) == ("copy-smoke.irnn", "3", "trial")
    assert (tags["irnn.model"], tags["irnn.task"], tags["irnn.family"]) == ("irnn", "copy", "irnn")
    assert tags["irnn.published"] == "True"
    assert "irnn.resumed_from" not in tags

    assert client.get_run(resumed).data.tags["irnn.resumed_from"] == first
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    assert {first, resumed} <= {r.info.run_id for r in children}
    for run_id in (first, resumed):
        tracker.end_run(run_id, "complete")


def test_trial_run_whose_params_are_refused_raises_and_is_not_left_running(
    tracker: Tracker, parent: tuple[str, str], client: MlflowClient
) -> None:
    experiment_id, parent_run_id = parent
    with pytest.raises(TrackingError, match="params of trial 9"):
        _trial(tracker, parent, 9, params={"lr (log)": 0.1})  # MLflow refuses parentheses in a key
    failed = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' AND tags.`irnn.trial` = '9'"
    )
    assert [r.info.status for r in failed] == ["FAILED"]


def test_metrics_are_logged_with_their_steps(tracker: Tracker, parent: tuple[str, str], client: MlflowClient) -> None:
    run_id = _trial(tracker, parent, 10)
    for step, loss in [(0, 0.5), (100, 0.25), (200, 0.125)]:
        tracker.log_metrics(run_id, step, {"val_loss": loss, "train_loss": 2 * loss})
    assert tracker.buffered == 0

    history = client.get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (100, 0.25), (200, 0.125)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [
        (0, 1.0),
        (100, 0.5),
        (200, 0.25),
    ]
    tracker.end_run(run_id, "complete")


def test_a_nonfinite_metric_is_skipped_and_named_in_a_tag(
    tracker: Tracker, parent: tuple[str, str], client: MlflowClient
) -> None:
    run_id = _trial(tracker, parent, 11)
    tracker.log_metrics(run_id, 0, {"val_loss": 1.0, "grad_norm": 3.0})
    tracker.log_metrics(run_id, 10, {"val_loss": float("nan"), "grad_norm": float("inf")})
    tracker.log_metrics(run_id, 20, {"val_loss": float("nan"), "train_loss": float("-inf")})

    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")] == [(0, 1.0)]
    assert [m.step for m in client.get_metric_history(run_id, "grad_norm")] == [0]
    assert client.get_metric_history(run_id, "train_loss") == []
    run = client.get_run(run_id)
    assert run.data.tags["irnn.nonfinite_metrics"] == "grad_norm,train_loss,val_loss"
    tracker.end_run(run_id, "diverged", "loss is nan at step 10")
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["irnn.outcome"]) == ("FINISHED", "diverged")
    assert run.data.tags["irnn.reason"] == "loss is nan at step 10"


def test_artifacts_config_plot_and_checkpoint_are_stored_under_the_run(
    tracker: Tracker, parent: tuple[str, str], client: MlflowClient, home: Path, tmp_path: Path
) -> None:
    run_id = _trial(tracker, parent, 12)
    png = _png(tmp_path / "learning_curve.png")
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"\x00checkpoint\x01")
    config = {"model": {"family": "irnn", "hidden": 100}, "lr": 0.001, "data_dir": tmp_path}
    tracker.log_artifacts(run_id, config=config, files=[png], checkpoint=checkpoint)

    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["checkpoints", "config.json", "learning_curve.png"]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]
    stored = json.loads(Path(client.download_artifacts(run_id, "config.json")).read_text())
    assert stored == {"model": {"family": "irnn", "hidden": 100}, "lr": 0.001, "data_dir": str(tmp_path)}
    # The files really are in the folder beside the database, under the task's experiment.
    run_folder = home / "mlartifacts" / "copy" / run_id / "artifacts"
    assert (run_folder / "learning_curve.png").read_bytes() == png.read_bytes()
    assert (run_folder / "checkpoints" / "best.pt").read_bytes() == checkpoint.read_bytes()

    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        tracker.log_artifacts(run_id, files=[tmp_path / "missing.png"])
    tracker.end_run(run_id, "complete")


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("complete", "FINISHED"),
        ("completed", "FINISHED"),
        ("stopped", "FINISHED"),
        ("pruned", "FINISHED"),
        ("diverged", "FINISHED"),
        ("failed", "FAILED"),
        ("interrupted", "KILLED"),
        ("killed", "KILLED"),
    ],
)
def test_end_run_maps_each_outcome_to_its_status_and_tags_it(
    tracker: Tracker, parent: tuple[str, str], client: MlflowClient, outcome: str, status: str
) -> None:
    assert OUTCOME_STATUS[outcome] == status
    run_id = _trial(tracker, parent, 20)
    tracker.end_run(run_id, outcome, reason=f"{outcome} at step 300")
    run = client.get_run(run_id)
    assert run.info.status == status
    assert run.info.end_time is not None
    assert (run.data.tags["irnn.outcome"], run.data.tags["irnn.reason"]) == (outcome, f"{outcome} at step 300")


def test_end_run_refuses_an_unknown_outcome_and_lists_the_valid_ones(
    tracker: Tracker, parent: tuple[str, str], client: MlflowClient
) -> None:
    run_id = _trial(tracker, parent, 21)
    with pytest.raises(ValueError, match=r"unknown outcome 'succeeded'; valid: complete, .*pruned"):
        tracker.end_run(run_id, "succeeded")
    assert client.get_run(run_id).info.status == "RUNNING"
    tracker.end_run(run_id, "complete")


def test_sweep_ends_every_running_child_as_killed(tracker: Tracker, uri: str, client: MlflowClient) -> None:
    experiment_id = tracker.experiment("pmnist")
    parent_run_id = tracker.parent_run(
        experiment_id=experiment_id,
        study_name="pmnist.lstm",
        task="pmnist",
        model="lstm",
        family="lstm",
        spec=SPEC,
        launch_id=None,
    )
    assert "irnn.launch_id" not in client.get_run(parent_run_id).data.tags

    def child(number: int) -> str:
        return tracker.trial_run(
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            study_name="pmnist.lstm",
            trial_number=number,
            params={},
        )

    done, dead_a, dead_b, alive = (child(n) for n in range(4))
    tracker.end_run(done, "complete")

    swept = Tracker(uri, None).sweep(parent_run_id, keep={alive})
    assert sorted(swept) == sorted([dead_a, dead_b])
    assert client.get_run(alive).info.status == "RUNNING"
    assert tracker.sweep(parent_run_id) == [alive]

    running = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' AND attributes.status = 'RUNNING'"
    )
    assert running == []
    statuses = {r.info.run_id: r.info.status for r in client.search_runs([experiment_id], "")}
    assert statuses[done] == "FINISHED"
    assert statuses[dead_a] == statuses[dead_b] == statuses[alive] == "KILLED"
    assert client.get_run(dead_a).data.tags["irnn.outcome"] == "killed"
    assert statuses[parent_run_id] == "RUNNING"  # the sweep leaves the parent to finish_parent
    assert tracker.sweep(parent_run_id) == []


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("postgresql+psycopg://irnn:s3cret@db:5432/mlflow", "postgresql+psycopg://irnn:***@db:5432/mlflow"),
        ("http://alice:p@ss:w/rd@mlflow.lan:5000", "http://alice:***@mlflow.lan:5000"),
        ("https://mlflow.lan/path?user=a&password=hunter2&x=1", "https://mlflow.lan/path?user=a&password=***&x=1"),
        ("sqlite:////tmp/state/mlflow.db", "sqlite:////tmp/state/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        (
            "API request to http://bob:pw@host:5000/api/2.0/mlflow/runs/log-batch failed",
            "API request to http://bob:***@host:5000/api/2.0/mlflow/runs/log-batch failed",
        ),
    ],
)
def test_mask_uri_hides_passwords(raw: str, masked: str) -> None:
    assert mask_secrets(raw) == masked


def test_a_refused_metric_is_dropped_with_a_warning_and_training_goes_on(
    tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="irnn_search.tracking"):
        tracker.log_metrics("0" * 32, 0, {"val_loss": 1.0})  # no such run: a permanent error
    assert tracker.buffered == 0
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


def test_an_unreachable_server_buffers_metrics_warns_once_and_sends_them_later(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tracker: Tracker,
    parent: tuple[str, str],
    uri: str,
    client: MlflowClient,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run_id = _trial(tracker, parent, 30)
    offline = Tracker("http://irnn:s3cret@127.0.0.1:1", None, retry_interval_s=0.0, max_buffered_metrics=4)
    assert "s3cret" not in repr(offline)

    with caplog.at_level(logging.WARNING, logger="irnn_search.tracking"):
        for step in range(3):  # each call retries the buffer first (interval 0), fails, keeps everything
            offline.log_metrics(run_id, step * 10, {"val_loss": 1.0 / (step + 1), "train_loss": 2.0})
        assert offline.buffered == 1  # consecutive batches of one run merge into one pending call
        assert offline.flush() is False
        offline.end_run(run_id, "complete")  # the end waits behind the metrics, never raises
        assert offline.buffered == 2

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage()
    assert all("s3cret" not in r.getMessage() for r in caplog.records)
    assert client.get_run(run_id).info.status == "RUNNING"

    # The server comes back (here: the same tracker pointed at a reachable store).
    offline.client = MlflowClient(tracking_uri=uri)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="irnn_search.tracking"):
        offline.log_metrics(run_id, 30, {"val_loss": 0.2})
        assert offline.buffered == 0
    assert "reachable again" in caplog.records[-1].getMessage()
    assert "dropped" in caplog.records[-1].getMessage()  # the buffer holds 4 values; 7 were logged

    # The oldest values were dropped to stay within max_buffered_metrics; the rest arrived in order.
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")]
    assert history == [(20, pytest.approx(1 / 3)), (30, 0.2)]
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["irnn.outcome"]) == ("FINISHED", "complete")


def test_check_reads_the_store_once_and_names_mlflow_when_it_is_unreachable(
    tracker: Tracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker.check()  # the embedded store answers
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # MLflow's 7 retries: minutes
    offline = Tracker("http://irnn:s3cret@127.0.0.1:9", None)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"cannot reach MLflow at http://irnn:\*\*\*@127\.0\.0\.1:9") as error:
        offline.check()
    assert time.monotonic() - started < 15 and "s3cret" not in str(error.value)


@pytest.mark.postgres
def test_check_passes_on_a_tracking_server(mlflow_server: Any) -> None:
    Tracker(mlflow_server.uri, None).check()
