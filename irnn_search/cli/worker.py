"""``irnn-search worker``: pull and run trials from the studies on the configured storage."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from irnn_search.cli.app import _console, _ensure_home, _fail, _settings, _storage_error, app


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
