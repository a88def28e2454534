"""``RDBStorage`` whose stale trials include those that never beat, and whose state changes are
atomic on SQLite too."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from optuna.storages import RDBStorage
from optuna.storages._rdb import models as _rdb_models  # private, like _CachedStorage: pinned optuna
from optuna.trial import TrialState
from sqlalchemy import event as sa_event

from irnn_search.settings import HEARTBEAT_S


class HeartbeatRDBStorage(RDBStorage):
    """``RDBStorage`` whose stale trials include those that never beat, and whose state changes
    are atomic on SQLite too.

    Optuna's ``_get_stale_trial_ids`` skips a RUNNING trial with no heartbeat row, so a worker
    killed between ``ask`` and its trial's first beat (wider in a pack) left the trial RUNNING for
    ever. Such a trial is stale here once it started more than the grace period ago.

    ``set_trial_state_values`` reads the trial ``FOR UPDATE`` and refuses a change from a state
    that does not allow it; that is what makes "exactly one janitor fails a stale trial" and
    "exactly one worker starts a waiting trial" hold. SQLite has no ``FOR UPDATE`` and its
    default transaction begins at the first write, so two processes both read RUNNING (or
    WAITING), both wrote, and both won: a stale trial was re-queued twice, a queued one run twice.
    On SQLite that call's transaction therefore begins ``IMMEDIATE`` (the database's write lock
    is taken before the read, so the second reads what the first wrote).
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        ids: list[int] = super()._get_stale_trial_ids(study_id)
        return ids + [i for i in never_beat(self, study_id) if i not in ids]

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        with write_locked(self):
            return bool(super().set_trial_state_values(trial_id, state, values))


#: set while this thread runs a call whose SQLite transaction must begin IMMEDIATE
_immediate = threading.local()


def _begin_immediate(connection: Any) -> None:
    if getattr(_immediate, "on", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite then issues no BEGIN of its own


@contextlib.contextmanager
def write_locked(storage: RDBStorage) -> Iterator[None]:
    """Transactions this thread begins on ``storage`` inside the block take SQLite's write lock
    first (waiting up to the connection's busy timeout); other databases are left alone."""
    if storage.engine.dialect.name != "sqlite":
        yield
        return
    # registered here, not in __init__: an unpickled storage has a new engine
    if not sa_event.contains(storage.engine, "begin", _begin_immediate):
        sa_event.listen(storage.engine, "begin", _begin_immediate)
    _immediate.on = True
    try:
        yield
    finally:
        _immediate.on = False


def never_beat(storage: RDBStorage, study_id: int) -> list[int]:
    """RUNNING trials of ``study_id`` with no heartbeat row, started longer than the grace period
    ago (a start time is the starting worker's UTC clock, as Optuna writes it)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    interval = float(storage.heartbeat_interval or HEARTBEAT_S)
    grace = float(storage.grace_period or 2 * interval)
    cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=grace)
    t, beat = _rdb_models.TrialModel, _rdb_models.TrialHeartbeatModel
    query = (
        select(t.trial_id)
        .outerjoin(beat, beat.trial_id == t.trial_id)
        .where(t.study_id == study_id, t.state == TrialState.RUNNING, beat.trial_id.is_(None))
        .where(t._datetime_start_utc < cutoff)
    )
    with storage.engine.connect() as connection:
        return [int(i) for i in connection.execute(query).scalars()]


def mark_released(storage: Any, trial_id: int, outcome: str) -> bool:
    """Set the ``outcome`` user attr of ``trial_id``, which a janitor has just failed, to
    ``outcome`` (``lost``), overwriting what its dead worker may have written.

    A worker records a trial's outcome, then tells Optuna its state: killed between the two, it
    leaves a RUNNING trial that says ``complete`` (or ``pruned``...). The janitor fails it and
    re-queues its lineage; read as it stood, that failed trial would count against the budget
    beside its own re-queued copy (one lineage counted twice, a study "done" one trial early,
    with the copy left WAITING). Optuna refuses attribute writes to a finished trial, hence a
    write of our own. Returns False where the storage is not an RDB one (nothing written).
    """
    from optuna.storages._rdb.storage import _create_scoped_session  # private: pinned optuna

    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    if not isinstance(backend, RDBStorage):
        return False
    m = _rdb_models
    with _create_scoped_session(backend.scoped_session, True) as session:
        trial = m.TrialModel.find_or_raise_by_id(trial_id, session)
        row = m.TrialUserAttributeModel.find_by_trial_and_key(trial, "outcome", session)
        if row is None:
            session.add(m.TrialUserAttributeModel(trial_id=trial_id, key="outcome", value_json=json.dumps(outcome)))
        else:
            row.value_json = json.dumps(outcome)
    return True
