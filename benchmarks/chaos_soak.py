"""The chaos soak, longer (issue 17): a pool of ``irnn-search worker`` processes runs two small
studies on a PostgreSQL 15 and an MLflow server of its own while a seeded driver SIGKILLs and
SIGTERMs workers, starts replacements and restarts both servers; then the pool drains and every
invariant is checked (``tests/chaos.py``, ``tests/chaos_checks.py``; the CI-size run is
``tests/service/test_chaos.py``). Prints the faults injected, the trials, the work lost (steps
re-done) and the time, and exits 1 when an invariant was broken (each one listed).

    python benchmarks/chaos_soak.py [--workers 2] [--trials 16] [--duration 600] [--seed 0]
        [--fault-every 8] [--steps 300] [--report-every 20] [--keep DIR]

``--duration`` is the chaos phase in seconds (it ends earlier if the studies are done; raise
``--trials`` for a longer one); the drain after it is bounded by ``--drain-timeout``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from irnn_search.dev.servers import MlflowServer, Postgres, reachable_tempdir
from tests.chaos import SoakConfig, soak
from tests.chaos_checks import Summary


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="worker processes kept alive")
    p.add_argument("--trials", type=int, default=16, help="trial budget of each of the two studies")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of fault injection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-every", type=float, default=8.0, help="mean seconds between faults")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per trial")
    p.add_argument("--report-every", type=int, default=20, help="steps between reports and checkpoints")
    p.add_argument("--drain-timeout", type=float, default=600.0, help="seconds the pool has to finish after the chaos")
    p.add_argument("--keep", type=Path, help="keep the worker logs and state folders here")
    return p.parse_args(argv)


def table(s: Summary, args: argparse.Namespace) -> str:
    rows = [
        ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(s.faults.items())) or "none"),
        ("workers started", str(s.workers_started)),
        ("workers ended in start-up (PostgreSQL down, SIGTERM)", str(s.refused_at_start)),
        ("lineages (trials counted)", f"{s.lineages} ({2 * args.trials} budgeted)"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items()))),
        ("attempts (trials run, re-queued copies included)", str(s.attempts)),
        ("resumed attempts", str(s.resumes)),
        ("steps needed / trained", f"{s.steps_needed:,} / {s.steps_trained:,}"),
        ("steps re-done (work lost)", f"{s.steps_redone:,} ({s.steps_redone / max(s.steps_needed, 1):.1%})"),
        ("resumes behind the last report", str(s.resumed_behind_report)),
        ("largest overlap of two attempts of a lineage", f"{s.max_overlap_s:.1f} s"),
        ("time: chaos / in all", f"{s.chaos_s:.0f} s / {s.wall_s:.0f} s"),
        ("invariants broken", str(len(s.violations))),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("tests.chaos").setLevel(logging.INFO)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    config = SoakConfig(
        workers=args.workers,
        trials=args.trials,
        steps=args.steps,
        report_every=args.report_every,
        chaos_s=args.duration,
        fault_every_s=args.fault_every,
        seed=args.seed,
        drain_timeout_s=args.drain_timeout,
    )
    folder = reachable_tempdir("irnn-chaos-")  # as root, the postgres user must reach the data folder
    pg = Postgres(folder / "pg", fsync=False)
    mlflow: MlflowServer | None = None
    try:
        pg.start()
        mlflow = MlflowServer(folder / "mlflow", pg.create_database("mlflow"))
        mlflow.start()
        root = Path(tempfile.mkdtemp(prefix="chaos-", dir=folder))
        summary = soak(pg, mlflow, root, config)
        if args.keep is not None:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
    finally:
        if mlflow is not None:
            mlflow.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)
    cpu = platform.processor() or platform.machine()
    print(
        f"\nchaos soak, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, "
        f"{os.cpu_count()} CPU(s), seed {args.seed}, {args.workers} workers, {args.trials} trials x 2 studies, "
        f"{args.steps} steps, a fault every {args.fault_every:g} s on average\n"
    )
    print(table(summary, args))
    for line in summary.violations:
        print("  " + line)
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
