"""Conversion between the Raft core's value types and their protobuf wire form (raft.proto)."""

from __future__ import annotations

from google.protobuf.message import DecodeError
from rxchain.v1 import raft_pb2

from node.raft.errors import InvalidMessage
from node.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)


def entry_to_pb(e: Entry) -> raft_pb2.RaftEntry:
    """Entry -> RaftEntry."""
    return raft_pb2.RaftEntry(term=e.term, index=e.index, type=int(e.type), data=e.data)


def entry_from_pb(p: raft_pb2.RaftEntry) -> Entry:
    """RaftEntry -> Entry (InvalidMessage on an unknown entry type)."""
    try:
        kind = EntryType(p.type)
    except ValueError:
        raise InvalidMessage(f"unknown entry type {p.type}") from None
    return Entry(p.term, p.index, kind, p.data)


def snapshot_to_pb(s: Snapshot) -> raft_pb2.RaftSnapshot:
    """Snapshot -> RaftSnapshot."""
    cs = raft_pb2.RaftConfState(
        voters=list(s.meta.conf_state.voters), learners=list(s.meta.conf_state.learners)
    )
    return raft_pb2.RaftSnapshot(index=s.meta.index, term=s.meta.term, conf_state=cs, data=s.data)


def snapshot_from_pb(p: raft_pb2.RaftSnapshot) -> Snapshot:
    """RaftSnapshot -> Snapshot."""
    cs = ConfState(tuple(p.conf_state.voters), tuple(p.conf_state.learners))
    return Snapshot(SnapshotMeta(p.index, p.term, cs), p.data)


def encode_message(m: Message) -> bytes:
    """Serialize a Raft message."""
    pb = raft_pb2.RaftMessage(
        type=int(m.type),
        to=m.to,
        term=m.term,
        log_term=m.log_term,
        index=m.index,
        entries=[entry_to_pb(e) for e in m.entries],
        commit=m.commit,
        reject=m.reject,
        reject_hint=m.reject_hint,
        context=m.context,
    )
    setattr(pb, "from", m.frm)
    if m.snapshot is not None:
        pb.snapshot.CopyFrom(snapshot_to_pb(m.snapshot))
    return pb.SerializeToString()


def decode_message(data: bytes) -> Message:
    """Parse a Raft message; raises InvalidMessage on malformed bytes or unknown types."""
    pb = raft_pb2.RaftMessage()
    try:
        pb.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidMessage(f"undecodable raft message: {exc}") from exc
    try:
        mtype = MessageType(pb.type)
    except ValueError:
        raise InvalidMessage(f"unknown message type {pb.type}") from None
    return Message(
        type=mtype,
        to=pb.to,
        frm=getattr(pb, "from"),
        term=pb.term,
        log_term=pb.log_term,
        index=pb.index,
        entries=tuple(entry_from_pb(e) for e in pb.entries),
        commit=pb.commit,
        reject=pb.reject,
        reject_hint=pb.reject_hint,
        snapshot=snapshot_from_pb(pb.snapshot) if pb.HasField("snapshot") else None,
        context=pb.context,
    )
