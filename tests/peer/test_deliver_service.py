"""PeerDeliver: committed blocks with this peer's validation codes, ranges and follow."""

from __future__ import annotations

import threading

import pytest
from rxchain.v1 import services_pb2, transaction_pb2

from node.errors import RxError
from node.peer.deliver_service import committed_blocks
from node.peer.notifier import CommitNotifier
from tests.peer.conftest import Cluster
from tests.peer.kit import envelope


def test_range_follow_and_bad_ranges(deployed: Cluster) -> None:
    peer = deployed.peers[0]
    notifier = CommitNotifier(peer.ledger.height())
    peer.committer.add_listener(notifier.on_commit)
    height = peer.ledger.height()
    got = list(committed_blocks(peer.ledger, notifier,
                                services_pb2.DeliverRequest(start_block=1, stop_block=2), lambda: True))
    assert [r.block.header.number for r in got[:-1]] == [1, 2]
    assert got[-1].status.reason == "OK"
    assert all(r.block.metadata.validation_codes == [transaction_pb2.VALID] for r in got[:-1])
    assert all(len(r.block.metadata.state_hash) == 32 for r in got[:-1])
    every = list(committed_blocks(peer.ledger, notifier, services_pb2.DeliverRequest(), lambda: True))
    assert len(every) == height + 1
    with pytest.raises(RxError) as err:
        list(committed_blocks(peer.ledger, notifier,
                              services_pb2.DeliverRequest(start_block=height + 5), lambda: True))
    assert err.value.reason == "NOT_FOUND"
    # follow: the next block arrives on the open stream.
    stream = committed_blocks(peer.ledger, notifier,
                              services_pb2.DeliverRequest(start_block=height, follow=True), lambda: True)
    box = []
    reader = threading.Thread(target=lambda: box.append(next(stream)))
    reader.start()
    signed = deployed.kit.proposal(deployed.net.doctor, "counter", "put", {"key": "f", "value": 1},
                                   timestamp_ms=deployed.now())
    deployed.commit([envelope(deployed.net.doctor, signed, deployed.endorse_all(signed, deployed.peers[:2]))])
    reader.join(10)
    assert box and box[0].block.header.number == height
    notifier.close()
    # A closed notifier ends follow streams.
    assert list(committed_blocks(peer.ledger, notifier,
                                 services_pb2.DeliverRequest(start_block=height + 1, follow=True),
                                 lambda: True)) == []
