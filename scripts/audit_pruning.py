"""Did the search throw answers away? Re-run a sample of a study's pruned and diverged trials alone
to their full length and count how many would have solved.

    IRNN_SEARCH_HOME=~/runs/copy200/home .venv/bin/python scripts/audit_pruning.py copy200 --sample 6
    IRNN_SEARCH_HOME=~/runs/adding-irnn-identity/home .venv/bin/python scripts/audit_pruning.py \
        adding-irnn-identity --trials 4,9

Each re-run is the trial's reproduce line (same hyperparameters, seed, steps, batch size), trained
on one thread; a trial that trained in a pack re-runs as a pack of one (``--packed``), which
retraces it bit for bit on CPU up to where it was pruned ("retraced": the largest relative
difference from the trial's own curve until then, 0 for an exact retrace). Prints a Markdown table
and, with ``--json FILE``, the rows. Ctrl-C stops after the current re-run and still prints what
it has.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch

from irnn_search.search.validate import load_spec
from irnn_search.service.answer import first_below, lineages, lines_for
from irnn_search.service.report import spec_studies
from irnn_search.service.rerun import curve_deviation, rerun_alone
from irnn_search.settings import Settings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--sample", type=int, default=6, help="pruned/diverged trials to re-run, in all")
    ap.add_argument("--seed", type=int, default=0, help="which ones (a random sample)")
    ap.add_argument("--trials", help="re-run these lineages (first trial numbers, comma-separated) instead of a sample")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--studies-dir", default="studies")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec, studies_dir=args.studies_dir)
    lines = lines_for(spec)
    candidates = []
    for study in spec_studies(spec, Settings.from_env().storage_url).values():
        key = study.user_attrs["model"]
        for lin in lineages(study.get_trials(deepcopy=False)):
            if lin.ended in ("pruned", "diverged") and lin.solved_at(lines.threshold) is None:
                candidates.append((key, lin))
    if args.trials:
        wanted = {int(n) for n in args.trials.split(",")}
        sample = [(key, lin) for key, lin in candidates if lin.number in wanted]
    else:
        rng = random.Random(args.seed)
        sample = rng.sample(candidates, min(args.sample, len(candidates)))
    print(f"{len(candidates)} pruned or diverged trials did not reach the threshold; re-running {len(sample)}",
          file=sys.stderr)  # fmt: skip
    rows = []
    try:
        for key, lin in sample:
            started = time.perf_counter()
            result = rerun_alone(spec, key, lin.params, packed=lin.packed)
            curve = {int(h["step"]): h[spec.objective] for h in result.history}
            deviation = curve_deviation(curve, lin.curve)  # 0.0: the re-run retraced the trial to its end
            solved_at = first_below(curve, lines.threshold)
            ended_at = max(lin.curve) if lin.curve else 0
            rows.append({
                "model": key, "trial": lin.number, "ended": lin.ended, "at_step": ended_at,
                "value_then": lin.curve.get(ended_at), "full_best": result.best.get(spec.objective),
                "full_outcome": result.outcome, "solved_at": solved_at, "packed": lin.packed,
                "curve_deviation_until_then": deviation, "minutes": (time.perf_counter() - started) / 60,
            })  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("stopped; printing what was re-run", file=sys.stderr)
    solved = sum(r["solved_at"] is not None for r in rows)
    print(
        f"Of {len(rows)} re-run pruned/diverged trials ({len(candidates)} in the study), {solved} would have solved.\n"
    )
    print("| model | trial | ended | at step | value then | full-length best | full run | solved at | retraced |")
    print("|---|---:|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        then = "–" if r["value_then"] is None else f"{r['value_then']:.4g}"
        best = "–" if r["full_best"] is None else f"{r['full_best']:.4g}"
        dev = r["curve_deviation_until_then"]
        print(f"| {r['model']} | {r['trial']} | {r['ended']} | {r['at_step']:,} | {then} | {best} | "
              f"{r['full_outcome']} | {r['solved_at'] if r['solved_at'] is not None else '–'} | "
              f"{'–' if dev is None else format(dev, '.2g')} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
