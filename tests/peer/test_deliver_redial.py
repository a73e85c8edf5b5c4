"""The Deliver client dials at the message bound in force and dials again once a committed block
changes it: a peer dialled at the genesis config's bound (a new peer) could not receive a block
made after a config update raised ``max_message_bytes`` -- every orderer's stream failed
RESOURCE_EXHAUSTED on it, for good."""

from __future__ import annotations

import grpc
from rxchain.v1 import block_pb2

from node.config import Endpoint
from node.peer.deliver_client import Backoff, DeliverClient
from tests.harness.ports import free_ports
from tests.peer.test_deliver_broadcast import FakeOrderer, serve, wait_for

SMALL = 256 << 10  # the bound a channel starts with
LARGE = 2 << 20  # the bound once block 1 (standing for a config block raising it) is committed


def _blocks() -> list[block_pb2.Block]:
    """Block 1 small, blocks 2 and 3 over SMALL (the committer here only counts them)."""
    out = []
    for number, size in ((1, 100), (2, 600_000), (3, 600_000)):
        block = block_pb2.Block()
        block.header.number = number
        block.data.envelopes.append(b"x" * size)
        out.append(block)
    return out


class _Peer:
    """A ledger height, a commit that raises the bound at block 1, and channels dialled at it."""

    def __init__(self, raise_at: int) -> None:
        self.committed: list[int] = []
        self.bound = SMALL
        self.dialled: list[int] = []
        self._raise_at = raise_at

    def height(self) -> int:
        return len(self.committed) + 1

    def commit(self, block: block_pb2.Block) -> None:
        self.committed.append(block.header.number)
        if block.header.number == self._raise_at:
            self.bound = LARGE

    def channel(self, target: str) -> grpc.Channel:
        self.dialled.append(self.bound)
        return grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", self.bound)])


def _run(peer: _Peer, servers: list[grpc.Server], orderers: int = 1) -> tuple[list[FakeOrderer], list[tuple[str, str]]]:
    fakes = [FakeOrderer(_blocks(), hold_s=2) for _ in range(orderers)]
    ports = free_ports(orderers)
    for fake, port in zip(fakes, ports, strict=True):
        servers.append(serve(fake, port))
    errors: list[tuple[str, str]] = []
    client = DeliverClient([Endpoint(f"o{i}", "ins01", "127.0.0.1", p) for i, p in enumerate(ports)],
                           peer.channel, peer.height, peer.commit, Backoff(0.01, 0.05),
                           on_error=lambda o, r: errors.append((o, r)), stall_s=0,
                           message_bound=lambda: peer.bound)
    client.start()
    try:
        wait_for(lambda: len(peer.committed) == 3 or len(errors) >= 3, 10)
    finally:
        client.stop()
    return fakes, errors


def test_a_raised_bound_is_dialled_again_from_the_same_orderer(servers) -> None:
    peer = _Peer(raise_at=1)
    fakes, errors = _run(peer, servers)
    assert peer.committed == [1, 2, 3]
    assert errors == []  # no failover: the stream was dialled again, not given up
    assert fakes[0].starts == [1, 2]  # resumed at the ledger height, nothing applied twice
    assert peer.dialled == [SMALL, LARGE]


def test_a_block_over_the_bound_in_force_is_still_a_failover(servers) -> None:
    """Without a change of the bound, a block over it is the serving orderer's failure, as
    before: no endless re-dialling of the same orderer."""
    peer = _Peer(raise_at=0)
    _fakes, errors = _run(peer, servers, orderers=2)
    assert peer.committed == [1]
    assert errors[:3] == [("o0", "SERVICE_UNAVAILABLE"), ("o1", "SERVICE_UNAVAILABLE"),
                          ("o0", "SERVICE_UNAVAILABLE")]
    assert set(peer.dialled) == {SMALL}


class _Lowering(_Peer):
    """Dialled at LARGE; block 1 (standing for a config block) lowers the bound to SMALL."""

    def __init__(self) -> None:
        super().__init__(raise_at=0)
        self.bound = LARGE

    def commit(self, block: block_pb2.Block) -> None:
        super().commit(block)
        if block.header.number == 1:
            self.bound = SMALL


def test_a_lowered_bound_is_not_dialled_again(servers) -> None:
    """Dialled again at a lowered bound, a stream was stranded for good on a larger block cut
    before the lowering applied (every orderer RESOURCE_EXHAUSTED; found by the review): the
    stream keeps the larger bound (blocks cut behind a config block are within both configs'
    limits, tests/orderer/test_clockwatch.py)."""
    peer = _Lowering()
    _fakes, errors = _run(peer, servers, orderers=2)
    assert peer.committed == [1, 2, 3], (peer.committed, errors[:4], peer.dialled[:4])
    assert errors == [] and peer.dialled == [LARGE]
