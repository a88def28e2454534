"""irnn_search.dev.servers against the real programs: PostgreSQL, the MLflow server, optuna-dashboard."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from irnn_search.dev import servers
from irnn_search.dev.servers import Postgres, ServerError, postgres, process
from tests.servers_fixtures import unique_name

psycopg = pytest.importorskip("psycopg")


def _has_postgres() -> bool:
    try:
        servers.find_postgres_bindir()
    except ServerError:
        return False
    return True


needs_binaries = pytest.mark.skipif(not _has_postgres(), reason="PostgreSQL server binaries not found")


@pytest.fixture
def own_pg() -> Iterator[Postgres]:
    """A server of this test's own (not yet started), in a folder the postgres user can reach."""
    folder = servers.reachable_tempdir("irnn-test-own-pg-")
    server = Postgres(folder / "pg", fsync=False)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.postgres
@needs_binaries
def test_a_server_of_our_own_takes_its_password_refuses_a_wrong_one_and_stays_in_our_process_group(
    own_pg: Postgres,
) -> None:
    own_pg.start()
    assert own_pg.running and own_pg.url("x").startswith(f"postgresql+psycopg://irnn:{own_pg.password}@127.0.0.1:")
    assert os.getpgid(own_pg.pid or 0) == os.getpgrp()  # a cleanup that kills our group takes it too
    with psycopg.connect(own_pg.url("postgres").replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("irnn",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
    wrong = own_pg.url("postgres").replace("+psycopg", "").replace(own_pg.password, "wrong")
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "irnn"'):
        psycopg.connect(wrong, connect_timeout=5)


@pytest.mark.postgres
@needs_binaries
def test_restart_cuts_connections_keeps_data_and_port_and_stop_is_idempotent(own_pg: Postgres) -> None:
    own_pg.start()
    url = own_pg.create_database("keep").replace("+psycopg", "")
    port = own_pg.port
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("CREATE TABLE t (x int)")
    conn.execute("INSERT INTO t VALUES (42)")
    first_pid = own_pg.pid
    own_pg.restart()
    assert own_pg.running and own_pg.port == port and own_pg.pid != first_pid
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with psycopg.connect(url) as fresh:
        assert fresh.execute("SELECT x FROM t").fetchall() == [(42,)]
    own_pg.stop()
    assert not own_pg.running and not servers.port_in_use(port)
    own_pg.stop()  # no-op
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    own_pg.start()
    assert "keep" in own_pg.databases()


@pytest.mark.postgres
@needs_binaries
def test_another_process_attaches_to_a_server_by_its_folder(own_pg: Postgres) -> None:
    own_pg.start()
    other = Postgres.attach(own_pg.folder)
    assert (other.port, other.password, other.pid) == (own_pg.port, own_pg.password, own_pg.pid)
    other.stop()
    assert not own_pg.running
    other.start()  # started here, but it is not ours: no finalizer stops it when this process exits
    assert own_pg.running and other._finalizer is None
    own_pg.stop()  # the owner stops it, though another process started it again
    assert not other.running


@pytest.mark.postgres
@needs_binaries
def test_a_port_in_use_is_one_clear_line(own_pg: Postgres) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        own_pg.port = busy.getsockname()[1]
        with pytest.raises(ServerError, match=rf"^cannot start PostgreSQL: port {own_pg.port} on 127.0.0.1 is in use$"):
            own_pg.start()


@pytest.mark.postgres
@needs_binaries
def test_an_initdb_failure_and_missing_binaries_are_one_clear_line(tmp_path: Path) -> None:
    folder = servers.reachable_tempdir("irnn-test-bad-pg-")
    try:
        (folder / "pg" / "data").mkdir(parents=True)
        (folder / "pg" / "data" / "something").write_text("not a cluster")
        if os.geteuid() == 0:
            shutil.chown(folder / "pg" / "data", "postgres", "postgres")
        with pytest.raises(ServerError, match=r"^initdb failed in .*data: .*") as err:
            Postgres(folder / "pg").start()
        assert "\n" not in str(err.value)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with pytest.raises(ServerError, match=r"^PostgreSQL's initdb is not in .*: install PostgreSQL"):
        Postgres(tmp_path / "pg", bindir=tmp_path).start()


def test_missing_server_binaries_name_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IRNN_SEARCH_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres, "SYSTEM_POSTGRESQL", tmp_path)
    with pytest.raises(ServerError, match=r"PostgreSQL server binaries .* not found: install PostgreSQL"):
        servers.find_postgres_bindir()


@pytest.mark.postgres
def test_create_database_returns_its_url_and_refuses_bad_names(pg: Postgres) -> None:
    name = unique_name("created")
    url = pg.create_database(name)
    assert url == pg.url(name) and name in pg.databases()
    assert pg.create_database(name) == url  # exist_ok
    with pytest.raises(ServerError, match="already exists"):
        pg.create_database(name, exist_ok=False)
    for bad in ("1abc", "a-b", 'x"; DROP DATABASE postgres; --', "a" * 64):
        with pytest.raises(ValueError, match="database name"):
            pg.create_database(bad)
    pg.drop_database(name)
    assert name not in pg.databases()


@pytest.mark.postgres
def test_the_mlflow_server_answers_health_and_proxies_artifacts_over_http(mlflow_server: Any, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    with urllib.request.urlopen(mlflow_server.uri + "/health", timeout=10) as response:
        assert response.status == 200
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment(unique_name("servers_test"))
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(experiment_id)
    (tmp_path / "note.txt").write_text("checkpoint")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]


@pytest.mark.postgres
@pytest.mark.slow
def test_the_mlflow_server_stops_with_all_its_processes_and_starts_again(mlflow_server: Any) -> None:
    if not isinstance(mlflow_server, servers.MlflowServer):
        pytest.skip("the MLflow server is not ours")
    pid = mlflow_server.pid
    tree = [pid, *process.descendants(pid)]
    assert len(tree) >= 2  # mlflow starts uvicorn
    mlflow_server.stop()
    assert not any(process.alive(p) for p in tree)
    assert not servers.port_in_use(mlflow_server.port)
    with pytest.raises(OSError):
        urllib.request.urlopen(mlflow_server.uri + "/health", timeout=2)
    mlflow_server.start()
    with urllib.request.urlopen(mlflow_server.uri + "/health", timeout=10) as response:
        assert response.status == 200


@pytest.mark.postgres
def test_the_dashboard_lists_the_studies_of_its_storage(pg_database: str, dashboard: Callable[[str], str]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="servers-test-study", storage=pg_database)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    base = dashboard(pg_database)
    assert dashboard(pg_database) == base  # one dashboard per storage
    summaries = _get_json(base + "/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["servers-test-study"]


def _servers(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "irnn_search", "servers", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.postgres
@needs_binaries
def test_up_leaves_servers_running_writes_the_env_file_and_down_stops_them() -> None:
    folder = servers.reachable_tempdir("irnn-test-up-")
    try:
        up = _servers("up", "--dir", str(folder), "--dashboard", "--no-fsync")
        assert up.returncode == 0, up.stderr
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in (folder / "env.sh").read_text().splitlines()
            if line.startswith("export ")
        )
        assert set(env) == {
            "IRNN_SEARCH_STORAGE",
            "IRNN_SEARCH_DB",
            "IRNN_SEARCH_TEST_SERVERS_DIR",
            "IRNN_SEARCH_TEST_POSTGRES_URL",
            "IRNN_SEARCH_TEST_DASHBOARD_URL",
        }
        assert oct((folder / "env.sh").stat().st_mode & 0o777) == "0o600"
        pg = Postgres.attach(folder / "postgres")
        assert pg.password not in up.stdout + up.stderr
        assert env["IRNN_SEARCH_DB"] == pg.url("irnn")
        for db in ("optuna", "irnn", "mlflow", "scratch"):
            assert db in pg.databases()  # the servers outlived the `up` process
        assert _get_json(env["IRNN_SEARCH_TEST_DASHBOARD_URL"] + "/api/studies") == {"study_summaries": []}

        again = _servers("up", "--dir", str(folder))
        assert again.returncode == 1
        assert again.stderr.startswith("error: servers are already running in") and again.stderr.count("\n") == 1

        down = _servers("down", "--dir", str(folder))
        assert down.returncode == 0, down.stderr
        assert "stopped dashboard" in down.stdout and "stopped PostgreSQL" in down.stdout
        assert not servers.running(folder)
        assert _servers("down", "--dir", str(folder)).returncode == 0  # idempotent
    finally:
        servers.down(folder, say=lambda _: None)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_servers_commands_cost_the_runtime_cli_no_import_of_the_servers(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from irnn_search.cli import app

    code = "import sys, irnn_search.cli; print('irnn_search.dev.servers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "registering `servers` imported the servers"
    usage = CliRunner().invoke(app, ["servers", "up", "--help"])
    assert usage.exit_code == 0
    for option in ("--dir", "--mlflow", "--dashboard", "--no-fsync"):
        assert option in usage.output
    nothing = CliRunner().invoke(app, ["servers", "down", "--dir", str(tmp_path)])
    assert (nothing.exit_code, nothing.output) == (0, "")
