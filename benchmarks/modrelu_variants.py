"""modReLU time loop on CPU: eager ops vs a hand-written autograd.Function vs torch.compile.

The loop of the modReLU families (expRNN, Cayley, scoRNN, nnRNN, EURNN) is one ``addmm`` and
``sign(z)·relu(|z|+b)`` per step. This measures forward + backward of that loop alone (copy shape:
T=220, batch 128, hidden 128), side by side, after checking the variants agree (gradcheck for
the Function). ``torch.compile`` is timed after its first (compiling) call.

    python benchmarks/modrelu_variants.py [--rounds 3] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from irnn_search.models.modrelu import modrelu


class _ModReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mag = z.abs() + b
        keep = mag > 0
        sign = z.sign()
        ctx.save_for_backward(sign * keep, keep)
        return sign * mag.clamp_min(0)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        signed_keep, keep = ctx.saved_tensors
        return g * keep, (g * signed_keep).sum(0)


def function_modrelu(z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _ModReLUFunction.apply(z, b)  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    B, H, T = 128, 128, 220
    w = (torch.randn(H, H) * 0.1).requires_grad_()
    b = torch.empty(H).uniform_(-0.01, 0.01).requires_grad_()
    xp = torch.randn(T, B, H)

    z = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    bb = torch.empty(6, dtype=torch.float64).uniform_(-0.5, 0.5).requires_grad_()
    assert torch.autograd.gradcheck(function_modrelu, (z, bb))
    torch.testing.assert_close(function_modrelu(z, bb), modrelu(z, bb))

    variants: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "eager ops": modrelu,
        "autograd.Function": function_modrelu,
    }
    if not a.no_compile:
        variants["torch.compile"] = torch.compile(modrelu, dynamic=False)

    def run(act: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        h, wt, outs = torch.zeros(B, H), w.t(), []
        for xt in xp.unbind(0):
            h = act(torch.addmm(xt, h, wt), b)
            outs.append(h)
        torch.stack(outs).square().mean().backward()

    for name, act in variants.items():
        started = time.perf_counter()
        run(act)  # warm-up (compiles)
        print(f"first call of {name}: {time.perf_counter() - started:.1f} s")
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, act in variants.items():
            started = time.perf_counter()
            run(act)
            run(act)
            rates[name].append(2 / (time.perf_counter() - started))
    ref = statistics.median(rates["eager ops"])
    print(f"modReLU loop T={T} batch {B} hidden {H}, fwd+bwd, 1 thread, {a.rounds} interleaved rounds x 2")
    print("| variant | median loops/s | vs eager |\n|---|---:|---:|")
    for name, v in rates.items():
        print(f"| {name} | {statistics.median(v):.2f} | {statistics.median(v) / ref:.2f}x |")


if __name__ == "__main__":
    main()
