"""The studies of a spec: one Optuna study per (spec, model), registered and read back.

- ``open_studies`` creates or loads the studies of a spec (idempotent), stores the resolved spec on
  each study and enqueues the published settings first.
- ``load_studies`` reads back the studies launched on a storage; every worker rebuilds its
  objective from the spec stored in the study (``stored_spec``), never from a local file.
- ``close_tracking`` ends, after the last worker of a launch, the MLflow runs left open.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from irnn_search.search.literature import enqueue_published
from irnn_search.search.space import build_pruner, build_sampler
from irnn_search.search.spec import SpecError, StudySpec, valid_name
from irnn_search.service.budget import budget_left, usage
from irnn_search.service.recovery import MAX_LOST, requeue_released
from irnn_search.service.storage import RETRY_S, StaleCallback, launch_lock, open_storage

if TYPE_CHECKING:
    from irnn_search.tracking import Tracker

log = logging.getLogger(__name__)


class SearchError(RuntimeError):
    """The search cannot proceed (e.g. a study exists with another spec)."""


def missing_store(storage_url: str) -> str | None:
    """Why the studies of ``storage_url`` cannot be read (None: they may be). An embedded store
    whose file does not exist is missing: opening it would create an empty one, not read a search."""
    if storage_url.startswith("sqlite:///"):
        path = storage_url.removeprefix("sqlite:///")
        if not os.path.isfile(path):
            return f"no study store at {path}"
    return None


def study_name(spec_name: str, model: str) -> str:
    return f"{spec_name}.{model}"


def open_studies(
    spec: StudySpec, storage_url: str, tracker: Tracker | None = None, *, max_lost: int = MAX_LOST
) -> dict[str, optuna.Study]:
    """Create or load the studies of ``spec`` and enqueue the published settings (idempotent).

    With a ``tracker``, each study gets its MLflow parent run (one experiment per task); the ids
    are stored on the study so every worker logs its trials under the same parent.

    Launches of one spec are serialized (``launch_lock``), so two at the same instant enqueue
    the published settings once.

    Raises:
        SearchError: a study of that name was launched with a different spec (its hash differs).
    """
    with launch_lock(storage_url, spec.name):
        return _open_studies(spec, storage_url, tracker, max_lost)


def _open_studies(spec: StudySpec, storage_url: str, tracker: Tracker | None, max_lost: int) -> dict[str, optuna.Study]:
    storage = open_storage(storage_url, heartbeat_s=None)
    studies = {}
    for key, model in spec.models.items():
        name = study_name(spec.name, key)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction=spec.direction,
            sampler=build_sampler(spec),
            pruner=build_pruner(spec),
            load_if_exists=True,
        )
        stored = study.user_attrs.get("spec_hash")
        if stored is None:
            study.set_user_attr("spec", spec.to_dict())
            study.set_user_attr("spec_hash", spec.spec_hash())
            study.set_user_attr("model", key)
            study.set_user_attr("family", model.family)
            study.set_user_attr("task", spec.task)
            study.set_user_attr("launched_at", time.time())
        elif stored != spec.spec_hash() and _only_budget_differs(study.user_attrs["spec"], spec):
            # Like n_trials in Optuna: a study may be given more (or less) budget and resumed.
            old = StudySpec.from_dict(study.user_attrs["spec"]).model(key).budget
            study.set_user_attr("earlier_spec_hashes", [*study.user_attrs.get("earlier_spec_hashes", []), stored])
            study.set_user_attr("spec", spec.to_dict())
            study.set_user_attr("spec_hash", spec.spec_hash())
            log.warning("study %s: budget changed from %s to %s", name, old.to_dict(), model.budget.to_dict())
        elif stored != spec.spec_hash():
            raise SearchError(
                f"study {name!r} was launched from a different version of spec {spec.name!r} "
                f"(stored hash {stored[:12]}, now {spec.spec_hash()[:12]}); give the changed spec a new "
                "[study] name, or delete the old studies to start over"
            )
        if study.metric_names != [spec.objective]:
            _name_objective(study, spec.objective)
        enqueue_published(study, spec, key)
        requeue_released(study, max_lost=max_lost)
        if tracker is not None:
            experiment_id = tracker.experiment(spec.task)
            parent = tracker.parent_run(
                experiment_id=experiment_id,
                study_name=name,
                task=spec.task,
                model=key,
                family=model.family,
                spec=spec.to_dict(),
                launch_id=None,
            )
            study.set_user_attr("mlflow_experiment_id", experiment_id)
            study.set_user_attr("mlflow_parent_run_id", parent)
            from irnn_search.service.answer import publish_summary

            publish_summary(study, tracker)
            u = usage(study)
            if not budget_left(study, model) and not (u.running or u.waiting):
                tracker.finish_parent(parent)  # nothing left to do: the parent stays closed
        studies[key] = study
    return studies


def _only_budget_differs(stored: dict[str, Any], spec: StudySpec) -> bool:
    """Whether a stored spec and ``spec`` differ in budgets (and description) only: what a trial
    trains and how it is searched are the same, so the study may go on under the new budget."""

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        d = {k: v for k, v in d.items() if k != "description"}
        d["models"] = {k: {f: v for f, v in m.items() if f != "budget"} for k, m in d.get("models", {}).items()}
        return d

    try:
        return strip(StudySpec.from_dict(stored).to_dict()) == strip(spec.to_dict())
    except Exception:  # a stored spec this version cannot read differs in more than budgets
        return False


def _name_objective(study: optuna.Study, name: str) -> None:
    """Name the objective (optuna-dashboard shows "val_mse", not "Objective 0")."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([name])


def close_tracking(studies: Iterable[optuna.Study], tracker: Tracker) -> None:
    """After the last worker of a launch: end orphaned trial runs and the finished studies' parents."""
    for study in studies:
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent is None:
            continue
        running = {t.user_attrs.get("mlflow_run_id") for t in study.get_trials(deepcopy=False)
                   if t.state == TrialState.RUNNING}  # fmt: skip
        tracker.sweep(parent, keep={r for r in running if r})
        if not budget_left(study, stored_spec(study).model(study.user_attrs["model"])) and not running:
            tracker.finish_parent(parent)
    tracker.flush()


def stored_spec(study: optuna.Study) -> StudySpec:
    """The spec a study was launched with (what every worker rebuilds its objective from)."""
    data = study.user_attrs.get("spec")
    if data is None:
        raise SearchError(f"study {study.study_name!r} was not launched by irnn-search (it has no stored spec)")
    return StudySpec.from_dict(data)


def load_studies(
    storage_url: str,
    names: Iterable[str] | None = None,
    *,
    stream: int = 0,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    on_stale: StaleCallback | None = None,
    retry_s: float = RETRY_S,
) -> dict[str, optuna.Study]:
    """Open studies launched by irnn-search on a storage (all, or the named ones), keyed by name.

    Workers pass ``heartbeat_s`` (their trials then keep a heartbeat, and a trial silent for
    ``grace_s`` is failed and handed to ``on_stale``, normally ``Janitor.on_stale``); readers
    (status, report) leave it None.
    """
    storage = open_storage(storage_url, heartbeat_s=heartbeat_s, grace_s=grace_s, on_stale=on_stale, retry_s=retry_s)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    wanted = set(names) if names else None
    out = {}
    refused: dict[str, str] = {}
    for s in summaries:
        if wanted is not None and s.study_name not in wanted:
            continue
        if "spec_hash" not in s.user_attrs:
            continue
        # Names read back from shared storage name folders (checkpoints): checked again here.
        try:
            spec = StudySpec.from_dict(s.user_attrs["spec"])
        except SpecError as exc:
            refused[s.study_name] = str(exc)
            continue
        if s.study_name != study_name(spec.name, s.user_attrs.get("model", "")) or not valid_name(s.study_name):
            refused[s.study_name] = (
                f"its name is not <spec>.<model> of its stored spec ({spec.name!r}, model "
                f"{s.user_attrs.get('model')!r}) with letters, digits, '_', '.', '-' only"
            )
            continue
        out[s.study_name] = optuna.load_study(
            study_name=s.study_name,
            storage=storage,
            sampler=build_sampler(spec, stream=stream),
            pruner=build_pruner(spec),
        )
    for name, why in refused.items():
        log.warning("study %r on the storage is skipped: %s", name, why)
    if wanted is not None and (missing := wanted - set(out)):
        if bad := [n for n in sorted(missing) if n in refused]:
            raise SearchError(f"study {bad[0]!r} on this storage is refused: {refused[bad[0]]}")
        raise SearchError(f"no such study launched on this storage: {', '.join(sorted(missing))}")
    return out
