"""MemoryStorage, ConfChange encoding and bootstrap."""

from __future__ import annotations

import pytest

from node.raft.bootstrap import bootstrap_entries
from node.raft.errors import Compacted, ConfigError, RaftError, SnapshotOutOfDate, Unavailable
from node.raft.storage import MemoryStorage, limit_size
from node.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMeta,
)


def ents(*pairs: tuple[int, int]) -> list[Entry]:
    return [Entry(t, i, EntryType.NORMAL, b"x%d" % i) for t, i in pairs]


def test_fresh_storage() -> None:
    s = MemoryStorage(ConfState(voters=(1, 2)))
    assert s.first_index() == 1
    assert s.last_index() == 0
    assert s.term(0) == 0
    assert s.initial_state() == (HardState(), ConfState(voters=(1, 2)))
    assert s.entries(1, 1) == []
    with pytest.raises(Unavailable):
        s.entries(1, 2)
    with pytest.raises(Unavailable):
        s.term(1)


def test_append_truncates_conflicting_tail() -> None:
    s = MemoryStorage()
    s.append(ents((1, 1), (1, 2), (1, 3)))
    s.append(ents((2, 2)))
    assert [(e.term, e.index) for e in s.entries(1, 3)] == [(1, 1), (2, 2)]
    assert s.last_index() == 2
    with pytest.raises(Unavailable):
        s.append(ents((2, 5)))  # gap


def test_compact_and_snapshot() -> None:
    s = MemoryStorage()
    s.append(ents((1, 1), (1, 2), (2, 3), (2, 4), (3, 5)))
    snap = s.create_snapshot(3, ConfState(voters=(1,)), b"state")
    assert snap.meta == SnapshotMeta(3, 2, ConfState(voters=(1,)))
    s.compact(3)
    assert s.first_index() == 4
    assert s.term(3) == 2
    with pytest.raises(Compacted):
        s.term(2)
    with pytest.raises(Compacted):
        s.entries(3, 5)
    assert [e.index for e in s.entries(4, 6)] == [4, 5]
    s.compact(2)  # no-op
    assert s.first_index() == 4
    with pytest.raises(SnapshotOutOfDate):
        s.create_snapshot(3, ConfState(), b"")
    with pytest.raises(Unavailable):
        s.compact(9)
    # appending entries that are partly compacted keeps the rest
    s.append(ents((3, 3), (3, 4), (4, 5)))
    assert [(e.term, e.index) for e in s.entries(4, 6)] == [(3, 4), (4, 5)]


def test_apply_snapshot_replaces_everything() -> None:
    s = MemoryStorage()
    s.append(ents((1, 1), (1, 2)))
    snap = Snapshot(SnapshotMeta(10, 4, ConfState(voters=(1, 2, 3))), b"d")
    s.apply_snapshot(snap)
    assert s.first_index() == 11
    assert s.last_index() == 10
    assert s.term(10) == 4
    assert s.snapshot() == snap
    assert s.initial_state()[1] == ConfState(voters=(1, 2, 3))
    with pytest.raises(SnapshotOutOfDate):
        s.apply_snapshot(snap)


def test_entries_size_limit_returns_at_least_one() -> None:
    s = MemoryStorage()
    s.append([Entry(1, i, EntryType.NORMAL, b"y" * 100) for i in range(1, 6)])
    one = s.entries(1, 6, max_bytes=1)
    assert [e.index for e in one] == [1]
    two = s.entries(1, 6, max_bytes=2 * one[0].size())
    assert [e.index for e in two] == [1, 2]
    assert len(limit_size(s.entries(1, 6), None)) == 5


def test_conf_change_roundtrip_and_layout() -> None:
    cc = ConfChange(ConfChangeType.REMOVE_NODE, 7, b"ctx")
    data = cc.encode()
    assert data[:4] == b"RXCC"
    assert data[4] == 1 and data[5] == 1
    assert int.from_bytes(data[6:14], "big") == 7
    assert int.from_bytes(data[14:18], "big") == 3
    assert ConfChange.decode(data) == cc


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"RXCC", "conf_change_truncated"),
        (b"XXXX" + bytes(14), "conf_change_bad_magic"),
        (b"RXCC\x02" + bytes(13), "conf_change_bad_version"),
        (b"RXCC\x01\x09" + (1).to_bytes(8, "big") + bytes(4), "conf_change_bad_type"),
        (b"RXCC\x01\x00" + bytes(8) + bytes(4), "conf_change_bad_node_id"),
        (b"RXCC\x01\x00" + (1).to_bytes(8, "big") + (5).to_bytes(4, "big") + b"ab",
         "conf_change_bad_length"),
    ],
)
def test_conf_change_decode_rejects_garbage(data: bytes, reason: str) -> None:
    with pytest.raises(RaftError) as ei:
        ConfChange.decode(data)
    assert ei.value.reason == reason


def test_conf_change_encode_rejects_bad_id() -> None:
    with pytest.raises(RaftError):
        ConfChange(ConfChangeType.ADD_NODE, 0).encode()


def test_bootstrap() -> None:
    entries, hs = bootstrap_entries([1, 2, 3])
    assert [ConfChange.decode(e.data).node_id for e in entries] == [1, 2, 3]
    assert all(e.type == EntryType.CONF_CHANGE and e.term == 1 for e in entries)
    assert hs == HardState(term=1, vote=0, commit=3)
    with pytest.raises(ConfigError):
        bootstrap_entries([1, 1])
    s = MemoryStorage()
    s.bootstrap([1, 2])
    assert s.last_index() == 2
    with pytest.raises(RaftError):
        s.bootstrap([1, 2])
