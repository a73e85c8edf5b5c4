"""FHIR gateway against hostile integrators: bodies, content types, HTTP-layer errors, ids,
connection bounds and slow clients; mapping of contradictory or out-of-range resources."""

from __future__ import annotations

import contextlib
import copy
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.errors import RxClientError
from client.fhir import mapping
from client.fhir.server import make_server, parse_body, public_message
from tests.client.fhirwire import exchange, outcome_code, tls
from tests.client.test_fhir import _bundle, _client, _mr
from tests.harness.servers import serving_fhir


def _serving(net_home: Any, **options: Any) -> contextlib.AbstractContextManager[int]:
    return serving_fhir(net_home.home, handshake_timeout_s=3.0, **options)


@pytest.fixture
def gw(net_home: Any) -> Iterator[tuple[int, Any]]:
    with _serving(net_home, request_deadline_s=1.5) as port:
        yield port, net_home


def _post(port: int, ctx: ssl.SSLContext, body: bytes, ctype: str | None = "application/fhir+json",
          extra: str = "") -> tuple[int, dict[str, Any], bytes]:
    hdr = "POST /fhir/MedicationRequest HTTP/1.1\r\nHost: localhost\r\n"
    if ctype is not None:
        hdr += f"Content-Type: {ctype}\r\n"
    hdr += extra or f"Content-Length: {len(body)}\r\n"
    return exchange(port, ctx, hdr.encode() + b"\r\n" + body)


def _deep(levels: int) -> bytes:
    inner: Any = "x"
    for _ in range(levels):
        inner = {"a": inner}
    return json.dumps({"resourceType": "MedicationRequest", "extension": inner}).encode()


@pytest.mark.parametrize("body", [
    b"[]", b"null", b'"MedicationRequest"', b"42", b"[" * 5000, _deep(100),
    json.dumps(_mr()).encode()[:-1] + b', "status": "active"}',
    b'{"resourceType": "MedicationRequest", "x": NaN}', b'{"resourceType": "MedicationRequest", "x": -Infinity}',
    b'{"resourceType": "\xff"}', json.dumps(_mr()).encode("utf-16"), json.dumps(_mr()).encode("utf-16-le"),
    json.dumps(_mr()).encode("utf-32"), json.dumps(_mr(), ensure_ascii=False).replace("zhang", "\ud800").encode(
        "utf-8", "surrogatepass"),
], ids=["list", "null", "string", "number", "deep-list", "deep-object", "duplicate-key", "nan",
        "infinity", "not-utf8", "utf-16", "utf-16-le", "utf-32", "utf8-surrogate"])
def test_bodies_that_are_not_one_plain_json_object_are_fhir_invalid(gw: Any, body: bytes) -> None:
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    status, answer, _ = _post(port, ctx, body)
    assert (status, outcome_code(answer)) == (400, "FHIR_INVALID")


def test_a_utf8_body_may_start_with_a_bom() -> None:
    assert parse_body(b"\xef\xbb\xbf" + json.dumps(_mr()).encode()) == _mr()


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_post_needs_a_json_content_type(gw: Any, ctype: str | None) -> None:
    """A browser's cross-site form post (text/plain, urlencoded) carrying JSON is refused unread."""
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    status, answer, _ = _post(port, ctx, json.dumps(_mr()).encode(), ctype)
    assert (status, outcome_code(answer)) == (415, "UNSUPPORTED_MEDIA_TYPE")


def test_chunked_or_lengthless_post_is_refused(gw: Any) -> None:
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    status, answer, _ = _post(port, ctx, b"5\r\nhello\r\n0\r\n\r\n", extra="Transfer-Encoding: chunked\r\n")
    assert (status, outcome_code(answer)) == (411, "LENGTH_REQUIRED")
    status, answer, _ = _post(port, ctx, b"", extra="Connection: close\r\n")
    assert (status, outcome_code(answer)) == (411, "LENGTH_REQUIRED")


def test_http_layer_errors_are_operation_outcomes(gw: Any) -> None:
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    status, answer, head = exchange(port, ctx, b"DELETE /fhir/MedicationRequest/RX-1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, outcome_code(answer)) == (405, "METHOD_NOT_ALLOWED")
    assert b"application/fhir+json" in head and b"Python" not in head
    status, answer, head = exchange(port, ctx, b"GARBAGE\r\n\r\n")
    assert (status, outcome_code(answer)) == (400, "BAD_REQUEST")
    status, answer, _ = exchange(port, ctx, b"GET /fhir/" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert (status, outcome_code(answer)) == (414, "TOO_LARGE")


def test_method_not_allowed_names_the_allowed_methods(gw: Any) -> None:
    """RFC 9110: a 405 answer carries Allow (a generic HTTP client reads it)."""
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    for method in (b"PUT", b"HEAD", b"OPTIONS"):
        status, _, head = exchange(port, ctx, method + b" /fhir/metadata HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405 and b"\r\nAllow: GET, POST\r\n" in head + b"\r\n", head[:300]


@pytest.mark.parametrize("rx_id", ["..%2F..%2Fetc%2Fpasswd", "..", "RX%00", "%E2%80%AE", "a" * 129])
def test_malformed_prescription_ids_are_refused_before_the_ledger(gw: Any, rx_id: str) -> None:
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    status, answer, _ = exchange(port, ctx, f"GET /fhir/MedicationRequest/{rx_id} HTTP/1.1\r\n\r\n".encode())
    assert (status, outcome_code(answer)) == (400, "FHIR_INVALID")
    dispense = {"resourceType": "MedicationDispense", "status": "completed",
                "medication": {"concept": {"coding": [{"code": "amlodipine"}]}},
                "subject": {"identifier": {"value": "p"}},
                "authorizingPrescription": [{"reference": "MedicationRequest/../../x"}]}
    data = json.dumps(dispense).encode()
    status, answer, _ = exchange(port, ctx, b"POST /fhir/MedicationDispense HTTP/1.1\r\nContent-Type: "
                                  b"application/fhir+json\r\nContent-Length: " + str(len(data)).encode()
                                  + b"\r\n\r\n" + data)
    assert (status, outcome_code(answer)) == (400, "FHIR_INVALID")


def test_absolute_and_versioned_prescription_references_name_the_prescription() -> None:
    """FHIR allows absolute and versioned references: the id is the segment after the type
    (the old split at the first '/' made ``//host/fhir/...`` the id)."""
    from fhir.resources.reference import Reference

    from client.fhir.server import _rx_ref

    for text in ("MedicationRequest/RX20261126-h01-0a1b2", "https://gw.h01.example/fhir/MedicationRequest/"
                 "RX20261126-h01-0a1b2", "MedicationRequest/RX20261126-h01-0a1b2/_history/3"):
        assert _rx_ref([Reference(reference=text)], "prescription") == "RX20261126-h01-0a1b2"
    for text in ("MedicationRequest/../../x", "https://h/fhir/MedicationRequest/", "a/b/c"):
        with pytest.raises(mapping.FhirError):
            _rx_ref([Reference(reference=text)], "prescription")


def test_unavailable_ledger_answer_names_no_internal_address(gw: Any) -> None:
    """No node runs: the session's peer is unreachable; the caller learns no host or port."""
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    status, answer, _ = exchange(port, ctx, b"GET /fhir/MedicationRequest/RX-1 HTTP/1.1\r\n\r\n")
    assert (status, outcome_code(answer)) == (503, "SERVICE_UNAVAILABLE")
    text = answer["issue"][0]["details"]["text"]
    assert "127.0.0.1" not in text and "ipv4" not in text


def test_public_message_hides_the_home_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    msg = public_message("BAD_WALLET", f"{home.resolve()}/orgs/h01/users/x/key.pem must be mode 0600", home)
    assert str(tmp_path) not in msg and msg.startswith("HOME/orgs/h01")


def test_connections_beyond_the_bound_get_503_and_slots_come_back(net_home: Any) -> None:
    with _serving(net_home, max_connections=4, request_deadline_s=60.0) as port:
        _bounded_connections(port, net_home)


def _bounded_connections(port: int, net_home: Any) -> None:
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    held = []
    try:
        for _ in range(4):  # max_connections=4: each holds a worker with a half-sent request
            s = tls(port, ctx)
            s.sendall(b"GET /fhir/metadata HTTP/1.1\r\n")
            held.append(s)
        time.sleep(0.2)
        # the fifth is answered, not just closed: 503, Retry-After, an OperationOutcome
        status, answer, head = exchange(port, ctx, b"GET /fhir/metadata HTTP/1.1\r\n\r\n")
        assert (status, outcome_code(answer)) == (503, "TOO_MANY_CONNECTIONS")
        assert b"\r\nRetry-After: 2\r\n" in head + b"\r\n" and b"application/fhir+json" in head, head
        assert "at most 4 connections at once" in answer["issue"][0]["details"]["text"]
    finally:
        for s in held:
            s.close()
    for _ in range(50):  # bounded: the held workers notice the closes and free their slots
        try:
            status, answer, _ = exchange(port, ctx, b"GET /fhir/metadata HTTP/1.1\r\n\r\n")
        except (OSError, IndexError, ValueError):
            time.sleep(0.1)
            continue
        if status == 503:  # a held worker has not noticed its close yet
            time.sleep(0.1)
            continue
        assert status == 200 and answer["resourceType"] == "CapabilityStatement"
        return
    raise AssertionError("the gateway never served again after the held connections closed")


def test_dripping_client_is_cut_at_the_request_deadline(gw: Any) -> None:
    """One header line every 0.3 s never trips the 30 s read timeout; the 1.5 s deadline cuts it."""
    port, net_home = gw
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    with tls(port, ctx) as s:
        s.sendall(b"GET /fhir/metadata HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 10:
            try:
                s.sendall(b"X-Drip: 1\r\n")
                s.settimeout(0.3)
                try:
                    if s.recv(1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
            except OSError:
                closed = True
                break
        assert closed, "a client dripping headers held its connection for 10 s"
        assert time.monotonic() - start < 6


# ---------------------------------------------------------------- mapping


def _reason(raw: Any) -> str:
    with pytest.raises(mapping.FhirError) as e:
        mapping.issue_request_from_fhir(raw)
    return e.value.reason


def test_bundle_lines_must_not_contradict_the_first() -> None:
    for change in (lambda r: r["dispenseRequest"].update(expectedSupplyDuration={"value": 7, "unit": "d"}),
                   lambda r: r["dispenseRequest"].update(dispenser={"identifier": {"value": "p02"}}),
                   lambda r: r["reason"][0]["concept"]["coding"][0].update(code="E11"),
                   lambda r: r.update(note=[{"text": "other"}]),
                   lambda r: r["dispenseRequest"].update(numberOfRepeatsAllowed=2)):
        second = _mr("benidipine", 1)
        change(second)
        assert _reason(_bundle(_mr(), second)) == "FHIR_INVALID"
    # a later line may leave shared elements out: it inherits the first line's
    terse = copy.deepcopy(_mr("benidipine", 1))
    del terse["reason"], terse["note"], terse["dispenseRequest"]["dispenser"]
    req = mapping.issue_request_from_fhir(_bundle(_mr(), terse))
    assert (req.diagnosis, req.pharmacy, [d.qty for d in req.drugs]) == ("I10", "p01", [2, 1])


def test_acute_bundle_lines_may_carry_their_own_notes() -> None:
    """Outside a continuous course a note is a per-drug instruction the ledger does not record:
    lines that differ in it (or where only a later line has one) are one valid prescription."""
    acute: dict[str, Any] = {"courseOfTherapyType": {"coding": [{"code": "acute"}]}}
    first = _mr(**acute, note=[{"text": "after meals"}])
    req = mapping.issue_request_from_fhir(_bundle(first, _mr("benidipine", 1, **acute, note=[{"text": "at bedtime"}])))
    assert ([d.qty for d in req.drugs], req.long_rx, req.chronic_reason) == ([2, 1], False, "")
    bare = _mr(**acute)
    del bare["note"]
    req = mapping.issue_request_from_fhir(_bundle(bare, _mr("benidipine", 1, **acute, note=[{"text": "x"}])))
    assert [d.qty for d in req.drugs] == [2, 1]


def test_counts_must_be_whole_and_in_range() -> None:
    assert _reason(_mr(qty=1e308)) == "FHIR_INVALID"
    assert _reason(_mr(qty=10 ** 40)) == "FHIR_INVALID"
    assert _reason(_mr(qty=2 ** 31)) == "FHIR_INVALID"
    assert mapping.issue_request_from_fhir(_mr(qty=2 ** 31 - 1)).drugs[0].qty == 2 ** 31 - 1
    days = _mr()
    days["dispenseRequest"]["expectedSupplyDuration"] = {"value": 1e20, "unit": "d"}
    assert _reason(days) == "FHIR_INVALID"


def _repeats(value: Any) -> dict[str, Any]:
    res = _mr()
    res["dispenseRequest"].update(numberOfRepeatsAllowed=value, dispenseInterval={"value": 28, "unit": "d"})
    return res


@pytest.mark.parametrize("value", [True, False, "2", 1.0], ids=["true", "false", "string", "float"])
def test_repeats_allowed_must_be_a_json_integer(value: Any) -> None:
    """fhir.resources takes ``true`` as 1 and ``"2"`` as 2 for an unsignedInt: an HIS sending
    "repeats allowed: true" got a prescription with a second fill. Refused, on every line."""
    assert _reason(_repeats(value)) == "FHIR_INVALID"
    assert _reason(_bundle(_repeats(value), _mr("benidipine", 1))) == "FHIR_INVALID"
    assert _reason(_bundle(_repeats(int(value)), _repeats(value))) == "FHIR_INVALID"  # a later line agreeing
    assert mapping.issue_request_from_fhir(_repeats(1)).max_fills == 2
    assert mapping.issue_request_from_fhir(_repeats(0)).max_fills == 1


def _validity(start: str, end: str) -> Any:
    res = _mr()
    res["dispenseRequest"]["validityPeriod"] = {"start": start, "end": end}
    return mapping.issue_request_from_fhir(res).valid_days


def test_validity_days_are_counted_in_china_time() -> None:
    """An integration engine that sends every dateTime in UTC: one China day (27 November,
    00:00-23:59:59 +08:00) spans the 26th and the 27th UTC; counted by its UTC dates it became a
    2-day validity (and three China days four, refused VALIDITY_LIMIT by the contract)."""
    assert _validity("2026-11-26T16:00:00Z", "2026-11-27T15:59:59Z") == 1
    assert _validity("2026-11-26T16:00:00Z", "2026-11-29T15:59:59Z") == 3
    assert _validity("2026-11-27T00:00:00+08:00", "2026-11-27T23:59:59+08:00") == 1
    assert _validity("2026-11-26T11:00:00-05:00", "2026-11-28T10:59:59-05:00") == 2  # 27th 00:00 .. 28th 23:59
    assert _validity("2026-11-25", "2026-11-27") == 3  # dates are days as they are


def test_partial_dates_non_objects_and_deep_resources_are_fhir_invalid() -> None:
    partial = _mr()
    partial["dispenseRequest"]["validityPeriod"] = {"start": "2026", "end": "2026-11"}
    assert _reason(partial) == "FHIR_INVALID"
    raw: Any
    for raw in ([], None, "MedicationRequest", 5):
        assert _reason(raw) == "FHIR_INVALID"
    ext: dict[str, Any] = {"url": "u", "valueString": "x"}
    for _ in range(400):
        ext = {"url": "u", "extension": [ext]}
    assert _reason(_mr(extension=[ext])) == "FHIR_INVALID"


def test_server_certificate_is_the_chosen_peer_and_only_a_peer(net_home: Any) -> None:
    """`fhir serve --node peer.p01`: a pharmacy presents its own peer's certificate, never another
    organisation's node key; a name that is no peer (or a path) is refused."""
    for bad in ("../../orgs/h01", "orderer.ins01", "peer.nope"):
        with pytest.raises(RxClientError) as e:
            make_server(net_home.home, "127.0.0.1", 0, server_node=bad)
        assert e.value.reason == "BAD_ARGUMENTS"
    with serving_fhir(net_home.home, server_node="peer.p01") as port:
        ctx = _client(net_home, net_home.user_dir("p01", "pharm-wang"))
        with tls(port, ctx) as s:
            cert = s.getpeercert()
    assert cert is not None
    names = {str(attr[1]) for rdn in cert["subject"] for attr in rdn if attr[0] == "commonName"}
    assert names == {"peer.p01"}
