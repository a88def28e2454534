"""Repository functions of the experiment database, on a migrated database (no mocks).

Runs on SQLite files and on PostgreSQL: a fresh database on the ``pg`` fixture's server, or the
scratch database of ``IRNN_SEARCH_TEST_POSTGRES_URL`` when that is set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from irnn_search.db import DatabaseError, make_engine, migrate, repo, session_scope
from irnn_search.db.models import LaunchRow, WorkerRow

POSTGRES_URL = os.environ.get("IRNN_SEARCH_TEST_POSTGRES_URL")

SPEC = {
    "study": {"task": "adding", "task_options": {"T": 100}, "steps": 2000, "seeds": [0, 1]},
    "models": {
        "irnn": {"lr": {"low": 1e-5, "high": 1e-2, "log": True}, "clip": ["off", 1.0], "identity_scale": 1.0},
        "lstm": {"lr": 1e-3, "forget_bias": None, "bidirectional": False},
    },
    "label": "é, ü and 数字",
}


def _drop_ours(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for name in inspect(connection).get_table_names():
            if name.startswith("irnn_"):
                connection.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'irnn.db'}"
    elif POSTGRES_URL:
        url = POSTGRES_URL
        _drop_ours(url)
    else:  # a fresh database on the `pg` server (skips when there is no PostgreSQL here)
        url = request.getfixturevalue("pg_database")
    migrate.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()
    if request.param == "postgresql":
        _drop_ours(url)


def _launch(engine: Engine, *, spec_hash: str = "a" * 64, spec_name: str = "adding") -> int:
    with session_scope(engine) as s:
        return repo.record_launch(s, spec_name=spec_name, spec=SPEC, spec_hash=spec_hash, package_version="0.1.0")


def _study(engine: Engine, launch_id: int, name: str = "adding.irnn", *, spec_hash: str = "a" * 64) -> int:
    with session_scope(engine) as s:
        row = repo.ensure_study(
            s, launch_id=launch_id, study_name=name, task="adding", model="irnn", family="irnn", spec_hash=spec_hash
        )
        return row.id


def _run(engine: Engine, trial_number: int, *, study: str = "adding.irnn", worker_id: int | None = None) -> int:
    with session_scope(engine) as s:
        return repo.start_trial_run(
            s,
            study_name=study,
            trial_number=trial_number,
            trial_id=100 + trial_number,
            worker_id=worker_id,
            device="cpu",
            mlflow_run_id=f"run{trial_number}",
        )


def _finish(engine: Engine, run_id: int, outcome: str, wall_s: float, value: float | None = 0.5) -> None:
    with session_scope(engine) as s:
        repo.finish_trial_run(
            s,
            run_id=run_id,
            outcome=outcome,
            reason=None,
            value=value,
            wall_s=wall_s,
            train_s=wall_s * 0.9,
            steps=100,
            steps_per_s=100 / (wall_s * 0.9),
        )


def test_a_launch_stores_the_resolved_spec_and_workers_read_it_back(engine: Engine) -> None:
    launch_id = _launch(engine)
    _study(engine, launch_id)
    with session_scope(engine) as s:
        assert repo.study_spec(s, study_name="adding.irnn") == SPEC
        launch = s.get(LaunchRow, launch_id)
        assert launch is not None
        assert (launch.spec_name, launch.spec_hash, launch.package_version) == ("adding", "a" * 64, "0.1.0")
        assert "@" in launch.who
        assert launch.created_at.tzinfo is not None
        assert abs(launch.created_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_a_spec_that_is_not_plain_json_is_refused(engine: Engine) -> None:
    with session_scope(engine) as s, pytest.raises(ValueError, match="plain JSON"):
        repo.record_launch(s, spec_name="x", spec={"path": Path("/tmp")}, spec_hash="h", package_version="0")


def test_ensure_study_is_idempotent_and_keeps_the_first_launch(engine: Engine) -> None:
    first_launch = _launch(engine)
    study_id = _study(engine, first_launch)
    again = _study(engine, _launch(engine))
    assert again == study_id
    with session_scope(engine) as s:
        rows = repo.studies(s)
        assert [(r.study_name, r.launch_id, r.status) for r in rows] == [("adding.irnn", first_launch, "open")]


def test_ensure_study_refuses_a_changed_spec_hash_and_says_how_to_proceed(engine: Engine) -> None:
    _study(engine, _launch(engine))
    changed = _launch(engine, spec_hash="b" * 64)
    with pytest.raises(repo.StudySpecChanged, match="spec changed") as info:
        _study(engine, changed, spec_hash="b" * 64)
    message = str(info.value)
    assert "'adding.irnn'" in message and "aaaaaaaaaaaa" in message and "bbbbbbbbbbbb" in message
    assert "new name" in message and "restore the spec" in message
    with session_scope(engine) as s:
        assert len(repo.studies(s)) == 1


def test_an_unknown_study_is_refused_with_the_known_ones(engine: Engine) -> None:
    _study(engine, _launch(engine))
    with session_scope(engine) as s, pytest.raises(repo.NotFound, match=r"'adding\.lstm'.*known: adding\.irnn"):
        repo.study_spec(s, study_name="adding.lstm")


def test_studies_filter_by_spec_and_keep_their_mlflow_ids(engine: Engine) -> None:
    _study(engine, _launch(engine), "adding.irnn")
    _study(engine, _launch(engine, spec_name="copy"), "copy.irnn")
    with session_scope(engine) as s:
        repo.set_mlflow_ids(s, study_name="copy.irnn", experiment_id="7", parent_run_id="abc")
        repo.finish_study(s, study_name="copy.irnn")
    with session_scope(engine) as s:
        assert [r.study_name for r in repo.studies(s, spec_name="copy")] == ["copy.irnn"]
        assert [r.study_name for r in repo.studies(s)] == ["adding.irnn", "copy.irnn"]
        (study,) = repo.studies(s, spec_name="copy")
        assert (study.mlflow_experiment_id, study.mlflow_parent_run_id, study.status) == ("7", "abc", "finished")
        assert study.finished_at is not None


def test_a_worker_is_alive_while_it_heartbeats_within_the_window(engine: Engine) -> None:
    study_id = _study(engine, _launch(engine))
    with session_scope(engine) as s:
        worker_id = repo.register_worker(s, host="node1", pid=4242, device="cuda:0")
        other_id = repo.register_worker(s, host="node2", pid=7, device="cpu")
    with session_scope(engine) as s:
        assert [w.id for w in repo.workers_alive(s, within_s=60)] == [worker_id, other_id]
        # ten minutes of silence, as if the worker had been killed
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=10))
        )
    with session_scope(engine) as s:
        assert [w.id for w in repo.workers_alive(s, within_s=60)] == [other_id]
        assert [w.id for w in repo.workers_alive(s, within_s=3600)] == [worker_id, other_id]
        repo.heartbeat(s, worker_id=worker_id, study_name="adding.irnn", trial_number=3)
    with session_scope(engine) as s:
        alive = {w.id: w for w in repo.workers_alive(s, within_s=60)}
        assert set(alive) == {worker_id, other_id}
        assert (alive[worker_id].current_study_id, alive[worker_id].current_trial_number) == (study_id, 3)
        assert alive[worker_id].device == "cuda:0"
        repo.stop_worker(s, worker_id=other_id)
    with session_scope(engine) as s:
        assert [w.id for w in repo.workers_alive(s, within_s=60)] == [worker_id]
        with pytest.raises(repo.NotFound, match="no worker with id 999"):
            repo.heartbeat(s, worker_id=999)


def test_a_trial_run_records_its_outcome_and_a_nan_value_is_stored_as_null(engine: Engine) -> None:
    _study(engine, _launch(engine))
    with session_scope(engine) as s:
        worker_id = repo.register_worker(s, host="node1", pid=1, device="cpu")
    run_id = _run(engine, 0, worker_id=worker_id)
    with session_scope(engine) as s:
        (running,) = repo.trial_runs(s, study_name="adding.irnn")
        assert (running.id, running.outcome, running.finished_at, running.mlflow_run_id) == (run_id, None, None, "run0")
        repo.finish_trial_run(
            s,
            run_id=run_id,
            outcome="diverged",
            reason="loss is nan at step 40",
            value=math.nan,
            wall_s=12.5,
            train_s=10.0,
            steps=40,
            steps_per_s=math.inf,
            resumed_from_step=20,
        )
    with session_scope(engine) as s:
        (done,) = repo.trial_runs(s, study_name="adding.irnn")
        assert (done.outcome, done.reason, done.value) == ("diverged", "loss is nan at step 40", None)
        assert (done.wall_s, done.train_s, done.steps, done.steps_per_s) == (12.5, 10.0, 40, None)
        assert (done.worker_id, done.device, done.resumed_from_step, done.study.study_name) == (
            worker_id,
            "cpu",
            20,
            "adding.irnn",
        )
        assert done.finished_at is not None and done.finished_at >= done.started_at
        # NULL in the database itself, not a NaN that some drivers would read back as a float
        assert s.execute(text("SELECT value IS NULL FROM irnn_trial_runs")).scalar_one() in (True, 1)


def test_finishing_a_run_with_an_unknown_outcome_is_refused(engine: Engine) -> None:
    _study(engine, _launch(engine))
    run_id = _run(engine, 0)
    with session_scope(engine) as s, pytest.raises(ValueError, match="'crashed' is not one of complete, pruned"):
        repo.finish_trial_run(
            s, run_id=run_id, outcome="crashed", reason=None, value=1.0, wall_s=1, train_s=1, steps=1, steps_per_s=1
        )


def test_a_trial_number_gets_one_run_per_study(engine: Engine) -> None:
    _study(engine, _launch(engine))
    _run(engine, 0)
    with pytest.raises(ValueError, match=r"trial 0 of study 'adding\.irnn' already has a run"):
        _run(engine, 0)


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    _study(engine, _launch(engine))
    with pytest.raises(IntegrityError):
        _run(engine, 0, worker_id=999)


def test_an_evaluation_is_stored_per_split_and_non_finite_metrics_become_null(engine: Engine) -> None:
    _study(engine, _launch(engine))
    run_id = _run(engine, 0)
    with session_scope(engine) as s:
        first = repo.record_evaluation(s, trial_run_id=run_id, split="test", metrics={"mse": 0.01, "acc": math.nan})
        repo.record_evaluation(s, trial_run_id=run_id, split="valid", metrics={"mse": 0.02, "steps": 2000})
    with session_scope(engine) as s:
        assert repo.evaluations(s, trial_run_id=run_id) == {
            "test": {"mse": 0.01, "acc": None},
            "valid": {"mse": 0.02, "steps": 2000},
        }
        again = repo.record_evaluation(s, trial_run_id=run_id, split="test", metrics={"mse": 0.005})
        assert again == first
    with session_scope(engine) as s:
        assert repo.evaluations(s, trial_run_id=run_id)["test"] == {"mse": 0.005}
        with pytest.raises(repo.NotFound, match="no trial run with id 999"):
            repo.record_evaluation(s, trial_run_id=999, split="test", metrics={})


def test_session_scope_rolls_back_everything_on_error(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="boom"), session_scope(engine) as s:
        repo.record_launch(s, spec_name="x", spec={}, spec_hash="h", package_version="0")
        raise RuntimeError("boom")
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(LaunchRow)) == 0


def test_an_unreachable_server_in_a_session_is_a_database_error_with_the_password_masked() -> None:
    engine = make_engine("postgresql+psycopg://user:secret@127.0.0.1:1/x", connect_timeout_s=3)
    with pytest.raises(DatabaseError) as info, session_scope(engine) as s:
        repo.studies(s)
    message = str(info.value)
    assert "secret" not in message
    assert "user:***@127.0.0.1:1/x" in message and "Connection refused" in message
    engine.dispose()


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()
