"""modReLU, the nonlinearity of expRNN, scoRNN and nnRNN (REFERENCE §1.3).

``modrelu(z)_i = sign(z_i) · ReLU(|z_i| + b_i)``: the real form of uRNN's modReLU. It keeps the
sign and shrinks the magnitude by ``−b_i`` (zeroing entries with ``|z_i| < −b_i``), so with
``b ≈ 0`` it is close to the identity at initialisation. ``b`` ~ U(−0.01, 0.01) (EXP, NNR) and is
the layer's only bias: the input kernel in front of it has none.
"""

from __future__ import annotations

import torch
from torch import nn


def modrelu(z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sign(z) · relu(|z| + b)``; the gradient at ``z = 0`` is 0 (sign' = 0)."""
    return torch.sign(z) * torch.relu(z.abs() + b)


class ModReLU(nn.Module):
    """modReLU over ``n`` features (the last dimension) with a learnable bias ``b``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.empty(n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.b, -0.01, 0.01)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return modrelu(z, self.b)
