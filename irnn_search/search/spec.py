"""Study specs: declarative TOML files in ``studies/``, validated into a frozen dataclass tree.

A spec names a task and its size, the models to compare (each with a search space), the budget
per model, the sampler, the pruner, the report interval, the seeds and the objective::

    [study]
    description = "adding problem, T=150"       # name defaults to the file stem
    task = "adding"
    task_options = { T = 150 }                  # checked against the task's config dataclass
    steps = 20000                               # optimizer steps per trial (required)
    report_every = 500                          # steps between validation reports (default steps // 20)
    batch_size = 16                             # default: the task's literature batch size
    seeds = [0]                                 # training seeds per configuration (default [0])
    objective = "val_mse"                       # default "val_" + the task's metric
    direction = "minimize"                      # default: the metric's natural direction
    sampler = { name = "tpe", seed = 0 }        # tpe (default) | random | cmaes | gp, plus options
    pruner = { name = "asha" }                  # asha (default) | hyperband | median | none, plus options
    budget = { trials = 40, wall_time = "2h" }  # per model; trials, wall_time, device_hours
    warm_start = true                           # enqueue published settings first (default)

    [models.irnn]
    hidden_size = 100                              # a fixed value
    lr = { low = 1e-5, high = 1e-2, log = true }   # a float or int range (optional step)
    clip = ["off", 1, 10, 100]                     # a list of choices; "off" = no clipping
    optimizer = ["sgd", "adam", "rmsprop"]
    momentum = { low = 0.0, high = 0.99 }          # sampled only when optimizer = "sgd"
    budget = { trials = 30 }                       # overrides the study's budget key by key

Every key of a model table is a training hyperparameter (``TRAIN_PARAMS``), an option of the
family's config dataclass, ``budget``, or ``family`` (a table named ``[models.lstm-512]`` with
``family = "lstm"`` compares two LSTMs). Everything not given is fixed at its default, and the
resolved spec says so explicitly: the stored spec pins every value, so a worker rebuilds exactly
the same objective even after a default changes in the code.

Conditional hyperparameters: ``momentum`` only matters for SGD and ``alpha`` only for RMSprop.
When ``optimizer`` is searched they are sampled only in trials that chose that optimizer (and are
absent from the others' params); when ``optimizer`` is fixed to another value, giving them is
refused as a mistake.

Validation is done once, here, before anything is stored: every fixed value, every range
endpoint, every choice (and every value of an integer range up to ``_MAX_INT_VALUES`` values) is
checked by constructing the real task, model and training configs, so a value the configs' own
``__post_init__`` rejects fails now, not in trial 37.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias

from irnn_search import bundled
from irnn_search.models import ModelError, build_model, model_class, model_names
from irnn_search.options import OptionError, build_config
from irnn_search.tasks import TaskError, task_class, task_names
from irnn_search.train import TrainConfig, TrainError

SPEC_FORMAT = 1  # bump when to_dict's layout changes; from_dict refuses other formats

#: Training hyperparameters a model table may search, in suggestion order: the optimizer comes
#: first because momentum and alpha depend on it.
TRAIN_PARAMS = ("optimizer", "lr", "lr_orth", "momentum", "alpha", "clip")
#: conditional hyperparameter -> the optimizer that uses it
CONDITIONAL = {"momentum": "sgd", "alpha": "rmsprop"}
CLIP_OFF = "off"

STUDY_KEYS = (
    "name",
    "description",
    "task",
    "task_options",
    "steps",
    "report_every",
    "batch_size",
    "seeds",
    "objective",
    "direction",
    "sampler",
    "pruner",
    "budget",
    "warm_start",
)
BUDGET_KEYS = ("trials", "wall_time", "device_hours")
RANGE_KEYS = ("low", "high", "log", "step")
DIRECTIONS = ("minimize", "maximize")

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

# Integer ranges up to this many values are checked value by value (nnRNN needs an even
# hidden_size: the endpoints alone would not catch 65 in [64, 128]).
_MAX_INT_VALUES = 4096
# Combinations of range endpoints and choices checked jointly (asRNN's a <= b spans two keys).
_MAX_JOINT_COMBINATIONS = 1024
# A study or model name: also a folder name (checkpoints), so no separator and no leading dot.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DURATION_RE = re.compile(
    r"^\s*(?:(?P<d>\d+(?:\.\d+)?)\s*d)?\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*"
    r"(?:(?P<m>\d+(?:\.\d+)?)\s*m)?\s*(?:(?P<s>\d+(?:\.\d+)?)\s*s)?\s*$"
)
_UNSET: Any = object()


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
        value: Any = _UNSET,
        allowed: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.key = key
        self.value = None if value is _UNSET else value
        self.allowed = allowed
        # "<file>: <key> = <value>: <problem> (allowed: <allowed>)", leaving out what is unknown.
        where = key or ""
        if value is not _UNSET:
            where = f"{where} = {fmt_value(value)}" if where else fmt_value(value)
        head = ": ".join(part for part in (file, where) if part)
        message = f"{head}: {problem}" if head else problem
        if allowed:
            message += f" (allowed: {allowed})"
        super().__init__(message)


def fmt_value(value: Any) -> str:
    """A value as the user wrote it in TOML (strings double-quoted, ``true``, ``[1, 2]``)."""
    try:
        return json.dumps(_thaw(value), ensure_ascii=False)
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
            "task_options": _thaw(self.task_options),
            "steps": self.steps,
            "report_every": self.report_every,
            "batch_size": self.batch_size,
            "seeds": list(self.seeds),
            "objective": self.objective,
            "direction": self.direction,
            "sampler": {"name": self.sampler.name, "seed": self.sampler.seed, "options": _thaw(self.sampler.options)},
            "pruner": {"name": self.pruner.name, "options": _thaw(self.pruner.options)},
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
                    params=_ordered_params(m["family"], params),
                    budget=Budget(trials=b["trials"], wall_time_s=b["wall_time_s"], device_hours=b["device_hours"]),
                )
            return cls(
                name=data["name"],
                description=data["description"],
                task=data["task"],
                task_options=_freeze(data["task_options"]),
                steps=data["steps"],
                report_every=data["report_every"],
                batch_size=data["batch_size"],
                seeds=tuple(data["seeds"]),
                objective=data["objective"],
                direction=data["direction"],
                sampler=SamplerSpec(
                    name=data["sampler"]["name"],
                    seed=data["sampler"]["seed"],
                    options=_freeze(data["sampler"]["options"]),
                ),
                pruner=PrunerSpec(name=data["pruner"]["name"], options=_freeze(data["pruner"]["options"])),
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
        return {"type": "fixed", "value": _thaw(p.value)}
    if isinstance(p, Choice):
        return {"type": "categorical", "choices": list(p.choices)}
    return {"type": p.kind, "low": p.low, "high": p.high, "log": p.log, "step": p.step}


def _param_from_dict(d: Mapping[str, Any]) -> Param:
    kind = d["type"]
    if kind == "fixed":
        return Fixed(_freeze(d["value"]))
    if kind == "categorical":
        return Choice(tuple(d["choices"]))
    if kind == "float":
        return FloatRange(float(d["low"]), float(d["high"]), bool(d["log"]), d["step"])
    if kind == "int":
        return IntRange(int(d["low"]), int(d["high"]), bool(d["log"]), int(d["step"]))
    raise SpecError(f"stored spec has an unknown parameter type {kind!r}", allowed="fixed, float, int, categorical")


def _freeze(value: Any) -> Any:
    """Lists -> tuples, recursively (so that a frozen spec compares equal after a JSON round trip)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def _thaw(value: Any) -> Any:
    """Tuples -> lists, recursively (JSON form)."""
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    return value


def _ordered_params(family: str, params: Mapping[str, Param]) -> dict[str, Param]:
    """``TRAIN_PARAMS`` first, then the family's config fields in declaration order, then the rest."""
    order = list(TRAIN_PARAMS)
    if family in model_names():
        order += [f.name for f in dataclasses.fields(model_class(family).config_cls)]
    rank = {k: i for i, k in enumerate(order)}
    return {k: params[k] for k in sorted(params, key=lambda k: (rank.get(k, len(rank)), k))}


# -- model facts the spec needs ------------------------------------------------------------------
@functools.cache
def has_constrained_params(family: str) -> bool:
    """Whether ``family`` has a constrained (orthogonal) parameter group, i.e. uses ``lr_orth``.

    Found by building a tiny model, with torch's global RNG state restored afterwards. A family
    that builds at none of the tiny sizes is assumed to have one (``lr_orth`` is then allowed).
    """
    import torch  # the model registry already imported it

    for hidden in (2, 4, 8, 16):
        try:
            with torch.random.fork_rng(devices=[]):
                model = build_model(family, {"hidden_size": hidden}, input_size=1, output_size=1)
        except ModelError:
            continue
        return any(g.kind == "constrained" for g in model.parameter_groups())
    return True


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as ``"90m"``, ``"2h"``, ``"1h30m"``, ``"3600s"``.

    Units: ``d``, ``h``, ``m``, ``s``, in that order, each at most once. A string without a unit
    is refused (``"3600"`` could mean anything); write the number itself for seconds.

    Raises:
        ValueError: not a positive finite duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not value.strip() or m is None or not any(m.groupdict().values()):
            raise ValueError("not a duration")
        units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
        seconds = sum(float(v) * units[k] for k, v in m.groupdict().items() if v is not None)
    else:
        raise ValueError("expected a duration")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("a duration must be positive")
    return seconds


# -- loading --------------------------------------------------------------------------------------
def available_specs(studies_dir: str | Path = "studies") -> list[str]:
    """Names of the ``*.toml`` specs in ``studies_dir`` (sorted; empty when the folder is absent)."""
    folder = Path(studies_dir)
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def load_spec(name_or_path: str | Path, studies_dir: str | Path = "studies") -> StudySpec:
    """Load and validate a spec from a path or a bare name.

    ``"adding"`` means ``<studies_dir>/adding.toml`` when that file exists, else the built-in spec
    of that name (shipped with the package), so a copy edited in ``studies_dir`` overrides the
    built-in one. Anything with a path separator or a ``.toml`` suffix, or an existing file, is a
    path.

    Raises:
        SpecError: the file is missing (the message lists the available names) or invalid.
    """
    text = str(name_or_path)
    as_path = Path(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in text or "\\" in text or text.endswith(".toml")
    if is_path or as_path.is_file():
        path = as_path
        if path.is_dir():
            raise SpecError(f"spec path {str(path)!r} is a folder, not a spec file: name a .toml file (in it)")
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} does not exist")
    else:
        path = Path(studies_dir) / f"{text}.toml"
        builtin = bundled.builtin_specs()
        if not path.is_file() and text in builtin:
            path = builtin[text]
        elif not path.is_file():
            names = sorted(set(available_specs(studies_dir)) | set(builtin))
            raise SpecError(
                f"no study named {text!r} in {str(studies_dir)!r} or among the built-in specs",
                allowed=", ".join(names) if names else f"none: {str(studies_dir)!r} has no *.toml files",
            )
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the spec: {exc.strerror or exc}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"the spec is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8, as TOML requires",
            file=str(path),
        ) from None
    return parse_spec(raw, source=str(path), default_name=path.stem)


def parse_spec(text: str, *, source: str = "<spec>", default_name: str | None = None) -> StudySpec:
    """Validate TOML text; ``source`` names it in errors, ``default_name`` is the name if unset.

    Raises:
        SpecError: malformed TOML (the message has the line and column) or an invalid spec.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"malformed TOML: {exc}", file=source) from None
    return resolve_spec(data, source=source, default_name=default_name)


def resolve_spec(data: Mapping[str, Any], *, source: str = "<spec>", default_name: str | None = None) -> StudySpec:
    """Validate parsed TOML (a dict) and resolve every default. See the module docstring."""
    return _Resolver(source).study(data, default_name)


# -- validation -----------------------------------------------------------------------------------
def _type_name(ann: Any) -> str:
    base, optional = _split_optional(ann)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        name = {int: "a list of integers", float: "a list of numbers", str: "a list of strings"}.get(item, "a list")
    else:
        name = names.get(base, str(base))
    return f"{name} (or omit it for the default)" if optional else name


def _split_optional(ann: Any) -> tuple[Any, bool]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return (args[0] if len(args) == 1 else ann), len(args) < len(typing.get_args(ann))
    return ann, False


def _strict(value: Any, ann: Any) -> Any:
    """``value`` checked (not coerced from strings) against a config field annotation.

    Ints are accepted for float fields (TOML ``1`` vs ``1.0``) and returned as floats.

    Raises:
        TypeError: the value has the wrong type.
    """
    base, _ = _split_optional(ann)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError
        (item,) = typing.get_args(base)[:1]
        return tuple(_strict(v, item) for v in value)
    if base is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    return value


# The type of each searchable training hyperparameter (clip also takes the string "off").
_TRAIN_ANNOTATIONS: dict[str, Any] = {
    "optimizer": str,
    "lr": float,
    "lr_orth": float,
    "momentum": float,
    "alpha": float,
    "clip": float,  # plus the string "off"
}


class _Resolver:
    """Walks the parsed TOML once, raising the first problem as a ``SpecError`` naming ``source``."""

    def __init__(self, source: str) -> None:
        self.file = source

    # -- helpers ------------------------------------------------------------------------------
    def err(self, key: str | None, problem: str, value: Any = _UNSET, allowed: str | None = None) -> SpecError:
        return SpecError(problem, file=self.file, key=key, value=value, allowed=allowed)

    def table(self, value: Any, key: str, what: str = "a table") -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.err(key, f"expected {what}", value, allowed=what)
        return value

    def known_keys(self, table: Mapping[str, Any], key: str, valid: Iterable[str], hint: str = "") -> None:
        valid = list(valid)
        for k in table:
            if k not in valid:
                close = difflib.get_close_matches(k, valid, n=1)
                suggestion = f"; did you mean {close[0]!r}?" if close else ""
                path = f"{key}.{k}" if key else k
                raise self.err(path, f"unknown key{hint}{suggestion}", allowed=", ".join(valid))

    def integer(self, value: Any, key: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.err(key, f"expected an integer >= {minimum}", value, allowed=f"an integer >= {minimum}")
        return value

    def number(self, value: Any, key: str) -> float:
        """A finite number > 0 (ints accepted)."""
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if not ok or value <= 0:
            raise self.err(key, "expected a positive number", value, allowed="a positive number")
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.err(key, "expected true or false", value, allowed="true, false")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            raise self.err(key, "expected a string", value, allowed="a string")
        return value

    # -- the study ----------------------------------------------------------------------------
    def study(self, data: Mapping[str, Any], default_name: str | None) -> StudySpec:
        self.known_keys(data, "", ("study", "models"), hint=" at the top level")
        if "study" not in data:
            raise self.err("study", "missing: every spec needs a [study] table", allowed="a [study] table")
        st = self.table(data["study"], "study")
        self.known_keys(st, "study", STUDY_KEYS)

        name = st.get("name", default_name)
        if name is None:
            raise self.err("study.name", "missing (no file name to default to)", allowed="a name")
        if not valid_name(name):
            raise self.err("study.name", "invalid study name", name, allowed="letters, digits, '_', '.', '-'")
        description = self.string(st.get("description", ""), "study.description")

        if "task" not in st:
            raise self.err("study.task", "missing", allowed=", ".join(task_names()))
        task = st["task"]
        if task not in task_names():
            raise self.err("study.task", "unknown task", task, allowed=", ".join(task_names()))
        task_options = self.task_options(task, st.get("task_options", {}))

        if "steps" not in st:
            raise self.err("study.steps", "missing: optimizer steps per trial", allowed="an integer >= 1")
        steps = self.integer(st["steps"], "study.steps")
        report_every = self.integer(st.get("report_every", max(1, steps // 20)), "study.report_every")
        if report_every > steps:
            raise self.err(
                "study.report_every", f"exceeds study.steps = {steps}", report_every, allowed=f"1 .. {steps}"
            )

        batch_size = self.batch_size(task, task_options, st.get("batch_size"))
        seeds = self.seeds(st.get("seeds", [0]))
        objective, direction = self.objective(task, st.get("objective"), st.get("direction"))
        sampler = self.sampler(st.get("sampler", {}))
        pruner = self.pruner(st.get("pruner", {}), steps=steps, report_every=report_every)
        warm_start = self.boolean(st.get("warm_start", True), "study.warm_start")
        default_budget = self.budget(st["budget"], "study.budget") if "budget" in st else {}

        if "models" not in data:
            raise self.err(
                "models", "missing: add one [models.<family>] table per model", allowed=", ".join(model_names())
            )
        models_table = self.table(data["models"], "models")
        if not models_table:
            raise self.err(
                "models", "no models: add one [models.<family>] table per model", allowed=", ".join(model_names())
            )
        models = {
            mname: self.model(mname, mtable, default_budget, steps=steps, report_every=report_every)
            for mname, mtable in models_table.items()
        }
        return StudySpec(
            name=name,
            description=description,
            task=task,
            task_options=task_options,
            steps=steps,
            report_every=report_every,
            batch_size=batch_size,
            seeds=seeds,
            objective=objective,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            warm_start=warm_start,
            models=models,
            source=self.file,
        )

    def task_options(self, task: str, raw: Any) -> dict[str, Any]:
        key = "study.task_options"
        table = self.table(raw, key)
        cls = task_class(task).config_cls
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        self.known_keys(table, key, names, hint=f" for task {task!r}")
        checked = {}
        for k, v in table.items():
            try:
                checked[k] = _strict(v, hints[k])
            except TypeError:
                raise self.err(f"{key}.{k}", "wrong type", v, allowed=_type_name(hints[k])) from None
        try:
            config = build_config(cls, checked, f"task {task!r}")
        except (TaskError, OptionError) as exc:
            bad = next((k for k in checked if re.search(rf"\b{re.escape(k)}\b", str(exc))), None)
            path, value = (f"{key}.{bad}", checked[bad]) if bad else (key, dict(checked))
            raise self.err(path, f"rejected by task {task!r}: {exc}", value) from None
        return _freeze({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})  # type: ignore[arg-type]

    def batch_size(self, task: str, task_options: Mapping[str, Any], raw: Any) -> int:
        cls = task_class(task)
        if raw is None:
            return cls.default_batch_size
        batch_size = self.integer(raw, "study.batch_size")
        try:
            # Constructing a task only checks its settings; data is loaded on first use.
            cls(build_config(cls.config_cls, _thaw(task_options), f"task {task!r}"), batch_size=batch_size)
        except (TaskError, OptionError) as exc:
            raise self.err("study.batch_size", f"rejected by task {task!r}: {exc}", batch_size) from None
        return batch_size

    def seeds(self, raw: Any) -> tuple[int, ...]:
        key = "study.seeds"
        items = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if not isinstance(items, list) or not items:
            raise self.err(key, "expected a non-empty list of seeds", raw, allowed="a list of integers >= 0")
        for i, s in enumerate(items):
            self.integer(s, f"{key}[{i}]", minimum=0)
        if len(set(items)) != len(items):
            raise self.err(key, "seeds repeat", raw, allowed="distinct integers >= 0")
        return tuple(items)

    def objective(self, task: str, raw: Any, raw_direction: Any) -> tuple[str, Literal["minimize", "maximize"]]:
        cls = task_class(task)
        allowed = [f"val_{m}" for m in cls.reported_metrics()]
        objective = raw if raw is not None else f"val_{cls.metric}"
        if objective not in allowed:
            raise self.err(
                "study.objective", f"task {task!r} does not report it", objective, allowed=", ".join(allowed)
            )
        natural = cls.metric_direction(objective.removeprefix("val_"))
        if raw_direction is None:
            if natural is None:
                raise self.err(
                    "study.direction", f"missing: say which way {objective} is better", allowed="minimize, maximize"
                )
            return objective, natural
        if raw_direction not in DIRECTIONS:
            raise self.err("study.direction", "unknown direction", raw_direction, allowed="minimize, maximize")
        if natural is not None and raw_direction != natural:
            raise self.err(
                "study.direction",
                f"{objective} is better when it is {'lower' if natural == 'minimize' else 'higher'}",
                raw_direction,
                allowed=natural,
            )
        return objective, raw_direction

    def sampler(self, raw: Any) -> SamplerSpec:
        key = "study.sampler"
        table = {"name": raw} if isinstance(raw, str) else self.table(raw, key, "a table or a sampler name")
        name = table.get("name", "tpe")
        if name not in SAMPLER_OPTIONS:
            raise self.err(f"{key}.name", "unknown sampler", name, allowed=", ".join(SAMPLER_OPTIONS))
        defaults = SAMPLER_OPTIONS[name]
        self.known_keys(table, key, ["name", "seed", *defaults], hint=f" for sampler {name!r}")
        seed = self.integer(table.get("seed", 0), f"{key}.seed", minimum=0)
        options = dict(defaults)
        for k in defaults:
            if k not in table:
                continue
            v, path = table[k], f"{key}.{k}"
            if k == "n_startup_trials":
                options[k] = self.integer(v, path, minimum=0)
            elif k == "sigma0":
                options[k] = self.number(v, path)
            else:
                options[k] = self.boolean(v, path)
        if options.get("group") and not options.get("multivariate"):
            raise self.err(f"{key}.group", "group = true needs multivariate = true", True, allowed="false")
        return SamplerSpec(name=name, seed=seed, options=options)

    def pruner(self, raw: Any, *, steps: int, report_every: int) -> PrunerSpec:
        key = "study.pruner"
        table = {"name": raw} if isinstance(raw, str) else self.table(raw, key, "a table or a pruner name")
        name = table.get("name", "asha")
        if name not in PRUNER_OPTIONS:
            raise self.err(f"{key}.name", "unknown pruner", name, allowed=", ".join(PRUNER_OPTIONS))
        defaults = PRUNER_OPTIONS[name]
        self.known_keys(table, key, ["name", *defaults], hint=f" for pruner {name!r}")
        placeholders = {"report_every": report_every, "steps": steps}
        options: dict[str, int] = {k: placeholders[v] if isinstance(v, str) else int(v) for k, v in defaults.items()}
        for k in defaults:
            if k in table:
                value = int(table[k]) if k == "keep_answers" and isinstance(table[k], bool) else table[k]
                options[k] = self.integer(value, f"{key}.{k}", minimum=0)
        multiple = f"a multiple of study.report_every = {report_every}, at most study.steps = {steps}"
        for k in ("min_resource", "max_resource", "interval_steps"):
            if k in options and (options[k] < report_every or options[k] % report_every or options[k] > steps):
                raise self.err(
                    f"{key}.{k}",
                    "reports happen every report_every steps, so rungs must fall on them",
                    options[k],
                    allowed=multiple,
                )
        if "reduction_factor" in options and options["reduction_factor"] < 2:
            raise self.err(
                f"{key}.reduction_factor", "must be >= 2", options["reduction_factor"], allowed="an integer >= 2"
            )
        if name == "hyperband" and options["max_resource"] < options["min_resource"]:
            raise self.err(
                f"{key}.max_resource",
                f"below min_resource = {options['min_resource']}",
                options["max_resource"],
                allowed=f"min_resource .. {steps}",
            )
        if name == "median" and options["n_warmup_steps"] >= steps:
            raise self.err(
                f"{key}.n_warmup_steps",
                "no report would be pruned",
                options["n_warmup_steps"],
                allowed=f"0 .. {steps - 1}",
            )
        if name == "median" and options["n_min_trials"] < 1:
            raise self.err(f"{key}.n_min_trials", "must be >= 1", options["n_min_trials"], allowed="an integer >= 1")
        return PrunerSpec(name=name, options=options)

    def budget(self, raw: Any, key: str) -> dict[str, Any]:
        table = self.table(raw, key, 'a table such as { trials = 40, wall_time = "2h" }')
        self.known_keys(table, key, BUDGET_KEYS)
        if not table:
            raise self.err(key, "sets no limit", {}, allowed="at least one of " + ", ".join(BUDGET_KEYS))
        out: dict[str, Any] = {}
        if "trials" in table:
            out["trials"] = self.integer(table["trials"], f"{key}.trials")
        if "wall_time" in table:
            try:
                out["wall_time_s"] = parse_duration(table["wall_time"])
            except ValueError:
                raise self.err(
                    f"{key}.wall_time",
                    "not a positive duration",
                    table["wall_time"],
                    allowed='seconds as a number (3600), or "90m", "2h", "1h30m", "3600s"',
                ) from None
        if "device_hours" in table:
            out["device_hours"] = self.number(table["device_hours"], f"{key}.device_hours")
        return out

    # -- one model ----------------------------------------------------------------------------
    def model(
        self, name: str, raw: Any, default_budget: Mapping[str, Any], *, steps: int, report_every: int
    ) -> ModelSpec:
        key = f"models.{name}"
        if not valid_name(name):
            raise self.err(key, "invalid model name", name, allowed="letters, digits, '_', '.', '-'")
        table = self.table(raw, key)
        family = table.get("family", name)
        if family not in model_names():
            where = f"{key}.family" if "family" in table else key
            raise self.err(
                where,
                "unknown model family" + ("" if "family" in table else '; or set family = "..."'),
                family,
                allowed=", ".join(model_names()),
            )
        cfg_cls = model_class(family).config_cls
        hints = typing.get_type_hints(cfg_cls)
        fields = [f.name for f in dataclasses.fields(cfg_cls)]
        self.known_keys(table, key, [*TRAIN_PARAMS, *fields, "budget", "family"], hint=f" for family {family!r}")

        budget = dict(default_budget)
        if "budget" in table:
            budget.update(self.budget(table["budget"], f"{key}.budget"))
        if not budget:
            raise self.err(
                f"{key}.budget", "no budget: set study.budget or this model's budget", allowed=", ".join(BUDGET_KEYS)
            )

        params: dict[str, Param] = {}
        defaults_train = TrainConfig()
        for k in TRAIN_PARAMS:
            if k in table:
                params[k] = self.param(f"{key}.{k}", table[k], _TRAIN_ANNOTATIONS[k], clip=k == "clip")
            else:
                params[k] = Fixed(getattr(defaults_train, k))
        for f in dataclasses.fields(cfg_cls):
            if f.name in table:
                params[f.name] = self.param(f"{key}.{f.name}", table[f.name], hints[f.name])
            else:
                params[f.name] = Fixed(_freeze(f.default))
        spec = ModelSpec(name=name, family=family, params=_ordered_params(family, params), budget=Budget(**budget))

        # Conditional and family-specific hyperparameters.
        optimizers = spec.optimizers()
        for k, opt in CONDITIONAL.items():
            if k in table and opt not in optimizers:
                raise self.err(
                    f"{key}.{k}",
                    f"only applies to optimizer {opt!r}, and this model's optimizer is "
                    f"{' or '.join(map(repr, optimizers))}",
                    table[k],
                    allowed=f"remove it, or let optimizer include {opt!r}",
                )
        if "lr_orth" in table and not has_constrained_params(family):
            users = [f for f in model_names() if has_constrained_params(f)]
            raise self.err(
                f"{key}.lr_orth",
                f"family {family!r} has no orthogonal (constrained) parameters",
                table["lr_orth"],
                allowed="families " + ", ".join(users),
            )

        self.check_against_configs(key, spec, steps=steps, report_every=report_every)
        return spec

    def param(self, key: str, raw: Any, ann: Any, *, clip: bool = False) -> Param:
        base, _ = _split_optional(ann)  # optional fields (lr_orth) are set to None by omitting the key
        allowed_scalar = _type_name(base) + (f' or "{CLIP_OFF}"' if clip else "")
        rangeable = base in (int, float)

        def scalar(v: Any, path: str) -> Any:
            if clip and v == CLIP_OFF:
                return None
            if clip and isinstance(v, int | float) and not isinstance(v, bool) and v == 0:
                raise self.err(path, 'clip 0 is spelled "off"', v, allowed=f'a number > 0 or "{CLIP_OFF}"')
            try:
                return _strict(v, base)
            except TypeError:
                raise self.err(path, "wrong type", v, allowed=allowed_scalar) from None

        if isinstance(raw, Mapping):
            if not rangeable:
                raise self.err(
                    key,
                    "a range needs a numeric option",
                    dict(raw),
                    allowed=f"a fixed value or a list of choices ({allowed_scalar})",
                )
            r = self.range(key, raw, is_int=base is int)
            if clip and r.low <= 0:  # type: ignore[union-attr]
                raise self.err(
                    f"{key}.low",
                    'a clip range must be positive (no clipping is "off")',
                    raw["low"],
                    allowed=f'a number > 0, or a list of choices with "{CLIP_OFF}"',
                )
            return r
        if isinstance(raw, list):
            if not raw:
                raise self.err(key, "empty list of choices", [], allowed=f"a non-empty list of {allowed_scalar}")
            values = []
            for i, v in enumerate(raw):
                if isinstance(v, list | Mapping):
                    raise self.err(f"{key}[{i}]", "a choice must be a single value", v, allowed=allowed_scalar)
                values.append(scalar(v, f"{key}[{i}]"))
            normal = [CLIP_OFF if (clip and v is None) else v for v in values]
            if len({json.dumps(v) for v in normal}) != len(normal):
                raise self.err(key, "choices repeat", raw, allowed="distinct values")
            return Choice(tuple(normal))
        return Fixed(scalar(raw, key))

    def range(self, key: str, raw: Mapping[str, Any], *, is_int: bool) -> Param:
        self.known_keys(raw, key, RANGE_KEYS)
        for k in ("low", "high"):
            if k not in raw:
                raise self.err(f"{key}.{k}", "missing: a range needs low and high", allowed="low, high, log, step")
        num = "an integer" if is_int else "a number"

        def bound(k: str) -> Any:
            v = raw[k]
            bad = isinstance(v, bool) or not (isinstance(v, int) if is_int else isinstance(v, int | float))
            if bad or (not is_int and not math.isfinite(v)):
                raise self.err(f"{key}.{k}", "wrong type", v, allowed=num)
            return v if is_int else float(v)

        low, high = bound("low"), bound("high")
        log = self.boolean(raw.get("log", False), f"{key}.log")
        if low >= high:
            raise self.err(
                f"{key}.low",
                f"must be below high = {fmt_value(high)}",
                raw["low"],
                allowed=f"low < high (for one value write {key.rsplit('.', 1)[-1]} = value)",
            )
        if log and low <= 0:
            raise self.err(
                f"{key}.low", "a log range must be positive", raw["low"], allowed=f"{num} > 0 with log = true"
            )
        step = raw.get("step")
        if step is not None:
            if log:
                raise self.err(
                    f"{key}.step", "a log range cannot have a step (Optuna)", step, allowed="no step with log = true"
                )
            ok = not isinstance(step, bool) and (isinstance(step, int) if is_int else isinstance(step, int | float))
            if not ok or step <= 0:
                raise self.err(f"{key}.step", "wrong step", step, allowed=f"{num} > 0")
            n = (high - low) / step
            if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                raise self.err(
                    f"{key}.high",
                    f"high - low is not a multiple of step = {fmt_value(step)}",
                    raw["high"],
                    allowed=f"low + k * step, e.g. {fmt_value(low + math.floor(n) * step)}",
                )
        if is_int:
            return IntRange(low, high, log, int(step) if step is not None else 1)
        return FloatRange(low, high, log, float(step) if step is not None else None)

    def check_against_configs(self, key: str, spec: ModelSpec, *, steps: int, report_every: int) -> None:
        """Build the real configs with every fixed value, endpoint and choice (see module doc)."""
        cfg_cls = model_class(spec.family).config_cls
        train_names = list(TRAIN_PARAMS)
        model_names = spec.model_option_names

        def build_train(values: Mapping[str, Any]) -> None:
            kwargs: dict[str, Any] = {k: (None if k == "clip" and v == CLIP_OFF else v) for k, v in values.items()}
            TrainConfig(steps=steps, eval_every=report_every, **kwargs)

        def build_model_config(values: Mapping[str, Any]) -> None:
            build_config(cfg_cls, values, f"model {spec.family!r}")

        train_defaults = dataclasses.asdict(TrainConfig())
        model_defaults = {f.name: f.default for f in dataclasses.fields(cfg_cls)}
        errors = (TrainError, ModelError, OptionError, TaskError)
        for names, build, owner, defaults in (
            (train_names, build_train, "the training config", train_defaults),
            (model_names, build_model_config, f"family {spec.family!r}", model_defaults),
        ):
            reference = {k: _reference(spec.params[k]) for k in names}
            try:
                build(reference)
            except errors as exc:
                # Something is wrong even before any value varies: blame the parameter whose
                # reset to the default repairs the config (fixed values first: they are typed).
                order = sorted(names, key=lambda k: not isinstance(spec.params[k], Fixed))
                for k in order:
                    if k not in defaults or _same_value(reference[k], defaults[k]):
                        continue
                    try:
                        build({**reference, k: defaults[k]})
                    except errors:
                        continue
                    path, value, _ = _candidates(f"{key}.{k}", spec.params[k])[0]
                    raise self.err(path, f"rejected by {owner}: {exc}", value) from None
                raise self.err(key, f"rejected by {owner}: {exc}", allowed="a valid combination") from None
            for k in names:
                for path, value, note in _candidates(f"{key}.{k}", spec.params[k]):
                    try:
                        build({**reference, k: value})
                    except errors as exc:
                        raise self.err(path, f"rejected by {owner}{note}: {exc}", value) from None
            searched = [k for k in names if not isinstance(spec.params[k], Fixed)]
            if len(searched) < 2:
                continue
            corner_lists = [_corners(spec.params[k]) for k in searched]
            if math.prod(len(c) for c in corner_lists) > _MAX_JOINT_COMBINATIONS:
                continue
            for combo in itertools.product(*corner_lists):
                values = dict(zip(searched, combo, strict=True))
                try:
                    build({**reference, **values})
                except errors as exc:
                    shown = ", ".join(f"{k} = {fmt_value(v)}" for k, v in values.items())
                    raise self.err(
                        key,
                        f"the combination {shown} (range ends / choices) is rejected by {owner}: {exc}",
                        allowed="a search space whose every combination is valid",
                    ) from None


def _same_value(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _reference(p: Param) -> Any:
    """The value a parameter takes while another one is being checked."""
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Choice):
        return p.choices[0]
    return p.low


def _corners(p: Param) -> list[Any]:
    if isinstance(p, Fixed):
        return [p.value]
    if isinstance(p, Choice):
        return list(p.choices)
    return [p.low, p.high]


def _candidates(key: str, p: Param) -> list[tuple[str, Any, str]]:
    """(key path, value, note) for every value of ``p`` worth building a config with."""
    if isinstance(p, Fixed):
        return [(key, p.value, "")]
    if isinstance(p, Choice):
        return [(f"{key}[{i}]", v, "") for i, v in enumerate(p.choices)]
    ends: list[tuple[str, Any, str]] = [(f"{key}.low", p.low, ""), (f"{key}.high", p.high, "")]
    if isinstance(p, IntRange) and (p.high - p.low) // p.step + 1 <= _MAX_INT_VALUES:
        inside = range(p.low + p.step, p.high, p.step)
        note = f" (a value inside low = {p.low}, high = {p.high}; use step to skip it)"
        return ends + [(key, v, note) for v in inside]
    return ends


__all__: Sequence[str] = (
    "CLIP_OFF",
    "CONDITIONAL",
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
    "available_specs",
    "load_spec",
    "parse_duration",
    "parse_spec",
    "resolve_spec",
)
