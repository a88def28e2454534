"""Confirm each model's best at fresh seeds: the spec that ``irnn-search confirm`` writes.

The best value a search reports was picked out of many trials at the search's own seeds, so it
is optimistic (the winner's curse): some of its margin is the luck of that seed. Papers that
compare recurrent models re-run each model's chosen configuration at several seeds and report
mean ± sd. The derived spec does that with the machinery a search already has: per model one
trial whose every hyperparameter is fixed at the best trial's value, trained at N seeds the
search never used (a packed worker trains the seeds side by side, one at a time otherwise; the
trial's value is their mean and each seed's value is kept, ``service.attempt.VALUE_SEED``; a seed
that diverges is counted, not the trial's end), with no pruning (every seed runs to the end) and
no published settings enqueued. Its report then gives mean ± sample sd per model.

The derived spec copies the task, its options, steps, report interval, batch size, objective and
direction from the spec *stored* with the search (it pins every value), and is checked before it
is written: loaded back, each model's ``reproduce_command`` at each new seed must equal the
original best trial's at that seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna

from irnn_search.search.space import is_active
from irnn_search.search.spec import CLIP_OFF, Fixed, ModelSpec, SpecError, StudySpec, thaw, valid_name
from irnn_search.search.toml_writer import dumps
from irnn_search.search.validate import parse_spec
from irnn_search.service.answer import TaskLines, answer, reproduce_command
from irnn_search.service.studies import SearchError, load_studies, missing_store, stored_spec, study_name

SUFFIX = "-confirm"
MIN_SEEDS = 2  # a spread needs two values
#: what a derived study runs: one trial per model, no search left in it
SAMPLER = {"name": "random", "seed": 0}
PRUNER = {"name": "none"}


class ConfirmError(ValueError):
    """The confirmation spec cannot be written; the message names the problem and the fix."""


@dataclass(frozen=True)
class Pick:
    """One model's best trial, as the report names it, and its table in the derived spec."""

    model: str
    trial: int  # the lineage id the report prints (its first trial's number)
    value: float
    step: int | None
    params: dict[str, Any]  # the searched hyperparameters the trial sampled
    table: dict[str, Any]  # [models.<model>]: family, every fixed value, every searched one fixed


@dataclass(frozen=True)
class Derived:
    name: str  # the derived study's name
    source: str  # the search's name
    seeds: tuple[int, ...]
    picks: list[Pick]
    skipped: dict[str, str]  # model -> why it has no pick
    path: str  # where the spec is written (what the commands name)
    text: str = ""  # the spec file

    @property
    def launch(self) -> str:
        return f"irnn-search launch {self.path} --workers 1 --pack {len(self.seeds)}"

    @property
    def report(self) -> str:
        return f"irnn-search report {self.path}"


def fresh_seeds(used: tuple[int, ...], n: int) -> tuple[int, ...]:
    """``n`` seeds the search did not train with: the ones after its largest."""
    start = max(used) + 1
    return tuple(range(start, start + n))


def model_table(model: ModelSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[models.<key>]`` table that fixes ``model`` at one trial's ``params``.

    Every fixed value of the stored model spec is written (the file pins it even if a default
    changes later), every searched one at the trial's value. A conditional hyperparameter that
    the trial's optimizer does not use (momentum for Adam) is left out: the spec would refuse it.
    TOML has no null: ``clip`` None is written ``"off"``; any other None is the option's
    default-by-omission (``lr_orth``), so it is left out.

    Raises:
        ConfirmError: the trial lacks a searched hyperparameter it needed (another spec's trial).
    """
    values = {k: (p.value if isinstance(p, Fixed) else params.get(k, p)) for k, p in model.params.items()}
    optimizer = values["optimizer"]
    table: dict[str, Any] = {"family": model.family}
    for k, v in values.items():
        if not is_active(k, optimizer):
            continue
        if v is model.params[k]:  # searched, not sampled although active
            raise ConfirmError(f"model {model.name!r}: its best trial has no value for {k!r}; relaunch the search")
        if v is None and k == "clip":
            v = CLIP_OFF
        if v is not None:
            table[k] = thaw(v)
    return table


def study_table(spec: StudySpec, name: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    """``[study]`` of the derived spec: what each trial trains is the search's, the search is gone."""
    return {
        "name": name,
        "description": f"confirms {spec.name}'s best configuration per model at {len(seeds)} fresh seeds",
        "task": spec.task,
        # None is an option left at its default (TOML cannot say None)
        "task_options": {k: thaw(v) for k, v in spec.task_options.items() if v is not None},
        "steps": spec.steps,
        "report_every": spec.report_every,
        "batch_size": spec.batch_size,
        "seeds": list(seeds),
        "objective": spec.objective,
        "direction": spec.direction,
        "sampler": dict(SAMPLER),
        "pruner": dict(PRUNER),
        "budget": {"trials": 1},
        "warm_start": False,
    }


def pick(study: optuna.Study, spec: StudySpec, key: str) -> Pick | None:
    """The best trial of one model's study (None while no trial reached a value)."""
    a = answer(study, spec, TaskLines(None, None, None))  # the lines do not change which is best
    if a.best_trial is None or a.best_value is None:
        return None
    return Pick(
        key, a.best_trial, a.best_value, a.best_step, a.best_params, model_table(spec.model(key), a.best_params)
    )


def check_store(storage_url: str) -> None:
    """Refuse an embedded store that does not exist (opening it would create an empty one).

    Raises:
        ConfirmError: the SQLite file of ``storage_url`` is missing.
    """
    if (why := missing_store(storage_url)) is not None:
        raise ConfirmError(
            f"{why}: launch the search first (irnn-search launch SPEC), or set "
            "IRNN_SEARCH_HOME (or IRNN_SEARCH_STORAGE) to the store it ran on"
        )


def studies_of(spec: StudySpec, storage_url: str, models: list[str]) -> dict[str, optuna.Study]:
    """The launched studies of ``models`` of ``spec``, keyed by model.

    Raises:
        ConfirmError: the store is missing, or a model's study was never launched on it.
    """
    check_store(storage_url)
    try:
        studies = load_studies(storage_url, [study_name(spec.name, k) for k in models])
    except SearchError as exc:
        raise ConfirmError(
            f"{exc}: launch it first (irnn-search launch {spec.name}), or point IRNN_SEARCH_HOME "
            "(or IRNN_SEARCH_STORAGE) at the store it ran on"
        ) from None
    return {k: studies[study_name(spec.name, k)] for k in models}


def derive(
    studies: Mapping[str, optuna.Study], *, seeds: int, out: str, now: datetime | None = None, command: str = ""
) -> Derived:
    """The derived spec of the search whose studies (keyed by model) are ``studies``.

    A model none of whose trials reached a value yet is skipped (``Derived.skipped``).

    Raises:
        ConfirmError: fewer than ``MIN_SEEDS`` seeds, no model has a trial with a value, or the
            derived spec would not re-run a best trial exactly (a bug: the message says so).
    """
    if seeds < MIN_SEEDS:
        raise ConfirmError(f"--seeds must be at least {MIN_SEEDS} (a spread needs two values); got {seeds}")
    try:
        specs = {k: stored_spec(s) for k, s in studies.items()}
    except (SearchError, SpecError) as exc:
        raise ConfirmError(f"{exc}; confirm reads the spec a search stored, so relaunch it with this version") from None
    source = next(iter(specs.values()))
    name = Path(out).stem  # as for any spec file, its name is its stem: "<search>-confirm" by default
    if not valid_name(name):
        raise ConfirmError(f"the spec's name would be {name!r}, not a valid study name: name the file like <name>.toml")
    new_seeds = fresh_seeds(source.seeds, seeds)
    picks, skipped = [], {}
    for key, study in studies.items():
        p = pick(study, specs[key], key)
        if p is None:
            skipped[key] = "no trial of it reached a value yet"
        else:
            picks.append(p)
    if not picks:
        raise ConfirmError(
            f"no model of {source.name} has a trial that reached a value yet: let the search run "
            f"(irnn-search launch {source.name}), then confirm"
        )
    tables: dict[tuple[str, ...], dict[str, Any]] = {("study",): study_table(source, name, new_seeds)}
    tables.update({("models", p.model): p.table for p in picks})
    derived = Derived(name, source.name, new_seeds, picks, skipped, out)
    text = dumps(tables, header=_header(derived, source, now or datetime.now(UTC), command))
    check_round_trip(text, out, specs, picks, new_seeds)
    return dataclasses.replace(derived, text=text)


def _header(d: Derived, source: StudySpec, now: datetime, command: str) -> str:
    lines = [
        f"Written by `{command or 'irnn-search confirm ' + source.name}` on {now:%Y-%m-%d %H:%M} UTC.",
        f"Confirms study {source.name!r} (stored spec {source.spec_hash()[:12]}): each model's best trial,",
        f"its every hyperparameter fixed, retrained at {len(d.seeds)} seeds the search never trained with",
        f"({', '.join(map(str, d.seeds))}), every seed to the end (no pruner), so that models compare with",
        "error bars (mean ± sample sd) rather than by one lucky seed. The best trials:",
    ]
    lines += [f"  {p.model}: trial {p.trial}, {source.objective} {p.value:.6g}" for p in d.picks]
    lines += [f"  {k}: skipped, {why}" for k, why in d.skipped.items()]
    lines += [
        f"Each model is one trial; with --pack {len(d.seeds)} its {len(d.seeds)} seeds train side by side in one pack",
        "(--workers up to the number of models runs the models side by side too).",
        f"Launch: {d.launch}",
        f"Report: {d.report}",
    ]
    return "\n".join(lines)


def check_round_trip(
    text: str, out: str, specs: Mapping[str, StudySpec], picks: list[Pick], seeds: tuple[int, ...]
) -> None:
    """Load ``text`` back as a spec and check that each pick's reproduce command at each seed is
    its best trial's.

    Raises:
        ConfirmError: it does not load, or a command differs.
    """
    try:
        derived = parse_spec(text, source=out)
    except SpecError as exc:
        raise ConfirmError(
            f"the derived spec does not load ({exc}); this is a bug in confirm, please report it"
        ) from None
    for p in picks:
        for s in seeds:
            original = reproduce_command(specs[p.model], p.model, p.params, seed=s)
            again = reproduce_command(derived, p.model, {}, seed=s)
            if again != original:
                differs = sorted(set(again.split(" -")) ^ set(original.split(" -")))
                raise ConfirmError(
                    f"the derived spec would not re-run {p.model}'s trial {p.trial} exactly (differs in "
                    f"{', '.join(differs)}); this is a bug in confirm, please report it"
                )


def write_new(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then renamed into place);
    without ``force`` an existing file is never replaced, even one that appears meanwhile.

    Raises:
        ConfirmError: ``path`` exists (without ``force``) or cannot be written.
    """
    refuse = f"{path} already exists: pass --force to replace it, or --out another path"
    if path.exists() and not force:
        raise ConfirmError(refuse)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfirmError(f"cannot write {path}: {exc.strerror or exc}; choose another --out") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared since the check: never clobbered
    except FileExistsError:
        raise ConfirmError(refuse) from None
    except OSError as exc:
        raise ConfirmError(f"cannot write {path}: {exc.strerror or exc}; choose another --out") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
