"""One training run from names and options (torch only): what `train`, the objective and packs build."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from irnn_search.models import RecurrentModel, build_model
from irnn_search.outcome import Outcome
from irnn_search.tasks import Task, build_task
from irnn_search.train import ProgressHook, ReportHook, TrainConfig, TrainResult, evaluate, seed_everything, train


@dataclass
class Run:
    task: Task
    model: RecurrentModel
    config: TrainConfig


def prepare_run(
    *,
    task: str,
    task_options: Mapping[str, Any],
    model: str,
    model_options: Mapping[str, Any],
    config: TrainConfig,
    batch_size: int | None = None,
) -> Run:
    """Build and check everything before any training (bad names, options or data fail here)."""
    the_task = build_task(task, task_options, seed=config.seed, batch_size=batch_size)
    prepare = getattr(the_task, "prepare", None)
    if callable(prepare):
        prepare()  # load (or download) real datasets now, so a missing file fails before training
    seed_everything(config.seed)
    the_model = build_model(
        model,
        model_options,
        input_size=the_task.input_size,
        output_size=the_task.output_size,
        vocab_size=the_task.vocab_size,
    )
    return Run(the_task, the_model, config)


def execute(
    run: Run,
    *,
    report: ReportHook | None = None,
    progress: ProgressHook | None = None,
    stop: threading.Event | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    test: bool = False,
    packed: bool = False,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train, optionally evaluate on the test split, and return the result and its JSON summary.

    ``packed``: train through the packed path (``irnn_search.packed``) as a pack of one, as a
    worker with ``--pack`` trains a trial. A packed member's arithmetic does not depend on its pack
    (on CPU, bit for bit, whatever the pack's size and other members; the hand-written backward
    adds in another order than autograd), so this retraces a packed trial exactly, where
    ``train()`` retraces it only to float rounding, which a chaotic run amplifies. Raises
    ``PackError`` where the model or task cannot be packed (``why_not_packable``)."""
    started = time.perf_counter()
    if packed:
        result = _train_packed_alone(run, report, progress, stop, checkpoint_dir, resume)
    else:
        result = train(
            run.model,
            run.task,
            run.config,
            report=report,
            progress=progress,
            stop=stop,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
    summary = summarize(run, result, wall_s=time.perf_counter() - started)
    if test and result.outcome == Outcome.COMPLETED:
        summary["test"] = evaluate(run.model, run.task, "test")
    return result, summary


def _train_packed_alone(
    run: Run,
    report: ReportHook | None,
    progress: ProgressHook | None,
    stop: threading.Event | None,
    checkpoint_dir: str | Path | None,
    resume: bool,
) -> TrainResult:
    """The run as the one member of a pack (which steps it beside a silent twin, as it steps any
    lone member: ``irnn_search.packed.loop._Pack``). ``PackError`` (from ``train_packed``) where
    the run cannot be packed."""
    from irnn_search.packed import Member, train_packed

    member = Member(
        run.model, run.task, run.config, report=report, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume
    )
    (done,) = train_packed([member], stop=stop)
    if done.error is not None:
        raise done.error
    return done.result


def summarize(run: Run, result: TrainResult, *, wall_s: float) -> dict[str, Any]:
    """The run as one JSON-able dict (what ``train --json`` prints)."""
    task_desc = run.task.describe()
    model_desc = run.model.describe()
    train_cfg = asdict(run.config)
    train_cfg["batch_size"] = run.task.batch_size
    return {
        "task": task_desc.pop("task"),
        "task_options": task_desc,
        "model": model_desc.pop("model"),
        "parameters": model_desc.pop("parameters"),
        "model_options": model_desc,
        "train": train_cfg,
        "metric": f"val_{run.task.metric}",
        "direction": run.task.direction,
        "final": result.final,
        "best": result.best,
        "baseline": run.task.baseline(),
        "steps": result.step,
        "steps_per_s": result.steps_per_s,
        "seq_len": run.task.seq_len,
        "outcome": result.outcome,
        "reason": result.reason,
        "resumed_from": result.resumed_from,
        "wall_s": wall_s,
    }
