"""``irnn-search status``: every study on the configured storage and the workers alive, once, as
JSON, or redrawn like watch(1)."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from irnn_search.cli.app import _console, _fail, _ledger, _settings, _storage_error, app

if TYPE_CHECKING:
    from rich.console import RenderableType

    from irnn_search.service.ledger import Ledger
    from irnn_search.service.status import Status
    from irnn_search.settings import Settings


def _ledger_or_none(settings: Settings) -> Ledger | None:
    """Our experiment database, or None (its error printed) when it cannot be opened: the studies
    are still shown, without the workers."""
    try:
        return _ledger(settings)
    except typer.Exit:
        return None


def _status(settings: Settings) -> Status:
    from irnn_search.service.status import StorageUnreadable, status_data

    try:
        return status_data(settings.storage_url, ledger=lambda: _ledger_or_none(settings))
    except StorageUnreadable as exc:
        raise _storage_error(exc.cause, settings.storage_url) from None


def _status_renderables(data: Status) -> list[RenderableType]:
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
    parts: list[RenderableType] = [table]
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
        print(json.dumps(_status(settings), indent=2))
        return
    if watch is None:
        for part in _status_renderables(_status(settings)):
            _console().print(part)
        return
    import time

    from rich.console import Group
    from rich.live import Live

    def frame() -> Group:
        data = _status(settings)
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
