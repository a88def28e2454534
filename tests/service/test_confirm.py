"""``irnn-search confirm``: the derived spec re-runs each model's best trial exactly, at fresh seeds;
bad input is one line, exit 2, nothing written; the derived study's report has the error bars."""

from __future__ import annotations

import dataclasses
import json
import statistics
import threading
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from typer.testing import CliRunner, Result

from irnn_search.cli import app
from irnn_search.search.spec import Choice
from irnn_search.search.validate import load_spec, parse_spec
from irnn_search.service.answer import Seeds, TaskLines, answer, reproduce_command, seeds_of, summary_metrics
from irnn_search.service.confirm import ConfirmError, fresh_seeds, model_table
from irnn_search.service.report import ModelRow, _seed_verdict
from irnn_search.service.studies import open_studies
from irnn_search.service.worker import work
from irnn_search.settings import Settings

runner = CliRunner()

SPEC = """
[study]
description = "test: a search to confirm"
task = "adding"
task_options = { T = 10, val_size = 64, test_size = 64 }
steps = 20
report_every = 10
batch_size = 8
pruner = { name = "none" }
budget = { trials = 3 }

[models.irnn]
hidden_size = 8
optimizer = ["adam", "sgd"]
lr = { low = 1e-3, high = 1e-2, log = true }
momentum = { low = 0.0, high = 0.9 }
clip = ["off", 1]
identity_scale = { low = 0.1, high = 1.0 }

[models.rnn]
hidden_size = 8
optimizer = "adam"
lr = { low = 1e-3, high = 1e-2, log = true }
clip = 1
"""


def _env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(home))


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search (published settings first, then the sampler) of two models; its folder
    holds ``studies/conf.toml`` and the home of its stores, ``home``."""
    root = tmp_path_factory.mktemp("confirm")
    (root / "studies").mkdir()
    (root / "studies" / "conf.toml").write_text(SPEC)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (root / "home").mkdir()
    settings = Settings(home=root / "home")
    studies = open_studies(load_spec(root / "studies" / "conf.toml"), settings.storage_url)
    work({s.study_name: s for s in studies.values()}, checkpoint_root=root / "ckpt", stop=threading.Event())
    return root


def _confirm(root: Path, *args: str) -> Result:
    return runner.invoke(app, ["confirm", "conf", "--studies-dir", str(root / "studies"), *args])


def test_the_derived_spec_reruns_each_models_best_trial_exactly_at_fresh_seeds(
    searched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, searched / "home")
    out = tmp_path / "derived.toml"
    result = _confirm(searched, "--seeds", "3", "--out", str(out))
    assert result.exit_code == 0, result.output

    original = load_spec(searched / "studies" / "conf.toml")
    derived = load_spec(out)
    # named after its file, as any spec (so a second confirmation is a new study beside the first)
    assert derived.name == "derived" and derived.seeds == (1, 2, 3)  # the search trained seed 0
    assert "confirms conf's best" in derived.description and "3 fresh seeds" in derived.description
    assert (derived.pruner.name, derived.sampler.name, derived.warm_start) == ("none", "random", False)
    same = ("task", "task_options", "steps", "report_every", "batch_size", "objective", "direction")
    assert all(getattr(derived, k) == getattr(original, k) for k in same)
    studies = optuna.get_all_study_names(Settings(home=searched / "home").storage_url)
    text = out.read_text()
    for key in ("irnn", "rnn"):
        assert derived.model(key).budget.trials == 1 and not derived.model(key).searched
        study = optuna.load_study(study_name=f"conf.{key}", storage=Settings(home=searched / "home").storage_url)
        best = answer(study, original, TaskLines(None, None, None))
        assert f"conf.{key}" in studies and best.best_trial is not None
        for seed in derived.seeds:
            assert reproduce_command(derived, key, {}, seed=seed) == reproduce_command(
                original, key, best.best_params, seed=seed
            )
        # the header names where each model's configuration comes from, and what to run next
        assert f"#   {key}: trial {best.best_trial}, val_mse {best.best_value:.6g}" in text
        assert f"{key}: trial {best.best_trial}, value {best.best_value:.6g}" in result.output
    for line in (f"irnn-search launch {out} --workers 1 --pack 3", f"irnn-search report {out}"):
        assert f"# Launch: {line}" in text or f"# Report: {line}" in text
        assert f"  {line}\n" in result.output


def test_by_default_it_writes_next_to_the_specs_and_refuses_to_overwrite_without_force(
    searched: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, searched / "home")
    out = searched / "studies" / "conf-confirm.toml"
    try:
        assert _confirm(searched, "--models", "rnn").exit_code == 0
        assert list(tomllib.loads(out.read_text())["models"]) == ["rnn"]
        assert load_spec("conf-confirm", studies_dir=searched / "studies").seeds == (1, 2, 3, 4, 5)
        out.write_text("# mine\n")
        again = _confirm(searched)
        assert again.exit_code == 2 and out.read_text() == "# mine\n"
        assert _confirm(searched, "--force").exit_code == 0
        assert list(tomllib.loads(out.read_text())["models"]) == ["irnn", "rnn"]
        assert sorted(p.name for p in out.parent.iterdir()) == ["conf-confirm.toml", "conf.toml"]  # no temp file
    finally:
        out.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("args", "home", "message"),
    [
        (["--seeds", "1"], "searched", "--seeds must be at least 2"),
        (["--models", "irnn,gru"], "searched", "unknown model 'gru'"),
        (["--spec", "nope"], "searched", "no study named 'nope'"),
        ([], "empty", "no study store at"),
        (["--spec", "other"], "searched", "no such study launched"),
        (["--out-exists"], "searched", "already exists: pass --force"),
    ],
    ids=["one-seed", "unknown-model", "unknown-spec", "no-store", "never-launched", "out-exists"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    searched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], home: str, message: str
) -> None:
    home_dir = searched / "home" if home == "searched" else tmp_path / "empty-home"
    _env(monkeypatch, home_dir)
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "conf.toml").write_text(SPEC)
    (studies / "other.toml").write_text(SPEC)  # a spec never launched
    out = tmp_path / "out.toml"
    spec = "conf"
    if args[:1] == ["--spec"]:
        spec, args = args[1], []
    if args == ["--out-exists"]:
        out.write_text("# mine\n")
        args = []
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = runner.invoke(app, ["confirm", spec, "--studies-dir", str(studies), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no spec, no store, no temporary file
    assert not out.exists() or out.read_text() == "# mine\n"


def test_a_model_without_a_value_is_skipped_and_none_with_a_value_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env(monkeypatch, tmp_path / "home")
    (tmp_path / "home").mkdir()
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "conf.toml").write_text(SPEC.replace("budget = { trials = 3 }", "budget = { trials = 1 }"))
    spec = load_spec(tmp_path / "studies" / "conf.toml")
    studies = open_studies(spec, Settings(home=tmp_path / "home").storage_url)
    args = ["confirm", "conf", "--studies-dir", str(tmp_path / "studies"), "--out", str(tmp_path / "c.toml")]

    none = runner.invoke(app, args)  # launched, nothing ran yet
    assert none.exit_code == 2 and not (tmp_path / "c.toml").exists(), none.output
    assert len(none.output.strip().splitlines()) == 1 and "no model of conf has a trial" in none.output

    only = studies["rnn"]
    work({only.study_name: only}, checkpoint_root=tmp_path / "ckpt", stop=threading.Event())
    one = runner.invoke(app, args)
    assert one.exit_code == 0, one.output
    assert "irnn: skipped, no trial of it reached a value yet" in one.output
    assert list(tomllib.loads((tmp_path / "c.toml").read_text())["models"]) == ["rnn"]


def test_a_conditional_hyperparameter_the_best_trial_did_not_sample_is_left_out() -> None:
    spec = parse_spec(SPEC, default_name="conf")
    irnn = spec.model("irnn")
    assert isinstance(irnn.params["optimizer"], Choice)
    adam = model_table(irnn, {"optimizer": "adam", "lr": 0.002, "clip": "off", "identity_scale": 0.5})
    assert "momentum" not in adam and "alpha" not in adam and "lr_orth" not in adam
    assert adam["clip"] == "off" and adam["lr"] == 0.002 and adam["family"] == "irnn" and adam["hidden_size"] == 8
    sgd = model_table(irnn, {"optimizer": "sgd", "lr": 0.002, "momentum": 0.5, "clip": 1, "identity_scale": 0.5})
    assert sgd["momentum"] == 0.5 and sgd["clip"] == 1
    with pytest.raises(ConfirmError, match="no value for 'momentum'"):
        model_table(irnn, {"optimizer": "sgd", "lr": 0.002, "clip": 1, "identity_scale": 0.5})
    # the spec fixes clip off for every trial: written "off" (TOML has no null)
    fixed_off = parse_spec(SPEC.replace('clip = ["off", 1]', 'clip = "off"'), default_name="conf").model("irnn")
    assert model_table(fixed_off, {"optimizer": "adam", "lr": 0.002, "identity_scale": 0.5})["clip"] == "off"


def test_fresh_seeds_start_after_the_largest_seed_the_search_used() -> None:
    assert fresh_seeds((0,), 5) == (1, 2, 3, 4, 5)
    assert fresh_seeds((7, 3), 2) == (8, 9)


CONF_SPEC_FOR_METRICS = parse_spec(
    """\
[study]
task = "adding"
task_options = { T = 10 }
steps = 10
report_every = 10
batch_size = 4
budget = { trials = 1 }

[models.irnn]
hidden_size = 4
lr = { low = 1e-3, high = 1e-2, log = true }
""",
    source="m.toml",
    default_name="m",
)


def test_a_requeued_lineage_reports_the_seeds_of_all_its_attempts() -> None:
    """The first attempt finished seed 0 and was interrupted; its re-queued copy inherited that
    value and finished seeds 1 and 2. The lineage's first trial alone holds only seed 0."""
    study = optuna.create_study()
    dist = {"lr": FloatDistribution(1e-3, 1e-2, log=True)}
    first = optuna.trial.create_trial(
        params={"lr": 0.002},
        distributions=dist,
        state=optuna.trial.TrialState.FAIL,
        user_attrs={"outcome": "interrupted", "value_seed0": 0.1},
        intermediate_values={10: 0.1},
    )
    retry = optuna.trial.create_trial(
        params={"lr": 0.002},
        distributions=dist,
        value=0.2,
        user_attrs={"lineage": 0, "value_seed0": 0.1, "value_seed1": 0.2, "value_seed3": 0.3, "diverged_seed2": "x"},
        intermediate_values={10: 0.1},
    )
    study.add_trials([first, retry])
    seeds = seeds_of(study.get_trials(), 0)
    assert seeds == Seeds({0: 0.1, 1: 0.2, 3: 0.3}, {2: "x"})
    assert seeds.mean == pytest.approx(0.2) and seeds.sd == pytest.approx(0.1) and seeds.solved(0.15) == 1
    # what the study's MLflow parent run carries, so confirmations compare in the runs table
    metrics = summary_metrics(answer(study, CONF_SPEC_FOR_METRICS, TaskLines(None, 0.15, None)), 0.1, seeds)
    assert {k: metrics[k] for k in ("seed_mean", "seed_sd", "seeds_solved", "seeds_reached", "seeds_diverged")} == {
        "seed_mean": pytest.approx(0.2),
        "seed_sd": pytest.approx(0.1),
        "seeds_solved": 1.0,
        "seeds_reached": 3.0,
        "seeds_diverged": 1.0,
    }
    assert "seed_mean" not in summary_metrics(answer(study, CONF_SPEC_FOR_METRICS, None), 0.1)  # one seed: none
    curved = Seeds({0: 0.1, 1: 0.2}, {}, {0: {10: 0.3, 20: 0.1}, 1: {10: 0.12, 20: 0.2}})
    assert curved.solved_at(0.15) == {0: 20, 1: 10}
    metrics = summary_metrics(answer(study, CONF_SPEC_FOR_METRICS, TaskLines(None, 0.15, None)), 0.1, curved)
    assert (metrics["seed_steps_to_solve_mean"], metrics["seed_steps_to_solve_sd"]) == pytest.approx(
        (15, 7.0711), rel=1e-4
    )


def test_a_lineage_whose_first_seed_diverged_still_reports_its_other_seeds() -> None:
    """The first seed reports the intermediate values; when it diverged, the trial has none and no
    best, yet its other seeds finished: the row reads them from the only lineage there is."""
    study = optuna.create_study()
    only = optuna.trial.create_trial(
        params={"lr": 0.002},
        distributions={"lr": FloatDistribution(1e-3, 1e-2, log=True)},
        value=0.2,
        user_attrs={"diverged_seed1": "hidden state reached 8e6", "value_seed2": 0.1, "value_seed3": 0.3},
    )
    study.add_trials([only])
    assert seeds_of(study.get_trials(), None) == Seeds({2: 0.1, 3: 0.3}, {1: "hidden state reached 8e6"})


def test_a_model_whose_trials_all_ended_before_a_report_says_how_they_ended() -> None:
    from irnn_search.service.report import _why_not

    row = ModelRow(**{f.name: None for f in dataclasses.fields(ModelRow) if f.default is dataclasses.MISSING})
    row.endings = {"diverged": 1}
    assert _why_not(row) == "no trial reached a value; trials: 1 diverged"
    row.endings = {}
    assert _why_not(row) == "no trial reported yet"


def test_the_verdict_across_seeds_counts_the_diverged_ones() -> None:
    row = ModelRow(**{f.name: None for f in dataclasses.fields(ModelRow) if f.default is dataclasses.MISSING})
    row.model, row.objective = "irnn", "val_mse"
    row.seed_values, row.seeds_diverged = {2: 0.001, 3: 0.003, 4: 0.5}, {1: "x", 5: "y"}
    row.seed_mean, row.seed_sd, row.seeds_solved = 0.168, 0.288, 2
    row.seed_solved_at = {2: 5000, 3: 7000}
    verdict = _seed_verdict(row)
    assert verdict.startswith("irnn solved in 2 of 5 seeds (2 diverged), val MSE 0.168 ± 0.29")
    assert "of the 3 that reached a value" in verdict
    assert verdict.endswith("; steps to solve 6,000 ± 1,414 (the 2 seeds that solved)")
    row.seed_solved_at = {2: 5000}
    assert "steps to solve" not in _seed_verdict(row)  # one crossing has no spread
    row.seed_values, row.seeds_diverged = {}, {1: "x", 2: "y"}
    row.seed_mean, row.seed_sd, row.seeds_solved = None, None, 0
    assert _seed_verdict(row) == "irnn solved in 0 of 2 seeds (2 diverged), no seed reached a value"


def test_the_derived_study_reports_each_model_with_its_spread_over_the_fresh_seeds(
    searched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: confirm at 2 seeds, run the derived spec, then its report."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(searched / "home", home)  # the derived studies must not touch the shared search
    _env(monkeypatch, home)
    out = tmp_path / "derived.toml"
    assert _confirm(searched, "--seeds", "2", "--out", str(out)).exit_code == 0
    derived = load_spec(out)
    from irnn_search.tracking import Tracker

    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", str(home / "mlartifacts"))
    studies = open_studies(derived, Settings(home=home).storage_url, tracker)
    assert (
        work(  # as its launch line says: the seeds side by side in one pack
            {s.study_name: s for s in studies.values()},
            checkpoint_root=tmp_path / "c",
            stop=threading.Event(),
            pack=2,
            tracker=tracker,
        )
        == 2
    )

    plots = tmp_path / "plots"
    result = runner.invoke(app, ["report", str(out), "--format", "json", "--out", str(plots)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["irnn", "rnn"]
    for r in rows:
        values = [r["seed_values"][k] for k in sorted(r["seed_values"])]
        assert sorted(r["seed_values"]) == ["1", "2"] and len(set(values)) == 2, r["seed_values"]
        assert r["seed_mean"] == pytest.approx(statistics.fmean(values))
        assert r["seed_sd"] == pytest.approx(statistics.stdev(values))
        assert r["seeds_solved"] == sum(v < r["threshold"] for v in values)
    assert (plots / "seeds.png").is_file()
    for r in rows:  # each seed's curve is recorded, and its best is the seed's value
        assert sorted(r["seed_curves"]) == ["1", "2"], r["model"]
        for k, curve in r["seed_curves"].items():
            assert min(curve.values()) == pytest.approx(r["seed_values"][k])
    assert (plots / "seed_curves.png").is_file()

    # The same spread on each study's MLflow parent run, read back through MLflow's own client.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    for r in rows:
        parent = client.get_run(studies[r["model"]].user_attrs["mlflow_parent_run_id"]).data.metrics
        assert parent["seed_mean"] == pytest.approx(r["seed_mean"]) and parent["seed_sd"] == pytest.approx(r["seed_sd"])
        assert (parent["seeds_reached"], parent["seeds_solved"]) == (2, r["seeds_solved"])

    md = runner.invoke(app, ["report", str(out), "--out", str(plots)]).stdout
    r = rows[0]
    assert (
        f"irnn solved in {r['seeds_solved']} of 2 seeds, val MSE {r['seed_mean']:.3g} ± {r['seed_sd']:.2g} "
        "(mean ± sample sd)" in md
    )
    at = {int(k): f" @{v:,}" for k, v in r["seed_solved_at"].items()}
    values = sorted((int(k), v) for k, v in r["seed_values"].items())
    each = ", ".join(f"{s}: {v:.3g}{at.get(s, '')}" for s, v in values)
    lo, hi = min(r["seed_values"].values()), max(r["seed_values"].values())
    spread = f"{r['seed_mean']:.3g} ± {r['seed_sd']:.2g}"
    assert f"| irnn | 2 | {r['seeds_solved']} | 0 | {spread} | {lo:.4g} | {hi:.4g} | {each} |" in md
    assert "- **irnn** (trial 0): every hyperparameter fixed by the spec; over 2 seeds: " in md

    # the search trained one seed: its report has no seed plot
    search_plots = tmp_path / "search-plots"
    search = runner.invoke(
        app, ["report", "conf", "--studies-dir", str(searched / "studies"), "--out", str(search_plots)]
    )
    assert search.exit_code == 0 and not (search_plots / "seeds.png").exists(), search.output


def test_the_seed_plot_marks_the_published_number_of_the_studys_size_only() -> None:
    from irnn_search.service.report import published_numbers
    from irnn_search.service.report_plots import published_points

    numbers = published_numbers("adding", "irnn")
    at = {T: parse_spec(SPEC.replace("T = 10", f"T = {T}"), default_name="conf") for T in (10, 100)}
    assert published_points(at[100], numbers) == [1e-05]  # REFERENCE.md §4.1: IRNN at T = 100
    assert published_points(at[10], numbers) == []  # no number for T = 10: none drawn
