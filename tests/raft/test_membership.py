"""Single-server membership changes, snapshot install and leadership transfer."""

from __future__ import annotations

import random

import pytest

from node.raft.config import Config
from node.raft.core import Raft
from node.raft.errors import ProposalDropped
from node.raft.storage import MemoryStorage
from node.raft.tracker import ProgressState
from node.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    StateRole,
)
from tests.raft.harness import Cluster
from tests.raft.test_election import elect, leaders

MT = MessageType
ADD, REMOVE, LEARNER = (
    ConfChangeType.ADD_NODE,
    ConfChangeType.REMOVE_NODE,
    ConfChangeType.ADD_LEARNER_NODE,
)


def test_added_node_catches_up_and_counts_for_quorum() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.node(1).propose(b"before")
    c.stabilize()
    c.add_member(4)
    c.node(1).propose_conf_change(ConfChange(ADD, 4))
    c.stabilize()
    c.node(1).propose(b"after")
    c.stabilize()
    assert c.node(1).status().conf_state.voters == (1, 2, 3, 4)
    assert c.members[4].applied == [b"before", b"after"]
    assert c.node(4).status().conf_state.voters == (1, 2, 3, 4)
    # with 4 voters a quorum is 3: leader + one follower no longer commits
    c.isolate(3)
    c.isolate(4)
    c.node(1).propose(b"needs-three")
    c.stabilize()
    st = c.node(1).status()
    assert st.commit < st.last_index
    c.heal()
    c.tick(1, 1)
    c.stabilize()
    assert c.members[4].applied[-1] == b"needs-three"


def test_only_one_pending_conf_change_and_no_nonsense_changes() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    with pytest.raises(ProposalDropped, match="already a voter"):
        c.node(1).propose_conf_change(ConfChange(ADD, 2))
    with pytest.raises(ProposalDropped, match="not a member"):
        c.node(1).propose_conf_change(ConfChange(REMOVE, 9))
    c.node(1).propose_conf_change(ConfChange(ADD, 4))
    with pytest.raises(ProposalDropped, match="pending"):
        c.node(1).propose_conf_change(ConfChange(REMOVE, 3))
    c.add_member(4)
    c.stabilize()
    c.node(1).propose_conf_change(ConfChange(REMOVE, 3))  # accepted once applied
    c.stabilize()
    assert c.node(1).status().conf_state.voters == (1, 2, 4)


def test_cannot_remove_last_voter() -> None:
    c = Cluster([1])
    c.tick(1, 20)
    c.stabilize()
    with pytest.raises(ProposalDropped, match="last voter"):
        c.node(1).propose_conf_change(ConfChange(REMOVE, 1))


def test_removed_leader_steps_down_and_others_continue() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.node(1).propose_conf_change(ConfChange(REMOVE, 1))
    c.stabilize()
    assert c.node(1).status().role == StateRole.FOLLOWER
    assert not c.node(1).raft.promotable()
    c.tick(1, 100)  # a removed node never campaigns
    assert c.node(1).status().role == StateRole.FOLLOWER
    c.tick(3, 10)
    c.tick(2, 30)
    c.stabilize()
    assert leaders(c) in ([2], [3])
    lead = leaders(c)[0]
    c.node(lead).propose(b"x")
    c.stabilize()
    assert c.members[2].applied == [b"x"] and c.members[3].applied == [b"x"]


def test_learner_receives_log_but_does_not_vote_or_count() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.add_member(4)
    c.node(1).propose_conf_change(ConfChange(LEARNER, 4))
    c.stabilize()
    assert c.node(1).status().conf_state.learners == (4,)
    c.node(1).propose(b"x")
    c.stabilize()
    assert c.members[4].applied == [b"x"]
    assert not c.node(4).raft.promotable()
    c.tick(4, 100)
    assert c.node(4).status().role == StateRole.FOLLOWER
    # promote
    c.node(1).propose_conf_change(ConfChange(ADD, 4))
    c.stabilize()
    assert c.node(4).status().conf_state.voters == (1, 2, 3, 4)
    assert c.node(4).raft.promotable()


def test_no_campaign_while_a_committed_conf_change_is_unapplied() -> None:
    s = MemoryStorage(ConfState(voters=(1, 2, 3)))
    cc = ConfChange(ADD, 4).encode()
    s.append([Entry(1, 1), Entry(1, 2, EntryType.CONF_CHANGE, cc)])
    s.set_hard_state(HardState(term=1, commit=2))
    r = Raft(Config(id=1, election_tick=10, heartbeat_tick=1, rng=random.Random(1)), s)
    r.step(Message(MT.HUP, to=1, frm=1))
    assert r.state == StateRole.FOLLOWER and not r.msgs
    r.log.applied_to(2)
    r.step(Message(MT.HUP, to=1, frm=1))
    assert r.soft_state().role == StateRole.PRE_CANDIDATE


def test_snapshot_install_for_lagging_follower_and_retry_after_failure() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.isolate(3)
    for v in (b"a", b"b", b"c"):
        c.node(1).propose(v)
    c.stabilize()
    snap = c.snapshot(1)
    assert c.members[1].storage.first_index() == snap.meta.index + 1
    # first attempt: the snapshot message is lost
    c.heal()
    c.drop_types = {MT.SNAP}
    c.tick(1, 1)
    out = c.stabilize()
    snaps = [line for line in out if "SNAP " in line]
    assert len(snaps) == 1 and snaps[0].endswith("DROPPED")
    c.drop_types = set()
    pr = c.node(1).status().progress[3]
    assert pr.state == ProgressState.SNAPSHOT
    c.node(1).report_snapshot(3, ok=False)
    assert c.node(1).status().progress[3].state == ProgressState.PROBE
    c.tick(1, 1)
    c.stabilize()
    assert c.members[3].applied == [b"a", b"b", b"c"]
    assert c.members[3].storage.snapshot().meta.index == snap.meta.index
    assert c.node(1).status().progress[3].state == ProgressState.REPLICATE
    c.node(1).propose(b"d")
    c.stabilize()
    assert c.members[3].applied == [b"a", b"b", b"c", b"d"]


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.isolate(3)
    c.node(1).propose(b"x")
    c.stabilize()
    c.heal()
    c.node(1).transfer_leader(3)
    assert c.node(1).status().lead_transferee == 3
    with pytest.raises(ProposalDropped, match="transfer"):
        c.node(1).propose(b"y")
    out = c.stabilize()
    i_app = next(i for i, line in enumerate(out) if "x]" in line and line.startswith("1->3"))
    i_timeout = next(i for i, line in enumerate(out) if "TIMEOUT_NOW" in line)
    assert i_app < i_timeout
    assert leaders(c) == [3]


def test_transfer_via_follower_is_forwarded() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.node(3).transfer_leader(2)
    out = c.stabilize()
    # the forwarded request names its real sender (transports authenticate frm)
    assert out[0].startswith("3->1 TRANSFER_LEADER")
    assert leaders(c) == [2]


def test_transfer_aborts_after_election_timeout() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.isolate(3)
    c.node(1).transfer_leader(3)
    c.stabilize()
    assert c.node(1).status().lead_transferee == 3
    c.tick(1, 10)
    assert c.node(1).status().lead_transferee == 0
    c.node(1).propose(b"ok-again")


def test_transfer_to_self_or_non_member_is_a_no_op() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.node(1).transfer_leader(1)
    c.node(1).transfer_leader(9)
    assert c.node(1).status().lead_transferee == 0
    c.stabilize()
    assert leaders(c) == [1]


def test_leader_sends_snapshot_only_to_recently_active_peers() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.isolate(3)
    c.node(1).propose(b"a")
    c.stabilize()
    c.snapshot(1)
    c.tick(1, 10)  # check-quorum round marks 3 inactive
    c.stabilize()
    assert not c.node(1).status().progress[3].recent_active
    c.node(1).raft.maybe_send_append(3, send_if_empty=True)
    assert not any(m.type == MT.SNAP for m in c.node(1).raft.msgs)


def test_bootstrap_from_conf_state_and_joiner_with_founding_conf_state() -> None:
    founders = ConfState(voters=(1, 2, 3))
    c = Cluster([])
    for nid in (1, 2, 3):
        c.add_member_with_conf_state(nid, founders)
    elect(c, 1)
    c.node(1).propose(b"a")
    c.stabilize()
    c.add_member_with_conf_state(4, founders)
    assert not c.node(4).raft.promotable()
    c.node(1).propose_conf_change(ConfChange(ADD, 4))
    c.stabilize()
    c.node(1).propose(b"b")
    c.stabilize()
    assert c.node(4).status().conf_state.voters == (1, 2, 3, 4)
    assert c.node(4).raft.promotable()
    assert c.members[4].applied == [b"a", b"b"]
