"""IRNN training throughput: our ``train()`` against plain PyTorch loops, side by side in one run.

Adding problem, T=150, batch 16, hidden 100, forward + backward + Adam step, one thread.
Variants (all draw their batches from the same task generator, so data cost is identical):

- ``train() default``   our loop with the model's default path (``impl=auto``)
- ``train() fused``     our loop forced onto ``nn.RNN``'s fused kernel
- ``plain nn.RNN``      minimal loop: ``nn.RNN(relu)`` + ``Linear``, ``clip_grad_norm_``, Adam
- ``plain hand loop``   minimal loop: input projection once, ``addmm`` + ``relu`` per step over
                        ``x.unbind(0)``, Adam
- ``plain scripted``    the hand loop compiled with TorchScript

Rounds are interleaved (A B C D E, A B C D E, ...) so machine noise hits every variant alike; the
table reports the median steps/s per variant and its ratio to ``plain nn.RNN``.

    python benchmarks/rnn_speed.py [--rounds 5] [--steps 150] [--T 150] [--hidden 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from irnn_search.models import build_model
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, train


def plain_rnn_step_fn(task, hidden: int) -> Callable[[int], None]:
    rnn = nn.RNN(2, hidden, nonlinearity="relu")
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.eye(hidden))
    head = nn.Linear(hidden, 1)
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step(i: int) -> None:
        batch = task.train_batch(i)
        hs, _ = rnn(batch.x)
        loss = nn.functional.mse_loss(head(hs[-1]), batch.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        float(loss.detach())

    return step


def _hand_loop(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    proj = torch.addmm(b, x.reshape(-1, x.shape[-1]), w_ih.t()).view(x.shape[0], x.shape[1], -1)
    h = torch.zeros(x.shape[1], w_hh.shape[0])
    w_t = w_hh.t()
    for xt in proj.unbind(0):
        h = torch.relu(torch.addmm(xt, h, w_t))
    return h


def hand_loop_step_fn(task, hidden: int, scripted: bool) -> Callable[[int], None]:
    w_ih = nn.Parameter(torch.randn(hidden, 2) * 1e-3)
    w_hh = nn.Parameter(torch.eye(hidden))
    b = nn.Parameter(torch.zeros(hidden))
    head = nn.Linear(hidden, 1)
    params = [w_ih, w_hh, b, *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    loop = torch.jit.script(_hand_loop) if scripted else _hand_loop

    def step(i: int) -> None:
        batch = task.train_batch(i)
        loss = nn.functional.mse_loss(head(loop(batch.x, w_ih, w_hh, b)), batch.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        float(loss.detach())

    return step


def ours_runner(task, hidden: int, impl: str) -> Callable[[int], float]:
    model = build_model("irnn", {"hidden_size": hidden, "impl": impl}, input_size=2, output_size=1)

    def run(steps: int) -> float:
        # eval_every > steps: no evaluation inside the measured window; train() times steps only.
        result = train(model, task, TrainConfig(steps=steps, optimizer="adam", lr=1e-4, clip=1.0, eval_every=10**9))
        return result.steps_per_s

    return run


def timed(step: Callable[[int], None], steps: int, offset: int) -> float:
    started = time.perf_counter()
    for i in range(steps):
        step(offset + i)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--T", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush subnormals (train's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Every variant alike: train() flushes subnormal floats by default (TrainConfig.flush_denormal).
    torch.set_flush_denormal(not args.keep_denormals)
    torch.manual_seed(0)

    task = build_task("adding", {"T": args.T, "val_size": 16}, seed=0, batch_size=args.batch)
    ours_default, ours_fused = ours_runner(task, args.hidden, "auto"), ours_runner(task, args.hidden, "fused")
    plain = {
        "plain nn.RNN": plain_rnn_step_fn(task, args.hidden),
        "plain hand loop": hand_loop_step_fn(task, args.hidden, scripted=False),
        "plain scripted": hand_loop_step_fn(task, args.hidden, scripted=True),
    }
    for fn in plain.values():  # warm-up (TorchScript profiles its first calls)
        timed(fn, 5, 0)
    ours_default(5)
    ours_fused(5)

    rates: dict[str, list[float]] = {"train() default": [], "train() fused": [], **{k: [] for k in plain}}
    for r in range(args.rounds):
        rates["train() default"].append(ours_default(args.steps))
        rates["train() fused"].append(ours_fused(args.steps))
        for name, fn in plain.items():
            rates[name].append(timed(fn, args.steps, r * args.steps))

    medians = {k: statistics.median(v) for k, v in rates.items()}
    ref = medians["plain nn.RNN"]
    if args.json:
        print(json.dumps({"medians": medians, "rates": rates, "args": vars(args)}))
        return
    print(
        f"IRNN adding T={args.T} batch {args.batch} hidden {args.hidden}, fwd+bwd+Adam, "
        f"{args.threads} thread(s), {args.rounds} interleaved rounds x {args.steps} steps"
    )
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print("| variant | median steps/s | min–max | vs plain nn.RNN |")
    print("|---|---:|---:|---:|")
    for name, med in medians.items():
        lo, hi = min(rates[name]), max(rates[name])
        print(f"| {name} | {med:.1f} | {lo:.1f}–{hi:.1f} | {med / ref:.2f}x |")


if __name__ == "__main__":
    main()
