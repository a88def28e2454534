"""Build a frozen config dataclass from user options (CLI strings or spec values), with clear errors.

Shared by the task and model registries; pure Python.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


class OptionError(ValueError):
    """An option is unknown or its value has the wrong type."""


def _allowed(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except OptionError as exc:
                errors.append(str(exc))
        raise OptionError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, args[0], where) for v in items if v != "")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise OptionError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise OptionError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise OptionError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise OptionError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OptionError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise OptionError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_config(cls: type[C], options: Mapping[str, Any], owner: str) -> C:
    """``cls(**options)`` after checking names and coercing values to the field types.

    Raises:
        OptionError: an unknown option (the message lists the valid ones) or a value of the
            wrong type. Range checks live in each config's ``__post_init__``.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name not in names:
            raise OptionError(f"{owner} has no option {key!r}; valid options: {_allowed(cls)}")
        kwargs[name] = _coerce(value, hints[name], f"{owner} option {key!r}")
    return cls(**kwargs)


def describe_options(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for every field, for listings."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tname = getattr(hints[f.name], "__name__", str(hints[f.name]))
        rows.append((f.name, str(tname), f.default, str(f.metadata.get("help", ""))))
    return rows
