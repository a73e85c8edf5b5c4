"""RawNode: the application's handle on the Raft core, and the Ready contract.

Driving loop (one thread / one asyncio task per node; RawNode is not thread-safe)::

    node = RawNode(Config(id=1, election_tick=10, heartbeat_tick=1, rng=random.Random(seed)),
                   storage)
    every tick interval:           node.tick()
    on a message from the network: node.step(msg)      # InvalidMessage -> drop and count
    on a client request (leader):  node.propose(data)  # ProposalDropped -> tell the client
    while node.has_ready():
        rd = node.ready()
        1. PERSIST  rd.snapshot (if not None), then rd.entries (append; an entry whose index
                    is already stored replaces it and the whole tail after it), then
                    rd.hard_state (if not None; all of it, ``lost_until`` included). If
                    rd.must_sync, fsync before step 2. (must_sync is False only for a
                    commit-only hard-state change, which may be written lazily: losing it on
                    a crash is safe.)
        2. SEND     rd.messages, only now: a vote or an append acknowledgement must never
                    leave the node before the state it promises is durable. Sending is
                    best-effort; lost messages are recovered by the protocol. (One
                    exception, for a leader whose driver persists synchronously: see
                    may_send_before_persist.)
                    Report failures with report_unreachable(id); after sending a SNAP
                    message report_snapshot(id, ok) once the transfer finished or failed.
        3. APPLY    rd.snapshot (restore the application state from its data), then
                    rd.committed_entries in order. For a CONF_CHANGE entry decode
                    ConfChange.decode(entry.data) and call node.apply_conf_change(cc);
                    persist the returned ConfState together with the applied index.
        4. ADVANCE  node.advance(rd). Exactly one Ready is outstanding at a time.

Restart: rebuild RawNode from the same storage; ``storage.initial_state()`` must return the
persisted HardState and the membership (ConfState) as of the snapshot (or as of
``Config.applied`` if the application passes a later applied index). Entries up to the
snapshot index are never handed out again; committed entries after it are (re-)delivered,
including CONF_CHANGE entries, which the application applies again.

Bootstrap, one of two ways (all members of a cluster must use the same one):

a. Founding members persist ``bootstrap_entries(voters)`` (``MemoryStorage.bootstrap``)
   and start with an empty ConfState; the first Ready delivers those ADD_NODE entries.
   A node added later starts with EMPTY storage and learns everything from the log.
b. EVERY node, founding or joining later, starts with the same founding ConfState as the
   initial ConfState of its storage (``MemoryStorage(ConfState(voters=founders))``).
   A joiner must not start with an empty ConfState here: replaying the log from index 1
   would then build a configuration without the founders.

A joiner is added by ``propose_conf_change(ConfChange(ADD_NODE, id))`` on the leader; it is
not promotable until it has applied its own ADD_NODE, and it catches up from the log or
from a snapshot.

Compaction is the application's job: after applying index ``i`` it may call
``storage.create_snapshot(i, conf_state, data)`` and later ``storage.compact(j)`` (j <= i);
the leader then ships that snapshot to followers that fall behind the compacted prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.raft.config import Config
from node.raft.core import Raft
from node.raft.errors import InvalidMessage, RaftError
from node.raft.storage import Storage
from node.raft.tracker import ProgressStatus
from node.raft.types import (
    LOCAL_MESSAGES,
    NONE,
    RESPONSE_MESSAGES,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    SoftState,
    StateRole,
)


@dataclass(frozen=True, slots=True)
class Status:
    """Observable state of a node (progress only on the leader)."""

    id: int
    term: int
    vote: int
    commit: int
    applied: int
    leader: int
    role: StateRole
    last_index: int
    first_index: int
    conf_state: ConfState
    lead_transferee: int
    progress: dict[int, ProgressStatus]


class RawNode:
    """Thread-unsafe wrapper around the core that implements the Ready contract."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.raft = Raft(config, storage)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self._outstanding = False

    # -- inputs ----------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance logical time (the application calls this at a fixed interval)."""
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (pre-vote first if enabled)."""
        self.raft.step(Message(MessageType.HUP, to=self.raft.id, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        """Append ``data`` to the log; raises ProposalDropped unless this node leads."""
        self.raft.step(
            Message(
                MessageType.PROP,
                to=self.raft.id,
                frm=self.raft.id,
                entries=(Entry(0, 0, EntryType.NORMAL, bytes(data)),),
            )
        )

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change; raises ProposalDropped if one is still pending,
        the change is a no-op (add existing voter, remove non-member, remove last voter),
        or this node does not lead."""
        self.raft.step(
            Message(
                MessageType.PROP,
                to=self.raft.id,
                frm=self.raft.id,
                entries=(Entry(0, 0, EntryType.CONF_CHANGE, cc.encode()),),
            )
        )

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change; returns the new membership."""
        return self.raft.apply_conf_change(cc)

    def transfer_leader(self, to: int) -> None:
        """Ask the leader (this node, or forwarded to it) to hand leadership to ``to``."""
        self.raft.step(
            Message(MessageType.TRANSFER_LEADER, to=self.raft.id, frm=self.raft.id, index=to)
        )

    def confirm_state(self) -> None:
        """The application confirmed that this node's blank storage is a new member's, not a
        voter's that lost what it acknowledged (see ``Config.state_unconfirmed``): it may
        vote and campaign from now on."""
        self.raft.state_unconfirmed = False

    @property
    def withholds_votes(self) -> bool:
        """True while the node refuses votes and does not campaign: its state is unconfirmed,
        or its leader told it it lost acknowledged entries (MessageType.STATE_LOST) and its
        commit index has not yet reached the leader's (``HardState.lost_until``: durable, so
        a restart before it caught up keeps it)."""
        return self.raft.withholds_votes()

    @property
    def state_unconfirmed(self) -> bool:
        """True while the node refuses votes and does not campaign (``Config.state_unconfirmed``)."""
        return self.raft.state_unconfirmed

    def take_lost_followers(self) -> list[tuple[int, int, int]]:
        """(follower, index it had acknowledged, index its log now ends or diverges at) for
        every follower this leader found to have lost entries it acknowledged since the last
        call: a voter restarted with emptied storage, whose vote may lose committed entries."""
        out, self.raft.lost_followers = self.raft.lost_followers, []
        return out

    def report_unreachable(self, node_id: int) -> None:
        """The transport failed to deliver to ``node_id``."""
        self.raft.step(Message(MessageType.UNREACHABLE, to=self.raft.id, frm=node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """A snapshot sent to ``node_id`` was delivered (ok) or failed."""
        self.raft.step(
            Message(MessageType.SNAP_STATUS, to=self.raft.id, frm=node_id, reject=not ok)
        )

    def step(self, m: Message) -> None:
        """Feed a message received from a peer.

        Raises InvalidMessage (nothing changes) for local-only types, wrong recipient,
        missing sender or malformed content. Responses from nodes outside the configuration
        are ignored silently (they are normal after a removal).
        """
        _validate(m, self.raft.id)
        if m.type in RESPONSE_MESSAGES and m.frm not in self.raft.tracker.progress:
            return
        self.raft.step(m)

    # -- outputs ---------------------------------------------------------------------------
    def has_ready(self) -> bool:
        """True when ready() would return work (False while a Ready is outstanding)."""
        if self._outstanding:
            return False
        r = self.raft
        log = r.log
        if r.msgs or log.unstable.entries or log.unstable.snapshot is not None:
            return True
        ps, ph = self._prev_soft, self._prev_hard
        if r.lead != ps.leader or r.state != ps.role:
            return True
        if r.term != ph.term or r.vote != ph.vote or log.committed != ph.commit:
            return True
        if r.lost_ban() != ph.lost_until:
            return True
        return log.committed > log.applied and log.has_next_committed_ents()

    def ready(self) -> Ready:
        """Collect work; see the module docstring for the persist/send/apply/advance order."""
        if self._outstanding:
            raise RaftError("ready_outstanding", "advance() the previous Ready first")
        r = self.raft
        ss = r.soft_state()
        hs = r.hard_state()
        snap = r.log.unstable.snapshot
        entries = tuple(r.log.unstable_entries())
        hard = hs if hs != self._prev_hard else None
        prev = self._prev_hard
        must_sync = (
            bool(entries)
            or snap is not None
            or (
                hard is not None
                and (
                    hs.term != prev.term
                    or hs.vote != prev.vote
                    # the lost-state ban, set or lifted: durable before we act on it
                    or hs.lost_until != prev.lost_until
                )
            )
        )
        rd = Ready(
            soft_state=ss if ss != self._prev_soft else None,
            hard_state=hard,
            entries=entries,
            snapshot=snap,
            messages=tuple(r.msgs),
            committed_entries=tuple(r.log.next_committed_ents()),
            must_sync=must_sync,
        )
        r.msgs = []
        self._prev_soft = ss
        self._outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The application finished the Ready (persisted, sent, applied)."""
        if not self._outstanding:
            raise RaftError("no_ready_outstanding", "advance() without ready()")
        self._outstanding = False
        r = self.raft
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)
            r.reduce_uncommitted_size(rd.committed_entries)
        elif rd.snapshot is not None:
            r.log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            r.log.stable_to(last.index, last.term)
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.meta.index)

    # -- inspection ------------------------------------------------------------------------
    def status(self) -> Status:
        """Current observable state."""
        r = self.raft
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            commit=r.log.committed,
            applied=r.log.applied,
            leader=r.lead,
            role=r.state,
            last_index=r.log.last_index(),
            first_index=r.log.first_index(),
            conf_state=r.conf_state(),
            lead_transferee=r.lead_transferee,
            progress=r.tracker.status() if r.state == StateRole.LEADER else {},
        )

    @property
    def soft_state(self) -> SoftState:
        """Current leader and role."""
        return self.raft.soft_state()

    @property
    def hard_state(self) -> HardState:
        """Current term, vote, commit and lost-state ban (as the core sees them, maybe not
        yet persisted)."""
        return self.raft.hard_state()


EARLY_MESSAGE_TYPES = frozenset({MessageType.APP, MessageType.HEARTBEAT})
"""Message types a leader may send before persisting the Ready that carries them."""


def may_send_before_persist(rd: Ready, role: StateRole, persisted: HardState) -> bool:
    """etcd-raft's leader optimisation, an exception to step 2 of the Ready contract: may a
    leader send ``rd.messages`` while (not after) it persists ``rd``?

    Only for a driver that persists SYNCHRONOUSLY, i.e. steps no acknowledgement before the
    persist returns: the core counts the leader's own entries in its match index at once,
    and an acknowledgement stepped earlier could commit entries the leader has not stored.
    Then it is safe when ``role`` is LEADER, the term and vote are unchanged from
    ``persisted`` (the durable hard state), there is no snapshot, every message is an
    append or a heartbeat, and no message carries a commit index reaching ``rd.entries``:
    a single voter commits its entries as it appends them, so its appends to learners would
    tell them to apply entries the leader could still lose in a crash (and replace after
    restarting).
    """
    if role != StateRole.LEADER or not rd.messages or rd.snapshot is not None:
        return False
    hs = rd.hard_state
    if hs is not None and (hs.term, hs.vote) != (persisted.term, persisted.vote):
        return False
    first_new = rd.entries[0].index if rd.entries else None
    return all(
        m.type in EARLY_MESSAGE_TYPES and (first_new is None or m.commit < first_new)
        for m in rd.messages
    )


MAX_ENTRIES_PER_MSG = 1 << 16
"""Upper bound on entries in one incoming message (sanity limit on peer input)."""


def _validate(m: Message, my_id: int) -> None:
    """Reject messages that no correct peer sends; raises InvalidMessage."""
    if m.type in LOCAL_MESSAGES:
        raise InvalidMessage(f"{m.type.name} is local-only")
    if m.to != my_id:
        raise InvalidMessage(f"addressed to {m.to}, this is {my_id}")
    if m.frm in (NONE, my_id):
        raise InvalidMessage(f"bad sender {m.frm}")
    if m.term < 0 or m.index < 0 or m.log_term < 0 or m.commit < 0 or m.reject_hint < 0:
        raise InvalidMessage("negative field")
    if m.term == 0:
        raise InvalidMessage(f"{m.type.name} without term")
    if len(m.entries) > MAX_ENTRIES_PER_MSG:
        raise InvalidMessage(f"{len(m.entries)} entries")
    if m.entries and m.type != MessageType.APP:
        raise InvalidMessage(f"{m.type.name} must not carry entries")
    if m.type == MessageType.APP:
        prev_term = m.log_term
        for i, e in enumerate(m.entries):
            if e.index != m.index + 1 + i:
                raise InvalidMessage("append entries not contiguous")
            if e.term < prev_term or e.term > m.term:
                raise InvalidMessage("append entry terms out of order")
            prev_term = e.term
    if m.type == MessageType.TRANSFER_LEADER and m.index <= 0:
        raise InvalidMessage("TRANSFER_LEADER without transferee")
    if m.type == MessageType.SNAP:
        if m.snapshot is None or m.snapshot.meta.index == 0:
            raise InvalidMessage("SNAP without snapshot")
        if m.snapshot.meta.term > m.term or m.snapshot.meta.term <= 0:
            raise InvalidMessage("snapshot term out of range")
    elif m.snapshot is not None:
        raise InvalidMessage(f"{m.type.name} must not carry a snapshot")
