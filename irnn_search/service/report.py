"""What ``status`` and ``report`` show: per model the best found, the published-settings trial,
the published number with its protocol, and the compute used; tables (md/json/csv) and plots."""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.search.literature import published_results
from irnn_search.search.spec import SpecError, StudySpec
from irnn_search.service.answer import TaskLines, answer, lineages, reproduce_command, seeds_of
from irnn_search.service.budget import Usage, usage
from irnn_search.service.recovery import GAVE_UP
from irnn_search.service.studies import load_studies, stored_spec, study_name
from irnn_search.tasks import TaskError, task_class

if TYPE_CHECKING:
    from irnn_search.service.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class ModelRow:
    study: str
    model: str
    family: str
    task: str
    objective: str
    direction: str
    trials: int
    complete: int
    pruned: int
    failed: int
    running: int
    device_hours: float
    best_value: float | None  # the best any trial reached, however it ended (see service.answer)
    best_params: dict[str, Any]
    best_trial: int | None
    published_settings_value: float | None  # best reached by a warm-start trial (our run of their settings)
    published_settings_label: str | None
    test_value: float | None = None  # the objective's metric on the test split, best trial's best-val checkpoint
    test_metrics: dict[str, float] = field(default_factory=dict)
    published_numbers: list[dict[str, Any]] = field(default_factory=list)  # what the papers report
    # -- the answer (service.answer) --
    baseline: float | None = None
    threshold: float | None = None
    threshold_rule: str | None = None
    solved: bool | None = None  # None where the task has no threshold
    solved_trials: int = 0
    started: int = 0  # trials that ran (the solved fraction's denominator)
    solved_fraction: float | None = None
    steps_to_solve: int | None = None  # first step at which the best trial crossed the threshold
    fastest_solve: int | None = None
    best_step: int | None = None
    best_ended: str | None = None  # how the best trial ended: complete, pruned, diverged, interrupted ...
    times_below_baseline: float | None = None
    published_settings_solved_at: int | None = None
    endings: dict[str, int] = field(default_factory=dict)
    reproduce: str | None = None  # the `irnn-search train` command that re-runs the best trial alone
    # the best trial's value per training seed (a spec with several ``seeds``): its spread is the
    # error bar of the best configuration
    seed_values: dict[int, float] = field(default_factory=dict)
    seed_mean: float | None = None  # their mean (None without seed values)
    seed_sd: float | None = None  # their sample standard deviation (None below two seeds)
    seeds_solved: int | None = None  # how many of them are below the threshold (None without one)
    seeds_diverged: dict[int, str] = field(default_factory=dict)  # seed -> why it diverged (no value)
    # each seed's steps to solve (its first reported step below the threshold), and each seed's
    # validation curve (step -> value), where the trial recorded them (multi-seed trials since stop 16)
    seed_solved_at: dict[int, int] = field(default_factory=dict)
    seed_curves: dict[int, dict[int, float]] = field(default_factory=dict)

    # trials failed for good because their worker died on every attempt: {"trial": n, "reason": ...}
    gave_up: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seeds_trained(self) -> int:
        """The best configuration's training seeds that finished: with a value or diverged."""
        return len(self.seed_values) + len(self.seeds_diverged)


def _is_smoke(task: str) -> bool:
    """Whether ``task`` shrinks a real one (a task whose plugin no longer loads counts as real)."""
    try:
        return task_class(task).smoke_of is not None
    except TaskError:
        return False


def published_numbers(task: str, family: str) -> list[dict[str, Any]]:
    return [
        {
            "hidden_size": r.hidden_size,
            "metric": r.metric,
            "value": r.value,
            "units": r.units,
            "protocol": r.protocol,
            "source": r.source,
            **({"size": r.size} if r.size is not None else {}),
        }
        for r in published_results(task, family)
    ]


def model_row(study: optuna.Study, lines: TaskLines | None = None) -> ModelRow:
    spec = stored_spec(study)
    key = study.user_attrs["model"]
    family = study.user_attrs["family"]
    u: Usage = usage(study)
    a = answer(study, spec, lines)
    trials = study.get_trials(deepcopy=False)  # one read for what the row takes from the trials
    seeds = seeds_of(trials, a.best_trial)
    reproduce = None
    if a.best_trial is not None:
        try:
            reproduce = reproduce_command(spec, key, a.best_params, packed=a.best_packed)
        except SpecError:
            reproduce = None
    return ModelRow(
        study=study.study_name,
        model=key,
        family=family,
        task=spec.task,
        objective=spec.objective,
        direction=spec.direction,
        trials=u.finished,
        complete=u.complete,
        pruned=u.pruned,
        failed=u.failed,
        running=u.running,
        device_hours=u.device_hours,
        best_value=a.best_value,
        best_params=a.best_params,
        best_trial=a.best_trial,
        published_settings_value=a.published_value,
        published_settings_label=a.published_label,
        published_numbers=published_numbers(spec.task, family),
        gave_up=[
            {"trial": t.number, "reason": t.user_attrs.get("reason", "")}
            for t in trials
            if t.state == TrialState.FAIL and t.user_attrs.get(GAVE_UP)
        ],
        test_value=_test_value(study, spec),
        test_metrics=dict(study.user_attrs.get("test_eval", {}).get("metrics", {})),
        baseline=a.baseline,
        threshold=a.threshold,
        threshold_rule=a.threshold_rule,
        solved=a.solved,
        solved_trials=a.solved_count,
        started=a.started,
        solved_fraction=a.solved_fraction,
        steps_to_solve=a.steps_to_solve,
        fastest_solve=a.fastest_solve,
        best_step=a.best_step,
        best_ended=a.best_ended,
        times_below_baseline=a.below_baseline,
        published_settings_solved_at=a.published_solved_at,
        endings=a.endings,
        reproduce=reproduce,
        seed_values=seeds.values,
        seeds_diverged=seeds.diverged,
        seed_mean=seeds.mean,
        seed_sd=seeds.sd,
        seeds_solved=seeds.solved(a.threshold),
        seed_solved_at=seeds.solved_at(a.threshold),
        seed_curves=seeds.curves,
    )


def _spread(values: dict[int, float]) -> str:
    """``mean ± sd over n seeds (min–max)``; empty below two seeds."""
    if len(values) < 2:
        return ""
    v = list(values.values())
    return (
        f"; over {len(v)} seeds: {statistics.fmean(v):.4g} ± {statistics.stdev(v):.2g} "
        f"(sample sd; min {min(v):.4g}, max {max(v):.4g})"
    )


def _test_value(study: optuna.Study, spec: StudySpec) -> float | None:
    metrics = study.user_attrs.get("test_eval", {}).get("metrics", {})
    value = metrics.get(spec.objective.removeprefix("val_"))
    return float(value) if value is not None else None


def evaluate_best(study: optuna.Study) -> dict[str, Any] | None:
    """Evaluate the best trial's best-validation checkpoint on the test split, once.

    The protocol is "best validation, then test" (model selection never sees the test split).
    The result is cached on the study (``test_eval``) and re-computed only when a better trial
    appears. Returns None when nothing completed, the task has no test split (smoke tasks), or the
    checkpoint is gone.
    """
    from irnn_search.checkpoint import CheckpointError, file_digest, load_checkpoint
    from irnn_search.run import prepare_run
    from irnn_search.search.space import build_train_config, params_to_kwargs
    from irnn_search.service.attempt import BEST_SHA256
    from irnn_search.train import evaluate

    spec = stored_spec(study)
    best = _best_attempt(study, spec)
    if best is None:
        return None
    cached = study.user_attrs.get("test_eval")
    # A running (or resumed) trial may improve: the cache holds for one best checkpoint, by step.
    best_step = answer(study, spec, TaskLines(None, None, None)).best_step
    if cached and cached.get("trial") == best.number and cached.get("step") == best_step:
        return dict(cached)
    model_spec = spec.model(study.user_attrs["model"])
    train_kwargs, model_options = params_to_kwargs(model_spec, best.params)
    seed = spec.seeds[0]
    run = prepare_run(
        task=spec.task,
        task_options=spec.task_options,
        model=model_spec.family,
        model_options=model_options,
        config=build_train_config(spec, train_kwargs, seed=seed),
        batch_size=spec.batch_size,
    )
    if not run.task.has_split("test"):
        return None
    ckpt = Path(best.user_attrs.get("checkpoint_dir", "")) / f"seed-{seed}" / "best.pt"
    if not ckpt.is_file():
        return None
    written = best.user_attrs.get(f"{BEST_SHA256}{seed}")
    if written is not None and file_digest(ckpt) != written:
        log.warning("%s is not the best.pt trial %d wrote (its SHA-256 differs): not evaluated", ckpt, best.number)
        return None
    try:
        state = load_checkpoint(ckpt)
    except CheckpointError as exc:
        log.warning("trial %d is not evaluated on the test split: %s", best.number, exc)
        return None
    run.model.load_state_dict(state["model"])
    metrics = evaluate(run.model, run.task, "test")
    result = {"trial": best.number, "step": int(state["step"]), "metrics": metrics, "checkpoint": str(ckpt)}
    study.set_user_attr("test_eval", result)
    return result


def _best_attempt(study: optuna.Study, spec: StudySpec) -> FrozenTrial | None:
    """The latest attempt that ran, of the lineage that reached the best value (its checkpoint
    folder holds that lineage's ``best.pt``), whether or not it completed. A re-queued attempt
    still WAITING is skipped: Optuna gives a waiting trial no params yet."""
    trials = study.get_trials(deepcopy=False)
    best_number = answer(study, spec, TaskLines(None, None, None)).best_trial
    if best_number is None:
        return None
    (lin,) = [lin for lin in lineages(trials) if lin.number == best_number]
    by_number = {t.number: t for t in trials}
    ran = [by_number[n] for n in lin.trials if by_number[n].state != TrialState.WAITING]
    return ran[-1] if ran else None


def spec_studies(spec: StudySpec, storage_url: str) -> dict[str, optuna.Study]:
    names = [study_name(spec.name, k) for k in spec.models]
    return load_studies(storage_url, names)


def rows_for(spec: StudySpec, storage_url: str) -> list[ModelRow]:
    return [model_row(s) for s in spec_studies(spec, storage_url).values()]


def run_report(
    spec: StudySpec,
    storage_url: str,
    *,
    fmt: str,
    out_dir: Path,
    ledger: Callable[[], Ledger],
    emit: Callable[[str], object],
) -> list[Path]:
    """What ``irnn-search report`` does: evaluate each study's best trial on the test split (once
    per best checkpoint, see ``evaluate_best``) and record it in our experiment database, hand the
    table in ``fmt`` to ``emit``, then write the plots into ``out_dir``; returns their paths.

    The table is emitted before the plots are drawn, so it is out even when a plot fails.
    ``ledger`` opens our experiment database, and is called only when a result is to be recorded.

    Raises:
        SearchError: a study of the spec is not on the storage (the spec was not launched).
    """
    from irnn_search.service.report_plots import plots  # it imports this module

    recorder: Ledger | None = None
    for study in spec_studies(spec, storage_url).values():
        result = evaluate_best(study)  # best validation, then test: once per best trial
        if result is not None:
            recorder = recorder or ledger()
            recorder.record_test(study.study_name, result["trial"], result["metrics"])
    rows = rows_for(spec, storage_url)
    emit(render(rows, fmt, spec=spec))
    return plots(spec, storage_url, out_dir, rows)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def render(rows: list[ModelRow], fmt: str, *, spec: StudySpec | None = None) -> str:
    """``md`` (a table per model plus the published numbers), ``json`` or ``csv``."""
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        cols = [
            "model",
            "family",
            "task",
            "objective",
            "direction",
            "trials",
            "complete",
            "pruned",
            "failed",
            "device_hours",
            "solved",
            "steps_to_solve",
            "solved_fraction",
            "best_value",
            "best_step",
            "best_trial",
            "best_ended",
            "baseline",
            "threshold",
            "test_value",
            "published_settings_value",
            "published_settings_label",
            "best_params",
            "reproduce",
        ]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d["best_params"] = json.dumps(r.best_params, default=str)
            w.writerow(d)
        return buf.getvalue()
    return render_md(rows, spec)


def _fraction(r: ModelRow) -> str:
    if r.solved_fraction is None:
        return "–"
    return f"{r.solved_trials}/{r.started} ({r.solved_fraction:.0%})"


def _verdict(rows: list[ModelRow]) -> list[str]:
    """The answer in words: which models solved the task, which learned, which did not."""
    if not rows:
        return []
    r0 = rows[0]
    out = []
    if r0.threshold is not None:
        solved = [r for r in rows if r.solved]
        if solved:
            fastest = sorted(solved, key=lambda r: r.steps_to_solve or 0)
            out.append(
                "**Solved**: "
                + ", ".join(
                    f"{r.model} (best trial crossed at step {r.steps_to_solve:,}; {_fraction(r)} of its trials solved)"
                    for r in fastest
                )
                + "."
            )
        unsolved = [r for r in rows if not r.solved]
        if unsolved:
            out.append("**Not solved**: " + ", ".join(f"{r.model} ({_why_not(r)})" for r in unsolved) + ".")
    spread = [r for r in rows if r.seeds_trained >= 2]
    if spread:
        out.append(
            "**Across seeds** (each model's best configuration, at each of its training seeds): "
            + "; ".join(_seed_verdict(r) for r in spread)
            + "."
        )
    if r0.baseline is not None and r0.direction == "minimize":
        far = [r for r in rows if r.times_below_baseline is not None and r.times_below_baseline >= 10]
        if far:
            out.append(
                f"{len(far)} of {len(rows)} models ended at least 10x below the memoryless baseline "
                f"({r0.baseline:.4g}): "
                + ", ".join(f"{r.model} {r.times_below_baseline:.0f}x" for r in far)  # type: ignore[str-format]
                + "."
            )
        else:
            out.append(f"No model ended 10x below the memoryless baseline ({r0.baseline:.4g}).")
    return out


def metric_words(objective: str) -> str:
    """``val_mse`` -> "val MSE": the objective as a sentence says it (acronyms capitalised)."""
    split, metric = objective.partition("_")[0::2]
    if not metric:
        return objective
    return f"{split} {metric.upper() if len(metric) <= 3 else metric.replace('_', ' ')}"


def _seed_verdict(r: ModelRow) -> str:
    """``irnn solved in 3 of 5 seeds (1 diverged), val MSE 0.00012 ± 3e-05 (mean ± sample sd of
    the 4 that reached a value)``."""
    n = r.seeds_trained
    gone = f" ({len(r.seeds_diverged)} diverged)" if r.seeds_diverged else ""
    if r.seed_mean is None:
        value = "no seed reached a value"
    elif r.seed_sd is None:
        value = f"{metric_words(r.objective)} {r.seed_mean:.3g} (the one seed that reached a value)"
    else:
        of = f" of the {len(r.seed_values)} that reached a value" if r.seeds_diverged else ""
        value = f"{metric_words(r.objective)} {r.seed_mean:.3g} ± {r.seed_sd:.2g} (mean ± sample sd{of})"
    if r.seeds_solved is not None:
        return f"{r.model} solved in {r.seeds_solved} of {n} seeds{gone}, {value}{_steps_spread(r)}"
    return f"{r.model} {value} over {n} seeds{gone}"


def _steps_spread(r: ModelRow) -> str:
    """``; steps to solve 5,200 ± 1,100 (the 4 seeds that solved)``, where the seeds' curves were
    recorded and two or more solved; empty otherwise."""
    steps = list(r.seed_solved_at.values())
    if len(steps) < 2:
        return ""
    return (
        f"; steps to solve {statistics.fmean(steps):,.0f} ± {statistics.stdev(steps):,.0f} "
        f"(the {len(steps)} seeds that solved)"
    )


def _seed_table(rows: list[ModelRow]) -> list[str]:
    """The error bars, where a best configuration trained at several seeds (a confirmation): per
    model the seeds solved and diverged, mean ± sample sd, range, and every seed's value."""
    spread = [r for r in rows if r.seeds_trained >= 2]
    if not spread:
        return []
    out = [
        "",
        "Across seeds (each model's best configuration at each training seed; a seed's value is the best "
        "validation value it reached):",
        "",
        "| model | seeds | solved | diverged | mean ± sample sd | min | max | each seed (value, @ step it solved) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in spread:
        v = list(r.seed_values.values())
        each = {
            **{
                s: f"{x:.3g}" + (f" @{r.seed_solved_at[s]:,}" if s in r.seed_solved_at else "")
                for s, x in r.seed_values.items()
            },
            **{s: "diverged" for s in r.seeds_diverged},
        }
        mean = "–" if r.seed_mean is None else f"{r.seed_mean:.3g}"
        if r.seed_sd is not None:
            mean += f" ± {r.seed_sd:.2g}"
        solved = "–" if r.seeds_solved is None else str(r.seeds_solved)
        out.append(
            f"| {r.model} | {r.seeds_trained} | {solved} | {len(r.seeds_diverged)} | {mean} "
            f"| {_fmt(min(v, default=None))} | {_fmt(max(v, default=None))} "
            f"| {', '.join(f'{s}: {each[s]}' for s in sorted(each))} |"
        )
    return out


def _why_not(r: ModelRow) -> str:
    ends = ", ".join(f"{n} {k}" for k, n in sorted(r.endings.items(), key=lambda kv: -kv[1]))
    if r.best_value is None:  # ended before a first report (diverged at step 2), or none ran yet
        return f"no trial reached a value; trials: {ends}" if ends else "no trial reported yet"
    where = ""
    if r.baseline is not None and r.best_value >= 0.9 * r.baseline:
        where = "every trial stayed on the baseline plateau; "
    elif r.baseline is not None:
        where = f"best {r.best_value:.3g}, {r.times_below_baseline or 0:.1f}x below the baseline; "
    return f"{where}trials: {ends}"


def render_md(rows: list[ModelRow], spec: StudySpec | None) -> str:
    lines = []
    if spec is not None:
        lines += [f"# {spec.name}: {spec.description}", "", f"Task `{spec.task}` {spec.task_options}, "
                  f"objective `{spec.objective}` ({spec.direction}), {spec.steps:,} steps per trial at batch "
                  f"{spec.batch_size}.", ""]  # fmt: skip
    r0 = rows[0] if rows else None
    if r0 is not None and (r0.baseline is not None or r0.threshold is not None):
        parts = []
        if r0.baseline is not None:
            parts.append(f"memoryless baseline {r0.baseline:.4g}")
        if r0.threshold is not None:
            parts.append(f"solved: {r0.threshold_rule} (threshold {r0.threshold:.4g})")
        text = "; ".join(parts)
        lines += [text[0].upper() + text[1:] + ".", ""]
    lines += [*_verdict(rows), ""]
    lines += [
        "| model | solved | steps to solve | trials solved | best reached (val) | best trial ended "
        "| test (best-val ckpt) | published settings (our run) | trials (complete/pruned/failed) | device-h |",
        "|---|:-:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        pub = _fmt(r.published_settings_value)
        if r.published_settings_label:
            pub += f" ({r.published_settings_label})"
        solved = "–" if r.solved is None or not r.started else ("yes" if r.solved else "no")
        to_solve = f"{r.steps_to_solve:,}" if r.steps_to_solve is not None else "–"
        lines.append(
            f"| {r.model} | {solved} | {to_solve} | {_fraction(r)} | {_fmt(r.best_value)} | {r.best_ended or '–'} "
            f"| {_fmt(r.test_value)} | {pub} | {r.trials} ({r.complete}/{r.pruned}/{r.failed}) "
            f"| {r.device_hours:.3f} |"
        )
    lines += _seed_table(rows)
    lines += ["", "Best hyperparameters, and the command that re-runs that trial alone:", ""]
    for r in rows:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.best_params.items())
        if r.best_trial is None:
            lines.append(f"- **{r.model}**: no trial reached a value")
            continue
        params = params or "every hyperparameter fixed by the spec"
        lines.append(f"- **{r.model}** (trial {r.best_trial}): {params}{_spread(r.seed_values)}")
        if r.reproduce:
            lines.append(f"  `{r.reproduce}`")
    gave_up = [(r.model, g) for r in rows for g in r.gave_up]
    if gave_up:
        lines += ["", "Trials failed for good (their worker died on every attempt):", ""]
        lines += [f"- {model} trial {g['trial']}: {g['reason']}" for model, g in gave_up]
    numbers = [(r.model, n) for r in rows for n in r.published_numbers]
    lines += [
        "",
        "Our protocol: model selection on the validation split; a trial's value is the best validation value "
        "it reached (a trial that crossed the threshold counts as solved however it ended); the test column "
        "evaluates the best trial's best-validation checkpoint once (– where the task has no test split).",
        "",
        "Published numbers (their protocol, not ours: compare with care):",
        "",
    ]
    if numbers:
        for model, n in numbers:
            size = f", size {n['size']}" if "size" in n else ""
            lines.append(
                f"- {model}: {n['metric']} {n['value']} {n['units']} at hidden {n['hidden_size']}{size}; "
                f"{n['protocol']} [{n['source']}]"
            )
    elif spec is not None and _is_smoke(spec.task):
        lines.append("- none: a smoke task never borrows published numbers")
    else:
        task = spec.task if spec else "this task"
        lines.append(f"- none on `{task}` for these models: the papers give plots only, or no number was retrieved "
                     "(REFERENCE.md §4)")  # fmt: skip
    return "\n".join(lines) + "\n"
