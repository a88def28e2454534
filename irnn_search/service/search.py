"""The search: one Optuna study per (spec, model), an objective built from the stored spec, budgets,
and the worker loop that pulls trials until every budget is met.

- ``open_studies`` creates or loads the studies of a spec (idempotent), stores the resolved spec on
  each study and enqueues the published settings first.
- ``work`` is what a worker does: pick the open study with the fewest trials (models advance
  together, so they are compared at equal effort), run one trial, repeat. The objective is
  rebuilt from the spec stored in the study, never from a local file.
- A trial reports the objective every ``report_every`` steps; the pruner may stop it. A diverging
  trial is pruned with ``outcome = "diverged"`` and its reason on the trial; any other error fails
  that trial with its reason and the worker carries on. NaN is never returned as a value.
- Stop (Ctrl-C, SIGTERM): the running trial checkpoints and is marked ``interrupted``; its worker
  re-queues it at once with the same parameters and whichever worker takes it resumes from the
  checkpoint.
- A worker that dies (SIGKILL, lost machine) stops its trial's heartbeat; the janitor thread of
  any live worker fails that trial after the grace period, re-queues it, ends its MLflow run as
  KILLED and its run in our database as ``lost`` (see ``Janitor``).
- Checkpoints are written locally at every report and uploaded to the trial's MLflow run
  (``checkpoints/seed-<s>/last.pt``); a resumed attempt on another machine downloads the last one,
  so no worker's disk is special.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.search.literature import enqueue_published
from irnn_search.search.space import build_pruner, build_sampler
from irnn_search.search.spec import ModelSpec, SpecError, StudySpec, valid_name
from irnn_search.service.attempt import TAKEN_OVER, UNFIT, Attempt, Heartbeats, TrialInterrupted
from irnn_search.service.preflight import environmental, unfit_studies
from irnn_search.service.storage import (
    DEVICE_S,
    GRACE_S,
    HEARTBEAT_S,
    PACK_SLOTS,
    RETRY_S,
    StaleCallback,
    launch_lock,
    open_storage,
    trial_groups,
)

if TYPE_CHECKING:
    from irnn_search.service.ledger import Ledger
from irnn_search.tracking import Tracker, TrackingError, worker_http_defaults
from irnn_search.train import TrainResult, train

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
#: attempts of one lineage whose worker died (lost, not interrupted) before the trial fails for good
MAX_LOST = 3
#: trial user attrs: how many attempts of the trial's lineage were lost before it; True on the
#: failed trial that ends a lineage lost ``MAX_LOST`` times
LOST_ATTEMPTS, GAVE_UP = "lost_attempts", "gave_up"


class SearchError(RuntimeError):
    """The search cannot proceed (e.g. a study exists with another spec)."""


def study_name(spec_name: str, model: str) -> str:
    return f"{spec_name}.{model}"


def open_studies(
    spec: StudySpec, storage_url: str, tracker: Tracker | None = None, *, max_lost: int = MAX_LOST
) -> dict[str, optuna.Study]:
    """Create or load the studies of ``spec`` and enqueue the published settings (idempotent).

    With a ``tracker``, each study gets its MLflow parent run (one experiment per task); the ids
    are stored on the study so every worker logs its trials under the same parent.

    Launches of one spec are serialized (``launch_lock``), so two at the same instant enqueue
    the published settings once.

    Raises:
        SearchError: a study of that name was launched with a different spec (its hash differs).
    """
    with launch_lock(storage_url, spec.name):
        return _open_studies(spec, storage_url, tracker, max_lost)


def _open_studies(spec: StudySpec, storage_url: str, tracker: Tracker | None, max_lost: int) -> dict[str, optuna.Study]:
    storage = open_storage(storage_url, heartbeat_s=None)
    studies = {}
    for key, model in spec.models.items():
        name = study_name(spec.name, key)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=spec.direction,
            sampler=build_sampler(spec),
            pruner=build_pruner(spec),
            load_if_exists=True,
        )
        stored = study.user_attrs.get("spec_hash")
        if stored is None:
            study.set_user_attr("spec", spec.to_dict())
            study.set_user_attr("spec_hash", spec.spec_hash())
            study.set_user_attr("model", key)
            study.set_user_attr("family", model.family)
            study.set_user_attr("task", spec.task)
            study.set_user_attr("launched_at", time.time())
        elif stored != spec.spec_hash() and _only_budget_differs(study.user_attrs["spec"], spec):
            # Like n_trials in Optuna: a study may be given more (or less) budget and resumed.
            old = StudySpec.from_dict(study.user_attrs["spec"]).model(key).budget
            study.set_user_attr("earlier_spec_hashes", [*study.user_attrs.get("earlier_spec_hashes", []), stored])
            study.set_user_attr("spec", spec.to_dict())
            study.set_user_attr("spec_hash", spec.spec_hash())
            log.warning("study %s: budget changed from %s to %s", name, old.to_dict(), model.budget.to_dict())
        elif stored != spec.spec_hash():
            raise SearchError(
                f"study {name!r} was launched from a different version of spec {spec.name!r} "
                f"(stored hash {stored[:12]}, now {spec.spec_hash()[:12]}); give the changed spec a new "
                "[study] name, or delete the old studies to start over"
            )
        if study.metric_names != [spec.objective]:
            _name_objective(study, spec.objective)
        enqueue_published(study, spec, key)
        requeue_released(study, max_lost=max_lost)
        if tracker is not None:
            experiment_id = tracker.experiment(spec.task)
            parent = tracker.parent_run(
                experiment_id=experiment_id,
                study_name=name,
                task=spec.task,
                model=key,
                family=model.family,
                spec=spec.to_dict(),
                launch_id=None,
            )
            study.set_user_attr("mlflow_experiment_id", experiment_id)
            study.set_user_attr("mlflow_parent_run_id", parent)
            from irnn_search.service.answer import publish_summary

            publish_summary(study, tracker)
            u = usage(study)
            if not budget_left(study, model) and not (u.running or u.waiting):
                tracker.finish_parent(parent)  # nothing left to do: the parent stays closed
        studies[key] = study
    return studies


def _only_budget_differs(stored: dict[str, Any], spec: StudySpec) -> bool:
    """Whether a stored spec and ``spec`` differ in budgets (and description) only: what a trial
    trains and how it is searched are the same, so the study may go on under the new budget."""

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        d = {k: v for k, v in d.items() if k != "description"}
        d["models"] = {k: {f: v for f, v in m.items() if f != "budget"} for k, m in d.get("models", {}).items()}
        return d

    try:
        return strip(StudySpec.from_dict(stored).to_dict()) == strip(spec.to_dict())
    except Exception:  # a stored spec this version cannot read differs in more than budgets
        return False


def _name_objective(study: optuna.Study, name: str) -> None:
    """Name the objective (optuna-dashboard shows "val_mse", not "Objective 0")."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name])


def close_tracking(studies: Iterable[optuna.Study], tracker: Tracker) -> None:
    """After the last worker of a launch: end orphaned trial runs and the finished studies' parents."""
    for study in studies:
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent is None:
            continue
        running = {t.user_attrs.get("mlflow_run_id") for t in study.get_trials(deepcopy=False)
                   if t.state == TrialState.RUNNING}  # fmt: skip
        tracker.sweep(parent, keep={r for r in running if r})
        if not budget_left(study, stored_spec(study).model(study.user_attrs["model"])) and not running:
            tracker.finish_parent(parent)
    tracker.flush()


def stored_spec(study: optuna.Study) -> StudySpec:
    """The spec a study was launched with (what every worker rebuilds its objective from)."""
    data = study.user_attrs.get("spec")
    if data is None:
        raise SearchError(f"study {study.study_name!r} was not launched by irnn-search (it has no stored spec)")
    return StudySpec.from_dict(data)


def released(t: FrozenTrial) -> bool:
    """A failed trial that is to run again: interrupted (it checkpointed and stopped) or lost (its
    worker died, so nothing recorded an outcome and the janitor failed it)."""
    return t.state == TrialState.FAIL and t.user_attrs.get("outcome") in (None, "interrupted")


def requeue(study: optuna.Study, t: FrozenTrial, reason: str, *, max_lost: int = MAX_LOST) -> None:
    """Enqueue a copy of released trial ``t`` (same params and lineage): it resumes from the
    lineage's checkpoint and logs into an MLflow run linked to ``t``'s.

    A lost ``t`` (its worker died: no ``interrupted`` outcome) counts against the lineage's
    ``max_lost``; at that count the copy is added already failed, with outcome ``failed`` and the
    reason, instead of queued: a trial that kills its worker (out of memory, a kernel crash) is
    tried ``max_lost`` times, not for ever. Interrupted attempts (SIGTERM, Ctrl-C) do not count.
    """
    attrs = {k: v for k, v in t.user_attrs.items() if k not in ("outcome", "reason", "retry_reason", UNFIT)}
    attrs["retry_of"] = t.number
    attrs["retry_reason"] = reason
    attrs.setdefault("lineage", t.number)
    lost = int(t.user_attrs.get(LOST_ATTEMPTS, 0)) + (t.user_attrs.get("outcome") != "interrupted")
    attrs[LOST_ATTEMPTS] = lost
    if lost >= max_lost:
        attrs["outcome"], attrs[GAVE_UP] = "failed", True
        attrs["reason"] = (
            f"gave up: the worker running this trial died on {lost} attempts (the limit, "
            f"IRNN_SEARCH_MAX_LOST_ATTEMPTS, is {max_lost}); the last: {reason}"
        )
        log.warning("study %s trial %d (lineage %s): %s", study.study_name, t.number, attrs["lineage"], attrs["reason"])
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.FAIL, params=t.params, distributions=t.distributions, user_attrs=attrs
            )
        )
        return
    study.enqueue_trial(t.params, user_attrs=attrs)


def requeue_released(study: optuna.Study, *, min_age_s: float = 60.0, max_lost: int = MAX_LOST) -> int:
    """Re-queue released trials that nobody re-queued (their worker died between failing and
    re-queueing them). Trials released in the last ``min_age_s`` seconds are left to the process
    that released them, which re-queues within milliseconds, so no trial is re-queued twice."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    now = time.time()
    n = 0
    for t in trials:
        if not released(t) or t.number in retried:
            continue
        if t.datetime_complete is not None and now - t.datetime_complete.timestamp() < min_age_s:
            continue
        requeue(study, t, t.user_attrs.get("reason") or "its worker stopped before re-queueing it", max_lost=max_lost)
        n += 1
    return n


class Janitor:
    """Fails trials whose worker stopped sending heartbeats and re-queues them.

    Every worker runs one as a thread: every ``interval_s`` it asks Optuna to fail each study's
    stale trials (RUNNING with no heartbeat for longer than the storage's grace period). A trial's
    state changes atomically (on SQLite too: ``storage.HeartbeatRDBStorage``), so exactly one
    janitor wins each stale trial and runs ``on_stale`` for it: re-queue it, end its MLflow run
    as KILLED, mark its run ``lost`` in our database. A trial whose worker died is therefore back
    in the queue within ``grace + interval`` seconds, whether or not any worker starts a new trial.
    """

    def __init__(
        self,
        *,
        tracker: Tracker | None = None,
        ledger: Ledger | None = None,
        grace_s: float = GRACE_S,
        max_lost: int = MAX_LOST,
    ):
        self.tracker = tracker
        self.ledger = ledger
        self.grace_s = grace_s
        self.max_lost = max_lost
        self.lost: list[tuple[str, int]] = []

    def on_stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = f"lost: its worker sent no heartbeat for more than {self.grace_s:.0f} s (killed or unreachable)"
        requeue(study, trial, reason, max_lost=self.max_lost)
        self.lost.append((study.study_name, trial.number))
        log.warning("study %s trial %d: %s; re-queued", study.study_name, trial.number, reason)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if self.tracker is not None and run_id and trial.user_attrs.get("mlflow_run_trial") == trial.number:
            self.tracker.end_run(run_id, "lost", reason)
        if self.ledger is not None:
            self.ledger.mark_lost(study.study_name, trial.number, reason)

    def sweep(self, studies: Iterable[optuna.Study]) -> None:
        import warnings

        for study in studies:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            except Exception as exc:  # the janitor never stops the worker
                log.warning("janitor: could not check study %s for stale trials: %s", study.study_name, exc)

    def run(self, studies: Iterable[optuna.Study], stop: threading.Event, interval_s: float) -> threading.Thread:
        studies = list(studies)

        def loop() -> None:
            while not stop.wait(interval_s):
                self.sweep(studies)

        thread = threading.Thread(target=loop, name="irnn-search-janitor", daemon=True)
        thread.start()
        return thread


# -- budgets ------------------------------------------------------------------------------------
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
    return not released(t) and t.user_attrs.get("outcome") != "surplus"


def _surplus(trial: optuna.Trial, model: ModelSpec) -> bool:
    """Whether earlier trials (by number, which Optuna assigns atomically) already fill the trial
    budget. Two workers that pass ``budget_left`` at the same instant both create a trial; the
    later-numbered one then stands down, so the budget is never overshot."""
    if model.budget.trials is None:
        return False
    states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    ahead = sum(g.count for g in _groups(trial.study, before=trial.number) if g.state in states and g.counts)
    return ahead >= model.budget.trials


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
                not (g.state == TrialState.FAIL and g.outcome in (None, "interrupted")) and g.outcome != "surplus",
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


def budget_left(study: optuna.Study, model: ModelSpec, u: Usage | None = None) -> bool:
    """Whether another trial may start (trials in flight count). Two workers that pass this check
    in the same instant are settled by ``_surplus`` when their trials start. ``u``: the study's
    usage when the caller already has it."""
    u = u if u is not None else usage(study)
    b = model.budget
    if b.trials is not None and u.finished + u.running >= b.trials:
        return False
    if b.device_hours is not None and u.device_hours >= b.device_hours:
        return False
    return not (b.wall_time_s is not None and u.elapsed_s >= b.wall_time_s)


# -- the objective ------------------------------------------------------------------------------
def make_objective(
    spec: StudySpec,
    model_key: str,
    *,
    device: str = "cpu",
    checkpoint_root: Path,
    stop: threading.Event | None = None,
    on_result: Callable[[optuna.Trial, TrainResult], None] | None = None,
    tracker: Tracker | None = None,
    ledger: Ledger | None = None,
    worker_id: int | None = None,
    on_start: Callable[[optuna.Trial, dict[str, Any]], None] | None = None,
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective of one model: suggest, train every seed, return the mean best value.

    Intermediate values (and pruning) follow the first seed. The value of one seed is its best
    validation objective over training (checkpointed in ``best.pt``). The bookkeeping around the
    training (MLflow run, our database, checkpoints in the artifact store) is an ``Attempt``.
    """
    model_spec = spec.model(model_key)

    def objective(trial: optuna.Trial) -> float:
        if _surplus(trial, model_spec):
            trial.set_user_attr("outcome", "surplus")
            raise optuna.TrialPruned("the trial budget was met by trials already in flight")
        attempt = Attempt(
            trial,
            spec,
            model_key,
            device=device,
            checkpoint_root=checkpoint_root,
            tracker=tracker,
            ledger=ledger,
            worker_id=worker_id,
        )
        try:
            attempt.begin()
            if on_start is not None:
                on_start(trial, attempt.params)
            for i, seed in enumerate(spec.seeds):
                run, ckpt, report, on_checkpoint = attempt.prepare(i, seed)
                result = train(
                    run.model,
                    run.task,
                    run.config,
                    report=report,
                    stop=stop,
                    checkpoint_dir=ckpt,
                    on_checkpoint=on_checkpoint,
                )
                if on_result is not None:
                    on_result(trial, result)
                attempt.seed_done(i, seed, run, result, ckpt)
            return attempt.complete()
        except optuna.TrialPruned as exc:
            attempt.pruned(exc)
            raise
        except TrialInterrupted as exc:
            attempt.interrupted(exc)
            raise
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            attempt.taken_over(exc)
            raise
        except Exception as exc:  # a trial's error fails that trial, never the worker
            attempt.failed(exc)
            raise
        finally:  # no MLflow run outlives its trial, whatever the outcome
            attempt.close()

    return objective


# -- workers ------------------------------------------------------------------------------------
def load_studies(
    storage_url: str,
    names: Iterable[str] | None = None,
    *,
    stream: int = 0,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    on_stale: StaleCallback | None = None,
    retry_s: float = RETRY_S,
) -> dict[str, optuna.Study]:
    """Open studies launched by irnn-search on a storage (all, or the named ones), keyed by name.

    Workers pass ``heartbeat_s`` (their trials then keep a heartbeat, and a trial silent for
    ``grace_s`` is failed and handed to ``on_stale``, normally ``Janitor.on_stale``); readers
    (status, report) leave it None.
    """
    storage = open_storage(storage_url, heartbeat_s=heartbeat_s, grace_s=grace_s, on_stale=on_stale, retry_s=retry_s)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    wanted = set(names) if names else None
    out = {}
    refused: dict[str, str] = {}
    for s in summaries:
        if wanted is not None and s.study_name not in wanted:
            continue
        if "spec_hash" not in s.user_attrs:
            continue
        # Names read back from shared storage name folders (checkpoints): checked again here.
        try:
            spec = StudySpec.from_dict(s.user_attrs["spec"])
        except SpecError as exc:
            refused[s.study_name] = str(exc)
            continue
        if s.study_name != study_name(spec.name, s.user_attrs.get("model", "")) or not valid_name(s.study_name):
            refused[s.study_name] = (
                f"its name is not <spec>.<model> of its stored spec ({spec.name!r}, model "
                f"{s.user_attrs.get('model')!r}) with letters, digits, '_', '.', '-' only"
            )
            continue
        out[s.study_name] = optuna.load_study(
            study_name=s.study_name,
            storage=storage,
            sampler=build_sampler(spec, stream=stream),
            pruner=build_pruner(spec),
        )
    for name, why in refused.items():
        log.warning("study %r on the storage is skipped: %s", name, why)
    if wanted is not None and (missing := wanted - set(out)):
        if bad := [n for n in sorted(missing) if n in refused]:
            raise SearchError(f"study {bad[0]!r} on this storage is refused: {refused[bad[0]]}")
        raise SearchError(f"no such study launched on this storage: {', '.join(sorted(missing))}")
    return out


def open_for_work(
    storage_url: str,
    names: Iterable[str] | None = None,
    *,
    stream: int = 0,
    heartbeat_s: int = HEARTBEAT_S,
    grace_s: int = GRACE_S,
    tracker: Tracker | None = None,
    ledger: Ledger | None = None,
    retry_s: float = RETRY_S,
    max_lost: int = MAX_LOST,
) -> tuple[dict[str, optuna.Study], Janitor]:
    """A worker's studies, with heartbeats on and a janitor that re-queues lost trials (up to
    ``max_lost`` lost attempts per lineage)."""
    janitor = Janitor(tracker=tracker, ledger=ledger, grace_s=grace_s, max_lost=max_lost)
    studies = load_studies(
        storage_url,
        names,
        stream=stream,
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        on_stale=janitor.on_stale,
        retry_s=retry_s,
    )
    return studies, janitor


def work(
    studies: dict[str, optuna.Study],
    *,
    device: str = "cpu",
    checkpoint_root: Path,
    stop: threading.Event,
    on_trial: Callable[[str, FrozenTrial], None] | None = None,
    on_start: Callable[[optuna.Trial, dict[str, Any]], None] | None = None,
    tracker: Tracker | None = None,
    ledger: Ledger | None = None,
    janitor: Janitor | None = None,
    janitor_interval_s: float | None = None,
    pack: int = 1,
) -> int:
    """Run trials until every study's budget is met or ``stop`` is set; return trials run here.

    ``pack`` > 1 trains up to that many trials of one study at once as one batched computation
    (``service.packing``); a study whose model cannot be packed runs one trial at a time.

    With a ``janitor`` (``open_for_work``) a thread fails and re-queues the trials of dead workers
    every ``janitor_interval_s`` (default: the storage's heartbeat interval).
    """
    specs = {name: stored_spec(s) for name, s in studies.items()}
    for s in studies.values():
        requeue_released(s, max_lost=janitor.max_lost if janitor is not None else MAX_LOST)
    worker_id = ledger.start_worker(device) if ledger is not None else None
    ran = 0
    done = threading.Event()
    linger = (0.0, 0.0)
    if janitor is not None:
        interval = janitor_interval_s
        if interval is None:
            storage = next(iter(studies.values()))._storage if studies else None
            get = getattr(storage, "get_heartbeat_interval", None)
            interval = float(get() or HEARTBEAT_S) if callable(get) else float(HEARTBEAT_S)
        janitor.sweep(studies.values())
        janitor.run(studies.values(), done, interval)
        # A worker that died up to one grace period after this one ran out of work is seen by this
        # one's janitor within grace + 2 intervals more; its re-queued trial is then run here.
        linger = (2 * janitor.grace_s + 2 * interval, min(interval, 2.0))
    try:
        ran = _loop(
            studies, specs, device, checkpoint_root, stop, on_trial, on_start, tracker, ledger, worker_id, pack, linger
        )
    finally:
        done.set()
        if ledger is not None:
            ledger.stop_worker(worker_id)
        if tracker is not None:
            tracker.flush()
    if tracker is not None and not stop.is_set():
        _close_idle(studies.values(), tracker)
    return ran


def _close_idle(studies: Iterable[optuna.Study], tracker: Tracker) -> None:
    """A pool of ``worker`` processes has no ``launch`` to close its studies in MLflow: the worker
    that leaves with every budget met closes those with no trial running anywhere, ending their
    parent runs and any trial run a worker killed before recording it on its trial left RUNNING.
    Studies with trials in flight are left to the workers running them, who leave later."""
    idle = [s for s in studies if not any(t.state == TrialState.RUNNING for t in s.get_trials(deepcopy=False))]
    try:
        close_tracking(idle, tracker)
    except TrackingError as exc:  # MLflow is down: the next worker to leave, or `launch`, closes them
        log.warning("could not close the finished studies in MLflow for now: %s", exc)


def _loop(
    studies: dict[str, optuna.Study],
    specs: dict[str, StudySpec],
    device: str,
    checkpoint_root: Path,
    stop: threading.Event,
    on_trial: Callable[[str, FrozenTrial], None] | None,
    on_start: Callable[[optuna.Trial, dict[str, Any]], None] | None,
    tracker: Tracker | None,
    ledger: Ledger | None,
    worker_id: int | None,
    pack: int = 1,
    linger: tuple[float, float] = (0.0, 0.0),
) -> int:
    """``linger``: (seconds, poll interval). When every budget is met only because trials are
    still running on other workers, wait that long, re-checking, before leaving: should one of
    those workers have died, the janitor re-queues its trial meanwhile and it runs here. The
    wait starts again whenever the number of trials running elsewhere changes, and ends as soon
    as none is left."""
    from irnn_search.service.answer import publish_summary
    from irnn_search.service.packing import pack_refusal, run_pack

    studies = dict(studies)  # a study this worker cannot run (UNFIT) leaves this copy
    unfit: set[str] = set()

    def trial_done(name: str, finished: FrozenTrial) -> None:
        publish_summary(studies[name], tracker)  # the parent run's summary stays current
        if on_trial is not None:
            on_trial(name, finished)
        if UNFIT in finished.user_attrs and name not in unfit:
            unfit.add(name)  # released, not failed: other workers (or this one, fixed) run it
            log.warning("study %s: this worker takes no more of its trials: %s", name, finished.user_attrs[UNFIT])

    ran = 0
    refused: dict[str, str | None] = {}
    lingering: tuple[float, int] | None = None  # (until, running elsewhere when it started)
    while not stop.is_set():
        for name in unfit & set(studies):
            del studies[name]
        if not studies:
            break
        uses = {n: usage(s) for n, s in studies.items()}  # one read of each study's trials per pick
        open_ = [n for n, s in studies.items() if budget_left(s, specs[n].model(s.user_attrs["model"]), uses[n])]
        if not open_:
            elsewhere = sum(u.running for u in uses.values())  # this process runs none now
            now = time.monotonic()
            if linger[0] <= 0 or elsewhere == 0:
                break
            if lingering is None or lingering[1] != elsewhere:
                if lingering is None:
                    log.info(
                        "budgets met, with %d trial(s) still running on other workers: waiting up to %.0f s "
                        "in case one of them died and its trial is re-queued",
                        elsewhere,
                        linger[0],
                    )
                lingering = (now + linger[0], elsewhere)
            if now >= lingering[0]:
                break
            stop.wait(min(linger[1], lingering[0] - now))
            continue
        lingering = None
        # The study with the fewest started trials goes next: models advance together.
        name = min(open_, key=lambda n: uses[n].finished + uses[n].running)
        study, spec = studies[name], specs[name]
        if pack > 1 and name not in refused:
            refused[name] = pack_refusal(spec, study.user_attrs["model"])
            if refused[name] is not None:
                log.warning("study %s trains one trial at a time: %s", name, refused[name])
        if pack > 1 and refused[name] is None:
            model = spec.model(study.user_attrs["model"])
            # models advance together: a pack does not run ahead of the other open studies
            least = min((uses[n].finished + uses[n].running for n in open_ if n != name), default=None)

            def may_start(
                study: optuna.Study = study, model: ModelSpec = model, least: int | None = least, name: str = name
            ) -> bool:
                if name in unfit:
                    return False
                u = usage(study)
                return budget_left(study, model, u) and (least is None or u.finished + u.running < least + pack)

            def surplus(trial: optuna.Trial, model: ModelSpec = model) -> bool:
                return _surplus(trial, model)

            ran += run_pack(
                study,
                spec,
                pack=pack,
                device=device,
                checkpoint_root=checkpoint_root,
                stop=stop,
                may_start=may_start,
                surplus=surplus,
                requeue=requeue,
                on_trial=trial_done,
                on_start=on_start,
                tracker=tracker,
                ledger=ledger,
                worker_id=worker_id,
            )
            if ledger is not None and worker_id is not None:
                ledger.beat(worker_id, None, None)
            continue
        objective = make_objective(
            spec,
            study.user_attrs["model"],
            device=device,
            checkpoint_root=checkpoint_root,
            stop=stop,
            tracker=tracker,
            ledger=ledger,
            worker_id=worker_id,
            on_start=on_start,
        )
        finished = run_one(study, objective)
        ran += 1
        if finished is not None and released(finished):  # interrupted: back in the queue at once
            requeue(study, finished, finished.user_attrs.get("reason", "interrupted"))
        if ledger is not None and worker_id is not None:
            ledger.beat(worker_id, None, None)
        if finished is not None:
            trial_done(name, finished)
    return ran


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> FrozenTrial | None:
    """Ask one trial, run ``objective`` on it with heartbeats, tell the outcome; the finished trial.

    ``study.optimize`` without its one fatal case: when another worker's janitor has already
    failed the trial (its heartbeats did not reach the storage for a grace period), Optuna's tell
    raises and stops the worker. Here that trial is left to its re-queued copy (None is returned)
    and the worker goes on. A trial's error fails that trial, never the worker.
    """
    trial = study.ask()
    value: float | None = None
    state: TrialState | None
    with Heartbeats(study) as beats:
        beats.add(trial._trial_id)
        try:
            value = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except optuna.exceptions.UpdateFinishedTrialError:
            state = None
        except TrialInterrupted:
            state = TrialState.FAIL
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        except Exception as exc:
            state = TrialState.FAIL
            if environmental(exc) is None:
                log.warning("%s trial %d failed: %s: %s", study.study_name, trial.number, type(exc).__name__, exc)
            else:  # released by its Attempt, not failed: see Attempt.failed
                log.warning("%s trial %d released: %s", study.study_name, trial.number, environmental(exc))
            log.debug("the error of trial %d", trial.number, exc_info=exc)
        finally:
            beats.remove(trial._trial_id)
    if state is None:
        return None
    frozen = study.tell(trial, value, state=state, skip_if_finished=True)
    if frozen.state != state:  # failed by a janitor an instant before this tell
        log.warning("%s trial %d: %s", study.study_name, trial.number, TAKEN_OVER)
        return None
    return frozen


def default_threads(device: str, pack: int, workers: int = 1) -> int:
    """Torch threads per worker when neither ``--threads`` nor ``IRNN_SEARCH_THREADS`` says.

    One-trial workers take 1: a small RNN runs no faster on more, and a pool of processes uses the
    cores better. A packed CPU worker takes its share of the cores (all of them for one worker):
    the pack's batched matmuls split across threads (packed IRNN, K=16, adding shape: 410 against
    250 model-steps/s on 2 threads against 1, ``benchmarks/README.md``)."""
    if pack <= 1 or device != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def worker_process(
    storage_url: str,
    names: list[str] | None,
    device: str,
    checkpoint_root: str,
    stream: int,
    threads: int,
    mlflow_uri: str | None = None,
    mlflow_artifact_root: str | None = None,
    db_url: str | None = None,
    heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S),
    pack: int = 1,
    max_lost: int = MAX_LOST,
    retry_s: float = RETRY_S,
) -> None:
    """Entry point of a local worker process (``launch --workers N``): ``threads`` torch threads, quiet logs,
    SIGINT/SIGTERM stop after the current step with a checkpoint."""
    import signal

    import torch

    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    watch_parent(os.getppid(), stop)
    if mlflow_uri:
        worker_http_defaults()
    tracker = Tracker(mlflow_uri, mlflow_artifact_root) if mlflow_uri else None
    ledger = None
    if db_url:
        from irnn_search.service.ledger import Ledger

        ledger = Ledger(db_url)
    heartbeat_s, grace_s = heartbeat
    studies, janitor = open_for_work(
        storage_url,
        names,
        stream=stream,
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        tracker=tracker,
        ledger=ledger,
        max_lost=max_lost,
        retry_s=retry_s,
    )
    for name, why in unfit_studies({n: stored_spec(s) for n, s in studies.items()}, device).items():
        log.warning("study %s: this worker takes none of its trials: %s", name, why)
        del studies[name]
    work(
        studies,
        device=device,
        checkpoint_root=Path(checkpoint_root),
        stop=stop,
        tracker=tracker,
        ledger=ledger,
        janitor=janitor,
        pack=pack,
    )


def watch_parent(parent: int, stop: threading.Event, interval_s: float = 1.0) -> threading.Thread:
    """Set ``stop`` when this process's parent (the launcher) is gone: its workers then checkpoint
    and release their trials rather than train on as orphans. A dead parent shows as a changed
    ``os.getppid()`` (the orphan is re-parented to init or a subreaper)."""

    def loop() -> None:
        while not stop.wait(interval_s):
            if os.getppid() != parent:
                log.warning("the launcher (pid %d) is gone: stopping after the current step", parent)
                stop.set()

    thread = threading.Thread(target=loop, name="irnn-search-parent-watch", daemon=True)
    thread.start()
    return thread


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


def start_workers(
    storage_url: str,
    names: list[str],
    *,
    workers: int,
    device: str,
    checkpoint_root: Path,
    threads: int = 1,
    mlflow_uri: str | None = None,
    mlflow_artifact_root: str | None = None,
    db_url: str | None = None,
    heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S),
    pack: int = 1,
    max_lost: int = MAX_LOST,
    retry_s: float = RETRY_S,
) -> list[Any]:
    """Spawn ``workers`` local worker processes (spawn context: no forked torch or DB state)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = []
    for i in range(workers):
        p = ctx.Process(
            target=worker_process,
            args=(
                storage_url,
                names,
                device,
                str(checkpoint_root),
                os.getpid() * 100 + i,
                threads,
                mlflow_uri,
                mlflow_artifact_root,
                db_url,
                heartbeat,
                pack,
                max_lost,
                retry_s,
            ),
            name=f"irnn-search-worker-{i}",
        )
        p.start()
        procs.append(p)
    return procs
