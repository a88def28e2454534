"""Optuna's gRPC storage proxy in front of the PostgreSQL storage (compose profile ``large``).

Many workers then hold one gRPC connection each to this process instead of a pool of database
connections. Reads ``IRNN_SEARCH_STORAGE`` (the PostgreSQL URL) and listens on
``IRNN_GRPC_PROXY_HOST`` (default 127.0.0.1: the proxy has no authentication, so it is reachable
from this host only unless told otherwise) port ``IRNN_GRPC_PROXY_PORT`` (default 13000). The
compose service sets the host to 0.0.0.0 inside its container and publishes the port on
``IRNN_BIND`` (default 127.0.0.1) of the machine; see docs/deploy.md for exposing it safely.
Needs ``grpcio`` (installed in the image by docker/Dockerfile).
"""

from __future__ import annotations

import os
import sys

import optuna


def main() -> None:
    url = os.environ.get("IRNN_SEARCH_STORAGE")
    if not url:
        sys.exit("IRNN_SEARCH_STORAGE must name the Optuna storage (a PostgreSQL URL)")
    host = os.environ.get("IRNN_GRPC_PROXY_HOST") or "127.0.0.1"
    port = int(os.environ.get("IRNN_GRPC_PROXY_PORT", "13000"))
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    print(f"Optuna gRPC storage proxy on {host}:{port}", flush=True)
    optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)


if __name__ == "__main__":
    main()
