"""The worker pool with real processes and real stores: ``irnn-search worker`` subprocesses against
embedded SQLite stores and against a real PostgreSQL 15 + MLflow tracking server (``servers``
variant, skipped when PostgreSQL is not installed).

Each worker has its own state folder (``IRNN_SEARCH_HOME``), as on separate machines: a resumed
trial gets its checkpoint from the MLflow artifact store, never from the dead worker's disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text

from irnn_search.db.session import make_engine
from irnn_search.service.recovery import released
from tests.small_study import small_study

pytestmark = pytest.mark.slow

DESCRIPTION = "test: worker pool"

HEARTBEAT_S, GRACE_S = 1, 3


@dataclass
class Stack:
    root: Path
    storage: str
    db: str
    mlflow: str
    kind: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    # servers are shared by the whole session: every study name is unique to its test
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def study(self, name: str) -> str:
        return f"{name}-{self.tag}.irnn"

    def env(self, home: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRNN_SEARCH_")}
        env.update(
            IRNN_SEARCH_HOME=str(self.root / home),
            IRNN_SEARCH_STORAGE=self.storage,
            IRNN_SEARCH_DB=self.db,
            IRNN_SEARCH_MLFLOW_URI=self.mlflow,
            IRNN_SEARCH_HEARTBEAT_S=str(HEARTBEAT_S),
            IRNN_SEARCH_GRACE_S=str(GRACE_S),
            IRNN_SEARCH_THREADS="1",
            MLFLOW_DISABLE_TELEMETRY="true",
            PYTHONUNBUFFERED="1",
        )
        return env

    def cli(self, *args: str, home: str = "admin", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "irnn_search", *args],
            env=self.env(home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def worker(self, home: str, *args: str) -> subprocess.Popen[str]:
        path = self.root / f"{home}.log"
        with open(path, "w") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "irnn_search", "worker", *args],
                env=self.env(home),
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        proc.log_path = str(path)  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def log(self, home: str) -> str:
        return (self.root / f"{home}.log").read_text()

    def launch(self, name: str, *, steps: int, report_every: int, trials: int) -> optuna.Study:
        spec = self.root / f"{name}-{self.tag}.toml"
        spec.write_text(small_study(description=DESCRIPTION, steps=steps, report_every=report_every, trials=trials))
        out = self.cli("launch", str(spec), "--no-run")
        assert out.returncode == 0, out.stderr + out.stdout
        study = optuna.load_study(study_name=self.study(name), storage=self.storage)
        assert study.trials, "the published settings are queued first"
        return study


def _make_stack(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Stack:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if kind == "embedded":
        s = Stack(
            tmp_path,
            storage=f"sqlite:///{tmp_path / 'optuna.db'}",
            db=f"sqlite:///{tmp_path / 'irnn.db'}",
            mlflow=f"sqlite:///{tmp_path / 'mlflow.db'}",
            kind=kind,
        )
    else:
        from tests.servers_fixtures import unique_name

        pg = request.getfixturevalue("pg")
        server = request.getfixturevalue("mlflow_server")
        s = Stack(
            tmp_path,
            storage=pg.create_database(unique_name("optuna")),
            db=pg.create_database(unique_name("irnn")),
            mlflow=server.uri,
            kind=kind,
        )
    up = s.cli("db", "upgrade")
    assert up.returncode == 0, up.stderr

    def cleanup() -> None:
        for p in s.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    request.addfinalizer(cleanup)
    return s


@pytest.fixture(params=["embedded", pytest.param("servers", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Stack:
    return _make_stack(request.param, request, tmp_path)


@pytest.fixture
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Stack:
    return _make_stack("servers", request, tmp_path)


def _wait(what: str, ok: Callable[[], Any], timeout: float, procs: list[subprocess.Popen[str]] = ()) -> Any:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        for p in procs:
            assert p.poll() is None or p.returncode == 0, (
                f"a worker exited with {p.returncode} while waiting for {what}" + _log_tail(p)
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _trials(stack: Stack, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=stack.study(name), storage=stack.storage).get_trials(deepcopy=False)


def _checkpoint(stack: Stack, home: str) -> bool:
    return any((stack.root / home / "checkpoints").glob("**/last.pt"))


def _ledger_runs(stack: Stack) -> list[Any]:
    engine = make_engine(stack.db)
    try:
        with engine.connect() as c:
            return list(
                c.execute(text("SELECT trial_number, outcome, resumed_from_step, mlflow_run_id FROM irnn_trial_runs"))
            )
    finally:
        engine.dispose()


def _runs(stack: Stack, name: str) -> list[Any]:
    client = MlflowClient(stack.mlflow)
    experiment = client.get_experiment_by_name("irnn-search/adding")
    assert experiment is not None
    query = f"tags.`irnn.role` = 'trial' and tags.`irnn.study` = '{stack.study(name)}'"
    return client.search_runs([experiment.experiment_id], query)


def _log_tail(p: subprocess.Popen[str], lines: int = 60) -> str:
    """The last lines of a worker's log (its stdout file), for a failure message."""
    name = getattr(p, "log_path", None)
    try:
        text = Path(str(name)).read_text() if name else ""
    except OSError:
        return ""
    return "\n--- worker log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def _wait_all(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    for p in procs:
        assert p.wait(timeout) == 0, f"worker exited with {p.returncode}" + _log_tail(p)


def test_three_workers_share_one_study_and_meet_its_budget_with_no_trial_lost_or_duplicated(stack: Stack) -> None:
    stack.launch("pool", steps=60, report_every=20, trials=7)
    workers = [stack.worker(f"w{i}") for i in range(3)]
    _wait_all(workers, 300)

    trials = _trials(stack, "pool")
    counted = [t for t in trials if not released(t) and t.user_attrs.get("outcome") != "surplus"]
    assert len(counted) == 7, [(t.number, t.state, t.user_attrs.get("outcome")) for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # every worker did some of the work, and no trial ran twice
    ledger = _ledger_runs(stack)
    numbers = [row[0] for row in ledger]
    assert len(numbers) == len(set(numbers)) == 7
    assert {row[1] for row in ledger} <= {"complete", "pruned", "diverged"}
    runs = _runs(stack, "pool")
    assert len(runs) == 7 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.info.run_id for r in runs} == {row[3] for row in ledger}
    for i in range(3):
        log = stack.log(f"w{i}")
        assert "worker " in log and "on cpu" in log and "Traceback" not in log


def test_a_killed_workers_trial_is_requeued_by_a_live_worker_and_resumed_from_its_checkpoint(stack: Stack) -> None:
    stack.launch("kill", steps=6000, report_every=100, trials=2)
    # Both start together, so the victim is killed early in its trial however fast the machine.
    victim = stack.worker("victim")
    survivor = stack.worker("survivor")
    _wait(
        "both workers in a trial",
        lambda: sum(t.state == TrialState.RUNNING for t in _trials(stack, "kill")) == 2,
        120,
        [victim, survivor],
    )
    _wait("the victim's first checkpoint", lambda: _checkpoint(stack, "victim"), 120, [victim])
    time.sleep(1.5)  # a few more reports: the checkpoint in the artifact store is past step 100
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    assert "complete value" not in stack.log("victim"), "the victim's trial ended before the kill: lengthen it"

    # The survivor is busy with its own trial; its janitor re-queues the lost one anyway.
    def requeued() -> FrozenTrial | None:
        trials = _trials(stack, "kill")
        retry = [t for t in trials if "retry_of" in t.user_attrs]
        return retry[0] if retry else None

    retry = _wait("the lost trial to be re-queued", requeued, GRACE_S + 2 * HEARTBEAT_S + 15, [survivor])
    assert time.monotonic() - killed_at < GRACE_S + 2 * HEARTBEAT_S + 15
    lost_number = retry.user_attrs["retry_of"]
    assert "lost" in retry.user_attrs["retry_reason"]
    # The survivor started no new trial meanwhile (the budget counts the lost one until it is
    # re-queued): either it was still in its own trial, or it had finished it and stayed, waiting
    # for the trial in flight on the dead worker, rather than leaving with that trial stuck.
    assert survivor.poll() is None, "the survivor left while a trial of a dead worker was in flight"

    _wait_all([survivor], 300)
    trials = {t.number: t for t in _trials(stack, "kill")}
    lost, again = trials[lost_number], trials[retry.number]
    assert lost.state == TrialState.FAIL and again.state == TrialState.COMPLETE, (
        [(t.number, t.state.name, t.user_attrs.get("outcome"), t.user_attrs.get("retry_of")) for t in trials.values()],
        stack.log("survivor")[-3000:],
    )
    assert again.params == lost.params and again.user_attrs["lineage"] == lost.user_attrs["lineage"]
    resumed_at = again.user_attrs["resumed_at_step_seed0"]
    assert resumed_at >= 100 and resumed_at % 100 == 0, "the step count continued rather than restarted"
    assert not [t for t in trials.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    ledger = {row[0]: row for row in _ledger_runs(stack)}
    assert ledger[lost_number][1] == "lost"
    assert ledger[again.number][1] == "complete" and ledger[again.number][2] == resumed_at
    runs = {r.info.run_id: r for r in _runs(stack, "kill")}
    assert all(r.info.status != "RUNNING" for r in runs.values())
    lost_run, again_run = runs[ledger[lost_number][3]], runs[ledger[again.number][3]]
    assert lost_run.info.status == "KILLED" and lost_run.data.tags["irnn.outcome"] == "lost"
    assert again_run.data.tags["irnn.resumed_from"] == lost_run.info.run_id
    # the survivor's disk never had the victim's checkpoint: it came from the artifact store
    assert again.user_attrs["checkpoint_from_run_seed0"] == lost_run.info.run_id
    assert again_run.info.status == "FINISHED"


def test_sigterm_checkpoints_and_releases_the_trial_and_the_worker_exits_0(stack: Stack) -> None:
    stack.launch("term", steps=3000, report_every=100, trials=1)
    worker = stack.worker("w")
    _wait("a checkpoint", lambda: _checkpoint(stack, "w"), 120, [worker])
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - sent < 30
    trials = _trials(stack, "term")
    stopped = [t for t in trials if t.user_attrs.get("outcome") == "interrupted"]
    assert len(stopped) == 1 and stopped[0].state == TrialState.FAIL
    retries = [t for t in trials if t.state == TrialState.WAITING and "retry_of" in t.user_attrs]
    assert len(retries) == 1 and retries[0].user_attrs["retry_of"] == stopped[0].number
    runs = _runs(stack, "term")
    assert [r.info.status for r in runs] == ["KILLED"]
    artifacts = MlflowClient(stack.mlflow).list_artifacts(runs[0].info.run_id, "checkpoints/seed-0")
    assert [Path(a.path).name for a in artifacts] == ["last.pt"]
    assert "stopping after the current step" in stack.log("w")


@pytest.mark.postgres
def test_a_postgresql_restart_mid_study_is_survived(servers: Stack, pg: Any) -> None:
    servers.launch("restart", steps=1500, report_every=100, trials=2)
    worker = servers.worker("w")
    _wait("a checkpoint", lambda: _checkpoint(servers, "w"), 120, [worker])
    pg.restart()  # a quick restart: pre-pinged pools reconnect
    time.sleep(1.0)
    pg.stop()  # a longer outage: calls in flight wait for the server (one warning), then go on
    time.sleep(2.5)
    pg.start()
    _wait_all([worker], 300)
    trials = _trials(servers, "restart")
    assert [t.state for t in trials if not released(t)].count(TrialState.COMPLETE) == 2
    assert not [t for t in trials if t.state == TrialState.FAIL]
    log = servers.log("w")
    assert "Traceback" not in log
    assert "unreachable" in log and "reachable again" in log, "the outage was noticed and ridden out"


@pytest.mark.postgres
def test_an_mlflow_outage_mid_trial_is_buffered_and_sent_when_the_server_returns(
    servers: Stack, mlflow_server: Any
) -> None:
    servers.launch("outage", steps=8000, report_every=200, trials=1)
    worker = servers.worker("w")
    _wait("a checkpoint", lambda: _checkpoint(servers, "w"), 120, [worker])
    mlflow_server.stop()
    try:
        time.sleep(3.0)  # reports and checkpoint uploads while MLflow is down
    finally:
        mlflow_server.start()
    _wait_all([worker], 300)
    log = servers.log("w")
    assert "unreachable" in log and "reachable again" in log
    [trial] = [t for t in _trials(servers, "outage") if t.state == TrialState.COMPLETE]
    client = MlflowClient(servers.mlflow)
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_mse")]
    assert steps == list(range(200, 8001, 200)), "no report was lost during the outage"


@pytest.mark.postgres
@pytest.mark.parametrize(
    "problem", ["wrong password", "unreachable host", "no such database"], ids=["password", "host", "database"]
)
def test_a_bad_database_url_gives_the_worker_one_clear_line(servers: Stack, problem: str) -> None:
    good = servers.storage
    if problem == "wrong password":
        url = good.replace("@", "x@", 1).replace("://irnn:", "://irnn:", 1)
        secret = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    elif problem == "unreachable host":
        url, secret = "postgresql+psycopg://irnn:hunter2@127.0.0.1:1/optuna", "hunter2"
    else:
        url = good.rsplit("/", 1)[0] + "/no_such_db"
        secret = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    servers.storage = url
    out = servers.cli("worker", timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    text_ = out.stdout + out.stderr
    assert "Traceback" not in text_ and secret not in text_
    assert "***" in text_ or "irnn" in text_
    assert len([line for line in out.stderr.splitlines() if line.strip()]) <= 3, out.stderr
