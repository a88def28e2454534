from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from irnn_search.checkpoint import atomic_save, load_checkpoint


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc (Linux)")
def test_atomic_save_syncs_the_file_and_then_its_folder_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_save({"step": 3}, tmp_path / "last.pt")
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith("last.pt") and synced[0].endswith(".tmp")  # before the rename
    assert Path(synced[1]) == tmp_path  # the folder, after it
    assert load_checkpoint(tmp_path / "last.pt") == {"step": 3}


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    atomic_save({"step": 1}, tmp_path / "last.pt")

    def broken_save(obj: object, fh: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, tmp_path / "last.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(tmp_path / "last.pt") == {"step": 1}
