"""An irnn-search plugin: the "recall" task and the "gru" model family, registered by entry points.

recall: a length-T sequence of uniform(-1, 1) values; predict the first one at the end (mean
absolute error; predicting 0 scores 0.5). gru: ``torch.nn.GRU`` behind the shared readout.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models import ModelConfig, RecurrentModel, State
from irnn_search.tasks import Batch, Task, TaskConfig
from irnn_search.tasks.base import Split, generator


@dataclass(frozen=True)
class RecallConfig(TaskConfig):
    T: int = field(default=20, metadata={"help": "sequence length"})
    val_size: int = field(default=256, metadata={"help": "validation sequences"})


class RecallTask(Task):
    name = "recall"  # must equal the entry point's name
    description = "recall the first of T uniform(-1, 1) values at the last step (MAE)"
    config_cls = RecallConfig
    config: RecallConfig
    metric = "mae"
    direction = "minimize"
    metrics = ("loss", "mae")  # what summarize() reports: a spec may name val_loss or val_mae
    default_batch_size = 32

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return 1

    def _batch(self, n: int, *parts: int) -> Batch:
        x = torch.rand(self.config.T, n, 1, generator=generator(*parts)) * 2 - 1
        return Batch(x, x[0].clone())

    def train_batch(self, step: int) -> Batch:
        return self._batch(self.batch_size, self.seed, 1, step)

    def eval_batches(self, split: Split) -> Iterator[Batch]:
        yield self._batch(self.config.val_size, 0, 2 if split == "val" else 3)

    def loss(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        return nn.functional.mse_loss(output, batch.y)

    def stats(self, output: torch.Tensor, batch: Batch) -> dict[str, float]:
        err = output - batch.y
        return {"se": float((err**2).sum()), "ae": float(err.abs().sum()), "n": float(batch.y.numel())}

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        return {"loss": totals["se"] / totals["n"], "mae": totals["ae"] / totals["n"]}

    def baseline(self) -> dict[str, float]:
        return {"loss": 1 / 3, "mae": 0.5}  # always predicting 0


@dataclass(frozen=True)
class GRUConfig(ModelConfig):
    hidden_size: int = field(default=32, metadata={"help": "number of recurrent units"})


class GRU(RecurrentModel):
    family = "gru"  # must equal the entry point's name
    description = "GRU (torch.nn.GRU), PyTorch's default initialisation"
    config_cls = GRUConfig

    def __init__(self, config: GRUConfig, *, input_size: int, output_size: int, vocab_size: int | None = None):
        super().__init__(config, input_size=input_size, output_size=output_size, vocab_size=vocab_size)
        self.gru = nn.GRU(self.input_size, config.hidden_size)  # input_size: after the embedding, if any

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        hs, h = self.gru(x, state)
        return hs, h
