"""The report's plots: best so far against compute, each model's best learning curve (with the
published-settings trial beside it), where each model works (the validation metric against the
learning rate), hyperparameter importances, and, for a study with several training seeds, each
model's best configuration at every seed. The memoryless baseline and the solve threshold are
drawn wherever the metric is on an axis."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna

from irnn_search.outcome import Outcome
from irnn_search.search.literature import in_metric_units
from irnn_search.search.spec import StudySpec
from irnn_search.service.answer import TaskLines, better, lineages, task_lines, top_lineage
from irnn_search.service.report import ModelRow, spec_studies
from irnn_search.tasks import TaskError, task_class

#: how each lineage ending is drawn on the landscape plots
MARKERS: dict[str, str] = {
    Outcome.COMPLETE: "o",
    Outcome.PRUNED: "v",
    Outcome.DIVERGED: "x",
    Outcome.FAILED: "X",
    "running": ">",  # a lineage still running: no outcome yet
    Outcome.INTERRUPTED: "s",
}


def _lines(ax: Any, lines: TaskLines) -> None:
    if lines.baseline is not None:
        ax.axhline(lines.baseline, color="grey", ls="--", lw=1, label=f"memoryless baseline ({lines.baseline:.4g})")
    if lines.threshold is not None:
        ax.axhline(lines.threshold, color="tab:green", ls=":", lw=1.2, label=f"solved below {lines.threshold:.3g}")


def _log_y(ax: Any, values: list[float], spec: StudySpec) -> None:
    if spec.direction == "minimize" and values and all(v > 0 for v in values):
        ax.set_yscale("log")


def _finish(fig: Any, ax: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def best_vs_compute(spec: StudySpec, studies: dict[str, optuna.Study], lines: TaskLines, path: Path) -> Path:
    """Best value reached so far against device-hours, per model (a step per lineage, in the order
    the lineages ended; a lineage counts whatever its ending)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    ys_all: list[float] = []
    for study in studies.values():
        lins = sorted(lineages(study.get_trials(deepcopy=False)), key=lambda lin: lin.trials[-1])
        hours, best, xs, ys = 0.0, None, [], []
        for lin in lins:
            hours += lin.device_s / 3600
            v, _ = lin.best(spec.direction)
            if v is not None and better(spec.direction, v, best):
                best = v
            if best is not None:
                xs.append(hours)
                ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", marker="o", ms=3, label=study.user_attrs["model"])
            ys_all += ys
    _lines(ax, lines)
    _log_y(ax, ys_all + ([lines.baseline] if lines.baseline else []), spec)
    ax.set_xlabel("device-hours (a packed trial counts its share of its pack)")
    ax.set_ylabel(f"best {spec.objective} so far")
    ax.set_title(f"{spec.name}: best so far vs compute")
    return _finish(fig, ax, path)


def learning_curves(spec: StudySpec, studies: dict[str, optuna.Study], lines: TaskLines, path: Path) -> Path:
    """Each model's best trial (solid) and its best published-settings trial (dashed, same colour)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    ys_all: list[float] = []
    for i, study in enumerate(studies.values()):
        lins = lineages(study.get_trials(deepcopy=False))
        color = f"C{i}"
        key = study.user_attrs["model"]
        best = top_lineage(lins, spec.direction)
        pub = top_lineage(lins, spec.direction, "published")
        for lin, style, label in ((best, "-", "best"), (pub, "--", "published settings")):
            if lin is None or not lin.curve or (label != "best" and lin is best):
                continue
            steps = sorted(lin.curve)
            ys = [lin.curve[s] for s in steps]
            also = ", published settings" if label == "best" and lin.source == "published" else ""
            marker = "o" if style == "-" else None
            ax.plot(
                steps,
                ys,
                ls=style,
                color=color,
                marker=marker,
                ms=2.5,
                label=f"{key} {label} (trial {lin.number}{also})",
            )
            ys_all += [y for y in ys if math.isfinite(y)]
    _lines(ax, lines)
    _log_y(ax, ys_all, spec)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(spec.objective)
    ax.set_title(f"{spec.name}: each model's best trial; dashed: its published settings (our run)")
    return _finish(fig, ax, path)


def landscapes(spec: StudySpec, studies: dict[str, optuna.Study], lines: TaskLines, path: Path) -> Path | None:
    """Where each model works: the best value each trial reached against its learning rate,
    coloured by clip threshold (or optimizer where clip is not searched), marked by how it ended;
    published-settings trials ringed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels = [(s.user_attrs["model"], lineages(s.get_trials(deepcopy=False))) for s in studies.values()]
    panels = [(k, [lin for lin in lins if "lr" in lin.params and lin.best(spec.direction)[0] is not None])
              for k, lins in panels]  # fmt: skip
    if not any(lins for _, lins in panels):
        return None
    ncols = min(4, len(panels))  # a grid, so seven models stay readable
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows), constrained_layout=True, squeeze=False, sharey=True
    )
    flat = list(axes.flat)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    ys_all: list[float] = []
    for ax, (key, lins) in zip(flat, panels, strict=False):
        by = "clip" if any("clip" in lin.params for lin in lins) else "optimizer"
        groups = sorted({str(lin.params.get(by, "–")) for lin in lins})
        for gi, g in enumerate(groups):
            for ended, marker in MARKERS.items():
                pts = [lin for lin in lins if str(lin.params.get(by, "–")) == g and lin.ended == ended]
                if not pts:
                    continue
                xs = [float(lin.params["lr"]) for lin in pts]
                ys = [float(lin.best(spec.direction)[0]) for lin in pts]  # type: ignore[arg-type]
                ax.scatter(xs, ys, color=f"C{gi}", marker=marker, s=22, label=f"{by} {g}, {ended}")
                ys_all += ys
        pub = [lin for lin in lins if lin.source == "published"]
        if pub:
            ax.scatter([float(lin.params["lr"]) for lin in pub], [float(lin.best(spec.direction)[0]) for lin in pub],  # type: ignore[arg-type]
                       s=90, facecolors="none", edgecolors="black", label="published settings")  # fmt: skip
        _lines(ax, lines)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow range labels every minor tick, overlapping
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel(f"best {spec.objective} reached")
    _log_y(flat[0], ys_all, spec)
    fig.suptitle(f"{spec.name}: where each model works (marker: how the trial ended)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def importances(spec: StudySpec, studies: dict[str, optuna.Study], path: Path) -> Path | None:
    """fANOVA importances per model, where at least two trials completed."""
    import matplotlib.pyplot as plt

    rows: list[tuple[str, dict[str, float]]] = []
    for study in studies.values():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "too few trials": we say so on the plot instead
                imp = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # too few complete trials, or nothing varies
            imp = {}
        rows.append((study.user_attrs["model"], imp))
    if not any(imp for _, imp in rows):
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.5), constrained_layout=True, squeeze=False)
    for ax, (key, imp) in zip(axes[0], rows, strict=True):
        if imp:
            names = list(imp)[::-1]
            ax.barh(names, [imp[n] for n in names])
        else:
            ax.text(0.5, 0.5, "not enough\ncomplete trials", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(key, fontsize=9)
    fig.suptitle(f"{spec.name}: hyperparameter importance (fANOVA, complete trials)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def published_points(spec: StudySpec, numbers: list[dict[str, Any]]) -> list[float]:
    """Published numbers (``ModelRow.published_numbers``) in the objective's units, for the task's
    size where they give one (a number for T = 400 is no mark for a study at T = 100)."""
    metric = spec.objective.removeprefix("val_")
    try:
        size_key = task_class(spec.task).size_option
    except TaskError:
        size_key = None
    size = spec.task_options.get(size_key) if size_key else None
    return [
        in_metric_units(float(n["value"]), n["units"])
        for n in numbers
        if n["metric"] == metric and n.get("size", size) == size
    ]


def seed_spread(spec: StudySpec, rows: list[ModelRow], lines: TaskLines, path: Path) -> Path | None:
    """Each model's best configuration at each of its training seeds: a dot per seed, the mean
    with a ± sample sd bar, the published number (their protocol) as an open diamond. None unless
    some model has two seed values or more."""
    import matplotlib.pyplot as plt

    cols = [r for r in rows if r.seeds_trained]
    if not any(r.seeds_trained >= 2 for r in cols):
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(cols) + 2.5), 4.2), constrained_layout=True)
    ys_all: list[float] = []
    labelled: set[str] = set()

    def once(label: str) -> str | None:  # each legend entry once, not once per model
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, r in enumerate(cols):
        ys = list(r.seed_values.values())
        # the seeds side by side left of the mean's bar, the published number right of it
        xs = [i - 0.32 + 0.2 * j / max(1, len(ys) - 1) for j in range(len(ys))]
        ax.scatter(xs, ys, color=f"C{i}", s=20, alpha=0.85, label=once("one seed"))
        if r.seed_mean is not None and r.seed_sd is not None:
            ax.errorbar([i], [r.seed_mean], yerr=r.seed_sd, fmt="_", ms=18, mew=2, color="black", capsize=7,
                        elinewidth=1.2, label=once("mean ± sample sd"))  # fmt: skip
        pub = published_points(spec, r.published_numbers)
        if pub:
            ax.scatter([i + 0.25] * len(pub), pub, marker="D", s=36, facecolors="none", edgecolors="tab:red",
                       label=once("published number (their protocol)"))  # fmt: skip
        ys_all += ys + pub
    ax.set_xticks(range(len(cols)), [_seed_tick(r) for r in cols])
    ax.set_xlim(-0.6, len(cols) - 0.4)
    _lines(ax, lines)
    _log_y(ax, ys_all + [v for v in (lines.baseline, lines.threshold) if v is not None], spec)
    ax.set_ylabel(f"best {spec.objective} per seed")
    ax.set_title(f"{spec.name}: best configuration, each seed", fontsize=9)
    return _finish(fig, ax, path)


def seed_curves(spec: StudySpec, rows: list[ModelRow], lines: TaskLines, path: Path) -> Path | None:
    """Each model's best configuration, one thin line per training seed, in the model's colour:
    how alike the seeds learn, and when each one solved. None unless some model recorded the
    curves of two seeds or more (multi-seed trials record them since stop 16)."""
    import matplotlib.pyplot as plt

    drawn = [(i, r) for i, r in enumerate(rows) if len(r.seed_curves) >= 2]
    if not drawn:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    ys_all: list[float] = []
    for i, r in drawn:
        for j, (_seed, curve) in enumerate(sorted(r.seed_curves.items())):
            steps = sorted(curve)
            ys = [curve[s] for s in steps]
            label = f"{r.model} ({len(r.seed_curves)} seeds)" if j == 0 else None
            ax.plot(steps, ys, color=f"C{i}", lw=1.0, alpha=0.75, label=label)
            ys_all += [y for y in ys if math.isfinite(y)]
    _lines(ax, lines)
    _log_y(ax, ys_all, spec)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(spec.objective)
    ax.set_title(f"{spec.name}: each model's best configuration, one line per seed", fontsize=9)
    return _finish(fig, ax, path)


def _seed_tick(r: ModelRow) -> str:
    """``irnn\n(5 seeds, 2 diverged)``: a diverged seed has no value to draw, so the tick says it."""
    diverged = f", {len(r.seeds_diverged)} diverged" if r.seeds_diverged else ""
    return f"{r.model}\n({r.seeds_trained} seeds{diverged})"


def plots(spec: StudySpec, storage_url: str, out_dir: Path, rows: list[ModelRow]) -> list[Path]:
    """Write the report's plots into ``out_dir`` (``rows``: the report's, one per study); returns
    the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    studies = spec_studies(spec, storage_url)
    lines = task_lines(spec)
    written = [
        best_vs_compute(spec, studies, lines, out_dir / "best_vs_compute.png"),
        learning_curves(spec, studies, lines, out_dir / "best_learning_curves.png"),
        landscapes(spec, studies, lines, out_dir / "landscape.png"),
        importances(spec, studies, out_dir / "importances.png"),
        seed_spread(spec, rows, lines, out_dir / "seeds.png"),
        seed_curves(spec, rows, lines, out_dir / "seed_curves.png"),
    ]
    return [p for p in written if p is not None]
