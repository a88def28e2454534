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


def new_interval() -> dict[str, float]:
    """The running sums of one reporting interval (kept in checkpoints, so a resume continues them)."""
    return {"loss": 0.0, "grad": 0.0, "n": 0, "time": 0.0}


def report_metrics(step: int, val: dict[str, float], interval: dict[str, float]) -> dict[str, float]:
    """What an evaluation reports: the ``val_*`` metrics and the interval's means since the last one."""
    n = max(int(interval["n"]), 1)
    return {
        "step": float(step),
        **{f"val_{k}": v for k, v in val.items()},
        "train_loss": interval["loss"] / n,
        "grad_norm": interval["grad"] / n,
        "steps_per_s": interval["n"] / interval["time"] if interval["time"] > 0 else 0.0,
    }


def prepare(model: RecurrentModel, config: TrainConfig) -> tuple[torch.device, torch.optim.Optimizer]:
    """What a run does before its first step: the device, denormal flushing, train mode, optimizer."""
    device = torch.device(config.device)
    if config.flush_denormal:
        torch.set_flush_denormal(True)
    model.to(device)
    model.train()
    return device, build_optimizer(model, config)


class _Run:
    """One ``train()`` call's state: what its checkpoints hold, and the phases of its loop."""

    def __init__(
        self,
        model: RecurrentModel,
        task: Task,
        config: TrainConfig,
        *,
        checkpoint_dir: str | Path | None,
        on_checkpoint: Callable[[Path], None] | None,
    ) -> None:
        self.model, self.task, self.config = model, task, config
        self.device, self.optimizer = prepare(model, config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = config.clip if config.clip else math.inf
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.on_checkpoint = on_checkpoint
        self.identity = run_identity(task, model, config)
        self.step = 0
        self.state: State | None = None
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {}
        self.train_time = 0.0
        self.interval = new_interval()
        self.resumed_from: int | None = None
        # Throughput counts only the steps done in this process (a resumed run has fewer).
        self.steps_at_start = 0
        self.session_time = 0.0

    def resume(self) -> None:
        """Continue from ``last.pt`` when the checkpoint folder has one (refused if another run's)."""
        if self.ckpt_dir is None or not (self.ckpt_dir / "last.pt").exists():
            return
        resumed = restore_checkpoint(
            self.ckpt_dir / "last.pt",
            identity=self.identity,
            model=self.model,
            optimizer=self.optimizer,
            device=self.device,
        )
        self.step, self.history, self.best = resumed.step, resumed.history, resumed.best
        self.train_time, self.interval, self.state = resumed.train_time, resumed.interval, resumed.state
        self.resumed_from = self.steps_at_start = self.step
        log.info("resumed from %s at step %d", self.ckpt_dir / "last.pt", self.step)

    def save(self, name: str = "last.pt") -> None:
        if self.ckpt_dir is None:
            return
        ckpt = build_checkpoint(
            identity=self.identity,
            step=self.step,
            model=self.model,
            optimizer=self.optimizer,
            device=self.device,
            state=self.state,
            history=self.history,
            best=self.best,
            train_time=self.train_time,
            interval=self.interval,
        )
        atomic_save(ckpt, self.ckpt_dir / name)
        if name == "last.pt" and self.on_checkpoint is not None:
            self.on_checkpoint(self.ckpt_dir / name)

    def result(self, outcome: Outcome, reason: str) -> TrainResult:
        return TrainResult(
            outcome=outcome,
            reason=reason,
            step=self.step,
            steps_per_s=(self.step - self.steps_at_start) / self.session_time if self.session_time > 0 else 0.0,
            final=self.history[-1] if self.history else {},
            best=self.best,
            history=self.history,
            train_time_s=self.train_time,
            resumed_from=self.resumed_from,
        )

    def diverged(self, why: str) -> TrainResult:
        log.warning("run diverged: %s", why)
        return self.result(Outcome.DIVERGED, f"diverged: {why}")

    def train_step(self) -> tuple[float, str | None]:
        """One optimizer step; returns the batch loss and why it diverged (then nothing was updated)."""
        model, task = self.model, self.task
        t0 = time.perf_counter()
        batch = _to(task.train_batch(self.step), self.device)
        if not task.carry_state or batch.reset:
            self.state = None
        out, new_state = model(batch.x, self.state, readout=task.readout)
        loss = task.loss(out, batch)
        penalty = model.penalty()
        self.optimizer.zero_grad(set_to_none=True)
        (loss if penalty is None else loss + penalty).backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
        loss_value = float(loss.detach())

        # Checked before the update, so the model keeps its last finite parameters.
        why = divergence(self.config, loss_value, grad_norm, state_abs_max(new_state), self.step + 1)
        if why is not None:
            return loss_value, why

        self.optimizer.step()
        model.after_step()
        self.step += 1
        if task.carry_state:
            self.state = detach_state(new_state)
        elapsed = time.perf_counter() - t0
        self.train_time += elapsed
        self.session_time += elapsed
        self.interval["loss"] += loss_value
        self.interval["grad"] += grad_norm
        self.interval["n"] += 1
        self.interval["time"] += elapsed
        return loss_value, None

    def evaluation(self, report: ReportHook | None) -> TrainResult | None:
        """Evaluate, checkpoint (``best.pt`` too when it improved), report; a result if the run ends."""
        task, key = self.task, f"val_{self.task.metric}"
        metrics = report_metrics(self.step, evaluate(self.model, task, "val"), self.interval)
        self.interval = new_interval()
        self.history.append(metrics)
        if not math.isfinite(metrics.get(key, math.nan)):
            self.save()
            return self.diverged(f"validation {task.metric} is {metrics.get(key)} at step {self.step}")
        improved = _better(task, metrics[key], self.best.get(key))
        if improved:
            self.best = dict(metrics)
        self.save()
        if improved:
            self.save("best.pt")
        if report is not None and report(self.step, metrics):
            return self.result(Outcome.STOPPED, f"stopped by the report hook at step {self.step}")
        return None


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
    run = _Run(model, task, config, checkpoint_dir=checkpoint_dir, on_checkpoint=on_checkpoint)
    if resume:
        run.resume()
    while run.step < config.steps:
        if stop is not None and stop.is_set():
            run.save()
            return run.result(Outcome.INTERRUPTED, f"interrupted at step {run.step}; resume from the checkpoint")

        # -- one optimizer step (divergence checked before the update) --------------------------
        loss_value, why = run.train_step()
        if why is not None:
            return run.diverged(why)
        if progress is not None:
            progress(run.step, loss_value)

        # -- evaluation, report, checkpoint ----------------------------------------------------
        if run.step % config.eval_every == 0 or run.step == config.steps:
            ended = run.evaluation(report)
            if ended is not None:
                return ended

    return run.result(Outcome.COMPLETED, f"completed {run.step} steps")
