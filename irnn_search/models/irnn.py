"""IRNN (Le, Jaitly & Hinton 2015): a ReLU RNN whose recurrent matrix starts as a scaled identity.

``h_t = ReLU(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` with ``W_hh = identity_scale · I``,
``W_ih ~ N(0, 0.001²)`` and zero biases (the paper's recipe). ``identity_scale`` is a
hyperparameter: 1.0 in the paper, 0.01 in the IRNN demo (IRD), which trains more stably.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelError, param
from irnn_search.models.elman import ElmanConfig, ElmanRNN


@dataclass(frozen=True)
class IRNNConfig(ElmanConfig):
    identity_scale: float = field(default=1.0, metadata={"help": "W_hh = identity_scale · I at init (paper: 1)"})
    input_std: float = field(default=1e-3, metadata={"help": "std of the N(0, std²) input weights (paper: 0.001)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.identity_scale >= 0:
            raise ModelError(f"identity_scale must be >= 0, got {self.identity_scale}")
        if not self.input_std >= 0:
            raise ModelError(f"input_std must be >= 0, got {self.input_std}")


class IRNN(ElmanRNN):
    family = "irnn"
    description = "IRNN: ReLU RNN, recurrent weights identity_scale·I, inputs N(0, 0.001²), zero biases"
    config_cls = IRNNConfig
    nonlinearity = "relu"
    config: IRNNConfig

    def reset_parameters(self) -> None:
        with torch.no_grad():
            param(self.rnn, "weight_hh_l0").copy_(self.config.identity_scale * torch.eye(self.hidden_size))
            nn.init.normal_(param(self.rnn, "weight_ih_l0"), 0.0, self.config.input_std)
            nn.init.zeros_(param(self.rnn, "bias_ih_l0"))
            nn.init.zeros_(param(self.rnn, "bias_hh_l0"))
        self.reset_readout()
