"""LSTM baseline. The readout sees the hidden output h_t, never the cell state c_t.

(The asRNN reference code reads out c_t by mistake: REFERENCE.md §1.4; a test guards this.)

The forget-gate bias is explicit: ``forget_bias`` is the *total* initial forget bias, put in
``bias_ih`` with ``bias_hh``'s forget slice zeroed. Default 1.0 (Gers et al.; Jozefowicz et al.
2015; the asRNN baseline). ``forget_bias=0`` with ``init=default`` is plain ``nn.LSTM`` as the
expRNN baseline ran it, except that its default biases are random, not zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from irnn_search.models.base import ModelConfig, ModelError, RecurrentModel, State, param

INITS = ("default", "glorot")


@dataclass(frozen=True)
class LSTMConfig(ModelConfig):
    forget_bias: float = field(default=1.0, metadata={"help": "initial total forget-gate bias"})
    init: str = field(
        default="default",
        metadata={"help": "weights: default (PyTorch U(±1/√H); expRNN, asRNN) | glorot (Glorot normal; nnRNN)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise ModelError(f"init must be one of {', '.join(INITS)}; got {self.init!r}")


class LSTM(RecurrentModel):
    family = "lstm"
    description = "LSTM: fused nn.LSTM, explicit forget-gate bias, reads out h"
    config_cls = LSTMConfig
    config: LSTMConfig

    def __init__(self, config: LSTMConfig, **kwargs: int | None) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.lstm = nn.LSTM(self.input_size, config.hidden_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lstm.reset_parameters()
        H = self.hidden_size
        with torch.no_grad():
            if self.config.init == "glorot":
                nn.init.xavier_normal_(param(self.lstm, "weight_ih_l0"))
                nn.init.xavier_normal_(param(self.lstm, "weight_hh_l0"))
                param(self.lstm, "bias_ih_l0").zero_()
                param(self.lstm, "bias_hh_l0").zero_()
            # PyTorch gate order: input, forget, cell, output.
            param(self.lstm, "bias_ih_l0")[H : 2 * H] = self.config.forget_bias
            param(self.lstm, "bias_hh_l0")[H : 2 * H] = 0.0
        self.reset_readout()

    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if state is None:
            zeros = x.new_zeros(1, x.shape[1], self.hidden_size)
            hc = (zeros, zeros)
        else:
            assert isinstance(state, tuple)
            hc = (state[0].unsqueeze(0), state[1].unsqueeze(0))
        hs, (h, c) = self.lstm(x, hc)
        # hs holds h_t for every t: the readout never sees c.
        return hs, (h.squeeze(0), c.squeeze(0))
