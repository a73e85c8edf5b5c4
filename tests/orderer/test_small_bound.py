"""Orderers under the smallest ``max_message_bytes`` a config allows (64 KiB).

An orderer accepted batch messages holding at most its bound less 64 KiB of envelopes: under
a 64 KiB bound that is nothing, so every BroadcastBatch envelope was refused TOO_LARGE, the
peers' and a follower's forwarded ones alike. Batches now hold at most half the bound
(node.msgbound), on every hop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.msgbound import MIN_MESSAGE_BYTES
from tests.orderer.cluster import Client, OrdererProcs, all_serving, leader_of, make_network, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@contextlib.contextmanager
def _serving(tmp_path: Path, **spec: Any) -> Iterator[tuple[OrdererProcs, Client, list[str], str]]:
    """A network (``spec``: make_network's limits / batch) with its three orderers serving;
    (procs, client, names, leader); the orderers stopped after."""
    net = make_network(tmp_path / "net", **spec)
    procs = OrdererProcs(net)
    client = Client(net)
    try:
        names = procs.names()
        procs.start_all()
        all_serving(procs, client, names)
        leader = leader_of(procs, client, names)
        assert leader is not None
        yield procs, client, names, leader
    finally:
        procs.close()


def test_batches_are_taken_and_forwarded_under_the_smallest_message_bound(tmp_path: Path) -> None:
    with _serving(tmp_path, limits={"max_message_bytes": MIN_MESSAGE_BYTES, "max_envelope_bytes": 16384},
                  batch={"max_bytes": 16384}) as (procs, client, names, leader):
        follower = next(n for n in names if n != leader)
        # ~3.7 KB each: eight per message is ~30 KB, within half the bound; the follower
        # forwards all 64 to the leader, coalesced as they queue
        raws = [client.envelope(size=3000)[1] for _ in range(64)]
        answers = client.broadcast_batches(procs.target(follower), [raws[i:i + 8] for i in range(0, 64, 8)])
        assert [a.accepted for a in answers] == [True] * 64, {(a.reason, a.message) for a in answers}

        def ordered() -> bool:
            seen = {raw for block in client.blocks(procs.target(follower)) for raw in block.data.envelopes}
            return all(raw in seen for raw in raws)

        wait_until(ordered, 20, what="the 64 envelopes in the follower's blocks")
        for name in names:
            assert "RESOURCE_EXHAUSTED" not in procs.log_text(name), name


def test_a_batch_over_half_the_bound_that_fits_it_is_taken(tmp_path: Path) -> None:
    """Batches were accepted up to half the orderer's bound (4 MiB here: 2 MiB), no more than a
    sender under the same bound fills. But a raise of ``max_message_bytes`` reaches each server
    at its restart: a follower or peer restarted under a raised bound (5 MiB and more) fills
    more than 2 MiB, and this orderer refused every envelope of such a batch TOO_LARGE, which
    it took before (up to the bound less 64 KiB) and which fits its gRPC bound."""
    with _serving(tmp_path) as (procs, client, _names, leader):
        raws = [client.envelope(size=60_000)[1] for _ in range(40)]  # ~2.4 MB: over 2 MiB
        assert 2 << 20 < sum(len(r) for r in raws) < (4 << 20) - (64 << 10)
        answers = client.broadcast_batches(procs.target(leader), [raws])
        assert [a.accepted for a in answers] == [True] * 40, {(a.reason, a.message) for a in answers}
