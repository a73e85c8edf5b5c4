"""Privacy (DOMAIN.md section 4): key grants, audited key fetches and denials, consent,
supervision, crypto-shredding, and no identifying plaintext anywhere in state."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from node.crypto import aead
from node.crypto.canonical import canonical_json
from node.sandbox import canonical
from tests.contracts.chain import DAY_MS, Who, admin, who
from tests.contracts.flows import (
    AUDITOR,
    CHEN,
    CLERK,
    COURIER,
    HE,
    JIANG,
    NURSE,
    WANG,
    ZHOU,
    approved,
    lock_and_dispense,
    settle,
)
from tests.contracts.rxclient import Prepared, World, patient_binding
from tests.harness.plaintext import mentions


def fetch(world: World, caller: Who, rx_id: str) -> Any:
    out = world.chain.submit("prescription", "get_key", caller, rx_id=rx_id)
    assert out.ok and out.block is not None, "get_key always commits (audited)"
    return out.value


def open_record(world: World, keyring_party: str, grant: dict[str, Any], rx_id: str) -> Any:
    """What a client does: unwrap its key, decrypt, check the commitment."""
    key = world.keyring.unwrap(keyring_party, grant["wrapped_key"],
                               f"rxchain/rx/{rx_id}/{grant['party']}")
    plain = json.loads(aead.decrypt(key, base64.b64decode(grant["ciphertext"]), rx_id.encode()))
    body = plain["content"] if "content" in plain else plain["claim"]
    digest = hashlib.sha256(plain["salt"].encode() + canonical_json(body)).hexdigest()
    if digest != grant["commitment"]:
        raise ValueError("HASH_MISMATCH")
    return body


def audit(world: World, rx_id: str) -> list[tuple[str, str, str, str]]:
    events = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx_id).unwrap()
    return [(e["event"], e["party"], e["outcome"], e["org"]) for e in events["events"]]


def test_each_authorised_party_decrypts_its_grant(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    zhang = world.patient_who("patient-zhang")
    pid = world.pid("patient-zhang")
    assert open_record(world, "patient:" + pid, fetch(world, zhang, rx), rx) == prep.content
    assert open_record(world, "h01", fetch(world, JIANG, rx), rx) == prep.content
    assert open_record(world, "h01", fetch(world, HE, rx), rx) == prep.content
    assert open_record(world, "p01", fetch(world, WANG, rx), rx) == prep.content
    # the insurer only ever gets the claim subset
    grant = fetch(world, CLERK, rx)
    assert grant["kind"] == "insurer"
    assert open_record(world, "ins01", grant, rx) == prep.claim
    assert "patient_info" not in json.dumps(prep.claim)
    granted = [a for a in audit(world, rx) if a[0] == "KEY_FETCH"]
    assert [a[2] for a in granted] == ["GRANTED"] * 5


@pytest.mark.parametrize("caller", [
    # parties of the prescription (as show: auditors, staff of the issuing hospital, of the
    # routed pharmacy and of the insurer) whose role or org holds no grant
    AUDITOR, COURIER, NURSE, admin("ins01"),
    # and anyone else (the last: her certificate without her binding)
    CHEN, ZHOU, who("ins02:clerk-lu:clerk"), Who("h02", "patient-sun", "patient"), Who("h01", "patient-zhang", "patient")])
def test_anyone_without_a_grant_gets_no_key_grant_and_is_audited(world: World, caller: Who) -> None:
    """DOMAIN.md section 4: anyone else asking gets NO_KEY_GRANT, and the denied access is an
    audit event -- a party or not (the views answer a non-party as a missing id; get_key
    cannot, by that rule)."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    res = fetch(world, caller, rx)
    assert res["error"] == "NO_KEY_GRANT"
    assert "wrapped_key" not in res
    denied = [a for a in audit(world, rx) if a[0] == "KEY_FETCH"]
    assert denied == [("KEY_FETCH", caller.org, "DENIED", caller.org)]


def test_consent_grant_and_revoke(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    zhang = world.patient_who("patient-zhang")
    assert fetch(world, ZHOU, rx)["error"] == "NO_KEY_GRANT"
    out = world.chain.submit("prescription", "grant_consent", JIANG, rx_id=rx, org="h02",
                             wrapped_key=world.wrap_for(rx, "h02"))
    assert out.reason == "ACCESS_DENIED"
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                       wrapped_key=world.wrap_for(rx, "h02")).unwrap()
    assert open_record(world, "h02", fetch(world, ZHOU, rx), rx) == prep.content
    # consent lets h02 see the trail as well
    assert world.chain.query("prescription", "trace", ZHOU, rx_id=rx).ok
    world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02").unwrap()
    # no party any more: the views answer it as a missing id, get_key an audited denial
    assert world.chain.query("prescription", "show", ZHOU, rx_id=rx).reason == "NOT_FOUND"
    assert fetch(world, ZHOU, rx)["error"] == "NO_KEY_GRANT"
    assert fetch(world, NURSE, rx)["error"] == "NO_KEY_GRANT"
    out = world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="p01")
    assert out.reason == "NO_KEY_GRANT"
    out = world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="p01",
                             wrapped_key=world.wrap_for(rx, "p01"))
    assert out.reason == "ALREADY_GRANTED"
    events = audit(world, rx)
    assert ("GRANT", "h02", "consent", "h01") in events
    assert ("REVOKE_GRANT", "h02", "REVOKED", "h01") in events
    assert ("KEY_FETCH", "h02", "GRANTED", "h02") in events
    assert ("KEY_FETCH", "h02", "DENIED", "h02") in events
    assert ("KEY_FETCH", "h01", "DENIED", "h01") in events


def test_consent_grants_of_one_prescription_are_bounded(world: World) -> None:
    """Any id made a grant: a patient (or her stolen key) could pile up grants until every
    withdrawal, re-route and erase of the prescription, which read them all, ran out of gas."""
    rx = approved(world).args["rx_id"]
    zhang = world.patient_who("patient-zhang")
    blob = world.wrap_for(rx, "h02")

    def grant(org: str) -> Any:
        return world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org=org, wrapped_key=blob)

    orgs = [f"x{i:02d}" for i in range(16)]
    for org in orgs:
        grant(org).unwrap()
    out = grant("x16")
    assert out.reason == "LIMIT_EXCEEDED" and "16" in out.message
    assert ("prescription", f"grant/{rx}/x16") not in world.chain.state.values
    grant("x03").unwrap()  # granted again: the same grant, not one more
    world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="x05").unwrap()
    grant("x16").unwrap()
    assert ("prescription", f"grant/{rx}/x16") in world.chain.state.values


def test_regulator_reads_trails_and_audit_log(world: World) -> None:
    a = approved(world)
    b = approved(world)
    fetch(world, NURSE, a.args["rx_id"])
    log = world.chain.query("prescription", "audit_log", AUDITOR, start_key="", limit=3).unwrap()
    assert len(log["events"]) == 3 and log["next"] != ""
    rest = world.chain.query("prescription", "audit_log", AUDITOR, start_key=log["next"],
                             limit=100).unwrap()
    everything = log["events"] + rest["events"]
    assert rest["next"] == ""
    assert {e["event"]["rx_id"] for e in everything} == {a.args["rx_id"], b.args["rx_id"]}
    assert any(e["event"]["outcome"] == "DENIED" for e in everything)
    assert all("wrapped_key" not in e["event"] for e in everything)
    for other in (JIANG, CHEN, CLERK):
        out = world.chain.query("prescription", "audit_log", other, start_key="", limit=3)
        assert out.reason == "ACCESS_DENIED"
    assert world.chain.query("prescription", "audit_trail", CHEN,
                             rx_id=a.args["rx_id"]).reason == "ACCESS_DENIED"
    assert world.chain.query("prescription", "audit_trail", world.patient_who("patient-zhang"),
                             rx_id=a.args["rx_id"]).ok
    # auditors see metadata, but hold no key
    assert fetch(world, AUDITOR, a.args["rx_id"])["error"] == "NO_KEY_GRANT"


def test_crypto_shredding_after_retention(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    assert world.chain.submit("prescription", "erase", JIANG, rx_id=rx,
                              retention_days=365).reason == "ACCESS_DENIED"
    assert world.chain.submit("prescription", "erase", admin("h01"), rx_id=rx,
                              retention_days=365).reason == "RETENTION_NOT_ELAPSED"
    world.chain.advance(366 * DAY_MS)
    # prescriptions are kept at least a year (MoH order 53 Art. 50): the admin cannot
    # shorten that by passing a smaller retention period
    for short in (1, 30, 364):
        assert world.chain.submit("prescription", "erase", admin("h01"), rx_id=rx,
                                  retention_days=short).reason == "BAD_ARGUMENTS"
    out = world.chain.submit("prescription", "erase", admin("h01"), rx_id=rx, retention_days=365)
    assert out.unwrap()["grants_destroyed"] == 4
    assert fetch(world, WANG, rx)["error"] == "NO_KEY_GRANT"
    rx_state = world.chain.query("prescription", "show", AUDITOR, rx_id=rx).unwrap()
    assert rx_state["status"] == "ERASED" and rx_state["ciphertext"] == ""
    assert rx_state["commitment"] == prep.args["commitment"]


def test_erase_destroys_every_grant_beyond_one_page(world: World) -> None:
    """Erasure pages through all grants: with 70 consent grants (more than one range page
    of 64) the old loop left some wrapped keys in state after the tombstone. A prescription
    holds at most 16 consents now; the other 54 are as a release before that bound wrote them."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    patient = world.patient_who("patient-zhang")
    for i in range(16):
        world.chain.submit("prescription", "grant_consent", patient, rx_id=rx, org=f"org{i:02d}",
                           wrapped_key=world.wrap_for(rx, f"org{i:02d}")).unwrap()
    first = canonical.decode(world.chain.state.values[("prescription", f"grant/{rx}/org00")], "grant")
    for i in range(16, 70):
        world.chain.state.values[("prescription", f"grant/{rx}/org{i:02d}")] = canonical.encode(
            {**first, "party": f"org{i:02d}"}, "grant", 1 << 20)[0]
    world.chain.advance(366 * DAY_MS)
    out = world.chain.submit("prescription", "erase", admin("h01"), rx_id=rx, retention_days=365)
    assert out.unwrap()["grants_destroyed"] == 4 + 70
    left = [k for ns, k in world.chain.state.values if ns == "prescription"
            and k.startswith(f"grant/{rx}/")]
    assert left == []
    revoked = [e for e in audit(world, rx) if e[0] == "REVOKE_GRANT"]
    assert len(revoked) == 74


def story(world: World) -> Prepared:
    prep = approved(world, drugs=[("amlodipine", 2), ("benidipine", 2)], days=28,
                    long_rx=True, chronic_reason="stable hypertension")
    lock_and_dispense(world, prep, trace_codes=["81234560000000000100"]).unwrap()
    settle(world, prep).unwrap()
    world.chain.submit("prescription", "deliver", COURIER, rx_id=prep.args["rx_id"]).unwrap()
    fetch(world, NURSE, prep.args["rx_id"])
    return prep


def test_no_identifying_plaintext_in_state(world: World) -> None:
    story(world)
    raw = world.chain.raw_state_bytes().decode()
    raw += "".join(e.payload_json.decode() for e in world.chain.events)
    for pt in world.sample["patients"]:
        for secret in (pt["display_name"], pt["id_number"], pt["birth_date"], pt["name"]):
            assert secret not in raw, secret
    # prescription and settlement state never names a drug or a diagnosis
    rx_side = "\n".join(
        f"{k}={v.value!r}"
        for (ns, k), versions in world.chain.state.versions.items()
        if ns in ("prescription", "settlement")
        for v in versions
    )
    for d in world.sample["formulary"]:
        assert d["code"] not in rx_side and d["short_name"] not in rx_side
    assert not mentions(rx_side, "I10")
    # the registry's patient records hold tags, not diagnoses
    enrol = [v for (ns, k), v in world.chain.state.values.items()
             if ns == "registry" and k.startswith("patient/")]
    assert enrol and not any(mentions(v.decode(), "I10") for v in enrol)



def test_no_drug_names_or_trace_codes_anywhere_on_the_ledger(world: World) -> None:
    """Issue 6: a raw scan of state and block contents finds no patient name, ID number,
    drug name or box trace code -- including the registry (the formulary keeps codes,
    classes, prices and specs; names live in the clients' catalogue)."""
    story(world)
    raw = world.chain.raw_state_bytes() + b"\n".join(world.chain.block_args)
    raw += b"".join(e.payload_json for e in world.chain.events)
    needles = ["81234560000000000100"]
    for pt in world.sample["patients"]:
        needles += [pt["display_name"], pt["id_number"]]
    for d in world.sample["formulary"]:
        needles += [d["short_name"], d["generic_name"]]
    for needle in needles:
        assert needle.encode() not in raw, needle
        assert needle.lower().encode() not in raw.lower(), needle
    formulary = world.chain.query("registry", "list_drugs", WANG, start="", limit=200).unwrap()
    assert {d["code"] for d in formulary} == set(world.codes.values())


def test_prescription_listings(world: World) -> None:
    ids = [approved(world).args["rx_id"] for _ in range(3)]
    sun = approved(world, doctor=ZHOU, patient="patient-sun").args["rx_id"]
    zhang = world.pid("patient-zhang")
    page = world.chain.query("prescription", "patient_prescriptions",
                             world.patient_who("patient-zhang"), patient=zhang, start="",
                             limit=2).unwrap()
    assert [p["rx_id"] for p in page["prescriptions"]] == ids[:2] and page["next"] == ids[2]
    rest = world.chain.query("prescription", "patient_prescriptions", admin("h01"),
                             patient=zhang, start=page["next"], limit=2).unwrap()
    assert [p["rx_id"] for p in rest["prescriptions"]] == ids[2:] and rest["next"] == ""
    for outsider in (admin("h02"), WANG, world.patient_who("patient-sun"), CLERK):
        out = world.chain.query("prescription", "patient_prescriptions", outsider,
                                patient=zhang, start="", limit=2)
        assert out.reason == "ACCESS_DENIED"
    everything = world.chain.query("prescription", "list_prescriptions", AUDITOR, start="",
                                   limit=200).unwrap()
    assert {p["rx_id"] for p in everything["prescriptions"]} == {*ids, sun}
    assert all("ciphertext" not in p for p in everything["prescriptions"])
    assert world.chain.query("prescription", "list_prescriptions", JIANG, start="",
                             limit=5).reason == "ACCESS_DENIED"


def test_patient_prescriptions_does_not_tell_enrolment(world: World) -> None:
    """A pseudonym anyone in the consortium can compute from an ID number: a role that lists no
    patient's prescriptions (all but patients, hospital admins and auditors) is refused
    ACCESS_DENIED before the enrolment is looked up, for an enrolled and a never-enrolled
    pseudonym alike (it was UNKNOWN_PATIENT for the latter, as get_patient used to be)."""
    enrolled, nobody = world.pid("patient-zhang"), hashlib.sha256(b"never enrolled").hexdigest()
    for caller in (WANG, CLERK, JIANG, COURIER, NURSE, admin("p01"), who("reg01:clerk-a:clerk")):
        seen = [world.chain.query("prescription", "patient_prescriptions", caller, patient=pid,
                                  start="", limit=2) for pid in (enrolled, nobody)]
        assert [(o.reason, o.message) for o in seen] == [("ACCESS_DENIED", seen[0].message)] * 2, caller
    for reader in (admin("h01"), AUDITOR, world.patient_who("patient-zhang")):
        assert world.chain.query("prescription", "patient_prescriptions", reader, patient=enrolled,
                                 start="", limit=2).ok, reader
        assert world.chain.query("prescription", "patient_prescriptions", reader, patient=nobody,
                                 start="", limit=2).reason == "UNKNOWN_PATIENT", reader


def test_pseudonym_attribute_counts_only_on_a_certificate_of_her_enrolling_hospital(world: World) -> None:
    """Any hospital's CA can mint a patient certificate carrying the attribute ``pseudonym``:
    one of h05 (not her hospital) naming patient-zhang used to be her in every contract --
    it listed her prescriptions, read their metadata, her diagnosis tags and her account,
    granted consent to h05 and re-routed her prescription. Now it is an outsider; the same
    attribute on a certificate of h01, which enrolled her, still proves her."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    pz = world.pid("patient-zhang")
    rogue = Who("h05", "pt-rogue", "patient", attrs={"pseudonym": pz})
    assert world.chain.query("prescription", "patient_prescriptions", rogue, patient=pz,
                             start="", limit=10).reason == "ACCESS_DENIED"
    assert world.chain.query("prescription", "show", rogue, rx_id=rx).reason == "NOT_FOUND"
    assert world.chain.query("registry", "get_patient", rogue, pseudonym=pz).reason == "ACCESS_DENIED"
    assert world.chain.query("settlement", "patient_status", rogue, pseudonym=pz,
                             year=0).reason == "ACCESS_DENIED"
    assert world.chain.submit("prescription", "grant_consent", rogue, rx_id=rx, org="h05",
                              wrapped_key=world.wrap_for(rx, "h05")).reason == "NOT_FOUND"
    assert world.chain.submit("prescription", "route", rogue, rx_id=rx, pharmacy="p02",
                              wrapped_key=world.wrap_for(rx, "p02")).reason == "ACCESS_DENIED"
    assert fetch(world, rogue, rx)["error"] == "NO_KEY_GRANT"
    assert world.chain.query("prescription", "show", AUDITOR, rx_id=rx).unwrap()["pharmacy"] == "p01"
    # her enrolling hospital's certificate with the attribute is her (no binding needed)
    own = Who("h01", "pt-device", "patient", attrs={"pseudonym": pz})
    assert world.chain.query("prescription", "show", own, rx_id=rx).ok
    assert world.chain.query("registry", "get_patient", own, pseudonym=pz).ok
    assert world.chain.query("settlement", "patient_status", own, pseudonym=pz, year=0).ok
    assert fetch(world, own, rx)["party"] == "patient"


def test_a_foreign_pseudonym_attribute_does_not_shut_out_a_patient_her_binding_proves(
        world: World) -> None:
    """The pseudonym attribute counts only on her enrolling hospital's certificate; on any other
    hospital's it used to refuse her outright in all three contracts, even when the certificate
    is the one she was enrolled with and she sends its binding. It now falls through to the
    binding, which decides: her certificate from h02 (enrolled by h01) is her, the same
    certificate without the binding -- or a rogue one with another name -- is not."""
    pt = {**world.patients["patient-zhang"], "name": "patient-new",
          "id_number": "500103198001010011", "user": {"org": "h02", "name": "pt-app"}}
    world.admit(pt)
    world.patients["patient-new"] = pt
    rx = approved(world, patient="patient-new").args["rx_id"]
    pid = world.pid("patient-new")
    her = Who("h02", "pt-app", "patient", attrs={"pseudonym": pid},
              binding=patient_binding("h02", "pt-app"))
    assert world.chain.query("prescription", "show", her, rx_id=rx).ok
    assert world.chain.query("registry", "get_patient", her, pseudonym=pid).ok
    assert world.chain.query("settlement", "patient_status", her, pseudonym=pid, year=0).ok
    for outsider in (Who("h02", "pt-app", "patient", attrs={"pseudonym": pid}),
                     Who("h02", "pt-rogue", "patient", attrs={"pseudonym": pid},
                         binding=patient_binding("h02", "pt-app"))):
        assert world.chain.query("prescription", "show", outsider, rx_id=rx).reason == "NOT_FOUND"
        assert world.chain.query("registry", "get_patient", outsider,
                                 pseudonym=pid).reason == "ACCESS_DENIED"
        assert world.chain.query("settlement", "patient_status", outsider, pseudonym=pid,
                                 year=0).reason == "ACCESS_DENIED"
