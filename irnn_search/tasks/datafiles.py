"""Finding, downloading and checking the benchmark data files (standard library only).

Where a file is looked for, in this order:

1. an explicit data folder: the task's ``data_dir`` option, or else the environment variable
   ``IRNN_SEARCH_DATA_DIR``. The file may sit in that folder itself or in its ``<dataset>``
   subfolder (so ``IRNN_SEARCH_DATA_DIR=/data`` finds ``/data/mnist/...`` and ``/data/ptb/...``).
   Nothing is ever downloaded into an explicit data folder: a file missing there is an error
   that says which file to put where.
2. otherwise the cache folder (``cache_dir``, default ``~/.cache/irnn-search/<dataset>``);
3. otherwise the file is downloaded into the cache from the first mirror that serves it with the
   right MD5.

Files with a known MD5 are checked on every use; a mismatch is reported as a corrupt file with the
expected and actual digests and the fix. Downloads go to a temporary file in the destination
folder and are moved into place atomically only after the MD5 matched, so an interrupted or bad
download never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irnn_search.tasks.base import TaskError

ENV_DATA_DIR = "IRNN_SEARCH_DATA_DIR"
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


class DataError(TaskError):
    """A data file is missing, corrupt, malformed or could not be downloaded."""


def md5sum(path: str | os.PathLike[str]) -> str:
    """Hex MD5 digest of a file (read in chunks)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir(dataset: str) -> Path:
    """``~/.cache/irnn-search/<dataset>``."""
    return Path.home() / ".cache" / "irnn-search" / dataset


def _mirror_url(base: str, filename: str) -> str:
    # Bases normally end with "/" (or an encoded "%2F", as the Baidu PTB mirror does).
    if not base.endswith(("/", "%2F", "%2f")):
        base += "/"
    return base + filename


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            return f"connection refused ({reason})"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"timed out ({reason})"
        if isinstance(reason, socket.gaierror):
            return f"host name lookup failed ({reason})"
        return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"timed out ({exc})"
    return f"{type(exc).__name__}: {exc}"


def fetch(
    filename: str,
    *,
    md5: str,
    mirrors: Sequence[str],
    dest_dir: Path,
    timeout: float = 30,
) -> Path:
    """Download ``filename`` from the first mirror that serves it with MD5 ``md5``.

    Each mirror is a base URL; the file's URL is base + filename. The download goes to a temporary
    file in ``dest_dir`` and is moved to ``dest_dir / filename`` with ``os.replace`` only once its
    MD5 matched; the temporary file is removed on any failure, KeyboardInterrupt included. If no
    mirror works, one :class:`DataError` lists every URL tried with the reason it failed and says
    how to provide the file by hand.
    """
    dest_dir = Path(dest_dir)
    failures: list[str] = []
    if not mirrors:
        failures.append("(no mirrors configured)")
    else:
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the download folder {dest_dir} for {filename}: {exc}") from exc
    for base in mirrors:
        url = _mirror_url(base, filename)
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
            digest = hashlib.md5(usedforsecurity=False)
            size = 0
            log.info("downloading %s", url)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            got = digest.hexdigest()
            if got != md5:
                failures.append(f"{url}: md5 mismatch (got {got} for {size} bytes, expected {md5})")
                continue
            target = dest_dir / filename
            os.replace(tmp, target)
            tmp = None
            log.info("saved %s (%d bytes, md5 ok)", target, size)
            return target
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            failures.append(f"{url}: {_describe_failure(exc)}")
        finally:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    tried = "\n".join(f"  - {f}" for f in failures)
    raise DataError(
        f"could not download {filename}; tried:\n{tried}\n"
        f"Fix: download {filename} (md5 {md5}) and put it in {dest_dir}, "
        f"or pass data_dir / set {ENV_DATA_DIR} to a folder that holds it."
    )


def verify_md5(path: Path, md5: str, *, explicit: bool) -> None:
    """Raise a "corrupt" :class:`DataError` if ``path`` does not have MD5 ``md5``.

    ``explicit`` says whether the file sits in a user-given data folder (then the fix is to
    replace it) or in the download cache (then deleting it makes the next run download it again).
    """
    got = md5sum(path)
    if got == md5:
        return
    fix = (
        f"replace it with the official {path.name} (md5 {md5})"
        if explicit
        else f"delete it (rm {path}) and run again to re-download it"
    )
    raise DataError(f"{path} is corrupt: md5 {got}, expected {md5}. Fix: {fix}.")


@dataclass(frozen=True)
class Locations:
    """Where the files of one dataset are looked for (see the module docstring)."""

    dataset: str
    cache_dir: Path
    data_dir: Path | None = None
    #: how the data folder was given: "data_dir" or the environment variable's name
    data_dir_source: str = "data_dir"

    @classmethod
    def create(
        cls,
        dataset: str,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Locations:
        source = "data_dir"
        if data_dir is None and os.environ.get(ENV_DATA_DIR):
            data_dir, source = os.environ[ENV_DATA_DIR], ENV_DATA_DIR
        explicit = Path(data_dir).expanduser() if data_dir is not None else None
        if explicit is not None and not explicit.is_dir():
            raise DataError(f"{dataset}: the data folder {explicit} (from {source}) does not exist or is not a folder")
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(dataset)
        return cls(dataset=dataset, cache_dir=cache, data_dir=explicit, data_dir_source=source)

    @property
    def explicit(self) -> bool:
        return self.data_dir is not None

    def search_dirs(self) -> list[Path]:
        if self.data_dir is not None:
            return [self.data_dir, self.data_dir / self.dataset]
        return [self.cache_dir]

    def find(self, names: Sequence[str]) -> Path | None:
        """The first of ``names`` present in a search folder (names in order of preference)."""
        for name in names:
            for d in self.search_dirs():
                p = d / name
                if p.is_file():
                    return p
        return None

    def missing_error(self, filename: str, md5: str | None, alternatives: Sequence[str] = ()) -> DataError:
        """The error for a file missing from the explicit data folder."""
        assert self.data_dir is not None
        what = f"{filename} (md5 {md5})" if md5 else filename
        alt = f" or {' or '.join(alternatives)}" if alternatives else ""
        return DataError(
            f"{self.dataset}: {filename}{alt} not found in the data folder {self.data_dir} "
            f"(or {self.data_dir / self.dataset}), given by {self.data_dir_source}; nothing is downloaded into "
            f"a data folder. Fix: put {what} in {self.data_dir}, or unset {self.data_dir_source} to download "
            f"it into the cache {self.cache_dir}."
        )


def resolve(
    filename: str,
    *,
    dataset: str,
    md5: str,
    mirrors: Sequence[str],
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    alternatives: Sequence[str] = (),
    timeout: float = 30,
) -> Path:
    """Path to a checked copy of ``filename``: data folder, else cache, else downloaded into the cache.

    ``alternatives`` are other accepted names for the same content (e.g. the uncompressed file
    next to a ``.gz``). They cannot be checked by MD5 here: the caller must check their structure.
    ``filename`` itself is checked against ``md5`` wherever it is found.
    """
    loc = Locations.create(dataset, data_dir=data_dir, cache_dir=cache_dir)
    path = loc.find([filename, *alternatives])
    if path is None:
        if loc.explicit:
            raise loc.missing_error(filename, md5, alternatives)
        return fetch(filename, md5=md5, mirrors=mirrors, dest_dir=loc.cache_dir, timeout=timeout)
    if path.name == filename:
        verify_md5(path, md5, explicit=loc.explicit)
    return path


def normalise_file_options(cfg: Any, task: str) -> None:
    """Coerce a frozen task config's ``data_dir``/``cache_dir`` (str or Path) and ``mirrors``
    (tuple, list or comma-separated string) in place, and refuse empty folders or non-URL mirrors.

    Raises:
        TaskError: naming the task, the option and the bad value.
    """
    for name in ("data_dir", "cache_dir"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, str):
            object.__setattr__(cfg, name, os.fspath(value))
        if getattr(cfg, name) == "":
            raise TaskError(f"{task}: {name} must be a folder path or unset, got an empty string")
    mirrors = cfg.mirrors
    if isinstance(mirrors, str):
        mirrors = tuple(m.strip() for m in mirrors.split(",") if m.strip())
    object.__setattr__(cfg, "mirrors", tuple(mirrors))
    for m in cfg.mirrors:
        if not isinstance(m, str) or "://" not in m:
            raise TaskError(f"{task}: mirrors must be base URLs like https://host/path/, got {m!r}")
