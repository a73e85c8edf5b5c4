"""A Broadcast stream (one envelope per message) reads ahead of its answers within
BroadcastOptions.max_stream_bytes of envelope bytes, as BroadcastBatch does. Old code: within
max_in_flight_per_stream envelopes alone (8192), whatever they weigh -- a client (any
consortium certificate) that sends valid envelopes of 1 MiB and never reads its answers made
the orderer hold 8 GiB per stream. The legacy Cluster.Forward and OrdererCluster.ForwardBatch
streams read ahead within the forwarded streams' byte bound the same way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from node.crypto.signing import Verifier
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.orderer.broadcast import BroadcastHandler, BroadcastOptions, EnvelopeValidator
from node.orderer.metrics import OrdererMetrics
from node.orderer.streams import ordered_answers
from tests.orderer.cluster import Client, make_network
from tests.orderer.fakes import NoForward, OrdersAtOnce

ENVELOPE = 64 * 1024
BOUND = 1 << 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_network(tmp_path_factory.mktemp("readahead") / "net")




class _Sent:
    """A client's request stream: ``count`` requests, counting those the server has read."""

    def __init__(self, requests: list[bytes]) -> None:
        self._requests = requests
        self.read = 0
        self.lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        for r in self._requests:
            with self.lock:
                self.read += 1
            yield r

    def settled(self, wait_s: float = 0.5) -> int:
        """How many were read, once the reader stopped reading (bounded wait)."""
        last = -1
        end = time.monotonic() + 10
        while time.monotonic() < end:
            time.sleep(wait_s)
            with self.lock:
                if self.read == last:
                    return last
                last = self.read
        return last


def test_a_broadcast_stream_reads_ahead_within_its_byte_bound(net: Any) -> None:
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    validator = EnvelopeValidator(lambda: msp, consortium.consortium_id, 2 * ENVELOPE, lambda: int(time.time() * 1000))
    handler = BroadcastHandler(validator, OrdersAtOnce(), NoForward(), OrdererMetrics("t"),
                               BroadcastOptions(max_stream_bytes=BOUND))
    client = Client(net)
    sent = _Sent([client.envelope(ENVELOPE)[1] for _ in range(64)])  # 4 MiB of valid envelopes
    answers = handler.stream(sent)
    try:
        first = next(answers)  # the client reads one answer, then no more
        assert first.accepted, first
        read = sent.settled()
        # about BOUND of envelope bytes read ahead (plus the answered one and one in hand);
        # old code: all 64, each held with its envelope until its answer is taken
        assert read <= BOUND // ENVELOPE + 3, read
        assert sum(1 for a in answers if a.accepted) == 63  # reading on, every one is answered
        assert sent.read == 64
    finally:
        answers.close()  # type: ignore[attr-defined]  # a generator


def test_ordered_answers_weigh_what_they_read_ahead() -> None:
    sent = _Sent([b"x" * 1000 for _ in range(100)])
    out = ordered_answers(sent, lambda r: r, len, weigh=len, max_bytes=10_000)
    try:
        assert next(out) == 1000
        assert sent.settled(0.2) <= 10 + 3  # old code (no weighing): 100
        assert list(out) == [1000] * 99
    finally:
        out.close()  # type: ignore[attr-defined]  # a generator
