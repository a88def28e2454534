"""``Tracker``: the run topology (one experiment per task, a parent run per study, a child run per
trial attempt, the sweep of runs left RUNNING) and the one object the service logs through; it
hands metrics, tags, run ends and artifacts to the outage buffer (``outbox``) and the artifact
transfers to ``artifacts``."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from irnn_search.masking import mask_secrets
from irnn_search.tracking.artifacts import artifact_ops, fetch_checkpoint
from irnn_search.tracking.names import (
    END_STATUSES,
    EXPERIMENT_PREFIX,
    MAX_TAG_CHARS,
    ROLE_STUDY,
    ROLE_TRIAL,
    TAG_FAMILY,
    TAG_LAUNCH,
    TAG_MODEL,
    TAG_NONFINITE,
    TAG_OUTCOME,
    TAG_REASON,
    TAG_RESUMED_FROM,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TASK,
    TAG_TRIAL,
    TASK_NAME,
    TrackingError,
    default_artifact_root,
    now_ms,
    outcome_status,
    quote,
    stringify,
)
from irnn_search.tracking.outbox import Batch, End, Outbox, Upload, send

log = logging.getLogger(__name__)


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
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiments: dict[str, str] = {}
        self._run_tags: dict[str, dict[str, str]] = {}
        self._nonfinite: dict[str, set[str]] = {}
        # the client is looked up at each send: a caller may replace it
        self._outbox = Outbox(
            lambda op: send(self.client, op),
            where=mask_secrets(tracking_uri),
            retry_interval_s=retry_interval_s,
            max_buffered_metrics=max_buffered_metrics,
        )

    @property
    def retry_interval_s(self) -> float:
        return self._outbox.retry_interval_s

    @property
    def max_buffered_metrics(self) -> int:
        return self._outbox.max_buffered_metrics

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
        if not TASK_NAME.fullmatch(task):
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
            filter_string=f"tags.`{TAG_STUDY}` = {quote(study_name)} AND tags.`{TAG_ROLE}` = '{ROLE_STUDY}'",
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
            run_tags.update({k: stringify(v) for k, v in (tags or {}).items()})
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
            param_list = [Param(str(k), stringify(v)) for k, v in params.items()]
            for start in range(0, len(param_list), 100):  # MLflow accepts 100 params per batch
                self.client.log_batch(run_id, params=param_list[start : start + 100], synchronous=True)
        except (MlflowException, OSError) as exc:
            error = self._error(f"logging the params of trial {trial_number} of study {study_name!r}", exc)
            try:
                self.client.set_tag(run_id, TAG_REASON, str(error)[:MAX_TAG_CHARS])
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
        timestamp = now_ms()
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
            self._outbox.submit(Batch(run_id, finite, tags))

    def set_outcome(self, run_id: str, outcome: str, reason: str | None = None) -> None:
        """Tag the run with ``irnn.outcome`` (one of ``OUTCOME_STATUS``) and ``irnn.reason``.

        The reason is masked (``mask_secrets``) and cut to MLflow's 8000-character tag limit.
        Buffered like ``log_metrics`` when the store is unreachable.
        """
        outcome_status(outcome)  # validates
        tags = {TAG_OUTCOME: outcome}
        if reason is not None:
            tags[TAG_REASON] = mask_secrets(reason)[:MAX_TAG_CHARS]
        self._outbox.submit(Batch(run_id, [], tags))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags on a run; values are stringified, masked and cut to MLflow's
        tag limit. Buffered like ``log_metrics``. Tags, unlike params, may change: a study's
        parent run keeps its current best parameters here (``best.<name>``)."""
        clean = {str(k): mask_secrets(stringify(v))[:MAX_TAG_CHARS] for k, v in tags.items()}
        self._outbox.submit(Batch(run_id, [], clean))

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
        self._outbox.submit(*artifact_ops(run_id, config=config, files=files, checkpoint=checkpoint))

    def log_checkpoint(self, run_id: str, path: str | Path, artifact_dir: str) -> None:
        """Upload a resumable checkpoint (``last.pt``) to ``artifact_dir`` of the run, replacing the
        previous one, so a worker on another machine can resume the trial (``fetch_checkpoint``).

        Buffered when the store is unreachable; while it is, one pending upload per file is kept
        (the file is read when it is sent, so the newest checkpoint goes).
        """
        upload = Upload(run_id, Path(path), artifact_dir)
        if upload not in self._outbox:
            self._outbox.submit(upload)

    def fetch_checkpoint(self, run_id: str, artifact_dir: str, dest: str | Path, *, max_hops: int = 20) -> str | None:
        """Download ``artifact_dir/last.pt`` of the run into ``dest`` (a folder); when that attempt
        never uploaded one, follow ``irnn.resumed_from`` to earlier attempts. Returns the run id the
        checkpoint came from, or None when no attempt has one or the store is unreachable."""
        return fetch_checkpoint(self.client, run_id, artifact_dir, dest, tags_of=self._tags_of, max_hops=max_hops)

    def end_run(self, run_id: str, outcome: str, reason: str | None = None) -> None:
        """End a trial's run with the status its outcome maps to (``OUTCOME_STATUS``), tagging
        ``irnn.outcome`` (and ``irnn.reason`` if given). Buffered metrics are sent first.

        Raises:
            ValueError: an unknown outcome (the message lists the valid ones).
        """
        status = outcome_status(outcome)
        self.set_outcome(run_id, outcome, reason)
        self._outbox.submit(End(run_id, status, now_ms()))

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        """End a study's parent run once the study has no more work.

        Children are not touched: call ``sweep`` first if no worker can still be running a trial.

        Raises:
            ValueError: ``status`` is not FINISHED, FAILED or KILLED.
        """
        if status not in END_STATUSES:
            raise ValueError(f"unknown end status {status!r}; valid: {', '.join(END_STATUSES)}")
        self._outbox.submit(End(run_id, status, now_ms()))

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
            filter_string = f"tags.`{MLFLOW_PARENT_RUN_ID}` = {quote(parent_run_id)} AND attributes.status = 'RUNNING'"
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
        return self._outbox.flush()

    @property
    def buffered(self) -> int:
        """Number of operations waiting in the buffer (a metrics call is one operation)."""
        return len(self._outbox)
