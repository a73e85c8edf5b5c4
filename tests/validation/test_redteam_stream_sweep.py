"""Red-team review of membership changes, continued: an open long-lived call whose caller the
config in force stops admitting while the call is idle -- a config update revokes its
certificate or removes its organisation, or the certificate expires -- over mutual TLS on a real
gRPC server on 127.0.0.1.

Only a stream that wakes checked its caller again (Transact every second, follower streams
before each block they serve): an idle Broadcast, BroadcastBatch or ProcessProposals stream (its
handler blocked reading requests), an Events or Deliver stream waiting for a block not yet cut
and a CommitStatus wait never did, and kept its gRPC worker and cap slot for as long as its
connection lived. The stream caps' sweeper (node.stream_caps) now ends them: the slot and
the worker go to the next caller. The sweeper cancelled them, and their clients saw CANCELLED
with no reason; it now wakes their handlers, which end them PERMISSION_DENIED with the reason, as
a new call of that caller is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509 as cx509
from rxchain.v1 import services_pb2, services_pb2_grpc
from rxchain.v1 import transaction_pb2 as tx_pb

from node.clock import wall_ms
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.signing import Verifier
from node.crypto.tls import secure_channel, server_credentials
from node.crypto.x509 import cert_info_der, pem_to_der
from node.errors import reason_from_rpc_error
from node.identity.caller import NO_BLOCK_ROLES, CallerCheck, node_certificates
from node.orderer.broadcast import (
    BroadcastHandler,
    EnvelopeValidator,
    broadcast_batch_method_handler,
    broadcast_method_handler,
)
from node.orderer.deliver import DeliverService
from node.orderer.metrics import OrdererMetrics
from node.peer.config_view import ConfigView
from node.peer.deliver_service import PeerDeliverService
from node.peer.endorser import Endorser, EndorserService
from node.peer.gateway import service as gateway_service
from node.peer.gateway.deps import MAX_COMMIT_TIMEOUT_MS, GatewayDeps
from node.peer.gateway.service import GatewayService
from node.peer.lifecycle import Lifecycle
from node.peer.notifier import CommitNotifier
from node.stream_caps import StreamCaps
from tests.orderer.fakes import NoForward, NothingOrdered, no_msp
from tests.validation.conftest import Net, Peer, config_block, next_config

WAIT_S = 5.0
DAY_MS = 86_400_000
Files = tuple[Path, Path, Path]

CALLS = ["AtomicBroadcast.Broadcast", "AtomicBroadcast.BroadcastBatch", "Endorser.ProcessProposals",
         "Gateway.Events", "PeerDeliver.Deliver", "AtomicBroadcast.Deliver", "Gateway.CommitStatus",
         "Gateway.Transact", "Gateway.TransactBatch"]
STREAMS = ("AtomicBroadcast.Broadcast", "AtomicBroadcast.BroadcastBatch", "Gateway.Transact",
           "Gateway.TransactBatch")


class _Remotes:
    def close(self) -> None:
        pass


@dataclass
class _Served:
    target: str
    caps: StreamCaps
    now: list[int]  # the node's wall clock (ms), for the MSP's expiry checks


@pytest.fixture
def served(peer: Peer, net: Net, request: pytest.FixtureRequest) -> Iterator[_Served]:
    """peer.h01's Endorser, Gateway and PeerDeliver and an orderer's AtomicBroadcast (every
    envelope refused TOO_LARGE; its blocks: the peer's) under one set of caps -- ONE long-lived
    call in all, nodes' and clients' alike -- on a gRPC pool of ONE worker: a second call
    runs only once the first one's handler returned. The config in force is the peer's; the
    caps are told when a config block commits, as node.peer.server wires them, and sweep
    every ``request.param`` seconds."""
    configs = ConfigView(peer.ledger.state, Verifier())

    def msp() -> Any:
        return configs.current().msp

    now = [wall_ms()]

    def clock() -> int:
        return now[0]

    check = CallerCheck(msp, clock)
    caps = StreamCaps(total=1, per_caller=1, nodes=0, per_node=1, is_node=node_certificates(msp, clock),
                      recheck=check.check, sweep_s=request.param)
    peer.committer.add_listener(lambda c: caps.recheck_now() if c.validated.new_config is not None else None)
    notifier = CommitNotifier(peer.ledger.height())
    peer.committer.add_listener(notifier.on_commit)
    broadcast = BroadcastHandler(EnvelopeValidator(no_msp, "c", 0, lambda: 0), NothingOrdered(), NoForward(),
                                 OrdererMetrics("t"))
    deliver = DeliverService(peer.ledger.blocks, msp, clock, poll_s=0.05, streams=caps)
    endorser = EndorserService(Endorser(peer.ledger, configs, net.peer_h01, cast(Any, None), Lifecycle(), clock),
                               workers=1, streams=caps, check_caller=check)
    gateway = GatewayService(GatewayDeps(org="h01", endorser=cast(Any, None), ledger=peer.ledger, configs=configs,
                                         policies=cast(Any, None), notifier=notifier,
                                         remotes=cast(Any, _Remotes()), broadcast=cast(Any, None)),
                             workers=1, streams=caps)
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.AtomicBroadcast", {
        "Broadcast": broadcast_method_handler(broadcast, caps, check),
        "BroadcastBatch": broadcast_batch_method_handler(broadcast, caps, check),
        "Deliver": grpc.unary_stream_rpc_method_handler(
            deliver.deliver_bytes, request_deserializer=services_pb2.DeliverRequest.FromString,
            response_serializer=None),
    })])
    services_pb2_grpc.add_EndorserServicer_to_server(endorser, server)
    services_pb2_grpc.add_GatewayServicer_to_server(gateway, server)
    services_pb2_grpc.add_PeerDeliverServicer_to_server(
        PeerDeliverService(peer.ledger, notifier, CallerCheck(msp, clock, NO_BLOCK_ROLES), caps), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(*_node_files(net, "peer.h01")))
    server.start()
    try:
        yield _Served(f"127.0.0.1:{port}", caps, now)
    finally:
        server.stop(0).wait(WAIT_S)
        endorser.close()
        gateway.close(wait_s=1)
        deliver.close()
        notifier.close()
        caps.close()


def _node_files(net: Net, name: str) -> Files:
    d = net.home / "nodes" / name
    return d / "cert.pem", d / "key.pem", d / "ca-bundle.pem"


def _user_files(net: Net, org: str, user: str) -> Files:
    d = net.home / "orgs" / org / "users" / user
    return d / "cert.pem", d / "key.pem", net.home / "ca-bundle.pem"


def _short_lived_doctor(net: Net, tmp_path: Path) -> Files:
    """A doctor's certificate of h01's CA that expires in a day."""
    ca_dir = net.home / "orgs" / "h01"
    ca_cert = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((ca_dir / "ca.key").read_bytes())
    key = signing.generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = rx509.issue_cert(ca_cert, ca_key, key.public_key(), org="h01", role="doctor", name="dr-short",
                            now=now, not_after=now + dt.timedelta(days=1))
    d = tmp_path / "dr-short"
    d.mkdir()
    (d / "cert.pem").write_bytes(rx509.cert_to_pem(cert))
    (d / "key.pem").write_bytes(signing.key_to_pem(key))
    return d / "cert.pem", d / "key.pem", net.home / "ca-bundle.pem"


class _Call:
    """One idle call of ``name`` from the caller presenting ``files``: a stream sending nothing,
    a follower from a block far past the height, a CommitStatus wait for a transaction never
    submitted."""

    def __init__(self, target: str, files: Files, name: str, far_block: int) -> None:
        self.channel = secure_channel(target, *files)
        self.key = StreamCaps.key_of(pem_to_der(files[0].read_bytes()))
        self._done = threading.Event()
        service, method = name.split(".")
        path = f"/rxchain.v1.{service}/{method}"
        follow = services_pb2.DeliverRequest(start_block=far_block, follow=True)
        call: Any
        if name in STREAMS:
            call = self.channel.stream_stream(path, request_serializer=None, response_deserializer=None)(
                self._nothing(), timeout=30)
        elif name == "Endorser.ProcessProposals":
            call = self.channel.stream_stream(path, request_serializer=services_pb2.ProposalBatch.SerializeToString,
                                              response_deserializer=None)(self._nothing(), timeout=30)
        elif name == "Gateway.Events":
            call = self.channel.unary_stream(path, request_serializer=services_pb2.EventsRequest.SerializeToString,
                                             response_deserializer=None)(
                services_pb2.EventsRequest(start_block=far_block, follow=True), timeout=30)
        elif name == "Gateway.CommitStatus":
            call = self.channel.unary_unary(
                path, request_serializer=services_pb2.CommitStatusRequest.SerializeToString,
                response_deserializer=None,
            ).future(services_pb2.CommitStatusRequest(tx_id="ab" * 32, timeout_ms=MAX_COMMIT_TIMEOUT_MS),
                     timeout=30)
        else:
            call = self.channel.unary_stream(path, request_serializer=services_pb2.DeliverRequest.SerializeToString,
                                             response_deserializer=None)(follow, timeout=30)
        self.call = call
        self.ended = threading.Event()
        call.add_done_callback(lambda _call: self.ended.set())

    def _nothing(self) -> Iterator[Any]:
        self._done.wait(30)
        yield from ()

    def close(self) -> None:
        self._done.set()
        self.call.cancel()
        self.channel.close()


def _until(cond: Any, timeout_s: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def _remove_org(peer: Peer, net: Net, org_id: str) -> None:
    new = next_config(peer)
    orgs = [o for o in new.organizations if o.id != org_id]
    peers = [p for p in new.peers if p.org != org_id]
    del new.organizations[:], new.peers[:]
    new.organizations.extend(orgs)
    new.peers.extend(peers)
    _, update = config_block(peer, net, new)
    assert list(peer.committer.commit_block(update).validated.codes) == [tx_pb.VALID]


def _revoke(peer: Peer, net: Net, org_id: str, cert_der: bytes) -> None:
    new = next_config(peer)
    org = next(o for o in new.organizations if o.id == org_id)
    org.revoked_serials.append(cert_info_der(cert_der).serial_hex)
    _, update = config_block(peer, net, new)
    assert list(peer.committer.commit_block(update).validated.codes) == [tx_pb.VALID]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize(("change", "served"), [("revoke", 60.0), ("expire", 0.05)], indirect=["served"])
def test_an_idle_call_ends_when_its_caller_is_no_longer_admitted_and_frees_its_slot(
    peer: Peer, net: Net, served: _Served, call: str, change: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """h01's doctor holds the only slot with an idle call; then a config update revokes her
    certificate (the sweeper, told of the config block, runs at once: its period is a minute)
    or, with no block at all, the node's clock passes her certificate's expiry (the periodic
    sweep). Her call ends PERMISSION_DENIED with the reason (logged as stream_caller_refused)
    and an insurer's clerk's call of the same kind gets the slot and the pool's one worker.
    Before, the idle call was never checked again: it kept both for as long as its connection
    lived (the clerk's call waited for a worker); then the sweeper cancelled it: CANCELLED,
    the client not told why. A Transact/TransactBatch stream's own check of its caller (every
    RECHECK_S, with the MSP in force) is put off here: it would race the sweeper to the
    revocation (the same reason, but no stream_caller_refused line when it wins) -- the
    sweeper's refusal alone must end the stream."""
    caplog.set_level(logging.WARNING, logger="node.stream_caps")
    monkeypatch.setattr(gateway_service, "RECHECK_S", math.inf)
    files = _user_files(net, "h01", "dr-a") if change == "revoke" else _short_lived_doctor(net, tmp_path)
    far = peer.ledger.height() + 1000
    calls = [_Call(served.target, files, call, far)]
    try:
        doctor = calls[0]
        assert _until(lambda: served.caps.held(doctor.key) == 1)  # admitted, idle
        assert not doctor.ended.is_set()
        if change == "revoke":
            _revoke(peer, net, "h01", pem_to_der(files[0].read_bytes()))
            reason = "REVOKED_CERT"
        else:
            served.now[0] += 2 * DAY_MS
            reason = "EXPIRED_CERT"
        assert doctor.ended.wait(WAIT_S), "the refused caller's idle call stayed open"
        # the client learns why, as a new call of hers would (it saw CANCELLED, no reason)
        assert doctor.call.code() == grpc.StatusCode.PERMISSION_DENIED, doctor.call.code()
        assert reason_from_rpc_error(doctor.call) == reason
        assert doctor.call.details().startswith(f"{reason}: ")
        assert _until(lambda: served.caps.held() == 0)
        refused = [r.getMessage() for r in caplog.records if "event=stream_caller_refused" in str(r.msg)]
        assert len(refused) == 1, refused
        assert f"call={call} org=h01 " in refused[0] and f"node=0 reason={reason} " in refused[0]
        assert " ends=refused:" in refused[0]
        # the handler ended it: the sweeper's fallback never had to cancel it
        assert not [r for r in caplog.records if "event=stream_refused_cancelled" in str(r.msg)]
        clerk = _Call(served.target, _user_files(net, "ins01", "clerk-a"), call, far)
        calls.append(clerk)
        assert _until(lambda: served.caps.held(clerk.key) == 1), "the slot or the worker was not given back"
        assert not clerk.ended.is_set()
    finally:
        for c in calls:
            c.close()


@pytest.mark.parametrize("call", ["AtomicBroadcast.Broadcast", "PeerDeliver.Deliver", "Endorser.ProcessProposals"])
@pytest.mark.parametrize("served", [60.0], indirect=True)
def test_a_node_certificates_idle_call_ends_when_its_organisation_is_removed(
    peer: Peer, net: Net, served: _Served, call: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Node certificates are held to the same rule: peer.p01 holds the only slot (a node's)
    with an idle call; a config update removes p01 and its peer. The call ends
    (PERMISSION_DENIED, UNKNOWN_ORG) and peer.ins01 gets the slot. Before, the removed
    organisation's peer kept it."""
    caplog.set_level(logging.WARNING, logger="node.stream_caps")
    far = peer.ledger.height() + 1000
    calls = [_Call(served.target, _node_files(net, "peer.p01"), call, far)]
    try:
        removed = calls[0]
        assert _until(lambda: served.caps.held(removed.key) == 1)
        _remove_org(peer, net, "p01")
        assert removed.ended.wait(WAIT_S), "the removed organisation's peer kept its call"
        assert removed.call.code() == grpc.StatusCode.PERMISSION_DENIED, removed.call.code()
        assert reason_from_rpc_error(removed.call) == "UNKNOWN_ORG"
        refused = [r.getMessage() for r in caplog.records if "event=stream_caller_refused" in str(r.msg)]
        assert len(refused) == 1, refused
        assert f"call={call} org=p01 " in refused[0] and "node=1 reason=UNKNOWN_ORG " in refused[0]
        other = _Call(served.target, _node_files(net, "peer.ins01"), call, far)
        calls.append(other)
        assert _until(lambda: served.caps.held(other.key) == 1)
        assert not other.ended.is_set()
    finally:
        for c in calls:
            c.close()
