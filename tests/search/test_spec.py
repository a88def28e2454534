"""Study specs: every refusal names the file, the key, the value and what is allowed; the resolved
spec makes every default explicit, round-trips through JSON and hashes stably."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from irnn_search.models import MODELS, build_model, model_class
from irnn_search.search.spec import TRAIN_PARAMS, Choice, Fixed, FloatRange, IntRange, SpecError, StudySpec
from irnn_search.search.validate import load_spec, parse_spec
from irnn_search.search.validate_model import has_constrained_params, parse_duration
from irnn_search.tasks import build_task, task_class
from irnn_search.train import TrainConfig, evaluate

BASE = """\
[study]
task = "adding"
task_options = { T = 20 }
steps = 100
report_every = 10
budget = { trials = 4 }

[models.irnn]
hidden_size = 8
lr = { low = 1e-4, high = 1e-2, log = true }
"""


def write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def edit(old: str | None, new: str) -> str:
    """BASE with ``old`` replaced by ``new`` (or ``new`` appended when ``old`` is None)."""
    if old is None:
        return BASE + new
    assert old in BASE, old
    return BASE.replace(old, new)


# (id, old text or None to append, new text, expected key path, fragments the message must contain)
BAD_SPECS = [
    ("malformed-toml", "steps = 100", "steps = = 100", None, ["malformed TOML", "line 4"]),
    ("unknown-top-table", "[models.irnn]", "[modles.irnn]", "modles", ["unknown key", "study, models"]),
    ("no-models", "[models.irnn]\nhidden_size = 8\nlr = { low = 1e-4, high = 1e-2, log = true }\n", "", "models",
     ["missing", "irnn, rnn, lstm"]),
    ("typo-study-key", "steps = 100", "steps = 100\nstpes = 100", "study.stpes",
     ["unknown key", "did you mean 'steps'", "report_every"]),
    ("unknown-task", 'task = "adding"', 'task = "addng"', "study.task",
     ['"addng"', "adding, copy, smnist, pmnist, ptb"]),
    ("missing-task", 'task = "adding"\n', "", "study.task", ["missing", "adding, copy"]),
    ("missing-steps", "steps = 100\n", "", "study.steps", ["missing"]),
    ("unknown-family", "[models.irnn]", "[models.irnm]", "models.irnm",
     ['"irnm"', "unknown model family", "irnn, rnn, lstm, rnn-orth, exprnn, dtriv, cayley, scornn, nnrnn, asrnn"]),
    ("unknown-family-key", "[models.irnn]", '[models.big]\nfamily = "gru"', "models.big.family",
     ['"gru"', "irnn, rnn"]),
    ("option-family-lacks", None, "[models.lstm]\nidentity_scale = 1.0\n", "models.lstm.identity_scale",
     ["unknown key for family 'lstm'", "forget_bias", "hidden_size", "lr"]),
    ("typo-model-key", None, "lr_ortho = 1e-4\n", "models.irnn.lr_ortho", ["did you mean 'lr_orth'"]),
    ("unknown-task-option", "{ T = 20 }", "{ T = 20, length = 3 }", "study.task_options.length",
     ["unknown key for task 'adding'", "T, placement, val_size, test_size"]),
    ("task-option-type", "{ T = 20 }", '{ T = "20" }', "study.task_options.T", ['"20"', "an integer"]),
    ("task-rejects", "{ T = 20 }", "{ T = 1 }", "study.task_options.T", ["= 1", "T must be >= 2"]),
    ("low-above-high", "low = 1e-4, high = 1e-2", "low = 1e-2, high = 1e-4", "models.irnn.lr.low",
     ["0.01", "below high = 0.0001", "low < high"]),
    ("log-low-zero", "low = 1e-4, high = 1e-2", "low = 0.0, high = 1e-2", "models.irnn.lr.low",
     ["= 0.0", "a number > 0 with log = true"]),
    ("range-missing-high", "low = 1e-4, high = 1e-2, log = true", "low = 1e-4", "models.irnn.lr.high", ["missing"]),
    ("range-unknown-key", "log = true", "log = true, lo = 1", "models.irnn.lr.lo", ["low, high, log, step"]),
    ("range-wrong-type", None, 'identity_scale = { low = "a", high = 1.0 }\n', "models.irnn.identity_scale.low",
     ['"a"', "a number"]),
    ("log-with-step", "log = true", "log = true, step = 1e-4", "models.irnn.lr.step", ["no step with log = true"]),
    ("int-step-mismatch", "hidden_size = 8", "hidden_size = { low = 8, high = 20, step = 8 }",
     "models.irnn.hidden_size.high", ["= 20", "multiple of step = 8", "low + k * step"]),
    ("int-range-float", "hidden_size = 8", "hidden_size = { low = 8.5, high = 16 }", "models.irnn.hidden_size.low",
     ["8.5", "an integer"]),
    ("empty-choices", None, "clip = []\n", "models.irnn.clip", ["empty list of choices", '"off"']),
    ("repeated-choices", None, "clip = [1, 1.0]\n", "models.irnn.clip", ["choices repeat"]),
    ("choice-wrong-type", None, 'clip = ["off", "high"]\n', "models.irnn.clip[1]", ['"high"', 'a number or "off"']),
    ("clip-zero", None, "clip = 0\n", "models.irnn.clip", ["= 0", 'spelled "off"']),
    ("clip-range-from-zero", None, "clip = { low = 0.0, high = 10.0 }\n", "models.irnn.clip.low",
     ["= 0.0", "a clip range must be positive"]),
    ("fixed-wrong-type", "hidden_size = 8", 'hidden_size = "8"', "models.irnn.hidden_size", ['"8"', "an integer"]),
    ("fixed-float-for-int", "hidden_size = 8", "hidden_size = 8.5", "models.irnn.hidden_size", ["8.5", "an integer"]),
    ("range-for-string", None, "optimizer = { low = 1, high = 2 }\n", "models.irnn.optimizer",
     ["a range needs a numeric option", "a fixed value or a list of choices"]),
    ("config-rejects-fixed", None, "identity_scale = -1.0\n", "models.irnn.identity_scale",
     ["-1.0", "rejected by family 'irnn'", "identity_scale must be >= 0"]),
    ("config-rejects-choice", None, 'optimizer = ["sgd", "adamw"]\n', "models.irnn.optimizer[1]",
     ['"adamw"', "optimizer must be one of sgd, adam, rmsprop"]),
    ("config-rejects-high", None, 'optimizer = "rmsprop"\nalpha = { low = 0.5, high = 1.0 }\n',
     "models.irnn.alpha.high",
     ["1.0", "rejected by the training config", "alpha must be in (0, 1)"]),
    ("config-rejects-inside-int-range", None, "[models.nnrnn]\nhidden_size = { low = 64, high = 128 }\n",
     "models.nnrnn.hidden_size", ["= 65", "even hidden_size", "use step"]),
    ("config-rejects-pair", None, "[models.asrnn]\na = { low = 0.0, high = 1.0 }\nb = { low = 0.5, high = 3.0 }\n",
     "models.asrnn.a.high", ["= 1.0", "need a <= b", "got a=1.0, b=0.5"]),
    ("bad-fixed-blamed-not-its-neighbour", None, "[models.asrnn]\nhidden_size = { low = 4, high = 8 }\neps = 0.0\n",
     "models.asrnn.eps", ["= 0.0", "eps must be > 0"]),
    ("conditional-without-its-optimizer", None, 'optimizer = "adam"\nmomentum = 0.9\n', "models.irnn.momentum",
     ["0.9", "only applies to optimizer 'sgd'", "'adam'"]),
    ("alpha-without-rmsprop", None, 'optimizer = ["sgd", "adam"]\nalpha = 0.9\n', "models.irnn.alpha",
     ["only applies to optimizer 'rmsprop'"]),
    ("lr-orth-unconstrained", None, "lr_orth = 1e-4\n", "models.irnn.lr_orth",
     ["no orthogonal (constrained) parameters", "exprnn", "nnrnn", "asrnn"]),
    ("empty-budget", "budget = { trials = 4 }", "budget = {}", "study.budget",
     ["sets no limit", "at least one of trials, wall_time, device_hours"]),
    ("budget-zero-trials", "budget = { trials = 4 }", "budget = { trials = 0 }", "study.budget.trials",
     ["= 0", "an integer >= 1"]),
    ("budget-negative-hours", "budget = { trials = 4 }", "budget = { device_hours = -1.0 }",
     "study.budget.device_hours", ["-1.0", "a positive number"]),
    ("budget-unknown-key", "budget = { trials = 4 }", "budget = { trails = 4 }", "study.budget.trails",
     ["did you mean 'trials'", "trials, wall_time, device_hours"]),
    ("bad-wall-time", "budget = { trials = 4 }", 'budget = { wall_time = "2 hours" }', "study.budget.wall_time",
     ['"2 hours"', '"90m", "2h", "1h30m", "3600s"']),
    ("no-budget-at-all", "budget = { trials = 4 }\n", "", "models.irnn.budget", ["no budget"]),
    ("model-budget-empty", None, "budget = {}\n", "models.irnn.budget", ["sets no limit"]),
    ("unknown-sampler", "steps = 100", 'steps = 100\nsampler = { name = "bayes" }', "study.sampler.name",
     ['"bayes"', "tpe, random, cmaes, gp"]),
    ("sampler-option", "steps = 100", 'steps = 100\nsampler = { name = "random", n_startup_trials = 3 }',
     "study.sampler.n_startup_trials", ["unknown key for sampler 'random'", "name, seed"]),
    ("unknown-pruner", "steps = 100", 'steps = 100\npruner = "sha"', "study.pruner.name",
     ['"sha"', "asha, hyperband, median, none"]),
    ("pruner-off-report-grid", "steps = 100", 'steps = 100\npruner = { name = "asha", min_resource = 15 }',
     "study.pruner.min_resource", ["= 15", "a multiple of study.report_every = 10"]),
    ("objective-not-produced", "steps = 100", 'steps = 100\nobjective = "val_accuracy"', "study.objective",
     ['"val_accuracy"', "does not report it", "val_loss, val_mse"]),
    ("direction-contradicts", "steps = 100", 'steps = 100\ndirection = "maximize"', "study.direction",
     ['"maximize"', "better when it is lower", "minimize"]),
    ("report-every-above-steps", "report_every = 10", "report_every = 200", "study.report_every",
     ["= 200", "exceeds study.steps = 100"]),
    ("seeds-repeat", "steps = 100", "steps = 100\nseeds = [1, 1]", "study.seeds", ["repeat", "distinct"]),
    ("seed-negative", "steps = 100", "steps = 100\nseeds = [-1]", "study.seeds[0]", ["-1", "an integer >= 0"]),
    ("bad-study-name", "steps = 100", 'steps = 100\nname = "a b"', "study.name", ['"a b"', "letters, digits"]),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "key", "fragments"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_refused_with_file_key_value_and_allowed(tmp_path, old, new, key, fragments):
    path = write(tmp_path, edit(old, new))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path) + ":"), message
    assert info.value.file == str(path)
    assert info.value.key == key, message
    if key is not None:
        assert key in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_combinations_of_range_ends_are_checked_jointly(tmp_path, monkeypatch):
    # No shipped config constrains two options so that each end passes alone but a corner fails;
    # a family registered for this test does (a + b <= 1).
    from irnn_search.models import ModelConfig, ModelError
    from irnn_search.models.rnn import TanhRNN

    @dataclasses.dataclass(frozen=True)
    class PairConfig(ModelConfig):
        a: float = 0.0
        b: float = 0.0

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.a + self.b > 1:
                raise ModelError(f"a + b must be <= 1, got {self.a + self.b}")

    class Pair(TanhRNN):
        config_cls = PairConfig  # type: ignore[assignment]

    monkeypatch.setitem(MODELS, "pair", Pair)
    text = BASE + "[models.pair]\na = { low = 0.0, high = 1.0 }\nb = { low = 0.0, high = 1.0 }\n"
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert info.value.key == "models.pair"
    assert "the combination a = 1.0, b = 1.0" in str(info.value) and "a + b must be <= 1" in str(info.value)


def test_batch_size_the_task_cannot_serve_is_refused(tmp_path):
    text = """\
[study]
task = "digits-smoke"
steps = 10
batch_size = 9000
budget = { trials = 1 }
[models.lstm]
hidden_size = 4
"""
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert info.value.key == "study.batch_size"
    assert "9000" in str(info.value) and "exceeds the 8000 training images" in str(info.value)


def test_load_spec_by_name_lists_the_available_names_when_missing(tmp_path):
    write(tmp_path, BASE, "alpha.toml")
    write(tmp_path, BASE, "beta.toml")
    assert load_spec("alpha", studies_dir=tmp_path).name == "alpha"  # name defaults to the file stem
    with pytest.raises(SpecError, match=r"no study named 'gamma' in .* or among the built-in specs") as info:
        load_spec("gamma", studies_dir=tmp_path)
    allowed = str(info.value).split("allowed: ")[1].rstrip(")").split(", ")
    assert {"alpha", "beta", "adding-smoke", "pmnist"} <= set(allowed) and allowed == sorted(allowed)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "gamma.toml")
    with pytest.raises(SpecError, match="no study named 'alpha'"):
        load_spec("alpha", studies_dir=tmp_path / "empty")


def test_load_spec_by_name_prefers_the_studies_dir_then_the_built_in_spec(tmp_path):
    from irnn_search import bundled

    builtin = load_spec("adding-smoke", studies_dir=tmp_path / "absent")
    assert builtin.source == str(bundled.builtin_specs()["adding-smoke"])
    edited = BASE.replace('task = "adding"', 'task = "adding"\ndescription = "my edit"')
    assert edited != BASE
    write(tmp_path, edited, "adding-smoke.toml")
    local = load_spec("adding-smoke", studies_dir=tmp_path)
    assert local.source == str(tmp_path / "adding-smoke.toml") and local.description == "my edit"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400.0), ("2h", 7200.0), ("1h30m", 5400.0), ("3600s", 3600.0), ("1h 0m 30s", 3630.0), (3600, 3600.0),
     (1.5, 1.5), ("1d", 86400.0), ("0.5h", 1800.0)],
)  # fmt: skip
def test_parse_duration_accepts_units_and_plain_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2 hours", "3600", "", "h", "30m1h", "-5m", 0, -3, True, "1.h"])
def test_parse_duration_refuses_the_unparsable(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# -- the resolved spec --------------------------------------------------------------------------------
def test_every_default_is_explicit(tmp_path):
    spec = load_spec(write(tmp_path, BASE, "base.toml"))
    d = spec.to_dict()
    assert d["name"] == "base" and d["description"] == ""
    assert d["batch_size"] == task_class("adding").default_batch_size
    assert d["seeds"] == [0]
    assert (d["objective"], d["direction"]) == ("val_mse", "minimize")
    assert d["report_every"] == 10 and d["warm_start"] is True
    assert d["sampler"] == {
        "name": "tpe",
        "seed": 0,
        "options": {"n_startup_trials": 10, "multivariate": False, "group": False, "constant_liar": True},
    }
    assert d["pruner"] == {
        "name": "asha",
        "options": {
            "min_resource": 10,
            "reduction_factor": 4,
            "min_early_stopping_rate": 0,
            "bootstrap_count": 0,
            "keep_answers": 1,
        },
    }
    assert d["task_options"] == {"T": 20, "placement": "halves", "val_size": 2000, "test_size": 10000}
    model = d["models"]["irnn"]
    assert model["budget"] == {"trials": 4, "wall_time_s": None, "device_hours": None}
    cfg_fields = [f.name for f in dataclasses.fields(model_class("irnn").config_cls)]
    assert list(model["params"]) == [*TRAIN_PARAMS, *cfg_fields]  # suggestion order: optimizer first
    defaults = TrainConfig()
    assert model["params"]["optimizer"] == {"type": "fixed", "value": defaults.optimizer}
    assert model["params"]["clip"] == {"type": "fixed", "value": None}
    assert model["params"]["lr"] == {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": None}
    assert model["params"]["identity_scale"] == {"type": "fixed", "value": 1.0}
    json.dumps(d, allow_nan=False)  # JSON-able


def test_report_every_defaults_to_twenty_reports(tmp_path):
    spec = load_spec(write(tmp_path, BASE.replace("report_every = 10\n", ""), "x.toml"))
    assert spec.report_every == 5  # 100 steps / 20


def test_values_parse_to_the_right_parameter_kinds(tmp_path):
    text = BASE + (
        'optimizer = ["sgd", "rmsprop"]\nclip = ["off", 1, 10]\nmomentum = 0.9\n'
        "identity_scale = { low = 0.01, high = 1.0 }\n"
        "[models.lstm]\nhidden_size = { low = 8, high = 32, step = 8 }\nforget_bias = [0, 1]\n"
    )
    spec = load_spec(write(tmp_path, text, "kinds.toml"))
    irnn, lstm = spec.model("irnn"), spec.model("lstm")
    assert irnn.params["optimizer"] == Choice(("sgd", "rmsprop"))
    assert irnn.params["clip"] == Choice(("off", 1.0, 10.0))  # numbers of a float option become floats
    assert irnn.params["momentum"] == Fixed(0.9)
    assert irnn.params["identity_scale"] == FloatRange(0.01, 1.0, False, None)
    assert irnn.searched == ["optimizer", "lr", "clip", "identity_scale"]
    assert lstm.params["hidden_size"] == IntRange(8, 32, False, 8)
    assert lstm.params["forget_bias"] == Choice((0.0, 1.0))
    assert irnn.optimizers() == ("sgd", "rmsprop") and lstm.optimizers() == ("adam",)


def test_model_budget_overrides_the_study_budget_key_by_key(tmp_path):
    text = BASE.replace("budget = { trials = 4 }", 'budget = { trials = 4, wall_time = "1h30m" }') + (
        "budget = { trials = 2 }\n[models.lstm]\nhidden_size = 4\n"
    )
    spec = load_spec(write(tmp_path, text, "b.toml"))
    assert spec.model("irnn").budget.to_dict() == {"trials": 2, "wall_time_s": 5400.0, "device_hours": None}
    assert spec.model("lstm").budget.to_dict() == {"trials": 4, "wall_time_s": 5400.0, "device_hours": None}


def test_two_models_of_one_family_need_family_key(tmp_path):
    text = BASE + '[models.lstm-small]\nfamily = "lstm"\nhidden_size = 4\n[models.lstm-big]\nfamily = "lstm"\n'
    spec = load_spec(write(tmp_path, text, "two.toml"))
    assert [m.family for m in spec.models.values()] == ["irnn", "lstm", "lstm"]
    assert spec.model("lstm-small").params["hidden_size"] == Fixed(4)
    with pytest.raises(SpecError, match=r"no model 'gru' \(allowed: irnn, lstm-small, lstm-big\)"):
        spec.model("gru")


def test_round_trip_and_hash(tmp_path):
    spec = load_spec(write(tmp_path, BASE + 'clip = ["off", 1]\n', "rt.toml"))
    data = json.loads(json.dumps(spec.to_dict()))  # through real JSON, as the database stores it
    again = StudySpec.from_dict(data)
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.spec_hash() == spec.spec_hash()
    assert len(spec.spec_hash()) == 64 and int(spec.spec_hash(), 16) >= 0
    # key order inside the stored JSON does not matter (PostgreSQL JSONB sorts keys)
    shuffled = json.loads(json.dumps(data, sort_keys=True))
    shuffled["models"]["irnn"]["params"] = dict(reversed(list(shuffled["models"]["irnn"]["params"].items())))
    assert list(StudySpec.from_dict(shuffled).model("irnn").params) == list(spec.model("irnn").params)


def test_hash_ignores_layout_and_location_but_not_values(tmp_path):
    a = load_spec(write(tmp_path, BASE, "same.toml"))
    relaid = """\
# the same study, written differently
[models.irnn]
lr = {log=true, high=0.01, low=0.0001}
hidden_size = 8
[study]
budget = { trials = 4 }
report_every = 10
steps = 100
task_options = { T = 20, placement = "halves" }   # the default, spelled out
task = "adding"
"""
    (tmp_path / "other").mkdir()
    b = load_spec(write(tmp_path / "other", relaid, "same.toml"))
    assert a.source != b.source
    assert a == b and a.spec_hash() == b.spec_hash()
    c = load_spec(write(tmp_path, BASE.replace("hidden_size = 8", "hidden_size = 9"), "same2.toml"))
    assert c.spec_hash() != load_spec(write(tmp_path, BASE, "same2.toml")).spec_hash()


def test_from_dict_refuses_other_formats(tmp_path):
    data = load_spec(write(tmp_path, BASE, "f.toml")).to_dict()
    with pytest.raises(SpecError, match="format 99"):
        StudySpec.from_dict({**data, "format": 99})
    del data["models"]
    with pytest.raises(SpecError, match="incomplete"):
        StudySpec.from_dict(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "../../../escaped"}, "invalid study or model name: '../../../escaped'"),
        ({"name": "tiny\n"}, "invalid study or model name"),
        ({"task": "os.system"}, "unknown task 'os.system'"),
        ({"seeds": ["0; rm"]}, "seeds that are not integers"),
    ],
)
def test_from_dict_checks_again_what_names_files_or_code(tmp_path, change, message):
    data = load_spec(write(tmp_path, BASE, "f.toml")).to_dict()
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        StudySpec.from_dict({**data, **change})
    renamed = {**data, "models": {"../up": data["models"]["irnn"]}}
    with pytest.raises(SpecError, match=r"invalid study or model name: '\.\./up'"):
        StudySpec.from_dict(renamed)
    planted = {**data, "models": {"irnn": {**data["models"]["irnn"], "family": "evil"}}}
    with pytest.raises(SpecError, match="unknown model family 'evil'"):
        StudySpec.from_dict(planted)


@pytest.mark.parametrize("name", ["tiny\n", ".hidden", "a/b", "..", ""])
def test_a_study_name_is_one_plain_path_component(tmp_path, name):
    text = BASE.replace("[study]\n", f"[study]\nname = {json.dumps(name)}\n")
    with pytest.raises(SpecError, match="invalid study name"):
        load_spec(write(tmp_path, text, "n.toml"))


def test_parse_spec_without_a_file_names_the_source():
    with pytest.raises(SpecError) as info:
        parse_spec(BASE.replace("steps = 100", "steps = 0"), source="<db launch 7>", default_name="x")
    assert str(info.value).startswith("<db launch 7>: study.steps = 0:")


# -- facts the spec relies on -------------------------------------------------------------------------
def test_constrained_families_are_the_orthogonal_ones_and_probing_keeps_the_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    has_constrained_params.cache_clear()
    found = {f for f in MODELS if has_constrained_params(f)}
    assert torch.equal(torch.rand(3), expected)  # the probe models did not consume the global RNG
    assert {"exprnn", "dtriv", "cayley", "scornn", "nnrnn", "asrnn"} <= found
    assert not found & {"irnn", "rnn", "lstm", "rnn-orth"}  # RNN-orth is only initialised orthogonal


def test_no_model_option_shadows_a_training_hyperparameter():
    for family, cls in MODELS.items():
        clash = {f.name for f in dataclasses.fields(cls.config_cls)} & {*TRAIN_PARAMS, "budget", "family"}
        assert not clash, (family, clash)


def _metric_keys(task_name: str, options: dict, data_dir: Path | None = None) -> set[str]:
    if data_dir is not None:
        options = {**options, "data_dir": str(data_dir)}
    task = build_task(task_name, options, batch_size=4)
    model = build_model(
        "lstm", {"hidden_size": 4}, input_size=task.input_size, output_size=task.output_size, vocab_size=task.vocab_size
    )
    return set(evaluate(model, task, "val"))


@pytest.mark.parametrize(
    ("task", "options"),
    [("adding", {"T": 5, "val_size": 8}), ("copy", {"T": 5, "K": 2, "val_size": 8})],
)
def test_declared_metrics_match_what_the_task_reports(task, options):
    assert _metric_keys(task, options) == set(task_class(task).metrics)


def test_declared_metrics_match_what_the_data_tasks_report(shared_data):
    assert _metric_keys("digits-smoke", {}, shared_data) == set(task_class("digits-smoke").metrics)
    assert _metric_keys("ptb-smoke", {"bptt": 20, "eval_max_tokens": 200}, shared_data) == set(
        task_class("ptb-smoke").metrics
    )
    # The full tasks share the smoke tasks' metric code.
    assert task_class("smnist").summarize is task_class("digits-smoke").summarize
    assert task_class("pmnist").summarize is task_class("digits-smoke").summarize
    assert task_class("ptb").summarize is task_class("ptb-smoke").summarize


def test_every_built_in_task_declares_metrics_including_its_primary_one():
    from irnn_search.tasks import TASK_NAMES

    for name in TASK_NAMES:
        assert task_class(name).metrics is not None, name
        assert task_class(name).metric in task_class(name).reported_metrics()
        assert "loss" in task_class(name).reported_metrics()
