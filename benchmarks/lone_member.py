"""What a member alone in its pack costs, now that it steps beside a silent twin (so its digits are
the ones it would get in any pack): steps/s of one trial, side by side in one run, three ways:

- ``train()``      the ordinary loop (autograd's backward)
- ``lone``         a pack of one as it was before the twin (a batch of one; other torch kernels)
- ``with twin``    a pack of one as it is now (``PackedTrainer``): the member and a copy of it

at the studies' shapes: adding T=150, batch 128, hidden 100 (studies/adding.toml) and copy T=200
(220 steps), batch 10, hidden 128 (studies/copy200.toml), IRNN and expRNN. Each cell is timed
``--repeat`` times, the ways interleaved, and the median printed (the machine may be shared).

    python benchmarks/lone_member.py [--steps 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial, partialmethod

import torch

from irnn_search.models import build_model
from irnn_search.packed import Member, PackedTrainer, loop
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, seed_everything, train

SHAPES = {
    "adding T=150 B=128 H=100": ("adding", {"T": 150, "val_size": 16}, 128, 100),
    "copy T=200 B=10 H=128": ("copy", {"T": 200, "K": 10, "val_size": 16}, 10, 128),
}


def _member(shape: tuple, family: str, steps: int) -> Member:
    task_name, options, batch, hidden = shape
    task = build_task(task_name, options, seed=0, batch_size=batch)
    seed_everything(0)
    model = build_model(family, {"hidden_size": hidden}, input_size=task.input_size, output_size=task.output_size)
    config = TrainConfig(steps=steps, optimizer="adam", lr=1e-4, clip=1.0, eval_every=10**9, seed=0)
    return Member(model, task, config)


def _packed(shape: tuple, family: str, steps: int, twin: bool) -> float:
    before = loop._Pack.__init__
    if not twin:
        loop._Pack.__init__ = partialmethod(before, twin=False)  # type: ignore[method-assign]
    try:
        trainer = PackedTrainer()
        trainer.add(_member(shape, family, steps + 2))
        trainer.step()  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        return steps / (time.perf_counter() - started)
    finally:
        loop._Pack.__init__ = before  # type: ignore[method-assign]


def _alone(shape: tuple, family: str, steps: int) -> float:
    m = _member(shape, family, steps)
    started = time.perf_counter()
    train(m.model, m.task, m.config)
    return steps / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"{args.steps} steps, median of {args.repeat}")  # fmt: skip
    print("| shape | model | train() steps/s | lone pack steps/s | with twin steps/s | twin / lone |")
    print("|---|---|---:|---:|---:|---:|")
    for name, shape in SHAPES.items():
        for family in ("irnn", "exprnn"):
            ways: dict[str, Callable[[], float]] = {
                "train": partial(_alone, shape, family, args.steps),
                "lone": partial(_packed, shape, family, args.steps, twin=False),
                "twin": partial(_packed, shape, family, args.steps, twin=True),
            }
            rates: dict[str, list[float]] = {k: [] for k in ways}
            for _ in range(args.repeat):
                for k, f in ways.items():
                    rates[k].append(f())
            med = {k: statistics.median(v) for k, v in rates.items()}
            print(f"| {name} | {family} | {med['train']:.1f} | {med['lone']:.1f} | {med['twin']:.1f} "
                  f"| {med['twin'] / med['lone']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
