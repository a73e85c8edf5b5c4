"""Client-side half of the contracts, as test code: sample data loading, pseudonyms, the
encryption of prescription content and claim subsets, key unwrapping and decryption.

This follows the rules documented in contracts/README.md exactly (canonical JSON via
node.crypto.canonical, AES-256-GCM + ECDH key wrapping via node.crypto.aead).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from node.crypto import aead
from node.crypto.canonical import canonical_json
from tests.contracts.chain import ROOT, Chain, Outcome, Who, admin

SAMPLE = ROOT / "network-config" / "sample-data.yaml"
CONSORTIUM_SECRET = b"rxchain-test-consortium-secret-0"


def pseudonym(id_number: str) -> str:
    return hmac.new(CONSORTIUM_SECRET, id_number.encode(), hashlib.sha256).hexdigest()


def dx_key() -> str:
    return hmac.new(CONSORTIUM_SECRET, b"rxchain/dx-tag/v1", hashlib.sha256).hexdigest()


def trace_key() -> str:
    return hmac.new(CONSORTIUM_SECRET, b"rxchain/trace-code/v1", hashlib.sha256).hexdigest()


def patient_binding(org: str, name: str) -> str:
    return hmac.new(CONSORTIUM_SECRET, f"patient-cert|{org}|{name}".encode(), hashlib.sha256).hexdigest()


def commit(salt: str, value: Any) -> str:
    return hashlib.sha256(salt.encode() + canonical_json(value)).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def load_sample(path: Path = SAMPLE) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


@dataclass
class Keyring:
    """Every party's private key (stands in for each organisation's wallet)."""

    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)

    def of(self, party: str) -> ec.EllipticCurvePrivateKey:
        if party not in self.keys:
            self.keys[party] = ec.generate_private_key(ec.SECP256R1())
        return self.keys[party]

    def wrap(self, party: str, record_key: bytes, context: str) -> str:
        return b64(aead.wrap_key(self.of(party).public_key(), record_key, context.encode()))

    def unwrap(self, party: str, wrapped: str, context: str) -> bytes:
        return aead.unwrap_key(self.of(party), base64.b64decode(wrapped), context.encode())


@dataclass
class Prepared:
    """Everything the client builds for one issue call."""

    args: dict[str, Any]
    transient: dict[str, Any]
    content: dict[str, Any]
    salt: str
    claim: dict[str, Any]
    claim_salt: str


class World:
    """The sample consortium loaded into a Chain, plus client-side helpers."""

    def __init__(self, chain: Chain, seed: int = 7) -> None:
        self.chain = chain
        self.sample = load_sample()
        self.keyring = Keyring()
        self.rng = random.Random(seed)
        self.codes = {d["short_name"]: d["code"] for d in self.sample["formulary"]}
        self.patients = {p["name"]: p for p in self.sample["patients"]}
        self._n = 0
        self.record_keys: dict[str, bytes] = {}

    # ------------------------------------------------------------- loading
    def load(self) -> None:
        c = self.chain
        for p in self.sample["practitioners"]:
            args = {k: p[k] for k in ("name", "role", "code", "licence_active",
                                      "practice_years", "internet_practice")}
            c.submit("registry", "register_practitioner", admin(p["org"]), **args).unwrap()
        for ph in self.sample["pharmacies"]:
            c.submit("registry", "register_pharmacy", admin(ph["org"]),
                     licence_no=ph["licence_no"], active=ph["active"]).unwrap()
        for d in self.sample["formulary"]:
            args = {k: d[k] for k in ("code", "spec", "cls", "standard_fen", "price_fen",
                                      "controlled")}
            c.submit("registry", "set_drug", admin(d["insurer"]), **args).unwrap()
        for pol in self.sample["policies"]:
            self.set_policy(pol, 0)
        for pt in self.sample["patients"]:
            self.admit(pt)

    def set_policy(self, pol: dict[str, Any], effective_ms: int) -> Outcome:
        return self.chain.submit(
            "registry", "set_policy", admin(pol["insurer"]),
            effective_ms=effective_ms, deductible_fen=pol["deductible_fen"],
            ratio_bp=pol["ratio_bp"], cap_fen=pol["cap_fen"],
            cap_by_disease=pol.get("cap_by_disease", {}), b_share_bp=pol["b_share_bp"],
        )

    def enrol(self, pt: dict[str, Any], **overrides: Any) -> Outcome:
        """registry.enrol_patient as the enrolling hospital's admin."""
        merged = {**pt, **overrides}
        user = merged["user"]
        return self.chain.submit(
            "registry", "enrol_patient", admin(merged["enrolled_by"]),
            transient={"dx_key": dx_key(), "diagnoses": merged["diagnoses"],
                       "patient_binding": patient_binding(user["org"], user["name"]),
                       "patient_user": {"org": user["org"], "name": user["name"]}},
            pseudonym=pseudonym(merged["id_number"]),
        )

    def ask_to_open(self, pt: dict[str, Any], insurer: str) -> Outcome:
        """settlement.request_transfer as the patient herself, with no account yet: she asks
        ``insurer`` to open her account (open_account takes her request)."""
        user = pt["user"]
        her = Who(user["org"], user["name"], "patient",
                  binding=patient_binding(user["org"], user["name"]))
        return self.chain.submit("settlement", "request_transfer", her,
                                 pseudonym=pseudonym(pt["id_number"]), to_insurer=insurer)

    def open_account(self, pt: dict[str, Any], caller: Who | None = None, year: int = 0,
                     asked: bool = True, **overrides: Any) -> Outcome:
        """settlement.open_account as the insurer's admin (money lives with the insurer); with
        ``asked`` the patient first asks the caller's insurer to open it (ask_to_open: its
        outcome is not checked here -- open_account answers NOT_FOUND without it)."""
        merged = {**pt, **overrides}
        caller = caller or admin(merged["insurer"])
        if asked:
            self.ask_to_open(merged, caller.org)
        return self.chain.submit(
            "settlement", "open_account", caller,
            transient={"dx_key": dx_key(),
                       "cap_used_by_disease": merged.get("cap_used_by_disease", {})},
            pseudonym=pseudonym(merged["id_number"]), year=year,
            balance_fen=merged["account_balance_fen"],
            deductible_used_fen=merged["deductible_used_fen"],
        )

    def admit(self, pt: dict[str, Any]) -> None:
        """Enrol and open the account; the clock moves on 1 ms (a diagnosis counts only for
        prescriptions of later transactions)."""
        self.enrol(pt).unwrap()
        self.open_account(pt).unwrap()
        self.chain.advance(1)

    # ------------------------------------------------------------- identities
    def pid(self, name: str) -> str:
        return pseudonym(self.patients[name]["id_number"])

    def patient_who(self, name: str) -> Who:
        user = self.patients[name]["user"]
        return Who(user["org"], user["name"], "patient",
                   binding=patient_binding(user["org"], user["name"]))

    def salt(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def new_rx_id(self) -> str:
        self._n += 1
        return f"RX-2026-{self._n:05d}"

    # ------------------------------------------------------------- prescriptions
    def content(
        self,
        rx_id: str,
        patient: str = "patient-zhang",
        drugs: list[tuple[str, int]] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        pt = self.patients[patient]
        lines = [
            {"code": self.codes.get(name, name), "qty": qty, "dose": "1 tablet", "frequency": "qd"}
            for name, qty in (drugs or [("amlodipine", 2)])
        ]
        content: dict[str, Any] = {
            "rx_id": rx_id,
            "patient": pseudonym(pt["id_number"]),
            "patient_info": {"name": pt["display_name"], "birth_date": pt["birth_date"]},
            "diagnosis": "I10",
            "first_visit": False,
            "visit": {"mdtrt_id": "MDT-" + rx_id, "med_type": "internet-follow-up"},
            "days": 7,
            "long_rx": False,
            "valid_days": 1,
            "max_fills": 1,
            "fill_interval_days": 0,
            "drugs": lines,
        }
        content.update(fields)
        return content

    def prepare(
        self,
        content: dict[str, Any],
        hospital: str = "h01",
        pharmacy: str = "",
        insurer: str = "ins01",
    ) -> Prepared:
        rx_id = content["rx_id"]
        salt, claim_salt = self.salt(), self.salt()
        drugs = content.get("drugs")
        claim = {
            "diagnosis": content.get("diagnosis"),
            "lines": [{"code": ln.get("code"), "qty": ln.get("qty")}
                      for ln in (drugs if isinstance(drugs, list) else [])
                      if isinstance(ln, dict)],
            "rx_id": rx_id,
        }
        key, claim_key = aead.new_record_key(), aead.new_record_key()
        ct = aead.encrypt(key, canonical_json({"content": content, "salt": salt}), rx_id.encode())
        claim_ct = aead.encrypt(
            claim_key, canonical_json({"claim": claim, "salt": claim_salt}), rx_id.encode()
        )
        parties = ["patient:" + content["patient"], hospital] + ([pharmacy] if pharmacy else [])
        keys = {}
        for party in parties:
            name = "patient" if party.startswith("patient:") else party
            keys[name] = self.keyring.wrap(party, key, f"rxchain/rx/{rx_id}/{name}")
        claim_keys = {insurer: self.keyring.wrap(insurer, claim_key, f"rxchain/rx/{rx_id}/{insurer}")}
        self.record_keys[rx_id] = key
        args = {
            "rx_id": rx_id,
            "patient": content["patient"],
            "ciphertext": b64(ct),
            "commitment": commit(salt, content),
            "keys": keys,
            "claim_ciphertext": b64(claim_ct),
            "claim_commitment": commit(claim_salt, claim),
            "claim_keys": claim_keys,
            "pharmacy": pharmacy,
        }
        transient = {"content": content, "salt": salt, "claim_salt": claim_salt, "dx_key": dx_key()}
        return Prepared(args, transient, content, salt, claim, claim_salt)

    def issue(self, prep: Prepared, doctor: Who, at_ms: int | None = None) -> Outcome:
        return self.chain.submit("prescription", "issue", doctor, transient=prep.transient,
                                 at_ms=at_ms, **prep.args)

    def wrap_for(self, rx_id: str, party: str) -> str:
        return self.keyring.wrap(party, self.record_keys[rx_id], f"rxchain/rx/{rx_id}/{party}")
