"""Packed trials on a CUDA device: the scans' forward and gradients equal the CPU's in float64, and
every member of a pack trained on the GPU ends as the same trial trained alone on the GPU.

Skipped without a CUDA device (CI has none). ``IRNN_SEARCH_TEST_DEVICE=cpu`` runs them on the CPU
instead, which checks the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import torch

from irnn_search.models import build_model
from irnn_search.packed import Member, train_packed
from irnn_search.packed.scan import elman_scan, lstm_scan
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, seed_everything
from tests.packed._trials import Spec, assert_same_history, assert_same_params

DEVICE = os.environ.get("IRNN_SEARCH_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device on this machine"
    ),
]


@pytest.fixture(autouse=True)
def _full_fp32() -> Iterator[None]:
    """float32 matmuls and cuDNN in full precision (TF32 rounds to 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _leaves(*shapes: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(0.5 * torch.randn(s, dtype=torch.float64, generator=g)).requires_grad_() for s in shapes]


def _on_both(fn, leaves: list[torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    """``fn`` on the CPU and on DEVICE from the same float64 leaves: outputs and gradients agree."""
    results = []
    for device in ("cpu", DEVICE):
        moved = [t.detach().to(device).requires_grad_() for t in leaves]
        outs = fn(*moved)
        sum(
            (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=device).view_as(o)).sum() for o in outs
        ).backward()
        results.append(([o.detach().cpu() for o in outs], [t.grad.cpu() for t in moved]))  # type: ignore[union-attr]
    (cpu_out, cpu_grad), (dev_out, dev_grad) = results
    for a, b in zip(cpu_out + cpu_grad, dev_out + dev_grad, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "tanh", "modrelu"])
@pytest.mark.parametrize("in_loop", [False, True])
def test_the_elman_scan_on_the_device_equals_the_cpu_in_float64(act: str, in_loop: bool) -> None:
    K, T, B, H, I = 3, 7, 4, 8, 2
    shapes: list[tuple[int, ...]] = [(K, T, B, I if in_loop else H), (K, B, H), (K, H, H)]
    if act == "modrelu":
        shapes.append((K, H))
    if in_loop:
        shapes += [(K, H, I), (K, H)]
    leaves = _leaves(*shapes, seed=5)

    def run(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, h0, w, *rest = xs
        act_b = rest.pop(0) if act == "modrelu" else None
        w_in, bias = rest if in_loop else (None, None)
        return elman_scan(x, h0, w, act, {}, act_b=act_b, w_in=w_in, bias=bias)  # type: ignore[arg-type]

    _on_both(run, leaves)


def test_the_lstm_scan_on_the_device_equals_the_cpu_in_float64() -> None:
    K, T, B, H = 3, 7, 4, 6
    leaves = _leaves((K, T, B, 4 * H), (K, B, H), (K, B, H), (K, 4 * H, H), seed=6)
    _on_both(lambda *xs: lstm_scan(*xs, {}), leaves)


SPECS = [
    Spec("irnn", {"identity_scale": 1.0}, {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9}),
    Spec("irnn", {"identity_scale": 0.5}, {"optimizer": "adam", "lr": 3e-3, "clip": None}, seed=1),
    Spec("rnn", {}, {"optimizer": "rmsprop", "lr": 1e-3}),
    Spec("lstm", {"forget_bias": 1.0}, {"optimizer": "adam", "lr": 3e-3}),
    Spec("exprnn", {"init": "henaff"}, {"optimizer": "rmsprop", "lr": 1e-3, "lr_orth": 1e-4}),
    Spec("cayley", {}, {"optimizer": "adam", "lr": 1e-3, "lr_orth": 1e-4}),
    Spec("scornn", {}, {"optimizer": "rmsprop", "lr": 1e-3, "lr_orth": 1e-4}),
    Spec("dtriv", {"K": 5, "M": 2}, {"optimizer": "rmsprop", "lr": 1e-3, "lr_orth": 1e-4}),
    Spec("nnrnn", {"delta": 1.0, "t_decay": 1e-3}, {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9}),
    Spec("eurnn", {}, {"optimizer": "adam", "lr": 2e-3}),
    Spec("asrnn", {"a": 0.8, "b": 3.0}, {"optimizer": "adam", "lr": 2e-3, "lr_orth": 5e-4}),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.family} {s.config['optimizer']}")
def test_a_member_packed_on_the_device_ends_as_its_trial_alone_on_the_device(spec: Spec) -> None:
    # Two members per pack: the one compared and a neighbour with another seed and lr.
    neighbour = Spec(spec.family, spec.options, {**spec.config, "lr": spec.config["lr"] * 2}, seed=spec.seed + 7)
    member = spec.member(config={"device": DEVICE})
    results = {id(r.member): r for r in train_packed([member, neighbour.member(config={"device": DEVICE})])}
    res = results[id(member)]
    assert res.error is None
    model, alone = spec.alone(device=DEVICE)
    assert (res.result.outcome, res.result.step) == (alone.outcome, alone.step)
    # cuDNN (train() on the GPU) and the packed scans sum in other orders: 1e-4, not CPU's 1e-5.
    assert_same_history(res.result.history, alone.history, rel_tol=1e-4)
    assert_same_params(member.model, model, rtol=1e-4)
    assert next(member.model.parameters()).device.type == torch.device(DEVICE).type


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="needs a CUDA device's memory limit")
def test_a_pack_too_big_for_the_device_memory_splits_until_it_fits(caplog: pytest.LogCaptureFixture) -> None:
    """A real out-of-memory: the device's allocator is capped at about four members' worth of the
    memory one member's step takes (measured first), then 16 members start as one pack."""

    def members(n: int, steps: int) -> list[Member]:
        out = []
        for i in range(n):
            # Long sequences at a large batch: the time loop's buffers dominate (about 100 MB a
            # member for the states and as much for their gradients), as in sMNIST studies.
            task = build_task("adding", {"T": 400, "val_size": 256}, seed=i, batch_size=256)
            seed_everything(i)
            model = build_model("irnn", {"hidden_size": 256}, input_size=2, output_size=1)
            config = TrainConfig(
                steps=steps, optimizer="adam", lr=1e-4 * (i + 1), clip=1.0, eval_every=steps, seed=i, device=DEVICE
            )
            out.append(Member(model, task, config, name=f"member {i}"))
        return out

    device = torch.device(DEVICE)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    train_packed(members(1, 1))
    one = torch.cuda.max_memory_allocated(device) - base
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved(device) + 4 * one) / total), device)
    try:
        with caplog.at_level(logging.WARNING):
            results = train_packed(members(16, 2))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    assert len(results) == 16
    assert all(r.error is None and r.result.outcome == "completed" for r in results), [
        (r.result.outcome, r.result.reason) for r in results
    ]
    splits = [r.message for r in caplog.records if "ran out of cuda" in r.message]
    assert splits and "a pack of 16" in splits[0]
