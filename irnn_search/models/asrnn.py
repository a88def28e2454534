"""asRNN (Nguyen-Duy, Pham & Nguyen, ICLR 2023 Tiny Paper): an adaptively saturating RNN.

``h_t = W_f⁻¹ tanh(W_f (W_xh x_t + b + W_hh h_{t−1}))`` with ``W_f = U_f · diag(|S| + eps)``,
``U_f`` and ``W_hh`` orthogonal (REFERENCE §1.9). Per unit with ``U_f = I`` the nonlinearity is
``tanh(d z)/d``: the identity as d → 0 (a linear orthogonal RNN), a tanh RNN at d = 1.

Stability: ``eps`` must be > 0 (enforced), so ``|S| + eps`` never reaches 0 and ``W_f⁻¹`` never
divides by zero; the reference's PTB default ``eps = 0`` is refused.

Speed: writing ``y_t = tanh(W_f z_t)`` the recurrence becomes ``y_t = tanh(W_f(W_xh x_t + b) +
R y_{t−1})`` with ``R = W_f W_hh W_f⁻¹``, built once per forward, and ``h_t = W_f⁻¹ y_t`` for all
steps in one matmul after the loop: one matmul per step instead of three (tested equal to the
direct form).

Parameter groups as in the reference: ``W_hh``'s skew parameter is constrained (``lr_orth``);
``U_f``'s skew parameter and ``S`` train at the main learning rate. Defaults are the reference's
MNIST settings (a = b = 0.02, eps = 0.01); its copy settings are a = b = 0, eps = 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelConfig, ModelError, ParamGroup, RecurrentModel, State
from irnn_search.models.init import SKEW_INITS, skew_init
from irnn_search.models.orthogonal import Cayley, MatrixExp, register_orthogonal

ORTH_MAPS = ("exprnn", "cayley")


@dataclass(frozen=True)
class ASRNNConfig(ModelConfig):
    a: float = field(default=0.02, metadata={"help": "S ~ U(a, b) at init (MNIST 0.02; copy 0; PTB 0.8)"})
    b: float = field(default=0.02, metadata={"help": "S ~ U(a, b) at init (MNIST 0.02; copy 0; PTB 3)"})
    eps: float = field(default=0.01, metadata={"help": "floor of the saturation scales |S| + eps; must be > 0"})
    orth: str = field(default="exprnn", metadata={"help": "parametrization of U_f and W_hh: exprnn | cayley"})
    init: str = field(default="cayley", metadata={"help": "skew init of W_hh: cayley | henaff | random | zeros"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eps > 0:
            raise ModelError(f"asrnn: eps must be > 0 (W_f⁻¹ divides by |S| + eps), got {self.eps}")
        if not self.a <= self.b:
            raise ModelError(f"asrnn: need a <= b for S ~ U(a, b), got a={self.a}, b={self.b}")
        if self.orth not in ORTH_MAPS:
            raise ModelError(f"asrnn: orth must be one of {', '.join(ORTH_MAPS)}; got {self.orth!r}")
        if self.init not in SKEW_INITS:
            raise ModelError(f"asrnn: init must be one of {', '.join(SKEW_INITS)}; got {self.init!r}")


class ASRNN(RecurrentModel):
    family = "asrnn"
    description = "asRNN: h = W_f⁻¹ tanh(W_f z), W_f = U_f·diag(|S|+eps), U_f and W_hh orthogonal"
    config_cls = ASRNNConfig
    config: ASRNNConfig

    def __init__(self, config: ASRNNConfig, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        n = config.hidden_size
        self.input_kernel = nn.Linear(self.input_size, n, bias=True)
        make = MatrixExp if config.orth == "exprnn" else Cayley
        self.recurrent = nn.Linear(n, n, bias=False)  # holder of the parametrized W_hh
        self.recurrent_skew = register_orthogonal(self.recurrent, [make()])
        self.U_f = nn.Linear(n, n, bias=False)  # holder of the parametrized U_f
        self.U_f_skew = register_orthogonal(self.U_f, [make()])
        self.S = nn.Parameter(torch.empty(n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.input_kernel.weight)
        nn.init.zeros_(self.input_kernel.bias)
        S = skew_init(self.config.init)(self.hidden_size, None)
        with torch.no_grad():
            self.recurrent_skew.copy_(S.triu(1))
            self.U_f_skew.zero_()  # U_f = I at init, as in the reference
            self.S.uniform_(self.config.a, self.config.b)
        self.reset_readout()

    @property
    def scales(self) -> torch.Tensor:
        """``|S| + eps``: the diagonal of ``D_f`` (never below eps)."""
        return self.S.abs() + self.config.eps

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        # Column-form matrices; the code uses row vectors, so "W z" is written z @ W.T.
        W_hh, U_f, d = self.recurrent.weight, self.U_f.weight, self.scales
        Wf_t = d[:, None] * U_f.t()  # (U_f D)ᵀ = D U_fᵀ
        Wf_inv_t = U_f / d[None, :]  # (D⁻¹ U_fᵀ)ᵀ = U_f D⁻¹
        R_t = Wf_inv_t @ W_hh.t() @ Wf_t  # (W_f W_hh W_f⁻¹)ᵀ
        drive = self.input_kernel(x) @ Wf_t  # W_f (W_xh x_t + b) for every step at once
        h0 = self.initial_hidden(x, state)
        y = h0 @ Wf_t  # the carried state back into W_f space
        ys = []
        for dt in drive.unbind(0):
            y = torch.tanh(torch.addmm(dt, y, R_t))
            ys.append(y)
        hs = torch.stack(ys) @ Wf_inv_t
        return hs, hs[-1]

    def parameter_groups(self) -> list[ParamGroup]:
        rec = self.recurrent_skew
        return [
            ParamGroup("unconstrained", [p for p in self.parameters() if p is not rec]),
            ParamGroup("orthogonal", [rec], kind="constrained"),
        ]

    def num_parameters(self) -> int:
        """As the paper counts: W_hh's and U_f's skew parameters have n(n−1)/2 entries each."""
        n = self.hidden_size
        skews = {id(self.recurrent_skew), id(self.U_f_skew)}
        free = sum(p.numel() for p in self.parameters() if id(p) not in skews)
        return free + n * (n - 1)
