"""The one settings object, read from ``IRNN_SEARCH_*`` environment variables.

Only the CLI and the service layer read it; models, tasks and the training loop take explicit
arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "IRNN_SEARCH_"


@dataclass(frozen=True)
class Settings:
    #: real datasets are read from here when given (never downloaded into it)
    data_dir: Path | None = None
    #: downloads land here (default ~/.cache/irnn-search)
    cache_dir: Path | None = None
    #: torch intra-op threads per process; None = torch's default
    threads: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(PREFIX + name)
            return Path(value).expanduser() if value else None

        threads = env.get(PREFIX + "THREADS")
        if threads is not None and not threads.strip().isdigit():
            raise ValueError(f"{PREFIX}THREADS must be a positive integer, got {threads!r}")
        return cls(
            data_dir=path("DATA_DIR"),
            cache_dir=path("CACHE_DIR"),
            threads=int(threads) if threads else None,
        )
