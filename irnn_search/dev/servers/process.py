"""Processes, ports and private files: what every local server here is made of (standard library only)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from irnn_search.masking import mask_secrets

HOST = "127.0.0.1"


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


def is_root() -> bool:
    return os.geteuid() == 0


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited
        return None
    return int(fields[1]), int(fields[19])


def alive(pid: int, start: int | None = None) -> bool:
    stat = proc_stat(pid)
    return stat is not None and (start is None or stat[1] == start)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return mask_secrets(" | ".join(line.strip() for line in text[-lines:]))


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------- PostgreSQL


def stop_tree(proc: subprocess.Popen[bytes] | None, pid: int, start: int | None, timeout: float = 15.0) -> None:
    """SIGTERM a server, then its leftover descendants; SIGKILL whatever is still there."""
    if not alive(pid, start):
        if proc is not None:
            proc.poll()
        return
    tree = [pid, *descendants(pid)]
    send_signal(pid, signal.SIGTERM)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    else:
        wait_gone([pid], timeout)
    if not wait_gone(tree, 2.0):
        for p in tree:
            send_signal(p, signal.SIGTERM)
        if not wait_gone(tree, 5.0):
            for p in tree:
                send_signal(p, signal.SIGKILL)
            wait_gone(tree, 5.0)
    if proc is not None:
        proc.poll()


def read_state(folder: Path, what: str) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((folder / "server.json").read_text())
    except (OSError, ValueError) as exc:
        raise ServerError(f"no {what} server state in {folder}: {exc}") from None
    return state


def reachable_tempdir(prefix: str = "irnn-servers-") -> Path:
    """A new folder under the system temp dir (``/tmp``), where the postgres user can reach it when we are root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
