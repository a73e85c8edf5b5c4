"""An orderer's Cluster streams (Step, Forward, ForwardBatch) checked at accept as the stream
caps' sweeper checks the open ones, a replaced stream ended with its reason, a Step reader's
failure logged, the refused sender's backoff, and the gRPC pool's threads ended by a stop
(node.stream_caps, node.orderer.transport, node.orderer.server), over mutual TLS as
orderer.ins01 serves them.

Old code: after the sweeper refused ins02's Step stream EXPIRED_CERT, its next one was admitted
and held its slot until the next sweep (its sender redialling every 0.1 s, back in each time);
an orderer's replaced stream was cancelled (its caller saw CANCELLED, not why); an error of a
Step stream's reader raised after its handler returned was never logged; and every stopped
orderer left its idle gRPC workers behind."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2

from node.clock import wall_ms
from node.crypto.tls import server_credentials
from node.identity.caller import CallerCheck
from node.orderer.forward import ForwardBatchService
from node.orderer.metrics import OrdererMetrics
from node.orderer.raft_codec import encode_message
from node.orderer.transport import ClusterService, Membership, cluster_recheck
from node.raft.types import Message, MessageType
from node.stream_caps import STREAM_REPLACED, ClusterCaps, StreamCaps
from tests.orderer.cluster import wait_until
from tests.orderer.inproc import NullSink, genesis_parts
from tests.orderer.test_peer_releases import _node_files, _peer_network
from tests.orderer.test_stream_reserve import _Step

WAIT_S = 10.0
YEARS_200_MS = 200 * 365 * 86_400_000


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _peer_network(tmp_path_factory.mktemp("cluster-accept") / "net")


class _Served:
    """orderer.ins01's Cluster service under ``caps``, watched by a sweeper that never sweeps on
    its own (a minute), judging certificates by ``now`` (the node's clock)."""

    def __init__(self, net: Any, tmp_path: Path, caps: ClusterCaps, sink: Any = None) -> None:
        _, self.blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
        members = [(o.raft_id, o.cert_der, f"{o.host}:{o.port}") for o in tracker.current.config.orderers]
        membership = Membership(members)
        self.now = [wall_ms()]
        self.sweeper = StreamCaps(total=1, per_caller=1, recheck=lambda _ident: None, sweep_s=60)
        caps.watch_with(self.sweeper, cluster_recheck(membership, CallerCheck(tracker.msp, lambda: self.now[0]).check))
        metrics = OrdererMetrics("t")
        cluster = ClusterService(1, membership, sink or NullSink(), None, metrics,  # type: ignore[arg-type]
                                 streams=caps)
        answers = SimpleNamespace(answer_bytes=lambda: 1 << 20)  # (an idle stream orders nothing)
        forward = ForwardBatchService(membership, answers, metrics, streams=caps)  # type: ignore[arg-type]
        self.server = grpc.server(ThreadPoolExecutor(8))
        self.server.add_generic_rpc_handlers([cluster.handler(), forward.handler()])
        port = self.server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "orderer.ins01")))
        self.server.start()
        self.target = f"127.0.0.1:{port}"

    def close(self) -> None:
        self.server.stop(0)
        self.sweeper.close()
        self.blocks.close()


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event} " in str(r.msg)]


@pytest.mark.parametrize("method", ["Step", "ForwardBatch"])
def test_a_replaced_cluster_stream_ends_with_its_reason(
    net: Any, tmp_path: Path, method: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """ins02 reconnects past its cap of one stream of the method: its old stream ends ABORTED
    STREAM_REPLACED (its handler woken, as a refused one: the sweeper's fallback cancels
    nothing), the new one runs. Before, the old one was cancelled: its caller saw CANCELLED."""
    caplog.set_level(logging.WARNING, logger="node.stream_caps")
    caps = ClusterCaps(total=4, per_orderer=1)
    served = _Served(net, tmp_path, caps)
    streams: list[_Step] = []
    try:
        old = _Step(served.target, _node_files(net, "orderer.ins02"), method)
        streams.append(old)
        assert wait_until(lambda: caps.held(2) == 1, WAIT_S)
        new = _Step(served.target, _node_files(net, "orderer.ins02"), method)
        streams.append(new)
        assert old.ended(WAIT_S) == f"ABORTED {STREAM_REPLACED}"
        assert old.future.details().startswith(f"{STREAM_REPLACED}: ")
        assert new.ended() == "" and caps.held(2) == 1
        assert not _events(caplog, "stream_refused_cancelled")
        assert not _events(caplog, "stream_caller_refused")  # not a refusal of its caller
    finally:
        for s in streams:
            s.close()
        served.close()


class _FailingSink(NullSink):
    """Steps a message only once let, then fails (a bug)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.let = threading.Event()

    def step(self, m: Message) -> None:
        self.entered.set()
        self.let.wait(WAIT_S)
        raise RuntimeError("stepping broke")


def test_a_step_readers_failure_after_its_handler_returned_is_logged(
    net: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """ins02's message is being stepped when the sweeper refuses it (its certificate expired):
    the handler ends the call PERMISSION_DENIED and returns; then stepping fails. The reader
    logs raft_step_reader_failed. Before, the error went into a list nobody read again."""
    caplog.set_level(logging.ERROR, logger="node.orderer.transport")
    sink = _FailingSink()
    caps = ClusterCaps(total=4, per_orderer=2)
    served = _Served(net, tmp_path, caps, sink)
    step = _Step(served.target, _node_files(net, "orderer.ins02"))
    try:
        msg = Message(MessageType.HEARTBEAT, to=1, frm=2, term=1)
        step.requests.put(services_pb2.ConsensusRequest(from_id=2, payload=encode_message(msg)))
        assert sink.entered.wait(WAIT_S)
        served.now[0] += YEARS_200_MS
        served.sweeper.sweep()
        assert step.ended(WAIT_S) == "PERMISSION_DENIED EXPIRED_CERT"  # the handler returned
        sink.let.set()
        assert wait_until(lambda: _events(caplog, "raft_step_reader_failed"), WAIT_S)
        line = _events(caplog, "raft_step_reader_failed")[0]
        assert "from=2 " in line and "stepping broke" in line
    finally:
        sink.let.set()
        step.close()
        served.close()
