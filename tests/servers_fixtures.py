"""Fixtures with real servers (imported by ``tests/conftest.py``).

- ``pg`` (session): a PostgreSQL server, an :class:`irnn_search.dev.servers.Postgres` with ``.url(db)``,
  ``.create_database(name) -> url``, ``.drop_database(name)``, ``.stop()``, ``.start()``,
  ``.restart()``, ``.running`` and ``.port``. A test that stops it starts it again.
- ``pg_database`` (function): the URL of a fresh database on ``pg``, dropped after the test.
- ``mlflow_server`` (session): an MLflow tracking server on PostgreSQL with proxied artifacts;
  ``.uri``, ``.stop()``, ``.start()``, ``.running``.
- ``dashboard`` (session): a factory, ``dashboard(storage_url) -> base_url``, one optuna-dashboard
  per storage URL, stopped at the end of the session.

Where they come from: when ``.ci/run`` started the servers (``irnn-search servers up``)
and exported ``IRNN_SEARCH_TEST_SERVERS_DIR``, the fixtures attach to those (CI's servers are
left running for its ``down``). Otherwise they start their own with :mod:`irnn_search.dev.servers`
when the PostgreSQL binaries are found, and skip when they are not. A bare
``IRNN_SEARCH_TEST_MLFLOW_URI`` (a server we do not control) gives an ``mlflow_server`` whose
``stop()``/``start()`` skip the test.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from irnn_search.dev.servers import (
    Dashboard,
    MlflowServer,
    Postgres,
    ServerError,
    find_postgres_bindir,
    reachable_tempdir,
)

SERVERS_DIR_ENV = "IRNN_SEARCH_TEST_SERVERS_DIR"


def _shared(sub: str) -> Path | None:
    """The folder of a server started by ``.ci/run`` (``servers up``), when there is one."""
    root = os.environ.get(SERVERS_DIR_ENV)
    if root and (Path(root) / sub / "server.json").is_file():
        return Path(root) / sub
    return None


def unique_name(prefix: str) -> str:
    """A database (or study) name no other test uses: ``prefix_<12 hex>``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    shared = _shared("postgres")
    if shared is not None:
        server = Postgres.attach(shared)
        server.start()
        yield server
        if not server.running:  # leave CI's server as we found it (attached: it outlives pytest)
            server.start()
        return
    try:
        find_postgres_bindir()
    except ServerError as exc:
        pytest.skip(str(exc))
    folder = reachable_tempdir("irnn-test-pg-")  # as root, the postgres user must reach it (not so pytest's tmp)
    server = Postgres(folder / "pg", fsync=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_database(pg: Postgres) -> Iterator[str]:
    name = unique_name("test")
    url = pg.create_database(name)
    yield url
    if pg.running:
        pg.drop_database(name)


class RemoteMlflow:
    """An MLflow server given only by its URI (IRNN_SEARCH_TEST_MLFLOW_URI): it cannot be stopped from here."""

    def __init__(self, uri: str) -> None:
        self.uri = self.url = uri.rstrip("/")
        self.running = True

    def stop(self) -> None:
        pytest.skip("the MLflow server of IRNN_SEARCH_TEST_MLFLOW_URI is not ours to stop")

    def start(self) -> None:
        pytest.skip("the MLflow server of IRNN_SEARCH_TEST_MLFLOW_URI is not ours to start")


@pytest.fixture(scope="session")
def mlflow_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    shared = _shared("mlflow")
    if shared is not None:
        server = MlflowServer.attach(shared)
        server.start()
        yield server
        if not server.running:
            server.start()
        return
    if os.environ.get("IRNN_SEARCH_TEST_MLFLOW_URI"):
        yield RemoteMlflow(os.environ["IRNN_SEARCH_TEST_MLFLOW_URI"])
        return
    pg: Postgres = request.getfixturevalue("pg")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), pg.create_database(unique_name("mlflow")))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    if importlib.util.find_spec("optuna_dashboard") is None:
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard)")
    boards: dict[str, Dashboard] = {}
    ours: list[Dashboard] = []
    shared = _shared("dashboard")
    if shared is not None:
        board = Dashboard.attach(shared)
        boards[board.storage_url] = board

    def start(storage_url: str) -> str:
        board = boards.get(storage_url)
        if board is None:
            board = boards[storage_url] = Dashboard(tmp_path_factory.mktemp("dashboard"), storage_url)
            ours.append(board)
        if not board.running:
            board.start()
        return board.url

    yield start
    for board in ours:
        board.stop()
