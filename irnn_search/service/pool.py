"""Local worker processes of a launch (``launch --workers N``): start them, stop them.

Each process runs ``worker.serve`` with the launcher's ``WorkerOptions``, exactly as
``irnn-search worker`` does, and stops on its own when the launcher is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

from irnn_search.service.worker import WorkerOptions, serve

log = logging.getLogger(__name__)


def worker_process(options: WorkerOptions) -> None:
    """Entry point of a spawned worker process."""
    serve(options)


def start_workers(options: WorkerOptions, *, workers: int) -> list[Any]:
    """Spawn ``workers`` local worker processes (spawn context: no forked torch or DB state).

    Each gets its own sampler stream, quiet logs and a watch on this process: a launcher that
    dies takes its workers down with it, after their current step. The launcher has opened (and
    migrated) the experiment database already, so the workers do not migrate it again."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = []
    for i in range(workers):
        mine = dataclasses.replace(
            options, stream=os.getpid() * 100 + i, watch_parent=True, quiet=True, auto_upgrade=False
        )
        p = ctx.Process(target=worker_process, args=(mine,), name=f"irnn-search-worker-{i}")
        p.start()
        procs.append(p)
    return procs


def stop_workers(procs: list[Any], signum: int, timeout_s: float, abort: threading.Event | None = None) -> list[int]:
    """Pass ``signum`` on to the live worker processes and wait up to ``timeout_s`` seconds (or
    until ``abort`` is set) for them to checkpoint, release their trials and exit; kill the rest.

    Returns the pids killed. Their trials stay RUNNING until a janitor (any worker's, within the
    grace period) fails and re-queues them, so none is lost either way."""
    import contextlib
    import signal

    for p in procs:
        if p.is_alive() and p.pid:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(p.pid, signum)
    deadline = time.monotonic() + timeout_s
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if abort is not None and abort.is_set():
            break
        for p in procs:
            p.join(timeout=0.2)
    killed = []
    for p in procs:
        if p.is_alive() and p.pid:
            log.warning("worker %s (pid %d) did not stop within %.0f s: killed", p.name, p.pid, timeout_s)
            os.kill(p.pid, signal.SIGKILL)
            killed.append(p.pid)
    for p in procs:
        p.join(timeout=10)
    return killed
