"""Optuna's storage, made fit for a pool of workers on one PostgreSQL server.

- **Few connections.** Each worker process holds at most 3 connections to Optuna's database (main
  thread, Optuna's heartbeat thread, our janitor thread share one small pool: ``pool_size=1``,
  ``max_overflow=2``), plus at most 2 to ours; 16 workers stay below PostgreSQL's default
  ``max_connections`` of 100. Connections are pre-pinged and recycled, so a restarted server is
  reconnected to on the next use. Workers are spawned, never forked, so no connection is shared
  between processes.
- **Riding out a restart.** Every storage call that fails because the connection was lost (the
  server restarting, a network blip) is retried with backoff for ``retry_s`` seconds (default 120,
  ``IRNN_SEARCH_DB_RETRY_S``), with one warning per outage. Without this, Optuna's heartbeat
  thread dies on the first error and a healthy trial would later be declared stale. Reads,
  heartbeats and upserts (attrs, params, intermediate values) are simply repeated; the writes that
  are not safe to repeat (creating a trial, claiming one, finishing one) are read back first, since
  the connection may have been lost after their commit (``ResilientRDBStorage._write_once``).
- **Heartbeats.** A trial's worker records a heartbeat every ``heartbeat_s`` seconds; a RUNNING trial
  whose heartbeat is older than ``grace_s`` is failed by whichever worker looks first (the janitor
  thread of every worker looks every ``heartbeat_s``) and ``on_stale`` re-queues it.
- **No false deaths after an outage.** While the server is down nobody's heartbeat is written, so
  when it returns every running trial looks stale. A worker therefore declares no trial stale until
  one grace period (plus a heartbeat) after its own storage became reachable again, by which time
  every live worker has beaten; and it never declares stale a trial it is itself heartbeating.

SQLite (the embedded default) is local and has no restarts: it gets no retries and no pool limits.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import math
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models as _rdb_models  # private, like _CachedStorage: pinned optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc

from irnn_search.masking import mask_secrets
from irnn_search.settings import GRACE_S, HEARTBEAT_S

log = logging.getLogger(__name__)

# Workers ask for trials and beat their heartbeats themselves (``Heartbeats``, one thread for one
# trial or a whole pack), so Optuna's hint that heartbeats belong to ``Study.optimize`` is noise.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

RETRY_S = 120.0

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


#: errors of configuration, not of availability: retrying cannot help
_NOT_TRANSIENT = ("password authentication failed", "does not exist", "pg_hba.conf", "permission denied")


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a lost or refused database connection (and not a
    wrong password, database or role, which no retry fixes)."""
    if any(text in str(e).lower() for e in _chain(error) for text in _NOT_TRANSIENT):
        return False
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if type(e).__module__.startswith("psycopg") and type(e).__name__ in ("OperationalError", "InterfaceError"):
            return True
        e = e.__cause__ or e.__context__
    return False


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


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
        return ids + [i for i in _never_beat(self, study_id) if i not in ids]

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        with _write_locked(self):
            return bool(super().set_trial_state_values(trial_id, state, values))


#: set while this thread runs a call whose SQLite transaction must begin IMMEDIATE
_immediate = threading.local()


def _begin_immediate(connection: Any) -> None:
    if getattr(_immediate, "on", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite then issues no BEGIN of its own


@contextlib.contextmanager
def _write_locked(storage: RDBStorage) -> Iterator[None]:
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


def _never_beat(storage: RDBStorage, study_id: int) -> list[int]:
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


class ResilientRDBStorage(HeartbeatRDBStorage):
    """``RDBStorage`` whose public calls retry while the database connection is lost."""

    retry_s: float = RETRY_S

    def __init__(self, url: str, *, retry_s: float = RETRY_S, **kwargs: Any) -> None:
        self.retry_s = retry_s
        self._outage_lock = threading.Lock()
        self._outage_since: float | None = None
        self._recovered_at: float | None = None
        # trial id -> monotonic time of this process's last heartbeat call for it (inf while in flight)
        self._beating: dict[int, float] = {}
        # trial id -> the FrozenTrial this process just created or finished, for the one read that follows
        self._fresh: dict[int, FrozenTrial] = {}
        # trials this process runs (it created them running, or moved them from waiting to running)
        self._mine: dict[int, None] = {}
        # trial id -> this process's latest read of its running trial, no write since (``tell``'s base)
        self._last_read: dict[int, FrozenTrial] = {}
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_outage_lock", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._outage_lock = threading.Lock()
        self._fresh, self._mine, self._last_read = {}, {}, {}

    # -- the new trial, read back once without a query --------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._create_new_trial(study_id, template_trial)._trial_id

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's, created once however often the connection is lost, and remembering a blank
        new trial for the read ``study.ask()`` makes next.

        The new trial carries a random token (system attr ``CREATE_TOKEN``): after a lost
        connection the token tells whether the insert was committed (then that trial is the
        answer) or not (then it is inserted again). A blind retry had created a second trial (a
        duplicate queued setting, or an orphan RUNNING trial).

        ``ask`` creates the trial and at once reads it back whole (``Trial.__init__`` calls
        ``get_trial``): 1 + 5 queries and a commit, for a trial that has no params, values or
        attributes yet and that this process alone knows. That first read is served from here;
        any write to the trial before it forgets the copy, and a later read goes to the database.
        """
        template = _with_token(template_trial)
        token = template.system_attrs[CREATE_TOKEN]
        frozen: FrozenTrial = self._write_once(
            lambda: RDBStorage._create_new_trial(self, study_id, template),
            lambda: _created(self, study_id, token),
        )
        if template_trial is None:
            self._keep(frozen._trial_id, copy.deepcopy(frozen))
            self._own(frozen._trial_id)
        return frozen

    def get_trial(self, trial_id: int) -> FrozenTrial:
        fresh = self._fresh.pop(trial_id, None)
        if fresh is not None:
            return fresh
        trial: FrozenTrial = _get_trial(self, trial_id)
        if trial_id in self._mine and trial.state == TrialState.RUNNING:
            self._last_read[trial_id] = trial
        return trial

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Optuna's, not repeated blindly after a lost connection, and remembering the finished
        trial for the read ``study.tell()`` makes next.

        After a lost connection the trial is read back (``_state_landed``): already in the target
        finished state means the write was committed (done; a blind retry raised
        ``UpdateFinishedTrialError`` and crashed the worker); finished otherwise means another
        process finished it (Optuna's error); unchanged means it was not, and it is written again.
        A claim (WAITING -> RUNNING) writes a random token with the state (``CLAIM_TOKEN``), so a
        trial found RUNNING is this process's when it holds its token (a blind retry refused it
        as taken, and the queued setting sat RUNNING, unbeaten, until the janitor re-queued it).

        ``tell`` reads the trial, writes its state and values, and reads it whole again to return
        it: 1 + 5 queries and a commit. When the first read was of a trial this process runs and
        nothing was written to it since, the second read is that copy with the state, values and
        completion time just written (the time as the database holds it). Any other read goes to
        the database.
        """
        base = self._last_read.pop(trial_id, None)
        self._fresh.pop(trial_id, None)
        written: dict[int, Any] = {}
        _completion.written = written
        try:
            if state == TrialState.RUNNING and values is None:
                token = uuid.uuid4().hex
                claim, claimed = (lambda: _claim(self, trial_id, token)), (lambda: _claimed(self, trial_id, token))
                ok = bool(self._write_once(claim, claimed))
            else:
                ok = bool(
                    self._write_once(
                        lambda: HeartbeatRDBStorage.set_trial_state_values(self, trial_id, state, values),
                        lambda: _state_landed(self, trial_id, state),
                    )
                )
        finally:
            _completion.written = None
        if ok and state == TrialState.RUNNING:
            self._own(trial_id)
        elif state.is_finished():
            self._mine.pop(trial_id, None)
            if ok and base is not None and trial_id in written:
                done = copy.deepcopy(base)
                done.state = state
                done.values = None if values is None else [float(v) for v in values]
                done.datetime_complete = written[trial_id]
                self._keep(trial_id, done)
        return ok

    def _write_once(self, write: Callable[[], Any], landed: Callable[[], Any]) -> Any:
        """``write()``, which is not safe to repeat; when the connection is lost during it,
        ``landed()`` (a read, retried through the outage) says whether it was committed after all:
        its result is then the answer; ``NOT_LANDED``: the write is made again. Bounded by
        ``retry_s`` like every other call."""
        deadline: float | None = None
        delay = 0.25
        while True:
            try:
                out = write()
            except Exception as error:
                if not connection_lost(error):
                    raise
                deadline = self._outage(error, deadline)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise error
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, 5.0)
                    try:
                        found = landed()
                        break
                    except Exception as read_error:
                        if not connection_lost(read_error):
                            raise
                self._recovered()
                if found is not NOT_LANDED:
                    log.warning("a write lost with its connection had been committed: not repeated")
                    return found
                continue
            if deadline is not None or self._outage_since is not None:
                self._recovered()
            return out

    def _keep(self, trial_id: int, frozen: FrozenTrial) -> None:
        if len(self._fresh) > 64:  # kept and never read (an ask or tell that failed): stay bounded
            self._fresh.clear()
        self._fresh[trial_id] = frozen

    def _own(self, trial_id: int) -> None:
        if len(self._mine) > 1024:  # trials never finished here (a crash between): stay bounded
            self._mine.clear()
            self._last_read.clear()
        self._mine[trial_id] = None

    def _outage(self, error: BaseException, deadline: float | None) -> float:
        with self._outage_lock:
            now = time.monotonic()
            if self._outage_since is None:
                self._outage_since = now
                log.warning(
                    "Optuna storage %s unreachable (%s); retrying for up to %.0f s",
                    mask_secrets(self.url),
                    mask_secrets(str(error).splitlines()[0] if str(error) else type(error).__name__),
                    self.retry_s,
                )
            return deadline if deadline is not None else now + self.retry_s

    def _recovered(self) -> None:
        with self._outage_lock:
            if self._outage_since is not None:
                log.warning(
                    "Optuna storage %s reachable again after %.1f s",
                    mask_secrets(self.url),
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None
                self._recovered_at = time.monotonic()

    # -- heartbeats that survive an outage ----------------------------------------------------
    def _quiet_s(self) -> float:
        """How long after an outage this process waits before it declares any trial stale."""
        interval = float(self.heartbeat_interval or HEARTBEAT_S)
        return float(self.grace_period or 2 * interval) + interval

    def record_heartbeat(self, trial_id: int) -> None:
        self._beating[trial_id] = float("inf")  # alive while the call is in flight (even if retrying)
        try:
            _record_heartbeat(self, trial_id)
        finally:
            self._beating[trial_id] = time.monotonic()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        ids: list[int] = _get_stale_trial_ids(self, study_id)
        now = time.monotonic()
        quiet = self._quiet_s()
        if self._outage_since is not None or (self._recovered_at is not None and now - self._recovered_at < quiet):
            if ids:
                log.info(
                    "%d trial(s) look stale, but the storage was unreachable less than %.0f s ago: "
                    "their workers get time to beat again",
                    len(ids),
                    quiet,
                )
            return []
        grace = float(self.grace_period or 2 * float(self.heartbeat_interval or HEARTBEAT_S))
        for tid, at in list(self._beating.items()):
            if now - at > 10 * grace:
                self._beating.pop(tid, None)
        return [i for i in ids if now - self._beating.get(i, -math.inf) > grace]


#: system attr of every trial a ``ResilientRDBStorage`` creates: a random token that finds the
#: trial again when the connection was lost during its insert
CREATE_TOKEN = "irnn_search:create_token"
#: system attr a claim (WAITING -> RUNNING) writes with the state, to know it again likewise
CLAIM_TOKEN = "irnn_search:claim_token"
#: ``landed()`` of ``ResilientRDBStorage._write_once``: the write was not committed
NOT_LANDED = object()


def _with_token(template: FrozenTrial | None) -> FrozenTrial:
    """A copy of ``template`` (a blank RUNNING trial started now for None, as Optuna makes for
    ``ask``) with a fresh ``CREATE_TOKEN``."""
    from datetime import datetime

    if template is None:
        out = FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
    else:
        out = copy.deepcopy(template)
    out.system_attrs[CREATE_TOKEN] = uuid.uuid4().hex
    return out


def _created(storage: RDBStorage, study_id: int, token: str) -> Any:
    """The trial of ``study_id`` created with ``token``, or ``NOT_LANDED``."""
    import json

    from sqlalchemy import select

    t, attr = _rdb_models.TrialModel, _rdb_models.TrialSystemAttributeModel
    query = (
        select(t.trial_id)
        .join(attr, attr.trial_id == t.trial_id)
        .where(t.study_id == study_id, attr.key == CREATE_TOKEN, attr.value_json == json.dumps(token))
    )
    with storage.engine.connect() as connection:
        found = connection.execute(query).scalar()
    return NOT_LANDED if found is None else RDBStorage.get_trial(storage, int(found))


def _claim(storage: RDBStorage, trial_id: int, token: str) -> bool:
    """Optuna's WAITING -> RUNNING (``set_trial_state_values``), also writing ``token`` as the
    trial's ``CLAIM_TOKEN`` in the same transaction."""
    from datetime import datetime

    from optuna.storages._rdb.storage import _create_scoped_session  # private: pinned optuna
    from sqlalchemy import exc as sa_exc

    try:
        with _write_locked(storage), _create_scoped_session(storage.scoped_session) as session:
            trial = _rdb_models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            current: TrialState = trial.state  # type: ignore[assignment]  # Optuna's models are untyped Columns
            storage.check_trial_is_updatable(trial_id, current)
            if current != TrialState.WAITING:
                return False
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.now()
            storage._set_trial_attr_without_commit(
                session, _rdb_models.TrialSystemAttributeModel, trial_id, CLAIM_TOKEN, token
            )
    except sa_exc.IntegrityError:
        return False
    return True


def _claimed(storage: RDBStorage, trial_id: int, token: str) -> Any:
    """After a claim of ``trial_id`` was lost: True when the trial holds ``token`` (this claim was
    committed), ``NOT_LANDED`` while it waits, else False (another process took it)."""
    trial = RDBStorage.get_trial(storage, trial_id)
    if trial.system_attrs.get(CLAIM_TOKEN) == token:
        return True
    return NOT_LANDED if trial.state == TrialState.WAITING else False


def _state_landed(storage: RDBStorage, trial_id: int, state: TrialState) -> Any:
    """After a write of finished ``state`` to ``trial_id`` was lost: True when the trial is in
    ``state`` (the write was committed), ``NOT_LANDED`` when it is unchanged,
    ``UpdateFinishedTrialError`` when another process finished it otherwise."""
    current = RDBStorage.get_trial(storage, trial_id).state
    if current == state:
        return True
    storage.check_trial_is_updatable(trial_id, current)  # finished otherwise: Optuna's error
    return NOT_LANDED


def _retrying(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline: float | None = None
        delay = 0.25
        while True:
            try:
                out = fn(self, *args, **kwargs)
            except Exception as error:
                if not connection_lost(error):
                    raise
                deadline = self._outage(error, deadline)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)
                continue
            if deadline is not None or self._outage_since is not None:
                self._recovered()
            return out

    return method


# -- aggregate reads for budgets and status ---------------------------------------------------
#: Trial user attrs of packed trials (``service.packing``): the pack's slot count, set when the
#: trial starts, and its exact share of the pack's device time, set when it ends.
PACK_SLOTS, DEVICE_S = "pack_slots", "device_s"


@dataclass(frozen=True)
class TrialGroup:
    """The trials of a study that share a state and an ``outcome`` user attr, summed up in SQL."""

    state: TrialState
    outcome: str | None
    count: int
    finished_s: float  # summed device time of those with a start and an end (``search.device_seconds``)
    # Those started, not ended (running): their device time so far is open_weight·now - open_start_s.
    open_start_s: float  # their start times (s since the epoch, UTC), each over its pack's slots, summed
    open_weight: float  # their 1 / pack slots, summed
    low: float | None  # the lowest and highest finite first-objective value
    high: float | None


def trial_groups(storage: Any, study_id: int, *, before: int | None = None) -> list[TrialGroup] | None:
    """A study's trials grouped by (state, outcome) in one aggregate query (only trials numbered
    below ``before``, when given); None when ``storage`` is not an RDB storage on PostgreSQL or
    SQLite (then callers read ``FrozenTrial`` objects).

    ``study.get_trials()`` builds a full ``FrozenTrial`` (params, distributions, intermediate values,
    every attr) per trial: 1.9 ms each from a fresh process, 19 s at 10,000 trials; even narrow rows
    cost 100 ms there. The budget check, the surplus check and ``status`` need a dozen numbers.
    """
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage) or backend.engine.dialect.name not in ("postgresql", "sqlite"):
        return None
    if isinstance(backend, ResilientRDBStorage):
        groups: list[TrialGroup] = backend.trial_groups(study_id, before)  # type: ignore[attr-defined]
        return groups
    return _trial_groups(backend, study_id, before)


def _epoch(column: Any, dialect: str) -> Any:
    """Seconds since the epoch of a naive-UTC timestamp column, in SQL."""
    from sqlalchemy import func

    if dialect == "postgresql":
        return func.extract("epoch", column)
    return (func.julianday(column) - 2440587.5) * 86400.0  # sqlite


def _trial_groups(backend: RDBStorage, study_id: int, before: int | None = None) -> list[TrialGroup]:
    import json

    from optuna.storages._rdb import models
    from sqlalchemy import Float, and_, case, cast, func, select
    from sqlalchemy.orm import aliased

    t, attr, val = models.TrialModel, models.TrialUserAttributeModel, models.TrialValueModel
    device_s, slots_attr = aliased(attr), aliased(attr)  # a packed trial's share (search.device_seconds)
    dialect = backend.engine.dialect.name
    start, end = _epoch(t._datetime_start_utc, dialect), _epoch(t._datetime_complete_utc, dialect)
    is_open = and_(t._datetime_start_utc.is_not(None), t._datetime_complete_utc.is_(None))
    finite = case((val.value_type == models.TrialValueModel.TrialValueType.FINITE, val.value))
    slots = func.coalesce(cast(slots_attr.value_json, Float), 1.0)
    finished = case(
        (t._datetime_complete_utc.is_not(None), func.coalesce(cast(device_s.value_json, Float), (end - start) / slots))
    )
    query = (
        select(
            t.state,
            attr.value_json,
            func.count(),
            func.coalesce(func.sum(finished), 0.0),
            func.coalesce(func.sum(case((is_open, start / slots))), 0.0),
            func.coalesce(func.sum(case((is_open, 1.0 / slots))), 0.0),
            func.min(finite),
            func.max(finite),
        )
        .outerjoin(attr, and_(attr.trial_id == t.trial_id, attr.key == "outcome"))
        .outerjoin(device_s, and_(device_s.trial_id == t.trial_id, device_s.key == DEVICE_S))
        .outerjoin(slots_attr, and_(slots_attr.trial_id == t.trial_id, slots_attr.key == PACK_SLOTS))
        .outerjoin(val, and_(val.trial_id == t.trial_id, val.objective == 0))
        .where(t.study_id == study_id)
        .group_by(t.state, attr.value_json)
    )
    if before is not None:
        query = query.where(t.number < before)
    with backend.engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        TrialGroup(
            state,
            json.loads(outcome) if outcome else None,
            int(count),
            float(finished_s),
            float(open_start_s),
            float(open_weight),
            None if low is None else float(low),
            None if high is None else float(high),
        )
        for state, outcome, count, finished_s, open_start_s, open_weight, low, high in rows
    ]


_NOT_WRAPPED = ("get_heartbeat_interval", "get_heartbeat_stale_trial_callback")
#: private methods Optuna's own cache layer (``_CachedStorage``) calls on its backend
_PRIVATE_CALLED = ("_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids")
#: defined on the class; they call the retrying originals
_OWN = (
    "record_heartbeat",
    "_get_stale_trial_ids",
    "create_new_trial",
    "_create_new_trial",
    "get_trial",
    "set_trial_state_values",
)


def _forgetting(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A write to a trial: the copies of it this process kept (``_fresh``, ``_last_read``) are out
    of date."""

    @functools.wraps(fn)
    def write(self: ResilientRDBStorage, trial_id: int, *args: Any, **kwargs: Any) -> Any:
        self._fresh.pop(trial_id, None)
        self._last_read.pop(trial_id, None)
        return fn(self, trial_id, *args, **kwargs)

    return write


for _name, _fn in list(vars(RDBStorage).items()):
    if callable(_fn) and (not _name.startswith("_") or _name in _PRIVATE_CALLED) and _name not in _NOT_WRAPPED + _OWN:
        wrapped = _retrying(_fn)
        if _name.startswith(("set_trial_", "_set_trial_")):
            wrapped = _forgetting(wrapped)
        setattr(ResilientRDBStorage, _name, wrapped)
ResilientRDBStorage.trial_groups = _retrying(_trial_groups)  # type: ignore[attr-defined]  # retried like the rest
_record_heartbeat = _retrying(RDBStorage.record_heartbeat)
_get_stale_trial_ids = _retrying(HeartbeatRDBStorage._get_stale_trial_ids)
_get_trial = _retrying(RDBStorage.get_trial)


# The completion time Optuna writes in ``set_trial_state_values`` (``datetime.now()``, stored as
# naive UTC), caught as it is set on the row, for the copy ``tell`` reads back.
_completion = threading.local()


def _completion_set(target: Any, value: Any, oldvalue: Any, initiator: Any) -> None:
    written = getattr(_completion, "written", None)
    if written is None or value is None:
        return
    _completion.written = None  # the transient row below sets the same attribute
    try:
        row = _rdb_models.TrialModel()  # not in any session: Optuna's own conversion to local time
        row._datetime_complete_utc = value
        written[target.trial_id] = row.datetime_complete
    finally:
        _completion.written = written


sa_event.listen(_rdb_models.TrialModel._datetime_complete_utc, "set", _completion_set)


def open_storage(
    url: str,
    *,
    heartbeat_s: int | None = HEARTBEAT_S,
    grace_s: int | None = GRACE_S,
    on_stale: StaleCallback | None = None,
    retry_s: float = RETRY_S,
) -> RDBStorage:
    """Optuna's RDB storage for ``url``, set up for its backend (see the module docstring).

    ``heartbeat_s=None`` turns heartbeats off (a process that only reads or registers studies).
    """
    beat: dict[str, Any] = {}
    if heartbeat_s is not None:
        beat = {
            "heartbeat_interval": int(heartbeat_s),
            "grace_period": int(grace_s if grace_s is not None else 3 * heartbeat_s),
            "heartbeat_stale_trial_callback": on_stale,
        }
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna: say it once, in docs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if url.startswith("sqlite"):
            return HeartbeatRDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, **beat)
        return _server_storage(url, retry_s, beat)


def _server_storage(url: str, retry_s: float, beat: dict[str, Any]) -> RDBStorage:
    engine_kwargs: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 1,
        "max_overflow": 2,
        "pool_recycle": 300,
    }
    if url.startswith("postgresql") and "connect_timeout" not in url:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    return ResilientRDBStorage(url, retry_s=retry_s, engine_kwargs=engine_kwargs, **beat)


def check_reachable(url: str, *, timeout_s: int = 10) -> None:
    """Connect to the Optuna storage at ``url`` and read nothing but ``SELECT 1``: a launch checks
    every store this way before it writes to any. A SQLite file is local: only its folder must exist
    (connecting would create the file).

    Raises:
        Exception: the driver's or SQLAlchemy's error (unreachable, wrong password, no database).
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            raise FileNotFoundError(f"no folder {Path(database).parent} for the SQLite file {Path(database).name}")
        return
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql") and "connect_timeout" not in url:
        connect_args["connect_timeout"] = timeout_s
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def launch_lock(url: str, key: str, *, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialize launches of ``key`` on one Optuna storage, across processes and machines.

    Two ``irnn-search launch`` of the same spec at the same instant would otherwise both enqueue
    the published settings (Optuna's ``skip_if_exists`` is a read, then a write). PostgreSQL: a
    session-level advisory lock on the storage's server; SQLite: an exclusive ``flock`` on a file
    beside the database. Other backends are not locked.
    """
    if url.startswith("sqlite"):
        import fcntl

        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if not database or database == ":memory:":
            yield
            return
        path = Path(database).with_name(Path(database).name + ".launch.lock")
        with open(path, "a") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"another launch of {key!r} has held {path} for {timeout_s:.0f} s") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    lock_id = int.from_bytes(hashlib.sha256(f"irnn-search launch {key}".encode()).digest()[:8], "big", signed=True)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            wait = {"ms": f"{int(timeout_s * 1000)}"}
            connection.execute(text("SELECT set_config('lock_timeout', :ms, false)"), wait)
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
                connection.commit()
    finally:
        engine.dispose()
