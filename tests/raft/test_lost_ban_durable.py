"""The lost-state ban (MessageType.STATE_LOST, ``HardState.lost_until``) survives a restart.

A follower its leader told it lost entries it had acknowledged (its disk lost data it had
confirmed fsynced) withholds its vote until its commit index reaches the leader's. The ban
lived in memory only: restarted before it caught up, and before it heard a leader, the node
voted with its short log and could help elect a candidate missing committed entries. It is
now part of the durable hard state (a HARD_STATE_LOST record in the WAL, node.raft.wal),
recovered at start and cleared durably once lifted; a WAL written by an earlier release
holds no such record and recovers with no ban.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest

from node.raft.config import Config
from node.raft.durable import DurableStorage
from node.raft.node import RawNode
from node.raft.types import ConfState, Entry, HardState, Message, MessageType, Ready
from node.raft.wal import (
    REC_HARD_STATE,
    REC_HARD_STATE_LOST,
    WAL,
    WALCorrupt,
    encode_entry,
    encode_hard_state,
    encode_record,
)

MT = MessageType
ME = 2
FOUNDERS = ConfState(voters=(1, 2, 3))


def _open(directory: Path, segment_bytes: int = 64 * 1024 * 1024) -> tuple[DurableStorage, RawNode]:
    storage = DurableStorage(directory, bootstrap_conf_state=FOUNDERS, fsync=False,
                             segment_bytes=segment_bytes)
    node = RawNode(Config(id=ME, election_tick=10, heartbeat_tick=1, rng=random.Random(7)), storage)
    return storage, node


def _drive(storage: DurableStorage, node: RawNode) -> list[Ready]:
    """Persist, then advance, every Ready (the messages stay in the returned Readys)."""
    out = []
    while node.has_ready():
        rd = node.ready()
        storage.save_ready(rd.hard_state, rd.entries, rd.snapshot, sync=rd.must_sync)
        node.advance(rd)
        out.append(rd)
    return out


def _sent(readys: list[Ready]) -> list[Message]:
    return [m for rd in readys for m in rd.messages]


def _told_lost(directory: Path, until: int = 7) -> None:
    """A follower whose leader 1 (term 3) told it it lost entries up to ``until``: stopped at
    once, before it caught up."""
    storage, node = _open(directory)
    try:
        node.step(Message(MT.STATE_LOST, to=ME, frm=1, term=3, commit=until))
        readys = _drive(storage, node)
        # the ban is persisted (and synced) in the Ready after the message
        with_ban = [rd for rd in readys if rd.hard_state is not None and rd.hard_state.lost_until]
        assert len(with_ban) == 1 and with_ban[0].must_sync
        assert storage.hard_state == HardState(term=3, vote=0, commit=0, lost_until=until)
    finally:
        storage.close()


def test_a_follower_told_it_lost_state_and_restarted_before_catching_up_refuses_to_vote(
        tmp_path: Path) -> None:
    _told_lost(tmp_path)
    storage, node = _open(tmp_path)
    try:
        assert storage.hard_state.lost_until == 7
        assert node.withholds_votes and not node.state_unconfirmed
        # it has heard no leader since the restart: a candidate with a longer log than its
        # own (empty) one asks, for a pre-vote and a vote
        node.step(Message(MT.PRE_VOTE, to=ME, frm=3, term=4, index=5, log_term=3))
        node.step(Message(MT.VOTE, to=ME, frm=3, term=4, index=5, log_term=3))
        answers = [(m.type, m.reject) for m in _sent(_drive(storage, node))]
        assert answers == [(MT.PRE_VOTE_RESP, True), (MT.VOTE_RESP, True)], answers
        assert node.status().vote == 0 and storage.hard_state.vote == 0
        # nor does it campaign
        for _ in range(40):
            node.tick()
        assert not [m for m in _sent(_drive(storage, node)) if m.type in (MT.PRE_VOTE, MT.VOTE)]
    finally:
        storage.close()


def test_once_caught_up_the_ban_is_cleared_durably_and_a_restart_does_not_bring_it_back(
        tmp_path: Path) -> None:
    _told_lost(tmp_path)
    storage, node = _open(tmp_path)
    try:
        assert node.withholds_votes
        # the leader of term 4 replicates entries 1..7 and commits them: caught up
        ents = tuple(Entry(4, i) for i in range(1, 8))
        node.step(Message(MT.APP, to=ME, frm=1, term=4, index=0, log_term=0, entries=ents, commit=7))
        readys = _drive(storage, node)
        assert not node.withholds_votes
        lifted = [rd for rd in readys if rd.hard_state is not None and rd.hard_state.commit == 7]
        # the hard state lifting it is synced, not written lazily as a commit-only change
        assert lifted and lifted[0].hard_state.lost_until == 0 and lifted[0].must_sync
        assert storage.hard_state == HardState(term=4, vote=0, commit=7, lost_until=0)
    finally:
        storage.close()
    storage, node = _open(tmp_path)
    try:
        assert storage.hard_state.lost_until == 0 and not node.withholds_votes
        node.step(Message(MT.VOTE, to=ME, frm=3, term=5, index=7, log_term=4))
        answers = [(m.type, m.reject) for m in _sent(_drive(storage, node))]
        assert answers == [(MT.VOTE_RESP, False)] and storage.hard_state.vote == 3
    finally:
        storage.close()


def test_a_ban_below_the_recovered_commit_index_is_no_ban(tmp_path: Path) -> None:
    """A ban record whose commit index already reached it (not written by this release, which
    clears it, but harmless): the node votes."""
    wal_dir = tmp_path / "wal"
    wal = WAL(wal_dir, fsync=False)
    wal.save(HardState(term=2, vote=1, commit=3), [Entry(2, i) for i in range(1, 4)])
    wal.close()
    seg = sorted(wal_dir.iterdir())[-1]
    with open(seg, "ab") as f:
        f.write(encode_record(REC_HARD_STATE_LOST, struct.pack(">QQQQ", 2, 1, 3, 3)))
    storage, node = _open(tmp_path)
    try:
        assert storage.hard_state.lost_until == 3 and not node.withholds_votes
        assert node.hard_state.lost_until == 0  # and the next hard state saved clears it
    finally:
        storage.close()


def _old_release_segment(directory: Path) -> None:
    """A WAL segment in the layout the previous release wrote (HARD_STATE records only),
    built byte by byte: term 3, vote 1, commit 2, entries 1..2 of term 3."""
    def record(rec_type: int, payload: bytes) -> bytes:
        body = bytes((rec_type,)) + payload
        return struct.pack(">II", len(body), zlib.crc32(body)) + body

    data = record(2, struct.pack(">QQQ", 0, 0, 0))
    for i in (1, 2):
        data += record(1, struct.pack(">QQB", 3, i, 0) + b"tx")
    data += record(2, struct.pack(">QQQ", 3, 1, 2))
    wal_dir = directory / "wal"
    wal_dir.mkdir(parents=True)
    (wal_dir / "wal-0000000000000000.log").write_bytes(data)


def test_storage_written_by_the_previous_release_loads_with_no_ban(tmp_path: Path) -> None:
    _old_release_segment(tmp_path)
    storage, node = _open(tmp_path)
    try:
        assert storage.hard_state == HardState(term=3, vote=1, commit=2, lost_until=0)
        assert storage.last_index() == 2 and not node.withholds_votes
        node.step(Message(MT.VOTE, to=ME, frm=3, term=4, index=2, log_term=3))
        assert [(m.type, m.reject) for m in _sent(_drive(storage, node))] == [(MT.VOTE_RESP, False)]
    finally:
        storage.close()
    # it goes on writing the previous release's HARD_STATE records while there is no ban
    data = (tmp_path / "wal" / "wal-0000000000000000.log").read_bytes()
    assert data.endswith(encode_record(REC_HARD_STATE, struct.pack(">QQQ", 4, 3, 2)))


def test_the_ban_survives_a_segment_roll_and_a_compaction(tmp_path: Path) -> None:
    """Every new segment starts with the hard state: the ban is carried into it (the older
    segments holding the ban record are deleted by a compaction)."""
    storage, node = _open(tmp_path, segment_bytes=1)  # a new segment for every save
    try:
        ents = tuple(Entry(3, i) for i in range(1, 4))
        node.step(Message(MT.APP, to=ME, frm=1, term=3, index=0, log_term=0, entries=ents, commit=2))
        _drive(storage, node)
        node.step(Message(MT.STATE_LOST, to=ME, frm=1, term=3, commit=9))
        _drive(storage, node)
        node.step(Message(MT.HEARTBEAT, to=ME, frm=1, term=3, commit=3))
        _drive(storage, node)
        assert node.withholds_votes and storage.hard_state.lost_until == 9
        storage.create_snapshot(2, FOUNDERS, b"app")  # compaction: only a new segment stays
        assert len(storage.wal_segments()) == 1
    finally:
        storage.close()
    storage, node = _open(tmp_path)
    try:
        assert storage.hard_state == HardState(term=3, vote=0, commit=3, lost_until=9)
        assert node.withholds_votes
    finally:
        storage.close()


def test_the_last_hard_state_record_of_either_kind_wins(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    for hss, want in (
        ([HardState(3, 0, 0, 7), HardState(4, 0, 7)], HardState(4, 0, 7, 0)),
        ([HardState(3, 0, 0), HardState(3, 0, 0, 7)], HardState(3, 0, 0, 7)),
    ):
        for p in wal_dir.glob("*"):
            p.unlink()
        wal = WAL(wal_dir, fsync=False)
        wal.save(None, [Entry(3, i) for i in range(1, 8)])
        for hs in hss:
            wal.save(hs, [])
        wal.close()
        wal = WAL(wal_dir, fsync=False)
        assert wal.recovered.hard_state == want
        wal.close()


def test_a_lost_state_hard_state_record_of_the_wrong_size_is_corrupt(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    WAL(wal_dir, fsync=False).close()
    seg = sorted(wal_dir.iterdir())[-1]
    with open(seg, "ab") as f:
        f.write(encode_record(REC_HARD_STATE_LOST, struct.pack(">QQQ", 3, 0, 0)))
        f.write(encode_hard_state(HardState(3, 0, 0)))
    with pytest.raises(WALCorrupt, match="lost-state hard state record has wrong size"):
        WAL(wal_dir, fsync=False)


def test_damage_followed_by_a_lost_state_hard_state_record_is_no_torn_tail(tmp_path: Path) -> None:
    """The search for a valid record after damage knows the new record: a ban written after a
    damaged record is acknowledged data, not a torn tail to truncate (which would lose it)."""
    wal_dir = tmp_path / "wal"
    wal = WAL(wal_dir, fsync=False)
    wal.save(None, [Entry(3, 1, data=b"x" * 40)])
    wal.save(HardState(3, 0, 1, 9), [])
    wal.close()
    seg = sorted(wal_dir.iterdir())[-1]
    data = bytearray(seg.read_bytes())
    entry_at = len(data) - len(encode_hard_state(HardState(3, 0, 1, 9))) - len(
        encode_entry(Entry(3, 1, data=b"x" * 40)))
    data[entry_at + 2] ^= 0x10  # the entry's length now runs past end of file
    seg.write_bytes(bytes(data))
    with pytest.raises(WALCorrupt, match="valid record follows"):
        WAL(wal_dir, fsync=False)
