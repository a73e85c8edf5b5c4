"""A forwarded resubmission of an envelope already in a block is answered "already ordered"
by the leader, whatever config update followed it.

A client resubmits an envelope whose outcome it did not learn (a leader change), through a
follower that has not stored the block holding it yet; the leader has, and a config block
after it lowered ``max_envelope_bytes`` (or revoked the creator). The leader's re-check of
forwarded envelopes judged them against its config in force first and answered TOO_LARGE
(UNKNOWN_CREATOR) -- a refusal, "nothing ordered" -- for an envelope in a committed block
(found by a review): the client gave up on a transaction that happened. The config's checks
are now made as the block is cut; intake only parses.
"""

from __future__ import annotations

from typing import Any

import pytest
from rxchain.v1 import block_pb2

from node.crypto.x509 import cert_info_der
from node.orderer.broadcast import BroadcastHandler
from node.orderer.metrics import OrdererMetrics
from node.orderer.recent import RecentTxIndex
from tests.orderer.cluster import Client, make_network
from tests.orderer.test_batch import BatchOrderer, NoForward, _leader_validator


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_network(tmp_path_factory.mktemp("recheck") / "net")


class Stored:
    """A block store holding block 1 with ``envelope`` (block 0: a placeholder genesis)."""

    def __init__(self, envelope: bytes) -> None:
        one = block_pb2.Block()
        one.header.number = 1
        one.data.envelopes.append(envelope)
        self._blocks = [block_pb2.Block(), one]

    def height(self) -> int:
        return len(self._blocks)

    def get(self, number: int) -> block_pb2.Block:
        return self._blocks[number]


@pytest.mark.parametrize("change", ["lowered_limit", "revoked_creator"])
def test_a_forwarded_resubmission_of_an_ordered_envelope_is_answered_already_ordered(
        net: Any, change: str) -> None:
    client = Client(net)
    tx_id, raw = client.envelope(size=6000)
    if change == "lowered_limit":
        validator = _leader_validator(net, [4096])
    else:
        validator = _leader_validator(net, [65536], cert_info_der(client.signer.identity.cert_der).serial_hex)
    chain = BatchOrderer()
    leader = BroadcastHandler(validator, chain, NoForward(), OrdererMetrics("t"),
                              recent=RecentTxIndex(Stored(raw), lambda: 1))
    (ticket,) = leader.submit_local_many([raw])
    out = ticket.wait(1)
    assert out is not None
    assert out.accepted and out.block_number == 1, (
        f"{tx_id} is in block 1, yet the leader answered the resubmission {out} (a refusal: "
        "nothing ordered)")
    assert chain.calls == []  # not ordered again either
