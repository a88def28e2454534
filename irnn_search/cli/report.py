"""``irnn-search report``: best per model vs the published settings and numbers, and plots (also
what ``launch`` prints at its end)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from irnn_search.cli.app import _fail, _ledger, _load_spec, _settings, app

if TYPE_CHECKING:
    from irnn_search.search.spec import StudySpec
    from irnn_search.settings import Settings


def _report(spec: StudySpec, settings: Settings, fmt: str, out: str | None) -> None:
    """The report on stdout; its plots go to ``out``, by default <home>/reports/<spec>."""
    from pathlib import Path

    from irnn_search.service.report import run_report

    written = run_report(
        spec,
        settings.storage_url,
        fmt=fmt,
        out_dir=Path(out) if out else settings.home / "reports" / spec.name,
        ledger=lambda: _ledger(settings),
        emit=sys.stdout.write,
    )
    if fmt == "md":
        sys.stdout.write("\nPlots: " + ", ".join(str(p) for p in written) + "\n")


@app.command("report")
def report_cmd(
    spec_name: Annotated[
        str, typer.Argument(metavar="SPEC", help="a spec name (--studies-dir, then the built-in specs) or a .toml path")
    ],
    fmt: Annotated[str, typer.Option("--format", help="md | json | csv")] = "md",
    out: Annotated[str | None, typer.Option(help="folder for the PNG plots (default: <home>/reports/<spec>)")] = None,
    studies_dir: Annotated[
        str, typer.Option(help="folder of spec files, searched before the built-in specs (`irnn-search studies`)")
    ] = "studies",
) -> None:
    """Best per model vs the published settings and numbers, compute used, and plots."""
    from irnn_search.service.studies import SearchError, missing_store

    if fmt not in ("md", "json", "csv"):
        raise _fail(f"--format must be md, json or csv; got {fmt!r}")
    settings = _settings()
    spec = _load_spec(spec_name, studies_dir)
    if (why := missing_store(settings.storage_url)) is not None:
        raise _fail(why, f"launch it first (irnn-search launch {spec_name}), or set IRNN_SEARCH_HOME to its home")
    try:
        _report(spec, settings, fmt, out)
    except SearchError as exc:
        raise _fail(str(exc), f"launch it first: irnn-search launch {spec_name}") from None
