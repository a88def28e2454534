from __future__ import annotations

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
