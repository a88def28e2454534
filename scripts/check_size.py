"""Print the modules and functions of the package that are too large to read at once (issue 18).

    python scripts/check_size.py [--strict] [ROOT]

Limits: a module over 600 lines, a function over 110 lines, or a function taking more than 6
positional parameters (``self`` and ``cls`` not counted; keyword-only parameters are free, since
every call names them; so are Typer commands, which Typer calls by keyword, and
``torch.autograd.Function`` steps, whose signature torch fixes). Data is not code: the published
settings are ``search/published.toml``, which this does not read. Without ``--strict`` it only
prints (exit 0), to see the distance from the limits while a change is under way; ``--strict``
(what ``scripts/test`` runs) exits 1 when anything is over.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 110
MAX_POSITIONAL = 6

Function = ast.FunctionDef | ast.AsyncFunctionDef
#: a function's qualified name, its node, and its class (None unless it is a method)
Found = tuple[str, Function, ast.ClassDef | None]


def _name(node: ast.expr) -> str:
    """The last part of a (possibly dotted, possibly called) name: ``app.command()`` -> "command"."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _functions(tree: ast.AST) -> Iterator[Found]:
    """Every function with its qualified name and its class (None unless a method), nested ones included."""

    def walk(node: ast.AST, prefix: str, cls: ast.ClassDef | None) -> Iterator[Found]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                yield name, child, cls
                yield from walk(child, f"{name}.", None)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.", child)
            else:
                yield from walk(child, prefix, cls)

    yield from walk(tree, "", None)


def _positional(fn: Function, cls: ast.ClassDef | None) -> int:
    """How many parameters a call may pass by position; 0 where the caller is not ours to write."""
    decorators = {_name(d) for d in fn.decorator_list}
    if decorators & {"command", "callback"}:  # Typer passes every option by keyword
        return 0
    if cls is not None and "Function" in {_name(b) for b in cls.bases} and fn.name in ("forward", "backward"):
        return 0  # torch.autograd.Function: torch calls forward(ctx, *inputs) and backward(ctx, *grads)
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if cls is not None and "staticmethod" not in decorators and names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names)


def offenders(root: Path) -> list[str]:
    """One line per limit exceeded under ``root`` (a package folder), as ``path:line: what``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        shown = path.relative_to(root.parent) if root.parent != root else path
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{shown}:1: module has {lines} lines (limit {MAX_MODULE_LINES})")
        for name, fn, cls in _functions(ast.parse(source, filename=str(path))):
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{shown}:{fn.lineno}: {name} has {length} lines (limit {MAX_FUNCTION_LINES})")
            positional = _positional(fn, cls)
            if positional > MAX_POSITIONAL:
                found.append(
                    f"{shown}:{fn.lineno}: {name} takes {positional} positional parameters (limit {MAX_POSITIONAL})"
                )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent.parent / "irnn_search")
    parser.add_argument("--strict", action="store_true", help="exit 1 when anything is over a limit")
    args = parser.parse_args(argv)
    found = offenders(args.root)
    for line in found:
        print(line)
    print(f"check_size: {len(found)} over the limits" + ("" if args.strict or not found else " (report only)"))
    return 1 if args.strict and found else 0


if __name__ == "__main__":
    sys.exit(main())
