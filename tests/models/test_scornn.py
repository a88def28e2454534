from __future__ import annotations

import pytest
import torch

from irnn_search.models import ModelError, build_model
from irnn_search.models.init import haar_special_orthogonal
from irnn_search.models.orthogonal import cayley_map, skew
from irnn_search.models.scornn import ScoRNN
from irnn_search.train import TrainConfig, seed_everything
from tests.models.test_exprnn import (
    gradcheck_full_recurrence,
    learns_adding,
    orthogonality_error,
    steps_on_a_random_loss,
)


def _scornn(n: int = 32, **options: object) -> ScoRNN:
    model = build_model("scornn", {"hidden_size": n, **options}, input_size=3, output_size=2)
    assert isinstance(model, ScoRNN)
    return model


def test_cayley_map_is_i_plus_s_inverse_times_i_minus_s() -> None:
    # Guards the torch.linalg.solve argument order: swapped, it silently gives the inverse map.
    S = skew(torch.randn(6, 6, dtype=torch.float64))
    eye = torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(cayley_map(S), torch.linalg.inv(eye + S) @ (eye - S))
    d = 0.7  # 2×2: a rotation by −2·atan(d)
    c, s = (1 - d * d) / (1 + d * d), 2 * d / (1 + d * d)
    expected = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    torch.testing.assert_close(cayley_map(torch.tensor([[0.0, d], [-d, 0.0]], dtype=torch.float64)), expected)


@pytest.mark.parametrize(("n", "rho_den", "rho"), [(32, 2, 16), (170, 10, 17), (7, 2, 3), (5, 6, 0)])
def test_d_has_hidden_over_rho_den_minus_ones_at_the_end(n: int, rho_den: int, rho: int) -> None:
    torch.manual_seed(0)
    model = _scornn(n, rho_den=rho_den)
    W = model.recurrent_weight.detach().double()
    S = skew(model.skew_parameter.detach().double())
    # W = Cayley(S) · D: the column signs of W relative to Cayley(S) are D's diagonal.
    C = cayley_map(S)
    signs = ((W * C).sum(0) / (C * C).sum(0)).round()
    assert signs.tolist() == [1.0] * (n - rho) + [-1.0] * rho
    assert round(float(torch.linalg.det(W))) == (-1) ** rho  # D reaches det −1, Cayley(S) cannot


def test_parameter_count_is_exprnn_s() -> None:
    model = build_model("scornn", {"hidden_size": 512}, input_size=1, output_size=10)
    assert model.num_parameters() == 136_970  # D is fixed, not a parameter


def test_recurrent_matrix_stays_orthogonal_after_20_rmsprop_steps() -> None:
    torch.manual_seed(0)
    model = _scornn()
    before = model.recurrent_weight.detach().clone()
    steps_on_a_random_loss(model)
    after = model.recurrent_weight.detach()
    assert orthogonality_error(after) < 1e-5 and (after - before).abs().max() > 1e-2


def test_gradcheck_of_the_full_recurrence_in_float64() -> None:
    torch.manual_seed(0)
    assert gradcheck_full_recurrence(_scornn(4))


def test_modrelu_is_applied() -> None:
    torch.manual_seed(0)
    model = _scornn(16)
    with torch.no_grad():
        model.nonlinearity.b.fill_(-0.3)
    hs, _ = model.recurrence(torch.randn(12, 4, 3), None)
    assert (hs == 0).any()  # modReLU's dead zone |z| < 0.3; a linear recurrence has none


def test_assigning_w_uses_right_inverse_through_d() -> None:
    torch.manual_seed(0)
    model = _scornn(6)  # D = diag(1, 1, 1, -1, -1, -1)
    W = haar_special_orthogonal(6).float() * model.recurrent.parametrizations["weight"][-1].signs
    model.recurrent.weight = W
    torch.testing.assert_close(model.recurrent_weight.detach(), W, rtol=0, atol=1e-5)


def test_default_init_is_scornn_s_and_rho_den_is_checked() -> None:
    model = _scornn(64)
    S = skew(model.skew_parameter.detach().double())
    theta = torch.linalg.eigvals(cayley_map(S)).angle().abs()
    assert model.config.init == "cayley" and float(theta.max()) <= torch.pi / 2 + 1e-9
    with pytest.raises(ModelError, match="rho_den must be >= 1"):
        _scornn(rho_den=0)


@pytest.mark.slow
def test_learns_the_adding_problem_t30_twice_below_baseline() -> None:
    seed_everything(0)
    model = build_model("scornn", {"hidden_size": 32}, input_size=2, output_size=1)
    config = TrainConfig(steps=2000, optimizer="adam", lr=1e-2, lr_orth=1e-3, clip=1.0, eval_every=100, seed=0)
    result, elapsed = learns_adding(model, config, seed=0, batch_size=64)
    assert result.best["val_mse"] < 1 / 12, result.history
    assert elapsed < 25
