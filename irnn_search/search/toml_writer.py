"""A TOML writer for the values a study spec holds, so the package can write specs (``confirm``).

Python's ``tomllib`` only reads, and a dependency for a few dozen lines is not worth it. What a
spec holds: strings, integers, floats (``repr``: the shortest text that reads back to the same
float, ``1e-05``, ``inf`` and ``nan`` included, all valid TOML), booleans, lists of those, and
inline tables. Every value written reads back equal with ``tomllib`` (lists come back as lists,
tuples are written as lists). TOML has no null: ``None`` is refused, so a caller leaves the key out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# TOML's short escapes; every other control character is written \uXXXX
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def key(name: str) -> str:
    """A key as TOML needs it: bare where it can be, else a quoted string."""
    return name if _BARE_KEY.fullmatch(name) else string(name)


def string(text: str) -> str:
    """A basic (double-quoted) TOML string."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # a lone surrogate has no UTF-8 form, so no TOML one
            raise ValueError(f"cannot write the lone surrogate U+{ord(ch):04X} in TOML")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def value(v: Any) -> str:
    """One value in TOML syntax (a mapping as an inline table).

    Raises:
        TypeError: ``None`` (TOML has no null) or a type a spec does not hold.
    """
    if isinstance(v, bool):  # before int: bool is an int
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"  # repr gives the same; spelled out so a sign never sneaks in
        return repr(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, Mapping):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{key(str(k))} = {value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if v is None:
        raise TypeError("TOML has no null: leave the key out instead of writing None")
    raise TypeError(f"cannot write a {type(v).__name__} in TOML")


def dumps(tables: Mapping[tuple[str, ...], Mapping[str, Any]], *, header: str = "") -> str:
    """A TOML document: one ``[a.b]`` table per entry of ``tables`` (its dotted path, then its
    keys; a mapping value is written as an inline table), after the comment lines of ``header``."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for path, table in tables.items():
        if lines:
            lines.append("")
        lines.append("[" + ".".join(key(part) for part in path) + "]")
        lines += [f"{key(k)} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


__all__ = ["dumps", "key", "string", "value"]
