from __future__ import annotations

import pytest
import torch

from irnn_search.models import ModelError, build_model
from irnn_search.models.rnn_orth import RNNOrth
from irnn_search.train import TrainConfig, build_optimizer, seed_everything
from tests.models.test_exprnn import (
    gradcheck_full_recurrence,
    learns_adding,
    orthogonality_error,
    steps_on_a_random_loss,
)


def _rnn_orth(n: int = 16, **options: object) -> RNNOrth:
    model = build_model("rnn-orth", {"hidden_size": n, **options}, input_size=3, output_size=2)
    assert isinstance(model, RNNOrth)
    return model


def _off_block_diagonal(V: torch.Tensor) -> torch.Tensor:
    """Entries outside the 2×2 diagonal blocks (0,1), (2,3), ..."""
    blocks = torch.arange(V.shape[0]) // 2
    return V[blocks[:, None] != blocks[None, :]]


def test_the_requested_init_is_honoured() -> None:
    # NNR computes the named init and then ignores it, always starting from a random orthogonal V.
    torch.manual_seed(0)
    assert torch.equal(_rnn_orth(init="identity").recurrent_weight, torch.eye(16))
    henaff = _rnn_orth(init="henaff").recurrent_weight.detach()
    assert not _off_block_diagonal(henaff).any() and orthogonality_error(henaff) < 1e-6
    cayley = _rnn_orth(init="cayley").recurrent_weight.detach()
    assert not _off_block_diagonal(cayley).any()
    assert float(torch.linalg.eigvals(cayley.double()).angle().abs().max()) <= 1 + 1e-6  # expm of cayley init
    random = _rnn_orth().recurrent_weight.detach()
    assert _rnn_orth().config.init == "random"
    assert _off_block_diagonal(random).abs().min() > 0 and orthogonality_error(random) < 1e-6
    assert float(torch.linalg.det(random.double())) == pytest.approx(1.0)


def test_trained_unconstrained_in_one_group() -> None:
    torch.manual_seed(0)
    model = _rnn_orth(32)
    groups = model.parameter_groups()
    assert [(g.name, g.kind) for g in groups] == [("unconstrained", "unconstrained")]
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, lr_orth=1e-5))
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3]
    steps_on_a_random_loss(model)
    assert orthogonality_error(model.recurrent_weight) > 1e-3  # nothing keeps it orthogonal


@pytest.mark.parametrize(("nonlinearity", "count"), [("tanh", 3 * 16 + 16 + 16 * 16 + 16 * 2 + 2), ("modrelu", 354)])
def test_parameter_count(nonlinearity: str, count: int) -> None:
    # modReLU: the input kernel loses its bias and modReLU's b takes its place: same count.
    assert _rnn_orth(nonlinearity=nonlinearity).num_parameters() == count == 354


def test_tanh_is_applied_and_modrelu_replaces_the_input_bias() -> None:
    torch.manual_seed(0)
    x = 10 * torch.randn(20, 4, 3)
    tanh = _rnn_orth()
    hs, _ = tanh.recurrence(x, None)
    assert hs.abs().max() <= 1.0 and (hs.abs() > 0.99).any()
    modrelu = _rnn_orth(nonlinearity="modrelu")
    assert modrelu.input_kernel.bias is None and modrelu.modrelu is not None
    with torch.no_grad():
        modrelu.modrelu.b.fill_(-0.5)
    hs, _ = modrelu.recurrence(x, None)
    assert hs.abs().max() > 1.0 and (hs == 0).any()  # unbounded, with modReLU's dead zone


@pytest.mark.parametrize("nonlinearity", ["tanh", "modrelu"])
def test_gradcheck_of_the_full_recurrence_in_float64(nonlinearity: str) -> None:
    torch.manual_seed(0)
    assert gradcheck_full_recurrence(_rnn_orth(4, nonlinearity=nonlinearity))


def test_bad_nonlinearity_is_refused() -> None:
    # "relu" is refused rather than silently linear (NNR's --nonlin relu applies no nonlinearity).
    with pytest.raises(ModelError, match="nonlinearity must be one of tanh, modrelu; got 'relu'"):
        _rnn_orth(nonlinearity="relu")


@pytest.mark.slow
def test_learns_the_adding_problem_t30_twice_below_baseline() -> None:
    # Adam 1e-3, clip 1, hidden 64, batch 64: val MSE < 1/12 in 700-1000 steps for seeds 0, 1, 2.
    seed_everything(0)
    model = build_model("rnn-orth", {"hidden_size": 64}, input_size=2, output_size=1)
    config = TrainConfig(steps=3000, optimizer="adam", lr=1e-3, clip=1.0, eval_every=100, seed=0)
    result, elapsed = learns_adding(model, config, seed=0, batch_size=64)
    assert result.best["val_mse"] < 1 / 12, result.history
    assert elapsed < 25
