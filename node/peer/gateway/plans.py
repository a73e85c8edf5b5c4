"""Endorsement plans: which remote organisations to ask so that a policy is satisfied."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from node.identity.policy import Policy

PEER_ROLE = "peer"  # endorsements count as signatures of (org, "peer")


def plan(policy: Policy, have: Sequence[str], candidates: Sequence[str]) -> list[str] | None:
    """A small set of extra orgs (from ``candidates``) that, with ``have``, satisfies ``policy``.

    Greedy: add candidates in order until satisfied, then drop any that is not needed.
    """
    chosen: list[str] = []
    signers = [(o, PEER_ROLE) for o in have]
    for org in candidates:
        if policy.evaluate(signers + [(o, PEER_ROLE) for o in chosen]):
            break
        chosen.append(org)
    if not policy.evaluate(signers + [(o, PEER_ROLE) for o in chosen]):
        return None
    for org in list(chosen):
        rest = [o for o in chosen if o != org]
        if policy.evaluate(signers + [(o, PEER_ROLE) for o in rest]):
            chosen = rest
    return chosen


class PlanRotation:
    """The distinct valid plans for one (policy, own org, remote orgs), used round-robin.

    Plan ``k`` is :func:`plan` with the candidates rotated to start at the k-th remote
    organisation; duplicates are dropped, order is deterministic. Thread-safe.
    """

    def __init__(self, policy: Policy, have: Sequence[str], candidates: Sequence[str]) -> None:
        options: list[tuple[str, ...]] = []
        n = len(candidates)
        for k in range(max(n, 1)):
            found = plan(policy, have, [*candidates[k:], *candidates[:k]])
            if found is not None and tuple(found) not in options:
                options.append(tuple(found))
        self.options: tuple[tuple[str, ...], ...] = tuple(options)
        self._lock = threading.Lock()
        self._next = 0

    def choose(self) -> list[str] | None:
        """The next plan in turn; None when no set of the candidates satisfies the policy."""
        if not self.options:
            return None
        with self._lock:
            k = self._next
            self._next = (k + 1) % len(self.options)
        return list(self.options[k])
