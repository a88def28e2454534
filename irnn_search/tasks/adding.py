"""The adding problem (Hochreiter & Schmidhuber 1997; IRNN paper §4.1).

Each step carries a value ~ U[0, 1) and a 0/1 marker; exactly two steps are marked and the target
is the sum of their values, read out at the last step and scored by MSE. Predicting the constant
1 scores Var(X1 + X2) = 2/12 = 1/6, the memoryless baseline.

Marker placement:
- ``halves`` (default, as in most papers and NNR): one marker uniform in the first ⌊T/2⌋ steps,
  one uniform in the last ⌈T/2⌉ steps, so the network must remember across ≥ 1 step and on
  average T/2.
- ``anywhere`` (the IRNN demo, IRD): two distinct positions uniform over the whole sequence,
  which is easier because the markers can be close together.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from irnn_search.tasks.base import (
    STREAM_TRAIN,
    Batch,
    Split,
    Task,
    TaskConfig,
    TaskError,
    Threshold,
    eval_chunks,
    generator,
)

PLACEMENTS = ("halves", "anywhere")


@dataclass(frozen=True)
class AddingConfig(TaskConfig):
    T: int = field(default=100, metadata={"help": "sequence length"})
    placement: str = field(
        default="halves",
        metadata={"help": "marker placement: halves (one per half, most papers) | anywhere (IRNN demo)"},
    )
    val_size: int = field(default=2000, metadata={"help": "validation sequences (fixed)"})
    test_size: int = field(default=10000, metadata={"help": "test sequences (fixed), final evaluation only"})

    def __post_init__(self) -> None:
        if self.T < 2:
            raise TaskError(f"adding: T must be >= 2 (two markers), got {self.T}")
        if self.placement not in PLACEMENTS:
            raise TaskError(f"adding: placement must be one of {', '.join(PLACEMENTS)}; got {self.placement!r}")
        if self.val_size < 1 or self.test_size < 1:
            raise TaskError("adding: val_size and test_size must be >= 1")


def adding_batch(T: int, batch: int, placement: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(T, batch, 2)`` (value, marker) and targets ``(batch, 1)``."""
    values = torch.rand(T, batch, generator=gen)
    if placement == "halves":
        half = T // 2
        first = torch.randint(0, half, (batch,), generator=gen)
        second = torch.randint(half, T, (batch,), generator=gen)
    else:
        first = torch.randint(0, T, (batch,), generator=gen)
        # Second position uniform over the other T-1 steps: draw in [0, T-1) and skip `first`.
        second = torch.randint(0, T - 1, (batch,), generator=gen)
        second = second + (second >= first).long()
    cols = torch.arange(batch)
    markers = torch.zeros(T, batch)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    target = (values[first, cols] + values[second, cols]).unsqueeze(1)
    return torch.stack([values, markers], dim=2), target


class AddingTask(Task):
    name = "adding"
    description = "adding problem: sum of two marked values in a length-T sequence (MSE)"
    config_cls = AddingConfig
    metric = "mse"
    direction = "minimize"
    metrics = ("loss", "mse")
    default_batch_size = 16  # IRNN paper and IRD
    size_option = "T"
    readout = "last"
    config: AddingConfig

    @property
    def input_size(self) -> int:
        return 2

    @property
    def output_size(self) -> int:
        return 1

    @property
    def seq_len(self) -> int:
        return self.config.T

    def train_batch(self, step: int) -> Batch:
        x, y = adding_batch(
            self.config.T, self.batch_size, self.config.placement, generator(self.seed, STREAM_TRAIN, step)
        )
        return Batch(x, y)

    def eval_batches(self, split: Split) -> Iterator[Batch]:
        sizes = {"val_size": self.config.val_size, "test_size": self.config.test_size}
        for n, gen in eval_chunks(split, **sizes, chunk=500):
            x, y = adding_batch(self.config.T, n, self.config.placement, gen)
            yield Batch(x, y)

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return torch.nn.functional.mse_loss(output, batch.y)

    def stats(self, output: torch.Tensor, batch: Batch) -> dict[str, float]:
        return {"se": float(((output - batch.y) ** 2).sum()), "n": float(batch.y.numel())}

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        mse = totals["se"] / totals["n"]
        return {"loss": mse, "mse": mse}

    def baseline(self) -> dict[str, float]:
        return {"mse": 1.0 / 6.0, "loss": 1.0 / 6.0}

    def solve_threshold(self) -> Threshold:
        return Threshold("mse", 0.01, "validation MSE below 0.01 (6% of the 1/6 baseline), the usual 'solved'")
