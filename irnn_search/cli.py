"""The ``irnn-search`` command line.

Commands are thin: they parse options, call the service layer and render results. torch and the
package's heavy modules are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from irnn_search.service.single import Run
    from irnn_search.train import TrainResult

app = typer.Typer(
    name="irnn-search",
    help="Hyperparameter search for long-memory recurrent networks (IRNN, expRNN, nnRNN, asRNN, LSTM, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def _fail(message: str, hint: str | None = None) -> typer.Exit:
    console = _console(stderr=True)
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        console.print(hint, style="dim", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _parse_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
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
    plot: Annotated[str | None, typer.Option(help="write the learning curve to this PNG")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as one JSON object")] = False,
) -> None:
    """Train one model on one task with fixed hyperparameters."""
    import threading

    from irnn_search.models import ModelError
    from irnn_search.options import OptionError
    from irnn_search.settings import Settings
    from irnn_search.tasks import TaskError, task_class
    from irnn_search.train import TrainConfig, TrainError

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise _fail(str(exc)) from None
    task_options: dict[str, Any] = _parse_pairs(task_opt or [], "--task-opt")
    model_options: dict[str, Any] = _parse_pairs(model_opt or [], "--model-opt")
    if T is not None:
        task_options["T"] = T
    for key, value in (("hidden_size", hidden), ("identity_scale", identity_scale), ("forget_bias", forget_bias)):
        if value is not None:
            model_options[key] = value
    try:
        fields = task_class(task).config_cls.__dataclass_fields__
        if "data_dir" in fields and "data_dir" not in task_options and (data_dir or settings.data_dir):
            task_options["data_dir"] = data_dir or str(settings.data_dir)
        if "cache_dir" in fields and "cache_dir" not in task_options and settings.cache_dir:
            task_options["cache_dir"] = str(settings.cache_dir)
    except TaskError as exc:
        raise _fail(str(exc), "run `irnn-search tasks` to list them") from None

    import torch

    from irnn_search.service.single import execute, prepare_run

    # One thread unless told otherwise, as for `worker`: the small recurrent models gain nothing
    # from more, and on a busy 2-core machine two threads made a short run 3x slower.
    torch.set_num_threads(threads or settings.threads or 1)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise _fail(f"--device {device}: no CUDA device is available here", "use --device cpu")

    try:
        if (why := _train_memory_problem(task, task_options, model, model_options, batch_size, device)) is not None:
            raise _fail(why)
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
        run = prepare_run(
            task=task,
            task_options=task_options,
            model=model,
            model_options=model_options,
            config=config,
            batch_size=batch_size,
        )
    except (TaskError, ModelError, TrainError, OptionError) as exc:
        raise _fail(str(exc)) from None

    # First Ctrl-C (or SIGTERM): finish the current step, checkpoint, stop. Second Ctrl-C: abort.
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _console(stderr=True).print("[yellow]stopping after the current step (Ctrl-C again to abort)[/]")

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    console = _console(stderr=True)
    try:
        with _Display(run, steps, console) as display:
            result, summary = execute(
                run,
                report=display.on_report,
                progress=display.on_step,
                stop=stop,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                test=test,
            )
    except (TaskError, TrainError) as exc:
        raise _fail(str(exc)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    if plot and result.history:
        from irnn_search.plots import learning_curve

        learning_curve(
            result.history,
            metric=run.task.metric,
            baseline=run.task.baseline().get(run.task.metric),
            title=f"{run.model.family} on {run.task.name} (seed {seed})",
            path=plot,
        )
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        _print_summary(summary, _console())
        if plot and result.history:
            _console().print(f"learning curve: {plot}")
    _exit_for(result)


def _train_memory_problem(
    task: str,
    task_options: dict[str, Any],
    model: str,
    model_options: dict[str, Any],
    batch_size: int | None,
    device: str,
) -> str | None:
    """Why this run cannot fit the device, before anything is allocated (None when it can, or when
    a bad name or option is left to ``prepare_run`` to explain)."""
    from irnn_search.models import MODELS
    from irnn_search.service.preflight import memory_problem
    from irnn_search.tasks import build_task

    if model not in MODELS:
        return None
    the_task = build_task(task, task_options, batch_size=batch_size)  # builds no data
    try:
        default = MODELS[model].config_cls.__dataclass_fields__["hidden_size"].default
        hidden = int(model_options.get("hidden_size", default))  # type: ignore[arg-type]
        sizes = the_task.input_size, the_task.output_size
    except Exception:  # a malformed option (prepare_run says which) or a vocabulary that needs the data
        return None
    why = memory_problem(
        model,
        hidden=hidden,
        seq_len=the_task.seq_len,
        batch=the_task.batch_size,
        input_size=sizes[0],
        output_size=sizes[1],
        device=device,
        keys={
            "T": "--T" if "T" in task_options else "the sequence length",
            "batch": "--batch-size",
            "hidden": "--hidden",
        },
    )
    return None if why is None else f"this run cannot fit: {why}"


def _exit_for(result: TrainResult) -> None:
    if result.outcome == "diverged":
        raise typer.Exit(EXIT_DIVERGED)
    if result.outcome == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)


def _ensure_home(settings: Any, *, checkpoints: bool = False) -> None:
    from irnn_search.settings import SettingsError

    try:
        settings.ensure_home(checkpoints=checkpoints)
    except SettingsError as exc:
        raise _fail(str(exc)) from None


def _settings() -> Any:
    from irnn_search.settings import Settings

    try:
        return Settings.from_env()
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _load_spec(name: str, studies_dir: str) -> Any:
    from irnn_search.search.spec import SpecError
    from irnn_search.search.validate import load_spec

    try:
        return load_spec(name, studies_dir=studies_dir)
    except SpecError as exc:
        raise _fail(str(exc)) from None


def _storage_error(exc: Exception, url: str) -> typer.Exit:
    from irnn_search.settings import mask_url

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _fail(
        f"cannot use the Optuna storage {mask_url(url)}: {mask_url(first)}",
        "check IRNN_SEARCH_STORAGE (host, port, database, user, password) or unset it for the embedded SQLite store",
    )


def _tracker(settings: Any, enabled: bool) -> Any:
    """The MLflow tracker of the configured store, or None when tracking is off."""
    if not enabled:
        return None
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from irnn_search.tracking import Tracker, TrackingError

    try:
        return Tracker(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    except TrackingError as exc:
        raise _fail(str(exc), "check IRNN_SEARCH_MLFLOW_URI, or pass --no-track") from None


def _ledger(settings: Any) -> Any:
    """Our experiment database; the embedded SQLite default is migrated on first use."""
    from irnn_search.db.migrate import DatabaseError
    from irnn_search.service.ledger import Ledger

    try:
        return Ledger(settings.db_url, auto_upgrade=settings.db is None)
    except DatabaseError as exc:
        raise _fail(str(exc)) from None


def _solved_cell(a: Any) -> str:
    """``3/12 @2,500``: trials that solved, of those started, and the best trial's step to solve."""
    if a.solved is None:
        return "–"
    at = f" @{a.steps_to_solve:,}" if a.steps_to_solve is not None else ""
    return f"{a.solved_count}/{a.started}{at}"


def _progress_table(spec: Any, studies: dict[str, Any], workers: int) -> Any:
    from rich import box
    from rich.table import Table

    from irnn_search.service.answer import answer, lines_for
    from irnn_search.service.budget import usage

    table = Table(title=f"{spec.name}: {spec.task} {spec.task_options}", title_justify="left", box=box.SIMPLE_HEAD)
    # Short headers: the table stays whole in an 80-column terminal.
    for col in ("model", "trials", "c/p/f", "run", f"best {spec.objective}", "solved", "ETA"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col != "model")
    lines = lines_for(spec)
    for study in studies.values():
        m = spec.model(study.user_attrs["model"])
        u = usage(study)
        a = answer(study, spec, lines)
        total = m.budget.trials
        eta = "–"
        if total and u.finished:
            per_trial = u.device_hours * 3600 / max(u.finished + u.running, 1)
            left = max(total - u.finished, 0)
            eta = f"{left * per_trial / max(workers, 1) / 60:.1f} min" if left else "done"
        table.add_row(
            study.user_attrs["model"],
            f"{u.finished}/{total if total else '∞'}",
            f"{u.complete}/{u.pruned}/{u.failed}",
            str(u.running),
            "–" if a.best_value is None else f"{a.best_value:.4g}",
            _solved_cell(a),
            eta,
        )
    return table


@app.command("launch")
def launch_cmd(
    spec_name: Annotated[
        str, typer.Argument(metavar="SPEC", help="a spec name (--studies-dir, then the built-in specs) or a .toml path")
    ],
    workers: Annotated[int, typer.Option(help="local worker processes", min=1)] = 1,
    run: Annotated[bool, typer.Option(help="run trials here; --no-run only registers the studies")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch threads per worker (default: IRNN_SEARCH_THREADS, else 1, or with --pack on CPU the "
            "worker's share of the cores)",
            min=1,
        ),
    ] = None,
    studies_dir: Annotated[
        str, typer.Option(help="folder of spec files, searched before the built-in specs (`irnn-search studies`)")
    ] = "studies",
    report: Annotated[bool, typer.Option(help="print the report (and write its plots) at the end")] = True,
    track: Annotated[bool, typer.Option(help="log runs, metrics and artifacts to MLflow")] = True,
    pack: Annotated[
        int, typer.Option(help="train up to K trials of a study at once as one batched computation", min=1)
    ] = 1,
) -> None:
    """Create or resume the studies of a spec (idempotent) and run them until their budgets are met."""
    from irnn_search.search.spec import SpecError
    from irnn_search.service.answer import lineages
    from irnn_search.service.pool import start_workers, stop_workers
    from irnn_search.service.studies import SearchError, close_tracking, open_studies
    from irnn_search.service.worker import WorkerOptions

    settings = _settings()
    spec = _load_spec(spec_name, studies_dir)
    if run:
        # The device and the data before any store is written: a machine that cannot run the
        # trials must not create (and then fail) them. --no-run only registers the studies, for
        # workers elsewhere, which check their own data when they start.
        from irnn_search.service.preflight import data_problem, device_problem

        if (why := device_problem(device) or data_problem(spec)) is not None:
            raise _fail(f"{spec.name}: {why}")
        from irnn_search.service.preflight import spec_memory_problem

        # every worker of this launch runs its trials (a pack of them) on this one device at once
        if (why := spec_memory_problem(spec, device, trials=workers * pack)) is not None:
            raise _fail(f"{spec.name}: {why}")
    _ensure_home(settings, checkpoints=run)
    # Every store is checked before any is written (a launch half registered in one store is
    # worse than none), and the error names the store that failed: Optuna's, MLflow (whose
    # embedded store creates its tables as the tracker opens it), then ours (the Ledger's own
    # read; the embedded one is migrated there, a local file).
    from irnn_search.service.storage import check_reachable
    from irnn_search.tracking import TrackingError

    try:
        check_reachable(settings.storage_url)
    except Exception as exc:
        raise _storage_error(exc, settings.storage_url) from None
    tracker = _tracker(settings, track)
    if tracker is not None:
        try:
            tracker.check()
        except TrackingError as exc:
            raise _fail(str(exc), "check IRNN_SEARCH_MLFLOW_URI, or pass --no-track") from None
    ledger = _ledger(settings)
    try:
        studies = open_studies(spec, settings.storage_url, tracker, max_lost=settings.max_lost_attempts)
    except (SearchError, SpecError) as exc:
        raise _fail(str(exc)) from None
    except TrackingError as exc:  # reachable a moment ago: the error names MLflow, not the storage
        raise _fail(str(exc), "check IRNN_SEARCH_MLFLOW_URI, or pass --no-track") from None
    except Exception as exc:  # an unreachable or wrong database
        raise _storage_error(exc, settings.storage_url) from None
    try:
        ledger.record_launch(spec, studies)
    except Exception as exc:
        raise _fail(f"cannot record the launch in the experiment database: {exc}") from None
    err = _console(stderr=True)
    # A re-queued attempt is the same setting again: count lineages, not trials.
    published = [
        lin for s in studies.values() for lin in lineages(s.get_trials(deepcopy=False)) if lin.source == "published"
    ]
    waiting = sum(lin.ended == "waiting" for lin in published)
    err.print(
        f"studies of [bold]{spec.name}[/]: {', '.join(studies)} "
        f"({len(published)} published settings, {waiting} still to run)"
    )
    if not run:
        err.print("registered; start workers with `irnn-search worker`")
        return
    # SIGINT or SIGTERM sent to this process alone (`timeout`, a scheduler, `docker stop`) is
    # passed on to the workers, which checkpoint and release their trials; a second one stops
    # waiting for them. Handlers go in before the workers start, so no signal finds them unset.
    import threading

    stopping, abort = threading.Event(), threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        (abort if stopping.is_set() else stopping).set()
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    options = WorkerOptions.from_settings(
        settings,
        studies=[s.study_name for s in studies.values()],
        device=device,
        threads=threads,
        pack=pack,
        track=tracker is not None,
        workers=workers,
    )
    procs = start_workers(options, workers=workers)
    from rich.live import Live

    try:
        with Live(_progress_table(spec, studies, workers), console=err, refresh_per_second=2) as live:
            while any(p.is_alive() for p in procs) and not stopping.wait(1.0):
                live.update(_progress_table(spec, studies, workers))
            live.update(_progress_table(spec, studies, workers))
        if stopping.is_set():
            signum = received[0]
            err.print(
                f"[yellow]{signal.Signals(signum).name}: stopping the workers (up to {settings.stop_s} s); the "
                "running trials checkpoint and `irnn-search launch` resumes them[/]",
                highlight=False,
            )
            killed = stop_workers(procs, signum, settings.stop_s, abort)
            if killed:
                err.print(
                    f"[yellow]killed {len(killed)} worker(s) that had not stopped; their trials are re-queued "
                    f"once their heartbeat is {settings.grace_s} s old, by the next worker[/]",
                    highlight=False,
                )
            raise typer.Exit(128 + signum)
        for p in procs:
            p.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if tracker is not None:
        close_tracking(studies.values(), tracker)
    if report:
        _report(spec, settings, "md", None)


def _report(spec: Any, settings: Any, fmt: str, out: str | None) -> None:
    from pathlib import Path

    from irnn_search.service.report import evaluate_best, render, rows_for, spec_studies
    from irnn_search.service.report_plots import plots

    for study in spec_studies(spec, settings.storage_url).values():
        result = evaluate_best(study)  # best validation, then test: once per best trial
        if result is not None:
            _ledger(settings).record_test(study.study_name, result["trial"], result["metrics"])
    rows = rows_for(spec, settings.storage_url)
    sys.stdout.write(render(rows, fmt, spec=spec))
    out_dir = Path(out) if out else settings.home / "reports" / spec.name
    written = plots(spec, settings.storage_url, out_dir)
    if fmt == "md":
        sys.stdout.write("\nPlots: " + ", ".join(str(p) for p in written) + "\n")


@app.command("report")
def report_cmd(
    spec_name: Annotated[
        str, typer.Argument(metavar="SPEC", help="a spec name (--studies-dir, then the built-in specs) or a .toml path")
    ],
    fmt: Annotated[str, typer.Option("--format", help="md | json | csv")] = "md",
    out: Annotated[str | None, typer.Option(help="folder for the PNG plots (default: <home>/reports/<spec>)")] = None,
    studies_dir: Annotated[
        str, typer.Option(help="folder of spec files, searched before the built-in specs (`irnn-search studies`)")
    ] = "studies",
) -> None:
    """Best per model vs the published settings and numbers, compute used, and plots."""
    from irnn_search.service.studies import SearchError

    if fmt not in ("md", "json", "csv"):
        raise _fail(f"--format must be md, json or csv; got {fmt!r}")
    settings = _settings()
    spec = _load_spec(spec_name, studies_dir)
    try:
        _report(spec, settings, fmt, out)
    except SearchError as exc:
        raise _fail(str(exc), f"launch it first: irnn-search launch {spec_name}") from None


@app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="print the studies and workers as JSON")] = False,
    watch: Annotated[
        float | None, typer.Option(help="redraw every SECONDS until Ctrl-C, like watch(1)", min=0.5)
    ] = None,
) -> None:
    """Every study on the configured storage: trials by state, best value, compute used; the
    workers alive (from their heartbeats) and what each is running."""
    if as_json and watch is not None:
        raise _fail("--json and --watch do not go together: --json prints once, for scripts")
    settings = _settings()
    if as_json:
        print(json.dumps(_status_data(settings), indent=2))
        return
    if watch is None:
        for part in _status_renderables(_status_data(settings)):
            _console().print(part)
        return
    import time

    from rich.console import Group
    from rich.live import Live

    def frame() -> Group:
        data = _status_data(settings)
        stamp = f"[dim]{time.strftime('%H:%M:%S')}, every {watch:g} s; Ctrl-C to stop[/]"
        return Group(*_status_renderables(data), stamp)

    # Ctrl-C sets a flag rather than raising KeyboardInterrupt: raised inside a garbage-collection
    # callback (SQLAlchemy's), Python reports it as "ignored" and the redraws would go on.
    import threading

    stopped = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    try:
        with Live(frame(), console=_console(), auto_refresh=False) as live:
            while not stopped.wait(watch):
                live.update(frame(), refresh=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _status_data(settings: Any) -> dict[str, Any]:
    """What ``status`` shows, as plain data: every study's usage, and the workers alive (None when
    our experiment database cannot be read)."""
    from irnn_search.service.answer import answer, lines_for
    from irnn_search.service.budget import usage
    from irnn_search.service.studies import load_studies, stored_spec

    try:
        studies = load_studies(settings.storage_url)
    except Exception as exc:
        raise _storage_error(exc, settings.storage_url) from None
    rows = []
    for name, study in sorted(studies.items()):
        u = usage(study)
        spec = stored_spec(study)
        a = answer(study, spec, lines_for(spec))  # what the trials reached, however they ended
        rows.append(
            {
                "study": name,
                "task": study.user_attrs.get("task"),
                "model": study.user_attrs.get("model"),
                "complete": u.complete,
                "pruned": u.pruned,
                "failed": u.failed,
                "running": u.running,
                "waiting": u.waiting,
                "best": a.best_value,
                "best_complete": u.best,
                "solved": a.solved,
                "solved_trials": a.solved_count,
                "started": a.started,
                "steps_to_solve": a.steps_to_solve,
                "direction": study.direction.name.lower(),
                "device_hours": round(u.device_hours, 6),
            }
        )
    workers: list[dict[str, Any]] | None = None
    if rows:
        try:
            alive = _ledger(settings).workers_alive()
        except typer.Exit:
            alive = None
        if alive is not None:
            workers = [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "device": w.device,
                    "study": w.current_study.study_name if w.current_study is not None else None,
                    "trial": w.current_trial_number if w.current_study is not None else None,
                    "heartbeat_at": w.heartbeat_at.isoformat(),
                }
                for w in alive
            ]
    return {"studies": rows, "workers": workers}


def _status_renderables(data: dict[str, Any]) -> list[Any]:
    from datetime import datetime

    from rich import box
    from rich.table import Table

    if not data["studies"]:
        return ["no studies yet: `irnn-search launch <spec>` creates them"]
    # A light box and short headers: the table stays whole in an 80-column terminal (the task is
    # in the title; a study's name starts with its spec's).
    tasks = sorted({r["task"] or "?" for r in data["studies"]})
    table = Table(
        title=f"studies of {', '.join(tasks)} (c/p/f: complete/pruned/failed; solved: trials @ step)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("study", "c/p/f", "run", "wait", "best", "solved", "dev-h"):
        table.add_column(col, justify="left" if col == "study" else "right", no_wrap=col != "study")
    for r in data["studies"]:
        solved = "–" if r["solved"] is None else f"{r['solved_trials']}/{r['started']}"
        if r["steps_to_solve"] is not None:
            solved += f" @{r['steps_to_solve']:,}"
        table.add_row(
            r["study"],
            f"{r['complete']}/{r['pruned']}/{r['failed']}",
            str(r["running"]),
            str(r["waiting"]),
            "–" if r["best"] is None else f"{r['best']:.4g}",
            solved,
            f"{r['device_hours']:.3f}",
        )
    parts: list[Any] = [table]
    if data["workers"] is None:
        return parts
    if not data["workers"]:
        return [*parts, "no worker alive"]
    workers = Table(title="workers alive (heartbeat in the last 30 s)", title_justify="left")
    for col in ("id", "host", "pid", "device", "current trial", "last heartbeat"):
        workers.add_column(col)
    for w in data["workers"]:
        current = "idle" if w["study"] is None else f"{w['study']} trial {w['trial']}"
        beat = datetime.fromisoformat(w["heartbeat_at"]).strftime("%H:%M:%S")
        workers.add_row(str(w["id"]), w["host"], str(w["pid"]), w["device"], current, beat)
    return [*parts, workers]


@app.command("worker")
def worker_cmd(
    study: Annotated[list[str] | None, typer.Option(help="only these studies (repeatable); default: all open")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(
            help="torch threads (default: IRNN_SEARCH_THREADS, else 1, or with --pack on CPU all the cores)", min=1
        ),
    ] = None,
    track: Annotated[bool, typer.Option(help="log runs, metrics and artifacts to MLflow")] = True,
    pack: Annotated[
        int, typer.Option(help="train up to K trials of a study at once as one batched computation", min=1)
    ] = 1,
) -> None:
    """Pull and run trials from the studies on the configured storage until their budgets are met.

    SIGTERM or Ctrl-C: the running trial checkpoints, is re-queued for any worker, and the worker
    exits 0. A trial of a worker that died is re-queued by the other workers' janitors.
    """
    import os
    import socket

    import torch

    from irnn_search.db.migrate import DatabaseError
    from irnn_search.service.studies import SearchError
    from irnn_search.service.worker import StorageUnavailable, WorkerOptions, serve
    from irnn_search.tracking import TrackingError

    settings = _settings()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise _fail(f"--device {device}: no CUDA device is available here", "use --device cpu")
    _ensure_home(settings, checkpoints=True)  # the embedded stores and checkpoints (a worker may start first)
    options = WorkerOptions.from_settings(
        settings, studies=study, device=device, threads=threads, pack=pack, track=track
    )
    err = _console(stderr=True)

    def on_ready(names: list[str], unfit: dict[str, str]) -> None:
        if unfit and not names:  # nothing this worker can run: say why once
            raise _fail(next(iter(unfit.values())))
        for name, why in unfit.items():
            err.print(
                f"[yellow]{name}: this worker takes none of its trials: {why}[/]", highlight=False, soft_wrap=True
            )
        what = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
        err.print(
            f"worker {socket.gethostname()}:{os.getpid()} on [bold]{device}[/] ({what}, {torch.get_num_threads()} "
            f"thread(s)){f', packs of up to {pack} trials' if pack > 1 else ''}; "
            f"studies: {', '.join(names) or 'none'}; "
            f"heartbeat {settings.heartbeat_s} s, lost after {settings.grace_s} s",
            highlight=False,
        )

    def on_stop(signum: int) -> None:
        err.print("[yellow]stopping after the current step; the trial is checkpointed and re-queued[/]")

    def on_start(trial: Any, params: dict[str, Any]) -> None:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        again = f" (attempt after trial {trial.user_attrs['retry_of']})" if "retry_of" in trial.user_attrs else ""
        line = f"{trial.study.study_name} trial {trial.number}: running on {device}{again}: {shown}"
        err.print(line, highlight=False)

    def on_trial(name: str, trial: Any) -> None:
        outcome = trial.user_attrs.get("outcome", trial.state.name.lower())
        value = "" if trial.value is None else f" value {trial.value:.4g}"
        reason = trial.user_attrs.get("reason", "")
        err.print(f"{name} trial {trial.number}: {outcome}{value} {reason}".rstrip(), highlight=False)

    try:
        served = serve(options, on_ready=on_ready, on_stop=on_stop, on_start=on_start, on_trial=on_trial)
    except SearchError as exc:
        raise _fail(str(exc)) from None
    except StorageUnavailable as exc:
        cause = exc.__cause__
        raise _storage_error(cause if isinstance(cause, Exception) else exc, settings.storage_url) from None
    except TrackingError as exc:
        raise _fail(str(exc), "check IRNN_SEARCH_MLFLOW_URI, or pass --no-track") from None
    except DatabaseError as exc:
        raise _fail(str(exc)) from None
    if not served.studies and not served.stopped:
        from irnn_search.settings import mask_url

        err.print(
            f"no studies on {mask_url(settings.storage_url)}"
            f"{' named ' + ', '.join(study) if study else ''}: create them with `irnn-search launch SPEC --no-run` "
            "(or point IRNN_SEARCH_STORAGE at the shared store)",
            highlight=False,
        )
        return
    err.print(f"{served.ran} trial(s) run; " + ("stopped" if served.stopped else "every budget is met"))


@app.command("dashboard")
def dashboard_cmd(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8080,
) -> None:
    """Start optuna-dashboard on the configured storage.

    The server runs in this process (optuna-dashboard's ``run_server``), so the storage URL, which
    holds the database password, never appears on a command line (``ps`` shows every user's).
    """
    from irnn_search.settings import mask_url

    settings = _settings()
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise _fail("optuna-dashboard is not installed", "pip install optuna-dashboard") from None
    import optuna

    url = settings.storage_url
    try:
        # An RDB storage creates Optuna's tables when they are missing, as the dashboard CLI does.
        storage = optuna.storages.RDBStorage(url) if "://" in url else url
    except Exception as exc:  # an unreachable or wrong database
        raise _storage_error(exc, url) from None
    _console(stderr=True).print(f"optuna-dashboard on http://{host}:{port} for {mask_url(url)}")
    run_server(storage, host=host, port=port)


db_app = typer.Typer(help="Migrate the experiment database (ours; Optuna and MLflow migrate their own).")
app.add_typer(db_app, name="db")


def _db_call(action: str, fn: Any, *args: Any) -> Any:
    from irnn_search.db.migrate import DatabaseError

    try:
        return fn(*args)
    except DatabaseError as exc:
        raise _fail(str(exc)) from None


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Upgrade the experiment database to a revision (default: the latest)."""
    from irnn_search.db.migrate import current, upgrade
    from irnn_search.settings import mask_url

    settings = _settings()
    _ensure_home(settings)
    _db_call("upgrade", upgrade, settings.db_url, revision)
    _console().print(f"{mask_url(settings.db_url)} at revision {_db_call('current', current, settings.db_url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. -1 or base")]) -> None:
    """Downgrade the experiment database (every revision is reversible)."""
    from irnn_search.db.migrate import current, downgrade
    from irnn_search.settings import mask_url

    settings = _settings()
    _db_call("downgrade", downgrade, settings.db_url, revision)
    _console().print(f"{mask_url(settings.db_url)} at revision {_db_call('current', current, settings.db_url)}")


@db_app.command("current")
def db_current() -> None:
    """Show the experiment database's revision and whether it matches the code."""
    from irnn_search.db.migrate import current, head
    from irnn_search.settings import mask_url

    settings = _settings()
    rev = _db_call("current", current, settings.db_url)
    latest = head()
    state = "up to date" if rev == latest else f"behind: run `irnn-search db upgrade` (head is {latest})"
    _console().print(f"{mask_url(settings.db_url)}: revision {rev or 'none'} ({state})")


@app.command("tasks")
def tasks_cmd(as_json: Annotated[bool, typer.Option("--json", help="machine-readable listing")] = False) -> None:
    """List the benchmark tasks and their options."""
    from irnn_search.tasks import TaskError, task_class, task_names

    rows = _registry_rows(
        task_names(),
        task_class,
        TaskError,
        lambda cls: {"metric": cls.metric, "direction": cls.direction, "batch_size": cls.default_batch_size},
    )
    _print_listing(rows, as_json, extra=("metric", "direction", "batch_size"))


@app.command("models")
def models_cmd(as_json: Annotated[bool, typer.Option("--json", help="machine-readable listing")] = False) -> None:
    """List the model families and their options."""
    from irnn_search.models import ModelError, model_class, model_names

    rows = _registry_rows(model_names(), model_class, ModelError, lambda cls: {})
    _print_listing(rows, as_json, extra=())


def _registry_rows(
    names: Any, load: Callable[[str], Any], error: type[Exception], extra: Callable[[Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    """One listing row per registered task or model family; a broken plugin is reported on stderr
    and the others are still listed."""
    from irnn_search.options import describe_options

    rows = []
    for name in names:
        try:
            cls = load(name)
        except error as exc:
            _console(stderr=True).print(f"[red]{exc}[/]")
            continue
        options = [{"name": n, "type": t, "default": d, "help": h} for n, t, d, h in describe_options(cls.config_cls)]
        rows.append({"name": name, "description": cls.description, **extra(cls), "options": options})
    return rows


def _print_listing(rows: list[dict[str, Any]], as_json: bool, extra: tuple[str, ...]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    for row in rows:
        facts = ", ".join(f"{k} {row[k]}" for k in extra)
        console.print(
            f"[bold cyan]{row['name']}[/]  {escape(row['description'])}" + (f"  [dim]({facts})[/]" if facts else "")
        )
        options = Table(box=None, show_header=False, padding=(0, 2), pad_edge=False)
        options.add_column(style="green", no_wrap=True)
        options.add_column(no_wrap=True, max_width=32, overflow="ellipsis")
        options.add_column(style="dim")
        for o in row["options"]:
            options.add_row(f"  {o['name']}", escape(repr(o["default"])), escape(o["help"]))
        console.print(options)
        console.print()


studies_app = typer.Typer(
    help="List the built-in study specs, or copy one out to edit (`studies copy NAME FILE`). At launch, "
    "NAME.toml in --studies-dir (default ./studies) takes precedence over the built-in spec NAME.",
    invoke_without_command=True,
)
app.add_typer(studies_app, name="studies")
app.add_typer(__import__("irnn_search.dev.cli", fromlist=["servers_app"]).servers_app, name="servers")  # dev tooling


@studies_app.callback()
def studies_list(ctx: typer.Context) -> None:
    """One line per built-in spec: its name and description."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape

    from irnn_search.bundled import builtin_specs, spec_description

    specs = builtin_specs()
    width = max((len(name) for name in specs), default=0)
    console = _console()
    for name, path in specs.items():
        line = f"[bold cyan]{name:<{width}}[/]  {escape(spec_description(path))}"
        console.print(line, highlight=False, soft_wrap=True)


@studies_app.command("copy")
def studies_copy(
    name: Annotated[str, typer.Argument(help="a built-in spec (see `irnn-search studies`)")],
    dest: Annotated[str, typer.Argument(metavar="FILE", help="where to write it, e.g. my.toml (never overwritten)")],
) -> None:
    """Copy a built-in spec to FILE, comments included, to edit and launch with `irnn-search launch FILE`."""
    from pathlib import Path

    from irnn_search.bundled import builtin_specs

    specs = builtin_specs()
    if name not in specs:
        raise _fail(f"no built-in spec named {name!r} (allowed: {', '.join(specs)})")
    target = Path(dest)
    try:
        with target.open("xb") as out:  # "x": refuses an existing file, even one created meanwhile
            out.write(specs[name].read_bytes())
    except FileExistsError:
        raise _fail(f"{dest} already exists: choose another FILE or remove it first") from None
    except OSError as exc:
        raise _fail(f"cannot write {dest}: {exc.strerror or exc}") from None
    _console().print(f"wrote {dest}; edit it, then `irnn-search launch {dest}`", highlight=False)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="print the version and the git revision it was built from, and exit")
    ] = False,
) -> None:
    if version:
        from irnn_search.version import code_version

        typer.echo(code_version())
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def main() -> None:
    app()
