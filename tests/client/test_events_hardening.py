"""Event checkpoints written durably and read defensively; gaps and hostile payloads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from rxchain.v1 import services_pb2

from client.errors import RxClientError
from client.events import EventListener, FileCheckpoint, MemoryCheckpoint, to_block_events
from tests.client.test_events import _block


def test_checkpoint_save_is_fsynced_before_and_after_the_rename(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without fsync a power loss can leave an empty checkpoint, read back as block 0: a replay."""
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(a: str | Path, b: str | Path) -> None:
        calls.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    cp = FileCheckpoint(tmp_path / "cp")
    cp.save(42)
    assert calls == ["fsync", "replace", "fsync"]
    assert cp.load() == 42
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp"]  # no temporary file left


def test_checkpoint_save_ignores_a_stale_temporary(tmp_path: Path) -> None:
    (tmp_path / "cp.tmp").mkdir()  # left by something else under the old fixed temporary name
    cp = FileCheckpoint(tmp_path / "cp")
    cp.save(7)
    assert cp.load() == 7


@pytest.mark.parametrize("content", ["-5", "99999999999999999999999", "0" * 5000, "1e3", "0x10", " 7 8"])
def test_checkpoint_with_no_valid_block_number_is_bad(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cp"
    path.write_text(content)
    with pytest.raises(RxClientError) as e:
        FileCheckpoint(path).load()
    assert e.value.reason == "BAD_CHECKPOINT"


def test_checkpoint_that_is_a_directory_or_fifo_is_bad_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for name in ("dir", "fifo"):
        with pytest.raises(RxClientError) as e:
            FileCheckpoint(tmp_path / name).load()
        assert e.value.reason == "BAD_CHECKPOINT"


def test_a_gap_in_the_block_stream_is_refused_not_skipped() -> None:
    def source(start: int, contract: str, follow: bool) -> Iterator[services_pb2.EventsResponse]:
        for n in (0, 1, 3, 4):
            if n >= start:
                yield _block(n)

    cp = MemoryCheckpoint()
    seen = []
    with pytest.raises(RxClientError) as e:
        for b in EventListener(source, cp, sleep=lambda _s: None).blocks(follow=False):
            seen.append(b.block)
    assert e.value.reason == "EVENTS_GAP"
    assert seen == [0, 1] and cp.load() == 2


def test_deeply_nested_event_payload_is_kept_as_hex() -> None:
    msg = services_pb2.EventsResponse(block_number=3)
    msg.events.add(contract="c", name="n", payload=b"[" * 100_000, tx_id="t")
    ev = to_block_events(msg).events[0]
    assert ev.payload == ("5b" * 100_000)


def test_checkpoint_save_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    """A checkpoint the previous version wrote (0644: a monitor running as another user reads
    it) must not turn 0600 at the next save."""
    path = tmp_path / "cp"
    path.write_text("5\n")
    path.chmod(0o644)
    cp = FileCheckpoint(path)
    assert cp.load() == 5
    cp.save(6)
    assert (path.read_text(), path.stat().st_mode & 0o777) == ("6\n", 0o644)
