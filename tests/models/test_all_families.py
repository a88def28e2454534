"""Rules every registered family must follow, whatever its maths."""

from __future__ import annotations

import pytest
import torch

from irnn_search.models import MODELS, build_model
from irnn_search.train import TrainConfig, build_optimizer

# (input_size, output_size, vocab_size, inputs): adding, copy, MNIST and PTB shapes, tiny.
SHAPES = {
    "adding": (2, 1, None, lambda: torch.rand(7, 3, 2)),
    "copy": (10, 9, None, lambda: torch.nn.functional.one_hot(torch.randint(0, 10, (7, 3)), 10).float()),
    "mnist": (1, 10, None, lambda: torch.rand(7, 3, 1)),
    "ptb": (50, 50, 50, lambda: torch.randint(0, 50, (7, 3))),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("family", MODELS)
def test_every_family_works_with_every_task_shape(family: str, shape: str) -> None:
    torch.manual_seed(0)
    n_in, n_out, vocab, make_x = SHAPES[shape]
    model = build_model(family, {"hidden_size": 8}, input_size=n_in, output_size=n_out, vocab_size=vocab)
    assert all(torch.isfinite(p).all() for p in model.parameters()), "a parameter starts non-finite"
    out, state = model(make_x())
    assert out.shape == (7, 3, n_out)
    out.square().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    # Chunks with the carried state continue the sequence (truncated BPTT relies on it).
    out2, _ = model(make_x(), state)
    assert torch.isfinite(out2).all()


@pytest.mark.parametrize("family", MODELS)
def test_parameter_groups_cover_every_parameter_exactly_once(family: str) -> None:
    model = build_model(family, {"hidden_size": 8}, input_size=3, output_size=2)
    grouped = [id(p) for g in model.parameter_groups() for p in g.params]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    opt = build_optimizer(model, TrainConfig(optimizer="adam", lr=1e-3, lr_orth=1e-4))
    constrained = [g for g in model.parameter_groups() if g.kind == "constrained"]
    assert len(opt.param_groups) == len([g for g in model.parameter_groups() if g.params])
    for g in opt.param_groups:
        assert g["lr"] == (1e-4 if any(c.name == g["name"] for c in constrained) else 1e-3)
    assert 0 < model.num_parameters() <= sum(p.numel() for p in model.parameters())
