"""A study's answer is read from what its trials reported, however they ended."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from irnn_search.search.validate import parse_spec
from irnn_search.service.answer import answer, lineages, reproduce_command, summary_metrics, task_lines

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = parse_spec(
    """\
[study]
task = "adding"
task_options = { T = 30 }
steps = 400
report_every = 100
batch_size = 32
budget = { trials = 10 }

[models.irnn]
hidden_size = 16
optimizer = "adam"
lr = { low = 1e-4, high = 1e-1, log = true }
clip = ["off", 1]
identity_scale = { low = 0.1, high = 1.0 }
""",
    source="t.toml",
    default_name="t",
)
DIST = {
    "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
    "clip": optuna.distributions.CategoricalDistribution(["off", 1.0]),
    "identity_scale": optuna.distributions.FloatDistribution(0.1, 1.0),
}


def _trial(state: TrialState, curve: dict[int, float], lr: float, **attrs: object) -> optuna.trial.FrozenTrial:
    value = min(curve.values()) if state == TrialState.COMPLETE else None
    return create_trial(
        state=state,
        value=value,
        params={"lr": lr, "clip": 1.0, "identity_scale": 1.0},
        distributions=DIST,
        intermediate_values=curve,
        user_attrs=dict(attrs),
    )


def _study(*trials: optuna.trial.FrozenTrial) -> optuna.Study:
    study = optuna.create_study()
    for t in trials:
        study.add_trial(t)
    return study


def test_a_pruned_or_diverged_trial_that_crossed_the_threshold_counts_as_solved() -> None:
    study = _study(
        _trial(TrialState.COMPLETE, {100: 0.16, 200: 0.15, 300: 0.02, 400: 0.012}, 1e-3),
        # crossed 0.01 at step 300, then pruned
        _trial(TrialState.PRUNED, {100: 0.16, 200: 0.05, 300: 0.008}, 3e-3, outcome="pruned"),
        # crossed at 200, then diverged
        _trial(TrialState.PRUNED, {100: 0.1, 200: 0.004}, 1e-2, outcome="diverged", reason="diverged: x"),
        _trial(TrialState.PRUNED, {100: 0.17}, 1e-1, outcome="pruned"),
        # diverged before its first report: it ran, and it did not solve
        _trial(TrialState.PRUNED, {}, 9e-2, outcome="diverged", reason="diverged: loss is nan at step 2"),
    )
    a = answer(study, SPEC)
    assert (a.baseline, a.threshold) == (pytest.approx(1 / 6), 0.01)
    assert a.solved is True and a.solved_count == 2 and a.started == 5
    assert a.solved_fraction == pytest.approx(0.4)
    assert (a.best_value, a.best_step, a.best_trial, a.best_ended) == (0.004, 200, 2, "diverged")
    assert a.steps_to_solve == 200 and a.fastest_solve == 200
    assert a.endings == {"complete": 1, "pruned": 2, "diverged": 2}
    assert a.below_baseline == pytest.approx((1 / 6) / 0.004)
    metrics = summary_metrics(a, 0.5)
    assert metrics["solved"] == 1.0 and metrics["trials"] == 5 and metrics["steps_to_solve"] == 200


def test_an_interrupted_and_requeued_trial_is_one_lineage_and_shows_what_it_reached() -> None:
    # Interrupted (released: FAIL with outcome "interrupted") at step 200, re-queued, now running.
    first = _trial(TrialState.FAIL, {100: 0.16, 200: 0.0002}, 1e-3, outcome="interrupted")
    study = _study(first)
    retry = _trial(TrialState.RUNNING, {300: 0.0001}, 1e-3, lineage=0, retry_of=0)
    study.add_trial(retry)
    (lin,) = lineages(study.get_trials())
    assert lin.number == 0 and lin.trials == [0, 1] and lin.ended == "running"
    a = answer(study, SPEC)
    assert a.best_value == 0.0001 and a.lineages == 1 and a.solved and a.steps_to_solve == 200


def test_nothing_reported_yet_is_no_answer_not_a_crash() -> None:
    a = answer(_study(), SPEC)
    assert a.best_value is None and a.solved is False and a.solved_fraction is None and a.steps_to_solve is None


def test_a_task_without_a_threshold_has_no_solved_field() -> None:
    spec = parse_spec(
        '[study]\ntask = "adding"\nobjective = "val_loss"\nsteps = 100\nreport_every = 50\n'
        'budget = { trials = 2 }\n[models.irnn]\nhidden_size = 4\noptimizer = "adam"\nlr = 1e-3\n',
        source="t.toml",
        default_name="t",
    )
    lines = task_lines(spec)
    assert lines.threshold is None and lines.baseline == pytest.approx(1 / 6)


def test_the_reproduce_line_carries_every_setting_of_the_trial() -> None:
    cmd = reproduce_command(SPEC, "irnn", {"lr": 0.00123, "clip": "off", "identity_scale": 0.5})
    assert cmd.startswith("irnn-search train --task adding --model irnn --T 30")
    for part in ("--hidden 16", "-m identity_scale=0.5", "--optimizer adam", "--lr 0.00123", "--clip off",
                 "--steps 400", "--batch-size 32", "--eval-every 100", "--seed 0"):  # fmt: skip
        assert part in cmd


def test_a_trial_trained_in_a_pack_gets_a_packed_reproduce_line() -> None:
    params = {"lr": 1e-3, "clip": 1.0, "identity_scale": 1.0}
    assert "--packed" not in reproduce_command(SPEC, "irnn", params)
    assert reproduce_command(SPEC, "irnn", params, packed=True).endswith(" --seed 0 --packed")
    alone = _trial(TrialState.COMPLETE, {100: 0.16, 200: 0.0002}, 1e-3)
    assert answer(_study(alone), SPEC).best_packed is False
    packed = _trial(TrialState.COMPLETE, {100: 0.16, 200: 0.0002}, 1e-3, pack_slots=4)
    assert answer(_study(packed), SPEC).best_packed is True


def test_the_best_attempt_to_evaluate_skips_a_requeued_copy_still_waiting() -> None:
    # After a Ctrl-C the best lineage's latest trial is its re-queued copy, WAITING, whose params
    # Optuna leaves empty: the report's test evaluation crashed on it ("no optimizer").
    from irnn_search.service.report import _best_attempt

    study = _study(_trial(TrialState.FAIL, {100: 0.16, 200: 0.0002}, 1e-3, outcome="interrupted"))
    study.enqueue_trial({"lr": 1e-3, "clip": 1.0, "identity_scale": 1.0}, user_attrs={"lineage": 0, "retry_of": 0})
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    attempt = _best_attempt(study, SPEC)
    assert attempt is not None and attempt.number == 0 and attempt.params["lr"] == 1e-3
