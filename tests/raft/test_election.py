"""Leader election, randomised timeouts, pre-vote and check-quorum."""

from __future__ import annotations

import random

import pytest

from node.raft.config import Config
from node.raft.core import Raft
from node.raft.storage import MemoryStorage
from node.raft.types import Message, MessageType, StateRole
from tests.raft.harness import Cluster

MT = MessageType


def elect(c: Cluster, nid: int) -> None:
    c.node(nid).campaign()
    c.stabilize()
    assert c.node(nid).status().role == StateRole.LEADER


def leaders(c: Cluster) -> list[int]:
    return [n for n in c.members if c.node(n).status().role == StateRole.LEADER]


def raft_node(nid: int = 1, peers: tuple[int, ...] = (1, 2, 3), seed: int = 1, **kw: object) -> Raft:
    s = MemoryStorage()
    s.bootstrap(list(peers))
    cfg = Config(id=nid, election_tick=10, heartbeat_tick=1, rng=random.Random(seed), **kw)  # type: ignore[arg-type]
    r = Raft(cfg, s)
    # apply the bootstrap conf changes as the application would
    from node.raft.types import ConfChange

    for e in r.log.next_committed_ents():
        r.apply_conf_change(ConfChange.decode(e.data))
    r.log.applied_to(r.log.committed)
    return r


def test_ticking_elects_exactly_one_leader() -> None:
    c = Cluster([1, 2, 3], seed=3)
    for _ in range(100):
        for nid in (1, 2, 3):
            c.tick(nid)
        c.stabilize()
        if leaders(c):
            break
    assert len(leaders(c)) == 1
    lead = leaders(c)[0]
    term = c.node(lead).status().term
    assert all(c.node(n).status().leader == lead for n in (1, 2, 3))
    assert all(c.node(n).status().term == term for n in (1, 2, 3))


def test_randomized_timeout_uses_injected_rng_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("global random used")

    monkeypatch.setattr(random, "random", boom)
    monkeypatch.setattr(random, "randrange", boom)
    monkeypatch.setattr(random, "randint", boom)
    a, b, other = raft_node(seed=42), raft_node(seed=42), raft_node(seed=43)
    seq_a: list[int] = []
    seq_b: list[int] = []
    seq_o: list[int] = []
    for _ in range(50):
        for r, seq in ((a, seq_a), (b, seq_b), (other, seq_o)):
            r.reset_randomized_election_timeout()
            seq.append(r.randomized_election_timeout)
    assert seq_a == seq_b
    assert seq_a != seq_o
    assert all(10 <= t < 20 for t in seq_a)
    assert len(set(seq_a)) > 3


def test_vote_once_per_term_and_only_for_up_to_date_logs() -> None:
    r = raft_node(1, check_quorum=False)
    r.step(Message(MT.VOTE, to=1, frm=2, term=2, index=3, log_term=1))
    assert r.msgs[-1].type == MT.VOTE_RESP and not r.msgs[-1].reject
    assert r.vote == 2
    r.step(Message(MT.VOTE, to=1, frm=3, term=2, index=3, log_term=1))
    assert r.msgs[-1].reject  # already voted for 2 in term 2
    # a candidate with a shorter log is refused even in a new term
    r.step(Message(MT.VOTE, to=1, frm=3, term=3, index=2, log_term=1))
    assert r.msgs[-1].reject
    assert r.term == 3 and r.vote == 0


def test_pre_vote_does_not_bump_term() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    term = c.node(1).status().term
    c.isolate(3)
    c.tick(3, 100)
    c.stabilize()
    assert c.node(3).status().term == term
    assert c.node(3).status().role == StateRole.PRE_CANDIDATE


@pytest.mark.parametrize("pre_vote", [True, False])
def test_partitioned_node_rejoining(pre_vote: bool) -> None:
    """With pre-vote the rejoining node cannot disrupt; without it, it forces a new term."""
    c = Cluster([1, 2, 3], pre_vote=pre_vote, check_quorum=False)
    elect(c, 1)
    term = c.node(1).status().term
    c.isolate(3)
    c.tick(3, 100)
    c.stabilize()
    c.heal()
    c.tick(3, 30)  # 3 campaigns again now that it is connected
    c.tick(1, 1)
    c.stabilize()
    if pre_vote:
        assert c.node(1).status().role == StateRole.LEADER
        assert c.node(1).status().term == term
    else:
        assert all(c.node(n).status().term > term for n in (1, 2, 3))


def test_followers_ignore_votes_while_leader_is_live() -> None:
    c = Cluster([1, 2, 3], pre_vote=False)
    elect(c, 1)
    before = c.node(2).status()
    c.node(2).step(Message(MT.VOTE, to=2, frm=3, term=before.term + 5, index=99, log_term=99))
    after = c.node(2).status()
    assert after.term == before.term and after.vote == before.vote
    assert not c.node(2).raft.msgs  # no response at all


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.isolate(1)
    c.tick(1, 10)  # first check: peers were recently active
    assert c.node(1).status().role == StateRole.LEADER
    c.tick(1, 10)  # second check: nobody answered
    assert c.node(1).status().role == StateRole.FOLLOWER


def test_stale_leader_learns_new_term_from_heartbeat_reply() -> None:
    c = Cluster([1, 2, 3])
    elect(c, 1)
    c.isolate(1)
    c.tick(2, 10)
    c.tick(3, 10)
    c.tick(2, 20)
    c.stabilize()
    assert c.node(2).status().role == StateRole.LEADER or c.node(3).status().role == (
        StateRole.LEADER
    )
    c.heal()
    c.tick(1, 1)  # old leader heartbeats with its old term
    c.stabilize()
    assert leaders(c) != [1]
    assert len(leaders(c)) == 1
    assert c.node(1).status().role == StateRole.FOLLOWER


def test_single_node_elects_itself() -> None:
    c = Cluster([1])
    c.tick(1, 20)
    c.stabilize()
    assert c.node(1).status().role == StateRole.LEADER
    c.node(1).propose(b"x")
    c.stabilize()
    assert c.members[1].applied == [b"x"]


def test_a_term_far_beyond_ours_is_refused_and_changes_nothing() -> None:
    """A member sending term 2**64 - 1 (a subverted orderer: Raft trusts its members) was
    followed by every node, after which the next election's term could not be encoded: no
    leader ever again. A message more than MAX_TERM_JUMP past our term is a RaftError (the
    orderer drops it, counted invalid) and leaves term, vote and leader as they were; one
    within the jump is taken as before."""
    from node.raft.core import MAX_TERM_JUMP
    from node.raft.errors import RaftError

    c = Cluster([1, 2, 3], seed=3)
    elect(c, 1)
    follower = c.node(2)
    before = follower.status()
    for term in ((1 << 64) - 1, before.term + MAX_TERM_JUMP + 1):
        for kind in (MT.HEARTBEAT, MT.APP, MT.VOTE, MT.PRE_VOTE):
            with pytest.raises(RaftError, match="past ours"):
                follower.step(Message(type=kind, frm=3, to=2, term=term))
            after = follower.status()
            assert (after.term, after.leader, after.role) == (before.term, before.leader, before.role)
    follower.step(Message(type=MT.HEARTBEAT, frm=3, to=2, term=before.term + MAX_TERM_JUMP))
    assert follower.status().term == before.term + MAX_TERM_JUMP
