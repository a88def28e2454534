"""Orthogonal recurrent matrices as ``torch.nn.utils.parametrize`` parametrizations.

A family registers ``Skew`` on a raw n×n parameter ``A`` (only its strict upper triangle is used:
``S = triu(A,1) − triu(A,1)ᵀ``) and then one map from skew-symmetric to orthogonal matrices:

- ``MatrixExp``: ``B = expm(S)`` (expRNN, static). ``torch.linalg.matrix_exp`` differentiates
  through the exponential exactly (the Fréchet derivative the EXP code writes by hand).
- ``Cayley``: ``B = (I+S)⁻¹(I−S)``, computed as ``torch.linalg.solve(I+S, I−S)``: A first, then
  the right-hand side (the old ``torch.solve(B, A)`` had them the other way round, and swapping
  them silently gives the inverse map; REFERENCE §6.1). No ½ factor, as in EXP and ASR. ``I+S`` is
  always invertible for real skew S; the image is SO(n) without eigenvalue −1.
- ``DynamicExp``: dynamic trivialization (dtriv): ``B = base · expm(S)`` with a ``base`` buffer
  (initially I). ``dynamic_step`` (to be called after every optimizer step) rebases every K steps
  (``base ← B``, ``A ← 0``) and, every M rebases, projects ``base`` back onto O(n) with ``U Vᵀ``
  from its SVD to remove the float drift that repeated products accumulate.
- ``SignFlip``: ``W = Q · D`` for a fixed ±1 diagonal D (scoRNN).

Each map has a ``right_inverse`` (assigning ``module.weight = Q`` finds the parameter that gives
Q): the matrix log for ``MatrixExp``, the Cayley map itself (it is an involution) for ``Cayley``,
``base ← Q, S = 0`` for ``DynamicExp``, ``Q·D`` for ``SignFlip``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from irnn_search.models.base import ModelError
from irnn_search.models.init import log_special_orthogonal


def _eye_like(X: torch.Tensor) -> torch.Tensor:
    return torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)


def skew(A: torch.Tensor) -> torch.Tensor:
    """``triu(A,1) − triu(A,1)ᵀ``: the skew-symmetric matrix a raw parameter stands for."""
    upper = A.triu(1)
    return upper - upper.mT


class Skew(nn.Module):
    """Raw n×n ``A`` -> skew ``S``; the diagonal and lower triangle of ``A`` are ignored (and get
    zero gradient), so the free parameters are the n(n−1)/2 entries above the diagonal."""

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        return skew(A)

    def right_inverse(self, S: torch.Tensor) -> torch.Tensor:
        return S.triu(1)


class MatrixExp(nn.Module):
    """Skew ``S`` -> ``expm(S)`` in SO(n)."""

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        return torch.linalg.matrix_exp(S)

    def right_inverse(self, Q: torch.Tensor) -> torch.Tensor:
        """The principal log (raises ModelError for Q outside SO(n) or with eigenvalue −1)."""
        return log_special_orthogonal(Q)


def cayley_map(S: torch.Tensor) -> torch.Tensor:
    """``(I+S)⁻¹(I−S)``."""
    eye = _eye_like(S)
    return torch.linalg.solve(eye + S, eye - S)


class Cayley(nn.Module):
    """Skew ``S`` -> ``(I+S)⁻¹(I−S)`` in SO(n) (never reaching eigenvalue −1)."""

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        return cayley_map(S)

    def right_inverse(self, Q: torch.Tensor) -> torch.Tensor:
        # (I+Q)⁻¹(I−Q) = S for Q = (I+S)⁻¹(I−S): the map is its own inverse.
        S = cayley_map(Q)
        if not torch.isfinite(S).all():
            raise ModelError("the Cayley map cannot reach a matrix with eigenvalue -1")
        return (S - S.mT) / 2


class DynamicExp(nn.Module):
    """Skew ``S`` -> ``base · expm(S)``; ``base`` moves with ``dynamic_step``.

    The counters are buffers, so they are saved in ``state_dict`` and a resumed run rebases on
    the same steps as an uninterrupted one.
    """

    base: torch.Tensor
    steps: torch.Tensor
    rebases: torch.Tensor

    def __init__(self, n: int, K: int, M: int) -> None:
        super().__init__()
        if K < 1 or M < 1:
            raise ModelError(f"dtriv needs K >= 1 and M >= 1, got K={K}, M={M}")
        self.K, self.M = K, M
        self.register_buffer("base", torch.eye(n))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # optimizer steps since the last rebase
        self.register_buffer("rebases", torch.zeros((), dtype=torch.long))  # rebases since the last projection

    def reset(self) -> None:
        with torch.no_grad():
            self.base.copy_(torch.eye(self.base.shape[0]))
            self.steps.zero_()
            self.rebases.zero_()

    def forward(self, S: torch.Tensor) -> torch.Tensor:
        return self.base @ torch.linalg.matrix_exp(S)

    def right_inverse(self, Q: torch.Tensor) -> torch.Tensor:
        self.base.copy_(Q)
        return torch.zeros_like(Q)


def parametrizations(module: nn.Module, name: str = "weight") -> parametrize.ParametrizationList:
    """The parametrizations registered on ``module.<name>`` (typed for mypy)."""
    plist = getattr(module, "parametrizations")[name]  # noqa: B009 (a dynamic attribute)
    assert isinstance(plist, parametrize.ParametrizationList)
    return plist


def raw_parameter(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The unconstrained tensor under ``module.<name>``'s parametrizations (what the optimizer sees)."""
    original = parametrizations(module, name).original
    assert isinstance(original, nn.Parameter)
    return original


def dynamic_step(module: nn.Module, name: str = "weight") -> bool:
    """Count one optimizer step of the dtriv-parametrized ``module.<name>``; rebase every K steps
    and project ``base`` onto O(n) every M rebases. Returns True when it rebased.

    Rebasing changes the coordinates, not the function: ``B`` is the same matrix before and after
    (``base · expm(S) = B · expm(0)``). Optimizer statistics of ``A`` are kept, as in EXP.
    """
    maps = list(parametrizations(module, name))
    dyn = next((p for p in maps if isinstance(p, DynamicExp)), None)
    if dyn is None:
        raise ModelError(f"{type(module).__name__}.{name} has no DynamicExp parametrization")
    original = raw_parameter(module, name)
    with torch.no_grad():
        dyn.steps += 1
        if int(dyn.steps) < dyn.K:
            return False
        # B from the maps up to and including DynamicExp (later maps, if any, act on top of it).
        X = original
        for p in maps[: maps.index(dyn) + 1]:
            X = p(X)
        dyn.base.copy_(X)
        original.zero_()
        dyn.steps.zero_()
        dyn.rebases += 1
        if int(dyn.rebases) >= dyn.M:
            U, _, Vh = torch.linalg.svd(dyn.base)
            dyn.base.copy_(U @ Vh)
            dyn.rebases.zero_()
    return True


class SignFlip(nn.Module):
    """``Q`` -> ``Q · D`` with ``D = diag(signs)`` fixed (a buffer): scales columns by ±1."""

    signs: torch.Tensor

    def __init__(self, signs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("signs", signs)

    def forward(self, Q: torch.Tensor) -> torch.Tensor:
        return Q * self.signs

    def right_inverse(self, W: torch.Tensor) -> torch.Tensor:
        return W * self.signs  # D⁻¹ = D


def register_orthogonal(module: nn.Module, maps: list[nn.Module], name: str = "weight") -> nn.Parameter:
    """Parametrize the square ``module.<name>`` as ``maps`` applied to ``Skew`` of a raw parameter;
    return the raw parameter (the one the optimizer updates)."""
    parametrize.register_parametrization(module, name, Skew())
    for m in maps:
        # unsafe skips torch's registration check, which would run right_inverse on the current
        # matrix: an O(n³) matrix log for nothing (and a base overwrite for DynamicExp). Every map
        # here is square-to-square and keeps the dtype (tested).
        parametrize.register_parametrization(module, name, m, unsafe=True)
    return raw_parameter(module, name)
