"""Red-team review of membership changes: a member following blocks (PeerDeliver,
Gateway.Events, the orderer's Deliver) when a config update revokes its certificate or
removes its organisation, and such a certificate opening a stream the caps count.

Each test failed before its fix (node.identity.caller.while_admitted, the stream admission of
the gateway and the endorser).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from cryptography import x509 as cx509
from rxchain.v1 import services_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from node.clock import wall_ms
from node.crypto import x509 as rx509
from node.crypto.signing import Verifier
from node.crypto.x509 import cert_info_der
from node.errors import REASON_METADATA_KEY
from node.identity.caller import NO_BLOCK_ROLES, CallerCheck
from node.orderer.broadcast import broadcast_batch_method_handler, broadcast_method_handler
from node.orderer.deliver import DeliverService
from node.peer.config_view import ConfigView
from node.peer.deliver_service import PeerDeliverService
from node.peer.endorser import Endorser, EndorserService
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.service import GatewayService
from node.peer.lifecycle import Lifecycle
from node.peer.notifier import CommitNotifier
from node.stream_caps import StreamCaps
from tests.validation.conftest import Net, Peer, config_block, invoke_block, next_config


class _Aborted(Exception):
    pass


class _Remotes:
    def close(self) -> None:
        pass


class _Ctx:
    """A servicer context whose TLS client certificate is ``cert_der``; abort raises."""

    def __init__(self, cert_der: bytes) -> None:
        self.pem = rx509.cert_to_pem(cx509.load_der_x509_certificate(cert_der))
        self.trailers: dict[str, object] = {}

    def is_active(self) -> bool:
        return True

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]}

    def add_callback(self, _callback: Any) -> bool:
        return True

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers.update(dict(metadata))

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def _stream(service: str, peer: Peer, ctx: _Ctx) -> Iterator[int]:
    """The block numbers a following stream of ``service`` serves ``ctx``'s caller from 0."""
    configs = ConfigView(peer.ledger.state, Verifier())
    notifier = CommitNotifier(peer.ledger.height())
    peer.committer.add_listener(notifier.on_commit)
    request = services_pb2.DeliverRequest(start_block=0, follow=True)
    if service == "PeerDeliver":
        check = CallerCheck(lambda: configs.current().msp, wall_ms, NO_BLOCK_ROLES)
        svc = PeerDeliverService(peer.ledger, notifier, check, StreamCaps(4, 4))
        for r in svc.Deliver(request, cast(Any, ctx)):
            yield r.block.header.number
    elif service == "Events":
        deps = GatewayDeps(org="h01", endorser=cast(Any, None), ledger=peer.ledger, configs=configs,
                           policies=cast(Any, None), notifier=notifier, remotes=cast(Any, _Remotes()),
                           broadcast=cast(Any, None))
        gw = GatewayService(deps, workers=1)
        try:
            for e in gw.Events(services_pb2.EventsRequest(start_block=0, follow=True), cast(Any, ctx)):
                yield e.block_number
        finally:
            gw.close(wait_s=1)
    else:  # the orderer's Deliver (its block store and the MSP in force: here the peer's)
        orderer = DeliverService(peer.ledger.blocks, lambda: configs.current().msp, wall_ms, poll_s=0.05)
        for frame in orderer.deliver_bytes(request, cast(Any, ctx)):
            yield services_pb2.DeliverResponse.FromString(frame).block.header.number


@pytest.mark.parametrize("service", ["PeerDeliver", "Events", "AtomicBroadcast.Deliver"])
@pytest.mark.parametrize("change", ["revoke", "remove_org"])
def test_a_following_stream_ends_at_the_update_that_revokes_its_caller_or_removes_its_org(
    peer: Peer, net: Net, service: str, change: str
) -> None:
    """A member follows new blocks (PeerDeliver, Gateway.Events or the orderer's Deliver);
    a config update then revokes its certificate (h01's doctor) or removes its organisation
    (p01, with its peer). The stream ends there PERMISSION_DENIED with the reason a new
    stream gets (REVOKED_CERT / UNKNOWN_ORG) and serves no block from the update on. Before
    the fix the caller was checked once, when the stream opened: it kept receiving every
    later block (every patient's pseudonyms, ciphertexts and wrapped keys) for as long as its
    connection lived."""
    caller = net.doctor if change == "revoke" else net.pharmacist
    ctx = _Ctx(caller.cert_der)
    peer.committer.commit_block(invoke_block(peer, net, "before"))
    stream = _stream(service, peer, ctx)
    assert [next(stream), next(stream)] == [0, 1]
    new = next_config(peer)
    if change == "revoke":
        org = next(o for o in new.organizations if o.id == "h01")
        org.revoked_serials.append(cert_info_der(caller.cert_der).serial_hex)
        reason = "REVOKED_CERT"
    else:
        orgs = [o for o in new.organizations if o.id != "p01"]
        peers = [p for p in new.peers if p.org != "p01"]
        del new.organizations[:], new.peers[:]
        new.organizations.extend(orgs)
        new.peers.extend(peers)
        reason = "UNKNOWN_ORG"
    _, update = config_block(peer, net, new)
    assert list(peer.committer.commit_block(update).validated.codes) == [tx_pb.VALID]
    with pytest.raises(_Aborted) as info:
        next(stream)
    assert info.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
    assert ctx.trailers.get(REASON_METADATA_KEY) == reason


def _refused_caller(peer: Peer, net: Net, change: str) -> tuple[Any, str]:
    """Commit a config update refusing a caller -- the doctor's certificate revoked ("revoke"),
    or the pharmacist's organisation p01 removed -- and return that caller and the MSP's reason."""
    caller = net.doctor if change == "revoke" else net.pharmacist
    new = next_config(peer)
    if change == "revoke":
        org = next(o for o in new.organizations if o.id == "h01")
        org.revoked_serials.append(cert_info_der(caller.cert_der).serial_hex)
        reason = "REVOKED_CERT"
    else:
        orgs = [o for o in new.organizations if o.id != "p01"]
        peers = [p for p in new.peers if p.org != "p01"]
        del new.organizations[:], new.peers[:]
        new.organizations.extend(orgs)
        new.peers.extend(peers)
        reason = "UNKNOWN_ORG"
    _, update = config_block(peer, net, new)
    assert list(peer.committer.commit_block(update).validated.codes) == [tx_pb.VALID]
    return caller, reason


@pytest.mark.parametrize("call", ["Gateway.Transact", "Gateway.TransactBatch", "Endorser.ProcessProposals"])
@pytest.mark.parametrize("change", ["revoke", "remove_org"])
def test_a_certificate_the_config_refuses_gets_no_stream_slot(
    peer: Peer, net: Net, call: str, change: str
) -> None:
    """Transact, TransactBatch and ProcessProposals streams hold a gRPC worker and a reader
    thread from the start and are capped per TLS certificate; the requests they carry are
    checked one by one. A certificate the config in force refuses -- revoked, or of an
    organisation removed (its CA may stay in the node's bundle and pass the handshake) --
    now gets no slot: PERMISSION_DENIED with the MSP's reason, the caps untouched. Before the
    fix it was admitted, and with certificates minted at will by a removed organisation's CA
    could hold slots up to the total cap (TOO_MANY_STREAMS for every member)."""
    caller, reason = _refused_caller(peer, net, change)
    configs = ConfigView(peer.ledger.state, Verifier())
    caps = StreamCaps(total=4, per_caller=4)
    ctx = _Ctx(caller.cert_der)
    if call == "Endorser.ProcessProposals":
        endorser = Endorser(peer.ledger, configs, net.peer_h01, cast(Any, None), Lifecycle(), wall_ms)
        svc = EndorserService(endorser, workers=1, streams=caps,
                              check_caller=CallerCheck(lambda: configs.current().msp, wall_ms))
        try:
            with pytest.raises(_Aborted):
                list(svc.ProcessProposals(iter(()), cast(Any, ctx)))
        finally:
            svc.close()
    else:
        deps = GatewayDeps(org="h01", endorser=cast(Any, None), ledger=peer.ledger, configs=configs,
                           policies=cast(Any, None), notifier=CommitNotifier(peer.ledger.height()),
                           remotes=cast(Any, _Remotes()), broadcast=cast(Any, None))
        gw = GatewayService(deps, workers=1, streams=caps)
        method = gw.Transact if call == "Gateway.Transact" else gw.TransactBatch
        try:
            with pytest.raises(_Aborted):
                list(method(iter(()), cast(Any, ctx)))
        finally:
            gw.close(wait_s=1)
    assert ctx.trailers.get(REASON_METADATA_KEY) == reason
    assert caps.held() == 0


@pytest.mark.parametrize("call", ["Gateway.Transact", "Gateway.TransactBatch"])
def test_an_open_transact_stream_ends_at_the_update_that_revokes_its_caller(
    peer: Peer, net: Net, call: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h01's doctor holds a Transact (TransactBatch) stream open, sending nothing; a config
    update then revokes her certificate. The stream now ends PERMISSION_DENIED REVOKED_CERT
    within a few polls and gives its cap slot back. Before, only a stream's opening checked
    its caller: the idle stream of a revoked laptop kept its gRPC worker, reader thread and
    slot (up to max_streams_per_caller of them) for as long as its connection lived."""
    monkeypatch.setattr("node.peer.gateway.service.RECHECK_S", 0.05)
    configs = ConfigView(peer.ledger.state, Verifier())
    caps = StreamCaps(total=4, per_caller=4)
    deps = GatewayDeps(org="h01", endorser=cast(Any, None), ledger=peer.ledger, configs=configs,
                       policies=cast(Any, None), notifier=CommitNotifier(peer.ledger.height()),
                       remotes=cast(Any, _Remotes()), broadcast=cast(Any, None))
    gw = GatewayService(deps, workers=1, streams=caps)
    ctx = _Ctx(net.doctor.cert_der)
    live = threading.Event()
    live.set()
    ctx.is_active = live.is_set  # type: ignore[method-assign]
    idle: queue.Queue[None] = queue.Queue()

    def requests() -> Iterator[Any]:  # nothing until the test ends
        idle.get()
        yield from ()

    method = gw.Transact if call == "Gateway.Transact" else gw.TransactBatch
    ended: list[BaseException | None] = []

    def serve() -> None:
        try:
            list(method(requests(), cast(Any, ctx)))
            ended.append(None)
        except BaseException as exc:  # handed to the test thread
            ended.append(exc)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        server.join(0.3)
        assert server.is_alive() and caps.held() == 1  # open and idle: the doctor is admitted
        new = next_config(peer)
        org = next(o for o in new.organizations if o.id == "h01")
        org.revoked_serials.append(cert_info_der(net.doctor.cert_der).serial_hex)
        _, update = config_block(peer, net, new)
        assert list(peer.committer.commit_block(update).validated.codes) == [tx_pb.VALID]
        server.join(5.0)
        assert not server.is_alive(), "the revoked caller's stream stayed open"
        assert isinstance(ended[0], _Aborted) and ended[0].args[0] == grpc.StatusCode.PERMISSION_DENIED
        assert ctx.trailers.get(REASON_METADATA_KEY) == "REVOKED_CERT"
        assert caps.held() == 0
    finally:
        live.clear()
        idle.put(None)
        server.join(5.0)
        gw.close(wait_s=1)


@pytest.mark.parametrize("call", ["AtomicBroadcast.Broadcast", "AtomicBroadcast.BroadcastBatch"])
@pytest.mark.parametrize("change", ["revoke", "remove_org"])
def test_a_certificate_the_config_refuses_gets_no_broadcast_slot(peer: Peer, net: Net, call: str, change: str) -> None:
    """The orderer's Broadcast streams are capped per TLS certificate as the gateway's Transact
    streams are, but were admitted with no MSP check: a revoked certificate, or certificates
    minted at will by a removed organisation's CA the orderer's bundle still holds, took client
    slots up to the total cap (TOO_MANY_STREAMS for every member's Broadcast). Such a
    certificate now gets no slot: PERMISSION_DENIED with the MSP's reason, the caps untouched."""
    caller, reason = _refused_caller(peer, net, change)
    configs = ConfigView(peer.ledger.state, Verifier())
    caps = StreamCaps(total=4, per_caller=4)
    ctx = _Ctx(caller.cert_der)
    handler: Any = SimpleNamespace(stream=lambda requests, slot: iter(()),
                                    batch_stream=lambda requests, context, slot: iter(()))
    make = broadcast_method_handler if call == "AtomicBroadcast.Broadcast" else broadcast_batch_method_handler
    method: Any = make(handler, caps, CallerCheck(lambda: configs.current().msp, wall_ms)).stream_stream
    with pytest.raises(_Aborted) as info:
        list(method(iter(()), cast(Any, ctx)))
    assert info.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
    assert ctx.trailers.get(REASON_METADATA_KEY) == reason
    assert caps.held() == 0
    # an admitted member's stream is served as before
    ok = _Ctx(net.doctor.cert_der if change == "remove_org" else net.pharmacist.cert_der)
    assert list(method(iter(()), cast(Any, ok))) == [] and caps.held() == 0
