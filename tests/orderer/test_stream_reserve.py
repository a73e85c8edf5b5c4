"""The ordering service's stream caps keep room for the consortium's own nodes and bound the
other orderers' Cluster streams (node.stream_caps), over mutual TLS as orderer.ins01 serves them.

Old code: Deliver, Broadcast (and a peer's PeerDeliver, Events, endorsement) streams shared one
``max_streams`` whoever held them, so client certificates filling it left no Deliver for any
peer (no block reached it); and Cluster streams were uncapped, so one member orderer opening
streams without end took every gRPC worker of the others."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from rxchain.v1 import services_pb2, services_pb2_grpc

from node.clock import wall_ms
from node.crypto.tls import secure_channel, server_credentials
from node.crypto.x509 import pem_to_der
from node.errors import RxError, reason_from_rpc_error
from node.identity.caller import NO_BLOCK_ROLES, CallerCheck, node_certificates
from node.orderer.deliver import DeliverService
from node.orderer.forward import ForwardBatchService
from node.orderer.metrics import OrdererMetrics
from node.orderer.transport import ClusterService, Membership, cluster_recheck
from node.peer.deliver_service import PeerDeliverService
from node.stream_caps import GRACE_S, TOO_MANY_STREAMS, ClusterCaps, StreamCaps
from tests.harness.certs import issue_from_org_ca, write_cert_files
from tests.orderer.cluster import Client, wait_until
from tests.orderer.inproc import NullSink, genesis_parts
from tests.orderer.test_peer_releases import _node_files, _peer_network

WAIT_S = 10.0
Files = tuple[Path, Path, Path]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _peer_network(tmp_path_factory.mktemp("stream-reserve") / "net")


def _client_files(net: Any, org: str, user: str) -> Files:
    c = Client(net, org, user)
    return c.cert, c.key, c.ca


def _forged_peer(net: Any, tmp_path: Path) -> Files:
    """A certificate h01's CA issued in peer.h01's name, of role peer, that the config does not
    register (any organisation may issue as many)."""
    cert, key = issue_from_org_ca(net.home, "h01", "peer.h01", "peer", ("127.0.0.1", "localhost"))
    return (*write_cert_files(cert, key, tmp_path / "forged"), net.ca_bundle_path)


# ------------------------------------------------------------------ who is a node


def test_node_certificates_are_the_configs_peers_and_orderers(net: Any, tmp_path: Path) -> None:
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    try:
        is_node = node_certificates(tracker.msp, wall_ms)
        for name in ("peer.h01", "peer.h02", "orderer.ins01", "orderer.ins03"):
            assert is_node(_der(_node_files(net, name)[0])), name
        assert not is_node(_der(_client_files(net, "h01", "dr")[0]))  # a doctor
        assert not is_node(_der(_client_files(net, "ins01", "clerk")[0]))  # an orderer's organisation's clerk
        assert not is_node(_der(_forged_peer(net, tmp_path)[0]))  # role peer, not the config's
        assert not is_node(b"") and not is_node(b"not a certificate")
    finally:
        blocks.close()


def _der(pem_path: Path) -> bytes:
    return pem_to_der(pem_path.read_bytes())


# ------------------------------------------------------------------ the nodes' reserve


def test_reserve_caps_unit() -> None:
    """Clients hold at most max_streams whatever the nodes hold; nodes get their reserve
    whatever the clients hold, and a free client slot besides; max_streams_per_node bounds one node."""
    nodes = {b"peer-a", b"peer-b"}
    caps = StreamCaps(total=2, per_caller=1, nodes=2, per_node=2, is_node=nodes.__contains__)
    key = caps.key_of
    held = [caps.acquire(key(b"c1"), "x"), caps.acquire(key(b"c2"), "x")]
    with pytest.raises(RxError) as info:
        caps.acquire(key(b"c3"), "x")
    assert info.value.reason == TOO_MANY_STREAMS and "limit 2" in info.value.message
    held += [caps.acquire(key(b"peer-a"), "x", node=True), caps.acquire(key(b"peer-b"), "x", node=True)]
    with pytest.raises(RxError) as info:  # total and reserve full
        caps.acquire(key(b"peer-b"), "x", node=True)
    assert "limit 4" in info.value.message
    for slot in held[:2]:
        slot.release()
    held[2:] += [caps.acquire(key(b"peer-a"), "x", node=True)]  # a node takes a free client slot too
    with pytest.raises(RxError) as info:
        caps.acquire(key(b"peer-a"), "x", node=True)
    assert "limit 2 per node" in info.value.message
    caps.acquire(key(b"c1"), "x")  # the last slot: a client's
    with pytest.raises(RxError):
        caps.acquire(key(b"c2"), "x")  # nodes hold 3 of 4: one client slot was theirs
    assert caps.held() == 4


def test_one_node_takes_at_most_its_share_of_the_reserve() -> None:
    """With the clients' slots full, one node (a peer following, endorsing, broadcasting) took
    the whole reserve -- max_streams_per_node (by default max_streams_per_caller, half of
    max_streams) is as large as the reserve (half of max_streams) -- and every other node's
    Deliver was refused TOO_MANY_STREAMS. A node now holds at most half the reserve (its share)
    beyond what it takes of the clients' slots, and those count against max_streams."""
    nodes = {b"peer-a", b"peer-b", b"peer-c"}
    caps = StreamCaps(total=4, per_caller=4, nodes=4, per_node=8, is_node=nodes.__contains__)
    key = caps.key_of
    clients = [caps.acquire(key(b"c1"), "x") for _ in range(4)]
    a = [caps.acquire(key(b"peer-a"), "x", node=True) for _ in range(2)]
    with pytest.raises(RxError) as info:  # it held all four before
        caps.acquire(key(b"peer-a"), "x", node=True)
    assert info.value.reason == TOO_MANY_STREAMS and "its share" in info.value.message
    b = [caps.acquire(key(b"peer-b"), "x", node=True) for _ in range(2)]  # refused before
    with pytest.raises(RxError):
        caps.acquire(key(b"peer-c"), "x", node=True)  # the reserve is full: a fair share each
    assert caps.held() == 8 and len(b) == 2
    for slot in clients[:2]:
        slot.release()
    # a client slot free: a node takes it beyond its share, and it counts against the clients'
    a.append(caps.acquire(key(b"peer-a"), "x", node=True))
    clients[:2] = [caps.acquire(key(b"c1"), "x")]
    with pytest.raises(RxError) as info:
        caps.acquire(key(b"c2"), "x")
    assert "beyond their reserve" in info.value.message
    a.pop().release()  # its slot beyond its share back: a client takes it
    clients.append(caps.acquire(key(b"c2"), "x"))
    assert caps.held() == 8 and caps.held(key(b"peer-a")) == 2 and caps.node_share == 2


@pytest.mark.parametrize(("extra", "workers", "expected"), [
    ({}, 64, (32, 16, 16, 16)),  # a peer's defaults
    ({}, 128, (64, 32, 32, 32)),  # an orderer's
    ({"max_streams": 63}, 64, (63, 31, 0, 31)),  # no worker left: no reserve (was valid, stays)
    ({"max_streams": 10, "max_node_streams": 20, "max_streams_per_node": 3}, 64, (10, 5, 20, 3)),
    ({}, 2, (1, 1, 0, 1)),
])
def test_node_stream_caps_from_extra(extra: dict[str, int], workers: int,
                                     expected: tuple[int, int, int, int]) -> None:
    caps = StreamCaps.from_extra(extra, workers)
    assert (caps.total, caps.per_caller, caps.nodes, caps.per_node) == expected


@pytest.mark.parametrize(("extra", "workers", "fragment"), [
    ({"max_streams": 32, "max_node_streams": 32}, 64, "extra.max_node_streams"),
    ({"max_node_streams": -1}, 64, "extra.max_node_streams"),
    ({"max_streams": 8, "max_node_streams": 4, "max_streams_per_node": 13}, 64, "extra.max_streams_per_node"),
    ({"max_streams_per_node": 0}, 64, "extra.max_streams_per_node"),
])
def test_node_stream_caps_bad_extra(extra: dict[str, int], workers: int, fragment: str) -> None:
    with pytest.raises(RxError) as info:
        StreamCaps.from_extra(extra, workers)
    assert info.value.reason == "BAD_CONFIG" and fragment in info.value.message


def _deliver_server(net: Any, tmp_path: Path, caps: Callable[[Any], StreamCaps]) -> tuple[grpc.Server, str, Any]:
    """orderer.ins01's Deliver over mutual TLS, under ``caps(tracker)``."""
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    deliver = DeliverService(blocks, tracker.msp, wall_ms, poll_s=0.05, streams=caps(tracker))
    server = grpc.server(ThreadPoolExecutor(16))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.AtomicBroadcast", {
        "Deliver": grpc.unary_stream_rpc_method_handler(
            deliver.deliver_bytes, request_deserializer=services_pb2.DeliverRequest.FromString,
            response_serializer=None)})])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "orderer.ins01")))
    server.start()
    return server, f"127.0.0.1:{port}", (deliver, blocks)


class _Follow:
    """A Deliver stream following the chain from block 0, from the caller presenting ``files``."""

    def __init__(self, target: str, files: Files) -> None:
        self.channel = secure_channel(target, *files)
        call = self.channel.unary_stream("/rxchain.v1.AtomicBroadcast/Deliver",
                                         request_serializer=services_pb2.DeliverRequest.SerializeToString,
                                         response_deserializer=services_pb2.DeliverResponse.FromString)
        self.call: Any = call(services_pb2.DeliverRequest(start_block=0, follow=True), timeout=30)

    def first(self) -> str:
        """"" once it serves block 0, else the reason it was refused with."""
        try:
            answer = next(self.call)
        except grpc.RpcError as exc:
            return reason_from_rpc_error(exc)
        assert answer.block.header.number == 0
        return ""

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def test_clients_filling_the_caps_leave_deliver_to_the_peers(net: Any, tmp_path: Path) -> None:
    """Two client certificates hold every client slot: a third client and a certificate of role
    peer the config does not name are refused TOO_MANY_STREAMS, the config's peers and an
    orderer still follow the chain. Old code: every one refused (one shared total)."""
    server, target, (deliver, blocks) = _deliver_server(net, tmp_path, lambda tracker: StreamCaps.from_extra(
        {"max_streams": 2, "max_streams_per_caller": 1, "max_node_streams": 3, "max_streams_per_node": 1},
        8, node_certificates(tracker.msp, wall_ms)))
    streams: list[_Follow] = []

    def follow(files: Files) -> str:
        streams.append(_Follow(target, files))
        return streams[-1].first()

    try:
        assert follow(_client_files(net, "h01", "dr")) == ""
        assert follow(_client_files(net, "ins01", "clerk")) == ""
        assert follow(_client_files(net, "ins02", "clerk")) == TOO_MANY_STREAMS
        assert follow(_forged_peer(net, tmp_path)) == TOO_MANY_STREAMS
        assert follow(_node_files(net, "peer.h01")) == ""
        assert follow(_node_files(net, "peer.h01")) == TOO_MANY_STREAMS  # max_streams_per_node
        assert follow(_node_files(net, "peer.h02")) == ""
        assert follow(_node_files(net, "orderer.ins02")) == ""
        assert follow(_node_files(net, "orderer.ins03")) == TOO_MANY_STREAMS  # 5 held: the reserve is full too
    finally:
        for s in streams:
            s.close()
        server.stop(0)
        deliver.close()
        blocks.close()


class _NoBlocksYet:
    """A peer ledger at height 0 and its commit notifier: a follow stream waits (open)."""

    closed = False

    def height(self) -> int:
        return 0

    def wait_height(self, height: int, timeout_s: float) -> None:
        time.sleep(min(timeout_s, 0.05))


def test_clients_filling_a_peers_caps_leave_peerdeliver_to_another_orgs_peer(net: Any, tmp_path: Path) -> None:
    """A peer's PeerDeliver under the caps node.peer.server gives it: clients holding every
    client slot leave another organisation's peer following. Old code: refused."""
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    caps = StreamCaps.from_extra({"max_streams": 2, "max_streams_per_caller": 1}, 8,
                                 node_certificates(tracker.msp, wall_ms))
    fake: Any = _NoBlocksYet()
    service = PeerDeliverService(fake, fake, CallerCheck(tracker.msp, wall_ms, NO_BLOCK_ROLES), caps)
    server = grpc.server(ThreadPoolExecutor(16))
    services_pb2_grpc.add_PeerDeliverServicer_to_server(service, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "peer.h01")))
    server.start()
    calls: list[tuple[grpc.Channel, Any]] = []

    def follow(files: Files) -> str:
        ch = secure_channel(f"127.0.0.1:{port}", *files)
        call: Any = services_pb2_grpc.PeerDeliverStub(ch).Deliver(
            services_pb2.DeliverRequest(start_block=0, follow=True), timeout=30)
        calls.append((ch, call))
        end = time.monotonic() + 1.0
        while not call.done() and time.monotonic() < end:
            time.sleep(0.02)
        return reason_from_rpc_error(call) if call.done() else ""

    try:
        assert follow(_client_files(net, "h01", "dr")) == ""
        assert follow(_client_files(net, "ins01", "clerk")) == ""
        assert follow(_client_files(net, "ins02", "clerk")) == TOO_MANY_STREAMS
        assert follow(_forged_peer(net, tmp_path)) == TOO_MANY_STREAMS
        assert follow(_node_files(net, "peer.h02")) == ""
        assert caps.held() == 3
    finally:
        for ch, call in calls:
            call.cancel()
            ch.close()
        server.stop(0)
        blocks.close()


# ------------------------------------------------------------------ callers checked again


class _CallOf:
    """A servicer context of a caller presenting the TLS certificate ``pem`` (none: an insecure
    test server's): cancel ends the call, its callbacks run (as gRPC's do)."""

    def __init__(self, pem: bytes | None) -> None:
        self.pem = pem
        self.callbacks: list[Callable[[], None]] = []
        self.cancelled = 0

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]} if self.pem is not None else {}

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def cancel(self) -> None:
        self.cancelled += 1
        for callback in self.callbacks:
            callback()


def test_a_sweep_cancels_the_calls_of_callers_no_longer_admitted_once(net: Any) -> None:
    """The sweep asks once per certificate however many calls it holds, cancels (once) each
    call of a certificate refused PERMISSION_DENIED -- node certificates alike -- and their
    slots come back through the calls' end; a check failing otherwise (no config readable)
    cancels nothing, and a call without a certificate is never checked."""
    pems = {"dr": _client_files(net, "h01", "dr")[0].read_bytes(),
            "clerk": _client_files(net, "ins01", "clerk")[0].read_bytes(),
            "peer": _node_files(net, "peer.h01")[0].read_bytes()}
    ders = {who: pem_to_der(pem) for who, pem in pems.items()}
    refused: set[bytes] = set()
    failing = [False]
    asked: list[str] = []

    def recheck(ident: Any) -> None:
        asked.append(next(w for w, d in ders.items() if d == ident.cert_der))
        if failing[0]:
            raise RxError("SERVICE_UNAVAILABLE", "the peer has not committed the genesis block")
        if ident.cert_der in refused:
            raise RxError("REVOKED_CERT", "revoked", grpc.StatusCode.PERMISSION_DENIED)

    caps = StreamCaps(total=4, per_caller=4, nodes=2, per_node=2, is_node={ders["peer"]}.__contains__,
                      recheck=recheck, sweep_s=60)
    try:
        calls = [_CallOf(pems[w]) for w in ("dr", "dr", "clerk", "peer")]
        for call, who in zip(calls, ("dr", "dr", "clerk", "peer"), strict=True):
            caps.admit(cast(Any, call), ders[who], "x")
        anonymous = _CallOf(None)
        caps.admit(cast(Any, anonymous), b"", "x")
        assert caps.held() == 5
        assert caps.sweep() == 0 and sorted(asked) == ["clerk", "dr", "peer"]
        refused.update({ders["dr"], ders["peer"]})
        failing[0] = True
        assert caps.sweep() == 0 and [c.cancelled for c in calls] == [0, 0, 0, 0]
        failing[0] = False
        assert caps.sweep() == 3
        assert [c.cancelled for c in calls] == [1, 1, 0, 1] and anonymous.cancelled == 0
        assert caps.held() == 2 and caps.held(caps.key_of(ders["clerk"])) == 1
        asked.clear()
        assert caps.sweep() == 0 and asked == ["clerk"]  # the cancelled calls are gone
    finally:
        caps.close()


def test_a_refused_call_that_ends_itself_is_woken_and_cancelled_only_past_the_grace(
    net: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """A call whose handler ends it itself (``ends_itself``) is flagged and its handler woken,
    not cancelled: the handler ends it PERMISSION_DENIED with the reason (``check`` raises it,
    ``live`` too). Still open GRACE_S after (a handler stuck elsewhere), the sweep cancels it,
    once. Before, every refused call was cancelled at once (its client saw CANCELLED, no
    reason)."""
    pem = _client_files(net, "h01", "dr")[0].read_bytes()
    der = pem_to_der(pem)

    def recheck(ident: Any) -> None:
        raise RxError("REVOKED_CERT", "revoked", grpc.StatusCode.PERMISSION_DENIED)

    caps = StreamCaps(total=4, per_caller=4, recheck=recheck, sweep_s=60)
    try:
        call = _CallOf(pem)
        slot = caps.admit(cast(Any, call), der, "x", ends_itself=True)
        woken: list[int] = []
        slot.on_refused(lambda: woken.append(1))
        slot.check()  # not refused yet
        with caplog.at_level(logging.WARNING, logger="node.stream_caps"):
            assert caps.sweep() == 1
            assert woken == [1] and call.cancelled == 0 and caps.held() == 1
            with pytest.raises(RxError) as raised:
                slot.check()
            assert raised.value.reason == "REVOKED_CERT"
            with pytest.raises(RxError):
                slot.live(lambda: True)()
            late: list[int] = []
            slot.on_refused(lambda: late.append(1))  # registered after the refusal: called at once
            assert late == [1]
            assert caps.sweep() == 0 and call.cancelled == 0  # within the grace: left to its handler
            slot.refused_at -= GRACE_S  # the grace passed, the handler did not end it
            assert caps.sweep() == 0 and call.cancelled == 1 and caps.held() == 0
            assert caps.sweep() == 0 and call.cancelled == 1
        events = [r.getMessage().split(" ")[0] for r in caplog.records]
        assert events == ["event=stream_caller_refused", "event=stream_refused_cancelled"]
    finally:
        caps.close()


def test_a_check_that_crashes_for_one_caller_does_not_stop_the_sweep(
    net: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """A caller whose check raises something else than RxError (a bug) keeps its calls and is
    logged; the callers after it in the sweep are still checked and cancelled -- the exception
    ended the sweep there, every sweep, so a revoked caller whose call opened later kept it
    for as long as its connection lived."""
    pems = {"dr": _client_files(net, "h01", "dr")[0].read_bytes(),
            "clerk": _client_files(net, "ins01", "clerk")[0].read_bytes()}
    ders = {who: pem_to_der(pem) for who, pem in pems.items()}

    def recheck(ident: Any) -> None:
        if ident.cert_der == ders["dr"]:
            raise KeyError("a bug in the check of this certificate")
        raise RxError("REVOKED_CERT", "revoked", grpc.StatusCode.PERMISSION_DENIED)

    caps = StreamCaps(total=4, per_caller=4, recheck=recheck, sweep_s=60)
    try:
        calls = [_CallOf(pems["dr"]), _CallOf(pems["clerk"])]  # the crashing caller's opened first
        for call, who in zip(calls, ("dr", "clerk"), strict=True):
            caps.admit(cast(Any, call), ders[who], "x")
        with caplog.at_level(logging.ERROR, logger="node.stream_caps"):
            assert caps.sweep() == 1
        assert [c.cancelled for c in calls] == [0, 1] and caps.held() == 1
        assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["event=stream_recheck_failed"]
    finally:
        caps.close()


# ------------------------------------------------------------------ Cluster streams


class _Step:
    """An idle Cluster.Step stream (or Forward) from the orderer presenting ``files``."""

    def __init__(self, target: str, files: Files, method: str = "Step") -> None:
        self.channel = secure_channel(target, *files)
        self.requests: queue.Queue[Any] = queue.Queue()
        if method == "Step":
            call: Any = self.channel.stream_unary(
                "/rxchain.v1.Cluster/Step", request_serializer=services_pb2.ConsensusRequest.SerializeToString,
                response_deserializer=services_pb2.ConsensusResponse.FromString)
            self.future: Any = call.future(self._requests(), timeout=30)
        else:  # Forward, ForwardBatch
            call = self.channel.stream_stream(
                f"/rxchain.v1.Cluster/{method}", request_serializer=None, response_deserializer=None)
            self.future = call(self._requests(), timeout=30)

    def _requests(self) -> Iterator[Any]:
        while (item := self.requests.get()) is not None:
            yield item

    def ended(self, wait_s: float = 0.5) -> str:
        """The status code's name (and the reason, for a refusal of ours) once it ended, ""
        while it runs."""
        done: list[bool] = []
        self.future.add_done_callback(lambda _f: done.append(True))
        end = time.monotonic() + wait_s
        while not done and time.monotonic() < end:
            time.sleep(0.02)
        if not done:
            return ""
        code = self.future.code()
        if code == grpc.StatusCode.CANCELLED:
            return str(code.name)
        return f"{code.name} {reason_from_rpc_error(self.future)}"

    def close(self) -> None:
        self.requests.put(None)
        self.future.cancel()
        self.channel.close()


def _cluster_server(net: Any, tmp_path: Path, caps: ClusterCaps) -> tuple[grpc.Server, str, Any]:
    """orderer.ins01's Cluster service (Step, Forward, ForwardBatch) over mutual TLS, the
    genesis orderers its members, under ``caps``."""
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    membership = Membership([(o.raft_id, o.cert_der, f"{o.host}:{o.port}") for o in tracker.current.config.orderers])
    metrics = OrdererMetrics("t")
    cluster = ClusterService(1, membership, NullSink(), None, metrics, streams=caps)  # type: ignore[arg-type]
    forward = ForwardBatchService(membership, None, metrics, streams=caps)  # type: ignore[arg-type]
    server = grpc.server(ThreadPoolExecutor(16))
    server.add_generic_rpc_handlers([cluster.handler(), forward.handler()])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "orderer.ins01")))
    server.start()
    return server, f"127.0.0.1:{port}", blocks


def test_one_orderer_holds_at_most_its_cap_of_cluster_streams(net: Any, tmp_path: Path) -> None:
    """orderer.ins02 opening five Step streams holds two at a time (each new one replaces its
    oldest: a reconnect is never locked out), and orderer.ins03 still gets its Step in. Old
    code: all five held (uncapped: enough of them take every worker of the orderer)."""
    caps = ClusterCaps(total=4, per_orderer=2)
    server, target, blocks = _cluster_server(net, tmp_path, caps)
    streams: list[_Step] = []
    try:
        for n in range(5):
            streams.append(_Step(target, _node_files(net, "orderer.ins02")))
            assert wait_until(lambda n=n: caps.held(2) == min(n + 1, 2), WAIT_S)
            if n >= 2:  # the oldest still open was cancelled, the new one runs
                assert streams[n - 2].ended(WAIT_S) == "CANCELLED"
            assert streams[n].ended() == ""
        assert caps.held() == 2
        ins03 = _Step(target, _node_files(net, "orderer.ins03"))
        streams.append(ins03)
        assert wait_until(lambda: caps.held(3) == 1, WAIT_S) and ins03.ended() == ""
        assert caps.held() == 3
        # the replaced streams' slots were not given back twice as they ended
        assert [s.ended(0) != "" for s in streams] == [True, True, True, False, False, False]
        assert caps.held() == 3
    finally:
        for s in streams:
            s.close()
        server.stop(0)
        blocks.close()
    assert wait_until(lambda: caps.held() == 0, WAIT_S)


def test_cluster_streams_over_the_total_are_refused(net: Any, tmp_path: Path) -> None:
    """Past the total, an orderer without a stream of that method to replace is refused
    TOO_MANY_STREAMS before a message is read; one with a stream of it reconnects (replaces it);
    a caller that is no orderer is refused NOT_AN_ORDERER and takes no slot."""
    caps = ClusterCaps(total=3, per_orderer=2)
    server, target, blocks = _cluster_server(net, tmp_path, caps)
    streams: list[_Step] = []

    def open_(name: str, method: str = "Step") -> _Step:
        streams.append(_Step(target, _node_files(net, name) if "." in name else _forged_peer(net, tmp_path),
                             method))
        return streams[-1]

    try:
        first = open_("orderer.ins02")
        open_("orderer.ins02", "Forward")
        assert wait_until(lambda: caps.held(2) == 2, WAIT_S)
        ins03 = open_("orderer.ins03")
        assert wait_until(lambda: caps.held() == 3, WAIT_S)
        assert open_("orderer.ins03", "Forward").ended(WAIT_S) == f"RESOURCE_EXHAUSTED {TOO_MANY_STREAMS}"
        again = open_("orderer.ins02")  # its reconnect: replaces its own Step, total unchanged
        assert first.ended(WAIT_S) == "CANCELLED" and again.ended() == "" and ins03.ended() == ""
        assert caps.held() == 3
        assert open_("forged").ended(WAIT_S) == "PERMISSION_DENIED NOT_AN_ORDERER"
        assert caps.held() == 3
    finally:
        for s in streams:
            s.close()
        server.stop(0)
        blocks.close()


@pytest.mark.parametrize("change", ["removed", "expired"])
def test_a_refused_orderers_open_cluster_streams_end_and_free_their_slots(
    net: Any, tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """orderer.ins02 holds an idle Step and Forward stream, orderer.ins03 a Step stream; then a
    config takes ins02 out of the orderer set (the sweeper, told of it, runs at once: its period
    is a minute) or, with no config change, the node's clock passes the orderers' certificates'
    expiry (the sweep is run). The refused streams end PERMISSION_DENIED with the reason
    (NOT_AN_ORDERER, EXPIRED_CERT), as a new stream would be refused, Step's too (its handler
    is woken from its reader's wait: the sweeper's fallback never cancels it; it cancelled
    it, the caller seeing CANCELLED, not why), and give their slots back; an orderer still
    admitted keeps its stream. Before, a removed (or revoked, or expired) orderer's open Cluster
    streams were never checked again: they kept their slots and workers for as long as they
    lived."""
    caplog.set_level(logging.WARNING, logger="node.stream_caps")
    caps = ClusterCaps(total=4, per_orderer=2)
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    members = [(o.raft_id, o.cert_der, f"{o.host}:{o.port}") for o in tracker.current.config.orderers]
    membership = Membership(members)
    now = [wall_ms()]
    sweeper = StreamCaps(total=1, per_caller=1, recheck=lambda _ident: None, sweep_s=60)
    caps.watch_with(sweeper, cluster_recheck(membership, CallerCheck(tracker.msp, lambda: now[0]).check))
    metrics = OrdererMetrics("t")
    cluster = ClusterService(1, membership, NullSink(), None, metrics, streams=caps)  # type: ignore[arg-type]
    answers = SimpleNamespace(answer_bytes=lambda: 1 << 20)  # (an idle stream orders nothing)
    forward = ForwardBatchService(membership, answers, metrics, streams=caps)  # type: ignore[arg-type]
    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers([cluster.handler(), forward.handler()])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "orderer.ins01")))
    server.start()
    target = f"127.0.0.1:{port}"
    streams: list[_Step] = []
    try:
        step2 = _Step(target, _node_files(net, "orderer.ins02"))
        forward2 = _Step(target, _node_files(net, "orderer.ins02"), "Forward")
        batch2 = _Step(target, _node_files(net, "orderer.ins02"), "ForwardBatch")
        step3 = _Step(target, _node_files(net, "orderer.ins03"))
        streams += [step2, forward2, batch2, step3]
        assert wait_until(lambda: caps.held(2) == 3 and caps.held(3) == 1, WAIT_S)
        assert wait_until(lambda: sweeper.sweeper is not None, WAIT_S)  # it checks them
        if change == "removed":
            membership.update([m for m in members if m[0] != 2])
            sweeper.recheck_now()
            reason = "NOT_AN_ORDERER"
        else:
            now[0] += 200 * 365 * 86_400_000
            sweeper.sweep()
            reason = "EXPIRED_CERT"
        assert step2.ended(WAIT_S) == f"PERMISSION_DENIED {reason}"
        assert step2.future.details().startswith(f"{reason}: ")
        assert forward2.ended(WAIT_S) == f"PERMISSION_DENIED {reason}"
        assert batch2.ended(WAIT_S) == f"PERMISSION_DENIED {reason}"
        assert wait_until(lambda: caps.held(2) == 0, WAIT_S)
        if change == "removed":
            assert step3.ended() == "" and caps.held() == 1
        else:
            assert step3.ended(WAIT_S) == f"PERMISSION_DENIED {reason}"
            assert wait_until(lambda: caps.held() == 0, WAIT_S)
        refused = [r.getMessage() for r in caplog.records if "event=stream_caller_refused" in str(r.msg)]
        assert any("call=Cluster.Forward " in m and f"reason={reason} " in m for m in refused), refused
        assert any("call=Cluster.Step " in m and f"reason={reason} " in m and " ends=refused:" in m
                   for m in refused), refused
        # the handlers ended them: the sweeper's fallback cancelled none
        assert not [r for r in caplog.records if "event=stream_refused_cancelled" in str(r.msg)]
        # the refused Step streams' readers ended with their calls (ins03's reads on, if admitted)
        readers = {"raft-step-from-2"} | ({"raft-step-from-3"} if change == "expired" else set())
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name in readers], WAIT_S)
        if change == "removed":
            assert [t for t in threading.enumerate() if t.name == "raft-step-from-3"]
    finally:
        for s in streams:
            s.close()
        server.stop(0)
        sweeper.close()
        blocks.close()


class _FakeContext:
    """The servicer context ClusterCaps uses: callbacks run at the RPC's end, cancel ends it."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.cancelled = False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True

    def cancel(self) -> None:
        self.cancelled = True

    def end(self) -> None:
        for callback in self.callbacks:
            callback()


def test_cluster_caps_count_each_slot_once_under_churn() -> None:
    """Eight threads of one orderer opening and ending streams: every replaced stream was
    cancelled, never more held than the cap, and nothing left held at the end."""
    caps = ClusterCaps(total=8, per_orderer=2)
    barrier = threading.Barrier(8)
    contexts: list[_FakeContext] = []
    peak: list[int] = []

    def churn() -> None:
        barrier.wait(WAIT_S)
        for i in range(300):
            ctx = _FakeContext()
            contexts.append(ctx)
            caps.admit(ctx, 2, "Step")  # type: ignore[arg-type]
            peak.append(caps.held(2))
            if i % 3:
                ctx.end()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 3)
    assert max(peak) <= 2 and caps.held() == caps.held(2) <= 2
    for ctx in contexts:
        ctx.end()
    assert caps.held() == 0
    assert sum(c.cancelled for c in contexts) >= 8 * 100 - 2  # every stream left open but the last two


@pytest.mark.parametrize(("extra", "workers", "fragment"), [
    ({"max_cluster_streams": 0}, 128, "extra.max_cluster_streams"),
    ({"max_cluster_streams": 128}, 128, "extra.max_cluster_streams"),
    ({"max_cluster_streams": 4, "max_cluster_streams_per_orderer": 5}, 128, "extra.max_cluster_streams_per_orderer"),
])
def test_cluster_caps_bad_extra(extra: dict[str, int], workers: int, fragment: str) -> None:
    with pytest.raises(RxError) as info:
        ClusterCaps.from_extra(extra, workers)
    assert info.value.reason == "BAD_CONFIG" and fragment in info.value.message


@pytest.mark.parametrize(("extra", "workers", "expected"), [
    ({}, 128, (16, 2)),  # an orderer's defaults
    ({}, 512, (64, 2)),
    # a small pool: what the clients' max_streams leave, up to 16 (the nodes' default reserve
    # the rest): 7 of 8 workers over-committed the pool (4 + 2 + 7), Raft starved under a flood;
    # half of what the clients leave (1 of 8, 7 of 32) refused a 3-orderer leader's streams
    ({}, 8, (3, 2)),
    ({}, 32, (15, 2)),
    ({"max_streams": 8}, 32, (16, 2)),
    ({}, 2, (1, 1)),
    ({"max_cluster_streams": 6, "max_cluster_streams_per_orderer": 1}, 8, (6, 1)),
])
def test_cluster_caps_from_extra(extra: dict[str, int], workers: int, expected: tuple[int, int]) -> None:
    caps = ClusterCaps.from_extra(extra, workers)
    assert (caps.total, caps.per_orderer) == expected
