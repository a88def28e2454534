from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Real servers (PostgreSQL, MLflow, optuna-dashboard): see tests/servers_fixtures.py.
from tests.servers_fixtures import dashboard, mlflow_server, pg, pg_database  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# Fixtures that start (or attach to) PostgreSQL: a test using one is a `postgres` test whether or not
# it says so, so the fast tier (pyproject's default `-m`) never waits for a server.
SERVER_FIXTURES = frozenset({"pg", "pg_database", "mlflow_server"})


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Small models are as fast on one thread, and results do not depend on the machine's core count.
    torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline datasets folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA
