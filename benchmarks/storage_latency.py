"""Optuna storage latency as our workers see it: per-operation p50/p99, trials/hour, overhead, growth.

What one trial costs a worker outside training, operation by operation, on the storage the workers
really use (``irnn_search.service.storage.open_storage``: the retrying ``RDBStorage``, pool of 1+2,
pre-ping, heartbeats on, wrapped in Optuna's ``_CachedStorage`` by ``load_study``), with the
sampler and pruner of ``studies/pmnist.toml`` (TPE with constant liar, ASHA) and the model ``irnn``
sampled by the real ``irnn_search.search.space.suggest``. Per trial, in the order of our worker
loop (``service.worker`` and ``service.objective.run_one``):

- ``usage``          ``service.budget.usage(study)``: the budget check before each pick (one
                     aggregate query by state and outcome)
- ``janitor sweep``  ``optuna.storages.fail_stale_trials``: the worker's janitor thread runs it every
                     heartbeat interval (10 s), so once per 10-s trial; timed here in line
- ``ask``            ``study.ask()``: creates the trial row
- ``surplus check``  ``service.budget.surplus``: the objective's first read (the same query)
- ``suggest``        ``space.suggest``: the sampler (TPE's CPU) plus one write per parameter
- ``heartbeat``      ``storage.record_heartbeat`` (once per trial, as a 10-s trial does)
- ``report``         ``trial.report(value, step)``, ``--reports`` times
- ``prune check``    ``trial.should_prune()`` after a report where ASHA can decide (``PruneGate``: a
                     rung step was reached; the first report); its decision is ignored, so
                     every trial makes all its reports (the full-length trial, the upper bound)
- ``user attrs``     five ``trial.set_user_attr`` (lineage, steps_per_s, parameters, best step, outcome)
- ``tell``           ``study.tell(trial, value)``

Each is timed with ``time.perf_counter``. The time spent inside PostgreSQL round trips (every
``execute`` and ``commit`` of psycopg, main thread only) is summed separately, so "DB" below is
round trips and the rest is client CPU (SQLAlchemy, Optuna, TPE).

Two experiments:

- **Workers**: 1, 4 and 16 worker *processes* (spawned, as ours are) share one study and run
  trivial trials for ``--seconds`` each; each also runs our janitor thread. Reported: trials/hour,
  storage time per trial, its overhead on a 10-second trial (t / (t + 10 s)) and the peak number of
  client connections in ``pg_stat_activity``.
- **Growth**: one study bulk-filled with 100, 1,000 and 10,000 finished trials (batch inserts
  through Optuna's own ORM models, 6 user attrs and up to 10 intermediate values each); at each size,
  a fresh process-like storage times its first ``usage()`` (a worker's cold read), then
  ``--trials`` trials with TPE and the same number with ``RandomSampler`` (TPE's CPU cost is the
  difference in ``suggest``).

By default a PostgreSQL 15 server of our own is started on a free 127.0.0.1 port
(``irnn_search.dev.servers.Postgres``, fsync on like a real one) and always removed at the end.

    python benchmarks/storage_latency.py [--quick] [--workers 1,4,16] [--seconds 45]
        [--sizes 100,1000,10000] [--trials 40] [--reports 10] [--url URL | --sqlite] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from irnn_search.masking import mask_secrets
from irnn_search.search.space import PruneGate, build_pruner, build_sampler, suggest
from irnn_search.search.spec import ModelSpec, PrunerSpec, StudySpec
from irnn_search.search.validate import load_spec
from irnn_search.service.budget import surplus, usage
from irnn_search.service.recovery import Janitor
from irnn_search.service.storage import open_storage

REPO = Path(__file__).resolve().parent.parent
SPEC, MODEL = "pmnist", "irnn"
HEARTBEAT_S, GRACE_S = 10, 30  # the workers' defaults (service.storage)
TRIAL_S = 10.0  # the trial length the overhead goal is stated against
OPS = (
    "usage",
    "janitor sweep",
    "ask",
    "surplus check",
    "suggest",
    "heartbeat",
    "report",
    "prune check",
    "user attrs",
    "tell",
)

# --------------------------------------------------------------------------------------- DB clock


class DbClock:
    """Seconds and round trips spent in psycopg ``execute``/``executemany``/``commit``/``rollback``
    by the main thread (the janitor thread's are not counted). With client-side cursors the rows
    arrive during ``execute``, so this is the time the server and the socket take."""

    seconds = 0.0
    calls = 0
    _main = threading.main_thread().ident
    installed = False

    @classmethod
    def install(cls) -> None:
        if cls.installed:
            return
        try:
            import psycopg
        except ImportError:
            return

        def wrap(owner: type, name: str) -> None:
            inner = getattr(owner, name)

            def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
                if threading.get_ident() != cls._main:
                    return inner(self, *args, **kwargs)
                t0 = time.perf_counter()
                try:
                    return inner(self, *args, **kwargs)
                finally:
                    cls.seconds += time.perf_counter() - t0
                    cls.calls += 1

            setattr(owner, name, timed)

        for owner, names in (
            (psycopg.Cursor, ("execute", "executemany")),
            (psycopg.Connection, ("commit", "rollback")),
        ):
            for name in names:
                wrap(owner, name)
        cls.installed = True


class TrialTimer:
    """Per-operation sums over one trial: ``{op: [wall_s, db_s, round_trips, calls]}``."""

    def __init__(self) -> None:
        self.ops: dict[str, list[float]] = {op: [0.0, 0.0, 0, 0] for op in OPS}

    @contextlib.contextmanager
    def __call__(self, op: str) -> Iterator[None]:
        db0, n0 = DbClock.seconds, DbClock.calls
        t0 = time.perf_counter()
        try:
            yield
        finally:
            rec = self.ops[op]
            rec[0] += time.perf_counter() - t0
            rec[1] += DbClock.seconds - db0
            rec[2] += DbClock.calls - n0
            rec[3] += 1


# ------------------------------------------------------------------------------------ one trial


@functools.cache
def pruner_spec() -> PrunerSpec:
    return model_spec()[0].pruner


def model_spec() -> tuple[StudySpec, ModelSpec]:
    spec = load_spec(SPEC, REPO / "studies")
    return spec, spec.model(MODEL)


def run_trial(
    study: optuna.Study, model: ModelSpec, reports: int, rng: random.Random, trial_s: float = 0.0
) -> dict[str, list[float]]:
    """One trivial trial, timed operation by operation, as a worker runs it (see the docstring).

    ``trial_s`` > 0 stands in for training: that many seconds of sleep, spread before the reports
    (not timed)."""
    timer = TrialTimer()
    gate = PruneGate(pruner_spec())
    with timer("usage"):
        usage(study)
    with timer("janitor sweep"), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    with timer("ask"):
        trial = study.ask()
    with timer("surplus check"):
        surplus(trial, model)
    with timer("user attrs"):
        trial.set_user_attr("lineage", trial.number)
    with timer("suggest"):
        suggest(trial, model)
    with timer("heartbeat"):
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    value = rng.uniform(0.1, 0.5)
    for i in range(reports):
        value = min(0.99, value + rng.uniform(0.0, 0.05))
        if trial_s > 0:
            time.sleep(trial_s / reports)
        with timer("report"):
            trial.report(value, (i + 1) * 780)
        if gate.due((i + 1) * 780):  # as the objective does: ask the pruner only where it can decide
            with timer("prune check"):
                trial.should_prune()  # decision ignored: every trial runs to the end
    with timer("user attrs"):
        trial.set_user_attr("steps_per_s", rng.uniform(20, 80))
        trial.set_user_attr("parameters", 68874)
        trial.set_user_attr("best_step_seed0", reports * 780)
        trial.set_user_attr("outcome", "complete")
    with timer("tell"):
        study.tell(trial, value)
    return timer.ops


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    # study.ask() with heartbeats on warns that they are meant for optimize(); we record them by hand
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def create_study(url: str, name: str, spec: StudySpec) -> None:
    """A study laid out as ``irnn-search launch`` leaves it (the user attrs our workers read)."""
    storage = open_storage(url, heartbeat_s=None)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=spec.direction,
        sampler=build_sampler(spec),
        pruner=build_pruner(spec),
    )
    study.set_user_attr("spec", spec.to_dict())
    study.set_user_attr("model", MODEL)
    study.set_user_attr("launched_at", time.time())
    dispose(storage)


def load(url: str, name: str, spec: StudySpec, stream: int, sampler: str = "tpe", janitor: Janitor | None = None):
    storage = open_storage(
        url, heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S, on_stale=janitor.on_stale if janitor else None
    )
    chosen = build_sampler(spec, stream=stream) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=stream)
    return optuna.load_study(study_name=name, storage=storage, sampler=chosen, pruner=build_pruner(spec)), storage


def dispose(storage: Any) -> None:
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


# ------------------------------------------------------------------------------- worker scaling


def worker(
    url: str, name: str, index: int, seconds: float, reports: int, trial_s: float, ready: Any, go: Any, out: Any
) -> None:
    """One spawned worker: open the storage as ours do, start a janitor, run trials for ``seconds``."""
    quiet()
    DbClock.install()
    spec, model = model_spec()
    janitor = Janitor(grace_s=GRACE_S)
    study, storage = load(url, name, spec, stream=index, janitor=janitor)
    done = threading.Event()
    janitor.sweep([study])  # as work() does before its loop
    janitor.run([study], done, HEARTBEAT_S)
    usage(study)  # the first read of a fresh process is not what a trial costs
    rng = random.Random(index)
    ready.put(index)
    go.wait()
    records: list[dict[str, list[float]]] = []
    started = time.perf_counter()
    if trial_s > 0:  # paced workers do not start in step
        time.sleep(rng.uniform(0, trial_s))
    end = started + seconds
    while time.perf_counter() < end:
        records.append(run_trial(study, model, reports, rng, trial_s))
    elapsed = time.perf_counter() - started
    done.set()
    out.put({"index": index, "records": records, "elapsed_s": elapsed})
    dispose(storage)


class ConnectionWatch:
    """Polls ``pg_stat_activity`` from its own connection; ``peak`` client backends (itself excluded)."""

    def __init__(self, url: str, interval: float = 0.2) -> None:
        self.url, self.interval = url, interval
        self.peak = 0
        self.max_connections: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ConnectionWatch:
        if not self.url.startswith("postgresql"):
            return self
        import psycopg

        conninfo = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._conn = psycopg.connect(conninfo, autocommit=True)
        row = self._conn.execute("SHOW max_connections").fetchone()
        self.max_connections = int(row[0]) if row else None

        def loop() -> None:
            while not self._stop.wait(self.interval):
                row = self._conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._conn.close()


def scaling(url: str, n_workers: int, seconds: float, reports: int, trial_s: float = 0.0) -> dict[str, Any]:
    spec, _ = model_spec()
    name = f"bench-latency-w{n_workers}-{uuid.uuid4().hex[:8]}"
    create_study(url, name, spec)
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=worker, args=(url, name, i, seconds, reports, trial_s, ready, go, out), daemon=True)
        for i in range(n_workers)
    ]
    results: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        startup = time.perf_counter() - t0
        load0 = os.getloadavg()[0]
        with ConnectionWatch(url) as watch:
            go.set()
            for _ in procs:
                results.append(out.get(timeout=seconds + trial_s + 300))
        load1 = os.getloadavg()[0]
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    records = [r for res in results for r in res["records"]]
    elapsed = max(res["elapsed_s"] for res in results)
    return {
        "workers": n_workers,
        "trial_s": trial_s,
        "study": name,
        "loadavg_before_after": [load0, load1],
        "startup_s": startup,
        "elapsed_s": elapsed,
        "trials": len(records),
        "records": records,
        "peak_connections": watch.peak,
        "max_connections": watch.max_connections,
    }


# ---------------------------------------------------------------------------------------- growth


def _templates(model: ModelSpec, n: int, first: int, rng: random.Random) -> list[FrozenTrial]:
    """``n`` finished trials shaped like ours: params from the real space, 70% complete, 25% pruned,
    5% failed, up to 10 intermediate values, 6 user attrs, 10-s durations in the past."""
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=rng.randrange(2**31)))
    out = []
    now = datetime.datetime.now()
    for k in range(n):
        if k % 200 == 0:  # a fresh in-memory study: ask() scans its trials for waiting ones
            scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=rng.randrange(2**31)))
        t = scratch.ask()
        suggest(t, model)
        roll = rng.random()
        state = TrialState.COMPLETE if roll < 0.7 else TrialState.PRUNED if roll < 0.95 else TrialState.FAIL
        n_reports = 10 if state == TrialState.COMPLETE else rng.randint(1, 6)
        v = rng.uniform(0.1, 0.5)
        inter = {}
        for i in range(n_reports):
            v = min(0.99, v + rng.uniform(0.0, 0.05))
            inter[(i + 1) * 780] = v
        start = now - datetime.timedelta(seconds=20 * (n - k) + 10 * first)
        out.append(
            optuna.trial.create_trial(
                state=state,
                value=v if state == TrialState.COMPLETE else None,
                params=t.params,
                distributions=t.distributions,
                user_attrs={
                    "lineage": first + k,
                    "outcome": {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(state, "failed"),
                    "steps_per_s": rng.uniform(20, 80),
                    "parameters": 68874,
                    "best_step_seed0": max(inter) if inter else 0,
                    "checkpoint_dir": f"/checkpoints/bench/trial-{first + k}",
                },
                intermediate_values=inter,
            )
        )
        out[-1].datetime_start = start
        out[-1].datetime_complete = start + datetime.timedelta(seconds=10)
    return out


def prefill(url: str, name: str, model: ModelSpec, count: int, rng: random.Random, batch: int = 1000) -> float:
    """Append ``count`` finished trials to study ``name`` with batch inserts (one transaction per
    ``batch``) through Optuna's ORM models; returns the seconds it took."""
    t0 = time.perf_counter()
    storage = open_storage(url, heartbeat_s=None)
    study_id = storage.get_study_id_from_name(name)
    first = len(storage.get_all_trials(study_id, deepcopy=False))
    try:
        done = 0
        while done < count:
            chunk = _templates(model, min(batch, count - done), first + done, rng)
            with Session(storage.engine) as session:
                rows = []
                for j, ft in enumerate(chunk):
                    row = models.TrialModel(number=first + done + j, study_id=study_id, state=ft.state)
                    row.datetime_start = ft.datetime_start
                    row.datetime_complete = ft.datetime_complete
                    rows.append(row)
                session.add_all(rows)
                session.flush()  # trial ids
                children: list[Any] = []
                for row, ft in zip(rows, chunk, strict=True):
                    if ft.value is not None:
                        value, kind = models.TrialValueModel.value_to_stored_repr(ft.value)
                        children.append(
                            models.TrialValueModel(trial_id=row.trial_id, objective=0, value=value, value_type=kind)
                        )
                    for pname, pvalue in ft.params.items():
                        dist = ft.distributions[pname]
                        children.append(
                            models.TrialParamModel(
                                trial_id=row.trial_id,
                                param_name=pname,
                                param_value=dist.to_internal_repr(pvalue),
                                distribution_json=optuna.distributions.distribution_to_json(dist),
                            )
                        )
                    for step, iv in ft.intermediate_values.items():
                        ivalue, ikind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(iv)
                        children.append(
                            models.TrialIntermediateValueModel(
                                trial_id=row.trial_id,
                                step=step,
                                intermediate_value=ivalue,
                                intermediate_value_type=ikind,
                            )
                        )
                    for key, val in ft.user_attrs.items():
                        children.append(
                            models.TrialUserAttributeModel(trial_id=row.trial_id, key=key, value_json=json.dumps(val))
                        )
                session.add_all(children)
                session.commit()
            done += len(chunk)
    finally:
        dispose(storage)
    return time.perf_counter() - t0


def growth(url: str, sizes: list[int], trials: int, reports: int) -> list[dict[str, Any]]:
    spec, model = model_spec()
    name = f"bench-latency-growth-{uuid.uuid4().hex[:8]}"
    create_study(url, name, spec)
    rng = random.Random(0)
    have, out = 0, []
    for size in sorted(sizes):
        fill_s = prefill(url, name, model, size - have, rng)
        cold = []
        for _ in range(3):  # a freshly started worker's first usage(): nothing cached yet
            study, storage = load(url, name, spec, stream=0)
            t0 = time.perf_counter()
            usage(study)
            cold.append(time.perf_counter() - t0)
            dispose(storage)
        per_sampler = {}
        for sampler in ("tpe", "random"):
            study, storage = load(url, name, spec, stream=1, sampler=sampler)
            usage(study)  # warm the cache, as a running worker's is
            run_trial(study, model, reports, rng)  # warm-up, not counted
            per_sampler[sampler] = [run_trial(study, model, reports, rng) for _ in range(trials)]
            have = len(study.get_trials(deepcopy=False))
            dispose(storage)
        out.append(
            {
                "size": size,
                "trials_in_study": have,
                "prefill_s": fill_s,
                "cold_usage_s": cold,
                "tpe": per_sampler["tpe"],
                "random": per_sampler["random"],
            }
        )
        print(f"  growth: {size} trials (prefill {fill_s:.1f} s) measured", file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def series(records: list[dict[str, list[float]]], ops: tuple[str, ...], field: int = 0) -> list[float]:
    """Per trial, the sum over ``ops`` of a field (0 wall s, 1 DB s, 2 round trips)."""
    return [sum(r[op][field] for op in ops) for r in records]


ASK_TELL = ("ask", "tell")
ASK_SUGGEST_TELL = ("ask", "suggest", "tell")


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def label(run: dict[str, Any]) -> str:
    return f"{run['workers']}" + (f" (paced {run['trial_s']:.0f}-s trials)" if run.get("trial_s") else "")


def summarize_scaling(runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| workers | trials | trials/hour | storage ms/trial p50 (mean) | p99 | of which DB p50 | ask+tell p50 / p99"
        " | ask+suggest+tell p50 | usage() p50 | overhead on a 10-s trial | peak connections |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        rec = run["records"]
        total = series(rec, OPS)
        db = series(rec, OPS, 1)
        mean = sum(total) / len(total)
        at = series(rec, ASK_TELL)
        lines.append(
            f"| {label(run)} | {run['trials']} | {run['trials'] / run['elapsed_s'] * 3600:,.0f} "
            f"| {ms(pct(total, 50))} ({ms(mean)}) | {ms(pct(total, 99))} | {ms(pct(db, 50))} "
            f"| {ms(pct(at, 50))} / {ms(pct(at, 99))} | {ms(pct(series(rec, ASK_SUGGEST_TELL), 50))} "
            f"| {ms(pct(series(rec, ('usage',)), 50))} | {mean / (mean + TRIAL_S):.2%} "
            f"| {run['peak_connections']} of {run['max_connections']} |"
        )
    return lines


def summarize_ops(runs: list[dict[str, Any]]) -> list[str]:
    head = "| operation (per trial) | calls | round trips |"
    rule = "|---|---:|---:|"
    for run in runs:
        tag = f"{run['workers']} w" + (" paced" if run.get("trial_s") else "")
        head += f" {tag} p50 | {tag} p99 |"
        rule += "---:|---:|"
    head += f" DB share ({runs[0]['workers']} w) |"
    rule += "---:|"
    lines = [head, rule]
    first = runs[0]["records"]
    for op in OPS:
        calls = first[0][op][3]
        trips = sum(r[op][2] for r in first) / len(first)
        row = f"| {op} | {calls:.0f} | {trips:.1f} |"
        for run in runs:
            s = series(run["records"], (op,))
            row += f" {ms(pct(s, 50))} | {ms(pct(s, 99))} |"
        wall = sum(series(first, (op,)))
        row += f" {sum(series(first, (op,), 1)) / wall:.0%} |" if wall else " – |"
        lines.append(row)
    return lines


def summarize_growth(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| finished trials | cold usage() (new worker) | usage() p50 | ask+tell p50 | suggest TPE p50"
        " | suggest random p50 | storage ms/trial TPE p50 | storage ms/trial random p50 | DB ms/trial p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in rows:
        lines.append(
            f"| {g['size']:,} | {ms(min(g['cold_usage_s']))} | {ms(pct(series(g['tpe'], ('usage',)), 50))} "
            f"| {ms(pct(series(g['tpe'], ASK_TELL), 50))} | {ms(pct(series(g['tpe'], ('suggest',)), 50))} "
            f"| {ms(pct(series(g['random'], ('suggest',)), 50))} | {ms(pct(series(g['tpe'], OPS), 50))} "
            f"| {ms(pct(series(g['random'], OPS), 50))} | {ms(pct(series(g['tpe'], OPS, 1), 50))} |"
        )
    return lines


def growth_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    lo, hi = rows[0], rows[-1]

    def r(key: str, ops: tuple[str, ...], field: int = 0) -> float:
        return pct(series(hi[key], ops, field), 50) / pct(series(lo[key], ops, field), 50)

    return {
        "cold usage()": min(hi["cold_usage_s"]) / min(lo["cold_usage_s"]),
        "usage()": r("tpe", ("usage",)),
        "ask+tell": r("tpe", ASK_TELL),
        "suggest (TPE)": r("tpe", ("suggest",)),
        "suggest (random)": r("random", ("suggest",)),
        "storage time per trial (TPE)": r("tpe", OPS),
        "storage time per trial (random)": r("random", OPS),
        "DB round-trip time per trial (TPE)": r("tpe", OPS, 1),
    }


def verdicts(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    out = []
    if runs:
        top = max(run["workers"] for run in runs)
        for run in runs:
            if run["workers"] != top:
                continue
            total = series(run["records"], OPS)
            mean = sum(total) / len(total)
            frac = mean / (mean + TRIAL_S)
            out.append(
                f"- overhead <= 1% at {label(run)} workers: {'met' if frac <= 0.01 else 'NOT met'} "
                f"({frac:.2%}: {ms(mean)} ms of storage per 10-s trial)"
            )
        for run in runs:
            at = pct(series(run["records"], ASK_TELL), 50)
            ast = pct(series(run["records"], ASK_SUGGEST_TELL), 50)
            out.append(
                f"- ask+tell p50 <= 20 ms at {label(run)} worker(s): {'met' if at <= 0.02 else 'NOT met'} "
                f"({ms(at)} ms; with TPE's suggest: {ms(ast)} ms, {'met' if ast <= 0.02 else 'NOT met'})"
            )
    if len(rows) >= 2:
        ratios = growth_ratios(rows)
        a, b = rows[0]["size"], rows[-1]["size"]
        for key in ("ask+tell", "storage time per trial (TPE)", "usage()", "cold usage()"):
            v = ratios[key]
            out.append(f"- growth {a:,} -> {b:,} trials <= 2x, {key}: {'met' if v <= 2 else 'NOT met'} ({v:.2f}x)")
    return out


def machine(url: str) -> dict[str, str]:
    info = {"python": platform.python_version(), "optuna": optuna.__version__}
    with contextlib.suppress(Exception):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")
        )
    info["cores"] = str(os.cpu_count())
    if url.startswith("postgresql"):
        with contextlib.suppress(Exception):
            import psycopg

            with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                info["postgresql"] = str(row[0]) if row else "?"
                row = conn.execute("SHOW fsync").fetchone()
                info["fsync"] = str(row[0]) if row else "?"
    else:
        import sqlite3

        info["sqlite"] = sqlite3.sqlite_version
    return info


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: workers 1,4, 5 s each, sizes 100,1000, 8 trials"
    )
    parser.add_argument("--workers", default=None, help="worker-process counts (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=None, help="wall time per worker setting (default 45)")
    parser.add_argument("--sizes", default=None, help="study sizes for the growth run (default 100,1000,10000)")
    parser.add_argument("--trials", type=int, default=None, help="timed trials per size and sampler (default 40)")
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=None,
        help="then the largest worker count again with --trial-s trials, for this long (default 90; 0 skips)",
    )
    parser.add_argument("--trial-s", type=float, default=TRIAL_S, help="sleep per paced trial (default 10)")
    parser.add_argument("--reports", type=int, default=10, help="trial.report calls per trial (pmnist.toml makes 35)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="an existing PostgreSQL (postgresql+psycopg://...); studies are deleted after")
    where.add_argument("--sqlite", action="store_true", help="the embedded default: a SQLite file instead")
    parser.add_argument("--no-fsync", action="store_true", help="our own server without fsync (not production-like)")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args(argv)
    workers = [int(x) for x in (args.workers or ("1,4" if args.quick else "1,4,16")).split(",") if x]
    sizes = [int(x) for x in (args.sizes or ("100,1000" if args.quick else "100,1000,10000")).split(",") if x]
    seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 45.0)
    trials = args.trials if args.trials is not None else (8 if args.quick else 40)
    paced_s = args.paced_seconds if args.paced_seconds is not None else (0.0 if args.quick else 90.0)
    quiet()
    DbClock.install()

    folder: Path | None = None
    server = None
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    try:
        if args.url:
            url, backend = args.url, "PostgreSQL (--url)"
        elif args.sqlite:
            folder = Path(tempfile.mkdtemp(prefix="irnn-bench-sqlite-"))
            url, backend = f"sqlite:///{folder / 'optuna.db'}", "SQLite file"
        else:
            from irnn_search.dev.servers import Postgres, reachable_tempdir

            folder = reachable_tempdir("irnn-bench-pg-")
            server = Postgres(folder / "pg", fsync=not args.no_fsync)
            server.start()
            url, backend = server.create_database("optuna_bench"), "loopback PostgreSQL (irnn_search.dev.servers)"
        info = machine(url)
        print(f"storage: {backend} {mask_secrets(url)}", file=sys.stderr, flush=True)
        for n in workers:
            print(f"  workers: {n} x {seconds:.0f} s ...", file=sys.stderr, flush=True)
            runs.append(scaling(url, n, seconds, args.reports))
        if paced_s > 0 and workers:
            print(
                f"  workers: {max(workers)} paced ({args.trial_s:.0f}-s trials) x {paced_s:.0f} s ...", file=sys.stderr
            )
            runs.append(scaling(url, max(workers), paced_s, args.reports, args.trial_s))
        if sizes:
            rows = growth(url, sizes, trials, args.reports)
        if args.url:  # leave the caller's server as we found it
            storage = open_storage(url, heartbeat_s=None)
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
                if s.study_name.startswith("bench-latency-"):
                    optuna.delete_study(study_name=s.study_name, storage=storage)
            dispose(storage)
    finally:
        if server is not None:
            server.stop()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    print(
        f"\nOptuna storage latency, {backend}; {info}; TPE (constant liar) + ASHA of {SPEC}.toml, model {MODEL};"
        f" {args.reports} reports per trial; {seconds:.0f} s per worker setting; {trials} timed trials per size;"
        f" load average during the worker runs {[round(x, 1) for r in runs for x in r['loadavg_before_after']]}\n"
    )
    if runs:
        print("\n".join(summarize_scaling(runs)) + "\n")
        print("\n".join(summarize_ops(runs)) + "\n")
    if rows:
        print("\n".join(summarize_growth(rows)) + "\n")
        ratios = growth_ratios(rows)
        print(
            f"{rows[0]['size']:,} -> {rows[-1]['size']:,} trials, p50 ratios: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        )
        print()
    print("\n".join(verdicts(runs, rows)))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {**vars(args), "json": str(args.json)}, "machine": info, "workers": runs, "growth": rows}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
