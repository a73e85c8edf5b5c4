"""Seeded simulation of the orderer driver's Ready policy (tests/sim/simulator.py underneath).

The orderer's driver persists each Ready synchronously (it steps no message while it
fsyncs) and, as a leader, sends appends and heartbeats WHILE it persists when
``node.raft.node.may_send_before_persist`` allows it. The base simulator sends only after
the fsync, so this variant models the driver: deliveries to a node wait in its inbox while
it persists, and a leader's Ready is sent early under the real policy. Shapes: the
simulator's own (3 or 5 voters, faults, membership changes, snapshots, transfers) and one
voter with two learners (the start of growing a one-orderer service), where a single voter
commits entries as it appends them.

Extra checker: no node sends a commit index beyond its own durable log. A single voter's
in-memory commit index is not recorded as history (it runs ahead of its fsync); what it
applies is, after the fsync, and the simulator's checkers compare that across nodes. With
more voters every checker of the simulator applies unchanged.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable

import pytest

from node.raft.config import Config
from node.raft.node import RawNode, may_send_before_persist
from node.raft.storage import MemoryStorage
from node.raft.types import ConfState, HardState, Message, MessageType, Ready, StateRole
from tests.sim import simulator as sim

Policy = Callable[[Ready, StateRole, HardState], bool]


class DriverSim(sim.Simulation):
    """One seeded run with the orderer driver's persist/send policy."""

    def __init__(self, seed: int, policy: Policy, one_voter_two_learners: bool) -> None:
        super().__init__(seed)
        self.policy = policy
        self.inbox: dict[int, list[Message]] = {}
        if one_voter_two_learners:
            self.p.n_voters, self.p.n_spare = 1, 2
            self.p.conf_changes = self.p.transfers = False
            self.nodes = {}
            self.heap = [e for e in self.heap if e[2] != "tick"]  # ticks of the base's nodes
            heapq.heapify(self.heap)
            for nid in (1, 2, 3):
                node = sim.SimNode(nid, sim.SimStorage(ConfState(voters=(1,), learners=(2, 3))))
                self.nodes[nid] = node
                self._start(node)

    def fail(self, msg: str) -> sim.SimFailure:
        return sim.SimFailure(
            f"driver simulation seed {self.seed} failed at t={self.now}ms: {msg}\n"
            f"rerun: tests.raft.test_driver_sim.run({self.seed}) (set .trace_on for a trace)"
        )

    def ev_deliver(self, m: Message) -> None:
        node = self.nodes[m.to]
        if node.raw is not None and node.busy is not None:
            self.inbox.setdefault(m.to, []).append(m)  # the driver steps nothing while it persists
            return
        super().ev_deliver(m)

    def ev_fsync(self, nid: int, gen: int) -> None:
        super().ev_fsync(nid, gen)
        node, waiting = self.nodes[nid], self.inbox.get(nid, [])
        while waiting and (node.raw is None or node.busy is None):
            super().ev_deliver(waiting.pop(0))

    def before_persist(self, node: sim.SimNode, rd: Ready) -> Ready:
        """A leader's Ready the policy allows goes out before the fsync (the base persists it)."""
        assert node.raw is not None
        if self.policy(rd, node.raw.raft.state, node.storage.live.hard_state):
            for m in rd.messages:
                self.send(m)
            self.stats.c["early_sends"] += 1
            rd = dataclasses.replace(rd, messages=())
        return rd

    def send(self, m: Message) -> None:
        node = self.nodes[m.frm]
        raw = node.raw
        if raw is not None and m.commit and m.type in (MessageType.APP, MessageType.HEARTBEAT):
            d = node.storage.durable
            durable = d.snapshot().meta.index >= m.commit or (
                d.first_index() <= m.commit <= d.last_index()
                and d.term(m.commit) == raw.raft.log.term_or_zero(m.commit)
            )
            if not durable:
                raise self.fail(
                    f"node {m.frm} sent commit {m.commit} beyond its durable log "
                    f"(durable last index {d.last_index()})"
                )
            self.stats.c["durable_commit_checks"] += 1
        super().send(m)

    def check_node(self, node: sim.SimNode) -> None:
        raw = node.raw
        if raw is not None and raw.raft.state == StateRole.LEADER and len(raw.raft.tracker.voters) == 1:
            node.last_commit = max(node.last_commit, raw.raft.log.committed)
        super().check_node(node)


def run(seed: int, policy: Policy = may_send_before_persist) -> sim.Stats:
    """Odd seeds: one voter and two learners; even seeds: the simulator's own shapes."""
    s = DriverSim(seed, policy, one_voter_two_learners=seed % 2 == 1)
    try:
        return s.run()
    except sim.SimFailure:
        raise
    except Exception as exc:  # an internal error must name the seed too
        raise s.fail(f"unexpected {type(exc).__name__}: {exc}") from exc


SEEDS = range(80)


def test_driver_policy_keeps_every_invariant_under_faults() -> None:
    total = sim.Stats()
    for seed in SEEDS:
        total.add(run(seed))
    assert total.c["runs"] == len(SEEDS)
    assert total.c["early_sends"] > 1000 and total.c["durable_commit_checks"] > 1000
    assert total.c["durable_quorum_checks"] > 1000  # the base checker still runs for several voters
    assert total.c["crashes_lost_unsynced"] > 0 and total.c["values_committed"] > 0


def _early_unless_new_term(rd: Ready, role: StateRole, persisted: HardState) -> bool:
    """The driver's rule before the fix: it ignored the commit index of the messages."""
    if role != StateRole.LEADER or not rd.messages or rd.snapshot is not None:
        return False
    hs = rd.hard_state
    if hs is not None and (hs.term, hs.vote) != (persisted.term, persisted.vote):
        return False
    return all(m.type in (MessageType.APP, MessageType.HEARTBEAT) for m in rd.messages)


def test_checker_catches_a_single_voter_sending_commits_before_its_fsync() -> None:
    with pytest.raises(sim.SimFailure, match=r"sent commit \d+ beyond its durable log"):
        for seed in range(1, 21, 2):
            run(seed, _early_unless_new_term)


def test_same_seed_same_run() -> None:
    assert run(5).c == run(5).c


def _persist_all(node: RawNode, st: MemoryStorage) -> None:
    """Persist and advance every pending Ready (its messages go nowhere)."""
    while node.has_ready():
        rd = node.ready()
        st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        node.advance(rd)


def _leader(voters: tuple[int, ...], learners: tuple[int, ...]) -> tuple[RawNode, MemoryStorage]:
    st = MemoryStorage(ConfState(voters=voters, learners=learners))
    node = RawNode(Config(id=1, election_tick=10, heartbeat_tick=1, rng=random.Random(1)), st)
    node.campaign()
    for _ in range(5):  # a single voter wins at once; elsewhere the votes are granted here
        _persist_all(node, st)
        if node.status().role == StateRole.LEADER:
            break
        for v in voters[1:]:
            node.step(Message(MessageType.PRE_VOTE_RESP, to=1, frm=v, term=node.status().term + 1))
            node.step(Message(MessageType.VOTE_RESP, to=1, frm=v, term=node.status().term))
    assert node.status().role == StateRole.LEADER
    for nid in voters[1:] + learners:  # everyone holds the leader's log
        node.step(Message(MessageType.APP_RESP, to=1, frm=nid, term=node.status().term,
                          index=node.status().last_index))
    _persist_all(node, st)
    return node, st


def test_policy_holds_back_appends_that_carry_the_commit_of_their_own_entries() -> None:
    # one voter, one learner: the append commits what it carries -> wait for the fsync
    node, st = _leader((1,), (2,))
    node.propose(b"x")
    rd = node.ready()
    [app] = [m for m in rd.messages if m.type == MessageType.APP]
    assert app.commit == app.entries[-1].index == rd.entries[-1].index
    assert not may_send_before_persist(rd, StateRole.LEADER, st.hard_state)
    # three voters: the commit stays behind the new entry -> may go out during the fsync
    node, st = _leader((1, 2, 3), ())
    node.propose(b"x")
    rd = node.ready()
    assert rd.messages and all(m.commit < rd.entries[0].index for m in rd.messages)
    assert may_send_before_persist(rd, StateRole.LEADER, st.hard_state)
    assert not may_send_before_persist(rd, StateRole.FOLLOWER, st.hard_state)
