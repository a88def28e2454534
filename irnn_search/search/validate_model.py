"""One model table of a study spec, validated into a ``ModelSpec``; and the typed reads every table uses.

A model table's keys are the training hyperparameters (``TRAIN_PARAMS``), the options of the
family's config dataclass, ``budget`` and ``family``; each is a fixed value, a range or a list of
choices (see ``irnn_search.search.validate`` for the file format). Every fixed value, every range
endpoint, every choice (and every value of an integer range up to ``_MAX_INT_VALUES`` values) is
checked by constructing the real model and training configs, so a value the configs' own
``__post_init__`` rejects fails at load, not in trial 37.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from irnn_search.models import ModelError, build_model, model_class, model_names
from irnn_search.options import OptionError, build_config
from irnn_search.search.spec import (
    CLIP_OFF,
    CONDITIONAL,
    TRAIN_PARAMS,
    UNSET,
    Budget,
    Choice,
    Fixed,
    FloatRange,
    IntRange,
    ModelSpec,
    Param,
    SpecError,
    fmt_value,
    freeze,
    ordered_params,
    valid_name,
)
from irnn_search.tasks import TaskError
from irnn_search.train import TrainConfig, TrainError

BUDGET_KEYS = ("trials", "wall_time", "device_hours")
RANGE_KEYS = ("low", "high", "log", "step")
# Integer ranges up to this many values are checked value by value (nnRNN needs an even
# hidden_size: the endpoints alone would not catch 65 in [64, 128]).
_MAX_INT_VALUES = 4096
# Combinations of range endpoints and choices checked jointly (asRNN's a <= b spans two keys).
_MAX_JOINT_COMBINATIONS = 1024
_DURATION_RE = re.compile(
    r"^\s*(?:(?P<d>\d+(?:\.\d+)?)\s*d)?\s*(?:(?P<h>\d+(?:\.\d+)?)\s*h)?\s*"
    r"(?:(?P<m>\d+(?:\.\d+)?)\s*m)?\s*(?:(?P<s>\d+(?:\.\d+)?)\s*s)?\s*$"
)


def type_name(ann: Any) -> str:
    """A config field annotation in the words of an error message ("an integer", "a list of numbers")."""
    base, optional = split_optional(ann)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        name = {int: "a list of integers", float: "a list of numbers", str: "a list of strings"}.get(item, "a list")
    else:
        name = names.get(base, str(base))
    return f"{name} (or omit it for the default)" if optional else name


def split_optional(ann: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other annotation -> ``(it, False)``."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return (args[0] if len(args) == 1 else ann), len(args) < len(typing.get_args(ann))
    return ann, False


def strict(value: Any, ann: Any) -> Any:
    """``value`` checked (not coerced from strings) against a config field annotation.

    Ints are accepted for float fields (TOML ``1`` vs ``1.0``) and returned as floats.

    Raises:
        TypeError: the value has the wrong type.
    """
    base, _ = split_optional(ann)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError
        (item,) = typing.get_args(base)[:1]
        return tuple(strict(v, item) for v in value)
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


class Resolver:
    """Typed reads of parsed TOML, each raising the first problem as a ``SpecError`` naming ``source``."""

    def __init__(self, source: str) -> None:
        self.file = source

    def err(self, key: str | None, problem: str, value: Any = UNSET, allowed: str | None = None) -> SpecError:
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


class ModelResolver(Resolver):
    """Reads one ``[models.<name>]`` table (``model``), checking it against the real configs."""

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
                params[f.name] = Fixed(freeze(f.default))
        spec = ModelSpec(name=name, family=family, params=ordered_params(family, params), budget=Budget(**budget))

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
        base, _ = split_optional(ann)  # optional fields (lr_orth) are set to None by omitting the key
        allowed_scalar = type_name(base) + (f' or "{CLIP_OFF}"' if clip else "")
        rangeable = base in (int, float)

        def scalar(v: Any, path: str) -> Any:
            if clip and v == CLIP_OFF:
                return None
            if clip and isinstance(v, int | float) and not isinstance(v, bool) and v == 0:
                raise self.err(path, 'clip 0 is spelled "off"', v, allowed=f'a number > 0 or "{CLIP_OFF}"')
            try:
                return strict(v, base)
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


__all__ = [
    "BUDGET_KEYS",
    "ModelResolver",
    "Resolver",
    "has_constrained_params",
    "parse_duration",
    "strict",
    "type_name",
]
