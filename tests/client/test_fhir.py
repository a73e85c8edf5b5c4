"""FHIR R5 mapping, validation and the mutual-TLS HTTP gateway (no ledger calls needed)."""

from __future__ import annotations

import copy
import http.client
import json
import shutil
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from client.fhir import mapping
from tests.harness.servers import serving_fhir

AMLO = "XC08CAA001A001010100001"


def _mr(code: str = AMLO, qty: Any = 2, **over: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "subject": {"identifier": {"system": "urn:rxchain:patient", "value": "patient-zhang"}},
        "reason": [{"concept": {"coding": [{"system": mapping.ICD10_SYSTEM, "code": "I10"}]}}],
        "medication": {"concept": {"coding": [{"system": mapping.DRUG_SYSTEM, "code": code}]}},
        "courseOfTherapyType": {"coding": [{"code": "continuous"}]},
        "note": [{"text": "stable hypertension"}],
        "dispenseRequest": {
            "quantity": {"value": qty, "unit": "box"},
            "expectedSupplyDuration": {"value": 28, "unit": "d"},
            "validityPeriod": {"start": "2026-11-25", "end": "2026-11-27"},
            "dispenser": {"identifier": {"system": "urn:rxchain:org", "value": "p01"}},
        },
    }
    res.update(over)
    return res


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}


def test_bundle_maps_to_issue_request():
    req = mapping.issue_request_from_fhir(_bundle(_mr(), _mr("benidipine", 1)))
    assert req.patient == "patient-zhang" and req.diagnosis == "I10"
    assert [(d.drug, d.qty) for d in req.drugs] == [(AMLO, 2), ("benidipine", 1)]
    assert (req.days, req.long_rx, req.chronic_reason, req.valid_days, req.pharmacy) == (
        28, True, "stable hypertension", 3, "p01")
    assert (req.max_fills, req.fill_interval_days) == (1, 0)


def test_single_request_with_repeats():
    mr = _mr()
    mr["dispenseRequest"]["numberOfRepeatsAllowed"] = 2
    mr["dispenseRequest"]["dispenseInterval"] = {"value": 28, "unit": "d"}
    req = mapping.issue_request_from_fhir(mr)
    assert (req.max_fills, req.fill_interval_days) == (3, 28)


def _reason(raw: Any) -> str:
    with pytest.raises(mapping.FhirError) as e:
        mapping.issue_request_from_fhir(raw)
    return e.value.reason


def test_bad_resources_are_rejected_with_reasons():
    bad_icd = _mr()
    bad_icd["reason"][0]["concept"]["coding"][0]["code"] = "hypertension"
    assert _reason(bad_icd) == "BAD_DIAGNOSIS"
    assert _reason(_mr("Amlodipine 5 mg")) == "UNKNOWN_DRUG"
    assert _reason(_mr("XC08CAA001A00101010000")) == "UNKNOWN_DRUG"  # 22 chars
    no_status = _mr()
    del no_status["status"]
    assert _reason(no_status) == "FHIR_INVALID"
    assert _reason(_mr(bogus=1)) == "FHIR_INVALID"
    assert _reason(_mr(qty=1.5)) == "FHIR_INVALID"
    assert _reason(_mr(qty=0)) == "FHIR_INVALID"
    assert _reason({"resourceType": "Patient", "id": "x"}) == "FHIR_INVALID"
    assert _reason(_bundle(*[_mr() for _ in range(6)])) == "TOO_MANY_ITEMS"
    assert _reason(_mr(status="draft")) == "FHIR_INVALID"
    no_subject_id = _mr(subject={"reference": "Patient/1"})
    assert _reason(no_subject_id) == "FHIR_INVALID"
    weeks = _mr()
    weeks["dispenseRequest"]["expectedSupplyDuration"] = {"value": 4, "unit": "wk", "code": "wk"}
    assert _reason(weeks) == "FHIR_INVALID"
    assert _reason(_bundle({"resourceType": "Patient", "id": "p"})) == "FHIR_INVALID"


def test_claim_and_response_carry_exact_amounts():
    rec = {"claim_id": "CLM-RX-1-1-1", "rx_id": "RX-1", "patient": "ab" * 32, "medfee_fen": 10000,
           "fund_fen": 7225, "account_fen": 1775, "cash_fen": 1000, "deductible_fen": 0,
           "status": "SETTLED", "time_ms": 1_764_000_000_000}
    bundle = json.loads(mapping.dumps(mapping.claim_and_response(rec, "ins01")))
    claim, resp = (e["resource"] for e in bundle["entry"])
    assert claim["resourceType"] == "Claim" and claim["total"]["value"] == 100.0
    totals = {t["category"]["text"]: t["amount"]["value"] for t in resp["total"]}
    assert totals == {"medfee": 100.0, "fund": 72.25, "deductible": 0.0,
                      "personal account": 17.75, "cash": 10.0}
    assert b'"value":72.25' in mapping.dumps(mapping.claim_and_response(rec, "ins01"))


def test_dispense_and_request_resources_validate():
    content = {"rx_id": "RX-1", "days": 28, "diagnosis": "I10",
               "drugs": [{"code": AMLO, "qty": 2, "name": "Amlodipine", "days": 28}]}
    meta = {"rx_id": "RX-1", "status": "DISPENSED", "patient": "ab" * 32, "content": content,
            "issued_ms": 1_764_000_000_000}
    disp = mapping.medication_dispense(meta, content, {"fill": 1, "tx_id": "t" * 64},
                                       ["TC1", "TC2"], "p01", "pharm-wang")
    res = disp["entry"][0]["resource"]
    assert res["status"] == "completed" and res["quantity"]["value"] == 2
    assert [e["valueString"] for e in res["extension"]] == ["TC1", "TC2"]
    reqs = mapping.medication_requests(meta)
    assert reqs["entry"][0]["resource"]["status"] == "completed"


def test_operation_outcome_carries_reason():
    oo = mapping.operation_outcome("NO_KEY_GRANT", "denied")
    mapping.validate_resource(oo)
    assert oo["issue"][0]["details"]["coding"][0]["code"] == "NO_KEY_GRANT"


# ---------------------------------------------------------------- the HTTPS gateway


@pytest.fixture
def gateway(net_home) -> Iterator[tuple[int, Any]]:
    with serving_fhir(net_home.home, handshake_timeout_s=3.0) as port:
        yield port, net_home


def _client(net_home, cert_dir) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(net_home.ca_bundle_path))
    if cert_dir is not None:
        ctx.load_cert_chain(str(cert_dir / "cert.pem"), str(cert_dir / "key.pem"))
    return ctx


def _request(port, ctx, method, path, body=None, timeout=10.0):
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/fhir+json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_gateway_requires_client_certificate(gateway):
    port, net_home = gateway
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _request(port, _client(net_home, None), "GET", "/fhir/metadata")


def test_gateway_metadata_and_validation_errors(gateway):
    port, net_home = gateway
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    status, body = _request(port, ctx, "GET", "/fhir/metadata")
    assert status == 200 and body["resourceType"] == "CapabilityStatement"
    bad = copy.deepcopy(_mr())
    del bad["intent"]
    status, body = _request(port, ctx, "POST", "/fhir/MedicationRequest", bad)
    assert status == 400 and body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["details"]["coding"][0]["code"] == "FHIR_INVALID"
    status, body = _request(port, ctx, "POST", "/fhir/Claim", {"resourceType": "Claim"})
    assert status == 400


def test_gateway_refuses_certificate_without_wallet(gateway):
    port, net_home = gateway
    ctx = _client(net_home, net_home.home / "nodes" / "peer.h01")
    status, body = _request(port, ctx, "POST", "/fhir/MedicationRequest", _mr())
    assert status == 403
    assert body["issue"][0]["details"]["coding"][0]["code"] == "NO_WALLET"


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_wallet_taken_out_of_home_no_longer_serves_its_certificate(net_home, tmp_path, change):
    """The certificate must be a wallet's in HOME on every request, not just the first: an
    offboarded member's wallet removed (or its certificate replaced) while the gateway runs
    was still served from the session cached for it, until a restart."""
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    with serving_fhir(home, handshake_timeout_s=3.0) as port:
        status, body = _request(port, ctx, "GET", "/fhir/MedicationRequest/RX-1", timeout=10)
        assert body["issue"][0]["details"]["coding"][0]["code"] != "NO_WALLET"  # served (no ledger runs)
        if change == "removed":
            shutil.rmtree(wallet)
        else:
            shutil.copyfile(home / "orgs" / "h01" / "users" / "nurse-liu" / "cert.pem", wallet / "cert.pem")
        status, body = _request(port, ctx, "GET", "/fhir/MedicationRequest/RX-1", timeout=10)
    assert (status, body["issue"][0]["details"]["coding"][0]["code"]) == (403, "NO_WALLET")


def test_idle_connection_does_not_stall_the_gateway(gateway):
    """A TCP connection that never starts TLS must not block other clients (handshake off accept)."""
    port, net_home = gateway
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(2)]
    try:
        for _ in range(3):
            status, body = _request(port, ctx, "GET", "/fhir/metadata", timeout=5)
            assert status == 200 and body["resourceType"] == "CapabilityStatement"
        # the idle connections are dropped once the (3 s) handshake timeout passes
        for sock in idle:
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("value", ["-1", "abc", "+5", "1_0", "0x10", "99999999999", "1, 1"])
def test_bad_content_length_is_refused(gateway, value):
    port, net_home = gateway
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    try:
        conn.putrequest("POST", "/fhir/MedicationRequest")
        conn.putheader("Content-Type", "application/fhir+json")
        conn.putheader("Content-Length", value)
        conn.endheaders(b"{}")
        resp = conn.getresponse()
        status, body = resp.status, json.loads(resp.read())
    finally:
        conn.close()
    assert status == 400 and body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["details"]["coding"][0]["code"] == "BAD_CONTENT_LENGTH"


def test_oversized_content_length_is_refused_unread(gateway):
    port, net_home = gateway
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
    try:
        conn.putrequest("POST", "/fhir/MedicationRequest")
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders(b"{}")
        resp = conn.getresponse()
        status, body = resp.status, json.loads(resp.read())
    finally:
        conn.close()
    assert status == 413 and body["issue"][0]["details"]["coding"][0]["code"] == "TOO_LARGE"


@pytest.mark.parametrize(("value", "ok"), [
    ("RX-20261126-0001", True), ("RX.1", True), ("rx_2", True), ("-lead", True), ("A" * 64, True),
    ("A" * 65, False), ("RX 1", False), ("RX/1", False), ("", False), ("处方1", False),
    ("..", False), (".", False), ("...", False),
])
def test_prescription_ids_in_paths_and_references_follow_the_contract(value: str, ok: bool) -> None:
    """One issued with ``rx issue --rx-id RX.1`` is reachable through FHIR too (the gateway's
    own pattern refused ``.``, which the contract accepts)."""
    from client.fhir import mapping
    from client.fhir.server import _rx_id

    if ok:
        assert _rx_id(value) == value
    else:
        with pytest.raises(mapping.FhirError):
            _rx_id(value)
