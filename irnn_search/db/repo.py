"""Repository functions: what the service layer records in and reads from the experiment database.

Every function takes an open session (from :func:`~irnn_search.db.session.session_scope`) and
keyword arguments only. Writers flush, so ids are known at once, but never commit: the caller's
``session_scope`` decides. Times are set here, in UTC.

Numbers that are not finite (NaN, inf) are stored as NULL: a diverged trial has no value, and
PostgreSQL's JSON refuses NaN.
"""

from __future__ import annotations

import getpass
import json
import math
import socket
from collections.abc import Collection, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from irnn_search.db.models import (
    OUTCOMES,
    EvaluationRow,
    LaunchRow,
    StudyRow,
    TrialRunRow,
    WorkerRow,
    utcnow,
)
from irnn_search.outcome import Outcome

RowT = TypeVar("RowT")


class StudySpecChanged(ValueError):
    """A study name is reused with a spec that hashes differently from the one it was launched with."""


class NotFound(LookupError):
    """A study, worker or trial run named by the caller is not in the experiment database."""


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (recursively)."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _plain_json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A JSON round trip of ``value``, so what is stored is exactly what is read back."""
    try:
        return dict(json.loads(json.dumps(_json_safe(value), allow_nan=False)))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be plain JSON (dicts, lists, str, numbers, bool, None): {error}") from None


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _study(session: Session, study_name: str) -> StudyRow:
    row = session.scalars(select(StudyRow).where(StudyRow.study_name == study_name)).one_or_none()
    if row is None:
        known = session.scalars(select(StudyRow.study_name).order_by(StudyRow.study_name).limit(20)).all()
        listed = ", ".join(known) if known else "none yet"
        raise NotFound(f"no study {study_name!r} in the experiment database (known: {listed}); launch its spec first")
    return row


def _get(session: Session, model: type[RowT], row_id: int, what: str) -> RowT:
    row = session.get(model, row_id)
    if row is None:
        raise NotFound(f"no {what} with id {row_id} in the experiment database")
    return row


# --- launches and studies ---------------------------------------------------------------------


def record_launch(
    session: Session,
    *,
    spec_name: str,
    spec: Mapping[str, Any],
    spec_hash: str,
    package_version: str,
    who: str | None = None,
) -> int:
    """Store one launch of a spec with its resolved form; returns the launch id.

    ``who`` defaults to ``user@host`` of this process. Raises ``ValueError`` when ``spec`` is not
    plain JSON.
    """
    row = LaunchRow(
        spec_name=spec_name,
        spec=_plain_json(spec, "the resolved spec"),
        spec_hash=spec_hash,
        package_version=package_version,
        who=who or _who(),
    )
    session.add(row)
    session.flush()
    return row.id


def ensure_study(
    session: Session,
    *,
    launch_id: int,
    study_name: str,
    task: str,
    model: str,
    family: str,
    spec_hash: str,
    earlier_hashes: Collection[str] = (),
) -> StudyRow:
    """The study named ``study_name``, created on first launch (idempotent).

    A study that exists keeps its original launch. Raises :class:`StudySpecChanged` when it was
    launched with another spec hash: trials searched under different specs are not comparable.
    ``earlier_hashes``: hashes of the same spec with other budgets (the search accepted the
    change); the study then takes ``spec_hash``.
    """
    _get(session, LaunchRow, launch_id, "launch")
    existing = session.scalars(select(StudyRow).where(StudyRow.study_name == study_name)).one_or_none()
    if existing is not None:
        if existing.spec_hash != spec_hash and existing.spec_hash in earlier_hashes:
            existing.spec_hash = spec_hash
        if existing.spec_hash != spec_hash:
            raise StudySpecChanged(
                f"study {study_name!r} was launched with spec hash {existing.spec_hash[:12]}, but the spec "
                f"now hashes to {spec_hash[:12]}: the spec changed since its first launch. Trials searched "
                "under different specs are not comparable, so to search the changed spec give it a new "
                "name (a new study); to continue the existing study, restore the spec as it was."
            )
        return existing
    row = StudyRow(
        study_name=study_name,
        launch_id=launch_id,
        task=task,
        model=model,
        family=family,
        spec_hash=spec_hash,
        status="open",
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as error:
        raise RuntimeError(
            f"study {study_name!r} could not be recorded ({str(error.orig).strip().splitlines()[0]}); another "
            "launch may have created it at the same moment: launch again (launching is idempotent)"
        ) from error
    return row


def study_spec(session: Session, *, study_name: str) -> dict[str, Any]:
    """The resolved spec stored when the study was launched: workers rebuild the objective from it."""
    study = _study(session, study_name)
    spec = session.scalar(select(LaunchRow.spec).where(LaunchRow.id == study.launch_id))
    return dict(spec or {})


def set_mlflow_ids(session: Session, *, study_name: str, experiment_id: str, parent_run_id: str | None) -> None:
    """Link the study to its MLflow experiment and parent run."""
    row = _study(session, study_name)
    row.mlflow_experiment_id = experiment_id
    row.mlflow_parent_run_id = parent_run_id
    session.flush()


def finish_study(session: Session, *, study_name: str) -> None:
    """Mark the study finished (its budget is met); idempotent."""
    row = _study(session, study_name)
    if row.status != "finished":
        row.status = "finished"
        row.finished_at = utcnow()
        session.flush()


def studies(session: Session, *, spec_name: str | None = None) -> list[StudyRow]:
    """All studies in creation order, or those first launched from ``spec_name``."""
    query = select(StudyRow).order_by(StudyRow.id)
    if spec_name is not None:
        query = query.join(LaunchRow, StudyRow.launch_id == LaunchRow.id).where(LaunchRow.spec_name == spec_name)
    return list(session.scalars(query))


# --- workers ----------------------------------------------------------------------------------


def register_worker(session: Session, *, host: str, pid: int, device: str) -> int:
    """A new worker, alive from now; returns its id."""
    now = utcnow()
    row = WorkerRow(host=host, pid=pid, device=device, started_at=now, heartbeat_at=now)
    session.add(row)
    session.flush()
    return row.id


def heartbeat(
    session: Session, *, worker_id: int, study_name: str | None = None, trial_number: int | None = None
) -> None:
    """The worker is alive and working on ``study_name``/``trial_number`` (``None``: idle)."""
    row = _get(session, WorkerRow, worker_id, "worker")
    row.heartbeat_at = utcnow()
    row.current_study_id = None if study_name is None else _study(session, study_name).id
    row.current_trial_number = None if study_name is None else trial_number
    session.flush()


def stop_worker(session: Session, *, worker_id: int) -> None:
    """The worker exited cleanly; it no longer counts as alive."""
    row = _get(session, WorkerRow, worker_id, "worker")
    row.stopped_at = utcnow()
    row.current_study_id = None
    row.current_trial_number = None
    session.flush()


def workers_alive(session: Session, *, within_s: float) -> list[WorkerRow]:
    """Workers not stopped whose last heartbeat is at most ``within_s`` seconds old."""
    since = utcnow() - timedelta(seconds=within_s)
    query = (
        select(WorkerRow).where(WorkerRow.stopped_at.is_(None), WorkerRow.heartbeat_at >= since).order_by(WorkerRow.id)
    )
    return list(session.scalars(query))


# --- trial runs and evaluations ---------------------------------------------------------------


def start_trial_run(
    session: Session,
    *,
    study_name: str,
    trial_number: int,
    trial_id: int,
    worker_id: int | None,
    device: str,
    mlflow_run_id: str | None,
    pack_id: str | None = None,
    pack_size: int | None = None,
) -> int:
    """Record that a trial started running; returns the trial run id. ``pack_id``: the packed
    computation it shares with ``pack_size - 1`` other trials (None: it runs alone).

    Raises ``ValueError`` when the trial already has a run: a retried trial is a new Optuna trial.
    """
    study = _study(session, study_name)
    duplicate = session.scalars(
        select(TrialRunRow.id).where(TrialRunRow.study_id == study.id, TrialRunRow.trial_number == trial_number)
    ).first()
    if duplicate is not None:
        raise ValueError(
            f"trial {trial_number} of study {study_name!r} already has a run (id {duplicate}); "
            "a retried trial must be enqueued as a new Optuna trial"
        )
    row = TrialRunRow(
        study_id=study.id,
        trial_number=trial_number,
        trial_id=trial_id,
        worker_id=worker_id,
        device=device,
        mlflow_run_id=mlflow_run_id,
        pack_id=pack_id,
        pack_size=pack_size,
    )
    session.add(row)
    session.flush()
    return row.id


def finish_trial_run(
    session: Session,
    *,
    run_id: int,
    outcome: str,
    reason: str | None,
    value: float | None,
    wall_s: float | None,
    train_s: float | None,
    steps: int | None,
    steps_per_s: float | None,
    resumed_from_step: int | None = None,
) -> None:
    """Record how a trial run ended.

    ``outcome`` is one of ``complete``, ``pruned``, ``diverged``, ``failed``, ``interrupted``
    (``ValueError`` otherwise). ``value`` is the objective; NaN and inf are stored as NULL, as are
    non-finite times and rates. Times in seconds.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    row = _get(session, TrialRunRow, run_id, "trial run")
    row.outcome = outcome
    row.reason = reason
    row.value = _finite(value)
    row.wall_s = _finite(wall_s)
    row.train_s = _finite(train_s)
    row.steps = steps
    row.steps_per_s = _finite(steps_per_s)
    row.resumed_from_step = resumed_from_step
    row.finished_at = utcnow()
    session.flush()


def mark_lost(session: Session, *, study_name: str, trial_number: int, reason: str) -> bool:
    """A trial whose worker died: its unfinished run (if recorded) ends with outcome ``lost``.
    Returns whether a run was marked."""
    study = _study(session, study_name)
    row = session.scalars(
        select(TrialRunRow).where(
            TrialRunRow.study_id == study.id,
            TrialRunRow.trial_number == trial_number,
            TrialRunRow.outcome.is_(None),
        )
    ).first()
    if row is None:
        return False
    row.outcome = Outcome.LOST.value
    row.reason = reason
    row.finished_at = utcnow()
    session.flush()
    return True


def trial_runs(session: Session, *, study_name: str) -> list[TrialRunRow]:
    """The study's trial runs by trial number (unfinished ones have ``outcome`` None)."""
    study = _study(session, study_name)
    query = select(TrialRunRow).where(TrialRunRow.study_id == study.id).order_by(TrialRunRow.trial_number)
    return list(session.scalars(query))


def record_evaluation(session: Session, *, trial_run_id: int, split: str, metrics: Mapping[str, Any]) -> int:
    """Store the final metrics of a trial run on ``split``; a second call for the same split replaces them.

    Non-finite numbers in ``metrics`` are stored as null. Returns the evaluation id.
    """
    _get(session, TrialRunRow, trial_run_id, "trial run")
    clean = _plain_json(metrics, "metrics")
    row = session.scalars(
        select(EvaluationRow).where(EvaluationRow.trial_run_id == trial_run_id, EvaluationRow.split == split)
    ).one_or_none()
    if row is None:
        row = EvaluationRow(trial_run_id=trial_run_id, split=split, metrics=clean)
        session.add(row)
    else:
        row.metrics = clean
        row.created_at = utcnow()
    session.flush()
    return row.id


def evaluations(session: Session, *, trial_run_id: int) -> dict[str, dict[str, Any]]:
    """Split -> metrics of one trial run."""
    rows = session.scalars(select(EvaluationRow).where(EvaluationRow.trial_run_id == trial_run_id))
    return {row.split: dict(row.metrics) for row in rows}
