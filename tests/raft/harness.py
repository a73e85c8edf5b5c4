"""In-memory cluster of RawNodes for unit and golden tests (lossless, synchronous).

Messages are queued and delivered by ``deliver()`` / ``stabilize()``; links can be cut,
nodes isolated. Each node persists to its own MemoryStorage following the Ready contract.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from node.raft.config import Config
from node.raft.errors import InvalidMessage
from node.raft.node import RawNode
from node.raft.storage import MemoryStorage
from node.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
)


def fmt_entry(e: Entry) -> str:
    """``term/index`` plus payload (``EntryConfChange add 4`` for conf changes)."""
    if e.type == EntryType.CONF_CHANGE:
        cc = ConfChange.decode(e.data)
        return f"{e.term}/{e.index} CC {cc.type.name} {cc.node_id}"
    return f"{e.term}/{e.index} {e.data.decode() if e.data else '<empty>'}"


def fmt_msg(m: Message) -> str:
    """One-line deterministic rendering of a message."""
    parts = [f"{m.frm}->{m.to} {m.type.name} term={m.term}"]
    if m.type in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"log={m.log_term}/{m.index}")
    if m.type == MessageType.APP_RESP:
        parts.append(f"index={m.index}")
    if m.type in (MessageType.APP, MessageType.HEARTBEAT):
        parts.append(f"commit={m.commit}")
    if m.entries:
        parts.append("entries=[" + ", ".join(fmt_entry(e) for e in m.entries) + "]")
    if m.reject:
        parts.append(f"REJECT hint={m.reject_hint}/{m.log_term}")
    if m.snapshot is not None:
        meta = m.snapshot.meta
        parts.append(f"snap={meta.term}/{meta.index} voters={list(meta.conf_state.voters)}")
    return " ".join(parts)


@dataclass
class Member:
    """One node of the harness cluster with its storage and applied state machine."""

    node: RawNode
    storage: MemoryStorage
    applied: list[bytes] = field(default_factory=list)
    applied_index: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


class Cluster:
    """Synchronous, lossless (unless cut) in-memory network of RawNodes."""

    def __init__(
        self,
        ids: list[int],
        *,
        seed: int = 1,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_inflight: int = 256,
        max_size_per_msg: int = 1 << 20,
        voters: list[int] | None = None,
    ) -> None:
        self.seed = seed
        self.kw = {
            "election_tick": election_tick,
            "heartbeat_tick": heartbeat_tick,
            "pre_vote": pre_vote,
            "check_quorum": check_quorum,
            "max_inflight": max_inflight,
            "max_size_per_msg": max_size_per_msg,
        }
        self.members: dict[int, Member] = {}
        self.queue: list[Message] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.drop_types: set[MessageType] = set()
        self.log: list[str] = []
        founders = voters if voters is not None else ids
        for nid in ids:
            self.add_member(nid, founders if nid in founders else None)
        self.stabilize()  # apply the bootstrap conf changes

    def add_member(self, nid: int, founders: list[int] | None = None) -> Member:
        """Create node ``nid``: a founding member (bootstrap log) or an empty joiner."""
        storage = MemoryStorage()
        if founders:
            storage.bootstrap(founders)
        cfg = Config(id=nid, rng=random.Random(self.seed * 1000 + nid), **self.kw)  # type: ignore[arg-type]
        m = Member(RawNode(cfg, storage), storage)
        self.members[nid] = m
        return m

    def add_member_with_conf_state(self, nid: int, cs: ConfState, *, state_unconfirmed: bool = False) -> Member:
        """Create node ``nid`` whose empty storage starts from membership ``cs``
        (bootstrap mode b: every node starts from the founding ConfState); with
        ``state_unconfirmed`` it neither votes nor campaigns until ``confirm_state()``."""
        storage = MemoryStorage(cs)
        cfg = Config(id=nid, rng=random.Random(self.seed * 1000 + nid), state_unconfirmed=state_unconfirmed,
                     **self.kw)  # type: ignore[arg-type]
        m = Member(RawNode(cfg, storage), storage, conf_state=cs)
        self.members[nid] = m
        return m

    def restart(self, nid: int) -> None:
        """Rebuild node ``nid`` from its storage (everything in it was synced)."""
        old = self.members[nid]
        snap = old.storage.snapshot()
        cfg = Config(
            id=nid,
            rng=random.Random(self.seed * 1000 + nid + 7),
            applied=snap.meta.index,
            **self.kw,  # type: ignore[arg-type]
        )
        applied = decode_values(snap.data)
        self.members[nid] = Member(
            RawNode(cfg, old.storage),
            old.storage,
            applied=applied,
            applied_index=snap.meta.index,
            conf_state=snap.meta.conf_state,
        )

    def node(self, nid: int) -> RawNode:
        """The RawNode of ``nid``."""
        return self.members[nid].node

    # -- Ready processing ---------------------------------------------------------------
    def process_ready(self, nid: int) -> bool:
        """Handle one Ready of ``nid``; returns False when there was none."""
        mem = self.members[nid]
        if not mem.node.has_ready():
            return False
        rd = mem.node.ready()
        if rd.snapshot is not None:
            mem.storage.apply_snapshot(rd.snapshot)
        mem.storage.append(rd.entries)
        if rd.hard_state is not None:
            mem.storage.set_hard_state(rd.hard_state)
        self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            mem.applied = decode_values(rd.snapshot.data)
            mem.applied_index = rd.snapshot.meta.index
            mem.conf_state = rd.snapshot.meta.conf_state
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                mem.conf_state = mem.node.apply_conf_change(ConfChange.decode(e.data))
            elif e.data:
                mem.applied.append(e.data)
            mem.applied_index = e.index
        mem.node.advance(rd)
        return True

    def deliver(self) -> list[str]:
        """Deliver every queued message once (new ones are queued); returns rendered lines
        (cut links and unknown recipients drop the message, shown as ``DROPPED``)."""
        batch, self.queue = self.queue, []
        done = []
        for m in batch:
            if (
                (m.frm, m.to) in self.cut_links
                or m.to not in self.members
                or m.type in self.drop_types
            ):
                done.append(fmt_msg(m) + " DROPPED")
                continue
            try:
                self.members[m.to].node.step(m)
            except InvalidMessage as exc:
                done.append(fmt_msg(m) + f" INVALID {exc.reason}")
                continue
            done.append(fmt_msg(m))
        return done

    def stabilize(self, max_rounds: int = 1000) -> list[str]:
        """Process readies and deliver until quiet; returns rendered delivered messages."""
        out: list[str] = []
        for _ in range(max_rounds):
            progressed = False
            for nid in sorted(self.members):
                while self.process_ready(nid):
                    progressed = True
            delivered = self.deliver()
            out.extend(delivered)
            if not progressed and not delivered and not self.queue:
                return out
        raise AssertionError("cluster did not stabilize")

    # -- faults ---------------------------------------------------------------------------
    def isolate(self, nid: int) -> None:
        """Cut every link to and from ``nid``."""
        for other in self.members:
            if other != nid:
                self.cut_links.add((nid, other))
                self.cut_links.add((other, nid))

    def cut(self, a: int, b: int) -> None:
        """Cut both directions between ``a`` and ``b``."""
        self.cut_links.add((a, b))
        self.cut_links.add((b, a))

    def heal(self) -> None:
        """Restore every link."""
        self.cut_links.clear()

    def tick(self, nid: int, n: int = 1) -> None:
        """Tick ``nid`` ``n`` times."""
        for _ in range(n):
            self.members[nid].node.tick()

    def leader(self) -> int:
        """Id of a node that believes it leads (highest term), 0 if none."""
        best = (0, 0)
        for nid, mem in self.members.items():
            st = mem.node.status()
            if st.role.name == "LEADER" and st.term > best[0]:
                best = (st.term, nid)
        return best[1]

    def snapshot(self, nid: int, compact: bool = True) -> Snapshot:
        """Snapshot node ``nid`` at its applied index and compact its log."""
        mem = self.members[nid]
        snap = mem.storage.create_snapshot(
            mem.applied_index, mem.conf_state, encode_values(mem.applied)
        )
        if compact:
            mem.storage.compact(mem.applied_index)
        return snap


def encode_values(values: list[bytes]) -> bytes:
    """Length-prefixed concatenation (4-byte big-endian length per value)."""
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
