"""Checks of the environment before any trial is spent: the data a spec needs and the device.

An environmental failure (missing data, a device that does not exist, a full disk) says nothing
about the hyperparameters: it must never fail a trial, count against a budget or consume a queued
(published-settings) trial. ``launch`` refuses a spec whose data it cannot load before it creates
any study; a worker checks each study's data when it starts and leaves alone the studies it cannot
run; and a trial that meets such a failure anyway (a file deleted meanwhile, a disk that filled up)
is released back to the queue (``environmental``, ``Attempt.failed``).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from typing import Any

from irnn_search.search.spec import StudySpec
from irnn_search.tasks import TaskError, build_task
from irnn_search.tasks.datafiles import DataError

#: OSError numbers that say the machine, not the trial, is at fault
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class EnvironmentProblem(RuntimeError):
    """This machine cannot run the trials of a study (data, device or disk), whatever their parameters."""


def one_line(exc: BaseException) -> str:
    """An error's message on one line (a download error lists every mirror on its own line)."""
    return " ".join(str(exc).split())


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used here (None when it can): no CUDA, or no such CUDA device."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        return f"--device {device}: not a device name ({one_line(exc)}); use cpu, cuda or cuda:N"
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        return f"--device {device}: only cpu and cuda devices are supported"
    if not torch.cuda.is_available():
        return f"--device {device}: no CUDA device is available here; use --device cpu"
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        return f"--device {device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
    return None


def data_problem(spec: StudySpec) -> str | None:
    """Why the data of ``spec``'s task cannot be loaded here (None when it can, or the task needs
    none). Loads (downloading if needed, with checksum checks) exactly what a trial would."""
    try:
        task = build_task(spec.task, spec.task_options, seed=0, batch_size=spec.batch_size)
        prepare = getattr(task, "prepare", None)
        if callable(prepare):
            prepare()
    except TaskError as exc:  # DataError is one: missing, corrupt or not downloadable
        return f"the data of task {spec.task!r} cannot be loaded on this machine: {one_line(exc)}"
    return None


def unfit_studies(specs: Mapping[str, StudySpec], device: str) -> dict[str, str]:
    """Study name -> why this worker cannot run its trials, for those it cannot. The data of one
    task and options is loaded once, however many studies (models) share it."""
    if (why := device_problem(device)) is not None:
        return dict.fromkeys(specs, why)
    seen: dict[str, str | None] = {}
    out: dict[str, str] = {}
    for name, spec in specs.items():
        key = json.dumps([spec.task, spec.to_dict().get("task_options"), spec.batch_size], sort_keys=True, default=str)
        if key not in seen:
            seen[key] = data_problem(spec)
        if seen[key] is not None:
            out[name] = seen[key]  # type: ignore[assignment]
    return out


def environmental(exc: BaseException) -> str | None:
    """Why ``exc``, raised by a trial, is the machine's fault rather than the trial's (None if not)."""
    if isinstance(exc, DataError):
        return one_line(exc)
    if isinstance(exc, EnvironmentProblem):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
        return f"{type(exc).__name__}: {one_line(exc)}"
    return None


# -- memory -------------------------------------------------------------------------------------
#: floats kept per time step, batch element and hidden unit for backpropagation through time (a
#: rough order of magnitude, not a measurement of every kernel): the fused library kernels of IRNN
#: and the tanh RNN keep the hidden state and its pre-activation (and a gradient of each); the LSTM
#: its four gates, cell and hidden state; the parametrized families run a step loop in Python that
#: keeps the matmul output, the pre-activation and the nonlinearity's intermediates at each step.
ACTIVATION_FLOATS = {"irnn": 4, "rnn": 4, "lstm": 12, "eurnn": 16}
ACTIVATION_FLOATS_DEFAULT = 8
#: hidden x hidden matrices of the recurrence (the LSTM's four gates)
RECURRENT_MATRICES = {"lstm": 4}
#: extra hidden x hidden work matrices of a parametrized family (the recurrent matrix it builds each
#: forward, the matrix exponential or Cayley transform's workspace and its backward)
PARAMETRIZED_WORK = 8
#: copies of every parameter: the weights, their gradient and Adam's two moments
PARAM_COPIES = 4
#: evaluation runs on chunks of up to this many sequences (no graph kept, but the inputs are whole)
EVAL_CHUNK = 500
#: the share of what the device has free now that one launch's trials may plan to use
CPU_FRACTION, CUDA_FRACTION = 0.8, 0.9
FLOAT = 4  # bytes (float32)


def trial_bytes(
    family: str, *, hidden: int, seq_len: int, batch: int, input_size: int, output_size: int
) -> tuple[int, int]:
    """A rough upper estimate of one trial's peak memory in bytes: (activations, the rest).

    activations = T x batch x hidden x 4 B x ``ACTIVATION_FLOATS[family]`` (what backpropagation
    through time keeps); the rest = the input and target tensors of a training batch and of an
    evaluation chunk, plus parameters x ``PARAM_COPIES`` (weights, gradients, Adam moments) and,
    for parametrized families, ``PARAMETRIZED_WORK`` hidden x hidden work matrices. Meant to
    refuse sizes that cannot fit by far (a T of ten million), not to pack a device to the byte.
    """
    act = seq_len * batch * hidden * FLOAT * ACTIVATION_FLOATS.get(family, ACTIVATION_FLOATS_DEFAULT)
    data = 2 * seq_len * max(batch, EVAL_CHUNK) * (input_size + output_size) * FLOAT
    gates = RECURRENT_MATRICES.get(family, 1)
    params = gates * (hidden * hidden + hidden * input_size + 2 * hidden) + hidden * output_size
    work = 0 if family in ("irnn", "rnn", "lstm") else PARAMETRIZED_WORK * hidden * hidden
    return act, data + (params * PARAM_COPIES + work) * FLOAT


def device_memory(device: str) -> tuple[int, str] | None:
    """Bytes the trials of one launch may plan to use on ``device``, and how that was found; None
    when it cannot be told (then nothing is refused)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * CUDA_FRACTION), f"{CUDA_FRACTION:.0%} of the {_gb(free)} free on {device}"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:2]}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None
    return int(available * CPU_FRACTION), f"{CPU_FRACTION:.0%} of the {_gb(available)} of RAM available"


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def memory_problem(
    family: str,
    *,
    hidden: int,
    seq_len: int,
    batch: int,
    input_size: int,
    output_size: int,
    device: str,
    trials: int = 1,
    keys: Mapping[str, str],
) -> str | None:
    """Why ``trials`` trials at once of this size cannot fit ``device`` (None when they can, or the
    device's memory cannot be told). ``keys`` names where T, the batch size and the hidden size come
    from (e.g. ``{"T": "study.task_options.T", ...}``), so the message says what to lower."""
    act, rest = trial_bytes(
        family, hidden=hidden, seq_len=seq_len, batch=batch, input_size=input_size, output_size=output_size
    )
    room = device_memory(device)
    need = (act + rest) * trials
    if room is None or need <= room[0]:
        return None
    sizes = f"{keys['T']} = {seq_len:,}, {keys['batch']} = {batch:,}, {keys['hidden']} = {hidden:,}"
    per = f" ({trials} trials at once)" if trials > 1 else ""
    return (
        f"one {family} trial needs about {_gb(need)}{per} ({sizes}; activations T x batch x hidden x "
        f"{act // max(1, seq_len * batch * hidden)} B = {_gb(act * trials)}), more than {room[1]} "
        f"({_gb(room[0])}); lower {keys['T']}, {keys['batch']} or {keys['hidden']}"
    )


def max_hidden(param: Any) -> int | None:
    """The largest hidden size a spec's ``hidden_size`` parameter can take."""
    for attr in ("value", "high"):
        if hasattr(param, attr):
            return int(getattr(param, attr))
    if hasattr(param, "choices"):
        return max(int(c) for c in param.choices)
    return None


def spec_memory_problem(spec: StudySpec, device: str, *, trials: int = 1) -> str | None:
    """The first model of ``spec`` whose largest trial (its largest hidden size) cannot fit
    ``device``, ``trials`` at once (a pack), as one line naming the keys; None when all fit."""
    from irnn_search.models import MODELS

    task = build_task(spec.task, spec.task_options, seed=0, batch_size=spec.batch_size)
    try:
        input_size, output_size = task.input_size, task.output_size
    except Exception:  # a vocabulary that needs the data (checked before this)
        input_size = output_size = 1
    t_key = "study.task_options.T" if "T" in spec.task_options else f"the {spec.task} sequence length"
    for key, model in spec.models.items():
        param = model.params.get("hidden_size")
        hidden = max_hidden(param) if param is not None else None
        if hidden is None:
            hidden = MODELS[model.family].config_cls.__dataclass_fields__["hidden_size"].default  # type: ignore[assignment]
        why = memory_problem(
            model.family,
            hidden=int(hidden),  # type: ignore[arg-type]
            seq_len=task.seq_len,
            batch=task.batch_size,
            input_size=input_size,
            output_size=output_size,
            device=device,
            trials=trials,
            keys={"T": t_key, "batch": "study.batch_size", "hidden": f"models.{key}.hidden_size"},
        )
        if why is not None:
            return f"models.{key}: {why}"
    return None


def launch_problem(spec: StudySpec, device: str, *, trials: int) -> str | None:
    """Why this machine cannot run ``spec``'s trials on ``device``, ``trials`` at once (a launch's
    workers times its pack size, all on this one device): the device, then the data, then the
    memory of the largest trial. None when it can."""
    return device_problem(device) or data_problem(spec) or spec_memory_problem(spec, device, trials=trials)


def run_memory_problem(
    *,
    task: str,
    task_options: Mapping[str, Any],
    model: str,
    model_options: Mapping[str, Any],
    batch_size: int | None,
    device: str,
    keys: Mapping[str, str],
) -> str | None:
    """Why one run of ``model`` on ``task`` cannot fit ``device``, before anything is allocated.

    None when it fits, and also when a name or an option is bad: building the run says which
    (``irnn_search.run.prepare_run``), better than a guess here. ``keys`` as for ``memory_problem``.
    """
    from irnn_search.models import MODELS

    if model not in MODELS:
        return None
    the_task = build_task(task, task_options, batch_size=batch_size)  # builds no data
    try:
        default = MODELS[model].config_cls.__dataclass_fields__["hidden_size"].default
        hidden = int(model_options.get("hidden_size", default))
        sizes = the_task.input_size, the_task.output_size
    except Exception:  # a malformed option (prepare_run says which) or a vocabulary that needs the data
        return None
    return memory_problem(
        model,
        hidden=hidden,
        seq_len=the_task.seq_len,
        batch=the_task.batch_size,
        input_size=sizes[0],
        output_size=sizes[1],
        device=device,
        keys=keys,
    )
