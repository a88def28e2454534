from __future__ import annotations

import pytest
import torch

from irnn_search.models import build_model


def test_readout_sees_h_never_c() -> None:
    torch.manual_seed(0)
    model = build_model("lstm", {"hidden_size": 6}, input_size=3, output_size=2)
    x = torch.randn(9, 4, 3)
    out, (h, c) = model(x)
    # Reference recurrence with an LSTMCell holding the same weights.
    cell = torch.nn.LSTMCell(3, 6)
    lstm = model.lstm
    cell.load_state_dict(
        {
            "weight_ih": lstm.weight_ih_l0,
            "weight_hh": lstm.weight_hh_l0,
            "bias_ih": lstm.bias_ih_l0,
            "bias_hh": lstm.bias_hh_l0,
        }
    )
    h_ref, c_ref = torch.zeros(4, 6), torch.zeros(4, 6)
    with torch.no_grad():
        for xt in x:
            h_ref, c_ref = cell(xt, (h_ref, c_ref))
        torch.testing.assert_close(out[-1], model.readout(h_ref), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close((h, c), (h_ref, c_ref), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(out[-1], model.readout(c_ref), atol=1e-3)  # the asRNN reference bug


@pytest.mark.parametrize(("forget_bias", "init"), [(1.0, "default"), (0.0, "glorot"), (2.5, "default")])
def test_forget_bias_is_explicit(forget_bias: float, init: str) -> None:
    model = build_model(
        "lstm", {"hidden_size": 8, "forget_bias": forget_bias, "init": init}, input_size=1, output_size=1
    )
    total = model.lstm.bias_ih_l0 + model.lstm.bias_hh_l0
    assert torch.equal(total[8:16], torch.full((8,), forget_bias))


def test_parameter_count_matches_the_published_mnist_budget() -> None:
    # LSTM-128 on MNIST: 4(n(in+n) + 2n) + n·out + out = 68,362 (REFERENCE.md §4.5).
    assert build_model("lstm", {"hidden_size": 128}, input_size=1, output_size=10).num_parameters() == 68_362


def test_token_inputs_are_embedded_first() -> None:
    model = build_model("lstm", {"hidden_size": 16}, input_size=50, output_size=50, vocab_size=50)
    out, _ = model(torch.randint(0, 50, (7, 3)))
    assert out.shape == (7, 3, 50)
    assert model.embedding is not None and model.embedding.weight.abs().max() <= 0.1


@pytest.mark.slow
def test_trains_on_adding_t30_to_half_the_baseline() -> None:
    from irnn_search.train import TrainConfig, seed_everything
    from tests.models._adding import assert_learns_adding

    seed_everything(0)
    model = build_model("lstm", {"hidden_size": 32}, input_size=2, output_size=1)
    assert_learns_adding(
        model, TrainConfig(steps=3000, eval_every=250, optimizer="adam", lr=1e-2, clip=1.0), seed=0, batch_size=64
    )
