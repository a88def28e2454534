"""What ``status`` and ``report`` show: per model the best found, the published-settings trial,
the published number with its protocol, and the compute used; tables (md/json/csv) and plots."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from irnn_search.search.literature import published_results
from irnn_search.search.spec import StudySpec
from irnn_search.service.search import (
    GAVE_UP,
    Usage,
    device_seconds,
    load_studies,
    stored_spec,
    study_name,
    usage,
)

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
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    published_settings_value: float | None  # best complete warm-start trial (our run of their settings)
    published_settings_label: str | None
    test_value: float | None = None  # the objective's metric on the test split, best trial's best-val checkpoint
    test_metrics: dict[str, float] = field(default_factory=dict)
    published_numbers: list[dict[str, Any]] = field(default_factory=list)  # what the papers report
    # trials failed for good because their worker died on every attempt: {"trial": n, "reason": ...}
    gave_up: list[dict[str, Any]] = field(default_factory=list)


def _finite(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)


def _best(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    done = [t for t in trials if _finite(t)]
    if not done:
        return None
    key = (lambda t: t.value) if direction == "minimize" else (lambda t: -t.value)  # type: ignore[operator]
    return min(done, key=key)


def model_row(study: optuna.Study) -> ModelRow:
    spec = stored_spec(study)
    key = study.user_attrs["model"]
    family = study.user_attrs["family"]
    trials = study.get_trials(deepcopy=False)
    u: Usage = usage(study)
    best = _best(trials, spec.direction)
    published = [t for t in trials if t.user_attrs.get("source") == "published"]
    best_published = _best(published, spec.direction)
    numbers = [
        {
            "hidden_size": r.hidden_size,
            "metric": r.metric,
            "value": r.value,
            "units": r.units,
            "protocol": r.protocol,
            "source": r.source,
            **({"size": r.size} if r.size is not None else {}),
        }
        for r in published_results(spec.task, family)
    ]
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
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        published_settings_value=best_published.value if best_published else None,
        published_settings_label=best_published.user_attrs.get("label") if best_published else None,
        gave_up=[
            {"trial": t.number, "reason": t.user_attrs.get("reason", "")}
            for t in trials
            if t.state == TrialState.FAIL and t.user_attrs.get(GAVE_UP)
        ],
        published_numbers=numbers,
        test_value=_test_value(study, spec),
        test_metrics=dict(study.user_attrs.get("test_eval", {}).get("metrics", {})),
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
    from irnn_search.search.space import build_train_config, params_to_kwargs
    from irnn_search.service.attempt import BEST_SHA256
    from irnn_search.service.single import prepare_run
    from irnn_search.train import CheckpointError, evaluate, file_digest, load_checkpoint

    spec = stored_spec(study)
    best = _best(study.get_trials(deepcopy=False), spec.direction)
    if best is None:
        return None
    cached = study.user_attrs.get("test_eval")
    if cached and cached.get("trial") == best.number:
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


def spec_studies(spec: StudySpec, storage_url: str) -> dict[str, optuna.Study]:
    names = [study_name(spec.name, k) for k in spec.models]
    return load_studies(storage_url, names)


def rows_for(spec: StudySpec, storage_url: str) -> list[ModelRow]:
    return [model_row(s) for s in spec_studies(spec, storage_url).values()]


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
            "best_value",
            "best_trial",
            "test_value",
            "published_settings_value",
            "published_settings_label",
            "best_params",
        ]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d["best_params"] = json.dumps(r.best_params, default=str)
            w.writerow(d)
        return buf.getvalue()
    lines = []
    if spec is not None:
        lines += [f"# {spec.name}: {spec.description}", "", f"Task `{spec.task}` {spec.task_options}, "
                  f"objective `{spec.objective}` ({spec.direction}), {spec.steps} steps per trial.", ""]  # fmt: skip
    lines += [
        "| model | best found (val) | test (best-val checkpoint) | published settings (our run, val) "
        "| trials (complete/pruned/failed) | device-hours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        pub = _fmt(r.published_settings_value)
        if r.published_settings_label:
            pub += f" ({r.published_settings_label})"
        lines.append(
            f"| {r.model} | {_fmt(r.best_value)} | {_fmt(r.test_value)} | {pub} | "
            f"{r.trials} ({r.complete}/{r.pruned}/{r.failed}) | {r.device_hours:.3f} |"
        )
    lines += ["", "Best hyperparameters:", ""]
    for r in rows:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.best_params.items())
        lines.append(f"- **{r.model}** (trial {r.best_trial}): {params or '–'}")
    gave_up = [(r.model, g) for r in rows for g in r.gave_up]
    if gave_up:
        lines += ["", "Trials failed for good (their worker died on every attempt):", ""]
        lines += [f"- {model} trial {g['trial']}: {g['reason']}" for model, g in gave_up]
    numbers = [(r.model, n) for r in rows for n in r.published_numbers]
    lines += [
        "",
        "Our protocol: model selection on the validation split; the test column evaluates the best trial's "
        "best-validation checkpoint once (– where the task has no test split, e.g. smoke tasks).",
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
    else:
        lines.append("- none for this task (smoke tasks never borrow published numbers)")
    return "\n".join(lines) + "\n"


def plots(spec: StudySpec, storage_url: str, out_dir: Path) -> list[Path]:
    """Best-so-far vs device-hours per model, learning curves of each model's best trial, and
    hyperparameter importances (where at least two trials completed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    studies = spec_studies(spec, storage_url)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for key, study in ((s.user_attrs["model"], s) for s in studies.values()):
        done = sorted(
            (t for t in study.get_trials(deepcopy=False) if t.datetime_complete and t.datetime_start),
            key=lambda t: t.datetime_complete,  # type: ignore[arg-type,return-value]
        )
        hours, best, xs, ys = 0.0, None, [], []
        for t in done:
            hours += device_seconds(t) / 3600
            if _finite(t):
                v = float(t.value)  # type: ignore[arg-type]
                better = best is None or (v < best if spec.direction == "minimize" else v > best)
                best = v if better else best
            if best is not None:
                xs.append(hours)
                ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", marker="o", ms=3, label=key)
    ax.set_xlabel("device-hours (trial wall time; a packed trial's share of its pack's)")
    ax.set_ylabel(f"best {spec.objective} so far")
    ax.set_title(f"{spec.name}: best so far vs compute")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    path = out_dir / "best_vs_compute.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for study in studies.values():
        top = _best(study.get_trials(deepcopy=False), spec.direction)
        if top and top.intermediate_values:
            steps = sorted(top.intermediate_values)
            ax.plot(steps, [top.intermediate_values[s] for s in steps], marker="o", ms=3,
                    label=f"{study.user_attrs['model']} (trial {top.number})")  # fmt: skip
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(spec.objective)
    ax.set_title(f"{spec.name}: learning curve of each model's best trial")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    path = out_dir / "best_learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    rows: list[tuple[str, dict[str, float]]] = []
    for study in studies.values():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "too few trials": we say so on the plot instead
                imp = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # too few complete trials, or nothing varies
            imp = {}
        rows.append((study.user_attrs["model"], imp))
    if any(imp for _, imp in rows):
        fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.5), constrained_layout=True, squeeze=False)
        for ax, (key, imp) in zip(axes[0], rows, strict=True):
            if imp:
                names = list(imp)[::-1]
                ax.barh(names, [imp[n] for n in names])
            else:
                ax.text(0.5, 0.5, "not enough\ncomplete trials", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(key, fontsize=9)
        fig.suptitle(f"{spec.name}: hyperparameter importance (fANOVA)")
        path = out_dir / "importances.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
