"""``irnn-search tasks``, ``models`` and ``studies``: what can be trained and launched."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from irnn_search.cli.app import _console, _fail, app

if TYPE_CHECKING:
    from irnn_search.models import RecurrentModel
    from irnn_search.tasks import Task

#: a registered task or model class
C = TypeVar("C", "type[Task]", "type[RecurrentModel]")


@app.command("tasks")
def tasks_cmd(as_json: Annotated[bool, typer.Option("--json", help="machine-readable listing")] = False) -> None:
    """List the benchmark tasks and their options."""
    from irnn_search.tasks import TaskError, task_class, task_names

    rows = _registry_rows(
        task_names(),
        task_class,
        TaskError,
        lambda cls: {"metric": cls.metric, "direction": cls.direction, "batch_size": cls.default_batch_size},
    )
    _print_listing(rows, as_json, extra=("metric", "direction", "batch_size"))


@app.command("models")
def models_cmd(as_json: Annotated[bool, typer.Option("--json", help="machine-readable listing")] = False) -> None:
    """List the model families and their options."""
    from irnn_search.models import ModelError, model_class, model_names

    rows = _registry_rows(model_names(), model_class, ModelError, lambda cls: {})
    _print_listing(rows, as_json, extra=())


def _registry_rows(
    names: Iterable[str], load: Callable[[str], C], error: type[Exception], extra: Callable[[C], dict[str, Any]]
) -> list[dict[str, Any]]:
    """One listing row per registered task or model family; a broken plugin is reported on stderr
    and the others are still listed."""
    from irnn_search.options import describe_options

    rows = []
    for name in names:
        try:
            cls = load(name)
        except error as exc:
            _console(stderr=True).print(f"[red]{exc}[/]")
            continue
        options = [{"name": n, "type": t, "default": d, "help": h} for n, t, d, h in describe_options(cls.config_cls)]
        rows.append({"name": name, "description": cls.description, **extra(cls), "options": options})
    return rows


def _print_listing(rows: list[dict[str, Any]], as_json: bool, extra: tuple[str, ...]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    for row in rows:
        facts = ", ".join(f"{k} {row[k]}" for k in extra)
        console.print(
            f"[bold cyan]{row['name']}[/]  {escape(row['description'])}" + (f"  [dim]({facts})[/]" if facts else "")
        )
        options = Table(box=None, show_header=False, padding=(0, 2), pad_edge=False)
        options.add_column(style="green", no_wrap=True)
        options.add_column(no_wrap=True, max_width=32, overflow="ellipsis")
        options.add_column(style="dim")
        for o in row["options"]:
            options.add_row(f"  {o['name']}", escape(repr(o["default"])), escape(o["help"]))
        console.print(options)
        console.print()


studies_app = typer.Typer(
    help="List the built-in study specs, or copy one out to edit (`studies copy NAME FILE`). At launch, "
    "NAME.toml in --studies-dir (default ./studies) takes precedence over the built-in spec NAME.",
    invoke_without_command=True,
)
app.add_typer(studies_app, name="studies")


@studies_app.callback()
def studies_list(ctx: typer.Context) -> None:
    """One line per built-in spec: its name and description."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.markup import escape

    from irnn_search.bundled import builtin_specs, spec_description

    specs = builtin_specs()
    width = max((len(name) for name in specs), default=0)
    console = _console()
    for name, path in specs.items():
        line = f"[bold cyan]{name:<{width}}[/]  {escape(spec_description(path))}"
        console.print(line, highlight=False, soft_wrap=True)


@studies_app.command("copy")
def studies_copy(
    name: Annotated[str, typer.Argument(help="a built-in spec (see `irnn-search studies`)")],
    dest: Annotated[str, typer.Argument(metavar="FILE", help="where to write it, e.g. my.toml (never overwritten)")],
) -> None:
    """Copy a built-in spec to FILE, comments included, to edit and launch with `irnn-search launch FILE`."""
    from pathlib import Path

    from irnn_search.bundled import builtin_specs

    specs = builtin_specs()
    if name not in specs:
        raise _fail(f"no built-in spec named {name!r} (allowed: {', '.join(specs)})")
    target = Path(dest)
    try:
        with target.open("xb") as out:  # "x": refuses an existing file, even one created meanwhile
            out.write(specs[name].read_bytes())
    except FileExistsError:
        raise _fail(f"{dest} already exists: choose another FILE or remove it first") from None
    except OSError as exc:
        raise _fail(f"cannot write {dest}: {exc.strerror or exc}") from None
    _console().print(f"wrote {dest}; edit it, then `irnn-search launch {dest}`", highlight=False)
