"""Re-run one trial alone: the trial's hyperparameters, seed, steps and batch size, trained by
``irnn_search.train`` in this process, as its reproduce line (``irnn-search train ...``) does.
What the pruning audit and the reproduce check are made of."""

from __future__ import annotations

from typing import Any

from irnn_search.run import prepare_run
from irnn_search.search.space import build_train_config, params_to_kwargs
from irnn_search.search.spec import StudySpec
from irnn_search.train import TrainResult, train


def rerun_alone(spec: StudySpec, model_key: str, params: dict[str, Any], *, seed: int | None = None) -> TrainResult:
    """Train model ``model_key`` of ``spec`` at ``params`` (a trial's) alone, at ``seed`` (default:
    the spec's first seed, the one a trial's reports follow), to the spec's steps."""
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
    return train(run.model, run.task, run.config)
