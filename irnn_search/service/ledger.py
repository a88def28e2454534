"""The service's view of our experiment database: launches, studies, workers, trial runs.

Every write is best-effort during training: an outage logs one warning (and one line when it ends)
and the trial goes on (Optuna's storage is the source of truth for the search itself). Launch-time writes are not:
a launch that cannot be recorded is refused with a clear error, and nothing is half-written.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from irnn_search.db import repo
from irnn_search.db.migrate import DatabaseError, current, head, upgrade
from irnn_search.db.session import make_engine, session_scope
from irnn_search.settings import HEARTBEAT_S
from irnn_search.version import code_version

log = logging.getLogger(__name__)
T = TypeVar("T")


class Ledger:
    def __init__(self, url: str, *, auto_upgrade: bool = False):
        """Open the database at ``url``; ``auto_upgrade`` migrates it (the embedded default only:
        a shared server is migrated explicitly with ``irnn-search db upgrade``).

        Raises:
            DatabaseError: unreachable, or not at the code's revision (the message says what to run).
        """
        self.url = url
        if auto_upgrade:
            upgrade(url)
        elif current(url) != head():
            raise DatabaseError(
                f"the experiment database is at revision {current(url) or 'none'}, the code needs {head()}: "
                "run `irnn-search db upgrade`"
            )
        self.engine = make_engine(url)
        #: writes skipped since the database became unavailable (None: it is available)
        self._skipped: int | None = None
        #: the trial this worker's heartbeat names (study, number)
        self._current: tuple[str | None, int | None] = (None, None)

    def _quiet(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run one bookkeeping write; a failure is logged once per outage, never raised.

        One warning when the database goes away, one line when it is back (with the number of writes
        that were skipped meanwhile), so that a second outage later in a long run is seen too.
        """
        try:
            result = fn()
        except Exception as exc:  # never let bookkeeping stop a trial
            if self._skipped is None:
                log.warning("experiment database unavailable (%s): %s; training continues", what, exc)
                self._skipped = 0
            self._skipped += 1
            return None
        if self._skipped is not None:
            log.warning("experiment database reachable again; %d writes were skipped while it was not", self._skipped)
            self._skipped = None
        return result

    # -- launch ---------------------------------------------------------------------------------
    def record_launch(self, spec: Any, studies: dict[str, Any]) -> int:
        """Record a launch and its studies (idempotent per study name)."""
        with session_scope(self.engine) as s:
            launch_id = repo.record_launch(
                s,
                spec_name=spec.name,
                spec=spec.to_dict(),
                spec_hash=spec.spec_hash(),
                package_version=code_version(),
            )
            for key, study in studies.items():
                repo.ensure_study(
                    s,
                    launch_id=launch_id,
                    study_name=study.study_name,
                    task=spec.task,
                    model=key,
                    family=spec.model(key).family,
                    spec_hash=spec.spec_hash(),
                    earlier_hashes=study.user_attrs.get("earlier_spec_hashes", ()),
                )
                if "mlflow_experiment_id" in study.user_attrs:
                    repo.set_mlflow_ids(
                        s,
                        study_name=study.study_name,
                        experiment_id=study.user_attrs["mlflow_experiment_id"],
                        parent_run_id=study.user_attrs.get("mlflow_parent_run_id"),
                    )
        return launch_id

    # -- workers --------------------------------------------------------------------------------
    def start_worker(self, device: str) -> int | None:
        def go() -> int:
            with session_scope(self.engine) as s:
                return repo.register_worker(s, host=socket.gethostname(), pid=os.getpid(), device=device)

        worker_id = self._quiet("register worker", go)
        if worker_id is not None:
            self._stop_beat = threading.Event()
            self._beat = threading.Thread(target=self._heartbeat, args=(worker_id,), daemon=True)
            self._beat.start()
        return worker_id

    def _heartbeat(self, worker_id: int) -> None:
        while not self._stop_beat.wait(HEARTBEAT_S):
            self.beat(worker_id)

    def beat(self, worker_id: int, study_name: str | None = None, trial_number: int | None = None) -> None:
        if study_name is not None:
            self._current = (study_name, trial_number)
        study, number = self._current

        def go() -> None:
            with session_scope(self.engine) as s:
                repo.heartbeat(s, worker_id=worker_id, study_name=study, trial_number=number)

        self._quiet("heartbeat", go)

    def stop_worker(self, worker_id: int | None) -> None:
        if worker_id is None:
            return
        self._stop_beat.set()

        def go() -> None:
            with session_scope(self.engine) as s:
                repo.stop_worker(s, worker_id=worker_id)

        self._quiet("stop worker", go)

    # -- trial runs -----------------------------------------------------------------------------
    def start_trial(
        self,
        *,
        study_name: str,
        trial: Any,
        worker_id: int | None,
        device: str,
        mlflow_run_id: str | None,
        pack_id: str | None = None,
        pack_size: int | None = None,
    ) -> int | None:
        def go() -> int:
            with session_scope(self.engine) as s:
                return repo.start_trial_run(
                    s,
                    study_name=study_name,
                    trial_number=trial.number,
                    trial_id=trial._trial_id,
                    worker_id=worker_id,
                    device=device,
                    mlflow_run_id=mlflow_run_id,
                    pack_id=pack_id,
                    pack_size=pack_size,
                )

        return self._quiet("start trial run", go)

    def mark_lost(self, study_name: str, trial_number: int, reason: str) -> None:
        """The trial's worker died (no heartbeat): its open run ends as ``lost``."""

        def go() -> None:
            with session_scope(self.engine) as s:
                repo.mark_lost(s, study_name=study_name, trial_number=trial_number, reason=reason)

        self._quiet("mark lost trial", go)

    def finish_trial(
        self,
        run_id: int | None,
        *,
        outcome: str,
        reason: str,
        value: float | None,
        wall_s: float,
        result: Any | None,
    ) -> None:
        if run_id is None:
            return
        train_s = result.train_time_s if result is not None else None
        steps = result.step if result is not None else None
        rate = result.steps_per_s if result is not None else None

        def go() -> None:
            with session_scope(self.engine) as s:
                repo.finish_trial_run(
                    s,
                    run_id=run_id,
                    outcome=outcome,
                    reason=reason,
                    value=value if value is not None and math.isfinite(value) else None,
                    wall_s=wall_s,
                    train_s=train_s,
                    steps=steps,
                    steps_per_s=rate,
                    resumed_from_step=result.resumed_from if result is not None else None,
                )
                if result is not None and result.best:
                    repo.record_evaluation(s, trial_run_id=run_id, split="val", metrics=result.best)

        self._quiet("finish trial run", go)

    def record_test(self, study_name: str, trial_number: int, metrics: dict[str, float]) -> None:
        """The final test evaluation of a study's best trial, on that trial's run."""

        def go() -> None:
            with session_scope(self.engine) as s:
                for run in repo.trial_runs(s, study_name=study_name):
                    if run.trial_number == trial_number:
                        repo.record_evaluation(s, trial_run_id=run.id, split="test", metrics=metrics)

        self._quiet("record test evaluation", go)

    def workers_alive(self, within_s: float = 3 * HEARTBEAT_S) -> list[Any]:
        with session_scope(self.engine) as s:
            return list(repo.workers_alive(s, within_s=within_s))
