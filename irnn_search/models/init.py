"""Skew-symmetric initialisers for orthogonal recurrent matrices (EXP:initialization.py, NNR).

Every initialiser returns an n×n skew-symmetric matrix ``S`` (``Sᵀ = −S``) in float64; a family
maps it to its recurrent matrix (``expm(S)``, the Cayley map ``(I+S)⁻¹(I−S)``, or stores
``expm(S)`` unconstrained for RNN-orth). Random draws use ``generator`` or, by default, torch's
global RNG (which ``seed_everything`` seeds).

- ``henaff``: block-diagonal, ``S[2i, 2i+1] = d_i ~ U(−π, π)`` (EXP's current draw; the
  ICML-era code drew U(−π, 0)). Under expm block i rotates by ``|d_i|``, so the eigenvalue angles
  of ``expm(S)`` cover (−π, π) uniformly.
- ``cayley``: block-diagonal with ``d_i = −tan(s_i / 2)``, ``s_i ~ U(0, π/2)`` (scoRNN's init, as
  in EXP). The same matrix means different spectra in the two parametrisations (REFERENCE §1.5):
  under the **Cayley map** block i rotates by ``2·atan|d_i| = s_i ∈ [0, π/2]``; under **expm** it
  rotates by ``|d_i| = tan(s_i/2) ≤ tan(π/4) = 1 rad``.
- ``random``: the principal logarithm of a Haar-random special orthogonal matrix. QR of a
  Gaussian with the sign of R's diagonal moved into Q gives Haar on O(n); flipping the first
  column when det = −1 maps that half onto SO(n) measure-preservingly (equivalent to NNR's
  resample-until-det>0, at fixed cost). The log is computed by ``log_special_orthogonal`` below, so
  ``expm(S)`` reproduces the Haar draw to float64 precision; its angles lie in (−π, π).
- ``zeros`` / ``identity``: ``S = 0``, so the recurrent matrix starts at ``I`` under every map.
  Two names for one matrix: ``zeros`` names the skew parameter (asRNN's U_f), ``identity`` the
  recurrent matrix it gives (an IRNN-like start for RNN-orth).
- For odd n the last row and column of the block-diagonal inits stay zero (a fixed +1 eigenvalue).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from irnn_search.models.base import ModelError

SkewInit = Callable[[int, torch.Generator | None], torch.Tensor]


def _block_diagonal(d: torch.Tensor, n: int) -> torch.Tensor:
    """Skew matrix with ``d_i`` at (2i, 2i+1) and ``−d_i`` at (2i+1, 2i)."""
    S = torch.zeros(n, n, dtype=torch.float64)
    idx = torch.arange(0, 2 * d.numel(), 2)
    S[idx, idx + 1] = d
    S[idx + 1, idx] = -d
    return S


def henaff(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Block-diagonal skew, superdiagonal ``d_i ~ U(−π, π)``."""
    d = (torch.rand(n // 2, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    return _block_diagonal(d, n)


def cayley(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Block-diagonal skew, ``d_i = −tan(s_i/2)`` with ``s_i ~ U(0, π/2)`` (angles: see module doc)."""
    s = torch.rand(n // 2, generator=generator, dtype=torch.float64) * (math.pi / 2)
    # EXP writes −sqrt((1 − cos s)/(1 + cos s)), which is −tan(s/2) on [0, π/2].
    return _block_diagonal(-torch.tan(s / 2), n)


def haar_special_orthogonal(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-distributed matrix of SO(n), float64."""
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    # Without the sign fix QR's convention (R_ii > 0 is not guaranteed) biases the distribution.
    Q = Q * torch.where(torch.diagonal(R) < 0, -1.0, 1.0)
    if torch.linalg.det(Q) < 0:
        Q[:, 0] = -Q[:, 0]
    return Q


def log_special_orthogonal(Q: torch.Tensor) -> torch.Tensor:
    """The principal logarithm of a special orthogonal matrix: a real skew ``S`` with
    ``expm(S) = Q`` and eigenvalue angles in (−π, π).

    Method: the inverse Cayley map ``C = (I+Q)⁻¹(I−Q)`` is real skew; ``H = −iC`` is Hermitian,
    so ``eigh`` diagonalises it with a *unitary* basis even for repeated eigenvalues (a plain
    ``eig`` of Q can return a near-singular basis there). An eigenvalue ``ω`` of H corresponds to
    the angle ``θ = −2·atan(ω)`` of Q, so ``log Q = −2i·atan(H)``, computed in that basis. Near an
    eigenvalue −1 the solve loses accuracy but ``atan`` flattens the error (``atan' = 1/(1+ω²)``).

    Computed in float64; returns Q's dtype.

    Raises:
        ModelError: Q is not square, not special orthogonal (to rounding), or has an eigenvalue −1
            (a rotation by π, where the real principal log is not unique).
    """
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise ModelError(f"log_special_orthogonal needs a square matrix, got shape {tuple(Q.shape)}")
    q = Q.detach().to(torch.float64)
    n = q.shape[0]
    eye = torch.eye(n, dtype=torch.float64, device=q.device)
    # A float32 matrix is orthogonal only to ~1e-6 (more for large n): tolerate its rounding.
    tol = max(1e-6, 100 * torch.finfo(Q.dtype).eps * n**0.5) if Q.is_floating_point() else 1e-6
    if float((q.mT @ q - eye).abs().max()) > tol or float(torch.linalg.det(q)) < 0:
        raise ModelError("log_special_orthogonal needs a matrix in SO(n) (orthogonal with det +1)")
    no_log = "log_special_orthogonal: the matrix has an eigenvalue -1 (a rotation by pi); no unique real log"
    try:
        C = torch.linalg.solve(eye + q, eye - q)
    except torch.linalg.LinAlgError:
        raise ModelError(no_log) from None
    C = (C - C.mT) / 2
    w, U = torch.linalg.eigh(-1j * C.to(torch.complex128))
    S = (-2j * (U * torch.atan(w).to(torch.complex128)) @ U.mH).real
    S = (S - S.mT) / 2
    if not torch.isfinite(S).all() or float((torch.linalg.matrix_exp(S) - q).abs().max()) > tol:
        raise ModelError(no_log)
    return S.to(Q.dtype)


def random(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Principal log of a Haar-random matrix of SO(n)."""
    return log_special_orthogonal(haar_special_orthogonal(n, generator))


def zeros(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``S = 0``: the recurrent matrix starts at I."""
    return torch.zeros(n, n, dtype=torch.float64)


SKEW_INITS: dict[str, SkewInit] = {
    "henaff": henaff,
    "cayley": cayley,
    "random": random,
    "zeros": zeros,
    "identity": zeros,
}


def skew_init(name: str) -> SkewInit:
    """The initialiser called ``name``.

    Raises:
        ModelError: unknown name (the message lists the valid ones).
    """
    try:
        return SKEW_INITS[name]
    except KeyError:
        raise ModelError(f"unknown init {name!r}; valid inits: {', '.join(SKEW_INITS)}") from None
