"""A trial with several seeds in a pack (``work(pack=K)``): its seeds train side by side as
members of one pack, the trial ends when its last seed returns, a seed that ends it early stops
its siblings, and a stop checkpoints every seed for the resume."""

from __future__ import annotations

import dataclasses
import math
import statistics
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from irnn_search.outcome import Outcome
from irnn_search.search.validate import load_spec
from irnn_search.service import packing
from irnn_search.service.attempt import Attempt
from irnn_search.service.studies import open_studies
from irnn_search.service.worker import work

SPEC = """
[study]
description = "test: the seeds of one trial in a pack"
task = "adding"
task_options = {{ T = 10, val_size = 64, test_size = 64 }}
steps = {steps}
report_every = 10
batch_size = 8
seeds = [0, 1, 2]
pruner = {{ name = "none" }}
budget = {{ trials = 1 }}
warm_start = false

[models.irnn]
hidden_size = 8
optimizer = "adam"
lr = 0.005
clip = 1
identity_scale = 0.5
"""


def _study(tmp_path: Path, name: str, steps: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.format(steps=steps))
    return open_studies(load_spec(path), f"sqlite:///{tmp_path / 'optuna.db'}", None)["irnn"]


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The most members the pack held at once, per ``run_pack`` call (a spy on the real loop)."""
    peaks: list[int] = []
    real = packing.train_packed

    def spy(members: list[Any], *, refill: Any, on_result: Any, **kw: Any) -> Any:
        now = [0]
        peaks.append(0)

        def counted_refill() -> Any:
            m = refill()
            if m is not None:
                now[0] += 1
                peaks[-1] = max(peaks[-1], now[0])
            return m

        def counted_result(res: Any) -> None:
            now[0] -= 1
            on_result(res)

        return real(members, refill=counted_refill, on_result=counted_result, **kw)

    monkeypatch.setattr(packing, "train_packed", spy)
    return peaks


def test_the_seeds_of_one_trial_train_side_by_side_and_match_one_at_a_time(
    tmp_path: Path, in_flight: list[int]
) -> None:
    alone = _study(tmp_path, "alone", steps=60)
    work({alone.study_name: alone}, checkpoint_root=tmp_path / "c1", stop=threading.Event())
    packed = _study(tmp_path, "packed", steps=60)
    work({packed.study_name: packed}, checkpoint_root=tmp_path / "c2", stop=threading.Event(), pack=3)
    assert in_flight == [3], "the three seeds shared one pack"
    (a,) = alone.trials
    (p,) = packed.trials
    assert p.state == TrialState.COMPLETE and p.user_attrs["outcome"] == "complete"
    per_seed = {s: p.user_attrs[f"value_seed{s}"] for s in (0, 1, 2)}
    assert len(set(per_seed.values())) == 3, "each seed trained its own run"
    assert p.value == pytest.approx(statistics.fmean(per_seed.values()))
    for s in (0, 1, 2):  # the same runs as one at a time, to float32 rounding
        assert math.isclose(per_seed[s], a.user_attrs[f"value_seed{s}"], rel_tol=1e-2), s
    assert p.intermediate_values == pytest.approx(a.intermediate_values, rel=1e-4), "pruning follows seed 0"


def test_a_seed_that_ends_its_trial_stops_the_siblings_already_in_the_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Attempt.prepare

    def prepare(self: Attempt, i: int, seed: int) -> Any:
        if seed == 2:
            raise RuntimeError("seed 2 cannot start")
        return real(self, i, seed)

    monkeypatch.setattr(Attempt, "prepare", prepare)
    study = _study(tmp_path, "fails", steps=4000)
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=threading.Event(), pack=3)
    (t,) = study.trials
    assert t.state == TrialState.FAIL and t.user_attrs["outcome"] == "failed"
    assert "seed 2 cannot start" in t.user_attrs["reason"]
    assert max(t.intermediate_values, default=0) < 4000, "seed 0 stopped at its next report, not at its end"
    assert "value_seed0" not in t.user_attrs and "value_seed1" not in t.user_attrs


@pytest.mark.slow
def test_a_stopped_pack_checkpoints_every_seed_and_the_resume_continues_each(tmp_path: Path) -> None:
    study = _study(tmp_path, "stop", steps=4000)
    stop = threading.Event()
    threading.Timer(2.0, stop.set).start()
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=stop, pack=3)
    (first,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert first.user_attrs["outcome"] == "interrupted"
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=threading.Event(), pack=3)
    (done,) = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(done.user_attrs[f"resumed_at_step_seed{s}"] > 0 for s in (0, 1, 2)), done.user_attrs


@pytest.mark.parametrize("pack", [1, 3], ids=["one-at-a-time", "packed"])
def test_a_seed_that_diverges_is_counted_and_the_other_seeds_run_to_their_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack: int
) -> None:
    """One seed of a confirmation diverging is data ("diverged in 1 of 3 seeds"), not the end of the
    configuration: the others finish, the value is their mean, the diverged seed is on the trial."""
    from irnn_search.train import TrainResult

    real = Attempt.seed_done

    def seed_done(self: Attempt, i: int, seed: int, run: Any, result: TrainResult, ckpt: Path) -> None:
        if seed == 1:  # as train() reports a run whose hidden state blew up
            result = dataclasses.replace(result, outcome=Outcome.DIVERGED, reason="hidden state reached 8e6", best={})
        return real(self, i, seed, run, result, ckpt)

    monkeypatch.setattr(Attempt, "seed_done", seed_done)
    study = _study(tmp_path, f"div{pack}", steps=40)
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=threading.Event(), pack=pack)
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE, t.user_attrs
    assert t.user_attrs["diverged_seed1"] == "hidden state reached 8e6"
    assert "value_seed1" not in t.user_attrs and max(t.intermediate_values) == 40
    assert t.value == pytest.approx(statistics.fmean([t.user_attrs["value_seed0"], t.user_attrs["value_seed2"]]))


def test_a_trial_whose_every_seed_diverged_ends_diverged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from irnn_search.train import TrainResult

    real = Attempt.seed_done

    def seed_done(self: Attempt, i: int, seed: int, run: Any, result: TrainResult, ckpt: Path) -> None:
        result = dataclasses.replace(result, outcome=Outcome.DIVERGED, reason=f"seed {seed} blew up", best={})
        return real(self, i, seed, run, result, ckpt)

    monkeypatch.setattr(Attempt, "seed_done", seed_done)
    study = _study(tmp_path, "alldiv", steps=20)
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=threading.Event(), pack=3)
    (t,) = study.trials
    assert t.state == TrialState.PRUNED and t.user_attrs["outcome"] == "diverged"
    assert t.user_attrs["reason"].startswith("every seed diverged: seed 0: seed 0 blew up")


def test_each_seed_records_its_curve_and_when_it_solved(tmp_path: Path) -> None:
    """A multi-seed trial keeps every seed's validation curve, so the report says when each seed
    solved (the literature's measure, with an error bar) and draws the seeds' curves."""
    from irnn_search.service.answer import seeds_of

    spec = tmp_path / "solves.toml"
    spec.write_text(
        SPEC.format(steps=400)
        .replace("T = 10, val_size = 64", "T = 5, val_size = 64")
        .replace("batch_size = 8", "batch_size = 32")
        .replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
        .replace("[models.irnn]\nhidden_size = 8", "[models.lstm]\nhidden_size = 16")
        .replace("lr = 0.005", "lr = 0.03")
        .replace("identity_scale = 0.5\n", "")
    )
    study = open_studies(load_spec(spec), f"sqlite:///{tmp_path / 'optuna.db'}", None)["lstm"]
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=threading.Event(), pack=2)
    (t,) = study.trials
    seeds = seeds_of(study.trials, t.number)
    assert sorted(seeds.curves) == [0, 1] and all(len(c) == 40 for c in seeds.curves.values())
    assert seeds.curves[0] == pytest.approx(t.intermediate_values), "seed 0's curve is the trial's reports"
    for s, curve in seeds.curves.items():
        assert min(curve.values()) == pytest.approx(t.user_attrs[f"value_seed{s}"])
    solved_at = seeds.solved_at(0.01)
    assert solved_at, "an LSTM at T = 5 solves within 400 steps: the crossing is measured, not absent"
    for s, step in solved_at.items():
        assert seeds.curves[s][step] < 0.01 and all(v >= 0.01 for k, v in seeds.curves[s].items() if k < step)
