"""Optimizers vectorised over the trial axis K, with every member's own hyperparameters.

Each member keeps the ``torch.optim`` optimizer that ``irnn_search.train.build_optimizer`` made
for it; that optimizer is the interchange format. ``PackedOptimizer`` reads its param groups
(``lr``, ``lr_orth`` on constrained groups, momentum, betas, alpha, eps) and state when the
pack is built, updates stacked [K, ...] tensors during training, and writes the state back
(``export``) in exactly the layout ``torch.optim`` uses, so checkpoints are ``train()``'s.

Members with different optimizers share a pack: the pack groups its members by optimizer kind and
runs one vectorised update per kind present over that kind's member indices (gather, update,
scatter). The forward and backward passes, where the time goes, stay one computation for all K;
the update is O(parameters) once per step, so splitting it by kind costs little, and bucketing
whole packs by optimizer would cut K by up to 3 on studies that search over the optimizer.

The update rules repeat ``torch.optim``'s single-tensor (CPU default) code element for element:
SGD with momentum (first step: the buffer is the gradient), Adam (``lerp`` first moment, bias
corrections from the member's own step count, ``eps`` added after dividing by
``sqrt(bias_correction2)``) and RMSprop (not centered, no momentum, as ``build_optimizer`` builds
it), each with torch's coupled L2 ``weight_decay`` per parameter group (nnRNN's ``T``). Anything
else (Nesterov, AMSGrad, dampening, ...) is refused with ``PackError``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

Tensor = torch.Tensor
KINDS = ("sgd", "adam", "rmsprop")


class PackError(ValueError):
    """A member cannot be trained in a pack (the caller trains it alone instead)."""


def optimizer_kind(opt: torch.optim.Optimizer) -> str:
    """``sgd`` | ``adam`` | ``rmsprop``; PackError for other optimizers or options."""
    if type(opt) is torch.optim.SGD:
        kind, defaults = "sgd", {"dampening": 0, "nesterov": False, "maximize": False}
    elif type(opt) is torch.optim.Adam:
        kind, defaults = "adam", {"amsgrad": False, "maximize": False}
    elif type(opt) is torch.optim.RMSprop:
        kind, defaults = "rmsprop", {"centered": False, "momentum": 0, "maximize": False}
    else:
        raise PackError(f"packs support SGD, Adam and RMSprop, not {type(opt).__name__}")
    for group in opt.param_groups:
        for key, value in defaults.items():
            if group.get(key, value) != value:
                raise PackError(f"packs do not support {kind} with {key}={group[key]!r} (group {group.get('name')})")
    return kind


def _column(values: list[float], like: Tensor) -> Tensor:
    """Per-member scalars as a [K, 1, ...] float tensor broadcasting against ``like`` [K, ...]."""
    return _cached_column(tuple(values), like.dim(), like.dtype, like.device)


@functools.lru_cache(maxsize=4096)
def _cached_column(values: tuple[float, ...], dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Hyperparameters repeat every step (only Adam's bias corrections change, and those settle):
    # building them once saves a host-to-device copy per parameter and step.
    return torch.tensor(values, dtype=dtype, device=device).view(-1, *([1] * (dim - 1)))


@dataclass
class _KindGroup:
    """The members (pack indices) that use one optimizer kind, with their hyperparameters and state."""

    kind: str
    members: list[int]
    index: Tensor
    hyper: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # param -> name -> per member
    state: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # param -> name -> [Kk, ...]
    steps: dict[str, list[float]] = field(default_factory=dict)  # param -> optimizer steps per member


class PackedOptimizer:
    """Vectorised SGD / Adam / RMSprop over stacked parameters.

    Args:
        params: packed name -> leaf tensor [K, ...] (the pack's parameters).
        members: per pack index, the member's torch optimizer and its parameters by packed name.
    """

    def __init__(
        self,
        params: Mapping[str, Tensor],
        members: list[tuple[torch.optim.Optimizer, Mapping[str, nn.Parameter]]],
    ) -> None:
        self.params = dict(params)
        self.members = members
        self.position: list[tuple[_KindGroup, int]] = []
        self.groups: dict[str, _KindGroup] = {}
        kinds = [optimizer_kind(opt) for opt, _ in members]
        device = next(iter(self.params.values())).device
        for kind in KINDS:
            idx = [k for k, kk in enumerate(kinds) if kk == kind]
            if idx:
                self.groups[kind] = _KindGroup(kind, idx, torch.tensor(idx, dtype=torch.long, device=device))
        self.position = [(self.groups[kinds[k]], kinds[: k + 1].count(kinds[k]) - 1) for k in range(len(members))]
        for group in self.groups.values():
            self._load(group)

    # -- import the members' torch optimizers ------------------------------------------------------
    def _load(self, group: _KindGroup) -> None:
        for name, packed in self.params.items():
            hyper: dict[str, list[float]] = {}
            buffers: dict[str, list[Tensor]] = {}
            steps: list[float] = []
            for k in group.members:
                opt, named = self.members[k]
                p = named[name]
                pg = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
                for key, value in _hyper(group.kind, pg).items():
                    hyper.setdefault(key, []).append(value)
                st = opt.state.get(p, {})
                # SGD keeps no step count: a momentum buffer means "stepped before" (1 will do).
                steps.append(float(st["step"]) if "step" in st else float(bool(st)))
                for key in _buffers(group.kind):
                    buf = st.get(key)
                    buffers.setdefault(key, []).append(
                        torch.zeros_like(p, device=packed.device) if buf is None else buf.detach().to(packed.device)
                    )
            group.hyper[name] = hyper
            group.state[name] = {key: torch.stack(bufs) for key, bufs in buffers.items()}
            group.steps[name] = steps

    # -- the update ------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, skip: Iterable[int] = ()) -> None:
        """Update every member not in ``skip`` (pack indices) from its ``.grad`` slice.

        Skipped members (diverged this step) keep their parameters and optimizer state untouched,
        exactly as ``train`` never applies a bad update.
        """
        skipped = set(skip)
        for group in self.groups.values():
            sel = [j for j, k in enumerate(group.members) if k not in skipped]
            if not sel:
                continue
            rows = torch.tensor(sel, dtype=torch.long, device=group.index.device)
            index = group.index[rows]
            for name, p in self.params.items():
                if p.grad is None:
                    continue
                w = p.detach().index_select(0, index)
                g = p.grad.index_select(0, index)
                st = {key: buf.index_select(0, rows) for key, buf in group.state[name].items()}
                hp = {key: [values[j] for j in sel] for key, values in group.hyper[name].items()}
                steps = group.steps[name]
                for j in sel:
                    steps[j] += 1.0
                _update(group.kind, w, g, st, hp, [steps[j] for j in sel])
                p.detach().index_copy_(0, index, w)
                for key, buf in st.items():
                    group.state[name][key].index_copy_(0, rows, buf)

    # -- export one member's state back into its torch optimizer --------------------------------------
    @torch.no_grad()
    def export(self, k: int) -> None:
        """Write member ``k``'s state into its own torch optimizer, in ``torch.optim``'s layout."""
        group, j = self.position[k]
        opt, named = self.members[k]
        for name in self.params:
            p = named[name]
            step = group.steps[name][j]
            if step == 0:
                opt.state.pop(p, None)  # torch.optim has no state for a parameter never stepped
                continue
            bufs = {key: buf[j].detach().to(p.device).clone() for key, buf in group.state[name].items()}
            if group.kind == "sgd":
                if group.hyper[name]["momentum"][j] != 0:
                    opt.state[p] = {"momentum_buffer": bufs["momentum_buffer"]}
                else:
                    opt.state.pop(p, None)  # SGD without momentum keeps no state
            else:
                opt.state[p] = {"step": torch.tensor(step, dtype=_scalar_dtype()), **bufs}


def _scalar_dtype() -> torch.dtype:
    # torch.optim stores "step" as float32 (float64 when that is the default dtype).
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _hyper(kind: str, group: Mapping[str, object]) -> dict[str, float]:
    def f(key: str) -> float:
        value = group[key]
        assert isinstance(value, int | float | Tensor), key
        return float(value)

    decay = {"weight_decay": f("weight_decay") if "weight_decay" in group else 0.0}
    if kind == "sgd":
        return {"lr": f("lr"), "momentum": f("momentum"), **decay}
    if kind == "adam":
        betas = group["betas"]
        assert isinstance(betas, tuple | list)
        return {"lr": f("lr"), "beta1": float(betas[0]), "beta2": float(betas[1]), "eps": f("eps"), **decay}
    return {"lr": f("lr"), "alpha": f("alpha"), "eps": f("eps"), **decay}


def _buffers(kind: str) -> tuple[str, ...]:
    return {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq"), "rmsprop": ("square_avg",)}[kind]


def _update(
    kind: str, w: Tensor, g: Tensor, st: dict[str, Tensor], hp: dict[str, list[float]], steps: list[float]
) -> None:
    """One in-place update of gathered rows ``w`` [Kk, ...], mirroring torch.optim element-wise."""
    decay = hp["weight_decay"]
    if any(decay):
        # torch.optim's (coupled) L2 weight decay, grad + weight_decay · param before the update
        # rule (nnRNN's T group), with torch's own op per distinct value, so the rounding is its.
        # ``g`` is the step's gathered copy of the gradient rows, so it is updated in place.
        for value in sorted(set(decay) - {0.0}):
            rows = torch.tensor([j for j, d in enumerate(decay) if d == value], device=g.device)
            g.index_copy_(0, rows, g.index_select(0, rows).add(w.index_select(0, rows), alpha=value))
    if kind == "sgd":
        buf = st["momentum_buffer"]
        # A fresh buffer is zeros: 0·m + g == g exactly, torch's "first step: buf = grad".
        # Members with momentum 0 get buf = g as well (torch keeps no buffer for them).
        buf.mul_(_column(hp["momentum"], w)).add_(g)
        # add_(buf, alpha=-lr) fuses the multiply-add; addcmul with a tensor factor rounds the same.
        w.addcmul_(buf, _column([-lr for lr in hp["lr"]], w).expand_as(w))
        return
    if kind == "adam":
        exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
        beta1, beta2 = hp["beta1"], hp["beta2"]
        exp_avg.lerp_(g, _column([1 - b for b in beta1], w))
        # torch: addcmul_(g, g, value=c) == s + (c·g)·g; the same products in the same order.
        exp_avg_sq.mul_(_column(beta2, w)).addcmul_(g * _column([1 - b for b in beta2], w), g)
        # Bias corrections in Python floats (double), as torch computes them, then cast.
        step_size = [lr / (1 - b1**s) for lr, b1, s in zip(hp["lr"], beta1, steps, strict=True)]
        bc2_sqrt = [(1 - b2**s) ** 0.5 for b2, s in zip(beta2, steps, strict=True)]
        denom = (exp_avg_sq.sqrt() / _column(bc2_sqrt, w)).add_(_column(hp["eps"], w))
        w.addcdiv_(exp_avg * _column([-s for s in step_size], w), denom)
        return
    square_avg = st["square_avg"]
    alpha = hp["alpha"]
    square_avg.mul_(_column(alpha, w)).addcmul_(g * _column([1 - a for a in alpha], w), g)
    avg = square_avg.sqrt().add_(_column(hp["eps"], w))
    w.addcdiv_(g * _column([-lr for lr in hp["lr"]], w), avg)
