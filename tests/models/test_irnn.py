from __future__ import annotations

import pytest
import torch

from irnn_search.models import ModelError, build_model


def _irnn(**options: object) -> torch.nn.Module:
    return build_model("irnn", {"hidden_size": 100, **options}, input_size=2, output_size=1)


@pytest.mark.parametrize("scale", [1.0, 0.01, 0.5])
def test_recurrent_matrix_is_scale_times_identity_at_init(scale: float) -> None:
    model = _irnn(identity_scale=scale)
    assert torch.equal(model.recurrent_weight, scale * torch.eye(100))


def test_input_weights_are_small_gaussian_and_biases_zero() -> None:
    torch.manual_seed(0)
    model = _irnn()
    w = model.rnn.weight_ih_l0.detach()
    assert abs(float(w.std()) - 1e-3) < 2e-4 and abs(float(w.mean())) < 2e-4
    assert not model.rnn.bias_ih_l0.any() and not model.rnn.bias_hh_l0.any()


def test_parameter_count_matches_the_irnn_demo() -> None:
    # IRD's adding-problem IRNN prints "10.5 K": W_ih 100x2, W_hh 100x100, two biases, readout 100->1.
    assert _irnn().num_parameters() == 10_501


def test_relu_is_applied() -> None:
    torch.manual_seed(0)
    model = _irnn()
    with torch.no_grad():
        model.rnn.weight_ih_l0.normal_()
    hs, _ = model.recurrence(torch.randn(20, 3, 2), None)
    assert (hs >= 0).all() and (hs == 0).any()


@pytest.mark.parametrize("family", ["irnn", "rnn"])
def test_hand_loop_and_fused_kernel_agree_in_outputs_and_gradients(family: str) -> None:
    torch.manual_seed(0)
    loop = build_model(family, {"hidden_size": 16, "impl": "loop"}, input_size=3, output_size=2)
    fused = build_model(family, {"hidden_size": 16, "impl": "fused"}, input_size=3, output_size=2)
    fused.load_state_dict(loop.state_dict())
    with torch.no_grad():  # make the recurrence non-trivial
        for m in (loop, fused):
            m.rnn.weight_ih_l0.copy_(torch.linspace(-1, 1, 48).view(16, 3))
    x = torch.randn(25, 4, 3)
    outs = []
    for m in (loop, fused):
        y, h = m(x)
        y.square().sum().backward()
        outs.append((y, h, [p.grad.clone() for p in m.parameters()]))
    (y1, h1, g1), (y2, h2, g2) = outs
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h1, h2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_negative_scale_and_unknown_options_are_refused() -> None:
    with pytest.raises(ModelError, match="identity_scale must be >= 0"):
        _irnn(identity_scale=-1)
    with pytest.raises(ModelError, match="valid options: hidden_size, impl, identity_scale"):
        _irnn(forget_bias=1.0)
    with pytest.raises(ModelError, match="unknown model 'gru'; valid models: irnn"):
        build_model("gru", {}, input_size=1, output_size=1)


def test_last_step_readout_and_carried_state() -> None:
    torch.manual_seed(0)
    model = build_model("irnn", {"hidden_size": 8}, input_size=2, output_size=3)
    x = torch.rand(12, 5, 2)
    all_steps, h_all = model(x)
    last, _ = model(x, readout="last")
    assert all_steps.shape == (12, 5, 3) and last.shape == (5, 3)
    torch.testing.assert_close(all_steps[-1], last)
    # Two chunks with the state carried equal one pass over the whole sequence.
    first, h_mid = model(x[:7])
    second, h_end = model(x[7:], h_mid)
    torch.testing.assert_close(torch.cat([first, second]), all_steps)
    torch.testing.assert_close(h_end, h_all)
