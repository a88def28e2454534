"""The shared learning check: a family must halve the adding problem's baseline at T=30."""

from __future__ import annotations

from irnn_search.models import RecurrentModel
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, train


def assert_learns_adding(model: RecurrentModel, config: TrainConfig, *, seed: int, batch_size: int) -> None:
    """Train on adding T=30 until the validation MSE is below 1/12 (half the 1/6 baseline)."""
    task = build_task("adding", {"T": 30, "val_size": 500}, seed=seed, batch_size=batch_size)
    result = train(model, task, config, report=lambda step, m: m["val_mse"] < 1 / 12)
    assert result.best["val_mse"] < 1 / 12, result.history
