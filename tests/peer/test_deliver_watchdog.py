"""Deliver client progress watchdog: a paused serving orderer (stream open, nothing sent, no
answer to probes) is left for another orderer, without waiting for gRPC keepalive."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from rxchain.v1 import identity_pb2, services_pb2, services_pb2_grpc

from node.config import Endpoint
from node.errors import RxError
from node.peer.deliver_client import Backoff, DeliverClient, DeliverSettings
from tests.harness.ports import free_ports
from tests.peer.conftest import Net, make_peer
from tests.peer.test_deliver_broadcast import FakeAdmin, FakeOrderer, chain, insecure, serve, wait_for


class PausedAdmin(services_pb2_grpc.AdminServicer):
    """Admin of a paused process: every call hangs until the caller gives up (or release)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.calls = 0

    def _hang(self, context) -> None:
        self.calls += 1
        while context.is_active() and not self.released.wait(0.02):
            pass

    def Health(self, request, context) -> services_pb2.HealthResponse:
        self._hang(context)
        return services_pb2.HealthResponse(serving=True, node="paused", role="orderer")

    def Status(self, request, context) -> services_pb2.StatusResponse:
        self._hang(context)
        return services_pb2.StatusResponse(node="paused", role="orderer", height=3)


def _client(eps: list[Endpoint], peer, errors: list[tuple[str, str]], settings: DeliverSettings) -> DeliverClient:
    return DeliverClient(eps, insecure, peer.ledger.height, peer.committer.commit_block, Backoff(0.01, 0.05),
                         on_error=lambda o, r: errors.append((o, r)), stall_s=settings.stall_s,
                         probe_timeout_s=settings.probe_timeout_s, unresponsive_s=settings.unresponsive_s)


def test_paused_orderer_is_left_without_keepalive(net: Net, tmp_path: Path, servers) -> None:
    """The serving orderer sends 2 blocks then hangs (stream open, Admin silent); the other has
    4 blocks but no Admin service, so it never reports a height: only the liveness probe of the
    serving orderer can move the client. Without the watchdog the stream would hang for 30 s."""
    peer = make_peer(net, "h01", tmp_path / "p")
    paused_admin = PausedAdmin()
    try:
        good = chain(net, peer.ledger.block(0), 4)
        paused_port, other_port = free_ports(2)
        paused, other = FakeOrderer(good[:2], hold_s=30), FakeOrderer(good)
        server = serve(paused, paused_port)
        services_pb2_grpc.add_AdminServicer_to_server(paused_admin, server)
        servers.append(server)
        servers.append(serve(other, other_port))
        errors: list[tuple[str, str]] = []
        client = _client([Endpoint("paused", "ins01", "127.0.0.1", paused_port),
                          Endpoint("other", "ins01", "127.0.0.1", other_port)],
                         peer, errors, DeliverSettings(stall_s=0.2, unresponsive_s=0.5, probe_timeout_s=0.2))
        client.start()
        try:
            wait_for(lambda: peer.ledger.height() == 3, 10)
            wait_for(lambda: peer.ledger.height() == 5, 5)  # well under the 30 s the stream hangs
        finally:
            client.stop()
        assert errors[0] == ("paused", "UNRESPONSIVE")
        assert other.starts[0] == 3  # resumed at the ledger height: nothing applied twice
        assert paused_admin.calls >= 1
        assert [peer.ledger.block(i).header.number for i in range(5)] == [0, 1, 2, 3, 4]
    finally:
        paused_admin.released.set()
        peer.ledger.close()


def test_paused_orderer_is_left_for_the_one_ahead(net: Net, tmp_path: Path, servers) -> None:
    """Three orderers: the serving one pauses, one is alive but behind, one is ahead: the client
    goes straight to the one ahead (not round robin to the one behind)."""
    peer = make_peer(net, "h01", tmp_path / "p")
    paused_admin = PausedAdmin()
    try:
        good = chain(net, peer.ledger.block(0), 4)
        paused_port, behind_port, ahead_port = free_ports(3)
        paused, behind, ahead = FakeOrderer(good[:2], hold_s=30), FakeOrderer(good[:2]), FakeOrderer(good)
        for servicer, admin, port in ((paused, paused_admin, paused_port), (behind, FakeAdmin(3), behind_port),
                                      (ahead, FakeAdmin(5), ahead_port)):
            server = serve(servicer, port)
            services_pb2_grpc.add_AdminServicer_to_server(admin, server)
            servers.append(server)
        errors: list[tuple[str, str]] = []
        client = _client([Endpoint("paused", "ins01", "127.0.0.1", paused_port),
                          Endpoint("behind", "ins01", "127.0.0.1", behind_port),
                          Endpoint("ahead", "ins01", "127.0.0.1", ahead_port)],
                         peer, errors, DeliverSettings(stall_s=0.2, unresponsive_s=10, probe_timeout_s=0.2))
        client.start()
        try:
            wait_for(lambda: peer.ledger.height() == 5, 10)
        finally:
            client.stop()
        assert errors[0] == ("paused", "STALLED")
        assert behind.starts == [] and ahead.starts[0] == 3
    finally:
        paused_admin.released.set()
        peer.ledger.close()


def test_quiet_but_answering_orderer_is_kept(net: Net, tmp_path: Path, servers) -> None:
    """No new blocks anywhere (an idle network) and the serving orderer answers its probes:
    no failover, however long the silence."""
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        good = chain(net, peer.ledger.block(0), 2)
        quiet_port, other_port = free_ports(2)
        quiet, other = FakeOrderer(good, hold_s=30), FakeOrderer(good)
        admins = (FakeAdmin(3), FakeAdmin(3))
        for servicer, admin, port in ((quiet, admins[0], quiet_port), (other, admins[1], other_port)):
            server = serve(servicer, port)
            services_pb2_grpc.add_AdminServicer_to_server(admin, server)
            servers.append(server)
        errors: list[tuple[str, str]] = []
        client = _client([Endpoint("quiet", "ins01", "127.0.0.1", quiet_port),
                          Endpoint("other", "ins01", "127.0.0.1", other_port)],
                         peer, errors, DeliverSettings(stall_s=0.1, unresponsive_s=0.2, probe_timeout_s=0.5))
        client.start()
        try:
            wait_for(lambda: peer.ledger.height() == 3, 10)
            wait_for(lambda: admins[0].calls >= 5, 10)  # several checks past unresponsive_s
        finally:
            client.stop()
        assert errors == [] and other.starts == [] and quiet.starts == [1]
    finally:
        peer.ledger.close()


def test_settings_from_node_yaml_extra() -> None:
    assert DeliverSettings.from_extra({}) == DeliverSettings(1.0, 3.0, 1.0)
    got = DeliverSettings.from_extra({"deliver_stall_s": 1, "deliver_unresponsive_s": 2.5,
                                      "deliver_probe_timeout_s": 0.5, "grpc_workers": 8})
    assert got == DeliverSettings(stall_s=1.0, unresponsive_s=2.5, probe_timeout_s=0.5)
    # ops1: float() took strings ("2.5", "1_0", " 5 ") and booleans as seconds: a YAML number only
    for bad in ({"deliver_stall_s": "soon"}, {"deliver_unresponsive_s": -1},
                {"deliver_probe_timeout_s": float("nan")}, {"deliver_stall_s": None},
                {"deliver_probe_timeout_s": 0}, {"deliver_unresponsive_s": "2.5"},
                {"deliver_stall_s": "1_0"}, {"deliver_stall_s": " 5 "}, {"deliver_stall_s": True}):
        with pytest.raises(RxError) as err:
            DeliverSettings.from_extra(bad)
        assert err.value.reason == "BAD_CONFIG"


def test_stop_closes_probe_channels_and_threads(net: Net, tmp_path: Path, servers) -> None:
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        (port,) = free_ports(1)
        server = serve(FakeOrderer(chain(net, peer.ledger.block(0), 1), hold_s=30), port)
        admin = FakeAdmin(2)
        services_pb2_grpc.add_AdminServicer_to_server(admin, server)
        servers.append(server)
        before = {t.name for t in threading.enumerate()}
        closed: list[str] = []

        def channels(target: str) -> grpc.Channel:
            ch = grpc.insecure_channel(target)
            real_close = ch.close

            def close() -> None:
                closed.append(target)
                real_close()
            ch.close = close  # type: ignore[method-assign]
            return ch

        client = DeliverClient([Endpoint("o", "ins01", "127.0.0.1", port)], channels, peer.ledger.height,
                               peer.committer.commit_block, stall_s=0.1, probe_timeout_s=0.5)
        client.start()
        wait_for(lambda: peer.ledger.height() == 2, 10)
        wait_for(lambda: admin.calls >= 1, 10)  # the watchdog opened its probe channel
        client.stop()
        assert closed == [f"127.0.0.1:{port}"]
        names = {t.name for t in threading.enumerate()} - before
        assert "deliver-client" not in names and "deliver-watchdog" not in names
    finally:
        peer.ledger.close()


class StatusOrderer(FakeOrderer):
    """Ends every Deliver stream at once with a status of a new reason and a long message."""

    def Deliver(self, request, context):
        self.starts.append(request.start_block)
        yield services_pb2.DeliverResponse(status=identity_pb2.ErrorDetail(
            reason=f"HOSTILE_{len(self.starts)}", message="x" * 100_000))


def test_an_orderers_status_reason_labels_nothing_new(net: Net, tmp_path: Path, servers,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The reason of a status ending a stream was the failover reason as sent: a member's orderer
    added a label to the peer's rxchain_peer_deliver_failovers metric (and a 100 kB detail to its
    log line) per stream it ended."""
    peer = make_peer(net, "h01", tmp_path / "p")
    try:
        (port,) = free_ports(1)
        hostile = StatusOrderer([])
        servers.append(serve(hostile, port))
        errors: list[tuple[str, str]] = []
        client = _client([Endpoint("hostile", "ins01", "127.0.0.1", port)], peer, errors, DeliverSettings())
        client.start()
        try:
            wait_for(lambda: len(errors) >= 5, 10)
        finally:
            client.stop()
        assert {r for _, r in errors} == {"STREAM_ENDED"}, errors
        failovers = [r.getMessage() for r in caplog.records if "event=deliver_failover" in r.getMessage()]
        assert failovers and all(len(m) < 1000 for m in failovers)
        assert "HOSTILE_1" in failovers[0]  # the orderer's reason is still told, in the detail
    finally:
        peer.ledger.close()
