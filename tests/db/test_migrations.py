"""Migrations of the experiment database: reversible, ours alone, in step with the models.

Runs on SQLite files and on PostgreSQL: a fresh database on the ``pg`` fixture's server, or the
scratch database of ``IRNN_SEARCH_TEST_POSTGRES_URL`` when that is set (its ``irnn_*``,
``alembic_version`` and ``studies`` tables are dropped before and after each test).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from irnn_search.db import migrate
from irnn_search.db.migrate import DatabaseError
from irnn_search.masking import mask_secrets

POSTGRES_URL = os.environ.get("IRNN_SEARCH_TEST_POSTGRES_URL")
UNREACHABLE = "postgresql+psycopg://user:secret@127.0.0.1:1/x"
OUR_TABLES = {"irnn_launches", "irnn_studies", "irnn_workers", "irnn_trial_runs", "irnn_evaluations"}


def _drop_all(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for name in inspect(connection).get_table_names():
            if name.startswith("irnn_") or name in ("alembic_version", "studies"):
                connection.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    engine.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'irnn.db'}"
        return
    if not POSTGRES_URL:  # a fresh database on the `pg` server (skips when there is no PostgreSQL here)
        yield request.getfixturevalue("pg_database")
        return
    _drop_all(POSTGRES_URL)
    yield POSTGRES_URL
    _drop_all(POSTGRES_URL)


def _engine(url: str) -> Engine:
    return create_engine(url)


def _schema(url: str) -> dict[str, Any]:
    """Our tables with their columns, indexes, unique and foreign keys, as the database reports them."""
    engine = _engine(url)
    try:
        insp = inspect(engine)
        schema: dict[str, Any] = {}
        for table in sorted(insp.get_table_names()):
            if table.startswith("irnn_") and table != migrate.VERSION_TABLE:
                schema[table] = {
                    "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
                    "indexes": sorted(i["name"] or "" for i in insp.get_indexes(table)),
                    "unique": sorted(u["name"] or "" for u in insp.get_unique_constraints(table)),
                    "fks": sorted(
                        (f["name"] or "", f["referred_table"], f["options"].get("ondelete") or "")
                        for f in insp.get_foreign_keys(table)
                    ),
                }
        return schema
    finally:
        engine.dispose()


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_round_trip_leaves_the_same_tables(url: str) -> None:
    assert migrate.current(url) is None
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head() == "0002"
    first = _schema(url)
    assert set(first) == OUR_TABLES

    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    assert _schema(url) == {}

    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()
    assert _schema(url) == first


def test_every_revision_downgrades_one_step_and_upgrades_again(url: str) -> None:
    revisions = [r.revision for r in ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()]
    for revision in reversed(revisions):  # oldest first
        migrate.upgrade(url, revision)
        after_upgrade = _schema(url)
        migrate.downgrade(url, "-1")
        migrate.upgrade(url, revision)
        assert migrate.current(url) == revision
        assert _schema(url) == after_upgrade


def test_the_version_table_is_ours_and_a_foreign_alembic_version_is_left_untouched(url: str) -> None:
    # what an Optuna (or MLflow) storage in the same database looks like to Alembic
    engine = _engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
        connection.execute(text("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name VARCHAR(512))"))
        connection.execute(text("INSERT INTO studies VALUES (1, 'someone-elses')"))
    engine.dispose()

    migrate.upgrade(url)
    assert _rows(url, f"SELECT version_num FROM {migrate.VERSION_TABLE}") == [("0002",)]
    assert _rows(url, "SELECT version_num FROM alembic_version") == [("v3.2.0.a",)]
    assert migrate.check(url) == []  # the foreign tables are not ours to compare

    migrate.downgrade(url, "base")
    assert _rows(url, "SELECT version_num FROM alembic_version") == [("v3.2.0.a",)]
    assert _rows(url, "SELECT study_id, study_name FROM studies") == [(1, "someone-elses")]
    assert _schema(url) == {}


def test_models_and_migrations_agree_after_upgrade(url: str) -> None:
    migrate.upgrade(url)
    assert migrate.check(url) == []


def test_check_reports_a_database_that_differs_from_the_models(url: str) -> None:
    missing = migrate.check(url)
    assert sorted(diff[1].name for diff in missing if diff[0] == "add_table") == sorted(OUR_TABLES)

    migrate.upgrade(url)
    engine = _engine(url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE irnn_launches ADD COLUMN stray INTEGER"))
    engine.dispose()
    drift = migrate.check(url)
    assert [(d[0], d[2], d[3].name) for d in drift] == [("remove_column", "irnn_launches", "stray")]


def test_an_unreachable_server_is_one_clear_error_with_the_password_masked() -> None:
    for call in (migrate.upgrade, migrate.current, migrate.check):
        started = time.monotonic()
        with pytest.raises(DatabaseError) as info:
            call(UNREACHABLE)
        message = str(info.value)
        assert "secret" not in message
        assert "postgresql+psycopg://user:***@127.0.0.1:1/x" in message
        assert "Check that the server is running" in message
        assert "\n" not in message
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
        assert time.monotonic() - started < 10


def test_a_file_that_is_not_a_database_is_a_database_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database " * 200)
    with pytest.raises(DatabaseError, match="file is not a database"):
        migrate.upgrade(f"sqlite:///{path}")


def test_a_url_for_a_missing_driver_is_a_database_error_naming_the_url() -> None:
    with pytest.raises(DatabaseError, match=r"nosuchdb://u:\*\*\*@h/x.*Check the URL") as info:
        migrate.current("nosuchdb://u:secret@h/x")
    assert "secret" not in str(info.value)


def test_an_unknown_revision_is_a_database_error(url: str) -> None:
    with pytest.raises(DatabaseError, match="nonsense"):
        migrate.upgrade(url, "nonsense")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://u:p@ss@host:5432/db", "postgresql+psycopg://u:***@host:5432/db"),
        ("postgresql://u:secret@host/db?sslmode=require", "postgresql://u:***@host/db?sslmode=require"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("sqlite:////tmp/x/irnn.db", "sqlite:////tmp/x/irnn.db"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_secrets(url) == masked
