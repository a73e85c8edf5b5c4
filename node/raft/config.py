"""Configuration of one Raft node (validated on construction of the core)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from node.raft.errors import ConfigError

DEFAULT_MAX_SIZE_PER_MSG = 1 << 20
DEFAULT_MAX_INFLIGHT = 256


@dataclass(frozen=True)
class Config:
    """Parameters of a RawNode.

    * ``id``: this node's id (> 0).
    * ``election_tick``: ticks without leader contact before campaigning; the actual timeout
      is drawn uniformly from ``[election_tick, 2*election_tick)`` using ``rng``.
    * ``heartbeat_tick``: leader heartbeat interval in ticks (< ``election_tick``).
    * ``rng``: the ONLY source of randomness (injected for determinism).
    * ``pre_vote``: run a pre-election that does not bump terms (partitioned nodes cannot
      disrupt a healthy leader on rejoin).
    * ``check_quorum``: the leader steps down after an election timeout without hearing
      from a quorum; followers ignore vote requests while they hear from a live leader.
    * ``max_size_per_msg``: byte limit of the entries in one append message.
    * ``max_inflight``: append messages in flight per follower in replicate state.
    * ``applied``: last index the application applied before a restart (the storage's
      snapshot index is assumed at least; entries up to it are never handed out again).
    * ``max_committed_size_per_ready``: byte limit of committed entries per Ready.
    * ``max_uncommitted_size``: byte limit of proposed-but-uncommitted entries on a leader
      (proposals beyond it are dropped; 0 = unlimited).
    * ``state_unconfirmed``: this node started with blank storage and the application has not
      yet confirmed that it is new (it may be a voter that lost the entries it acknowledged):
      it refuses every vote and pre-vote and never campaigns until ``RawNode.confirm_state()``.
      It still follows a leader, so it can catch up meanwhile.
    """

    id: int
    election_tick: int
    heartbeat_tick: int
    rng: random.Random
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = DEFAULT_MAX_SIZE_PER_MSG
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    applied: int = 0
    max_committed_size_per_ready: int | None = None
    max_uncommitted_size: int = 0
    state_unconfirmed: bool = False

    def validate(self) -> None:
        """Raise ConfigError with a reason when a value is unusable."""
        if self.id <= 0:
            raise ConfigError("id must be positive")
        if self.heartbeat_tick <= 0:
            raise ConfigError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight <= 0:
            raise ConfigError("max_inflight must be positive")
        if self.max_size_per_msg <= 0:
            raise ConfigError("max_size_per_msg must be positive")
        if self.applied < 0:
            raise ConfigError("applied must be >= 0")
        if self.max_uncommitted_size < 0:
            raise ConfigError("max_uncommitted_size must be >= 0")
        if not isinstance(self.rng, random.Random):
            raise ConfigError("rng must be a random.Random instance")
