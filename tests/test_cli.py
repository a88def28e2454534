from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from irnn_search.cli import EXIT_DIVERGED, app

runner = CliRunner()
SMALL = ["--task", "adding", "--T", "10", "--hidden", "8", "--steps", "20", "--eval-every", "10", "-t", "val_size=50"]


def test_train_json_prints_one_summary_object() -> None:
    result = runner.invoke(
        app, ["train", *SMALL, "--model", "irnn", "--clip", "1", "--identity-scale", "0.5", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "adding" and summary["model"] == "irnn"
    assert summary["model_options"]["identity_scale"] == 0.5 and summary["task_options"]["T"] == 10
    assert summary["baseline"]["mse"] == pytest.approx(1 / 6)
    assert summary["outcome"] == "completed" and summary["steps"] == 20 and summary["steps_per_s"] > 0
    assert set(summary["final"]) >= {"val_mse", "train_loss"} and summary["metric"] == "val_mse"
    assert summary["train"]["clip"] == 1.0 and summary["train"]["batch_size"] == 16


def test_train_prints_a_summary_table_and_writes_the_learning_curve(tmp_path: Path) -> None:
    plot = tmp_path / "curve.png"
    result = runner.invoke(app, ["train", *SMALL, "--model", "lstm", "--plot", str(plot), "--test"])
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout and "memoryless baseline" in result.stdout and "test" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diverging_run_reports_the_reason_and_exits_3() -> None:
    args = ["train", *SMALL, "--optimizer", "sgd", "--lr", "100", "--clip", "off", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_DIVERGED
    summary = json.loads(result.stdout)
    assert summary["outcome"] == "diverged" and summary["reason"].startswith("diverged: ")


def test_checkpoint_dir_resumes_a_finished_run_without_retraining(tmp_path: Path) -> None:
    args = ["train", *SMALL, "--checkpoint-dir", str(tmp_path), "--json"]
    first = json.loads(runner.invoke(app, args).stdout)
    longer = json.loads(runner.invoke(app, [*args[:-1], "--steps", "30", "--json"]).stdout)
    assert first["steps"] == 20 and longer["resumed_from"] == 20 and longer["steps"] == 30


@pytest.mark.parametrize("damage", ["empty", "truncated", "payload"])
def test_a_damaged_or_planted_last_pt_is_one_line_and_exit_2(tmp_path: Path, damage: str) -> None:
    from tests.test_train import plant_payload

    args = ["train", *SMALL, "--checkpoint-dir", str(tmp_path), "--json"]
    assert runner.invoke(app, args).exit_code == 0
    last = tmp_path / "last.pt"
    if damage == "payload":
        plant_payload(last, tmp_path / "ran")
    else:
        last.write_bytes(b"" if damage == "empty" else last.read_bytes()[:100])
    result = runner.invoke(app, [*args[:-1], "--steps", "30"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "ran").exists()
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(last) in errors[0], result.output  # one line, naming the file
    assert ("refused" if damage == "payload" else "not a readable checkpoint") in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "addition"], "unknown task 'addition'; valid tasks: adding, copy"),
        (["--model", "gru"], "unknown model 'gru'; valid models: irnn, rnn, lstm"),
        (["--model", "lstm", "--identity-scale", "1"], "model 'lstm' has no option 'identity_scale'"),
        (["--task", "smnist", "--T", "5"], "task 'smnist' has no option 'T'"),
        (["--optimizer", "lbfgs"], "optimizer must be one of sgd, adam, rmsprop"),
        (["--clip", "sometimes"], "--clip must be a positive number or 'off'"),
        (["--lr", "-1"], "lr must be a positive number"),
        (["--T", "1"], "T must be >= 2"),
        (["-t", "placement"], "--task-opt expects KEY=VALUE"),
        (["-t", "placement=middle"], "halves, anywhere"),
        (["-m", "hidden_size=lots"], "expected an integer"),
        (["--device", "cuda:3"], "no CUDA device"),
    ],
)
def test_bad_options_give_one_clear_error_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["train", "--steps", "2", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_missing_dataset_is_a_clear_error_before_training(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--task", "digits-smoke", "--data-dir", str(tmp_path), "--steps", "2"])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "t10k-images-idx3-ubyte" in out and str(tmp_path) in out and "Traceback" not in out


def test_tasks_and_models_list_what_exists_with_their_options() -> None:
    tasks = json.loads(runner.invoke(app, ["tasks", "--json"]).stdout)
    names = [t["name"] for t in tasks]
    assert names == ["adding", "copy", "smnist", "pmnist", "ptb", "digits-smoke", "digits-smoke-permuted", "ptb-smoke"]
    adding = tasks[0]
    assert {o["name"]: o["default"] for o in adding["options"]}["placement"] == "halves"
    models = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    names = ["irnn", "rnn", "lstm", "rnn-orth", "exprnn", "dtriv", "cayley", "scornn", "nnrnn", "asrnn", "eurnn"]
    assert [m["name"] for m in models] == names
    assert "identity_scale" in [o["name"] for o in models[0]["options"]]
    table = runner.invoke(app, ["tasks"])
    assert table.exit_code == 0 and "digits-smoke" in table.stdout


def test_help_does_not_import_torch() -> None:
    # --help must be instant: the CLI module may not pull in torch, optuna or mlflow at import time.
    code = "import sys, irnn_search.cli; print(sorted(m for m in ('torch', 'optuna', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "--identity-scale" in result.stdout


def test_models_tasks_and_train_import_without_the_service_stack() -> None:
    code = (
        "import sys, irnn_search.train, irnn_search.tasks.mnist, irnn_search.tasks.ptb; "
        "heavy = ('optuna', 'mlflow', 'sqlalchemy', 'typer', 'rich', 'matplotlib'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_db_commands_upgrade_report_and_downgrade_the_experiment_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path))
    monkeypatch.delenv("IRNN_SEARCH_DB", raising=False)
    up = runner.invoke(app, ["db", "upgrade"])
    assert up.exit_code == 0 and "at revision 0002" in up.stdout
    assert "up to date" in runner.invoke(app, ["db", "current"]).stdout
    down = runner.invoke(app, ["db", "downgrade", "base"])
    assert down.exit_code == 0 and "at revision None" in down.stdout
    assert "behind" in runner.invoke(app, ["db", "current"]).stdout
    monkeypatch.setenv("IRNN_SEARCH_DB", "postgresql+psycopg://u:secret@127.0.0.1:1/x")
    bad = runner.invoke(app, ["db", "current"])
    assert bad.exit_code == 2 and "secret" not in bad.output and "Traceback" not in bad.output
