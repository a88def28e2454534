"""Learning-curve plots (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def learning_curve(
    history: Sequence[Mapping[str, float]],
    *,
    metric: str,
    baseline: float | None,
    title: str,
    path: str | Path,
) -> Path:
    """Validation ``metric`` and training loss against steps, with the memoryless baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax_val, ax_train) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    ax_val.plot(steps, [h.get(f"val_{metric}", float("nan")) for h in history], marker="o", ms=3, label=f"val {metric}")
    if baseline is not None:
        ax_val.axhline(baseline, color="grey", ls="--", lw=1, label=f"memoryless baseline ({baseline:.4g})")
    ax_train.plot(steps, [h.get("train_loss", float("nan")) for h in history], color="tab:orange", label="train loss")
    for ax, name in ((ax_val, metric), (ax_train, "loss")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    # Losses span orders of magnitude (an early transient, then the escape from the baseline).
    if metric in ("mse", "loss", "bpc") and all(h.get(f"val_{metric}", 0) > 0 for h in history):
        ax_val.set_yscale("log")
    if all(h.get("train_loss", 0) > 0 for h in history):
        ax_train.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
