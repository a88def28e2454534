"""``ResilientRDBStorage``: Optuna's RDB storage whose calls ride out a lost database connection.

Every call is retried while the connection is lost (``_retrying``), for ``retry_s`` seconds; the
writes that are not safe to repeat are read back instead (``_write_once``, ``readback``). The
retried calls are declared on the class one by one, so that what is retried, what forgets a kept
copy and what is read back is visible here (a test checks that no Optuna call is left out).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from optuna.storages import RDBStorage
from optuna.storages._rdb import models as _rdb_models  # private, like _CachedStorage: pinned optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event as sa_event

from irnn_search.masking import mask_secrets
from irnn_search.service.storage.groups import query_groups
from irnn_search.service.storage.heartbeat import HeartbeatRDBStorage
from irnn_search.service.storage.lost import connection_lost
from irnn_search.service.storage.readback import (
    CREATE_TOKEN,
    NOT_LANDED,
    claim,
    claimed,
    create_study,
    state_landed,
    study_created,
    study_gone,
    trial_created,
    with_token,
)
from irnn_search.settings import HEARTBEAT_S

log = logging.getLogger(__name__)

RETRY_S = 120.0

#: Optuna's calls that are not retried: they read the storage object, not the database
NOT_RETRIED = ("get_heartbeat_interval", "get_heartbeat_stale_trial_callback")

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def _retrying(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` (a method of an ``RDBStorage``; its first argument the ``ResilientRDBStorage``)
    repeated with backoff while the connection is lost, up to the storage's ``retry_s``."""

    @functools.wraps(fn)
    def method(*args: Any, **kwargs: Any) -> R:
        self = cast("ResilientRDBStorage", args[0])
        deadline: float | None = None
        delay = 0.25
        while True:
            try:
                out = fn(*args, **kwargs)
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


def _forgetting(fn: F) -> F:
    """A write to a trial: the copies of it this process kept (``_fresh``, ``_last_read``) are out
    of date."""

    @functools.wraps(fn)
    def write(self: ResilientRDBStorage, trial_id: int, *args: Any, **kwargs: Any) -> Any:
        self._fresh.pop(trial_id, None)
        self._last_read.pop(trial_id, None)
        return fn(self, trial_id, *args, **kwargs)

    return cast(F, write)


class ResilientRDBStorage(HeartbeatRDBStorage):
    """``RDBStorage`` whose public calls retry while the database connection is lost."""

    retry_s: float = RETRY_S

    def __init__(self, url: str, *, retry_s: float = RETRY_S, **kwargs: Any) -> None:
        _listen_for_completion()
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
        _listen_for_completion()  # a worker process unpickles its storage: it opens none itself
        super().__setstate__(state)
        self._outage_lock = threading.Lock()
        self._fresh, self._mine, self._last_read = {}, {}, {}

    # -- Optuna's calls, repeated through an outage ----------------------------------------------
    # Reads, and writes that are upserts (repeating one that was committed changes nothing).
    set_study_user_attr = _retrying(RDBStorage.set_study_user_attr)
    set_study_system_attr = _retrying(RDBStorage.set_study_system_attr)
    get_study_id_from_name = _retrying(RDBStorage.get_study_id_from_name)
    get_study_name_from_id = _retrying(RDBStorage.get_study_name_from_id)
    get_study_directions = _retrying(RDBStorage.get_study_directions)
    get_study_user_attrs = _retrying(RDBStorage.get_study_user_attrs)
    get_study_system_attrs = _retrying(RDBStorage.get_study_system_attrs)
    get_all_studies = _retrying(RDBStorage.get_all_studies)
    get_trial_user_attrs = _retrying(RDBStorage.get_trial_user_attrs)
    get_trial_system_attrs = _retrying(RDBStorage.get_trial_system_attrs)
    get_trial_param = _retrying(RDBStorage.get_trial_param)
    get_trial_id_from_study_id_trial_number = _retrying(RDBStorage.get_trial_id_from_study_id_trial_number)
    get_all_trials = _retrying(RDBStorage.get_all_trials)
    get_best_trial = _retrying(RDBStorage.get_best_trial)
    remove_session = _retrying(RDBStorage.remove_session)
    upgrade = _retrying(RDBStorage.upgrade)
    get_current_version = _retrying(RDBStorage.get_current_version)
    get_head_version = _retrying(RDBStorage.get_head_version)
    get_all_versions = _retrying(RDBStorage.get_all_versions)
    # the private calls Optuna's own cache layer (``_CachedStorage``) makes on its backend
    _get_best_trial_id = _retrying(RDBStorage._get_best_trial_id)
    _get_trials = _retrying(RDBStorage._get_trials)
    # writes to one trial: they also forget the copies of it this process kept
    set_trial_param = _forgetting(_retrying(RDBStorage.set_trial_param))
    set_trial_intermediate_value = _forgetting(_retrying(RDBStorage.set_trial_intermediate_value))
    set_trial_user_attr = _forgetting(_retrying(RDBStorage.set_trial_user_attr))
    set_trial_system_attr = _forgetting(_retrying(RDBStorage.set_trial_system_attr))
    _set_trial_param = _forgetting(_retrying(RDBStorage._set_trial_param))
    #: ``groups.trial_groups`` of this storage, retried like the rest
    trial_groups = _retrying(query_groups)

    # -- studies, created and deleted once ---------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        """Optuna's, created once however often the connection is lost.

        The new study carries a random token (study system attr ``STUDY_TOKEN``): after a lost
        connection the token tells whether the insert was committed (then that study is the
        answer) or not (then it is inserted again). A blind retry raised ``DuplicatedStudyError``
        for the study it had itself just created, or, for a study without a name, created a
        second one. A name taken by another process's study is still ``DuplicatedStudyError``.
        """
        token = uuid.uuid4().hex
        study_id: int = self._write_once(
            lambda: create_study(self, directions, study_name, token), lambda: study_created(self, token)
        )
        return study_id

    def delete_study(self, study_id: int) -> None:
        """Optuna's, not repeated blindly: after a lost connection a study found gone was deleted
        (a blind retry raised ``KeyError`` for the study it had itself just deleted); one still
        there is deleted again."""
        self._write_once(lambda: RDBStorage.delete_study(self, study_id), lambda: study_gone(self, study_id))

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
        template = with_token(template_trial)
        token = template.system_attrs[CREATE_TOKEN]
        frozen: FrozenTrial = self._write_once(
            lambda: RDBStorage._create_new_trial(self, study_id, template),
            lambda: trial_created(self, study_id, token),
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

        After a lost connection the trial is read back (``readback.state_landed``): already in the target
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
                mine = (lambda: claim(self, trial_id, token)), (lambda: claimed(self, trial_id, token))
                ok = bool(self._write_once(*mine))
            else:
                ok = bool(
                    self._write_once(
                        lambda: HeartbeatRDBStorage.set_trial_state_values(self, trial_id, state, values),
                        lambda: state_landed(self, trial_id, state),
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


_record_heartbeat = _retrying(RDBStorage.record_heartbeat)
_get_stale_trial_ids = _retrying(HeartbeatRDBStorage._get_stale_trial_ids)
_get_trial = _retrying(RDBStorage.get_trial)


# The completion time Optuna writes in ``set_trial_state_values`` (``datetime.now()``, stored as
# naive UTC), caught as it is set on the row, for the copy ``tell`` reads back.
_completion = threading.local()
_listening = threading.Lock()


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


def _listen_for_completion() -> None:
    """Listen to the completion times set on Optuna's trial rows, once per process.

    The listener is on Optuna's model class, so it sees every storage's rows; it does nothing
    unless this thread is inside ``ResilientRDBStorage.set_trial_state_values``. It is registered
    when the first such storage is made, not on import, so importing this module changes nothing
    in Optuna.
    """
    column = _rdb_models.TrialModel._datetime_complete_utc
    with _listening:
        if not sa_event.contains(column, "set", _completion_set):
            sa_event.listen(column, "set", _completion_set)
