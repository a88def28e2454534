"""The Elman time loop shared by IRNN and the tanh RNN, with the fused library kernel beside it.

``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``. Parameters live in an ``nn.RNN`` so the
fused kernel (cuDNN on GPU, ATen on CPU) and the hand-written loop share them bit for bit.

The hand loop projects all inputs in one matmul before the loop and iterates over
``x.unbind(0)``; indexing ``x[t]`` inside the loop made backward ~8x slower on this CPU
(MACHINE-NOTES). Which path is fastest is measured in ``benchmarks/rnn_speed.py``; ``auto``
picks the winner per device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from irnn_search.models.base import ModelConfig, ModelError, RecurrentModel, State, param

IMPLS = ("auto", "loop", "fused")


@dataclass(frozen=True)
class ElmanConfig(ModelConfig):
    impl: str = field(
        default="auto",
        metadata={"help": "time loop: auto (fastest measured per device) | loop (hand-written) | fused (nn.RNN)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.impl not in IMPLS:
            raise ModelError(f"impl must be one of {', '.join(IMPLS)}; got {self.impl!r}")


def elman_loop(
    x: torch.Tensor,
    h: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor,
    relu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written Elman recurrence over time-major ``x`` (T, B, I) from ``h`` (B, H)."""
    projected = torch.addmm(bias, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], -1)
    w_hh_t = w_hh.t()
    act = torch.relu if relu else torch.tanh
    outs = []
    for xt in projected.unbind(0):
        h = act(torch.addmm(xt, h, w_hh_t))
        outs.append(h)
    return torch.stack(outs), h


class ElmanRNN(RecurrentModel):
    """Base of the single-layer Elman families; subclasses choose the nonlinearity and init."""

    nonlinearity: ClassVar[str]
    config: ElmanConfig

    def __init__(self, config: ElmanConfig, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.rnn = nn.RNN(self.input_size, config.hidden_size, nonlinearity=self.nonlinearity)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def _use_fused(self, x: torch.Tensor) -> bool:
        if self.config.impl == "auto":
            # Measured (benchmarks/README.md): the hand loop wins on CPU, cuDNN wins on GPU.
            return x.is_cuda
        return self.config.impl == "fused"

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        h0 = self.initial_hidden(x, state)
        if self._use_fused(x):
            hs, hT = self.rnn(x, h0.unsqueeze(0))
            return hs, hT.squeeze(0)
        r = self.rnn
        return elman_loop(
            x,
            h0,
            param(r, "weight_ih_l0"),
            param(r, "weight_hh_l0"),
            param(r, "bias_ih_l0") + param(r, "bias_hh_l0"),
            self.nonlinearity == "relu",
        )

    @property
    def recurrent_weight(self) -> torch.Tensor:
        return param(self.rnn, "weight_hh_l0")
