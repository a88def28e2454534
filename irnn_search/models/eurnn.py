"""EURNN, real-valued (Jing et al. 2017, tunable-capacity form; REFERENCE §1.7).

The recurrent matrix is a product of ``capacity`` layers of 2×2 Givens rotations: even layers
rotate the unit pairs (0,1), (2,3), ...; odd layers rotate (1,2), (3,4), ... Each layer has one
angle per pair, so ``W`` is orthogonal by construction, with ``capacity · ~n/2`` parameters and
no constrained parameter group (the angles are unconstrained). ``h_t = modrelu(W_in x_t + W
h_{t−1})``.

The reference EURNN is complex-valued with a diagonal phase layer; this is its real counterpart
(rotations only, so ``det W = +1``), the variant the nnRNN comparison can be reproduced with
in real arithmetic. ``W`` is built once per forward: each layer is two gathers and two
``index_copy`` ops on the rows of the running product, not a Python loop over pairs.

Init: angles ~ U(−``init_angle``, ``init_angle``); ``init_angle = 0`` starts at W = I (the IRNN
idea), the default π covers the whole group per rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelConfig, ModelError, RecurrentModel, State
from irnn_search.models.exprnn import check_inits, init_input_kernel, recurrent_loop
from irnn_search.models.modrelu import ModReLU


@dataclass(frozen=True)
class EURNNConfig(ModelConfig):
    capacity: int = field(default=4, metadata={"help": "layers of Givens rotations (alternating even/odd pairs)"})
    init_angle: float = field(default=math.pi, metadata={"help": "rotation angles ~ U(−a, a) at init; 0 gives W = I"})
    input_init: str = field(default="kaiming", metadata={"help": "input kernel: kaiming | xavier"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_inits("zeros", self.input_init)
        if self.capacity < 1:
            raise ModelError(f"eurnn: capacity must be >= 1, got {self.capacity}")
        if self.hidden_size < 2:
            raise ModelError(f"eurnn: hidden_size must be >= 2 (rotations act on pairs), got {self.hidden_size}")
        if not self.init_angle >= 0:
            raise ModelError(f"eurnn: init_angle must be >= 0, got {self.init_angle}")


def layer_pairs(n: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (first, second) of the pairs a layer rotates: even layers start at 0, odd at 1."""
    start = layer % 2
    first = torch.arange(start, n - 1, 2)
    return first, first + 1


def givens_product(angles: list[torch.Tensor], n: int) -> torch.Tensor:
    """``W = G_L ⋯ G_1`` for the layers' angle vectors (each G rotates its pairs of rows)."""
    W = torch.eye(n, dtype=angles[0].dtype, device=angles[0].device)
    for layer, theta in enumerate(angles):
        a, b = (i.to(theta.device) for i in layer_pairs(n, layer))
        c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        Wa, Wb = W[a], W[b]
        W = W.index_copy(0, a, c * Wa - s * Wb).index_copy(0, b, s * Wa + c * Wb)
    return W


class EURNN(RecurrentModel):
    family = "eurnn"
    description = "EURNN (real): recurrent matrix = product of capacity layers of Givens rotations, modReLU"
    config_cls = EURNNConfig
    config: EURNNConfig

    def __init__(self, config: EURNNConfig, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        n = config.hidden_size
        self.input_kernel = nn.Linear(self.input_size, n, bias=False)
        self.angles = nn.ParameterList(
            [nn.Parameter(torch.empty(layer_pairs(n, layer)[0].numel())) for layer in range(config.capacity)]
        )
        self.nonlinearity = ModReLU(n)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_input_kernel(self.input_kernel.weight, self.config.input_init)
        with torch.no_grad():
            for theta in self.angles:
                theta.uniform_(-self.config.init_angle, self.config.init_angle)
        self.nonlinearity.reset_parameters()
        self.reset_readout()

    @property
    def recurrent_weight(self) -> torch.Tensor:
        """W in column form (``h_t = ... + W h_{t−1}``), built afresh on every access."""
        return givens_product(list(self.angles), self.hidden_size)

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        h0 = self.initial_hidden(x, state)
        return recurrent_loop(x, h0, self.input_kernel.weight, self.recurrent_weight, self.nonlinearity)
