"""nnRNN (Kerg et al., NeurIPS 2019): a non-normal recurrent matrix in its Schur form.

``rec = P (Λ + T) Pᵀ`` with ``P = expm(S)`` orthogonal, ``Λ`` block-diagonal with 2×2 blocks
``α_i [[cos θ_i, −sin θ_i], [sin θ_i, cos θ_i]]`` (the normal part) and ``T`` strictly upper
triangular (the non-normal part); ``h_t = modrelu(U x_t + h_{t−1} · rec)`` in the reference's
row-vector form, so in column form the non-normal part acts as lower triangular (REFERENCE §1.8).

Training: ``δ · Σ_i (α_i − 1)²`` is added to the loss (``penalty``), ``T`` has its own parameter
group with coupled L2 weight decay ``t_decay``, and the raw skew parameter of ``P`` is the
constrained group (``lr_orth``).

Initialisation is the paper's intent, i.e. the reference code *before* commit 53eea4a: ``S`` from
the named skew initialiser (never uninitialised memory, the HEAD bug), ``θ_i ~ U(0, 2π)``,
``α_i = 1``, ``T = 0``, Glorot-normal ``U`` without bias. ``Λ`` and ``rec`` are built with
vectorised ops once per forward (the reference loops over n/2 scalar parameters every sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelConfig, ModelError, ParamGroup, RecurrentModel, State
from irnn_search.models.exprnn import check_inits, init_input_kernel, recurrent_loop
from irnn_search.models.init import skew_init
from irnn_search.models.modrelu import ModReLU
from irnn_search.models.orthogonal import MatrixExp, register_orthogonal


@dataclass(frozen=True)
class NNRNNConfig(ModelConfig):
    init: str = field(
        default="cayley", metadata={"help": "skew init of P: cayley (README) | henaff (SUP) | random | zeros"}
    )
    input_init: str = field(default="xavier", metadata={"help": "input kernel U: xavier (NNR) | kaiming"})
    delta: float = field(default=1e-4, metadata={"help": "δ of the penalty δ·Σ(α−1)² (copy 1e-4, psMNIST 0.1)"})
    t_decay: float = field(default=1e-6, metadata={"help": "L2 weight decay on T (copy 1e-6, psMNIST 1e-4)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_inits(self.init, self.input_init)
        if self.hidden_size % 2:
            raise ModelError(f"nnrnn needs an even hidden_size (2×2 rotation blocks), got {self.hidden_size}")
        if not self.delta >= 0 or not self.t_decay >= 0:
            raise ModelError(f"delta and t_decay must be >= 0, got {self.delta} and {self.t_decay}")


def rotation_blocks(alpha: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Block-diagonal ``Λ`` (n×n) from n/2 scales and angles, without a Python loop."""
    n = 2 * alpha.numel()
    even = torch.arange(0, n, 2, device=alpha.device)
    rows = torch.cat([even, even, even + 1, even + 1])
    cols = torch.cat([even, even + 1, even, even + 1])
    c, s = alpha * torch.cos(theta), alpha * torch.sin(theta)
    values = torch.cat([c, -s, s, c])
    return torch.zeros(n, n, dtype=alpha.dtype, device=alpha.device).index_put((rows, cols), values)


class NNRNN(RecurrentModel):
    family = "nnrnn"
    description = "nnRNN: P(Λ+T)Pᵀ, orthogonal P, rotation blocks Λ scaled by α, strictly upper-triangular T"
    config_cls = NNRNNConfig
    config: NNRNNConfig

    def __init__(self, config: NNRNNConfig, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        n = config.hidden_size
        self.input_kernel = nn.Linear(self.input_size, n, bias=False)
        self.P = nn.Linear(n, n, bias=False)  # holder of the parametrized orthogonal P
        self.skew_parameter = register_orthogonal(self.P, [MatrixExp()])
        self.alpha = nn.Parameter(torch.empty(n // 2))
        self.theta = nn.Parameter(torch.empty(n // 2))
        self.T = nn.Parameter(torch.empty(n, n))
        self.nonlinearity = ModReLU(n)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_input_kernel(self.input_kernel.weight, self.config.input_init)
        S = skew_init(self.config.init)(self.hidden_size, None)
        with torch.no_grad():
            self.skew_parameter.copy_(S.triu(1))
            self.alpha.fill_(1.0)
            self.theta.uniform_(0.0, 2 * math.pi)
            self.T.zero_()
        self.nonlinearity.reset_parameters()
        self.reset_readout()

    @property
    def normal_part(self) -> torch.Tensor:
        return rotation_blocks(self.alpha, self.theta)

    @property
    def non_normal_part(self) -> torch.Tensor:
        return self.T.triu(1)

    @property
    def recurrent_weight(self) -> torch.Tensor:
        """``rec`` as the reference applies it, ``h @ rec`` (built afresh on every access)."""
        P = self.P.weight
        return P @ (self.normal_part + self.non_normal_part) @ P.t()

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        h0 = self.initial_hidden(x, state)
        rec = self.recurrent_weight  # once per forward
        # recurrent_loop computes h @ w_rec.T: pass rec.T for the reference's h @ rec.
        return recurrent_loop(x, h0, self.input_kernel.weight, rec.t(), self.nonlinearity)

    def penalty(self) -> torch.Tensor | None:
        if self.config.delta == 0:
            return None
        return self.config.delta * (self.alpha - 1.0).square().sum()

    def parameter_groups(self) -> list[ParamGroup]:
        special = {id(self.skew_parameter), id(self.T)}
        return [
            ParamGroup("unconstrained", [p for p in self.parameters() if id(p) not in special]),
            ParamGroup("T", [self.T], options={"weight_decay": self.config.t_decay}),
            ParamGroup("orthogonal", [self.skew_parameter], kind="constrained"),
        ]

    def num_parameters(self) -> int:
        """As the paper counts: P's skew and the strictly upper T each have n(n−1)/2 entries."""
        n = self.hidden_size
        special = {id(self.skew_parameter), id(self.T)}
        free = sum(p.numel() for p in self.parameters() if id(p) not in special)
        return free + n * (n - 1)
