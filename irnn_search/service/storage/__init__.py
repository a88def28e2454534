"""Optuna's storage, made fit for a pool of workers on one PostgreSQL server.

- **Few connections.** Each worker process holds at most 3 connections to Optuna's database (main
  thread, Optuna's heartbeat thread, our janitor thread share one small pool: ``pool_size=1``,
  ``max_overflow=2``), plus at most 2 to ours; 16 workers stay below PostgreSQL's default
  ``max_connections`` of 100. Connections are pre-pinged and recycled, so a restarted server is
  reconnected to on the next use. Workers are spawned, never forked, so no connection is shared
  between processes.
- **Riding out a restart.** Every storage call that fails because the connection was lost (the
  server restarting, a network blip) is retried with backoff for ``retry_s`` seconds (default 120,
  ``IRNN_SEARCH_DB_RETRY_S``), with one warning per outage. Without this, Optuna's heartbeat
  thread dies on the first error and a healthy trial would later be declared stale. Reads,
  heartbeats and upserts (attrs, params, intermediate values) are simply repeated; the writes that
  are not safe to repeat (creating or deleting a study, creating a trial, claiming one, finishing
  one) are read back first, since the connection may have been lost after their commit
  (``ResilientRDBStorage._write_once``).
- **Heartbeats.** A trial's worker records a heartbeat every ``heartbeat_s`` seconds; a RUNNING trial
  whose heartbeat is older than ``grace_s`` is failed by whichever worker looks first (the janitor
  thread of every worker looks every ``heartbeat_s``) and ``on_stale`` re-queues it.
- **No false deaths after an outage.** While the server is down nobody's heartbeat is written, so
  when it returns every running trial looks stale. A worker therefore declares no trial stale until
  one grace period (plus a heartbeat) after its own storage became reachable again, by which time
  every live worker has beaten; and it never declares stale a trial it is itself heartbeating.

SQLite (the embedded default) is local and has no restarts: it gets no retries and no pool limits.

This package and ``irnn_search.db`` are the only ones that import SQLAlchemy (an import-linter
contract); nothing here changes Optuna or SQLAlchemy when imported: the storage classes are
subclasses, and what must be registered globally is registered when a storage is opened.

- ``connect``: ``open_storage`` (the one place a storage is chosen and built), ``check_reachable``,
  ``launch_lock``;
- ``heartbeat``: ``HeartbeatRDBStorage`` (stale trials that never beat; atomic state changes on SQLite);
- ``resilient``: ``ResilientRDBStorage`` (retries through an outage, read-backs instead of repeats);
- ``readback``: how each unsafe write is recognised in the database after a lost connection;
- ``lost``: telling a lost connection from other database errors;
- ``groups``: a study's trials summed up in one aggregate query (budgets, status).
"""

from irnn_search.service.storage.connect import RETRY_S, StaleCallback, check_reachable, launch_lock, open_storage
from irnn_search.service.storage.groups import DEVICE_S, PACK_SLOTS, TrialGroup, trial_groups
from irnn_search.service.storage.heartbeat import HeartbeatRDBStorage, mark_released
from irnn_search.service.storage.lost import connection_lost
from irnn_search.service.storage.resilient import ResilientRDBStorage

__all__ = [
    "DEVICE_S",
    "PACK_SLOTS",
    "RETRY_S",
    "HeartbeatRDBStorage",
    "ResilientRDBStorage",
    "StaleCallback",
    "TrialGroup",
    "check_reachable",
    "connection_lost",
    "launch_lock",
    "mark_released",
    "open_storage",
    "trial_groups",
]
