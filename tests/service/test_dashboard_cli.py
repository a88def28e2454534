"""``irnn-search dashboard``: a real optuna-dashboard on the configured storage, on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from irnn_search.dev.servers import free_port
from tests.service.test_search import _spec

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("optuna_dashboard") is None, reason="optuna-dashboard is not installed"
)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRNN_SEARCH_")}
    env["IRNN_SEARCH_HOME"] = str(home)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # the venv's bin first, as an activated environment would have it
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_dashboard_serves_the_launched_studies_on_loopback(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    spec = _spec(tmp_path, "board")
    launched = subprocess.run(
        [sys.executable, "-m", "irnn_search", "launch", str(spec), "--no-run", "--no-track"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert launched.returncode == 0, launched.stderr
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "irnn_search", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.load(response)
                break
            except OSError:
                time.sleep(0.3)
        assert studies is not None, f"the dashboard did not answer (exit {proc.poll()})"
        names = {s["study_name"] for s in studies["study_summaries"]}
        assert "board.irnn" in names, names
        # the server is this very process, and the storage URL is not on its command line
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert not any(b"sqlite:" in word or b"optuna.db" in word for word in argv), argv
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"optuna-dashboard on http://127.0.0.1:{port}" in out
    assert "sqlite:" in out  # which storage it serves (rich may wrap the long path)


def test_dashboard_without_optuna_dashboard_says_how_to_install_it(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "optuna_dashboard.py").write_text("raise ImportError('No module named optuna_dashboard')\n")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shadow), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "irnn_search", "dashboard"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "optuna-dashboard is not installed" in out.stderr and "pip install optuna-dashboard" in out.stderr
