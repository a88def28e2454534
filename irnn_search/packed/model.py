"""The pack itself: K members of one family as stacked parameters and one forward pass.

``PackedModel`` stacks its members' parameters (and buffers) on a leading trial axis and runs the
family's recurrence from ``irnn_search.packed.families`` over all of them at once;
``why_not_packable`` and ``pack_key`` decide which members may share one.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from irnn_search.models.base import RecurrentModel, State
from irnn_search.packed.families import FAMILIES, Params
from irnn_search.packed.scan import Workspace
from irnn_search.tasks.base import Task

Tensor = torch.Tensor


def packable(family: str) -> bool:
    """True when ``family`` has a packed implementation (the task may still refuse: see
    ``why_not_packable``)."""
    return family in FAMILIES


def why_not_packable(model: RecurrentModel, task: Task) -> str | None:
    """Why this member cannot join a pack (None = it can). The caller trains it alone instead."""
    if model.family not in FAMILIES:
        return (
            f"model family {model.family!r} has no packed implementation "
            f"(packed families: {', '.join(FAMILIES)}); it trains one trial at a time"
        )
    if task.vocab_size is not None or task.carry_state or model.embedding is not None:
        return f"task {task.name!r} has token inputs or carries state between batches, which packs do not support yet"
    named = FAMILIES[model.family].params(model)
    covered = {id(p) for p in named.values()}
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        return f"{model.family}: parameters {', '.join(missing)} have no packed counterpart"
    held = {id(b) for b in FAMILIES[model.family].buffers(model).values()}
    missing = [n for n, b in model.named_buffers() if id(b) not in held]
    if missing:
        return f"{model.family}: buffers {', '.join(missing)} have no packed counterpart"
    if model.penalty() is not None and FAMILIES[model.family].penalty is None:
        return f"{model.family}: adds a loss penalty that its packed family does not compute"
    return None


def ordered_params(model: RecurrentModel) -> list[tuple[str, nn.Parameter]]:
    """(packed name, parameter) in ``model.parameters()`` order: the order ``train`` sums the
    gradient norm in, so the packed per-member norm adds the same terms in the same order."""
    names = {id(p): n for n, p in FAMILIES[model.family].params(model).items()}
    return [(names[id(p)], p) for p in model.parameters() if p.requires_grad]


def pack_key(model: RecurrentModel, task: Task, device: str) -> tuple[Any, ...]:
    """Members with equal keys can share a pack: same family and variant, same parameter shapes
    (so different hidden sizes go to different packs: bucketing), same batch shape and device."""
    fam = FAMILIES[model.family]
    shapes = tuple((n, tuple(p.shape)) for n, p in ordered_params(model))
    return (
        model.family,
        fam.variant(model),
        shapes,
        type(task).__name__,
        task.readout,
        task.batch_size,
        task.seq_len,
        torch.device(device),
    )


class PackedModel:
    """The stacked parameters of K members of one family and the packed forward pass.

    ``params[name]`` is a leaf tensor [K, ...] with ``requires_grad``; ``names`` lists them in
    the members' ``parameters()`` order. With ``fused_backward`` (default) the family's
    hand-written backward runs where it has one; ``fused`` is that recurrence, None when
    autograd differentiates the loop (``fused_backward=False``: the step-by-step path, kept for
    comparison and bit-exact against ``train()``).
    """

    def __init__(self, models: list[RecurrentModel], device: torch.device, fused_backward: bool = True) -> None:
        if not models:
            raise ValueError("a pack needs at least one member")
        first = models[0]
        self.family = FAMILIES[first.family]
        self.variant = self.family.variant(first)
        self.fused = self.family.fused(self.variant) if fused_backward else None
        self.workspace: Workspace = {}  # the fused backward's buffers, reused step after step
        self.names = [n for n, _ in ordered_params(first)]
        self.params: dict[str, Tensor] = {}
        with torch.no_grad():
            for name in self.names:
                stacked = torch.stack([dict(ordered_params(m))[name].detach().to(device) for m in models])
                self.params[name] = stacked.requires_grad_(True)
            #: The family's non-trainable tensors, stacked [K, ...] (see ``PackedFamily.buffers``).
            per_member = [self.family.buffers(m) for m in models]
            self.buffers: dict[str, Tensor] = {
                name: torch.stack([b[name].detach().to(device) for b in per_member]) for name in per_member[0]
            }

    @property
    def size(self) -> int:
        return int(self.params[self.names[0]].shape[0])

    def write_back(self, k: int, model: RecurrentModel) -> None:
        """Copy member ``k``'s slice into its own model (in place: the model keeps its tensors),
        its buffers included (constants made from its config have nothing to go back to)."""
        with torch.no_grad():
            for name, p in ordered_params(model):
                p.copy_(self.params[name][k])
            own = {id(b) for b in model.buffers()}
            for name, b in self.family.buffers(model).items():
                if id(b) in own:
                    b.copy_(self.buffers[name][k])

    def select(self, index: Tensor) -> dict[str, Tensor]:
        """The parameters (detached) and buffers of the members ``index``, for ``forward``."""
        chosen = {n: p.detach().index_select(0, index) for n, p in self.params.items()}
        return {**chosen, **{n: b.index_select(0, index) for n, b in self.buffers.items()}}

    def penalty(self) -> Tensor | None:
        """The family's per-member loss penalty [K] (nnRNN's), or None."""
        if self.family.penalty is None:
            return None
        return self.family.penalty({**self.params, **self.buffers})

    def after_step(self, stepped: list[int]) -> None:
        """The family's work after an optimizer step, for the members ``stepped`` (dtriv's rebase)."""
        if self.family.after_step is not None:
            self.family.after_step(self, stepped)

    def forward(
        self,
        x: Tensor,
        readout: Literal["all", "last"],
        params: Params | None = None,
    ) -> tuple[Tensor, State]:
        """Outputs [K, B, O] (``last``) or [K, T, B, O] (``all``) for inputs ``x`` [K, T, B, I].

        ``params`` defaults to the pack's own parameters and buffers; pass ``select(index)`` to run
        only some members (evaluation of the members due).
        """
        p = {**self.params, **self.buffers} if params is None else params
        if self.fused is not None:
            hs, state = self.fused(p, x, self.variant, self.workspace)
        else:
            hs, state = self.family.recurrence(p, x, self.variant)
        if readout == "last":
            # The final state, not hs[-1]: the same values, and no gradient flows into hs.
            last = state[0] if isinstance(state, tuple) else state
            return _readout(last, p["w_out"], p["b_out"]), state
        T, K, B, H = hs.shape
        out = _readout(hs.transpose(0, 1).reshape(K, T * B, H), p["w_out"], p["b_out"])
        return out.view(K, T, B, -1), state


#: Below this many multiply-adds per member, ATen's CPU ``bmm`` takes a naive loop that sums in
#: another order than ``addmm`` (what ``nn.Linear`` runs); above it both call the same BLAS gemm
#: and agree bit for bit (checked: recurrence and readout of a pack equal the model's exactly).
_SMALL_BMM = 400


def _readout(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Per-member linear readout: ``h`` [K, N, H] -> [K, N, O]."""
    _, N, H = h.shape
    if h.device.type == "cpu" and N * H * w.shape[1] < _SMALL_BMM:
        # Tiny readouts (the adding task's single output at small batch): one Linear per member
        # keeps the member on the trajectory of the model alone; the cost is K tiny ops per step.
        outs = [
            nn.functional.linear(hk, wk, bk) for hk, wk, bk in zip(h.unbind(0), w.unbind(0), b.unbind(0), strict=True)
        ]
        return torch.stack(outs)
    return torch.baddbmm(b.unsqueeze(1), h, w.mT)


def state_abs_max_per_member(state: State) -> Tensor:
    """Largest |entry| of each member's final state ([K]; NaN where a member has a NaN)."""
    parts = state if isinstance(state, tuple) else (state,)
    maxes = [p.detach().abs().amax(dim=tuple(range(1, p.dim()))) for p in parts]
    return torch.stack(maxes).amax(dim=0) if len(maxes) > 1 else maxes[0]


__all__ = [
    "PackedModel",
    "ordered_params",
    "pack_key",
    "packable",
    "state_abs_max_per_member",
    "why_not_packable",
]
