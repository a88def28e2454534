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
``train()``'s for the Elman and orthogonal families (for a matrix exponential, where its norm is
above 3.01: below it a lone matrix takes another Taylor degree, see ``never_alone``); the LSTM
alone runs oneDNN's fused kernel, which sums in another order, so there the match is to rounding
(bit-identical against ATen's own LSTM).

Members with different hidden sizes go to different packs (bucketing, ``pack_key``): measured on
the 2-core CI machine, two packs of 8 (hidden 64 and 128) ran 91.7 model-steps/s against 68.3 for
one pack of 16 padded to 128 before any masking cost (``benchmarks/README.md``).

Every family of the zoo packs. What goes beyond parameters has its own packed counterpart:

- **state in buffers** (``PackedFamily.buffers``) is stacked like the parameters and written back
  to each member with them: dtriv's ``base`` and rebase counters, scoRNN's ±1 diagonal;
- **per-member constants from the config** ride along the same way (not written back): dtriv's
  rebase period K and projection period M, nnRNN's penalty weight δ, asRNN's ``eps``;
- **a loss penalty** (``PackedFamily.penalty``, nnRNN's ``δ·Σ(α−1)²``) is one value per member,
  added to that member's loss before the backward pass, as ``train()`` adds it;
- **work after the optimizer step** (``PackedFamily.after_step``, dtriv's rebase every K steps
  and projection onto O(n) every M rebases) runs for exactly the members whose update was applied,
  each on its own step count.

A member's arithmetic does not depend on who else is in its pack: on CPU its values and gradients
are the same, bit for bit, in any pack of two or more. A batch of one takes other torch kernels
(a batched matrix-vector product becomes a gemv; ``matrix_exp`` picks a lower Taylor degree for a
small norm), so what the pack computes for a subset of its members (dtriv's rebases, the members
due for evaluation) is computed as for two (``never_alone``), and ``irnn-search train --packed``
trains its run beside a silent twin: it retraces any trial that trained in a pack of two or more.

Not packed (``irnn_search.packed.model.why_not_packable`` says why, and the member trains alone):
token tasks (embeddings, state carried between batches), and any model with a parameter or buffer a
packed family does not cover.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from irnn_search.models.asrnn import ASRNN
from irnn_search.models.base import RecurrentModel, State, param
from irnn_search.models.elman import ElmanRNN
from irnn_search.models.eurnn import EURNN, layer_pairs
from irnn_search.models.exprnn import DTriv, OrthogonalRNN
from irnn_search.models.lstm import LSTM
from irnn_search.models.modrelu import modrelu
from irnn_search.models.nnrnn import NNRNN
from irnn_search.models.orthogonal import SignFlip, cayley_map, parametrizations, raw_parameter, skew
from irnn_search.models.rnn_orth import RNNOrth
from irnn_search.packed.scan import Activation, Workspace, elman_scan, lstm_scan, project_in_loop

if TYPE_CHECKING:  # the pack runs the families; a family's after_step is handed the pack
    from irnn_search.packed.model import PackedModel

Tensor = torch.Tensor
Params = Mapping[str, Tensor]


def never_alone(fn: Callable[[Tensor], Any], X: Tensor) -> Any:
    """``fn`` of a stack [K, ...] computed as torch computes a stack of several: a lone member
    (K = 1) is computed beside a copy of itself. Torch takes other kernels for a batch of one
    (``matrix_exp`` picks its Taylor degree from the norm instead of its highest degree for every
    matrix; a batched matrix-vector product becomes a gemv), so a member alone would get other
    digits than in a pack; from K = 2 on, each member's result is independent of K and of the
    others (``tests/packed/test_independence.py``). Results of ``fn`` are tensors or tuples of
    them, each with the leading K axis."""
    if X.shape[0] != 1:
        return fn(X)
    out = fn(torch.cat([X, X]))
    return tuple(t[:1] for t in out) if isinstance(out, tuple) else out[:1]


def expm(S: Tensor) -> Tensor:
    """Each member's ``matrix_exp`` [K, H, H], the same whatever the pack (``never_alone``): for a
    1-norm below 3.01 torch computes a lone matrix with a lower Taylor degree than a stack."""
    return never_alone(torch.linalg.matrix_exp, S)


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
    #: Non-trainable tensors of a member (packed name -> tensor), stacked like the parameters and
    #: passed to the recurrence with them: the model's buffers (written back with the parameters)
    #: and constants made from its config (not written back).
    buffers: Callable[[RecurrentModel], dict[str, Tensor]] = lambda model: {}
    #: Per-member loss penalty [K] from the stacked parameters and buffers (nnRNN's), or None.
    penalty: Callable[[Params], Tensor] | None = None
    #: Runs after every optimizer step on the pack's model, for the members (pack indices) whose
    #: update was applied (dtriv's rebase), or None.
    after_step: Callable[[PackedModel, list[int]], None] | None = None


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
    x: Tensor, w_in: Tensor, bias: Tensor | None, w_rec: Tensor, act: Activation, ws: Workspace, *, act_b: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The fused Elman scan on inputs ``x`` [K, T, B, I]: projected inside the time loop where the
    inputs are small, else all at once before it."""
    h0 = _zeros(x, w_rec.shape[-1])
    if project_in_loop(x.shape[-1], w_rec.shape[-1]):
        return elman_scan(x, h0, w_rec, act, ws, act_b=act_b, w_in=w_in, bias=bias)
    return elman_scan(_project_members_first(x, w_in, bias), h0, w_rec, act, ws, act_b=act_b)


def _elman_fused(p: Params, x: Tensor, variant: tuple[Any, ...], ws: Workspace) -> tuple[Tensor, State]:
    return _elman_scan(x, p["w_ih"], p["b_ih"] + p["b_hh"], p["w_hh"], variant[0], ws, act_b=None)  # relu | tanh


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
    return _elman_scan(x, p["w_in"], p.get("b_in"), p["w_rec"], variant[0], ws, act_b=p.get("act_b"))


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
    return expm(S) if variant[0] == "exp" else cayley_map(S)


def _orth_variant(model: RecurrentModel) -> tuple[Any, ...]:
    return ("exp" if model.family == "exprnn" else "cayley",)


def _modrelu_family(
    name: str,
    params: Callable[[RecurrentModel], dict[str, Tensor]],
    matrix: Callable[[Params, tuple[Any, ...]], Tensor],
    variant: Callable[[RecurrentModel], tuple[Any, ...]] = lambda model: (),
    **hooks: Any,
) -> PackedFamily:
    """A family ``h_t = modrelu(W_in x_t + W h_{t−1})`` whose recurrent matrix ``W`` (column form,
    [K, H, H]) ``matrix(params, variant)`` builds once per forward for all K members. With the
    fused scan, autograd differentiates only the matrix's map (once per forward) and the input
    projection; the scan hands it ``dW`` in one ``bmm``."""

    def recurrence(p: Params, x: Tensor, v: tuple[Any, ...]) -> tuple[Tensor, State]:
        W = matrix(p, v)
        return _loop(_project(x, p["w_in"], None), _zeros(x, W.shape[-1]), W, _act(p, ("modrelu",)))

    def fused(p: Params, x: Tensor, v: tuple[Any, ...], ws: Workspace) -> tuple[Tensor, State]:
        return _elman_scan(x, p["w_in"], None, matrix(p, v), "modrelu", ws, act_b=p["act_b"])

    return PackedFamily(name, params, recurrence, variant, lambda v: fused, **hooks)


# -- scoRNN: Cayley(S)·D, D a fixed ±1 diagonal per member ---------------------------------------
def _scornn_buffers(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, OrthogonalRNN)
    flip = parametrizations(model.recurrent)[-1]
    assert isinstance(flip, SignFlip)
    return {"signs": flip.signs}


def _scornn_matrix(p: Params, variant: tuple[Any, ...]) -> Tensor:
    # SignFlip: Q · D scales the columns of each member's Q by its own signs.
    return cayley_map(skew(p["skew"])) * p["signs"].unsqueeze(1)


# -- dtriv: base · expm(S), rebased every K steps ----------------------------------------------------
def _dtriv_buffers(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, DTriv)
    dyn = model.dynamic
    return {
        "base": dyn.base,
        "steps": dyn.steps,
        "rebases": dyn.rebases,
        "rebase_every": torch.tensor(dyn.K),
        "project_every": torch.tensor(dyn.M),
    }


def _dtriv_matrix(p: Params, variant: tuple[Any, ...]) -> Tensor:
    return p["base"] @ expm(skew(p["skew"]))


def _dtriv_after_step(model: PackedModel, stepped: list[int]) -> None:
    """``dynamic_step`` for each member whose update was applied: count the step; rebase the
    members at their K-th step (``base ← base·expm(S)``, ``S ← 0``), and project onto O(n) by SVD
    those at their M-th rebase. Optimizer statistics of S are kept, as the model alone keeps them.
    One host sync per step (which members are due), however many members."""
    if not stepped:
        return
    b = model.buffers
    with torch.no_grad():
        index = torch.tensor(stepped, dtype=torch.long, device=b["steps"].device)
        b["steps"].index_add_(0, index, torch.ones_like(index))
        # Only a member stepped just now can have reached its K (the others rebased before).
        due = (b["steps"] >= b["rebase_every"]).nonzero().flatten()
        if due.numel() == 0:
            return
        raw = model.params["skew"].detach()
        moved = b["base"].index_select(0, due) @ expm(skew(raw.index_select(0, due)))
        b["base"].index_copy_(0, due, moved)
        raw.index_fill_(0, due, 0.0)
        b["steps"].index_fill_(0, due, 0)
        b["rebases"].index_add_(0, due, torch.ones_like(due))
        project = due[b["rebases"].index_select(0, due) >= b["project_every"].index_select(0, due)]
        if project.numel():
            U, _, Vh = never_alone(torch.linalg.svd, b["base"].index_select(0, project))
            b["base"].index_copy_(0, project, U @ Vh)
            b["rebases"].index_fill_(0, project, 0)


# -- nnRNN: P(Λ+T)Pᵀ, penalty δ·Σ(α−1)², weight decay on T ---------------------------------------------
def _nnrnn_params(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, NNRNN)
    return {
        **_readout_params(model),
        "w_in": model.input_kernel.weight,
        "skew": model.skew_parameter,
        "alpha": model.alpha,
        "theta": model.theta,
        "T": model.T,
        "act_b": model.nonlinearity.b,
    }


def _nnrnn_buffers(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, NNRNN)
    return {"delta": torch.tensor(model.config.delta)}


def _rotation_blocks(alpha: Tensor, theta: Tensor) -> Tensor:
    """``rotation_blocks`` for K members at once: [K, n/2] scales and angles -> [K, n, n], each
    2×2 block ``α [[cos θ, −sin θ], [sin θ, cos θ]]`` on the diagonal (entries placed, not summed)."""
    K, half = alpha.shape
    c, s = alpha * torch.cos(theta), alpha * torch.sin(theta)
    blocks = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [K, n/2, 2, 2]
    eye = torch.eye(half, dtype=alpha.dtype, device=alpha.device)
    return torch.einsum("kiab,ij->kiajb", blocks, eye).reshape(K, 2 * half, 2 * half)


def _nnrnn_matrix(p: Params, variant: tuple[Any, ...]) -> Tensor:
    P = expm(skew(p["skew"]))
    rec = P @ (_rotation_blocks(p["alpha"], p["theta"]) + p["T"].triu(1)) @ P.mT
    return rec.mT  # the model applies h @ rec: in column form that is rec transposed


def _nnrnn_penalty(p: Params) -> Tensor:
    return p["delta"] * (p["alpha"] - 1.0).square().sum(dim=1)


# -- EURNN: a product of Givens-rotation layers ------------------------------------------------------
def _eurnn_params(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, EURNN)
    angles = {f"angle{i}": theta for i, theta in enumerate(model.angles)}
    return {**_readout_params(model), "w_in": model.input_kernel.weight, "act_b": model.nonlinearity.b, **angles}


def _eurnn_matrix(p: Params, variant: tuple[Any, ...]) -> Tensor:
    """``givens_product`` for K members: each layer rotates pairs of rows of every member's W."""
    (layers,) = variant
    first = p["angle0"]
    K, n = first.shape[0], p["w_in"].shape[1]
    W = torch.eye(n, dtype=first.dtype, device=first.device).expand(K, n, n)
    for layer in range(layers):
        theta = p[f"angle{layer}"]
        a, b = (i.to(theta.device) for i in layer_pairs(n, layer))
        c, s = torch.cos(theta).unsqueeze(-1), torch.sin(theta).unsqueeze(-1)  # [K, pairs, 1]
        Wa, Wb = W[:, a], W[:, b]
        W = W.index_copy(1, a, c * Wa - s * Wb).index_copy(1, b, s * Wa + c * Wb)
    return W


# -- asRNN: h = W_f⁻¹ tanh(W_f z), run as y_t = tanh(W_f(W_xh x_t + b) + R y_{t−1}) --------------------
def _asrnn_params(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, ASRNN)
    return {
        **_readout_params(model),
        "w_in": model.input_kernel.weight,
        "b_in": model.input_kernel.bias,
        "skew": model.recurrent_skew,
        "skew_f": model.U_f_skew,
        "S": model.S,
    }


def _asrnn_buffers(model: RecurrentModel) -> dict[str, Tensor]:
    assert isinstance(model, ASRNN)
    return {"eps": torch.tensor(model.config.eps)}


def _asrnn_maps(p: Params, variant: tuple[Any, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """``Wf_t``, ``Wf_inv_t`` and ``R_t`` of ``ASRNN.recurrence`` for every member ([K, H, H])."""
    orth = expm if variant[0] == "exprnn" else cayley_map
    W_hh, U_f = orth(skew(p["skew"])), orth(skew(p["skew_f"]))
    d = p["S"].abs() + p["eps"].unsqueeze(1)  # [K, H]
    Wf_t = d.unsqueeze(2) * U_f.mT
    Wf_inv_t = U_f / d.unsqueeze(1)
    return Wf_t, Wf_inv_t, Wf_inv_t @ W_hh.mT @ Wf_t


def _asrnn_out(ys: Tensor, Wf_inv_t: Tensor) -> tuple[Tensor, State]:
    """``h_t = W_f⁻¹ y_t`` for every step in one matmul: ``ys`` [T, K, B, H] -> hs, last."""
    T, K, B, H = ys.shape
    hs = torch.bmm(ys.transpose(0, 1).reshape(K, T * B, H), Wf_inv_t).view(K, T, B, H).transpose(0, 1)
    return hs, hs[-1]


def _asrnn(p: Params, x: Tensor, variant: tuple[Any, ...]) -> tuple[Tensor, State]:
    Wf_t, Wf_inv_t, R_t = _asrnn_maps(p, variant)
    drive = torch.matmul(_project(x, p["w_in"], p["b_in"]), Wf_t)  # [T, K, B, H] @ [K, H, H]
    ys, _ = _loop(drive, _zeros(x, R_t.shape[-1]), R_t.mT, torch.tanh)
    return _asrnn_out(ys, Wf_inv_t)


def _asrnn_fused(p: Params, x: Tensor, variant: tuple[Any, ...], ws: Workspace) -> tuple[Tensor, State]:
    Wf_t, Wf_inv_t, R_t = _asrnn_maps(p, variant)
    K, T, B, _ = x.shape
    H = R_t.shape[-1]
    drive = torch.bmm(_project_members_first(x, p["w_in"], p["b_in"]).view(K, T * B, H), Wf_t)
    ys, _ = elman_scan(drive.view(K, T, B, H), _zeros(x, H), R_t.mT, "tanh", ws)
    return _asrnn_out(ys, Wf_inv_t)


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
    "exprnn": _modrelu_family("exprnn", _orth_params, _orth_matrix, _orth_variant),
    "cayley": _modrelu_family("cayley", _orth_params, _orth_matrix, _orth_variant),
    "scornn": _modrelu_family("scornn", _orth_params, _scornn_matrix, buffers=_scornn_buffers),
    "dtriv": _modrelu_family(
        "dtriv", _orth_params, _dtriv_matrix, buffers=_dtriv_buffers, after_step=_dtriv_after_step
    ),
    "nnrnn": _modrelu_family("nnrnn", _nnrnn_params, _nnrnn_matrix, buffers=_nnrnn_buffers, penalty=_nnrnn_penalty),
    "eurnn": _modrelu_family(
        "eurnn",
        _eurnn_params,
        _eurnn_matrix,
        lambda m: (m.config.capacity,),  # type: ignore[attr-defined]
    ),
    "asrnn": PackedFamily(
        "asrnn",
        _asrnn_params,
        _asrnn,
        lambda m: (m.config.orth,),  # type: ignore[attr-defined]
        lambda v: _asrnn_fused,
        buffers=_asrnn_buffers,
    ),
}


__all__ = ["FAMILIES", "FusedRecurrence", "PackedFamily", "Params", "Recurrence"]
