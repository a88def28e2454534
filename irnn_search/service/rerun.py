"""Re-run one trial alone: the trial's hyperparameters, seed, steps and batch size, trained in this
process as its reproduce line (``irnn-search train ...``) does: by ``irnn_search.train``, or for a
trial that trained in a pack, through the packed path as a pack of one (``--packed``), which
retraces it bit for bit on CPU. What the pruning audit and the reproduce check are made of."""

from __future__ import annotations

from typing import Any

from irnn_search.run import execute, prepare_run
from irnn_search.search.space import build_train_config, params_to_kwargs
from irnn_search.search.spec import StudySpec
from irnn_search.train import TrainResult


def rerun_alone(
    spec: StudySpec, model_key: str, params: dict[str, Any], *, seed: int | None = None, packed: bool = False
) -> TrainResult:
    """Train model ``model_key`` of ``spec`` at ``params`` (a trial's) alone, at ``seed`` (default:
    the spec's first seed, the one a trial's reports follow), to the spec's steps; ``packed``: as
    a pack of one (for a trial that trained in a pack)."""
    model = spec.model(model_key)
    train_kwargs, model_options = params_to_kwargs(model, params)
    run = prepare_run(
        task=spec.task,
        task_options=spec.task_options,
        model=model.family,
        model_options=model_options,
        config=build_train_config(spec, train_kwargs, seed=spec.seeds[0] if seed is None else seed),
        batch_size=spec.batch_size,
    )
    return execute(run, packed=packed)[0]


def curve_deviation(rerun: dict[int, float], original: dict[int, float]) -> float | None:
    """How far a re-run's curve (step -> value) strays from the original's over the steps both
    reported: the largest relative difference (0.0: retraced bit for bit; None: no step shared)."""
    shared = sorted(set(rerun) & set(original))
    if not shared:
        return None
    return max(abs(rerun[s] - original[s]) / max(abs(original[s]), 1e-300) for s in shared)
