"""expRNN, dtriv and the Cayley trivialization (Lezcano-Casado & Martínez-Rubio 2019; EXP code).

``h_t = modrelu(W_in x_t + B h_{t−1})``, ``h_0 = 0``, with an orthogonal ``B`` parametrized by a
skew-symmetric matrix (REFERENCE §1.5):

- ``exprnn``: ``B = expm(S)``, static.
- ``dtriv``: ``B = base · expm(S)``; every K optimizer steps ``base ← B`` and ``S ← 0``, every M
  rebases ``base`` is projected back onto O(n). ``after_step()``, which the training loop calls
  after every optimizer step, does this; without those calls dtriv behaves exactly like ``exprnn``.
- ``cayley``: ``B = (I+S)⁻¹(I−S)``, static.

The input kernel has no bias; modReLU's ``b`` is the only bias. The raw skew parameter is the
one ``constrained`` parameter group (the training loop gives it ``lr_orth``; EXP's rule of thumb
is lr/10) and is counted as n(n−1)/2 parameters, the papers' convention (REFERENCE §4.5).

``B`` is built once per forward in ``recurrence`` (one matrix exponential or solve) and reused
by every step, so a step costs one matmul; the input projection for all steps is one matmul
before the loop, which iterates over ``unbind(0)`` (indexing ``x[t]`` is ~8x slower in backward).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelConfig, ModelError, ParamGroup, RecurrentModel, State
from irnn_search.models.init import SKEW_INITS, skew_init
from irnn_search.models.modrelu import ModReLU
from irnn_search.models.orthogonal import (
    Cayley,
    DynamicExp,
    MatrixExp,
    dynamic_step,
    parametrizations,
    raw_parameter,
    register_orthogonal,
)

INPUT_INITS = ("kaiming", "xavier")


def check_inits(init: str, input_init: str) -> None:
    """Raise ModelError naming the valid choices for an unknown recurrent or input init."""
    if init not in SKEW_INITS:
        raise ModelError(f"init must be one of {', '.join(SKEW_INITS)}; got {init!r}")
    if input_init not in INPUT_INITS:
        raise ModelError(f"input_init must be one of {', '.join(INPUT_INITS)}; got {input_init!r}")


def init_input_kernel(weight: torch.Tensor, how: str) -> None:
    """Fill an input kernel in place: ``kaiming`` or ``xavier`` normal."""
    if how == "kaiming":
        nn.init.kaiming_normal_(weight)  # EXP and ASR's modReLU cells
    else:
        nn.init.xavier_normal_(weight)  # NNR's default (iinit xavier)


def recurrent_loop(
    x: torch.Tensor,
    h: torch.Tensor,
    w_in: torch.Tensor,
    w_rec: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = act(W_in x_t + bias + W_rec h_{t−1})`` over time-major ``x`` (T, B, I) from ``h``
    (B, H); returns all ``h_t`` (T, B, H) and the last. ``w_rec`` is used as given: pass the
    already-built matrix, never a parametrized attribute, or it is rebuilt every step."""
    projected = nn.functional.linear(x, w_in, bias)
    w_rec_t = w_rec.t()
    outs = []
    for xt in projected.unbind(0):
        h = act(torch.addmm(xt, h, w_rec_t))
        outs.append(h)
    return torch.stack(outs), h


@dataclass(frozen=True)
class OrthogonalConfig(ModelConfig):
    init: str = field(
        default="henaff",
        metadata={"help": "skew init of the recurrent matrix: henaff | cayley | random | zeros | identity"},
    )
    input_init: str = field(
        default="kaiming", metadata={"help": "input kernel: kaiming (normal; EXP, ASR) | xavier (normal; NNR)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_inits(self.init, self.input_init)


class OrthogonalRNN(RecurrentModel):
    """modReLU RNN whose recurrent matrix is a parametrized image of a skew-symmetric matrix.

    Subclasses choose the maps after ``Skew`` (``orthogonal_maps``). The recurrent matrix in
    column form, ``h_t = ... + B h_{t−1}``, is ``self.recurrent.weight``.
    """

    config: OrthogonalConfig

    def __init__(self, config: OrthogonalConfig, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        n = config.hidden_size
        self.input_kernel = nn.Linear(self.input_size, n, bias=False)
        self.recurrent = nn.Linear(n, n, bias=False)  # only a holder for the parametrized weight
        register_orthogonal(self.recurrent, self.orthogonal_maps())
        self.nonlinearity = ModReLU(n)
        self.reset_parameters()

    @abc.abstractmethod
    def orthogonal_maps(self) -> list[nn.Module]:
        """The parametrizations applied after ``Skew`` (skew -> the recurrent matrix)."""

    @property
    def skew_parameter(self) -> nn.Parameter:
        """The raw n×n parameter whose strict upper triangle defines S (the constrained group)."""
        return raw_parameter(self.recurrent)

    def reset_parameters(self) -> None:
        init_input_kernel(self.input_kernel.weight, self.config.input_init)
        S = skew_init(self.config.init)(self.hidden_size, None)
        with torch.no_grad():
            self.skew_parameter.copy_(S.triu(1))  # Skew reads only the strict upper triangle
        self.nonlinearity.reset_parameters()
        self.reset_readout()

    @property
    def recurrent_weight(self) -> torch.Tensor:
        """The recurrent matrix B (built afresh on every access)."""
        return self.recurrent.weight

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        h0 = self.initial_hidden(x, state)
        B = self.recurrent.weight  # once per forward: the time loop reuses this tensor
        return recurrent_loop(x, h0, self.input_kernel.weight, B, self.nonlinearity)

    def parameter_groups(self) -> list[ParamGroup]:
        skew = self.skew_parameter
        return [
            ParamGroup("unconstrained", [p for p in self.parameters() if p is not skew]),
            ParamGroup("orthogonal", [skew], kind="constrained"),
        ]

    def num_parameters(self) -> int:
        """As the papers count: the skew parameter has n(n−1)/2 free entries, not n²."""
        n = self.hidden_size
        skew = self.skew_parameter
        free = sum(p.numel() for p in self.parameters() if p.requires_grad and p is not skew)
        return free + n * (n - 1) // 2


class ExpRNN(OrthogonalRNN):
    family = "exprnn"
    description = "expRNN: modReLU RNN, recurrent matrix expm(skew), static trivialization"
    config_cls = OrthogonalConfig

    def orthogonal_maps(self) -> list[nn.Module]:
        return [MatrixExp()]


class CayleyRNN(OrthogonalRNN):
    family = "cayley"
    description = "Cayley RNN: modReLU RNN, recurrent matrix (I+S)^-1 (I-S) of a skew S, static"
    config_cls = OrthogonalConfig

    def orthogonal_maps(self) -> list[nn.Module]:
        return [Cayley()]


@dataclass(frozen=True)
class DTrivConfig(OrthogonalConfig):
    K: int = field(default=100, metadata={"help": "rebase (base <- B, skew <- 0) every K optimizer steps (EXP: 100)"})
    M: int = field(
        default=100, metadata={"help": "project base onto O(n) by SVD every M rebases (EXP: 100; 30 for copy)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.K < 1:
            raise ModelError(f"K must be >= 1, got {self.K}")
        if self.M < 1:
            raise ModelError(f"M must be >= 1, got {self.M}")


class DTriv(OrthogonalRNN):
    family = "dtriv"
    description = "dtriv: expRNN with dynamic trivialization (rebase every K steps, project every M rebases)"
    config_cls = DTrivConfig
    config: DTrivConfig

    def orthogonal_maps(self) -> list[nn.Module]:
        return [DynamicExp(self.config.hidden_size, self.config.K, self.config.M)]

    @property
    def dynamic(self) -> DynamicExp:
        dyn = parametrizations(self.recurrent)[-1]
        assert isinstance(dyn, DynamicExp)
        return dyn

    def reset_parameters(self) -> None:
        self.dynamic.reset()
        super().reset_parameters()

    def after_step(self) -> None:
        """Count the optimizer step; rebase every K, project every M rebases (buffers: checkpointed)."""
        dynamic_step(self.recurrent)
