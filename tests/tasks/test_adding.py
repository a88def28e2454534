from __future__ import annotations

import pytest
import torch

from irnn_search.tasks import TaskError, build_task
from irnn_search.tasks.adding import adding_batch
from irnn_search.tasks.base import generator


def test_batch_shapes_and_target_is_the_sum_of_the_two_marked_values() -> None:
    task = build_task("adding", {"T": 50}, seed=3, batch_size=8)
    batch = task.train_batch(0)
    assert batch.x.shape == (50, 8, 2) and batch.y.shape == (8, 1)
    values, markers = batch.x[..., 0], batch.x[..., 1]
    assert torch.equal(markers.sum(0), torch.full((8,), 2.0))
    assert torch.allclose((values * markers).sum(0), batch.y.squeeze(1))
    assert values.min() >= 0 and values.max() < 1


def test_halves_placement_puts_one_marker_in_each_half() -> None:
    x, _ = adding_batch(41, 5000, "halves", generator(0))
    pos = x[..., 1].nonzero()  # (t, b) pairs
    markers = x[..., 1]
    assert torch.equal(markers[:20].sum(0), torch.ones(5000))  # first ⌊41/2⌋ = 20 steps
    assert torch.equal(markers[20:].sum(0), torch.ones(5000))
    assert len(pos) == 10000


def test_anywhere_placement_has_distinct_positions_sometimes_in_the_same_half() -> None:
    x, _ = adding_batch(20, 5000, "anywhere", generator(1))
    markers = x[..., 1]
    assert torch.equal(markers.sum(0), torch.full((5000,), 2.0))  # distinct: never one step marked twice
    same_half = ((markers[:10].sum(0) == 2) | (markers[10:].sum(0) == 2)).float().mean()
    # Two distinct uniform positions share a half with probability 2·C(10,2)/C(20,2) = 90/190 ≈ 0.47.
    assert abs(float(same_half) - 90 / 190) < 0.03


@pytest.mark.parametrize("placement", ["halves", "anywhere"])
def test_constant_one_predictor_scores_the_one_sixth_baseline(placement: str) -> None:
    task = build_task("adding", {"T": 30, "placement": placement}, seed=0, batch_size=50_000)
    y = task.train_batch(0).y
    mse_of_constant_one = float(((y - 1.0) ** 2).mean())
    assert task.baseline()["mse"] == pytest.approx(1 / 6)
    assert mse_of_constant_one == pytest.approx(1 / 6, abs=0.004)  # Monte-Carlo, 50k samples


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    a = build_task("adding", {"T": 10}, seed=1)
    b = build_task("adding", {"T": 10}, seed=1)
    c = build_task("adding", {"T": 10}, seed=2)
    assert torch.equal(a.train_batch(7).x, b.train_batch(7).x)
    assert not torch.equal(a.train_batch(7).x, a.train_batch(8).x)
    assert not torch.equal(a.train_batch(7).x, c.train_batch(7).x)


def test_evaluation_sets_are_fixed_and_shared_by_every_seed() -> None:
    a = build_task("adding", {"T": 10, "val_size": 1200}, seed=1)
    b = build_task("adding", {"T": 10, "val_size": 1200}, seed=9)
    va, vb = list(a.eval_batches("val")), list(b.eval_batches("val"))
    assert sum(batch.y.shape[0] for batch in va) == 1200
    assert all(torch.equal(p.x, q.x) for p, q in zip(va, vb, strict=True))
    test = next(iter(a.eval_batches("test")))
    assert not torch.equal(test.x, va[0].x)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"T": 1}, "T must be >= 2"), ({"placement": "middle"}, "halves, anywhere"), ({"bogus": 1}, "valid options")],
)
def test_bad_options_are_refused_with_a_clear_message(options: dict[str, object], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        build_task("adding", options)


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(TaskError, match="valid tasks: adding, copy"):
        build_task("addition")
