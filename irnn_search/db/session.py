"""Engines and the one way to touch the experiment database: :func:`session_scope`.

SQLite (the embedded default) gets WAL, a busy timeout and foreign keys on every connection, so
several local worker processes can write at once. PostgreSQL gets a small pre-pinged pool: a
worker holds at most a few connections and survives a server restart.

Errors that mean "the database is not there or not usable" (connection refused, wrong password,
missing database, a file that is not a database) surface as :class:`DatabaseError`, with any
password in the URL masked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from irnn_search.masking import mask_secrets

log = logging.getLogger(__name__)

#: seconds to wait for a PostgreSQL server before giving up
CONNECT_TIMEOUT_S = 10
#: milliseconds a SQLite writer waits for another one's lock
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: seconds after which a pooled PostgreSQL connection is replaced (outlives idle-killing proxies)
POOL_RECYCLE_S = 1800

URL_HINT = (
    "Check the URL (dialect+driver://user:password@host:port/database, or sqlite:///path/to/file.db) "
    "and that its driver is installed; set it with IRNN_SEARCH_DB."
)
HINT = (
    "Check that the server is running and reachable, that the URL, user and password are right and "
    "that the database exists (for SQLite: that the folder exists and the file is a database); "
    "set it with IRNN_SEARCH_DB."
)


class DatabaseError(Exception):
    """The experiment database cannot be reached or used; the message is safe to print."""


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except exc.ArgumentError:
        return None


def describe(url: str, error: BaseException, *, action: str = "use", hint: str = HINT) -> DatabaseError:
    """A :class:`DatabaseError` for ``error``: its first line, the masked URL and what to check."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    detail = lines[0] if lines else type(cause).__name__
    password = _password(url)
    if password:
        detail = detail.replace(password, "***")
    return DatabaseError(f"cannot {action} the experiment database at {mask_secrets(url)}: {detail}. {hint}")


def is_unusable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached or used at all (not a bad query)."""
    # a bare DatabaseError is e.g. SQLite's "file is not a database"; its subclasses
    # (IntegrityError, ProgrammingError, ...) are problems of a statement, not of the database
    return isinstance(error, exc.OperationalError | exc.InterfaceError) or type(error) is exc.DatabaseError


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers and one writer work at once; the busy timeout makes a second writer
        # wait instead of failing; foreign keys are off by default in SQLite.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_engine(url: str, *, connect_timeout_s: int = CONNECT_TIMEOUT_S, echo: bool = False) -> Engine:
    """An engine for ``url`` tuned for its backend.

    Creating the engine does not connect; an unreachable server shows at the first use.
    Raises :class:`DatabaseError` for a malformed URL or a driver that is not installed.
    """
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            engine = create_engine(parsed, echo=echo)
            event.listen(engine, "connect", _sqlite_on_connect)
            return engine
        kwargs: dict[str, Any] = {}
        if backend == "postgresql" and "connect_timeout" not in parsed.query:
            # libpq waits for ever by default; a ``?connect_timeout=`` in the URL wins
            kwargs["connect_args"] = {"connect_timeout": connect_timeout_s}
        return create_engine(
            parsed,
            echo=echo,
            pool_pre_ping=True,
            pool_size=1,
            max_overflow=1,
            pool_recycle=POOL_RECYCLE_S,
            **kwargs,
        )
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as error:
        raise describe(url, error, action="open", hint=URL_HINT) from None


def dispose(engine: Engine, *, after_fork: bool = False) -> None:
    """Drop the engine's pooled connections.

    In a child process right after ``fork`` pass ``after_fork=True``: the pool is replaced without
    closing the inherited connections, which still belong to the parent.
    """
    engine.dispose(close=not after_fork)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success, rolls back on error and always closes.

    Objects stay readable after the scope ends (``expire_on_commit=False``). Connection-level
    failures raise :class:`DatabaseError`; other errors propagate unchanged after the rollback.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException as error:
        session.rollback()
        if not is_unusable(error):
            raise
        log.debug("experiment database error", exc_info=error)
        raise describe(engine.url.render_as_string(hide_password=False), error) from None
    finally:
        session.close()
