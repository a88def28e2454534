"""The chaos soak (issue 17): a worker pool on a real PostgreSQL and a real MLflow server runs a
study while a driver, at random moments, SIGKILLs and SIGTERMs workers, starts new ones, restarts
PostgreSQL and restarts the MLflow server; then the pool drains and every invariant of the
worker-pool guarantees (README, "What a worker guarantees") is checked on the stores
(``tests/chaos_checks.py``).

Used by ``tests/service/test_chaos.py`` (CI size) and ``benchmarks/chaos_soak.py`` (longer runs).
The driver is seeded: the same seed gives the same sequence of faults and waits (the moments they
land in the trials still depend on the machine's speed). Every fault is logged with its time.

Each worker gets its own state folder (``IRNN_SEARCH_HOME``), as on a machine of its own; a
replacement either comes up on a new machine (an empty folder) or on the machine of a worker that
died (its folder, with the dead worker's local checkpoints), at random.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tests.chaos_checks import Summary, check, collect, counts
from tests.small_study import small_study

log = logging.getLogger(__name__)

DESCRIPTION = "chaos soak: a small study under faults"

#: fault kinds and their relative weights: worker faults are the common ones, server restarts rarer
FAULTS = {"sigkill": 3.0, "sigterm": 2.0, "restart_postgres": 1.0, "restart_mlflow": 1.0}
#: the first faults of every soak, one of each kind, a few seconds apart: however fast the study
#: runs on the machine at hand, each kind lands while trials run (random draws follow)
OPENING = ("sigkill", "restart_postgres", "sigterm", "restart_mlflow")


@dataclass(frozen=True)
class SoakConfig:
    workers: int = 2  # worker processes kept alive
    trials: int = 12  # trial budget of each of the two studies
    steps: int = 300  # optimizer steps per trial
    report_every: int = 20  # steps between reports (and checkpoints)
    chaos_s: float = 60.0  # how long faults are injected (they stop earlier when the study is done)
    fault_every_s: float = 6.0  # mean seconds between faults (exponential waits)
    seed: int = 0
    drain_timeout_s: float = 300.0  # after the chaos: the pool must finish the study within this
    heartbeat_s: int = 1
    grace_s: int = 4
    db_retry_s: int = 120
    max_lost: int = 5  # IRNN_SEARCH_MAX_LOST_ATTEMPTS: a lineage survives a few SIGKILLs
    pg_down_s: tuple[float, float] = (0.5, 4.0)  # how long PostgreSQL stays down, drawn uniformly
    mlflow_down_s: tuple[float, float] = (0.0, 3.0)  # same for the MLflow server (its restart adds ~10 s)


@dataclass
class Worker:
    name: str
    home: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    killed_at: float | None = None  # wall time of the SIGKILL, if the driver sent one
    termed_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Stores:
    """Where the soak's study lives: a PostgreSQL server object (``stop``/``start``), an MLflow server
    object (``stop``/``start``/``uri``) and the databases on the first (``irnn_search.dev.servers``)."""

    pg: Any
    mlflow: Any
    storage: str
    db: str

    @classmethod
    def create(cls, pg: Any, mlflow: Any) -> Stores:
        tag = uuid.uuid4().hex[:12]
        return cls(pg, mlflow, pg.create_database(f"chaos_optuna_{tag}"), pg.create_database(f"chaos_irnn_{tag}"))


@dataclass
class Soak:
    config: SoakConfig
    stores: Stores
    root: Path
    spec_name: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:8]}")
    workers: list[Worker] = field(default_factory=list)
    faults: list[tuple[float, str, str]] = field(default_factory=list)  # (wall time, kind, detail)
    _storage: Any = None

    # -- processes ------------------------------------------------------------------------------
    def env(self, home: str) -> dict[str, str]:
        c = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRNN_SEARCH_")}
        env.update(
            IRNN_SEARCH_HOME=str(self.root / home),
            IRNN_SEARCH_STORAGE=self.stores.storage,
            IRNN_SEARCH_DB=self.stores.db,
            IRNN_SEARCH_MLFLOW_URI=self.stores.mlflow.uri,
            IRNN_SEARCH_HEARTBEAT_S=str(c.heartbeat_s),
            IRNN_SEARCH_GRACE_S=str(c.grace_s),
            IRNN_SEARCH_DB_RETRY_S=str(c.db_retry_s),
            IRNN_SEARCH_MAX_LOST_ATTEMPTS=str(c.max_lost),
            IRNN_SEARCH_THREADS="1",
            MLFLOW_DISABLE_TELEMETRY="true",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
            PYTHONUNBUFFERED="1",
            COLUMNS="500",  # one line per message in the logs, which the checks read
        )
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "irnn_search", *args]
        return subprocess.run(cmd, env=self.env("admin"), capture_output=True, text=True, timeout=300)

    def start_worker(self, home: str | None = None) -> Worker:
        name = f"w{len(self.workers)}"
        home = home or name
        path = self.root / f"{name}.log"
        with open(path, "wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "irnn_search", "worker"],
                env=self.env(home),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(name, home, proc, path, time.time())
        self.workers.append(worker)
        log.info("started worker %s (pid %d, home %s)", name, proc.pid, home)
        return worker

    def replacement_home(self, rng: random.Random) -> str | None:
        """None (a new machine) or the folder of a worker that is gone (its machine came back)."""
        live = {w.home for w in self.workers if w.alive}
        dead = sorted({w.home for w in self.workers if not w.alive} - live)
        return rng.choice(dead) if dead and rng.random() < 0.5 else None

    # -- the study ------------------------------------------------------------------------------
    def launch(self) -> list[str]:
        c = self.config
        up = self.cli("db", "upgrade")
        assert up.returncode == 0, up.stdout + up.stderr
        spec = self.root / f"{self.spec_name}.toml"
        text = small_study(
            description=DESCRIPTION, steps=c.steps, report_every=c.report_every, trials=c.trials, rnn=True
        )
        spec.write_text(text)
        out = self.cli("launch", str(spec), "--no-run")
        assert out.returncode == 0, out.stdout + out.stderr
        return self.study_names

    @property
    def study_names(self) -> list[str]:
        return [f"{self.spec_name}.irnn", f"{self.spec_name}.rnn"]

    def storage(self) -> Any:
        if self._storage is None:
            self._storage = optuna.storages.RDBStorage(self.stores.storage, engine_kwargs={"pool_pre_ping": True})
        return self._storage

    def done(self) -> bool:
        """Every budget met and nothing running or queued, read independently of the service's own
        accounting: counted = not released (interrupted or lost, re-queued) and not surplus."""
        try:
            for name in self.study_names:
                trials = optuna.load_study(study_name=name, storage=self.storage()).get_trials(deepcopy=False)
                if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
                    return False
                counted = [t for t in trials if counts(t)]
                if len(counted) < self.config.trials:
                    return False
        except Exception as exc:  # the driver's own reads meet the same outages
            log.info("study state unreadable for now: %s", exc)
            return False
        return True

    # -- faults ---------------------------------------------------------------------------------
    def inject(self, kind: str, rng: random.Random) -> None:
        c = self.config
        now = time.time()
        live = [w for w in self.workers if w.alive]
        if kind in ("sigkill", "sigterm") and live:
            victim = rng.choice(live)
            if kind == "sigkill":
                victim.proc.send_signal(signal.SIGKILL)
                victim.killed_at = now
            else:
                victim.proc.send_signal(signal.SIGTERM)
                victim.termed_at = now
            self.faults.append((now, kind, victim.name))
            self.start_worker(self.replacement_home(rng))
        elif kind == "restart_postgres":
            down = rng.uniform(*c.pg_down_s)
            self.stores.pg.stop()
            time.sleep(down)
            self.stores.pg.start()
            self.faults.append((now, kind, f"down {time.time() - now:.1f} s"))
        elif kind == "restart_mlflow":
            down = rng.uniform(*c.mlflow_down_s)
            self.stores.mlflow.stop()
            time.sleep(down)
            self.stores.mlflow.start()
            self.faults.append((now, kind, f"down {time.time() - now:.1f} s"))
        else:
            return
        log.info("fault %s: %s", kind, self.faults[-1][2])

    def top_up(self, rng: random.Random) -> None:
        """Keep ``workers`` processes alive (a pool's supervisor restarting the ones that left)."""
        while sum(w.alive for w in self.workers) < self.config.workers:
            self.start_worker(self.replacement_home(rng))

    def run(self) -> Summary:
        """Launch, inject faults for ``chaos_s``, drain, check; the summary (its ``violations``
        list every invariant broken, with the trial)."""
        c = self.config
        rng = random.Random(c.seed)
        kinds, weights = list(FAULTS), list(FAULTS.values())
        started = time.time()
        self.launch()
        for _ in range(c.workers):
            self.start_worker()
        chaos_end = time.monotonic() + c.chaos_s
        opening = list(OPENING)
        next_fault = time.monotonic() + rng.uniform(2.0, 4.0)
        while time.monotonic() < chaos_end and not self.done():
            if time.monotonic() >= next_fault:
                self.inject(opening.pop(0) if opening else rng.choices(kinds, weights)[0], rng)
                wait = rng.uniform(2.0, 4.0) if opening else rng.expovariate(1 / c.fault_every_s)
                next_fault = time.monotonic() + wait
            self.top_up(rng)
            time.sleep(0.5)
        chaos_s = time.time() - started
        # Drain: workers leave once every budget is met; a supervisor restarts any that left early.
        # Workers that leave a study that is not done (it is stuck) are restarted a few times only.
        deadline, cap = time.monotonic() + c.drain_timeout_s, len(self.workers) + 4 * c.workers
        while not self.done() and time.monotonic() < deadline:
            if len(self.workers) < cap:
                self.top_up(rng)
            time.sleep(1.0)
        timed_out = not self.done()
        linger = 2 * c.grace_s + 2 * c.heartbeat_s + 60  # a worker's wait for trials elsewhere, and slack
        for w in self.workers:
            try:
                w.proc.wait(linger)
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not leave after the study was done: killed", w.name)
                w.proc.kill()
                w.proc.wait(10)
        wall_s = time.time() - started
        if self._storage is not None:
            self._storage.remove_session()
            self._storage.engine.dispose()
        state = collect(self)
        summary = check(self, state)
        summary.wall_s, summary.chaos_s = wall_s, chaos_s
        summary.faults = dict(Counter(kind for _, kind, _ in self.faults))
        if timed_out:
            summary.violations.insert(0, f"drain: the study was not done {c.drain_timeout_s:.0f} s after the chaos")
        return summary

    def stop_all(self) -> None:
        """Kill every worker this soak started that is still alive (cleanup after a failure)."""
        for w in self.workers:
            if w.alive:
                w.proc.kill()
                w.proc.wait(10)


def soak(pg: Any, mlflow: Any, root: Path, config: SoakConfig) -> Summary:
    """Run one soak on these servers (``irnn_search.dev.servers.Postgres`` and ``MlflowServer``, or
    objects with the same ``stop``/``start``/``create_database``/``uri``), in folder ``root``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = Soak(config, Stores.create(pg, mlflow), root)
    try:
        return s.run()
    finally:
        s.stop_all()
        for server in (pg, mlflow):  # leave the servers up, as a restart fault left them
            if not server.running:
                server.start()
