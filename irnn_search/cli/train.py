"""``irnn-search train``: one model on one task with fixed hyperparameters, with a progress bar."""

from __future__ import annotations

import json
import math
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from irnn_search.cli.app import EXIT_DIVERGED, EXIT_INTERRUPTED, _console, _fail, _settings, app

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from irnn_search.run import Run
    from irnn_search.settings import Settings
    from irnn_search.train import TrainResult


def _parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _parse_clip(value: str | None) -> float | None:
    if value is None or value.strip().lower() in ("off", "none", "0", "0.0"):
        return None
    try:
        clip = float(value)
    except ValueError:
        raise _fail(f"--clip must be a positive number or 'off', got {value!r}") from None
    if not clip > 0 or not math.isfinite(clip):
        raise _fail(f"--clip must be a positive number or 'off', got {value!r}")
    return clip


def _run_options(
    task: str,
    settings: Settings,
    *,
    task_opt: list[str],
    model_opt: list[str],
    shortcuts: dict[str, dict[str, Any]],
    data_dir: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The task's and the model's options: the -t/-m pairs, then the shortcut flags that were given
    (``shortcuts``: {"task": {...}, "model": {...}}, None for a flag left out), then the data and
    cache folders where the task takes them and no -t pair set them."""
    from irnn_search.tasks import TaskError, task_class

    task_options = _parse_pairs(task_opt, "--task-opt")
    model_options = _parse_pairs(model_opt, "--model-opt")
    task_options.update({k: v for k, v in shortcuts["task"].items() if v is not None})
    model_options.update({k: v for k, v in shortcuts["model"].items() if v is not None})
    try:
        fields = task_class(task).config_cls.__dataclass_fields__
        if "data_dir" in fields and "data_dir" not in task_options and (data_dir or settings.data_dir):
            task_options["data_dir"] = data_dir or str(settings.data_dir)
        if "cache_dir" in fields and "cache_dir" not in task_options and settings.cache_dir:
            task_options["cache_dir"] = str(settings.cache_dir)
    except TaskError as exc:
        raise _fail(str(exc), "run `irnn-search tasks` to list them") from None
    return task_options, model_options


def _refuse_unfit(
    *,
    task: str,
    task_options: dict[str, Any],
    model: str,
    model_options: dict[str, Any],
    batch_size: int | None,
    device: str,
) -> None:
    """Fail, before anything is allocated, when this run cannot fit the device; the message names
    the flags to lower."""
    from irnn_search.service.preflight import run_memory_problem

    why = run_memory_problem(
        task=task,
        task_options=task_options,
        model=model,
        model_options=model_options,
        batch_size=batch_size,
        device=device,
        keys={
            "T": "--T" if "T" in task_options else "the sequence length",
            "batch": "--batch-size",
            "hidden": "--hidden",
        },
    )
    if why is not None:
        raise _fail(f"this run cannot fit: {why}")


class _Display:
    """Rich progress bar: step, loss, latest validation metric against the baseline, steps/s, ETA."""

    def __init__(self, run: Run, total: int, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.metric = run.task.metric
        self.baseline = run.task.baseline().get(self.metric)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[val]}"),
            TextColumn("{task.fields[rate]} steps/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.id = self.progress.add_task(
            f"{run.model.family} on {run.task.name}", total=total, loss="-", val="", rate="-"
        )
        self.ema: float | None = None

    def __enter__(self) -> _Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start_at(self, step: int) -> None:
        self.progress.update(self.id, completed=step)

    def on_step(self, step: int, loss: float) -> None:
        self.ema = loss if self.ema is None else 0.95 * self.ema + 0.05 * loss
        self.progress.update(self.id, completed=step, loss=f"{self.ema:.4g}")

    def on_report(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(f"val_{self.metric}", math.nan)
        base = f" (baseline {self.baseline:.4g})" if self.baseline is not None else ""
        self.progress.update(
            self.id, val=f"val {self.metric} {value:.4g}{base}", rate=f"{metrics.get('steps_per_s', 0):.1f}"
        )


def _execute(
    run: Run, *, checkpoint_dir: str | None, resume: bool, test: bool, packed: bool
) -> tuple[TrainResult, dict[str, Any]]:
    """Train with the progress bar on stderr. First Ctrl-C (or SIGTERM): finish the current step,
    checkpoint, stop. Second Ctrl-C: abort."""
    import threading

    from irnn_search.packed import PackError
    from irnn_search.run import execute
    from irnn_search.tasks import TaskError
    from irnn_search.train import TrainError

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _console(stderr=True).print("[yellow]stopping after the current step (Ctrl-C again to abort)[/]")

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    console = _console(stderr=True)
    try:
        with _Display(run, run.config.steps, console) as display:
            return execute(
                run,
                report=display.on_report,
                progress=display.on_step,
                stop=stop,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                test=test,
                packed=packed,
            )
    except PackError as exc:
        raise _fail(f"--packed: {exc}", "drop --packed to train it with the ordinary loop") from None
    except (TaskError, TrainError) as exc:
        raise _fail(str(exc)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _print_summary(summary: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    outcome = summary["outcome"]
    colour = {"completed": "green", "diverged": "red", "interrupted": "yellow", "stopped": "yellow"}[outcome]
    console.print(
        f"[bold {colour}]{outcome}[/]: {summary['reason']} · {summary['steps']} steps · "
        f"{summary['steps_per_s']:.1f} steps/s · {summary['parameters']:,} parameters",
        highlight=False,
    )
    table = Table(title=f"{summary['model']} on {summary['task']}", title_justify="left")
    table.add_column("metric")
    table.add_column("final (val)", justify="right")
    table.add_column("best (val)", justify="right")
    table.add_column("memoryless baseline", justify="right")
    if "test" in summary:
        table.add_column("test (final model)", justify="right")
    names = sorted({k.removeprefix("val_") for k in summary["final"] if k.startswith("val_")})
    for name in names:
        row = [
            name + (" *" if f"val_{name}" == summary["metric"] else ""),
            f"{summary['final'].get(f'val_{name}', math.nan):.4g}",
            f"{summary['best'].get(f'val_{name}', math.nan):.4g}",
            f"{summary['baseline'][name]:.4g}" if name in summary["baseline"] else "",
        ]
        if "test" in summary:
            row.append(f"{summary['test'].get(name, math.nan):.4g}")
        table.add_row(*row)
    if names:
        console.print(table)
        if summary["best"]:
            console.print(f"* selection metric ({summary['direction']}); best at step {int(summary['best']['step'])}")


def _show(run: Run, result: TrainResult, summary: dict[str, Any], *, plot: str | Path | None, as_json: bool) -> None:
    """The learning curve (when asked and there is one), then the summary on stdout."""
    if plot and result.history:
        from irnn_search.plots import learning_curve

        learning_curve(
            result.history,
            metric=run.task.metric,
            baseline=run.task.baseline().get(run.task.metric),
            title=f"{run.model.family} on {run.task.name} (seed {run.config.seed})",
            path=plot,
        )
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        _print_summary(summary, _console())
        if plot and result.history:
            _console().print(f"learning curve: {plot}")


def _exit_for(result: TrainResult) -> None:
    if result.outcome == "diverged":
        raise typer.Exit(EXIT_DIVERGED)
    if result.outcome == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


@app.command("train")
def train_cmd(
    task: Annotated[str, typer.Option(help="task name (see `irnn-search tasks`)")] = "adding",
    model: Annotated[str, typer.Option(help="model family (see `irnn-search models`)")] = "irnn",
    T: Annotated[int | None, typer.Option("--T", help="sequence length (adding) or delay (copy)")] = None,
    hidden: Annotated[int | None, typer.Option(help="hidden units")] = None,
    optimizer: Annotated[str, typer.Option(help="sgd | adam | rmsprop")] = "adam",
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    lr_orth: Annotated[float | None, typer.Option(help="learning rate of orthogonal parameters (default: lr)")] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = 0.0,
    alpha: Annotated[float, typer.Option(help="RMSprop smoothing constant")] = 0.99,
    clip: Annotated[str | None, typer.Option(help="gradient-norm clipping threshold, or 'off'")] = None,
    identity_scale: Annotated[float | None, typer.Option(help="IRNN: W_hh = scale·I at init")] = None,
    forget_bias: Annotated[float | None, typer.Option(help="LSTM: initial forget-gate bias")] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 2000,
    batch_size: Annotated[int | None, typer.Option(help="batch size (default: the task's literature value)")] = None,
    eval_every: Annotated[int | None, typer.Option(help="steps between evaluations (default: steps/20)")] = None,
    seed: Annotated[int, typer.Option(help="random seed (data stream and initialisation)")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    threads: Annotated[
        int | None, typer.Option(help="torch threads (default: IRNN_SEARCH_THREADS, else 1)", min=1)
    ] = None,
    task_opt: Annotated[
        list[str] | None, typer.Option("--task-opt", "-t", help="task option KEY=VALUE (repeatable)")
    ] = None,
    model_opt: Annotated[
        list[str] | None, typer.Option("--model-opt", "-m", help="model option KEY=VALUE (repeatable)")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="folder holding the dataset files (MNIST, PTB)", envvar="IRNN_SEARCH_DATA_DIR")
    ] = None,
    checkpoint_dir: Annotated[
        str | None, typer.Option(help="save last.pt/best.pt here; an existing last.pt is resumed")
    ] = None,
    resume: Annotated[bool, typer.Option(help="resume from checkpoint-dir/last.pt if present")] = True,
    test: Annotated[bool, typer.Option(help="evaluate the final model on the test split too")] = False,
    packed: Annotated[
        bool,
        typer.Option(
            help="train through the packed path (a pack of one), as `worker --pack` trains a trial: "
            "retraces a packed trial bit for bit on CPU, where the ordinary loop adds in another order"
        ),
    ] = False,
    plot: Annotated[str | None, typer.Option(help="write the learning curve to this PNG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")] = False,
) -> None:
    """Train one model on one task with fixed hyperparameters."""
    from irnn_search.models import ModelError
    from irnn_search.options import OptionError
    from irnn_search.tasks import TaskError
    from irnn_search.train import TrainConfig, TrainError

    settings = _settings()
    task_options, model_options = _run_options(
        task,
        settings,
        task_opt=task_opt or [],
        model_opt=model_opt or [],
        shortcuts={
            "task": {"T": T},
            "model": {"hidden_size": hidden, "identity_scale": identity_scale, "forget_bias": forget_bias},
        },
        data_dir=data_dir,
    )

    import torch

    from irnn_search.run import prepare_run

    # One thread unless told otherwise, as for `worker`: the small recurrent models gain nothing
    # from more, and on a busy 2-core machine two threads made a short run 3x slower.
    torch.set_num_threads(threads or settings.threads or 1)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise _fail(f"--device {device}: no CUDA device is available here", "use --device cpu")

    # What the memory check and the run are both built from.
    what: dict[str, Any] = {"task": task, "task_options": task_options, "model": model, "model_options": model_options}
    try:
        _refuse_unfit(**what, batch_size=batch_size, device=device)
        config = TrainConfig(
            steps=steps,
            optimizer=optimizer,
            lr=lr,
            lr_orth=lr_orth,
            momentum=momentum,
            alpha=alpha,
            clip=_parse_clip(clip),
            eval_every=eval_every or max(1, steps // 20),
            seed=seed,
            device=device,
        )
        run = prepare_run(**what, config=config, batch_size=batch_size)
    except (TaskError, ModelError, TrainError, OptionError) as exc:
        raise _fail(str(exc)) from None

    result, summary = _execute(run, checkpoint_dir=checkpoint_dir, resume=resume, test=test, packed=packed)
    _show(run, result, summary, plot=plot, as_json=as_json)
    _exit_for(result)
