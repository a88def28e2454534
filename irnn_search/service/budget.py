"""Budgets: what a study has used (trials, device time, wall time) and whether a trial may start.

Released attempts (interrupted or lost) come back as new trials of the same lineage and surplus
trials never trained, so neither counts. A pack's trials share its device time (``device_seconds``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.outcome import RELEASED, Outcome
from irnn_search.search.spec import ModelSpec
from irnn_search.service.recovery import released
from irnn_search.service.storage import DEVICE_S, PACK_SLOTS, trial_groups

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Usage:
    finished: int  # complete + pruned + failed (interrupted-and-re-queued attempts excluded)
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    device_hours: float  # device time of finished and running trials (see ``device_seconds``)
    elapsed_s: float  # since the study was launched
    best: float | None


def device_seconds(t: FrozenTrial, now: float | None = None) -> float:
    """The device time a trial took: its wall time alone; in a pack of K slots, its share of the
    pack's wall time (exact once it has ended; while it runs, wall time / K).

    Summed wall time would count a pack's time once per member: a study packed 16 to a device
    would spend its ``device_hours`` budget 16 times too fast."""
    if t.datetime_start is None:
        return 0.0
    if t.datetime_complete is not None and DEVICE_S in t.user_attrs:
        return float(t.user_attrs[DEVICE_S])
    end = t.datetime_complete.timestamp() if t.datetime_complete else (time.time() if now is None else now)
    return max(0.0, end - t.datetime_start.timestamp()) / float(t.user_attrs.get(PACK_SLOTS, 1))


def _counts_against_budget(t: FrozenTrial) -> bool:
    """Released attempts (interrupted or lost) come back as new trials; surplus trials never trained."""
    return not released(t) and t.user_attrs.get("outcome") != Outcome.SURPLUS


def surplus(trial: optuna.Trial, model: ModelSpec) -> bool:
    """Whether earlier trials (by number, which Optuna assigns atomically) already fill the trial
    budget. Two workers that pass ``budget_left`` at the same instant both create a trial; the
    later-numbered one then stands down.

    A re-queued attempt (interrupted or lost) is judged as of its lineage's first trial, which
    was admitted when it started: its continuation is owed even when trials numbered in between
    fill the budget now. Dropping it as surplus would leave the lineage unfinished for good; the
    price is that a fresh trial started in the instant between a trial's release and its
    re-queue can take the budget one trial over. A re-queued copy still waiting when a fresh trial
    starts counts for its lineage (it will run: ``owed``), so that fresh trial stands down: under
    chaos (tests/service/test_chaos.py) a worker's ``ask`` raced a janitor's re-queue and the
    study ended one trial over its budget.
    """
    if model.budget.trials is None:
        return False
    lineage = trial.user_attrs.get("lineage", trial.number)
    first = lineage if type(lineage) is int and 0 <= lineage < trial.number else trial.number
    states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    ahead = sum(g.count for g in _groups(trial.study, before=first) if g.state in states and g.counts)
    ahead += sum(1 for t in _waiting_copies(trial.study) if t.number < first)
    return ahead >= model.budget.trials


def _waiting_copies(study: optuna.Study) -> list[FrozenTrial]:
    """Re-queued attempts (released trials' copies, carrying ``retry_of``) no worker has taken yet."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [t for t in waiting if "retry_of" in t.user_attrs]


@dataclass(frozen=True)
class _Group:
    state: TrialState
    count: int
    seconds: float  # device time of its trials (``device_seconds``): in all (finished) or so far (running)
    counts: bool  # against the budget (not released, not surplus)
    best: float | None  # best finite objective among its complete trials


def _groups(study: optuna.Study, *, before: int | None = None) -> list[_Group]:
    """The study's trials for budget accounting, by state and outcome: one aggregate query on an
    RDB storage (``storage.trial_groups``), else from ``FrozenTrial`` objects."""
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    groups = trial_groups(study._storage, study._study_id, before=before)
    if groups is not None:
        now = time.time()
        return [
            _Group(
                g.state,
                g.count,
                g.finished_s + max(0.0, g.open_weight * now - g.open_start_s),
                not (g.state == TrialState.FAIL and g.outcome in RELEASED) and g.outcome != Outcome.SURPLUS,
                (g.low if minimize else g.high) if g.state == TrialState.COMPLETE else None,
            )
            for g in groups
        ]
    now = time.time()
    out: list[_Group] = []
    for t in study.get_trials(deepcopy=False):
        if before is not None and t.number >= before:
            continue
        seconds = device_seconds(t, now)
        finite = t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        out.append(_Group(t.state, 1, seconds, _counts_against_budget(t), t.value if finite else None))
    return out


def usage(study: optuna.Study) -> Usage:
    now = time.time()
    groups = _groups(study)
    counted: dict[TrialState, int] = {}
    for g in groups:
        if g.counts:
            counted[g.state] = counted.get(g.state, 0) + g.count
    values = [g.best for g in groups if g.best is not None]
    best = None
    if values:
        best = (min if study.direction == optuna.study.StudyDirection.MINIMIZE else max)(values)
    return Usage(
        finished=sum(counted.get(s, 0) for s in FINISHED),
        complete=counted.get(TrialState.COMPLETE, 0),
        pruned=counted.get(TrialState.PRUNED, 0),
        failed=counted.get(TrialState.FAIL, 0),
        running=counted.get(TrialState.RUNNING, 0),
        waiting=counted.get(TrialState.WAITING, 0),
        device_hours=sum(g.seconds for g in groups) / 3600,
        elapsed_s=now - float(study.user_attrs.get("launched_at", now)),
        best=best,
    )


def owed(study: optuna.Study) -> bool:
    """Whether a re-queued attempt (a released trial's copy, carrying ``retry_of``) waits in the
    study: it continues a lineage the budget already admitted, so it runs even when the budget
    reads as met (a worker that left it WAITING would leave the lineage unfinished for good)."""
    return bool(_waiting_copies(study))


def budget_left(study: optuna.Study, model: ModelSpec, u: Usage | None = None) -> bool:
    """Whether another trial may start (trials in flight count). Two workers that pass this check
    in the same instant are settled by ``surplus`` when their trials start. ``u``: the study's
    usage when the caller already has it."""
    u = u if u is not None else usage(study)
    b = model.budget
    if b.trials is not None and u.finished + u.running >= b.trials:
        return False
    if b.device_hours is not None and u.device_hours >= b.device_hours:
        return False
    return not (b.wall_time_s is not None and u.elapsed_s >= b.wall_time_s)
