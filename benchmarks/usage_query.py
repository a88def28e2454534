"""What the packed-trial device-time columns cost the budget query (``storage.groups.query_groups``).

Every budget check, surplus check and ``status`` reads a study's trials in one aggregate query. To
count a packed trial's share of the device rather than its wall time, that query also joins two
user attrs (``device_s``, ``pack_slots``). This times it side by side with the same query without
them (what it was before), on a study of ``--trials`` finished trials (half of them packed, each
with 7 user attrs), on an SQLite file and on a loopback PostgreSQL 15 (``irnn_search.dev.servers``).

    python benchmarks/usage_query.py [--trials 3000] [--repeat 30] [--no-postgres]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from irnn_search.service.storage import DEVICE_S, PACK_SLOTS, open_storage
from irnn_search.service.storage.groups import epoch_seconds, query_groups


def wall_time_groups(backend: Any, study_id: int) -> list[Any]:
    """The aggregate query as it was before packed trials: summed wall time, no device shares."""
    from optuna.storages._rdb import models
    from sqlalchemy import and_, case, func, select

    t, attr, val = models.TrialModel, models.TrialUserAttributeModel, models.TrialValueModel
    dialect = backend.engine.dialect.name
    start, end = epoch_seconds(t._datetime_start_utc, dialect), epoch_seconds(t._datetime_complete_utc, dialect)
    is_open = and_(t._datetime_start_utc.is_not(None), t._datetime_complete_utc.is_(None))
    finite = case((val.value_type == models.TrialValueModel.TrialValueType.FINITE, val.value))
    query = (
        select(
            t.state,
            attr.value_json,
            func.count(),
            func.coalesce(func.sum(end - start), 0.0),
            func.count(case((is_open, 1))),
            func.coalesce(func.sum(case((is_open, start))), 0.0),
            func.min(finite),
            func.max(finite),
        )
        .outerjoin(attr, and_(attr.trial_id == t.trial_id, attr.key == "outcome"))
        .outerjoin(val, and_(val.trial_id == t.trial_id, val.objective == 0))
        .where(t.study_id == study_id)
        .group_by(t.state, attr.value_json)
    )
    with backend.engine.connect() as connection:
        return list(connection.execute(query).all())


def measure(url: str, trials: int, repeat: int) -> tuple[float, float]:
    storage = open_storage(url, heartbeat_s=None)
    study = optuna.create_study(storage=storage, study_name="usage-query")
    for i in range(trials):
        trial = study.ask()
        trial.set_user_attr("outcome", "complete")
        for k in range(4):
            trial.set_user_attr(f"attr{k}", k)
        if i % 2:
            trial.set_user_attr(PACK_SLOTS, 16)
            trial.set_user_attr(DEVICE_S, 12.5)
        study.tell(trial, float(i))
    backend = getattr(storage, "_backend", storage)
    times: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(repeat):  # interleaved
        for name, fn in (("before", wall_time_groups), ("now", query_groups)):
            started = time.perf_counter()
            fn(backend, study._study_id)
            times[name].append((time.perf_counter() - started) * 1e3)
    return statistics.median(times["before"]), statistics.median(times["now"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"aggregate budget query, {args.trials} finished trials, median of {args.repeat}")
    print("| storage | without device shares (ms) | with them (ms) | ratio |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        before, now = measure(f"sqlite:///{Path(folder) / 'optuna.db'}", args.trials, args.repeat)
        print(f"| SQLite file | {before:.2f} | {now:.2f} | {now / before:.2f}x |", flush=True)
    if not args.no_postgres:
        from irnn_search.dev.servers import Postgres, reachable_tempdir

        server = Postgres(reachable_tempdir("irnn-usage-query-") / "pg")
        server.start()
        try:
            before, now = measure(server.create_database("usage_query"), args.trials, args.repeat)
            print(f"| loopback PostgreSQL 15 | {before:.2f} | {now:.2f} | {now / before:.2f}x |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
