from __future__ import annotations

import pytest
import torch

from irnn_search.models import ModelError
from irnn_search.models.exprnn import recurrent_loop
from irnn_search.models.nnrnn import NNRNN, NNRNNConfig
from irnn_search.train import TrainConfig, build_optimizer


def _model(n: int = 8, **options: object) -> NNRNN:
    torch.manual_seed(0)
    return NNRNN(NNRNNConfig(hidden_size=n, **options), input_size=3, output_size=2)  # type: ignore[arg-type]


def _eye_dev(Q: torch.Tensor) -> float:
    return float((Q.t() @ Q - torch.eye(Q.shape[0])).abs().max())


def _steps(model: NNRNN, n: int = 20) -> None:
    opt = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-2, lr_orth=1e-2))
    for _ in range(n):
        out, _ = model(torch.randn(6, 4, 3))
        (out.square().mean() + model.penalty()).backward()  # type: ignore[operator]
        opt.step()
        opt.zero_grad()


def test_initialisation_is_the_papers_intent_never_uninitialised_memory() -> None:
    model = _model()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(model.alpha.detach(), torch.ones(4)) and not model.T.any()
    assert (model.theta >= 0).all() and (model.theta <= 2 * torch.pi).all()
    with torch.no_grad():
        assert _eye_dev(model.P.weight) < 1e-5 and model.skew_parameter.abs().sum() > 0


def test_block_structure_and_strict_triangularity_hold_after_training_steps() -> None:
    model = _model()
    with torch.no_grad():
        model.T.copy_(torch.randn(8, 8))  # junk below the diagonal of the raw parameter...
    _steps(model)
    with torch.no_grad():
        N, Lam = model.non_normal_part, model.normal_part
        assert model.T.tril().abs().sum() > 0 and N.triu(1).abs().sum() > 0
        assert not N.tril().any()  # ...never enters the recurrent matrix
        mask = torch.block_diag(*[torch.ones(2, 2)] * 4).bool()
        assert not Lam[~mask].any()
        for i in range(4):
            block = Lam[2 * i : 2 * i + 2, 2 * i : 2 * i + 2]
            a, t = model.alpha[i], model.theta[i]
            rot = torch.stack([torch.stack([t.cos(), -t.sin()]), torch.stack([t.sin(), t.cos()])])
            torch.testing.assert_close(block, a * rot)
        assert (model.alpha != 1).any()
        P = model.P.weight
        assert _eye_dev(P) < 1e-5
        torch.testing.assert_close(model.recurrent_weight, P @ (Lam + N) @ P.t())


def test_modrelu_is_really_applied() -> None:
    # The reference's --nonlin relu silently ran a linear RNN; ours must not be linear.
    model = _model()
    with torch.no_grad():
        model.nonlinearity.b.fill_(-0.5)
        x = torch.randn(10, 4, 3)
        hs, _ = model.recurrence(x, None)
        linear, _ = recurrent_loop(
            x, torch.zeros(4, 8), model.input_kernel.weight, model.recurrent_weight.t(), lambda z: z
        )
    assert (hs == 0).any() and not torch.allclose(hs, linear, atol=1e-3)


def test_penalty_and_parameter_groups() -> None:
    model = _model(delta=0.5, t_decay=1e-3)
    with torch.no_grad():
        model.alpha.fill_(2.0)
    assert float(model.penalty().detach()) == pytest.approx(0.5 * 4)  # type: ignore[union-attr]
    opt = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-3, lr_orth=1e-5))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["T"]["weight_decay"] == 1e-3 and groups["T"]["params"] == [model.T]
    assert groups["orthogonal"]["lr"] == 1e-5 and groups["orthogonal"]["params"] == [model.skew_parameter]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_parameter_count_matches_the_same_parameter_copy_budget() -> None:
    # SUP: nnRNN-128 on copy (one-hot in 10, out 9) ≈ 18.9K; exact: 18,953 (REFERENCE §4.3, §4.5).
    assert NNRNN(NNRNNConfig(hidden_size=128), input_size=10, output_size=9).num_parameters() == 18_953


def test_gradcheck_float64_in_the_inputs() -> None:
    model = _model(4).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda xx: model(xx)[0], (x,))


def test_gradcheck_float64_in_the_parameters() -> None:
    model = _model(4).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    names = [name for name, _ in model.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def f(*ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (x,))[0]

    assert torch.autograd.gradcheck(f, values)


def test_odd_hidden_size_is_refused() -> None:
    with pytest.raises(ModelError, match="even hidden_size"):
        NNRNNConfig(hidden_size=7)


@pytest.mark.slow
def test_trains_on_adding_t30_to_half_the_baseline() -> None:
    from irnn_search.train import seed_everything
    from tests.models._adding import assert_learns_adding

    seed_everything(1)
    model = NNRNN(NNRNNConfig(hidden_size=32), input_size=2, output_size=1)
    assert_learns_adding(
        model,
        TrainConfig(steps=3000, eval_every=250, seed=1, optimizer="adam", lr=3e-3, lr_orth=3e-4, clip=1.0),
        seed=1,
        batch_size=32,
    )
