"""scoRNN (Helfrich, Willmott & Ye 2018), as ASR runs it (REFERENCE §1.6).

``h_t = modrelu(W_in x_t + W h_{t−1})`` with ``W = (I+S)⁻¹(I−S) · D``: the Cayley map of a skew
S times a fixed diagonal ``D = diag(1, …, 1, −1, …, −1)`` whose last ρ entries are −1. The Cayley
map cannot reach eigenvalue −1; D supplies it. ρ = ``hidden_size // rho_den``, the reference's
``rho_rat_den``: 10 for sMNIST, 2 for pMNIST and copy (ASR Hyperparameter.md); default 2.

Like ASR, S is trained by backpropagation through the Cayley map (a static trivialization), not
by the original paper's closed-form Cayley gradient step. The paper's ``W = Cayley(S)·D`` is used
in column form; its reference code effectively multiplies by Wᵀ (SpartinStuff/scoRNN #1).

Default init ``cayley``: the scoRNN paper's, putting Cayley(S)'s eigenvalue angles in [0, π/2].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelError
from irnn_search.models.exprnn import OrthogonalConfig, OrthogonalRNN
from irnn_search.models.orthogonal import Cayley, SignFlip


@dataclass(frozen=True)
class ScoRNNConfig(OrthogonalConfig):
    init: str = field(
        default="cayley",
        metadata={"help": "skew init of the recurrent matrix: henaff | cayley (scoRNN) | random | zeros | identity"},
    )
    rho_den: int = field(
        default=2,
        metadata={
            "help": "D has hidden_size // rho_den entries -1 (the reference's rho_rat_den: "
            "10 for sMNIST, 2 for pMNIST and copy); rho_den > hidden_size gives D = I"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rho_den < 1:
            raise ModelError(f"rho_den must be >= 1, got {self.rho_den}")

    @property
    def rho(self) -> int:
        """The number of −1 entries of D."""
        return self.hidden_size // self.rho_den


def reflection_signs(n: int, rho: int) -> torch.Tensor:
    """The diagonal of D: n − rho ones, then rho minus ones."""
    signs = torch.ones(n)
    signs[n - rho :] = -1.0
    return signs


class ScoRNN(OrthogonalRNN):
    family = "scornn"
    description = "scoRNN: modReLU RNN, recurrent matrix Cayley(skew)·D with hidden_size // rho_den entries -1 in D"
    config_cls = ScoRNNConfig
    config: ScoRNNConfig

    def orthogonal_maps(self) -> list[nn.Module]:
        return [Cayley(), SignFlip(reflection_signs(self.config.hidden_size, self.config.rho))]
