"""MLflow tracking: one experiment per task, one parent run per study, one child run per trial.

Every call names its run explicitly through ``MlflowClient`` (never the fluent ``mlflow.start_run``
global state), so any number of worker processes can log to the same store. This is the only module
that imports mlflow; the training loop reports through plain callbacks that the service wires here.

Layout in MLflow:

- experiment ``irnn-search/<task>``; for a store with a local artifact root its artifacts live in
  ``<artifact_root>/<task>`` (with a SQLite store and no root: ``mlartifacts/`` beside the database);
- parent run ``<study_name>`` tagged ``irnn.role = "study"``, with the resolved spec as ``spec.json``;
- child run ``<model>-trial-<n>`` tagged ``mlflow.parentRunId``, ``irnn.role = "trial"``, with the
  trial's hyperparameters as params, per-interval metrics with ``step=`` and the artifacts
  ``config.json``, plots at the root and checkpoints under ``checkpoints/``.

Outcome -> MLflow status (``OUTCOME_STATUS``); every ended trial also gets the tag ``irnn.outcome``:

====================================  ===========  ====================================================
outcome                               status       why
====================================  ===========  ====================================================
``complete`` / ``completed``          FINISHED
``stopped``                           FINISHED     the trial's report hook stopped it on purpose
``pruned``                            FINISHED     pruning is the search working, not a failure
``diverged``                          FINISHED     divergence is a normal outcome (pruned in Optuna)
``failed``                            FAILED       an error in the trial
``interrupted`` / ``killed``          KILLED       stopped from outside; a later attempt may resume it
``lost``                              KILLED       its worker died (no heartbeat); a later attempt resumes it
====================================  ===========  ====================================================

Outages: ``log_metrics``, ``set_outcome``, ``log_artifacts``, ``end_run`` and ``finish_parent`` never
raise because the tracking server is unreachable. Their operations wait, in order, in a small
in-memory buffer that the next such call (or ``flush()``) sends; one warning is logged per outage,
not per call. Runs are created synchronously (``experiment``, ``parent_run``, ``trial_run`` raise
``TrackingError``), because their callers need the id. A buffer still holding operations when the
process exits is lost: call ``flush()`` before exiting.

MLflow's own HTTP retries are long by default (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``=7 with
exponential backoff, ``MLFLOW_HTTP_REQUEST_TIMEOUT``=120 s), so one call may block for minutes
during an outage; while failing, the tracker therefore retries at most every ``retry_interval_s``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from irnn_search.masking import mask_secrets

log = logging.getLogger(__name__)

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
_END_STATUSES: Final = ("FINISHED", "FAILED", "KILLED")

# MLflow limits: 1000 metrics per log_batch; tag values up to 8000 characters.
_MAX_METRICS_PER_BATCH: Final = 1000
_MAX_TAG_CHARS: Final = 8000
_TASK_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# The userinfo of a URL, greedy up to the last "@" of the token: over-masking a path that contains
# "@" is harmless, while a password containing an unescaped "@" must not leak its tail.


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


def _is_transient(exc: BaseException) -> bool:
    """True for an outage worth retrying (unreachable, timeout, 5xx, locked database)."""
    if isinstance(exc, MlflowException):
        # Connection failures arrive as INTERNAL_ERROR (500), a locked SQLite as 503; 4xx are
        # permanent (bad value, deleted run), so retrying them would only grow the buffer.
        return exc.get_http_status_code() >= 500
    return isinstance(exc, OSError)  # requests' exceptions derive from OSError


def _quote(value: str) -> str:
    """A string literal for an MLflow filter expression."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for a value containing both quote characters: {value!r}")


def _stringify(value: Any) -> str:
    return "none" if value is None else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


# The buffered operations, sent in order by ``Tracker._drain``.
@dataclass
class _Batch:
    run_id: str
    metrics: list[Metric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Upload:
    run_id: str
    local_path: Path
    artifact_path: str | None


@dataclass
class _Text:
    run_id: str
    text: str
    artifact_file: str


@dataclass
class _End:
    run_id: str
    status: str
    end_time: int


_Op = _Batch | _Upload | _Text | _End


class Tracker:
    """MLflow tracking for the search, safe to use from many processes at once.

    Args:
        tracking_uri: ``sqlite:///path/mlflow.db`` (embedded, no server), ``http(s)://host:port``
            (a tracking server) or a database URL. It may contain a password: messages and errors
            only ever show it masked (``mask_secrets``).
        artifact_root: folder or URI under which each experiment gets ``<task>/`` for its
            artifacts. None: beside the database for a SQLite store, otherwise the store's default
            (a server's ``--default-artifact-root``). Only used when an experiment is created.
        retry_interval_s: while the store is unreachable, buffered operations are retried at most
            this often (``flush()`` always retries), so that training does not wait on MLflow's
            own HTTP retries at every report.
        max_buffered_metrics: metric values kept during an outage; beyond it the oldest are
            dropped (and counted in the log line when the store is back).
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | None = None,
        *,
        retry_interval_s: float = 10.0,
        max_buffered_metrics: int = 10_000,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root if artifact_root is not None else default_artifact_root(tracking_uri)
        self.retry_interval_s = retry_interval_s
        self.max_buffered_metrics = max_buffered_metrics
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiments: dict[str, str] = {}
        self._run_tags: dict[str, dict[str, str]] = {}
        self._nonfinite: dict[str, set[str]] = {}
        self._lock = threading.RLock()
        self._buffer: deque[_Op] = deque()
        self._failing = False
        self._retry_at = 0.0
        self._dropped = 0

    def __repr__(self) -> str:
        return f"Tracker({mask_secrets(self.tracking_uri)!r})"

    def _error(self, what: str, exc: BaseException) -> TrackingError:
        return TrackingError(f"MLflow at {mask_secrets(self.tracking_uri)}: {what} failed: {mask_secrets(str(exc))}")

    def check(self, *, timeout_s: float = 10.0) -> None:
        """Read from the store once, so that a launch learns it is unreachable before it writes to
        any store. One try with ``timeout_s``, not MLflow's minutes of HTTP retries.

        Raises:
            TrackingError: the store cannot be reached or refused the read (names the store).
        """
        from mlflow.store.tracking.rest_store import RestStore
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/experiments/search"
        try:
            # private; should it move, the client's own call below is the same read, with retries
            store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
            if isinstance(store, RestStore):
                response = http_request(
                    store.get_host_creds(),
                    endpoint,
                    "POST",
                    max_retries=0,
                    backoff_factor=0,
                    timeout=timeout_s,
                    json={"max_results": 1},
                )
                verify_rest_response(response, endpoint)
            else:
                self.client.search_experiments(max_results=1)
        except (MlflowException, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = mask_secrets(self.tracking_uri)
            raise TrackingError(f"cannot reach MLflow at {where}: {mask_secrets(first)}") from None

    # ----------------------------------------------------------------- experiments and runs

    def experiment(self, task: str) -> str:
        """The id of the task's experiment ``irnn-search/<task>``, created on first use.

        Safe when several processes race to create it: the loser of the race finds the winner's.

        Raises:
            ValueError: ``task`` is not a plain name (letters, digits, ``_.-``).
            TrackingError: the store is unreachable, or the experiment exists but was deleted
                (restore it with ``mlflow experiments restore`` or delete it permanently).
        """
        if not _TASK_NAME.fullmatch(task):
            raise ValueError(f"task name {task!r} must consist of letters, digits, '_', '.' and '-'")
        if task in self._experiments:
            return self._experiments[task]
        name = EXPERIMENT_PREFIX + task
        try:
            experiment_id = self._find_experiment(name)
            if experiment_id is None:
                try:
                    experiment_id = self.client.create_experiment(name, artifact_location=self._artifact_location(task))
                except MlflowException as exc:
                    # Another process created it between our lookup and our create.
                    experiment_id = self._find_experiment(name)
                    if experiment_id is None:
                        raise exc from None
                else:
                    log.info("created MLflow experiment %s (id %s)", name, experiment_id)
        except (MlflowException, OSError) as exc:
            raise self._error(f"opening experiment {name!r}", exc) from None
        self._experiments[task] = experiment_id
        return experiment_id

    def _find_experiment(self, name: str) -> str | None:
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return None
        if found.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {name!r} (id {found.experiment_id}) is deleted: restore it "
                "(`mlflow experiments restore`) or delete it permanently before tracking this task again"
            )
        return str(found.experiment_id)

    def _artifact_location(self, task: str) -> str | None:
        root = self.artifact_root
        if root is None:
            return None
        if "://" in root or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", root):
            return f"{root.rstrip('/')}/{task}"
        return (Path(root).expanduser().resolve() / task).as_uri()

    def parent_run(
        self,
        *,
        experiment_id: str,
        study_name: str,
        task: str,
        model: str,
        family: str,
        spec: Mapping[str, Any],
        launch_id: int | None,
    ) -> str:
        """The parent run of one study (one Optuna study per (task, model)), created on first use.

        Idempotent: a later call finds the run by its tags ``irnn.study`` and ``irnn.role`` and
        returns the same id (``spec`` and ``launch_id`` are recorded only when it is created). If
        that run had been ended, it is set back to RUNNING, since the caller has work for the
        study; end it with ``finish_parent``. Two processes creating it at the same moment both
        end up with the older run; the newer one is deleted by its creator.

        Raises:
            TrackingError: the store is unreachable or refused the run.
        """
        try:
            existing = self._find_parents(experiment_id, study_name)
            if existing:
                run_id = existing[0].info.run_id
                if existing[0].info.status != "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                    log.info("reopened MLflow parent run %s of study %s", run_id, study_name)
                return run_id
            tags = {
                TAG_STUDY: study_name,
                TAG_ROLE: ROLE_STUDY,
                TAG_TASK: task,
                TAG_MODEL: model,
                TAG_FAMILY: family,
            }
            if launch_id is not None:
                tags[TAG_LAUNCH] = str(launch_id)
            run = self.client.create_run(experiment_id, tags=tags, run_name=study_name)
            run_id = run.info.run_id
            winner = self._find_parents(experiment_id, study_name)[0].info.run_id
            if winner != run_id:
                self.client.delete_run(run_id)
                return winner
            self.client.log_text(run_id, json.dumps(spec, indent=2, sort_keys=True, default=str), "spec.json")
        except (MlflowException, OSError) as exc:
            raise self._error(f"opening the parent run of study {study_name!r}", exc) from None
        log.info("created MLflow parent run %s for study %s", run_id, study_name)
        return run_id

    def _find_parents(self, experiment_id: str, study_name: str) -> list[Any]:
        """Parent runs of the study, oldest first (ties broken by run id, so every process agrees)."""
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_STUDY}` = {_quote(study_name)} AND tags.`{TAG_ROLE}` = '{ROLE_STUDY}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=100,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def trial_run(
        self,
        *,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        trial_number: int,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        resumed_from: str | None = None,
    ) -> str:
        """A new child run for one attempt of a trial, named ``<model>-trial-<n>``.

        Each call creates a new run: a retried or resumed attempt is a run of its own, linked to
        the earlier attempt's run by ``resumed_from`` (tag ``irnn.resumed_from``). Params are
        logged once, values as strings (None as ``"none"``). The run copies the parent's task,
        model and family tags; ``tags`` adds more (values stringified).

        Raises:
            TrackingError: the store is unreachable or refused the run. A run created whose
                params were then refused is ended as FAILED first, so it is not left RUNNING.
        """
        try:
            parent_tags = self._tags_of(parent_run_id)
            model = parent_tags.get(TAG_MODEL, study_name)
            run_tags = {k: v for k, v in parent_tags.items() if k in (TAG_TASK, TAG_MODEL, TAG_FAMILY, TAG_LAUNCH)}
            run_tags.update({k: _stringify(v) for k, v in (tags or {}).items()})
            run_tags.update(
                {
                    MLFLOW_PARENT_RUN_ID: parent_run_id,
                    TAG_STUDY: study_name,
                    TAG_TRIAL: str(trial_number),
                    TAG_ROLE: ROLE_TRIAL,
                }
            )
            if resumed_from is not None:
                run_tags[TAG_RESUMED_FROM] = resumed_from
            run = self.client.create_run(experiment_id, tags=run_tags, run_name=f"{model}-trial-{trial_number}")
        except (MlflowException, OSError) as exc:
            raise self._error(f"creating the run of trial {trial_number} of study {study_name!r}", exc) from None
        run_id = run.info.run_id
        try:
            param_list = [Param(str(k), _stringify(v)) for k, v in params.items()]
            for start in range(0, len(param_list), 100):  # MLflow accepts 100 params per batch
                self.client.log_batch(run_id, params=param_list[start : start + 100], synchronous=True)
        except (MlflowException, OSError) as exc:
            error = self._error(f"logging the params of trial {trial_number} of study {study_name!r}", exc)
            try:
                self.client.set_tag(run_id, TAG_REASON, str(error)[:_MAX_TAG_CHARS])
                self.client.set_terminated(run_id, "FAILED")
            except (MlflowException, OSError):
                pass  # sweep() ends it later; the error below is the one to report
            raise error from None
        return run_id

    def _tags_of(self, run_id: str) -> dict[str, str]:
        if run_id not in self._run_tags:
            self._run_tags[run_id] = dict(self.client.get_run(run_id).data.tags)
        return self._run_tags[run_id]

    # ----------------------------------------------------------------- buffered logging

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """Log metrics at ``step`` (one ``log_batch`` call); never raises because MLflow is down.

        Non-finite values (NaN, ±inf) are not logged: MLflow would store them, but they break
        plots and min/max summaries. Their names are instead listed, comma-separated, in the run's
        tag ``irnn.nonfinite_metrics`` (the union over every call of this tracker).

        If the store is unreachable the values wait in the buffer and go with a later call
        (``retry_interval_s``) or ``flush()``; one warning is logged per outage. A value MLflow
        refuses (e.g. an invalid key) is dropped with a warning.

        Raises:
            TypeError, ValueError: a value is not a number.
        """
        timestamp = _now_ms()
        finite: list[Metric] = []
        skipped: list[str] = []
        for key, value in metrics.items():
            number = float(value)
            if math.isfinite(number):
                finite.append(Metric(str(key), number, timestamp, int(step)))
            else:
                skipped.append(str(key))
        tags: dict[str, str] = {}
        if skipped:
            names = self._nonfinite.setdefault(run_id, set())
            if not names.issuperset(skipped):
                names.update(skipped)
                tags[TAG_NONFINITE] = ",".join(sorted(names))
        if finite or tags:
            self._submit(_Batch(run_id, finite, tags))

    def set_outcome(self, run_id: str, outcome: str, reason: str | None = None) -> None:
        """Tag the run with ``irnn.outcome`` (one of ``OUTCOME_STATUS``) and ``irnn.reason``.

        The reason is masked (``mask_secrets``) and cut to MLflow's 8000-character tag limit.
        Buffered like ``log_metrics`` when the store is unreachable.
        """
        outcome_status(outcome)  # validates
        tags = {TAG_OUTCOME: outcome}
        if reason is not None:
            tags[TAG_REASON] = mask_secrets(reason)[:_MAX_TAG_CHARS]
        self._submit(_Batch(run_id, [], tags))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags on a run; values are stringified, masked and cut to MLflow's
        tag limit. Buffered like ``log_metrics``. Tags, unlike params, may change: a study's
        parent run keeps its current best parameters here (``best.<name>``)."""
        clean = {str(k): mask_secrets(_stringify(v))[:_MAX_TAG_CHARS] for k, v in tags.items()}
        self._submit(_Batch(run_id, [], clean))

    def log_artifacts(
        self,
        run_id: str,
        *,
        config: Mapping[str, Any] | None = None,
        files: Iterable[str | Path] = (),
        checkpoint: str | Path | None = None,
    ) -> None:
        """Upload the resolved config as ``config.json``, ``files`` at the root (e.g. the
        learning-curve PNG) and ``checkpoint`` under ``checkpoints/``.

        Buffered when the store is unreachable: keep the files in place until ``flush()`` has
        sent them; a buffered file that has disappeared by then is skipped with a warning.

        Raises:
            FileNotFoundError: a file does not exist (checked before anything is uploaded).
        """
        uploads = [_Upload(run_id, Path(f), None) for f in files]
        if checkpoint is not None:
            uploads.append(_Upload(run_id, Path(checkpoint), "checkpoints"))
        for upload in uploads:
            if not upload.local_path.is_file():
                raise FileNotFoundError(f"artifact {upload.local_path} does not exist")
        ops: list[_Op] = []
        if config is not None:
            ops.append(_Text(run_id, json.dumps(config, indent=2, sort_keys=True, default=str), "config.json"))
        ops.extend(uploads)
        self._submit(*ops)

    def log_checkpoint(self, run_id: str, path: str | Path, artifact_dir: str) -> None:
        """Upload a resumable checkpoint (``last.pt``) to ``artifact_dir`` of the run, replacing the
        previous one, so a worker on another machine can resume the trial (``fetch_checkpoint``).

        Buffered when the store is unreachable; while it is, one pending upload per file is kept
        (the file is read when it is sent, so the newest checkpoint goes).
        """
        upload = _Upload(run_id, Path(path), artifact_dir)
        with self._lock:
            if upload in self._buffer:
                return
        self._submit(upload)

    def fetch_checkpoint(self, run_id: str, artifact_dir: str, dest: str | Path, *, max_hops: int = 20) -> str | None:
        """Download ``artifact_dir/last.pt`` of the run into ``dest`` (a folder); when that attempt
        never uploaded one, follow ``irnn.resumed_from`` to earlier attempts. Returns the run id the
        checkpoint came from, or None when no attempt has one or the store is unreachable."""
        current: str | None = run_id
        for _ in range(max_hops):
            if current is None:
                return None
            try:
                names = {Path(f.path).name for f in self.client.list_artifacts(current, artifact_dir)}
                if "last.pt" in names:
                    Path(dest).mkdir(parents=True, exist_ok=True)
                    local = self.client.download_artifacts(current, f"{artifact_dir}/last.pt", str(dest))
                    if Path(local) != Path(dest) / "last.pt":
                        Path(local).replace(Path(dest) / "last.pt")
                    return current
                current = self._tags_of(current).get(TAG_RESUMED_FROM)
            except (MlflowException, OSError) as exc:
                log.warning(
                    "could not fetch the checkpoint of MLflow run %s: %s",
                    current,
                    mask_secrets(str(exc)).splitlines()[0],
                )
                return None
        return None

    def end_run(self, run_id: str, outcome: str, reason: str | None = None) -> None:
        """End a trial's run with the status its outcome maps to (``OUTCOME_STATUS``), tagging
        ``irnn.outcome`` (and ``irnn.reason`` if given). Buffered metrics are sent first.

        Raises:
            ValueError: an unknown outcome (the message lists the valid ones).
        """
        status = outcome_status(outcome)
        self.set_outcome(run_id, outcome, reason)
        self._submit(_End(run_id, status, _now_ms()))

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        """End a study's parent run once the study has no more work.

        Children are not touched: call ``sweep`` first if no worker can still be running a trial.

        Raises:
            ValueError: ``status`` is not FINISHED, FAILED or KILLED.
        """
        if status not in _END_STATUSES:
            raise ValueError(f"unknown end status {status!r}; valid: {', '.join(_END_STATUSES)}")
        self._submit(_End(run_id, status, _now_ms()))

    def sweep(self, parent_run_id: str, *, keep: Collection[str] = ()) -> list[str]:
        """End every child run of the parent still RUNNING as KILLED and return their ids.

        For trials whose process died: the run would otherwise stay RUNNING forever. Runs that a
        live worker is still writing must be listed in ``keep`` (or the sweep run only when no
        worker is alive). Each swept run is tagged ``irnn.outcome = "killed"`` with a reason.

        Raises:
            TrackingError: the store is unreachable (the sweep is simply done again later).
        """
        self.flush()
        swept: list[str] = []
        try:
            experiment_id = self.client.get_run(parent_run_id).info.experiment_id
            filter_string = f"tags.`{MLFLOW_PARENT_RUN_ID}` = {_quote(parent_run_id)} AND attributes.status = 'RUNNING'"
            page_token: str | None = None
            stale: list[str] = []
            while True:
                page = self.client.search_runs(
                    [experiment_id], filter_string=filter_string, max_results=1000, page_token=page_token
                )
                stale.extend(r.info.run_id for r in page if r.info.run_id not in keep)
                page_token = page.token
                if not page_token:
                    break
            for run_id in stale:
                reason = "swept: still RUNNING after its worker stopped"
                self.client.log_batch(
                    run_id, tags=[RunTag(TAG_OUTCOME, "killed"), RunTag(TAG_REASON, reason)], synchronous=True
                )
                self.client.set_terminated(run_id, "KILLED")
                swept.append(run_id)
        except (MlflowException, OSError) as exc:
            raise self._error(f"sweeping the children of run {parent_run_id}", exc) from None
        if swept:
            log.warning("ended %d stale MLflow run(s) under parent %s as KILLED", len(swept), parent_run_id)
        return swept

    def flush(self) -> bool:
        """Send every buffered operation now; True when the buffer is empty afterwards."""
        with self._lock:
            return self._drain()

    @property
    def buffered(self) -> int:
        """Number of operations waiting in the buffer (a metrics call is one operation)."""
        return len(self._buffer)

    def _submit(self, *ops: _Op) -> None:
        with self._lock:
            for op in ops:
                last = self._buffer[-1] if self._buffer else None
                # While failing, consecutive metric batches of one run merge, so recovery costs few calls.
                if (
                    isinstance(op, _Batch)
                    and isinstance(last, _Batch)
                    and last.run_id == op.run_id
                    and len(last.metrics) + len(op.metrics) <= _MAX_METRICS_PER_BATCH
                ):
                    last.metrics.extend(op.metrics)
                    last.tags.update(op.tags)
                else:
                    self._buffer.append(op)
            self._trim()
            if not self._failing or time.monotonic() >= self._retry_at:
                self._drain()

    def _trim(self) -> None:
        total = sum(len(op.metrics) for op in self._buffer if isinstance(op, _Batch))
        while total > self.max_buffered_metrics:
            oldest = next(op for op in self._buffer if isinstance(op, _Batch) and op.metrics)
            dropped = min(len(oldest.metrics), total - self.max_buffered_metrics)
            del oldest.metrics[:dropped]  # the oldest values go first; tags and run ends are kept
            self._dropped += dropped
            total -= dropped

    def _drain(self) -> bool:
        sent = 0
        while self._buffer:
            op = self._buffer[0]
            try:
                self._send(op)
            except (MlflowException, OSError) as exc:
                if _is_transient(exc) and not isinstance(exc, FileNotFoundError):
                    if not self._failing:
                        log.warning(
                            "MLflow at %s is unreachable (%s); buffering tracking data in memory and "
                            "retrying every %.0f s",
                            mask_secrets(self.tracking_uri),
                            mask_secrets(str(exc)),
                            self.retry_interval_s,
                        )
                    self._failing = True
                    self._retry_at = time.monotonic() + self.retry_interval_s
                    return False
                log.warning("MLflow refused %s; dropped it: %s", _describe(op), mask_secrets(str(exc)))
            else:
                sent += 1
            self._buffer.popleft()
        if self._failing:
            log.warning(
                "MLflow at %s is reachable again: sent %d buffered operation(s)%s",
                mask_secrets(self.tracking_uri),
                sent,
                f", {self._dropped} metric value(s) had been dropped (buffer full)" if self._dropped else "",
            )
            self._failing = False
            self._dropped = 0
        return True

    def _send(self, op: _Op) -> None:
        if isinstance(op, _Batch):
            if op.metrics or op.tags:
                self.client.log_batch(
                    op.run_id,
                    metrics=op.metrics,
                    tags=[RunTag(k, v) for k, v in op.tags.items()],
                    synchronous=True,
                )
        elif isinstance(op, _Upload):
            self.client.log_artifact(op.run_id, str(op.local_path), op.artifact_path)
        elif isinstance(op, _Text):
            self.client.log_text(op.run_id, op.text, op.artifact_file)
        else:
            self.client.set_terminated(op.run_id, op.status, end_time=op.end_time)


def _describe(op: _Op) -> str:
    if isinstance(op, _Batch):
        return f"{len(op.metrics)} metric value(s) and tags {sorted(op.tags)} for run {op.run_id}"
    if isinstance(op, _Upload):
        return f"artifact {op.local_path} for run {op.run_id}"
    if isinstance(op, _Text):
        return f"artifact {op.artifact_file} for run {op.run_id}"
    return f"status {op.status} for run {op.run_id}"
