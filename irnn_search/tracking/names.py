"""The names and rules of our MLflow layout: tags, roles, how an outcome ends a run, limits."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

EXPERIMENT_PREFIX: Final = "irnn-search/"

TAG_STUDY: Final = "irnn.study"
TAG_ROLE: Final = "irnn.role"
TAG_TASK: Final = "irnn.task"
TAG_MODEL: Final = "irnn.model"
TAG_FAMILY: Final = "irnn.family"
TAG_LAUNCH: Final = "irnn.launch_id"
TAG_TRIAL: Final = "irnn.trial"
TAG_RESUMED_FROM: Final = "irnn.resumed_from"
TAG_OUTCOME: Final = "irnn.outcome"
TAG_REASON: Final = "irnn.reason"
TAG_NONFINITE: Final = "irnn.nonfinite_metrics"
ROLE_STUDY: Final = "study"
ROLE_TRIAL: Final = "trial"

#: how each of our trial outcomes ends its MLflow run (see the module docstring for why)
OUTCOME_STATUS: Final[Mapping[str, str]] = {
    "complete": "FINISHED",
    "completed": "FINISHED",
    "stopped": "FINISHED",
    "pruned": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
    "killed": "KILLED",
    "lost": "KILLED",
}
END_STATUSES: Final = ("FINISHED", "FAILED", "KILLED")

# MLflow limits: 1000 metrics per log_batch; tag values up to 8000 characters.
MAX_METRICS_PER_BATCH: Final = 1000
MAX_TAG_CHARS: Final = 8000
TASK_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def worker_http_defaults() -> None:
    """Short MLflow HTTP retries for a worker process (unless set already): 2 retries and a 20 s
    timeout instead of 7 retries and 120 s, so an MLflow outage costs a training step seconds,
    not minutes. The tracker's own buffer retries beyond that."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


class TrackingError(RuntimeError):
    """MLflow refused or could not be reached for an operation whose result the caller needs."""


def default_artifact_root(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside the database of a ``sqlite:///`` store, else None (the store decides).

    Without it MLflow's SQL store would put artifacts in ``./mlruns`` of whatever folder the
    process happens to run in.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db = tracking_uri[len(prefix) :].split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    return str(Path(db).resolve().parent / "mlartifacts")


def outcome_status(outcome: str) -> str:
    """The MLflow run status that ends a trial with this outcome; ValueError lists the valid ones."""
    try:
        return OUTCOME_STATUS[outcome]
    except KeyError:
        raise ValueError(f"unknown outcome {outcome!r}; valid: {', '.join(OUTCOME_STATUS)}") from None


def quote(value: str) -> str:
    """A string literal for an MLflow filter expression."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for a value containing both quote characters: {value!r}")


def stringify(value: Any) -> str:
    return "none" if value is None else str(value)


def now_ms() -> int:
    return int(time.time() * 1000)
