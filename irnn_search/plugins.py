"""Tasks and model families from other installed packages, found through entry points.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."irnn_search.tasks"]
    timit = "my_pkg.timit:TimitTask"

    [project.entry-points."irnn_search.models"]
    gru = "my_pkg.gru:GRU"

and, once installed, ``timit`` and ``gru`` work wherever a built-in name does (listings, specs,
``train``, workers, reports). The registries in ``irnn_search.tasks`` and ``irnn_search.models``
ask this module for the names; a plugin's module is imported only when its class is first needed,
so a broken plugin breaks only the studies that use it.

Built-in names win: a plugin that reuses one is ignored with a warning. Discovery is cached for the
process (a scan of every installed distribution); ``refresh()`` forgets it, for tests and notebooks
that install a package after the first look.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

log = logging.getLogger(__name__)

TASKS_GROUP = "irnn_search.tasks"
MODELS_GROUP = "irnn_search.models"


@functools.cache
def _discover(group: str) -> Mapping[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        seen = found.get(ep.name)
        if seen is None:
            found[ep.name] = ep
        elif seen.value != ep.value:  # the same distribution twice on sys.path is not a conflict
            log.warning(
                "entry point %s %r: %s (%s) ignored, %s (%s) came first on sys.path",
                group,
                ep.name,
                ep.value,
                origin(ep),
                seen.value,
                origin(seen),
            )
    return found


def plugins(group: str, builtin: Iterable[str]) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, less those that reuse a built-in name (warned once)."""
    taken = set(builtin)
    found = _discover(group)
    clashing = sorted(n for n in found if n in taken)
    if clashing:
        _warn_clash(group, tuple(clashing))
    return {n: ep for n, ep in found.items() if n not in taken}


@functools.cache
def _warn_clash(group: str, names: tuple[str, ...]) -> None:
    for name in names:
        log.warning("entry point %s %r ignored: a built-in already has that name", group, name)


def origin(ep: EntryPoint) -> str:
    """The distribution that declared ``ep`` (``name version``), for messages."""
    dist = ep.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def refresh() -> None:
    """Forget what was discovered: the next look scans the installed distributions again."""
    _discover.cache_clear()
    _warn_clash.cache_clear()


__all__ = ["MODELS_GROUP", "TASKS_GROUP", "load_class", "origin", "plugins", "refresh"]


def load_class(
    group: str,
    builtin: Iterable[str],
    name: str,
    *,
    base: type,
    base_path: str,
    attr: str,
    error: type[Exception],
    valid: Iterable[str],
) -> type:
    """The class a plugin registers under ``name`` in ``group``, checked: it loads, subclasses
    ``base`` (``base_path`` in messages) and says ``attr = name``. Any failure is ``error`` naming
    the distribution; an unknown name lists ``valid``."""
    kind = "task" if group == TASKS_GROUP else "model"
    ep = plugins(group, builtin).get(name)
    if ep is None:
        raise error(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")
    where = f"{kind} {name!r} ({ep.value}, from {origin(ep)})"
    try:
        loaded = ep.load()
    except Exception as exc:  # any import-time error of someone else's package
        raise error(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(loaded, type) and issubclass(loaded, base)):
        raise error(f"{where} is not a subclass of {base_path}")
    if getattr(loaded, attr, None) != name:
        raise error(f"{where} has {attr} = {getattr(loaded, attr, None)!r}: it must equal the entry point's name")
    return loaded
