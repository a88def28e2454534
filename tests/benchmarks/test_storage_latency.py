"""Smoke test of ``benchmarks/storage_latency.py``'s logic on a real PostgreSQL: timed trials, the
batch prefill, the growth run and the tables. The worker-process run is left to the benchmark itself
(each spawned worker imports torch, too slow for a test)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import storage_latency as sl  # noqa: E402


def test_trials_prefill_growth_and_tables(pg_database: str) -> None:
    sl.quiet()
    sl.DbClock.install()
    spec, model = sl.model_spec()
    sl.create_study(pg_database, "bench-latency-smoke", spec)

    study, storage = sl.load(pg_database, "bench-latency-smoke", spec, stream=0)
    records = [sl.run_trial(study, model, 3, random.Random(0)) for _ in range(3)]
    sl.dispose(storage)
    for rec in records:
        assert set(rec) == set(sl.OPS)
        # reports at 780, 1560, 2340: the pruner is asked at the first only (pmnist's first rung is 3900)
        assert rec["report"][3] == 3 and rec["prune check"][3] == 1 and rec["user attrs"][3] == 2
        assert all(wall > 0 for wall, _db, _n, _calls in rec.values())
        assert 0 < sum(rec[op][1] for op in sl.OPS) < sum(rec[op][0] for op in sl.OPS)  # DB time is a part
        assert rec["ask"][2] >= 1  # round trips were counted
    done = study.get_trials(deepcopy=False)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 3
    assert len(done[0].intermediate_values) == 3 and done[0].user_attrs["outcome"] == "complete"

    sl.prefill(pg_database, "bench-latency-smoke", model, 25, random.Random(1), batch=10)
    fresh = optuna.load_study(study_name="bench-latency-smoke", storage=pg_database)
    trials = fresh.get_trials(deepcopy=False)
    assert len(trials) == 28 and sorted(t.number for t in trials) == list(range(28))
    filled = trials[3:]
    assert all(t.state.is_finished() and t.params and t.user_attrs["outcome"] for t in filled)
    assert all((t.value is not None) == (t.state == TrialState.COMPLETE) for t in filled)

    rows = sl.growth(pg_database, [5, 15], trials=2, reports=2)
    assert [r["size"] for r in rows] == [5, 15] and len(rows[1]["tpe"]) == len(rows[1]["random"]) == 2
    table = "\n".join(sl.summarize_growth(rows))
    assert table.count("\n") == 3 and "| 15 |" in table
    run = {"workers": 1, "trial_s": 0.0, "elapsed_s": 1.0, "trials": 3, "records": records}
    run |= {"peak_connections": 1, "max_connections": 100}
    assert "| 1 | 3 | 10,800 |" in "\n".join(sl.summarize_scaling([run]))
    assert len(sl.summarize_ops([run])) == 2 + len(sl.OPS)
    lines = sl.verdicts([run], rows)
    assert any(line.startswith("- overhead <= 1% at 1 workers:") for line in lines)
    assert any("growth 5 -> 15 trials <= 2x, ask+tell" in line for line in lines)


def test_percentile() -> None:
    values = [float(i) for i in range(1, 101)]
    assert sl.pct(values, 50) == 50.0 and sl.pct(values, 99) == 99.0 and sl.pct([3.0], 99) == 3.0
