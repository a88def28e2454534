"""The hand-written backwards of the packed Elman and LSTM loops: gradcheck in float64, agreement with
autograd's step-by-step backward, and buffer reuse that never overwrites live results."""

from __future__ import annotations

import pytest
import torch

from irnn_search.packed.families import _loop
from irnn_search.packed.scan import Workspace, elman_scan, lstm_scan


def _inputs(relu: bool, dtype: torch.dtype = torch.float64, K: int = 3, T: int = 5, B: int = 2, H: int = 4):
    g = torch.Generator().manual_seed(1 if relu else 2)
    proj = torch.randn(K, T, B, H, dtype=dtype, generator=g)
    h0 = torch.randn(K, B, H, dtype=dtype, generator=g)
    w = torch.randn(K, H, H, dtype=dtype, generator=g) / H**0.5
    return [t.requires_grad_() for t in (proj, h0, w)]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("output", ["both", "all", "last"])
@pytest.mark.parametrize("workspace", [None, {}])
def test_gradcheck_float64(relu: bool, output: str, workspace: Workspace | None) -> None:
    def f(proj: torch.Tensor, h0: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hs, last = elman_scan(proj, h0, w, relu, workspace)
        return {"both": (hs, last), "all": (hs,), "last": (last,)}[output]

    assert torch.autograd.gradcheck(f, tuple(_inputs(relu)))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_equal_autograd_of_the_step_by_step_loop(relu: bool, dtype: torch.dtype) -> None:
    proj, h0, w = _inputs(relu, dtype, K=4, T=30, B=6, H=20)
    weights = torch.randn(30, 4, 6, 20, dtype=dtype)  # a readout of every step, and one of the last state
    hs, last = elman_scan(proj, h0, w, relu, {})
    ((hs * weights).sum() + last.square().sum()).backward()
    ours = [t.grad.clone() for t in (proj, h0, w)]  # type: ignore[union-attr]
    for t in (proj, h0, w):
        t.grad = None

    ref_hs, ref_last = _loop(proj.transpose(0, 1), h0, w, torch.relu if relu else torch.tanh)
    ((ref_hs * weights).sum() + ref_last.square().sum()).backward()
    # Same maths, other summation order: float32 agrees to rounding, float64 to ~1e-12.
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(hs, ref_hs, **tol)
    torch.testing.assert_close(last, ref_last, **tol)
    for mine, theirs in zip(ours, (proj.grad, h0.grad, w.grad), strict=True):
        assert theirs is not None
        scale = float(theirs.abs().max())
        torch.testing.assert_close(mine, theirs, rtol=tol["rtol"], atol=tol["rtol"] * scale)


def test_the_workspace_is_reused_only_when_nothing_holds_its_buffers() -> None:
    proj, h0, w = (t.detach() for t in _inputs(True, torch.float32))  # no graph: outputs alone hold buffers
    ws: Workspace = {}
    kept, _ = elman_scan(proj, h0, w, True, ws)  # an output still held: its buffer stays its own
    snapshot = kept.detach().clone()
    other, _ = elman_scan(2 * proj, h0, w, True, ws)
    torch.testing.assert_close(kept, snapshot, rtol=0, atol=0)
    assert other.data_ptr() != kept.data_ptr()

    del kept, other
    first, _ = elman_scan(proj, h0, w, True, ws)
    ptr = first.data_ptr()
    del first  # released: the next call takes the same buffer
    again, _ = elman_scan(proj, h0, w, True, ws)
    assert again.data_ptr() == ptr
    torch.testing.assert_close(again, snapshot, rtol=0, atol=0)


def test_a_graph_kept_alive_keeps_its_saved_states_through_later_calls() -> None:
    proj, h0, w = _inputs(False, torch.float64)
    ws: Workspace = {}
    hs, last = elman_scan(proj, h0, w, False, ws)
    loss = last.sum()
    del hs, last  # only the graph holds the saved states now
    elman_scan(3 * proj, h0, w, False, ws)  # would overwrite them if reuse ignored the graph
    (grad_w,) = torch.autograd.grad(loss, [w])
    _, ref_last = elman_scan(proj, h0, w, False, None)
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
