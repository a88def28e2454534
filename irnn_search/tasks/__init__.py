"""Benchmark tasks (torch only): built-in ones by name, plus those other packages register.

``TASK_NAMES`` are the built-in tasks; ``task_names()`` adds the tasks installed packages declare
under the ``irnn_search.tasks`` entry point group (see ``irnn_search.plugins``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from irnn_search import plugins
from irnn_search.options import OptionError, build_config
from irnn_search.tasks.base import Batch, Task, TaskConfig, TaskError, Threshold

# name -> "module:Class"; imported on first use so listing one task does not load every dataset module.
_TASKS: dict[str, str] = {
    "adding": "irnn_search.tasks.adding:AddingTask",
    "copy": "irnn_search.tasks.copy:CopyTask",
    "smnist": "irnn_search.tasks.mnist:SMnistTask",
    "pmnist": "irnn_search.tasks.mnist:PMnistTask",
    "ptb": "irnn_search.tasks.ptb:PTBTask",
    "digits-smoke": "irnn_search.tasks.mnist:DigitsSmokeTask",
    "digits-smoke-permuted": "irnn_search.tasks.mnist:PDigitsSmokeTask",
    "ptb-smoke": "irnn_search.tasks.ptb:PTBSmokeTask",
}
TASK_NAMES = tuple(_TASKS)


def task_names() -> tuple[str, ...]:
    """Every task name: the built-in ones, then those of installed plugins."""
    return (*TASK_NAMES, *plugins.plugins(plugins.TASKS_GROUP, TASK_NAMES))


def task_class(name: str) -> type[Task]:
    """The class registered under ``name``; an unknown name lists the valid ones.

    A plugin's class is imported here; one that fails to import, is not a ``Task``, or whose
    ``name`` differs from its entry point's raises ``TaskError`` naming the distribution.
    """
    if name in _TASKS:
        module, cls = _TASKS[name].split(":")
        return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
    return plugins.load_class(  # type: ignore[no-any-return]
        plugins.TASKS_GROUP,
        TASK_NAMES,
        name,
        base=Task,
        base_path="irnn_search.tasks.Task",
        attr="name",
        error=TaskError,
        valid=task_names(),
    )


def build_task(
    name: str, options: Mapping[str, Any] | None = None, *, seed: int = 0, batch_size: int | None = None
) -> Task:
    """Instantiate a task from its name and user options (strings are coerced to field types)."""
    cls = task_class(name)
    try:
        config = build_config(cls.config_cls, options or {}, f"task {name!r}")
    except OptionError as exc:
        raise TaskError(str(exc)) from None
    return cls(config, seed=seed, batch_size=batch_size)


__all__ = [
    "TASK_NAMES",
    "Batch",
    "Task",
    "TaskConfig",
    "TaskError",
    "Threshold",
    "build_task",
    "task_class",
    "task_names",
]
