"""Majority quorum arithmetic (single configuration; membership changes one node at a time).

Pure functions over a set of voter ids; ids missing from an ack/vote map count as "no
information" (index 0 / not yet voted).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import IntEnum

NO_LIMIT = 1 << 63
"""Committed index reported for an empty configuration (does not restrict anything)."""


class VoteResult(IntEnum):
    """Outcome of an election as far as known."""

    PENDING = 0
    LOST = 1
    WON = 2


def majority(n: int) -> int:
    """Smallest number of voters forming a quorum among ``n``."""
    return n // 2 + 1


def committed_index(voters: Collection[int], acked: Mapping[int, int]) -> int:
    """Largest index acknowledged by a quorum of ``voters`` (``acked[id]`` = match index)."""
    if not voters:
        return NO_LIMIT
    matched = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return matched[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a quorum granted, LOST once a quorum can no longer grant, else PENDING."""
    if not voters:
        return VoteResult.WON
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    q = majority(len(voters))
    if granted >= q:
        return VoteResult.WON
    if len(voters) - rejected < q:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], alive: Collection[int]) -> bool:
    """True when the voters in ``alive`` form a quorum (vacuously true when empty)."""
    if not voters:
        return True
    return sum(1 for v in voters if v in alive) >= majority(len(voters))
