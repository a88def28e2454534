from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import torch

from irnn_search.checkpoint import CheckpointError, TrainError
from irnn_search.models import build_model
from irnn_search.models.base import ParamGroup
from irnn_search.tasks import build_task
from irnn_search.train import TrainConfig, build_optimizer, seed_everything, train


def _run(
    tmp: Path | None = None,
    *,
    steps: int = 40,
    model: str = "irnn",
    task: str = "adding",
    task_options: dict[str, object] | None = None,
    seed: int = 0,
    **cfg: object,
):
    the_task = build_task(task, task_options or {"T": 12, "val_size": 64}, seed=seed, batch_size=8)
    seed_everything(seed)
    the_model = build_model(
        model, {"hidden_size": 16}, input_size=the_task.input_size, output_size=the_task.output_size
    )
    config = TrainConfig(**{"steps": steps, "eval_every": 10, "clip": 1.0, "seed": seed, **cfg})  # type: ignore[arg-type]
    return the_model, the_task, config


@pytest.mark.slow
def test_irnn_learns_the_adding_problem_t30_five_times_below_baseline_within_a_minute() -> None:
    task = build_task("adding", {"T": 30, "val_size": 1000}, seed=2, batch_size=32)
    seed_everything(2)
    model = build_model("irnn", {"hidden_size": 64}, input_size=2, output_size=1)
    target = task.baseline()["mse"] / 5
    started = time.perf_counter()
    result = train(
        model,
        task,
        TrainConfig(steps=4000, optimizer="adam", lr=3e-3, clip=1.0, eval_every=250, seed=2),
        report=lambda step, m: m["val_mse"] < target,  # stop as soon as the goal is met
    )
    elapsed = time.perf_counter() - started
    assert result.best["val_mse"] < target, result.history
    assert elapsed < 60


def test_resumed_run_equals_an_uninterrupted_run_bit_for_bit(tmp_path: Path) -> None:
    model_a, task, config = _run(steps=40)
    full = train(model_a, task, config)

    model_b, task_b, _ = _run(steps=40)
    half = train(model_b, task_b, TrainConfig(**{**config.__dict__, "steps": 20}), checkpoint_dir=tmp_path)
    assert half.step == 20 and (tmp_path / "last.pt").exists()
    # A fresh process would rebuild the model from scratch (other init) and load the checkpoint.
    seed_everything(123)
    model_c, task_c, _ = _run(steps=40, seed=0)
    with torch.no_grad():
        for p in model_c.parameters():
            p.add_(1.0)
    resumed = train(model_c, task_c, config, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 20 and resumed.step == 40
    for p, q in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [h["val_mse"] for h in resumed.history] == [h["val_mse"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_stop_event_checkpoints_and_resume_finishes_identically(tmp_path: Path) -> None:
    model_a, task, config = _run(steps=30)
    full = train(model_a, task, config)

    model_b, task_b, _ = _run(steps=30)
    stop = threading.Event()
    seen = []

    def progress(step: int, loss: float) -> None:
        seen.append(step)
        if step == 13:  # mid-interval: the checkpoint must carry the partial interval too
            stop.set()

    stopped = train(model_b, task_b, config, progress=progress, stop=stop, checkpoint_dir=tmp_path)
    assert stopped.outcome == "interrupted" and stopped.step == 13
    resumed = train(model_b, task_b, config, checkpoint_dir=tmp_path)
    assert resumed.outcome == "completed"
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.final["val_mse"] == full.final["val_mse"]


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    model, task, config = _run(steps=10)
    train(model, task, config, checkpoint_dir=tmp_path)
    model2, task2, config2 = _run(steps=10, lr=5e-2)
    with pytest.raises(TrainError, match="belongs to a different run"):
        train(model2, task2, config2, checkpoint_dir=tmp_path)


class _Payload:
    """A pickled object that runs a shell command when unpickled (what a planted ``last.pt`` holds)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def plant_payload(path: Path, marker: Path) -> None:
    """Write ``path`` as a checkpoint whose unpickling would create ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "identity": _Payload(marker), "step": 0}, path)


@pytest.mark.parametrize("family", ["irnn", "lstm", "exprnn", "scornn", "nnrnn", "asrnn"])
def test_every_checkpoint_written_loads_as_tensors_and_plain_data(tmp_path: Path, family: str) -> None:
    model, task, config = _run(steps=10, model=family)
    train(model, task, config, checkpoint_dir=tmp_path)
    for name in ("last.pt", "best.pt"):
        assert torch.load(tmp_path / name, weights_only=True)["step"] == 10


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    plant_payload(tmp_path / "ckpt" / "last.pt", marker)
    model, task, config = _run(steps=10)
    with pytest.raises(CheckpointError, match=r"last.pt was refused: it names the Python object posix.system") as exc:
        train(model, task, config, checkpoint_dir=tmp_path / "ckpt")
    assert not marker.exists()
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 torn", "half"])
def test_an_empty_or_truncated_checkpoint_is_one_clear_error(tmp_path: Path, content: bytes | str) -> None:
    model, task, config = _run(steps=10)
    train(model, task, config, checkpoint_dir=tmp_path)
    whole = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(whole[: len(whole) // 2] if content == "half" else content)  # type: ignore[arg-type]
    model, task, config = _run(steps=20)
    with pytest.raises(CheckpointError, match=r"last.pt is not a readable checkpoint \(truncated or corrupt") as exc:
        train(model, task, config, checkpoint_dir=tmp_path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 100.0), ("adam", 10.0), ("rmsprop", 10.0)])
def test_huge_learning_rate_without_clipping_ends_as_diverged_not_a_crash(optimizer: str, lr: float) -> None:
    model, task, config = _run(steps=200, optimizer=optimizer, lr=lr, clip=None)
    result = train(model, task, config)
    assert result.outcome == "diverged"
    assert result.reason.startswith("diverged: ")
    # The bad update is never applied and a NaN never becomes the best value.
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(v) for v in result.best.values())


def test_a_huge_pre_clip_gradient_norm_is_not_divergence_when_clipping_is_on() -> None:
    # The IRNN paper's SGD settings (lr 0.01, clip 10 or 100, W_hh = I) see pre-clip norms above
    # 1e8 in their first steps; the first real adding study ended them as "diverged" at steps 2 and
    # 10. With clipping the update is bounded, so the run goes on.
    model, task, config = _run(steps=30, max_grad_norm=1e-6, clip=1.0)
    result = train(model, task, config)
    assert result.outcome == "completed", result.reason
    # Without clipping the same norm limit still ends the run, at its first step.
    model, task, config = _run(steps=30, max_grad_norm=1e-6, clip=None)
    result = train(model, task, config)
    assert result.outcome == "diverged" and "no clipping" in result.reason and result.step == 0


def test_exploding_hidden_state_is_detected() -> None:
    model, task, config = _run(steps=5, max_hidden=1e-3)
    result = train(model, task, config)
    assert result.outcome == "diverged" and "hidden state" in result.reason


def test_report_hook_receives_validation_metrics_and_can_stop_the_run() -> None:
    model, task, config = _run(steps=50)
    calls = []

    def report(step: int, metrics: dict[str, float]) -> bool:
        calls.append((step, metrics))
        return step >= 20

    result = train(model, task, config, report=report)
    assert [s for s, _ in calls] == [10, 20]
    assert {"val_mse", "val_loss", "train_loss", "grad_norm", "steps_per_s"} <= set(calls[0][1])
    assert result.outcome == "stopped" and result.step == 20
    assert result.steps_per_s > 0


def test_best_checkpoint_holds_the_best_validation_model(tmp_path: Path) -> None:
    model, task, config = _run(steps=30)
    result = train(model, task, config, checkpoint_dir=tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["best"]["val_mse"] == result.best["val_mse"]
    assert best["step"] == int(result.best["step"])


def test_gradient_clipping_bounds_the_update() -> None:
    model, task, _ = _run()
    before = [p.detach().clone() for p in model.parameters()]
    train(model, task, TrainConfig(steps=1, optimizer="sgd", lr=1.0, clip=1e-3, eval_every=1))
    with torch.no_grad():
        moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert 0 < float(moved) <= 1e-3 * (1 + 1e-5)


def test_constrained_groups_get_their_own_learning_rate() -> None:
    model, _, _ = _run()
    rec = model.rnn.weight_hh_l0
    others = [p for p in model.parameters() if p is not rec]
    model.parameter_groups = lambda: [  # type: ignore[method-assign]
        ParamGroup("unconstrained", others),
        ParamGroup("orthogonal", [rec], kind="constrained", options={"weight_decay": 0.5}),
    ]
    opt = build_optimizer(model, TrainConfig(optimizer="rmsprop", lr=1e-3, lr_orth=1e-4, alpha=0.9))
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert opt.param_groups[1]["weight_decay"] == 0.5 and opt.param_groups[1]["alpha"] == 0.9


def test_sgd_momentum_and_adam_are_built_as_asked() -> None:
    model, _, _ = _run()
    sgd = build_optimizer(model, TrainConfig(optimizer="sgd", momentum=0.9, lr=0.01))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="adam")), torch.optim.Adam)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer": "lbfgs"}, "optimizer must be one of sgd, adam, rmsprop"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"clip": -1.0}, "clip must be >= 0"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"alpha": 1.0}, "alpha must be in"),
    ],
)
def test_impossible_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(TrainError, match=message):
        TrainConfig(**options)  # type: ignore[arg-type]


def test_lstm_and_tanh_rnn_train_through_the_same_loop() -> None:
    for family in ("lstm", "rnn"):
        model, task, config = _run(steps=20, model=family)
        result = train(model, task, config)
        assert result.outcome == "completed" and math.isfinite(result.final["val_mse"])


def test_copy_task_trains_with_all_step_readout() -> None:
    model, task, config = _run(steps=20, task="copy", task_options={"T": 10, "val_size": 32})
    result = train(model, task, config)
    assert result.outcome == "completed" and 0 <= result.final["val_accuracy"] <= 1


def test_truncated_bptt_resume_carries_the_hidden_state(tmp_path: Path, shared_data: Path) -> None:
    options = {"data_dir": str(shared_data), "bptt": 20, "eval_max_tokens": 400}

    def build():
        task = build_task("ptb-smoke", options, seed=0, batch_size=4)
        seed_everything(0)
        model = build_model(
            "lstm",
            {"hidden_size": 8},
            input_size=task.input_size,
            output_size=task.output_size,
            vocab_size=task.vocab_size,
        )
        return model, task

    config = TrainConfig(steps=12, eval_every=4, optimizer="adam", lr=1e-2, clip=1.0)
    model_a, task_a = build()
    full = train(model_a, task_a, config)
    assert full.outcome == "completed" and full.final["val_bpc"] < 6.0  # log2(49) ≈ 5.6 at chance

    model_b, task_b = build()
    train(model_b, task_b, TrainConfig(**{**config.__dict__, "steps": 6}), checkpoint_dir=tmp_path)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["state"] is not None  # mid-epoch carried state
    model_c, task_c = build()
    resumed = train(model_c, task_c, config, checkpoint_dir=tmp_path)
    # The 6-step run also evaluated at its own end (step 6); every evaluation of the full run recurs.
    by_step = {h["step"]: h["val_bpc"] for h in resumed.history}
    assert all(by_step[h["step"]] == h["val_bpc"] for h in full.history)
    for p, q in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p, q)
