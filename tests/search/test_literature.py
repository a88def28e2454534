"""The literature table and the warm start.

The table must hold only what REFERENCE.md states: every entry builds a valid training and model
config, every published number appears in REFERENCE.md, and values marked [not retrieved] there
(the IRNN paper's tables) are absent. The warm start enqueues tagged trials, idempotently.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest

from irnn_search.models import MODELS, model_class
from irnn_search.options import build_config
from irnn_search.search import literature
from irnn_search.search.literature import (
    PUBLISHED,
    RESULTS,
    TABLE,
    NotRepresentable,
    enqueue_published,
    load_table,
    map_published,
    published_results,
    published_settings,
    select_published,
)
from irnn_search.search.space import suggest
from irnn_search.search.validate import parse_spec
from irnn_search.tasks import TASK_NAMES, task_class
from irnn_search.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)
REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "REFERENCE.md"


def spec_for(task: str, models: str, task_options: str = "", study_extra: str = ""):
    text = f"""\
[study]
task = "{task}"
{task_options}
steps = 100
report_every = 50
budget = {{ trials = 10 }}
{study_extra}
{models}
"""
    return parse_spec(text, source="lit.toml", default_name="lit")


# -- the table ----------------------------------------------------------------------------------------
def test_refs_are_unique_and_name_existing_tasks_and_families():
    refs = [p.ref for p in PUBLISHED]
    assert len(refs) == len(set(refs))
    for p in PUBLISHED:
        assert p.task in TASK_NAMES and p.model in MODELS, p.ref
        assert p.source.startswith("REFERENCE.md §"), p.ref
        assert p.label and (p.batch_size is None or p.batch_size > 0)


def test_the_table_file_loads_with_the_types_the_configs_expect():
    assert TABLE.parent == Path(literature.__file__).parent  # shipped in the package (pyproject package-data)
    for p in PUBLISHED:
        assert isinstance(p.sizes, tuple) and all(type(s) is int for s in p.sizes), p.ref
        rates = [p.train[k] for k in ("lr", "lr_orth", "alpha", "clip") if p.train.get(k) is not None]
        assert all(type(v) is float for v in rates), p.ref
        assert type(p.hidden_size) is int, p.ref
    attached = [r for p in PUBLISHED for r in p.results]
    assert RESULTS[: len(attached)] == tuple(attached)
    assert len(RESULTS) == len(attached) + TABLE.read_text(encoding="utf-8").count("\n[[result]]\n")


def test_a_mistyped_table_entry_is_refused(tmp_path: Path):
    text = TABLE.read_text(encoding="utf-8")
    (tmp_path / "typo.toml").write_text(text.replace("schedule = ", "shedule = ", 1), encoding="utf-8")
    with pytest.raises(TypeError, match="shedule"):
        load_table(tmp_path / "typo.toml")
    (tmp_path / "metric.toml").write_text(text.replace('metric = "bpc"', 'metric = "perplexity"', 1), encoding="utf-8")
    with pytest.raises(KeyError, match="perplexity"):
        load_table(tmp_path / "metric.toml")


def test_every_entry_builds_a_valid_training_and_model_config():
    for p in PUBLISHED:
        TrainConfig(**p.train)  # betas included: it is a TrainConfig field
        build_config(model_class(p.model).config_cls, p.model_options, p.ref)
        build_config(task_class(p.task).config_cls, p.task_options, p.ref)


def test_results_name_task_metrics_units_and_protocols():
    for r in RESULTS:
        assert r.metric in task_class(r.task).reported_metrics(), r
        assert r.units in ("%", "bits per character", "MSE") and r.protocol and r.source.startswith("REFERENCE.md §")
        if r.metric == "accuracy":
            assert 0 < r.metric_value <= 1 and r.metric_value == pytest.approx(r.value / 100)
        else:
            assert r.metric_value == r.value


def test_every_published_number_appears_in_reference_md():
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} is absent on this machine")
    text = REFERENCE.read_text()
    for r in RESULTS:
        mantissa, exponent = f"{r.value:e}".split("e")
        short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"  # REFERENCE writes 4e-5
        assert f"{r.value:g}" in text or (r.units == "MSE" and short in text), r
        if r.spread is not None:
            assert f"{r.spread:g}".lstrip("0") in text, r
    for p in PUBLISHED:
        for key in ("lr", "lr_orth"):
            value = p.train.get(key)
            if value is None or (key == "lr_orth" and value == pytest.approx(p.train["lr"] / 10)):
                continue  # REFERENCE writes the expRNN rule "lr/10"
            mantissa, exponent = f"{value:e}".split("e")
            shown = {f"{value:g}", f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"}
            assert any(s in text for s in shown), (p.ref, key, shown)
        if p.hidden_size is not None:
            assert str(p.hidden_size) in text, p.ref


def test_not_retrieved_values_are_absent():
    # The IRNN paper's tables are [not retrieved] (REFERENCE §4.1): no result cites the paper; the
    # only adding-problem numbers are Keller et al.'s checked rerun (IRD and nnRNN: plots only).
    assert not [r for r in RESULTS if "IRNN paper" in r.source]
    adding = [r for r in RESULTS if r.task == "adding"]
    assert [(r.size, r.value) for r in adding] == [(100, 1e-5), (200, 4e-5), (400, 1e-4)]
    assert all("Keller" in r.source and "batch 128" in r.protocol for r in adding)
    irnn = [r for r in RESULTS if r.model == "irnn" and r.task != "adding"]
    assert [(r.task, r.value) for r in irnn] == [("smnist", 93.0)]  # the Keras script's own claim
    assert "docstring" in irnn[0].protocol
    # copy and psMNIST numbers are plots only
    assert not [r for r in RESULTS if r.task == "copy"]
    assert not [r for r in RESULTS if r.task == "pmnist" and r.model == "nnrnn"]


def test_spot_checks_against_reference_sections():
    adding = {p.ref: p for p in published_settings("adding", "irnn")}
    assert set(adding) == {
        "irnn-paper-adding-clip1",
        "irnn-paper-adding-clip10",
        "irnn-paper-adding-clip100",
        "ird-adding-adam",
    }
    paper = adding["irnn-paper-adding-clip10"]
    assert paper.train == {"optimizer": "sgd", "lr": 0.01, "clip": 10.0}
    assert paper.model_options == {"hidden_size": 100, "identity_scale": 1.0} and paper.batch_size == 16
    ird = adding["ird-adding-adam"]
    assert ird.train == {"optimizer": "adam", "lr": 1e-4, "clip": 1.0}
    assert ird.model_options["identity_scale"] == 0.01 and ird.task_options == {"placement": "anywhere"}

    (exp_copy,) = [p for p in published_settings("copy", "exprnn") if p.ref == "exp-copy-exprnn-190"]
    assert exp_copy.train == {"optimizer": "rmsprop", "lr": 2e-4, "alpha": 0.99, "lr_orth": 2e-5, "clip": None}
    assert exp_copy.model_options == {"hidden_size": 190, "init": "henaff"} and exp_copy.sizes == (1000, 2000)

    (asr_ps,) = [p for p in published_settings("pmnist", "asrnn") if p.hidden_size == 257]
    assert (asr_ps.train["lr"], asr_ps.train["lr_orth"], asr_ps.train["clip"]) == (7e-4, 7e-5, 10.0)
    (result,) = asr_ps.results
    assert (result.value, result.units, result.metric) == (96.88, "%", "accuracy")
    assert "best test accuracy over 70 epochs" in result.protocol

    ptb = {p.ref: p for p in published_settings("ptb", "nnrnn")}
    nnr = ptb["nnr-ptb-nnrnn-1024-150"]
    assert nnr.train["optimizer"] == "adam" and nnr.train["betas"] == (0.0, 0.9)
    bpc = [r for r in nnr.results if r.metric == "bpc"]
    assert [(r.value, r.spread, r.size) for r in bpc] == [(1.40, 0.003, 150)]
    assert "best-validation" in bpc[0].protocol


def test_smoke_tasks_borrow_settings_but_never_results():
    smoke = published_settings("digits-smoke", "exprnn")
    assert [p.ref for p in smoke] == [p.ref for p in published_settings("smnist", "exprnn")]
    assert smoke and all(p.results == () for p in smoke)
    assert published_results("digits-smoke", "exprnn") == []
    assert published_results("smnist", "exprnn")
    assert published_settings("ptb-smoke", "lstm") and published_settings("adding", "nope") == []


def test_published_results_include_numbers_without_settings():
    sco = published_results("smnist", "scornn")
    assert sorted((r.hidden_size, r.value) for r in sco) == [(170, 97.2), (360, 98.1), (512, 98.2)]


# -- published setting -> trial params ---------------------------------------------------------------
IRNN_SPACE = """\
[models.irnn]
hidden_size = 8
optimizer = ["sgd", "adam", "rmsprop"]
lr = { low = 1e-4, high = 1e-2, log = true }
momentum = { low = 0.0, high = 0.9 }
alpha = { low = 0.5, high = 0.99 }
clip = ["off", 1, 10, 100]
identity_scale = { low = 0.01, high = 1.0, log = true }
"""


def entry(ref: str):
    (p,) = [p for p in PUBLISHED if p.ref == ref]
    return p


def test_fixed_values_stay_fixed_and_unstated_searched_values_default():
    spec = spec_for("adding", IRNN_SPACE)
    mapped = map_published(entry("irnn-paper-adding-clip10"), spec.model("irnn"))
    # SGD: momentum is active; the paper does not state it, so our default (plain SGD) is used.
    assert mapped.params == {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "clip": 10, "identity_scale": 1.0}
    assert mapped.overridden == {"hidden_size": {"published": 100, "used": 8}}
    assert mapped.defaulted == {"momentum": 0.0}
    assert mapped.sampled == [] and mapped.outside_range == [] and mapped.not_applied == {}


def test_conditional_parameters_follow_the_published_optimizer():
    spec = spec_for("smnist", IRNN_SPACE)
    keras = map_published(entry("keras-smnist-irnn"), spec.model("irnn"))  # RMSprop, no clipping
    assert keras.params["optimizer"] == "rmsprop" and keras.params["clip"] == "off"
    assert "momentum" not in keras.params and keras.params["alpha"] == 0.99  # unstated: our default
    assert keras.outside_range == ["lr"]  # 1e-6 is below the spec's 1e-4: enqueued as is
    assert keras.params["lr"] == 1e-6


def test_unrepresentable_settings_are_refused_with_the_reason():
    spec = spec_for(
        "adding",
        '[models.irnn]\noptimizer = ["adam", "rmsprop"]\nclip = { low = 0.5, high = 5.0 }\n'
        "lr = { low = 1e-4, high = 1e-2, log = true }\n",
    )
    with pytest.raises(NotRepresentable, match=r"optimizer = 'sgd' is not among the spec's choices"):
        map_published(entry("irnn-paper-adding-clip1"), spec.model("irnn"))
    assert map_published(entry("ird-adding-adam"), spec.model("irnn")).params["clip"] == 1.0
    ptb = spec_for("ptb", "[models.lstm]\nclip = { low = 0.5, high = 5.0 }\nlr = { low = 1e-4, high = 1e-2 }\n")
    with pytest.raises(NotRepresentable, match=r"clip = None \(no clipping\) cannot be a value of the spec's range"):
        map_published(entry("asr-ptb-lstm-475-150"), ptb.model("lstm"))


def test_settings_the_spec_has_no_parameter_for_are_reported():
    spec = spec_for("ptb", '[models.nnrnn]\noptimizer = ["adam", "rmsprop"]\nlr = { low = 1e-4, high = 1e-2 }\n')
    mapped = map_published(entry("nnr-ptb-nnrnn-1024-150"), spec.model("nnrnn"))
    assert mapped.not_applied == {"betas": [0.0, 0.9]}
    assert mapped.overridden["clip"] == {"published": 10.0, "used": None}
    assert mapped.params == {"optimizer": "adam", "lr": 2e-3}


def test_out_of_range_published_value_is_enqueued_and_optuna_uses_it_with_a_warning():
    spec = spec_for("smnist", IRNN_SPACE)
    study = optuna.create_study(direction="maximize")
    outcome = {w.ref: w for w in enqueue_published(study, spec, "irnn")}
    assert outcome["blog-smnist-irnn"].status == "enqueued"  # SGD lr 1e-8, far below the range
    trial = study.ask()  # the first enqueued setting
    assert trial.user_attrs["ref"] == "blog-smnist-irnn"
    with pytest.warns(UserWarning, match="Fixed parameter lr with value 1e-08 is out of range"):
        train_kwargs, _ = suggest(trial, spec.model("irnn"))
    assert train_kwargs["lr"] == 1e-8 and trial.params["lr"] == 1e-8
    frozen = study.tell(trial, 0.1)
    assert frozen.params["lr"] == 1e-8 and frozen.user_attrs["outside_range"] == ["lr"]
    # the sampler goes on sampling inside the range
    study.sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=0)
    trial = study.ask()
    if trial.user_attrs.get("source") == "published":
        study.tell(trial, 0.1)
        trial = study.ask()
    suggest(trial, spec.model("irnn"))
    assert 1e-4 <= trial.params["lr"] <= 1e-2


# -- the warm start ------------------------------------------------------------------------------------
def test_enqueue_published_is_tagged_and_idempotent():
    spec = spec_for("adding", IRNN_SPACE, "task_options = { T = 150 }")
    study = optuna.create_study()
    first = enqueue_published(study, spec, "irnn")
    assert [(w.ref, w.status) for w in first] == [
        ("irnn-paper-adding-clip1", "enqueued"),
        ("irnn-paper-adding-clip10", "enqueued"),
        ("irnn-paper-adding-clip100", "enqueued"),
        ("ird-adding-adam", "enqueued"),
    ]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 4
    for trial, w in zip(waiting, first, strict=True):
        assert trial.user_attrs["source"] == "published" and trial.user_attrs["ref"] == w.ref
        assert trial.user_attrs["citation"].startswith("REFERENCE.md §3.1")
        assert trial.user_attrs["overridden"] == {"hidden_size": {"published": 100, "used": 8}}
    again = enqueue_published(study, spec, "irnn")
    assert [w.status for w in again] == ["exists"] * 4
    assert len(study.get_trials()) == 4
    # still nothing new once the trials ran
    for _ in range(2):
        trial = study.ask()
        suggest(trial, spec.model("irnn"))
        study.tell(trial, 0.1)
    assert [w.status for w in enqueue_published(study, spec, "irnn")] == ["exists"] * 4
    assert len(study.get_trials()) == 4


def test_entries_that_map_to_the_same_params_enqueue_one_trial():
    # With the hidden size fixed to 32 (no entry has it) and alpha fixed, NNR's psMNIST LSTM-512 rows
    # differ only in alpha and hidden size: they collapse into one trial.
    spec = spec_for(
        "pmnist",
        '[models.lstm]\nhidden_size = 32\noptimizer = ["adam", "rmsprop"]\n'
        "lr = { low = 1e-5, high = 1e-2, log = true }\n"
        'init = ["default", "glorot"]\n',
        "task_options = { permutation_seed = 1234 }",
        study_extra="",
    )
    study = optuna.create_study(direction="maximize")
    statuses = {w.ref: w.status for w in enqueue_published(study, spec, "lstm")}
    assert statuses["nnr-pmnist-lstm-512-readme"] == "enqueued"
    assert statuses["nnr-pmnist-lstm-512-sup"] == "exists"
    assert len(study.get_trials()) == sum(s == "enqueued" for s in statuses.values())


def test_selection_prefers_the_spec_task_size_and_hidden_size():
    copy1000 = spec_for("copy", "[models.exprnn]\nhidden_size = 190\n", "task_options = { T = 1000 }")
    assert [p.ref for p in select_published(copy1000, "exprnn")] == ["exp-copy-exprnn-190", "asr-copy-exprnn-190"]
    copy200 = spec_for("copy", "[models.exprnn]\nhidden_size = 176\n", "task_options = { T = 200 }")
    assert [p.ref for p in select_published(copy200, "exprnn")] == ["nnr-copy-exprnn-176"]
    # nothing published at T=30: every setting is a better start than none
    adding30 = spec_for("adding", "[models.irnn]\nhidden_size = 8\n", "task_options = { T = 30 }")
    assert len(select_published(adding30, "irnn")) == 4
    ptb300 = spec_for("ptb", "[models.lstm]\nhidden_size = 475\n", "task_options = { bptt = 300 }")
    assert [p.ref for p in select_published(ptb300, "lstm")] == ["sup-ptb-lstm-475-300", "asr-ptb-lstm-475-300"]


def test_warm_start_off_enqueues_nothing_and_unrepresentable_entries_are_reported():
    off = spec_for("adding", IRNN_SPACE, study_extra="warm_start = false")
    study = optuna.create_study()
    assert enqueue_published(study, off, "irnn") == [] and study.get_trials() == []
    no_sgd = IRNN_SPACE.replace('["sgd", "adam", "rmsprop"]', '["adam", "rmsprop"]')
    no_sgd = no_sgd.replace("momentum = { low = 0.0, high = 0.9 }\n", "")  # momentum needs SGD
    adam_only = spec_for("adding", no_sgd)
    outcome = enqueue_published(study, adam_only, "irnn")
    assert [w.status for w in outcome] == ["not representable"] * 3 + ["enqueued"]
    assert "optimizer = 'sgd'" in outcome[0].reason
    assert len(study.get_trials()) == 1


def test_published_settings_with_every_family_config_field_known():
    # Entry keys are spec parameter names, so a spec that searches them can take them.
    for p in PUBLISHED:
        fields = {f.name for f in dataclasses.fields(model_class(p.model).config_cls)}
        assert set(p.model_options) <= fields, p.ref
        assert set(p.train) <= {"optimizer", "lr", "lr_orth", "momentum", "alpha", "clip", "betas"}, p.ref
