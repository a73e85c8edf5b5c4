"""A voter that lost its storage and restarts blank (term 0, empty log): unless the application
confirms it is new, it must neither vote nor campaign (``Config.state_unconfirmed``) -- its
empty log finds every candidate up to date, so its vote can elect a candidate missing an entry
it had acknowledged, and that committed entry is lost."""

from __future__ import annotations

import pytest

from node.raft.tracker import ProgressState
from node.raft.types import ConfState, Entry, Message, MessageType, StateRole
from tests.raft.harness import Cluster
from tests.raft.test_election import elect

MT = MessageType
FOUNDERS = ConfState(voters=(1, 2, 3))


def _committed_on_1_and_2_only() -> Cluster:
    """Voters 1, 2, 3 (every node from the founding ConfState, as the orderers start): ``a``
    reaches all, ``x`` is committed with 3 cut off, so only 1 and 2 hold it."""
    c = Cluster([])
    for nid in (1, 2, 3):
        c.add_member_with_conf_state(nid, FOUNDERS)
    elect(c, 1)
    c.node(1).propose(b"a")
    c.stabilize()
    c.isolate(3)
    c.node(1).propose(b"x")
    c.stabilize()
    assert c.members[1].applied == [b"a", b"x"] and c.members[2].applied == [b"a", b"x"]
    assert c.members[3].applied == [b"a"]
    return c


def _election_among_2_and_3(c: Cluster) -> None:
    """1 is down; 2 and 3 time out as often as it takes to elect someone (if they can)."""
    c.heal()
    c.isolate(1)
    for _ in range(60):
        c.tick(2)
        c.tick(3)
        c.stabilize()


@pytest.mark.parametrize("unconfirmed", [False, True])
def test_a_blank_voter_elects_a_candidate_missing_a_committed_entry_unless_unconfirmed(
    unconfirmed: bool,
) -> None:
    c = _committed_on_1_and_2_only()
    c.add_member_with_conf_state(2, FOUNDERS, state_unconfirmed=unconfirmed)  # 2 emptied, restarted
    _election_among_2_and_3(c)
    if not unconfirmed:
        # the hazard itself: 3 leads with 2's vote and without x, which 1 and 2 had committed
        assert c.node(3).status().role == StateRole.LEADER
        c.node(3).propose(b"y")
        c.stabilize()
        assert c.members[3].applied == [b"a", b"y"]
        return
    assert c.leader() == 1  # 1 (cut off) still thinks it leads; neither 2 nor 3 was elected
    assert c.node(2).status().term == 0 and c.node(2).status().vote == 0
    # 1 comes back (2, refused by the application, stays out): x is kept, 3 catches up
    c.heal()
    c.isolate(2)
    c.node(1).propose(b"y")
    c.stabilize()
    for nid in (1, 3):
        assert c.members[nid].applied == [b"a", b"x", b"y"], nid
    assert c.node(2).state_unconfirmed


def test_an_unconfirmed_node_refuses_votes_and_pre_votes_of_any_term() -> None:
    c = Cluster([])
    node = c.add_member_with_conf_state(2, FOUNDERS, state_unconfirmed=True).node
    node.step(Message(MT.PRE_VOTE, to=2, frm=3, term=1, index=10, log_term=1))
    assert node.raft.msgs == []  # term 0: no refusal to carry, none granted either
    for mtype, resp in ((MT.VOTE, MT.VOTE_RESP), (MT.PRE_VOTE, MT.PRE_VOTE_RESP)):
        for term in (1, 5):
            node.step(Message(mtype, to=2, frm=3, term=term, index=10, log_term=term))
            out = node.raft.msgs[-1]
            assert (out.type, out.to, out.reject) == (resp, 3, True)
    assert node.raft.vote == 0
    node.confirm_state()
    node.step(Message(MT.VOTE, to=2, frm=3, term=6, index=10, log_term=6))
    out = node.raft.msgs[-1]
    assert (out.type, out.reject, node.raft.vote) == (MT.VOTE_RESP, False, 3)


def test_an_unconfirmed_node_never_campaigns_until_confirmed() -> None:
    c = Cluster([])
    node = c.add_member_with_conf_state(1, ConfState(voters=(1,)), state_unconfirmed=True).node
    assert not node.raft.promotable()
    c.tick(1, 100)
    node.campaign()
    node.raft.step(Message(MT.TIMEOUT_NOW, to=1, frm=2, term=0))  # a leadership transfer to it
    c.stabilize()
    assert node.status().role == StateRole.FOLLOWER and node.status().term == 0
    node.confirm_state()
    assert not node.state_unconfirmed
    c.tick(1, 30)
    c.stabilize()
    assert node.status().role == StateRole.LEADER


def test_the_leader_finds_a_follower_that_lost_acknowledged_entries_and_replicates_to_it_again() -> None:
    """etcd-raft takes a rejection below the follower's match for stale: the leader probed the
    emptied follower at its old match for ever (the harness never stabilized)."""
    c = _committed_on_1_and_2_only()
    c.heal()
    c.stabilize()
    assert c.node(1).take_lost_followers() == []
    c.add_member_with_conf_state(2, FOUNDERS)  # emptied; the application confirmed it wrongly
    c.node(1).propose(b"y")
    c.node(1).propose(b"z")  # a second append takes the leader from replicating to probing 2
    out = c.stabilize()
    assert c.node(1).take_lost_followers() == [(2, 3, 0)]
    assert c.node(1).take_lost_followers() == []  # taken once
    # the leader told 2, which withheld its vote until it held what the leader had committed
    told = [line for line in out if "STATE_LOST" in line]
    assert told == ["1->2 STATE_LOST term=1"], told
    assert c.node(2).raft.lost_until == 3  # the leader's commit index then: x included
    for nid in (1, 2, 3):
        assert c.members[nid].applied == [b"a", b"x", b"y", b"z"], nid
    assert c.node(1).status().progress[2].match == c.node(1).status().last_index
    assert not c.node(2).withholds_votes


def test_a_follower_told_it_lost_state_votes_again_only_once_caught_up() -> None:
    c = Cluster([])
    node = c.add_member_with_conf_state(2, FOUNDERS).node
    node.step(Message(MT.STATE_LOST, to=2, frm=1, term=3, commit=7))
    assert node.withholds_votes and not node.raft.promotable() and node.status().leader == 1
    c.tick(2, 30)  # the leader gone silent: out of its lease, and still no campaign
    assert node.status().role == StateRole.FOLLOWER and node.status().term == 3
    node.step(Message(MT.VOTE, to=2, frm=3, term=4, index=9, log_term=4))
    assert (node.raft.msgs[-1].type, node.raft.msgs[-1].reject, node.raft.vote) == (MT.VOTE_RESP, True, 0)
    node.raft.log.append([Entry(4, i) for i in range(1, 8)])
    node.raft.log.commit_to(7)
    assert not node.withholds_votes
    node.step(Message(MT.VOTE, to=2, frm=3, term=5, index=9, log_term=4))
    assert (node.raft.msgs[-1].reject, node.raft.vote) == (False, 3)


def test_a_stale_rejection_is_no_lost_follower() -> None:
    c = _committed_on_1_and_2_only()
    c.heal()
    c.node(1).propose(b"y")
    c.stabilize()
    leader = c.node(1).raft
    pr = leader.tracker.progress[3]
    match = pr.match
    assert match == leader.log.last_index() == 4 and pr.state == ProgressState.REPLICATE
    # replicating: a rejection at or below the match is an old one
    leader.step(Message(MT.APP_RESP, to=1, frm=3, term=leader.term, index=match, reject=True, reject_hint=0))
    # probing at match: a rejection of an earlier probe (another index) is an old one too
    pr.become_probe()
    leader.step(Message(MT.APP_RESP, to=1, frm=3, term=leader.term, index=match - 1, reject=True, reject_hint=0))
    assert leader.lost_followers == [] and pr.match == match
    # the current probe's rejection, below the match: lost
    leader.step(Message(MT.APP_RESP, to=1, frm=3, term=leader.term, index=pr.next - 1, reject=True,
                        reject_hint=1))
    assert leader.lost_followers == [(3, match, 1)]


def test_a_lost_state_message_the_transport_dropped_is_told_again_with_each_heartbeat() -> None:
    """The leader forgets the follower's match when it finds it lost state, so it never finds
    it again: a dropped MsgStateLost (a full queue, a broken stream) left the follower voting
    with a log short of what it had acknowledged."""
    c = _committed_on_1_and_2_only()
    c.heal()
    c.stabilize()
    c.add_member_with_conf_state(2, FOUNDERS)  # emptied; the application confirmed it wrongly
    leader = c.node(1).raft
    c.node(1).propose(b"y")
    c.node(1).propose(b"z")
    for _ in range(20):
        for nid in (1, 2, 3):
            while c.process_ready(nid):
                pass
        c.deliver()
        if leader.lost_followers:
            break
    assert [f for f, _, _ in leader.lost_followers] == [2]
    c.cut(1, 2)  # the message telling it is lost, and the leader's appends with it
    c.stabilize()
    assert not c.node(2).withholds_votes
    c.heal()
    c.tick(1, leader.heartbeat_timeout)
    c.process_ready(1)
    out = c.deliver()
    assert "1->2 STATE_LOST term=1" in out, out
    assert c.node(2).withholds_votes and c.node(2).raft.lost_until == 3
    c.stabilize()
    for nid in (1, 2, 3):
        assert c.members[nid].applied == [b"a", b"x", b"y", b"z"], nid
    assert not c.node(2).withholds_votes
    c.tick(1, leader.heartbeat_timeout)  # caught up: no longer told
    c.process_ready(1)
    assert not [line for line in c.deliver() if "STATE_LOST" in line]
    assert leader.lost_told == {}
