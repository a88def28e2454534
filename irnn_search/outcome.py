"""How a training run and a trial end: one vocabulary, stored as plain strings.

Two levels use it, and each keeps the spelling already in the stores, so data written by any
version reads back the same:

- a training run (``train.TrainResult.outcome``: the ``train`` command's summary and exit code,
  the ``config.json`` logged with each trial) ends ``completed``, ``diverged``, ``stopped`` or
  ``interrupted``;
- a trial (the Optuna user attr ``outcome``, the MLflow tag ``irnn.outcome``, the ``outcome`` of
  our ``irnn_trial_runs`` rows, the report) ends ``complete``, ``pruned``, ``diverged``,
  ``failed``, ``interrupted``, ``surplus`` or ``lost``.

``completed`` and ``complete`` are therefore both members: renaming either would change what the
stores hold and what older rows, tags and user attrs mean.

``Outcome`` is a ``StrEnum``: a member equals, hashes and formats as its string, so it compares
with values read back from storage and keys the tables of outcomes (``tracking.OUTCOME_STATUS``).

Torch alone: the training loop imports this module, and so may the db package.
"""

from __future__ import annotations

import math
from enum import StrEnum


class Outcome(StrEnum):
    # -- a training run (``TrainResult.outcome``) -------------------------------------------------
    COMPLETED = "completed"  # every step ran
    STOPPED = "stopped"  # the report hook asked to stop, or the pack could not go on with it
    # -- both levels ------------------------------------------------------------------------------
    DIVERGED = "diverged"  # NaN/inf loss or an exploding hidden state; a pruned trial
    INTERRUPTED = "interrupted"  # stopped at a step boundary with a checkpoint; a trial re-queued
    # -- a trial ----------------------------------------------------------------------------------
    COMPLETE = "complete"  # told to Optuna with its value
    PRUNED = "pruned"  # stopped by the pruner
    FAILED = "failed"  # its own error, or its lineage's workers died too often
    SURPLUS = "surplus"  # created past the trial budget by a racing worker; never trained
    LOST = "lost"  # its worker died or its heartbeat lapsed; a janitor re-queued it


#: the outcomes of a trial that is to run again (re-queued, not counted against the budget): a
#: janitor marks a trial it failed ``lost``; a failed trial with no outcome at all was failed by
#: a janitor that died before marking it (or by an older version)
RELEASED = (None, Outcome.INTERRUPTED, Outcome.LOST)

#: the outcomes a trial record in our database may hold (its check constraint)
RECORDED = (
    Outcome.COMPLETE,
    Outcome.PRUNED,
    Outcome.DIVERGED,
    Outcome.FAILED,
    Outcome.INTERRUPTED,
    Outcome.LOST,
)


def seed_outcome(trained: Outcome | str, value: float | None) -> Outcome:
    """What one seed's training means for its trial: ``trained`` is how the run ended
    (``TrainResult.outcome``), ``value`` its best objective (None: never evaluated).

    A run that ended normally but never reached a finite objective diverged as surely as one the
    loop stopped; ``stopped`` with a value counts as done (the hook's choice, not a failure).

    Returns:
        ``DIVERGED``, ``INTERRUPTED`` or ``COMPLETE``.
    """
    if trained == Outcome.DIVERGED:
        return Outcome.DIVERGED
    if trained == Outcome.INTERRUPTED:
        return Outcome.INTERRUPTED
    if value is None or not math.isfinite(value):
        return Outcome.DIVERGED
    return Outcome.COMPLETE
