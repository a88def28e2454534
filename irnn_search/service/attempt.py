"""One attempt at one Optuna trial: what happens around its training, whoever trains it.

The objective of a one-trial-at-a-time worker and the packed worker (``service.packing``) both use
an ``Attempt``, so a trial is recorded the same way however it was trained:

- ``begin``: the trial's lineage, its hyperparameters (``suggest``), its MLflow child run (linked
  to the earlier attempt's run when it resumes one) and its row in our database;
- ``prepare(i, seed)``: the run of one seed, its checkpoint folder (fetched from the artifact
  store when this machine has none), and its report / checkpoint hooks (metrics to MLflow,
  intermediate values and pruning to Optuna, ``last.pt`` to the artifact store);
- ``seed_done``: the seed's result, raising ``optuna.TrialPruned`` (diverged, a one-seed trial)
  or ``TrialInterrupted`` as the trial's outcome; one seed of several that diverges is recorded
  and the others go on;
- ``complete`` (its value: the mean over the seeds that reached one; diverged when none did) or
  ``ended`` (what the training raised, read by ``classify``), then ``close``: the MLflow run ends
  with the status its outcome maps to and our database records the outcome. ``close`` runs
  whatever happened, so no MLflow run outlives its attempt.

If MLflow is unreachable when the attempt begins, training goes on; the run is created as soon as
MLflow answers and the metrics reported meanwhile are sent then.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from irnn_search.checkpoint import file_digest
from irnn_search.outcome import Outcome, seed_outcome
from irnn_search.run import Run, prepare_run
from irnn_search.search.space import PruneGate, build_train_config, suggest
from irnn_search.search.spec import StudySpec, valid_name
from irnn_search.service.preflight import EnvironmentProblem, device_problem, environmental
from irnn_search.service.storage import PACK_SLOTS
from irnn_search.tracking import Tracker, TrackingError
from irnn_search.train import TrainResult

if TYPE_CHECKING:
    from irnn_search.service.ledger import Ledger

log = logging.getLogger(__name__)


class TrialInterrupted(Exception):
    """The trial stopped at a step boundary and checkpointed; it is re-queued for any worker."""


#: trial user attr: why this worker could not run the trial (missing data, no such device, a full
#: disk); the trial was released, not failed, and its worker stops taking that study's trials
UNFIT = "unfit"


TAKEN_OVER = (
    "taken over: its heartbeat lapsed, so another worker's janitor failed and re-queued it; "
    "the re-queued trial resumes from the last checkpoint"
)


def classify(exc: BaseException | None, recorded: str | None = None) -> tuple[Outcome, TrialState | None]:
    """How a trial ended, from what its objective raised (None: it returned its value), and the
    state to tell Optuna: the one place where an ending is read, for the objective, ``run_one``
    and packed trials alike.

    Args:
        exc: what the objective (or a packed member's training) raised.
        recorded: the trial's ``outcome`` user attr; a pruned trial keeps the one that says why
            it was pruned (``diverged``, ``surplus``), else it is ``pruned``.

    Returns:
        (outcome, state). The state is None when another worker's janitor has already failed and
        re-queued the trial (``TAKEN_OVER``): nothing is told. An environmental error (missing
        data, no such device, a full disk: ``preflight.environmental``) is not the trial's: it is
        released as ``interrupted``, like a stop.
    """
    if exc is None:
        return Outcome.COMPLETE, TrialState.COMPLETE
    if isinstance(exc, optuna.TrialPruned):
        why = {o.value: o for o in (Outcome.DIVERGED, Outcome.SURPLUS)}.get(recorded or "", Outcome.PRUNED)
        return why, TrialState.PRUNED
    if isinstance(exc, TrialInterrupted):
        return Outcome.INTERRUPTED, TrialState.FAIL
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
        return Outcome.LOST, None
    if environmental(exc) is not None:
        return Outcome.INTERRUPTED, TrialState.FAIL
    return Outcome.FAILED, TrialState.FAIL


class Heartbeats:
    """Optuna heartbeats of the trials this worker runs (one, or every trial of a pack), from a thread."""

    def __init__(self, study: optuna.Study) -> None:
        self.storage: Any = study._storage
        get = getattr(self.storage, "get_heartbeat_interval", None)
        self.interval = get() if callable(get) else None
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeats:
        if self.interval:
            self.thread = threading.Thread(target=self._run, name="irnn-search-heartbeats", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(10)

    def add(self, trial_id: int) -> None:
        with self.lock:
            self.ids.add(trial_id)
        if self.interval:
            self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.ids.discard(trial_id)

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            with self.lock:
                ids = list(self.ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # a missed beat is retried next interval
                    log.warning("heartbeat of trial id %d failed: %s", trial_id, exc)


#: Trial user attrs, per seed (the seed number appended): the SHA-256 of the ``last.pt`` files this
#: lineage wrote, newest first (a re-queued trial inherits them), and of its ``best.pt``.
LAST_SHA256, BEST_SHA256 = "last_sha256_seed", "best_sha256_seed"
#: trial user attr prefix: the best validation value one training seed reached (``value_seed0``...)
VALUE_SEED = "value_seed"
#: trial user attr prefix: why one training seed of several diverged (``diverged_seed3``); the
#: trial goes on with its other seeds
DIVERGED_SEED = "diverged_seed"
#: trial user attr prefix, for a trial of several seeds: one seed's validation curve, a list of
#: ``[step, value]`` (``curve_seed3``), so that the report can say when each seed solved and draw
#: the curves across seeds (seed 0's is also the trial's intermediate values)
CURVE_SEED = "curve_seed"
#: how many recent ``last.pt`` digests a lineage keeps: an upload that lagged behind the newest
#: checkpoint may still be resumed from
KEEP_DIGESTS = 3


class UnsafePath(ValueError):
    """A name read back from storage would place a file outside the checkpoint root."""


#: set on every attempt whose checkpoints have recorded digests (absent: an older version wrote them)
DIGESTS = "checkpoint_digests"
#: seconds a resumed attempt waits for an unreachable MLflow to fetch its lineage's checkpoint,
#: rather than restart the seed from step 0 (the chaos soak saw a resume during an MLflow restart
#: throw away 260 of 300 steps); and how often it asks meanwhile
FETCH_WAIT_S, FETCH_RETRY_S = 120.0, 5.0


def checkpoint_dir(root: Path, study: str, trial: optuna.Trial, seed: int) -> Path:
    """``root/<study>/trial-<lineage>/seed-<seed>``. The study name and lineage come from shared
    storage, so they are checked again: a valid name, an integer lineage and seed, and a folder
    inside ``root`` (a study named ``../../x`` must not write elsewhere).

    Raises:
        UnsafePath: any of those does not hold (the trial fails with this reason).
    """
    lineage = trial.user_attrs.get("lineage", trial.number)
    if not valid_name(study) or type(lineage) is not int or lineage < 0 or type(seed) is not int:
        raise UnsafePath(f"refusing checkpoint folder for study {study!r}, lineage {lineage!r}, seed {seed!r}")
    path = root / study / f"trial-{lineage}" / f"seed-{seed}"
    if not path.resolve().is_relative_to(root.resolve()):
        raise UnsafePath(f"refusing checkpoint folder {path}: it is outside {root}")
    return path


class Attempt:
    def __init__(
        self,
        trial: optuna.Trial,
        spec: StudySpec,
        model_key: str,
        *,
        device: str,
        checkpoint_root: Path,
        tracker: Tracker | None = None,
        ledger: Ledger | None = None,
        worker_id: int | None = None,
        pack_id: str | None = None,
        pack_size: int | None = None,
    ) -> None:
        self.trial = trial
        self.spec = spec
        self.model_spec = spec.model(model_key)
        self.device = device
        self.checkpoint_root = checkpoint_root
        self.tracker = tracker
        self.ledger = ledger
        self.worker_id = worker_id
        self.pack_id = pack_id
        self.pack_size = pack_size
        self.run_id: str | None = None
        self.ledger_id: int | None = None
        self.last: TrainResult | None = None
        self.values: list[float] = []  # the best value of each seed that reached one
        self.diverged: dict[int, str] = {}  # seed -> why it diverged (a trial of several seeds goes on)
        self.value: float | None = None
        self.outcome, self.reason = Outcome.FAILED, ""
        self.started = time.perf_counter()
        self.train_kwargs: dict[str, Any] = {}
        self.model_options: dict[str, Any] = {}
        # An earlier attempt of this lineage (interrupted or lost): its run holds the checkpoint.
        self.previous_run: str | None = trial.user_attrs.get("mlflow_run_id")
        self._pending: list[tuple[int, dict[str, float]]] = []  # reports made while MLflow was unreachable
        self._retry_at = 0.0
        self._parent: str | None = trial.study.user_attrs.get("mlflow_parent_run_id")

    @property
    def params(self) -> dict[str, Any]:
        return {**self.train_kwargs, **self.model_options}

    def begin(self) -> None:
        trial = self.trial
        trial.set_user_attr("lineage", trial.user_attrs.get("lineage", trial.number))
        if self.pack_id is not None and self.pack_size:
            trial.set_user_attr(PACK_SLOTS, self.pack_size)  # its device time: a share of the pack's
        self.train_kwargs, self.model_options = suggest(trial, self.model_spec)
        self.ensure_run()
        if self.ledger is not None:
            self.ledger_id = self.ledger.start_trial(
                study_name=trial.study.study_name,
                trial=trial,
                worker_id=self.worker_id,
                device=self.device,
                mlflow_run_id=self.run_id,
                pack_id=self.pack_id,
                pack_size=self.pack_size,
            )
            if self.worker_id is not None:
                self.ledger.beat(self.worker_id, trial.study.study_name, trial.number)

    def ensure_run(self) -> str | None:
        """The attempt's MLflow run, created now or, after an outage, as soon as MLflow answers."""
        tracker, trial = self.tracker, self.trial
        if self.run_id is not None or tracker is None or self._parent is None or time.monotonic() < self._retry_at:
            return self.run_id
        try:
            self.run_id = tracker.trial_run(
                experiment_id=trial.study.user_attrs["mlflow_experiment_id"],
                parent_run_id=self._parent,
                study_name=trial.study.study_name,
                trial_number=trial.number,
                params=self.params,
                tags={
                    "irnn.source": str(trial.user_attrs.get("source", "sampler")),
                    **({"irnn.pack": self.pack_id, "irnn.pack_size": self.pack_size} if self.pack_id else {}),
                },
                resumed_from=self.previous_run,
            )
        except TrackingError as exc:
            if self._retry_at == 0.0:
                log.warning(
                    "trial %d of %s trains on without its MLflow run for now (%s); "
                    "its metrics are kept and sent when MLflow answers",
                    trial.number,
                    trial.study.study_name,
                    exc,
                )
            self._retry_at = time.monotonic() + tracker.retry_interval_s
            return None
        trial.set_user_attr("mlflow_run_id", self.run_id)
        trial.set_user_attr("mlflow_run_trial", trial.number)
        for step, metrics in self._pending:
            tracker.log_metrics(self.run_id, step, metrics)
        self._pending.clear()
        return self.run_id

    # -- one seed -------------------------------------------------------------------------------
    def prepare(
        self, i: int, seed: int
    ) -> tuple[Run, Path, Callable[[int, dict[str, float]], bool], Callable[[Path], None]]:
        """The run of seed ``seed`` (the ``i``-th), its checkpoint folder, report and checkpoint hooks."""
        spec, trial = self.spec, self.trial
        if (why := device_problem(self.device)) is not None:
            raise EnvironmentProblem(why)
        config = build_train_config(spec, self.train_kwargs, seed=seed, device=self.device)
        run = prepare_run(
            task=spec.task,
            task_options=spec.task_options,
            model=self.model_spec.family,
            model_options=self.model_options,
            config=config,
            batch_size=spec.batch_size,
        )
        first = i == 0
        gate = PruneGate(spec)  # should_prune only where the pruner can decide

        def report(step: int, metrics: dict[str, float]) -> bool:
            if self.tracker is not None:
                named = metrics if first else {f"{k}_seed{seed}": v for k, v in metrics.items()}
                rid = self.ensure_run()
                if rid is not None:
                    self.tracker.log_metrics(rid, step, named)
                else:
                    self._pending.append((step, named))
            value = metrics.get(spec.objective, math.nan)
            if first and math.isfinite(value):
                trial.report(value, step)
                if gate.due(step) and trial.should_prune():
                    self._record(Outcome.PRUNED, f"pruned by {spec.pruner.name} at step {step}")
                    raise optuna.TrialPruned(f"pruned at step {step}")
            return False

        written: list[str] = list(trial.user_attrs.get(f"{LAST_SHA256}{seed}") or [])

        def on_checkpoint(path: Path) -> None:
            # The digest is on the trial before the file can reach the artifact store.
            digest = file_digest(path)
            written[:] = [digest, *(d for d in written if d != digest)][:KEEP_DIGESTS]
            trial.set_user_attr(f"{LAST_SHA256}{seed}", list(written))
            rid = self.ensure_run()
            if self.tracker is not None and rid is not None:
                self.tracker.log_checkpoint(rid, path, f"checkpoints/seed-{seed}")

        ckpt = checkpoint_dir(self.checkpoint_root, trial.study.study_name, trial, seed)
        trial.set_user_attr("checkpoint_dir", str(ckpt.parent))
        self._resume_point(ckpt, seed, written)
        return run, ckpt, report, on_checkpoint

    def _resume_point(self, ckpt: Path, seed: int, written: list[str]) -> None:
        """Leave in ``ckpt`` the newest ``last.pt`` this lineage wrote, or none (start afresh).

        Only a file whose SHA-256 is among those the lineage recorded (``LAST_SHA256``) is
        resumed: one planted in the artifact store or on this disk, or torn or corrupt, is moved
        aside to ``last.pt.rejected`` and never loaded. A local file older than the newest is
        replaced by the artifact store's copy when that one is newer. Each choice is logged.
        """
        trial, last = self.trial, ckpt / "last.pt"
        label = f"{trial.study.study_name} trial {trial.number} seed {seed}"
        # A lineage re-queued by a version that recorded no digests: its checkpoints cannot be
        # checked, and rejecting them would throw away its progress. They still load as tensors
        # only. The marker goes to every later attempt (re-queues copy the user attrs).
        legacy = trial.user_attrs.get("retry_of") is not None and DIGESTS not in trial.user_attrs
        trial.set_user_attr(DIGESTS, 1)

        def rank(path: Path) -> int | None:  # 0: the newest written; None: not written by this lineage
            digest = file_digest(path)
            if legacy and not written:
                log.warning("%s: %s predates checkpoint digests; resumed unchecked (tensors only)", label, path)
                return 0
            return written.index(digest) if digest in written else None

        def reject(path: Path, where: str) -> None:
            last.parent.mkdir(parents=True, exist_ok=True)
            path.replace(last.with_name("last.pt.rejected"))
            log.warning(
                "%s: the checkpoint %s is not one this trial wrote (its SHA-256 is not among those recorded "
                "on the trial); it is set aside as %s and not loaded",
                label,
                where,
                last.with_name("last.pt.rejected"),
            )

        local = rank(last) if last.exists() else None
        if last.exists() and local is None:
            reject(last, f"at {last}")
        if local != 0 and self.tracker is not None and self.previous_run:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=ckpt.parent, prefix=".fetch-") as tmp:
                source = self._fetch(seed, tmp, wait=bool(written))
                fetched = Path(tmp) / "last.pt"
                if source is not None:
                    got = rank(fetched)
                    if got is None:
                        reject(fetched, f"of MLflow run {source}")
                    elif local is None or got < local:
                        ckpt.mkdir(parents=True, exist_ok=True)
                        fetched.replace(last)
                        local = got
                        trial.set_user_attr(f"checkpoint_from_run_seed{seed}", source)
                        log.info("%s: fetched the checkpoint of run %s", label, source)
        if local is None and written:
            log.warning("%s: no checkpoint this trial wrote is available; the seed restarts from step 0", label)
        elif local is not None and local > 0:
            log.warning(
                "%s: resumes from an earlier checkpoint (%d before the newest it wrote, which is not available)",
                label,
                local,
            )

    def _fetch(self, seed: int, dest: str, *, wait: bool) -> str | None:
        """The lineage's newest checkpoint from the artifact store into ``dest`` (the run it came
        from, or None). With ``wait`` (the lineage wrote checkpoints, so there is work to lose), an
        unreachable MLflow is asked again every ``FETCH_RETRY_S`` for up to ``FETCH_WAIT_S`` (a
        server restart) before the seed restarts from step 0; a reachable one is asked once more."""
        assert self.tracker is not None and self.previous_run is not None
        deadline = time.monotonic() + (FETCH_WAIT_S if wait else 0.0)
        reachable, warned = False, False
        while True:
            source = self.tracker.fetch_checkpoint(self.previous_run, f"checkpoints/seed-{seed}", dest)
            if source is not None or reachable or time.monotonic() >= deadline:
                return source
            try:
                self.tracker.check(timeout_s=FETCH_RETRY_S)
                reachable = True  # it answers now: one more fetch decides
                continue
            except TrackingError as exc:
                if not warned:
                    log.warning(
                        "trial %d: waiting up to %.0f s for MLflow to fetch its checkpoint (%s)",
                        self.trial.number,
                        FETCH_WAIT_S,
                        exc,
                    )
                    warned = True
            time.sleep(min(FETCH_RETRY_S, max(0.0, deadline - time.monotonic())))

    def seed_done(self, i: int, seed: int, run: Run, result: TrainResult, ckpt: Path) -> None:
        """Record one seed's result. Raises ``optuna.TrialPruned`` (diverged, when it is the trial's
        only seed) or ``TrialInterrupted`` when the trial ends here."""
        trial, spec = self.trial, self.spec
        self.last = result
        if result.resumed_from is not None:
            trial.set_user_attr(f"resumed_at_step_seed{seed}", result.resumed_from)
        rid = self.ensure_run() if i == 0 else None
        if self.tracker is not None and rid is not None:
            log_trial_artifacts(
                self.tracker,
                rid,
                spec,
                run,
                result,
                ckpt,
                train_kwargs=self.train_kwargs,
                model_options=self.model_options,
            )
        if (ckpt / "best.pt").exists():
            trial.set_user_attr(f"{BEST_SHA256}{seed}", file_digest(ckpt / "best.pt"))  # checked by the report
        trial.set_user_attr("steps_per_s", result.steps_per_s)
        trial.set_user_attr("parameters", run.model.num_parameters())
        value = result.best.get(spec.objective)
        outcome = seed_outcome(result.outcome, value)
        if outcome == Outcome.INTERRUPTED:
            self._record(outcome, result.reason)
            raise TrialInterrupted(result.reason)
        if outcome == Outcome.DIVERGED or value is None:  # (None is DIVERGED: seed_outcome)
            ran_out = result.outcome != Outcome.DIVERGED  # it ran to its end without a finite objective
            reason = f"no finite {spec.objective} was reached" if ran_out else result.reason
            if len(spec.seeds) == 1:
                self._record(Outcome.DIVERGED, reason)
                raise optuna.TrialPruned(f"no finite {spec.objective}" if ran_out else result.reason)
            # One seed of several: a count, not the configuration's end (the others still run), so
            # that "diverged in 1 of 5 seeds" is what the report can say; all diverged ends it.
            self.diverged[seed] = reason
            trial.set_user_attr(f"{DIVERGED_SEED}{seed}", reason)
            return
        self.values.append(value)
        trial.set_user_attr(f"best_step_seed{seed}", int(result.best.get("step", 0)))
        trial.set_user_attr(f"{VALUE_SEED}{seed}", float(value))  # the report's spread over seeds
        if len(spec.seeds) > 1:
            curve = [[int(h["step"]), float(h[spec.objective])] for h in result.history if spec.objective in h]
            trial.set_user_attr(f"{CURVE_SEED}{seed}", [p for p in curve if math.isfinite(p[1])])

    # -- how it ends ----------------------------------------------------------------------------
    def _record(self, outcome: Outcome, reason: str) -> None:
        """The outcome and reason on the trial (plain strings: what every reader of the storage sees)."""
        self.trial.set_user_attr("outcome", outcome.value)
        self.trial.set_user_attr("reason", reason)

    def complete(self) -> float:
        """The trial's value: the mean over its seeds that reached one. Raises ``optuna.TrialPruned``
        (diverged) when every seed diverged."""
        if not self.values:
            reason = "every seed diverged: " + "; ".join(f"seed {s}: {r}" for s, r in sorted(self.diverged.items()))
            self._record(Outcome.DIVERGED, reason)
            raise optuna.TrialPruned(reason)
        self.trial.set_user_attr("outcome", Outcome.COMPLETE.value)
        self.outcome = Outcome.COMPLETE
        self.value = statistics.fmean(self.values)
        return self.value

    def ended(self, exc: BaseException) -> TrialState | None:
        """The trial ended with ``exc`` (``classify``); record how. Returns the state to tell
        Optuna, None when another worker's janitor has taken the trial over.

        Taken over: its heartbeats did not reach the storage for a grace period, so a janitor
        failed and re-queued it; this attempt touches the trial no more, and the checkpoint
        already in the artifact store is where the re-queued trial resumes. A trial's own error
        fails that trial, never the worker; an environmental one is the machine's: the trial is
        released (re-queued, not counted against the budget or the lineage's lost attempts) and
        marked ``UNFIT`` so its worker stops taking the study's trials.
        """
        self.outcome, state = classify(exc, self.trial.user_attrs.get("outcome"))
        self.reason = str(exc)
        if state is None:
            self.reason = TAKEN_OVER
            log.warning("%s trial %d: %s", self.trial.study.study_name, self.trial.number, TAKEN_OVER)
        elif self.outcome == Outcome.FAILED:
            self.reason = f"{type(exc).__name__}: {exc}"
            self._record(self.outcome, self.reason)
        elif self.outcome == Outcome.INTERRUPTED and (why := environmental(exc)) is not None:
            self.reason = f"released: this worker cannot run it: {why}"
            self._record(self.outcome, self.reason)
            self.trial.set_user_attr(UNFIT, why)
        return state

    def close(self) -> None:
        if self.tracker is not None and self.run_id is not None:
            self.tracker.end_run(self.run_id, self.outcome.value, self.reason or None)
            if self.outcome in (Outcome.INTERRUPTED, Outcome.LOST):
                self.tracker.flush()  # the checkpoint is uploaded before another worker may take the trial
        if self.ledger is not None:
            self.ledger.finish_trial(
                self.ledger_id,
                outcome=self.outcome.value,
                reason=self.reason,
                value=self.value,
                wall_s=time.perf_counter() - self.started,
                result=self.last,
            )


def log_trial_artifacts(
    tracker: Tracker,
    run_id: str,
    spec: StudySpec,
    run: Any,
    result: TrainResult,
    ckpt: Path,
    *,
    train_kwargs: dict[str, Any],
    model_options: dict[str, Any],
) -> None:
    """Resolved config (JSON), the learning curve (PNG) and the best checkpoint of a trial."""
    import tempfile

    from irnn_search.plots import learning_curve

    config = {
        "task": spec.task,
        "task_options": spec.task_options,
        "model": run.model.family,
        "model_options": model_options,
        "train": train_kwargs,
        "steps": spec.steps,
        "report_every": spec.report_every,
        "batch_size": spec.batch_size,
        "parameters": run.model.num_parameters(),
        "outcome": result.outcome,
        "reason": result.reason,
        "best": result.best,
        "steps_per_s": result.steps_per_s,
    }
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        if result.history:
            files.append(
                learning_curve(
                    result.history,
                    metric=run.task.metric,
                    baseline=run.task.baseline().get(run.task.metric),
                    title=f"{run.model.family} on {spec.task}",
                    path=Path(tmp) / "learning_curve.png",
                )
            )
        best = ckpt / "best.pt"
        tracker.log_artifacts(run_id, config=config, files=files, checkpoint=best if best.exists() else None)
