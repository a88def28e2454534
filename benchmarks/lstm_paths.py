"""LSTM on CPU: the fused ``nn.LSTM`` against a hand-written time loop, side by side.

The hand loop projects all inputs once, then does one ``addmm`` and the gate arithmetic per step
over ``x.unbind(0)``, the trick that makes the IRNN hand loop beat ``nn.RNN``. It is checked equal
to ``nn.LSTM`` before timing. Forward + backward per second, interleaved rounds, median.

    python benchmarks/lstm_paths.py [--T 220] [--batch 128] [--hidden 128] [--input 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=220)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--input", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    T, B, H, I = a.T, a.batch, a.hidden, a.input
    lstm = nn.LSTM(I, H)
    x = torch.randn(T, B, I)

    def fused() -> torch.Tensor:
        return lstm(x)[0]

    def hand() -> torch.Tensor:
        w_ih, w_hh, b = lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0
        xp = torch.addmm(b, x.reshape(-1, I), w_ih.t()).view(T, B, 4 * H)
        h, c, w, outs = x.new_zeros(B, H), x.new_zeros(B, H), w_hh.t(), []
        for xt in xp.unbind(0):
            i, f, g, o = torch.addmm(xt, h, w).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs)

    torch.testing.assert_close(fused(), hand(), rtol=1e-4, atol=1e-5)
    rates: dict[str, list[float]] = {"nn.LSTM": [], "hand loop": []}
    for _ in range(a.rounds):
        for name, fn in (("nn.LSTM", fused), ("hand loop", hand)):
            t = time.perf_counter()
            for _ in range(a.steps):
                fn().square().mean().backward()
            rates[name].append(a.steps / (time.perf_counter() - t))
    ref = statistics.median(rates["nn.LSTM"])
    print(f"LSTM T={T} batch {B} hidden {H} input {I}, fwd+bwd, 1 thread, {a.rounds} rounds x {a.steps}")
    print("| path | median fwd+bwd/s | vs nn.LSTM |\n|---|---:|---:|")
    for name, v in rates.items():
        print(f"| {name} | {statistics.median(v):.2f} | {statistics.median(v) / ref:.2f}x |")


if __name__ == "__main__":
    main()
