"""Client-side encryption, key wrapping, commitments and NO_KEY_GRANT denials."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import NoKeyGrant, RxClientError
from client.records import (
    claim_subset,
    commitment,
    dx_key,
    open_grant,
    pseudonym,
    seal_prescription,
    wrap_for,
)
from tests.harness.plaintext import mentions

SECRET = bytes(range(32))


def _content(rx_id: str = "RX-1") -> dict[str, Any]:
    return {
        "rx_id": rx_id, "patient": pseudonym(SECRET, "500103195803124428"), "diagnosis": "I10",
        "first_visit": False, "days": 28, "long_rx": True, "chronic_reason": "稳定高血压",
        "patient_info": {"name": "Zhang Guilan", "birth_date": "1958-03-12"},
        "drugs": [{"code": "XC08CAA001A001010100001", "qty": 2},
                  {"code": "XC08CAB037A001020180517", "qty": 2}],
    }


def _keys():
    return {name: ec.generate_private_key(ec.SECP256R1())
            for name in ("patient", "h01", "p01", "p02", "ins01")}


def _seal(keys, rx_id="RX-1"):
    recipients = {p: keys[p].public_key() for p in ("patient", "h01", "p01")}
    return seal_prescription(rx_id, _content(rx_id), recipients, "ins01",
                             keys["ins01"].public_key(), "p01", dx_key(SECRET))


def _grant(sealed, party, kind):
    if kind == "insurer":
        return {"rx_id": sealed.rx_id, "party": party, "kind": kind,
                "wrapped_key": sealed.args["claim_keys"][party],
                "ciphertext": sealed.args["claim_ciphertext"],
                "commitment": sealed.args["claim_commitment"]}
    return {"rx_id": sealed.rx_id, "party": party, "kind": kind,
            "wrapped_key": sealed.args["keys"][party], "ciphertext": sealed.args["ciphertext"],
            "commitment": sealed.args["commitment"]}


def test_one_id_number_gives_one_pseudonym_whatever_its_case_or_spacing():
    """A lower-case check character or stray whitespace must not make a second patient (a
    second deductible and cap): the ID number is normalised; canonical input is unchanged."""
    canonical = hmac.new(SECRET, b"11010119900307001X", hashlib.sha256).hexdigest()
    for variant in ("11010119900307001X", "11010119900307001x", " 11010119900307001x\n",
                    "\t11010119900307001X "):
        assert pseudonym(SECRET, variant) == canonical
    assert pseudonym(SECRET, "110101199003070011") != canonical


def test_pseudonym_and_dx_key_follow_the_contract_conventions():
    assert pseudonym(SECRET, "500103195803124428") == hmac.new(
        SECRET, b"500103195803124428", hashlib.sha256).hexdigest()
    assert dx_key(SECRET) == hmac.new(SECRET, b"rxchain/dx-tag/v1", hashlib.sha256).hexdigest()
    assert pseudonym(SECRET, "x") != pseudonym(bytes(32), "x")


def test_commitment_is_salt_plus_canonical_json():
    salt = "ab" * 16
    value = {"b": [1, True, None], "a": "医保"}
    expected = hashlib.sha256((salt + '{"a":"医保","b":[1,true,null]}').encode()).hexdigest()
    assert commitment(salt, value) == expected


def test_sealed_args_hold_no_plaintext():
    sealed = _seal(_keys())
    blob = repr(sealed.args)
    for needle in ("Zhang", "I10", "XC08CAA001A001010100001", "1958", "稳定"):
        assert not mentions(blob, needle), needle
    assert set(sealed.args["keys"]) == {"patient", "h01", "p01"}
    assert set(sealed.args["claim_keys"]) == {"ins01"}
    assert sealed.transient["content"]["rx_id"] == "RX-1"
    assert commitment(sealed.transient["salt"], sealed.transient["content"]) == sealed.args[
        "commitment"]
    claim = claim_subset("RX-1", sealed.transient["content"])
    assert commitment(sealed.transient["claim_salt"], claim) == sealed.args["claim_commitment"]


@pytest.mark.parametrize("party", ["patient", "h01", "p01"])
def test_each_party_opens_its_own_grant(party):
    keys = _keys()
    sealed = _seal(keys)
    opened = open_grant(_grant(sealed, party, "pharmacy"), [keys[party]])
    assert opened.body == _content()
    assert opened.salt == sealed.transient["salt"]
    assert opened.kind == "content"


def test_insurer_opens_only_the_claim_subset():
    keys = _keys()
    sealed = _seal(keys)
    opened = open_grant(_grant(sealed, "ins01", "insurer"), [keys["ins01"]])
    assert opened.kind == "claim"
    assert opened.body == {"diagnosis": "I10", "rx_id": "RX-1", "lines": [
        {"code": "XC08CAA001A001010100001", "qty": 2}, {"code": "XC08CAB037A001020180517", "qty": 2}]}
    with pytest.raises(NoKeyGrant):  # the insurer's key does not open the content grant
        open_grant(_grant(sealed, "p01", "pharmacy"), [keys["ins01"]])


def test_other_party_gets_no_key_grant():
    """A grant whose wrapped key opens with none of the caller's keys is a NoKeyGrant with
    reason KEY_NOT_HELD: the ledger gave a grant, the wallet holds no key it was wrapped for."""
    keys = _keys()
    sealed = _seal(keys)
    with pytest.raises(NoKeyGrant) as e:
        open_grant(_grant(sealed, "p01", "pharmacy"), [keys["p02"], keys["h01"]])
    assert e.value.reason == "KEY_NOT_HELD" and "previous-records-keys" in e.value.message


def test_ledger_denial_is_no_key_grant():
    with pytest.raises(NoKeyGrant) as e:
        open_grant({"error": "NO_KEY_GRANT", "message": "p02/pharmacist holds no key grant"},
                   [ec.generate_private_key(ec.SECP256R1())])
    assert "p02" in e.value.message


def test_key_wrapped_for_another_rx_does_not_open():
    keys = _keys()
    sealed = _seal(keys)
    grant = _grant(sealed, "h01", "hospital")
    grant["wrapped_key"] = wrap_for(keys["h01"].public_key(), sealed.content_key, "RX-OTHER", "h01")
    with pytest.raises(NoKeyGrant):
        open_grant(grant, [keys["h01"]])


def test_tampered_ciphertext_or_commitment_is_hash_mismatch():
    keys = _keys()
    sealed = _seal(keys)
    grant = _grant(sealed, "h01", "hospital")
    raw = bytearray(base64.b64decode(grant["ciphertext"]))
    raw[-1] ^= 1
    bad = dict(grant, ciphertext=base64.b64encode(bytes(raw)).decode())
    with pytest.raises(RxClientError) as e:
        open_grant(bad, [keys["h01"]])
    assert e.value.reason == "HASH_MISMATCH"
    with pytest.raises(RxClientError) as e:
        open_grant(dict(grant, commitment="0" * 64), [keys["h01"]])
    assert e.value.reason == "HASH_MISMATCH"


def test_rewrapped_key_opens_for_new_pharmacy():
    keys = _keys()
    sealed = _seal(keys)
    opened = open_grant(_grant(sealed, "h01", "hospital"), [keys["h01"]])
    grant = _grant(sealed, "h01", "hospital")
    grant.update(party="p02", wrapped_key=wrap_for(keys["p02"].public_key(), opened.record_key,
                                                    "RX-1", "p02"))
    assert open_grant(grant, [keys["p02"]]).body == _content()


def test_patient_binding_and_trace_key_derivations():
    from client.records import patient_binding, trace_key

    assert patient_binding(SECRET, "h01", "patient-zhang") == hmac.new(
        SECRET, b"patient-cert|h01|patient-zhang", hashlib.sha256).hexdigest()
    assert patient_binding(SECRET, "h01", "patient-zhang") != patient_binding(SECRET, "h02",
                                                                               "patient-zhang")
    assert trace_key(SECRET) == hmac.new(SECRET, b"rxchain/trace-code/v1",
                                         hashlib.sha256).hexdigest()


@pytest.mark.parametrize("plain", [b"[]", b'"x"', b"7", b'{"content":{}}', b'{"salt":"ab"}',
                                   b'{"content":{},"salt":5}', b'{"content":[],"salt":"ab"}',
                                   b'{"content":{"f":1.5},"salt":"ab"}', b"\xff\xfe not json",
                                   # nested deeper than the JSON decoder goes (RecursionError escaped)
                                   b'{"content":{"x":' + b"[" * 5000 + b"]" * 5000 + b'},"salt":"ab"}',
                                   b"[" * 100_000])
def test_a_record_encrypted_in_another_layout_is_hash_mismatch_not_a_crash(plain):
    """The issuer chooses the plaintext: whatever it encrypted, a reader gets HASH_MISMATCH."""
    from node.crypto import aead

    keys = _keys()
    grant = _grant(_seal(keys), "h01", "hospital")
    rk = aead.new_record_key()
    grant.update(wrapped_key=wrap_for(keys["h01"].public_key(), rk, "RX-1", "h01"),
                 ciphertext=base64.b64encode(aead.encrypt(rk, plain, b"RX-1")).decode())
    with pytest.raises(RxClientError) as e:
        open_grant(grant, [keys["h01"]])
    assert e.value.reason == "HASH_MISMATCH"


@pytest.mark.parametrize("field", ["rx_id", "wrapped_key", "ciphertext"])
def test_a_grant_without_its_fields_is_bad_payload(field):
    keys = _keys()
    grant = _grant(_seal(keys), "h01", "hospital")
    for broken in ({k: v for k, v in grant.items() if k != field}, dict(grant, **{field: 5})):
        with pytest.raises(RxClientError) as e:
            open_grant(broken, [keys["h01"]])
        assert e.value.reason == "BAD_PAYLOAD"


def test_grants_and_ciphertexts_cannot_be_moved_between_parties_kinds_or_records():
    """Context binding: a wrapped key opens only for the party and record it names, and a
    ciphertext only under its own key and record (AAD rx_id)."""
    keys = _keys()
    a, b = _seal(keys, "RX-A"), _seal(keys, "RX-B")
    ga = _grant(a, "p01", "pharmacy")
    # p01's wrapped key presented as h01's (same holder of both private keys): refused
    with pytest.raises(NoKeyGrant):
        open_grant(dict(ga, party="h01"), [keys["p01"], keys["h01"]])
    # RX-A's wrapped key and ciphertext presented as RX-B's
    with pytest.raises(NoKeyGrant):
        open_grant(dict(ga, rx_id="RX-B"), [keys["p01"]])
    # RX-B's ciphertext under RX-A's key, and the claim ciphertext in the content slot
    for ct in (b.args["ciphertext"], a.args["claim_ciphertext"]):
        with pytest.raises(RxClientError) as e:
            open_grant(dict(ga, ciphertext=ct), [keys["p01"]])
        assert e.value.reason == "HASH_MISMATCH"
    # the insurer's claim key in a content grant opens nothing but the claim
    gi = _grant(a, "ins01", "insurer")
    with pytest.raises(RxClientError) as e:
        open_grant(dict(gi, kind="hospital"), [keys["ins01"]])
    assert e.value.reason == "HASH_MISMATCH"
