"""Packed forward passes: K members of one family as one batched computation.

Every parameter of a member model gets a stacked counterpart with a leading trial axis K
(``w_hh`` is ``[K, H, H]``). One forward pass projects the inputs of all time steps for all K
members in one ``bmm``, runs the time loop with one ``baddbmm`` per step over ``x.unbind(0)``
(indexing ``x[t]`` in the loop made backward ~8x slower, MACHINE-NOTES), and reads out with one
``baddbmm``. Orthogonal families build their recurrent matrices once per forward for all K (one
batched ``matrix_exp`` or ``solve`` on ``[K, H, H]``), as the single models do.

The maths is the members' own, step for step: the same bias sums, gate order (input, forget,
cell, output), nonlinearities and parametrizations, so a packed member follows the same
trajectory as the model trained alone up to float rounding (tests check 1e-5).

Every packed family runs a hand-written backward of its time loop by default
(``irnn_search.packed.scan``): the recurrent weight's gradient in one ``bmm`` over all T steps
instead of one small ``bmm`` per step (for expRNN and Cayley autograd then carries it through
the matrix map, once per forward). It sums in another order, so members match ``train()`` to
float rounding (tests: 1e-5 relative). With ``fused_backward=False`` autograd differentiates the
step-by-step loop, and on CPU the packed updates and gradients are then bit-identical to
``train()``'s for the Elman and orthogonal families; the LSTM alone runs oneDNN's fused kernel,
which sums in another order, so there the match is to rounding (bit-identical against ATen's own
LSTM).

Members with different hidden sizes go to different packs (bucketing, ``pack_key``): measured on
the 2-core CI machine, two packs of 8 (hidden 64 and 128) ran 91.7 model-steps/s against 68.3 for
one pack of 16 padded to 128 before any masking cost (``benchmarks/README.md``).

Not packed (``why_not_packable`` says why): families with per-step state outside their
parameters or extra loss terms (dtriv rebases, nnRNN's penalty, scoRNN's Cayley-step optimizer,
asRNN, EURNN), and token tasks (embeddings, state carried between batches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from irnn_search.models.base import RecurrentModel, State, param
from irnn_search.models.elman import ElmanRNN
from irnn_search.models.exprnn import OrthogonalRNN
from irnn_search.models.lstm import LSTM
from irnn_search.models.modrelu import modrelu
from irnn_search.models.orthogonal import cayley_map, raw_parameter, skew
from irnn_search.models.rnn_orth import RNNOrth
from irnn_search.packed.scan import Activation, Workspace, elman_scan, lstm_scan, project_in_loop
from irnn_search.tasks.base import Task

Tensor = torch.Tensor
Params = Mapping[str, Tensor]
Recurrence = Callable[[Params, Tensor, tuple[Any, ...]], tuple[Tensor, State]]
#: A recurrence with a hand-written backward; the workspace is the pack's, for buffer reuse.
FusedRecurrence = Callable[[Params, Tensor, tuple[Any, ...], Workspace], tuple[Tensor, State]]


def _project(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """Inputs of every step for every member at once: ``x`` [K, T, B, I] -> [T, K, B, H]."""
    K, T, B, I = x.shape
    flat = x.reshape(K, T * B, I)
    proj = torch.bmm(flat, w.mT) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, w.mT)
    # Time-major and contiguous once, so every step's slice is a dense [K, B, H] block (a strided
    # slice costs a copy per step in forward and backward).
    return proj.view(K, T, B, -1).transpose(0, 1).contiguous()


def _loop(proj: Tensor, h: Tensor, w_rec: Tensor, act: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """``h_t = act(proj_t + h_{t-1} W_recᵀ)`` for all K members: one ``baddbmm`` per step."""
    w_t = w_rec.mT
    outs = []
    for xt in proj.unbind(0):
        h = act(torch.baddbmm(xt, h, w_t))
        outs.append(h)
    return torch.stack(outs), h


def _zeros(x: Tensor, H: int) -> Tensor:
    return x.new_zeros(x.shape[0], x.shape[2], H)


def _project_members_first(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``_project`` for the fused scans: [K, T, B, I] -> [K, T, B, H], members first (no copy)."""
    K, T, B, I = x.shape
    flat = x.reshape(K, T * B, I)
    proj = torch.bmm(flat, w.mT) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, w.mT)
    return proj.view(K, T, B, -1)


@dataclass(frozen=True)
class PackedFamily:
    """How one model family maps to stacked parameters and runs packed.

    ``params(model)`` names every parameter of a member (packed name -> the member's
    ``nn.Parameter``); ``variant(model)`` is what else must match for two members to share a
    pack (e.g. the nonlinearity); ``recurrence(params, x)`` runs the time loop on ``x``
    [K, T, B, I] and returns all hidden outputs [T, K, B, H] and the final state ([K, B, H], or a
    tuple of them for the LSTM). ``fused(variant)`` gives the same recurrence with a hand-written
    backward (``irnn_search.packed.scan``: the weight gradients in one matmul over all steps), or
    None where the variant has none (then autograd differentiates ``recurrence``).
    """

    name: str
    params: Callable[[RecurrentModel], dict[str, Tensor]]
    recurrence: Recurrence
    variant: Callable[[RecurrentModel], tuple[Any, ...]] = lambda model: ()
    fused: Callable[[tuple[Any, ...]], FusedRecurrence | None] = lambda variant: None


def _readout_params(model: RecurrentModel) -> dict[str, Tensor]:
    return {"w_out": model.readout.weight, "b_out": model.readout.bias}


def _fused(module: nn.RNN | nn.LSTM) -> dict[str, Tensor]:
    names = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}
    return {ours: param(module, theirs) for ours, theirs in names.items()}


# -- Elman: IRNN (relu) and tanh RNN --------------------------------------------------------------
def _elman_params(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, ElmanRNN)
    return {**_readout_params(model), **_fused(model.rnn)}


def _elman(p: Params, x: Tensor, variant: tuple[Any, ...]) -> tuple[Tensor, State]:
    # Same bias sum as elman_loop: b_ih + b_hh added once to the projected inputs.
    proj = _project(x, p["w_ih"], p["b_ih"] + p["b_hh"])
    act = torch.relu if variant == ("relu",) else torch.tanh
    return _loop(proj, _zeros(x, p["w_hh"].shape[-1]), p["w_hh"], act)


def _elman_scan(
    x: Tensor, w_in: Tensor, bias: Tensor | None, w_rec: Tensor, act: Activation, ws: Workspace, act_b: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The fused Elman scan on inputs ``x`` [K, T, B, I]: projected inside the time loop where the
    inputs are small, else all at once before it."""
    h0 = _zeros(x, w_rec.shape[-1])
    if project_in_loop(x.shape[-1], w_rec.shape[-1]):
        return elman_scan(x, h0, w_rec, act, ws, act_b=act_b, w_in=w_in, bias=bias)
    return elman_scan(_project_members_first(x, w_in, bias), h0, w_rec, act, ws, act_b=act_b)


def _elman_fused(p: Params, x: Tensor, variant: tuple[Any, ...], ws: Workspace) -> tuple[Tensor, State]:
    return _elman_scan(x, p["w_ih"], p["b_ih"] + p["b_hh"], p["w_hh"], variant[0], ws, None)  # relu | tanh


# -- LSTM ----------------------------------------------------------------------------------------
def _lstm_params(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, LSTM)
    return {**_readout_params(model), **_fused(model.lstm)}


def _lstm(p: Params, x: Tensor, variant: tuple[Any, ...]) -> tuple[Tensor, State]:
    """nn.LSTM's CPU cell op for op (ATen ``LSTMCell`` with precomputed inputs): gates are
    ``(h W_hhᵀ + b_hh) + (x W_ihᵀ + b_ih)``, gate order input, forget, cell, output, and
    ``c' = f·c + i·g``, ``h' = o·tanh(c')``; the same order of additions keeps the packed member on
    the fused kernel's trajectory. The readout sees h, never c."""
    proj = _project(x, p["w_ih"], p["b_ih"])
    H = p["w_hh"].shape[-1]
    h = c = _zeros(x, H)
    w_t, b_hh = p["w_hh"].mT, p["b_hh"].unsqueeze(1)
    outs = []
    for xt in proj.unbind(0):
        i, f, g, o = torch.baddbmm(b_hh, h, w_t).add(xt).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), (h, c)


def _lstm_fused(p: Params, x: Tensor, variant: tuple[Any, ...], ws: Workspace) -> tuple[Tensor, State]:
    proj = _project_members_first(x, p["w_ih"], p["b_ih"] + p["b_hh"])
    h0 = _zeros(x, p["w_hh"].shape[-1])
    hs, h, c = lstm_scan(proj, h0, torch.zeros_like(h0), p["w_hh"], ws)
    return hs, (h, c)


# -- RNN-orth: orthogonal init, unconstrained training ---------------------------------------------
def _rnn_orth_params(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, RNNOrth)
    named = {"w_in": model.input_kernel.weight, "w_rec": model.recurrent.weight}
    if model.input_kernel.bias is not None:
        named["b_in"] = model.input_kernel.bias
    if model.modrelu is not None:
        named["act_b"] = model.modrelu.b
    return {**_readout_params(model), **named}


def _act(p: Params, variant: tuple[Any, ...]) -> Callable[[Tensor], Tensor]:
    if "modrelu" in variant:
        b = p["act_b"].unsqueeze(1)  # [K, 1, H] against [K, B, H]
        return lambda z: modrelu(z, b)
    return torch.tanh


def _rnn_orth_variant(model: RecurrentModel) -> tuple[Any, ...]:
    assert isinstance(model, RNNOrth)
    return (model.config.nonlinearity,)


def _rnn_orth(p: Params, x: Tensor, variant: tuple[Any, ...]) -> tuple[Tensor, State]:
    proj = _project(x, p["w_in"], p.get("b_in"))
    return _loop(proj, _zeros(x, p["w_rec"].shape[-1]), p["w_rec"], _act(p, variant))


def _rnn_orth_fused(p: Params, x: Tensor, variant: tuple[Any, ...], ws: Workspace) -> tuple[Tensor, State]:
    # tanh | modrelu; only modReLU has a bias (act_b)
    return _elman_scan(x, p["w_in"], p.get("b_in"), p["w_rec"], variant[0], ws, p.get("act_b"))


# -- expRNN / Cayley: constrained (skew parameter, lr_orth) ----------------------------------------
def _orth_params(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, OrthogonalRNN)
    return {
        **_readout_params(model),
        "w_in": model.input_kernel.weight,
        "skew": raw_parameter(model.recurrent),
        "act_b": model.nonlinearity.b,
    }


def _orth_matrix(p: Params, variant: tuple[Any, ...]) -> Tensor:
    """Every member's orthogonal recurrent matrix [K, H, H], built once per forward for all K and
    reused by every step (as the single models do)."""
    S = skew(p["skew"])  # [K, H, H]: the strict upper triangle of each member's raw parameter
    return torch.linalg.matrix_exp(S) if variant[0] == "exp" else cayley_map(S)


def _orthogonal(p: Params, x: Tensor, variant: tuple[Any, ...]) -> tuple[Tensor, State]:
    B = _orth_matrix(p, variant)
    proj = _project(x, p["w_in"], None)
    return _loop(proj, _zeros(x, B.shape[-1]), B, _act(p, ("modrelu",)))


def _orthogonal_fused(p: Params, x: Tensor, variant: tuple[Any, ...], ws: Workspace) -> tuple[Tensor, State]:
    """``_orthogonal`` with the fused scan: autograd differentiates only the matrix's map (once
    per forward) and the input projection; the scan hands it ``dB`` in one ``bmm``."""
    return _elman_scan(x, p["w_in"], None, _orth_matrix(p, variant), "modrelu", ws, p["act_b"])


def _orth_variant(model: RecurrentModel) -> tuple[Any, ...]:
    return ("exp" if model.family == "exprnn" else "cayley",)


FAMILIES: dict[str, PackedFamily] = {
    "irnn": PackedFamily("irnn", _elman_params, _elman, lambda m: ("relu",), lambda v: _elman_fused),
    "rnn": PackedFamily("rnn", _elman_params, _elman, lambda m: ("tanh",), lambda v: _elman_fused),
    "lstm": PackedFamily("lstm", _lstm_params, _lstm, lambda m: (), lambda v: _lstm_fused),
    "rnn-orth": PackedFamily(
        "rnn-orth",
        _rnn_orth_params,
        _rnn_orth,
        _rnn_orth_variant,
        lambda v: _rnn_orth_fused if v in (("tanh",), ("modrelu",)) else None,
    ),
    "exprnn": PackedFamily("exprnn", _orth_params, _orthogonal, _orth_variant, lambda v: _orthogonal_fused),
    "cayley": PackedFamily("cayley", _orth_params, _orthogonal, _orth_variant, lambda v: _orthogonal_fused),
}


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
    if model.penalty() is not None:
        return f"{model.family}: adds a loss penalty, which packs do not support"
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

    @property
    def size(self) -> int:
        return int(self.params[self.names[0]].shape[0])

    def write_back(self, k: int, model: RecurrentModel) -> None:
        """Copy member ``k``'s slice into its own model (in place: the model keeps its tensors)."""
        with torch.no_grad():
            for name, p in ordered_params(model):
                p.copy_(self.params[name][k])

    def forward(
        self,
        x: Tensor,
        readout: Literal["all", "last"],
        params: Params | None = None,
    ) -> tuple[Tensor, State]:
        """Outputs [K, B, O] (``last``) or [K, T, B, O] (``all``) for inputs ``x`` [K, T, B, I].

        ``params`` defaults to the pack's own; pass a subset (e.g. ``params[name][idx]``) to run
        only some members (evaluation of the members due).
        """
        p = self.params if params is None else params
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
    "FAMILIES",
    "PackedFamily",
    "PackedModel",
    "ordered_params",
    "pack_key",
    "packable",
    "state_abs_max_per_member",
    "why_not_packable",
]
