"""The training loop: one plain function, torch only.

``train(model, task, config)`` runs optimizer steps, evaluates every ``eval_every`` steps and
hands the metrics to one ``report(step, metrics)`` hook. Divergence (non-finite loss, exploding
gradient norm or hidden state) is a normal outcome with a stated reason, never an exception.
With a ``checkpoint_dir`` the run saves ``last.pt`` at every evaluation (and when stopped) and
``best.pt`` whenever the validation metric improves; a run started again on the same folder resumes
where it stopped and, on CPU, continues bit-identically (batches are a pure function of the step,
so the data position is the step counter).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from irnn_search.checkpoint import TrainError, atomic_save, build_checkpoint, restore_checkpoint, run_identity
from irnn_search.models.base import RecurrentModel, State, detach_state, state_abs_max
from irnn_search.outcome import Outcome
from irnn_search.tasks.base import Batch, Split, Task, derive_seed

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "rmsprop")

#: report(step, metrics) -> True to stop the run early (e.g. a pruner); may also raise.
ReportHook = Callable[[int, dict[str, float]], bool | None]
#: progress(step, train_loss) after every optimizer step (progress bars).
ProgressHook = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimizer steps in total (a resumed run continues up to this)
    optimizer: str = "adam"  # sgd | adam | rmsprop
    lr: float = 1e-3
    # Learning rate of constrained (orthogonal) parameter groups; None = same as lr. The expRNN
    # rule of thumb is lr / 10.
    lr_orth: float | None = None
    momentum: float = 0.0  # SGD only (the IRNN paper used plain SGD)
    alpha: float = 0.99  # RMSprop smoothing (PyTorch default; NNR/ASR also use 0.9, EURNN 0.5)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam
    clip: float | None = None  # gradient-norm clipping threshold; None or 0 = off
    eval_every: int = 100  # steps between evaluations (and checkpoints)
    seed: int = 0  # seeds the training data stream (and the global RNGs via seed_everything)
    device: str = "cpu"
    # Divergence: stop when the largest hidden-state entry, or (without clipping only) the gradient
    # norm, exceeds these. Non-finite values always count as divergence. With clipping on, a huge
    # pre-clip norm is not divergence: the update is clipped, which is what clipping is for (the
    # IRNN paper's SGD settings see pre-clip norms above 1e8 in their first steps and then learn).
    max_grad_norm: float = 1e8
    max_hidden: float = 1e6
    # Flush subnormal floats to zero (CPU, process-wide). Gradients that vanish over hundreds of
    # steps become subnormal and x86 computes with those ~10x slower: measured on this machine,
    # LSTM fwd+bwd at the sMNIST shape ran 0.075 -> 0.84 steps/s (benchmarks/README.md).
    flush_denormal: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr}")
        if self.lr_orth is not None and not (self.lr_orth > 0 and math.isfinite(self.lr_orth)):
            problems.append(f"lr_orth must be a positive number, got {self.lr_orth}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        if self.clip is not None and not (self.clip >= 0 and not math.isnan(self.clip)):
            problems.append(f"clip must be >= 0 (0 = off), got {self.clip}")
        if self.eval_every < 1:
            problems.append(f"eval_every must be >= 1, got {self.eval_every}")
        if problems:
            raise TrainError("; ".join(problems))


@dataclass
class TrainResult:
    outcome: Outcome
    reason: str
    step: int  # optimizer steps done (including those before a resume)
    steps_per_s: float  # training throughput, evaluation excluded
    final: dict[str, float]  # metrics of the last evaluation
    best: dict[str, float]  # metrics of the best evaluation (by the task's metric)
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0  # training compute over the whole run, across resumes
    resumed_from: int | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global RNGs (model initialisation, dropout)."""
    random.seed(seed)
    torch.manual_seed(derive_seed(seed, 0))


def build_optimizer(model: RecurrentModel, config: TrainConfig) -> torch.optim.Optimizer:
    """One optimizer; constrained groups get ``lr_orth``; groups may add options (weight decay)."""
    groups = []
    for g in model.parameter_groups():
        if not g.params:
            continue
        lr = config.lr_orth if g.kind == "constrained" and config.lr_orth is not None else config.lr
        groups.append({"params": g.params, "lr": lr, "name": g.name, **g.options})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=config.betas)
    return torch.optim.RMSprop(groups, lr=config.lr, alpha=config.alpha)


def divergence(config: TrainConfig, loss: float, grad_norm: float, hidden: float, step: int) -> str | None:
    """Why a step diverged (its update must not be applied), or None. ``grad_norm`` is the norm
    before clipping; it only counts when clipping is off, or when it is not finite."""
    if not math.isfinite(loss):
        return f"training loss is {loss} at step {step}"
    if not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm} at step {step}"
    if not config.clip and grad_norm > config.max_grad_norm:
        return f"gradient norm {grad_norm:.3g} exceeds {config.max_grad_norm:.3g} (no clipping) at step {step}"
    if not hidden <= config.max_hidden:
        return f"hidden state reached {hidden:.3g} (limit {config.max_hidden:.3g}) at step {step}"
    return None


def _to(batch: Batch, device: torch.device) -> Batch:
    if batch.x.device == device:
        return batch
    return Batch(batch.x.to(device, non_blocking=True), batch.y.to(device, non_blocking=True), batch.reset)


@torch.no_grad()
def evaluate(model: RecurrentModel, task: Task, split: Split = "val") -> dict[str, float]:
    """Task metrics of ``model`` on a whole evaluation split (state carried for stream tasks)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    state: State | None = None
    try:
        for batch in task.eval_batches(split):
            batch = _to(batch, device)
            out, state = model(batch.x, None if batch.reset or not task.carry_state else state, readout=task.readout)
            for key, value in task.stats(out, batch).items():
                totals[key] = totals.get(key, 0.0) + value
    finally:
        model.train(was_training)
    return task.summarize(totals)


def _better(task: Task, value: float, best: float | None) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if task.direction == "minimize" else value > best


def train(
    model: RecurrentModel,
    task: Task,
    config: TrainConfig,
    *,
    report: ReportHook | None = None,
    progress: ProgressHook | None = None,
    stop: threading.Event | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task``.

    Args:
        report: called after every evaluation with ``val_*`` metrics, the interval's mean
            ``train_loss``, ``grad_norm`` and ``steps_per_s``; returning True stops the run
            (outcome ``"stopped"``); an exception it raises (e.g. ``optuna.TrialPruned``)
            propagates after nothing else happens.
        progress: called after every optimizer step with the step count and the batch loss.
        stop: when set, the run stops at the next step boundary, saves a checkpoint and
            returns outcome ``"interrupted"`` (Ctrl-C, SIGTERM).
        checkpoint_dir: folder for ``last.pt`` / ``best.pt``; with ``resume`` an existing
            ``last.pt`` of the same run is continued, one of another run is refused.
        on_checkpoint: called with the path of ``last.pt`` each time it is written (e.g. to copy
            it where other machines can resume it).

    Returns:
        A ``TrainResult``. Divergence is reported as outcome ``"diverged"`` with the reason; the
        model keeps the last finite parameters (the bad update is never applied). A NaN
        validation metric never becomes ``best``.
    """
    device = torch.device(config.device)
    if config.flush_denormal:
        torch.set_flush_denormal(True)
    model.to(device)
    model.train()
    optimizer = build_optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    clip = config.clip if config.clip else None
    key = f"val_{task.metric}"
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    identity = run_identity(task, model, config)

    step = 0
    state: State | None = None
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    train_time = 0.0
    interval = {"loss": 0.0, "grad": 0.0, "n": 0, "time": 0.0}
    resumed_from: int | None = None

    if ckpt_dir is not None and resume and (ckpt_dir / "last.pt").exists():
        resumed = restore_checkpoint(
            ckpt_dir / "last.pt", identity=identity, model=model, optimizer=optimizer, device=device
        )
        step, history, best = resumed.step, resumed.history, resumed.best
        train_time, interval, state = resumed.train_time, resumed.interval, resumed.state
        resumed_from = step
        log.info("resumed from %s at step %d", ckpt_dir / "last.pt", step)

    def save(name: str = "last.pt") -> None:
        if ckpt_dir is None:
            return
        ckpt = build_checkpoint(
            identity=identity,
            step=step,
            model=model,
            optimizer=optimizer,
            device=device,
            state=state,
            history=history,
            best=best,
            train_time=train_time,
            interval=interval,
        )
        atomic_save(ckpt, ckpt_dir / name)
        if name == "last.pt" and on_checkpoint is not None:
            on_checkpoint(ckpt_dir / name)

    def result(outcome: Outcome, reason: str) -> TrainResult:
        return TrainResult(
            outcome=outcome,
            reason=reason,
            step=step,
            steps_per_s=(step - steps_at_start) / session_time if session_time > 0 else 0.0,
            final=history[-1] if history else {},
            best=best,
            history=history,
            train_time_s=train_time,
            resumed_from=resumed_from,
        )

    # Throughput counts only the steps done in this process (a resumed run has fewer).
    steps_at_start = step
    session_time = 0.0

    def diverged(why: str) -> TrainResult:
        log.warning("run diverged: %s", why)
        return result(Outcome.DIVERGED, f"diverged: {why}")

    while step < config.steps:
        if stop is not None and stop.is_set():
            save()
            return result(Outcome.INTERRUPTED, f"interrupted at step {step}; resume from the checkpoint")

        # -- one optimizer step ----------------------------------------------------------------
        t0 = time.perf_counter()
        batch = _to(task.train_batch(step), device)
        if not task.carry_state or batch.reset:
            state = None
        out, new_state = model(batch.x, state, readout=task.readout)
        loss = task.loss(out, batch)
        penalty = model.penalty()
        optimizer.zero_grad(set_to_none=True)
        (loss if penalty is None else loss + penalty).backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf))
        loss_value = float(loss.detach())

        # -- divergence: checked before the update, so the model keeps its last finite state ----
        why = divergence(config, loss_value, grad_norm, state_abs_max(new_state), step + 1)
        if why is not None:
            return diverged(why)

        optimizer.step()
        model.after_step()
        step += 1
        if task.carry_state:
            state = detach_state(new_state)
        elapsed = time.perf_counter() - t0
        train_time += elapsed
        session_time += elapsed
        interval["loss"] += loss_value
        interval["grad"] += grad_norm
        interval["n"] += 1
        interval["time"] += elapsed
        if progress is not None:
            progress(step, loss_value)

        # -- evaluation, report, checkpoint ----------------------------------------------------
        if step % config.eval_every == 0 or step == config.steps:
            val = evaluate(model, task, "val")
            n = max(int(interval["n"]), 1)
            metrics = {
                "step": float(step),
                **{f"val_{k}": v for k, v in val.items()},
                "train_loss": interval["loss"] / n,
                "grad_norm": interval["grad"] / n,
                "steps_per_s": interval["n"] / interval["time"] if interval["time"] > 0 else 0.0,
            }
            interval = {"loss": 0.0, "grad": 0.0, "n": 0, "time": 0.0}
            history.append(metrics)
            if not math.isfinite(metrics.get(key, math.nan)):
                save()
                return diverged(f"validation {task.metric} is {metrics.get(key)} at step {step}")
            improved = _better(task, metrics[key], best.get(key))
            if improved:
                best = dict(metrics)
            save()
            if improved:
                save("best.pt")
            if report is not None and report(step, metrics):
                return result(Outcome.STOPPED, f"stopped by the report hook at step {step}")

    return result(Outcome.COMPLETED, f"completed {step} steps")
