"""Alembic environment of the experiment database.

Normally run through ``irnn_search.db.migrate`` (``irnn-search db upgrade``), which hands over an
open connection. Run any other way, the URL comes from the Alembic config or, failing that, from
the one settings object (``IRNN_SEARCH_DB``, else the embedded SQLite file).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from irnn_search.db.migrate import context_options
from irnn_search.db.session import make_engine

config = context.config


def _url() -> str:
    from irnn_search.settings import Settings

    return config.get_main_option("sqlalchemy.url") or Settings.from_env().db_url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **context_options(sqlite=connection.dialect.name == "sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (``--sql``) instead of running it."""
    url = _url()
    context.configure(url=url, literal_binds=True, **context_options(sqlite=url.startswith("sqlite")))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
