"""Vanilla tanh RNN with Glorot-normal weights and zero biases (the nnRNN paper's "RNN" baseline)."""

from __future__ import annotations

from torch import nn

from irnn_search.models.base import param
from irnn_search.models.elman import ElmanConfig, ElmanRNN


class TanhRNN(ElmanRNN):
    family = "rnn"
    description = "tanh RNN: Glorot-normal input and recurrent weights, zero biases"
    config_cls = ElmanConfig
    nonlinearity = "tanh"

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(param(self.rnn, "weight_ih_l0"))
        nn.init.xavier_normal_(param(self.rnn, "weight_hh_l0"))
        nn.init.zeros_(param(self.rnn, "bias_ih_l0"))
        nn.init.zeros_(param(self.rnn, "bias_hh_l0"))
        self.reset_readout()
