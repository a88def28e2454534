"""The checkpoint format, torch only: written once here, used by ``train()`` and the packed loop.

A checkpoint (``last.pt``, ``best.pt``) is one dict of tensors and plain data:

- ``format``: ``FORMAT``; ``identity``: what must match for it to be resumed (``run_identity``);
- ``step``, ``model`` and ``optimizer`` state dicts, the ``rng`` states (torch, Python, CUDA);
- ``state``: the hidden state a stateful task carries between batches (None otherwise), on CPU;
- ``history``, ``best``, ``train_time``, ``interval``: the run's bookkeeping, so a resumed run
  reports exactly what an uninterrupted one would.

A member checkpointed in a pack therefore resumes alone and the other way round. Files are
written atomically and durably (``atomic_save``) and read back refusing anything but tensors and
plain data (``load_checkpoint``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from irnn_search.models.base import RecurrentModel, State, detach_state
from irnn_search.tasks.base import Task

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

#: bumped when the layout of the dict changes; a checkpoint of another format is not resumed
FORMAT = 1


class TrainError(ValueError):
    """The run cannot start: bad settings or a checkpoint that belongs to another run.

    Defined here, beneath ``train``, so that ``CheckpointError`` can be one: whoever starts a run
    catches both with ``except TrainError``.
    """


class CheckpointError(TrainError):
    """A checkpoint that cannot or must not be loaded: empty, truncated, corrupt, or holding Python
    objects other than tensors and plain data (which unpickling could make run code)."""


@dataclass(frozen=True)
class Resumed:
    """A run's bookkeeping as its checkpoint left it (the weights and optimizer are restored in place)."""

    step: int  # optimizer steps done
    history: list[dict[str, float]]  # metrics of every evaluation so far
    best: dict[str, float]  # metrics of the best evaluation so far ({} before the first)
    train_time: float  # training compute in seconds, across resumes
    interval: dict[str, float]  # sums since the last evaluation (loss, grad, n, time)
    state: State | None  # the carried hidden state, on the run's device (None: not carried)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync it, rename it over ``path`` and
    fsync the folder: neither a crash nor a power cut leaves a torn or vanished file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the folder is: best effort, since some platforms and
    # network file systems cannot open or fsync a folder (the file itself is safe by then).
    with contextlib.suppress(OSError):
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint as tensors and plain data only (``torch.load(weights_only=True)``).

    Every checkpoint this package writes holds nothing else (the Python RNG state is a tuple of
    ints; configs are stored as dicts). A file from elsewhere (a shared artifact store, a planted
    ``last.pt``) that names any other Python object is refused before anything in it runs.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it: refused (it names
            Python objects such as ``posix.system``) or unreadable (empty, truncated, corrupt).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it names the Python object {named.group(1)}" if named else "it holds Python objects"
        raise CheckpointError(
            f"{path} was refused: {what}, not only tensors and plain data, so loading it could run code; "
            "delete it (or use another checkpoint folder) to start over"
        ) from None
    except Exception as exc:  # torch reports a torn file as EOFError, RuntimeError, KeyError...
        detail = str(exc).splitlines()[0] if str(exc) else "the file is empty or ends too early"
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {detail[:120]}); "
            "delete it (or use another checkpoint folder) to start over"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint of irnn-search (it holds a {type(ckpt).__name__})")
    return ckpt


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex: what a trial records of each checkpoint it writes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_identity(task: Task, model: RecurrentModel, config: DataclassInstance) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the task, the model and the training
    settings (``config``, a ``TrainConfig``) except ``steps`` (a run may be extended) and
    ``device`` (it may resume on another machine)."""
    cfg = asdict(replace(config, steps=1, device="cpu"))
    # Where the data lives may differ between machines; what it is may not.
    task_desc = {k: v for k, v in task.describe().items() if k not in ("data_dir", "cache_dir", "mirrors")}
    return {"task": task_desc, "model": model.describe(), "train": cfg, "batch_size": task.batch_size}


def build_checkpoint(
    *,
    identity: dict[str, Any],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    state: State | None,
    history: list[dict[str, float]],
    best: dict[str, float],
    train_time: float,
    interval: dict[str, float],
) -> dict[str, Any]:
    """The checkpoint dict of a run at ``step``, with the process's RNG states as they are now.

    ``state`` (the carried hidden state, or None) is detached and stored on CPU.
    """
    cpu_state = detach_state(state)
    if cpu_state is not None:
        cpu_state = tuple(s.cpu() for s in cpu_state) if isinstance(cpu_state, tuple) else cpu_state.cpu()
    return {
        "format": FORMAT,
        "identity": identity,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
        "state": cpu_state,
        "history": history,
        "best": best,
        "train_time": train_time,
        "interval": interval,
    }


def restore_checkpoint(
    path: Path,
    *,
    identity: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    rng: bool = True,
) -> Resumed:
    """Load ``path`` into ``model`` and ``optimizer`` (in place) and return the run's bookkeeping.

    Args:
        identity: the resuming run's ``run_identity``; the checkpoint's must be equal.
        device: where the carried hidden state is moved (and whose CUDA RNG state is restored).
        rng: also restore the global torch, Python and CUDA RNG states (False where one process
            trains several runs and so has no single state to restore).

    Raises:
        CheckpointError: the file cannot or must not be loaded (see ``load_checkpoint``).
        TrainError: it is another run's (another format, task, model or training settings).
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT or ckpt.get("identity") != identity:
        raise TrainError(
            f"{path} belongs to a different run (task, model or training settings differ); "
            "use another checkpoint folder or delete it to start over"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if rng:
        torch.set_rng_state(ckpt["rng"]["torch"])
        random.setstate(ckpt["rng"]["python"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    carried = ckpt["state"]
    if carried is not None:
        carried = tuple(s.to(device) for s in carried) if isinstance(carried, tuple) else carried.to(device)
    return Resumed(
        step=ckpt["step"],
        history=ckpt["history"],
        best=ckpt["best"],
        train_time=ckpt["train_time"],
        interval=ckpt["interval"],
        state=carried,
    )
