"""Seeded, printable, reproducible fault schedules."""

from __future__ import annotations

import random
from dataclasses import dataclass

# Kinds a schedule may contain (what :mod:`tests.fault.chaos` knows how to inject and heal).
KINDS = (
    "kill9_leader",      # kill -9 the Raft leader, restart it after the hold
    "kill9_orderer",     # kill -9 a follower orderer
    "kill9_peer",        # kill -9 a peer
    "pause_orderer",     # SIGSTOP / SIGCONT an orderer
    "pause_peer",        # SIGSTOP / SIGCONT a peer
    "cut",               # reset every connection to a node (proxy)
    "partition",         # black-hole every connection to a node (proxy DROP), then heal + reset
    "oneway",            # a node's answers are black-holed (proxy BLACKHOLE_DOWN)
    "delay",             # 150 ms added each way on every connection to a node
    "disk_full",         # the small-disk peer's filesystem is filled, then drained
    "quorum_loss",       # a majority of orderers paused at once, then continued
    "compound",          # at once: kill -9 a peer and black-hole an orderer (proxy DROP)
)
SHORT_KINDS = ("kill9_leader", "kill9_peer", "pause_orderer", "partition", "cut", "disk_full", "quorum_loss")


@dataclass(frozen=True)
class PlannedFault:
    """One entry of a schedule: start after ``gap_s``, hold ``hold_s``, then heal."""

    kind: str
    target: str  # node name, or "leader" (resolved when injected)
    gap_s: float
    hold_s: float

    def describe(self) -> str:
        """One printable line."""
        return f"+{self.gap_s:.1f}s {self.kind:<14} {self.target:<16} hold {self.hold_s:.1f}s"


def make_schedule(seed: int, orderers: list[str], peers: list[str], disk_peer: str, *, long: bool,
                  kinds: tuple[str, ...] = SHORT_KINDS) -> list[PlannedFault]:
    """The fault schedule for ``seed``: the short one covers each of ``kinds`` (default
    :data:`SHORT_KINDS`) once in a seeded order; the long one has every kind of :data:`KINDS`
    once plus random draws, 25 faults in all (no disk_full without a small-disk peer)."""
    rng = random.Random(seed)
    pool = [k for k in KINDS if k != "disk_full" or disk_peer]
    if long:  # every kind once (disk_full only with a small-disk peer), then random draws: 25 in all
        chosen = list(pool) + [rng.choice(pool) for _ in range(25 - len(pool))]
    else:
        chosen = list(kinds)
    rng.shuffle(chosen)
    out: list[PlannedFault] = []
    for kind in chosen:
        if kind == "kill9_leader":
            target = "leader"
        elif kind in ("kill9_orderer", "pause_orderer", "quorum_loss"):
            target = rng.choice(orderers)
        elif kind in ("kill9_peer", "pause_peer"):
            target = rng.choice(peers)
        elif kind == "disk_full":
            target = disk_peer
        elif kind == "compound":
            target = f"{rng.choice(peers)}+{rng.choice(orderers)}"
        else:
            target = rng.choice(orderers + peers)
        hold = rng.uniform(2.0, 4.0) if long else rng.uniform(1.5, 3.0)
        out.append(PlannedFault(kind, target, round(rng.uniform(1.5, 3.0), 1), round(hold, 1)))
    return out
