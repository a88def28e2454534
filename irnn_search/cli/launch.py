"""``irnn-search launch``: create or resume the studies of a spec, run them here with a live
progress table, then print the report."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated

import typer

from irnn_search.cli.app import (
    TRACKING_HINT,
    _console,
    _ensure_home,
    _fail,
    _ledger,
    _load_spec,
    _settings,
    _storage_error,
    _tracker,
    app,
)

if TYPE_CHECKING:
    import optuna
    from rich.console import Console
    from rich.table import Table

    from irnn_search.search.spec import StudySpec
    from irnn_search.service.answer import Answer
    from irnn_search.service.status import ModelProgress
    from irnn_search.settings import Settings
    from irnn_search.tracking import Tracker


def _solved_cell(a: Answer) -> str:
    """``3/12 @2,500``: trials that solved, of those started, and the best trial's step to solve."""
    if a.solved is None:
        return "–"
    at = f" @{a.steps_to_solve:,}" if a.steps_to_solve is not None else ""
    return f"{a.solved_count}/{a.started}{at}"


def _eta_cell(p: ModelProgress) -> str:
    if p.trials_left is None:
        return "–"
    return f"{p.eta_min:.1f} min" if p.trials_left else "done"


def _progress_table(spec: StudySpec, studies: dict[str, optuna.Study], workers: int) -> Table:
    from rich import box
    from rich.table import Table

    from irnn_search.service.status import progress

    table = Table(title=f"{spec.name}: {spec.task} {spec.task_options}", title_justify="left", box=box.SIMPLE_HEAD)
    # Short headers: the table stays whole in an 80-column terminal.
    for col in ("model", "trials", "c/p/f", "run", f"best {spec.objective}", "solved", "ETA"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col != "model")
    for p in progress(spec, studies, workers):
        u, a = p.usage, p.answer
        table.add_row(
            p.model,
            f"{u.finished}/{p.budget if p.budget else '∞'}",
            f"{u.complete}/{u.pruned}/{u.failed}",
            str(u.running),
            "–" if a.best_value is None else f"{a.best_value:.4g}",
            _solved_cell(a),
            _eta_cell(p),
        )
    return table


def _open_stores(spec: StudySpec, settings: Settings, track: bool) -> tuple[Tracker | None, dict[str, optuna.Study]]:
    """The tracker (None with --no-track) and the spec's studies, created or resumed, with the
    launch recorded in our experiment database.

    Every store is checked before any is written (a launch half registered in one store is worse
    than none), and the error names the store that failed: Optuna's, MLflow (whose embedded store
    creates its tables as the tracker opens it), then ours (the Ledger's own read; the embedded
    one is migrated there, a local file).
    """
    from irnn_search.search.spec import SpecError
    from irnn_search.service.storage import check_reachable
    from irnn_search.service.studies import SearchError, open_studies
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
            raise _fail(str(exc), TRACKING_HINT) from None
    ledger = _ledger(settings)
    try:
        studies = open_studies(spec, settings.storage_url, tracker, max_lost=settings.max_lost_attempts)
    except (SearchError, SpecError) as exc:
        raise _fail(str(exc)) from None
    except TrackingError as exc:  # reachable a moment ago: the error names MLflow, not the storage
        raise _fail(str(exc), TRACKING_HINT) from None
    except Exception as exc:  # an unreachable or wrong database
        raise _storage_error(exc, settings.storage_url) from None
    try:
        ledger.record_launch(spec, studies)
    except Exception as exc:
        raise _fail(f"cannot record the launch in the experiment database: {exc}") from None
    return tracker, studies


def _run_workers(
    spec: StudySpec,
    settings: Settings,
    studies: dict[str, optuna.Study],
    err: Console,
    *,
    workers: int,
    device: str,
    threads: int | None,
    pack: int,
    tracking: bool,
) -> None:
    """Run the studies in local worker processes under a live progress table, until their
    budgets are met or a signal stops them (then exit 128 + its number)."""
    import threading

    from rich.live import Live

    from irnn_search.service.pool import start_workers, stop_workers
    from irnn_search.service.worker import WorkerOptions

    # SIGINT or SIGTERM sent to this process alone (`timeout`, a scheduler, `docker stop`) is
    # passed on to the workers, which checkpoint and release their trials; a second one stops
    # waiting for them. Handlers go in before the workers start, so no signal finds them unset.
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
        track=tracking,
        workers=workers,
    )
    procs = start_workers(options, workers=workers)
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
    from irnn_search.cli.report import _report  # here, not above: `report` is listed after `launch`
    from irnn_search.service.status import published_progress
    from irnn_search.service.studies import close_tracking

    settings = _settings()
    spec = _load_spec(spec_name, studies_dir)
    if run:
        # The device and the data before any store is written: a machine that cannot run the
        # trials must not create (and then fail) them. --no-run only registers the studies, for
        # workers elsewhere, which check their own data when they start.
        from irnn_search.service.preflight import launch_problem

        # every worker of this launch runs its trials (a pack of them) on this one device at once
        if (why := launch_problem(spec, device, trials=workers * pack)) is not None:
            raise _fail(f"{spec.name}: {why}")
    _ensure_home(settings, checkpoints=run)
    tracker, studies = _open_stores(spec, settings, track)
    err = _console(stderr=True)
    published, waiting = published_progress(studies)
    err.print(
        f"studies of [bold]{spec.name}[/]: {', '.join(studies)} "
        f"({published} published settings, {waiting} still to run)"
    )
    if not run:
        err.print("registered; start workers with `irnn-search worker`")
        return
    _run_workers(
        spec,
        settings,
        studies,
        err,
        workers=workers,
        device=device,
        threads=threads,
        pack=pack,
        tracking=tracker is not None,
    )
    if tracker is not None:
        close_tracking(studies.values(), tracker)
    if report:
        _report(spec, settings, "md", None)
