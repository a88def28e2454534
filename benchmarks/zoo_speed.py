"""Every model family against a research-code-style reference of the same maths, side by side.

Forward + backward + RMSprop step per second at hidden 128, batch 128, on two shapes:
copy T=200 (input 10, read out every step) and the sMNIST shape T=784 (input 1, read out the last
step). Random inputs and targets: this measures compute, not learning.

"ours" is the family as the package runs it: the recurrent matrix built once per forward, the
input projection done once before the time loop, the loop over ``x.unbind(0)``.

"reference" uses the same parameters the way the research code does it:

- IRNN, tanh RNN, RNN-orth and LSTM: Python-loop cells (``nn.RNNCell``/``nn.LSTMCell``-style),
  with the input projection done per step.
- expRNN, dtriv, Cayley and scoRNN: the parametrized matrix is re-read inside the loop, so the
  matrix exponential or Cayley solve is rebuilt at every step.
- nnRNN: P(Λ+T)Pᵀ is rebuilt at every step, with Λ assembled by a Python loop over its 2×2 blocks
  (NNR builds Λ this way).
- asRNN: U_f, W_hh, W_f and W_f⁻¹ are rebuilt at every step, with three matmuls per step (ASR).
- EURNN: the product of Givens-rotation layers is rebuilt at every step.

Rounds are interleaved (ours, reference, ours, reference, ...) and the median is reported.

    python benchmarks/zoo_speed.py [--rounds 2] [--steps 2] [--shapes copy,smnist] [--families ...]
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

from irnn_search.models import MODELS, RecurrentModel, build_model
from irnn_search.models.modrelu import modrelu
from irnn_search.train import TrainConfig, build_optimizer

SHAPES = {"copy": (200 + 20, 10, 9, "all"), "smnist": (784, 1, 10, "last")}


def _cell_loop(model: RecurrentModel, x: torch.Tensor) -> torch.Tensor:
    """Python-loop cell over time for the Elman-type families and LSTM (research-code style)."""
    family = model.family
    B, H = x.shape[1], model.hidden_size
    h = x.new_zeros(B, H)
    outs = []
    if family == "lstm":
        lstm = model.lstm  # type: ignore[attr-defined]
        cell = nn.LSTMCell(model.input_size, H)
        cell.weight_ih, cell.weight_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
        cell.bias_ih, cell.bias_hh = lstm.bias_ih_l0, lstm.bias_hh_l0
        c = x.new_zeros(B, H)
        for xt in x.unbind(0):
            h, c = cell(xt, (h, c))
            outs.append(h)
        return torch.stack(outs)
    if family == "rnn-orth":
        w_ih, b = model.input_kernel.weight, model.input_kernel.bias  # type: ignore[attr-defined]
        w_hh = model.recurrent.weight  # type: ignore[attr-defined]
        act = model.modrelu if model.modrelu is not None else torch.tanh  # type: ignore[attr-defined]
    else:
        rnn = model.rnn  # type: ignore[attr-defined]
        w_ih, w_hh, b = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0 + rnn.bias_hh_l0
        act = torch.relu if family == "irnn" else torch.tanh
    for xt in x.unbind(0):
        h = act(nn.functional.linear(xt, w_ih, b) + h @ w_hh.t())
        outs.append(h)
    return torch.stack(outs)


def _rebuilt_every_step(model: RecurrentModel, x: torch.Tensor) -> torch.Tensor:
    """The parametrized families with their matrix rebuilt at every time step."""
    family = model.family
    B, H = x.shape[1], model.hidden_size
    h = x.new_zeros(B, H)
    outs = []
    for xt in x.unbind(0):
        if family == "nnrnn":
            P = model.P.weight  # type: ignore[attr-defined]
            blocks = []
            for a, t in zip(model.alpha, model.theta, strict=True):  # type: ignore[attr-defined]
                c, s = torch.cos(t), torch.sin(t)
                blocks.append(a * torch.stack([torch.stack([c, -s]), torch.stack([s, c])]))
            rec = P @ (torch.block_diag(*blocks) + model.T.triu(1)) @ P.t()  # type: ignore[attr-defined]
            h = modrelu(nn.functional.linear(xt, model.input_kernel.weight) + h @ rec, model.nonlinearity.b)  # type: ignore[attr-defined]
        elif family == "asrnn":
            W_hh, U_f, d = model.recurrent.weight, model.U_f.weight, model.scales  # type: ignore[attr-defined]
            z = model.input_kernel(xt) + h @ W_hh.t()  # type: ignore[attr-defined]
            h = (torch.tanh(z @ (U_f @ torch.diag(d)).t())) @ (torch.diag(1 / d) @ U_f.t()).t()
        elif family == "eurnn":  # the rotation product rebuilt at every step
            W = model.recurrent_weight
            h = model.nonlinearity(nn.functional.linear(xt, model.input_kernel.weight) + h @ W.t())  # type: ignore[attr-defined]
        else:  # exprnn, dtriv, cayley, scornn: reading the parametrized weight rebuilds it
            W = model.recurrent.weight  # type: ignore[attr-defined]
            h = model.nonlinearity(nn.functional.linear(xt, model.input_kernel.weight) + h @ W.t())  # type: ignore[attr-defined]
        outs.append(h)
    return torch.stack(outs)


def make_step(model: RecurrentModel, shape: str, reference: bool) -> Callable[[], None]:
    T, n_in, n_out, readout = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, 128, n_in, generator=g)
    y = torch.randint(0, n_out, (T, 128) if readout == "all" else (128,), generator=g)
    opt = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-4, lr_orth=1e-5))
    loop = _cell_loop if model.family in ("irnn", "rnn", "lstm", "rnn-orth") else _rebuilt_every_step

    def step() -> None:
        if reference:
            hs = loop(model, x)
            out = model.readout(hs if readout == "all" else hs[-1])
        else:
            out, _ = model(x, readout=readout)  # type: ignore[arg-type]
        loss = nn.functional.cross_entropy(out.reshape(-1, n_out), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step()

    return step


def timed(step: Callable[[], None], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per measurement")
    parser.add_argument("--shapes", default="copy,smnist")
    parser.add_argument("--families", default=",".join(MODELS))
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush subnormals (train's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Both sides alike: train() flushes subnormal floats by default (TrainConfig.flush_denormal).
    torch.set_flush_denormal(not args.keep_denormals)

    rows = []
    for shape in args.shapes.split(","):
        T, n_in, n_out, _ = SHAPES[shape]
        for family in args.families.split(","):
            torch.manual_seed(0)
            model = build_model(family, {"hidden_size": args.hidden}, input_size=n_in, output_size=n_out)
            ours, ref = make_step(model, shape, False), make_step(model, shape, True)
            ours()  # warm-up
            ref()
            r_ours, r_ref = [], []
            for _ in range(args.rounds):
                r_ours.append(timed(ours, args.steps))
                r_ref.append(timed(ref, args.steps))
            med_ours, med_ref = statistics.median(r_ours), statistics.median(r_ref)
            rows.append({"shape": shape, "T": T, "family": family, "ours": med_ours, "reference": med_ref})
            print(
                f"{shape:7s} {family:9s} ours {med_ours:7.3f}/s  ref {med_ref:7.3f}/s  {med_ours / med_ref:5.2f}x",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows))
        return
    print(
        f"\nhidden {args.hidden}, batch 128, fwd+bwd+RMSprop, {args.threads} thread(s), "
        f"{args.rounds} interleaved rounds x {args.steps} steps, flush denormals {not args.keep_denormals}; "
        f"torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| shape | family | ours steps/s | reference steps/s | speed-up |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['shape']} T={r['T']} | {r['family']} | {r['ours']:.3f} | {r['reference']:.3f} | "
            f"{r['ours'] / r['reference']:.2f}x |"
        )


if __name__ == "__main__":
    main()
