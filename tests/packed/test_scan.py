"""The hand-written backwards of the packed Elman and LSTM loops: gradcheck in float64, agreement with
autograd's step-by-step backward, and buffer reuse that never overwrites live results."""

from __future__ import annotations

import pytest
import torch

from irnn_search.models.modrelu import modrelu
from irnn_search.packed.families import _loop
from irnn_search.packed.scan import Workspace, elman_scan, lstm_scan, project_in_loop


def _inputs(act: str, dtype: torch.dtype = torch.float64, K: int = 3, T: int = 5, B: int = 2, H: int = 4):
    g = torch.Generator().manual_seed(ACTS.index(act) + 1)
    proj = torch.randn(K, T, B, H, dtype=dtype, generator=g)
    h0 = torch.randn(K, B, H, dtype=dtype, generator=g)
    w = torch.randn(K, H, H, dtype=dtype, generator=g) / H**0.5
    # modReLU's bias: some units shut (|a| < -b), as in training; None for relu and tanh
    b = (torch.rand(K, H, dtype=dtype, generator=g) - 0.7) if act == "modrelu" else None
    return [t.requires_grad_() if t is not None else None for t in (proj, h0, w, b)]


ACTS = ["relu", "tanh", "modrelu"]


def _reference_act(act: str, b: torch.Tensor | None):
    if act == "modrelu":
        assert b is not None
        return lambda z: modrelu(z, b.unsqueeze(1))
    return torch.relu if act == "relu" else torch.tanh


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("output", ["both", "all", "last"])
@pytest.mark.parametrize("workspace", [None, {}])
def test_gradcheck_float64(act: str, output: str, workspace: Workspace | None) -> None:
    proj, h0, w, b = _inputs(act)

    def f(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hs, last = elman_scan(xs[0], xs[1], xs[2], act, workspace, act_b=xs[3] if len(xs) > 3 else None)  # type: ignore[arg-type]
        return {"both": (hs, last), "all": (hs,), "last": (last,)}[output]

    assert torch.autograd.gradcheck(f, tuple(t for t in (proj, h0, w, b) if t is not None))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_equal_autograd_of_the_step_by_step_loop(act: str, dtype: torch.dtype) -> None:
    proj, h0, w, b = _inputs(act, dtype, K=4, T=30, B=6, H=20)
    leaves = [t for t in (proj, h0, w, b) if t is not None]
    weights = torch.randn(30, 4, 6, 20, dtype=dtype)  # a readout of every step, and one of the last state
    hs, last = elman_scan(proj, h0, w, act, {}, act_b=b)  # type: ignore[arg-type]
    ((hs * weights).sum() + last.square().sum()).backward()
    ours = [t.grad.clone() for t in leaves]  # type: ignore[union-attr]
    for t in leaves:
        t.grad = None

    ref_hs, ref_last = _loop(proj.transpose(0, 1), h0, w, _reference_act(act, b))
    ((ref_hs * weights).sum() + ref_last.square().sum()).backward()
    # Same maths, other summation order: float32 agrees to rounding, float64 to ~1e-12.
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(hs, ref_hs, **tol)
    torch.testing.assert_close(last, ref_last, **tol)
    for mine, leaf in zip(ours, leaves, strict=True):
        theirs = leaf.grad
        assert theirs is not None
        scale = float(theirs.abs().max())
        torch.testing.assert_close(mine, theirs, rtol=tol["rtol"], atol=tol["rtol"] * scale)
    if b is not None:
        assert (ref_hs == 0).any() and (ref_hs != 0).any(), "modReLU both shut and open somewhere"


def _raw_inputs(
    act: str, dtype: torch.dtype, with_bias: bool, K: int = 3, T: int = 5, B: int = 2, H: int = 4, I: int = 2
):
    """Raw inputs [K, T, B, I] with the input weights [K, H, I] and bias [K, H] (or None)."""
    g = torch.Generator().manual_seed(ACTS.index(act) + 11)
    x = torch.randn(K, T, B, I, dtype=dtype, generator=g)
    w_in = torch.randn(K, H, I, dtype=dtype, generator=g)
    bias = torch.randn(K, H, dtype=dtype, generator=g) if with_bias else None
    return [t.requires_grad_() if t is not None else None for t in (x, w_in, bias)]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64_with_the_inputs_projected_in_the_loop(act: str, with_bias: bool) -> None:
    _, h0, w, b = _inputs(act)
    x, w_in, bias = _raw_inputs(act, torch.float64, with_bias)
    leaves = tuple(t for t in (x, h0, w, b, w_in, bias) if t is not None)

    def f(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(["x", "h0", "w", *(["b"] if b is not None else []), "w_in", "bias"], xs, strict=False))
        return elman_scan(
            named["x"],
            named["h0"],
            named["w"],
            act,
            {},
            act_b=named.get("b"),
            w_in=named["w_in"],
            bias=named.get("bias"),
        )  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projecting_in_the_loop_equals_projecting_before_it(act: str, dtype: torch.dtype) -> None:
    _, h0, w, b = _inputs(act, dtype, K=4, T=30, B=6, H=20)
    x, w_in, bias = _raw_inputs(act, dtype, True, K=4, T=30, B=6, H=20, I=3)
    leaves = [t for t in (x, h0, w, b, w_in, bias) if t is not None]
    weights = torch.randn(30, 4, 6, 20, dtype=dtype)

    def grads(hs: torch.Tensor, last: torch.Tensor) -> list[torch.Tensor]:
        ((hs * weights).sum() + last.square().sum()).backward()
        out = [t.grad.clone() for t in leaves]  # type: ignore[union-attr]
        for t in leaves:
            t.grad = None
        return out

    hs, last = elman_scan(x, h0, w, act, {}, act_b=b, w_in=w_in, bias=bias)  # type: ignore[arg-type]
    ours = grads(hs, last)
    proj = torch.einsum("ktbi,khi->ktbh", x, w_in) + bias[:, None, None, :]
    ref_hs, ref_last = elman_scan(proj, h0, w, act, {}, act_b=b)  # type: ignore[arg-type]
    theirs = grads(ref_hs, ref_last)
    # The two round the projection differently. float32 modReLU carries a last-bit difference
    # through units near shutting (|a| ≈ -b) over 30 steps of an untrained recurrence, to ~3e-4
    # relative; the members-equal-train() tests hold the trained families to 1e-5.
    rtol = 1e-5 if act != "modrelu" else 1e-3
    tol = {"rtol": rtol, "atol": rtol / 10} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(hs, ref_hs, **tol)
    torch.testing.assert_close(last, ref_last, **tol)
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, rtol=tol["rtol"], atol=tol["rtol"] * float(ref.abs().max()))


def test_a_bias_without_input_weights_is_refused() -> None:
    proj, h0, w, _ = _inputs("relu")
    with pytest.raises(ValueError, match="bias goes with w_in"):
        elman_scan(proj, h0, w, "relu", bias=torch.zeros(3, 4, dtype=torch.float64))


def test_small_inputs_are_projected_in_the_loop_and_wide_ones_before_it() -> None:
    assert project_in_loop(1, 128) and project_in_loop(2, 100) and project_in_loop(3, 12)
    assert not project_in_loop(50, 128) and not project_in_loop(4, 12)


def test_modrelu_needs_its_bias_and_only_modrelu_takes_one() -> None:
    proj, h0, w, b = _inputs("modrelu")
    with pytest.raises(ValueError, match="modReLU's bias"):
        elman_scan(proj, h0, w, "modrelu")
    with pytest.raises(ValueError, match="modReLU's bias"):
        elman_scan(proj, h0, w, "tanh", act_b=b)


def test_the_workspace_is_reused_only_when_nothing_holds_its_buffers() -> None:
    proj, h0, w = (t.detach() for t in _inputs("relu", torch.float32)[:3])  # no graph: outputs alone hold buffers
    ws: Workspace = {}
    kept, _ = elman_scan(proj, h0, w, "relu", ws)  # an output still held: its buffer stays its own
    snapshot = kept.detach().clone()
    other, _ = elman_scan(2 * proj, h0, w, "relu", ws)
    torch.testing.assert_close(kept, snapshot, rtol=0, atol=0)
    assert other.data_ptr() != kept.data_ptr()

    del kept, other
    first, _ = elman_scan(proj, h0, w, "relu", ws)
    ptr = first.data_ptr()
    del first  # released: the next call takes the same buffer
    again, _ = elman_scan(proj, h0, w, "relu", ws)
    assert again.data_ptr() == ptr
    torch.testing.assert_close(again, snapshot, rtol=0, atol=0)


def test_a_graph_kept_alive_keeps_its_saved_states_through_later_calls() -> None:
    proj, h0, w, _ = _inputs("tanh", torch.float64)
    ws: Workspace = {}
    hs, last = elman_scan(proj, h0, w, "tanh", ws)
    loss = last.sum()
    del hs, last  # only the graph holds the saved states now
    elman_scan(3 * proj, h0, w, "tanh", ws)  # would overwrite them if reuse ignored the graph
    (grad_w,) = torch.autograd.grad(loss, [w])
    _, ref_last = elman_scan(proj, h0, w, "tanh", None)
    (ref_w,) = torch.autograd.grad(ref_last.sum(), [w])
    torch.testing.assert_close(grad_w, ref_w, rtol=0, atol=0)


@pytest.mark.parametrize("output", ["all", "last h", "last c"])
def test_lstm_gradcheck_float64(output: str) -> None:
    g = torch.Generator().manual_seed(3)
    K, T, B, H = 2, 4, 2, 3
    shapes = [(K, T, B, 4 * H), (K, B, H), (K, B, H), (K, 4 * H, H)]
    inputs = tuple((0.5 * torch.randn(s, dtype=torch.float64, generator=g)).requires_grad_() for s in shapes)

    def f(proj: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        hs, h, c = lstm_scan(proj, h0, c0, w, {})
        return {"all": hs, "last h": h, "last c": c}[output]

    assert torch.autograd.gradcheck(f, inputs)
