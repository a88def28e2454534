"""The experiment database's best-effort writes: one warning per outage, and a line when it is back."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from irnn_search.db import repo
from irnn_search.db.session import session_scope
from irnn_search.service.ledger import Ledger


def _beats(ledger: Ledger, worker_id: int, n: int) -> None:
    for _ in range(n):
        ledger.beat(worker_id)


def test_each_outage_is_reported_once_and_its_end_with_the_skipped_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "irnn.db"
    ledger = Ledger(f"sqlite:///{db}", auto_upgrade=True)
    with session_scope(ledger.engine) as s:
        worker_id = repo.register_worker(s, host=socket.gethostname(), pid=os.getpid(), device="cpu")
    aside = tmp_path / "aside.db"
    caplog.set_level(logging.WARNING, logger="irnn_search.service.ledger")

    for outage in (1, 2):  # a second outage later in a long run must be seen too
        caplog.clear()
        _beats(ledger, worker_id, 2)
        assert not caplog.records, "no warning while the database answers"
        ledger.engine.dispose()
        db.rename(aside)  # the tables are gone: every write now fails for real
        _beats(ledger, worker_id, 3)
        ledger.engine.dispose()
        db.unlink(missing_ok=True)  # the empty file SQLite made in its place
        aside.rename(db)
        _beats(ledger, worker_id, 2)
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, f"outage {outage}: {messages}"
        assert "experiment database unavailable (heartbeat)" in messages[0]
        assert "reachable again; 3 writes were skipped" in messages[1]
