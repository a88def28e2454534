from __future__ import annotations

import pytest
import torch

from irnn_search.models import build_model


def test_tanh_is_applied_and_weights_are_glorot_normal() -> None:
    torch.manual_seed(0)
    model = build_model("rnn", {"hidden_size": 200}, input_size=50, output_size=1)
    w_hh, w_ih = model.rnn.weight_hh_l0.detach(), model.rnn.weight_ih_l0.detach()
    # Glorot normal: std = sqrt(2 / (fan_in + fan_out)).
    assert abs(float(w_hh.std()) - (2 / 400) ** 0.5) < 0.005
    assert abs(float(w_ih.std()) - (2 / 250) ** 0.5) < 0.005
    assert not model.rnn.bias_ih_l0.any()
    hs, _ = model.recurrence(10 * torch.randn(30, 4, 50), None)
    assert hs.abs().max() <= 1.0 and (hs < 0).any()


@pytest.mark.slow
def test_trains_on_adding_t30_to_half_the_baseline() -> None:
    from irnn_search.train import TrainConfig, seed_everything
    from tests.models._adding import assert_learns_adding

    seed_everything(0)
    model = build_model("rnn", {"hidden_size": 64}, input_size=2, output_size=1)
    assert_learns_adding(
        model, TrainConfig(steps=3000, eval_every=250, optimizer="adam", lr=3e-3, clip=1.0), seed=0, batch_size=64
    )
