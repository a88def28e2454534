"""Real local servers on free 127.0.0.1 ports: PostgreSQL, an MLflow tracking server, optuna-dashboard.

For tests, benchmarks, CI, and for trying the shared (server) mode on one machine::

    python -m irnn_search.servers up --dir /tmp/irnn-servers --mlflow --dashboard
    source /tmp/irnn-servers/env.sh        # IRNN_SEARCH_STORAGE, IRNN_SEARCH_DB, IRNN_SEARCH_MLFLOW_URI, ...
    irnn-search db upgrade
    irnn-search launch adding-smoke --workers 2
    python -m irnn_search.servers down --dir /tmp/irnn-servers

- **PostgreSQL** (``Postgres``): ``initdb`` into ``<folder>/data`` with one password-protected
  superuser role (``irnn``, SCRAM, on TCP and on the unix socket), listening on 127.0.0.1 only,
  its socket folder inside the folder. PostgreSQL refuses to run as root: as root, the folder is
  given to the ``postgres`` user and ``initdb``/``postgres`` run as that user. The postmaster is
  started directly (not by ``pg_ctl``, which puts it in a session of its own), so it stays in the
  caller's process group, and a cleanup that kills the group takes it too.
- **MLflow** (``MlflowServer``): ``mlflow server`` on a PostgreSQL database, one worker, job
  execution off, with **proxied artifacts** (``--serve-artifacts --artifacts-destination DIR``):
  new experiments get ``mlflow-artifacts:/`` locations, so a worker on another machine uploads
  its checkpoints and plots over HTTP through the server instead of writing to a path that only
  exists on the server's disk.
- **optuna-dashboard** (``Dashboard``) on a storage URL, with the stdlib ``wsgiref`` server.

Every server keeps its state in its own folder (``server.json``, a pidfile, a log), so another
process can ``attach`` to it and stop or restart it (``down`` does). Servers created here are
stopped by a finalizer when this process exits, unless ``detach()`` was called (``up`` does, so
the servers outlive it); an attached server is never stopped by a finalizer, even if restarted
here. Passwords go into URLs but never into our messages: URLs are masked with
:func:`irnn_search.masking.mask_secrets`, and passwords and storage URLs reach the server
processes through their environment, never their command lines.

This module imports only the standard library (``psycopg`` is imported when a database is created).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from irnn_search.masking import mask_secrets

HOST = "127.0.0.1"
PG_USER = "irnn"
#: the databases ``up`` creates: Optuna's, ours, MLflow's, and a scratch database for tests
UP_DATABASES = ("optuna", "irnn", "mlflow", "scratch")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: where Debian and Ubuntu keep each major version's server binaries (``15/bin``)
SYSTEM_POSTGRESQL = Path("/usr/lib/postgresql")
_SOCKET_PATH_MAX = 100  # a unix socket path is at most 107 bytes; ".s.PGSQL.NNNNN" takes 15 of them


class ServerError(RuntimeError):
    """A server could not be found, initialised, started or stopped; the message is one clear line."""


# --------------------------------------------------------------------------------------------- helpers


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether a server could not listen on ``port`` (connections in TIME_WAIT do not count, as for a server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _is_root() -> bool:
    return os.geteuid() == 0


def _postgres_account() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError(
            "PostgreSQL refuses to run as root and there is no 'postgres' user here: "
            "create one (useradd --system postgres) or run as an ordinary user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL program as ``postgres`` when we are root."""
    if not _is_root():
        return {}
    uid, gid = _postgres_account()
    return {"user": uid, "group": gid, "extra_groups": []}


def find_postgres_bindir() -> Path:
    """The folder of ``initdb`` and ``postgres``.

    Looked up in this order: ``IRNN_SEARCH_PG_BINDIR``, ``pg_config --bindir``, ``initdb`` on the
    PATH, then the newest ``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu keep them there).
    """
    candidates: list[Path] = []
    if os.environ.get("IRNN_SEARCH_PG_BINDIR"):
        candidates.append(Path(os.environ["IRNN_SEARCH_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(SYSTEM_POSTGRESQL.glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise ServerError(
        "PostgreSQL server binaries (initdb, postgres) not found: install PostgreSQL "
        "(apt-get install postgresql-15) or set IRNN_SEARCH_PG_BINDIR to the folder that holds them"
    )


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[1]), int(fields[19])


def _alive(pid: int, start: int | None = None) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and (start is None or stat[1] == start)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return mask_secrets(" | ".join(line.strip() for line in text[-lines:]))


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------- PostgreSQL


def _stop_postmaster(data: Path, proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL; used by stop() and finalizers."""
    if proc is not None and proc.poll() is not None:
        proc = None  # ours has exited: stop whatever postmaster now runs in data (another process may have started it)
    pid = proc.pid if proc is not None else _postmaster_pid(data)
    if pid is None:
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not _alive(pid):
            return
        _signal(pid, sig)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                return
        elif _wait_gone([pid], wait):
            return


def _postmaster_pid(data: Path) -> int | None:
    try:
        first = (data / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    pid = int(first) if first.strip().isdigit() else None
    return pid if pid is not None and _alive(pid) else None


class Postgres:
    """A PostgreSQL server of our own in ``folder`` (data in ``folder/data``, log in ``folder/postgres.log``).

    ``fsync=False`` trades crash safety for speed (tests; never for data you keep).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        port: int | None = None,
        user: str = PG_USER,
        password: str | None = None,
        bindir: str | Path | None = None,
        fsync: bool = True,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.port = port or free_port()
        self.user = user
        self.password = password or secrets.token_urlsafe(18)
        self.bindir = Path(bindir) if bindir else find_postgres_bindir()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        #: False for a server attached by its folder: this process may stop and start it, but a start
        #: here does not stop it when this process exits (it belongs to whoever created it)
        self.owned = True

    # -- paths and state
    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def socket_dir(self) -> Path | None:
        path = self.folder / "run"
        return path if len(str(path)) <= _SOCKET_PATH_MAX else None

    def __repr__(self) -> str:
        return f"Postgres({self.folder}, port={self.port}, {'running' if self.running else 'stopped'})"

    def _save_state(self) -> None:
        state = {"port": self.port, "user": self.user, "bindir": str(self.bindir), "fsync": self.fsync}
        _write_private(self.folder / "server.json", json.dumps(state, indent=1))
        _write_private(self.folder / "password", self.password)

    @classmethod
    def attach(cls, folder: str | Path) -> Postgres:
        """The server whose state lives in ``folder`` (running or not), started by another process."""
        folder = Path(folder)
        try:
            state = json.loads((folder / "server.json").read_text())
            password = (folder / "password").read_text().strip()
        except (OSError, ValueError) as exc:
            raise ServerError(f"no PostgreSQL server state in {folder}: {exc}") from None
        server = cls(
            folder,
            port=state["port"],
            user=state["user"],
            password=password,
            bindir=state["bindir"],
            fsync=state["fsync"],
        )
        server.owned = False
        return server

    # -- URLs
    def url(self, db: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """``postgresql+psycopg://irnn:PASSWORD@127.0.0.1:PORT/DB`` (mask it before printing)."""
        return f"{driver}://{self.user}:{self.password}@{HOST}:{self.port}/{db}"

    # -- lifecycle
    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self) -> Postgres:
        """``initdb`` (skipped when the folder already holds a cluster) and our settings; returns self."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.initialised:
            return self
        for program in ("initdb", "postgres"):
            if not (self.bindir / program).is_file():
                raise ServerError(f"PostgreSQL's {program} is not in {self.bindir}: install PostgreSQL or fix the path")
        as_pg = _as_server_user()
        if as_pg:
            os.chown(self.folder, as_pg["user"], as_pg["group"])
            self.folder.chmod(0o700)
            check = subprocess.run(["test", "-w", str(self.folder)], check=False, **as_pg)
            if check.returncode != 0:
                raise ServerError(
                    f"the postgres user cannot reach {self.folder} (PostgreSQL refuses to run as root, so it runs as "
                    "'postgres'): use a folder under /tmp, or make its parent folders searchable (chmod o+x)"
                )
        pwfile = self.folder / ".initdb-password"
        _write_private(pwfile, self.password + "\n")
        if as_pg:
            os.chown(pwfile, as_pg["user"], as_pg["group"])
        cmd = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        if not self.fsync:
            cmd.append("--no-sync")
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.folder, **as_pg)
        finally:
            pwfile.unlink(missing_ok=True)
        if out.returncode != 0:
            lines = [x for x in (out.stderr or out.stdout).strip().splitlines() if x.strip()]
            raise ServerError(f"initdb failed in {self.data}: {mask_secrets(lines[-1] if lines else 'no output')}")
        socket_dir = self.socket_dir
        if socket_dir is not None:
            socket_dir.mkdir(exist_ok=True)
            if as_pg:
                os.chown(socket_dir, as_pg["user"], as_pg["group"])
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{socket_dir or ''}'",
            "max_connections": "200",
            "logging_collector": "off",
        }
        if not self.fsync:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# irnn_search.servers\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        self._save_state()
        return self

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (ours or another process's)."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return _postmaster_pid(self.data)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60.0) -> Postgres:
        """Start the server (``init()`` first if needed) and wait until it accepts connections; returns self."""
        if not self.initialised:
            self.init()
        if self.running:
            return self
        if port_in_use(self.port):
            raise ServerError(f"cannot start PostgreSQL: port {self.port} on {HOST} is in use")
        log = self.log.open("ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                **_as_server_user(),
            )
        finally:
            log.close()
        self._arm_finalizer()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                self.proc = None
                tail = _tail(self.log, 3)
                if "already in use" in tail or "could not bind" in tail:
                    raise ServerError(f"cannot start PostgreSQL: port {self.port} on {HOST} is in use ({tail})")
                raise ServerError(f"PostgreSQL did not start (log {self.log}): {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"PostgreSQL did not accept connections within {timeout:.0f} s (log {self.log})")
            time.sleep(0.05)
        return self

    def _ready(self) -> bool:
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def _arm_finalizer(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop_postmaster, self.data, self.proc) if self.owned else None

    def detach(self) -> None:
        """Let the server outlive this object and this process (stop it later with ``attach(...).stop()``)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: open transactions are rolled back and clients disconnected; no-op when stopped."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _stop_postmaster(self.data, self.proc, timeout)
        self.proc = None
        if _postmaster_pid(self.data) is not None:
            raise ServerError(f"PostgreSQL in {self.data} did not stop within {timeout:.0f} s")

    def restart(self, timeout: float = 60.0) -> Postgres:
        """Fast stop then start on the same port: every client connection is cut."""
        self.stop()
        return self.start(timeout)

    # -- databases
    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(
            host=HOST, port=self.port, user=self.user, password=self.password, dbname="postgres", autocommit=True
        )

    def databases(self) -> list[str]:
        with self._admin() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname").fetchall()
        return [r[0] for r in rows]

    def create_database(self, name: str, *, exist_ok: bool = True) -> str:
        """Create database ``name`` (letters, digits and ``_``) and return its URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r}: use letters, digits and '_' (at most 63, not a digit first)")
        with self._admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists and not exist_ok:
                raise ServerError(f"database {name!r} already exists")
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting its clients."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r}: use letters, digits and '_'")
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------------- MLflow and optuna-dashboard


def _stop_tree(proc: subprocess.Popen[bytes] | None, pid: int, start: int | None, timeout: float = 15.0) -> None:
    """SIGTERM a server, then its leftover descendants; SIGKILL whatever is still there."""
    if not _alive(pid, start):
        if proc is not None:
            proc.poll()
        return
    tree = [pid, *_descendants(pid)]
    _signal(pid, signal.SIGTERM)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    else:
        _wait_gone([pid], timeout)
    if not _wait_gone(tree, 2.0):
        for p in tree:
            _signal(p, signal.SIGTERM)
        if not _wait_gone(tree, 5.0):
            for p in tree:
                _signal(p, signal.SIGKILL)
            _wait_gone(tree, 5.0)
    if proc is not None:
        proc.poll()


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
        return (pid, start) if _alive(pid, start) else None

    @property
    def pid(self) -> int | None:
        found = self._pid()
        return found[0] if found else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def ready(self) -> bool:
        return _http_ok(self.url + self.ready_path)

    def start(self, timeout: float | None = None) -> Any:
        """Start the server and wait until it answers its readiness URL; returns self."""
        if self.running:
            return self
        timeout = self.start_timeout if timeout is None else timeout
        if port_in_use(self.port):
            raise ServerError(f"cannot start {self.name}: port {self.port} on {HOST} is in use")
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_private(self.folder / "server.json", json.dumps(self._state(), indent=1))
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
        stat = _proc_stat(self.proc.pid)
        self.pidfile.write_text(f"{self.proc.pid} {stat[1] if stat else 0}\n")
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = None
        if self.owned:
            self._finalizer = weakref.finalize(self, _stop_tree, self.proc, self.proc.pid, stat[1] if stat else None)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                self.proc = None
                raise ServerError(f"{self.name} exited at start (log {self.log}): {_tail(self.log)}")
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
            _stop_tree(proc, found[0], found[1], timeout)
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
        state = _read_state(Path(folder), "MLflow")
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
        state = _read_state(Path(folder), "optuna-dashboard")
        server = cls(folder, state["storage_url"], port=state["port"])
        server.owned = False
        return server

    def _command(self) -> tuple[list[str], dict[str, str]]:
        # run_server rather than the CLI so that the storage URL (with its password) stays off the command line
        return [sys.executable, "-c", _DASHBOARD_MAIN, HOST, str(self.port)], {
            "IRNN_SEARCH_DASHBOARD_STORAGE": self.storage_url
        }


def _read_state(folder: Path, what: str) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((folder / "server.json").read_text())
    except (OSError, ValueError) as exc:
        raise ServerError(f"no {what} server state in {folder}: {exc}") from None
    return state


# --------------------------------------------------------------------------------------- up / down


def _env_file(values: dict[str, str]) -> str:
    lines = [
        "# Written by `python -m irnn_search.servers up`; it holds passwords: keep it private.",
        "# `python -m irnn_search.servers down --dir <this folder>` stops the servers.",
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
        raise ServerError(
            f"servers are already running in {folder}: run `python -m irnn_search.servers down --dir {folder}`"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if _is_root():
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
        _write_private(folder / "env.sh", _env_file(values))
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m irnn_search.servers",
        description="Start or stop local PostgreSQL, MLflow and optuna-dashboard servers on free 127.0.0.1 ports.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the servers, write DIR/env.sh and leave them running")
    p_up.add_argument("--dir", required=True, help="state folder (data, logs, pidfiles, env.sh)")
    p_up.add_argument("--mlflow", action="store_true", help="also an MLflow tracking server")
    p_up.add_argument("--dashboard", action="store_true", help="also optuna-dashboard on the optuna database")
    p_up.add_argument("--no-fsync", action="store_true", help="faster PostgreSQL without crash safety (tests, CI)")
    p_down = sub.add_parser("down", help="stop the servers of DIR")
    p_down.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        if args.command == "up":
            up(args.dir, mlflow=args.mlflow, dashboard=args.dashboard, fsync=not args.no_fsync, say=say)
        else:
            down(args.dir, say=say)
    except ServerError as exc:
        print(f"error: {mask_secrets(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def reachable_tempdir(prefix: str = "irnn-servers-") -> Path:
    """A new folder under the system temp dir (``/tmp``), where the postgres user can reach it when we are root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main())
