"""The ``irnn-search`` command line.

Commands are thin: they parse options, call the service layer and render results. torch and the
package's heavy modules are imported inside the commands, so ``--help`` is instant.

One module per command group; importing each registers its commands on ``app``, in the order
``--help`` lists them.
"""

from irnn_search.cli import train, launch, report, confirm, status, worker, dashboard, db, listings  # noqa: F401, I001
from irnn_search.cli.app import EXIT_DIVERGED, EXIT_INTERRUPTED, app
from irnn_search.dev.cli import servers_app

# Dev tooling (local PostgreSQL / MLflow / dashboard for tests and trying shared mode), listed last;
# its servers are imported only when one of its commands runs.
app.add_typer(servers_app, name="servers")

__all__ = ["EXIT_DIVERGED", "EXIT_INTERRUPTED", "app", "main"]


def main() -> None:
    app()
