"""scripts/check_size.py: the measurable end state of issue 18 (modules, functions, signatures)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_size.py"


@pytest.fixture(scope="module")
def check_size() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_size", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PACKAGE = (
    """
import typer
import torch

app = typer.Typer()


def seven(a, b, c, d, e, f, g):
    return a


def six_and_keywords(a, b, c, d, e, f, *, g, h):
    return a


class Model:
    def method(self, a, b, c, d, e, f):
        return a


class Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c, d, e, f, g):
        return a


@app.command()
def cmd(a, b, c, d, e, f, g):
    return a


def long():
"""
    + "    x = 1\n" * 110
)


def test_offenders_are_named_with_file_line_and_limit(tmp_path: Path, check_size: ModuleType) -> None:
    root = tmp_path / "pkg"
    (root / "search").mkdir(parents=True)
    (root / "small.py").write_text(PACKAGE)
    (root / "big.py").write_text("x = 1\n" * 601)
    (root / "search" / "published.toml").write_text("x = 1\n" * 601)  # data, not a module
    found = check_size.offenders(root)
    assert found == [
        "pkg/big.py:1: module has 601 lines (limit 600)",
        "pkg/small.py:8: seven takes 7 positional parameters (limit 6)",
        "pkg/small.py:32: long has 111 lines (limit 110)",
    ]


def test_report_only_exits_0_and_strict_exits_1(
    tmp_path: Path, check_size: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "big.py").write_text("x = 1\n" * 601)
    assert check_size.main([str(tmp_path)]) == 0
    assert "1 over the limits (report only)" in capsys.readouterr().out
    assert check_size.main(["--strict", str(tmp_path)]) == 1
    (tmp_path / "big.py").write_text("x = 1\n")
    assert check_size.main(["--strict", str(tmp_path)]) == 0


def test_the_package_is_within_the_limits(check_size: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_size.main(["--strict"]) == 0, capsys.readouterr().out
