"""``up`` and ``down``: the whole local stack (PostgreSQL, optionally MLflow and optuna-dashboard) in one folder."""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from irnn_search.dev.servers.http import Dashboard, MlflowServer
from irnn_search.dev.servers.postgres import Postgres
from irnn_search.dev.servers.process import HOST, ServerError, is_root, write_private

#: the databases ``up`` creates: Optuna's, ours, MLflow's, and a scratch database for tests
UP_DATABASES = ("optuna", "irnn", "mlflow", "scratch")


def _env_file(values: dict[str, str]) -> str:
    lines = [
        "# Written by `irnn-search servers up`; it holds passwords: keep it private.",
        "# `irnn-search servers down --dir <this folder>` stops the servers.",
    ]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def up(
    folder: str | Path,
    *,
    mlflow: bool = False,
    dashboard: bool = False,
    fsync: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """Start PostgreSQL (databases ``optuna``, ``irnn``, ``mlflow``, ``scratch``), and optionally the MLflow
    server and optuna-dashboard, write ``folder/env.sh`` and leave them running; returns the variables.

    On failure, whatever this call started is stopped again.
    """
    folder = Path(folder).resolve()
    if running(folder):
        raise ServerError(f"servers are already running in {folder}: run `irnn-search servers down --dir {folder}`")
    folder.mkdir(parents=True, exist_ok=True)
    if is_root():
        folder.chmod(folder.stat().st_mode | 0o711)  # the postgres user must reach folder/postgres
    started: list[Any] = []
    try:
        t0 = time.monotonic()
        pg_folder = folder / "postgres"
        pg = Postgres.attach(pg_folder) if (pg_folder / "server.json").exists() else Postgres(pg_folder, fsync=fsync)
        if pg.running:
            raise ServerError(f"PostgreSQL is already running in {pg_folder} (pid {pg.pid}): run `down` first")
        pg.start()
        started.append(pg)
        for db in UP_DATABASES:
            pg.create_database(db)
        dbs = ", ".join(UP_DATABASES)
        say(f"PostgreSQL on {HOST}:{pg.port} ready in {time.monotonic() - t0:.1f} s (databases {dbs})")
        env = {
            "IRNN_SEARCH_STORAGE": pg.url("optuna"),
            "IRNN_SEARCH_DB": pg.url("irnn"),
        }
        test_env = {"IRNN_SEARCH_TEST_SERVERS_DIR": str(folder), "IRNN_SEARCH_TEST_POSTGRES_URL": pg.url("scratch")}
        if mlflow:
            t0 = time.monotonic()
            server = MlflowServer(folder / "mlflow", pg.url("mlflow"))
            server.start()
            started.append(server)
            say(f"MLflow server on {server.uri} ready in {time.monotonic() - t0:.1f} s (artifacts {server.artifacts})")
            env["IRNN_SEARCH_MLFLOW_URI"] = server.uri
            test_env["IRNN_SEARCH_TEST_MLFLOW_URI"] = server.uri
        if dashboard:
            t0 = time.monotonic()
            board = Dashboard(folder / "dashboard", pg.url("optuna"))
            board.start()
            started.append(board)
            say(f"optuna-dashboard on {board.url} ready in {time.monotonic() - t0:.1f} s")
            test_env["IRNN_SEARCH_TEST_DASHBOARD_URL"] = board.url
        values = {**env, **test_env}
        write_private(folder / "env.sh", _env_file(values))
    except BaseException:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()
        raise
    for server in started:
        server.detach()
    say(f"wrote {folder / 'env.sh'}; then `irnn-search db upgrade` once for the experiment database")
    return values


def attached(folder: str | Path) -> list[Dashboard | MlflowServer | Postgres]:
    """The servers whose state is in ``folder`` (as ``up`` lays it out), running or not."""
    folder = Path(folder)
    found: list[Dashboard | MlflowServer | Postgres] = []
    if (folder / "dashboard" / "server.json").exists():
        found.append(Dashboard.attach(folder / "dashboard"))
    if (folder / "mlflow" / "server.json").exists():
        found.append(MlflowServer.attach(folder / "mlflow"))
    if (folder / "postgres" / "server.json").exists():
        found.append(Postgres.attach(folder / "postgres"))
    return found


def running(folder: str | Path) -> bool:
    return any(server.running for server in attached(folder))


def down(folder: str | Path, *, say: Callable[[str], None] = print) -> None:
    """Stop every server that ``up`` (or a test) started in ``folder``; no-op for those not running."""
    for server in attached(folder):  # dashboard and MLflow first: they are PostgreSQL's clients
        if server.running:
            server.stop()
            name = "PostgreSQL" if isinstance(server, Postgres) else server.name
            say(f"stopped {name} on port {server.port}")
