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

from irnn_search.tracking.names import (
    OUTCOME_STATUS,
    TrackingError,
    default_artifact_root,
    outcome_status,
    worker_http_defaults,
)
from irnn_search.tracking.tracker import Tracker

__all__ = [
    "OUTCOME_STATUS",
    "Tracker",
    "TrackingError",
    "default_artifact_root",
    "outcome_status",
    "worker_http_defaults",
]
