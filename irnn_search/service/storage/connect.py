"""Opening Optuna's storage for a URL, checking that a store is reachable, and serializing launches."""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from irnn_search.service.storage.heartbeat import HeartbeatRDBStorage
from irnn_search.service.storage.resilient import RETRY_S, ResilientRDBStorage
from irnn_search.settings import GRACE_S, HEARTBEAT_S

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def open_storage(
    url: str,
    *,
    heartbeat_s: int | None = HEARTBEAT_S,
    grace_s: int | None = GRACE_S,
    on_stale: StaleCallback | None = None,
    retry_s: float = RETRY_S,
) -> RDBStorage:
    """Optuna's RDB storage for ``url``, set up for its backend (see the module docstring).

    ``heartbeat_s=None`` turns heartbeats off (a process that only reads or registers studies).
    """
    beat: dict[str, Any] = {}
    if heartbeat_s is not None:
        # Workers ask for trials and beat their heartbeats themselves (``Heartbeats``, one thread for
        # one trial or a whole pack), so Optuna's hint at every ``ask`` that heartbeats belong to
        # ``Study.optimize`` is noise (a process-wide filter: the hint comes from ``Study``).
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        beat = {
            "heartbeat_interval": int(heartbeat_s),
            "grace_period": int(grace_s if grace_s is not None else 3 * heartbeat_s),
            "heartbeat_stale_trial_callback": on_stale,
        }
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna: say it once, in docs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if url.startswith("sqlite"):
            return _created_once(
                lambda: HeartbeatRDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, **beat)
            )
        return _created_once(lambda: _server_storage(url, retry_s, beat))


#: what a store's database says when another process created Optuna's schema first
_CREATED_BY_ANOTHER = ("already exists", "UNIQUE constraint failed", "duplicate key value")


def _created_once(make: Callable[[], RDBStorage], attempts: int = 5) -> RDBStorage:
    """``make()``, again when another process was creating Optuna's schema at the same moment.

    Opening a storage creates its tables and stamps its schema version when they are missing, as a
    check and then a write: processes that open a fresh database together (the workers of a pool
    started at once, ``status`` during the first launch) race, and the losers fail with "table
    already exists" or a duplicate version row. Opened again, a loser finds the winner's schema.
    """
    from sqlalchemy import exc as sa_exc

    for attempt in range(attempts - 1):
        try:
            return make()
        except (sa_exc.IntegrityError, sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
            if not any(s in str(exc) for s in _CREATED_BY_ANOTHER):
                raise
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # the winner's transaction ends
    return make()


def _server_storage(url: str, retry_s: float, beat: dict[str, Any]) -> RDBStorage:
    engine_kwargs: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 1,
        "max_overflow": 2,
        "pool_recycle": 300,
    }
    if url.startswith("postgresql") and "connect_timeout" not in url:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    return ResilientRDBStorage(url, retry_s=retry_s, engine_kwargs=engine_kwargs, **beat)


def check_reachable(url: str, *, timeout_s: int = 10) -> None:
    """Connect to the Optuna storage at ``url`` and read nothing but ``SELECT 1``: a launch checks
    every store this way before it writes to any. A SQLite file is local: only its folder must exist
    (connecting would create the file).

    Raises:
        Exception: the driver's or SQLAlchemy's error (unreachable, wrong password, no database).
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            raise FileNotFoundError(f"no folder {Path(database).parent} for the SQLite file {Path(database).name}")
        return
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql") and "connect_timeout" not in url:
        connect_args["connect_timeout"] = timeout_s
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def launch_lock(url: str, key: str, *, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialize launches of ``key`` on one Optuna storage, across processes and machines.

    Two ``irnn-search launch`` of the same spec at the same instant would otherwise both enqueue
    the published settings (Optuna's ``skip_if_exists`` is a read, then a write). PostgreSQL: a
    session-level advisory lock on the storage's server; SQLite: an exclusive ``flock`` on a file
    beside the database. Other backends are not locked.
    """
    if url.startswith("sqlite"):
        import fcntl

        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if not database or database == ":memory:":
            yield
            return
        path = Path(database).with_name(Path(database).name + ".launch.lock")
        with open(path, "a") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"another launch of {key!r} has held {path} for {timeout_s:.0f} s") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    lock_id = int.from_bytes(hashlib.sha256(f"irnn-search launch {key}".encode()).digest()[:8], "big", signed=True)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            wait = {"ms": f"{int(timeout_s * 1000)}"}
            connection.execute(text("SELECT set_config('lock_timeout', :ms, false)"), wait)
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
                connection.commit()
    finally:
        engine.dispose()
