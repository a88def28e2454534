"""Local HTTP servers in the caller's process group: the MLflow tracking server and optuna-dashboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from irnn_search.dev.servers.process import (
    HOST,
    ServerError,
    alive,
    free_port,
    http_ok,
    log_tail,
    port_in_use,
    proc_stat,
    read_state,
    stop_tree,
    write_private,
)


class _HttpServer:
    """A server process with a pidfile, a log and a readiness URL, in the caller's process group."""

    name = "server"
    ready_path = "/"
    start_timeout = 60.0

    def __init__(self, folder: str | Path, *, port: int | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        #: False for a server attached by its folder: this process may stop and start it, but a start
        #: here does not stop it when this process exits (it belongs to whoever created it)
        self.owned = True

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    uri = url

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return self.folder / f"{self.name}.pid"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url}, {'running' if self.running else 'stopped'})"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {"port": self.port}

    def _pid(self) -> tuple[int, int | None] | None:
        try:
            pid_s, start_s = self.pidfile.read_text().split()
            pid, start = int(pid_s), int(start_s)
        except (OSError, ValueError):
            return None
        return (pid, start) if alive(pid, start) else None

    @property
    def pid(self) -> int | None:
        found = self._pid()
        return found[0] if found else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def ready(self) -> bool:
        return http_ok(self.url + self.ready_path)

    def start(self, timeout: float | None = None) -> Any:
        """Start the server and wait until it answers its readiness URL; returns self."""
        if self.running:
            return self
        timeout = self.start_timeout if timeout is None else timeout
        if port_in_use(self.port):
            raise ServerError(f"cannot start {self.name}: port {self.port} on {HOST} is in use")
        self.folder.mkdir(parents=True, exist_ok=True)
        write_private(self.folder / "server.json", json.dumps(self._state(), indent=1))
        cmd, extra_env = self._command()
        log = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env={**os.environ, **extra_env},
            )
        finally:
            log.close()
        stat = proc_stat(self.proc.pid)
        self.pidfile.write_text(f"{self.proc.pid} {stat[1] if stat else 0}\n")
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = None
        if self.owned:
            self._finalizer = weakref.finalize(self, stop_tree, self.proc, self.proc.pid, stat[1] if stat else None)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                self.proc = None
                raise ServerError(f"{self.name} exited at start (log {self.log}): {log_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} did not answer {self.ready_path} within {timeout:.0f} s (log {self.log})"
                )
            time.sleep(0.2)
        return self

    def detach(self) -> None:
        """Let the server outlive this object and this process (stop it later with ``attach(...).stop()``)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and every process it started; no-op when it is not running."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        found = self._pid()
        if found is not None:
            proc = self.proc if self.proc is not None and self.proc.pid == found[0] else None
            stop_tree(proc, found[0], found[1], timeout)
        self.proc = None
        self.pidfile.unlink(missing_ok=True)

    def restart(self) -> Any:
        self.stop()
        return self.start()


class MlflowServer(_HttpServer):
    """``mlflow server`` on ``backend_store_uri`` with proxied artifacts in ``folder/artifacts``.

    The artifact choice: ``--serve-artifacts --artifacts-destination DIR``, so clients log
    artifacts as ``mlflow-artifacts:/`` URIs over HTTP (workers on other machines can upload
    checkpoints); ``--default-artifact-root DIR`` would make each client write into DIR itself.
    """

    name = "mlflow"
    ready_path = "/health"
    start_timeout = 120.0  # 11-14 s on an idle 2-core machine; migrations on a new database take longer

    def __init__(self, folder: str | Path, backend_store_uri: str, *, port: int | None = None) -> None:
        super().__init__(folder, port=port)
        self.backend_store_uri = backend_store_uri

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    def _state(self) -> dict[str, Any]:
        return {"port": self.port, "backend_store_uri": self.backend_store_uri}

    @classmethod
    def attach(cls, folder: str | Path) -> MlflowServer:
        state = read_state(Path(folder), "MLflow")
        server = cls(folder, state["backend_store_uri"], port=state["port"])
        server.owned = False
        return server

    def _command(self) -> tuple[list[str], dict[str, str]]:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {
            "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri,  # not on the command line: it holds a password
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        return cmd, env


_DASHBOARD_MAIN = (
    "import os, sys\n"
    "import optuna\n"
    "from optuna_dashboard import run_server\n"
    "url = os.environ.pop('IRNN_SEARCH_DASHBOARD_STORAGE')\n"
    "# an RDB storage creates Optuna's tables when they are missing (the dashboard alone refuses an empty database)\n"
    "storage = optuna.storages.RDBStorage(url) if '://' in url else url\n"
    "run_server(storage, host=sys.argv[1], port=int(sys.argv[2]))\n"
)


class Dashboard(_HttpServer):
    """optuna-dashboard on ``storage_url`` (its ``run_server``: the stdlib wsgiref server, as ``--server wsgiref``)."""

    name = "dashboard"
    ready_path = "/api/studies"
    start_timeout = 60.0

    def __init__(self, folder: str | Path, storage_url: str, *, port: int | None = None) -> None:
        super().__init__(folder, port=port)
        self.storage_url = storage_url

    def _state(self) -> dict[str, Any]:
        return {"port": self.port, "storage_url": self.storage_url}

    @classmethod
    def attach(cls, folder: str | Path) -> Dashboard:
        state = read_state(Path(folder), "optuna-dashboard")
        server = cls(folder, state["storage_url"], port=state["port"])
        server.owned = False
        return server

    def _command(self) -> tuple[list[str], dict[str, str]]:
        # run_server rather than the CLI so that the storage URL (with its password) stays off the command line
        return [sys.executable, "-c", _DASHBOARD_MAIN, HOST, str(self.port)], {
            "IRNN_SEARCH_DASHBOARD_STORAGE": self.storage_url
        }
