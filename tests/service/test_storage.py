"""Optuna storage for a pool: launch serialization, retries through a lost connection, settings."""

from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from sqlalchemy import exc as sa_exc

from irnn_search.search.spec import load_spec
from irnn_search.service.search import open_studies
from irnn_search.service.storage import ResilientRDBStorage, connection_lost, open_storage
from irnn_search.settings import Settings
from tests.service.test_search import _spec


def _race(spec_path: Path, storage: str, launches: int = 4) -> list[optuna.trial.FrozenTrial]:
    spec = load_spec(spec_path)
    barrier = threading.Barrier(launches)
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            barrier.wait()
            open_studies(spec, storage)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(launches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return optuna.load_study(study_name=f"{spec.name}.irnn", storage=storage).get_trials(deepcopy=False)


def _published_once(trials: list[optuna.trial.FrozenTrial]) -> None:
    refs = [t.user_attrs["ref"] for t in trials if t.user_attrs.get("source") == "published"]
    assert refs and len(refs) == len(set(refs)), refs


def test_concurrent_launches_on_sqlite_enqueue_the_published_settings_once(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for round_ in range(3):
        _published_once(_race(_spec(tmp_path, f"race{round_}"), f"sqlite:///{tmp_path / 'optuna.db'}"))


@pytest.mark.postgres
def test_concurrent_launches_on_postgresql_enqueue_the_published_settings_once(
    tmp_path: Path, pg_database: str
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for round_ in range(3):
        _published_once(_race(_spec(tmp_path, f"race{round_}"), pg_database))


def test_a_lost_connection_is_told_from_other_database_errors() -> None:
    lost = sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    assert connection_lost(lost)
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = lost
    assert connection_lost(wrapped)
    assert not connection_lost(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not connection_lost(ValueError("bad value"))
    auth = Exception('FATAL:  password authentication failed for user "irnn"')
    assert not connection_lost(sa_exc.OperationalError("connect", {}, auth)), "no retry fixes a wrong password"


def test_sqlite_storage_is_plain_and_postgresql_storage_retries(tmp_path: Path) -> None:
    plain = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_s=2, grace_s=6)
    assert not isinstance(plain, ResilientRDBStorage)
    assert plain.get_heartbeat_interval() == 2 and plain.grace_period == 6


@pytest.mark.postgres
def test_postgresql_calls_ride_out_a_server_restart(pg: object, pg_database: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(pg_database, heartbeat_s=None, retry_s=60)
    assert isinstance(storage, ResilientRDBStorage)
    study = optuna.create_study(study_name="restart", storage=storage)
    study.enqueue_trial({"x": 1.0})
    pg.stop()  # type: ignore[attr-defined]
    restarted = threading.Timer(2.0, pg.start)  # type: ignore[attr-defined]
    restarted.start()
    try:
        trials = study.get_trials(deepcopy=False)  # waits for the server instead of failing
    finally:
        restarted.join()
    assert len(trials) == 1
    trial = study.ask()
    study.tell(trial, 1.0)
    assert study.best_value == 1.0


def test_heartbeat_settings_are_validated() -> None:
    s = Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "2"})
    assert (s.heartbeat_s, s.grace_s) == (2, 30)
    s = Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "20"})
    assert s.grace_s == 60  # at least 3 heartbeats
    with pytest.raises(ValueError, match=r"GRACE_S .* must be longer than"):
        Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "10", "IRNN_SEARCH_GRACE_S": "5"})
    with pytest.raises(ValueError, match="HEARTBEAT_S must be an integer"):
        Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "soon"})
