from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Real servers (PostgreSQL, MLflow, optuna-dashboard): see tests/servers_fixtures.py.
from tests.servers_fixtures import dashboard, mlflow_server, pg, pg_database  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Small models are as fast on one thread, and results do not depend on the machine's core count.
    torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the offline datasets folder {SHARED_DATA} is absent on this machine")
    return SHARED_DATA
