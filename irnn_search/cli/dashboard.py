"""``irnn-search dashboard``: optuna-dashboard on the configured storage."""

from __future__ import annotations

from typing import Annotated

import typer

from irnn_search.cli.app import _console, _fail, _settings, _storage_error, app


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
