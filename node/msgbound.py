"""How many bytes one batched stream message may carry under a gRPC message bound.

Several hops coalesce items into one stream message: the peers' endorsement requests and
answers (``ProposalBatch``, ``ProposalResponseBatch``), their broadcasts (``EnvelopeBatch``),
the orderers' forwarded batches, and the clients' ``TransactBatch`` requests. The receiver's
gRPC server refuses, as a whole, a message larger than its bound (RESOURCE_EXHAUSTED: every
item in it fails, outcome unknown), and ``limits.max_message_bytes`` may be as small as
:data:`MIN_MESSAGE_BYTES`. So each coalescer fills a message with at most half the bound
in force (:func:`batch_budget`); the other half more than covers the framing (a field tag and
a length, at most 6 bytes per item, and a correlation id). An item larger than the budget
goes out alone: it fits, since the config rules keep ``max_envelope_bytes`` within half of
``max_message_bytes`` too. A receiver takes more than that (:func:`accept_budget`): its
sender's bound may be larger than its own.
"""

from __future__ import annotations

from collections.abc import Callable

MIN_MESSAGE_BYTES = 64 << 10
"""The smallest ``limits.max_message_bytes`` a config may set (node.orderer.configrules)."""

FRAMING_SLACK = 64 << 10
"""Bytes of a batch message beyond its items (field tags and lengths: at most 6 per item, so
this covers any batch the item-count limits allow)."""

CLIENT_BATCH_BYTES = MIN_MESSAGE_BYTES // 2
"""What a client puts in one coalesced message: it does not know the bound in force, and this
fits any a config allows (a request larger than it goes alone)."""


def batch_budget(bound: int, cap: int) -> int:
    """Item bytes of one coalesced message under the message bound ``bound``: half of it, at
    most ``cap`` (the hop's own limit on work per message), at least 1 (one item per message)."""
    return max(1, min(cap, bound // 2))


def budget_reader(message_bound: Callable[[], int] | None, cap: int) -> Callable[[], int]:
    """A function giving :func:`batch_budget` of the bound ``message_bound()`` reads at each
    call (the bound in force may change); without a bound, ``cap``."""
    if message_bound is None:
        return lambda: cap
    bound = message_bound
    return lambda: batch_budget(bound(), cap)


def accept_budget(bound: int, cap: int) -> int:
    """Item bytes of one batch message a receiver whose gRPC bound is ``bound`` takes (more is
    refused TOO_LARGE): every batch that fits the bound with its framing, at most ``cap``, and
    at least :func:`batch_budget` (what a sender under the same bound fills). Not just half:
    a raise of ``max_message_bytes`` reaches each server at its restart, so a sender restarted
    under the raised bound fills up to half of it, more than half of a receiver's bound not
    raised yet -- a batch that fits the receiver's bound all the same."""
    return max(batch_budget(bound, cap), min(cap, bound - FRAMING_SLACK))
