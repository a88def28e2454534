from __future__ import annotations

import json
import subprocess
import sys
import tomllib
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


def test_train_uses_one_thread_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("IRNN_SEARCH_THREADS", raising=False)
    torch.set_num_threads(2)  # what torch would pick on this machine's 2 cores
    assert runner.invoke(app, ["train", *SMALL, "--json"]).exit_code == 0
    assert torch.get_num_threads() == 1
    assert runner.invoke(app, ["train", *SMALL, "--threads", "2", "--json"]).exit_code == 0
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("IRNN_SEARCH_THREADS", "2")
    torch.set_num_threads(1)
    assert runner.invoke(app, ["train", *SMALL, "--json"]).exit_code == 0
    assert torch.get_num_threads() == 2


def test_version_prints_the_package_version_and_the_git_revision() -> None:
    from irnn_search import __version__
    from irnn_search.version import code_version, revision

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == code_version() + "\n"
    assert code_version() == f"{__version__} (git {revision()})"
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert __version__ == pyproject["project"]["version"]
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parents[1]), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:  # a checkout: the revision is its commit
        assert head.stdout.startswith(revision().removesuffix("-dirty"))
        assert len(revision().removesuffix("-dirty")) == 12


def test_studies_lists_each_built_in_spec_on_one_line_with_its_description() -> None:
    from irnn_search.bundled import builtin_specs, spec_description

    result = runner.invoke(app, ["studies"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    specs = builtin_specs()
    assert {"adding-smoke", "pmnist"} <= set(specs)
    assert [line.split()[0] for line in lines] == list(specs)
    for line, path in zip(lines, specs.values(), strict=True):
        assert spec_description(path) and line.endswith(spec_description(path))


def test_studies_copy_writes_the_spec_verbatim_and_never_overwrites(tmp_path: Path) -> None:
    from irnn_search.bundled import builtin_specs

    dest = tmp_path / "my.toml"
    first = runner.invoke(app, ["studies", "copy", "pmnist", str(dest)])
    assert first.exit_code == 0, first.output
    assert dest.read_bytes() == builtin_specs()["pmnist"].read_bytes()
    dest.write_text("# mine\n")
    again = runner.invoke(app, ["studies", "copy", "adding", str(dest)])
    assert again.exit_code == 2 and dest.read_text() == "# mine\n"
    assert len(again.output.strip().splitlines()) == 1 and "already exists" in again.output
    unknown = runner.invoke(app, ["studies", "copy", "nope", str(tmp_path / "x.toml")])
    assert unknown.exit_code == 2 and "adding-smoke" in unknown.output and not (tmp_path / "x.toml").exists()


def test_launch_finds_a_built_in_spec_and_records_the_code_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa

    from irnn_search.settings import Settings
    from irnn_search.version import code_version

    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    args = ["launch", "adding-smoke", "--no-run", "--no-track", "--studies-dir", str(tmp_path / "mine")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    engine = sa.create_engine(Settings.from_env().db_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT spec_name, package_version FROM irnn_launches")).all()
    finally:
        engine.dispose()
    assert stored == [("adding-smoke", code_version())]
    # a file of the same name in --studies-dir wins over the built-in spec
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "adding-smoke.toml").write_text('[study]\ntask = "nonsense"\n')
    assert "nonsense" in runner.invoke(app, args).output


UNREACHABLE_PG = "postgresql+psycopg://irnn:s3cret@127.0.0.1:9/x"


@pytest.mark.parametrize(
    ("var", "url", "store"),
    [
        ("IRNN_SEARCH_MLFLOW_URI", "http://irnn:s3cret@127.0.0.1:9", "MLflow"),
        ("IRNN_SEARCH_STORAGE", UNREACHABLE_PG, "Optuna storage"),
        ("IRNN_SEARCH_DB", UNREACHABLE_PG, "experiment database"),
    ],
    ids=["mlflow", "optuna", "db"],
)
def test_a_launch_with_an_unreachable_store_registers_nothing_and_names_that_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, url: str, store: str
) -> None:
    import time

    import optuna
    import sqlalchemy as sa

    from irnn_search.settings import Settings

    for name in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(name, raising=False)
    for name in ("MAX_RETRIES", "TIMEOUT", "BACKOFF_FACTOR"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)  # MLflow's defaults: minutes of retries
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(var, url)
    started = time.monotonic()
    result = runner.invoke(app, ["launch", "adding-smoke", "--no-run", "--studies-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert time.monotonic() - started < 60  # one quick probe, not MLflow's minutes of retries
    first = next(line for line in result.output.splitlines() if line.startswith("Error:"))
    assert store in first and "Traceback" not in result.output and "s3cret" not in result.output, result.output
    others = {"MLflow", "Optuna storage", "experiment database"} - {store}
    assert not any(other in first for other in others), result.output
    # nothing registered in any store that was reachable
    settings = Settings.from_env()
    if var != "IRNN_SEARCH_STORAGE" and Path(settings.storage_url.removeprefix("sqlite:///")).exists():
        assert optuna.get_all_study_names(settings.storage_url) == []
    db = Path(settings.db_url.removeprefix("sqlite:///"))
    if var != "IRNN_SEARCH_DB" and db.exists():
        engine = sa.create_engine(settings.db_url)
        try:
            with engine.connect() as conn:
                tables = sa.inspect(conn).get_table_names()
                assert "irnn_launches" not in tables or not conn.execute(sa.text("SELECT * FROM irnn_launches")).all()
        finally:
            engine.dispose()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b'[study]\ndescription = "caf\xe9"\n'), "not UTF-8"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
    ids=["not-utf8", "folder"],
)
def test_a_spec_path_that_is_not_a_utf8_file_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: object, message: str
) -> None:
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(tmp_path / "home"))
    spec = tmp_path / "bad.toml"
    make(spec)  # type: ignore[operator]
    result = runner.invoke(app, ["launch", str(spec), "--no-track"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(spec) in lines[0], result.output
    assert "does not exist" not in result.output and not (tmp_path / "home").exists()


def _home_under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "home"


def _home_is_a_file(tmp_path: Path) -> Path:
    (tmp_path / "home").write_text("")
    return tmp_path / "home"


def _home_read_only(tmp_path: Path) -> Path:
    import os

    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        return tmp_path / "ro"
    if not Path("/sys/kernel").is_dir():  # root writes into any folder but those of a kernel file system
        pytest.skip("no read-only folder for root here")
    return Path("/sys/kernel")


@pytest.mark.parametrize("command", [["launch", "adding-smoke", "--no-track"], ["worker", "--no-track"]])
@pytest.mark.parametrize("home", [_home_under_a_file, _home_is_a_file, _home_read_only])
def test_a_state_folder_that_cannot_be_created_or_written_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], home: object
) -> None:
    for var in ("IRNN_SEARCH_STORAGE", "IRNN_SEARCH_DB", "IRNN_SEARCH_MLFLOW_URI"):
        monkeypatch.delenv(var, raising=False)
    path = home(tmp_path)  # type: ignore[operator]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(path))
    result = runner.invoke(app, [*command, "--studies-dir", str(tmp_path)] if command[0] == "launch" else command)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "IRNN_SEARCH_HOME" in lines[0] and str(path) in lines[0], result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing half-written


def test_report_on_a_home_with_no_store_is_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "nowhere"
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(home))
    for var in ("STORAGE", "DB", "MLFLOW_URI"):
        monkeypatch.delenv(f"IRNN_SEARCH_{var}", raising=False)
    result = runner.invoke(app, ["report", "adding-smoke"])
    assert result.exit_code == 2, result.output
    assert "no study store at" in result.output and "Traceback" not in result.output
    assert "irnn-search launch adding-smoke" in result.output
    assert not (home / "optuna.db").exists(), "reading a report made no empty store"


def test_a_packed_run_resumed_from_its_checkpoint_retraces_the_uninterrupted_one(tmp_path: Path) -> None:
    args = ["train", *SMALL, "--packed", "--json"]
    assert runner.invoke(app, [*args, "--checkpoint-dir", str(tmp_path)]).exit_code == 0
    resumed = json.loads(runner.invoke(app, [*args, "--checkpoint-dir", str(tmp_path), "--steps", "40"]).stdout)
    straight = json.loads(runner.invoke(app, [*args, "--steps", "40"]).stdout)
    assert resumed["resumed_from"] == 20 and resumed["steps"] == straight["steps"] == 40
    assert resumed["final"]["val_mse"] == straight["final"]["val_mse"]
