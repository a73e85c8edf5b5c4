"""Value types of the Raft core: log entries, persistent state, messages and the Ready bundle.

Standard library only. Every value is a frozen dataclass so the core can hand them out
without defensive copies. Node ids are positive integers; ``0`` means "none" (no vote,
no leader). Log indexes start at 1; index 0 / term 0 is the empty log.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from node.raft.errors import RaftError

NONE = 0
"""Node id meaning "nobody" (no vote cast, no known leader)."""


class EntryType(IntEnum):
    """Kind of a log entry: opaque application data or an encoded ConfChange."""

    NORMAL = 0
    CONF_CHANGE = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry. ``data`` is opaque for NORMAL entries, ``ConfChange.encode()`` otherwise."""

    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate size used for the max-bytes limits (payload plus fixed overhead)."""
        return len(self.data) + ENTRY_OVERHEAD


ENTRY_OVERHEAD = 24
"""Bytes charged per entry on top of its payload when applying size limits."""


@dataclass(frozen=True, slots=True)
class HardState:
    """State that must be durable before any message depending on it is sent.

    ``lost_until``: a leader told this node it lost entries it had acknowledged
    (MessageType.STATE_LOST); it neither votes nor campaigns until its commit index reaches
    this (the leader's commit index then). 0: no such ban (also whenever ``commit`` reached
    it: the core reports a lifted ban as 0, so it is cleared in storage too)."""

    term: int = 0
    vote: int = 0
    commit: int = 0
    lost_until: int = 0


EMPTY_HARD_STATE = HardState()


@dataclass(frozen=True, slots=True)
class ConfState:
    """Membership: voters count towards quorums, learners only receive the log."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Position (index, term) and membership captured by a snapshot."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Application state up to ``meta.index`` (``data`` is opaque to Raft)."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def is_empty(self) -> bool:
        """True for the placeholder snapshot at index 0."""
        return self.meta.index == 0


EMPTY_SNAPSHOT = Snapshot()


class ConfChangeType(IntEnum):
    """Single-server membership change kinds."""

    ADD_NODE = 0
    REMOVE_NODE = 1
    ADD_LEARNER_NODE = 2


_CC_MAGIC = b"RXCC"
_CC_VERSION = 1
_CC_HEADER = struct.Struct(">4sBBQI")
CONF_CHANGE_MAX_CONTEXT = 1 << 20
"""Largest ConfChange.context accepted by decode() (1 MiB)."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """Add or remove one node. Rides in ``Entry.data`` of a CONF_CHANGE entry.

    Binary layout of ``encode()`` (big-endian, 18-byte header then context):

    ====== ===== ==========================================
    offset size  field
    ====== ===== ==========================================
    0      4     magic ``b"RXCC"``
    4      1     version (1)
    5      1     type (ConfChangeType)
    6      8     node_id (unsigned)
    14     4     len(context) (unsigned)
    18     n     context bytes
    ====== ===== ==========================================
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        """Serialize to the fixed binary layout documented on the class."""
        if not 0 < self.node_id < (1 << 64):
            raise RaftError("conf_change_bad_node_id", f"node id {self.node_id} out of range")
        if len(self.context) > CONF_CHANGE_MAX_CONTEXT:
            raise RaftError("conf_change_context_too_large", f"{len(self.context)} bytes")
        head = _CC_HEADER.pack(
            _CC_MAGIC, _CC_VERSION, int(self.type), self.node_id, len(self.context)
        )
        return head + self.context

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """Parse ``encode()`` output; raises RaftError with a reason code on malformed input."""
        if len(data) < _CC_HEADER.size:
            raise RaftError("conf_change_truncated", f"{len(data)} bytes")
        magic, version, typ, node_id, ctx_len = _CC_HEADER.unpack_from(data)
        if magic != _CC_MAGIC:
            raise RaftError("conf_change_bad_magic", repr(magic))
        if version != _CC_VERSION:
            raise RaftError("conf_change_bad_version", str(version))
        try:
            cc_type = ConfChangeType(typ)
        except ValueError:
            raise RaftError("conf_change_bad_type", str(typ)) from None
        if node_id == 0:
            raise RaftError("conf_change_bad_node_id", "node id 0")
        if ctx_len > CONF_CHANGE_MAX_CONTEXT or len(data) != _CC_HEADER.size + ctx_len:
            raise RaftError("conf_change_bad_length", f"context {ctx_len}, total {len(data)}")
        return ConfChange(cc_type, node_id, bytes(data[_CC_HEADER.size :]))


class MessageType(IntEnum):
    """Message kinds (etcd-raft numbering is not kept; values are stable for our wire)."""

    HUP = 0  # local: start an election
    BEAT = 1  # local: leader sends heartbeats
    PROP = 2  # local: propose entries
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    PRE_VOTE = 7
    PRE_VOTE_RESP = 8
    HEARTBEAT = 9
    HEARTBEAT_RESP = 10
    SNAP = 11
    SNAP_STATUS = 12  # local: application reports snapshot delivery result
    UNREACHABLE = 13  # local: application reports a peer unreachable
    TRANSFER_LEADER = 14  # transferee id in ``index``; local, or forwarded to the leader
    TIMEOUT_NOW = 15
    CHECK_QUORUM = 16  # local: leader checks it still hears from a quorum
    STATE_LOST = 17  # leader -> follower: you lost entries you acknowledged; no vote before
    #                  your commit index reaches ``commit`` (see Raft._step_follower)


LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.PROP,
        MessageType.SNAP_STATUS,
        MessageType.UNREACHABLE,
        MessageType.CHECK_QUORUM,
    }
)
"""Types that only the node itself may generate; ``RawNode.step`` refuses them."""

RESPONSE_MESSAGES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
    }
)


@dataclass(frozen=True, slots=True)
class Message:
    """A Raft message. ``frm`` is always the sender (transports may authenticate it),
    ``to`` the recipient. TRANSFER_LEADER carries the transferee in ``index``."""

    type: MessageType
    to: int
    frm: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


class StateRole(IntEnum):
    """Role of a node."""

    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (not persisted)."""

    leader: int
    role: StateRole


@dataclass(frozen=True, slots=True)
class Ready:
    """Work for the application; see the contract in ``node.raft.node``.

    * ``entries``: append to stable storage; an entry with an index already stored replaces
      it and everything after it (conflicting tail).
    * ``hard_state``: persist (None when unchanged).
    * ``snapshot``: persist and apply (None when there is none).
    * ``messages``: send only AFTER entries, hard state and snapshot are durable.
    * ``committed_entries``: apply in order, after persisting.
    * ``must_sync``: True when entries, term, vote or the lost-state ban (``lost_until``)
      changed (fsync needed before sending); a commit-only hard-state change may be written
      lazily.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    must_sync: bool
