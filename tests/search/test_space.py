"""The spec's search space in Optuna: suggestions in range, "off" clip, conditional momentum/alpha,
seeded samplers, pruners on the report grid. Uses real in-memory Optuna studies."""

from __future__ import annotations

import importlib.util

import optuna
import pytest
from optuna.trial import TrialState

from irnn_search.search import space
from irnn_search.search.space import (
    AnswerKeepingPruner,
    build_pruner,
    build_sampler,
    build_train_config,
    params_to_kwargs,
    suggest,
)
from irnn_search.search.spec import Choice, Fixed, FloatRange, IntRange, PrunerSpec, SpecError, StudySpec
from irnn_search.search.validate import parse_spec
from irnn_search.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = """\
[study]
task = "adding"
task_options = { T = 20 }
steps = 400
report_every = 50
budget = { trials = 10 }
{study_extra}

[models.irnn]
hidden_size = { low = 4, high = 12, step = 4 }
optimizer = ["sgd", "adam", "rmsprop"]
lr = { low = 1e-5, high = 1e-1, log = true }
momentum = { low = 0.0, high = 0.9 }
alpha = { low = 0.5, high = 0.99 }
clip = ["off", 1, 10, 100]
identity_scale = { low = 0.01, high = 1.0, log = true }

[models.exprnn]
optimizer = "rmsprop"
lr = 1e-3
lr_orth = { low = 1e-5, high = 1e-3, log = true }
alpha = [0.9, 0.99]
init = ["henaff", "cayley"]
"""


def make_spec(study_extra: str = "") -> StudySpec:
    return parse_spec(SPEC.replace("{study_extra}", study_extra), source="space.toml", default_name="space")


def test_suggestions_lie_in_the_space_and_conditionals_follow_the_optimizer():
    spec = make_spec()
    model = spec.model("irnn")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_optimizers, seen_clips = set(), set()
    for _ in range(40):
        trial = study.ask()
        train_kwargs, model_options = suggest(trial, model)
        opt = train_kwargs["optimizer"]
        seen_optimizers.add(opt)
        assert 1e-5 <= train_kwargs["lr"] <= 1e-1
        assert model_options["hidden_size"] in (4, 8, 12)
        assert 0.01 <= model_options["identity_scale"] <= 1.0
        assert model_options["impl"] == "auto" and model_options["input_std"] == 1e-3  # fixed defaults
        assert train_kwargs["lr_orth"] is None  # fixed at its default (same as lr)
        # "off" is the Optuna value; the training config gets None. Numbers become floats.
        clip = trial.params["clip"]
        seen_clips.add(clip)
        assert train_kwargs["clip"] is None if clip == "off" else train_kwargs["clip"] == float(clip)
        # momentum only with SGD, alpha only with RMSprop: in the kwargs and in the trial's params
        assert ("momentum" in train_kwargs) == ("momentum" in trial.params) == (opt == "sgd")
        assert ("alpha" in train_kwargs) == ("alpha" in trial.params) == (opt == "rmsprop")
        if opt == "sgd":
            assert 0.0 <= train_kwargs["momentum"] <= 0.9
        if opt == "rmsprop":
            assert 0.5 <= train_kwargs["alpha"] <= 0.99
        TrainConfig(**train_kwargs)  # every suggestion is a valid training config
        study.tell(trial, 0.0)
    assert seen_optimizers == {"sgd", "adam", "rmsprop"}
    assert "off" in seen_clips and len(seen_clips) > 1


def test_fixed_values_are_not_optuna_parameters():
    spec = make_spec()
    model = spec.model("exprnn")
    study = optuna.create_study()
    trial = study.ask()
    train_kwargs, model_options = suggest(trial, model)
    searched = {name for name, param in model.params.items() if not isinstance(param, Fixed)}
    assert set(trial.params) == {"lr_orth", "alpha", "init"} == searched
    assert train_kwargs["optimizer"] == "rmsprop" and train_kwargs["lr"] == 1e-3
    assert train_kwargs["alpha"] in (0.9, 0.99)  # a fixed optimizer makes alpha unconditional
    assert "momentum" not in train_kwargs
    assert model_options["hidden_size"] == 100 and model_options["init"] in ("henaff", "cayley")


def test_the_suggested_distributions_are_the_specs_ranges_and_choices():
    spec = make_spec()
    model = spec.model("irnn")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, optuna.distributions.BaseDistribution] = {}
    for _ in range(20):
        trial = study.ask()
        suggest(trial, model)
        seen.update(study.tell(trial, 1.0).distributions)
    for name, dist in seen.items():
        param = model.params[name]
        if isinstance(param, FloatRange):
            assert dist == optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, IntRange):
            assert dist == optuna.distributions.IntDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            assert isinstance(param, Choice) and dist == optuna.distributions.CategoricalDistribution(param.choices)
    assert seen["clip"] == optuna.distributions.CategoricalDistribution(("off", 1.0, 10.0, 100.0))
    assert isinstance(model.params["lr"], FloatRange) and isinstance(model.params["clip"], Choice)


def test_params_to_kwargs_rebuilds_what_suggest_returned():
    spec = make_spec()
    model = spec.model("irnn")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(15):
        trial = study.ask()
        suggested = suggest(trial, model)
        frozen = study.tell(trial, 0.5)
        assert params_to_kwargs(model, frozen.params) == suggested
    with pytest.raises(SpecError, match="lack lr"):
        params_to_kwargs(model, {"optimizer": "adam", "clip": "off", "hidden_size": 4, "identity_scale": 0.1})


def test_same_seed_gives_the_same_first_suggestions_and_streams_differ():
    spec = make_spec('sampler = { name = "tpe", seed = 7, n_startup_trials = 2 }')
    model = spec.model("irnn")

    def first(sampler: optuna.samplers.BaseSampler, n: int = 4) -> list[dict]:
        study = optuna.create_study(sampler=sampler)
        out = []
        for i in range(n):
            trial = study.ask()
            suggest(trial, model)
            out.append(dict(trial.params))
            study.tell(trial, float(i))
        return out

    a, b = first(build_sampler(spec)), first(build_sampler(spec))
    assert a == b  # start-up and TPE suggestions alike
    assert first(build_sampler(spec, stream=1)) != a  # a parallel worker explores elsewhere
    assert first(build_sampler(spec, stream=1)) == first(build_sampler(spec, stream=1))


@pytest.mark.parametrize(
    ("extra", "cls"),
    [
        ("", optuna.samplers.TPESampler),
        ('sampler = "random"', optuna.samplers.RandomSampler),
        ('sampler = { name = "tpe", multivariate = true, group = true }', optuna.samplers.TPESampler),
    ],
)
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # TPE group
def test_build_sampler_makes_the_named_sampler(extra, cls):
    assert type(build_sampler(make_spec(extra))) is cls


def test_gp_sampler_when_importable_and_a_clear_error_when_not(monkeypatch):
    spec = make_spec('sampler = { name = "gp", seed = 1, n_startup_trials = 3 }')
    assert isinstance(build_sampler(spec), optuna.samplers.GPSampler)  # scipy and torch are installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(space.importlib.util, "find_spec", lambda name: None if name == "scipy" else real(name))
    with pytest.raises(SpecError, match=r"the gp sampler needs the Python package 'scipy'.*pip install scipy"):
        build_sampler(spec)


def test_cmaes_sampler_needs_the_cmaes_package(monkeypatch):
    spec = make_spec('sampler = { name = "cmaes", sigma0 = 0.5 }')
    if importlib.util.find_spec("cmaes") is not None:
        assert isinstance(build_sampler(spec), optuna.samplers.CmaEsSampler)
    monkeypatch.setattr(space.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError, match=r"the cmaes sampler needs the Python package 'cmaes'.*pip install cmaes"):
        build_sampler(spec)


def test_pruners_use_steps_on_the_report_grid():
    wrapped = build_pruner(make_spec())  # default: ASHA from the first report, keeping answers
    assert isinstance(wrapped, AnswerKeepingPruner)
    asha = wrapped.base
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner)
    assert asha._min_resource == 50 and asha._reduction_factor == 4
    hb = build_pruner(
        make_spec('pruner = { name = "hyperband", min_resource = 100, reduction_factor = 2, keep_answers = false }')
    )
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    assert (hb._min_resource, hb._max_resource, hb._reduction_factor) == (100, 400, 2)
    median = build_pruner(make_spec('pruner = { name = "median", n_warmup_steps = 100, keep_answers = 0 }'))
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_warmup_steps, median._interval_steps) == (100, 50)
    assert isinstance(build_pruner(make_spec('pruner = "none"')), optuna.pruners.NopPruner)


def test_asha_prunes_a_bad_trial_at_its_first_rung_on_the_report_grid():
    spec = make_spec('pruner = { name = "asha", min_resource = 100, reduction_factor = 2 }')
    study = optuna.create_study(pruner=build_pruner(spec))
    for value in (0.1, 0.2):  # two good trials complete
        trial = study.ask()
        for step in range(spec.report_every, spec.steps + 1, spec.report_every):
            trial.report(value, step)
            trial.should_prune()  # a trial records its rung values when it asks
        study.tell(trial, value)
    bad = study.ask()
    bad.report(5.0, 50)
    assert not bad.should_prune()  # before the first rung
    bad.report(5.0, 100)
    assert bad.should_prune()  # the first rung is min_resource = 100 steps, a report step


def _asha_study(keep_answers: bool, grace: int | None = 0) -> tuple[optuna.Study, StudySpec]:
    """ASHA with rungs at 100, 200 and 400 of 400 steps (report every 50); ``grace``: the spec's
    ``plateau_grace`` (None: not given, so half the steps)."""
    extra = "true" if keep_answers else "false"
    given = "" if grace is None else f", plateau_grace = {grace}"
    spec = make_spec(
        f'pruner = {{ name = "asha", min_resource = 100, reduction_factor = 2, keep_answers = {extra}{given} }}'
    )
    return optuna.create_study(pruner=build_pruner(spec)), spec


def _run_curve(study: optuna.Study, curve: dict[int, float], *, finish: bool = True) -> optuna.Trial:
    trial = study.ask()
    for step, value in curve.items():
        trial.report(value, step)
        if trial.should_prune():
            break
    if finish:
        study.tell(trial, min(curve.values()))
    return trial


@pytest.mark.parametrize("keep_answers", [True, False])
def test_a_trial_below_the_solve_threshold_is_never_pruned_when_keeping_answers(keep_answers: bool) -> None:
    # adding: solved = val MSE below 0.01. Two better trials reach the 100-step rung first.
    study, _ = _asha_study(keep_answers)
    for v in (0.001, 0.002):
        _run_curve(study, {50: 0.16, 100: v})
    solved = _run_curve(study, {50: 0.16}, finish=False)
    solved.report(0.008, 100)  # below the threshold, but worse than both at the rung
    assert solved.should_prune() is not keep_answers


@pytest.mark.parametrize("keep_answers", [True, False])
def test_trials_all_on_the_plateau_are_not_ranked_by_noise(keep_answers: bool) -> None:
    study, _ = _asha_study(keep_answers)
    for v in (0.160, 0.161):  # both still at the 1/6 baseline at the 100-step rung
        _run_curve(study, {50: 0.166, 100: v})
    late = _run_curve(study, {50: 0.166}, finish=False)
    late.report(0.165, 100)  # worse than both, but all three sit on the plateau
    assert late.should_prune() is not keep_answers


@pytest.mark.parametrize("keep_answers", [True, False])
def test_a_learning_trial_is_not_ranked_against_faster_learners(keep_answers: bool) -> None:
    study, _ = _asha_study(keep_answers)
    for v in (0.001, 0.002):
        _run_curve(study, {50: 0.16, 100: v})
    learning = _run_curve(study, {50: 0.16}, finish=False)
    learning.report(0.0116, 100)  # off the plateau, not yet solved, worse than both
    assert learning.should_prune() is not keep_answers


def test_a_plateau_trial_is_kept_while_too_few_trials_left_the_plateau_to_fill_the_promoted_half() -> None:
    study, _ = _asha_study(True)  # reduction factor 2: ASHA promotes half
    _run_curve(study, {50: 0.1, 100: 0.05})  # one trial left the plateau, at step 50
    for v in (0.160, 0.161):  # two did not
        _run_curve(study, {50: 0.166, 100: v})
    late = _run_curve(study, {50: 0.166}, finish=False)
    late.report(0.165, 100)  # 1 of 4 left: promoting half of them means picking plateau trials by noise
    assert not late.should_prune()


def test_a_plateau_trial_is_pruned_once_another_trial_left_the_plateau_by_that_step() -> None:
    study, _ = _asha_study(True)
    for v in (0.05, 0.06):  # left the plateau (below 0.9 x 1/6 = 0.15) at step 50
        _run_curve(study, {50: 0.1, 100: v})
    late = _run_curve(study, {50: 0.166}, finish=False)
    late.report(0.165, 100)
    assert late.should_prune()


def test_no_plateau_trial_is_pruned_before_half_the_steps_by_default() -> None:
    study, spec = _asha_study(True, grace=None)
    assert spec.pruner.options.get("plateau_grace") is None  # not given: not stored, the hash is as before
    for v in (0.05, 0.06):  # both left the plateau at step 50 and went on
        _run_curve(study, {50: 0.1, 100: v, 200: v / 2})
    late = _run_curve(study, {50: 0.166}, finish=False)
    late.report(0.165, 100)
    assert not late.should_prune()  # the 100-step rung is before step 200, half of 400
    late.report(0.164, 200)
    assert late.should_prune()  # at half the steps, still on the plateau, while both others learn


def test_no_plateau_trial_is_pruned_before_twice_the_longest_plateau_the_study_has_seen() -> None:
    study, _ = _asha_study(True)
    _run_curve(study, {50: 0.166, 100: 0.05, 200: 0.01})  # left the plateau only at step 100
    _run_curve(study, {50: 0.1, 100: 0.04, 200: 0.02})
    late = _run_curve(study, {50: 0.166}, finish=False)
    late.report(0.165, 100)
    assert not late.should_prune()  # a 100-step plateau has ended in this study: step 100 is too soon
    late.report(0.165, 200)
    assert late.should_prune()  # twice the longest plateau seen


def test_a_bad_trial_is_pruned_whatever_the_grace() -> None:
    study, _ = _asha_study(True, grace=None)
    for v in (0.05, 0.06):
        _run_curve(study, {50: 0.1, 100: v})
    bad = _run_curve(study, {50: 0.5}, finish=False)
    bad.report(0.5, 100)  # three times the baseline: not a plateau
    assert bad.should_prune()


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "plateau_grace"), (401, r"plateau_grace.*0 \.\. 400"), ('"half"', "plateau_grace")],
)
def test_plateau_grace_rejects_a_bad_value(value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make_spec(f'pruner = {{ name = "asha", plateau_grace = {value} }}')


def test_plateau_grace_is_stored_when_given_and_refused_without_a_pruner() -> None:
    spec = make_spec('pruner = { name = "median", plateau_grace = 150 }')
    assert spec.pruner.options["plateau_grace"] == 150
    assert type(spec).from_dict(spec.to_dict()).pruner.options["plateau_grace"] == 150
    with pytest.raises(SpecError, match="plateau_grace"):
        make_spec('pruner = { name = "none", plateau_grace = 150 }')


def test_keep_answers_rejects_a_bad_value() -> None:
    with pytest.raises(SpecError, match="keep_answers"):
        make_spec('pruner = { name = "asha", keep_answers = "yes" }')


def test_build_train_config_takes_steps_and_interval_from_the_spec():
    spec = make_spec()
    config = build_train_config(spec, {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "clip": None}, seed=3)
    assert (config.steps, config.eval_every, config.seed, config.device) == (400, 50, 3, "cpu")
    assert (config.optimizer, config.lr, config.momentum, config.clip) == ("sgd", 0.01, 0.5, None)


@pytest.mark.parametrize(
    "pruner",
    [
        PrunerSpec(
            "asha", {"min_resource": 20, "reduction_factor": 3, "min_early_stopping_rate": 0, "bootstrap_count": 0}
        ),
        PrunerSpec(
            "asha", {"min_resource": 10, "reduction_factor": 2, "min_early_stopping_rate": 1, "bootstrap_count": 0}
        ),
        PrunerSpec("hyperband", {"min_resource": 10, "max_resource": 400, "reduction_factor": 3, "bootstrap_count": 0}),
    ],
    ids=["asha-eta3", "asha-eta2-rate1", "hyperband"],
)
def test_the_prune_gate_asks_only_at_rungs_and_prunes_exactly_what_asking_every_report_prunes(
    pruner: PrunerSpec,
) -> None:
    """``trial.should_prune()`` costs a full trial read; the gate skips it between rungs. The
    trials pruned, and the steps they are pruned at, must be those of asking at every report."""
    import random

    from irnn_search.search.space import PruneGate, build_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(0)
    curves = [[rng.random() * (1 + 1 / (1 + k)) for k in range(40)] for _ in range(30)]
    report_every = 10

    def run(gated: bool) -> tuple[list[int | None], int]:
        options = {"bootstrap_count": 0, **pruner.options}
        study = optuna.create_study(study_name="gate", pruner=build_pruner(PrunerSpec(pruner.name, options)))
        outcomes: list[int | None] = []
        asked = 0
        for curve in curves:
            trial = study.ask()
            gate = PruneGate(pruner)
            pruned_at = None
            for k, value in enumerate(curve):
                step = (k + 1) * report_every
                trial.report(value, step)
                if not gated or gate.due(step):
                    asked += 1
                    if trial.should_prune():
                        pruned_at = step
                        break
            study.tell(
                trial,
                curve[-1] if pruned_at is None else None,
                state=TrialState.PRUNED if pruned_at else TrialState.COMPLETE,
            )
            outcomes.append(pruned_at)
        return outcomes, asked

    every, asked_every = run(gated=False)
    gated, asked_gated = run(gated=True)
    assert gated == every
    assert any(p is not None for p in every), "the comparison needs some pruned trials"
    assert asked_gated < asked_every / 2, (asked_gated, asked_every)


def test_the_prune_gate_never_asks_nop_and_always_asks_median() -> None:
    from irnn_search.search.space import PruneGate

    none, median = PruneGate(PrunerSpec("none", {})), PruneGate(PrunerSpec("median", {"n_warmup_steps": 10}))
    assert not any(none.due(s) for s in range(10, 200, 10))
    assert all(median.due(s) for s in range(10, 200, 10))
    resumed = PruneGate(PrunerSpec("asha", {"min_resource": 20, "reduction_factor": 3, "min_early_stopping_rate": 0}))
    assert resumed.due(500), "the first report of an attempt (a resumed trial) is always checked"
    assert not resumed.due(510) and resumed.due(540) and not resumed.due(550)  # 540 = 20 * 3^3
