"""The one settings object, read from ``IRNN_SEARCH_*`` environment variables.

Only the CLI and the service layer read it; models, tasks and the training loop take explicit
arguments. With nothing set, every store lives under one state folder (``./.irnn-search``):
Optuna, our experiment database and MLflow on SQLite files, MLflow artifacts and trial
checkpoints in folders beside them. Point ``IRNN_SEARCH_STORAGE`` / ``IRNN_SEARCH_DB`` /
``IRNN_SEARCH_MLFLOW_URI`` at servers to share the work between machines.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from irnn_search.masking import mask_secrets

PREFIX = "IRNN_SEARCH_"
#: seconds between heartbeats: a running trial's (Optuna's storage) and a worker's (our database)
HEARTBEAT_S = 10
#: seconds without a heartbeat after which a running trial counts as lost (3x the heartbeat)
GRACE_S = 30


mask_url = mask_secrets  # the one masking rule (irnn_search.masking)


class SettingsError(ValueError):
    """A setting is invalid or names a place that cannot be used; the message says which and the fix."""


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
    #: seconds between a running trial's heartbeats
    heartbeat_s: int = HEARTBEAT_S
    #: a running trial with no heartbeat for this long is failed and re-queued (its worker died)
    grace_s: int = GRACE_S
    #: how long storage calls are retried while the database connection is lost (a restart)
    db_retry_s: int = 120
    #: attempts of one trial whose worker died before the trial is failed for good (a trial that
    #: kills its worker, e.g. out of memory, would otherwise crash-loop a pool for ever)
    max_lost_attempts: int = 3
    #: seconds ``launch`` waits for its workers to checkpoint and exit after SIGINT/SIGTERM before
    #: it kills them: under Kubernetes' default 30 s grace period (``docker stop`` waits 10 s: set
    #: ``stop_grace_period`` to more than this)
    stop_s: int = 25

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(PREFIX + name)
            return Path(value).expanduser() if value else None

        def count(name: str, default: int | None, minimum: int = 1) -> int | None:
            value = env.get(PREFIX + name)
            if value is None or value == "":
                return default
            if not value.strip().isdigit() or int(value) < minimum:
                raise ValueError(f"{PREFIX}{name} must be an integer >= {minimum}, got {value!r}")
            return int(value)

        threads = count("THREADS", None)
        heartbeat = count("HEARTBEAT_S", cls.heartbeat_s)
        grace = count("GRACE_S", max(cls.grace_s, 3 * (heartbeat or cls.heartbeat_s)))
        assert heartbeat is not None and grace is not None
        if grace <= heartbeat:
            raise ValueError(
                f"{PREFIX}GRACE_S ({grace}) must be longer than {PREFIX}HEARTBEAT_S ({heartbeat}), "
                "or live trials would be declared lost; 3x is a safe choice"
            )
        return cls(
            home=path("HOME") or Path(".irnn-search"),
            storage=env.get(PREFIX + "STORAGE") or None,
            db=env.get(PREFIX + "DB") or None,
            mlflow_uri=env.get(PREFIX + "MLFLOW_URI") or None,
            data_dir=path("DATA_DIR"),
            cache_dir=path("CACHE_DIR"),
            threads=threads,
            heartbeat_s=heartbeat,
            grace_s=grace,
            db_retry_s=count("DB_RETRY_S", cls.db_retry_s, minimum=0) or 0,
            max_lost_attempts=count("MAX_LOST_ATTEMPTS", cls.max_lost_attempts) or cls.max_lost_attempts,
            stop_s=count("STOP_S", cls.stop_s) or cls.stop_s,
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

    def ensure_home(self, *, checkpoints: bool = False) -> None:
        """Create the state folder when any store is embedded in it (or, with ``checkpoints``, when
        trials will write their checkpoints there) and check that a file can be written in it.

        Raises:
            SettingsError: the folder cannot be created (a regular file in the way, no permission)
                or written (read-only); nothing is created then.
        """
        if self.storage and self.db and self.mlflow_uri and not checkpoints:
            return
        existed = self.home.is_dir()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".irnn-search-write-check-", dir=self.home)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            what = "write in" if existed else "create"
            raise SettingsError(
                f"{PREFIX}HOME {self.home}: cannot {what} this folder ({exc.strerror or exc}); point "
                f"{PREFIX}HOME at a folder this user can create and write, or fix its permissions"
            ) from None
