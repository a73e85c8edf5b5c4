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
``max_message_bytes`` too.
"""

from __future__ import annotations

MIN_MESSAGE_BYTES = 64 << 10
"""The smallest ``limits.max_message_bytes`` a config may set (node.orderer.configrules)."""

CLIENT_BATCH_BYTES = MIN_MESSAGE_BYTES // 2
"""What a client puts in one coalesced message: it does not know the bound in force, and this
fits any a config allows (a request larger than it goes alone)."""


def batch_budget(bound: int, cap: int) -> int:
    """Item bytes of one coalesced message under the message bound ``bound``: half of it, at
    most ``cap`` (the hop's own limit on work per message), at least 1 (one item per message)."""
    return max(1, min(cap, bound // 2))
