"""Telling a lost or refused database connection (worth retrying) from every other database error."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

#: errors of configuration, not of availability: retrying cannot help
_NOT_TRANSIENT = ("password authentication failed", "does not exist", "pg_hba.conf", "permission denied")


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a lost or refused database connection (and not a
    wrong password, database or role, which no retry fixes)."""
    if any(text in str(e).lower() for e in _chain(error) for text in _NOT_TRANSIENT):
        return False
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if type(e).__module__.startswith("psycopg") and type(e).__name__ in ("OperationalError", "InterfaceError"):
            return True
        e = e.__cause__ or e.__context__
    return False


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out
