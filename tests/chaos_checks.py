"""What the chaos soak (``tests/chaos.py``) reads back from the three stores, and its invariants.

An *attempt* is one Optuna trial that a worker ran; a *lineage* is a trial and its re-queued
copies (user attr ``lineage``). For each attempt:

- its time interval: from Optuna's ``datetime_start`` to its end. The end is the driver's SIGKILL
  of its worker when the attempt was failed by a janitor (it did not end in its own process);
  otherwise the latest of Optuna's ``datetime_complete``, our database's ``finished_at`` and the
  timestamp of the last metric in its MLflow run (a worker whose trial was taken over may still
  be training after the janitor failed the trial: those later timestamps show it).
- its start step: exact from our database (``resumed_from_step``) for an attempt that ended in its
  own process; for a killed one, inferred from its first report ``f``: the newest checkpoint step
  the lineage could hold below ``f`` (the report before ``f``, or a SIGTERM checkpoint of an
  earlier attempt in between). So the inference is exact unless a resume skipped a SIGTERM
  checkpoint within one report interval.
- its durable step: the step of the ``last.pt`` its MLflow run holds in the artifact store at the
  end, i.e. the newest checkpoint it made durable.

The resume invariant is the README's guarantee: every resumed attempt starts at or after the
newest checkpoint that earlier attempts of its lineage made durable in the artifact store. The
stronger "at or after the last reported step" holds whenever the checkpoint upload was not held
back in an MLflow outage (the report then goes on while the upload waits in the buffer, which a
SIGKILL loses); the summary counts resumes behind the last report as work lost, not as violations.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import tempfile
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text

from irnn_search.checkpoint import load_checkpoint
from irnn_search.db.session import make_engine

if TYPE_CHECKING:
    from tests.chaos import Soak, Worker

RUNNING_LINE = re.compile(r"^(\S+) trial (\d+): running on ", re.MULTILINE)
INTERRUPTED_AT = re.compile(r"interrupted at step (\d+)")


@dataclass
class Attempt:
    study: str
    number: int
    lineage: int
    trial: FrozenTrial
    worker: Worker | None
    self_ended: bool  # ended in its own process (not failed by a janitor)
    started: float
    ended: float
    reports: list[int]
    start_step: int | None
    start_exact: bool
    last_step: int
    run_id: str | None
    durable_step: int | None

    @property
    def label(self) -> str:
        return f"{self.study} trial {self.number} (lineage {self.lineage})"


@dataclass
class State:
    trials: dict[str, list[FrozenTrial]]
    best: dict[str, float | None]
    attempts: list[Attempt]
    runs: list[Any]  # every MLflow run of the soak's studies (parents and children)
    ledger: list[Any]


@dataclass
class Summary:
    faults: dict[str, int] = field(default_factory=dict)
    workers_started: int = 0
    attempts: int = 0
    lineages: int = 0
    # lineages that never reported and never counted: a trial asked, its worker killed before its
    # first report, and its place in the budget taken by another (no work lost)
    stillborn: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    steps_needed: int = 0
    steps_trained: int = 0
    resumes: int = 0
    resumed_behind_report: int = 0
    #: workers that never took a trial: PostgreSQL down at start-up (exit 2, one line) or SIGTERM
    #: during start-up, before the worker set its handler (exit -15)
    refused_at_start: int = 0
    max_overlap_s: float = 0.0
    wall_s: float = 0.0
    chaos_s: float = 0.0
    violations: list[str] = field(default_factory=list)

    @property
    def steps_redone(self) -> int:
        return self.steps_trained - self.steps_needed


def _ts(dt: Any) -> float:
    """Epoch seconds of a datetime: Optuna's are naive local time, ours are aware UTC."""
    return dt.timestamp() if dt.tzinfo is None else dt.astimezone(UTC).timestamp()


def _worker_of(soak: Soak) -> dict[tuple[str, int], Worker]:
    """(study, trial number) -> the worker whose log says it ran that trial."""
    out = {}
    for w in soak.workers:
        for study, number in RUNNING_LINE.findall(w.log_path.read_text(errors="replace")):
            out[(study, int(number))] = w
    return out


def _ledger(db: str) -> list[Any]:
    engine = make_engine(db)
    try:
        with engine.connect() as c:
            return list(
                c.execute(
                    text(
                        "SELECT s.study_name, r.trial_number, r.outcome, r.finished_at, r.steps, "
                        "r.resumed_from_step, r.mlflow_run_id FROM irnn_trial_runs r "
                        "JOIN irnn_studies s ON s.id = r.study_id"
                    )
                )
            )
    finally:
        engine.dispose()


def _durable_step(client: MlflowClient, run_id: str) -> int | None:
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "checkpoints/seed-0")}
    if "last.pt" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "checkpoints/seed-0/last.pt", tmp)
        return int(load_checkpoint(path)["step"])


def collect(soak: Soak) -> State:
    """Read the study back from Optuna's storage, our database, MLflow and the worker logs."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # this process downloads checkpoints
    storage = optuna.storages.RDBStorage(soak.stores.storage)
    trials, best = {}, {}
    for name in soak.study_names:
        study = optuna.load_study(study_name=name, storage=storage)
        trials[name] = study.get_trials(deepcopy=False)
        best[name] = study.best_value if any(t.state == TrialState.COMPLETE for t in trials[name]) else None
    storage.remove_session()
    storage.engine.dispose()
    briefs = {n: [_brief(t) for t in ts] for n, ts in trials.items()}
    (soak.root / "trials.json").write_text(json.dumps(briefs, indent=1, default=str))
    client = MlflowClient(soak.stores.mlflow.uri)
    experiment = client.get_experiment_by_name("irnn-search/adding")
    runs = [
        r
        for n in soak.study_names
        for r in client.search_runs([experiment.experiment_id], f"tags.`irnn.study` = '{n}'", max_results=5000)
    ]
    children = {(r.data.tags["irnn.study"], int(r.data.tags["irnn.trial"])): r for r in runs
                if r.data.tags.get("irnn.role") == "trial"}  # fmt: skip
    ledger = _ledger(soak.stores.db)
    rows = {(r[0], r[1]): r for r in ledger}
    workers = _worker_of(soak)
    attempts = []
    for name, ts in trials.items():
        stopped: dict[int, list[int]] = {}  # lineage -> steps of SIGTERM checkpoints so far
        for t in sorted(ts, key=lambda t: t.number):
            if t.datetime_start is None or t.user_attrs.get("gave_up") or t.user_attrs.get("outcome") == "surplus":
                continue  # never trained: a queued copy, a lineage given up, a trial that stood down
            lineage = int(t.user_attrs.get("lineage", t.number))
            run = children.get((name, t.number))
            seen = []  # when its reports were made: a lower bound on its end
            if run is not None:
                seen = [m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "val_mse")]
            row = rows.get((name, t.number))
            a = _attempt(
                soak,
                name,
                t,
                lineage=lineage,
                row=row,
                run=run,
                worker=workers.get((name, t.number)),
                stopped=stopped.get(lineage, []),
                seen=seen,
            )
            if run is not None:
                a.durable_step = _durable_step(client, run.info.run_id)
            if m := INTERRUPTED_AT.search(str(t.user_attrs.get("reason", ""))):
                stopped.setdefault(lineage, []).append(int(m.group(1)))
            attempts.append(a)
    return State(trials, best, attempts, runs, ledger)


def _attempt(
    soak: Soak,
    study: str,
    t: FrozenTrial,
    *,
    lineage: int,
    row: Any,
    run: Any,
    worker: Worker | None,
    stopped: list[int],
    seen: list[float],
) -> Attempt:
    r = soak.config.report_every
    outcome = t.user_attrs.get("outcome")
    self_ended = t.state != TrialState.FAIL or outcome not in (None, "lost")  # "lost": a janitor failed it
    started = _ts(t.datetime_start)
    ends = [_ts(t.datetime_complete)] if t.datetime_complete else []
    ends.extend(seen)
    if row is not None and row[3] is not None:
        ends.append(_ts(row[3]))
    killed_at = worker.killed_at if worker is not None else None
    if killed_at is not None and killed_at >= started and not self_ended:
        ended = killed_at  # exact: the janitor's failure came a grace period later
    else:
        ended = max(ends, default=started)
    reports = sorted(t.intermediate_values)
    start_step: int | None
    exact = row is not None and self_ended and row[2] not in (None, "lost")
    if exact:
        start_step = int(row[5] or 0)
    elif reports:
        below = ((reports[0] - 1) // r) * r
        start_step = max([below, *(s for s in stopped if below < s < reports[0])])
    else:
        start_step = None
    if self_ended and row is not None and row[4] is not None:
        last = int(row[4])
    else:
        last = max(reports, default=start_step or 0)
    run_id = run.info.run_id if run is not None else None
    return Attempt(study, t.number, lineage, t, worker, self_ended, started, ended, reports, start_step, exact,
                   last, run_id, None)  # fmt: skip


def check(soak: Soak, state: State) -> Summary:
    """Every invariant of the issue, each violation a line naming the invariant and the trial."""
    c = soak.config
    s = Summary(workers_started=len(soak.workers), attempts=len(state.attempts))
    bad = s.violations
    by_lineage: dict[tuple[str, int], list[Attempt]] = {}
    for a in state.attempts:
        by_lineage.setdefault((a.study, a.lineage), []).append(a)
    s.lineages = len(by_lineage)
    counted = {
        (name, int(t.user_attrs.get("lineage", t.number)))
        for name, ts in state.trials.items()
        for t in ts
        if counts(t) and t.state not in (TrialState.RUNNING, TrialState.WAITING)
    }
    s.stillborn = sum(
        1 for key, chain in by_lineage.items() if key not in counted and not any(a.reports for a in chain)
    )
    # 1. every trial finished, none lost or run to the end twice
    for name, ts in state.trials.items():
        for t in ts:
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                bad.append(f"finished: {name} trial {t.number} is {t.state.name}")
        final = [t for t in ts if counts(t) and t.state not in (TrialState.RUNNING, TrialState.WAITING)]
        # 2. the budget: exactly met, surplus trials never trained
        if len(final) != c.trials:
            bad.append(f"budget: {name} has {len(final)} counted trials, its budget is {c.trials}")
        for t in ts:
            if t.user_attrs.get("outcome") == "surplus" and t.intermediate_values:
                bad.append(
                    f"budget: {name} trial {t.number} is surplus but trained (reports {sorted(t.intermediate_values)})"
                )
        lineages: dict[int, list[FrozenTrial]] = {}
        for t in final:
            lineages.setdefault(int(t.user_attrs.get("lineage", t.number)), []).append(t)
        for lineage, ends in lineages.items():
            if len(ends) > 1:
                story = [_brief(t) for t in ts if t.user_attrs.get("lineage", t.number) == lineage]
                bad.append(f"finished: {name} lineage {lineage} ended twice: {story}")
            s.outcomes[_outcome(ends[0])] = s.outcomes.get(_outcome(ends[0]), 0) + 1
        # 6. the study's best is the best of its complete trials
        values = [t.value for t in ts if t.state == TrialState.COMPLETE and t.value is not None]
        want = min(values) if values else None
        if state.best[name] != want or (want is not None and not math.isfinite(want)):
            bad.append(f"best: {name} reports best {state.best[name]}, its complete trials' best is {want}")
    for chain in by_lineage.values():
        chain.sort(key=lambda a: a.started)
        _check_lineage(chain, c.grace_s, s)
    # 4. every MLflow run ended
    for run in state.runs:
        if run.info.status == "RUNNING":
            role = run.data.tags.get("irnn.role")
            what = f"trial {run.data.tags.get('irnn.trial')}" if role == "trial" else "parent"
            bad.append(f"mlflow: the {what} run {run.info.run_id} of {run.data.tags.get('irnn.study')} is RUNNING")
    # 7. workers: the ones not SIGKILLed left with 0 and no traceback. A worker that starts while
    # PostgreSQL is down refuses in one line with exit 2 (a wrong URL and a restarting server look
    # alike at start-up) and its supervisor starts it again, as compose's `restart: on-failure` does.
    for w in soak.workers:
        out = w.log_path.read_text(errors="replace")
        if w.killed_at is None and w.proc.returncode == 2 and _refused_at_start(out):
            s.refused_at_start += 1
        elif w.termed_at is not None and w.proc.returncode == -signal.SIGTERM and "worker " not in out:
            s.refused_at_start += 1  # SIGTERM before its handler was set: it held no trial yet
        elif w.killed_at is None and w.proc.returncode != 0:
            tail = " | ".join(out.strip().splitlines()[-3:])
            bad.append(f"workers: {w.name} exited with {w.proc.returncode}; its log ends: {tail}")
        if "Traceback" in out:
            bad.append(f"workers: {w.name} logged a traceback (log {w.log_path})")
    return s


def _refused_at_start(log: str) -> bool:
    """A start-up refusal: an ``Error:`` line (and its fix) about a connection that failed."""
    lines = [line for line in log.splitlines() if line.strip()]
    # "terminating connection ...": the server began its shutdown while the worker was connecting
    failed = r"connection refused|connection failed|could not connect|unreachable|terminating connection"
    refused = re.search(failed, log, re.IGNORECASE)
    return 1 <= len(lines) <= 3 and lines[0].startswith("Error: ") and refused is not None


def _check_lineage(chain: list[Attempt], tolerance_s: float, s: Summary) -> None:
    """3. no two attempts of a lineage at once; 5. each resume at or after the durable checkpoint."""
    durable: int | None = None
    reported = 0
    s.steps_needed += chain[-1].last_step
    for prev, a in zip([None, *chain], chain, strict=False):
        if prev is not None:
            overlap = prev.ended - a.started
            s.max_overlap_s = max(s.max_overlap_s, overlap)
            if overlap > tolerance_s:
                s.violations.append(
                    f"overlap: {a.label} started {overlap:.1f} s before trial {prev.number} of its lineage ended"
                )
        if a.start_step is not None:
            s.steps_trained += max(0, a.last_step - a.start_step)
            if prev is not None:
                s.resumes += 1
                if durable is not None and a.start_step < durable:
                    how = "" if a.start_exact else " (inferred from its first report)"
                    s.violations.append(
                        f"resume: {a.label} started at step {a.start_step}{how}, behind the checkpoint at "
                        f"step {durable} that earlier attempts had made durable"
                    )
                if a.start_step < reported:
                    s.resumed_behind_report += 1
        if a.durable_step is not None:
            durable = max(durable or 0, a.durable_step)
        reported = max(reported, max(a.reports, default=0))


def counts(t: FrozenTrial) -> bool:
    """Whether a finished trial counts against the budget: not released (interrupted, or lost and
    failed by a janitor: marked ``lost``, or without an outcome where the janitor died before
    marking it) and not a surplus trial that stood down."""
    released = t.state == TrialState.FAIL and t.user_attrs.get("outcome") in (None, "interrupted", "lost")
    return not released and t.user_attrs.get("outcome") != "surplus"


def _brief(t: FrozenTrial) -> dict[str, Any]:
    """A trial in a line, for a failure message and the soak's ``trials.json``."""
    keys = ("lineage", "outcome", "reason", "retry_of", "lost_attempts", "gave_up", "mlflow_run_id")
    return {
        "number": t.number,
        "state": t.state.name,
        "start": str(t.datetime_start),
        "end": str(t.datetime_complete),
        "reports": sorted(t.intermediate_values)[-1:],
        **{k: t.user_attrs[k] for k in keys if k in t.user_attrs},
    }


def _outcome(t: FrozenTrial) -> str:
    if t.user_attrs.get("gave_up"):
        return "gave up"
    return str(t.user_attrs.get("outcome") or t.state.name.lower())
