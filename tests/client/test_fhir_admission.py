"""FHIR gateway connection admission: per-source bounds, 503 + Retry-After over the bound, and
prompt closes when not even a refusal can be afforded. Linux routes all of 127.0.0.0/8 to the
loopback interface, so a test client binds to 127.0.0.2 (or .3) to stand for another host; the
gateway counts the whole loopback as one source (any local process can pick its loopback
address), so those tests serve with ``source_key=str`` (each address its own source)."""

from __future__ import annotations

import json
import select
import socket
import ssl
import time
from typing import Any

import pytest

from client.errors import RxClientError
from client.fhir.admission import LOOPBACK, Admission, AdmissionLimits, Ticket, Verdict, source_of
from client.fhir.server import make_server
from tests.client.fhirwire import exchange, outcome_code, tcp, tls
from tests.client.test_fhir import _client
from tests.harness.servers import serving_fhir

# The first bytes of a TLS record carrying a ClientHello, and then nothing: a handshake
# that never completes.
HALF_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
METADATA = b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _closed_within(socks: list[socket.socket], seconds: float, enough: int | None = None) -> list[socket.socket]:
    """The sockets of ``socks`` the server has closed (EOF or reset) within ``seconds`` (or
    as soon as ``enough`` of them are)."""
    closed: list[socket.socket] = []
    open_ = list(socks)
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline and (enough is None or len(closed) < enough):
        readable, _, _ = select.select(open_, [], [], max(0.0, deadline - time.monotonic()))
        for s in readable:
            try:
                data = s.recv(1)
            except OSError:  # reset: the server closed with our bytes unread
                data = b""
            assert data == b"", "the server sent bytes before any handshake"
            closed.append(s)
            open_.remove(s)
    return closed


def _held_request(port: int, ctx: ssl.SSLContext, source: str) -> ssl.SSLSocket:
    """A served connection holding its worker: TLS done, half a request sent. The gateway
    admits a connection at accept, before its worker does the handshake, so once this
    returns the connection holds its slot (no need to wait)."""
    s = tls(port, ctx, source=source)
    s.sendall(b"GET /fhir/metadata HTTP/1.1\r\n")
    return s


def test_half_handshakes_from_one_address_do_not_lock_out_another(net_home: Any) -> None:
    """32 connections from 127.0.0.1 that never finish their TLS handshake (a local process
    could open them) held all 32 slots for the handshake timeout: now 127.0.0.1 holds at most
    8, a client from 127.0.0.2 is served meanwhile, and the rest are closed at once (two after
    the refusal deadline: their handshake never completes, so no 503 can be sent)."""
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    with serving_fhir(net_home.home, handshake_timeout_s=60.0, refusal_deadline_s=1.0, source_key=str) as port:
        stuck: list[socket.socket] = []
        try:
            for _ in range(32):
                s = tcp(port, "127.0.0.1")
                s.sendall(HALF_HELLO)
                stuck.append(s)
            closed = _closed_within(stuck, 1.0)  # closed at accept: no slot, no refusal slot
            assert len(closed) >= 22, len(closed)
            for _ in range(3):
                status, answer, _ = exchange(port, ctx, METADATA, "127.0.0.2")
                assert status == 200 and answer["resourceType"] == "CapabilityStatement"
            closed += _closed_within([s for s in stuck if s not in closed], 4.0, enough=24 - len(closed))
            assert len(closed) == 24, len(closed)
            # 127.0.0.1 holds exactly its 8 slots, for the handshake timeout
            assert _closed_within([s for s in stuck if s not in closed], 0.5) == []
        finally:
            for s in stuck:
                s.close()


def test_a_source_over_its_share_gets_503_while_others_are_served(net_home: Any) -> None:
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    with serving_fhir(net_home.home, max_per_source=2, handshake_timeout_s=5.0, source_key=str) as port:
        held = [_held_request(port, ctx, "127.0.0.1") for _ in range(2)]
        try:
            status, answer, head = exchange(port, ctx, METADATA, "127.0.0.1")
            assert (status, outcome_code(answer)) == (503, "TOO_MANY_CONNECTIONS")
            assert b"\r\nRetry-After: 2\r\n" in head + b"\r\n" and b"\r\nConnection: close\r\n" in head + b"\r\n"
            assert "at most 2 connections from one address" in answer["issue"][0]["details"]["text"]
            # a POST over the bound: its body is read and dropped, the 503 arrives intact
            body = json.dumps({"resourceType": "MedicationRequest", "note": [{"text": "x" * 200_000}]}).encode()
            status, answer, _ = exchange(port, ctx, b"POST /fhir/MedicationRequest HTTP/1.1\r\nContent-Type: "
                                          b"application/fhir+json\r\nContent-Length: " + str(len(body)).encode()
                                          + b"\r\n\r\n" + body, "127.0.0.1")
            assert (status, outcome_code(answer)) == (503, "TOO_MANY_CONNECTIONS")
            # a client waiting for 100 Continue gets the 503 at once, its body unsent
            status, answer, _ = exchange(port, ctx, b"POST /fhir/MedicationRequest HTTP/1.1\r\nContent-Type: "
                                          b"application/fhir+json\r\nContent-Length: 100\r\n"
                                          b"Expect: 100-continue\r\n\r\n", "127.0.0.1")
            assert (status, outcome_code(answer)) == (503, "TOO_MANY_CONNECTIONS")
            status, answer, _ = exchange(port, ctx, METADATA, "127.0.0.2")
            assert status == 200 and answer["resourceType"] == "CapabilityStatement"
        finally:
            for s in held:
                s.close()


def test_without_a_refusal_slot_the_connection_is_closed_promptly(net_home: Any) -> None:
    """One slot, taken; 127.0.0.1's two refusal slots held by handshakes that never finish:
    its next connection is closed at accept (no TLS, so no HTTP answer), long before any
    deadline; another address still gets its 503."""
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    with serving_fhir(net_home.home, max_connections=1, handshake_timeout_s=30.0,
                      refusal_deadline_s=30.0, source_key=str) as port:
        held = [_held_request(port, ctx, "127.0.0.3")]
        stuck: list[socket.socket] = []
        try:
            for _ in range(2):
                s = tcp(port, "127.0.0.1")
                s.sendall(HALF_HELLO)
                stuck.append(s)
            time.sleep(0.2)
            assert _closed_within(stuck, 0.5) == [], "the refusals should wait for their handshakes"
            start = time.monotonic()
            with pytest.raises(OSError):  # closed during the handshake
                tls(port, ctx, source="127.0.0.1").close()
            assert time.monotonic() - start < 5.0
            status, answer, _ = exchange(port, ctx, METADATA, "127.0.0.2")
            assert (status, outcome_code(answer)) == (503, "TOO_MANY_CONNECTIONS")
        finally:
            for s in held + stuck:
                s.close()


def test_admission_bookkeeping() -> None:
    adm = Admission(AdmissionLimits(max_connections=3, max_per_source=2, max_refusals=2,
                                    max_refusals_per_source=1))
    a1, a2 = adm.admit("a"), adm.admit("a")
    assert a1 == a2 == Ticket("a", Verdict.SERVE)
    a3 = adm.admit("a")  # a's share is taken, b could still be served: a refusal slot
    assert a3 == Ticket("a", Verdict.REFUSE, per_source=True)
    assert adm.admit("a") == Ticket("a", Verdict.CLOSE, per_source=True)  # a's refusal share too
    b1 = adm.admit("b")
    assert b1 == Ticket("b", Verdict.SERVE) and adm.counts() == (3, 1)
    b2 = adm.admit("b")  # every slot is taken
    assert b2 == Ticket("b", Verdict.REFUSE, per_source=False)
    assert adm.admit("c") == Ticket("c", Verdict.CLOSE)  # and every refusal slot
    for t in (a1, a3, b2, Ticket("c", Verdict.CLOSE)):
        adm.release(t)
    assert adm.counts() == (2, 0)
    c1 = adm.admit("c")
    assert c1 == Ticket("c", Verdict.SERVE)
    for t in (a2, b1, c1):
        adm.release(t)
    assert adm.counts() == (0, 0)
    assert adm.admit("d") == Ticket("d", Verdict.SERVE)  # nothing leaked
    with pytest.raises(ValueError):
        AdmissionLimits(max_connections=4, max_per_source=5)
    with pytest.raises(ValueError):
        AdmissionLimits(max_refusals=0, max_refusals_per_source=0)
    assert AdmissionLimits.for_gateway(4, 8).max_per_source == 4


def test_bad_connection_bounds_are_bad_arguments(net_home: Any) -> None:
    for max_connections, max_per_source in ((0, 8), (32, 0)):
        with pytest.raises(RxClientError) as e:
            make_server(net_home.home, "127.0.0.1", 0, max_connections=max_connections,
                        max_per_source=max_per_source)
        assert e.value.reason == "BAD_ARGUMENTS"


@pytest.mark.parametrize(("address", "source"), [
    ("127.0.0.1", LOOPBACK),
    ("127.0.0.2", LOOPBACK),  # any local process can connect from any of 127.0.0.0/8
    ("127.255.255.254", LOOPBACK),
    ("::1", LOOPBACK),
    ("::ffff:127.0.0.9", LOOPBACK),
    ("::ffff:10.1.2.3", "10.1.2.3"),  # an IPv4-mapped address is that IPv4 address
    ("10.1.2.3", "10.1.2.3"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # one host is routinely given a whole /64
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not-an-address", "not-an-address"),
])
def test_sources_are_hosts_not_address_spellings(address: str, source: str) -> None:
    assert source_of(address) == source


def test_another_loopback_address_is_not_another_source(net_home: Any) -> None:
    """A local process holding its share from 127.0.0.1 could take every other slot from
    127.0.0.2, .3, ... (Linux routes all of 127.0.0.0/8 to the loopback); by default the whole
    loopback is one source, so its next connection from 127.0.0.2 is refused like the others."""
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    with serving_fhir(net_home.home, max_per_source=2, handshake_timeout_s=5.0) as port:
        held = [_held_request(port, ctx, "127.0.0.1") for _ in range(2)]
        try:
            for source in ("127.0.0.2", "127.0.0.3"):
                status, answer, _ = exchange(port, ctx, METADATA, source)
                assert (status, outcome_code(answer)) == (503, "TOO_MANY_CONNECTIONS"), (source, status, answer)
                assert "at most 2 connections from one address" in answer["issue"][0]["details"]["text"]
        finally:
            for s in held:
                s.close()
        for _ in range(50):  # the share is free again once the workers saw the closes (bounded)
            status, answer, _ = exchange(port, ctx, METADATA, "127.0.0.2")
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200 and answer["resourceType"] == "CapabilityStatement"
