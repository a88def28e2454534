"""Real local servers on free 127.0.0.1 ports: PostgreSQL, an MLflow tracking server, optuna-dashboard.

For tests, benchmarks, CI, and for trying the shared (server) mode on one machine::

    irnn-search servers up --dir /tmp/irnn-servers --mlflow --dashboard
    source /tmp/irnn-servers/env.sh        # IRNN_SEARCH_STORAGE, IRNN_SEARCH_DB, IRNN_SEARCH_MLFLOW_URI, ...
    irnn-search db upgrade
    irnn-search launch adding-smoke --workers 2
    irnn-search servers down --dir /tmp/irnn-servers

- **PostgreSQL** (``Postgres``): ``initdb`` into ``<folder>/data`` with one password-protected
  superuser role (``irnn``, SCRAM, on TCP and on the unix socket), listening on 127.0.0.1 only,
  its socket folder inside the folder. PostgreSQL refuses to run as root: as root, the folder is
  given to the ``postgres`` user and ``initdb``/``postgres`` run as that user. The postmaster is
  started directly (not by ``pg_ctl``, which puts it in a session of its own), so it stays in the
  caller's process group, and a cleanup that kills the group takes it too.
- **MLflow** (``MlflowServer``): ``mlflow server`` on a PostgreSQL database, one worker, job
  execution off, with **proxied artifacts** (``--serve-artifacts --artifacts-destination DIR``):
  new experiments get ``mlflow-artifacts:/`` locations, so a worker on another machine uploads
  its checkpoints and plots over HTTP through the server instead of writing to a path that only
  exists on the server's disk.
- **optuna-dashboard** (``Dashboard``) on a storage URL, with the stdlib ``wsgiref`` server.

Every server keeps its state in its own folder (``server.json``, a pidfile, a log), so another
process can ``attach`` to it and stop or restart it (``down`` does). Servers created here are
stopped by a finalizer when this process exits, unless ``detach()`` was called (``up`` does, so
the servers outlive it); an attached server is never stopped by a finalizer, even if restarted
here. Passwords go into URLs but never into our messages: URLs are masked with
:func:`irnn_search.masking.mask_secrets`, and passwords and storage URLs reach the server
processes through their environment, never their command lines.

This package imports only the standard library (``psycopg`` is imported when a database is created).

- ``process``: ports, processes, private files (``ServerError``, ``free_port``, ``reachable_tempdir``);
- ``postgres``: ``Postgres`` and ``find_postgres_bindir``;
- ``http``: ``MlflowServer`` and ``Dashboard``;
- ``stack``: ``up``, ``down``, ``running``, ``attached`` (a whole stack in one folder);
- ``cli``: the ``irnn-search servers`` sub-commands.
"""

from irnn_search.dev.servers.http import Dashboard, MlflowServer
from irnn_search.dev.servers.postgres import Postgres, find_postgres_bindir
from irnn_search.dev.servers.process import HOST, ServerError, free_port, port_in_use, reachable_tempdir
from irnn_search.dev.servers.stack import attached, down, running, up

__all__ = [
    "HOST",
    "Dashboard",
    "MlflowServer",
    "Postgres",
    "ServerError",
    "attached",
    "down",
    "find_postgres_bindir",
    "free_port",
    "port_in_use",
    "reachable_tempdir",
    "running",
    "up",
]
