"""The MLflow UI and optuna-dashboard, rendered by headless Chromium, show a real search.

A tiny study runs through the real CLI (``irnn-search launch``, one worker process) on PostgreSQL
and the MLflow tracking server; Chromium then renders the pages a user would open and the test
reads the DOM. Screenshots and DOM dumps go to ``$IRNN_SEARCH_TEST_ARTIFACTS/browser/`` (CI keeps
that folder) or to pytest's temp folder. Skipped when no Chromium binary is found (CI installs
Debian's ``chromium``; ``IRNN_SEARCH_TEST_CHROMIUM`` names another binary).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow]

# The flags that render both UIs headless as root (MACHINE-NOTES): without a virtual-time budget
# the MLflow page is still blank when the DOM is dumped.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
    "--virtual-time-budget=10000",
]

SPEC = """
[study]
description = "test: tiny adding search rendered in the browser"
task = "adding"
task_options = { T = 10, val_size = 64, test_size = 64 }
steps = 20
report_every = 10
batch_size = 8
pruner = { name = "none" }
budget = { trials = 2 }

[models.irnn]
hidden_size = 8
optimizer = "adam"
lr = { low = 1e-3, high = 1e-2, log = true }
clip = ["off", 1]
identity_scale = { low = 0.1, high = 1.0 }
"""


def find_chromium() -> str | None:
    if os.environ.get("IRNN_SEARCH_TEST_CHROMIUM"):
        return os.environ["IRNN_SEARCH_TEST_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set IRNN_SEARCH_TEST_CHROMIUM)")
    return found


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("IRNN_SEARCH_TEST_ARTIFACTS")
    folder = Path(root) / "browser" if root else tmp_path_factory.mktemp("browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def render(chromium: str, artifacts: Path) -> Callable[[str, str], str]:
    """``render(url, name)``: the DOM of ``url`` after Chromium ran its scripts; saves name.png and name.html."""

    def run(url: str, name: str) -> str:
        with tempfile.TemporaryDirectory(prefix="irnn-chromium-") as profile:
            out = subprocess.run(
                [
                    chromium,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--screenshot={artifacts / (name + '.png')}",
                    "--dump-dom",
                    url,
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        (artifacts / (name + ".html")).write_text(out.stdout)
        assert out.returncode == 0, f"chromium failed on {url}: {out.stderr[-2000:]}"
        assert (artifacts / (name + ".png")).stat().st_size > 10_000, f"no screenshot of {url}"
        return out.stdout

    return run


def _cli() -> str:
    exe = Path(sys.executable).with_name("irnn-search")
    return str(exe) if exe.exists() else (shutil.which("irnn-search") or "irnn-search")


@pytest.fixture(scope="module")
def search(pg: Any, mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished tiny search launched through the real CLI on PostgreSQL and the MLflow server."""
    from irnn_search.db import migrate

    tag = uuid.uuid4().hex[:8]
    work = tmp_path_factory.mktemp("browser-search")
    spec_path = work / f"browser{tag}.toml"
    spec_path.write_text(SPEC)
    storage = pg.create_database(f"browser_optuna_{tag}")
    db = pg.create_database(f"browser_irnn_{tag}")
    migrate.upgrade(db)  # a shared experiment database is migrated explicitly
    env = {
        **os.environ,
        "IRNN_SEARCH_HOME": str(work / "home"),
        "IRNN_SEARCH_STORAGE": storage,
        "IRNN_SEARCH_DB": db,
        "IRNN_SEARCH_MLFLOW_URI": mlflow_server.uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "COLUMNS": "120",
        # the checkout under test, whatever an editable install of the venv points at
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(
        [_cli(), "launch", str(spec_path), "--workers", "1", "--no-report"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=work,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {"spec": f"browser{tag}", "study": f"browser{tag}.irnn", "storage": storage}


def test_the_mlflow_ui_shows_the_study_run_and_its_trial_runs(
    search: dict[str, Any], mlflow_server: Any, render: Callable[[str, str], str]
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("irnn-search/adding")
    assert experiment is not None
    eid = experiment.experiment_id
    (parent,) = client.search_runs([eid], filter_string=f"attributes.run_name = '{search['study']}'")
    children = client.search_runs([eid], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    assert len(names) >= 2 and all(n.startswith("irnn-trial-") for n in names)

    # the classic runs view ("Model training"): one row per study, its trials grouped under it
    runs_view = render(f"{mlflow_server.uri}/#/experiments/{eid}/runs", "mlflow-runs")
    assert search["study"] in runs_view
    assert "matching runs" in runs_view

    # the study's run page lists its trial runs
    run_page = render(f"{mlflow_server.uri}/#/experiments/{eid}/runs/{parent.info.run_id}", "mlflow-study-run")
    assert search["study"] in run_page
    for name in names:
        assert name in run_page, f"{name} missing from the run page"


def test_optuna_dashboard_shows_the_study_and_its_trials(
    search: dict[str, Any], dashboard: Callable[[str], str], render: Callable[[str, str], str]
) -> None:
    import optuna

    base = dashboard(search["storage"])
    storage = optuna.storages.get_storage(search["storage"])
    study_id = storage.get_study_id_from_name(search["study"])
    numbers = [t.number for t in storage.get_all_trials(study_id)]
    assert len(numbers) >= 2

    trials_page = render(f"{base}/dashboard/studies/{study_id}/trials", "dashboard-trials")
    assert f"{search['study']} (id={study_id})" in trials_page
    for number in numbers:
        assert f"Trial {number}" in trials_page, f"trial {number} missing from the trials page"
