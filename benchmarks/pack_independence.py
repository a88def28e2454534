"""Does a packed member's arithmetic depend on its pack, on this device? For each family, one trial
trained as a pack of one (beside its silent twin: what `irnn-search train --packed` and a worker's
lone member run) and the same trial beside K-1 others (other learning rates and seeds); prints the
largest relative difference between the two runs' reports and final parameters. 0 means bit for
bit: a reproduce line with `--packed` retraces the trial whatever its pack. On CPU it is 0
(tests/packed/test_independence.py asserts it); on a GPU this measures it (gpu_session.sh).

    python benchmarks/pack_independence.py [--device cuda] [--K 4,16] [--steps 60]
"""

from __future__ import annotations

import argparse

import torch

from irnn_search.models import build_model
from irnn_search.packed import Member, train_packed
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, seed_everything

FAMILIES = ("irnn", "rnn", "lstm", "exprnn", "rnn-orth", "scornn", "dtriv", "nnrnn", "eurnn", "asrnn")


def _member(family: str, i: int, steps: int, device: str) -> Member:
    task = build_task("adding", {"T": 50, "val_size": 200}, seed=i, batch_size=32)
    seed_everything(i)
    model = build_model(family, {"hidden_size": 64}, input_size=2, output_size=1)
    config = TrainConfig(
        steps=steps, optimizer="adam", lr=1e-3 * (1 + i % 3), lr_orth=1e-4, clip=1.0, eval_every=20, seed=i,
        device=device,
    )  # fmt: skip
    return Member(model, task, config)


def _deviation(a: float, b: float) -> float:
    return 0.0 if a == b else abs(a - b) / max(abs(b), 1e-300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--K", default="4,16")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sizes = [int(k) for k in args.K.split(",")]
    print(f"device {args.device}, torch {torch.__version__}, {args.steps} steps, adding T=50, batch 32, hidden 64")
    print("| family | " + " | ".join(f"K={k}: reports, parameters" for k in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for family in FAMILIES:
        alone = _member(family, 0, args.steps, args.device)
        (lone,) = train_packed([alone])
        cells = []
        for K in sizes:
            members = [_member(family, i, args.steps, args.device) for i in range(K)]
            (res,) = [r for r in train_packed(members) if r.member is members[0]]
            reports = max(
                (_deviation(p[key], q[key]) for p, q in zip(res.result.history, lone.result.history, strict=True)
                 for key in ("val_mse", "train_loss", "grad_norm")),
                default=0.0,
            )  # fmt: skip
            params = max(
                float(((p - q).abs().max() / q.abs().max().clamp_min(1e-30)).item())
                for p, q in zip(members[0].model.parameters(), alone.model.parameters(), strict=True)
            )
            cells.append(f"{reports:.1e}, {params:.1e}")
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
