"""The Typer app, its root callback, and the helpers every command shares: the consoles, the one
way a command fails (``_fail``), and the settings, stores and specs opened with their errors
turned into that failure.

The helpers keep their leading underscore: they are the CLI package's own, not an API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from irnn_search.search.spec import StudySpec
    from irnn_search.service.ledger import Ledger
    from irnn_search.settings import Settings
    from irnn_search.tracking import Tracker

app = typer.Typer(
    name="irnn-search",
    help="Hyperparameter search for long-memory recurrent networks (IRNN, expRNN, nnRNN, asRNN, LSTM, ...).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
TRACKING_HINT = "check IRNN_SEARCH_MLFLOW_URI, or pass --no-track"


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def _fail(message: str, hint: str | None = None) -> typer.Exit:
    console = _console(stderr=True)
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        console.print(hint, style="dim", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _settings() -> Settings:
    from irnn_search.settings import Settings

    try:
        return Settings.from_env()
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _ensure_home(settings: Settings, *, checkpoints: bool = False) -> None:
    from irnn_search.settings import SettingsError

    try:
        settings.ensure_home(checkpoints=checkpoints)
    except SettingsError as exc:
        raise _fail(str(exc)) from None


def _load_spec(name: str, studies_dir: str) -> StudySpec:
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


def _tracker(settings: Settings, enabled: bool) -> Tracker | None:
    """The MLflow tracker of the configured store, or None when tracking is off."""
    if not enabled:
        return None
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from irnn_search.tracking import Tracker, TrackingError

    try:
        return Tracker(settings.mlflow_tracking_uri, settings.mlflow_artifact_root)
    except TrackingError as exc:
        raise _fail(str(exc), TRACKING_HINT) from None


def _ledger(settings: Settings) -> Ledger:
    """Our experiment database; the embedded SQLite default is migrated on first use."""
    from irnn_search.db.migrate import DatabaseError
    from irnn_search.service.ledger import Ledger

    try:
        return Ledger(settings.db_url, auto_upgrade=settings.db is None)
    except DatabaseError as exc:
        raise _fail(str(exc)) from None


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
