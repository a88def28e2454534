"""The Optuna pin holds what the storage layer relies on.

The storage resilience layer calls Optuna internals (private ``RDBStorage`` methods, the ORM models
of ``optuna.storages._rdb``), so pyproject.toml pins the tested major. These tests fail when the
installed Optuna, or the version CI installs from constraints.txt, falls outside that pin, or when an
internal we use is gone: the moment to re-test and move the pin, not to find out in production.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

#: (module, attribute path) of every Optuna internal irnn_search/service uses
INTERNALS = [
    ("optuna.storages", "RDBStorage._create_new_trial"),
    ("optuna.storages", "RDBStorage._set_trial_param"),
    ("optuna.storages", "RDBStorage._get_best_trial_id"),
    ("optuna.storages", "RDBStorage._get_trials"),
    ("optuna.storages", "RDBStorage._get_stale_trial_ids"),
    ("optuna.storages", "RDBStorage._set_trial_attr_without_commit"),
    ("optuna.storages", "RDBStorage.check_trial_is_updatable"),
    ("optuna.storages._rdb.storage", "_create_scoped_session"),
    ("optuna.storages._rdb.models", "TrialModel.find_or_raise_by_id"),
    ("optuna.storages._rdb.models", "TrialModel._datetime_start_utc"),
    ("optuna.storages._rdb.models", "TrialModel._datetime_complete_utc"),
    ("optuna.storages._rdb.models", "TrialHeartbeatModel"),
    ("optuna.storages._rdb.models", "TrialSystemAttributeModel"),
]


def _pin() -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (optuna,) = [Requirement(d) for d in deps if Requirement(d).name == "optuna"]
    return optuna


def test_optuna_is_pinned_to_one_major() -> None:
    pin = _pin()
    uppers = [s for s in pin.specifier if s.operator == "<"]
    lowers = [s for s in pin.specifier if s.operator == ">="]
    assert uppers and lowers, f"optuna must have a lower and an upper bound, not {pin}"
    assert Version(uppers[0].version).major == Version(lowers[0].version).major + 1, pin


def test_installed_and_constrained_optuna_are_inside_the_pin() -> None:
    pin = _pin()
    installed = importlib.metadata.version("optuna")
    assert pin.specifier.contains(installed), f"installed optuna {installed} is outside {pin}"
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    (constrained,) = [line.split("==")[1] for line in lines if line.lower().startswith("optuna==")]
    assert pin.specifier.contains(constrained), f"constraints.txt has optuna {constrained}, outside {pin}"


@pytest.mark.parametrize(("module", "path"), INTERNALS, ids=[p for _, p in INTERNALS])
def test_the_optuna_internals_we_use_exist(module: str, path: str) -> None:
    obj = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(obj, part), f"{module}.{path}: Optuna no longer has {part!r}; re-test the storage layer"
        obj = getattr(obj, part)
