"""RNN-orth (the nnRNN paper's baseline, NNR ``RNNCell``; REFERENCE §1.2).

``h_t = φ(U x_t + b_U + V h_{t−1})``, ``V`` without bias, ``φ`` = tanh or modReLU. ``V`` starts
orthogonal, ``expm(S)`` for the skew ``S`` of the requested ``init`` (default ``random``: Haar
on SO(n)), and is then trained **unconstrained**: one parameter group, no ``lr_orth``.

Unlike NNR, the requested init is honoured (NNR computes it and then ignores it, always
starting from a random orthogonal matrix). With modReLU the input kernel has no bias and modReLU's
``b`` is the only bias (ASR ``has_bias = not modrelu``); with tanh ``b_U`` starts at zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelConfig, ModelError, RecurrentModel, State
from irnn_search.models.exprnn import check_inits, init_input_kernel, recurrent_loop
from irnn_search.models.init import skew_init
from irnn_search.models.modrelu import ModReLU

NONLINEARITIES = ("tanh", "modrelu")


@dataclass(frozen=True)
class RNNOrthConfig(ModelConfig):
    init: str = field(
        default="random",
        metadata={"help": "V = expm(S) at init, S from: random (Haar) | henaff | cayley | zeros | identity (V = I)"},
    )
    nonlinearity: str = field(default="tanh", metadata={"help": "tanh | modrelu (NNR copy runs used modrelu)"})
    input_init: str = field(
        default="xavier", metadata={"help": "input kernel: xavier (normal; NNR default) | kaiming (normal)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_inits(self.init, self.input_init)
        if self.nonlinearity not in NONLINEARITIES:
            raise ModelError(f"nonlinearity must be one of {', '.join(NONLINEARITIES)}; got {self.nonlinearity!r}")


class RNNOrth(RecurrentModel):
    family = "rnn-orth"
    description = "RNN-orth: tanh or modReLU RNN, recurrent matrix initialised orthogonal, trained unconstrained"
    config_cls = RNNOrthConfig
    config: RNNOrthConfig

    def __init__(self, config: RNNOrthConfig, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        n = config.hidden_size
        modrelu = config.nonlinearity == "modrelu"
        self.input_kernel = nn.Linear(self.input_size, n, bias=not modrelu)
        self.recurrent = nn.Linear(n, n, bias=False)
        self.modrelu = ModReLU(n) if modrelu else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_input_kernel(self.input_kernel.weight, self.config.input_init)
        if self.input_kernel.bias is not None:
            nn.init.zeros_(self.input_kernel.bias)
        S = skew_init(self.config.init)(self.hidden_size, None)
        with torch.no_grad():
            self.recurrent.weight.copy_(torch.linalg.matrix_exp(S))  # in float64, then cast
        if self.modrelu is not None:
            self.modrelu.reset_parameters()
        self.reset_readout()

    @property
    def recurrent_weight(self) -> torch.Tensor:
        return self.recurrent.weight

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        h0 = self.initial_hidden(x, state)
        act = self.modrelu if self.modrelu is not None else torch.tanh
        return recurrent_loop(x, h0, self.input_kernel.weight, self.recurrent.weight, act, self.input_kernel.bias)
