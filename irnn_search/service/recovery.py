"""Trials that must run again: released attempts, re-queued copies, and the janitor.

- Stop (Ctrl-C, SIGTERM): the running trial checkpoints and is marked ``interrupted``; its worker
  re-queues it at once with the same parameters and whichever worker takes it resumes from the
  checkpoint.
- A worker that dies (SIGKILL, lost machine) stops its trial's heartbeat; the janitor thread of
  any live worker fails that trial after the grace period, re-queues it, ends its MLflow run as
  KILLED and its run in our database as ``lost`` (see ``Janitor``).

A re-queued copy carries its lineage (the first attempt's number), so it resumes from the
lineage's checkpoint and counts against the budget once, as its lineage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.outcome import RELEASED, Outcome
from irnn_search.service.attempt import UNFIT
from irnn_search.service.storage import mark_released
from irnn_search.settings import GRACE_S

if TYPE_CHECKING:
    from irnn_search.service.ledger import Ledger
    from irnn_search.tracking import Tracker

log = logging.getLogger(__name__)

#: attempts of one lineage whose worker died (lost, not interrupted) before the trial fails for good
MAX_LOST = 3
#: trial user attrs: how many attempts of the trial's lineage were lost before it; True on the
#: failed trial that ends a lineage lost ``MAX_LOST`` times
LOST_ATTEMPTS, GAVE_UP = "lost_attempts", "gave_up"


def released(t: FrozenTrial) -> bool:
    """A failed trial that is to run again: interrupted (it checkpointed and stopped) or lost (its
    worker died, so nothing recorded an outcome and the janitor failed it)."""
    return t.state == TrialState.FAIL and t.user_attrs.get("outcome") in RELEASED


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
    lost = int(t.user_attrs.get(LOST_ATTEMPTS, 0)) + (t.user_attrs.get("outcome") != Outcome.INTERRUPTED)
    attrs[LOST_ATTEMPTS] = lost
    if lost >= max_lost:
        attrs["outcome"], attrs[GAVE_UP] = Outcome.FAILED.value, True
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
        try:  # before the re-queue: should this process die in between, the trial still reads released
            mark_released(study._storage, trial._trial_id, Outcome.LOST.value)
        except Exception as exc:  # the re-queue matters more; see mark_released for the cost
            log.warning("study %s trial %d: could not mark it lost: %s", study.study_name, trial.number, exc)
        requeue(study, trial, reason, max_lost=self.max_lost)
        self.lost.append((study.study_name, trial.number))
        log.warning("study %s trial %d: %s; re-queued", study.study_name, trial.number, reason)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if self.tracker is not None and run_id and trial.user_attrs.get("mlflow_run_trial") == trial.number:
            self.tracker.end_run(run_id, Outcome.LOST.value, reason)
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
