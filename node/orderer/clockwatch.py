"""Is this orderer's wall clock the odd one out?

The Raft leader stamps every block it cuts with its own wall clock (``BlockHeader.timestamp_ms``)
and peers refuse a transaction further than ``max_clock_skew_ms`` from its block's stamp
(TX_TIMESTAMP_SKEW). A leader whose clock is wrong by more than that would make every
transaction invalid for as long as it leads; nothing in Raft moves leadership away from it.

So every Raft message between orderers carries the sender's wall clock
(``ConsensusRequest.sent_wall_ms``). :class:`ClockWatch` keeps, per sender, the latest offset:
the sender's clock minus this node's at receipt (transit and queueing add milliseconds, against
bounds of minutes). The leader hears from every voter at least once per heartbeat, so it
always has fresh offsets; every ``check_s`` it asks :func:`odd_clock_out` whether a quorum of
the voters agrees on a time its own clock is not within ``tolerance_ms`` of (half the skew
bound: a leader off by less still stamps blocks every correct client's transactions fit). If
so it hands leadership to the voter of that quorum that most voters agree with. When no quorum
agrees on anything (clocks all over the place), or the leader is in the agreeing quorum, it
stays: the majority decides, as it does for everything else in Raft.

Two guards keep leadership from flapping when clocks sit near the bound or a voter has just
died. The leader hands over only after ``clock_disagree_checks`` consecutive checks (3 s by
default) found its clock the odd one out, and only to a voter the Raft core saw active
recently (a voter that died within the offsets' 10 s horizon is no target). And a target
must agree with a quorum within three quarters of the tolerance when any voter does: the new
leader then sits a quarter of the tolerance inside the bound its own checks apply, so small
drifts do not move leadership back (when no voter is that close, the loose bound picks one:
a leader an hour off still goes).

The decision is the leader's alone (like when to campaign), so it needs no determinism across
nodes; the clocks are injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping


class ClockWatch:
    """The latest clock offset of each other orderer, from the messages it sends (thread-safe:
    gRPC threads observe, the Raft driver reads)."""

    def __init__(
        self,
        wall_ms: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
        max_age_s: float = 10.0,
    ) -> None:
        self._wall_ms = wall_ms
        self._clock = clock
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._latest: dict[int, tuple[int, float]] = {}  # node -> (offset ms, when observed)

    def observe(self, node_id: int, sent_wall_ms: int) -> None:
        """Node ``node_id`` sent a message when its clock read ``sent_wall_ms`` (0: unknown)."""
        if sent_wall_ms <= 0:
            return
        offset = sent_wall_ms - self._wall_ms()
        with self._lock:
            self._latest[node_id] = (offset, self._clock())

    def offsets(self) -> dict[int, int]:
        """Node -> its clock minus ours (ms), for nodes heard from within ``max_age_s``."""
        horizon = self._clock() - self._max_age_s
        with self._lock:
            return {n: off for n, (off, at) in self._latest.items() if at >= horizon}


def odd_clock_out(
    own_id: int,
    voters: Collection[int],
    offsets: Mapping[int, int],
    tolerance_ms: int,
    eligible: Collection[int] | None = None,
) -> int | None:
    """The voter a leader whose clock disagrees with a quorum should hand leadership to, or
    None when its clock agrees with a quorum of ``voters`` (within ``tolerance_ms``), or when
    no voter's clock does (see the module docstring). ``offsets``: other voters' clocks
    relative to this node's; voters without a fresh offset count as not agreeing with anyone.
    ``eligible``: the voters that may receive leadership (None: every voter); the others still
    count towards agreement. A target agreeing with a quorum within 3/4 of the tolerance is
    preferred to one agreeing only within the whole of it."""
    if tolerance_ms <= 0 or own_id not in voters:
        return None
    clocks = {own_id: 0}
    clocks.update({v: offsets[v] for v in voters if v != own_id and v in offsets})
    quorum = len(voters) // 2 + 1

    def agreeing(node: int, within: int) -> int:
        return sum(1 for c in clocks.values() if abs(c - clocks[node]) <= within)

    if agreeing(own_id, tolerance_ms) >= quorum:
        return None
    targets = [n for n in clocks if n != own_id and (eligible is None or n in eligible)]
    for within in (tolerance_ms * 3 // 4, tolerance_ms):
        best: tuple[int, int] | None = None  # (agreeing voters, -node id): most, then lowest id
        for node in targets:
            n = agreeing(node, within)
            if n >= quorum and (best is None or (n, -node) > best):
                best = (n, -node)
        if best is not None:
            return -best[1]
    return None


__all__ = ["ClockWatch", "odd_clock_out"]
