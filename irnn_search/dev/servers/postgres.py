"""A PostgreSQL server of our own: ``initdb``, start, stop, databases."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any

from irnn_search.dev.servers.process import (
    HOST,
    ServerError,
    alive,
    free_port,
    is_root,
    log_tail,
    port_in_use,
    send_signal,
    wait_gone,
    write_private,
)
from irnn_search.masking import mask_secrets

PG_USER = "irnn"
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: where Debian and Ubuntu keep each major version's server binaries (``15/bin``)
SYSTEM_POSTGRESQL = Path("/usr/lib/postgresql")
_SOCKET_PATH_MAX = 100  # a unix socket path is at most 107 bytes; ".s.PGSQL.NNNNN" takes 15 of them


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
    if not is_root():
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
        if proc is None and not alive(pid):
            return
        send_signal(pid, sig)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                return
        elif wait_gone([pid], wait):
            return


def _postmaster_pid(data: Path) -> int | None:
    try:
        first = (data / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    pid = int(first) if first.strip().isdigit() else None
    return pid if pid is not None and alive(pid) else None


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
        write_private(self.folder / "server.json", json.dumps(state, indent=1))
        write_private(self.folder / "password", self.password)

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
        write_private(pwfile, self.password + "\n")
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
            conf.write("\n# irnn_search.dev.servers\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
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
                tail = log_tail(self.log, 3)
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
