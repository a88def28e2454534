"""Packed workers: K trials of one study trained as one batched computation (``--pack K``).

``run_pack`` fills up to K slots with trials of one study: each is asked from Optuna (queued
retries and published settings first, then the sampler), recorded as an ``Attempt`` exactly as a
one-at-a-time trial is (MLflow child run, our database with the pack's id and size, checkpoints in
the artifact store), and trained by ``irnn_search.packed.train_packed``. A member that is pruned,
diverges, fails or finishes leaves without disturbing the others; its trial is told to Optuna at
once and its slot goes to the next trial the budget allows. A trial with several seeds trains
them side by side, one member per seed, as free slots allow (so a multi-seed confirmation of one
configuration runs its seeds in one pack); the trial ends when its last seed returns, and a seed
that ends it early (pruned, failed, interrupted) stops its siblings at their next report. A seed
that diverges ends only itself (``Attempt.seed_done``). The worker keeps every packed trial's
heartbeat; a stop (SIGTERM, Ctrl-C) checkpoints every member, and their trials are re-queued like
any interrupted trial.

Device time: each member's ``train_s`` in our database is its share of the pack's compute (one
packed step's time divided by the members in it). For budgets, ``status`` and reports, each
trial's Optuna user attr ``device_s`` is its share of the pack's wall time (every interval split
among the trials in the pack then, in proportion to their members in it), so a study's
device-hours add up to the time the worker held the device, not K times that; ``pack_slots`` (K)
lets a running trial count its wall time / K until then (``budget.device_seconds``).

A study whose family or task cannot be packed (``irnn_search.packed.why_not_packable``) runs one
trial at a time, with one log line saying why.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.outcome import Outcome
from irnn_search.packed import Member, PackedResult, packable, train_packed, why_not_packable
from irnn_search.search.spec import StudySpec
from irnn_search.service.attempt import TAKEN_OVER, Attempt, Heartbeats, TrialInterrupted
from irnn_search.service.storage import DEVICE_S
from irnn_search.tasks import task_class
from irnn_search.tracking import Tracker

if TYPE_CHECKING:
    from irnn_search.service.ledger import Ledger

log = logging.getLogger(__name__)


def pack_refusal(spec: StudySpec, model_key: str) -> str | None:
    """Why a study's trials cannot be packed, from its spec alone (None: try to pack them)."""
    family = spec.model(model_key).family
    if not packable(family):
        return f"model family {family!r} has no packed implementation"
    if task_class(spec.task).carry_state:  # PTB (token inputs too), or a plugin task that does
        return f"task {spec.task!r} carries state between batches, which packs do not support"
    return None


@dataclass(kw_only=True)
class _Slots:
    """One ``run_pack`` call: the pack's trials in flight and what it owes each of them."""

    study: optuna.Study
    spec: StudySpec
    pack: int
    stop: threading.Event
    may_start: Callable[[], bool]
    surplus: Callable[[optuna.Trial], bool]
    requeue: Callable[[optuna.Study, FrozenTrial, str], None]
    on_trial: Callable[[str, FrozenTrial], None] | None
    on_start: Callable[[optuna.Trial, dict[str, Any]], None] | None
    #: Attempt's keywords: where the trials run and are recorded (device, checkpoint_root, ...)
    where: dict[str, Any]
    model_key: str = ""
    pack_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: seeds waiting for a slot: (the trial's attempt, the seed's index in ``spec.seeds``)
    ready: deque[tuple[Attempt, int]] = field(default_factory=deque)
    attempts: dict[int, Attempt] = field(default_factory=dict)
    running: dict[int, int] = field(default_factory=dict)  # trial number -> its members in the pack now
    left: dict[int, int] = field(default_factory=dict)  # trial number -> its seeds not returned yet
    failure: dict[int, BaseException] = field(default_factory=dict)  # the first seed that ended a trial
    ran: int = 0
    clock: float = field(default_factory=time.monotonic)  # when the wall time was last shared out
    shares: dict[int, float] = field(default_factory=dict)  # trial number -> its share so far, seconds

    def __post_init__(self) -> None:
        self.model_key = self.study.user_attrs["model"]
        self.beats = Heartbeats(self.study)

    def accrue(self) -> None:
        """Split the wall time since the last call among the trials in the pack now, in proportion
        to their members in it (a trial between seeds counts one)."""
        now = time.monotonic()
        weights = {number: max(1, self.running.get(number, 0)) for number in self.attempts}
        total = sum(weights.values())
        for number, weight in weights.items():
            self.shares[number] = self.shares.get(number, 0.0) + (now - self.clock) * weight / total
        self.clock = now

    def member(self, attempt: Attempt, i: int) -> Member:
        seed = self.spec.seeds[i]
        run, ckpt, report, on_checkpoint = attempt.prepare(i, seed)
        refused = why_not_packable(run.model, run.task)
        if refused is not None:
            raise optuna.exceptions.OptunaError(f"cannot pack this trial: {refused}")
        number = attempt.trial.number

        def report_and_upload(step: int, metrics: dict[str, float]) -> bool:
            on_checkpoint(ckpt / "last.pt")  # the pack saved it just before reporting, as train() does
            if number in self.failure:  # a sibling seed ended the trial: stop here
                return True
            return report(step, metrics)

        return Member(
            run.model,
            run.task,
            run.config,
            report=report_and_upload,
            checkpoint_dir=ckpt,
            name=f"trial {number} seed {seed}",
            tag=(attempt, i, run, ckpt, on_checkpoint),
        )

    def finish(self, attempt: Attempt, state: TrialState | None, value: float | None = None) -> None:
        """Tell the trial's ``state`` (None: another worker's janitor already ended and re-queued it)."""
        study, trial = self.study, attempt.trial
        self.beats.remove(trial._trial_id)
        self.accrue()
        self.attempts.pop(trial.number, None)
        for book in (self.running, self.left, self.failure):
            book.pop(trial.number, None)
        device_s = self.shares.pop(trial.number, 0.0)
        attempt.close()
        self.ran += 1
        if state is None:
            return
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # a janitor failed it just now
            trial.set_user_attr(DEVICE_S, device_s)
        # skip_if_finished: a janitor may have failed it an instant before (its heartbeat lapsed)
        frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        if frozen.state != state:
            log.warning("%s trial %d: %s", study.study_name, trial.number, TAKEN_OVER)
            return
        if state == TrialState.FAIL and attempt.outcome == Outcome.INTERRUPTED:
            self.requeue(study, frozen, attempt.reason or Outcome.INTERRUPTED.value)
        if self.on_trial is not None:
            self.on_trial(study.study_name, frozen)

    def ended(self, attempt: Attempt, exc: BaseException) -> None:
        state = attempt.ended(exc)
        if attempt.outcome == Outcome.FAILED:
            log.warning("trial %d of %s failed: %s", attempt.trial.number, self.study.study_name, exc)
        self.finish(attempt, state)

    def seed_failed(self, attempt: Attempt, exc: BaseException) -> None:
        """A seed ended its trial: keep the first reason, and drop the seeds still waiting for a slot
        (the ones in the pack stop at their next report)."""
        number = attempt.trial.number
        self.failure.setdefault(number, exc)
        waiting = [item for item in self.ready if item[0] is attempt]
        for item in waiting:
            self.ready.remove(item)
        self.left[number] -= len(waiting)

    def returned(self, attempt: Attempt) -> None:
        """One of the trial's seeds is done; the last one ends the trial."""
        number = attempt.trial.number
        self.left[number] -= 1
        if self.left[number] > 0:
            return
        if number in self.failure:
            self.ended(attempt, self.failure[number])
            return
        try:
            value = attempt.complete()
        except BaseException as exc:  # every seed diverged
            self.ended(attempt, exc)
            return
        self.finish(attempt, TrialState.COMPLETE, value)

    def start(self, attempt: Attempt, i: int) -> Member | None:
        """The member of the trial's ``i``-th seed, now in the pack (None: it could not start)."""
        try:
            member = self.member(attempt, i)
        except Exception as exc:
            self.seed_failed(attempt, exc)
            self.returned(attempt)
            return None
        self.accrue()
        self.running[attempt.trial.number] = self.running.get(attempt.trial.number, 0) + 1
        return member

    def refill(self) -> Member | None:
        while self.ready:  # the seeds of trials already in the pack come first
            member = self.start(*self.ready.popleft())
            if member is not None:
                return member
        while not self.stop.is_set() and self.may_start():
            trial = self.study.ask()
            if self.surplus(trial):
                trial.set_user_attr("outcome", Outcome.SURPLUS.value)
                self.study.tell(trial, state=TrialState.PRUNED)
                continue
            attempt = Attempt(trial, self.spec, self.model_key, pack_id=self.pack_id, pack_size=self.pack, **self.where)
            self.beats.add(trial._trial_id)
            self.accrue()
            self.attempts[trial.number] = attempt
            try:
                attempt.begin()
                if self.on_start is not None:
                    self.on_start(trial, attempt.params)
            except Exception as exc:
                self.ended(attempt, exc)
                continue
            self.left[trial.number] = len(self.spec.seeds)
            self.ready.extend((attempt, i) for i in range(1, len(self.spec.seeds)))
            member = self.start(attempt, 0)
            if member is not None:
                return member
        return None

    def on_result(self, res: PackedResult) -> None:
        attempt, i, run, ckpt, on_checkpoint = res.member.tag
        number = attempt.trial.number
        self.accrue()
        self.running[number] -= 1
        try:
            if res.error is not None:
                raise res.error
            if res.result.outcome == Outcome.INTERRUPTED:
                on_checkpoint(ckpt / "last.pt")  # every seed's newest checkpoint, for the resume
            if number not in self.failure:  # else a sibling ended the trial: this seed only stopped
                attempt.seed_done(i, self.spec.seeds[i], run, res.result, ckpt)
        except BaseException as exc:
            self.seed_failed(attempt, exc)
        self.returned(attempt)


def run_pack(
    study: optuna.Study,
    spec: StudySpec,
    *,
    pack: int,
    device: str,
    checkpoint_root: Path,
    stop: threading.Event,
    may_start: Callable[[], bool],
    surplus: Callable[[optuna.Trial], bool],
    requeue: Callable[[optuna.Study, FrozenTrial, str], None],
    on_trial: Callable[[str, FrozenTrial], None] | None = None,
    on_start: Callable[[optuna.Trial, dict[str, Any]], None] | None = None,
    tracker: Tracker | None = None,
    ledger: Ledger | None = None,
    worker_id: int | None = None,
) -> int:
    """Train trials of ``study`` in a pack of up to ``pack`` until ``may_start()`` says no more
    and every member has left (or ``stop`` is set). Returns the number of trials that ran."""
    slots = _Slots(
        study=study,
        spec=spec,
        pack=pack,
        stop=stop,
        may_start=may_start,
        surplus=surplus,
        requeue=requeue,
        on_trial=on_trial,
        on_start=on_start,
        where={
            "device": device,
            "checkpoint_root": checkpoint_root,
            "tracker": tracker,
            "ledger": ledger,
            "worker_id": worker_id,
        },
    )
    with slots.beats:
        try:
            train_packed([], stop=stop, refill=slots.refill, on_result=slots.on_result, slots=pack)
        finally:
            for attempt in list(slots.attempts.values()):  # stopped with seeds waiting, or an error: none left RUNNING
                stopped = TrialInterrupted("the pack stopped before this trial finished; it resumes")
                slots.ended(attempt, slots.failure.get(attempt.trial.number, stopped))
    return slots.ran
