"""Optuna's gRPC storage proxy in front of the PostgreSQL storage (compose profile ``large``).

Many workers then hold one gRPC connection each to this process instead of a pool of database
connections. Reads ``IRNN_SEARCH_STORAGE`` (the PostgreSQL URL) and listens on
``IRNN_GRPC_PROXY_PORT`` (default 13000) on all interfaces of its container. Needs ``grpcio``
(installed in the image by docker/Dockerfile).
"""

from __future__ import annotations

import os
import sys

import optuna


def main() -> None:
    url = os.environ.get("IRNN_SEARCH_STORAGE")
    if not url:
        sys.exit("IRNN_SEARCH_STORAGE must name the Optuna storage (a PostgreSQL URL)")
    port = int(os.environ.get("IRNN_GRPC_PROXY_PORT", "13000"))
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    print(f"Optuna gRPC storage proxy on 0.0.0.0:{port}", flush=True)
    optuna.storages.run_grpc_proxy_server(storage, host="0.0.0.0", port=port)


if __name__ == "__main__":
    main()
