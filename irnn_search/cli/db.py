"""``irnn-search db``: migrate the experiment database (ours; Optuna and MLflow migrate their own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from irnn_search.cli.app import _console, _ensure_home, _fail, _settings, app

T = TypeVar("T")

db_app = typer.Typer(help="Migrate the experiment database (ours; Optuna and MLflow migrate their own).")
app.add_typer(db_app, name="db")


def _db_call(fn: Callable[..., T], *args: str) -> T:
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
    _db_call(upgrade, settings.db_url, revision)
    _console().print(f"{mask_url(settings.db_url)} at revision {_db_call(current, settings.db_url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. -1 or base")]) -> None:
    """Downgrade the experiment database (every revision is reversible)."""
    from irnn_search.db.migrate import current, downgrade
    from irnn_search.settings import mask_url

    settings = _settings()
    _db_call(downgrade, settings.db_url, revision)
    _console().print(f"{mask_url(settings.db_url)} at revision {_db_call(current, settings.db_url)}")


@db_app.command("current")
def db_current() -> None:
    """Show the experiment database's revision and whether it matches the code."""
    from irnn_search.db.migrate import current, head
    from irnn_search.settings import mask_url

    settings = _settings()
    rev = _db_call(current, settings.db_url)
    latest = head()
    state = "up to date" if rev == latest else f"behind: run `irnn-search db upgrade` (head is {latest})"
    _console().print(f"{mask_url(settings.db_url)}: revision {rev or 'none'} ({state})")
