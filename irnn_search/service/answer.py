"""A study's answer, per model: solved or not against the task's threshold, how fast (steps to
solve), how often (the fraction of trials that solved), and the best value any trial reached.

Everything is read from the trials' reported values, so it holds however a trial ended: a trial
that crossed the threshold and was then pruned, diverged or interrupted still counts as solved,
and an interrupted study still shows what its trials reached. A trial that was interrupted or lost
and re-queued is one *lineage* (the re-queued copy resumes from the checkpoint), counted once.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.outcome import Outcome
from irnn_search.search.spec import StudySpec
from irnn_search.service.attempt import CURVE_SEED, DIVERGED_SEED, VALUE_SEED
from irnn_search.service.budget import device_seconds, usage
from irnn_search.service.recovery import released
from irnn_search.service.storage import PACK_SLOTS
from irnn_search.service.studies import stored_spec

#: how a lineage ended when its trial recorded no outcome, in the words the report prints
ENDED = {TrialState.COMPLETE: Outcome.COMPLETE, TrialState.PRUNED: Outcome.PRUNED, TrialState.FAIL: Outcome.FAILED}


@dataclass(frozen=True)
class TaskLines:
    """The lines a model is judged against, in the objective's units."""

    baseline: float | None  # what a memoryless predictor scores
    threshold: float | None  # "solved" below this (minimized objectives only)
    rule: str | None  # the threshold in words, with why


def task_lines(spec: StudySpec) -> TaskLines:
    """Baseline and solve threshold of a spec's objective. Tasks that need data for their baseline
    (MNIST's majority class) report None when the data is not here."""
    from irnn_search.tasks import TaskError, build_task

    metric = spec.objective.removeprefix("val_")
    try:
        task = build_task(spec.task, spec.task_options)
        baseline = task.baseline().get(metric)
    except (TaskError, OSError):
        return TaskLines(None, None, None)
    th = task.solve_threshold()
    if th is None or th.metric != metric or spec.direction != "minimize":
        return TaskLines(baseline, None, None)
    return TaskLines(baseline, th.value, th.rule)


def first_below(curve: dict[int, float], threshold: float | None) -> int | None:
    """The first step of ``curve`` (step -> value) whose value is below ``threshold``: when a run
    solved (None without a threshold, or where it never was below)."""
    if threshold is None:
        return None
    return next((step for step in sorted(curve) if curve[step] < threshold), None)


@dataclass
class Lineage:
    """One configuration's whole run: its first trial and the re-queued attempts that resumed it."""

    number: int  # the first trial's number (the lineage id)
    params: dict[str, Any]
    source: str  # "published" or "sampler"
    label: str | None  # the published setting's label
    ended: str  # complete | pruned | diverged | failed | running | waiting | interrupted
    reason: str | None
    curve: dict[int, float] = field(default_factory=dict)  # step -> objective, over all attempts
    final: float | None = None  # a complete trial's value
    device_s: float = 0.0
    trials: list[int] = field(default_factory=list)  # every attempt's trial number
    packed: bool = False  # an attempt trained in a pack (``worker --pack``): re-run it with --packed

    def best(self, direction: str) -> tuple[float | None, int | None]:
        """The best value reached and the step it was reached at (None while nothing reported)."""
        points = [(v, s) for s, v in self.curve.items() if math.isfinite(v)]
        if self.final is not None and math.isfinite(self.final) and not points:
            return self.final, None
        if not points:
            return None, None
        v, s = min(points) if direction == "minimize" else max(points, key=lambda p: (p[0], -p[1]))
        return v, s

    def solved_at(self, threshold: float | None) -> int | None:
        """The first reported step below ``threshold``."""
        return first_below(self.curve, threshold)


def lineages(trials: list[FrozenTrial]) -> list[Lineage]:
    """Group a study's trials by lineage, in order of the lineage's first trial. Surplus trials
    (created past the budget, never trained) are left out."""
    out: dict[int, Lineage] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("outcome") == Outcome.SURPLUS:
            continue
        key = int(t.user_attrs.get("lineage", t.number))
        lin = out.get(key)
        if lin is None:
            lin = out[key] = Lineage(
                number=key,
                params=dict(t.params),
                source=str(t.user_attrs.get("source", "sampler")),
                label=t.user_attrs.get("label"),
                ended="waiting",
                reason=None,
            )
        lin.trials.append(t.number)
        lin.curve.update({int(s): float(v) for s, v in t.intermediate_values.items()})
        lin.device_s += device_seconds(t)
        lin.packed = lin.packed or PACK_SLOTS in t.user_attrs
        if t.state == TrialState.COMPLETE and t.value is not None:
            lin.final = float(t.value)
        # The latest attempt says how the lineage stands.
        if t.state == TrialState.RUNNING:
            lin.ended = "running"
        elif t.state == TrialState.WAITING:
            lin.ended = "waiting"
        elif released(t):
            lin.ended = Outcome.INTERRUPTED.value
        else:
            lin.ended = str(t.user_attrs.get("outcome") or ENDED.get(t.state, t.state.name.lower()))
            if lin.ended == Outcome.COMPLETE and t.state == TrialState.PRUNED:
                lin.ended = Outcome.PRUNED.value
        lin.reason = t.user_attrs.get("reason", lin.reason)
    return list(out.values())


@dataclass
class Answer:
    """What one model's study answers."""

    baseline: float | None
    threshold: float | None
    threshold_rule: str | None
    lineages: int  # configurations tried (a re-queued attempt is not a new one)
    started: int  # of which ran (finished, or running and reported)
    solved: bool | None  # None where the task has no threshold
    solved_count: int
    solved_fraction: float | None  # solved / started
    steps_to_solve: int | None  # the first step at which the best trial crossed the threshold
    fastest_solve: int | None  # the earliest crossing of any trial
    best_value: float | None
    best_step: int | None
    best_trial: int | None  # lineage id (its first trial's number)
    best_params: dict[str, Any]
    best_packed: bool  # the best trial trained in a pack: its reproduce line takes --packed
    best_ended: str | None
    best_source: str | None
    endings: dict[str, int]  # how the lineages ended: complete / pruned / diverged / ...
    published_value: float | None  # best reached by a published-settings trial (our run)
    published_label: str | None
    published_solved_at: int | None
    below_baseline: float | None  # baseline / best value (how many times below it), minimize only


def better(direction: str, a: float, b: float | None) -> bool:
    """Whether ``a`` beats ``b`` (None: nothing yet) in ``direction``."""
    return b is None or (a < b if direction == "minimize" else a > b)


def top_lineage(lins: list[Lineage], direction: str, source: str | None = None) -> Lineage | None:
    """The lineage that reached the best value (of ``source`` only, when given)."""
    top, top_v = None, None
    for lin in lins:
        v, _ = lin.best(direction)
        if v is not None and (source is None or lin.source == source) and better(direction, v, top_v):
            top, top_v = lin, v
    return top


def answer(study: optuna.Study, spec: StudySpec, lines: TaskLines | None = None) -> Answer:
    """The answer of one model's study (see the module docstring)."""
    lines = lines or task_lines(spec)
    direction = spec.direction
    lins = lineages(study.get_trials(deepcopy=False))
    # Every configuration that ran counts, a trial that diverged before its first report included;
    # one still running counts once it has reported.
    started = [lin for lin in lins if lin.curve or lin.final is not None or lin.ended not in ("waiting", "running")]
    best = top_lineage(lins, direction)
    best_v, best_s = best.best(direction) if best is not None else (None, None)
    pub = top_lineage(lins, direction, "published")
    pub_v = pub.best(direction)[0] if pub is not None else None
    endings: dict[str, int] = {}
    for lin in lins:
        endings[lin.ended] = endings.get(lin.ended, 0) + 1
    solved_steps = [at for lin in lins if (at := lin.solved_at(lines.threshold)) is not None]
    has_threshold = lines.threshold is not None
    solved = bool(solved_steps) if has_threshold else None
    below = None
    if lines.baseline is not None and best_v is not None and direction == "minimize" and best_v > 0:
        below = lines.baseline / best_v
    return Answer(
        baseline=lines.baseline,
        threshold=lines.threshold,
        threshold_rule=lines.rule,
        lineages=len(lins),
        started=len(started),
        solved=solved,
        solved_count=len(solved_steps),
        solved_fraction=(len(solved_steps) / len(started)) if has_threshold and started else None,
        steps_to_solve=best.solved_at(lines.threshold) if best is not None else None,
        fastest_solve=min(solved_steps) if solved_steps else None,
        best_value=best_v,
        best_step=best_s,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_packed=best.packed if best else False,
        best_ended=best.ended if best else None,
        best_source=best.source if best else None,
        endings=endings,
        published_value=pub_v,
        published_label=pub.label if pub else None,
        published_solved_at=pub.solved_at(lines.threshold) if pub else None,
        below_baseline=below,
    )


@dataclass(frozen=True)
class Seeds:
    """What each training seed of one configuration reached: a multi-seed trial (a confirmation)
    trains every seed to its end and records each seed's best validation value, or why it
    diverged."""

    values: dict[int, float] = field(default_factory=dict)  # seed -> best validation value
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> why it reached no value
    curves: dict[int, dict[int, float]] = field(default_factory=dict)  # seed -> step -> value (since stop 16)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def sd(self) -> float | None:
        """The sample standard deviation (None below two values)."""
        return statistics.stdev(self.values.values()) if len(self.values) >= 2 else None

    def solved(self, threshold: float | None) -> int | None:
        """How many seeds ended below ``threshold`` (None without a threshold or any value)."""
        if threshold is None or not self.values:
            return None
        return sum(v < threshold for v in self.values.values())

    def solved_at(self, threshold: float | None) -> dict[int, int]:
        """Each seed's steps to solve: the first reported step below ``threshold``, for the seeds
        whose curve was recorded and crossed it."""
        out = {s: first_below(c, threshold) for s, c in self.curves.items()}
        return {s: step for s, step in out.items() if step is not None}


def seeds_of(trials: list[FrozenTrial], number: int | None) -> Seeds:
    """The seeds of lineage ``number``, read from all its attempts: a re-queued attempt inherits
    the seeds finished before it and adds the rest, so the lineage's first trial alone can miss
    seeds.

    Without a best lineage (its first seed diverged, so it reported nothing), the first lineage
    that finished any seed: in a confirmation study, the one configuration it retrains."""
    lins = lineages(trials)
    by_number = {t.number: t for t in trials}

    def read(lin: Lineage) -> Seeds:
        values: dict[int, float] = {}
        diverged: dict[int, str] = {}
        curves: dict[int, dict[int, float]] = {}
        for n in lin.trials:
            for k, v in by_number[n].user_attrs.items():
                if k.startswith(VALUE_SEED):
                    values[int(k.removeprefix(VALUE_SEED))] = float(v)
                elif k.startswith(DIVERGED_SEED):
                    diverged[int(k.removeprefix(DIVERGED_SEED))] = str(v)
                elif k.startswith(CURVE_SEED):
                    curves[int(k.removeprefix(CURVE_SEED))] = {int(step): float(value) for step, value in v}
        return Seeds(dict(sorted(values.items())), dict(sorted(diverged.items())), dict(sorted(curves.items())))

    if number is not None:
        return read(next(lin for lin in lins if lin.number == number))
    return next((got for got in map(read, lins) if got.values or got.diverged), Seeds())


def summary_metrics(a: Answer, device_hours: float, seeds: Seeds | None = None) -> dict[str, float]:
    """The answer as flat numbers, for an MLflow parent run (the runs table compares models by
    these). Unknown values are left out rather than logged as NaN. ``seeds``: the best
    configuration's seeds, where it trained several (a confirmation): their mean, sample sd, and
    how many solved, diverged and reached a value, so confirmations compare in the runs table."""
    out: dict[str, float] = {"trials": float(a.lineages), "device_hours": device_hours}
    if seeds is not None and (seeds.values or seeds.diverged):
        solved = seeds.solved(a.threshold)
        steps = list(seeds.solved_at(a.threshold).values())
        for key, value in (
            ("seed_mean", seeds.mean),
            ("seed_sd", seeds.sd),
            ("seeds_solved", solved),
            ("seeds_reached", len(seeds.values)),
            ("seeds_diverged", len(seeds.diverged)),
            ("seed_steps_to_solve_mean", statistics.fmean(steps) if steps else None),
            ("seed_steps_to_solve_sd", statistics.stdev(steps) if len(steps) >= 2 else None),
        ):
            if value is not None and math.isfinite(float(value)):
                out[key] = float(value)
    for key, value in (
        ("best_value", a.best_value),
        ("best_step", a.best_step),
        ("steps_to_solve", a.steps_to_solve),
        ("solved_fraction", a.solved_fraction),
        ("times_below_baseline", a.below_baseline),
        ("published_settings_value", a.published_value),
    ):
        if value is not None and math.isfinite(float(value)):
            out[key] = float(value)
    if a.solved is not None:
        out["solved"] = 1.0 if a.solved else 0.0
    return out


def _num(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)  # repr: the shortest string that round-trips


def reproduce_command(
    spec: StudySpec, model_key: str, params: dict[str, Any], *, seed: int | None = None, packed: bool = False
) -> str:
    """The ``irnn-search train`` command that re-runs one trial alone: the same task, model,
    hyperparameters, steps, batch size, evaluation interval and seed (batches are a pure function
    of the seed and step, and initialisation of the seed, so it retraces the trial). ``packed``:
    the trial trained in a pack, so the command trains through the packed path (``--packed``),
    which retraces it bit for bit on CPU; the ordinary loop adds in another order."""
    from irnn_search.search.space import params_to_kwargs

    model = spec.model(model_key)
    train_kwargs, model_options = params_to_kwargs(model, params)
    parts = ["irnn-search train", f"--task {spec.task}", f"--model {model.family}"]
    for k, v in spec.task_options.items():
        if k in ("data_dir", "cache_dir", "mirrors"):
            continue
        parts.append(f"--T {v}" if k == "T" else f"-t {k}={_num(v)}")
    for k, v in model_options.items():
        parts.append(f"--hidden {v}" if k == "hidden_size" else f"-m {k}={_num(v)}")
    for k, v in train_kwargs.items():
        if v is None and k != "clip":
            continue
        flag = "--" + k.replace("_", "-")
        parts.append(f"{flag} {'off' if k == 'clip' and v is None else _num(v)}")
    parts += [
        f"--steps {spec.steps}",
        f"--batch-size {spec.batch_size}",
        f"--eval-every {spec.report_every}",
        f"--seed {spec.seeds[0] if seed is None else seed}",
    ]
    if packed:
        parts.append("--packed")
    return " ".join(parts)


_LINES: dict[str, TaskLines] = {}  # spec hash -> its lines (MNIST's baseline reads the data once)


def lines_for(spec: StudySpec) -> TaskLines:
    """``task_lines``, computed once per spec in this process."""
    key = spec.spec_hash()
    if key not in _LINES:
        _LINES[key] = task_lines(spec)
    return _LINES[key]


def publish_summary(study: optuna.Study, tracker: Any) -> None:
    """Put the study's answer on its MLflow parent run, so the runs table and chart views compare
    models at a glance: metrics (best value, solved, steps to solve, solved fraction, trials,
    device-hours; logged at step = trials so far) and tags ``best.<param>`` (tags may change,
    params may not). Never raises: the summary must not stop a worker."""
    import logging

    parent = study.user_attrs.get("mlflow_parent_run_id")
    if tracker is None or parent is None:
        return
    try:
        spec = stored_spec(study)
        a = answer(study, spec, lines_for(spec))
        seeds = seeds_of(study.get_trials(deepcopy=False), a.best_trial) if len(spec.seeds) > 1 else None
        tracker.log_metrics(parent, a.lineages, summary_metrics(a, usage(study).device_hours, seeds))
        tags: dict[str, Any] = {f"best.{k}": _num(v) for k, v in a.best_params.items()}
        tags["irnn.objective"] = spec.objective
        tags["irnn.solved"] = "–" if a.solved is None else ("yes" if a.solved else "no")
        if a.best_trial is not None:
            tags["irnn.best_trial"] = a.best_trial
        tracker.set_tags(parent, tags)
    except Exception as exc:  # a summary is never worth a worker
        logging.getLogger(__name__).warning("could not update the summary of %s in MLflow: %s", study.study_name, exc)
