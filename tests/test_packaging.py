"""The wheel: it carries the built-in specs, the Alembic scripts and the git revision, and the
package runs from it without the repository beside it.

Fast stand-in for scripts/check_wheel (which installs the wheel into a fresh virtual environment,
dependencies and all): here the wheel is unpacked onto PYTHONPATH, so the dependencies come from
this environment but the package, its specs and its migrations only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what setup.py needs to build a wheel (anything else of the checkout stays out of the copy)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "irnn_search", "studies", "migrations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout without its .git, the revision given as a Docker build would."""
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "IRNN_SEARCH_BUILD_REVISION": "0123456789ab"}
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)]
    subprocess.run(cmd, check=True, env=env, cwd=src, capture_output=True, timeout=300)
    (built,) = dist.glob("irnn_search-*.whl")
    return built


def test_the_wheel_carries_every_spec_every_migration_and_the_revision(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    specs = {p.name for p in (ROOT / "studies").glob("*.toml")}
    assert {n.removeprefix("irnn_search/_bundled/studies/") for n in names if "/_bundled/studies/" in n} == specs
    scripts = {str(p.relative_to(ROOT / "migrations")) for p in (ROOT / "migrations").rglob("*") if p.is_file()}
    scripts = {s for s in scripts if "__pycache__" not in s}
    assert {"env.py", "script.py.mako", "versions/0001_initial.py"} <= scripts
    shipped = {n.removeprefix("irnn_search/_bundled/migrations/") for n in names if "/_bundled/migrations/" in n}
    assert shipped == scripts
    assert not any(n.startswith(("studies/", "migrations/", "tests/")) for n in names), "no top-level folders"
    assert "irnn_search/search/published.toml" in names  # the published settings the warm start enqueues
    info = zipfile.ZipFile(wheel).read("irnn_search/_build_info.py").decode()
    assert "REVISION = '0123456789ab'" in info


@pytest.mark.slow
def test_the_unpacked_wheel_migrates_launches_and_reports_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRNN_SEARCH_")}
    env.update(PYTHONPATH=str(site), IRNN_SEARCH_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "irnn_search", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    where = "import irnn_search.db.migrate as m; print(m.__file__); print(m.MIGRATIONS_DIR)"
    found = subprocess.run([sys.executable, "-c", where], cwd=elsewhere, env=env, capture_output=True, text=True)
    module, migrations = found.stdout.splitlines()
    assert module.startswith(str(site)) and migrations == str(site / "irnn_search" / "_bundled" / "migrations")
    assert cli("--version").strip() == "0.1.0 (git 0123456789ab)"
    assert "at revision 0002" in cli("db", "upgrade")
    assert "adding-smoke" in cli("launch", "adding-smoke", "--no-run", "--no-track")
    assert "adding-smoke.irnn" in cli("status")
    assert "adding-smoke" in cli("report", "adding-smoke")
    assert "pmnist" in cli("studies")


def test_the_docker_build_context_holds_what_the_wheel_is_built_from() -> None:
    """docker/Dockerfile builds the wheel from the build context, which .dockerignore filters."""
    keep = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    assert set(BUILD_INPUTS) <= keep
