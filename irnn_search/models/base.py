"""The shared shell of every recurrent model: optional embedding, the recurrence, a linear readout.

A family implements only ``recurrence`` (the time loop) and ``reset_parameters``. The shell
applies the embedding (token tasks), reads out every step or only the last one, and exposes the
parameter groups the training loop gives separate learning rates (constrained = orthogonal).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeAlias

import torch
from torch import nn

State: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...]


class ModelError(ValueError):
    """A model was configured with an impossible option."""


@dataclass(frozen=True)
class ModelConfig:
    """Options every family has. Families subclass this and add their own fields."""

    hidden_size: int = field(default=100, metadata={"help": "number of recurrent units"})

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ModelError(f"hidden_size must be >= 1, got {self.hidden_size}")

    @classmethod
    def option_help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}


@dataclass(frozen=True)
class ParamGroup:
    """A named set of parameters; ``kind`` decides which learning rate the loop gives it."""

    name: str
    params: list[nn.Parameter]
    kind: Literal["unconstrained", "constrained"] = "unconstrained"
    options: dict[str, Any] = field(default_factory=dict)  # e.g. weight_decay for nnRNN's T


def param(module: nn.Module, name: str) -> nn.Parameter:
    """A fused module's parameter by name (``weight_hh_l0``...), typed for mypy."""
    p = getattr(module, name)
    assert isinstance(p, nn.Parameter), name
    return p


def detach_state(state: State | None) -> State | None:
    """Cut the graph behind a carried state (truncated BPTT)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def state_abs_max(state: State) -> float:
    """Largest absolute entry of a state (NaN if any entry is NaN), for divergence checks."""
    parts = state if isinstance(state, tuple) else (state,)
    return max(float(p.detach().abs().max()) if p.numel() else 0.0 for p in parts)


class RecurrentModel(nn.Module, abc.ABC):
    """Embedding (token tasks only) -> recurrence -> linear readout."""

    family: ClassVar[str]
    description: ClassVar[str]
    config_cls: ClassVar[type[ModelConfig]]

    def __init__(
        self,
        config: ModelConfig,
        *,
        input_size: int,
        output_size: int,
        vocab_size: int | None = None,
        embed_size: int = 200,
    ):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.output_size = output_size
        # Token tasks (PTB) embed ids first; 200 is the embedding width of NNR and ASR.
        self.embedding: nn.Embedding | None = None
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, embed_size)
            input_size = embed_size
        self.input_size = input_size
        self.readout = nn.Linear(config.hidden_size, output_size)

    def initial_hidden(self, x: torch.Tensor, state: State | None) -> torch.Tensor:
        """The hidden state [B, H] a single-tensor recurrence starts from: ``state``, or zeros."""
        h0 = state if state is not None else x.new_zeros(x.shape[1], self.hidden_size)
        assert isinstance(h0, torch.Tensor)
        return h0

    def reset_readout(self) -> None:
        """Embedding and decoder U(-0.1, 0.1), decoder bias 0 for token tasks (NNR, ASR)."""
        if self.embedding is not None:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            nn.init.uniform_(self.readout.weight, -0.1, 0.1)
            nn.init.zeros_(self.readout.bias)

    @abc.abstractmethod
    def recurrence(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """Run the time loop on ``x`` (T, B, input_size); return all hidden outputs (T, B, H)
        and the final state (what a following chunk continues from)."""

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        *,
        readout: Literal["all", "last"] = "all",
    ) -> tuple[torch.Tensor, State]:
        """Outputs ``(T, B, output_size)`` (or ``(B, output_size)`` for ``readout="last"``)."""
        if self.embedding is not None:
            x = self.embedding(x)
        hs, state = self.recurrence(x, state)
        if readout == "last":
            hs = hs[-1]
        return self.readout(hs), state

    # -- what the training loop needs to know ------------------------------------------------
    def after_step(self) -> None:
        """Called by the training loop after every optimizer step (e.g. dtriv's periodic rebase).

        State it keeps must live in buffers, so checkpoints carry it. No-op by default.
        """

    def penalty(self) -> torch.Tensor | None:
        """A term the training loop adds to the task loss (e.g. nnRNN's δ·Σ(α−1)²); None = none."""
        return None

    def parameter_groups(self) -> list[ParamGroup]:
        """Parameter groups for the optimizer. Unconstrained families have just one."""
        return [ParamGroup("unconstrained", list(self.parameters()))]

    def num_parameters(self) -> int:
        """Trainable parameter count, the way the papers count it."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.family,
            **{f.name: getattr(self.config, f.name) for f in fields(self.config)},
            "parameters": self.num_parameters(),
        }
