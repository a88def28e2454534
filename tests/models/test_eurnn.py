from __future__ import annotations

import pytest
import torch

from irnn_search.models import ModelError
from irnn_search.models.eurnn import EURNN, EURNNConfig, givens_product, layer_pairs
from irnn_search.train import TrainConfig, build_optimizer


def _model(n: int = 7, **options: object) -> EURNN:
    torch.manual_seed(0)
    return EURNN(EURNNConfig(hidden_size=n, **options), input_size=3, output_size=2)  # type: ignore[arg-type]


def test_each_layer_is_the_givens_rotation_it_claims() -> None:
    theta = torch.tensor([0.3, -1.1])
    W = givens_product([torch.zeros(3), theta], 6)  # layer 0 identity; layer 1 rotates (1,2) and (3,4)
    expected = torch.eye(6)
    for (i, j), t in zip([(1, 2), (3, 4)], theta, strict=True):
        expected[i, i], expected[i, j], expected[j, i], expected[j, j] = t.cos(), -t.sin(), t.sin(), t.cos()
    torch.testing.assert_close(W, expected)
    assert layer_pairs(7, 0)[0].tolist() == [0, 2, 4] and layer_pairs(7, 1)[0].tolist() == [1, 3, 5]


def test_orthogonal_after_twenty_optimizer_steps_with_odd_and_even_sizes() -> None:
    for n in (7, 16):
        model = _model(n)
        opt = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-2))
        for _ in range(20):
            out, _ = model(torch.randn(5, 4, 3))
            out.square().mean().backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            W = model.recurrent_weight
            assert float((W.t() @ W - torch.eye(n)).abs().max()) < 1e-5
            assert float(torch.linalg.det(W)) == pytest.approx(1.0, abs=1e-4)


def test_zero_init_angle_starts_at_the_identity_and_modrelu_is_applied() -> None:
    model = _model(init_angle=0.0)
    with torch.no_grad():
        assert torch.equal(model.recurrent_weight, torch.eye(7))
        model.nonlinearity.b.fill_(-0.5)
        hs, _ = model.recurrence(torch.randn(6, 4, 3), None)
    assert (hs == 0).any()


def test_gradcheck_float64() -> None:
    model = _model(5, capacity=3).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    names = [name for name, _ in model.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def f(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (xx,))[0]

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), *values))


def test_parameter_count_and_bad_options() -> None:
    # n=8, capacity 4: 4 + 3 + 4 + 3 angles, input 8*3, modReLU 8, readout 8*2+2.
    assert _model(8).num_parameters() == 14 + 24 + 8 + 18
    with pytest.raises(ModelError, match="capacity must be >= 1"):
        EURNNConfig(capacity=0)


@pytest.mark.slow
def test_trains_on_adding_t30_to_half_the_baseline() -> None:
    from irnn_search.train import seed_everything
    from tests.models._adding import assert_learns_adding

    seed_everything(0)
    model = EURNN(EURNNConfig(hidden_size=32, init_angle=0.0), input_size=2, output_size=1)
    assert_learns_adding(
        model,
        TrainConfig(steps=3000, eval_every=250, seed=0, optimizer="adam", lr=1e-2, clip=1.0),
        seed=0,
        batch_size=64,
    )
