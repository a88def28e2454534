"""The code version: the package version and the git revision it was built from.

One string, printed by ``irnn-search --version`` and stored with every launch, e.g.
``0.1.0 (git 4fd31b2c9a1e)``. A wheel records its revision at build time (``_build_info``, written
by setup.py); a checkout asks git; anything else says ``unknown``.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from irnn_search import __version__

_CHECKOUT = Path(__file__).resolve().parents[1]


@functools.cache
def revision() -> str:
    """The git commit (12 hex digits, ``-dirty`` when built from uncommitted changes), or ``unknown``."""
    try:
        from irnn_search._build_info import REVISION  # type: ignore[import-not-found]

        return str(REVISION)
    except ImportError:
        pass
    if not (_CHECKOUT / ".git").exists():  # a directory, or a file in a git worktree
        return "unknown"
    try:
        rev = subprocess.run(
            ["git", "-C", str(_CHECKOUT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_CHECKOUT), "diff", "--quiet", "HEAD"], capture_output=True, timeout=10
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "") if rev else "unknown"


def code_version() -> str:
    """``<version> (git <revision>)``: what ``--version`` prints and the launch record stores."""
    return f"{__version__} (git {revision()})"
