from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from irnn_search.cli import app
from irnn_search.search.validate import load_spec
from irnn_search.service.budget import usage
from irnn_search.service.recovery import requeue_released
from irnn_search.service.report import render, rows_for
from irnn_search.service.studies import SearchError, load_studies, open_studies
from irnn_search.service.worker import work

TINY = """
[study]
description = "test: tiny adding search"
task = "adding"
task_options = {{ T = 10, val_size = 64, test_size = 64 }}
steps = {steps}
report_every = 10
batch_size = 8
pruner = {{ name = "none" }}
budget = {{ trials = {trials} }}

[models.irnn]
hidden_size = 8
optimizer = "adam"
lr = {lr}
clip = {clip}
identity_scale = {{ low = 0.1, high = 1.0 }}
"""


def _spec(
    tmp_path: Path,
    name: str = "tiny",
    *,
    steps: int = 40,
    trials: int = 3,
    lr: str = "{ low = 1e-3, high = 1e-2, log = true }",
    clip: str = '["off", 1]',
) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(steps=steps, trials=trials, lr=lr, clip=clip))
    return path


@pytest.fixture
def storage(tmp_path: Path) -> str:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_open_studies_is_idempotent_and_queues_the_published_settings_once(tmp_path: Path, storage: str) -> None:
    spec = load_spec(_spec(tmp_path))
    first = open_studies(spec, storage)
    n = len(first["irnn"].trials)
    assert n >= 1  # the IRNN paper's and the IRNN demo's settings
    assert all(t.user_attrs.get("source") == "published" for t in first["irnn"].trials)
    again = open_studies(spec, storage)
    assert len(again["irnn"].trials) == n
    assert len(optuna.get_all_study_summaries(storage)) == 1


def test_a_changed_spec_under_the_same_name_is_refused(tmp_path: Path, storage: str) -> None:
    open_studies(load_spec(_spec(tmp_path)), storage)
    changed = load_spec(_spec(tmp_path, steps=50))
    with pytest.raises(SearchError, match="different version of spec 'tiny'"):
        open_studies(changed, storage)


def test_a_changed_budget_is_taken_and_the_study_goes_on(tmp_path: Path, storage: str) -> None:
    # As with Optuna's n_trials: more (or fewer) trials for a study that is already running.
    from irnn_search.service.budget import budget_left
    from irnn_search.service.studies import stored_spec

    first = open_studies(load_spec(_spec(tmp_path, trials=3)), storage)["irnn"]
    n = len(first.trials)
    more = open_studies(load_spec(_spec(tmp_path, trials=7)), storage)["irnn"]
    assert stored_spec(more).model("irnn").budget.trials == 7
    assert len(more.trials) == n  # nothing enqueued twice
    assert budget_left(more, stored_spec(more).model("irnn"))
    # Anything else changed is still refused.
    with pytest.raises(SearchError, match="different version of spec 'tiny'"):
        open_studies(load_spec(_spec(tmp_path, trials=7, steps=50)), storage)


def test_launch_takes_a_changed_budget_in_every_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    for trials in (3, 5, 4):
        result = CliRunner().invoke(app, ["launch", str(_spec(tmp_path, trials=trials)), "--no-run"])
        assert result.exit_code == 0, result.output
    from irnn_search.db import repo
    from irnn_search.db.session import make_engine, session_scope

    with session_scope(make_engine(f"sqlite:///{tmp_path / 'home' / 'irnn.db'}")) as session:
        (study,) = repo.studies(session, spec_name="tiny")
        assert study.spec_hash == load_spec(_spec(tmp_path, trials=4)).spec_hash()


def test_workers_meet_the_budget_and_the_objective_comes_from_the_stored_spec(tmp_path: Path, storage: str) -> None:
    spec_path = _spec(tmp_path, trials=4)
    open_studies(load_spec(spec_path), storage)
    spec_path.unlink()  # the worker must not need the file
    studies = load_studies(storage)
    ran = work(studies, checkpoint_root=tmp_path / "ckpt", stop=threading.Event())
    u = usage(studies["tiny.irnn"])
    assert ran == 4 and u.finished == 4 and u.running == 0 and u.waiting == 0
    complete = [t for t in studies["tiny.irnn"].trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.user_attrs["outcome"] == "complete" and t.intermediate_values for t in complete)


def test_a_diverging_trial_is_pruned_with_its_reason_and_never_becomes_best(tmp_path: Path, storage: str) -> None:
    spec = load_spec(_spec(tmp_path, lr="1e3", clip='"off"', trials=2))
    studies = open_studies(spec, storage)
    for t in list(studies["irnn"].trials):  # drop the warm start: we want the diverging setting
        assert t.state == TrialState.WAITING
    spec2 = load_spec(_spec(tmp_path, name="div", lr="1e3", clip='"off"', trials=2))
    import dataclasses

    spec2 = dataclasses.replace(spec2, warm_start=False)
    studies = open_studies(spec2, storage)
    work({s.study_name: s for s in studies.values()}, checkpoint_root=tmp_path / "ckpt", stop=threading.Event())
    trials = studies["irnn"].trials
    assert trials and all(t.state == TrialState.PRUNED for t in trials)
    assert all(
        t.user_attrs["outcome"] == "diverged" and t.user_attrs["reason"].startswith("diverged: ") for t in trials
    )
    assert usage(studies["irnn"]).best is None


def test_a_failing_trial_fails_alone_and_the_worker_carries_on(
    tmp_path: Path, storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's own error fails it (missing data is the machine's fault: tests/service/test_preflight.py)."""
    import dataclasses

    import irnn_search.service.objective as objective

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the trial's own error")

    monkeypatch.setattr(objective, "train", broken)
    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=2)), warm_start=False)
    studies = open_studies(spec, storage)
    ran = work({s.study_name: s for s in studies.values()}, checkpoint_root=tmp_path / "c", stop=threading.Event())
    trials = studies["irnn"].trials
    assert ran == 2 and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["reason"] == "RuntimeError: the trial's own error" for t in trials)


def test_an_interrupted_trial_is_requeued_and_resumes_from_its_checkpoint(tmp_path: Path, storage: str) -> None:
    import dataclasses

    spec = dataclasses.replace(load_spec(_spec(tmp_path, steps=3000, trials=1, lr="1e-3", clip="1")), warm_start=False)
    studies = open_studies(spec, storage)
    named = {s.study_name: s for s in studies.values()}
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    work(named, checkpoint_root=tmp_path / "ckpt", stop=stop)
    first = studies["irnn"].trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["outcome"] == "interrupted"
    ckpt = Path(first.user_attrs["checkpoint_dir"]) / "seed-0" / "last.pt"
    import torch

    stopped_at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < stopped_at < 3000
    assert usage(studies["irnn"]).finished == 0  # an interrupted attempt does not use the budget
    work(load_studies(storage), checkpoint_root=tmp_path / "ckpt", stop=threading.Event())
    trials = studies["irnn"].trials
    retry = trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == first.number
    assert retry.params == first.params and retry.user_attrs["lineage"] == first.number
    assert min(retry.intermediate_values) > stopped_at - 10  # it continued, it did not restart
    assert requeue_released(studies["irnn"]) == 0


def test_a_trial_whose_worker_dies_every_time_fails_for_good_after_max_lost_attempts(
    tmp_path: Path, storage: str
) -> None:
    import dataclasses

    from irnn_search.service.budget import budget_left
    from irnn_search.service.recovery import Janitor

    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=1)), warm_start=False)
    study = open_studies(spec, storage)["irnn"]
    janitor = Janitor(max_lost=3)

    def attempt(outcome: str | None) -> optuna.Trial:
        trial = study.ask()  # the re-queued copy comes first
        trial.suggest_float("identity_scale", 0.1, 1.0)
        if outcome is not None:
            trial.set_user_attr("outcome", outcome)
        frozen = study.tell(trial, state=TrialState.FAIL)
        if outcome is None:
            janitor.on_stale(study, frozen)  # its worker died: a janitor failed it
        else:
            requeue_released(study, min_age_s=0)  # SIGTERM: released, does not count
        return trial

    first = attempt(None)
    attempt("interrupted")
    attempt(None)
    assert [t.state for t in study.trials].count(TrialState.WAITING) == 1
    attempt(None)  # the third lost attempt
    trials = study.trials
    assert TrialState.WAITING not in [t.state for t in trials]
    last = trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs["outcome"] == "failed"
    assert last.user_attrs["lineage"] == first.number and last.user_attrs["lost_attempts"] == 3
    assert last.params == first.params
    assert last.user_attrs["reason"].startswith("gave up: the worker running this trial died on 3 attempts")
    u = usage(study)
    assert u.failed == 1 and not budget_left(study, spec.model("irnn"), u)  # it counts against the budget
    assert requeue_released(study, min_age_s=0) == 0  # and nothing re-queues it again
    report = render(rows_for(spec, storage), "md")
    assert f"- irnn trial {last.number}: gave up: the worker running this trial died on 3 attempts" in report


def test_an_interrupted_attempt_is_requeued_under_the_workers_lost_attempts_limit(tmp_path: Path, storage: str) -> None:
    """A lineage lost 3 times under IRNN_SEARCH_MAX_LOST_ATTEMPTS=5 is still queued; its next
    attempt, stopped by SIGTERM, is re-queued again (an interruption does not count), not given
    up under the default limit of 3."""
    import dataclasses

    from irnn_search.service.recovery import Janitor

    spec = dataclasses.replace(load_spec(_spec(tmp_path, steps=3000, trials=1, lr="1e-3", clip="1")), warm_start=False)
    study = open_studies(spec, storage)["irnn"]
    janitor = Janitor(max_lost=5)
    for _ in range(3):  # its worker dies three times
        trial = study.ask()
        trial.suggest_float("identity_scale", 0.1, 1.0)
        janitor.on_stale(study, study.tell(trial, state=TrialState.FAIL))
    stop = threading.Event()
    threading.Timer(1.5, stop.set).start()
    work({study.study_name: study}, checkpoint_root=tmp_path / "c", stop=stop, janitor=janitor, janitor_interval_s=60)
    interrupted, last = study.trials[-2:]
    assert interrupted.user_attrs["outcome"] == "interrupted" and interrupted.user_attrs["lost_attempts"] == 3
    assert last.state == TrialState.WAITING and last.user_attrs["retry_of"] == interrupted.number
    assert last.user_attrs["lost_attempts"] == 3 and "gave_up" not in last.user_attrs


@pytest.mark.parametrize("spec_name", ["tiny", "../../../escaped"])
def test_a_study_planted_under_a_path_escaping_name_is_refused_and_writes_nothing_outside_home(
    tmp_path: Path, storage: str, spec_name: str
) -> None:
    import dataclasses

    home = tmp_path / "home" / "a" / "b"
    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=1, steps=20)), warm_start=False)
    genuine = open_studies(spec, storage)["irnn"]
    planted = optuna.create_study(study_name="../../../escaped", storage=storage)
    data = {**genuine.user_attrs["spec"], "name": spec_name}
    for key, value in {**genuine.user_attrs, "spec": data}.items():
        planted.set_user_attr(key, value)
    planted.enqueue_trial({"identity_scale": 0.5})
    with pytest.raises(SearchError, match=r"study '\.\./\.\./\.\./escaped' on this storage is refused"):
        load_studies(storage, ["../../../escaped"])
    studies = load_studies(storage)
    assert list(studies) == ["tiny.irnn"]
    work(studies, checkpoint_root=home / "checkpoints", stop=threading.Event())
    assert not (tmp_path / "home" / "escaped").exists() and not (home / "escaped").exists()
    assert planted.trials[0].state == TrialState.WAITING  # never run


def test_a_checkpoint_folder_from_names_read_back_from_storage_stays_inside_its_root(
    tmp_path: Path, storage: str
) -> None:
    from irnn_search.service.attempt import UnsafePath, checkpoint_dir

    study = optuna.create_study(storage=storage)
    trial = study.ask()
    assert checkpoint_dir(tmp_path, "tiny.irnn", trial, 0) == tmp_path / "tiny.irnn" / "trial-0" / "seed-0"
    with pytest.raises(UnsafePath):
        checkpoint_dir(tmp_path, "../../../escaped", trial, 0)
    trial.set_user_attr("lineage", "0/../../../../x")
    with pytest.raises(UnsafePath):
        checkpoint_dir(tmp_path, "tiny.irnn", trial, 0)


@pytest.mark.slow
def test_launch_end_to_end_with_two_workers_prints_the_report_and_writes_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    spec = _spec(tmp_path, trials=3)
    result = CliRunner().invoke(app, ["launch", str(spec), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "| irnn |" in result.stdout and "published settings" in result.stdout
    plots = sorted(p.name for p in (tmp_path / "home" / "reports" / "tiny").iterdir())
    assert {"best_vs_compute.png", "best_learning_curves.png", "landscape.png"} <= set(plots)
    again = CliRunner().invoke(app, ["launch", str(spec), "--no-run"])
    assert again.exit_code == 0
    rows = json.loads(CliRunner().invoke(app, ["report", str(spec), "--format", "json"]).stdout.split("\nPlots")[0])
    assert rows[0]["trials"] == 3 and rows[0]["best_value"] is not None
    # Best validation, then test: the best trial's best checkpoint was evaluated on the test split.
    assert rows[0]["test_value"] is not None and rows[0]["test_metrics"]["mse"] == rows[0]["test_value"]
    assert "test (best-val ckpt)" in result.stdout
    # The answer: baseline, threshold and solved fields for scripts, and the line that re-runs the best.
    assert rows[0]["baseline"] == pytest.approx(1 / 6) and rows[0]["threshold"] == 0.01
    assert rows[0]["solved"] in (True, False) and rows[0]["best_ended"] is not None
    assert rows[0]["reproduce"].startswith("irnn-search train --task adding --model irnn --T 10")
    assert "Memoryless baseline 0.1667; solved: validation MSE below 0.01" in result.stdout
    # The reproduce line re-runs the best trial alone, to the value the report shows.
    import shlex

    args = shlex.split(rows[0]["reproduce"])[1:]
    again_alone = CliRunner().invoke(app, [*args, "--json"])
    assert again_alone.exit_code == 0, again_alone.output
    alone = json.loads(again_alone.stdout)
    assert alone["best"]["val_mse"] == pytest.approx(rows[0]["best_value"], rel=1e-4)
    status = CliRunner().invoke(app, ["status"], env={"COLUMNS": "80"})
    assert status.exit_code == 0 and "tiny.irnn" in status.stdout and "no worker alive" in status.stdout
    # Readable in 80 columns: no header cut to "comp…".
    assert "…" not in status.stdout and max(len(line) for line in status.stdout.splitlines()) <= 80
    # optuna-dashboard shows the objective by name.
    import optuna

    (study_obj,) = [optuna.load_study(study_name="tiny.irnn", storage=f"sqlite:///{tmp_path / 'home' / 'optuna.db'}")]
    assert study_obj.metric_names == ["val_mse"]
    assert usage(study_obj).finished == 3

    # Our experiment database: the launches, the study, every trial run with its outcome.
    from irnn_search.db import repo
    from irnn_search.db.session import make_engine, session_scope

    with session_scope(make_engine(f"sqlite:///{tmp_path / 'home' / 'irnn.db'}")) as session:
        (study,) = repo.studies(session, spec_name="tiny")
        assert study.study_name == "tiny.irnn" and study.mlflow_parent_run_id
        runs = repo.trial_runs(session, study_name="tiny.irnn")
        assert len(runs) == 3 and all(r.outcome in ("complete", "pruned", "diverged") for r in runs)
        assert all(r.mlflow_run_id and r.wall_s and r.wall_s > 0 for r in runs)
        best_run = next(r for r in runs if r.trial_number == rows[0]["best_trial"])
        assert "test" in repo.evaluations(session, trial_run_id=best_run.id)

    # MLflow, read back through its own client: a parent per study, a child per trial, none RUNNING.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("irnn-search/adding")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("irnn.role") == "study"]
    children = [r for r in runs if r.data.tags.get("irnn.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # The parent carries the study's answer, so the runs table compares models side by side.
    summary = parents[0].data
    assert summary.metrics["trials"] == 3 and summary.metrics["best_value"] == pytest.approx(rows[0]["best_value"])
    assert summary.metrics["solved"] in (0.0, 1.0) and summary.metrics["device_hours"] > 0
    assert "best.lr" in summary.tags and summary.tags["irnn.objective"] == "val_mse"
    assert [m.step for m in client.get_metric_history(parents[0].info.run_id, "trials")][-1] == 3
    assert len(children) == 3 and all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status != "RUNNING" for r in runs)
    done = next(r for r in children if r.data.tags.get("irnn.outcome") == "complete")
    assert "lr" in done.data.params and "identity_scale" in done.data.params
    history = client.get_metric_history(done.info.run_id, "val_mse")
    assert [m.step for m in history] == [10, 20, 30, 40]
    artifacts = {a.path for a in client.list_artifacts(done.info.run_id)}
    assert {"config.json", "learning_curve.png", "checkpoints"} <= artifacts


def test_report_formats(tmp_path: Path, storage: str) -> None:
    spec = load_spec(_spec(tmp_path, trials=2))
    studies = open_studies(spec, storage)
    work({s.study_name: s for s in studies.values()}, checkpoint_root=tmp_path / "c", stop=threading.Event())
    rows = rows_for(spec, storage)
    md = render(rows, "md", spec=spec)
    assert "| irnn |" in md and "Published numbers" in md
    csv_text = render(rows, "csv")
    assert csv_text.splitlines()[0].startswith("model,family,task") and "irnn" in csv_text
    assert json.loads(render(rows, "json"))[0]["model"] == "irnn"


def test_bad_spec_and_unreachable_storage_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\ntask = "adding"\nsteps = 10\n[models.gru]\nlr = 1e-3\nbudget = { trials = 1 }\n')
    result = CliRunner().invoke(app, ["launch", str(bad)])
    assert result.exit_code == 2 and "gru" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("IRNN_SEARCH_STORAGE", "postgresql+psycopg://u:secret@127.0.0.1:1/x?connect_timeout=2")
    result = CliRunner().invoke(app, ["launch", str(_spec(tmp_path))])
    assert result.exit_code == 2, result.output
    assert "secret" not in result.output and "u:***@" in result.output and "Traceback" not in result.output


def test_a_trial_started_in_the_same_instant_as_the_last_budgeted_one_stands_down(tmp_path: Path, storage: str) -> None:
    import dataclasses

    from irnn_search.service.objective import make_objective

    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=2)), warm_start=False)
    study = open_studies(spec, storage)["irnn"]
    first, second = study.ask(), study.ask()  # two workers' trials, in flight
    racer = study.ask()  # a third worker passed budget_left just before they started
    objective = make_objective(spec, "irnn", checkpoint_root=tmp_path / "c")
    with pytest.raises(optuna.TrialPruned, match="budget was met"):
        objective(racer)
    study.tell(racer, state=TrialState.PRUNED)
    assert study.trials[racer.number].user_attrs["outcome"] == "surplus"
    assert not (tmp_path / "c").exists()  # it never trained
    u = usage(study)
    assert u.running == 2 and u.finished == 0  # the surplus trial does not use the budget
    del first, second


def test_a_requeued_attempt_is_never_dropped_as_surplus_when_a_trial_raced_its_requeue(
    tmp_path: Path, storage: str
) -> None:
    """Issue 17: a lost trial's lineage was admitted when it started; a fresh trial created in the
    instant between the janitor failing it and re-queueing it must not push the re-queued copy
    out as surplus, or the lineage is never finished."""
    import dataclasses

    from irnn_search.service.objective import make_objective
    from irnn_search.service.recovery import Janitor

    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=2)), warm_start=False)
    study = open_studies(spec, storage)["irnn"]
    first, lost = study.ask(), study.ask()  # two workers' trials; the second worker then dies
    lost.suggest_float("identity_scale", 0.1, 1.0)
    frozen = study.tell(lost, state=TrialState.FAIL)  # a janitor fails it...
    racer = study.ask()  # ...a third worker passes budget_left and starts a fresh trial...
    Janitor().on_stale(study, frozen)  # ...and the janitor re-queues the lost one
    copy = study.ask()
    assert copy.user_attrs["retry_of"] == lost.number

    objective = make_objective(spec, "irnn", checkpoint_root=tmp_path / "c")
    value = objective(copy)  # the lineage goes on: it trains, it does not stand down
    study.tell(copy, value)
    assert study.trials[copy.number].user_attrs["outcome"] == "complete"
    late = study.ask()  # but a fresh trial after it is surplus: the budget is full
    with pytest.raises(optuna.TrialPruned, match="budget was met"):
        objective(late)
    del first, racer


def test_a_fresh_trial_started_while_a_requeued_copy_waits_stands_down_as_surplus(tmp_path: Path, storage: str) -> None:
    """Seen under chaos (stop 17): the janitor re-queued a lost trial, and before any worker took
    the copy, another worker's ask created a fresh trial. The copy ran later (it is owed), and the
    study ended one trial over its budget. The waiting copy counts for its lineage, so the fresh
    trial stands down."""
    import dataclasses

    from irnn_search.service.objective import make_objective
    from irnn_search.service.recovery import Janitor

    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=2)), warm_start=False)
    study = open_studies(spec, storage)["irnn"]
    first, lost = study.ask(), study.ask()  # two workers' trials; the second worker then dies
    lost.suggest_float("identity_scale", 0.1, 1.0)
    frozen = study.tell(lost, state=TrialState.FAIL)  # a janitor fails it and re-queues it...
    Janitor().on_stale(study, frozen)
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    # ...and a worker's ask, which read no waiting trial an instant before, creates a fresh one
    racer = study._storage.get_trial(study._storage.create_new_trial(study._study_id))
    assert racer.number > waiting.number and racer.state == TrialState.RUNNING
    objective = make_objective(spec, "irnn", checkpoint_root=tmp_path / "c")
    with pytest.raises(optuna.TrialPruned, match="budget was met"):
        objective(optuna.Trial(study, racer._trial_id))
    study.tell(racer.number, state=TrialState.PRUNED)
    copy = study.ask()  # the copy runs: the lineage was admitted
    assert copy.user_attrs["retry_of"] == lost.number
    study.tell(copy, objective(copy))
    assert usage(study).finished + usage(study).running == 2  # first (running) and the copy: the budget
    del first


def test_a_worker_out_of_work_waits_for_a_trial_in_flight_on_a_dead_worker_and_runs_it(
    tmp_path: Path, storage: str
) -> None:
    """The budget is met only because a trial is running on another worker, which then dies:
    this worker stays (its janitor re-queues the lost trial) and runs it, rather than leaving the
    study with a trial stuck RUNNING and no worker to notice."""
    import warnings

    from irnn_search.service.worker import open_for_work

    spec = load_spec(_spec(tmp_path, trials=2, steps=40))
    (study,) = open_studies(spec, storage).values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        dead = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=3)
    other = optuna.load_study(study_name=study.study_name, storage=dead)
    in_flight = other.ask()  # another worker's trial: it beats once, then that worker dies
    dead.record_heartbeat(in_flight._trial_id)

    studies, janitor = open_for_work(storage, [study.study_name], heartbeat_s=1, grace_s=3)
    ran = work(studies, checkpoint_root=tmp_path / "c", stop=threading.Event(), janitor=janitor)

    assert ran == 2, "its own trial, then the dead worker's, re-queued by its janitor"
    trials = study.trials
    lost = next(t for t in trials if t.number == in_flight.number)
    assert lost.state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == in_flight.number)
    assert retry.state == TrialState.COMPLETE
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_workers_spawned_by_launch_get_the_db_retry_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker set-up was written twice and the copies drifted: `launch --workers N` spawned
    # workers that ignored IRNN_SEARCH_DB_RETRY_S. Both now build their WorkerOptions from the
    # settings in one place and start through the same `serve`.
    from irnn_search.service import pool, worker

    spawned: list[tuple] = []

    class Ctx:
        def Process(self, target, args, name):
            spawned.append(args)
            return type("P", (), {"start": lambda self: None})()

    monkeypatch.setattr("multiprocessing.get_context", lambda kind: Ctx())
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IRNN_SEARCH_DB_RETRY_S", "7")
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, ["launch", str(_spec(tmp_path)), "--workers", "2", "--no-report"])
    assert len(spawned) == 2, result.output
    (options,), (second,) = spawned
    assert options.retry_s == second.retry_s == 7 and options.stream != second.stream
    assert options.watch_parent and options.quiet and not options.auto_upgrade

    seen: dict[str, object] = {}

    def open_for_work(storage_url: str, names: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(worker, "open_for_work", open_for_work)
    monkeypatch.setattr(worker, "watch_parent", lambda *a: None)
    with pytest.raises(SystemExit):
        pool.worker_process(options)
    assert seen["retry_s"] == 7
    seen.clear()
    CliRunner().invoke(app, ["worker", "--no-track"])  # and `irnn-search worker`, through the same entry
    assert seen["retry_s"] == 7


def test_the_last_worker_out_ends_the_finished_studys_parent_run_and_runs_orphaned_by_dead_workers(
    tmp_path: Path, storage: str
) -> None:
    """In a pool of `worker` processes no `launch` is left to close the study in MLflow: the worker
    that finds every budget met with nothing running ends the parent run, and any trial run still
    RUNNING that no trial records (its worker was killed between creating the run and recording it
    on the trial; the chaos soak met this) is ended as KILLED."""
    from mlflow.tracking import MlflowClient

    from irnn_search.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "mlartifacts"))
    (study,) = open_studies(load_spec(_spec(tmp_path, trials=2, steps=20)), storage, tracker).values()
    parent = study.user_attrs["mlflow_parent_run_id"]
    orphan = tracker.trial_run(
        experiment_id=study.user_attrs["mlflow_experiment_id"],
        parent_run_id=parent,
        study_name=study.study_name,
        trial_number=0,
        params={},
    )
    studies = load_studies(storage)
    assert work(studies, checkpoint_root=tmp_path / "c", stop=threading.Event(), tracker=tracker) == 2

    client = MlflowClient(tracker.tracking_uri)
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(orphan).info.status == "KILLED"
    for t in studies[study.study_name].trials:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


def test_a_worker_stopped_or_leaving_while_trials_run_elsewhere_leaves_the_parent_run_open(
    tmp_path: Path, storage: str
) -> None:
    from mlflow.tracking import MlflowClient

    from irnn_search.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "mlartifacts"))
    (study,) = open_studies(load_spec(_spec(tmp_path, trials=2, steps=20)), storage, tracker).values()
    other = optuna.load_study(study_name=study.study_name, storage=storage)
    other.ask()  # a trial in flight on another worker: the budget is met, the study is not done
    work(load_studies(storage), checkpoint_root=tmp_path / "c", stop=threading.Event(), tracker=tracker)
    stop = threading.Event()
    stop.set()
    work(load_studies(storage), checkpoint_root=tmp_path / "c", stop=stop, tracker=tracker)
    assert MlflowClient(tracker.tracking_uri).get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "RUNNING"


def test_a_trial_whose_worker_died_after_recording_its_outcome_counts_once_as_its_lineage(
    tmp_path: Path, storage: str
) -> None:
    """A worker records a trial's outcome, then tells Optuna: SIGKILLed between the two (seen in
    the chaos soak), it leaves a RUNNING trial that says ``complete``. The janitor fails it and
    re-queues it; the failed trial must read released (``lost``), not count beside its copy."""
    import dataclasses

    from irnn_search.service.budget import budget_left
    from irnn_search.service.recovery import Janitor, released

    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=2)), warm_start=False)
    study = open_studies(spec, storage)["irnn"]
    dying = study.ask()
    dying.suggest_float("identity_scale", 0.1, 1.0)
    dying.set_user_attr("outcome", "complete")  # ...and the worker dies before `tell`
    frozen = study.tell(dying, state=TrialState.FAIL)  # what the janitor's fail_stale_trials does
    Janitor().on_stale(study, frozen)

    fresh = optuna.load_study(study_name=study.study_name, storage=storage)  # no cached copies
    failed = fresh.trials[dying.number]
    assert failed.user_attrs["outcome"] == "lost" and released(failed)
    u = usage(fresh)
    assert (u.finished, u.waiting) == (0, 1), "the lineage counts once: as its waiting copy"
    assert budget_left(fresh, spec.model("irnn"), u)


def test_a_waiting_requeued_attempt_runs_even_when_the_budget_reads_as_met(tmp_path: Path, storage: str) -> None:
    """However the count came to read full (a lineage counted twice: a janitor that died before
    marking its trial lost, or an older version's), a copy of a released trial left WAITING would
    never finish its lineage: a worker runs it."""
    import dataclasses

    from irnn_search.service.budget import budget_left
    from irnn_search.service.recovery import requeue
    from irnn_search.service.worker import open_for_work

    spec = dataclasses.replace(load_spec(_spec(tmp_path, trials=2, steps=20)), warm_start=False)
    study = open_studies(spec, storage)["irnn"]
    done = study.ask()
    done.suggest_float("identity_scale", 0.1, 1.0)
    study.tell(done, 0.5)
    dying = study.ask()
    dying.suggest_float("identity_scale", 0.1, 1.0)
    dying.set_user_attr("outcome", "complete")  # its worker died before `tell`...
    frozen = study.tell(dying, state=TrialState.FAIL)
    requeue(study, frozen, "lost")  # ...and it was re-queued without being marked lost
    assert not budget_left(study, spec.model("irnn")), "the lineage counts twice: the budget reads as met"

    studies, janitor = open_for_work(storage, [study.study_name], heartbeat_s=1, grace_s=3)
    ran = work(studies, checkpoint_root=tmp_path / "c", stop=threading.Event(), janitor=janitor)
    assert ran == 1
    (copy,) = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == dying.number]
    assert copy.state == TrialState.COMPLETE
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
