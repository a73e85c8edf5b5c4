"""The FHIR gateway against the real network: an HIS issues, an ERP dispenses, the insurer settles."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from client.rxops import RxOperations
from client.session import Session
from tests.e2e.conftest import Net
from tests.harness.servers import serving_fhir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fhir(net: Net) -> Iterator[int]:
    with serving_fhir(net.home) as port:
        yield port


def _get(net: Net, port: int, who: str, path: str) -> tuple[int, Any]:
    return _post(net, port, who, path, None)


def _post(net: Net, port: int, who: str, path: str,
          body: dict[str, Any] | None) -> tuple[int, Any]:
    org, user = who.split(":")
    wallet = net.home / "orgs" / org / "users" / user
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(net.home / "ca-bundle.pem"))
    ctx.load_cert_chain(str(wallet / "cert.pem"), str(wallet / "key.pem"))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=60)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/fhir+json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _line(code: str, qty: int) -> dict[str, Any]:
    return {"resource": {
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "subject": {"identifier": {"value": "patient-zhang"}},
        "reason": [{"concept": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                            "code": "I10"}]}}],
        "medication": {"concept": {"coding": [{"code": code}]}},
        "dispenseRequest": {"quantity": {"value": qty},
                            "expectedSupplyDuration": {"value": 7, "unit": "d"},
                            "validityPeriod": {"start": "2026-01-01", "end": "2026-01-02"},
                            "dispenser": {"identifier": {"value": "p01"}}}}}


def test_issue_dispense_settle_through_fhir(net: Net, fhir: int):
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [_line("amlodipine", 2), _line("XC08CAB037A001020180517", 2)]}
    status, body = _post(net, fhir, "h01:dr-jiang", "/fhir/MedicationRequest", bundle)
    assert status == 201, body
    entries = [e["resource"] for e in body["entry"]]
    assert [e["dispenseRequest"]["quantity"]["value"] for e in entries] == [2, 2]
    rx_id = entries[0]["identifier"][0]["value"]
    assert entries[0]["status"] == "active"
    status, body = _get(net, fhir, "h01:patient-zhang", f"/fhir/MedicationRequest/{rx_id}")
    assert status == 200 and len(body["entry"]) == 2
    assert body["entry"][0]["resource"]["reason"][0]["concept"]["coding"][0]["code"] == "I10"
    ops = RxOperations(Session(net.home, "p01:pharm-wang"))
    try:
        ops.review(rx_id, True)
    finally:
        ops.s.close()
    net.trace_codes.append(f"FH{rx_id[-10:]}")
    dispense = {"resourceType": "MedicationDispense", "status": "completed",
                "medication": {"concept": {"coding": [{"code": "amlodipine"}]}},
                "subject": {"identifier": {"value": "patient-zhang"}},
                "authorizingPrescription": [{"identifier": {"value": rx_id}}],
                "extension": [{"url": "urn:rxchain:rxTraceCode", "valueString": f"FH{rx_id[-10:]}"}]}
    status, body = _post(net, fhir, "p01:pharm-wang", "/fhir/MedicationDispense", dispense)
    assert status == 201, body
    disp = [e["resource"] for e in body["entry"]]
    assert {d["status"] for d in disp} == {"completed"} and len(disp) == 2
    # sent again (an answer lost): the fill on the ledger, the same Bundle, nothing dispensed twice
    status, again = _post(net, fhir, "p01:pharm-wang", "/fhir/MedicationDispense", dispense)
    assert (status, again) == (200, body)
    other_boxes = {**dispense, "extension": []}
    status, refused = _post(net, fhir, "p01:pharm-wang", "/fhir/MedicationDispense", other_boxes)
    assert status == 409 and refused["issue"][0]["details"]["coding"][0]["code"] == "ALREADY_DISPENSED"
    # as many boxes, another one: the contract's trace_fills says it is not in fill 1
    swapped = {**dispense, "extension": [{"url": "urn:rxchain:rxTraceCode", "valueString": f"FX{rx_id[-10:]}"}]}
    status, refused = _post(net, fhir, "p01:pharm-wang", "/fhir/MedicationDispense", swapped)
    assert status == 409 and refused["issue"][0]["details"]["coding"][0]["code"] == "ALREADY_DISPENSED"
    assert "recorded in no fill" in refused["issue"][0]["details"]["text"], refused
    claim = {"resourceType": "Claim", "status": "active", "use": "claim",
             "created": "2026-11-25T10:00:00Z",
             "type": {"coding": [{"code": "pharmacy"}]},
             "patient": {"identifier": {"value": "patient-zhang"}},
             "prescription": {"identifier": {"value": rx_id}}}
    # a total the contract does not compute: evaluated first, refused, nothing settled
    status, body = _post(net, fhir, "ins01:clerk-zhao", "/fhir/Claim", {**claim, "total": {"value": 1.0}})
    assert status == 422 and body["issue"][0]["details"]["coding"][0]["code"] == "AMOUNT_MISMATCH"
    status, body = _post(net, fhir, "ins01:clerk-zhao", "/fhir/Claim", claim)
    assert status == 201, body
    status, again = _post(net, fhir, "ins01:clerk-zhao", "/fhir/Claim", {**claim, "total": {"value": 90.0}})
    assert (status, again) == (200, body)
    claim_id = body["entry"][0]["resource"]["id"]
    status, read = _get(net, fhir, "ins01:clerk-zhao", f"/fhir/Claim/{claim_id}")
    assert (status, read) == (200, body["entry"][0]["resource"])
    # a claim is told to its readers only: a doctor of another hospital than her enrolling one
    # and pharmacies get for it exactly what they get for an id never settled
    missing = f"CLM-{rx_id}-7-1"
    for who, code in (("h02:dr-zhou", 404), ("p02:pharm-chen", 403), ("p01:pharm-wang", 403)):
        seen = [_get(net, fhir, who, f"/fhir/Claim/{cid}") for cid in (claim_id, missing)]
        assert seen[0][0] == seen[1][0] == code, (who, seen)
        assert json.dumps(seen[0][1]).replace(claim_id, "ID") == json.dumps(seen[1][1]).replace(missing, "ID")
    fewer = {**claim, "item": [{"sequence": 1, "productOrService": {"coding": [{"code": "XC08CAB037A001020180517"}]},
                                "quantity": {"value": 1}}]}
    status, refused = _post(net, fhir, "ins01:clerk-zhao", "/fhir/Claim", fewer)
    assert status == 409 and refused["issue"][0]["details"]["coding"][0]["code"] == "DUPLICATE_CLAIM"
    assert f"claim_id={claim_id}" in refused["issue"][0]["diagnostics"]
    response = body["entry"][1]["resource"]
    totals = {t["category"]["text"]: t["amount"]["value"] for t in response["total"]}
    assert totals["medfee"] == 90.0 and totals["fund"] == 59.5
    assert totals["personal account"] == 30.5 and totals["cash"] == 0.0
    # an unauthorised party gets the contract's refusal as an OperationOutcome
    status, body = _post(net, fhir, "p02:pharm-chen", "/fhir/MedicationDispense", dispense)
    assert status == 409
    assert body["issue"][0]["details"]["coding"][0]["code"] == "ALREADY_DISPENSED"
    status, body = _post(net, fhir, "h01:nurse-liu", "/fhir/MedicationRequest", bundle)
    assert status == 403
    assert body["issue"][0]["details"]["coding"][0]["code"] == "UNAUTHORIZED_PRESCRIBER"

