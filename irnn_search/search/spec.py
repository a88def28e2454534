"""Study specs as a frozen dataclass tree: what a validated ``studies/*.toml`` file resolves to.

Every default is explicit in the tree, so the stored spec pins every value and a worker rebuilds
exactly the same objective even after a default changes in the code. ``StudySpec.to_dict()`` /
``from_dict()`` round-trip through JSON (what a launch stores), ``spec_hash()`` identifies it.

Reading and validating the TOML is ``irnn_search.search.validate`` (the study) and
``irnn_search.search.validate_model`` (one model table); the file format is documented there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

from irnn_search.models import model_class, model_names
from irnn_search.tasks import task_names

SPEC_FORMAT = 1  # bump when to_dict's layout changes; from_dict refuses other formats

#: Training hyperparameters a model table may search, in suggestion order: the optimizer comes
#: first because momentum and alpha depend on it.
TRAIN_PARAMS = ("optimizer", "lr", "lr_orth", "momentum", "alpha", "clip")
#: conditional hyperparameter -> the optimizer that uses it
CONDITIONAL = {"momentum": "sgd", "alpha": "rmsprop"}
CLIP_OFF = "off"

#: sampler name -> its options and their defaults (besides ``seed``)
SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "tpe": {"n_startup_trials": 10, "multivariate": False, "group": False, "constant_liar": True},
    "random": {},
    "cmaes": {"n_startup_trials": 1, "sigma0": None, "with_margin": False},
    "gp": {"n_startup_trials": 10, "deterministic_objective": False},
}
#: pruner name -> its options and their defaults; "report_every" / "steps" are resolved per spec
#: ``keep_answers`` (1 = on): on tasks with a solve threshold, only a trial stuck on the memoryless
#: plateau while at least 1/η of the trials that got as far have left it may be pruned; solved and
#: learning trials never are (see ``search.space.AnswerKeepingPruner``).
#: ``plateau_grace`` (steps; any pruner but ``none``, only stored when a spec sets it): no trial on
#: the plateau is pruned before this step, nor before twice the longest plateau a trial of the study
#: has left; default half the study's steps (``search.space.plateau_grace``).
PLATEAU_GRACE = "plateau_grace"
PRUNER_OPTIONS: dict[str, dict[str, Any]] = {
    "asha": {
        "min_resource": "report_every",
        "reduction_factor": 4,
        "min_early_stopping_rate": 0,
        "bootstrap_count": 0,
        "keep_answers": 1,
    },
    "hyperband": {
        "min_resource": "report_every",
        "max_resource": "steps",
        "reduction_factor": 3,
        "bootstrap_count": 0,
        "keep_answers": 1,
    },
    "median": {
        "n_startup_trials": 5,
        "n_warmup_steps": 0,
        "interval_steps": "report_every",
        "n_min_trials": 1,
        "keep_answers": 1,
    },
    "none": {},
}
# A study or model name: also a folder name (checkpoints), so no separator and no leading dot.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: "no value given" for ``SpecError`` (None is a value a spec can hold)
UNSET: Any = object()


def valid_name(name: object) -> bool:
    """Whether ``name`` is a valid study or model name: letters, digits, ``_``, ``.``, ``-``, not
    starting with ``.`` (so it is one path component and never ``..``), nothing after it (no
    trailing newline)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


class SpecError(ValueError):
    """A study spec is malformed or impossible.

    The message names the file, the key path (``models.irnn.lr.low``), the bad value and what is
    allowed; the same pieces are attributes for programs.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        key: str | None = None,
        value: Any = UNSET,
        allowed: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.key = key
        self.value = None if value is UNSET else value
        self.allowed = allowed
        # "<file>: <key> = <value>: <problem> (allowed: <allowed>)", leaving out what is unknown.
        where = key or ""
        if value is not UNSET:
            where = f"{where} = {fmt_value(value)}" if where else fmt_value(value)
        head = ": ".join(part for part in (file, where) if part)
        message = f"{head}: {problem}" if head else problem
        if allowed:
            message += f" (allowed: {allowed})"
        super().__init__(message)


def fmt_value(value: Any) -> str:
    """A value as the user wrote it in TOML (strings double-quoted, ``true``, ``[1, 2]``)."""
    try:
        return json.dumps(thaw(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


# -- the resolved spec ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Fixed:
    """One value for every trial (not an Optuna parameter)."""

    value: Any
    kind: ClassVar[str] = "fixed"


@dataclass(frozen=True)
class FloatRange:
    """``trial.suggest_float(name, low, high, log=log, step=step)``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    kind: ClassVar[str] = "float"


@dataclass(frozen=True)
class IntRange:
    """``trial.suggest_int(name, low, high, log=log, step=step)``."""

    low: int
    high: int
    log: bool = False
    step: int = 1
    kind: ClassVar[str] = "int"


@dataclass(frozen=True)
class Choice:
    """``trial.suggest_categorical(name, choices)``; ``"off"`` is a choice of ``clip``."""

    choices: tuple[Any, ...]
    kind: ClassVar[str] = "categorical"


Param: TypeAlias = Fixed | FloatRange | IntRange | Choice


@dataclass(frozen=True)
class Budget:
    """Limits of one (task, model) study; a study stops at whichever comes first.

    ``trials`` counts every trial, the enqueued published settings included.
    """

    trials: int | None = None
    wall_time_s: float | None = None  # seconds of wall time since launch
    device_hours: float | None = None  # summed over workers: trial wall time, a packed trial's share of its pack's

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "wall_time_s": self.wall_time_s, "device_hours": self.device_hours}


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=lambda: dict(SAMPLER_OPTIONS["tpe"]))


@dataclass(frozen=True)
class PrunerSpec:
    name: str = "asha"
    options: dict[str, Any] = field(default_factory=dict)  # resolved: steps, never placeholders


@dataclass(frozen=True)
class ModelSpec:
    """One model of a study: its family, its search space and its budget.

    ``params`` holds every searchable training hyperparameter and every option of the family's
    config, in suggestion order (``TRAIN_PARAMS`` first, then the config's fields).
    """

    name: str
    family: str
    params: dict[str, Param]
    budget: Budget

    @property
    def searched(self) -> list[str]:
        """Names of the parameters Optuna samples (ranges and choices), in suggestion order."""
        return [k for k, p in self.params.items() if not isinstance(p, Fixed)]

    @property
    def model_option_names(self) -> list[str]:
        """Names of the family config's options (the parameters that are not ``TRAIN_PARAMS``)."""
        return [k for k in self.params if k not in TRAIN_PARAMS]

    def optimizers(self) -> tuple[str, ...]:
        """The optimizers a trial of this model can use."""
        p = self.params["optimizer"]
        return tuple(p.choices) if isinstance(p, Choice) else (str(p.value),)  # type: ignore[union-attr]


@dataclass(frozen=True)
class StudySpec:
    """A validated study spec with every default made explicit.

    ``to_dict()`` / ``from_dict()`` round-trip through JSON; ``spec_hash()`` identifies it. The
    file it came from (``source``) is not part of either: the same spec loaded from another path
    or stored in a database is the same spec.
    """

    name: str
    description: str
    task: str
    task_options: dict[str, Any]
    steps: int
    report_every: int
    batch_size: int
    seeds: tuple[int, ...]
    objective: str
    direction: Literal["minimize", "maximize"]
    sampler: SamplerSpec
    pruner: PrunerSpec
    warm_start: bool
    models: dict[str, ModelSpec]
    source: str | None = field(default=None, compare=False)

    def model(self, name: str) -> ModelSpec:
        """The model named ``name``; an unknown name lists the valid ones."""
        try:
            return self.models[name]
        except KeyError:
            raise SpecError(f"study {self.name!r} has no model {name!r}", allowed=", ".join(self.models)) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with every value explicit (what is stored at launch)."""
        return {
            "format": SPEC_FORMAT,
            "name": self.name,
            "description": self.description,
            "task": self.task,
            "task_options": thaw(self.task_options),
            "steps": self.steps,
            "report_every": self.report_every,
            "batch_size": self.batch_size,
            "seeds": list(self.seeds),
            "objective": self.objective,
            "direction": self.direction,
            "sampler": {"name": self.sampler.name, "seed": self.sampler.seed, "options": thaw(self.sampler.options)},
            "pruner": {"name": self.pruner.name, "options": thaw(self.pruner.options)},
            "warm_start": self.warm_start,
            "models": {
                name: {
                    "family": m.family,
                    "params": {k: _param_to_dict(p) for k, p in m.params.items()},
                    "budget": m.budget.to_dict(),
                }
                for name, m in self.models.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySpec:
        """Rebuild a spec from ``to_dict()`` output (e.g. read back from the database).

        Storage is shared, so the data is not trusted to come from ``to_dict``: besides its format
        version and shape, what names files or code is checked again (the study and model names,
        the task, each model's family, the seeds).

        Raises:
            SpecError: another format version, a missing key, or an invalid name, task, family or seed.
        """
        if data.get("format") != SPEC_FORMAT:
            raise SpecError(f"stored spec has format {data.get('format')!r}; this version reads format {SPEC_FORMAT}")
        try:
            bad = [repr(n) for n in (data["name"], *data["models"]) if not valid_name(n)]
            if bad:
                raise SpecError(f"stored spec has an invalid study or model name: {', '.join(bad)}")
            if data["task"] not in task_names():
                raise SpecError(f"stored spec names an unknown task {data['task']!r}")
            families = [m["family"] for m in data["models"].values()]
            if unknown := [f for f in families if f not in model_names()]:
                raise SpecError(f"stored spec names an unknown model family {unknown[0]!r}")
            if not all(type(s) is int for s in data["seeds"]):
                raise SpecError(f"stored spec has seeds that are not integers: {data['seeds']!r}")
            models = {}
            for name, m in data["models"].items():
                params = {k: _param_from_dict(p) for k, p in m["params"].items()}
                b = m["budget"]
                models[name] = ModelSpec(
                    name=name,
                    family=m["family"],
                    params=ordered_params(m["family"], params),
                    budget=Budget(trials=b["trials"], wall_time_s=b["wall_time_s"], device_hours=b["device_hours"]),
                )
            return cls(
                name=data["name"],
                description=data["description"],
                task=data["task"],
                task_options=freeze(data["task_options"]),
                steps=data["steps"],
                report_every=data["report_every"],
                batch_size=data["batch_size"],
                seeds=tuple(data["seeds"]),
                objective=data["objective"],
                direction=data["direction"],
                sampler=SamplerSpec(
                    name=data["sampler"]["name"],
                    seed=data["sampler"]["seed"],
                    options=freeze(data["sampler"]["options"]),
                ),
                pruner=PrunerSpec(name=data["pruner"]["name"], options=freeze(data["pruner"]["options"])),
                warm_start=data["warm_start"],
                models=models,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise SpecError(f"stored spec is incomplete or malformed: {exc!r}") from None

    def canonical_json(self) -> str:
        """``to_dict()`` as canonical JSON: sorted keys, no whitespace, no NaN."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def spec_hash(self) -> str:
        """sha256 (hex) of ``canonical_json()``: equal specs hash equal, whatever the file layout."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _param_to_dict(p: Param) -> dict[str, Any]:
    if isinstance(p, Fixed):
        return {"type": "fixed", "value": thaw(p.value)}
    if isinstance(p, Choice):
        return {"type": "categorical", "choices": list(p.choices)}
    return {"type": p.kind, "low": p.low, "high": p.high, "log": p.log, "step": p.step}


def _param_from_dict(d: Mapping[str, Any]) -> Param:
    kind = d["type"]
    if kind == "fixed":
        return Fixed(freeze(d["value"]))
    if kind == "categorical":
        return Choice(tuple(d["choices"]))
    if kind == "float":
        return FloatRange(float(d["low"]), float(d["high"]), bool(d["log"]), d["step"])
    if kind == "int":
        return IntRange(int(d["low"]), int(d["high"]), bool(d["log"]), int(d["step"]))
    raise SpecError(f"stored spec has an unknown parameter type {kind!r}", allowed="fixed, float, int, categorical")


def freeze(value: Any) -> Any:
    """Lists -> tuples, recursively (so that a frozen spec compares equal after a JSON round trip)."""
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {k: freeze(v) for k, v in value.items()}
    return value


def thaw(value: Any) -> Any:
    """Tuples -> lists, recursively (JSON form)."""
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


def ordered_params(family: str, params: Mapping[str, Param]) -> dict[str, Param]:
    """``TRAIN_PARAMS`` first, then the family's config fields in declaration order, then the rest."""
    order = list(TRAIN_PARAMS)
    if family in model_names():
        order += [f.name for f in dataclasses.fields(model_class(family).config_cls)]
    rank = {k: i for i, k in enumerate(order)}
    return {k: params[k] for k in sorted(params, key=lambda k: (rank.get(k, len(rank)), k))}


__all__: Sequence[str] = (
    "CLIP_OFF",
    "CONDITIONAL",
    "PRUNER_OPTIONS",
    "SAMPLER_OPTIONS",
    "SPEC_FORMAT",
    "TRAIN_PARAMS",
    "Budget",
    "Choice",
    "Fixed",
    "FloatRange",
    "IntRange",
    "ModelSpec",
    "Param",
    "PrunerSpec",
    "SamplerSpec",
    "SpecError",
    "StudySpec",
    "fmt_value",
    "freeze",
    "ordered_params",
    "thaw",
    "valid_name",
)
