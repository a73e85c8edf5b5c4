"""Prescription, claim and patient operations on top of a :class:`Session`.

These are what the CLI, the FHIR gateway and the demo call. Each write returns a dict with
at least ``tx_id`` and ``block``; refusals raise :class:`RxClientError` subclasses carrying
the contract's reason code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import config_pb2

from client.errors import CommitUnknown, DuplicateRx, EndorsementError, NoKeyGrant, RxClientError
from client.gateway import SubmitResult
from client.inbox import MAX_BLOCKS as MAX_INBOX_BLOCKS
from client.inbox import STAFF_ROLES as INBOX_ROLES
from client.inbox import owed_of_trail, pharmacy_inbox
from client.notes import (
    REVERSE,
    REVIEW,
    REVOKE,
    is_insurer_note,
    open_insurer_note,
    open_note,
    seal_insurer_note,
    seal_note,
    split_reason,
)
from client.patients import Patient
from client.reconcile import MAX_BLOCKS as MAX_REPORT_BLOCKS
from client.reconcile import claim_report
from client.records import (
    MAX_NOTE_KEYS,
    OpenedRecord,
    commitment,
    open_grant,
    seal_prescription,
    trace_code_hash,
    wrap_for,
    wrap_note_key,
    wrap_note_keys,
)
from client.rxid import check_rx_id
from client.session import Session
from node.crypto import aead

RX = "prescription"
SETTLEMENT = "settlement"
REGISTRY = "registry"
MAX_PAGES = 1000  # pages of a paged view read by one trace or audit (up to 1000 entries each)
CHINA_TZ = dt.timezone(dt.timedelta(hours=8))
ISSUE_ID_ATTEMPTS = 3  # fresh prescription numbers an issue without rx_id tries (see issue)
# who opens a record key to re-wrap it (route): the patient, and the roles the prescription
# contract's get_key gives an organisation's hospital, pharmacy or consent grant to
REWRAP_ROLES = ("patient", "doctor", "pharmacist")


@dataclass(frozen=True)
class DrugLine:
    """A requested drug line: national code or formulary short name, and boxes."""

    drug: str
    qty: int


def parse_drug(text: str) -> DrugLine:
    """``CODE:QTY`` or ``NAME:QTY`` (QTY boxes)."""
    name, sep, qty = text.rpartition(":")
    if not sep or not name:
        raise RxClientError("BAD_ARGUMENTS", f"--drug must be CODE:QTY, got {text!r}")
    try:
        n = int(qty)
    except ValueError as exc:
        raise RxClientError("BAD_ARGUMENTS", f"--drug quantity must be an integer: {text!r}") from exc
    if n <= 0:
        raise RxClientError("BAD_ARGUMENTS", f"--drug quantity must be positive: {text!r}")
    return DrugLine(name, n)


@dataclass(frozen=True)
class ClaimLine:
    """A line to claim: national drug code and boxes."""

    code: str
    qty: int


def claim_lines_commitment_of(salt: str, lines: Sequence[ClaimLine]) -> str:
    """The settlement contract's ``lines_commitment`` of claim lines ``lines`` under the claim
    salt: one ``{code, qty}`` per code in order of first appearance, with ``lines`` (the code's
    line quantities, ascending) when the claim lists the code on more than one line -- the B
    share is rounded per line, so the split is part of what a claim settles."""
    parts: dict[str, list[int]] = {}
    for ln in lines:
        parts.setdefault(ln.code, []).append(ln.qty)
    entries: list[dict[str, Any]] = []
    for code, qtys in parts.items():
        entry: dict[str, Any] = {"code": code, "qty": sum(qtys)}
        if len(qtys) > 1:
            entry["lines"] = sorted(qtys)
        entries.append(entry)
    return commitment(salt, entries)


@dataclass(frozen=True)
class IssueRequest:
    """What a doctor fills in."""

    patient: str
    diagnosis: str
    drugs: Sequence[DrugLine]
    days: int
    long_rx: bool = False
    chronic_reason: str = ""
    valid_days: int = 1
    pharmacy: str = ""
    max_fills: int = 1
    fill_interval_days: int = 0
    first_visit: bool = False
    stability_assessment: str = ""
    patient_confirmed: bool = False
    guardian: str = ""
    visit_id: str = ""


def _written(res: SubmitResult, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"tx_id": res.tx_id, "block": res.block}
    if isinstance(res.result, dict):
        for k, v in res.result.items():
            out.setdefault(k, v)
    out.update(extra or {})
    return out


def _readers_moved(exc: RxClientError) -> bool:
    """A refusal of new or re-wrapped note keys because the readers or the note keys changed
    since the caller's key fetch (a route, a consent or a withdrawal committed meanwhile):
    nothing was written, fetching again and wrapping anew is the answer."""
    exact = exc.reason == "BAD_ARGUMENTS" and "note_keys must map exactly" in exc.message
    return exact or exc.reason == "NOTE_KEY_STALE"


def _int_or_none(value: Any) -> int | None:
    """``value`` when it is an integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# a prescription contract from before the issuing hospital's claim-key copy refuses it so (the
# insurer of the issue named after it): RxOperations._submit_issue proposes once more without it
OLD_CLAIM_KEYS_REFUSAL = "claim_keys must hold exactly the patient's insurer "


class RxOperations:
    """High-level operations as the session's identity."""

    def __init__(self, session: Session, rand: Callable[[int], bytes] = os.urandom):
        self.s = session
        self._rand = rand

    # ------------------------------------------------------------ helpers
    def drug(self, code_or_name: str) -> dict[str, Any]:
        """A formulary entry (by national code or short name): ledger data plus local names."""
        local = self.s.formulary.resolve(code_or_name)
        rec = self.s.gateway.evaluate(REGISTRY, "get_drug", {"code": local.code})
        if not isinstance(rec, dict):
            raise RxClientError("UNKNOWN_DRUG", f"no formulary entry {code_or_name}")
        return {"short_name": local.short_name, "generic_name": local.generic_name,
                "spec": rec.get("spec") or local.spec, **rec}

    def patient(self, ref: str) -> tuple[Patient, str]:
        """A patient from the local directory and her pseudonym."""
        p = self.s.directory.resolve(ref)
        return p, p.pseudonym(self.s.net.secret)

    def pseudonym(self, ref: str) -> str:
        """The ledger's id of patient ``ref``: a handle or ID number through the local directory
        and the consortium secret, or the pseudonym itself (64 lower-case hex, the ``patient`` of
        ``rx show``): all a patient's device, holding her binding but no secret, can name."""
        if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref):
            return ref
        return self.patient(ref)[1]

    def new_rx_id(self) -> str:
        """A fresh prescription number (hiRxno)."""
        day = dt.datetime.fromtimestamp(self.s.clock() / 1000, CHINA_TZ).strftime("%Y%m%d")
        return f"RX{day}-{self.s.identity.org}-{self._rand(5).hex()}"

    def _endorsers(self, *orgs: str) -> list[str]:
        """The parties of a record that run a peer, for calls that carry plaintext transient data.

        Plaintext (content, claim lines) must reach only the endorsing peers of organisations
        authorised to read it, so these calls name their endorsers instead of letting the gateway
        pick any peer that satisfies the policy.
        """
        with_peer = {p.org for p in self.s.net.peers}
        return [o for o in dict.fromkeys(orgs) if o and o in with_peer]

    def _meta(self, rx_id: str) -> dict[str, Any]:
        meta = self.s.gateway.evaluate(RX, "show", {"rx_id": rx_id})
        return meta if isinstance(meta, dict) else {}

    def _own_endorsers(self, rx_id: str) -> list[str] | None:
        """The endorsers of a call on ``rx_id`` by a session whose gateway adds default transient
        inputs to its proposals (a patient's binding, which proves her certificate to the
        contracts): they go only with a call that names its endorsers (client.gateway), so such
        a call names the record's parties that run a peer -- this session's peer first if it is
        one, two of them as the prescription policy takes. None (the gateway picks, the defaults
        stay home) for any other session, and when the record does not show to her (not hers, or
        no such id: the call is then refused, and audited, as anyone's)."""
        if not self.s.gateway.default_transient:
            return None
        try:
            meta = self._meta(rx_id)
        except RxClientError as exc:
            if exc.reason in ("NOT_FOUND", "ACCESS_DENIED"):
                return None
            raise
        parties = self._endorsers(*(str(meta.get(k, "")) for k in ("hospital", "pharmacy", "insurer")))
        if self.s.peer_org in parties:
            parties.remove(self.s.peer_org)
            parties.insert(0, self.s.peer_org)
        return parties[:2] or None

    def _get_key(self, rx_id: str) -> OpenedRecord:
        res = self.s.gateway.submit(RX, "get_key", {"rx_id": rx_id}, endorsing_orgs=self._own_endorsers(rx_id))
        grant = res.result if isinstance(res.result, dict) else {}
        keys = self.s.decryption_keys()
        if self.s.identity.role == "patient":
            keys = keys[:1]  # a patient opens only grants made to her own key
        return open_grant(grant, keys)

    # ------------------------------------------------------------ prescriptions
    def issue(self, req: IssueRequest, rx_id: str | None = None) -> dict[str, Any]:
        """Encrypt and issue a prescription, under ``rx_id`` if given (checked as the contract
        checks it): an issue run again with the same id after it committed is refused with
        :class:`DuplicateRx` (DUPLICATE_RX) instead of becoming a second prescription.

        Without ``rx_id`` the number is made up here (:meth:`new_rx_id`, 40 random bits per
        organisation and day); one that another prescription holds already is someone else's
        -- nothing was submitted under it before this call proposed it -- so it is issued
        again under a fresh number (at most :data:`ISSUE_ID_ATTEMPTS` numbers, then a plain
        DUPLICATE_RX refusal): DuplicateRx ("that prescription exists: treat it as issued",
        CLI exit 4, the FHIR gateway's Location) would name another doctor's prescription."""
        if rx_id is not None:
            check_rx_id(rx_id)
        patient, pseud = self.patient(req.patient)
        lines = []
        for d in req.drugs:
            rec = self.drug(d.drug)
            lines.append({
                "code": rec["code"], "name": rec.get("generic_name", ""),
                "short_name": rec.get("short_name", ""), "spec": rec.get("spec", ""),
                "qty": d.qty, "days": req.days, "price_fen": rec.get("price_fen", 0),
            })
        me = self.s.identity
        insurer = patient.insurer
        if not insurer:
            acct = self.s.gateway.evaluate(SETTLEMENT, "get_account", {"pseudonym": pseud})
            insurer = str(acct.get("insurer", "")) if isinstance(acct, dict) else ""
        if not insurer:
            raise RxClientError("UNKNOWN_PATIENT", "the patient's insurer is unknown")
        recipients = {me.org: self.s.records_public_key(me.org)}
        if patient.user_org and patient.user_name:
            recipients["patient"] = self.s.user_public_key(patient.user_org, patient.user_name)
        else:
            raise RxClientError("UNKNOWN_PATIENT", "the patient has no wallet certificate")
        if req.pharmacy:
            recipients[req.pharmacy] = self.s.records_public_key(req.pharmacy)
        insurer_key = self.s.records_public_key(insurer)
        parties = self._endorsers(me.org, req.pharmacy, insurer)[:2]
        for _ in range(ISSUE_ID_ATTEMPTS):
            number = rx_id or self.new_rx_id()
            content: dict[str, Any] = {
                "rx_id": number, "patient": pseud, "diagnosis": req.diagnosis,
                "first_visit": req.first_visit, "drugs": lines, "days": req.days,
                "long_rx": req.long_rx, "max_fills": req.max_fills,
                "fill_interval_days": req.fill_interval_days, "valid_days": req.valid_days,
                "patient_info": {"birth_date": patient.birth_date, "name": patient.display_name},
                "prescriber": {"org": me.org, "name": me.user,
                               "dr_code": me.attrs.get("dr_code", "")},
                "visit": {"type": "internet-follow-up", "id": req.visit_id or number},
            }
            if req.chronic_reason:
                content["chronic_reason"] = req.chronic_reason
            if req.stability_assessment:
                content["stability_assessment"] = req.stability_assessment
            if req.patient_confirmed:
                content["patient_confirmed"] = True
            if req.guardian:
                content["patient_info"]["guardian"] = req.guardian
            sealed = seal_prescription(
                number, content, recipients, insurer, insurer_key, req.pharmacy, self.s.dx_key, self._rand,
                hospital=(me.org, self.s.identity.private_key.public_key()),
            )
            try:
                res = self._submit_issue(sealed.args, sealed.transient, parties, me.org)
            except CommitUnknown as exc:
                # The rx id was made up here: without it the caller could not look the outcome up
                # and would issue again under a new one -- a second prescription.
                raise CommitUnknown(exc.tx_id, f"prescription {number} may have been issued: {exc.message}; "
                                    f"look it up (rx show {number}), or issue it again only under this same "
                                    f"rx id (a rerun of a committed issue is refused DUPLICATE_RX)",
                                    envelope=exc.envelope, rx_id=number) from exc
            except RxClientError as exc:
                if exc.reason != "DUPLICATE_RX":
                    raise
                if rx_id is not None:
                    raise DuplicateRx(rx_id, exc.message or f"prescription {rx_id} already exists") from exc
                continue  # a number made up here that another prescription holds: a fresh one
            return _written(res, {"rx_id": number})
        raise EndorsementError("DUPLICATE_RX", f"{ISSUE_ID_ATTEMPTS} fresh prescription numbers were each taken "
                               "by another prescription (is the random source broken?); nothing was issued")

    def _submit_issue(self, args: dict[str, Any], transient: dict[str, Any], parties: list[str],
                      hospital: str) -> SubmitResult:
        """Submit ``issue``; once more without the issuing hospital's copy of the claim key when
        the deployed prescription contract predates it (it holds ``claim_keys`` to exactly the
        patient's insurer: BAD_ARGUMENTS naming ``claim_keys``, nothing written), so a client
        upgraded before the contract still issues -- that prescription's claim key then reaches
        a later insurer from the insurer of the issue only (contracts/README.md "Moving an
        account", deploy order)."""
        try:
            return self.s.gateway.submit(RX, "issue", args, transient, endorsing_orgs=parties)
        except EndorsementError as exc:
            claim_keys = args.get("claim_keys")
            if exc.reason != "BAD_ARGUMENTS" or not isinstance(claim_keys, dict) or hospital not in claim_keys:
                raise
            without = {k: v for k, v in claim_keys.items() if k != hospital}
            # the old contract's refusal names the insurer the issue wrapped the key for: one naming
            # another (her insurer is not the one this client took) is no refusal of the copy --
            # proposing again without it would be refused alike (review18)
            if len(without) != 1 or not (exc.message or "").endswith(OLD_CLAIM_KEYS_REFUSAL + next(iter(without))):
                raise
            return self.s.gateway.submit(RX, "issue", {**args, "claim_keys": without}, transient,
                                         endorsing_orgs=parties)

    def _sealed(self, rx_id: str, action: str, note: str) -> dict[str, Any]:
        """``{"note_ct": ...}`` with ``note`` encrypted under the note key in force for
        ``rx_id`` (the record key until a withdrawal of consent made a note key: then also
        ``note_epoch``, its number), or ``{}`` without a note."""
        if not note:
            return {}
        opened = self._get_key(rx_id)
        key = opened.note_key(opened.note_epoch)
        if key is None:
            raise NoKeyGrant(f"note key {opened.note_epoch} of {rx_id} does not open with the caller's keys")
        out: dict[str, Any] = {"note_ct": seal_note(key, rx_id, action, note)}
        if opened.note_epoch:  # sent only then: a contract from before note keys knows no note_epoch
            out["note_epoch"] = opened.note_epoch
        return out

    def _submit_noted(self, fn: str, args: dict[str, Any], action: str, note: str) -> dict[str, Any]:
        """Submit ``fn`` with ``note`` sealed under the note key in force; once more when a
        withdrawal of consent made a new note key between the key fetch and the submit
        (NOTE_KEY_STALE: nothing was written)."""
        for attempt in range(2):
            try:
                return _written(self.s.gateway.submit(RX, fn, {**args, **self._sealed(args["rx_id"], action, note)}))
            except RxClientError as exc:
                if exc.reason != "NOTE_KEY_STALE" or attempt == 1:
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def review(self, rx_id: str, approve: bool, reason: str = "", note: str = "") -> dict[str, Any]:
        """Approve, or reject with a code (free text becomes OTHER + an encrypted note)."""
        if approve:
            code, text = "", (reason + "\n" + note).strip()
        else:
            r = split_reason(REVIEW, reason, note)
            code, text = r.code, r.note
        args: dict[str, Any] = {"rx_id": rx_id, "approve": approve, "reason": code}
        return self._submit_noted("review", args, REVIEW, text)

    def route(self, rx_id: str, pharmacy: str) -> dict[str, Any]:
        """(Re-)route: re-wrap the content key (and the note keys) for the new pharmacy.

        A re-route away from a pharmacy also makes a fresh note key wrapped for every reader
        left (the patient, the hospital, the new pharmacy, the consents: the contract checks
        the set; never the insurer or the pharmacy routed away) under which every later note is
        encrypted: the pharmacy routed away keeps the keys it fetched before, and reads no note
        written after this. A first route makes none (``new_note_keys`` {}: refused, nothing
        written, if a route went in meanwhile). The patient's copy is wrapped for her
        certificate (:meth:`_patient_key`). When a reader's key is not at hand, or the
        prescription holds the most note keys already, the re-route goes in all the same
        without a new key (the pharmacy routed away reads later notes) and the answer says so
        in ``note_key_skipped``, as a withdrawal does. A contract whose ``get_key`` names no
        routed pharmacy makes no key on a re-route: routed as before. The readers or the note
        keys changed between the key fetch and the route (BAD_ARGUMENTS naming ``note_keys``,
        nothing written): fetched and sent once more.

        Only a caller that opens the record key can wrap it for the new pharmacy: the patient, a
        doctor or pharmacist (the contract's ``get_key`` gives an organisation's grant to these
        roles only). Any other role -- a hospital admin, whom the contract lets route but who
        reads no prescription -- is refused WRONG_ROLE before anything is submitted (its key
        fetch would commit an audited denial, and no key could reach the pharmacy)."""
        role = self.s.identity.role
        if role not in REWRAP_ROLES:
            raise RxClientError("WRONG_ROLE", f"a route re-wraps the record key (and the note keys) for the new "
                                f"pharmacy, which a {role} cannot open (the contract gives an organisation's key "
                                f"grant to doctors and pharmacists only): route {rx_id} as a doctor or pharmacist "
                                f"of the issuing hospital, or as the patient; nothing was submitted")

        def build() -> tuple[dict[str, Any], str]:
            opened = self._get_key(rx_id)
            args: dict[str, Any] = {"rx_id": rx_id, "pharmacy": pharmacy, **self._keys_for(opened, pharmacy)}
            skipped = ""
            if opened.routed == "":
                args["new_note_keys"] = {}  # nobody is routed away
            elif opened.routed is not None and opened.readers is not None:
                left = [p for p in opened.readers if p != opened.routed]
                keys, skipped = self._new_note_key(opened, list(dict.fromkeys([*left, pharmacy])))
                if keys is not None:
                    args["new_note_keys"] = keys
            return args, skipped

        return self._submit_rewrapped(rx_id, "route", build)

    def _submit_rewrapped(self, rx_id: str, fn: str, build: Callable[[], tuple[dict[str, Any], str]],
                          keyed: str | None = None) -> dict[str, Any]:
        """Submit ``fn`` with the arguments ``build()`` makes from a fresh key fetch (and why no
        note key was made, "" if one was: the answer's ``note_key_skipped``), naming the record's
        parties as endorsers for a patient's session. When the readers or the note keys moved
        between the key fetch and the submit (:func:`_readers_moved`, nothing written) and the
        arguments carried ``keyed`` (None: whatever they carried), fetched, built and sent once more."""
        for attempt in range(2):
            args, skipped = build()
            try:  # (a patient's call: her binding goes with it, to the record's parties)
                out = _written(self.s.gateway.submit(RX, fn, args, endorsing_orgs=self._own_endorsers(rx_id)))
            except RxClientError as exc:
                if not _readers_moved(exc) or (keyed is not None and keyed not in args) or attempt == 1:
                    raise
                continue
            if skipped:
                out["note_key_skipped"] = skipped
            return out
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _keys_for(self, opened: OpenedRecord, org: str) -> dict[str, Any]:
        """A new reader's arguments: the record key and the note keys made so far, each wrapped
        for ``org``'s records certificate (a contract from before note keys knows no note_keys)."""
        pub = self.s.records_public_key(org)
        out: dict[str, Any] = {"wrapped_key": wrap_for(pub, opened.record_key, opened.rx_id, org)}
        if opened.note_epoch:
            out["note_keys"] = wrap_note_keys(pub, opened, org)
        return out

    def _patient_key(self, opened: OpenedRecord) -> ec.EllipticCurvePublicKey:
        """The key the patient's grant is wrapped for: the caller's own when she is the
        patient, else her wallet certificate's, found through the local patient directory by
        the prescription's pseudonym (as :meth:`issue` wraps it); UNKNOWN_PATIENT when the
        directory names no patient with a wallet certificate for it."""
        if self.s.identity.role == "patient":
            return self.s.identity.private_key.public_key()
        found = self.s.directory.by_pseudonym(self.s.net.secret, str(opened.body.get("patient", "")))
        if found is None or not (found.user_org and found.user_name):
            raise RxClientError("UNKNOWN_PATIENT", f"the patient of {opened.rx_id} has no wallet certificate "
                                "in the local patient directory")
        return self.s.user_public_key(found.user_org, found.user_name)

    def _new_note_key(self, opened: OpenedRecord, readers: Sequence[str]) -> tuple[dict[str, str] | None, str]:
        """A fresh note key, number ``opened.note_epoch`` + 1, wrapped for each of ``readers``
        (``patient``: :meth:`_patient_key`; an organisation: its records certificate), and
        ""; or None and why not: a reader's key is not at hand (not in the directory, a
        certificate revoked or expired), or the prescription holds MAX_NOTE_KEYS already."""
        epoch = opened.note_epoch + 1
        if epoch > MAX_NOTE_KEYS:
            return None, f"NOTE_KEYS_EXHAUSTED: {opened.rx_id} holds {MAX_NOTE_KEYS} note keys, the most one holds"
        key = aead.new_record_key()
        try:
            return {party: wrap_note_key(self._patient_key(opened) if party == "patient"
                                         else self.s.records_public_key(party), key, opened.rx_id, party, epoch)
                    for party in readers}, ""
        except RxClientError as exc:
            return None, f"{exc.reason}: {exc.message}"

    def lock(self, rx_id: str) -> dict[str, Any]:
        """Lock for dispensing."""
        return _written(self.s.gateway.submit(RX, "lock", {"rx_id": rx_id}))

    def release(self, rx_id: str, lock_id: str | None = None) -> dict[str, Any]:
        """Release a lock: with ``lock_id`` (the token :meth:`lock` returned) only that lock,
        refused ALREADY_LOCKED when the pharmacy now holds another one (released and taken
        again by another call); without it whichever lock the pharmacy holds."""
        args: dict[str, Any] = {"rx_id": rx_id}
        if lock_id:
            args["lock_id"] = lock_id
        return _written(self.s.gateway.submit(RX, "release", args))

    def _lock_or_borrow(self, rx_id: str) -> tuple[dict[str, Any] | None, str, int | None]:
        """Lock: (the lock's answer, its token, the fill it is for). (None, the held lock's
        token, its fill) when the caller's pharmacy holds the lock already (another call's, or
        one taken with ``rx lock``): the dispense then runs under that lock -- and only that
        one. The token is "" for a contract or a lock from before lock tokens; the fill None
        when the answer names none."""
        try:
            locked = self.lock(rx_id)
            return locked, str(locked.get("lock_id") or ""), _int_or_none(locked.get("fill"))
        except RxClientError as exc:
            if exc.reason != "ALREADY_LOCKED":
                raise
            try:
                meta = self.s.gateway.evaluate(RX, "show", {"rx_id": rx_id})
            except RxClientError as read:
                # no party (answered as a missing id; ACCESS_DENIED: a contract from before
                # that): not its pharmacy's lock, and the lock's refusal is the answer -- never
                # a NOT_FOUND for a prescription the lock just called locked
                if read.reason not in ("NOT_FOUND", "ACCESS_DENIED"):
                    raise
                raise exc from read
            held = meta.get("lock") if isinstance(meta, dict) else None
            if not isinstance(held, dict) or held.get("org") != self.s.identity.org:
                raise
            # the same snapshot as the lock: while it is held, its fill is the one after those made
            fills = _int_or_none(meta.get("fills"))
            return None, str(held.get("tx_id") or ""), None if fills is None else fills + 1

    def dispense(self, rx_id: str, trace_codes: Sequence[str] = (),
                 auto_lock: bool = True, lock_id: str | None = None) -> dict[str, Any]:
        """Lock (unless we already hold the lock), decrypt, and dispense with trace codes.

        Locking first lets the contract answer a pharmacy that may not dispense with its own
        reason (NOT_ROUTED, ALREADY_DISPENSED, ALREADY_LOCKED ...) before any key is fetched.
        The dispense names the lock it runs under (``lock_id``: the token of the lock this call
        took, or of its pharmacy's lock it found held), so a call that stalled never dispenses
        under a lock another call took since (the next fill's): ALREADY_LOCKED. With
        ``lock_id`` (the token ``rx lock`` printed) it dispenses under that lock only and takes
        none, whatever ``auto_lock`` says; without either it names none.
        A lock this call took is released again when the dispense is refused (TRACE_CODE_REUSED,
        HASH_MISMATCH ...: nothing was dispensed), so the prescription does not stay locked
        against every other pharmacy; never when the outcome is unknown (CommitUnknown). The
        release names the lock's token, so it drops only the lock this call took: when that
        lock is gone meanwhile (dispensed under by another call of the pharmacy, released) and
        another call holds a new one, the release is refused and that lock stays.
        A call that found its pharmacy holding the lock (another call's) and is refused
        NOT_LOCKED -- that lock was released before the dispense, e.g. by its own call's refused
        dispense -- takes a lock of its own and dispenses once more (auto_lock only), the same
        fill only: when the lock it found held went out with its fill meanwhile (its taker
        dispensed under it) the new lock is the next fill's, released again, and the answer is
        ALREADY_DISPENSED -- a stalled call never dispenses the fill after the one it was for.
        """
        opened: OpenedRecord | None = None
        take = auto_lock and not lock_id
        meant: int | None = None  # the fill of the lock the first attempt took or found held
        for attempt in range(2):
            locked: dict[str, Any] | None = None
            token = lock_id or ""
            if take:
                locked, token, fill = self._lock_or_borrow(rx_id)
                if attempt == 0:
                    meant = fill
                elif meant is not None and fill is not None and fill != meant:
                    if locked is not None:
                        with contextlib.suppress(Exception):  # best effort, as below
                            self.release(rx_id, token or None)
                    raise RxClientError("ALREADY_DISPENSED", f"fill {meant} of {rx_id} was dispensed meanwhile "
                                        f"under the lock this call found held (another call's); this call does "
                                        f"not dispense fill {fill}")
            try:
                if opened is None:
                    opened = self._get_key(rx_id)
                transient: dict[str, Any] = {"content": opened.body, "salt": opened.salt}
                if trace_codes:
                    transient.update(trace_codes=list(trace_codes), trace_key=self.s.trace_key)
                parties = self._endorsers(self.s.identity.org, str(self._meta(rx_id).get("hospital", "")))
                out = _written(self._submit_dispense(rx_id, token, transient, parties, resend=take))
            except CommitUnknown:
                raise  # may have dispensed (and so cleared the lock): leave it
            except RxClientError as exc:
                if locked is not None:
                    # best effort: the refusal is the answer, whatever the release runs into (a
                    # closed channel raises ValueError, not RxClientError)
                    with contextlib.suppress(Exception):
                        # a contract from before lock tokens returns none: release as it did
                        self.release(rx_id, token or None)
                elif take and attempt == 0 and exc.reason == "NOT_LOCKED":
                    continue  # the borrowed lock was dropped by its taker: lock, dispense again
                raise
            if locked is not None:
                out["lock_block"] = locked["block"]
            return out
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _submit_dispense(self, rx_id: str, token: str, transient: dict[str, Any],
                         parties: list[str], resend: bool) -> SubmitResult:
        """``dispense`` naming lock ``token`` ("" = none). A contract from before dispense
        tokens refuses the argument when it is endorsed (nothing was submitted): with
        ``resend`` (the token of a lock this call took or found held) the dispense is sent once
        more without it, under whichever lock the pharmacy holds, as that release dispensed;
        a token the caller named is refused (BAD_ARGUMENTS): that contract cannot dispense
        under that lock only."""
        args: dict[str, Any] = {"rx_id": rx_id}
        if token:
            args["lock_id"] = token
        try:
            return self.s.gateway.submit(RX, "dispense", args, transient, endorsing_orgs=parties)
        except RxClientError as exc:
            if not token or exc.reason != "BAD_ARGUMENTS" or "unknown argument(s) lock_id" not in exc.message:
                raise
            if not resend:
                raise EndorsementError("BAD_ARGUMENTS", f"the prescription contract predates dispense tokens: "
                                       f"it cannot dispense under lock {token} only (nothing was dispensed); "
                                       f"dispense without lock_id, under whichever lock the pharmacy "
                                       f"holds") from exc
        return self.s.gateway.submit(RX, "dispense", {"rx_id": rx_id}, transient, endorsing_orgs=parties)

    def deliver(self, rx_id: str, fill: int = 0) -> dict[str, Any]:
        """The dispensing pharmacy's courier (a hospital pharmacy's pharmacist, at the counter)
        confirms the hand-over of fill ``fill`` (0: the contract's default, the latest fill of
        the caller's pharmacy not handed over yet). ``fill`` is sent only when named, so a
        contract from before ``deliver`` took it still serves the default."""
        args: dict[str, Any] = {"rx_id": rx_id}
        if fill:
            args["fill"] = fill
        return _written(self.s.gateway.submit(RX, "deliver", args))

    def revoke(self, rx_id: str, reason: str, note: str = "") -> dict[str, Any]:
        """Revoke before dispensing: ``reason`` is a code, or free text that becomes OTHER
        with the text in a note encrypted under the record key (never plaintext on-chain)."""
        r = split_reason(REVOKE, reason, note)
        return self._submit_noted("revoke", {"rx_id": rx_id, "reason": r.code}, REVOKE, r.note)

    def _notes_opened(self, rx_id: str, items: list[tuple[str, dict[str, Any]]],
                      opened: OpenedRecord | None) -> None:
        """Replace each item's ``note_ct`` by ``note`` (decrypted text, or None when the
        caller holds no key for it: the note key ``note_epoch`` it was written under, 0 or
        absent for the record key; a reversal note: the reversing insurer's records key, or, one
        an earlier client sealed, the claim key of the caller's insurer grant). ``items`` are
        (action, record) pairs."""
        for action, rec in items:
            ct = str(rec.pop("note_ct", "") or "")
            epoch = rec.pop("note_epoch", 0)
            if not ct:
                continue
            if action == REVERSE and is_insurer_note(ct):
                text = open_insurer_note(self.s.decryption_keys(), rx_id, self.s.identity.org, ct)
                if text is not None:
                    rec["note"] = text
                    continue
            want = "claim" if action == REVERSE else "content"
            key = None
            if opened is not None and opened.kind == want and type(epoch) is int:
                key = opened.note_key(epoch)
            rec["note"] = open_note(key, rx_id, action, ct) if key is not None else None

    def show(self, rx_id: str) -> dict[str, Any]:
        """Metadata, plus the decrypted content when the caller holds a key grant.

        Raises NO_KEY_GRANT when the caller has neither a grant nor a right to the metadata
        (the contract's ``get_key`` answers anyone without a grant so, audited, as DOMAIN.md
        section 4 requires; its ``show`` answers a non-party as a missing id); a party whose
        org or role holds no grant reads the metadata (``content`` None, ``denied``
        NO_KEY_GRANT; KEY_NOT_HELD when it holds a grant its wallet's keys do not open: one
        wrapped for a records certificate its org rotated away from, without that certificate's
        key in previous-records-keys/). NOT_FOUND: no prescription of that id.
        """
        denied: NoKeyGrant | None = None
        opened: OpenedRecord | None = None
        try:
            opened = self._get_key(rx_id)
        except NoKeyGrant as exc:
            denied = exc
        try:
            meta = self.s.gateway.evaluate(RX, "show", {"rx_id": rx_id})
        except RxClientError as exc:
            # a non-party: the audited key denial is the answer (ACCESS_DENIED: a contract from
            # before non-parties' views were answered NOT_FOUND)
            if denied is not None and exc.reason in ("ACCESS_DENIED", "NOT_FOUND"):
                raise denied from exc
            raise
        if not isinstance(meta, dict):
            meta = {}
        out = {k: v for k, v in meta.items()
               if k not in ("ciphertext", "claim_ciphertext")}
        out["rx_id"] = rx_id
        for action, field in ((REVIEW, "review"), (REVOKE, "revocation")):
            if isinstance(out.get(field), dict):
                rec = dict(out[field])
                self._notes_opened(rx_id, [(action, rec)], opened)
                out[field] = rec
        if opened is not None:
            out[opened.kind] = opened.body
            out["grant"] = opened.party
        else:
            out["content"] = None
            out["grant"] = None
            out["denied"] = denied.reason if denied is not None else "NO_KEY_GRANT"
        return out

    def _all_pages(self, fn: str, rx_id: str, items: str, contract: str = RX) -> dict[str, Any]:
        """Every page of a paged view (``start``/``next``) of one prescription, its ``items``
        concatenated; at most MAX_PAGES pages, and a cursor that does not move is an error."""
        start, merged = "", None
        for _ in range(MAX_PAGES):
            res = self.s.gateway.evaluate(contract, fn, {"rx_id": rx_id, "start": start})
            if not isinstance(res, dict) or not isinstance(res.get(items), list):
                raise RxClientError("BAD_PAYLOAD", f"{fn} returned no object with a list of {items}")
            if merged is None:
                merged = res
            else:
                merged[items].extend(res[items])
                for k in ("unreadable", "status"):
                    if k in res:
                        merged[k] = res[k]
            nxt = res.get("next", "")
            if not nxt:
                merged["next"], merged["truncated"] = "", bool(merged.get("unreadable"))
                return merged
            if nxt == start:
                raise RxClientError("BAD_PAYLOAD", f"{fn}: the page cursor did not move")
            start = str(nxt)
        assert merged is not None
        merged["truncated"] = True  # more pages than MAX_PAGES: say so, never drop silently
        return merged

    def trace(self, rx_id: str) -> dict[str, Any]:
        """The trail in order: step, actor, org, role, time, tx_id, block (every page);
        ``truncated`` when steps are missing (beyond ``MAX_PAGES`` pages, or versions the
        peer's history index does not hold: ``unreadable``)."""
        res = self._all_pages("trace", rx_id, "steps")
        steps = []
        notes: list[tuple[str, dict[str, Any]]] = []
        seen: set[tuple[str, str]] = set()
        for st in res.get("steps") or []:
            # the trace pages by version and each fill's claim events: a step comes once; a
            # contract of an earlier release counted claim events in time order, so an event
            # committed between two pages with an earlier timestamp (client clocks differ)
            # made the next page repeat one (its position cursors shift on any step): a step
            # is one transaction's (tx_id, step)
            ident = (str(st.get("tx_id") or ""), str(st.get("step")))
            if ident[0]:
                if ident in seen:
                    continue
                seen.add(ident)
            block = st.get("block")
            if block is None and st.get("tx_id"):
                block = self.s.gateway.tx_block(str(st["tx_id"]))
            row: dict[str, Any] = {"step": st.get("step"), "actor": st.get("actor"),
                                   "org": st.get("org"), "role": st.get("role"),
                                   "time": st.get("time"), "tx_id": st.get("tx_id"),
                                   "block": block}
            detail = st.get("detail") if isinstance(st.get("detail"), dict) else {}
            if detail.get("reason"):
                row["reason"] = detail["reason"]
            if detail.get("note_ct") and row["step"] in (REVIEW, REVOKE, REVERSE):
                row["note_ct"] = detail["note_ct"]
                row["note_epoch"] = detail.get("note_epoch", 0)
                notes.append((str(row["step"]), row))
            steps.append(row)
        if notes:
            opened: OpenedRecord | None = None
            try:
                opened = self._get_key(rx_id)
            except NoKeyGrant:
                opened = None
            except RxClientError as exc:
                # gone since the trail was read (erased), or a contract answering a non-party's
                # key request as a missing id: the trail stands, its notes stay sealed
                if exc.reason != "NOT_FOUND":
                    raise
                opened = None
            self._notes_opened(rx_id, notes, opened)
        out = {"rx_id": rx_id, "status": res.get("status"), "steps": steps, "truncated": res.get("truncated", False)}
        if res.get("unreadable"):
            out["unreadable"] = res["unreadable"]
        return out

    def list_prescriptions(self, patient: str | None = None, start: str = "",
                           limit: int = 50) -> dict[str, Any]:
        """Prescription metadata: one patient's (patient, hospital admin, auditor) or all
        (auditor), paged by rx id (``next`` is the start of the following page)."""
        if patient:
            pseud = self.pseudonym(patient)
            res = self.s.gateway.evaluate(RX, "patient_prescriptions",
                                          {"patient": pseud, "start": start, "limit": limit})
        else:
            res = self.s.gateway.evaluate(RX, "list_prescriptions",
                                          {"start": start, "limit": limit})
        if not isinstance(res, dict):
            raise RxClientError("BAD_PAYLOAD", "listing returned no object")
        return res

    def audit(self, rx_id: str) -> dict[str, Any]:
        """Every grant, key fetch and denial of a prescription (metadata only, every page)."""
        return self._all_pages("audit_trail", rx_id, "events")

    def grant_consent(self, rx_id: str, org: str) -> dict[str, Any]:
        """The patient shares her prescription with another organisation (re-wrapped record
        key and note keys: it reads the notes written so far)."""
        args: dict[str, Any] = {"rx_id": rx_id, "org": org, **self._keys_for(self._get_key(rx_id), org)}
        return _written(self.s.gateway.submit(RX, "grant_consent", args,
                                              endorsing_orgs=self._own_endorsers(rx_id)))

    def revoke_consent(self, rx_id: str, org: str) -> dict[str, Any]:
        """The patient withdraws a consent grant, and makes a fresh note key wrapped for every
        other reader of the record (herself, the hospital, the routed pharmacy, the other
        consents: the contract checks the set) under which every later note is encrypted:
        ``org`` keeps the keys it fetched before, and reads no note written after this.
        A contract from before note keys (its ``get_key`` names no readers) only withdraws.
        When a reader's records certificate is not usable now (revoked, expired) no key can
        reach it, nor once the prescription holds the most note keys (MAX_NOTE_KEYS): the
        consent is withdrawn all the same (no later key fetch, no view) without a note key,
        and the answer says so in ``note_key_skipped`` -- withdrawing that reader's consent
        first, or routing away from it, lets a withdrawal make one again.
        The readers or the note keys changed between the key fetch and the withdrawal (a
        route, another consent: BAD_ARGUMENTS naming ``note_keys``, or NOTE_KEY_STALE: a
        re-route made a key; nothing written): fetched and sent once more."""
        def build() -> tuple[dict[str, Any], str]:
            args: dict[str, Any] = {"rx_id": rx_id, "org": org}
            opened = self._get_key(rx_id)
            skipped = ""
            if opened.readers is not None:
                keys, skipped = self._new_note_key(opened, [p for p in opened.readers if p != org])
                if keys is not None:
                    args["note_keys"] = keys
                    if opened.routed is not None:  # (a contract naming no routed pharmacy takes no number)
                        args["note_epoch"] = opened.note_epoch + 1
            return args, skipped

        return self._submit_rewrapped(rx_id, "revoke_consent", build, "note_keys")

    # ------------------------------------------------------------ claims, patients
    def _claim_grant(self, rx_id: str) -> OpenedRecord:
        opened = self._get_key(rx_id)
        if opened.kind != "claim":
            raise RxClientError("WRONG_ROLE", "the caller holds no insurer claim grant")
        return opened

    def settle(self, rx_id: str, fill: int = 0, lines: Sequence[ClaimLine] | None = None,
               expect_medfee_fen: int | None = None) -> dict[str, Any]:
        """Decrypt the claim subset and settle (insurer clerk). ``lines``: claim these
        (national code, boxes) only, not everything dispensed (the contract checks them
        against the fill: ITEM_NOT_DISPENSED, QTY_EXCEEDS_DISPENSED). ``expect_medfee_fen``:
        the settlement is first evaluated (nothing written) and refused AMOUNT_MISMATCH,
        before anything is submitted, when its medical fee differs; the submit then names the
        fill the preview priced (``fill`` 0: the latest fill as of the preview)."""
        opened = self._claim_grant(rx_id)
        meta = self._meta(rx_id)
        parties = self._endorsers(self.s.identity.org, str(meta.get("pharmacy", "")),
                                  str(meta.get("hospital", "")))[:2]
        transient: dict[str, Any] = {"claim": opened.body, "claim_salt": opened.salt}
        if lines is not None:
            transient["lines"] = [{"code": ln.code, "qty": ln.qty} for ln in lines]
        args = {"rx_id": rx_id, "fill": fill}
        if expect_medfee_fen is not None:
            preview = self.s.gateway.evaluate(SETTLEMENT, "settle", args, transient)
            medfee = preview.get("medfee_fen") if isinstance(preview, dict) else None
            if medfee != expect_medfee_fen:
                raise RxClientError("AMOUNT_MISMATCH", f"the claim's medical fee is {medfee} fen, "
                                    f"not the {expect_medfee_fen} fen expected; nothing was settled")
            priced = preview.get("fill") if isinstance(preview, dict) else None
            if fill == 0 and isinstance(priced, int) and not isinstance(priced, bool) and priced > 0:
                # settle the fill the preview priced: "the latest fill" may be another one by the
                # submit (dispensed in between), at another fee nobody checked
                args["fill"] = priced
        res = self.s.gateway.submit(SETTLEMENT, "settle", args, transient, endorsing_orgs=parties)
        return _written(res)

    def grant_claim_key(self, rx_id: str, org: str) -> dict[str, Any]:
        """Hand the prescription's claim key (an insurer clerk holding it) to insurer ``org``,
        wrapped for its records certificate: the insurer of record of the fills dispensed after
        the patient's account moved to it (the contract refuses any other NOT_INSURER_OF_FILL),
        which then opens the claim subset and settles them (:meth:`settle`). A doctor of the
        issuing hospital hands over the copy its issue kept (prescriptions issued by this SDK
        since the copy was kept; wrapped for the issuing doctor's certificate key, so it opens
        for her: ``get_key`` serves the copy to the hospital's doctors only): when the insurer
        of the issue never does. Not done on its own
        when the hospital's client sees a move: the doctor decides (``rxchain rx
        grant-claim-key``)."""
        opened = self._get_key(rx_id)
        if opened.kind == "claim":
            key = opened.record_key
        elif opened.claim_key is not None:
            key = opened.claim_key
        else:
            raise RxClientError("WRONG_ROLE", "the caller holds no claim key of " + rx_id
                                + " (an insurer claim grant, or the issuing hospital's copy: served to its"
                                " doctors, opening with the issuing doctor's key)")
        wrapped = wrap_for(self.s.records_public_key(org), key, rx_id, org)
        res = self.s.gateway.submit(RX, "grant_claim_key",
                                    {"rx_id": rx_id, "org": org, "wrapped_key": wrapped})
        return _written(res)

    def claim_lines_commitment(self, rx_id: str, lines: Sequence[ClaimLine] | None = None) -> str:
        """The ``lines_commitment`` a settlement of ``lines`` (default: everything the
        prescription's claim subset lists) records (:func:`claim_lines_commitment_of`). Compares
        a claim request with a settled claim without the ledger holding its lines in clear."""
        opened = self._claim_grant(rx_id)
        wanted = lines if lines is not None else [
            ClaimLine(str(ln.get("code", "")), int(ln.get("qty", 0)))
            for ln in opened.body.get("lines") or [] if isinstance(ln, dict)]
        return claim_lines_commitment_of(opened.salt, wanted)

    def claim(self, claim_id: str, *, open_note: bool = True) -> dict[str, Any]:
        """A claim record (``settlement.get_claim``: its insurer, the patient's hospital, the
        patient, auditors); CLAIM_NOT_FOUND when there is none the caller may read (a claim of
        someone else's is answered as missing), ACCESS_DENIED for a role that reads no claims.
        A reversed claim's note is opened for its insurer as ``reversal_note`` (null for every
        other reader, and when no key opens it; :meth:`_reversal_note`) unless ``open_note`` is
        False (the claims report: no key asked for per claim)."""
        rec = self.s.gateway.evaluate(SETTLEMENT, "get_claim", {"claim_id": claim_id})
        if not isinstance(rec, dict):
            raise RxClientError("BAD_PAYLOAD", "get_claim returned no object")
        ct = rec.get("reversal_note_ct")
        if open_note and isinstance(ct, str) and ct:
            rec["reversal_note"] = self._reversal_note(str(rec.get("rx_id") or ""), str(rec.get("insurer") or ""), ct)
        return rec

    def _reversal_note(self, rx_id: str, insurer: str, ct: str) -> str | None:
        """A claim's reversal note as ``trace`` opens it (None when the caller holds no key for
        it; ``reversal_note_ct`` stays in the record): one sealed for the reversing insurer
        (client.notes.seal_insurer_note) with the caller's records keys when it is that insurer;
        one an earlier client sealed under the claim key with the caller's claim grant -- asked of
        ``get_key`` (audited) only then, and only by the claim's insurer."""
        me = self.s.identity
        if not rx_id or me.org != insurer:
            return None
        if is_insurer_note(ct):
            text = open_insurer_note(self.s.decryption_keys(), rx_id, me.org, ct)
            if text is not None:
                return text
        try:
            opened: OpenedRecord | None = self._get_key(rx_id)
        except NoKeyGrant:
            return None
        except RxClientError as exc:
            if exc.reason != "NOT_FOUND":  # (erased since: the claim stands, its note stays sealed)
                raise
            return None
        item: dict[str, Any] = {"note_ct": ct}
        self._notes_opened(rx_id, [(REVERSE, item)], opened)
        note = item.get("note")
        return note if isinstance(note, str) else None

    def inbox(self, start: int, max_blocks: int = MAX_INBOX_BLOCKS) -> dict[str, Any]:
        """The prescriptions the caller's pharmacy (or hospital pharmacy) serves, from the
        events of blocks ``start`` on (:func:`client.inbox.pharmacy_inbox`): what changed and
        what there is to do. Staff of pharmacies and hospitals only (WRONG_ROLE otherwise: a
        patient, enrolled under her hospital, reads her own prescriptions, not its work)."""
        org = self.s.identity.org
        kind = self.s.net.org(org).kind
        if kind not in (config_pb2.PHARMACY, config_pb2.HOSPITAL):
            raise RxClientError("WRONG_ROLE", f"{org} is no pharmacy or hospital: it serves no prescriptions")
        if self.s.identity.role not in INBOX_ROLES:
            raise RxClientError("WRONG_ROLE", f"a {self.s.identity.role} has no pharmacy inbox: "
                                f"staff only ({', '.join(INBOX_ROLES)})")

        def read(rx_id: str) -> dict[str, Any] | None:
            try:
                meta = self.s.gateway.evaluate(RX, "show", {"rx_id": rx_id})
            except RxClientError as exc:
                if exc.reason not in ("ACCESS_DENIED", "NOT_FOUND"):
                    raise
                return None
            return meta if isinstance(meta, dict) else None

        def owed(rx_id: str) -> dict[int, str] | None:
            try:
                trail = self._all_pages("trace", rx_id, "steps")
            except RxClientError as exc:
                if exc.reason not in ("ACCESS_DENIED", "NOT_FOUND"):
                    raise
                return None
            return None if trail.get("truncated") else owed_of_trail(trail["steps"])

        return pharmacy_inbox(self.s.gateway.events, read, org, start, self.s.clock(), max_blocks, owed)

    def claim_report(self, start: int, max_blocks: int = MAX_REPORT_BLOCKS,
                     insurer: str | None = "") -> dict[str, Any]:
        """Claims settled and reversed from block ``start`` on, with totals in fen
        (:func:`client.reconcile.claim_report`). ``insurer``: "" = the caller's organisation
        when it is an insurer, else every insurer's; None = every insurer's; else that one.
        A role that reads no claims is refused (ACCESS_DENIED) at the first claim; an insurer's
        member asking for another insurer's claims before anything is read (it may read none of
        them: every one unreadable, a net of 0 fen that reads as "owes nothing")."""
        me = self.s.identity.org
        mine = me in self.s.net.insurers()
        if insurer == "":
            insurer = me if mine else None
        elif mine and insurer is not None and insurer != me:
            raise RxClientError("ACCESS_DENIED", f"{me} reads only its own claims, not {insurer}'s "
                                "(the regulator's auditors read every insurer's); nothing reported")

        def read(claim_id: str) -> dict[str, Any] | None:
            try:
                return self.claim(claim_id, open_note=False)
            except RxClientError as exc:
                if exc.reason != "CLAIM_NOT_FOUND":
                    raise
                return None

        return claim_report(self.s.gateway.events, read, start, max_blocks, insurer)

    def claim_steps(self, rx_id: str) -> list[dict[str, Any]]:
        """Every settle/reverse step of a prescription's claims (``settlement.trail``, every
        page; the parties of the prescription): step, actor, org, role, time_ms, tx_id, block,
        claim_id, fill."""
        res = self._all_pages("trail", rx_id, "steps", contract=SETTLEMENT)
        if res.get("truncated"):
            raise RxClientError("BAD_PAYLOAD", f"trail: more than {MAX_PAGES} pages")
        out = []
        for st in res["steps"]:
            detail = st.get("detail") if isinstance(st.get("detail"), dict) else {}
            out.append({**{k: v for k, v in st.items() if k != "detail"},
                        "claim_id": detail.get("claim_id"), "fill": detail.get("fill")})
        return out

    def trace_fills(self, rx_id: str, trace_codes: Sequence[str]) -> list[int]:
        """The fill of ``rx_id`` each box trace code was dispensed in, 0 for a code it never
        recorded (``prescription.trace_fills`` over the codes' keyed hashes; the parties)."""
        if not trace_codes:
            return []
        hashes = [trace_code_hash(self.s.trace_key, c) for c in trace_codes]
        res = self.s.gateway.evaluate(RX, "trace_fills", {"rx_id": rx_id, "hashes": hashes})
        fills = res.get("fills") if isinstance(res, dict) else None
        if not isinstance(fills, list) or len(fills) != len(hashes) or not all(
                isinstance(f, int) and not isinstance(f, bool) for f in fills):
            raise RxClientError("BAD_PAYLOAD", "trace_fills returned no list of fills, one per code")
        return fills

    def dispenses(self, rx_id: str) -> list[dict[str, Any]]:
        """Every dispense of a prescription, oldest first, from its trail (``trace``: the
        parties of the prescription, as ``show``): fill, boxes, trace_codes (how many the
        fill recorded), org (the pharmacy), actor (the pharmacist), time_ms, tx_id, block."""
        res = self._all_pages("trace", rx_id, "steps")
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        for st in res.get("steps") or []:
            detail = st.get("detail") if isinstance(st.get("detail"), dict) else {}
            if st.get("step") != "dispense" or not isinstance(detail.get("fill"), int) or detail["fill"] in seen:
                continue  # a page may repeat a step (see trace): one dispense per fill
            seen.add(detail["fill"])
            out.append({"fill": detail["fill"], "boxes": detail.get("boxes"),
                        "trace_codes": detail.get("trace_codes"), "org": st.get("org"),
                        "actor": st.get("actor"), "time_ms": st.get("time_ms"),
                        "tx_id": st.get("tx_id"), "block": st.get("block")})
        return out

    def reverse(self, claim_id: str, reason: str, note: str = "") -> dict[str, Any]:
        """Reverse a settled claim: ``reason`` is a code, or free text that becomes OTHER with
        the text in a note encrypted for the caller's insurer alone (a fresh key wrapped for its
        records certificate, client.notes.seal_insurer_note: not under the prescription's claim
        key, which the issuing hospital's doctor holds a copy of)."""
        r = split_reason(REVERSE, reason, note)
        args: dict[str, Any] = {"claim_id": claim_id, "reason": r.code}
        if r.note:
            me = self.s.identity
            if me.role != "clerk":
                raise RxClientError("WRONG_ROLE", "claims are reversed by an insurer's clerks")
            claim = self.s.gateway.evaluate(SETTLEMENT, "get_claim", {"claim_id": claim_id})
            rx_id = str(claim.get("rx_id", "")) if isinstance(claim, dict) else ""
            if not rx_id:
                raise RxClientError("CLAIM_NOT_FOUND", f"no claim {claim_id}")
            args["note_ct"] = seal_insurer_note(self.s.records_public_key(me.org), rx_id, me.org, r.note)
        rec = _written(self.s.gateway.submit(SETTLEMENT, "reverse", args))
        if rec.pop("reversal_note_ct", ""):
            rec["reversal_note"] = r.note
        return rec

    def _account_endorsers(self, pseud: str, *also: str) -> list[str] | None:
        """The endorsers of a transfer call by a session that adds her binding to its proposals
        (a patient's: the binding goes only with a call naming its endorsers, client.gateway):
        her insurer, ``also`` (the insurer asked) and her hospital that run a peer, this
        session's peer first if it is one of them, two of them (the settlement policy: an
        insurer's peer and one other). None (the gateway picks) for any other session."""
        if not self.s.gateway.default_transient:
            return None
        try:
            acct = self.s.gateway.evaluate(SETTLEMENT, "get_account", {"pseudonym": pseud})
        except EndorsementError as exc:
            if exc.reason != "NO_ACCOUNT":
                raise
            acct = None  # no account yet: her request asks ``also`` to open one
        enrol = self.s.gateway.evaluate("registry", "get_patient", {"pseudonym": pseud})
        insurer = str(acct.get("insurer", "")) if isinstance(acct, dict) else ""
        hospital = str(enrol.get("hospital", "")) if isinstance(enrol, dict) else ""
        parties = self._endorsers(insurer, *also, hospital)
        if self.s.peer_org in parties:
            parties.remove(self.s.peer_org)
            parties.insert(0, self.s.peer_org)
        return parties[:2] or None

    def request_transfer(self, ref: str, to_insurer: str) -> dict[str, Any]:
        """Ask to move patient ``ref``'s insurance account to ``to_insurer`` (the patient
        herself, or a clerk/admin of her insurer); it moves when a clerk/admin of
        ``to_insurer`` accepts (:meth:`accept_transfer`). A later request replaces this one (the
        patient's own only by her: her insurer is refused ACCESS_DENIED). The patient's request
        while no account of hers is open asks ``to_insurer`` to open it (``from`` ""; its
        clerk/admin then calls ``settlement.open_account``)."""
        pseud = self.pseudonym(ref)
        res = self.s.gateway.submit(SETTLEMENT, "request_transfer",
                                    {"pseudonym": pseud, "to_insurer": to_insurer},
                                    endorsing_orgs=self._account_endorsers(pseud, to_insurer))
        return {"patient": ref, **_written(res)}

    def accept_transfer(self, ref: str) -> dict[str, Any]:
        """Take over patient ``ref``'s account (clerk/admin of the insurer a pending request
        names); refused OPEN_CLAIMS while a dispensed fill of hers is unsettled. A fill its
        insurer left unsettled over 30 days no longer holds the move: the move lists it
        (``transfers[-1].unsettled``) and that insurer still settles it (:meth:`settle`) within
        30 days of the move (SETTLE_WINDOW_CLOSED after). A fill not yet dispensed holds no
        move: dispensed after it, it is the new insurer's (:meth:`grant_claim_key` hands it
        the claim key)."""
        res = self.s.gateway.submit(SETTLEMENT, "accept_transfer", {"pseudonym": self.pseudonym(ref)})
        return {"patient": ref, **_written(res)}

    def cancel_transfer(self, ref: str) -> dict[str, Any]:
        """Withdraw (the patient; her insurer one it asked for) or decline (the insurer asked) a
        pending move."""
        pseud = self.pseudonym(ref)
        res = self.s.gateway.submit(SETTLEMENT, "cancel_transfer", {"pseudonym": pseud},
                                    endorsing_orgs=self._account_endorsers(pseud))
        return {"patient": ref, **_written(res)}

    def reindex(self, org: str, name: str = "") -> dict[str, Any]:
        """Index one registration written before practitioner codes and pharmacy licences were
        indexed (``registry.reindex``): practitioner ``org``/``name``, or with ``name`` "" the
        pharmacy ``org`` (the admin of ``org``, or a regulator admin). Idempotent: ``changed``
        false when it was indexed already or is inactive; CODE_IN_USE / LICENCE_IN_USE when
        another active registration holds its code or licence."""
        return _written(self.s.gateway.submit(REGISTRY, "reindex", {"org": org, "name": name}))

    def revoke_registration(self, org: str, name: str = "", reason: str = "LICENCE_REVOKED") -> dict[str, Any]:
        """Revoke practitioner ``org``/``name``'s registration, or with ``name`` "" the pharmacy
        ``org``'s (``registry.revoke_registration``, a regulator admin): made inactive for good,
        its index entries (and a code holder's sites) withdrawn. ``reason`` one of
        LICENCE_REVOKED, LICENCE_SUSPENDED, ORGANISATION_CLOSED, DUPLICATE_REGISTRATION, OTHER.
        Idempotent: ``changed`` false when it was revoked already -- but a suspended one is made
        final by LICENCE_REVOKED, and ended by another reason (the suspension's bar on the code
        stays until lifted or made final). LIMIT_EXCEEDED: a suspension joining a code's bar
        with 16 entries already."""
        return _written(self.s.gateway.submit(REGISTRY, "revoke_registration",
                                              {"org": org, "name": name, "reason": reason}))

    def reinstate_registration(self, org: str, name: str = "") -> dict[str, Any]:
        """Lift the suspension (a LICENCE_SUSPENDED revocation) of practitioner ``org``/``name``'s
        registration, or with ``name`` "" the pharmacy ``org``'s
        (``registry.reinstate_registration``, a regulator admin): the mark moves to its
        ``reinstated`` history and the code's (licence's) bar goes once no other suspension
        holds it; the record is active again (``reactivated``) with a holder's sites still in
        force (``sites_restored``), unless ``reason`` says what stops it (its organisation then
        registers it again). Held back only by another suspension's bar, it waits for it
        (``pending``, the bar's key); the last suspension of a bar lifted reactivates those
        waiting, checked again (``pending_reactivated``: [{org, name, reactivated, reason,
        sites_restored, sites_not_restored}]). A registration ended while suspended has the
        suspension lifted and stays ended (``reason`` REVOCATION_FINAL). REVOCATION_FINAL (an
        error) for any other reason. Idempotent: ``changed`` false when it is not revoked."""
        return _written(self.s.gateway.submit(REGISTRY, "reinstate_registration",
                                              {"org": org, "name": name}))

    def patient_status(self, ref: str, year: int = 0) -> dict[str, Any]:
        """Deductible and cap used this year, and the account balance."""
        pseud = self.pseudonym(ref)
        res = self.s.gateway.evaluate(SETTLEMENT, "patient_status",
                                      {"pseudonym": pseud, "year": year})
        if not isinstance(res, dict):
            raise RxClientError("BAD_PAYLOAD", "patient_status returned no object")
        return {"patient": ref, **res}
