from __future__ import annotations

import pytest
import torch

from irnn_search.models import ModelError
from irnn_search.models.asrnn import ASRNN, ASRNNConfig
from irnn_search.train import TrainConfig, build_optimizer


def _model(n: int = 6, **options: object) -> ASRNN:
    torch.manual_seed(0)
    return ASRNN(ASRNNConfig(hidden_size=n, **options), input_size=3, output_size=2)  # type: ignore[arg-type]


def _direct(model: ASRNN, x: torch.Tensor) -> torch.Tensor:
    """The formula as written, column form, one unit of work per step (the reference's way)."""
    W_hh, U_f, d = model.recurrent.weight, model.U_f.weight, model.scales
    W_f = U_f @ torch.diag(d)
    W_f_inv = torch.diag(1 / d) @ U_f.t()
    h = torch.zeros(model.hidden_size, x.shape[1], dtype=x.dtype)
    outs = []
    for xt in x:
        z = model.input_kernel.weight @ xt.t() + model.input_kernel.bias[:, None] + W_hh @ h
        h = W_f_inv @ torch.tanh(W_f @ z)
        outs.append(h.t())
    return torch.stack(outs)


def test_fast_recurrence_equals_the_direct_formula() -> None:
    model = _model(a=0.3, b=2.0)
    with torch.no_grad():
        model.U_f_skew.normal_(0, 0.5)  # a non-trivial U_f
        x = torch.randn(12, 4, 3)
        hs, _ = model.recurrence(x, None)
        torch.testing.assert_close(hs, _direct(model, x), rtol=1e-5, atol=1e-5)


def test_small_scales_give_a_linear_rnn_and_unit_scales_a_tanh_rnn() -> None:
    x = torch.randn(8, 4, 3)
    for d, act in ((1e-4, lambda z: z), (1.0, torch.tanh)):
        model = _model(a=d, b=d, eps=1e-9)  # U_f = I at init
        with torch.no_grad():
            hs, _ = model.recurrence(x, None)
            h = torch.zeros(4, 6)
            expected = []
            for xt in x:
                h = act(model.input_kernel(xt) + h @ model.recurrent.weight.t())
                expected.append(h)
        torch.testing.assert_close(hs, torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_orthogonality_after_twenty_optimizer_steps() -> None:
    for orth in ("exprnn", "cayley"):
        model = _model(16, orth=orth)
        opt = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-2, lr_orth=1e-2))
        for _ in range(20):
            out, _ = model(torch.randn(5, 4, 3))
            out.square().mean().backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            for Q in (model.recurrent.weight, model.U_f.weight):
                assert float((Q.t() @ Q - torch.eye(16)).abs().max()) < 1e-5
            assert model.U_f_skew.abs().sum() > 0  # U_f did move


def test_eps_must_be_positive_and_scales_never_reach_zero() -> None:
    with pytest.raises(ModelError, match="eps must be > 0"):
        ASRNNConfig(eps=0.0)
    model = _model(a=0.0, b=0.0, eps=1e-5)
    assert float(model.scales.detach().min()) == pytest.approx(1e-5)  # float32 rounding of 1e-5


def test_parameter_groups_follow_the_reference() -> None:
    model = _model()
    opt = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-3, lr_orth=1e-4))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["orthogonal"]["params"] == [model.recurrent_skew] and groups["orthogonal"]["lr"] == 1e-4
    main = groups["unconstrained"]["params"]
    assert any(p is model.U_f_skew for p in main) and any(p is model.S for p in main)


def test_parameter_counts_match_the_published_budgets() -> None:
    assert ASRNN(ASRNNConfig(hidden_size=364), input_size=1, output_size=10).num_parameters() == 136_874
    assert ASRNN(ASRNNConfig(hidden_size=138), input_size=10, output_size=9).num_parameters() == 21_813


def test_gradcheck_float64_in_inputs_and_parameters() -> None:
    model = _model(4, a=0.2, b=1.5).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    names = [name for name, _ in model.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def f(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, ps, strict=True)), (xx,))[0]

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), *values))


@pytest.mark.slow
def test_trains_on_adding_t30_to_half_the_baseline() -> None:
    from irnn_search.train import seed_everything
    from tests.models._adding import assert_learns_adding

    seed_everything(1)
    model = ASRNN(ASRNNConfig(hidden_size=32), input_size=2, output_size=1)  # the reference's MNIST a, b, eps
    assert_learns_adding(
        model,
        TrainConfig(steps=3000, eval_every=250, seed=1, optimizer="rmsprop", lr=3e-3, lr_orth=3e-4, clip=10.0),
        seed=1,
        batch_size=32,
    )
