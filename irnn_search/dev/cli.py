"""``irnn-search servers up|down``: the local test servers as sub-commands of the main CLI.

This module imports typer alone; the servers are imported inside the commands, so registering the
sub-app costs the runtime commands nothing.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

servers_app = typer.Typer(
    help="Start or stop local PostgreSQL, MLflow and optuna-dashboard servers on free 127.0.0.1 ports "
    "(tests, benchmarks, CI, and trying the shared mode on one machine).",
    no_args_is_help=True,
)

Folder = Annotated[str, typer.Option("--dir", help="state folder (data, logs, pidfiles, env.sh)")]


def _say(line: str) -> None:
    print(line, flush=True)


def _error(message: str) -> typer.Exit:
    from irnn_search.masking import mask_secrets

    print(f"error: {mask_secrets(message)}", file=sys.stderr)
    return typer.Exit(1)


@servers_app.command("up")
def servers_up(
    folder: Folder,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="also an MLflow tracking server")] = False,
    dashboard: Annotated[
        bool, typer.Option("--dashboard", help="also optuna-dashboard on the optuna database")
    ] = False,
    no_fsync: Annotated[
        bool, typer.Option("--no-fsync", help="faster PostgreSQL without crash safety (tests, CI)")
    ] = False,
) -> None:
    """Start the servers, write DIR/env.sh and leave them running."""
    from irnn_search.dev.servers import ServerError, up

    try:
        up(folder, mlflow=mlflow, dashboard=dashboard, fsync=not no_fsync, say=_say)
    except ServerError as exc:
        raise _error(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@servers_app.command("down")
def servers_down(folder: Folder) -> None:
    """Stop the servers of DIR (those not running are skipped)."""
    from irnn_search.dev.servers import ServerError, down

    try:
        down(folder, say=_say)
    except ServerError as exc:
        raise _error(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
