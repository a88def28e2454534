"""Files that ship with the package: the built-in study specs and the Alembic scripts.

In a checkout they are the top-level ``studies/`` and ``migrations/`` folders. An installed wheel
has no repository root, so setup.py copies both into the package as ``irnn_search/_bundled/``;
the copy inside the package wins whenever it exists.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def folder(name: str) -> Path:
    """``studies`` or ``migrations``: inside the installed package, else at the checkout's root."""
    packaged = _PACKAGE / "_bundled" / name
    return packaged if packaged.is_dir() else _PACKAGE.parent / name


def builtin_specs() -> dict[str, Path]:
    """The built-in study specs, name -> file (sorted by name)."""
    return {p.stem: p for p in sorted(folder("studies").glob("*.toml"), key=lambda p: p.stem)}


def spec_description(path: Path) -> str:
    """``study.description`` of a spec file, read without validating the spec (fast: no torch).

    Empty when the file has none or is not valid TOML; ``irnn-search launch`` reports those.
    """
    try:
        study = tomllib.loads(path.read_text(encoding="utf-8")).get("study", {})
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    description = study.get("description", "") if isinstance(study, dict) else ""
    return description if isinstance(description, str) else ""
