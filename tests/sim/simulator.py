"""Deterministic simulation of a Raft cluster (TigerBeetle/FoundationDB style).

One thread, ONE seeded ``random.Random`` (also injected as every node's Config.rng), an
event heap with simulated milliseconds. Nodes persist each Ready to volatile storage and
"fsync" later; a crash discards everything not synced, and a restart rebuilds the RawNode
from the durable copy. The network drops, duplicates, delays (so reorders) and partitions
(symmetric and one-way). Checkers run after every event; the run ends with a heal phase that
must converge.

Rerun a failing seed with a trace:
    .venv/bin/python -m tests.sim.simulator --seed N --trace
Run a range and print statistics:
    .venv/bin/python -m tests.sim.simulator --seeds 0:300
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from node.raft.config import Config
from node.raft.errors import InvalidMessage, ProposalDropped
from node.raft.node import RawNode
from node.raft.storage import MemoryStorage
from node.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    StateRole,
)
from tests.raft.harness import fmt_msg

TICK_MS = 10


class SimFailure(AssertionError):
    """A checker found a violation (message names the seed and how to rerun it)."""


@dataclass
class Params:
    """Per-seed shape of the run, drawn from the seed's RNG."""

    n_voters: int
    n_spare: int
    election_tick: int
    heartbeat_tick: int
    max_inflight: int
    max_size_per_msg: int
    drop: float
    dup: float
    delay_max: int
    long_delay: float
    crash_every_ms: int
    partition_every_ms: int
    conf_changes: bool
    snapshots: bool
    propose_every_ms: int
    safety_ms: int
    heal_ms: int
    fsync_max_ms: int
    pre_vote: bool
    check_quorum: bool
    transfers: bool


def draw_params(rng: random.Random) -> Params:
    """Pick the fault profile and cluster shape for one seed."""
    n_voters = rng.choice((3, 3, 5))
    conf = rng.random() < 0.4
    return Params(
        n_voters=n_voters,
        n_spare=(2 if n_voters == 3 else 1) if conf else 0,
        election_tick=10,
        heartbeat_tick=rng.choice((1, 2, 3)),
        max_inflight=rng.choice((1, 4, 64)),
        max_size_per_msg=rng.choice((40, 200, 1 << 20)),
        drop=rng.choice((0.0, 0.02, 0.1, 0.25)),
        dup=rng.choice((0.0, 0.02, 0.1)),
        delay_max=rng.choice((2, 10, 40)),
        long_delay=rng.choice((0.0, 0.02)),
        crash_every_ms=rng.choice((0, 300, 1000)),
        partition_every_ms=rng.choice((0, 60, 200, 600)),
        conf_changes=conf,
        snapshots=rng.random() < 0.5,
        propose_every_ms=rng.choice((15, 40)),
        safety_ms=3000,
        heal_ms=20000,
        fsync_max_ms=rng.choice((1, 5)),
        pre_vote=rng.random() < 0.85,
        check_quorum=rng.random() < 0.85,
        transfers=rng.random() < 0.5,
    )


class SimStorage:
    """MemoryStorage pair: ``live`` (what the node reads/writes) and ``durable`` (synced)."""

    def __init__(self, cs: ConfState) -> None:
        self.live = MemoryStorage(cs)
        self.durable = self.live.clone()

    def sync(self) -> None:
        """fsync: everything written so far survives a crash."""
        self.durable = self.live.clone()

    def crash(self) -> None:
        """Lose every unsynced write."""
        self.live = self.durable.clone()


def encode_values(values: list[bytes]) -> bytes:
    """Application snapshot: length-prefixed applied values."""
    return b"".join(len(v).to_bytes(4, "big") + v for v in values)


def decode_values(data: bytes) -> list[bytes]:
    """Inverse of encode_values."""
    out: list[bytes] = []
    i = 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


@dataclass
class SimNode:
    """A node process: storage survives crashes, everything else is rebuilt."""

    id: int
    storage: SimStorage
    raw: RawNode | None = None
    gen: int = 0
    busy: Ready | None = None
    values: list[bytes] = field(default_factory=list)
    value_set: set[bytes] = field(default_factory=set)
    applied_index: int = 0
    conf_state: ConfState = field(default_factory=ConfState)
    last_commit: int = 0


@dataclass
class Stats:
    """Counters of one or many runs."""

    c: Counter[str] = field(default_factory=Counter)
    maxima: dict[str, int] = field(default_factory=dict)

    def add(self, other: Stats) -> None:
        """Accumulate another run's counters (sums) and maxima."""
        self.c.update(other.c)
        for k, v in other.maxima.items():
            self.maxima[k] = max(self.maxima.get(k, v), v)

    def note_max(self, key: str, value: int) -> None:
        """Record a maximum."""
        self.maxima[key] = max(self.maxima.get(key, value), value)


class Simulation:
    """One seeded run."""

    def __init__(self, seed: int, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.p = draw_params(self.rng)
        self.trace_on = trace
        self.now = 0
        self.heap: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self.seq = 0
        self.stats = Stats()
        self.healed = False
        voters = tuple(range(1, self.p.n_voters + 1))
        all_ids = range(1, self.p.n_voters + self.p.n_spare + 1)
        self.nodes: dict[int, SimNode] = {}
        for nid in all_ids:
            node = SimNode(nid, SimStorage(ConfState()))
            if nid in voters:
                node.storage.live.bootstrap(voters)
                node.storage.sync()
            self.nodes[nid] = node
            self._start(node)
        self.cut: set[tuple[int, int]] = set()
        # checker state
        self.committed: dict[int, tuple[int, EntryType, bytes]] = {}
        self.commit_seen_term: dict[int, int] = {}
        self.max_committed = 0
        self.leaders: dict[int, int] = {}
        self.leader_checked: set[tuple[int, int]] = set()
        self.longest: list[bytes] = []
        self.acked: set[bytes] = set()
        self.next_value = 0
        self.pending_values: list[bytes] = []

    # -- helpers -------------------------------------------------------------------------
    def fail(self, msg: str) -> SimFailure:
        """Build the failure with seed and rerun instructions."""
        return SimFailure(
            f"raft simulation seed {self.seed} failed at t={self.now}ms: {msg}\n"
            f"rerun: .venv/bin/python -m tests.sim.simulator --seed {self.seed} --trace"
        )

    def trace(self, text: str) -> None:
        """Print a trace line when tracing."""
        if self.trace_on:
            print(f"{self.now:7d} {text}")

    def at(self, delay: int, kind: str, *args: Any) -> None:
        """Schedule an event ``delay`` ms from now."""
        self.seq += 1
        heapq.heappush(self.heap, (self.now + delay, self.seq, kind, args))

    def _config(self, nid: int, applied: int) -> Config:
        return Config(
            id=nid,
            election_tick=self.p.election_tick,
            heartbeat_tick=self.p.heartbeat_tick,
            rng=self.rng,
            pre_vote=self.p.pre_vote,
            check_quorum=self.p.check_quorum,
            max_inflight=self.p.max_inflight,
            max_size_per_msg=self.p.max_size_per_msg,
            applied=applied,
        )

    def _start(self, node: SimNode) -> None:
        snap = node.storage.live.snapshot()
        node.raw = RawNode(self._config(node.id, snap.meta.index), node.storage.live)
        node.gen += 1
        node.busy = None
        node.values = decode_values(snap.data)
        node.value_set = set(node.values)
        node.applied_index = snap.meta.index
        node.conf_state = node.storage.live.initial_state()[1]
        node.last_commit = node.raw.raft.log.committed
        self.at(self.rng.randint(1, TICK_MS), "tick", node.id, node.gen)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> Stats:
        """Safety phase with faults, then heal phase that must converge."""
        self.at(self.rng.randint(1, 20), "propose")
        if self.p.crash_every_ms:
            self.at(self.rng.randint(1, self.p.crash_every_ms), "crash")
        if self.p.partition_every_ms:
            self.at(self.rng.randint(1, self.p.partition_every_ms), "partition")
        if self.p.conf_changes:
            self.at(self.rng.randint(200, 600), "conf_change")
        if self.p.snapshots:
            self.at(self.rng.randint(100, 300), "snapshot")
        if self.p.transfers:
            self.at(self.rng.randint(200, 800), "transfer")
        self.at(self.p.safety_ms, "heal")
        deadline = self.p.safety_ms + self.p.heal_ms
        max_events = 400_000
        while self.heap:
            t, _, kind, args = heapq.heappop(self.heap)
            self.now = t
            if t > deadline:
                raise self.fail(f"heal phase did not converge within {self.p.heal_ms}ms: "
                                + self.describe())
            self.stats.c["events"] += 1
            if self.stats.c["events"] > max_events:
                raise self.fail("event budget exhausted: " + self.describe())
            if kind == "converge_check":
                if not self.converged():
                    self.at(100, "converge_check")
                    continue
                self.stats.c["heal_ms"] += self.now - self.p.safety_ms
                self.stats.note_max("heal_ms", self.now - self.p.safety_ms)
                self.stats.note_max("log_length", self.max_committed)
                self.stats.c["runs"] += 1
                return self.stats
            getattr(self, "ev_" + kind)(*args)
        raise self.fail("event queue drained")

    def describe(self) -> str:
        """Short cluster summary for failure messages."""
        parts = []
        for nid, n in sorted(self.nodes.items()):
            if n.raw is None:
                parts.append(f"{nid}:down")
                continue
            st = n.raw.status()
            parts.append(
                f"{nid}:{st.role.name}/t{st.term}/lead{st.leader}/c{st.commit}/a{n.applied_index}"
                f"/last{st.last_index}/voters{list(st.conf_state.voters)}"
                f"{'/busy' if n.busy else ''}"
            )
        return "; ".join(parts)

    # -- events --------------------------------------------------------------------------
    def ev_tick(self, nid: int, gen: int) -> None:
        node = self.nodes[nid]
        if node.gen != gen or node.raw is None:
            return
        node.raw.tick()
        self.after_step(node)
        self.at(TICK_MS, "tick", nid, gen)

    def ev_deliver(self, m: Message) -> None:
        node = self.nodes[m.to]
        if node.raw is None:
            if m.type == MessageType.SNAP:
                self.at(1, "snap_report", m.frm, m.to, False)
            return
        if self.trace_on:
            self.trace("  " + fmt_msg(m))
        try:
            node.raw.step(m)
        except InvalidMessage as exc:
            raise self.fail(f"valid message refused: {exc}") from exc
        self.stats.c["delivered"] += 1
        if m.type == MessageType.TIMEOUT_NOW:
            self.stats.c["timeout_now_delivered"] += 1
        if m.type == MessageType.SNAP:
            self.stats.c["snapshots_delivered"] += 1
            self.at(1, "snap_report", m.frm, m.to, True)
        self.after_step(node)

    def ev_snap_report(self, leader: int, to: int, ok: bool) -> None:
        node = self.nodes[leader]
        if node.raw is None:
            return
        node.raw.report_snapshot(to, ok)
        self.after_step(node)

    def ev_unreachable(self, frm: int, to: int) -> None:
        node = self.nodes[frm]
        if node.raw is None:
            return
        node.raw.report_unreachable(to)
        self.after_step(node)

    def ev_fsync(self, nid: int, gen: int) -> None:
        node = self.nodes[nid]
        if node.gen != gen or node.raw is None or node.busy is None:
            return
        node.storage.sync()
        self.stats.c["fsyncs"] += 1
        rd, node.busy = node.busy, None
        self.finish_ready(node, rd)
        self.pump(node)

    def ev_propose(self) -> None:
        new_allowed = not self.healed or self.now < self.p.safety_ms + 1000
        if self.pending_values and (not new_allowed or self.rng.random() < 0.5):
            value = self.pending_values.pop(0)
        elif new_allowed:
            value = b"v%d" % self.next_value
            self.next_value += 1
        else:
            return
        self.try_propose(value)
        self.at(self.rng.randint(1, self.p.propose_every_ms * 2), "propose")

    def try_propose(self, value: bytes) -> None:
        up = [n for n in self.nodes.values() if n.raw is not None]
        if not up:
            self.pending_values.append(value)
            return
        node = self.rng.choice(up)
        assert node.raw is not None
        lead = node.raw.raft.lead
        if lead and self.nodes[lead].raw is not None and self.rng.random() < 0.8:
            node = self.nodes[lead]  # the client (or the follower) forwards to the leader
        assert node.raw is not None
        try:
            node.raw.propose(value)
        except ProposalDropped:
            self.stats.c["proposals_dropped"] += 1
            self.pending_values.append(value)  # definitely not appended: safe to retry
            return
        self.stats.c["proposals"] += 1
        self.trace(f"propose {value.decode()} at {node.id}")
        self.after_step(node)

    def ev_crash(self) -> None:
        if self.healed:
            return
        up = [n for n in self.nodes.values() if n.raw is not None]
        if up:
            leaders = [n for n in up if n.raw and n.raw.raft.state == StateRole.LEADER]
            if leaders and self.rng.random() < 0.5:
                node = self.rng.choice(leaders)
                self.stats.c["crashes_leader"] += 1
            else:
                node = self.rng.choice(up)
            self.trace(f"CRASH {node.id} (busy={node.busy is not None})")
            if node.busy is not None or node.storage.live.hard_state != (
                node.storage.durable.hard_state
            ):
                self.stats.c["crashes_lost_unsynced"] += 1
            node.storage.crash()
            node.raw = None
            node.busy = None
            node.gen += 1
            self.stats.c["crashes"] += 1
            self.at(self.rng.randint(20, 600), "restart", node.id)
        self.at(self.rng.randint(self.p.crash_every_ms // 2, self.p.crash_every_ms), "crash")

    def ev_restart(self, nid: int) -> None:
        node = self.nodes[nid]
        if node.raw is not None:
            return
        self._start(node)
        self.stats.c["restarts"] += 1
        assert node.raw is not None
        raft = node.raw.raft
        self.trace(f"RESTART {nid} term={raft.term} commit={raft.log.committed} "
                   f"last={raft.log.last_index()}")
        # Durable committed entries must still agree with what the cluster committed.
        lo = max(raft.log.first_index(), 1)
        for i in range(lo, raft.log.committed + 1):
            c = self.committed.get(i)
            if c is not None and raft.log.term(i) != c[0]:
                raise self.fail(f"node {nid} restarted with committed entry {i} changed")
        self.after_step(node)

    def ev_partition(self) -> None:
        if self.healed:
            return
        ids = sorted(self.nodes)
        self.cut.clear()
        kind = self.rng.choice(
            ("heal", "isolate", "split", "oneway", "bridge", "isolate_leader", "isolate_leader")
        )
        if kind == "isolate_leader":
            # Cut the leader off right away: what it appends now stays local (uncommitted
            # divergent tails are what the commit rules must survive).
            leaders = [n.id for n in self.nodes.values()
                       if n.raw is not None and n.raw.raft.state == StateRole.LEADER]
            kind = "isolate"
            victim = self.rng.choice(leaders) if leaders else self.rng.choice(ids)
            for o in ids:
                if o != victim:
                    self.cut.update({(victim, o), (o, victim)})
        elif kind == "isolate":
            victim = self.rng.choice(ids)
            for o in ids:
                if o != victim:
                    self.cut.update({(victim, o), (o, victim)})
        elif kind == "split":
            shuffled = ids[:]
            self.rng.shuffle(shuffled)
            k = self.rng.randint(1, len(ids) - 1)
            a, b = shuffled[:k], shuffled[k:]
            for x in a:
                for y in b:
                    self.cut.update({(x, y), (y, x)})
        elif kind == "oneway":
            for _ in range(self.rng.randint(1, len(ids))):
                x, y = self.rng.sample(ids, 2)
                self.cut.add((x, y))
        elif kind == "bridge":
            # Two sides that only talk through one bridge node.
            shuffled = ids[:]
            self.rng.shuffle(shuffled)
            rest = shuffled[1:]  # shuffled[0] is the bridge and keeps all its links
            half = len(rest) // 2
            for x in rest[:half]:
                for y in rest[half:]:
                    self.cut.update({(x, y), (y, x)})
        if kind != "heal":
            self.stats.c["partitions_" + kind] += 1
        self.trace(f"PARTITION {kind} {sorted(self.cut)}")
        self.at(self.rng.randint(self.p.partition_every_ms // 2, self.p.partition_every_ms),
                "partition")

    def ev_conf_change(self) -> None:
        if self.healed:
            return
        self.at(self.rng.randint(150, 600), "conf_change")
        leaders = [n for n in self.nodes.values()
                   if n.raw is not None and n.raw.raft.state == StateRole.LEADER]
        if not leaders:
            return
        node = max(leaders, key=lambda n: n.raw.raft.term if n.raw else 0)
        assert node.raw is not None
        voters = sorted(node.raw.raft.tracker.voters)
        learners = sorted(node.raw.raft.tracker.learners)
        others = sorted(set(self.nodes) - set(voters) - set(learners))
        if others and self.rng.random() < 0.2:
            cc = ConfChange(ConfChangeType.ADD_LEARNER_NODE, self.rng.choice(others))
        elif (others or learners) and len(voters) < 5 and (
            len(voters) < self.p.n_voters + 1 or self.rng.random() < 0.3
        ):
            # add a new voter, or promote a learner
            cc = ConfChange(ConfChangeType.ADD_NODE, self.rng.choice(others + learners))
        elif learners and self.rng.random() < 0.5:
            cc = ConfChange(ConfChangeType.REMOVE_NODE, self.rng.choice(learners))
        elif len(voters) > 3:
            cc = ConfChange(ConfChangeType.REMOVE_NODE, self.rng.choice(voters))
        else:
            return
        try:
            node.raw.propose_conf_change(cc)
        except ProposalDropped:
            self.stats.c["conf_changes_refused"] += 1
            return
        self.stats.c["conf_changes_proposed"] += 1
        self.stats.c["conf_proposed_" + cc.type.name.lower()] += 1
        self.trace(f"CONF {cc.type.name} {cc.node_id} at {node.id}")
        self.after_step(node)

    def ev_transfer(self) -> None:
        if self.healed:
            return
        self.at(self.rng.randint(200, 800), "transfer")
        up = [n for n in self.nodes.values() if n.raw is not None]
        if not up:
            return
        node = self.rng.choice(up)  # ask any node; followers forward to the leader
        assert node.raw is not None
        voters = sorted(node.raw.raft.tracker.voters)
        if not voters:
            return
        to = self.rng.choice(voters)
        node.raw.transfer_leader(to)
        self.stats.c["transfers_requested"] += 1
        self.trace(f"TRANSFER to {to} via {node.id}")
        self.after_step(node)

    def ev_snapshot(self) -> None:
        self.at(self.rng.randint(100, 400), "snapshot")
        up = [n for n in self.nodes.values() if n.raw is not None and n.busy is None]
        if not up:
            return
        node = self.rng.choice(up)
        st = node.storage.live
        if node.applied_index <= st.snapshot().meta.index:
            return
        data = encode_values(node.values)
        keep = self.rng.choice((0, 2, 10))
        compact_to = max(node.applied_index - keep, st.snapshot().meta.index)
        # The snapshot file and the compaction are durable at once, but a lazily written
        # (commit-only) hard state in the live store stays unsynced, as with a real WAL.
        for store in (st, node.storage.durable):
            if store.last_index() < node.applied_index:
                raise self.fail(f"node {node.id} applied {node.applied_index} not durable")
            store.create_snapshot(node.applied_index, node.conf_state, data)
            store.compact(compact_to)
        self.stats.c["snapshots_taken"] += 1
        self.trace(f"SNAPSHOT {node.id} at {node.applied_index} keep {keep}")

    def ev_heal(self) -> None:
        self.healed = True
        self.cut.clear()
        self.trace("HEAL")
        for node in self.nodes.values():
            if node.raw is None:
                self._start(node)
                self.stats.c["restarts"] += 1
        self.at(100, "converge_check")

    # -- network ---------------------------------------------------------------------------
    def send(self, m: Message) -> None:
        self.stats.c["sent"] += 1
        if not self.healed and (m.frm, m.to) in self.cut:
            self.stats.c["dropped_partition"] += 1
            if m.type == MessageType.SNAP:
                self.at(1, "snap_report", m.frm, m.to, False)
            if self.rng.random() < 0.1:
                self.at(1, "unreachable", m.frm, m.to)
            return
        if not self.healed and self.rng.random() < self.p.drop:
            self.stats.c["dropped_random"] += 1
            if m.type == MessageType.SNAP:
                self.at(1, "snap_report", m.frm, m.to, False)
            return
        copies = 2 if (not self.healed and self.rng.random() < self.p.dup) else 1
        if copies == 2:
            self.stats.c["duplicated"] += 1
        for _ in range(copies):
            delay = self.rng.randint(1, 3 if self.healed else self.p.delay_max)
            if not self.healed and self.rng.random() < self.p.long_delay:
                delay += self.rng.randint(100, 400)
                self.stats.c["delayed_long"] += 1
            self.at(delay, "deliver", m)

    # -- Ready handling --------------------------------------------------------------------
    def pump(self, node: SimNode) -> None:
        """Persist readies; sync-needing ones complete at a later fsync event."""
        while node.raw is not None and node.busy is None and node.raw.has_ready():
            rd = self.before_persist(node, node.raw.ready())
            st = node.storage.live
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
            st.append(rd.entries)
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            if rd.must_sync:
                node.busy = rd
                self.at(self.rng.randint(1, self.p.fsync_max_ms), "fsync", node.id, node.gen)
                return
            self.finish_ready(node, rd)

    def before_persist(self, node: SimNode, rd: Ready) -> Ready:
        """What a node does with a Ready before persisting it; returns what is left to persist
        and send after the fsync (here: all of it; a subclass may send messages early)."""
        return rd

    def finish_ready(self, node: SimNode, rd: Ready) -> None:
        """After persisting: send, apply, advance."""
        assert node.raw is not None
        for m in rd.messages:
            self.send(m)
        if rd.snapshot is not None:
            self.apply_snapshot(node, rd)
        for e in rd.committed_entries:
            self.apply_entry(node, e)
        node.raw.advance(rd)
        self.check_node(node)

    def apply_snapshot(self, node: SimNode, rd: Ready) -> None:
        assert rd.snapshot is not None
        values = decode_values(rd.snapshot.data)
        if values != self.longest[: len(values)]:
            raise self.fail(f"node {node.id} got a snapshot that is not a prefix of history")
        node.values = values
        node.value_set = set(values)
        node.applied_index = rd.snapshot.meta.index
        node.conf_state = rd.snapshot.meta.conf_state
        self.stats.c["snapshots_applied"] += 1
        self.trace(f"node {node.id} applied snapshot {rd.snapshot.meta.index}")

    def apply_entry(self, node: SimNode, e: Entry) -> None:
        assert node.raw is not None
        if e.index != node.applied_index + 1:
            raise self.fail(f"node {node.id} applies {e.index} after {node.applied_index}")
        self.note_committed(node, e.index, e.term, e.type, e.data)
        if e.type == EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            node.conf_state = node.raw.apply_conf_change(cc)
            self.stats.c["conf_changes_applied"] += 1
            self.trace(f"node {node.id} applied {cc.type.name} {cc.node_id} -> "
                       f"{node.conf_state.voters}")
        elif e.data:
            if e.data in node.value_set:
                raise self.fail(f"node {node.id} applied {e.data!r} twice")
            pos = len(node.values)
            if pos < len(self.longest):
                if self.longest[pos] != e.data:
                    raise self.fail(
                        f"node {node.id} applied {e.data!r} at position {pos}, "
                        f"others applied {self.longest[pos]!r}"
                    )
            else:
                self.longest.append(e.data)
                self.stats.c["values_committed"] += 1
            node.values.append(e.data)
            node.value_set.add(e.data)
            self.acked.add(e.data)
        node.applied_index = e.index

    def note_committed(self, node: SimNode, index: int, term: int, typ: EntryType,
                       data: bytes) -> None:
        c = self.committed.get(index)
        if c is None:
            self.committed[index] = (term, typ, data)
            assert node.raw is not None
            self.commit_seen_term[index] = node.raw.raft.term
            self.max_committed = max(self.max_committed, index)
        elif c != (term, typ, data):
            raise self.fail(
                f"committed entry {index} diverges: node {node.id} has term {term} "
                f"{data!r}, earlier {c[0]} {c[2]!r}"
            )

    # -- checkers --------------------------------------------------------------------------
    def after_step(self, node: SimNode) -> None:
        self.check_node(node)
        self.pump(node)

    def check_node(self, node: SimNode) -> None:
        raw = node.raw
        if raw is None:
            return
        r = raw.raft
        if r.state == StateRole.LEADER:
            prev = self.leaders.setdefault(r.term, node.id)
            if prev != node.id:
                raise self.fail(f"two leaders in term {r.term}: {prev} and {node.id}")
            if (node.id, r.term) not in self.leader_checked:
                self.leader_checked.add((node.id, r.term))
                self.stats.c["leaders_elected"] += 1
                self.trace(f"LEADER {node.id} term {r.term}")
                self.check_leader_completeness(node)
        c = r.log.committed
        if c < node.last_commit:
            raise self.fail(f"node {node.id} commit went back {node.last_commit} -> {c}")
        if c > node.last_commit:
            lo = max(node.last_commit + 1, r.log.first_index())
            for e in r.log.slice(lo, c + 1) if lo <= c else []:
                self.note_committed(node, e.index, e.term, e.type, e.data)
                if r.state == StateRole.LEADER:
                    self.check_durable_quorum(node, e)
            node.last_commit = c

    def check_durable_quorum(self, leader: SimNode, e: Entry) -> None:
        """An entry a leader commits must be fsynced on a majority of its voters."""
        assert leader.raw is not None
        voters = leader.raw.raft.tracker.voters
        holders = 0
        for nid in voters:
            d = self.nodes[nid].storage.durable
            in_snapshot = d.snapshot().meta.index >= e.index
            in_log = d.first_index() <= e.index <= d.last_index() and d.term(e.index) == e.term
            holders += in_snapshot or in_log
        if holders < len(voters) // 2 + 1:
            raise self.fail(
                f"leader {leader.id} committed {e.term}/{e.index} durable on only "
                f"{holders} of voters {sorted(voters)}"
            )
        self.stats.c["durable_quorum_checks"] += 1

    def check_leader_completeness(self, node: SimNode) -> None:
        assert node.raw is not None
        r = node.raw.raft
        need = [i for i, t in self.commit_seen_term.items() if t < r.term]
        if not need:
            return
        if r.log.last_index() < max(need):
            raise self.fail(f"leader {node.id} term {r.term} lacks committed entry {max(need)}")
        first = r.log.first_index()
        for i in need:
            if i >= first and r.log.term(i) != self.committed[i][0]:
                raise self.fail(f"leader {node.id} term {r.term} has a different entry {i}")

    def converged(self) -> bool:
        """Heal-phase goal: one leader, every member applied the same full log."""
        leaders = [n for n in self.nodes.values()
                   if n.raw is not None and n.raw.raft.state == StateRole.LEADER]
        if len(leaders) != 1:
            return False
        lead = leaders[0]
        assert lead.raw is not None
        lr = lead.raw.raft
        if lr.log.committed != lr.log.last_index() or lead.applied_index != lr.log.committed:
            return False
        members = set(lr.tracker.voters) | set(lr.tracker.learners)
        for nid in members:
            n = self.nodes[nid]
            if n.raw is None or n.busy is not None or n.applied_index != lead.applied_index:
                return False
            if n.values != lead.values:
                raise self.fail(f"node {nid} applied log differs from leader {lead.id}")
        missing = self.acked - lead.value_set
        if missing:
            raise self.fail(f"acknowledged values lost: {sorted(missing)[:5]}")
        return not self.pending_values


def run_seed(seed: int, trace: bool = False) -> Stats:
    """Run one seed; raises SimFailure (naming the seed) on a violation or a crash."""
    sim = Simulation(seed, trace)
    try:
        return sim.run()
    except SimFailure:
        raise
    except Exception as exc:  # any internal error must name the seed
        raise sim.fail(f"unexpected {type(exc).__name__}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """CLI: run one seed with a trace, or a range with statistics."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--seeds", default="0:100", help="range a:b")
    ap.add_argument("--trace", action="store_true")
    args = ap.parse_args(argv)
    if args.seed is not None:
        seeds = range(args.seed, args.seed + 1)
    else:
        a, b = args.seeds.split(":")
        seeds = range(int(a), int(b))
    total = Stats()
    t0 = time.perf_counter()
    failures = 0
    for s in seeds:
        try:
            total.add(run_seed(s, args.trace))
        except SimFailure as exc:
            failures += 1
            print(exc, file=sys.stderr)
    dt = time.perf_counter() - t0
    print(f"seeds={len(seeds)} failures={failures} wall={dt:.1f}s")
    for k, v in sorted(total.c.items()):
        print(f"  {k}: {v}")
    for k, v in sorted(total.maxima.items()):
        print(f"  max {k}: {v}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
