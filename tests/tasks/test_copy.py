from __future__ import annotations

import math

import pytest
import torch

from irnn_search.tasks import build_task


def _ids(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(-1)


def test_exprnn_convention_recall_starts_at_the_marker_step() -> None:
    T, K = 15, 10
    task = build_task("copy", {"T": T}, seed=0, batch_size=4)
    batch = task.train_batch(0)
    ids = _ids(batch.x)
    assert batch.x.shape == (T + 2 * K, 4, 10) and batch.y.shape == (T + 2 * K, 4)
    assert torch.equal(batch.x.sum(-1), torch.ones(T + 2 * K, 4))  # one-hot
    seq = ids[:K]
    assert ((seq >= 1) & (seq <= 8)).all()
    assert (ids[K : K + T] == 0).all()
    assert (ids[K + T] == 9).all()
    assert (ids[K + T + 1 :] == 0).all()
    assert (batch.y[: K + T] == 0).all()
    assert torch.equal(batch.y[K + T :], seq)  # first symbol due at the marker's own step


def test_nnrnn_convention_recall_starts_one_step_after_the_marker() -> None:
    T, K = 15, 10
    task = build_task("copy", {"T": T, "convention": "nnrnn"}, seed=0, batch_size=4)
    batch = task.train_batch(0)
    ids = _ids(batch.x)
    assert (ids[K + T - 1] == 9).all()
    assert (ids[K : K + T - 1] == 0).all() and (ids[K + T :] == 0).all()
    assert torch.equal(batch.y[K + T :], ids[:K])


@pytest.mark.parametrize("convention", ["exprnn", "nnrnn"])
def test_best_memoryless_predictor_scores_the_published_baseline(convention: str) -> None:
    T = 30
    task = build_task("copy", {"T": T, "convention": convention}, seed=0, batch_size=20_000)
    # Fit the best input-blind predictor: per-position class frequencies from one large sample...
    y_fit = task.train_batch(0).y
    freq = torch.stack([torch.bincount(y_fit[t], minlength=9) for t in range(y_fit.shape[0])]).float()
    logits = torch.log(freq / freq.sum(1, keepdim=True) + 1e-12)
    # ...and score it on a fresh sample.
    batch = task.train_batch(1)
    out = logits.unsqueeze(1).expand(-1, batch.y.shape[1], -1)
    assert task.loss(out, batch).item() == pytest.approx(10 * math.log(8) / (T + 20), rel=0.01)
    assert task.baseline()["loss"] == pytest.approx(10 * math.log(8) / (T + 20))


def test_accuracy_counts_only_the_recalled_symbols() -> None:
    task = build_task("copy", {"T": 40, "val_size": 10}, seed=0)
    batch = next(iter(task.eval_batches("val")))
    perfect = torch.nn.functional.one_hot(batch.y, 9).float() * 20
    blanks_only = torch.zeros_like(perfect)
    blanks_only[..., 0] = 20
    assert task.summarize(task.stats(perfect, batch))["accuracy"] == 1.0
    assert task.summarize(task.stats(blanks_only, batch))["accuracy"] == 0.0
    assert task.summarize(task.stats(perfect, batch))["loss"] < 1e-6


def test_published_baselines_for_the_standard_delays() -> None:
    assert build_task("copy", {"T": 200}).baseline()["loss"] == pytest.approx(0.0945, abs=1e-4)
    assert build_task("copy", {"T": 1000}).baseline()["loss"] == pytest.approx(0.02039, abs=1e-5)
