from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from irnn_search.models import ModelError, RecurrentModel, build_model
from irnn_search.models.exprnn import DTriv, OrthogonalRNN, recurrent_loop
from irnn_search.models.init import haar_special_orthogonal
from irnn_search.models.modrelu import modrelu
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, TrainResult, build_optimizer, seed_everything, train

NEW_FAMILIES = ["exprnn", "dtriv", "cayley", "scornn", "rnn-orth"]


# -- helpers shared with test_scornn.py and test_rnn_orth.py ----------------------------------------
def orthogonality_error(W: torch.Tensor) -> float:
    W = W.detach()
    return float((W.mT @ W - torch.eye(W.shape[0], dtype=W.dtype)).abs().max())


def steps_on_a_random_loss(model: RecurrentModel, steps: int = 20, lr: float = 1e-2) -> None:
    """RMSprop steps on a random regression loss; ``after_step`` after each, as train() does."""
    optimizer = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=lr))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 8, model.input_size, generator=gen)
    target = torch.randn(10, 8, model.output_size, generator=gen)
    for _ in range(steps):
        out, _ = model(x)
        loss = (out - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step()


def gradcheck_full_recurrence(model: RecurrentModel) -> bool:
    """``gradcheck`` in float64 of the whole forward (recurrence and readout) with respect to the
    inputs, the initial state and every parameter (the raw skew one included)."""
    model = model.double()
    gen = torch.Generator().manual_seed(0)
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in model.named_parameters())
    x = torch.randn(3, 2, model.input_size, dtype=torch.float64, generator=gen, requires_grad=True)
    h0 = torch.randn(2, model.hidden_size, dtype=torch.float64, generator=gen, requires_grad=True)

    def run(x: torch.Tensor, h0: torch.Tensor, *ps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = functional_call(model, dict(zip(names, ps, strict=True)), (x, h0))
        assert isinstance(h, torch.Tensor)
        return out, h

    return bool(torch.autograd.gradcheck(run, (x, h0, *params)))


def learns_adding(model: RecurrentModel, config: TrainConfig, seed: int, batch_size: int) -> tuple[TrainResult, float]:
    """Train on adding T=30 until val MSE < 1/12 (half the 1/6 baseline); (result, seconds)."""
    task = build_task("adding", {"T": 30, "val_size": 500}, seed=seed, batch_size=batch_size)
    target = task.baseline()["mse"] / 2
    started = time.perf_counter()
    # train() calls model.after_step() after every optimizer step (dtriv's rebases).
    result = train(model, task, config, report=lambda step, m: m["val_mse"] < target)  # stop once met
    return result, time.perf_counter() - started


def _model(family: str, n: int = 32, **options: object) -> OrthogonalRNN:
    model = build_model(family, {"hidden_size": n, **options}, input_size=3, output_size=2)
    assert isinstance(model, OrthogonalRNN)
    return model


# -- parameter counts --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["exprnn", "dtriv", "cayley"])
def test_parameter_count_matches_exprnn_190_on_copy(family: str) -> None:
    copy = build_task("copy", {"T": 20})
    model = build_model(family, {"hidden_size": 190}, input_size=copy.input_size, output_size=copy.output_size)
    # in·n + n(n−1)/2 + n + n·out + out with in = 10, out = 9 (REFERENCE §4.5)
    assert (copy.input_size, copy.output_size) == (10, 9)
    assert model.num_parameters() == 21_764


def test_parameter_count_matches_exprnn_512_on_mnist() -> None:
    model = build_model("exprnn", {"hidden_size": 512}, input_size=1, output_size=10)
    assert model.num_parameters() == 136_970 == 512 + 512 * 511 // 2 + 512 + 512 * 10 + 10


# -- the constraint ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "options"), [("exprnn", {}), ("dtriv", {"K": 3, "M": 2}), ("cayley", {})])
def test_recurrent_matrix_stays_orthogonal_after_20_rmsprop_steps(family: str, options: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = _model(family, **options)
    before = model.recurrent_weight.detach().clone()
    steps_on_a_random_loss(model)
    after = model.recurrent_weight.detach()
    assert after.dtype == torch.float32
    assert orthogonality_error(after) < 1e-5
    assert (after - before).abs().max() > 1e-2  # it did move


def test_dtriv_rebases_every_k_steps_and_projects_every_m_rebases(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _model("dtriv", K=3, M=2)
    assert isinstance(model, DTriv)
    svd_calls = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda A, *a, **k: svd_calls.append(1) or real_svd(A, *a, **k))
    steps_on_a_random_loss(model)
    # 20 steps: rebases after steps 3, 6, ..., 18 (6 of them); projections after every 2nd rebase.
    assert len(svd_calls) == 3
    assert int(model.dynamic.steps) == 2 and int(model.dynamic.rebases) == 0
    assert (model.dynamic.base - torch.eye(32)).abs().max() > 1e-2
    assert orthogonality_error(model.dynamic.base) < 1e-5


def test_rebase_keeps_the_matrix_and_projection_removes_drift() -> None:
    torch.manual_seed(0)
    model = _model("dtriv", n=8, K=1, M=2)
    assert isinstance(model, DTriv)
    with torch.no_grad():
        model.skew_parameter.normal_()
    B = model.recurrent_weight.detach().clone()
    model.after_step()  # rebase 1: base <- B, skew <- 0
    assert not model.skew_parameter.any()
    torch.testing.assert_close(model.recurrent_weight.detach(), B, rtol=0, atol=1e-6)
    with torch.no_grad():
        model.dynamic.base.add_(1e-3 * torch.randn(8, 8))  # drift
    assert orthogonality_error(model.dynamic.base) > 1e-4
    model.after_step()  # rebase 2 = M: projection back onto O(8)
    assert orthogonality_error(model.recurrent_weight) < 1e-6
    torch.testing.assert_close(model.recurrent_weight.detach(), B, rtol=0, atol=1e-2)


def test_dtriv_resumed_run_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # base and the step counters are buffers, so a checkpoint carries them.
    def run(steps: int, checkpoint_dir: Path | None = None) -> DTriv:
        task = build_task("adding", {"T": 8, "val_size": 16}, seed=0, batch_size=4)
        seed_everything(0)
        model = build_model("dtriv", {"hidden_size": 8, "K": 3, "M": 2}, input_size=2, output_size=1)
        assert isinstance(model, DTriv)
        config = TrainConfig(steps=steps, optimizer="rmsprop", lr=1e-2, eval_every=5, seed=0)
        train(model, task, config, checkpoint_dir=checkpoint_dir)
        return model

    full = run(14)
    run(7, tmp_path)
    resumed = run(14, tmp_path)
    assert int(resumed.dynamic.steps) == 14 % 3 and int(resumed.dynamic.rebases) == 14 // 3 % 2
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("family", ["exprnn", "cayley", "dtriv"])
def test_assigning_an_orthogonal_matrix_uses_right_inverse(family: str) -> None:
    torch.manual_seed(0)
    model = _model(family, n=6)
    Q = haar_special_orthogonal(6).float()
    model.recurrent.weight = Q
    torch.testing.assert_close(model.recurrent_weight.detach(), Q, rtol=0, atol=1e-5)


# -- gradients ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["exprnn", "dtriv", "cayley"])
def test_gradcheck_of_the_full_recurrence_in_float64(family: str) -> None:
    torch.manual_seed(0)
    model = _model(family, n=4)
    if isinstance(model, DTriv):  # a non-trivial base, so the base · expm(S) path is exercised
        with torch.no_grad():
            model.dynamic.base.copy_(haar_special_orthogonal(4))
    assert gradcheck_full_recurrence(model)


# -- the nonlinearity --------------------------------------------------------------------------------
def test_modrelu_formula() -> None:
    z = torch.tensor([-1.0, -0.2, 0.0, 0.3, 2.0])
    torch.testing.assert_close(modrelu(z, torch.full((5,), -0.5)), torch.tensor([-0.5, 0.0, 0.0, 0.0, 1.5]))
    torch.testing.assert_close(modrelu(z, torch.full((5,), 0.5)), torch.tensor([-1.5, -0.7, 0.0, 0.8, 2.5]))


@pytest.mark.parametrize("family", ["exprnn", "dtriv", "cayley"])
def test_modrelu_is_applied_in_the_recurrence(family: str) -> None:
    torch.manual_seed(0)
    model = _model(family, n=16)
    with torch.no_grad():
        model.nonlinearity.b.fill_(-0.3)
    x = torch.randn(12, 4, 3)
    h0 = torch.zeros(4, 16)
    hs, _ = model.recurrence(x, None)
    B, w_in = model.recurrent_weight.detach(), model.input_kernel.weight.detach()
    expected, _ = recurrent_loop(x, h0, w_in, B, lambda z: modrelu(z, model.nonlinearity.b.detach()))
    linear, _ = recurrent_loop(x, h0, w_in, B, lambda z: z)
    torch.testing.assert_close(hs.detach(), expected)
    assert (hs - linear).abs().max() > 0.1 and (hs == 0).any()


# -- construction, groups, options -------------------------------------------------------------------
@pytest.mark.parametrize("family", NEW_FAMILIES)
@pytest.mark.parametrize("init", ["henaff", "cayley", "random", "zeros", "identity"])
def test_no_parameter_or_buffer_starts_non_finite(family: str, init: str) -> None:
    torch.manual_seed(0)
    model = build_model(family, {"hidden_size": 9, "init": init}, input_size=3, output_size=2)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(t).all(), name
    assert orthogonality_error(model.recurrent_weight) < 1e-5  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["exprnn", "dtriv", "cayley", "scornn"])
def test_skew_parameter_is_the_constrained_group_and_gets_lr_orth(family: str) -> None:
    model = _model(family, n=8)
    groups = {g.name: g for g in model.parameter_groups()}
    assert set(groups) == {"unconstrained", "orthogonal"}
    assert groups["orthogonal"].kind == "constrained" and groups["unconstrained"].kind == "unconstrained"
    assert groups["orthogonal"].params == [model.skew_parameter]
    everything = {id(p) for p in model.parameters()}
    assert {id(p) for g in groups.values() for p in g.params} == everything
    assert len(groups["unconstrained"].params) == len(everything) - 1
    optimizer = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-3, lr_orth=1e-4))
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"unconstrained": 1e-3, "orthogonal": 1e-4}


def test_bad_options_are_refused_with_the_valid_names() -> None:
    with pytest.raises(ModelError, match="init must be one of henaff, cayley, random, zeros, identity"):
        _model("exprnn", init="haar")
    with pytest.raises(ModelError, match="input_init must be one of kaiming, xavier"):
        _model("cayley", input_init="orthogonal")
    with pytest.raises(ModelError, match="K must be >= 1"):
        _model("dtriv", K=0)
    with pytest.raises(ModelError, match=r"valid options: hidden_size, init, input_init$"):
        _model("exprnn", K=3)


def test_carried_state_equals_one_pass() -> None:
    torch.manual_seed(0)
    model = _model("exprnn", n=8)
    x = torch.rand(12, 5, 3)
    whole, h_all = model(x)
    first, h_mid = model(x[:7])
    second, h_end = model(x[7:], h_mid)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(h_end, h_all)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_new_families_train_through_the_cli(family: str) -> None:
    from typer.testing import CliRunner

    from irnn_search.cli import app

    args = ["train", "--task", "copy", "--T", "20", "--model", family, "--hidden", "16", "--steps", "20"]
    result = CliRunner().invoke(app, [*args, "--lr-orth", "1e-4", "-t", "val_size=50", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == family and summary["outcome"] == "completed"
    assert math.isfinite(summary["final"]["val_loss"])


# -- learning ----------------------------------------------------------------------------------------
# Adam lr 1e-2, lr_orth 1e-3, clip 1, batch 64, hidden 32: all three reach val MSE < 1/12 on
# adding T=30 within 300-600 steps for seeds 0, 1, 2 (3-9 s on this 2-core CPU).
ADDING = TrainConfig(steps=2000, optimizer="adam", lr=1e-2, lr_orth=1e-3, clip=1.0, eval_every=100, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "options"), [("exprnn", {}), ("dtriv", {"K": 20, "M": 4}), ("cayley", {})])
def test_learns_the_adding_problem_t30_twice_below_baseline(family: str, options: dict[str, int]) -> None:
    seed_everything(0)
    model = build_model(family, {"hidden_size": 32, **options}, input_size=2, output_size=1)
    result, elapsed = learns_adding(model, ADDING, seed=0, batch_size=64)
    assert result.best["val_mse"] < 1 / 12, result.history
    assert elapsed < 25
    if isinstance(model, DTriv):  # train() rebased it every K=20 steps (it stops at a multiple of 100)
        assert result.step % 100 == 0 and int(model.dynamic.steps) == 0
        assert int(model.dynamic.rebases) == result.step // 20 % 4
        assert (model.dynamic.base - torch.eye(32)).abs().max() > 1e-2
