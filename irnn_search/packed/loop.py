"""The packed training loop: K members trained as one computation, each as ``train()`` would.

``PackedTrainer`` holds the members in packs (one pack per compatible group: same family,
variant and parameter shapes; different hidden sizes go to different packs, see ``pack_key``)
and steps every pack once per ``step()``. For each member it repeats ``irnn_search.train.train``
phase by phase: the same batches (``task.train_batch(member_step)``, stacked per member, so
members at different steps after a refill each get their own), the same loss, gradient norm
(before clipping) and per-member clipping, the same divergence checks and reasons (the bad update
is never applied), evaluation every ``eval_every`` steps with the same metrics dict, the report
hook, ``last.pt`` / ``best.pt`` in ``train()``'s format and identity, and the stop event.

Differences from ``train()``, by design:

- **Time.** A pack step's wall time is shared equally among the members in that pack:
  ``train_time_s`` is each member's share of the device, so summed over members it is the device
  time actually used (what device-hour budgets count); ``steps_per_s`` is steps per share, the
  member's effective throughput.
- **Report hook exceptions** (e.g. ``optuna.TrialPruned``) do not propagate: the member leaves the
  pack, ``last.pt`` is already saved (as in ``train()``, the checkpoint precedes the hook), and the
  exception is returned in ``PackedResult.error`` for the caller to re-raise in that trial's
  context. The other members carry on.
- **Global RNG.** A resumed member does not restore the global torch/Python RNG state (one state
  is shared by the whole process); the packed families draw no random numbers while training.
  Checkpoints still carry the RNG state, as ``train()``'s do.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from irnn_search.checkpoint import TrainError, atomic_save, build_checkpoint, restore_checkpoint, run_identity
from irnn_search.models.base import RecurrentModel, State
from irnn_search.outcome import Outcome
from irnn_search.packed.model import (
    PackedModel,
    ordered_params,
    pack_key,
    state_abs_max_per_member,
    why_not_packable,
)
from irnn_search.packed.optim import PackedOptimizer, PackError, optimizer_kind
from irnn_search.tasks.base import Batch, Task

# train()'s own phases, so a member's steps, divergence checks and evaluations are train()'s by
# construction rather than by a copy that could drift.
from irnn_search.train import (
    ProgressHook,
    ReportHook,
    TrainConfig,
    TrainResult,
    _better,
    _to,
    divergence,
    new_interval,
    prepare,
    report_metrics,
)

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One trial to train in a pack: what ``train(model, task, config, ...)`` would be given.

    ``model`` must be built and initialised as for ``train()`` (``prepare_run``); ``name``
    labels log lines; ``tag`` is the caller's handle (an Optuna trial, a spec), never read here.
    """

    model: RecurrentModel
    task: Task
    config: TrainConfig
    report: ReportHook | None = None
    progress: ProgressHook | None = None
    checkpoint_dir: str | Path | None = None
    resume: bool = True
    name: str = ""
    tag: Any = None


@dataclass
class PackedResult:
    """How one member ended. ``error`` is an exception its report hook raised (or one that kept it
    from starting, e.g. a ``TrainError`` for a foreign checkpoint): re-raise it in the trial's own
    context. With ``error`` set, ``result.outcome`` is ``"stopped"`` and the reason names it."""

    member: Member
    result: TrainResult
    error: BaseException | None = None


class PackTooLarge(RuntimeError):
    """A pack step ran out of device memory before any update: retry it in smaller packs."""


def out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory errors: CUDA's ``OutOfMemoryError`` and the CPU allocator's
    ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


@dataclass
class _Run:
    """One member's bookkeeping: the local variables of ``train()``."""

    member: Member
    optimizer: torch.optim.Optimizer
    identity: dict[str, Any]
    ckpt_dir: Path | None
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    train_time: float = 0.0
    interval: dict[str, float] = field(default_factory=new_interval)
    resumed_from: int | None = None
    steps_at_start: int = 0
    session_time: float = 0.0

    @property
    def label(self) -> str:
        return self.member.name or f"{self.member.model.family} member"

    def save(self, name: str = "last.pt") -> None:
        """Write the member's checkpoint (``train()``'s format; no packed task carries a hidden state)."""
        if self.ckpt_dir is None:
            return
        ckpt = build_checkpoint(
            identity=self.identity,
            step=self.step,
            model=self.member.model,
            optimizer=self.optimizer,
            device=torch.device(self.member.config.device),
            state=None,
            history=self.history,
            best=self.best,
            train_time=self.train_time,
            interval=self.interval,
        )
        atomic_save(ckpt, self.ckpt_dir / name)

    def result(self, outcome: Outcome, reason: str, error: BaseException | None = None) -> PackedResult:
        done = self.step - self.steps_at_start
        return PackedResult(
            self.member,
            TrainResult(
                outcome=outcome,
                reason=reason,
                step=self.step,
                steps_per_s=done / self.session_time if self.session_time > 0 else 0.0,
                final=self.history[-1] if self.history else {},
                best=self.best,
                history=self.history,
                train_time_s=self.train_time,
                resumed_from=self.resumed_from,
            ),
            error,
        )


def _start(member: Member) -> _Run:
    """What ``train()`` does before its first step: device, optimizer, identity, resume."""
    config, model, task = member.config, member.model, member.task
    device, optimizer = prepare(model, config)
    optimizer_kind(optimizer)  # PackError now rather than mid-pack
    ckpt_dir = Path(member.checkpoint_dir) if member.checkpoint_dir is not None else None
    run = _Run(member, optimizer, run_identity(task, model, config), ckpt_dir)
    if ckpt_dir is not None and member.resume and (ckpt_dir / "last.pt").exists():
        # The global RNG states are not restored: one process trains the whole pack.
        resumed = restore_checkpoint(
            ckpt_dir / "last.pt", identity=run.identity, model=model, optimizer=optimizer, device=device, rng=False
        )
        run.step, run.history, run.best = resumed.step, resumed.history, resumed.best
        run.train_time, run.interval = resumed.train_time, resumed.interval
        run.resumed_from = run.step
        log.info("%s: resumed from %s at step %d", run.label, ckpt_dir / "last.pt", run.step)
    run.steps_at_start = run.step
    return run


def _empty_result(member: Member, reason: str, error: BaseException) -> PackedResult:
    empty = TrainResult(outcome=Outcome.STOPPED, reason=reason, step=0, steps_per_s=0.0, final={}, best={})
    return PackedResult(member, empty, error)


class _Pack:
    """Members sharing one ``PackedModel`` and one ``PackedOptimizer``.

    The members' own models and torch optimizers are the record: the pack copies them in when it
    is built and writes a member back (``sync``) before it is checkpointed or leaves. A pack whose
    membership changes is rebuilt from its members (a copy of the parameters: cheap next to a step).
    """

    def __init__(self, runs: list[_Run], fused_backward: bool = True, twin: bool = True) -> None:
        self.runs = runs
        first = runs[0].member
        self.device = torch.device(first.config.device)
        self.readout = first.task.readout
        slots = [(r.member.model, r.optimizer) for r in runs]
        # A lone member steps beside a twin (a copy of its model and optimizer, fed its batches and
        # never written back), so the pack never runs a batch of one: torch takes other kernels
        # for one (families.never_alone), and a member's digits would depend on whether it was
        # alone in its pack. From two on they depend on nothing but the member.
        self.twin = twin and len(runs) == 1
        if self.twin:
            slots.append(copy.deepcopy(slots[0]))
        self.width = len(slots)  # members + twin: the stacked tensors' leading size
        self.model = PackedModel([m for m, _ in slots], self.device, fused_backward)
        self.optim = PackedOptimizer(self.model.params, [(o, dict(ordered_params(m))) for m, o in slots])
        clip = [r.member.config.clip if r.member.config.clip else math.inf for r in runs]
        self.clip = torch.tensor(clip + clip[:1] * self.twin, dtype=torch.float32, device=self.device)

    def sync(self, k: int) -> None:
        """Write member ``k``'s parameters and optimizer state back into its own objects."""
        self.model.write_back(k, self.runs[k].member.model)
        self.optim.export(k)

    def _forward_backward(self) -> tuple[torch.Tensor, State]:
        """Every member's batch, loss and gradients; returns the losses [width] (members, then the
        twin) and the final state."""
        runs = self.runs
        batches = [_to(r.member.task.train_batch(r.step), self.device) for r in runs]
        fed = [*batches, *batches[:1] * self.twin]  # the twin takes its member's batch
        x = torch.stack([b.x for b in fed])
        out, new_state = self.model.forward(x, self.readout)
        tasks = [r.member.task for r in runs] + [runs[0].member.task] * self.twin
        losses = torch.stack([task.loss(out[k], fed[k]) for k, task in enumerate(tasks)])
        penalty = self.model.penalty()  # per member, added to its loss as train() adds it
        # Members share no parameters: each slice gets its own gradient.
        (losses.sum() if penalty is None else (losses + penalty).sum()).backward()
        return losses, new_state

    def train_step(self) -> dict[int, str]:
        """One optimizer step for every member; returns {index: reason} for members that diverged
        (their update was not applied)."""
        t0 = time.perf_counter()
        runs, K = self.runs, len(self.runs)  # the members; the tensors have self.width rows
        params = [self.model.params[n] for n in self.model.names]
        for p in params:
            p.grad = None
        message: str | None = None
        try:
            losses, new_state = self._forward_backward()
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            message = str(exc).splitlines()[0]
        if message is not None:
            # Raised outside the handler, so no traceback keeps the failed step's tensors alive;
            # nothing was updated yet, so every member can retry this step in a smaller pack.
            for p in params:
                p.grad = None
            raise PackTooLarge(message)

        # Per-member clip_grad_norm_: the norm of the per-parameter norms, in parameters() order.
        grads = [p.grad for p in params if p.grad is not None]
        with torch.no_grad():
            norms = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.reshape(self.width, -1), dim=1) for g in grads]), dim=0
            )
            coef = torch.clamp(self.clip / (norms + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
            hidden = state_abs_max_per_member(new_state)
            loss_v, norm_v, hidden_v = torch.stack([losses.detach(), norms, hidden]).tolist()

        bad: dict[int, str] = {}
        for k, r in enumerate(runs):
            why = divergence(r.member.config, loss_v[k], norm_v[k], hidden_v[k], r.step + 1)
            if why is not None:
                bad[k] = why
        skip = set(bad) | ({K} if self.twin and bad else set())  # the twin mirrors its member
        self.optim.step(skip=skip)
        self.model.after_step([k for k in range(self.width) if k not in skip])  # as train() calls model.after_step()
        for p in params:
            p.grad = None
        share = (time.perf_counter() - t0) / K  # a twin's compute is its member's

        for k, r in enumerate(runs):
            if k in bad:
                continue
            r.step += 1
            r.train_time += share
            r.session_time += share
            r.interval["loss"] += loss_v[k]
            r.interval["grad"] += norm_v[k]
            r.interval["n"] += 1
            r.interval["time"] += share
            if r.member.progress is not None:
                r.member.progress(r.step, loss_v[k])
        return bad

    @torch.no_grad()
    def evaluate(self, due: list[int]) -> dict[int, dict[str, float]]:
        """Validation metrics of the members ``due``, as ``irnn_search.train.evaluate`` computes
        them: members with the same task options run packed over their own (identical) batches. A
        lone member is evaluated beside a copy of itself, so its metrics do not depend on who else
        was due (``families.never_alone``)."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for k in due:
            task = self.runs[k].member.task
            groups.setdefault((type(task).__name__, repr(sorted(task.describe().items()))), []).append(k)
        metrics: dict[int, dict[str, float]] = {}
        for members in groups.values():
            width = 2 if len(members) == 1 else 1  # never a batch of one: see families.never_alone
            index = torch.tensor(members * width, dtype=torch.long, device=self.device)
            params = self.model.select(index)
            tasks = [self.runs[k].member.task for k in members]
            totals: list[dict[str, float]] = [{} for _ in members]
            for batches in zip(*(t.eval_batches("val") for t in tasks), strict=True):
                moved: list[Batch] = [_to(b, self.device) for b in batches]
                out, _ = self.model.forward(torch.stack([b.x for b in moved] * width), self.readout, params)
                for j, (task, b) in enumerate(zip(tasks, moved, strict=True)):
                    for key, value in task.stats(out[j], b).items():
                        totals[j][key] = totals[j].get(key, 0.0) + value
            for j, k in enumerate(members):
                metrics[k] = tasks[j].summarize(totals[j])
        return metrics


class PackedTrainer:
    """Packs of members stepped together; the incremental API a worker drives.

    ``add(member)`` puts a member into the pack its shape fits (opening a new pack if none does);
    ``step()`` runs one optimizer step of every pack and returns the members that left (completed,
    stopped, diverged, or whose report hook raised); ``interrupt()`` checkpoints every member and
    returns them all as ``"interrupted"``. ``train_packed`` is the loop around these.

    ``fused_backward`` (default True): every family runs the hand-written backward of its time
    loop (``irnn_search.packed.scan``: weight gradients in one matmul over all steps; members
    match ``train()`` to rounding); False keeps autograd's step-by-step backward (kept for
    comparison; bit for bit ``train()``'s on CPU where the batched ops sum as the model's do).
    """

    def __init__(self, fused_backward: bool = True) -> None:
        #: (pack key, part) -> pack: members of one key share a pack, split into parts only when
        #: a pack ran out of device memory (``limits``).
        self.packs: dict[tuple[Any, ...], _Pack] = {}
        #: pack key -> most members per pack, learnt from an out-of-memory step
        self.limits: dict[tuple[Any, ...], int] = {}
        self.fused_backward = fused_backward

    @property
    def active(self) -> int:
        return sum(len(p.runs) for p in self.packs.values())

    def add(self, member: Member) -> PackedResult | None:
        """Start ``member`` (resuming its checkpoint as ``train()`` would) and put it in a pack.

        Returns None when it joined, or a ``PackedResult`` with ``error`` when it could not start
        (a checkpoint of another run: ``TrainError``). Raises ``PackError`` when the member cannot
        be packed at all (see ``why_not_packable``): train it alone.
        """
        why = why_not_packable(member.model, member.task)
        if why is not None:
            raise PackError(why)
        try:
            run = _start(member)
        except TrainError as exc:
            log.warning("%s could not start: %s", member.name or member.model.family, exc)
            return _empty_result(member, f"could not start: {exc}", exc)
        if run.step >= member.config.steps:  # resumed at or past its budget: nothing to train
            return run.result(Outcome.COMPLETED, f"completed {run.step} steps")
        key = pack_key(member.model, member.task, member.config.device)
        limit = self.limits.get(key, math.inf)
        parts = [part for k, part in self.packs if k == key]
        part = next((p for p in parts if len(self.packs[key, p].runs) < limit), None)
        if part is None:
            self.packs[key, self._free_part(key)] = _Pack([run], self.fused_backward)
        else:
            self.packs[key, part] = _Pack([*self._release(self.packs[key, part]), run], self.fused_backward)
        return None

    def _split(self, where: tuple[Any, ...], pack: _Pack, why: str) -> PackedResult | None:
        """``pack`` ran out of device memory: go on as two packs of half its size (and never fill
        one of its key past that again). A member alone that does not fit leaves with the error."""
        key, _ = where
        del self.packs[where]
        pack.model.workspace.clear()
        if pack.device.type == "cuda":
            torch.cuda.empty_cache()
        runs = self._release(pack)
        if pack.twin:
            log.warning(
                "%s and its twin ran out of %s memory (%s); it goes on alone, where torch's kernels for "
                "a batch of one may round otherwise than in a pack",
                runs[0].label,
                pack.device,
                why,
            )
            self.packs[where] = _Pack(runs, self.fused_backward, twin=False)
            return None
        if len(runs) == 1:
            (run,) = runs
            log.warning("%s does not fit in %s memory even alone: %s", run.label, pack.device, why)
            error = torch.OutOfMemoryError(f"the trial does not fit in {pack.device} memory, even alone: {why}")
            return run.result(Outcome.STOPPED, f"out of {pack.device} memory at step {run.step}", error)
        half = (len(runs) + 1) // 2
        self.limits[key] = min(self.limits.get(key, half), half)
        log.warning(
            "a pack of %d %s trials ran out of %s memory (%s); it goes on as packs of at most %d",
            len(runs),
            runs[0].member.model.family,
            pack.device,
            why,
            self.limits[key],
        )
        for i in range(0, len(runs), self.limits[key]):
            self.packs[key, self._free_part(key)] = _Pack(runs[i : i + self.limits[key]], self.fused_backward)
        return None

    def _free_part(self, key: tuple[Any, ...]) -> int:
        """A part number no pack of ``key`` uses yet."""
        return max((part for k, part in self.packs if k == key), default=-1) + 1

    def _release(self, pack: _Pack) -> list[_Run]:
        for k in range(len(pack.runs)):
            pack.sync(k)
        return pack.runs

    def step(self) -> list[PackedResult]:
        """One optimizer step for every member of every pack (then evaluation for those due)."""
        left: list[PackedResult] = []
        for key in list(self.packs):
            pack = self.packs[key]
            gone: dict[int, PackedResult] = {}
            try:
                diverged = pack.train_step()
            except PackTooLarge as exc:
                alone = self._split(key, pack, str(exc))
                if alone is not None:
                    left.append(alone)
                continue  # the split packs take this step next time round
            for k, reason in diverged.items():
                run = pack.runs[k]
                pack.sync(k)  # parameters of the last finite step: the bad update was skipped
                log.warning("%s diverged: %s", run.label, reason)
                gone[k] = run.result(Outcome.DIVERGED, f"diverged: {reason}")
            due = [
                k
                for k, r in enumerate(pack.runs)
                if k not in gone and (r.step % r.member.config.eval_every == 0 or r.step == r.member.config.steps)
            ]
            if due:
                for k, val in pack.evaluate(due).items():
                    ended = self._after_eval(pack, k, val)
                    if ended is not None:
                        gone[k] = ended
            for k, r in enumerate(pack.runs):
                if k not in gone and r.step >= r.member.config.steps:
                    pack.sync(k)
                    gone[k] = r.result(Outcome.COMPLETED, f"completed {r.step} steps")
            if gone:
                left.extend(gone[k] for k in sorted(gone))
                remaining = [r for k, r in enumerate(pack.runs) if k not in gone]
                for k in range(len(pack.runs)):
                    if k not in gone:
                        pack.sync(k)
                if remaining:
                    self.packs[key] = _Pack(remaining, self.fused_backward)
                else:
                    del self.packs[key]
        return left

    def _after_eval(self, pack: _Pack, k: int, val: dict[str, float]) -> PackedResult | None:
        """``train()``'s evaluation phase for member ``k``: metrics, checkpoints, report hook."""
        run = pack.runs[k]
        task = run.member.task
        metrics = report_metrics(run.step, val, run.interval)
        run.interval = new_interval()
        run.history.append(metrics)
        key = f"val_{task.metric}"
        pack.sync(k)
        if not math.isfinite(metrics.get(key, math.nan)):
            run.save()
            why = f"validation {task.metric} is {metrics.get(key)} at step {run.step}"
            log.warning("%s diverged: %s", run.label, why)
            return run.result(Outcome.DIVERGED, f"diverged: {why}")
        improved = _better(task, metrics[key], run.best.get(key))
        if improved:
            run.best = dict(metrics)
        run.save()
        if improved:
            run.save("best.pt")
        if run.member.report is not None:
            try:
                if run.member.report(run.step, metrics):
                    return run.result(Outcome.STOPPED, f"stopped by the report hook at step {run.step}")
            except Exception as exc:  # e.g. optuna.TrialPruned: this member's business only
                reason = f"report hook raised {type(exc).__name__} at step {run.step}"
                return run.result(Outcome.STOPPED, reason, exc)
        return None

    def interrupt(self, reason: str = "interrupted") -> list[PackedResult]:
        """Checkpoint every member and return them all as ``"interrupted"`` (the pack empties)."""
        left = []
        for pack in self.packs.values():
            for k, run in enumerate(pack.runs):
                pack.sync(k)
                run.save()
                left.append(run.result(Outcome.INTERRUPTED, f"{reason} at step {run.step}; resume from the checkpoint"))
        self.packs.clear()
        return left


def train_packed(
    members: Iterable[Member],
    *,
    stop: threading.Event | None = None,
    refill: Callable[[], Member | None] | None = None,
    on_result: Callable[[PackedResult], None] | None = None,
    slots: int | None = None,
    fused_backward: bool = True,
) -> list[PackedResult]:
    """Train ``members`` together until every one has left; return their results in leaving order.

    Args:
        stop: when set, every member checkpoints at the next step boundary and ends
            ``"interrupted"`` (as ``train()`` with its stop event).
        refill: called whenever fewer than ``slots`` members are training; returns the next
            member, or None for "no more for now" (asked again after the next member leaves).
        on_result: called as each member leaves, before its slot is refilled (record the
            trial's outcome there so the caller's budget sees it before the next refill).
        slots: members trained at once; default: the number of initial members.
        fused_backward: the hand-written backward where a family has one (``PackedTrainer``).

    Raises:
        PackError: a member (initial or from ``refill``) cannot be packed; check
            ``why_not_packable`` first and train such members alone.
    """
    trainer = PackedTrainer(fused_backward)
    results: list[PackedResult] = []

    def done(res: PackedResult) -> None:
        results.append(res)
        if on_result is not None:
            on_result(res)

    initial = list(members)
    capacity = slots if slots is not None else len(initial)
    for m in initial:
        early = trainer.add(m)
        if early is not None:
            done(early)

    def fill() -> None:
        while refill is not None and trainer.active < capacity:
            m = refill()
            if m is None:
                return
            early = trainer.add(m)
            if early is not None:
                done(early)

    fill()
    while trainer.active:
        if stop is not None and stop.is_set():
            for res in trainer.interrupt():
                done(res)
            break
        left = trainer.step()
        for res in left:
            done(res)
        if left:
            fill()
    return results


__all__ = ["Member", "PackTooLarge", "PackedResult", "PackedTrainer", "out_of_memory", "train_packed"]
