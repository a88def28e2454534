"""Which of a finished study's pruned trials would today's pruning rule have kept, and at what cost?

    IRNN_SEARCH_HOME=~/runs/adding/home .venv/bin/python scripts/replay_pruning.py adding

For every trial the study pruned (diverged ones are not the pruner's), it asks the rule of
``search.space.AnswerKeepingPruner`` again at the step the trial was pruned, on the study's
recorded curves:

- ``before grace``: the step is before the spec's ``plateau_grace`` (default half the steps) and
  the trial was on the plateau there: kept, exactly;
- ``after a long plateau``: the step is before twice the longest plateau another trial of the
  study left. This uses every curve as recorded at the end of the study, more than the rule knew
  when it pruned, so it is an upper bound on what this part keeps.

A kept trial would have trained on, at most to its last step: ``extra steps`` is that bound, next
to the steps the study trained in all. Which kept trials would have solved is a question for
``scripts/audit_pruning.py`` (re-runs), not for this replay. Prints a Markdown table.
"""

from __future__ import annotations

import argparse

import optuna

from irnn_search.search.space import AnswerKeepingPruner, answer_lines, plateau_grace
from irnn_search.search.validate import load_spec
from irnn_search.service.answer import lineages
from irnn_search.service.report import spec_studies
from irnn_search.settings import Settings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--studies-dir", default="studies")
    args = ap.parse_args()
    spec = load_spec(args.spec, studies_dir=args.studies_dir)
    threshold, baseline = answer_lines(spec)
    if baseline is None:
        print(f"{spec.name}: the objective has no memoryless baseline, so no plateau to replay")
        return 0
    # today's rule's lines (its plateau, its ceiling, its grace), from the rule itself
    rule = AnswerKeepingPruner(optuna.pruners.NopPruner(), threshold=threshold, baseline=baseline,
                               grace=plateau_grace(spec))  # fmt: skip
    assert rule.plateau is not None and rule.ceiling is not None
    plateau, ceiling, grace = rule.plateau, rule.ceiling, rule.grace
    print(f"{spec.name}: {spec.steps:,} steps, plateau_grace {grace:,}, plateau below {plateau:.4g}\n")
    print("| model | pruned | on the plateau | kept: before grace | kept: after a long plateau (at most) "
          "| extra steps (at most) | steps trained |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for study in spec_studies(spec, Settings.from_env().storage_url).values():
        lins = lineages(study.get_trials(deepcopy=False))
        exits = {lin.number: rule.plateau_exit(lin.curve) for lin in lins}
        trained = sum(max(lin.curve, default=0) for lin in lins)
        pruned = on_plateau = by_grace = by_exit = extra = 0
        for lin in lins:
            if lin.ended != "pruned" or not lin.curve:
                continue
            pruned += 1
            step = max(lin.curve)
            value = lin.curve[step]
            if (threshold is not None and min(lin.curve.values()) < threshold) or not plateau <= value <= ceiling:
                continue
            on_plateau += 1
            longest = max((e for n, e in exits.items() if n != lin.number and e is not None), default=None)
            if step < grace:
                by_grace += 1
            elif longest is not None and step < 2 * longest:
                by_exit += 1
            else:
                continue
            extra += spec.steps - step
        print(f"| {study.user_attrs['model']} | {pruned} | {on_plateau} | {by_grace} | {by_exit} "
              f"| {extra:,} | {trained:,} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
