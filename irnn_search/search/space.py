"""A study spec's search space in Optuna terms: suggestions, the sampler and the pruner.

Optuna parameter names are the spec's keys (``lr``, ``clip``, ``identity_scale``, ...), so a
trial's params read the same as the TOML file and stay stable across launches. Only searched
parameters (ranges and choices) become Optuna parameters; fixed values come from the spec.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import optuna

from irnn_search.search.spec import (
    CLIP_OFF,
    CONDITIONAL,
    PLATEAU_GRACE,
    TRAIN_PARAMS,
    Fixed,
    FloatRange,
    IntRange,
    ModelSpec,
    Param,
    PrunerSpec,
    SamplerSpec,
    SpecError,
    StudySpec,
)
from irnn_search.tasks.base import derive_seed
from irnn_search.train import TrainConfig


def is_active(name: str, optimizer: str) -> bool:
    """Whether parameter ``name`` matters for a trial using ``optimizer`` (momentum: SGD only;
    alpha: RMSprop only; everything else: always)."""
    needed = CONDITIONAL.get(name)
    return needed is None or needed == optimizer


def _suggest_one(trial: optuna.trial.BaseTrial, name: str, param: Param) -> Any:
    if isinstance(param, Fixed):
        return param.value
    if isinstance(param, FloatRange):
        return trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, log=param.log, step=param.step)
    return trial.suggest_categorical(name, param.choices)


def suggest(trial: optuna.trial.BaseTrial, model: ModelSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample one configuration of ``model``: ``(train_kwargs, model_options)``.

    ``train_kwargs`` holds the searchable ``TrainConfig`` fields (``optimizer``, ``lr``,
    ``lr_orth``, ``clip`` and, when that optimizer is chosen, ``momentum`` or ``alpha``) and goes
    to ``build_train_config``; ``model_options`` is every option of the family's config and goes to
    ``build_model``. The optimizer is suggested first; ``momentum`` is suggested only in trials
    that chose SGD and ``alpha`` only in those that chose RMSprop, so an Adam trial's params have
    neither (and TrainConfig's defaults, which Adam ignores, apply). The ``clip`` choice ``"off"``
    becomes ``None`` (no clipping).

    Enqueued trials (``study.enqueue_trial``) get their enqueued values from these same calls,
    including values outside a range (Optuna warns and uses them).
    """
    values: dict[str, Any] = {}
    optimizer = _suggest_one(trial, "optimizer", model.params["optimizer"])
    values["optimizer"] = optimizer
    for name, param in model.params.items():
        if name == "optimizer" or not is_active(name, optimizer):
            continue
        values[name] = _suggest_one(trial, name, param)
    return _split(model, values)


def params_to_kwargs(model: ModelSpec, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(train_kwargs, model_options)`` of a finished trial from its Optuna ``params``.

    What ``suggest`` returned for that trial: fixed values from the spec, searched ones from
    ``params``. Used to rebuild the best trial for a final evaluation or a report.

    Raises:
        SpecError: ``params`` lacks a searched, active parameter (the trial belongs to another spec).
    """
    values: dict[str, Any] = {}
    for name, param in model.params.items():
        if isinstance(param, Fixed):
            values[name] = param.value
        elif name in params:
            values[name] = params[name]
    optimizer = values.get("optimizer")
    if optimizer is None:
        raise SpecError(f"trial params have no optimizer for model {model.name!r}", value=dict(params))
    values = {k: v for k, v in values.items() if is_active(k, optimizer)}
    missing = [k for k in model.searched if is_active(k, optimizer) and k not in values]
    if missing:
        raise SpecError(
            f"trial params lack {', '.join(missing)} for model {model.name!r} (a trial of another spec?)",
            value=dict(params),
        )
    return _split(model, values)


def _split(model: ModelSpec, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    train_kwargs: dict[str, Any] = {}
    for name in TRAIN_PARAMS:
        if name not in values:
            continue
        value = values[name]
        if name == "clip":
            value = None if value in (None, CLIP_OFF) else float(value)
        elif name in ("lr", "lr_orth", "momentum", "alpha") and value is not None:
            value = float(value)
        train_kwargs[name] = value
    model_options = {k: values[k] for k in model.model_option_names if k in values}
    return train_kwargs, model_options


def build_train_config(
    spec: StudySpec, train_kwargs: Mapping[str, Any], *, seed: int, device: str = "cpu"
) -> TrainConfig:
    """The ``TrainConfig`` of one trial run: the spec's steps and report interval, one seed."""
    return TrainConfig(steps=spec.steps, eval_every=spec.report_every, seed=seed, device=device, **train_kwargs)


def build_sampler(spec: StudySpec | SamplerSpec, *, stream: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a spec names, seeded.

    Args:
        stream: give workers that run the same study in parallel distinct streams (a worker
            number, a pid): with one shared seed their random start-up suggestions would be
            identical. The seed is then ``derive_seed(seed, stream)``; ``None`` uses the spec's
            seed as is (one process: reproducible).

    Raises:
        SpecError: ``cmaes`` without the ``cmaes`` package, or ``gp`` without scipy or torch; the
            message says what to install.
    """
    s = spec.sampler if isinstance(spec, StudySpec) else spec
    seed = s.seed if stream is None else derive_seed(s.seed, stream) % (2**32)
    o = s.options
    if s.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=o["n_startup_trials"],
            multivariate=o["multivariate"],
            group=o["group"],
            constant_liar=o["constant_liar"],
        )
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "cmaes":
        _require("cmaes", "the cmaes sampler", "pip install cmaes")
        # CMA-ES only models numeric ranges: categorical parameters (optimizer, clip choices) are
        # sampled by its independent sampler (random), with a warning from Optuna.
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=o["n_startup_trials"], sigma0=o["sigma0"], with_margin=o["with_margin"]
        )
    if s.name == "gp":
        _require("scipy", "the gp sampler", "pip install scipy")
        _require("torch", "the gp sampler", "pip install torch")
        return optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=o["n_startup_trials"], deterministic_objective=o["deterministic_objective"]
        )
    raise SpecError(f"unknown sampler {s.name!r}", allowed="tpe, random, cmaes, gp")


def _require(module: str, what: str, fix: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SpecError(f"{what} needs the Python package {module!r}, which is not installed; {fix}")


def build_pruner(spec: StudySpec | PrunerSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner a spec names. Resources are optimizer steps, as reported by ``train``.

    - ``asha``: ``SuccessiveHalvingPruner`` (asynchronous successive halving), rungs at
      ``min_resource · reduction_factor^k`` steps;
    - ``hyperband``: ``HyperbandPruner`` over ``[min_resource, max_resource]`` steps;
    - ``median``: ``MedianPruner``, checking every ``interval_steps`` steps after
      ``n_warmup_steps``;
    - ``none``: ``NopPruner``.

    The resolved spec's resources are multiples of ``report_every``, so every rung falls on a
    report. Long-memory tasks sit at the memoryless baseline for a while before they learn: with
    ``keep_answers`` (the default) the pruner is wrapped in ``AnswerKeepingPruner``, which never
    prunes a solved trial nor compares trials that are all still on the plateau.
    """
    p = spec.pruner if isinstance(spec, StudySpec) else spec
    base = _base_pruner(p)
    if isinstance(spec, StudySpec) and p.options.get("keep_answers", 1) and p.name != "none":
        threshold, baseline = answer_lines(spec)
        if threshold is not None or baseline is not None:
            eta = int(p.options.get("reduction_factor", 2)) if p.name in ("asha", "hyperband") else 2
            return AnswerKeepingPruner(
                base, threshold=threshold, baseline=baseline, keep=1 / max(eta, 2), grace=plateau_grace(spec)
            )
    return base


def plateau_grace(spec: StudySpec) -> int:
    """The step before which no trial on the plateau is pruned: the spec's ``plateau_grace``, or
    half the study's steps. Why half: the longest plateau a trial of ours left before it solved
    lasted 11,500 of its 24,000 steps (IRNN with W = I at T = 150, pruned at the 4,000-step rung,
    re-run alone: val MSE 7.2e-5, the study's best had it not been pruned; results/README.md)."""
    return int(spec.pruner.options.get(PLATEAU_GRACE, spec.steps // 2))


def answer_lines(spec: StudySpec) -> tuple[float | None, float | None]:
    """The objective's solve threshold and memoryless baseline, where the task has a threshold on
    the objective's metric; (None, None) otherwise. Cheap: the tasks that have thresholds (adding,
    copy) generate their data and load nothing."""
    from irnn_search.tasks import build_task

    task = build_task(spec.task, spec.task_options)
    th = task.solve_threshold()
    if th is None or spec.objective != f"val_{th.metric}" or spec.direction != "minimize":
        return None, None
    return th.value, task.baseline().get(th.metric)


class AnswerKeepingPruner(optuna.pruners.BasePruner):
    """A pruner that does not throw answers away on long-memory tasks (minimized objectives).

    Trials of the adding and copy tasks sit on the memoryless plateau for thousands of steps and
    then fall; comparing them there ranks noise, and the fraction of trials that solve is part of
    the answer. Around ``base`` (which is always asked first, so ASHA still records its rungs), a
    "prune" is overruled when:

    - the trial has already reported a value below ``threshold``: it solved the task (the first
      real adding study lost an LSTM at val MSE 0.0009 and an expRNN at 0.0086 to ASHA's
      12,000-step rung);
    - the trial has left the plateau (its latest value below ``plateau``): it is learning, and
      ranking learners against each other threw away an LSTM at 0.0116 that solved 250 steps
      later when re-run alone (scripts/audit_pruning.py on the main job, 2026-12-07);
    - the trial is still on the plateau (not worse than twice the baseline: that is a bad trial,
      left to ``base``), and fewer than ``keep`` (1/η, the fraction ASHA
      promotes) of the trials that got this far had left it by the same step: some plateau trial
      would then be promoted and another pruned, and which one is noise. Re-run alone, two of the
      three IRNN trials pruned on the plateau at step 1,000 of the main job solved at 2,500 and
      2,750 when one trial leaving the plateau was enough to prune them (2026-12-07).

    - the trial is still on the plateau and the step is before ``grace`` (half the study's steps
      by default), or before twice the longest plateau a trial of this study has left so far:
      a plateau says little about when a trial leaves it. At W = I on adding T = 150, a trial on
      the plateau at the 4,000-step rung, when 4 of the 6 trials that got as far had left it, was
      pruned; re-run alone it left the plateau at step 12,000 and reached val MSE 7.2e-5, better
      than the study's best (2026-12-07).

    So only a trial stuck on the plateau, late in its budget and well after every plateau this
    study has seen end, while enough others have left it to fill the promoted fraction, is pruned.
    """

    def __init__(
        self,
        base: optuna.pruners.BasePruner,
        *,
        threshold: float | None,
        baseline: float | None,
        keep: float = 0.5,
        grace: int = 0,
    ) -> None:
        self.base = base
        self.threshold = threshold
        # On the plateau: at or above 90% of the baseline, and not worse than twice it (that is a
        # bad trial, left to ``base``).
        self.plateau = 0.9 * baseline if baseline is not None else None
        self.ceiling = 2.0 * baseline if baseline is not None else None
        self.keep = keep  # the fraction of trials the base pruner promotes at a rung (1 / reduction factor)
        self.grace = grace  # no plateau trial is pruned before this step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if not self.base.prune(study, trial):
            return False
        values = trial.intermediate_values
        step = trial.last_step
        if step is None or not values:
            return True
        if self.threshold is not None and min(values.values()) < self.threshold:
            return False
        if self.plateau is not None and values[step] < self.plateau:
            return False  # learning
        if self.ceiling is not None and values[step] > self.ceiling:
            return True  # worse than twice the memoryless baseline: not a plateau, a bad trial
        if self.plateau is not None:
            if step < self.grace:
                return False
            others = [
                t
                for t in study.get_trials(deepcopy=False, states=_REPORTING)
                if t.number != trial.number and t.intermediate_values
            ]
            exits = [e for e in (self.plateau_exit(t.intermediate_values) for t in others) if e is not None]
            if exits and step < 2 * max(exits):
                return False  # plateaus this long have ended before, in this very study
            # The trials that got this far: how many had left the plateau by this step?
            reached = [t for t in others if max(t.intermediate_values) >= step]
            left = sum(any(v < self.plateau for s, v in t.intermediate_values.items() if s <= step) for t in reached)
            return left >= (len(reached) + 1) * self.keep
        return True

    def plateau_exit(self, values: Mapping[int, float]) -> int | None:
        """The first step at which a curve is below the plateau, if any: how long its plateau was."""
        assert self.plateau is not None
        return min((s for s, v in values.items() if v < self.plateau), default=None)


_REPORTING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


def _base_pruner(p: PrunerSpec) -> optuna.pruners.BasePruner:
    o = p.options
    if p.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=o["min_resource"],
            reduction_factor=o["reduction_factor"],
            min_early_stopping_rate=o["min_early_stopping_rate"],
            bootstrap_count=o["bootstrap_count"],
        )
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=o["min_resource"],
            max_resource=o["max_resource"],
            reduction_factor=o["reduction_factor"],
            bootstrap_count=o["bootstrap_count"],
        )
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=o["n_startup_trials"],
            n_warmup_steps=o["n_warmup_steps"],
            interval_steps=o["interval_steps"],
            n_min_trials=o["n_min_trials"],
        )
    if p.name == "none":
        return optuna.pruners.NopPruner()
    raise SpecError(f"unknown pruner {p.name!r}", allowed="asha, hyperband, median, none")


__all__ = [
    "AnswerKeepingPruner",
    "answer_lines",
    "build_pruner",
    "build_sampler",
    "build_train_config",
    "is_active",
    "params_to_kwargs",
    "suggest",
]


class PruneGate:
    """Whether a trial's pruner can decide anything at a report: ``trial.should_prune()`` reads the
    whole trial back from the storage (about 10 round trips on PostgreSQL), so it is skipped at
    reports where the answer is certainly "no".

    - ``none``: never asked;
    - ``asha``: only when a rung step ``min_resource · η^(min_early_stopping_rate + k)`` lies in
      ``(previous check, step]``; ``hyperband``: any ``min_resource · η^j`` (the rungs of all its
      brackets). That is exactly when Optuna's successive halving records a rung and may prune,
      so the decisions are the same as asking at every report;
    - ``median`` (and anything unknown): asked at every report.

    The first report of an attempt is always checked (a resumed trial may be past several rungs).
    """

    def __init__(self, spec: StudySpec | PrunerSpec) -> None:
        p = spec.pruner if isinstance(spec, StudySpec) else spec
        self.name = p.name
        o = p.options
        self._first: int | None = None  # the lowest rung step, when the rungs are known
        self._eta = 2
        if p.name in ("asha", "hyperband") and isinstance(o.get("min_resource"), int):
            self._eta = max(int(o.get("reduction_factor", 3)), 2)
            rate = int(o.get("min_early_stopping_rate", 0)) if p.name == "asha" else 0
            self._first = int(o["min_resource"]) * self._eta**rate
        self.last: int | None = None

    def _rung_in(self, low: int, high: int) -> bool:
        assert self._first is not None
        step = self._first
        while step <= high:
            if step > low:
                return True
            step *= self._eta
        return False

    def due(self, step: int) -> bool:
        if self.name == "none":
            return False
        if self._first is None or self.last is None:
            self.last = step
            return True
        due = self._rung_in(self.last, step)
        self.last = step
        return due
