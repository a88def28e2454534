"""Where the studies stand, as plain data: what ``irnn-search status`` shows (every study's usage
and answer so far, the workers alive) and the progress ``irnn-search launch`` shows while its
workers run (trials done, the best so far, the time left at the pace so far)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from irnn_search.service.answer import Answer, answer, lineages, lines_for
from irnn_search.service.budget import Usage, usage
from irnn_search.service.studies import load_studies, stored_spec

if TYPE_CHECKING:
    import optuna

    from irnn_search.search.spec import StudySpec
    from irnn_search.service.ledger import Ledger


class StorageUnreadable(RuntimeError):
    """The Optuna storage cannot be read (unreachable, refused, not a database).

    ``cause`` is the driver's or SQLAlchemy's error: its first line says why.
    """

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


class StudyStatus(TypedDict):
    study: str
    task: str | None
    model: str | None
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best: float | None  # the best any trial reached, however it ended (service.answer)
    best_complete: float | None  # Optuna's best, of the complete trials only
    solved: bool | None  # None where the task has no threshold
    solved_trials: int
    started: int
    steps_to_solve: int | None
    direction: str
    device_hours: float


class WorkerStatus(TypedDict):
    id: int
    host: str
    pid: int
    device: str
    study: str | None  # None while the worker is idle
    trial: int | None
    heartbeat_at: str  # ISO 8601


class Status(TypedDict):
    studies: list[StudyStatus]
    workers: list[WorkerStatus] | None  # None when our experiment database cannot be read


def study_status(name: str, study: optuna.Study) -> StudyStatus:
    """One study's trials by state, best value, answer so far and compute used."""
    u = usage(study)
    spec = stored_spec(study)
    a = answer(study, spec, lines_for(spec))  # what the trials reached, however they ended
    return {
        "study": name,
        "task": study.user_attrs.get("task"),
        "model": study.user_attrs.get("model"),
        "complete": u.complete,
        "pruned": u.pruned,
        "failed": u.failed,
        "running": u.running,
        "waiting": u.waiting,
        "best": a.best_value,
        "best_complete": u.best,
        "solved": a.solved,
        "solved_trials": a.solved_count,
        "started": a.started,
        "steps_to_solve": a.steps_to_solve,
        "direction": study.direction.name.lower(),
        "device_hours": round(u.device_hours, 6),
    }


def status_data(storage_url: str, *, ledger: Callable[[], Ledger | None]) -> Status:
    """Every study launched on the storage, sorted by name, and the workers alive.

    ``ledger`` opens our experiment database; it is called only when there are studies, and may
    return None (the database cannot be opened), which leaves ``workers`` None.

    Raises:
        StorageUnreadable: the Optuna storage cannot be read.
    """
    try:
        studies = load_studies(storage_url)
    except Exception as exc:
        raise StorageUnreadable(exc) from exc
    rows = [study_status(name, study) for name, study in sorted(studies.items())]
    workers: list[WorkerStatus] | None = None
    if rows and (opened := ledger()) is not None:
        workers = [
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "device": w.device,
                "study": w.current_study.study_name if w.current_study is not None else None,
                "trial": w.current_trial_number if w.current_study is not None else None,
                "heartbeat_at": w.heartbeat_at.isoformat(),
            }
            for w in opened.workers_alive()
        ]
    return {"studies": rows, "workers": workers}


@dataclass(frozen=True)
class ModelProgress:
    """One model's study while a launch runs it."""

    model: str
    budget: int | None  # the trial budget; None (or 0) when only time or device hours bound it
    usage: Usage
    answer: Answer
    trials_left: int | None  # None when unknown: no trial budget, or no trial finished yet
    eta_min: float  # minutes to run ``trials_left`` at the pace so far; meaningful when trials_left > 0


def progress(spec: StudySpec, studies: Mapping[str, optuna.Study], workers: int) -> list[ModelProgress]:
    """Each study's progress, in the order of ``studies``. The time left assumes each remaining
    trial takes the device time the finished and running ones took on average, shared by
    ``workers`` workers."""
    lines = lines_for(spec)
    out = []
    for study in studies.values():
        m = spec.model(study.user_attrs["model"])
        u = usage(study)
        total = m.budget.trials
        left, eta_min = None, 0.0
        if total and u.finished:
            per_trial = u.device_hours * 3600 / max(u.finished + u.running, 1)
            left = max(total - u.finished, 0)
            eta_min = left * per_trial / max(workers, 1) / 60
        out.append(ModelProgress(study.user_attrs["model"], total, u, answer(study, spec, lines), left, eta_min))
    return out


def published_progress(studies: Mapping[str, optuna.Study]) -> tuple[int, int]:
    """How many published settings the studies hold, and how many of them are still to run. A
    re-queued attempt is the same setting again: lineages are counted, not trials."""
    published = [
        lin for s in studies.values() for lin in lineages(s.get_trials(deepcopy=False)) if lin.source == "published"
    ]
    return len(published), sum(lin.ended == "waiting" for lin in published)
