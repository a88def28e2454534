"""The outage buffer: tracking operations wait in memory, in order, while MLflow is unreachable.

One warning is logged per outage, not per call, and one when the store is back (with how many
metric values were dropped because the buffer was full). An operation MLflow refuses (a 4xx: a
bad value, a deleted run) is dropped with a warning, since retrying it would only grow the buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from irnn_search.masking import mask_secrets
from irnn_search.tracking.names import MAX_METRICS_PER_BATCH

log = logging.getLogger(__name__)


# The buffered operations, sent in order by ``Outbox``.
@dataclass
class Batch:
    run_id: str
    metrics: list[Metric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Upload:
    run_id: str
    local_path: Path
    artifact_path: str | None


@dataclass
class Text:
    run_id: str
    text: str
    artifact_file: str


@dataclass
class End:
    run_id: str
    status: str
    end_time: int


Op = Batch | Upload | Text | End


class Outbox:
    """Operations for MLflow, sent in order; while the store is unreachable they wait here.

    Args:
        send: makes one operation's call (``Tracker`` passes one that uses its current client).
        where: the store, masked, for the log lines.
        retry_interval_s: while failing, a ``submit`` retries at most this often (``flush`` always).
        max_buffered_metrics: metric values kept while failing; beyond it the oldest are dropped.
    """

    def __init__(
        self, send: Callable[[Op], None], *, where: str, retry_interval_s: float, max_buffered_metrics: int
    ) -> None:
        self._send = send
        self.where = where
        self.retry_interval_s = retry_interval_s
        self.max_buffered_metrics = max_buffered_metrics
        self.lock = threading.RLock()
        self._ops: deque[Op] = deque()
        self._failing = False
        self._retry_at = 0.0
        self._dropped = 0

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, op: object) -> bool:
        with self.lock:
            return op in self._ops

    def flush(self) -> bool:
        """Send every queued operation now; True when none is left."""
        with self.lock:
            return self._drain()

    def submit(self, *ops: Op) -> None:
        """Queue ``ops`` and send what is queued, unless the store failed less than
        ``retry_interval_s`` ago."""
        with self.lock:
            for op in ops:
                last = self._ops[-1] if self._ops else None
                # While failing, consecutive metric batches of one run merge, so recovery costs few calls.
                if (
                    isinstance(op, Batch)
                    and isinstance(last, Batch)
                    and last.run_id == op.run_id
                    and len(last.metrics) + len(op.metrics) <= MAX_METRICS_PER_BATCH
                ):
                    last.metrics.extend(op.metrics)
                    last.tags.update(op.tags)
                else:
                    self._ops.append(op)
            self._trim()
            if not self._failing or time.monotonic() >= self._retry_at:
                self._drain()

    def _trim(self) -> None:
        total = sum(len(op.metrics) for op in self._ops if isinstance(op, Batch))
        while total > self.max_buffered_metrics:
            oldest = next(op for op in self._ops if isinstance(op, Batch) and op.metrics)
            dropped = min(len(oldest.metrics), total - self.max_buffered_metrics)
            del oldest.metrics[:dropped]  # the oldest values go first; tags and run ends are kept
            self._dropped += dropped
            total -= dropped

    def _drain(self) -> bool:
        sent = 0
        while self._ops:
            op = self._ops[0]
            try:
                self._send(op)
            except (MlflowException, OSError) as exc:
                if is_transient(exc) and not isinstance(exc, FileNotFoundError):
                    if not self._failing:
                        log.warning(
                            "MLflow at %s is unreachable (%s); buffering tracking data in memory and "
                            "retrying every %.0f s",
                            self.where,
                            mask_secrets(str(exc)),
                            self.retry_interval_s,
                        )
                    self._failing = True
                    self._retry_at = time.monotonic() + self.retry_interval_s
                    return False
                log.warning("MLflow refused %s; dropped it: %s", describe(op), mask_secrets(str(exc)))
            else:
                sent += 1
            self._ops.popleft()
        if self._failing:
            log.warning(
                "MLflow at %s is reachable again: sent %d buffered operation(s)%s",
                self.where,
                sent,
                f", {self._dropped} metric value(s) had been dropped (buffer full)" if self._dropped else "",
            )
            self._failing = False
            self._dropped = 0
        return True


def send(client: MlflowClient, op: Op) -> None:
    """Make one buffered operation's call (raises MLflow's or the network's error)."""
    if isinstance(op, Batch):
        if op.metrics or op.tags:
            client.log_batch(
                op.run_id,
                metrics=op.metrics,
                tags=[RunTag(k, v) for k, v in op.tags.items()],
                synchronous=True,
            )
    elif isinstance(op, Upload):
        client.log_artifact(op.run_id, str(op.local_path), op.artifact_path)
    elif isinstance(op, Text):
        client.log_text(op.run_id, op.text, op.artifact_file)
    else:
        client.set_terminated(op.run_id, op.status, end_time=op.end_time)


def is_transient(exc: BaseException) -> bool:
    """True for an outage worth retrying (unreachable, timeout, 5xx, locked database)."""
    if isinstance(exc, MlflowException):
        # Connection failures arrive as INTERNAL_ERROR (500), a locked SQLite as 503; 4xx are
        # permanent (bad value, deleted run), so retrying them would only grow the buffer.
        return exc.get_http_status_code() >= 500
    return isinstance(exc, OSError)  # requests' exceptions derive from OSError


def describe(op: Op) -> str:
    if isinstance(op, Batch):
        return f"{len(op.metrics)} metric value(s) and tags {sorted(op.tags)} for run {op.run_id}"
    if isinstance(op, Upload):
        return f"artifact {op.local_path} for run {op.run_id}"
    if isinstance(op, Text):
        return f"artifact {op.artifact_file} for run {op.run_id}"
    return f"status {op.status} for run {op.run_id}"
