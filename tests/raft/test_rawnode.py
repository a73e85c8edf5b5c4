"""RawNode: the Ready contract, input validation, restart from storage, config checks."""

from __future__ import annotations

import random

import pytest

from node.raft.config import Config
from node.raft.errors import ConfigError, InvalidMessage, RaftError
from node.raft.node import RawNode
from node.raft.storage import MemoryStorage
from node.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    StateRole,
)
from tests.raft.harness import Cluster
from tests.raft.test_election import elect

MT = MessageType


def cfg(nid: int = 1, **kw: object) -> Config:
    return Config(id=nid, election_tick=10, heartbeat_tick=1, rng=random.Random(nid), **kw)  # type: ignore[arg-type]


def handle(node: RawNode, storage: MemoryStorage) -> list[Message]:
    """Process all readies following the contract; returns the sent messages."""
    sent: list[Message] = []
    while node.has_ready():
        rd = node.ready()
        if rd.snapshot is not None:
            storage.apply_snapshot(rd.snapshot)
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        sent.extend(rd.messages)
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                node.apply_conf_change(ConfChange.decode(e.data))
        node.advance(rd)
    return sent


def test_first_ready_applies_bootstrap_then_campaign_needs_sync() -> None:
    s = MemoryStorage()
    s.bootstrap([1, 2, 3])
    n = RawNode(cfg(), s)
    rd = n.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    assert rd.entries == () and rd.messages == ()
    for e in rd.committed_entries:
        n.apply_conf_change(ConfChange.decode(e.data))
    n.advance(rd)
    assert not n.has_ready()
    n.campaign()  # pre-vote: no term change yet, nothing to sync
    rd = n.ready()
    assert [m.type for m in rd.messages] == [MT.PRE_VOTE, MT.PRE_VOTE]
    assert rd.hard_state is None and not rd.must_sync
    n.advance(rd)
    n.step(Message(MT.PRE_VOTE_RESP, to=1, frm=2, term=2))
    rd = n.ready()
    # the vote for ourselves must be durable before VOTE requests leave
    assert rd.hard_state == HardState(term=2, vote=1, commit=3)
    assert rd.must_sync
    assert [m.type for m in rd.messages] == [MT.VOTE, MT.VOTE]
    n.advance(rd)


def test_commit_only_change_does_not_need_sync() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.node(1).propose(b"x")
    while c.process_ready(1):
        pass
    c.deliver()  # APP to followers
    node2 = c.node(2)
    rd = node2.ready()
    assert rd.entries and rd.must_sync
    c.members[2].storage.append(rd.entries)
    node2.advance(rd)
    node2.step(Message(MT.HEARTBEAT, to=2, frm=1, term=2, commit=5))
    rd = node2.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == 5
    assert not rd.must_sync
    assert [e.data for e in rd.committed_entries] == [b"x"]


def test_one_ready_at_a_time() -> None:
    s = MemoryStorage()
    s.bootstrap([1])
    n = RawNode(cfg(), s)
    rd = n.ready()
    assert not n.has_ready()
    with pytest.raises(RaftError, match="ready_outstanding"):
        n.ready()
    n.advance(rd)
    with pytest.raises(RaftError, match="no_ready_outstanding"):
        n.advance(rd)


@pytest.mark.parametrize(
    "msg",
    [
        Message(MT.HUP, to=1, frm=2, term=1),
        Message(MT.PROP, to=1, frm=2, term=1, entries=(Entry(1, 1),)),
        Message(MT.BEAT, to=1, frm=2, term=1),
        Message(MT.APP, to=9, frm=2, term=1),
        Message(MT.APP, to=1, frm=1, term=1),
        Message(MT.APP, to=1, frm=0, term=1),
        Message(MT.APP, to=1, frm=2, term=0),
        Message(MT.APP, to=1, frm=2, term=-1),
        Message(MT.APP, to=1, frm=2, term=2, index=3, log_term=1, entries=(Entry(2, 5),)),
        Message(MT.APP, to=1, frm=2, term=2, index=3, log_term=1, entries=(Entry(3, 4),)),
        Message(MT.APP, to=1, frm=2, term=2, index=3, log_term=2, entries=(Entry(1, 4),)),
        Message(MT.SNAP, to=1, frm=2, term=2),
        Message(MT.SNAP, to=1, frm=2, term=2, snapshot=Snapshot()),
        Message(MT.HEARTBEAT, to=1, frm=2, term=2, entries=(Entry(2, 4),)),
        Message(MT.HEARTBEAT, to=1, frm=2, term=2, snapshot=Snapshot()),
        Message(MT.TRANSFER_LEADER, to=1, frm=2, term=2),
    ],
)
def test_bad_messages_are_refused_and_change_nothing(msg: Message) -> None:
    c = Cluster([1, 2, 3])
    n = c.node(1)
    before = (n.status(), n.has_ready())
    with pytest.raises(InvalidMessage):
        n.step(msg)
    assert (n.status(), n.has_ready()) == before


def test_responses_from_non_members_are_ignored() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    st = c.node(1).status()
    c.node(1).step(Message(MT.APP_RESP, to=1, frm=7, term=st.term + 3, index=99))
    assert c.node(1).status() == st


def test_restart_recovers_persisted_state() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    for v in (b"a", b"b"):
        c.node(1).propose(v)
    c.stabilize()
    before = c.node(2).status()
    c.restart(2)
    after = c.node(2).status()
    assert (after.term, after.vote, after.commit, after.last_index) == (
        before.term,
        before.vote,
        before.commit,
        before.last_index,
    )
    assert after.role == StateRole.FOLLOWER
    c.stabilize()  # re-applies committed entries from the log
    assert c.members[2].applied == [b"a", b"b"]


def test_restart_with_commit_beyond_log_is_refused() -> None:
    s = MemoryStorage()
    s.bootstrap([1])
    s.set_hard_state(HardState(term=1, vote=0, commit=9))
    with pytest.raises(RaftError, match="hard_state_out_of_range"):
        RawNode(cfg(), s)


@pytest.mark.parametrize(
    "kw",
    [
        {"id": 0},
        {"heartbeat_tick": 0},
        {"election_tick": 1, "heartbeat_tick": 1},
        {"max_inflight": 0},
        {"max_size_per_msg": 0},
        {"applied": -1},
    ],
)
def test_bad_config_is_refused(kw: dict[str, int]) -> None:
    base: dict[str, object] = {
        "id": 1,
        "election_tick": 10,
        "heartbeat_tick": 1,
        "rng": random.Random(1),
    }
    base.update(kw)
    with pytest.raises(ConfigError):
        RawNode(Config(**base), MemoryStorage())  # type: ignore[arg-type]


def test_status_reports_progress_only_on_leader() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    assert set(c.node(1).status().progress) == {1, 2, 3}
    assert c.node(2).status().progress == {}
    assert c.node(2).status().leader == 1


def test_ack_beyond_leader_log_is_ignored() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    st = c.node(1).status()
    c.node(1).step(Message(MT.APP_RESP, to=1, frm=2, term=st.term, index=st.last_index + 50))
    after = c.node(1).status()
    assert after.progress[2].match == st.progress[2].match
    assert after.commit == st.commit


def test_restart_with_commit_below_snapshot_keeps_snapshot_commit() -> None:
    s = MemoryStorage()
    s.bootstrap([1])
    s.append([Entry(1, 2), Entry(1, 3)])
    s.create_snapshot(3, ConfState(voters=(1,)), b"")
    s.compact(3)
    s.set_hard_state(HardState(term=1, vote=1, commit=1))  # lazily written, older
    n = RawNode(cfg(), s)
    assert n.status().commit == 3
    assert n.status().applied == 3


def test_restart_with_snapshot_above_compaction_point() -> None:
    """Compaction may keep entries below the snapshot; commit still covers the snapshot."""
    s = MemoryStorage()
    s.bootstrap([1])
    s.append([Entry(1, 2), Entry(1, 3), Entry(1, 4)])
    s.create_snapshot(4, ConfState(voters=(1,)), b"")
    s.compact(2)
    s.set_hard_state(HardState(term=1, vote=1, commit=2))
    n = RawNode(cfg(applied=4), s)
    assert n.status().commit == 4 and n.status().applied == 4
    n = RawNode(cfg(), s)  # applied defaults to the snapshot: nothing is re-applied
    assert n.status().applied == 4
    assert not n.has_ready()
    with pytest.raises(ConfigError):
        RawNode(cfg(applied=9), s)
