"""Build step that pyproject.toml cannot declare: what the wheel carries besides the package source.

The top-level ``studies/`` (the built-in study specs) and ``migrations/`` (the Alembic scripts) are
copied into the package as ``irnn_search/_bundled/``, since an installed package has no repository
root beside it; and ``irnn_search/_build_info.py`` records the git revision the wheel was built from,
which ``irnn-search --version`` prints and every launch record stores. Both are written into the
build folder only, never into the source tree. An editable install needs neither: it reads the
folders and asks git in the checkout itself (see irnn_search/bundled.py and irnn_search/version.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: (source folder at the repository root, files to ship from it)
BUNDLED = {"studies": ("*.toml",), "migrations": ("*.py", "*.mako", "versions/*.py")}


def git_revision() -> str:
    """The checkout's commit (12 hex digits, ``-dirty`` with uncommitted changes to tracked files).

    Outside a checkout (an sdist, a Docker build context) ``IRNN_SEARCH_BUILD_REVISION`` names it,
    else it is ``unknown``.
    """
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD"], capture_output=True).returncode
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("IRNN_SEARCH_BUILD_REVISION", "").strip() or "unknown"
    return rev + ("-dirty" if dirty else "")


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        package = Path(self.build_lib) / "irnn_search"
        for folder, patterns in BUNDLED.items():
            target = package / "_bundled" / folder
            shutil.rmtree(target, ignore_errors=True)
            for pattern in patterns:
                for src in sorted((ROOT / folder).glob(pattern)):
                    dest = target / src.relative_to(ROOT / folder)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
        (package / "_build_info.py").write_text(
            f'"""Written by setup.py when the wheel was built."""\n\nREVISION = {git_revision()!r}\n'
        )


setup(cmdclass={"build_py": BuildPy})
