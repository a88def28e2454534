"""Packed trials against one trial at a time: model-steps/s, side by side in one run.

For each shape (adding T=150, batch 16, hidden 100; the sMNIST shape T=784, batch 128, hidden
128: the studies' batch sizes) and each K, three ways to train K trials of one family (members
differ in lr, as a study's trials do), each step a forward pass, a backward pass, per-member
clipping and an Adam/SGD/RMSprop update:

- ``packed``      one process, ``--threads`` threads: ``PackedTrainer`` with K members (the
                  hand-written backward of ``irnn_search.packed.scan`` where the family has one)
- ``autograd``    (``--compare-backward``) the same pack with autograd's step-by-step backward
                  (``PackedTrainer(fused_backward=False)``: the path before the fused backward)
- ``sequential``  one process, ``--threads`` threads: ``train()`` on one trial after another
                  (the rate of K trials in a row is one trial's rate; ``min(K, 2)`` are timed)
- ``pool``        ``min(K, --workers)`` separate one-trial processes with one thread each, started
                  together (what a pool of single-trial workers does on this device); more
                  processes than cores only oversubscribe, so K beyond ``--workers`` adds nothing

It prints model-steps/s (one trial advanced by one optimizer step) and the ratios, and the pack's
matmul rate (``matmul_flops`` per model-step) as a fraction of a large float32 matmul's rate measured
on the same device at the start of the run (TF32 off throughout), and trials/hour for trials as
long as the studies' (adding.toml: 20,000 steps; smnist.toml: 27,300), packed and by the pool. ``--mixed``
also times the two ways to pack differing hidden sizes: bucketing (one pack per size, stepped in
turn: what ``PackedTrainer`` does) against one pack at the largest size (the cost padding would
have before any masking). ``--repeat N`` times every cell N times, the ways interleaved, and
prints the median (the machine may be shared).

    python benchmarks/packed_speed.py [--quick] [--device cuda] [--steps 20] [--K 1,4,16,64]
        [--K-long 1,4,16,64] [--hidden 100,128] [--compare-backward] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import torch
from scan_variants import sgemm_rate  # benchmarks/, beside this script

from irnn_search.models import build_model
from irnn_search.packed import Member, PackedTrainer
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, seed_everything, train

# RMSprop's first step moves every recurrent weight by ~10·lr, which at T=784 blows an identity
# IRNN up within two steps; the timed window must keep all K members, so Adam and SGD alternate.
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    batch: int
    hidden: int
    trial_steps: int  # optimizer steps of one trial of the study (studies/*.toml), for trials/hour


SHAPES = {
    "adding": Shape("adding T=150", 150, 16, 100, 20000),
    "smnist": Shape("sMNIST shape T=784", 784, 128, 128, 27300),
}


def _member(shape: Shape, family: str, i: int, steps: int, device: str, hidden: int | None = None) -> Member:
    # The adding task at length T stands for either shape: input size 2 vs sMNIST's 1 changes
    # nothing measurable, and it needs no dataset on the machine.
    task = build_task("adding", {"T": shape.T, "val_size": 16}, seed=i, batch_size=shape.batch)
    seed_everything(i)
    model = build_model(family, {"hidden_size": hidden or shape.hidden}, input_size=2, output_size=1)
    config = TrainConfig(
        steps=steps,
        optimizer=OPTIMIZERS[i % 2],
        lr=1e-5 * (1 + i % 7),
        clip=1.0 if i % 2 else 10.0,  # clipped, so no member diverges inside the timed window
        eval_every=10**9,  # no evaluation inside the timed window
        seed=i,
        device=device,
    )
    return Member(model, task, config)


def matmul_flops(family: str, shape: Shape, inputs: int = 2) -> int:
    """Matmul FLOPs of one model-step (forward, backward, both weight gradients; the readout,
    elementwise ops and the orthogonal families' matrix maps not counted): the LSTM's gates are 4H
    wide, the Elman families' H."""
    H, gates = shape.hidden, 4 * shape.hidden if family == "lstm" else shape.hidden
    return 2 * shape.T * shape.batch * gates * (3 * H + 2 * inputs)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def packed_rate(
    shape: Shape,
    family: str,
    K: int,
    steps: int,
    device: str,
    hiddens: list[int] | None = None,
    fused_backward: bool = True,
) -> float:
    trainer = PackedTrainer(fused_backward=fused_backward)
    for i in range(K):
        trainer.add(_member(shape, family, i, steps + 2, device, hiddens[i] if hiddens else None))
    trainer.step()  # warm-up (allocations, first-call dispatch)
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    _sync(device)
    elapsed = time.perf_counter() - started
    if trainer.active != K:
        raise RuntimeError(f"{K - trainer.active} of {K} members left during the timed steps (diverged?)")
    return K * steps / elapsed


def sequential_rate(shape: Shape, family: str, K: int, steps: int, device: str) -> float:
    rates = []
    for i in range(min(K, 2)):
        m = _member(shape, family, i, steps, device)
        rates.append(train(m.model, m.task, m.config).steps_per_s)
    return statistics.mean(rates)


def pool_rate(shape: Shape, family: str, K: int, steps: int, device: str, workers: int) -> float:
    n = min(K, workers)
    cmd = [sys.executable, __file__, "--worker", shape.name, "--family", family, "--steps", str(steps)]
    cmd += ["--hidden", str(shape.hidden)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [*cmd, "--seed", str(i), "--device", device],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    for p in procs:  # every process built and warmed up before any starts its timed steps
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    # Each process reports train()'s own steps/s (steps only, no start-up or exit); they run
    # at the same time, so the pool's throughput is their sum.
    rates = []
    for p in procs:
        out, _ = p.communicate()
        rates.append(float(out.strip().splitlines()[-1]))
    return sum(rates)


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    shape = replace(next(s for s in SHAPES.values() if s.name == args.worker), hidden=int(args.hidden))
    m = _member(shape, args.family, args.seed, args.steps, args.device)
    train(m.model, m.task, TrainConfig(**{**m.config.__dict__, "steps": 2}))  # warm-up
    print("ready", flush=True)
    sys.stdin.readline()
    print(train(m.model, m.task, m.config).steps_per_s, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="irnn")
    parser.add_argument("--shapes", default="adding,smnist")
    parser.add_argument("--K", default="1,4,16,64", help="pack sizes for the adding shape")
    parser.add_argument("--K-long", default="1,4,16", help="pack sizes for the T=784 shape")
    parser.add_argument("--steps", type=int, default=20, help="timed steps at T=150 (T=784: a fifth, at least 2)")
    parser.add_argument(
        "--hidden", default="", help="hidden sizes to run every shape at, e.g. 100,128 (default: each shape's own)"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of the packed and sequential runs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="one-trial processes in the pool")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed", action="store_true", help="also time bucketing vs one padded pack")
    parser.add_argument("--quick", action="store_true", help="K 1,4,16 and few steps")
    parser.add_argument(
        "--compare-backward", action="store_true", help="also time the pack with autograd's step-by-step backward"
    )
    parser.add_argument("--repeat", type=int, default=1, help="time every cell this many times; print the median")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 throughout
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.K, args.K_long, args.steps = "1,4,16", "1,4", min(args.steps, 6)

    print(
        f"{args.family}, fwd+bwd+update, device {args.device}, packed/sequential on {args.threads} thread(s), "
        f"pool of up to {args.workers} one-thread processes; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    peak = sgemm_rate(torch.device(args.device))
    print(f"A large float32 matmul runs at {peak:.0f} GFLOP/s on this device ({args.threads} thread(s), TF32 off).")
    compare = args.compare_backward
    extra_head, extra_rule = (" autograd backward | autograd / sequential |", "---:|---:|") if compare else ("", "")
    print(
        f"| shape | K | packed model-steps/s |{extra_head} sequential | pool | packed / sequential | packed / pool "
        "| packed GFLOP/s | of the large matmul's rate | trials/hour packed | trials/hour pool |"
    )
    print(f"|---|---:|---:|{extra_rule}---:|---:|---:|---:|---:|---:|---:|---:|")
    shapes = [SHAPES[key] for key in args.shapes.split(",")]
    if args.hidden:
        shapes = [replace(s, hidden=int(h)) for s in shapes for h in args.hidden.split(",")]
    for shape in shapes:
        ks = args.K if shape.T <= 150 else args.K_long
        steps = args.steps if shape.T <= 150 else max(2, args.steps // 5)
        for K in (int(k) for k in ks.split(",")):
            rates: dict[str, list[float]] = {"packed": [], "autograd": [], "seq": [], "pool": []}
            for _ in range(args.repeat):  # interleaved, so a burst of load hits every way alike
                rates["packed"].append(packed_rate(shape, args.family, K, steps, args.device))
                if compare:
                    rates["autograd"].append(
                        packed_rate(shape, args.family, K, steps, args.device, fused_backward=False)
                    )
                rates["seq"].append(sequential_rate(shape, args.family, K, steps, args.device))
                rates["pool"].append(pool_rate(shape, args.family, K, steps, args.device, args.workers))
            packed, seq, pool = (statistics.median(rates[k]) for k in ("packed", "seq", "pool"))
            gflops = packed * matmul_flops(args.family, shape) / 1e9
            extra = ""
            if compare:
                autograd = statistics.median(rates["autograd"])
                extra = f" {autograd:.1f} | {autograd / seq:.2f}x |"
            print(
                f"| {shape.name}, batch {shape.batch}, hidden {shape.hidden} | {K} | {packed:.1f} |{extra} "
                f"{seq:.1f} | {pool:.1f} | {packed / seq:.2f}x | {packed / pool:.2f}x | {gflops:.1f} | "
                f"{gflops / peak:.1%} | {packed * 3600 / shape.trial_steps:.1f} | "
                f"{pool * 3600 / shape.trial_steps:.1f} |",
                flush=True,
            )
    if args.mixed:
        shape = SHAPES["adding"]
        K = 16
        hiddens = [64 if i % 2 else 128 for i in range(K)]
        bucketed = packed_rate(shape, args.family, K, args.steps, args.device, hiddens)
        padded = packed_rate(shape, args.family, K, args.steps, args.device, [128] * K)
        print()
        print(f"Mixed hidden sizes, {shape.name}, K={K} (half 64, half 128):")
        print("| layout | model-steps/s |")
        print("|---|---:|")
        print(f"| bucketed: a pack of 8 at 64 and a pack of 8 at 128 | {bucketed:.1f} |")
        print(f"| padded: one pack of 16 at 128 (before masking costs) | {padded:.1f} |")


if __name__ == "__main__":
    main()
