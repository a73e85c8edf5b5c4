"""Who a record key may be wrapped for, and which peer a session may talk to.

A record key is wrapped only for a certificate the peers' MSP would accept for that
organisation now (issued by its CA, within validity, not revoked) and, for the patient, with
the ``patient`` role. A session talks to its own organisation's peer only: TLS pinned to the
peer's node name and its organisation's CA, so another member's node key cannot stand in
for it and receive transient plaintext.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from netgen import GeneratedNetwork
from rxchain.v1 import config_pb2, services_pb2, services_pb2_grpc

from client.errors import RxClientError
from client.network import NetworkInfo, NodeEndpoint, load_network
from client.session import Session
from node.crypto import signing, tls
from node.crypto import x509 as rx509

from .conftest import FIXED_NOW

NOW_MS = int(FIXED_NOW.timestamp() * 1000) + 3_600_000


def _home(net_home: GeneratedNetwork, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    return home


def _session(home: Path, net: NetworkInfo | None = None, as_: str = "h01:dr-jiang",
             now_ms: int = NOW_MS) -> Session:
    return Session(home, as_, network=net, clock=lambda: now_ms)


def _revoking(net: NetworkInfo, org: str, cert_der: bytes) -> NetworkInfo:
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(net.config)
    serial = format(x509.load_der_x509_certificate(cert_der).serial_number, "x")
    next(o for o in config.organizations if o.id == org).revoked_serials.append(serial)
    return dataclasses.replace(net, config=config)


def _pem_to_der(path: Path) -> bytes:
    return rx509.cert_to_der(x509.load_pem_x509_certificate(path.read_bytes()))


def _refused(call: Callable[[], object]) -> str:
    """The reason of the RxClientError ``call`` raises (the test fails if it raises none)."""
    with pytest.raises(RxClientError) as e:
        call()
    return e.value.reason


def _refused_with_patient_cert(net_home: GeneratedNetwork, tmp_path: Path, cert_pem: bytes) -> str:
    """Why a session on a copy of the network refuses h01's patient-zhang as a recipient once
    her wallet holds ``cert_pem`` as its certificate."""
    home = _home(net_home, tmp_path)
    (home / "orgs/h01/users/patient-zhang/cert.pem").write_bytes(cert_pem)
    with _session(home) as s:
        return _refused(lambda: s.user_public_key("h01", "patient-zhang"))


def test_the_enrolled_patients_certificate_is_a_recipient(net_home, tmp_path):
    with _session(_home(net_home, tmp_path)) as s:
        pub = s.user_public_key("h01", "patient-zhang")
        key = signing.load_private_key((net_home.user_dir("h01", "patient-zhang") / "key.pem").read_bytes())
        assert signing.key_matches(key, pub)
        assert s.records_public_key("p01") is not None


def test_a_doctor_certificate_in_a_patient_wallet_gets_no_patient_key(net_home, tmp_path):
    doctor_cert = (net_home.user_dir("h01", "dr-jiang") / "cert.pem").read_bytes()
    assert _refused_with_patient_cert(net_home, tmp_path, doctor_cert) == "WRONG_ROLE"


def test_a_patient_certificate_from_a_foreign_ca_gets_no_key(net_home, tmp_path):
    ca_key = signing.generate_key()
    ca = rx509.make_ca("h01", ca_key, FIXED_NOW)
    cert = rx509.issue_cert(ca, ca_key, signing.generate_key().public_key(), org="h01",
                            role="patient", name="pt-forged", now=FIXED_NOW)
    assert _refused_with_patient_cert(net_home, tmp_path, rx509.cert_to_pem(cert)) == "UNKNOWN_CREATOR"


def test_a_patient_certificate_of_another_org_gets_no_key(net_home, tmp_path):
    # h02's patient put in an h01 wallet directory: its certificate names h02 / h02's CA
    h02_patient_cert = (net_home.user_dir("h02", "patient-sun") / "cert.pem").read_bytes()
    assert _refused_with_patient_cert(net_home, tmp_path, h02_patient_cert) == "UNKNOWN_CREATOR"


def test_expired_or_revoked_recipients_get_no_key(net_home, tmp_path):
    home = _home(net_home, tmp_path)
    later = int((FIXED_NOW + dt.timedelta(days=900)).timestamp() * 1000)  # certs last 825 days
    with _session(home, now_ms=later) as s:
        assert _refused(lambda: s.user_public_key("h01", "patient-zhang")) == "EXPIRED_CERT"
        assert _refused(lambda: s.records_public_key("p01")) == "EXPIRED_CERT"
    net = load_network(home)
    net = _revoking(net, "h01", _pem_to_der(home / "orgs/h01/users/patient-zhang/cert.pem"))
    net = _revoking(net, "p01", net.org("p01").records_cert_der)
    with _session(home, net) as s:
        assert _refused(lambda: s.user_public_key("h01", "patient-zhang")) == "REVOKED_CERT"
        assert _refused(lambda: s.records_public_key("p01")) == "REVOKED_CERT"
        assert s.records_public_key("p02") is not None  # others are unaffected


def test_a_records_certificate_not_issued_by_its_org_gets_no_key(net_home, tmp_path):
    home = _home(net_home, tmp_path)
    net = load_network(home)
    config = config_pb2.ConsortiumConfig()
    config.CopyFrom(net.config)
    # p02's records certificate (p02's CA) configured as p01's: refused
    p01 = next(o for o in config.organizations if o.id == "p01")
    p01.records_cert_der = net.org("p02").records_cert_der
    with pytest.raises(RxClientError) as e:
        dataclasses.replace(net, config=config).records_public_key("p01", at_ms=NOW_MS)
    assert e.value.reason == "UNKNOWN_CREATOR"


@pytest.mark.parametrize("text", ["", "00", "ab" * 16])
def test_a_short_consortium_secret_is_refused(net_home, tmp_path, text):
    home = _home(net_home, tmp_path)
    (home / "consortium-secret").write_text(text + "\n")
    with pytest.raises(RxClientError) as e:
        load_network(home)
    assert e.value.reason == "BAD_CONFIG"


class _Admin(services_pb2_grpc.AdminServicer):
    def Health(self, request: services_pb2.HealthRequest,
               context: grpc.ServicerContext) -> services_pb2.HealthResponse:
        return services_pb2.HealthResponse(serving=True, node="fake", detail="")

    def Status(self, request: services_pb2.StatusRequest,
               context: grpc.ServicerContext) -> services_pb2.StatusResponse:
        return services_pb2.StatusResponse(node="fake")


@pytest.fixture
def node_server(net_home) -> Iterator[dict[str, int]]:
    """Admin servers presenting the node certificates of peer.h01 and peer.p02."""
    ports, servers = {}, []
    try:
        for node in ("peer.h01", "peer.p02"):
            ndir = net_home.home / "nodes" / node
            srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            services_pb2_grpc.add_AdminServicer_to_server(_Admin(), srv)
            ports[node] = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(
                ndir / "cert.pem", ndir / "key.pem", ndir / "ca-bundle.pem"))
            srv.start()
            servers.append(srv)
        yield ports
    finally:
        for srv in servers:
            srv.stop(None)


def _session_to(net_home, tmp_path: Path, port: int, clock: Callable[[], int] | None = None) -> Session:
    net = load_network(net_home.home)
    peers = tuple(NodeEndpoint(p.name, p.org, p.kind, "127.0.0.1", port) if p.org == "h01" else p
                  for p in net.peers)
    if clock is not None:
        return Session(net_home.home, "h01:dr-jiang", network=dataclasses.replace(net, peers=peers), clock=clock)
    return _session(net_home.home, dataclasses.replace(net, peers=peers))


def test_a_session_talks_to_its_own_peer(net_home, tmp_path, node_server):
    s = _session_to(net_home, tmp_path, node_server["peer.h01"])
    try:
        assert s.gateway.health(timeout=10).serving
    finally:
        s.close()


def test_another_orgs_node_cannot_stand_in_for_the_sessions_peer(net_home, tmp_path, node_server):
    """p02's peer at h01's peer address: the handshake fails, nothing is sent to it."""
    s = _session_to(net_home, tmp_path, node_server["peer.p02"])
    try:
        with pytest.raises(RxClientError) as e:
            s.gateway.health(timeout=5)
        assert e.value.reason == "SERVICE_UNAVAILABLE"
    finally:
        s.close()


def test_a_patient_device_needs_her_binding_not_the_consortium_secret(net_home, tmp_path):
    """With the secret every pseudonym on the ledger is an offline search over ID numbers, so
    a patient's device holds only her binding (``patient-binding`` in her wallet); a client
    without the secret refuses every derivation from it (NO_SECRET), never uses an empty key."""
    from client.records import dx_key, patient_binding, pseudonym
    from client.wallet import wallet_cert_name

    home = _home(net_home, tmp_path)
    secret = load_network(home).secret
    expected = patient_binding(secret, "h01", wallet_cert_name(home, "h01", "patient-zhang"))
    (home / "consortium-secret").unlink()
    wallet = home / "orgs" / "h01" / "users" / "patient-zhang"
    assert (wallet / "patient-binding").read_text() == expected  # netgen puts it in her wallet
    (wallet / "patient-binding").unlink()
    with pytest.raises(RxClientError) as e:  # neither the secret nor her binding
        _session(home, as_="h01:patient-zhang")
    assert e.value.reason == "NO_SECRET"
    (wallet / "patient-binding").write_text(expected + "\n")
    (wallet / "patient-binding").chmod(0o600)
    s = _session(home, as_="h01:patient-zhang")
    try:
        assert s.gateway.default_transient["patient_binding"] == expected
        with pytest.raises(RxClientError) as e:
            _ = s.dx_key
        assert e.value.reason == "NO_SECRET"
    finally:
        s.close()
    for bad in (b"", b"\x00" * 31, b"x" * 16):
        with pytest.raises(RxClientError) as e:
            pseudonym(bad, "500103195803124428")
        assert e.value.reason == "NO_SECRET"
        with pytest.raises(RxClientError):
            dx_key(bad)
    for text, mode in (("zz" * 32, 0o600), (expected[:-2], 0o600), (expected, 0o644)):
        (wallet / "patient-binding").write_text(text)
        (wallet / "patient-binding").chmod(mode)
        with pytest.raises(RxClientError) as e:
            _session(home, as_="h01:patient-zhang")
        assert e.value.reason == "BAD_WALLET"


def test_a_patient_session_refused_for_her_binding_leaves_no_channel_open(
        net_home, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The binding was read after the gateway's channel to the peer was made: a session refused
    for it (NO_SECRET, BAD_WALLET) left that channel open for good -- the caller never held the
    session to close it, and a FHIR gateway building the session on each request leaked one per
    request. Now it is read first: no channel is made for a session that is refused."""
    import client.gateway

    made: list[Any] = []
    real = tls.secure_channel

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(client.gateway, "secure_channel", counting)
    home = _home(net_home, tmp_path)
    (home / "consortium-secret").unlink()
    wallet = home / "orgs" / "h01" / "users" / "patient-zhang"
    for binding in (None, "zz" * 32):
        (wallet / "patient-binding").unlink(missing_ok=True)
        if binding is not None:
            (wallet / "patient-binding").write_text(binding)
            (wallet / "patient-binding").chmod(0o600)
        with pytest.raises(RxClientError) as e:
            _session(home, as_="h01:patient-zhang")
        assert e.value.reason == ("NO_SECRET" if binding is None else "BAD_WALLET")
    assert made == []


def test_a_long_lived_session_reads_the_patient_directory_again_once_it_changed(net_home, tmp_path) -> None:
    """The FHIR gateway keeps one session per wallet for as long as it serves: a patient the
    HIS enrolled in HOME/patients.yaml after its first request was UNKNOWN_PATIENT until a
    restart (the directory was read once), and one the HIS removed still resolved."""
    from client.patients import write_directory

    zhang = {"name": "patient-zhang", "display_name": "Zhang Guilan", "id_number": "500103195803124428",
             "birth_date": "1958-03-12", "insurer": "ins01"}
    li = {"name": "patient-li", "display_name": "Li Wei", "id_number": "110101199003077777",
          "birth_date": "1990-03-07", "insurer": "ins01"}
    home = _home(net_home, tmp_path)
    write_directory(home, [zhang])
    s = _session(home)
    try:
        assert s.directory.resolve("patient-zhang").display_name == "Zhang Guilan"
        with pytest.raises(RxClientError) as e:
            s.directory.resolve("patient-li")
        assert e.value.reason == "UNKNOWN_PATIENT"
        write_directory(home, [zhang, li])  # the HIS enrols a patient while the session serves
        assert s.directory.resolve("patient-li").display_name == "Li Wei"
        write_directory(home, [li])  # and removes one
        with pytest.raises(RxClientError) as e:
            s.directory.resolve("patient-zhang")
        assert e.value.reason == "UNKNOWN_PATIENT"
        assert s.directory is s.directory  # unchanged: not read again
    finally:
        s.close()


class _ConfigAdmin(_Admin):
    """A peer answering Admin.Status with ``config`` (what a config update committed)."""

    def __init__(self, config: bytes) -> None:
        self.config = config
        self.asked: list[bool] = []
        self.down = False

    def Status(self, request: services_pb2.StatusRequest,
               context: grpc.ServicerContext) -> services_pb2.StatusResponse:
        self.asked.append(request.include_config)
        if self.down:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return services_pb2.StatusResponse(node="peer.h01", config=self.config if request.include_config else b"")


@pytest.fixture
def config_peer(net_home) -> Iterator[tuple[int, _ConfigAdmin]]:
    ndir = net_home.home / "nodes" / "peer.h01"
    admin = _ConfigAdmin(b"")
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    services_pb2_grpc.add_AdminServicer_to_server(admin, srv)
    port = srv.add_secure_port("127.0.0.1:0", tls.server_credentials(
        ndir / "cert.pem", ndir / "key.pem", ndir / "ca-bundle.pem"))
    srv.start()
    try:
        yield port, admin
    finally:
        srv.stop(None)


def test_keys_are_wrapped_under_the_configuration_in_force_at_the_peer(net_home, tmp_path, config_peer):
    """A revocation committed after the genesis reaches the client through its own peer's
    Admin.Status: no record key is wrapped for the revoked patient certificate; a peer that
    answers no configuration leaves the genesis one; another consortium's is BAD_CONFIG."""
    port, admin = config_peer
    genesis = load_network(net_home.home)
    patient_der = _pem_to_der(net_home.home / "orgs/h01/users/patient-zhang/cert.pem")
    later = config_pb2.ConsortiumConfig()
    later.CopyFrom(_revoking(genesis, "h01", patient_der).config)
    later.sequence = genesis.config.sequence + 1
    foreign = config_pb2.ConsortiumConfig()
    foreign.CopyFrom(later)
    foreign.consortium_id = "another"
    for served, outcome in ((b"", "OK"), (later.SerializeToString(), "REVOKED_CERT"),
                            (foreign.SerializeToString(), "BAD_CONFIG")):
        admin.config = served
        s = _session_to(net_home, tmp_path, port)
        try:
            if outcome == "OK":
                assert s.user_public_key("h01", "patient-zhang") is not None
            else:
                assert _refused(lambda s=s: s.user_public_key("h01", "patient-zhang")) == outcome  # type: ignore[misc]
        finally:
            s.close()
    assert admin.asked and all(admin.asked)


def test_a_session_asks_again_after_a_failure_and_after_its_ttl(net_home, tmp_path, config_peer):
    """A peer that did not answer is asked again on the next wrap (the genesis configuration is
    never kept in its place); an answer is kept CONFIG_TTL_MS, then asked for again."""
    from client.session import CONFIG_TTL_MS

    port, admin = config_peer
    genesis = load_network(net_home.home)
    configs = []
    for seq in (1, 2):
        c = config_pb2.ConsortiumConfig()
        c.CopyFrom(genesis.config)
        c.sequence = seq
        configs.append(c.SerializeToString())
    now = [NOW_MS]
    with _session_to(net_home, tmp_path, port, clock=lambda: now[0]) as s:
        admin.down = True
        assert s.current_network().config.sequence == 0  # genesis, for this call only
        admin.down, admin.config = False, configs[0]
        assert s.current_network().config.sequence == 1  # asked again at once
        admin.config = configs[1]
        now[0] += CONFIG_TTL_MS - 1
        assert s.current_network().config.sequence == 1  # kept
        admin.down = True
        now[0] += 2
        assert s.current_network().config.sequence == 1  # expired, peer down: the last answer
        admin.down = False
        assert s.current_network().config.sequence == 2  # asked again
