"""The packed IRNN time loop, forward and backward, run four ways: does torch.compile or a CUDA graph help?

One call is what a packed training step spends in its recurrence: K members, T steps, batch B,
hidden H, the adding task's 2 inputs, the loss on the last state, then backward.

- ``eager fused``    ``irnn_search.packed.scan.elman_scan``: the hand-written backward PackedTrainer runs
- ``eager autograd`` ``families._loop``: one ``baddbmm`` + ``relu`` per step, autograd's backward
- ``compiled``       ``torch.compile`` of that autograd loop (the whole T-step loop is one graph,
                     forward and backward); its compile time is printed apart (``--no-compile`` skips)
- ``CUDA graph``     (CUDA only) the eager fused scan, forward and backward, captured once in a CUDA
                     graph and replayed: no per-step launch cost, no Python in the loop

It prints ms per call (median of ``--repeat`` rounds, the ways interleaved), model-steps/s, the
matmul rate (GFLOP/s) and its fraction of a large square float32 matmul's rate measured on the same
device in the same run (TF32 off), and each way's rate against ``eager fused``.

    python benchmarks/scan_variants.py [--device cuda] [--K 16] [--T 150] [--B 16] [--H 100]
        [--repeat 5] [--iters 10] [--no-compile]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from irnn_search.packed.families import _loop
from irnn_search.packed.scan import elman_scan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sgemm_rate(device: torch.device, n: int = 2048, iters: int = 5) -> float:
    """GFLOP/s of an n×n float32 matmul on ``device``: the reference the fractions are of."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - started) / iters)
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--K", type=int, default=16)
    parser.add_argument("--T", type=int, default=150)
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--H", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10, help="calls per timed round")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    K, T, B, H, I = args.K, args.T, args.B, args.H, 2

    g = torch.Generator().manual_seed(0)
    x = torch.rand(K, T, B, I, generator=g).to(device)
    w_in = (torch.randn(K, H, I, generator=g) * 1e-3).to(device).requires_grad_()
    bias = torch.zeros(K, H, device=device, requires_grad=True)
    w_hh = (torch.eye(H).expand(K, H, H) * 0.99).contiguous().to(device).requires_grad_()
    leaves = (w_in, bias, w_hh)
    workspace: dict = {}

    def fused() -> None:
        h0 = x.new_zeros(K, B, H)
        _, last = elman_scan(x, h0, w_hh, "relu", workspace, w_in=w_in, bias=bias)
        last.square().sum().backward()

    def autograd_loop() -> torch.Tensor:
        proj = torch.baddbmm(bias.unsqueeze(1), x.reshape(K, T * B, I), w_in.mT).view(K, T, B, H).transpose(0, 1)
        _, last = _loop(proj, x.new_zeros(K, B, H), w_hh, torch.relu)
        return last.square().sum()

    def eager_autograd() -> None:
        autograd_loop().backward()

    ways: dict[str, Callable[[], None]] = {"eager fused": fused, "eager autograd": eager_autograd}
    notes: list[str] = []
    if not args.no_compile:
        compiled_loop = torch.compile(autograd_loop, dynamic=False)
        started = time.perf_counter()
        compiled_loop().backward()
        _sync(device)
        notes.append(
            f"torch.compile: first call (compiling forward and backward) {time.perf_counter() - started:.1f} s"
        )
        ways["compiled"] = lambda: compiled_loop().backward()
    if device.type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
            for _ in range(3):
                for t in leaves:
                    t.grad = None
                h0 = x.new_zeros(K, B, H)
                _, last = elman_scan(x, h0, w_hh, "relu", None, w_in=w_in, bias=bias)
                last.square().sum().backward()
        torch.cuda.current_stream().wait_stream(side)
        for t in leaves:
            t.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            h0 = x.new_zeros(K, B, H)
            _, last = elman_scan(x, h0, w_hh, "relu", None, w_in=w_in, bias=bias)
            last.square().sum().backward()
        ways["CUDA graph"] = graph.replay

    times: dict[str, list[float]] = {name: [] for name in ways}
    for fn in ways.values():  # warm-up
        fn()
    for _ in range(args.repeat):
        for name, fn in ways.items():
            _sync(device)
            started = time.perf_counter()
            for _ in range(args.iters):
                if name != "CUDA graph":
                    for t in leaves:
                        t.grad = None
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - started) / args.iters)

    peak = sgemm_rate(device)
    # Matmul work per call: forward h W_hhᵀ and x W_inᵀ, backward dh W_hh, dW_hh and dW_in.
    flops = 2 * K * T * B * (3 * H * H + 2 * H * I)
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    )
    print(
        f"packed IRNN time loop, forward + backward: K={K}, T={T}, B={B}, H={H}, I={I}; "
        f"device {args.device} ({where}), {args.threads} thread(s), torch {torch.__version__}; "
        f"large float32 matmul on this device: {peak:.0f} GFLOP/s"
    )
    for note in notes:
        print(note)
    base = statistics.median(times["eager fused"])
    print("| way | ms per call | model-steps/s | GFLOP/s | of the large matmul's rate | vs eager fused |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(
            f"| {name} | {s * 1e3:.2f} | {K / s:.1f} | {flops / s / 1e9:.1f} | {flops / s / 1e9 / peak:.1%} | "
            f"{base / s:.2f}x |"
        )


if __name__ == "__main__":
    main()
