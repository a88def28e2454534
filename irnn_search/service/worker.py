"""A worker: pull trials from the studies on a storage until every budget is met, or a stop.

- ``serve`` is the one way a worker starts, for ``irnn-search worker`` and for each process that
  ``launch --workers N`` spawns alike: torch threads, MLflow tracker, experiment database,
  studies with heartbeats and a janitor, the studies this machine cannot run set aside, SIGINT /
  SIGTERM turned into a stop after the current step (with a checkpoint), then ``work``.
- ``work`` picks the open study with the fewest trials (models advance together, so they are
  compared at equal effort), runs one trial (or a pack of them, ``service.packing``), repeats.
  The objective is rebuilt from the spec stored in the study, never from a local file.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from irnn_search.search.spec import ModelSpec, StudySpec
from irnn_search.service.attempt import UNFIT
from irnn_search.service.budget import Usage, budget_left, owed, surplus, usage
from irnn_search.service.objective import make_objective, run_one
from irnn_search.service.preflight import unfit_studies
from irnn_search.service.recovery import MAX_LOST, Janitor, released, requeue, requeue_released
from irnn_search.service.storage import RETRY_S
from irnn_search.service.studies import close_tracking, load_studies, stored_spec
from irnn_search.settings import GRACE_S, HEARTBEAT_S

if TYPE_CHECKING:
    from irnn_search.service.ledger import Ledger
    from irnn_search.settings import Settings
    from irnn_search.tracking import Tracker

log = logging.getLogger(__name__)

OnStart = Callable[[optuna.Trial, dict[str, Any]], None]
OnTrial = Callable[[str, FrozenTrial], None]


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


@dataclass(frozen=True)
class WorkerOptions:
    """Everything a worker process needs, built once from the settings (``from_settings``) by
    ``worker`` and by ``launch`` for each process it spawns, so the two cannot drift. Picklable:
    it is the spawned process's only argument."""

    storage_url: str
    checkpoint_root: Path
    studies: tuple[str, ...] | None = None  # None: every study on the storage
    device: str = "cpu"
    threads: int = 1  # torch threads (``default_threads`` when not set)
    pack: int = 1  # trials of one study trained at once as one batched computation
    mlflow_uri: str | None = None  # None: no MLflow tracking
    mlflow_artifact_root: str | None = None
    db_url: str | None = None  # our experiment database; None: not recorded
    auto_upgrade: bool = False  # migrate the experiment database on open (the embedded default only)
    heartbeat_s: int = HEARTBEAT_S
    grace_s: int = GRACE_S  # a trial with no heartbeat for this long is lost and re-queued
    max_lost: int = MAX_LOST  # lost attempts of one lineage before its trial fails for good
    retry_s: float = RETRY_S  # how long a storage outage is waited out before the worker fails
    stream: int | None = None  # the sampler's random stream; None: this process's pid
    watch_parent: bool = False  # stop when the parent (a launcher) is gone
    quiet: bool = False  # Optuna logs warnings only (a launcher's live table owns the terminal)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        studies: Sequence[str] | None = None,
        device: str = "cpu",
        threads: int | None = None,
        pack: int = 1,
        track: bool = True,
        workers: int = 1,
    ) -> WorkerOptions:
        """Options for one of ``workers`` workers on this machine; ``threads`` None: the setting,
        else ``default_threads``."""
        return cls(
            storage_url=settings.storage_url,
            checkpoint_root=settings.checkpoint_root.resolve(),
            studies=tuple(studies) if studies else None,
            device=device,
            threads=threads or settings.threads or default_threads(device, pack, workers),
            pack=pack,
            mlflow_uri=settings.mlflow_tracking_uri if track else None,
            mlflow_artifact_root=settings.mlflow_artifact_root if track else None,
            db_url=settings.db_url,
            auto_upgrade=settings.db is None,
            heartbeat_s=settings.heartbeat_s,
            grace_s=settings.grace_s,
            max_lost=settings.max_lost_attempts,
            retry_s=settings.db_retry_s,
        )


class StorageUnavailable(Exception):
    """The worker could not open the Optuna storage; ``__cause__`` is the storage's error."""


@dataclass(frozen=True)
class Served:
    ran: int  # trials run by this worker
    studies: tuple[str, ...]  # the studies it took trials from
    stopped: bool  # by a signal or a gone launcher, rather than because every budget was met


def serve(
    options: WorkerOptions,
    *,
    on_ready: Callable[[list[str], dict[str, str]], None] | None = None,
    on_stop: Callable[[int], None] | None = None,
    on_start: OnStart | None = None,
    on_trial: OnTrial | None = None,
) -> Served:
    """Set up a worker from ``options`` and run trials until every budget is met or it is stopped.

    SIGINT and SIGTERM (handled once the studies are open; before, the worker holds no trial and
    they act as usual) stop it after the current step: the running trial checkpoints and is
    re-queued for any worker. The previous handlers are back when this returns.

    Args:
        on_ready: called with the studies to run and those set aside (name -> why this machine
            cannot run their trials) before any trial; by default the set-aside ones are logged.
            It may raise to refuse to go on.
        on_stop: called with the signal number when a signal asks the worker to stop.
        on_start, on_trial: see ``work``.

    Raises:
        SearchError: a named study does not exist or is refused.
        StorageUnavailable: the Optuna storage cannot be opened (its error is the cause).
        TrackingError: the MLflow tracking store cannot be opened.
        DatabaseError: our experiment database is unreachable or not at the code's revision.
    """
    import torch

    from irnn_search.service.studies import SearchError

    torch.set_num_threads(options.threads)
    if options.quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop = threading.Event()
    if options.watch_parent:
        watch_parent(os.getppid(), stop)
    tracker, ledger = _stores(options)
    try:
        studies, janitor = open_for_work(
            options.storage_url,
            options.studies,
            stream=os.getpid() if options.stream is None else options.stream,
            heartbeat_s=options.heartbeat_s,
            grace_s=options.grace_s,
            tracker=tracker,
            ledger=ledger,
            max_lost=options.max_lost,
            retry_s=options.retry_s,
        )
    except SearchError:
        raise
    except Exception as exc:
        raise StorageUnavailable(str(exc)) from exc
    unfit = unfit_studies({n: stored_spec(s) for n, s in studies.items()}, options.device)
    for name in unfit:
        del studies[name]
    if on_ready is not None:
        on_ready(list(studies), unfit)
    else:
        for name, why in unfit.items():
            log.warning("study %s: this worker takes none of its trials: %s", name, why)

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        if on_stop is not None:
            on_stop(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ran = work(
            studies,
            device=options.device,
            checkpoint_root=options.checkpoint_root,
            stop=stop,
            on_trial=on_trial,
            on_start=on_start,
            tracker=tracker,
            ledger=ledger,
            janitor=janitor,
            pack=options.pack,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return Served(ran=ran, studies=tuple(studies), stopped=stop.is_set())


def _stores(options: WorkerOptions) -> tuple[Tracker | None, Ledger | None]:
    """The MLflow tracker and our experiment database of a worker (each None when off)."""
    tracker = None
    if options.mlflow_uri:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from irnn_search.tracking import Tracker, worker_http_defaults

        worker_http_defaults()
        tracker = Tracker(options.mlflow_uri, options.mlflow_artifact_root)
    ledger = None
    if options.db_url:
        from irnn_search.service.ledger import Ledger

        ledger = Ledger(options.db_url, auto_upgrade=options.auto_upgrade)
    return tracker, ledger


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


@dataclass(frozen=True, kw_only=True)
class _Context:
    """What every trial a worker runs shares."""

    device: str
    checkpoint_root: Path
    stop: threading.Event
    on_trial: OnTrial | None
    on_start: OnStart | None
    tracker: Tracker | None
    ledger: Ledger | None
    worker_id: int | None
    pack: int
    max_lost: int  # the janitor's: an interrupted attempt is re-queued under the same limit
    #: (seconds, poll interval) to wait when every budget is met only because trials are still
    #: running on other workers (see ``_Loop.linger``)
    linger: tuple[float, float]


def work(
    studies: dict[str, optuna.Study],
    *,
    device: str = "cpu",
    checkpoint_root: Path,
    stop: threading.Event,
    on_trial: OnTrial | None = None,
    on_start: OnStart | None = None,
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
    max_lost = janitor.max_lost if janitor is not None else MAX_LOST
    for s in studies.values():
        requeue_released(s, max_lost=max_lost)
    worker_id = ledger.start_worker(device) if ledger is not None else None
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
    context = _Context(
        device=device,
        checkpoint_root=checkpoint_root,
        stop=stop,
        on_trial=on_trial,
        on_start=on_start,
        tracker=tracker,
        ledger=ledger,
        worker_id=worker_id,
        pack=pack,
        max_lost=max_lost,
        linger=linger,
    )
    try:
        ran = _Loop(studies, specs, context).run()
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
    from optuna.trial import TrialState

    from irnn_search.tracking import TrackingError

    idle = [s for s in studies if not any(t.state == TrialState.RUNNING for t in s.get_trials(deepcopy=False))]
    try:
        close_tracking(idle, tracker)
    except TrackingError as exc:  # MLflow is down: the next worker to leave, or `launch`, closes them
        log.warning("could not close the finished studies in MLflow for now: %s", exc)


class _Loop:
    """A worker's trials, one study pick at a time (``run``)."""

    def __init__(self, studies: dict[str, optuna.Study], specs: dict[str, StudySpec], context: _Context) -> None:
        self.studies = dict(studies)  # a study this worker cannot run (UNFIT) leaves this copy
        self.specs = specs
        self.c = context
        self.unfit: set[str] = set()
        self.refused: dict[str, str | None] = {}  # study -> why its trials cannot be packed
        self.lingering: tuple[float, int] | None = None  # (until, running elsewhere when it started)

    def run(self) -> int:
        ran = 0
        while not self.c.stop.is_set():
            for name in self.unfit & set(self.studies):
                del self.studies[name]
            if not self.studies:
                break
            uses = {n: usage(s) for n, s in self.studies.items()}  # one read of each study's trials per pick
            open_ = [n for n, s in self.studies.items() if budget_left(s, self._model(n), uses[n]) or owed(s)]
            if not open_:
                if self.linger(uses):
                    continue
                break
            self.lingering = None
            # The study with the fewest started trials goes next: models advance together.
            name = min(open_, key=lambda n: uses[n].finished + uses[n].running)
            ran += self._pack(name, open_, uses) if self._packs(name) else self._one(name)
        return ran

    def linger(self, uses: dict[str, Usage]) -> bool:
        """Whether to wait on (having waited a poll interval) when every budget is met only
        because trials are still running on other workers: should one of those workers have
        died, the janitor re-queues its trial meanwhile and it runs here. The wait starts again
        whenever the number of trials running elsewhere changes, and ends as soon as none is left."""
        seconds, poll = self.c.linger
        elsewhere = sum(u.running for u in uses.values())  # this process runs none now
        now = time.monotonic()
        if seconds <= 0 or elsewhere == 0:
            return False
        if self.lingering is None or self.lingering[1] != elsewhere:
            if self.lingering is None:
                log.info(
                    "budgets met, with %d trial(s) still running on other workers: waiting up to %.0f s "
                    "in case one of them died and its trial is re-queued",
                    elsewhere,
                    seconds,
                )
            self.lingering = (now + seconds, elsewhere)
        if now >= self.lingering[0]:
            return False
        self.c.stop.wait(min(poll, self.lingering[0] - now))
        return True

    def _model(self, name: str) -> ModelSpec:
        return self.specs[name].model(self.studies[name].user_attrs["model"])

    def _packs(self, name: str) -> bool:
        """Whether this worker packs the study's trials (it says once why not, if it cannot)."""
        from irnn_search.service.packing import pack_refusal

        if self.c.pack <= 1:
            return False
        if name not in self.refused:
            self.refused[name] = pack_refusal(self.specs[name], self.studies[name].user_attrs["model"])
            if self.refused[name] is not None:
                log.warning("study %s trains one trial at a time: %s", name, self.refused[name])
        return self.refused[name] is None

    def _trial_done(self, name: str, finished: FrozenTrial) -> None:
        from irnn_search.service.answer import publish_summary

        publish_summary(self.studies[name], self.c.tracker)  # the parent run's summary stays current
        if self.c.on_trial is not None:
            self.c.on_trial(name, finished)
        if UNFIT in finished.user_attrs and name not in self.unfit:
            self.unfit.add(name)  # released, not failed: other workers (or this one, fixed) run it
            log.warning("study %s: this worker takes no more of its trials: %s", name, finished.user_attrs[UNFIT])

    def _pack(self, name: str, open_: list[str], uses: dict[str, Usage]) -> int:
        from irnn_search.service.packing import run_pack

        study, model, pack = self.studies[name], self._model(name), self.c.pack
        # models advance together: a pack does not run ahead of the other open studies
        least = min((uses[n].finished + uses[n].running for n in open_ if n != name), default=None)

        def may_start() -> bool:
            if name in self.unfit:
                return False
            u = usage(study)
            if budget_left(study, model, u) and (least is None or u.finished + u.running < least + pack):
                return True
            return owed(study)  # read only when the budget is closed

        ran = run_pack(
            study,
            self.specs[name],
            pack=pack,
            device=self.c.device,
            checkpoint_root=self.c.checkpoint_root,
            stop=self.c.stop,
            may_start=may_start,
            surplus=lambda trial: surplus(trial, model),
            requeue=lambda study, trial, reason: requeue(study, trial, reason, max_lost=self.c.max_lost),
            on_trial=self._trial_done,
            on_start=self.c.on_start,
            tracker=self.c.tracker,
            ledger=self.c.ledger,
            worker_id=self.c.worker_id,
        )
        self._idle()
        return ran

    def _idle(self) -> None:
        if self.c.ledger is not None and self.c.worker_id is not None:
            self.c.ledger.beat(self.c.worker_id, None, None)

    def _one(self, name: str) -> int:
        study = self.studies[name]
        objective = make_objective(
            self.specs[name],
            study.user_attrs["model"],
            device=self.c.device,
            checkpoint_root=self.c.checkpoint_root,
            stop=self.c.stop,
            tracker=self.c.tracker,
            ledger=self.c.ledger,
            worker_id=self.c.worker_id,
            on_start=self.c.on_start,
        )
        finished = run_one(study, objective)
        if finished is not None and released(finished):  # interrupted: back in the queue at once
            requeue(study, finished, finished.user_attrs.get("reason", "interrupted"), max_lost=self.c.max_lost)
        self._idle()
        if finished is not None:
            self._trial_done(name, finished)
        return 1
