"""Tiny trials for the packed tests: each built the way prepare_run builds one (seed, then model)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from irnn_search.models import RecurrentModel, build_model
from irnn_search.packed import Member
from irnn_search.tasks import Task, build_task
from irnn_search.train import TrainConfig, TrainResult, seed_everything, train

# steps_per_s is wall-clock; everything else a member reports must match the run alone.
COMPARED = ("step", "val_mse", "val_loss", "train_loss", "grad_norm")


@dataclass
class Spec:
    family: str
    options: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    hidden: int = 12

    def build(self, **overrides: Any) -> tuple[RecurrentModel, Task, TrainConfig]:
        task = build_task("adding", {"T": 10, "val_size": 48}, seed=self.seed, batch_size=6)
        seed_everything(self.seed)
        model = build_model(self.family, {"hidden_size": self.hidden, **self.options}, input_size=2, output_size=1)
        cfg = {"steps": 24, "eval_every": 8, "seed": self.seed, "clip": 1.0, **self.config, **overrides}
        return model, task, TrainConfig(**cfg)

    def member(self, **kwargs: Any) -> Member:
        overrides = kwargs.pop("config", {})
        model, task, config = self.build(**overrides)
        return Member(model, task, config, name=f"{self.family} {self.config}", **kwargs)

    def alone(
        self, checkpoint_dir: Path | None = None, *, onednn: bool | None = None, **overrides: Any
    ) -> tuple[RecurrentModel, TrainResult]:
        """``train()`` on the same trial. ``onednn=False`` keeps nn.LSTM off oneDNN's fused CPU kernel:
        ATen's own LSTM is then the packed cell op for op (bit-identical gradients), while oneDNN
        sums in another order, and RMSprop without clipping amplifies those last-bit differences
        in tiny gradient entries past 1e-5 within a few dozen steps. Default: off for the LSTM."""
        model, task, config = self.build(**overrides)
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = onednn if onednn is not None else self.family != "lstm"
        try:
            return model, train(model, task, config, checkpoint_dir=checkpoint_dir)
        finally:
            torch.backends.mkldnn.enabled = before


def assert_same_history(packed: list[dict[str, float]], alone: list[dict[str, float]], rel_tol: float = 1e-5) -> None:
    assert len(packed) == len(alone)
    for p, a in zip(packed, alone, strict=True):
        assert set(p) == set(a)
        for key in COMPARED:
            assert math.isclose(p[key], a[key], rel_tol=rel_tol, abs_tol=rel_tol / 100), (key, p[key], a[key])


def assert_same_params(packed: RecurrentModel, alone: RecurrentModel, rtol: float = 1e-5) -> None:
    """1e-5 relative, entry by entry and to the tensor's scale: the fused backward (packed.scan)
    sums gradients in another order, and RMSprop without clipping carries those last-bit
    differences of tiny gradient entries into weights far below the tensor's scale."""
    for (name, p), q in zip(packed.named_parameters(), alone.parameters(), strict=True):
        scale = float(q.detach().abs().max()) if q.numel() else 1.0
        torch.testing.assert_close(p, q, rtol=rtol, atol=max(rtol / 10, rtol * scale), msg=name)


def replace_steps(config: TrainConfig, steps: int) -> TrainConfig:
    return replace(config, steps=steps)
