"""The scale-out recipes of docs/deploy.md (docs/recipes/): their worker commands are real.

Each recipe's worker command line is taken from the file as written (shell defaults
``${VAR:-default}`` expanded) and run: its flags must parse in the real CLI, and (slow) the SLURM
script itself runs a tiny study on embedded stores, and stops gracefully on SIGTERM with the trial
re-queued, as a preempted array task would.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from irnn_search.cli import app
from irnn_search.settings import PREFIX, Settings

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes"
SBATCH = RECIPES / "slurm-workers.sbatch"
K8S = RECIPES / "k8s-workers.yaml"
runner = CliRunner()

TINY = """
[study]
task = "adding"
task_options = {{ T = 5, val_size = 32, test_size = 32 }}
steps = {steps}
report_every = {every}
batch_size = 4
pruner = {{ name = "none" }}
warm_start = false
budget = {{ trials = {trials} }}

[models.irnn]
hidden_size = 4
"""


def shell_defaults(text: str) -> str:
    """``${VAR:-default}`` -> ``default``: the command as it runs with none of the variables set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def sbatch_worker_argv() -> list[str]:
    lines = [line for line in SBATCH.read_text().splitlines() if re.match(r"\s*exec irnn-search ", line)]
    assert len(lines) == 1, "the script ends by exec-ing one irnn-search command"
    argv = shlex.split(shell_defaults(lines[0]))
    return argv[2:]


def sbatch_directives() -> list[str]:
    return [
        line.removeprefix("#SBATCH ").strip() for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH ")
    ]


def k8s_documents() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def k8s_job(name: str) -> dict[str, Any]:
    return next(d for d in k8s_documents() if d["kind"] == "Job" and d["metadata"]["name"] == name)


def test_each_recipes_worker_command_parses_in_the_cli() -> None:
    container = k8s_job("irnn-search-workers")["spec"]["template"]["spec"]["containers"][0]
    launch = k8s_job("irnn-search-launch")["spec"]["template"]["spec"]["containers"][0]
    commands = {"slurm": sbatch_worker_argv(), "k8s": container["args"], "k8s launch": launch["args"]}
    assert commands["slurm"][:3] == commands["k8s"][:3] == ["worker", "--device", "cuda:0"]
    for name, argv in commands.items():
        result = runner.invoke(app, [*argv, "--help"])
        assert result.exit_code == 0, f"{name}: `irnn-search {shlex.join(argv)}` does not parse:\n{result.output}"
    assert runner.invoke(app, ["worker", "--gpus", "1", "--help"]).exit_code != 0  # the check can fail


def test_slurm_recipe_maps_the_time_limit_and_preemption_to_sigterm_and_requeues() -> None:
    directives = sbatch_directives()
    assert "--gres=gpu:1" in directives and "--requeue" in directives
    # B: the batch shell gets the signal; it has exec'd the worker, so the worker gets it
    signal_opt = next(d for d in directives if d.startswith("--signal="))
    assert re.fullmatch(r"--signal=B:TERM@(\d+)", signal_opt) and int(signal_opt.rsplit("@", 1)[1]) >= 60
    assert subprocess.run(["bash", "-n", str(SBATCH)], check=False).returncode == 0


def test_k8s_recipe_takes_the_settings_from_a_secret_and_gives_the_worker_time_to_checkpoint() -> None:
    pod = k8s_job("irnn-search-workers")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60 and pod["restartPolicy"] == "OnFailure"
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "irnn-search-stores"}}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert all(k.startswith(PREFIX) for k in env) and "PASSWORD" not in K8S.read_text().replace("PASSWORD@", "")
    settings = Settings.from_env(env)  # valid values
    # checkpoints on the shared volume, so a re-queued trial resumes in another pod
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.home) == mounts["state"]
    claim = next(v for v in pod["volumes"] if v["name"] == "state")["persistentVolumeClaim"]["claimName"]
    pvc = next(d for d in k8s_documents() if d["kind"] == "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def _launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, steps: int, every: int, trials: int) -> dict[str, str]:
    """A tiny study on embedded stores under tmp_path/home; the environment a worker needs for it."""
    for var in [v for v in os.environ if v.startswith(PREFIX)]:
        monkeypatch.delenv(var)
    home = tmp_path / "home"
    monkeypatch.setenv("IRNN_SEARCH_HOME", str(home))
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY.format(steps=steps, every=every, trials=trials))
    result = runner.invoke(app, ["launch", str(spec), "--no-run", "--no-track"])
    assert result.exit_code == 0, result.output
    env_file = tmp_path / "env"
    env_file.write_text("")  # embedded stores: nothing to set
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(PREFIX)},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "IRNN_ENV_FILE": str(env_file),
        "IRNN_SEARCH_HOME": str(home),
        "IRNN_DEVICE": "cpu",
        "SLURM_CPUS_PER_TASK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def _trials(home: Path) -> list[optuna.trial.FrozenTrial]:
    storage = Settings.from_env({"IRNN_SEARCH_HOME": str(home)}).storage_url
    return optuna.load_study(study_name="tiny.irnn", storage=storage).get_trials(deepcopy=False)


@pytest.mark.slow
def test_the_slurm_script_runs_its_worker_until_the_budget_is_met(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _launch(tmp_path, monkeypatch, steps=10, every=5, trials=2)
    done = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "every budget is met" in done.stderr and "on cpu" in done.stderr
    trials = _trials(tmp_path / "home")
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_sigterm_to_the_slurm_batch_shell_reaches_the_worker_which_requeues_its_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _launch(tmp_path, monkeypatch, steps=200_000, every=50, trials=1)
    proc = subprocess.Popen(["bash", str(SBATCH)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 240
        while "running on cpu" not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
            assert proc.poll() is None, seen
        assert "running on cpu" in seen, seen
        time.sleep(2)  # a few steps in, so there is progress to checkpoint
        proc.send_signal(signal.SIGTERM)  # what SLURM sends the batch shell (--signal=B:TERM, preemption)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 0, seen + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "checkpointed and re-queued" in rest and "stopped" in rest
    first, again = _trials(tmp_path / "home")
    # the interrupted trial is released (failed, outcome "interrupted") and a copy waits for the next
    # worker, which resumes it from the checkpoint of its lineage
    assert first.state == TrialState.FAIL and first.user_attrs["outcome"] == "interrupted"
    assert again.state == TrialState.WAITING and again.user_attrs["retry_of"] == first.number
    assert list((tmp_path / "home" / "checkpoints").rglob("*.pt")), "the interrupted trial left a checkpoint"
