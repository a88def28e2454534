"""``irnn-search status``: the tables, ``--json`` for scripts (studies and workers alive), and
``--watch`` redrawing until Ctrl-C, on the embedded stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from irnn_search.cli import app
from irnn_search.service.ledger import Ledger
from tests.service.test_search import _spec


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    launched = CliRunner().invoke(app, ["launch", str(_spec(tmp_path)), "--no-run"])
    assert launched.exit_code == 0, launched.output
    return tmp_path / "home"


def test_status_json_lists_the_studies_and_the_workers_alive(home: Path) -> None:
    before = CliRunner().invoke(app, ["status", "--json"])
    assert before.exit_code == 0, before.output
    data = json.loads(before.stdout)
    (row,) = data["studies"]
    assert (row["study"], row["task"], row["model"], row["direction"]) == ("tiny.irnn", "adding", "irnn", "minimize")
    assert (row["complete"], row["running"], row["best"]) == (0, 0, None)
    assert row["waiting"] >= 1, "the published settings are queued"
    assert data["workers"] == []

    ledger = Ledger(f"sqlite:///{home / 'irnn.db'}")
    worker_id = ledger.start_worker("cuda:1")
    try:
        data = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
        (w,) = data["workers"]
        assert (w["id"], w["device"], w["pid"]) == (worker_id, "cuda:1", os.getpid())
        assert (w["study"], w["trial"]) == (None, None), "idle"
        assert worker_id is not None
        ledger.beat(worker_id, "tiny.irnn", 0)  # what a worker's heartbeat says while it runs trial 0
        (w,) = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)["workers"]
        assert (w["study"], w["trial"]) == ("tiny.irnn", 0)
        table = CliRunner().invoke(app, ["status"])
        assert table.exit_code == 0 and "tiny.irnn trial 0" in table.stdout and "cuda:1" in table.stdout
    finally:
        ledger.stop_worker(worker_id)
    table = CliRunner().invoke(app, ["status"])
    assert table.exit_code == 0 and "tiny.irnn" in table.stdout and "no worker alive" in table.stdout


def test_status_json_and_watch_together_are_refused(home: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--json", "--watch", "2"])
    assert result.exit_code == 2 and "do not go together" in result.output


def test_status_watch_redraws_until_ctrl_c_and_exits_0(home: Path) -> None:
    env = {**os.environ, "IRNN_SEARCH_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "irnn_search", "status", "--watch", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a shell's background job (CI under nohup ... &) ignores SIGINT, and
        # Python keeps an inherited "ignore" instead of raising KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(6)  # start-up, then several redraws
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "tiny.irnn" in out and "Ctrl-C to stop" in out
    assert "Traceback" not in err
