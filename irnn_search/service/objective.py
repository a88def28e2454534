"""The objective of one study and the run of one trial, one at a time.

- ``make_objective``: suggest, train every seed, return the mean best value. A trial reports the
  objective every ``report_every`` steps; the pruner may stop it. A diverging trial is pruned
  with ``outcome = "diverged"`` and its reason on the trial; any other error fails that trial
  with its reason and the worker carries on. NaN is never returned as a value.
- ``run_one``: ask one trial, run the objective on it with heartbeats, tell how it ended.

How a trial ended is read in one place, ``attempt.classify``, here and for packed trials alike.
Checkpoints are written locally at every report and uploaded to the trial's MLflow run
(``checkpoints/seed-<s>/last.pt``); a resumed attempt on another machine downloads the last one,
so no worker's disk is special.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.outcome import Outcome
from irnn_search.search.spec import StudySpec
from irnn_search.service.attempt import TAKEN_OVER, Attempt, Heartbeats, TrialInterrupted, classify
from irnn_search.service.budget import surplus
from irnn_search.service.preflight import environmental
from irnn_search.train import TrainResult, train

if TYPE_CHECKING:
    from irnn_search.service.ledger import Ledger
    from irnn_search.tracking import Tracker

log = logging.getLogger(__name__)


def make_objective(
    spec: StudySpec,
    model_key: str,
    *,
    device: str = "cpu",
    checkpoint_root: Path,
    stop: threading.Event | None = None,
    on_result: Callable[[optuna.Trial, TrainResult], None] | None = None,
    tracker: Tracker | None = None,
    ledger: Ledger | None = None,
    worker_id: int | None = None,
    on_start: Callable[[optuna.Trial, dict[str, Any]], None] | None = None,
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective of one model: suggest, train every seed, return the mean best value.

    Intermediate values (and pruning) follow the first seed. The value of one seed is its best
    validation objective over training (checkpointed in ``best.pt``). The bookkeeping around the
    training (MLflow run, our database, checkpoints in the artifact store) is an ``Attempt``.
    """
    model_spec = spec.model(model_key)

    def objective(trial: optuna.Trial) -> float:
        if surplus(trial, model_spec):
            trial.set_user_attr("outcome", Outcome.SURPLUS.value)
            raise optuna.TrialPruned("the trial budget was met by trials already in flight")
        attempt = Attempt(
            trial,
            spec,
            model_key,
            device=device,
            checkpoint_root=checkpoint_root,
            tracker=tracker,
            ledger=ledger,
            worker_id=worker_id,
        )
        try:
            attempt.begin()
            if on_start is not None:
                on_start(trial, attempt.params)
            for i, seed in enumerate(spec.seeds):
                run, ckpt, report, on_checkpoint = attempt.prepare(i, seed)
                result = train(
                    run.model,
                    run.task,
                    run.config,
                    report=report,
                    stop=stop,
                    checkpoint_dir=ckpt,
                    on_checkpoint=on_checkpoint,
                )
                if on_result is not None:
                    on_result(trial, result)
                attempt.seed_done(i, seed, run, result, ckpt)
            return attempt.complete()
        except Exception as exc:  # a trial's error fails that trial, never the worker
            attempt.ended(exc)
            raise
        finally:  # no MLflow run outlives its trial, whatever the outcome
            attempt.close()

    return objective


def run_one(study: optuna.Study, objective: Callable[[optuna.Trial], float]) -> FrozenTrial | None:
    """Ask one trial, run ``objective`` on it with heartbeats, tell the outcome; the finished trial.

    ``study.optimize`` without its one fatal case: when another worker's janitor has already
    failed the trial (its heartbeats did not reach the storage for a grace period), Optuna's tell
    raises and stops the worker. Here that trial is left to its re-queued copy (None is returned)
    and the worker goes on. A trial's error fails that trial, never the worker.
    """
    trial = study.ask()
    value: float | None = None
    error: Exception | None = None
    with Heartbeats(study) as beats:
        beats.add(trial._trial_id)
        try:
            value = objective(trial)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        except Exception as exc:
            error = exc
        finally:
            beats.remove(trial._trial_id)
    outcome, state = classify(error)
    if state is None:
        return None
    if error is not None and state == TrialState.FAIL and not isinstance(error, TrialInterrupted):
        if outcome == Outcome.FAILED:
            log.warning("%s trial %d failed: %s: %s", study.study_name, trial.number, type(error).__name__, error)
        else:  # released by its Attempt, not failed: see Attempt.ended
            log.warning("%s trial %d released: %s", study.study_name, trial.number, environmental(error))
        log.debug("the error of trial %d", trial.number, exc_info=error)
    frozen = study.tell(trial, value, state=state, skip_if_finished=True)
    if frozen.state != state:  # failed by a janitor an instant before this tell
        log.warning("%s trial %d: %s", study.study_name, trial.number, TAKEN_OVER)
        return None
    return frozen
