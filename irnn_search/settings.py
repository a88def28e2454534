"""The one settings object, read from ``IRNN_SEARCH_*`` environment variables.

Only the CLI and the service layer read it; models, tasks and the training loop take explicit
arguments. With nothing set, every store lives under one state folder (``./.irnn-search``):
Optuna, our experiment database and MLflow on SQLite files, MLflow artifacts and trial
checkpoints in folders beside them. Point ``IRNN_SEARCH_STORAGE`` / ``IRNN_SEARCH_DB`` /
``IRNN_SEARCH_MLFLOW_URI`` at servers to share the work between machines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from irnn_search.masking import mask_secrets

PREFIX = "IRNN_SEARCH_"


mask_url = mask_secrets  # the one masking rule (irnn_search.masking)


@dataclass(frozen=True)
class Settings:
    #: the state folder of the embedded stores (and of checkpoints)
    home: Path = Path(".irnn-search")
    #: Optuna storage URL (default: SQLite under home)
    storage: str | None = None
    #: our experiment database URL (default: SQLite under home)
    db: str | None = None
    #: MLflow tracking URI (default: SQLite under home, artifacts in home/mlartifacts)
    mlflow_uri: str | None = None
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
            home=path("HOME") or Path(".irnn-search"),
            storage=env.get(PREFIX + "STORAGE") or None,
            db=env.get(PREFIX + "DB") or None,
            mlflow_uri=env.get(PREFIX + "MLFLOW_URI") or None,
            data_dir=path("DATA_DIR"),
            cache_dir=path("CACHE_DIR"),
            threads=int(threads) if threads else None,
        )

    def _sqlite(self, name: str) -> str:
        return f"sqlite:///{(self.home / name).resolve()}"

    @property
    def storage_url(self) -> str:
        return self.storage or self._sqlite("optuna.db")

    @property
    def db_url(self) -> str:
        return self.db or self._sqlite("irnn.db")

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_uri or self._sqlite("mlflow.db")

    @property
    def mlflow_artifact_root(self) -> str | None:
        """Where a local MLflow store keeps artifacts; a server decides for itself."""
        return None if self.mlflow_uri else str((self.home / "mlartifacts").resolve())

    @property
    def checkpoint_root(self) -> Path:
        return self.home / "checkpoints"

    def ensure_home(self) -> None:
        """Create the state folder when any store is embedded in it."""
        if not (self.storage and self.db and self.mlflow_uri):
            self.home.mkdir(parents=True, exist_ok=True)
