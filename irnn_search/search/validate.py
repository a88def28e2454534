"""Study specs: declarative TOML files in ``studies/``, validated into a ``StudySpec`` (``search.spec``).

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

Validation is done once, here, before anything is stored: the task options and batch size by
constructing the real task, each model table by constructing the real model and training configs
(``search.validate_model``), so a value the configs' own ``__post_init__`` rejects fails now, not in
trial 37.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from irnn_search import bundled
from irnn_search.models import model_names
from irnn_search.options import OptionError, build_config
from irnn_search.search.spec import (
    PLATEAU_GRACE,
    PRUNER_OPTIONS,
    SAMPLER_OPTIONS,
    PrunerSpec,
    SamplerSpec,
    SpecError,
    StudySpec,
    freeze,
    thaw,
    valid_name,
)
from irnn_search.search.validate_model import ModelResolver, strict, type_name
from irnn_search.tasks import TaskError, task_class, task_names

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
DIRECTIONS = ("minimize", "maximize")


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
    return _StudyResolver(source).study(data, default_name)


class _StudyResolver(ModelResolver):
    """Reads a whole spec: the ``[study]`` table here, each model table by ``ModelResolver``."""

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
                checked[k] = strict(v, hints[k])
            except TypeError:
                raise self.err(f"{key}.{k}", "wrong type", v, allowed=type_name(hints[k])) from None
        try:
            config = build_config(cls, checked, f"task {task!r}")
        except (TaskError, OptionError) as exc:
            bad = next((k for k in checked if re.search(rf"\b{re.escape(k)}\b", str(exc))), None)
            path, value = (f"{key}.{bad}", checked[bad]) if bad else (key, dict(checked))
            raise self.err(path, f"rejected by task {task!r}: {exc}", value) from None
        return freeze({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})  # type: ignore[arg-type]

    def batch_size(self, task: str, task_options: Mapping[str, Any], raw: Any) -> int:
        cls = task_class(task)
        if raw is None:
            return cls.default_batch_size
        batch_size = self.integer(raw, "study.batch_size")
        try:
            # Constructing a task only checks its settings; data is loaded on first use.
            cls(build_config(cls.config_cls, thaw(task_options), f"task {task!r}"), batch_size=batch_size)
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
        extra = [PLATEAU_GRACE] if name != "none" else []
        self.known_keys(table, key, ["name", *defaults, *extra], hint=f" for pruner {name!r}")
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
        if PLATEAU_GRACE in table and extra:
            # Only stored when given, so that specs written before it existed keep their hash.
            grace = self.integer(table[PLATEAU_GRACE], f"{key}.{PLATEAU_GRACE}", minimum=0)
            if grace > steps:
                raise self.err(
                    f"{key}.{PLATEAU_GRACE}",
                    "no trial reports after the study's last step",
                    grace,
                    allowed=f"0 .. {steps} (0: plateau trials may be pruned from the first rung)",
                )
            options[PLATEAU_GRACE] = grace
        return PrunerSpec(name=name, options=options)


__all__: Sequence[str] = ("available_specs", "load_spec", "parse_spec", "resolve_spec")
