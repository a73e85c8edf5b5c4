"""Resumable event listening."""

from __future__ import annotations

from pathlib import Path

import pytest
from rxchain.v1 import services_pb2, transaction_pb2

from client.errors import RxClientError
from client.events import EventListener, FileCheckpoint, MemoryCheckpoint


def _block(n: int) -> services_pb2.EventsResponse:
    msg = services_pb2.EventsResponse(block_number=n)
    msg.txs.add(tx_id=f"tx{n}", code=transaction_pb2.VALID, contract="prescription")
    msg.events.add(contract="prescription", name="rx.key_fetch", payload=b'{"rx_id":"R"}',
                   tx_id=f"tx{n}")
    return msg


class FlakySource:
    """Serves blocks 0..top; the first stream dies after ``die_after`` blocks."""

    def __init__(self, top: int, die_after: int | None):
        self.top, self.die_after = top, die_after
        self.starts: list[int] = []

    def __call__(self, start, contract, follow):
        self.starts.append(start)
        for i, n in enumerate(range(start, self.top + 1)):
            if self.die_after is not None and i == self.die_after:
                self.die_after = None
                raise RxClientError("SERVICE_UNAVAILABLE", "peer restarted")
            yield _block(n)


def test_listener_resumes_after_disconnect_without_duplicates():
    src = FlakySource(top=5, die_after=3)
    cp = MemoryCheckpoint()
    sleeps: list[float] = []
    got = list(EventListener(src, cp, sleep=sleeps.append).blocks(follow=False))
    assert [b.block for b in got] == [0, 1, 2, 3, 4, 5]
    assert src.starts == [0, 3] and sleeps == [0.2]
    assert got[0].txs == [("tx0", "VALID")]
    assert got[0].events[0].payload == {"rx_id": "R"}
    assert cp.load() == 6


def test_file_checkpoint_survives_a_restart(tmp_path: Path):
    cp = FileCheckpoint(tmp_path / "cp")
    assert cp.load() == 0
    list(EventListener(FlakySource(3, None), cp).blocks(follow=False))
    src = FlakySource(5, None)
    again = list(EventListener(src, FileCheckpoint(tmp_path / "cp")).blocks(follow=False))
    assert [b.block for b in again] == [4, 5] and src.starts == [4]


def test_other_errors_and_exhausted_reconnects_propagate():
    class Dead:
        def __call__(self, start, contract, follow):
            raise RxClientError("SERVICE_UNAVAILABLE", "down")
            yield  # pragma: no cover

    with pytest.raises(RxClientError):
        list(EventListener(Dead(), MemoryCheckpoint(), max_reconnects=2,
                           sleep=lambda _: None).blocks())


def test_bad_checkpoint_file(tmp_path: Path):
    (tmp_path / "cp").write_text("nope")
    with pytest.raises(RxClientError) as e:
        FileCheckpoint(tmp_path / "cp").load()
    assert e.value.reason == "BAD_CHECKPOINT"
