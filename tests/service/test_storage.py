"""Optuna storage for a pool: launch serialization, retries through a lost connection, settings."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc

from irnn_search.search.validate import load_spec
from irnn_search.service.storage import ResilientRDBStorage, connection_lost, open_storage
from irnn_search.service.studies import open_studies
from irnn_search.settings import Settings
from tests.servers_fixtures import unique_name
from tests.service.test_search import _spec


def _race(spec_path: Path, storage: str, launches: int = 4) -> list[optuna.trial.FrozenTrial]:
    spec = load_spec(spec_path)
    barrier = threading.Barrier(launches)
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            barrier.wait()
            open_studies(spec, storage)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(launches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return optuna.load_study(study_name=f"{spec.name}.irnn", storage=storage).get_trials(deepcopy=False)


def _published_once(trials: list[optuna.trial.FrozenTrial]) -> None:
    refs = [t.user_attrs["ref"] for t in trials if t.user_attrs.get("source") == "published"]
    assert refs and len(refs) == len(set(refs)), refs


def test_concurrent_launches_on_sqlite_enqueue_the_published_settings_once(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for round_ in range(3):
        _published_once(_race(_spec(tmp_path, f"race{round_}"), f"sqlite:///{tmp_path / 'optuna.db'}"))


@pytest.mark.postgres
def test_concurrent_launches_on_postgresql_enqueue_the_published_settings_once(
    tmp_path: Path, pg_database: str
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for round_ in range(3):
        _published_once(_race(_spec(tmp_path, f"race{round_}"), pg_database))


def test_a_lost_connection_is_told_from_other_database_errors() -> None:
    lost = sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    assert connection_lost(lost)
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = lost
    assert connection_lost(wrapped)
    assert not connection_lost(sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not connection_lost(ValueError("bad value"))
    auth = Exception('FATAL:  password authentication failed for user "irnn"')
    assert not connection_lost(sa_exc.OperationalError("connect", {}, auth)), "no retry fixes a wrong password"


def test_sqlite_storage_is_plain_and_postgresql_storage_retries(tmp_path: Path) -> None:
    plain = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_s=2, grace_s=6)
    assert not isinstance(plain, ResilientRDBStorage)
    assert plain.get_heartbeat_interval() == 2 and plain.grace_period == 6


@pytest.mark.postgres
def test_postgresql_calls_ride_out_a_server_restart(pg: object, pg_database: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(pg_database, heartbeat_s=None, retry_s=60)
    assert isinstance(storage, ResilientRDBStorage)
    study = optuna.create_study(study_name="restart", storage=storage)
    study.enqueue_trial({"x": 1.0})
    pg.stop()  # type: ignore[attr-defined]
    restarted = threading.Timer(2.0, pg.start)  # type: ignore[attr-defined]
    restarted.start()
    try:
        trials = study.get_trials(deepcopy=False)  # waits for the server instead of failing
    finally:
        restarted.join()
    assert len(trials) == 1
    trial = study.ask()
    study.tell(trial, 1.0)
    assert study.best_value == 1.0


def test_heartbeat_settings_are_validated() -> None:
    s = Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "2"})
    assert (s.heartbeat_s, s.grace_s) == (2, 30)
    s = Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "20"})
    assert s.grace_s == 60  # at least 3 heartbeats
    with pytest.raises(ValueError, match=r"GRACE_S .* must be longer than"):
        Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "10", "IRNN_SEARCH_GRACE_S": "5"})
    with pytest.raises(ValueError, match="HEARTBEAT_S must be an integer"):
        Settings.from_env({"IRNN_SEARCH_HEARTBEAT_S": "soon"})
    assert Settings.from_env({}).max_lost_attempts == 3
    assert Settings.from_env({"IRNN_SEARCH_MAX_LOST_ATTEMPTS": "5"}).max_lost_attempts == 5
    with pytest.raises(ValueError, match="MAX_LOST_ATTEMPTS must be an integer >= 1"):
        Settings.from_env({"IRNN_SEARCH_MAX_LOST_ATTEMPTS": "0"})


def _running_trial(storage: ResilientRDBStorage, name: str) -> tuple[optuna.Study, int]:
    study = optuna.create_study(study_name=name, storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    return study, trial._trial_id


def test_no_trial_is_declared_stale_right_after_an_outage_nor_one_this_process_beats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the server is down nobody's heartbeat is written: once it is back, a janitor must give
    live workers a grace period to beat again before it fails their trials."""
    import time

    from irnn_search.service.storage import resilient

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    beater = ResilientRDBStorage(url, heartbeat_interval=1, grace_period=1)
    study, tid = _running_trial(beater, "outage")
    time.sleep(2.2)  # the heartbeat in the database is now older than the grace period
    other = ResilientRDBStorage(url, heartbeat_interval=1, grace_period=1)
    assert other._get_stale_trial_ids(study._study_id) == [tid], "a silent trial of another process is stale"
    assert beater._get_stale_trial_ids(study._study_id) == [tid], "a beat older than the grace period is no proof"

    # the beater's heartbeat call is stuck retrying (the server is down for it): its trial is alive to it
    release = threading.Event()
    monkeypatch.setattr(resilient, "_record_heartbeat", lambda self, trial_id: release.wait(10))
    beat = threading.Thread(target=beater.record_heartbeat, args=(tid,))
    beat.start()
    try:
        time.sleep(0.1)
        assert beater._get_stale_trial_ids(study._study_id) == [], "this process's own trial is not stale to it"
    finally:
        release.set()
        beat.join(10)
    assert beater._get_stale_trial_ids(study._study_id) == [], "nor right after its last beat"

    other._outage(sa_exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), None)
    assert other._get_stale_trial_ids(study._study_id) == [], "nothing is stale during an outage"
    other._recovered()
    assert other._get_stale_trial_ids(study._study_id) == [], "nor within grace + heartbeat of its end"
    time.sleep(other._quiet_s() + 0.1)
    assert other._get_stale_trial_ids(study._study_id) == [tid]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_running_trial_that_never_beat_is_failed_and_requeued_after_the_grace_period(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A worker killed between ``ask`` and its trial's first heartbeat leaves no heartbeat row."""
    from irnn_search.service.recovery import Janitor

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    janitor = Janitor(grace_s=2)
    storage = open_storage(url, heartbeat_s=1, grace_s=2, on_stale=janitor.on_stale)
    study = optuna.create_study(study_name="never-beat", storage=storage)
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # its worker dies here
    janitor.sweep([study])
    assert study.get_trials()[0].state == TrialState.RUNNING, "not before the grace period"
    time.sleep(2.3)
    young = study.ask()  # started just now: its worker may be about to beat
    janitor.sweep([study])
    trials = {t.number: t for t in study.get_trials()}
    assert trials[orphan.number].state == TrialState.FAIL and trials[young.number].state == TrialState.RUNNING
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == orphan.number]
    assert retry.state == TrialState.WAITING and retry.system_attrs["fixed_params"] == orphan.params
    assert janitor.lost == [("never-beat", orphan.number)]


def test_a_trial_failed_by_another_workers_janitor_does_not_stop_the_worker(tmp_path: Path) -> None:
    from irnn_search.service.objective import run_one

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_s=1, grace_s=3)
    study = optuna.create_study(study_name="taken", storage=storage)

    def objective(trial: optuna.Trial) -> float:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # a janitor wins
        trial.report(0.5, 1)  # raises UpdateFinishedTrialError
        return 0.5

    assert run_one(study, objective) is None
    assert run_one(study, lambda t: 0.25).value == 0.25  # type: ignore[union-attr]
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "COMPLETE"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_usage_from_one_aggregate_query_equals_usage_from_frozen_trials(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Budgets and status read one aggregate query (by state and outcome); they must count exactly
    what the ``FrozenTrial`` reading counts (released and surplus trials excluded, best finite
    value, wall time), and the surplus check counts only the trials numbered before its own."""

    from irnn_search.service import budget

    url = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="rows", storage=open_storage(url, heartbeat_s=None), direction="minimize")
    study.set_user_attr("launched_at", 0.0)
    ending = [
        (optuna.trial.TrialState.COMPLETE, 0.5, None),
        (optuna.trial.TrialState.COMPLETE, 0.25, "complete"),
        (optuna.trial.TrialState.PRUNED, None, "diverged"),
        (optuna.trial.TrialState.FAIL, None, None),  # lost: released, does not count
        (optuna.trial.TrialState.FAIL, None, "interrupted"),  # released
        (optuna.trial.TrialState.FAIL, None, "failed"),  # counts
        (optuna.trial.TrialState.PRUNED, None, "surplus"),  # never trained
        (optuna.trial.TrialState.RUNNING, None, None),
    ]
    for k, (state, value, outcome) in enumerate(ending):
        trial = study.ask()
        if k == 0:
            time.sleep(1.2)  # one trial with a wall time to measure
        if outcome is not None:
            trial.set_user_attr("outcome", outcome)
        if state == optuna.trial.TrialState.COMPLETE:
            study.tell(trial, value)
        elif state != optuna.trial.TrialState.RUNNING:
            study.tell(trial, state=state)
    study.enqueue_trial({"x": 1.0})
    study = optuna.load_study(study_name="rows", storage=open_storage(url, heartbeat_s=None))  # a fresh reader

    def ahead() -> list[int]:  # what the surplus check counts, for a trial of each number
        states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return [
            sum(g.count for g in budget._groups(study, before=n) if g.state in states and g.counts) for n in range(10)
        ]

    assert budget.trial_groups(study._storage, study._study_id) is not None
    read_at = time.time()
    narrow, narrow_ahead = budget.usage(study), ahead()
    monkeypatch.setattr(budget, "trial_groups", lambda storage, study_id, before=None: None)
    full, full_ahead = budget.usage(study), ahead()
    between = time.time() - read_at  # the running trial's device time grows meanwhile, 1 s a second
    assert narrow_ahead == full_ahead == [0, 1, 2, 3, 3, 3, 4, 4, 5, 5]
    assert (narrow.finished, narrow.complete, narrow.pruned, narrow.failed, narrow.running, narrow.waiting) == (
        4,
        2,
        1,
        1,
        1,
        1,
    )
    assert (full.finished, full.complete, full.pruned, full.failed, full.running, full.waiting) == (4, 2, 1, 1, 1, 1)
    assert narrow.best == full.best == 0.25
    assert narrow.device_hours * 3600 > 1.2
    assert narrow.device_hours * 3600 - 0.5 <= full.device_hours * 3600 <= narrow.device_hours * 3600 + between + 0.5


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_packed_trial_counts_its_share_of_the_device_not_its_wall_time(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device-hours (budgets, status, reports): a trial alone counts its wall time; a packed one
    its ``device_s`` once it has ended, and wall time / ``pack_slots`` while it runs; the aggregate
    query and the ``FrozenTrial`` reading agree."""
    import math

    from irnn_search.service import budget
    from irnn_search.service.storage import DEVICE_S, PACK_SLOTS

    url = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="shares", storage=open_storage(url, heartbeat_s=None))
    alone, packed_done, packed_running = study.ask(), study.ask(), study.ask()
    for trial in (packed_done, packed_running):
        trial.set_user_attr(PACK_SLOTS, 4)
    time.sleep(1.2)
    study.tell(alone, 1.0)  # ~1.2 s of wall time
    packed_done.set_user_attr(DEVICE_S, 100.0)  # its share, whatever its wall time
    study.tell(packed_done, 2.0)
    # packed_running: 1.2 s so far over 4 slots, ~0.3 s
    study = optuna.load_study(study_name="shares", storage=open_storage(url, heartbeat_s=None))

    assert budget.trial_groups(study._storage, study._study_id) is not None
    narrow = budget.usage(study).device_hours * 3600
    monkeypatch.setattr(budget, "trial_groups", lambda storage, study_id, before=None: None)
    full = budget.usage(study).device_hours * 3600
    assert 101.4 < narrow < 104.0, narrow  # 1.2 alone + 100 packed + 0.3 running, with slack for a slow machine
    assert math.isclose(narrow, full, abs_tol=0.5)
    by_number = {t.number: budget.device_seconds(t) for t in study.get_trials()}
    assert by_number[packed_done.number] == 100.0
    assert 0.25 < by_number[packed_running.number] < 1.0 < by_number[alone.number]


def _ours_and_plain(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[ResilientRDBStorage, optuna.storages.RDBStorage, dict[str, int]]:
    """Our storage and Optuna's plain one on the same database, and a count of the SQL statements
    both run (``statements["n"]``, reset by the caller before what it measures)."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    ours = ResilientRDBStorage(url)
    plain = optuna.storages.RDBStorage(url)
    statements = {"n": 0}

    def count(conn: object, cursor: object, statement: str, parameters: object, *_: object) -> None:
        # our SQLite state writes begin with an explicit BEGIN IMMEDIATE where pysqlite would issue
        # its own BEGIN unseen: the same round trip, not counted on either side
        statements["n"] += not statement.startswith("BEGIN")

    for storage in (ours, plain):
        event.listen(storage.engine, "before_cursor_execute", count)
    return ours, plain, statements


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_ask_reads_its_new_trial_without_a_query_and_a_write_forgets_the_copy(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ours, plain, statements = _ours_and_plain(backend, tmp_path, request)
    asked: dict[str, int] = {}
    studies = {}
    for name, storage in (("ours", ours), ("plain", plain)):
        studies[name] = study = optuna.create_study(study_name=f"fresh-{name}", storage=storage)
        study.tell(study.ask(), 1.0)  # a finished trial, so both reads have rows to fetch
        statements["n"] = 0
        trial = study.ask()
        asked[name] = statements["n"]
        # what ask handed the trial is what the database holds
        assert trial._cached_frozen_trial == plain.get_trial(trial._trial_id)
    # 6 reads skipped; 2 statements (load the row, insert the attr) store the trial's CREATE_TOKEN,
    # the price of never duplicating a trial after a lost insert
    assert asked["ours"] <= asked["plain"] - 6 + 2, f"the new trial's read-back was not skipped: {asked}"
    assert not ours._fresh, "the copy serves one read only"

    # a write before the read: the read goes to the database
    tid = ours._create_new_trial(studies["ours"]._study_id)._trial_id
    ours.set_trial_user_attr(tid, "lineage", 7)
    assert ours.get_trial(tid).user_attrs == {"lineage": 7}
    tid = ours._create_new_trial(studies["ours"]._study_id)._trial_id
    ours.set_trial_param(tid, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))
    assert ours.get_trial(tid).params == {"x": 0.5}
    # a template (enqueued) trial is never kept: it is read from the database
    ours._create_new_trial(studies["ours"]._study_id, plain.get_trial(tid))
    assert not ours._fresh


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_tell_reads_its_finished_trial_without_a_query_and_equal_to_the_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Optuna stores naive UTC and reads back local time: a zone other than UTC tests that the
    # kept copy converts the completion time as a read from the database does
    monkeypatch.setenv("TZ", "America/St_Johns")  # UTC-3:30 (-2:30 in summer)
    time.tzset()
    request.addfinalizer(time.tzset)  # after monkeypatch restores TZ
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ours, plain, statements = _ours_and_plain(backend, tmp_path, request)
    told: dict[str, int] = {}
    for name, storage in (("ours", ours), ("plain", plain)):
        study = optuna.create_study(study_name=f"tell-{name}", storage=storage)
        study.enqueue_trial({"x": 0.25})  # created by another process, taken from the queue here
        for value, state in ((1.5, None), (None, TrialState.PRUNED), (None, TrialState.FAIL), (float("inf"), None)):
            trial = study.ask()
            trial.suggest_float("x", 0, 1)
            trial.report(0.5, 3)
            trial.set_user_attr("lineage", 7)
            statements["n"] = 0
            frozen = study.tell(trial, value, state=state)
            told[name] = statements["n"]
            # what tell returned is what the database holds, to the microsecond
            assert frozen == plain.get_trial(trial._trial_id), (name, value, state)
            assert frozen.datetime_complete == plain.get_trial(trial._trial_id).datetime_complete
    assert told["ours"] <= told["plain"] - 6, f"the finished trial's read-back was not skipped: {told}"
    assert not ours._fresh and not ours._last_read and not ours._mine, "each copy serves one read only"

    # a write between the read and the state: the read after goes to the database
    study = optuna.load_study(study_name="tell-ours", storage=ours)
    trial = study.ask()
    ours.get_trial(trial._trial_id)
    ours.set_trial_user_attr(trial._trial_id, "late", 1)
    ours.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [2.0])
    assert ours.get_trial(trial._trial_id).user_attrs == {"late": 1}
    # a trial this process does not run (a janitor failing another worker's): never kept
    other = plain.create_new_trial(study._study_id)
    ours.get_trial(other)
    ours.set_trial_state_values(other, TrialState.FAIL)
    assert not ours._fresh


@pytest.mark.postgres
def test_check_reachable_reads_a_live_server_and_raises_for_a_dead_one(tmp_path: Path, pg_database: str) -> None:
    from irnn_search.service.storage import check_reachable

    check_reachable(pg_database)
    check_reachable(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert not (tmp_path / "optuna.db").exists()  # a check writes nothing
    with pytest.raises(FileNotFoundError):
        check_reachable(f"sqlite:///{tmp_path / 'missing' / 'optuna.db'}")
    with pytest.raises(sa_exc.OperationalError):
        check_reachable("postgresql+psycopg://irnn:pw@127.0.0.1:9/x")


def _slow_claims(monkeypatch: pytest.MonkeyPatch, wait_s: float = 0.5) -> None:
    """Widen the window between a state write's read of the trial and its write."""
    from optuna.storages._rdb import models

    original = models.TrialModel.find_or_raise_by_id.__func__  # type: ignore[attr-defined]

    def slow(cls: type, trial_id: int, session: object, for_update: bool = False) -> object:
        trial = original(cls, trial_id, session, for_update)
        if for_update:
            time.sleep(wait_s)
        return trial

    monkeypatch.setattr(models.TrialModel, "find_or_raise_by_id", classmethod(slow))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_janitors_racing_for_one_stale_trial_requeue_it_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's ``FOR UPDATE`` is a no-op on SQLite: both janitors read RUNNING, both wrote FAIL and
    both re-queued the trial. Exactly one may win."""
    from irnn_search.service.recovery import Janitor

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    study = optuna.create_study(study_name="race", storage=open_storage(url, heartbeat_s=1, grace_s=2))
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # its worker dies here
    time.sleep(2.3)
    _slow_claims(monkeypatch)
    janitors = [Janitor(grace_s=2) for _ in range(2)]
    views = [
        optuna.load_study(study_name="race", storage=open_storage(url, heartbeat_s=1, grace_s=2, on_stale=j.on_stale))
        for j in janitors
    ]
    barrier = threading.Barrier(2)

    def sweep(janitor: Janitor, view: optuna.Study) -> None:
        barrier.wait()
        janitor.sweep([view])

    threads = [threading.Thread(target=sweep, args=pair) for pair in zip(janitors, views, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(len(j.lost) for j in janitors) == 1, [j.lost for j in janitors]
    retries = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_workers_racing_for_one_waiting_trial_start_it_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}" if backend == "sqlite" else request.getfixturevalue("pg_database")
    study = optuna.create_study(study_name="claim", storage=open_storage(url, heartbeat_s=None))
    study.enqueue_trial({"x": 0.5})
    (waiting,) = study.get_trials()
    _slow_claims(monkeypatch)
    storages = [open_storage(url, heartbeat_s=1, grace_s=3) for _ in range(2)]
    barrier = threading.Barrier(2)
    won: list[bool] = []

    def claim(storage: object) -> None:
        barrier.wait()
        won.append(storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=claim, args=(s,)) for s in storages]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(won) == [False, True]


def _lose_the_next_commits_reply(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Arm with ``armed.append(1)``: the next Optuna session commits, then its connection is
    reported lost (the server died before the client read COMMIT's reply)."""
    import contextlib

    from optuna.storages._rdb import storage as rdb
    from sqlalchemy import event

    original = rdb._create_scoped_session
    armed: list[int] = []

    @contextlib.contextmanager
    def session(*args: object, **kwargs: object) -> object:
        wrote: list[int] = []

        def flushed(*_: object) -> None:
            wrote.append(1)

        try:
            with original(*args, **kwargs) as s:  # type: ignore[arg-type]
                event.listen(s, "after_flush", flushed)
                yield s
        finally:
            event.remove(s, "after_flush", flushed)
        if armed and wrote:  # reads are retried blindly, and rightly: only writes are lost here
            armed.clear()
            raise sa_exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(rdb, "_create_scoped_session", session)
    return armed


def test_writes_lost_after_their_commit_are_read_back_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blind retry duplicated an enqueued trial, left an orphan RUNNING trial behind an ask, and
    raised UpdateFinishedTrialError from a tell whose state was already written."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = ResilientRDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", retry_s=10)
    study = optuna.create_study(study_name="lost-commit", storage=storage)
    armed = _lose_the_next_commits_reply(monkeypatch)

    armed.append(1)
    study.enqueue_trial({"x": 0.5})
    assert not armed, "the write was lost"
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]

    armed.append(1)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # claims the queued one
    assert not armed and trial.params == {"x": 0.5}
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]

    armed.append(1)
    study.tell(trial, 1.5)
    assert not armed
    assert [(t.state, t.value) for t in study.get_trials()] == [(TrialState.COMPLETE, 1.5)]

    armed.append(1)
    asked = study.ask()
    assert not armed
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert study.get_trials()[1].number == asked.number

    # a state the write did not make: another process finished the trial meanwhile
    armed.append(1)
    storage.set_trial_state_values(asked._trial_id, TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(asked._trial_id, TrialState.COMPLETE, [2.0])


def test_study_creations_and_deletions_lost_after_their_commit_are_read_back_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blind retry raised DuplicatedStudyError for the study it had just created, created a second
    study when it had no name, and raised KeyError for the study it had just deleted."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = ResilientRDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", retry_s=10)
    armed = _lose_the_next_commits_reply(monkeypatch)

    armed.append(1)
    named = optuna.create_study(study_name="lost-create", storage=storage)
    assert not armed, "the write was lost"
    armed.append(1)
    unnamed = optuna.create_study(storage=storage)
    assert not armed
    studies = {s.study_name: s._study_id for s in storage.get_all_studies()}
    assert studies == {"lost-create": named._study_id, unnamed.study_name: unnamed._study_id}

    # a name another process's study holds is still a duplicate
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        optuna.create_study(study_name="lost-create", storage=storage)

    armed.append(1)
    optuna.delete_study(study_name="lost-create", storage=storage)
    assert not armed
    assert [s.study_name for s in storage.get_all_studies()] == [unnamed.study_name]


def test_every_call_of_optunas_storage_is_retried_or_read_back() -> None:
    """The retried calls are declared one by one: a call Optuna adds must not go unretried."""
    from optuna.storages import RDBStorage

    from irnn_search.service.storage.resilient import NOT_RETRIED

    cached_backend_calls = {"_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials"}
    calls = {n for n, f in vars(RDBStorage).items() if callable(f) and not n.startswith("_")} | cached_backend_calls
    declared = set(vars(ResilientRDBStorage))
    assert calls - set(NOT_RETRIED) - declared == set()
    assert set(NOT_RETRIED) & declared == set()


def test_importing_the_storage_changes_nothing_in_optuna() -> None:
    """The completion-time listener is registered when a resilient storage is made, not on import."""
    import subprocess
    import sys

    code = (
        "import irnn_search.service.storage\n"
        "from optuna.storages._rdb import models\n"
        "from sqlalchemy import event\n"
        "from irnn_search.service.storage import resilient\n"
        "print(event.contains(models.TrialModel._datetime_complete_utc, 'set', resilient._completion_set))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _open_at_the_barrier(url: str, barrier: object, errors: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        open_storage(url)
    except Exception as exc:  # reported to the test
        errors.put(f"{type(exc).__name__}: {str(exc)[:200]}")  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_processes_opening_a_fresh_store_at_once_all_open_it(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The workers of a pool started together, or ``status`` during the first launch, open a store
    whose schema is not there yet: each creates it, and the losers of that race must not fail
    (before, 4 processes on a fresh SQLite file failed in 20 rounds out of 20)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'optuna-{round_}.db'}"
        else:
            pg = request.getfixturevalue("pg")
            name = unique_name("fresh_store")
            url = pg.create_database(name)
            request.addfinalizer(lambda name=name, pg=pg: pg.drop_database(name))
        barrier, errors = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_at_the_barrier, args=(url, barrier, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        failed = [errors.get() for _ in range(errors.qsize())]
        assert not failed, f"round {round_}: {failed}"
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        assert optuna.get_all_study_names(open_storage(url)) == []
