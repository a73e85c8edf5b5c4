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

import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from rxchain.v1 import config_pb2, services_pb2

from node.clock import wall_ms
from node.crypto.signing import Verifier
from node.crypto.tls import server_credentials
from node.crypto.x509 import cert_info_der
from node.errors import RxError, abort_with
from node.identity.caller import CallerCheck
from node.identity.msp import MSP
from node.orderer.forward import ForwardBatchService
from node.orderer.metrics import OrdererMetrics
from node.orderer.raft_codec import encode_message
from node.orderer.transport import ClusterService, Membership, PeerSender, cluster_recheck
from node.protocol import protocol_version
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

    def __init__(self, net: Any, tmp_path: Path, caps: ClusterCaps, sink: Any = None,
                 config: config_pb2.ConsortiumConfig | None = None) -> None:
        """``config``: the config in force (its MSP and protocol version; none: the genesis one
        at protocol version 2, where an orderer's certificate is judged on every stream)."""
        _, self.blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
        consortium = config if config is not None else _at_version(tracker.current.config, 2)
        members = [(o.raft_id, o.cert_der, f"{o.host}:{o.port}") for o in consortium.orderers]
        membership = Membership(members)
        self.now = [wall_ms()]
        self.sweeper = StreamCaps(total=1, per_caller=1, recheck=lambda _ident: None, sweep_s=60)
        msp = MSP(consortium, Verifier())
        check = CallerCheck(lambda: msp, lambda: self.now[0]).check
        caps.watch_with(self.sweeper, cluster_recheck(membership, check, lambda: protocol_version(consortium)))
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
        self._net = net
        self.streams: list[_Step] = []  # the ones :meth:`open` opened

    def open(self, name: str = "orderer.ins02", method: str = "Step") -> _Step:
        """An idle stream of ``method`` from orderer ``name``, closed by :meth:`close`."""
        stream = _Step(self.target, _node_files(self._net, name), method)
        self.streams.append(stream)
        return stream

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self.server.stop(0)
        self.sweeper.close()
        self.blocks.close()


def _at_version(config: config_pb2.ConsortiumConfig, version: int) -> config_pb2.ConsortiumConfig:
    """A copy of ``config`` putting protocol ``version`` in force."""
    copy = config_pb2.ConsortiumConfig()
    copy.CopyFrom(config)
    copy.protocol_version = version
    return copy


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event} " in str(r.msg)]


@pytest.mark.parametrize("method", ["Step", "Forward", "ForwardBatch"])
def test_a_new_cluster_stream_of_an_orderer_the_sweeper_refuses_is_refused_at_once(
    net: Any, tmp_path: Path, method: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """ins02 holds a stream; the node's clock passes its certificate's expiry (no sweep yet).
    Its next stream of that method is refused PERMISSION_DENIED EXPIRED_CERT at accept, as the
    sweeper refuses the open one, takes no slot and replaces nothing (its open one runs until
    the sweep). Before, it was admitted and held its slot (replacing the open one) until the
    next sweep."""
    caplog.set_level(logging.WARNING, logger="node.stream_caps")
    caps = ClusterCaps(total=4, per_orderer=2)
    with contextlib.closing(_Served(net, tmp_path, caps)) as served:
        old = served.open(method=method)
        assert wait_until(lambda: caps.held(2) == 1, WAIT_S)
        served.now[0] += YEARS_200_MS
        new = served.open(method=method)
        assert new.ended(WAIT_S) == "PERMISSION_DENIED EXPIRED_CERT"
        assert new.future.details().startswith("EXPIRED_CERT: ")
        assert caps.held(2) == 1 and old.ended() == ""
        lines = _events(caplog, "cluster_stream_refused")
        assert len(lines) == 1 and f"method={method} " in lines[0] and "reason=EXPIRED_CERT " in lines[0], lines
        served.sweeper.sweep()  # the sweeper's verdict on the open one is the same
        assert old.ended(WAIT_S) == "PERMISSION_DENIED EXPIRED_CERT"
        assert wait_until(lambda: caps.held() == 0, WAIT_S)


def test_an_admitted_orderers_new_stream_is_admitted(net: Any, tmp_path: Path) -> None:
    """The check at accept refuses no more than the sweeper: within its certificates' validity
    ins02 and ins03 get their streams (ins02's third replacing its oldest)."""
    caps = ClusterCaps(total=6, per_orderer=2)
    with contextlib.closing(_Served(net, tmp_path, caps)) as served:
        for name, held in (("orderer.ins02", (1, 0)), ("orderer.ins03", (1, 1)), ("orderer.ins02", (2, 1))):
            served.open(name)
            assert wait_until(lambda held=held: (caps.held(2), caps.held(3)) == held, WAIT_S)
        served.open("orderer.ins02")
        streams = served.streams
        assert streams[0].ended(WAIT_S) == f"ABORTED {STREAM_REPLACED}"  # replaced, not refused
        assert [s.ended() for s in streams[1:]] == ["", "", ""]
        assert (caps.held(2), caps.held(3)) == (2, 1)


@pytest.mark.parametrize("method", ["Step", "ForwardBatch"])
def test_a_replaced_cluster_stream_ends_with_its_reason(
    net: Any, tmp_path: Path, method: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """ins02 reconnects past its cap of one stream of the method: its old stream ends ABORTED
    STREAM_REPLACED (its handler woken, as a refused one: the sweeper's fallback cancels
    nothing), the new one runs. Before, the old one was cancelled: its caller saw CANCELLED."""
    caplog.set_level(logging.WARNING, logger="node.stream_caps")
    caps = ClusterCaps(total=4, per_orderer=1)
    with contextlib.closing(_Served(net, tmp_path, caps)) as served:
        old = served.open(method=method)
        assert wait_until(lambda: caps.held(2) == 1, WAIT_S)
        new = served.open(method=method)
        assert old.ended(WAIT_S) == f"ABORTED {STREAM_REPLACED}"
        assert old.future.details().startswith(f"{STREAM_REPLACED}: ")
        assert new.ended() == "" and caps.held(2) == 1
        assert not _events(caplog, "stream_refused_cancelled")
        assert not _events(caplog, "stream_caller_refused")  # not a refusal of its caller


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


def test_a_sender_refused_for_its_certificate_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    """A peer refusing this orderer's Step stream PERMISSION_DENIED EXPIRED_CERT (not
    NOT_AN_ORDERER): the sender's wait before dialling again grows to its bound, and it says why
    (refused_by_peer). Before, only NOT_AN_ORDERER backed it off: it redialled every 0.1 s."""
    dials: list[int] = []

    def step(requests: Any, context: grpc.ServicerContext) -> bytes:
        dials.append(1)
        abort_with(context, RxError("EXPIRED_CERT", "certificate 'orderer.ins03' is not valid at 1",
                                    grpc.StatusCode.PERMISSION_DENIED))

    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.Cluster", {
        "Step": grpc.stream_unary_rpc_method_handler(step, request_deserializer=None, response_serializer=None)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    caplog.set_level(logging.INFO, logger="node.orderer")
    sender = PeerSender(3, 1, f"127.0.0.1:{port}", grpc.insecure_channel, NullSink(), refused_redial_max_s=0.8)
    try:
        sender.send(Message(MessageType.HEARTBEAT, to=1, frm=3, term=2))
        assert wait_until(lambda: sender.redial_wait_s == 0.8, WAIT_S), sender.redial_wait_s
        assert len(dials) <= 6  # 0.1 s apart, it would keep going; backed off: 0.2, 0.4, 0.8 ...
        lines = _events(caplog, "refused_by_peer")
        assert lines and "reason=EXPIRED_CERT " in lines[0] and "peer=1 " in lines[0], lines
        assert not _events(caplog, "refused_as_non_member")
    finally:
        sender.close()
        server.stop(0)


def _revoking(net: Any, tmp_path: Path, name: str, version: int) -> config_pb2.ConsortiumConfig:
    """The genesis config at protocol ``version``, orderer ``name`` kept in the set with its
    certificate revoked (what version 1 lets a config update do; version 2 refuses it)."""
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "genesis")
    try:
        config = _at_version(tracker.current.config, version)
    finally:
        blocks.close()
    node = next(o for o in config.orderers if o.name == name)
    org = next(o for o in config.organizations if o.id == node.org)
    org.revoked_serials.append(cert_info_der(node.cert_der).serial_hex)
    return config


@pytest.mark.parametrize("version", [1, 2])
def test_an_orderer_version_1_keeps_with_its_certificate_revoked_keeps_its_raft_streams(
    net: Any, tmp_path: Path, version: int,
) -> None:
    """Under protocol version 1 an orderer a config keeps with its certificate revoked is still a
    voter (its block signatures count): its Step stream is admitted and the sweeper leaves it
    open -- refused at accept, it could never send its votes and acknowledgements again, and
    with enough of the orderers so, Raft had no quorum. Its Forward stream is refused
    REVOKED_CERT (no vote rides on it), as every stream of it under version 2, where no config
    keeps an orderer it revokes. Before, its Step stream was refused REVOKED_CERT at either
    version."""
    caps = ClusterCaps(total=6, per_orderer=2)
    config = _revoking(net, tmp_path, "orderer.ins02", version)
    with contextlib.closing(_Served(net, tmp_path, caps, config=config)) as served:
        step = served.open()
        forward = served.open(method="ForwardBatch")
        assert forward.ended(WAIT_S) == "PERMISSION_DENIED REVOKED_CERT"
        if version == 1:
            assert wait_until(lambda: caps.held(2) == 1, WAIT_S)
            assert served.sweeper.sweep() == 0
            assert step.ended() == "" and caps.held(2) == 1
        else:
            assert step.ended(WAIT_S) == "PERMISSION_DENIED REVOKED_CERT"
            assert caps.held(2) == 0

