"""Published settings per (task, model), and the warm start that enqueues them as first trials.

The table itself is data: ``published.toml`` beside this module, one ``[[setting]]`` per paper and
setting with its citation, and the published numbers with their protocols (that file's header says
where each came from and what was left out on purpose). This module loads it into ``PUBLISHED`` and
``RESULTS``, selects the settings that fit a spec, maps them onto the spec's parameters and
enqueues them.

Smoke tasks (``digits-smoke``, ``ptb-smoke``) borrow the settings of the real task they shrink
(their ``smoke_of``), never its results: a smoke number is not comparable with a published one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna

from irnn_search.models import model_class
from irnn_search.search.spec import CLIP_OFF, CONDITIONAL, Choice, Fixed, FloatRange, IntRange, ModelSpec, StudySpec
from irnn_search.tasks import task_class
from irnn_search.train import TrainConfig

log = logging.getLogger(__name__)

#: the published-settings table (shipped in the package: pyproject's package-data)
TABLE = Path(__file__).with_name("published.toml")
PERCENT = "%"
BPC = "bits per character"
#: the units a number for each metric is published in
UNITS = {"accuracy": PERCENT, "mse": "MSE", "bpc": BPC}


def in_metric_units(value: float, units: str) -> float:
    """A published value in its task metric's units: accuracy as a fraction, the others as is."""
    return value / 100.0 if units == PERCENT else value


@dataclass(frozen=True)
class PublishedResult:
    """A number a paper or its repository published, with how it was measured.

    ``value`` is as published, in ``units``; ``metric_value`` converts it to the task's metric
    units (accuracy as a fraction, BPC as is).
    """

    task: str
    model: str
    hidden_size: int
    metric: str  # the task metric it corresponds to: accuracy, bpc
    value: float
    units: str
    protocol: str
    source: str
    size: int | None = None  # the task size (T, bptt) it is for, where the task has sizes
    spread: float | None = None  # the "±" printed beside it
    note: str = ""

    @property
    def metric_value(self) -> float:
        return in_metric_units(self.value, self.units)


@dataclass(frozen=True)
class Published:
    """One published training setting for a (task, model).

    ``train`` uses ``TrainConfig`` field names (plus ``betas`` where an Adam setting has them) and
    ``clip=None`` means the source states that it does not clip; ``model_options`` uses the
    family's config field names. A key that is absent was not stated by the source.
    """

    ref: str  # stable id, stored on the warm-start trial
    task: str
    model: str  # family
    label: str
    train: dict[str, Any]
    model_options: dict[str, Any]
    source: str  # REFERENCE.md section(s) and repository file:line
    batch_size: int | None = None
    schedule: str = ""
    sizes: tuple[int, ...] = ()  # task sizes (T, bptt) it was published for; () = not size-specific
    task_options: dict[str, Any] = field(default_factory=dict)  # conventions it used (placement, seed...)
    results: tuple[PublishedResult, ...] = ()
    notes: str = ""

    @property
    def hidden_size(self) -> int | None:
        return self.model_options.get("hidden_size")


def _result(raw: Mapping[str, Any], **inherited: Any) -> PublishedResult:
    """A ``[[result]]`` (or ``[[setting.results]]``, whose task, model and hidden size are its setting's)."""
    values = {**inherited, **raw}
    return PublishedResult(units=UNITS[values["metric"]], **values)


def _setting(raw: Mapping[str, Any]) -> Published:
    """A ``[[setting]]``: TOML arrays become tuples, and ``clip = "off"`` the ``None`` of "does not clip"."""
    values = dict(raw)
    train = {
        k: None if k == "clip" and v == CLIP_OFF else tuple(v) if isinstance(v, list) else v
        for k, v in values.pop("train").items()
    }
    hidden = values["model_options"]["hidden_size"]
    results = tuple(
        _result(r, task=values["task"], model=values["model"], hidden_size=hidden) for r in values.pop("results", ())
    )
    return Published(train=train, sizes=tuple(values.pop("sizes", ())), results=results, **values)


def load_table(path: Path = TABLE) -> tuple[tuple[Published, ...], tuple[PublishedResult, ...]]:
    """The settings and every published number (those of the settings first) in ``path``.

    Raises:
        tomllib.TOMLDecodeError, KeyError, TypeError: the file is not a valid table (a packaging or
            editing mistake, caught by tests/search/test_literature.py).
    """
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    settings = tuple(_setting(s) for s in data["setting"])
    unattached = tuple(_result(r) for r in data.get("result", ()))
    return settings, tuple(r for p in settings for r in p.results) + unattached


PUBLISHED, RESULTS = load_table()


def published_settings(task: str, model: str) -> list[Published]:
    """Every published setting for ``task`` and model family ``model`` (possibly none).

    A smoke task gets the settings of the task it shrinks (its ``smoke_of``), without results.
    """
    real = task_class(task).smoke_of or task
    entries = [p for p in PUBLISHED if p.task == real and p.model == model]
    if real != task:
        entries = [dataclasses.replace(p, results=()) for p in entries]
    return entries


def published_results(task: str, model: str) -> list[PublishedResult]:
    """Every published number for ``task`` and family ``model``; none for smoke tasks."""
    return [r for r in RESULTS if r.task == task and r.model == model]


def select_published(spec: StudySpec, model: str) -> list[Published]:
    """The published settings worth enqueueing for one model of ``spec``.

    Narrowed in two steps, each only when something matches (otherwise every setting is kept,
    since a setting for another size is still a better start than none):

    1. the task size (adding/copy ``T``, PTB ``bptt``): settings published for the spec's size;
    2. the hidden size, when the spec fixes it: settings published for that hidden size.
    """
    m = spec.model(model)
    entries = published_settings(spec.task, m.family)
    size_key = task_class(spec.task).size_option
    size = spec.task_options.get(size_key) if size_key else None
    if size is not None and any(size in p.sizes for p in entries):
        entries = [p for p in entries if not p.sizes or size in p.sizes]
    hidden = m.params.get("hidden_size")
    if isinstance(hidden, Fixed) and any(p.hidden_size == hidden.value for p in entries):
        entries = [p for p in entries if p.hidden_size in (None, hidden.value)]
    return entries


# -- published setting -> Optuna params -------------------------------------------------------------
class NotRepresentable(ValueError):
    """A published setting cannot be expressed in a spec's search space (e.g. a categorical value
    the spec does not offer)."""


@dataclass(frozen=True)
class TrialParams:
    """A published setting expressed in a spec's parameters, and how it differs from the source.

    Attributes:
        params: what to enqueue (Optuna params, the spec's names).
        overridden: published values the spec replaces because it fixes that parameter
            (``{"hidden_size": {"published": 100, "used": 8}}``).
        defaulted: searched parameters the source does not state, enqueued at our default.
        sampled: searched parameters the source does not state and whose default the space
            cannot hold: left to the sampler.
        outside_range: enqueued values outside the spec's range (Optuna warns and uses them).
        not_applied: published settings the spec has no parameter for (Adam betas).
    """

    params: dict[str, Any]
    overridden: dict[str, dict[str, Any]]
    defaulted: dict[str, Any]
    sampled: list[str]
    outside_range: list[str]
    not_applied: dict[str, Any]


def _defaults(model: ModelSpec) -> dict[str, Any]:
    train = TrainConfig()
    out: dict[str, Any] = {k: getattr(train, k) for k in ("optimizer", "lr", "lr_orth", "momentum", "alpha", "clip")}
    for f in dataclasses.fields(model_class(model.family).config_cls):
        out[f.name] = f.default
    return out


def _same(a: Any, b: Any) -> bool:
    """Value equality that does not confuse true with 1, or "off" with None."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def _choice_for(value: Any, choices: tuple[Any, ...], *, clip: bool) -> tuple[bool, Any]:
    wanted = CLIP_OFF if clip and value is None else value
    for c in choices:
        if _same(c, wanted):
            return True, c
    return False, None


def map_published(published: Published, model: ModelSpec) -> TrialParams:
    """Express ``published`` in ``model``'s parameters (see ``TrialParams`` for the bookkeeping).

    Rules: a parameter the spec fixes keeps the spec's value; a range takes the published value as
    is, even outside the range (Optuna warns and uses an enqueued out-of-range value); a choice
    takes the published value only if it is one of the choices. Conditional parameters follow the
    optimizer the trial will use. A searched parameter the source does not state gets our default.

    Raises:
        NotRepresentable: a published value is not among a searched parameter's choices, ``clip =
            None`` (no clipping) meets a numeric clip range, or an integer range meets a fraction.
    """
    stated = {**published.train, **published.model_options}
    defaults = _defaults(model)
    params: dict[str, Any] = {}
    overridden: dict[str, dict[str, Any]] = {}
    defaulted: dict[str, Any] = {}
    sampled: list[str] = []
    outside: list[str] = []

    # The optimizer decides which conditional parameters exist in this trial.
    opt_param = model.params["optimizer"]
    if isinstance(opt_param, Fixed):
        optimizer: str | None = opt_param.value
    else:
        optimizer = stated.get("optimizer", defaults["optimizer"])

    for name, param in model.params.items():
        needed = CONDITIONAL.get(name)
        if needed is not None and optimizer != needed:
            continue
        is_stated = name in stated
        value = stated[name] if is_stated else defaults.get(name)
        if isinstance(param, Fixed):
            if is_stated and not _same(value, param.value):
                overridden[name] = {"published": _jsonable(value), "used": _jsonable(param.value)}
            continue
        if isinstance(param, Choice):
            ok, choice = _choice_for(value, param.choices, clip=name == "clip")
            if not ok:
                if is_stated:
                    raise NotRepresentable(
                        f"{published.ref}: {name} = {_show(value, name)} is not among the spec's choices "
                        f"{list(param.choices)}"
                    )
                sampled.append(name)
                if name == "optimizer":
                    optimizer = None  # unknown until sampled: leave conditional parameters to the sampler too
                continue
            params[name] = choice
        else:
            if value is None or isinstance(value, bool) or not isinstance(value, int | float):
                if is_stated:
                    raise NotRepresentable(
                        f"{published.ref}: {name} = {_show(value, name)} cannot be a value of the spec's range "
                        f"[{param.low}, {param.high}]"
                    )
                sampled.append(name)
                continue
            if isinstance(param, IntRange):
                if float(value) != int(value):
                    raise NotRepresentable(f"{published.ref}: {name} = {value} is not an integer")
                value = int(value)
            else:
                value = float(value)
            assert isinstance(param, FloatRange | IntRange)
            if not param.low <= value <= param.high:
                outside.append(name)
            params[name] = value
        if not is_stated:
            defaulted[name] = _jsonable(params[name])
    not_applied = {k: _jsonable(v) for k, v in stated.items() if k not in model.params}
    return TrialParams(params, overridden, defaulted, sampled, outside, not_applied)


def _show(value: Any, name: str) -> str:
    if name == "clip" and value is None:
        return "None (no clipping)"
    return repr(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# -- the warm start -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WarmStart:
    """What happened to one published setting in ``enqueue_published``."""

    ref: str
    status: Literal["enqueued", "exists", "not representable"]
    params: dict[str, Any] | None
    reason: str = ""


def enqueue_published(study: optuna.Study, spec: StudySpec, model: str) -> list[WarmStart]:
    """Enqueue the published settings of ``model`` as the study's first trials, tagged.

    Each enqueued trial carries ``user_attrs``: ``source = "published"``, ``ref`` (the entry id),
    ``label``, ``citation``, the published values, and ``overridden`` / ``defaulted`` /
    ``sampled`` / ``not_applied`` / ``outside_range`` (see ``TrialParams``), so a report can show
    "published settings" beside "best found" and say how faithful the trial was.

    Idempotent: a setting whose params match an existing trial's (enqueued or not, in any state)
    is not enqueued again (``skip_if_exists=True``), so a second launch adds nothing and two
    entries that map to the same params (e.g. once the spec fixes the hidden size) enqueue one
    trial. Two launches racing on the same storage can still both enqueue: serialize launches.
    Does nothing when ``spec.warm_start`` is false.

    Returns:
        One ``WarmStart`` per selected published setting (see ``select_published``).
    """
    if not spec.warm_start:
        return []
    m = spec.model(model)
    out: list[WarmStart] = []
    for p in select_published(spec, model):
        try:
            mapped = map_published(p, m)
        except NotRepresentable as exc:
            log.warning("published setting %s not enqueued for %s: %s", p.ref, model, exc)
            out.append(WarmStart(p.ref, "not representable", None, str(exc)))
            continue
        attrs = {
            "source": "published",
            "ref": p.ref,
            "label": p.label,
            "citation": p.source,
            "published": _jsonable({**p.train, **p.model_options}),
            "overridden": mapped.overridden,
            "defaulted": mapped.defaulted,
            "sampled": mapped.sampled,
            "not_applied": mapped.not_applied,
            "outside_range": mapped.outside_range,
        }
        before = len(study.get_trials(deepcopy=False))
        study.enqueue_trial(mapped.params, user_attrs=attrs, skip_if_exists=True)
        added = len(study.get_trials(deepcopy=False)) > before
        status: Literal["enqueued", "exists"] = "enqueued" if added else "exists"
        out.append(WarmStart(p.ref, status, mapped.params, "" if added else "a trial with these params exists"))
    return out


__all__ = [
    "PUBLISHED",
    "RESULTS",
    "NotRepresentable",
    "Published",
    "PublishedResult",
    "TrialParams",
    "WarmStart",
    "enqueue_published",
    "map_published",
    "published_results",
    "published_settings",
    "select_published",
]
