from __future__ import annotations

import math

import pytest
import torch

from irnn_search.models import ModelError, build_model
from irnn_search.models.init import (
    SKEW_INITS,
    cayley,
    haar_special_orthogonal,
    henaff,
    log_special_orthogonal,
    skew_init,
)
from irnn_search.models.orthogonal import cayley_map


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _angles(W: torch.Tensor) -> torch.Tensor:
    """|eigenvalue angles| of an orthogonal matrix, in radians."""
    return torch.linalg.eigvals(W.detach().double()).angle().abs()


@pytest.mark.parametrize("name", list(SKEW_INITS))
@pytest.mark.parametrize("n", [1, 6, 7])
def test_every_init_is_skew_symmetric_float64_and_reproducible(name: str, n: int) -> None:
    S = skew_init(name)(n, _gen())
    assert S.shape == (n, n) and S.dtype == torch.float64
    assert torch.equal(S, -S.mT)
    assert torch.equal(S, skew_init(name)(n, _gen()))


def test_henaff_is_block_diagonal_with_entries_uniform_on_minus_pi_pi() -> None:
    S = henaff(2001, _gen())
    d = S.diagonal(1)[::2]
    assert torch.equal(S, torch.diag_embed(S.diagonal(1), 1) - torch.diag_embed(S.diagonal(1), 1).mT)
    assert not S.diagonal(1)[1::2].any() and not S[-1].any()  # odd n: the last unit is left alone
    # Both signs: the ICML-era draw was U(−π, 0).
    assert float(d.abs().max()) <= math.pi and float(d.min()) < -3.0 and float(d.max()) > 3.0
    assert abs(float(d.mean())) < 0.2


def test_cayley_init_entries_are_minus_tan_of_half_an_angle_in_0_pi_over_2() -> None:
    d = cayley(2000, _gen()).diagonal(1)[::2]
    assert float(d.max()) <= 0.0 and float(d.min()) >= -1.0 and float(d.min()) < -0.99


def _max_angle(family: str, init: str) -> float:
    """Largest |eigenvalue angle| of a fresh 64-unit model's recurrent matrix, in radians."""
    model = build_model(family, {"hidden_size": 64, "init": init}, input_size=1, output_size=1)
    return float(_angles(model.recurrent_weight).max())  # type: ignore[arg-type]


def test_cayley_init_angles_differ_between_expm_and_the_cayley_map() -> None:
    torch.manual_seed(0)
    # The same skew matrix: expm rotates each block by |d| ≤ 1 rad, the Cayley map by s ≤ π/2.
    assert 0.9 < _max_angle("exprnn", "cayley") <= 1.0 + 1e-5
    assert 1.4 < _max_angle("cayley", "cayley") <= math.pi / 2 + 1e-5
    assert _max_angle("exprnn", "henaff") > 2.8  # henaff spreads the angles over (−π, π)


def test_zeros_and_identity_start_the_recurrent_matrix_at_i() -> None:
    for name in ("zeros", "identity"):
        assert not skew_init(name)(5, None).any()
        model = build_model("exprnn", {"hidden_size": 5, "init": name}, input_size=1, output_size=1)
        assert torch.equal(model.recurrent_weight, torch.eye(5))


def test_haar_draws_are_special_orthogonal_and_unbiased() -> None:
    gen = _gen()
    Qs = torch.stack([haar_special_orthogonal(3, gen) for _ in range(2000)])
    assert torch.allclose(Qs.mT @ Qs, torch.eye(3, dtype=torch.float64).expand(2000, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(Qs), torch.ones(2000, dtype=torch.float64))
    # Haar on SO(3) has mean 0; QR without the sign fix has a diagonal mean near ±0.5.
    assert float(Qs.mean(0).abs().max()) < 0.1


@pytest.mark.parametrize("n", [2, 3, 8, 65])
def test_random_init_is_the_principal_log_of_a_haar_draw(n: int) -> None:
    Q = haar_special_orthogonal(n, _gen(1))
    S = skew_init("random")(n, _gen(1))
    torch.testing.assert_close(torch.linalg.matrix_exp(S), Q, rtol=0, atol=1e-10)
    assert float(torch.linalg.eigvals(S).imag.abs().max()) < math.pi  # principal branch


@pytest.mark.parametrize(
    "Q",
    [
        torch.eye(6, dtype=torch.float64),  # repeated eigenvalues
        torch.linalg.matrix_exp(henaff(9, _gen())),  # odd n, blocks up to π
        torch.tensor([[math.cos(3.1), -math.sin(3.1)], [math.sin(3.1), math.cos(3.1)]], dtype=torch.float64),
        cayley_map(henaff(40, _gen(3))),
    ],
)
def test_log_special_orthogonal_round_trips(Q: torch.Tensor) -> None:
    S = log_special_orthogonal(Q)
    assert torch.equal(S, -S.mT)
    torch.testing.assert_close(torch.linalg.matrix_exp(S), Q, rtol=0, atol=1e-10)


def test_log_special_orthogonal_refuses_what_has_no_real_principal_log() -> None:
    with pytest.raises(ModelError, match="eigenvalue -1"):
        log_special_orthogonal(-torch.eye(2, dtype=torch.float64))
    with pytest.raises(ModelError, match="SO\\(n\\)"):
        log_special_orthogonal(torch.diag(torch.tensor([1.0, -1.0])))  # det −1
    with pytest.raises(ModelError, match="SO\\(n\\)"):
        log_special_orthogonal(2 * torch.eye(3))


def test_unknown_init_lists_the_valid_ones() -> None:
    with pytest.raises(ModelError, match="unknown init 'haar'; valid inits: henaff, cayley, random, zeros, identity"):
        skew_init("haar")
