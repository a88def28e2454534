"""Does each model's reproduce line re-run its best trial to the reported value? Re-run each
model's best trial alone and set the two values beside the spread of a confirmation.

    IRNN_SEARCH_HOME=~/runs/adding/home .venv/bin/python scripts/check_reproduce.py adding \\
        --confirm adding-confirm --models exprnn,asrnn

Each re-run is the model's reproduce line (the best trial's hyperparameters, seed, steps and batch
size), trained on one thread as `irnn-search train` would: through the packed path as a pack of
one (``--packed``) where the trial trained in a pack, which retraces it bit for bit on CPU (the
"curve deviation" column: the largest relative difference over the curve, 0 for an exact retrace).
``--ordinary`` re-runs packed trials with the ordinary loop instead, which adds in another order:
long chaotic runs amplify that, so its yardstick is the spread of the same configuration over
fresh seeds: ``--confirm`` names the confirmation study (`irnn-search confirm`) whose seeds give
it, read from the same stores. Prints a Markdown table and, with ``--json FILE``, the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from irnn_search.search.validate import load_spec
from irnn_search.service.answer import answer, first_below, lineages, lines_for, seeds_of
from irnn_search.service.report import spec_studies
from irnn_search.service.rerun import curve_deviation, rerun_alone
from irnn_search.settings import Settings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--models", help="only these models (comma-separated)")
    ap.add_argument("--confirm", help="the confirmation spec whose seeds give the spread")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--ordinary", action="store_true", help="re-run packed trials with the ordinary loop")
    ap.add_argument("--studies-dir", default="studies")
    args = ap.parse_args()
    torch.set_num_threads(1)
    storage = Settings.from_env().storage_url
    spec = load_spec(args.spec, studies_dir=args.studies_dir)
    lines = lines_for(spec)
    spread: dict[str, list[float]] = {}
    if args.confirm:
        confirm = load_spec(args.confirm, studies_dir=args.studies_dir)
        for study in spec_studies(confirm, storage).values():
            seeds = seeds_of(study.get_trials(deepcopy=False), answer(study, confirm, lines).best_trial)
            spread[study.user_attrs["model"]] = list(seeds.values.values())
    wanted = set(args.models.split(",")) if args.models else None
    rows = []
    try:
        for study in spec_studies(spec, storage).values():
            key = study.user_attrs["model"]
            if wanted is not None and key not in wanted:
                continue
            a = answer(study, spec, lines)
            if a.best_trial is None or a.best_value is None:
                print(f"{key}: no trial reached a value; nothing to reproduce", file=sys.stderr)
                continue
            started = time.perf_counter()
            packed = a.best_packed and not args.ordinary
            result = rerun_alone(spec, key, a.best_params, packed=packed)
            alone = result.best.get(spec.objective)
            curve = {int(h["step"]): h[spec.objective] for h in result.history if spec.objective in h}
            (best,) = [lin for lin in lineages(study.get_trials(deepcopy=False)) if lin.number == a.best_trial]
            fresh = spread.get(key, [])
            rows.append({
                "model": key, "trial": a.best_trial, "packed": packed,
                "study_value": a.best_value, "alone_value": alone,
                "curve_deviation": curve_deviation(curve, best.curve),
                "ratio": None if not alone else alone / a.best_value,
                "study_solved_at": a.steps_to_solve,
                "alone_solved_at": first_below(curve, lines.threshold),
                "seeds_min": min(fresh, default=None), "seeds_max": max(fresh, default=None), "seeds": len(fresh),
                "inside": None if not fresh or alone is None else min(fresh) <= alone <= max(fresh),
                "minutes": (time.perf_counter() - started) / 60,
            })  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("stopped; printing what was re-run", file=sys.stderr)
    print("| model | trial | re-run | study's value | alone | alone / study | curve deviation "
          "| solved at (study, alone) | fresh seeds: range | alone inside it |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        value = "–" if r["alone_value"] is None else f"{r['alone_value']:.3g}"
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
        at = f"{r['study_solved_at'] or '–'}, {r['alone_solved_at'] or '–'}"
        rng = f"{r['seeds_min']:.3g} – {r['seeds_max']:.3g} ({r['seeds']})" if r["seeds"] else "–"
        inside = "–" if r["inside"] is None else ("yes" if r["inside"] else "no")
        dev = "–" if r["curve_deviation"] is None else f"{r['curve_deviation']:.2g}"
        path = "packed" if r["packed"] else "ordinary"
        print(f"| {r['model']} | {r['trial']} | {path} | {r['study_value']:.3g} | {value} | {ratio} | {dev} | {at} "
              f"| {rng} | {inside} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
