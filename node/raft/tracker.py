"""Leader-side replication state per peer (Progress, Inflights) and the membership tracker."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from node.raft import quorum
from node.raft.types import ConfState


class ProgressState(IntEnum):
    """How the leader currently replicates to a peer."""

    PROBE = 0  # one message per heartbeat interval until the match point is found
    REPLICATE = 1  # optimistic pipelining, bounded by Inflights
    SNAPSHOT = 2  # a snapshot is in flight; wait for it to be applied or reported failed


class Inflights:
    """Bounded window of in-flight append messages (their last indexes, in order)."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("inflights size must be positive")
        self.size = size
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        """Record a sent append ending at ``last_index``."""
        assert not self.full(), "inflights overflow"
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        """Release every message whose last index is <= ``index`` (acknowledged)."""
        while self._q and self._q[0] <= index:
            self._q.popleft()

    def free_first_one(self) -> None:
        """Release the oldest message (lets a stalled window move on a heartbeat reply)."""
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        """True when no more appends may be sent."""
        return len(self._q) >= self.size

    def count(self) -> int:
        """Number of messages in flight."""
        return len(self._q)

    def reset(self) -> None:
        """Forget everything in flight."""
        self._q.clear()


class Progress:
    """What the leader knows about one peer's log."""

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.probe_sent = False
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Fall back to probing (after a rejection, unreachable report or snapshot)."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        """Start pipelining after the match point is known."""
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """A snapshot at ``snapshot_index`` is being sent."""
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Peer acknowledged up to ``n``; returns True when ``match`` moved forward."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Peer rejected an append at ``rejected``; move ``next`` back. False if stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale rejection
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale rejection of an earlier probe
        self.next = max(min(rejected, match_hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_entries(self, count: int, last_index: int) -> None:
        """Bookkeeping after an append carrying ``count`` entries ending at ``last_index``."""
        if self.state == ProgressState.REPLICATE:
            if count > 0:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE and count > 0:
            self.probe_sent = True

    def is_paused(self) -> bool:
        """True when the leader must not send another append now."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    """Snapshot of a Progress for Status reports."""

    match: int
    next: int
    state: ProgressState
    recent_active: bool
    is_learner: bool
    pending_snapshot: int


class ProgressTracker:
    """Membership (voters, learners), per-peer Progress and the votes of an election."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def ids(self) -> list[int]:
        """All members (voters then learners), sorted for deterministic iteration."""
        return sorted(self.progress)

    def conf_state(self) -> ConfState:
        """Current membership as a ConfState."""
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def restore(self, cs: ConfState, next_index: int) -> None:
        """Reset membership to ``cs`` with fresh progress."""
        self.voters = set(cs.voters)
        self.learners = set(cs.learners) - self.voters
        self.progress = {}
        for nid in sorted(self.voters | self.learners):
            self.progress[nid] = Progress(next_index, self.max_inflight, nid in self.learners)
        self.votes = {}

    def add_voter(self, nid: int, next_index: int) -> None:
        """Add (or promote a learner to) a voter."""
        self.learners.discard(nid)
        self.voters.add(nid)
        pr = self.progress.get(nid)
        if pr is None:
            pr = Progress(next_index, self.max_inflight)
            pr.recent_active = True  # do not count a fresh node as dead at the next check
            self.progress[nid] = pr
        pr.is_learner = False

    def add_learner(self, nid: int, next_index: int) -> None:
        """Add a learner (a voter is not demoted)."""
        if nid in self.voters or nid in self.learners:
            return
        self.learners.add(nid)
        pr = Progress(next_index, self.max_inflight, is_learner=True)
        pr.recent_active = True
        self.progress[nid] = pr

    def remove(self, nid: int) -> None:
        """Remove a node entirely."""
        self.voters.discard(nid)
        self.learners.discard(nid)
        self.progress.pop(nid, None)
        self.votes.pop(nid, None)

    def committed(self) -> int:
        """Largest index replicated on a quorum of voters."""
        return quorum.committed_index(
            self.voters, {nid: pr.match for nid, pr in self.progress.items()}
        )

    def quorum_active(self) -> bool:
        """True when a quorum of voters was recently active."""
        alive = {nid for nid, pr in self.progress.items() if pr.recent_active}
        return quorum.has_quorum(self.voters, alive)

    def reset_votes(self) -> None:
        """Forget the votes of the previous election."""
        self.votes = {}

    def record_vote(self, nid: int, granted: bool) -> None:
        """Record the first vote answer of ``nid`` (later duplicates are ignored)."""
        if nid not in self.votes:
            self.votes[nid] = granted

    def tally_votes(self) -> tuple[int, int, quorum.VoteResult]:
        """(granted, rejected, result) among current voters."""
        granted = sum(1 for v in self.voters if self.votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self.votes.get(v) is False)
        return granted, rejected, quorum.vote_result(self.voters, self.votes)

    def is_singleton(self) -> bool:
        """True when this configuration has exactly one voter."""
        return len(self.voters) == 1

    def status(self) -> dict[int, ProgressStatus]:
        """Per-peer progress snapshot."""
        return {
            nid: ProgressStatus(
                pr.match, pr.next, pr.state, pr.recent_active, pr.is_learner, pr.pending_snapshot
            )
            for nid, pr in sorted(self.progress.items())
        }
