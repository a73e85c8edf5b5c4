"""Errors raised by the Raft core and its storage. Each carries a stable reason code."""

from __future__ import annotations


class RaftError(Exception):
    """Base class: ``reason`` is a stable machine-readable code, ``detail`` free text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RaftStateLost(RaftError):
    """The WAL is missing but other files show this node has already taken part in the Raft
    log: it lost its hard state (term, vote) and entries. Restarting it as a blank voter
    could let it vote twice in a term or acknowledge away a committed entry."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("raft_state_lost", detail)


class ProposalDropped(RaftError):
    """The proposal was not appended (not leader, no leader, transfer in progress, ...)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("proposal_dropped", detail)


class Compacted(RaftError):
    """The requested index is older than the storage's first index (compacted away)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("log_compacted", detail)


class Unavailable(RaftError):
    """The requested index is beyond the storage's last index."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("log_unavailable", detail)


class SnapshotOutOfDate(RaftError):
    """A snapshot older than the current one was offered to storage."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("snapshot_out_of_date", detail)


class SnapshotTemporarilyUnavailable(RaftError):
    """Storage cannot produce a snapshot right now; the leader retries later."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("snapshot_temporarily_unavailable", detail)


class InvalidMessage(RaftError):
    """A message that must not come from the network (local type, bad ids)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("invalid_message", detail)


class CommittedEntryConflict(RaftError):
    """An append would truncate or overwrite a committed entry: this node's log and the
    leader's disagree on what was committed (etcd-raft panics). Not a message to drop: the
    node must stop (the orderer's chain ends, the process exits 70)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("committed_entry_conflict", detail)


class ConfigError(RaftError):
    """Invalid Config values."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("invalid_config", detail)
