"""Hand-written backward passes for the packed time loops: the weight gradients in ONE matmul.

Autograd differentiates the packed loop step by step: every time step's ``baddbmm`` gets its own
weight-gradient ``bmm`` ``[K, H, B] @ [K, B, H]``, a contraction over only B (16 in the adding
study) that runs no faster per member than one model's ``mm`` and was 45% of a packed step
(``benchmarks/README.md``). ``ElmanScan`` runs the same recurrence without an autograd graph
and, in backward, only the reverse chain ``dh_{t-1} = (dh_t ⊙ act'(a_t)) W_hh`` per step (one
``baddbmm``); it keeps every step's ``da_t`` and forms the recurrent weight's gradient once,
``dW_hh = Σ_t da_tᵀ h_{t-1}``, as one ``bmm`` over ``[K, H, T·B] @ [K, T·B, H]``. The
gradient of the projected inputs is ``da`` itself, so the input weights and biases get theirs in
one op over all T as well (autograd of ``_project``). Small inputs (``project_in_loop``) are
instead projected step by step inside the loop (``w_in``, ``bias``): the [K, T, B, H] projection
is never written, and the backward forms ``dW_in`` and the bias's gradient from ``da`` in one
matmul and one sum.

Layout: members first, ``[K, T, B, H]``, so a member's steps are one dense ``[T·B, H]`` block for
the big matmuls; the per-step slices ``[:, t]`` are strided views that ``bmm`` reads and writes
in place. The hidden states are kept in a ``[K, T+1, B, H]`` buffer whose slot 0 is ``h0``, so
``h_{t-1}`` for every t is a view, not a copy.

The sums run in another order than autograd's (one long sum over T·B rather than T partial sums),
so members match ``train()`` to float rounding (tests: 1e-5 relative), not bit for bit.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Tensor = torch.Tensor

#: Buffers a caller lends for reuse across steps (``PackedModel`` keeps one per pack): a fresh
#: 15 MB buffer per step cost thousands of page faults, 10 to 20% of a step on the CI machine.
Workspace = dict[tuple[Any, ...], Tensor]
_use_count = getattr(torch._C, "_storage_Use_Count", None)  # private; without it, no reuse


def _storage_users(t: Tensor) -> int:
    assert _use_count is not None
    return int(_use_count(t.untyped_storage()._cdata))


# What the count reads for a tensor that nothing else holds (the storage object asked counts too).
_FREE = _storage_users(torch.empty(1)) if _use_count is not None else 0


def _buffer(workspace: Workspace | None, role: str, like: Tensor, *shape: int) -> Tensor:
    """An uninitialised ``shape`` buffer: the workspace's, when nothing else holds its storage any
    more (the graph and outputs of the step that used it are gone), else a fresh one."""
    if workspace is None or _use_count is None:
        return like.new_empty(shape)
    key = (role, shape, like.dtype, like.device)
    buf = workspace.get(key)
    if buf is None or _storage_users(buf) != _FREE:
        buf = workspace[key] = like.new_empty(shape)
    return buf


#: The activations the fused Elman scan runs: ``modrelu`` is ``sign(a) · relu(|a| + b)`` with a
#: per-member bias ``b`` (``irnn_search.models.modrelu``), the nonlinearity of expRNN and Cayley.
Activation = Literal["relu", "tanh", "modrelu"]


def _act_forward(a: Tensor, act: Activation, b: Tensor | None, sign: Tensor | None, out: Tensor) -> None:
    """``out = act(a)``; ``a`` (a scratch block) may be overwritten. modReLU computes exactly
    ``modrelu(a, b)``'s ops in its order: ``sign(a) * relu(|a| + b)``."""
    if act == "relu":
        torch.clamp_min(a, 0, out=out)
    elif act == "tanh":
        torch.tanh(a, out=out)
    else:
        assert b is not None and sign is not None
        torch.sign(a, out=sign)
        torch.mul(sign, a.abs_().add_(b).clamp_min_(0), out=out)


def _act_backward(grad: Tensor, h: Tensor, act: Activation, out: Tensor) -> Tensor:
    """``grad ⊙ act'(a)`` from the activation's output ``h``, into ``out``: relu ``h > 0``, tanh
    ``1 - h²``, modReLU ``h ≠ 0`` (its slope is 1 where it is active, and it is active exactly
    where its output is non-zero; at ``a = 0`` both its output and autograd's slope are 0)."""
    if act == "relu":
        return torch.ops.aten.threshold_backward.grad_input(grad, h, 0, grad_input=out)
    if act == "tanh":
        return torch.ops.aten.tanh_backward.grad_input(grad, h, grad_input=out)
    return torch.mul(grad, h != 0, out=out)


class ElmanScan(torch.autograd.Function):
    """``h_t = act(proj_t + h_{t-1} W_hhᵀ)`` for K members at once, with a fused backward.

    Inputs: ``proj`` [K, T, B, H] (inputs already projected, biases added), ``h0`` [K, B, H],
    ``w_hh`` [K, H, H], ``act_b`` [K, H] (modReLU's bias; None for relu and tanh), ``act``.
    Outputs: every hidden state, time-major [T, K, B, H] (a view of a members-first buffer), and
    the last state [K, B, H]. modReLU's bias gets its gradient in one reduction over all T·B,
    ``db = Σ da ⊙ sign(h)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        proj: Tensor,
        h0: Tensor,
        w_hh: Tensor,
        act_b: Tensor | None,
        act: Activation,
        workspace: Workspace | None,
        w_in: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        K, T, B, _ = proj.shape
        H = w_hh.shape[-1]
        if (act == "modrelu") != (act_b is not None):
            raise ValueError(f"act_b is modReLU's bias: give it for 'modrelu' only (act={act!r})")
        if w_in is None and bias is not None:
            raise ValueError("bias goes with w_in: without w_in the inputs come projected, biases added")
        buf = _buffer(workspace, "h", proj, K, T + 1, B, H)
        buf[:, 0] = h0
        w_t = w_hh.mT.contiguous()  # a dense right operand: bmm runs ~1.5x faster than on the view
        # ATen's CPU bmm runs one batched BLAS call only into a contiguous result (a strided one
        # falls back to K single matmuls), so each step lands in a dense scratch block and the
        # activation writes it into the buffer.
        scratch = proj.new_empty(K, B, H)
        b = act_b.unsqueeze(1) if act_b is not None else None  # [K, 1, H] against [K, B, H]
        sign = proj.new_empty(K, B, H) if act == "modrelu" else None
        hs_t, proj_t = buf.unbind(1), proj.unbind(1)  # views made once, not per step
        if w_in is None:
            for t in range(T):
                torch.baddbmm(proj_t[t], hs_t[t], w_t, out=scratch)
                _act_forward(scratch, act, b, sign, hs_t[t + 1])
        else:
            # Raw inputs: each step projects its own [K, B, I] slice into the scratch block (a
            # tiny matmul that stays in cache) and accumulates the recurrent product onto it.
            # Projecting all steps at once writes and rereads a [K, T, B, H] tensor, a bias
            # broadcast and a gemm with an inner size of I (packs step 3 to 9% faster at the adding
            # shape, 27 to 29% at sMNIST's: benchmarks/packed_projection.py).
            w_in_t = w_in.mT.contiguous()
            bias_b = bias.unsqueeze(1) if bias is not None else None
            for t in range(T):
                if bias_b is None:
                    torch.bmm(proj_t[t], w_in_t, out=scratch)
                else:
                    torch.baddbmm(bias_b, proj_t[t], w_in_t, out=scratch)
                scratch.baddbmm_(hs_t[t], w_t)
                _act_forward(scratch, act, b, sign, hs_t[t + 1])
        # Saved and returned as views: a view holds the storage (the workspace counts its users by
        # storage), where the buffer tensor itself, saved or returned, would not count.
        ctx.save_for_backward(buf.view(buf.shape), w_hh, proj if w_in is not None else None, w_in)
        ctx.has_bias = bias is not None
        ctx.act, ctx.workspace = act, workspace
        ctx.set_materialize_grads(False)
        hs = buf[:, 1:]
        return hs.transpose(0, 1), hs[:, -1].clone()

    @staticmethod
    def backward(ctx: Any, grad_hs: Tensor | None, grad_last: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        buf, w_hh, x, w_in = ctx.saved_tensors
        K, T1, B, H = buf.shape
        T = T1 - 1
        da = _buffer(ctx.workspace, "da", buf, K, T, B, H)
        g_t = grad_hs.unbind(0) if grad_hs is not None else None  # each [K, B, H]
        hs_t, da_t = buf.unbind(1), da.unbind(1)
        dh = grad_last if grad_last is not None else buf.new_zeros(K, B, H)
        scratch = buf.new_empty(K, B, H)
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                # dh_t = da_{t+1} W_hh (+ the readout's gradient at step t)
                if g_t is not None:
                    dh = torch.baddbmm(g_t[t], da_t[t + 1], w_hh, out=scratch)
                else:
                    dh = torch.bmm(da_t[t + 1], w_hh, out=scratch)
            elif g_t is not None:
                dh = dh + g_t[t]
            _act_backward(dh, hs_t[t + 1], ctx.act, da_t[t])
        flat_da = da.view(K, T * B, H)
        d_proj = d_w_in = d_bias = None
        if w_in is None:
            d_proj = da.view(da.shape) if ctx.needs_input_grad[0] else None
        else:
            flat_x = x.reshape(K, T * B, -1)
            if ctx.needs_input_grad[0]:
                d_proj = torch.bmm(flat_da, w_in).view(x.shape)
            if ctx.needs_input_grad[6]:
                d_w_in = torch.bmm(flat_x.mT, flat_da).mT  # x̃ᵀ·da, then transposed: 5x faster than daᵀ·x
            if ctx.has_bias and ctx.needs_input_grad[7]:
                d_bias = flat_da.sum(dim=1)
        d_h0 = torch.bmm(da[:, 0], w_hh) if ctx.needs_input_grad[1] else None
        d_w = None
        if ctx.needs_input_grad[2]:
            h_prev = buf[:, :T].reshape(K, T * B, H)  # a view: slot t holds h_{t-1}
            d_w = torch.bmm(flat_da.mT, h_prev)
        d_b = None
        if ctx.needs_input_grad[3]:
            # modReLU's bias: ∂h/∂b = sign(a) where active, = sign(h) (0 where inactive)
            d_b = torch.sign(buf[:, 1:]).mul_(da).sum(dim=(1, 2))
        return d_proj, d_h0, d_w, d_b, None, None, d_w_in, d_bias


def elman_scan(
    proj: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    act: Activation,
    workspace: Workspace | None = None,
    *,
    act_b: Tensor | None = None,
    w_in: Tensor | None = None,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``ElmanScan.apply``: all hidden states [T, K, B, H] and the last one [K, B, H].

    ``act``: ``relu``, ``tanh`` or ``modrelu`` (then ``act_b`` [K, H] is its bias).
    ``workspace``: a dict the caller keeps across calls, to reuse the big buffers (the saved
    hidden states and the backward's ``da``) instead of allocating them every step.
    ``w_in`` [K, H, I] (and ``bias`` [K, H], optional): then ``proj`` is the raw input
    [K, T, B, I], projected step by step inside the loop (``project_in_loop`` says when that pays).
    """
    hs, last = ElmanScan.apply(proj, h0, w_hh, act_b, act, workspace, w_in, bias)
    return hs, last


def project_in_loop(input_size: int, hidden_size: int) -> bool:
    """Whether to project the inputs step by step inside the scan (small inputs: the adding
    task's 2, sMNIST's 1) rather than all at once before it (wide one-hot inputs).

    Per step it costs one small matmul (8 to 13 µs at K=16, B=16, H=100 for I up to 10 on the
    AMD EPYC of ``benchmarks/README.md``); at once it costs a pass that writes and rereads
    [K, T, B, H] floats (6 ms per pack step there, T=150), which the loop no longer needs."""
    return input_size * 4 <= hidden_size


class LSTMScan(torch.autograd.Function):
    """The packed LSTM (nn.LSTM's cell: gates input, forget, cell, output; ``c' = f·c + i·g``,
    ``h' = o·tanh(c')``) with the same fused backward: per step only ``dh_{t-1} = dG_t W_hh``,
    then ``dW_hh = Σ_t dG_tᵀ h_{t-1}`` in one ``bmm`` over ``[K, 4H, T·B] @ [K, T·B, H]``.

    Inputs: ``proj`` [K, T, B, 4H] (inputs projected, both biases added), ``h0``, ``c0``
    [K, B, H], ``w_hh`` [K, 4H, H]. Outputs: all hidden states [T, K, B, H], the last h and c.
    Saved: the gates after their nonlinearities and every c and h (``[K, T(+1), B, ·]``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, proj: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, workspace: Workspace | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        K, T, B, G = proj.shape
        H = G // 4
        hbuf = _buffer(workspace, "lstm h", proj, K, T + 1, B, H)
        cbuf = _buffer(workspace, "lstm c", proj, K, T + 1, B, H)
        gates = _buffer(workspace, "lstm gates", proj, K, T, B, G)
        hbuf[:, 0], cbuf[:, 0] = h0, c0
        w_t = w_hh.mT.contiguous()
        scratch = proj.new_empty(K, B, G)
        h_t, c_t, g_t, p_t = hbuf.unbind(1), cbuf.unbind(1), gates.unbind(1), proj.unbind(1)
        for t in range(T):
            torch.baddbmm(p_t[t], h_t[t], w_t, out=scratch)
            a = g_t[t]
            torch.sigmoid(scratch, out=a)
            torch.tanh(scratch[..., 2 * H : 3 * H], out=a[..., 2 * H : 3 * H])
            i, f, g, o = a.chunk(4, dim=-1)
            c = c_t[t + 1]
            torch.mul(f, c_t[t], out=c)
            c.addcmul_(i, g)
            torch.tanh(c, out=h_t[t + 1])
            h_t[t + 1].mul_(o)
        ctx.save_for_backward(hbuf.view(hbuf.shape), cbuf.view(cbuf.shape), gates.view(gates.shape), w_hh)
        ctx.workspace = workspace
        ctx.set_materialize_grads(False)
        hs = hbuf[:, 1:]
        return hs.transpose(0, 1), hs[:, -1].clone(), cbuf[:, -1].clone()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_hs: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        hbuf, cbuf, gates, w_hh = ctx.saved_tensors
        K, T, B, G = gates.shape
        H = G // 4
        dgates = _buffer(ctx.workspace, "lstm dgates", gates, K, T, B, G)
        g_hs = grad_hs.unbind(0) if grad_hs is not None else None
        c_t, a_t, d_t = cbuf.unbind(1), gates.unbind(1), dgates.unbind(1)
        dh = grad_h if grad_h is not None else hbuf.new_zeros(K, B, H)
        dc = grad_c.clone() if grad_c is not None else hbuf.new_zeros(K, B, H)
        scratch = hbuf.new_empty(K, B, H)
        sigmoid_bwd, tanh_bwd = torch.ops.aten.sigmoid_backward, torch.ops.aten.tanh_backward
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                if g_hs is not None:
                    dh = torch.baddbmm(g_hs[t], d_t[t + 1], w_hh, out=scratch)
                else:
                    dh = torch.bmm(d_t[t + 1], w_hh, out=scratch)
            elif g_hs is not None:
                dh = dh + g_hs[t]
            i, f, g, o = a_t[t].chunk(4, dim=-1)
            di, df, dg, do = d_t[t].chunk(4, dim=-1)
            tc = torch.tanh(c_t[t + 1])
            sigmoid_bwd.grad_input(dh * tc, o, grad_input=do)
            dc.add_(tanh_bwd(dh * o, tc))
            sigmoid_bwd.grad_input(dc * g, i, grad_input=di)
            tanh_bwd.grad_input(dc * i, g, grad_input=dg)
            sigmoid_bwd.grad_input(dc * c_t[t], f, grad_input=df)
            dc.mul_(f)
        d_proj = dgates.view(dgates.shape) if ctx.needs_input_grad[0] else None
        d_h0 = torch.bmm(d_t[0], w_hh) if ctx.needs_input_grad[1] else None
        d_c0 = dc if ctx.needs_input_grad[2] else None
        d_w = None
        if ctx.needs_input_grad[3]:
            d_w = torch.bmm(dgates.view(K, T * B, G).mT, hbuf[:, :T].reshape(K, T * B, H))
        return d_proj, d_h0, d_c0, d_w, None


def lstm_scan(
    proj: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, workspace: Workspace | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``LSTMScan.apply``: all hidden states [T, K, B, H], the last h and the last c [K, B, H]."""
    hs, h, c = LSTMScan.apply(proj, h0, c0, w_hh, workspace)
    return hs, h, c


__all__ = ["ElmanScan", "LSTMScan", "Workspace", "elman_scan", "lstm_scan", "project_in_loop"]
