"""Stopping ``launch --workers N`` from outside: a real launcher subprocess and its real workers.

A signal sent to the launcher alone (``timeout``, a scheduler, ``docker stop``, Kubernetes) must
reach its workers, which checkpoint and release their trials; the launcher waits for them within
``IRNN_SEARCH_STOP_S`` and exits 130 (SIGINT) or 143 (SIGTERM). A launcher that dies outright
(SIGKILL) must not leave its workers training on as orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

pytestmark = pytest.mark.slow

SPEC = """
[study]
description = "test: stopping a launch from outside"
task = "adding"
task_options = { T = 10, val_size = 32, test_size = 32 }
steps = 1000000
report_every = 50
batch_size = 4
seeds = [0]
pruner = { name = "none" }
budget = { trials = 2 }

[models.irnn]
hidden_size = 4
optimizer = "adam"
lr = { low = 1e-3, high = 1e-2, log = true }
clip = 1
identity_scale = { low = 0.1, high = 1.0 }
"""

STOP_S = 40  # the launcher's bound on its workers' checkpoint-and-exit


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: no psutil needed)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":  # a zombie has ended; only its parent's wait is missing
            parents[int(entry.name)] = int(fields[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        if state[state.rindex(")") + 2] != "Z":
            alive.add(p)
    return alive


def _gone_within(pids: set[int], seconds: float) -> set[int]:
    """Those of ``pids`` still alive after waiting up to ``seconds`` for them to end."""
    deadline = time.monotonic() + seconds
    while (alive := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _trials(storage: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name="stop.irnn", storage=storage).get_trials(deepcopy=False)


def _launch(tmp_path: Path) -> tuple[subprocess.Popen[str], str, Path]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = tmp_path / "stop.toml"
    spec.write_text(SPEC)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRNN_SEARCH_")}
    env.update(
        IRNN_SEARCH_HOME=str(home),
        IRNN_SEARCH_THREADS="1",
        IRNN_SEARCH_STOP_S=str(STOP_S),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "irnn_search", "launch", str(spec), "--workers", "2", "--no-track", "--no-report"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a signal to the launcher alone, as `timeout` or a scheduler sends it
        )
    storage = f"sqlite:///{home / 'optuna.db'}"

    def both_running() -> bool:
        try:
            trials = _trials(storage)
        except Exception:  # the study is not created yet
            return False
        return sum(t.state == TrialState.RUNNING for t in trials) == 2 and len(list(home.glob("**/last.pt"))) == 2

    deadline = time.monotonic() + 240
    while not both_running():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the two workers never both checkpointed a trial\n" + log.read_text()
        time.sleep(0.5)
    return proc, storage, log


def _assert_released(storage: str, log: Path) -> None:
    trials = _trials(storage)
    states = [(t.number, t.state.name, t.user_attrs.get("outcome")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING], (states, log.read_text())
    stopped = [t for t in trials if t.user_attrs.get("outcome") == "interrupted"]
    assert len(stopped) == 2 and all(t.state == TrialState.FAIL for t in stopped), states
    # each released trial is back in the queue, to resume from its checkpoint: none lost
    again = {t.user_attrs["retry_of"] for t in trials if t.state == TrialState.WAITING and "retry_of" in t.user_attrs}
    assert again == {t.number for t in stopped}, states


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_launcher_alone_stops_its_workers_which_release_their_trials(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    proc, storage, log = _launch(tmp_path)
    children = _descendants(proc.pid)
    assert len(children) >= 2, children
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        assert proc.wait(STOP_S + 30) == code, log.read_text()
        left = _gone_within(children, 5)  # multiprocessing's resource tracker leaves on the launcher's exit
    finally:
        for p in _alive(children):
            os.kill(p, signal.SIGKILL)
    assert time.monotonic() - sent < STOP_S + 30
    assert not left, "worker processes outlived their launcher"
    assert "Traceback" not in log.read_text(), log.read_text()
    _assert_released(storage, log)


def test_workers_of_a_launcher_that_died_stop_and_release_their_trials(tmp_path: Path) -> None:
    proc, storage, log = _launch(tmp_path)
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    try:
        left = _gone_within(children, STOP_S)
    finally:
        for p in _alive(children):
            os.kill(p, signal.SIGKILL)
    assert not left, "worker processes trained on as orphans"
    _assert_released(storage, log)
