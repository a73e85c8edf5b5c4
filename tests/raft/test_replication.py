"""Log replication, conflict back-off, commit rules and flow control."""

from __future__ import annotations

import random

import pytest

from node.raft.config import Config
from node.raft.core import Raft
from node.raft.errors import ProposalDropped
from node.raft.storage import MemoryStorage
from node.raft.tracker import ProgressState
from node.raft.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    StateRole,
)
from tests.raft.harness import Cluster
from tests.raft.test_election import elect

MT = MessageType


def E(term: int, index: int, data: bytes = b"") -> Entry:
    return Entry(term, index, EntryType.NORMAL, data)


def core_with_log(
    terms: list[int], hs_term: int, peers: tuple[int, ...] = (1, 2), **kw: object
) -> Raft:
    s = MemoryStorage(ConfState(voters=peers))
    s.append([E(t, i + 1) for i, t in enumerate(terms)])
    s.set_hard_state(HardState(term=hs_term))
    cfg = Config(id=1, election_tick=10, heartbeat_tick=1, rng=random.Random(1), **kw)  # type: ignore[arg-type]
    return Raft(cfg, s)


@pytest.mark.parametrize(("acked", "want_commit"), [(1, 0), (2, 0), (3, 3)])
def test_leader_only_commits_entries_of_its_term(acked: int, want_commit: int) -> None:
    """Raft §5.4.2 (Figure 8): replication counts alone never commit an old-term entry."""
    r = core_with_log([1, 2], hs_term=2)
    r.become_candidate()
    r.become_leader()  # term 3, appends empty entry 3
    assert r.term == 3 and r.log.last_index() == 3
    r.step(Message(MT.APP_RESP, to=1, frm=2, term=3, index=acked))
    assert r.log.committed == want_commit


def test_conflicting_follower_is_repaired_with_few_round_trips() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.isolate(1)
    for i in range(20):
        c.node(1).propose(b"stale%d" % i)
    c.stabilize()
    c.tick(3, 10)
    c.tick(2, 30)
    c.stabilize()
    assert c.node(2).status().role == StateRole.LEADER
    for i in range(20):
        c.node(2).propose(b"good%d" % i)
    c.stabilize()
    c.tick(1, 20)  # old leader steps down (check quorum)
    c.stabilize()
    c.heal()
    c.isolate(2)
    c.tick(3, 30)  # 3 (log ends with 20 good entries) wins with 1's vote, then probes 1
    out = c.stabilize()
    assert c.node(3).status().role == StateRole.LEADER
    rejects = [line for line in out if "REJECT" in line and line.startswith("1->3")]
    # one rejection suffices to jump over 20 divergent entries (reject hint by term)
    assert len(rejects) == 1, out
    log1 = [(e.term, e.data) for e in c.node(1).raft.log.all_entries()]
    log3 = [(e.term, e.data) for e in c.node(3).raft.log.all_entries()]
    assert log1 == log3
    assert all(not d.startswith(b"stale") for _, d in log1)
    assert c.members[1].applied == [b"good%d" % i for i in range(20)]


def test_proposals_dropped_without_leadership() -> None:
    c = Cluster([1, 2, 3])
    with pytest.raises(ProposalDropped, match="no leader"):
        c.node(1).propose(b"x")
    elect(c, 1)
    with pytest.raises(ProposalDropped, match="leader is 1"):
        c.node(2).propose(b"x")
    c.node(3).campaign()  # pre-candidate
    with pytest.raises(ProposalDropped):
        c.node(3).propose(b"x")


def test_max_inflight_bounds_pipelining() -> None:
    c = Cluster([1, 2, 3], max_inflight=2)
    elect(c, 1)
    c.cut(1, 3)
    for i in range(6):
        c.node(1).propose(b"p%d" % i)
    out = c.stabilize()
    to3 = [line for line in out if line.startswith("1->3 APP")]
    assert len(to3) == 2  # the window is full; the rest waits for acknowledgements
    st = c.node(1).status()
    assert st.progress[3].state == ProgressState.REPLICATE
    assert st.commit == st.last_index  # 1 and 2 are a quorum
    c.heal()
    c.tick(1, 1)  # heartbeat response frees the window
    c.stabilize()
    assert c.node(1).status().progress[3].match == st.last_index


def test_max_size_per_msg_splits_appends() -> None:
    c = Cluster([1, 2], max_size_per_msg=60)
    elect(c, 1)
    c.cut(1, 2)
    for i in range(4):
        c.node(1).propose(b"x" * 30 + b"%d" % i)
    c.stabilize()
    c.heal()
    c.tick(1, 1)
    out = c.stabilize()
    apps = [line for line in out if line.startswith("1->2 APP ") and "entries" in line]
    assert len(apps) >= 4 and all(", " not in line for line in apps)
    assert len(c.members[2].applied) == 4


def test_uncommitted_size_limit_drops_proposals() -> None:
    c = Cluster([1, 2, 3])
    c.members[1].node.raft.max_uncommitted_size = 100
    elect(c, 1)
    c.isolate(1)
    c.node(1).propose(b"a" * 60)
    c.node(1).propose(b"b" * 30)
    with pytest.raises(ProposalDropped, match="uncommitted"):
        c.node(1).propose(b"c" * 30)


def test_heartbeat_commit_is_capped_at_follower_match() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.cut(1, 3)
    c.node(1).propose(b"x")
    c.stabilize()
    c.heal()
    c.node(1).tick()
    rd_msgs: list[Message] = []
    while c.node(1).has_ready():
        rd = c.node(1).ready()
        rd_msgs.extend(rd.messages)
        c.node(1).advance(rd)
    hb = [m for m in rd_msgs if m.type == MT.HEARTBEAT and m.to == 3]
    assert hb and hb[0].commit < c.node(1).status().commit


def test_a_caught_up_peer_probed_after_unreachable_replicates_again_while_idle() -> None:
    """report_unreachable puts a peer holding the leader's whole log into PROBE. A heartbeat
    response alone sent nothing (match == last index), so the peer stayed probed until the
    next proposal: the orderer promotes a learner only from REPLICATE (Chain._caught_up), so
    an idle service never promoted it. The leader now sends an empty append; its
    acknowledgement of the match index moves the peer back to REPLICATE."""
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.node(1).propose(b"x")
    c.stabilize()
    last = c.node(1).status().last_index
    assert c.node(1).status().progress[2].state == ProgressState.REPLICATE
    c.node(1).report_unreachable(2)
    c.stabilize()
    assert c.node(1).status().progress[2].state == ProgressState.PROBE
    c.tick(1, 2)  # heartbeats, no proposal
    c.stabilize()
    pr = c.node(1).status().progress[2]
    assert pr.state == ProgressState.REPLICATE and pr.match == last
    assert c.node(1).status().last_index == last  # nothing was proposed to get there
