"""Artifact transfer: what a trial uploads (config, plots, checkpoints) and fetching the checkpoint
a resumed attempt starts from, following ``irnn.resumed_from`` back through earlier attempts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from irnn_search.masking import mask_secrets
from irnn_search.tracking.names import TAG_RESUMED_FROM
from irnn_search.tracking.outbox import Op, Text, Upload

log = logging.getLogger(__name__)


def artifact_ops(
    run_id: str,
    *,
    config: Mapping[str, Any] | None = None,
    files: Iterable[str | Path] = (),
    checkpoint: str | Path | None = None,
) -> list[Op]:
    """The uploads of ``Tracker.log_artifacts``: ``config.json``, ``files`` at the root and
    ``checkpoint`` under ``checkpoints/``.

    Raises:
        FileNotFoundError: a file does not exist (checked before anything is queued).
    """
    uploads = [Upload(run_id, Path(f), None) for f in files]
    if checkpoint is not None:
        uploads.append(Upload(run_id, Path(checkpoint), "checkpoints"))
    for upload in uploads:
        if not upload.local_path.is_file():
            raise FileNotFoundError(f"artifact {upload.local_path} does not exist")
    ops: list[Op] = []
    if config is not None:
        ops.append(Text(run_id, json.dumps(config, indent=2, sort_keys=True, default=str), "config.json"))
    ops.extend(uploads)
    return ops


def fetch_checkpoint(
    client: MlflowClient,
    run_id: str,
    artifact_dir: str,
    dest: str | Path,
    *,
    tags_of: Callable[[str], Mapping[str, str]],
    max_hops: int = 20,
) -> str | None:
    """``Tracker.fetch_checkpoint``: ``tags_of`` reads a run's tags (cached by the tracker)."""
    current: str | None = run_id
    for _ in range(max_hops):
        if current is None:
            return None
        try:
            names = {Path(f.path).name for f in client.list_artifacts(current, artifact_dir)}
            if "last.pt" in names:
                Path(dest).mkdir(parents=True, exist_ok=True)
                local = client.download_artifacts(current, f"{artifact_dir}/last.pt", str(dest))
                if Path(local) != Path(dest) / "last.pt":
                    Path(local).replace(Path(dest) / "last.pt")
                return current
            current = tags_of(current).get(TAG_RESUMED_FROM)
        except (MlflowException, OSError) as exc:
            log.warning(
                "could not fetch the checkpoint of MLflow run %s: %s",
                current,
                mask_secrets(str(exc)).splitlines()[0],
            )
            return None
    return None
