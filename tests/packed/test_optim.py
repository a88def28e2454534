"""The vectorised optimizers repeat torch.optim's CPU updates bit for bit, per member."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from irnn_search.packed.optim import PackedOptimizer, PackError

# (optimizer class, options) per member of one pack: kinds mixed, hyperparameters all different.
MEMBERS = [
    (torch.optim.SGD, {"lr": 0.03, "momentum": 0.0}),
    (torch.optim.SGD, {"lr": 0.011, "momentum": 0.9}),
    (torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999)}),
    (torch.optim.Adam, {"lr": 3e-2, "betas": (0.7, 0.95)}),
    (torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.99}),
    (torch.optim.RMSprop, {"lr": 2e-2, "alpha": 0.5}),
]


def _member(seed: int) -> dict[str, nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {"w": nn.Parameter(torch.randn(7, 5, generator=g)), "b": nn.Parameter(torch.randn(5, generator=g))}


def test_mixed_optimizers_update_each_member_exactly_as_torch_optim_over_steps_and_skips() -> None:
    alone = [_member(k) for k in range(len(MEMBERS))]
    ours = [_member(k) for k in range(len(MEMBERS))]

    # Two groups per member (the second stands for a constrained group with its own lr_orth, or
    # nnRNN's T with its own L2 weight decay: none, or one of two values, within each kind).
    def groups(k: int, m: dict[str, nn.Parameter]) -> list[dict[str, object]]:
        decay = (0.0, 0.05, 3e-3)[k % 3]
        return [{"params": [m["w"]]}, {"params": [m["b"]], "lr": MEMBERS[k][1]["lr"] / 7, "weight_decay": decay}]

    opts_alone = [cls(groups(k, m), **kw) for k, ((cls, kw), m) in enumerate(zip(MEMBERS, alone, strict=True))]
    opts_ours = [cls(groups(k, m), **kw) for k, ((cls, kw), m) in enumerate(zip(MEMBERS, ours, strict=True))]
    stacked = {n: torch.stack([m[n].detach() for m in ours]).requires_grad_(True) for n in ("w", "b")}
    packed = PackedOptimizer(stacked, list(zip(opts_ours, ours, strict=True)))
    g = torch.Generator().manual_seed(99)
    for step in range(6):
        grads = {n: torch.randn(t.shape, generator=g) * 10.0 ** (step % 3 - 1) for n, t in stacked.items()}
        skip = {3} if step == 2 else set()  # member 3 "diverged" at this step: no update, no state change
        for k, (m, opt) in enumerate(zip(alone, opts_alone, strict=True)):
            if k in skip:
                continue
            for n, p in m.items():
                p.grad = grads[n][k].clone()
            opt.step()
        for n, t in stacked.items():
            t.grad = grads[n].clone()
        packed.step(skip=skip)
        for k, m in enumerate(alone):
            for n, p in m.items():
                assert torch.equal(stacked[n][k], p.detach()), (step, k, n, MEMBERS[k])

    # Exported state is torch.optim's, value for value.
    for k in range(len(MEMBERS)):
        packed.export(k)
        assert opts_ours[k].state_dict()["param_groups"] == opts_alone[k].state_dict()["param_groups"]
        theirs, mine = opts_alone[k].state_dict()["state"], opts_ours[k].state_dict()["state"]
        assert theirs.keys() == mine.keys()
        for pid, state in theirs.items():
            assert state.keys() == mine[pid].keys()
            for key, value in state.items():
                assert torch.equal(mine[pid][key], value), (k, pid, key)


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (torch.optim.SGD, {"lr": 0.1, "nesterov": True, "momentum": 0.9}),
        (torch.optim.Adam, {"lr": 0.1, "amsgrad": True}),
        (torch.optim.RMSprop, {"lr": 0.1, "centered": True}),
        (torch.optim.Adagrad, {"lr": 0.1}),
    ],
)
def test_options_the_packed_update_does_not_implement_are_refused(cls: type, kw: dict[str, object]) -> None:
    m = _member(0)
    stacked = {n: torch.stack([m[n].detach()]).requires_grad_(True) for n in m}
    with pytest.raises(PackError):
        PackedOptimizer(stacked, [(cls(list(m.values()), **kw), m)])
