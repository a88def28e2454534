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
from collections.abc import Mapping

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
