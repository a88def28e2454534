"""``irnn-search confirm``: write the spec that re-runs each model's best at fresh seeds (mean ±
sd instead of one lucky seed; ``service.confirm``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from irnn_search.cli.app import _fail, _load_spec, _settings, _storage_error, app

if TYPE_CHECKING:
    from irnn_search.service.confirm import Derived


def _models(spec_models: list[str], raw: str | None, spec_name: str) -> list[str]:
    if raw is None:
        return spec_models
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    unknown = [k for k in keys if k not in spec_models]
    if unknown or not keys:
        what = f"unknown model {unknown[0]!r}" if unknown else "no model named"
        raise _fail(f"--models: {what} in {spec_name}; choose from {', '.join(spec_models)}")
    return list(dict.fromkeys(keys))


@app.command("confirm")
def confirm_cmd(
    spec_name: Annotated[
        str, typer.Argument(metavar="SPEC", help="a spec name (--studies-dir, then the built-in specs) or a .toml path")
    ],
    seeds: Annotated[int, typer.Option(help="fresh training seeds per model (at least 2)")] = 5,
    models: Annotated[str | None, typer.Option(help="only these models, comma-separated (default: all)")] = None,
    out: Annotated[
        str | None, typer.Option(help="the spec file to write (default: <studies-dir>/<spec>-confirm.toml)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace the file if it exists")] = False,
    studies_dir: Annotated[
        str, typer.Option(help="folder of spec files, searched before the built-in specs (`irnn-search studies`)")
    ] = "studies",
) -> None:
    """Write a spec that retrains each model's best configuration at N fresh seeds, for mean ± sd.

    The best a search found was picked at its own seed, so it is optimistic; launching the written
    spec, then reporting it, gives each model's value with an error bar.
    """
    import shlex
    from pathlib import Path

    from irnn_search.service import confirm

    if seeds < confirm.MIN_SEEDS:
        raise _fail(f"--seeds must be at least {confirm.MIN_SEEDS} (a spread needs two values); got {seeds}")
    settings = _settings()
    spec = _load_spec(spec_name, studies_dir)
    keys = _models(list(spec.models), models, spec.name)
    path = Path(out) if out else Path(studies_dir) / f"{spec.name}{confirm.SUFFIX}.toml"
    if path.exists() and not force:
        raise _fail(f"{path} already exists: pass --force to replace it, or --out another path")
    try:
        studies = confirm.studies_of(spec, settings.storage_url, keys)
    except confirm.ConfirmError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # an unreachable or wrong database
        raise _storage_error(exc, settings.storage_url) from None
    try:
        command = [
            "irnn-search",
            "confirm",
            spec_name,
            "--seeds",
            str(seeds),
            *(["--models", models] if models else []),
        ]
        derived = confirm.derive(studies, seeds=seeds, out=str(path), command=shlex.join(command))
        confirm.write_new(path, derived.text, force=force)
    except confirm.ConfirmError as exc:
        raise _fail(str(exc)) from None
    _print(derived)


def _print(derived: Derived) -> None:
    for key, why in derived.skipped.items():
        typer.echo(f"{key}: skipped, {why}")
    typer.echo(
        f"Wrote {derived.path}: {derived.source}'s best per model, retrained at seeds "
        f"{', '.join(map(str, derived.seeds))} (one trial per model, no pruning)."
    )
    for p in derived.picks:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.params.items())
        typer.echo(f"  {p.model}: trial {p.trial}, value {p.value:.6g}; {params or 'nothing searched'}")
    typer.echo("Next:")
    typer.echo(f"  {derived.launch}")
    typer.echo(f"  {derived.report}")
