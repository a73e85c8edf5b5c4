"""node.fsutil.make_dirs_durable: which directories it syncs, and which errors it lets pass."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import node.fsutil
from node.fsutil import make_dirs_durable


def _spy(monkeypatch: pytest.MonkeyPatch, fail: dict[str, int] | None = None) -> list[str]:
    synced: list[str] = []

    def fake(path: str | os.PathLike[str]) -> None:
        p = os.path.abspath(path)
        if fail and p in fail:
            raise OSError(fail[p], os.strerror(fail[p]), p)
        synced.append(p)

    monkeypatch.setattr(node.fsutil, "fsync_dir", fake)
    return synced


def test_new_directories_sync_their_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _spy(monkeypatch)
    make_dirs_durable(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()
    assert str(tmp_path) in synced and str(tmp_path / "a") in synced


def test_directories_left_by_a_crashed_run_are_synced_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a run made data/raft and crashed before its fsync: the restart finds them existing
    os.makedirs(tmp_path / "data" / "raft")
    synced = _spy(monkeypatch)
    make_dirs_durable(str(tmp_path / "data" / "raft"))
    assert str(tmp_path / "data") in synced  # holds raft/
    assert str(tmp_path) in synced  # holds data/
    assert "/" in synced  # every ancestor, up to the root


def test_no_sync_syncs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _spy(monkeypatch)
    make_dirs_durable(str(tmp_path / "x"), sync=False)
    assert (tmp_path / "x").is_dir() and synced == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS, errno.EINVAL])
def test_an_existing_parent_that_cannot_be_synced_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    synced = _spy(monkeypatch, fail={os.path.dirname(str(tmp_path)): code})
    make_dirs_durable(str(tmp_path / "d"))
    assert str(tmp_path) in synced  # the new directory's parent
    assert "/" in synced  # the walk went on past the one it could not sync


def test_an_io_error_of_an_existing_parent_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _spy(monkeypatch, fail={os.path.dirname(str(tmp_path)): errno.EIO})
    with pytest.raises(OSError) as e:
        make_dirs_durable(str(tmp_path / "d"))
    assert e.value.errno == errno.EIO


def test_a_new_directory_whose_parent_cannot_be_synced_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what this call created must be durable: no error is let pass there
    _spy(monkeypatch, fail={str(tmp_path): errno.EINVAL})
    with pytest.raises(OSError):
        make_dirs_durable(str(tmp_path / "d"))
