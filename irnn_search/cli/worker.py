"""``irnn-search worker``: pull and run trials from the studies on the configured storage."""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from irnn_search.cli.app import _console, _ensure_home, _fail, _ledger, _settings, _storage_error, _tracker, app


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
    import threading

    import torch

    from irnn_search.service.search import SearchError, default_threads, open_for_work, work
    from irnn_search.tracking import worker_http_defaults

    settings = _settings()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise _fail(f"--device {device}: no CUDA device is available here", "use --device cpu")
    torch.set_num_threads(threads or settings.threads or default_threads(device, pack))
    _ensure_home(settings, checkpoints=True)  # the embedded stores and checkpoints (a worker may start first)
    if track:
        worker_http_defaults()
    tracker = _tracker(settings, track)
    ledger = _ledger(settings)
    try:
        studies, janitor = open_for_work(
            settings.storage_url,
            study,
            stream=os.getpid(),
            heartbeat_s=settings.heartbeat_s,
            grace_s=settings.grace_s,
            tracker=tracker,
            ledger=ledger,
            retry_s=settings.db_retry_s,
            max_lost=settings.max_lost_attempts,
        )
    except SearchError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:
        raise _storage_error(exc, settings.storage_url) from None
    from irnn_search.service.preflight import unfit_studies
    from irnn_search.service.search import stored_spec

    unfit = unfit_studies({n: stored_spec(s) for n, s in studies.items()}, device)
    if studies and len(unfit) == len(studies):  # nothing this worker can run: say why once
        raise _fail(next(iter(unfit.values())))
    err = _console(stderr=True)
    for name, why in unfit.items():
        err.print(f"[yellow]{name}: this worker takes none of its trials: {why}[/]", highlight=False, soft_wrap=True)
        del studies[name]
    what = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    err.print(
        f"worker {socket.gethostname()}:{os.getpid()} on [bold]{device}[/] ({what}, {torch.get_num_threads()} "
        f"thread(s)){f', packs of up to {pack} trials' if pack > 1 else ''}; studies: {', '.join(studies) or 'none'}; "
        f"heartbeat {settings.heartbeat_s} s, "
        f"lost after {settings.grace_s} s",
        highlight=False,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        err.print("[yellow]stopping after the current step; the trial is checkpointed and re-queued[/]")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

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
        ran = work(
            studies,
            device=device,
            checkpoint_root=settings.checkpoint_root.resolve(),
            stop=stop,
            on_trial=on_trial,
            on_start=on_start,
            tracker=tracker,
            ledger=ledger,
            janitor=janitor,
            pack=pack,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not studies and not stop.is_set():
        from irnn_search.settings import mask_url

        err.print(
            f"no studies on {mask_url(settings.storage_url)}"
            f"{' named ' + ', '.join(study) if study else ''}: create them with `irnn-search launch SPEC --no-run` "
            "(or point IRNN_SEARCH_STORAGE at the shared store)",
            highlight=False,
        )
        return
    err.print(f"{ran} trial(s) run; " + ("stopped" if stop.is_set() else "every budget is met"))
