"""Small inputs projected inside the packed time loop, or all at once before it: side by side.

``irnn_search.packed.scan.project_in_loop`` decides per pack (4·I ≤ H: the adding task's 2 inputs,
sMNIST's 1). This times ``PackedTrainer`` steps with that rule (``in loop``) and with it forced off
(``before``: the inputs of all T steps projected into a [K, T, B, H] tensor first), rounds
interleaved, one thread, and prints model-steps/s and the ratio (median of the rounds).

    python benchmarks/packed_projection.py [--family irnn] [--shape adding] [--K 4,16] [--rounds 4] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from packed_speed import SHAPES, Shape, _member  # benchmarks/, beside this script

import irnn_search.packed.families as families
from irnn_search.packed import PackedTrainer

IN_LOOP = families.project_in_loop


def rate(shape: Shape, family: str, K: int, steps: int, in_loop: bool) -> float:
    families.project_in_loop = IN_LOOP if in_loop else (lambda input_size, hidden_size: False)  # type: ignore[assignment]
    try:
        trainer = PackedTrainer()
        for i in range(K):
            trainer.add(_member(shape, family, i, steps + 4, "cpu"))
        for _ in range(2):  # warm-up
            trainer.step()
        started = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        return K * steps / (time.perf_counter() - started)
    finally:
        families.project_in_loop = IN_LOOP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="irnn")
    parser.add_argument("--shape", default="adding", choices=sorted(SHAPES))
    parser.add_argument("--K", default="4,16")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    shape = SHAPES[args.shape]
    print(
        f"{args.family}, {shape.name}, batch {shape.batch}, hidden {shape.hidden}, 1 thread, torch {torch.__version__}"
    )
    print("| K | before (model-steps/s) | in loop | in loop / before |")
    print("|---:|---:|---:|---:|")
    for K in (int(k) for k in args.K.split(",")):
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for in_loop in (False, True):
                rates[in_loop].append(rate(shape, args.family, K, args.steps, in_loop))
        before, now = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"| {K} | {before:.1f} | {now:.1f} | {now / before:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
