"""Schema migrations of the experiment database (Alembic), configured in code.

Migrations are an explicit step (``irnn-search db upgrade``), never run on import. Alembic keeps
our revision in its own table, ``irnn_alembic_version``, and its autogenerate only looks at
``irnn_`` tables, so the same database may also hold Optuna's or MLflow's tables (each with their
own ``alembic_version``) without any of the three touching the others.

Every function takes the database URL and raises :class:`DatabaseError` (password masked, with
what to check) when the database cannot be reached or migrated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection

from irnn_search import bundled
from irnn_search.db.models import TABLE_PREFIX, Base
from irnn_search.db.session import DatabaseError, describe, is_unusable, make_engine
from irnn_search.masking import mask_secrets

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "DatabaseError",
    "check",
    "current",
    "downgrade",
    "head",
    "upgrade",
]

#: the top-level ``migrations/`` of a checkout, or its copy inside an installed wheel
MIGRATIONS_DIR = bundled.folder("migrations")
#: ours, not Alembic's default ``alembic_version``, which Optuna and MLflow each own
VERSION_TABLE = "irnn_alembic_version"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Reflect only our tables: anything else in the database belongs to someone else."""
    return type_ != "table" or (name or "").startswith(TABLE_PREFIX)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Compare only our tables (objects inside them are compared with their table)."""
    return type_ != "table" or (name or "").startswith(TABLE_PREFIX)


def context_options(*, sqlite: bool) -> dict[str, Any]:
    """The options of every Alembic context on our database (``env.py`` and :func:`check`)."""
    return {
        "target_metadata": Base.metadata,
        "version_table": VERSION_TABLE,
        "include_name": include_name,
        "include_object": include_object,
        "compare_type": True,
        # SQLite cannot ALTER most things: batch mode copies the table instead
        "render_as_batch": sqlite,
    }


def alembic_config(connection: Connection | None = None) -> Config:
    """A programmatic Alembic ``Config``; ``env.py`` runs on ``connection`` when one is given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head() -> str | None:
    """The newest revision the installed code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@contextmanager
def _connect(url: str, action: str) -> Iterator[Connection]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch migrations recreate tables; with foreign keys on, dropping the old copy
                # would cascade into the rows that point at it. The pragma is a no-op inside a
                # transaction, so set it before Alembic begins one.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            yield connection
            connection.commit()
    except CommandError as error:
        detail = str(error).strip().splitlines()[0]
        raise DatabaseError(f"cannot {action} the experiment database at {mask_secrets(url)}: {detail}") from None
    except Exception as error:
        if is_unusable(error):
            raise describe(url, error, action=action) from None
        raise
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (creating our tables on a new one)."""
    with _connect(url, "upgrade") as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate down to ``revision`` (``"base"`` drops every table of ours; ``"-1"`` one step)."""
    with _connect(url, "downgrade") as connection:
        command.downgrade(alembic_config(connection), revision)


def current(url: str) -> str | None:
    """The revision the database is at; ``None`` when it was never migrated."""
    with _connect(url, "read") as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def check(url: str) -> list[Any]:
    """Differences between the database and the models, as Alembic's autogenerate sees them.

    Empty means no drift. Each item is an Alembic diff tuple (or a list of them for one column),
    e.g. ``("add_table", Table(...))``. Tables without our prefix are ignored.
    """
    with _connect(url, "check") as connection:
        options = context_options(sqlite=connection.dialect.name == "sqlite")
        options.pop("target_metadata")
        context = MigrationContext.configure(connection, opts=options)
        return list(compare_metadata(context, Base.metadata))
