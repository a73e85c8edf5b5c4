"""The FHIR R5 HTTP gateway: how a hospital HIS or a pharmacy ERP talks to rxchain.

HTTPS with mandatory client certificates (``ssl``, CA bundle of the consortium). The caller's
certificate *is* its identity: the gateway finds the wallet in HOME whose ``cert.pem`` is
byte-identical to the presented certificate and signs transactions with that wallet's key.
A certificate without a wallet here is refused (403). Endpoints (JSON, ``application/fhir+json``):

* ``GET  /fhir/metadata``                      CapabilityStatement
* ``POST /fhir/MedicationRequest``             issue (a MedicationRequest or a Bundle of them)
* ``GET  /fhir/MedicationRequest/{rx_id}``     the prescription (decrypted if granted) for its
  parties; ``403`` NO_KEY_GRANT to anyone else (its key request is audited, DOMAIN.md
  section 4), ``404`` NOT_FOUND for an id never issued
* ``POST /fhir/MedicationDispense``            dispense the next fill (authorizingPrescription ->
  rx id, trace codes as ``extension`` ``urn:rxchain:rxTraceCode``; ``medication``/``quantity``
  must name a line of the prescription) -> Bundle of MedicationDispense (one per line, each
  with identifiers ``urn:rxchain:hiRxno:tx|TX_ID`` and ``urn:rxchain:dispense|RX_ID/FILL``),
  ``Location`` the prescription
* ``POST /fhir/Claim``                         settle a fill (``prescription`` -> rx id, a
  ``MedicationRequest`` reference or identifier; the fill: a ``supportingInfo`` whose
  ``valueReference`` is the MedicationDispense answered for it -- ``MedicationDispense/
  {rx_id}-fill{N}-{line}`` or identifier ``urn:rxchain:dispense|{rx_id}/{N}`` -- or whose
  ``valueIdentifier`` is that identifier; without one, the only fill dispensed, and 422
  FILL_NOT_NAMED once a second fill is (see below); optional ``item`` = national code + boxes
  to claim, ``total`` = the medical fee expected) -> Bundle(Claim, ClaimResponse),
  ``Location: /fhir/Claim/{claim_id}``
* ``GET  /fhir/Task?from-block=N&limit-blocks=M`` the pharmacy's inbox (:mod:`client.inbox`): a
  searchset Bundle of Tasks, one per prescription the caller's organisation serves that changed
  in the range (what to do: requested/ready/on-hold/in-progress, or completed/cancelled), and
  a ``cancelled`` Task (``businessStatus`` ``routed_elsewhere``, the prescription id only) per
  prescription of the range routed to another pharmacy; ``X-Rxchain-Next-Block`` names where
  the next poll starts
* ``GET  /fhir/PaymentReconciliation?from-block=N&limit-blocks=M`` an insurer's claims report
  (:mod:`client.reconcile`): the net fund share, one allocation per settle or reversal;
  ``X-Rxchain-Next-Block`` as for Task (also where a report cut short by its cap of claims
  read, ``client.reconcile.MAX_READS``, stopped)
* ``GET  /fhir/Claim/{claim_id}``              the Claim (``settlement.get_claim``'s readers);
  ``404`` CLAIM_NOT_FOUND both for an id never settled and for a claim the caller may not
  read, ``403`` ACCESS_DENIED for a role that reads no claims (pharmacy staff, couriers,
  nurses...) whatever the id: the answer never tells a non-reader that a claim exists

Errors are OperationOutcome resources whose ``details.coding[0].code`` is the reason code.

Status codes of a POST, by what the caller may do next:

* ``201 Created`` (``Location: /fhir/MedicationRequest/{rx_id}``): issued. If reading the new
  prescription back fails, still 201 with the Location and a warning OperationOutcome.
* ``200 OK`` (same Location): a MedicationRequest naming an identifier (see
  :mod:`client.fhir.idempotency`; ``If-None-Exist: identifier=SYSTEM|VALUE`` is FHIR
  conditional create) whose prescription already exists and is the one described: the
  existing prescription, nothing issued again.
* ``409 Conflict`` DUPLICATE_RX: the identifier names an existing prescription that differs
  from the request (or that the caller cannot read); its id is in ``diagnostics``.

Dispense and claim are retry-safe (:mod:`client.fhir.retry` has the matching rule): a
``POST /fhir/MedicationDispense`` or ``/fhir/Claim`` sent again after a lost answer (504,
502, a dropped connection) is compared with what the ledger holds, through the views a GET
reads (the caller gets back only what it may read):

* ``200 OK`` + ``Location``: the fill (claim) is on the ledger and is the one the request
  describes (same pharmacy and trace-code count; same insurer, fill, lines and medical fee):
  the Bundle the first success answered, nothing done again.
* ``409 Conflict`` ALREADY_DISPENSED / FILLS_EXHAUSTED / DUPLICATE_CLAIM: the fill (claim) is
  taken and is not the one described (another pharmacy, other trace codes, other lines or
  amounts), or the caller may not read it; ``diagnostics`` names ``rx_id`` and ``fill`` or the
  ``claim_id``. TOO_EARLY stays ``422`` (a new fill, not yet allowed). A retry whose own
  transaction lost an MVCC race, or whose dispense was refused ALREADY_LOCKED (the lock it
  named changed hands: its first attempt may have dispensed under it, and another call locked
  the next fill), matches only a step committed meanwhile; when the comparing read fails at
  the peer, that failure (5xx, ids in ``diagnostics``) answers, not the refusal.
* Conditional create names the fill or the claim: ``If-None-Exist:
  identifier=urn:rxchain:dispense|RX_ID/FILL`` (dispense that fill unless it exists; FILL must
  be the next fill, else 422 FILL_OUT_OF_ORDER) and ``identifier=urn:rxchain:claim|CLM-RX_ID-
  FILL-N`` (settle unless that claim exists; 422 CLAIM_OUT_OF_ORDER unless N is the fill's
  next claim). The same identifiers in the body's ``identifier`` act alike. No other system:
  the ledger records no integrator identifier of a dispense or claim (FHIR_INVALID).
* A Claim names its fill by the dispense it claims (``supportingInfo``, above): settled
  unless the fill's claim exists, else compared with it (a fill reversed since is claimed
  again: name the claim, ``CLM-RX_ID-FILL-N``, to be exact). A Claim naming neither fill nor
  claim settles fill 1 while it is the only fill dispensed; once a later fill is dispensed it
  is ``422`` FILL_NOT_NAMED, nothing submitted: an earlier fill's Claim sent again after a
  lost answer looks exactly like a new claim of the latest fill, and used to settle it. A
  504 on a Claim names the fill in ``diagnostics``. A dispense of another prescription, two
  fills, a claim id of another fill than the dispense named, a MedicationDispense referred to
  with a query, fragment, search or contained resource, and ``urn:rxchain:dispense`` as the
  Claim's own ``identifier`` are FHIR_INVALID (none is passed over as naming no fill).
* ``422`` ITEM_NOT_PRESCRIBED (a dispense naming a drug or boxes not prescribed) and
  AMOUNT_MISMATCH (a claim whose ``total`` is not the fee the contract computes, evaluated
  before submitting): nothing was submitted.
* ``504 Gateway Timeout`` COMMIT_UNKNOWN or TIMEOUT: the ledger's answer was lost; the
  transaction may have committed. ``diagnostics`` names ``tx_id`` and, for an issue, a
  dispense or a claim, ``rx_id`` (``Location`` then names the prescription): GET it before
  doing anything else. Re-POST only a MedicationRequest that carries an identifier (it cannot
  issue twice); one without would issue a second prescription. A MedicationDispense or Claim
  may be re-POSTed as it was (answered 200 if the first attempt committed).
* ``502 Bad Gateway`` INTERNAL or RPC_FAILED: the peer or the call failed in an unexpected
  way (``Location``/``diagnostics`` as for 504 when an issue may have committed).
* ``500 Internal Server Error`` INTERNAL: a fault of the gateway itself; the request may have
  been carried out, and the answer names no ids.
* ``503`` + ``Retry-After`` only for TOO_MANY_CONNECTIONS (nothing was read) and ``503``
  SERVICE_UNAVAILABLE when the peer could not be reached before anything was submitted;
  ``503`` AUDIT_FULL / AUDIT_WRITE_FAILED / AUDIT_LOG_CORRUPT (the peer's access-audit log
  could not take the record a key release needs) and TOO_MANY_STREAMS (the peer holds as many
  streams as it allows): conditions of the peer, nothing in the request to fix.
* ``409 Conflict`` MVCC_READ_CONFLICT / PHANTOM_READ_CONFLICT: a concurrent change to the
  same record committed first; nothing of this request was written: send it again as it was.
* ``4xx``: refused (400 malformed, 403 not allowed, 422 a prescription rule): the refused
  step did not commit; fix the request before sending it again.

The TLS handshake runs in the connection's worker thread, never in the accept loop, and must
complete within ``HANDSHAKE_TIMEOUT_S`` (a deadline for the whole handshake, not per read: a
client dripping its ClientHello is cut off too); every read has a timeout, and the whole
request (line, headers, body) must arrive within ``REQUEST_DEADLINE_S`` (a client that drips
one byte at a time is cut off). At most ``MAX_CONNECTIONS`` connections are served at once, at
most ``MAX_PER_SOURCE`` of them from one source address (all of the loopback counts as one, see
:mod:`client.fhir.admission`), so connections that never finish their handshake cannot lock
everybody out. A connection over either bound is answered, if a refusal slot is free, with
``503`` + ``Retry-After`` and an OperationOutcome ``TOO_MANY_CONNECTIONS`` once its TLS
handshake is done (within ``REFUSAL_DEADLINE_S``); with no refusal slot free, or if its
handshake does not complete in time, it is closed without an answer: before a TLS handshake
no HTTP can be sent.

A POST needs ``Content-Type: application/fhir+json`` (or ``application/json``: a browser's
cross-site form cannot send it without a CORS preflight) and one ``Content-Length`` of
decimal digits (at most ``MAX_BODY``; ``Transfer-Encoding`` is refused). The body must be
one JSON object in UTF-8, nested at most ``MAX_JSON_DEPTH`` deep, without duplicate keys or
NaN/Infinity. Every error, including malformed HTTP, is an OperationOutcome with a reason
code; messages never carry the gateway's file paths or internal addresses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from client.configtool import CA_ROTATED_AWAY, CHAIN_RESTARTED
from client.errors import CommitError, CommitUnknown, DuplicateRx, RxClientError
from client.fhir import idempotency, mapping, retry
from client.fhir.admission import (
    MAX_CONNECTIONS,
    MAX_PER_SOURCE,
    Admission,
    AdmissionLimits,
    Ticket,
    Verdict,
    source_of,
)
from client.gateway import EVENTS_IDLE_S
from client.network import load_network
from client.rxid import is_rx_id
from client.rxops import ClaimLine, IssueRequest, RxOperations
from client.session import FOLLOW_EVERY_S, FOLLOW_IN_PROGRESS, Session
from node.crypto.x509 import cert_info
from node.errors import RxError

MAX_BODY = 1 << 20
HANDSHAKE_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
REQUEST_DEADLINE_S = 60.0
# An over-the-bound connection: its handshake and request within this, then the 503.
REFUSAL_DEADLINE_S = 2.0
RETRY_AFTER_S = 2
MAX_JSON_DEPTH = 64
_DIGITS = re.compile(r"[0-9]{1,10}")
_NUMBER = re.compile(r"[0-9]{1,19}")
MAX_INBOX_BLOCKS = 10_000  # blocks one GET /fhir/Task reads at most
DEFAULT_INBOX_BLOCKS = 1_000
FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json")
_REFERENCE = re.compile(r"(?:[^?#]*/)?([A-Z][A-Za-z]{1,63})/([^/?#]+)(?:/_history/[^/?#]+)?")

_STATUS = {
    "FHIR_INVALID": 400, "BAD_ARGUMENTS": 400, "BAD_DIAGNOSIS": 400, "BAD_REQUEST": 400,
    "UNKNOWN_DRUG": 422, "NO_KEY_GRANT": 403, "KEY_NOT_HELD": 403, "ACCESS_DENIED": 403, "WRONG_ROLE": 403,
    "UNAUTHENTICATED": 401, "NO_WALLET": 403, "NOT_FOUND": 404, "SERVICE_UNAVAILABLE": 503,
    "TOO_LARGE": 413, "BAD_CONTENT_LENGTH": 400, "LENGTH_REQUIRED": 411,
    "UNSUPPORTED_MEDIA_TYPE": 415, "METHOD_NOT_ALLOWED": 405, "TOO_MANY_CONNECTIONS": 503,
    # the session's verified config chain is not on the network's chain (client.follow): nothing sent
    CHAIN_RESTARTED: 503,
    # the session's peer is pinned to a CA a verified config chain rotated away from (the denylist,
    # client.configtool.CA_DENYLIST; after the remedy for CHAIN_RESTARTED): nothing sent
    CA_ROTATED_AWAY: 503,
    # the peer presents a CA the session's pin lacks, and a follow of the session under way did not
    # end within client.session.FOLLOW_WAIT_S: nothing sent -- retry
    FOLLOW_IN_PROGRESS: 503,
    # a local file could not be read now (config-chain.json under EMFILE: client.session): nothing sent
    "IO_ERROR": 503,
    # config-chain.json or the network is of a newer release than this gateway: nothing sent
    # (the operator upgrades the gateway; not 422, no business rule refused it)
    "PROTOCOL_UNSUPPORTED": 503,
    # the outcome is unknown (may have committed): never a 4xx ("fix and retry") nor a 503 to retry
    "COMMIT_UNKNOWN": 504, "TIMEOUT": 504, "INTERNAL": 502, "RPC_FAILED": 502,
    "DUPLICATE_RX": 409,
    # the ledger holds the fill or claim, and it is not the one this request describes
    "ALREADY_DISPENSED": 409, "FILLS_EXHAUSTED": 409, "DUPLICATE_CLAIM": 409, "CLAIM_NOT_FOUND": 404,
    # a concurrent write to the same record won; nothing of this request was written: send it
    # again (a business rule's 422 would read "fix the request", and there is nothing to fix)
    "MVCC_READ_CONFLICT": 409, "PHANTOM_READ_CONFLICT": 409,
    # the peer's access-audit log counts this caller's refusals instead of recording them
    # (node README "Access-audit log"): too many refused reads, not a rule to fix the request by
    "AUDIT_RATE_LIMITED": 429,
    # the peer could not write the access-audit record a key release needs (README "Access-audit
    # log": its log is full, or the write failed) or could not read its log, or it holds as many
    # streams as it allows: conditions of the peer, not of the request (nothing to fix; not 422)
    "AUDIT_FULL": 503, "AUDIT_WRITE_FAILED": 503, "AUDIT_LOG_CORRUPT": 503, "TOO_MANY_STREAMS": 503,
}
_CREATES = ("MedicationRequest", "MedicationDispense", "Claim")
_LOOK_FIRST = ("; read what Location or diagnostics names before anything else. A MedicationRequest may be "
               "sent again only with the same identifier (one without would issue a second prescription); "
               "a MedicationDispense or Claim may be sent again as it was (a retry of a step that committed "
               "is answered 200 with it); name the fill diagnostics gives (identifier urn:rxchain:dispense|"
               "RX_ID/FILL; a Claim: supportingInfo valueIdentifier of that system, or the MedicationDispense) to "
               "stay exact once a repeat prescription's next fill is due")
_UNKNOWN_OUTCOME_MESSAGES = {
    "COMMIT_UNKNOWN": "the ledger's answer was lost: the transaction may have committed" + _LOOK_FIRST,
    "TIMEOUT": "the ledger did not answer in time: the request may have been carried out" + _LOOK_FIRST,
    "INTERNAL": "the ledger peer failed: the request may have been carried out" + _LOOK_FIRST,
    "RPC_FAILED": "the call to the ledger peer failed: the request may have been carried out" + _LOOK_FIRST,
}
_CLOSE_REASONS = ("BAD_CONTENT_LENGTH", "TOO_LARGE", "LENGTH_REQUIRED", "UNSUPPORTED_MEDIA_TYPE")


def _http_status(reason: str) -> int:
    if reason in _STATUS:
        return _STATUS[reason]
    if reason.startswith("UNAUTHORIZED"):
        return 403
    return 422  # a business rule refused the request


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, resource (JSON), extra headers."""

    status: int
    resource: Any
    headers: dict[str, str] = field(default_factory=dict)


def rx_location(rx_id: str) -> str:
    """Where a prescription is read (the ``Location`` of a create)."""
    return f"/fhir/MedicationRequest/{urllib.parse.quote(rx_id, safe='')}"


def error_reply(exc: RxClientError | RxError, home: Path) -> Reply:
    """The OperationOutcome answer to a refusal or failure. A transaction whose outcome is
    unknown names its ids (``diagnostics``) and, for an issue, the prescription that may exist
    (``Location``); so does a DUPLICATE_RX (the existing prescription)."""
    ids: dict[str, str] = {}
    detail = getattr(exc, "detail", None)
    if isinstance(exc, CommitUnknown | DuplicateRx) and isinstance(detail, dict):
        ids = {k: str(v) for k, v in detail.items() if k in ("tx_id", "rx_id", "fill") and v}
    if isinstance(exc, retry.Conflict):  # ids the caller may read; Location only when the outcome is unknown
        status = _http_status(exc.reason)
        where = {"Location": rx_location(exc.detail["rx_id"])} if status >= 500 and "rx_id" in exc.detail else {}
        return Reply(status, mapping.operation_outcome(
            exc.reason, public_message(exc.reason, exc.message, home), exc.detail), where)
    headers = {"Location": rx_location(ids["rx_id"])} if "rx_id" in ids else {}
    outcome = mapping.operation_outcome(exc.reason, public_message(exc.reason, exc.message, home), ids)
    return Reply(_http_status(exc.reason), outcome, headers)


@dataclass(frozen=True)
class _Served:
    """A cached session and the wallet certificate file (path, bytes) it was made for."""

    ops: RxOperations
    cert_path: Path
    cert_pem: bytes


class Identities:
    """Maps presented client certificates to wallet sessions (cached, thread-safe).

    A cached session serves only while its wallet's ``cert.pem`` still holds the same bytes
    (read again on every request): a wallet removed from HOME (an offboarded member) or whose
    certificate was replaced no longer serves the certificate it held, without a restart."""

    def __init__(self, home: Path, events_idle_s: float | None = EVENTS_IDLE_S,
                 follow_every_s: float = FOLLOW_EVERY_S):
        self.home = Path(home)
        self.net = load_network(self.home)
        self._events_idle_s = events_idle_s  # the sessions' bound on a stalled peer (Task, PaymentReconciliation)
        self._follow_every_s = follow_every_s  # the sessions' proactive follow of the config chain (0: none)
        self._lock = threading.Lock()
        self._sessions: dict[bytes, _Served] = {}
        # sessions whose wallet changed: a request may still be using one, closed by close()
        self._retired: list[RxOperations] = []

    def ops_for(self, cert_der: bytes) -> RxOperations:
        """The operations object acting as the wallet whose certificate is ``cert_der``."""
        with self._lock:
            served = self._sessions.get(cert_der)
            if served is not None:
                try:
                    unchanged = served.cert_path.read_bytes() == served.cert_pem
                except OSError:
                    unchanged = False
                if unchanged:
                    return served.ops
                del self._sessions[cert_der]
                self._retired.append(served.ops)
            try:
                info = cert_info(x509.load_der_x509_certificate(cert_der))
            except ValueError as exc:
                raise RxClientError("UNAUTHENTICATED", "not a member certificate") from exc
            found = self._wallet_of(info.org, cert_der)
            if found is None:
                raise RxClientError("NO_WALLET", f"no wallet here holds the presented {info.org} certificate")
            cert_path, cert_pem = found
            ops = RxOperations(Session(self.home, f"{info.org}:{cert_path.parent.name}", network=self.net,
                                       events_idle_s=self._events_idle_s, follow_every_s=self._follow_every_s))
            self._sessions[cert_der] = _Served(ops, cert_path, cert_pem)
            return ops

    def _wallet_of(self, org: str, cert_der: bytes) -> tuple[Path, bytes] | None:
        """The certificate file (and its bytes) of the wallet (user directory) of ``org`` whose
        certificate is exactly ``cert_der``.

        Searched by content, not by the certificate's name: patients' certificates carry a
        pseudonymous common name that differs from their wallet handle.
        """
        users = self.home / "orgs" / org / "users"
        for cert_path in sorted(users.glob("*/cert.pem")):
            try:
                pem = cert_path.read_bytes()
                der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
            except (OSError, ValueError):
                continue
            if der == cert_der:
                return cert_path, pem
        return None

    def close(self) -> None:
        """Close every session."""
        with self._lock:
            for ops in [s.ops for s in self._sessions.values()] + self._retired:
                ops.s.close()
            self._sessions.clear()
            self._retired.clear()


def _query(path: str, allowed: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The integer search parameters of ``path``: each a name of ``allowed`` at most once, a
    decimal number within its (low, high) bounds; anything else is 400 FHIR_INVALID (strict
    handling: a parameter this gateway does not know is never silently ignored)."""
    raw = path.split("?", 1)[1] if "?" in path else ""
    out: dict[str, int] = {}
    for item in raw.split("&") if raw else ():
        name, sep, value = item.partition("=")
        if name not in allowed:
            raise mapping.FhirError("FHIR_INVALID", f"unknown search parameter {name[:40]!r}; this search "
                                    f"takes {', '.join(sorted(allowed))}")
        if name in out:
            raise mapping.FhirError("FHIR_INVALID", f"search parameter {name} given twice")
        low, high = allowed[name]
        if not sep or not _NUMBER.fullmatch(value):
            raise mapping.FhirError("FHIR_INVALID", f"{name} must be a whole number {low}-{high}")
        n = int(value)
        if not low <= n <= high:
            raise mapping.FhirError("FHIR_INVALID", f"{name} must be a whole number {low}-{high}")
        out[name] = n
    return out


class FhirApp:
    """Request routing, independent of the HTTP plumbing (tests call it directly)."""

    def __init__(self, identities: Identities):
        self.ids = identities

    def handle(self, method: str, path: str, body: Any, cert_der: bytes,
               if_none_exist: str | None = None) -> Reply:
        """The answer to one request (refusals are raised, see :func:`error_reply`)."""
        parts = [p for p in path.split("?", maxsplit=1)[0].split("/") if p]
        if not parts or parts[0] != "fhir":
            raise RxClientError("NOT_FOUND", f"no route {path}")
        parts = parts[1:]
        if if_none_exist is not None and not (method == "POST" and len(parts) == 1 and parts[0] in _CREATES):
            raise mapping.FhirError("FHIR_INVALID", "If-None-Exist (conditional create) is supported on POST "
                                    "/fhir/MedicationRequest, MedicationDispense and Claim only")
        if method == "GET" and parts == ["metadata"]:
            return Reply(200, capability_statement())
        ops = self.ids.ops_for(cert_der)
        if method == "POST" and parts == ["MedicationRequest"]:
            return self._issue(ops, body, if_none_exist)
        if method == "GET" and len(parts) == 2 and parts[0] == "MedicationRequest":
            return Reply(200, mapping.medication_requests(ops.show(_rx_id(parts[1]))))
        if method == "POST" and parts == ["MedicationDispense"]:
            return self._dispense(ops, body, if_none_exist)
        if method == "POST" and parts == ["Claim"]:
            return self._claim(ops, body, if_none_exist)
        if method == "GET" and parts == ["Task"]:
            return self._inbox(ops, path)
        if method == "GET" and parts == ["PaymentReconciliation"]:
            return self._reconcile(ops, path)
        if method == "GET" and len(parts) == 2 and parts[0] == "Claim":
            rec = ops.claim(retry.claim_path_id(parts[1]), open_note=False)
            claim = mapping.claim_and_response(rec, str(rec.get("insurer", "")))["entry"][0]["resource"]
            return Reply(200, claim)
        raise RxClientError("NOT_FOUND", f"no route {method} {path}")

    # ------------------------------------------------------------ inbox
    def _inbox(self, ops: RxOperations, path: str) -> Reply:
        """The pharmacy's work items (``client.inbox``) of blocks ``from-block`` on (at most
        ``limit-blocks``), a searchset Bundle of Tasks; ``X-Rxchain-Next-Block`` is where the
        next poll starts, and a ``next`` link is given only when the limit (of blocks, or of
        prescriptions read: ``client.inbox.MAX_READS``) cut the range short. A prescription of
        the range routed to another pharmacy is a cancelled Task (``mapping.routed_task``)."""
        query = _query(path, {"from-block": (0, 2**63 - 1), "limit-blocks": (1, MAX_INBOX_BLOCKS)})
        start = query.get("from-block", 0)
        limit = query.get("limit-blocks", DEFAULT_INBOX_BLOCKS)
        inbox = ops.inbox(start, limit)
        nxt = int(inbox["next_block"])
        more = inbox.get("more") is True  # a block follows the ones read
        bundle = mapping.inbox_bundle(
            inbox, f"/fhir/Task?from-block={start}&limit-blocks={limit}",
            f"/fhir/Task?from-block={nxt}&limit-blocks={limit}" if more else None)
        return Reply(200, bundle, {"X-Rxchain-Next-Block": str(nxt)})

    def _reconcile(self, ops: RxOperations, path: str) -> Reply:
        """The claims report (``client.reconcile``) of blocks ``from-block`` on (at most
        ``limit-blocks``) as a PaymentReconciliation of the caller's insurer (every insurer's
        for an auditor); ``X-Rxchain-Next-Block`` is where the next one starts, and ``outcome``
        is partial only when the limit (of blocks, or of claims read: ``client.reconcile.MAX_READS``)
        cut the range short -- as the Task search's ``next`` link: go on from there at once."""
        query = _query(path, {"from-block": (0, 2**63 - 1), "limit-blocks": (1, MAX_INBOX_BLOCKS)})
        start = query.get("from-block", 0)
        limit = query.get("limit-blocks", DEFAULT_INBOX_BLOCKS)
        report = ops.claim_report(start, limit)
        nxt = int(report["next_block"])
        more = report.get("more") is True
        return Reply(200, mapping.payment_reconciliation(report, ops.s.clock(), more),
                     {"X-Rxchain-Next-Block": str(nxt)})

    # ------------------------------------------------------------ dispense
    def _dispense(self, ops: RxOperations, body: Any, if_none_exist: str | None) -> Reply:
        """Dispense the next fill, or answer the fill already dispensed when the request is
        a retry of it (:mod:`client.fhir.retry`)."""
        model = mapping.validate_resource(body)
        if model.get_resource_type() != "MedicationDispense":
            raise mapping.FhirError("FHIR_INVALID", "expected a MedicationDispense")
        rx_id = _rx_ref(model.authorizingPrescription, "authorizingPrescription")
        codes = retry.trace_codes(model)
        named = retry.named_fill(body, if_none_exist, rx_id)
        code, qty = retry.requested_item(model)
        meta = _readable(ops, rx_id)  # as a GET: None when the caller may not read it
        if meta is not None:
            retry.check_item(meta["content"], code, qty)
            fills = int(meta.get("fills") or 0)
            if named and named <= fills:  # the fill exists: never dispense again
                return self._dispensed(ops, rx_id, named, codes, meta, None)
            if named > fills + 1:
                raise mapping.FhirError("FILL_OUT_OF_ORDER", f"fill {named} is not the next fill of {rx_id} "
                                        f"({fills} dispensed)")
        try:
            result = ops.dispense(rx_id, codes)
        except CommitUnknown as exc:  # name the prescription to look at (Location), as for an issue,
            # and the fill this request dispenses: re-sent naming it, it cannot become the next fill
            fill = {"fill": str(named or int(meta.get("fills") or 0) + 1)} if meta is not None else {}
            raise CommitUnknown(exc.tx_id, exc.message, envelope=exc.envelope, rx_id=rx_id, **fill) from exc
        except RxClientError as exc:
            if exc.reason == retry.CODES_USED and codes and not named:
                # an unnamed re-send after the fill interval: its boxes name the fill they went
                # out in (trace_fills); compared as a retry of that fill, else the refusal stands
                return self._dispensed(ops, rx_id, self._fill_of_codes(ops, rx_id, codes, exc), codes, meta, exc)
            race = isinstance(exc, CommitError) and exc.reason == retry.LOST_RACE
            # the lock it named changed hands: its first attempt may have dispensed under it and
            # another call locked the next fill since -- compared as a lost race is
            moved = exc.reason == retry.LOCK_TAKEN and meta is not None
            if exc.reason not in retry.FILL_TAKEN and not race and not moved:
                raise
            return self._dispensed(ops, rx_id, named, codes, meta, exc)
        return self._dispense_created(ops, rx_id, meta, result, codes)

    @staticmethod
    def _fill_of_codes(ops: RxOperations, rx_id: str, codes: list[str], refusal: RxClientError) -> int:
        """The one fill of ``rx_id`` that recorded every code, else ``refusal`` stands (codes
        of another prescription, or of two fills, are no retry)."""
        try:
            fills = set(ops.trace_fills(rx_id, codes))
        except RxClientError as exc:
            raise _uncompared(refusal, exc, rx_id=rx_id) from exc
        if len(fills) != 1 or 0 in fills:
            raise refusal
        return fills.pop()

    def _dispense_created(self, ops: RxOperations, rx_id: str, meta: dict[str, Any] | None,
                          result: dict[str, Any], codes: list[str]) -> Reply:
        """201 for a fill just dispensed: never an error from here on (it committed)."""
        location = {"Location": rx_location(rx_id)}
        me = ops.s.identity
        try:
            if meta is None:
                meta = ops.show(rx_id)
            content = meta.get("content") or {}
            return Reply(201, mapping.medication_dispense(meta, content, result, codes, me.org, me.user), location)
        except Exception as exc:  # noqa: BLE001 - dispensed: an error answer would hide it
            reason = getattr(exc, "reason", "") or "INTERNAL"
            return Reply(201, mapping.operation_outcome(
                str(reason), f"fill {result.get('fill')} of {rx_id} was dispensed; reading it back failed",
                {"rx_id": rx_id, "tx_id": str(result.get("tx_id", ""))}, severity="warning"), location)

    def _dispensed(self, ops: RxOperations, rx_id: str, fill: int, codes: list[str],
                   meta: dict[str, Any] | None, refusal: RxClientError | None) -> Reply:
        """200 with fill ``fill`` (0: the latest on the trail) when it is the dispense the
        request describes; else ``refusal`` stands (or ALREADY_DISPENSED for a named fill).
        ``meta``: the prescription as read before (its content does not change)."""
        before = int(meta.get("fills") or 0) if meta is not None else None  # fills before submitting
        try:
            if meta is None:
                meta = ops.show(rx_id)
            content = meta.get("content")
            steps = ops.dispenses(rx_id) if isinstance(content, dict) else []
        except RxClientError as exc:
            if refusal is None:
                raise
            raise _uncompared(refusal, exc, rx_id=rx_id, **({"fill": str(fill)} if fill else {})) from exc
        fill = fill or max((int(st["fill"]) for st in steps), default=0)
        step = next((st for st in steps if st.get("fill") == fill), None)
        if refusal is not None and refusal.reason in retry.RACES and (before is None or fill <= before):
            # lost to another write (a delivery, a lock ...), not to a fill committed meanwhile:
            # this request's fill is not on the ledger, whatever an earlier fill looks like
            raise refusal
        org = ops.s.identity.org
        why = retry.dispense_conflict(step, fill, org, len(codes))
        if why is None and codes:  # the same pharmacy and count: the same boxes?
            try:
                why = retry.dispense_conflict(step, fill, org, len(codes), ops.trace_fills(rx_id, codes))
            except RxClientError as exc:
                if refusal is None:
                    raise
                raise _uncompared(refusal, exc, rx_id=rx_id, fill=str(fill)) from exc
        if why is not None or not isinstance(content, dict) or step is None:
            if refusal is not None and step is None:
                raise refusal
            reason = refusal.reason if refusal is not None and refusal.reason not in retry.RACES \
                else "ALREADY_DISPENSED"
            msg = (refusal.message + "; " if refusal is not None and refusal.message else "") + str(why)
            raise retry.Conflict(reason, msg, rx_id=rx_id, fill=str(fill))
        result = {"fill": fill, "tx_id": step.get("tx_id", "")}
        return Reply(200, mapping.medication_dispense(meta, content, result, codes, str(step.get("org")),
                                                      str(step.get("actor"))), {"Location": rx_location(rx_id)})

    # ------------------------------------------------------------ claim
    def _claim(self, ops: RxOperations, body: Any, if_none_exist: str | None) -> Reply:
        """Settle a fill's claim, or answer the claim already settled when the request is a
        retry of it (:mod:`client.fhir.retry`)."""
        if isinstance(body, dict):
            retry.check_item_count(body)
        model = mapping.validate_resource(body)
        if model.get_resource_type() != "Claim":
            raise mapping.FhirError("FHIR_INVALID", "expected a Claim")
        rx_id = _rx_ref([model.prescription] if model.prescription else [], "prescription")
        lines = retry.claim_lines(model)
        total = retry.claim_total(model)
        named = retry.named_claim(body, if_none_exist, rx_id)
        fill = retry.referenced_fill(model, rx_id)  # the MedicationDispense it claims, 0: none named
        if named is not None and fill and fill != named.fill:
            raise mapping.FhirError("FHIR_INVALID", f"the Claim names claim {named.claim_id} of fill {named.fill} "
                                    f"and the dispense of fill {fill}")
        fill = named.fill if named is not None else fill
        if not fill:
            fill = self._unnamed_fill(ops, rx_id)
        if named is not None:
            existing = _claim_or_none(ops, named.claim_id)
            if existing is not None:  # never settle again
                return self._settled(ops, rx_id, fill, lines, total, existing, None)
            if named.seq > 1:
                before = _claim_or_none(ops, named.previous())
                if before is None or before.get("status") == "SETTLED":
                    raise mapping.FhirError("CLAIM_OUT_OF_ORDER", f"{named.claim_id} would not be the next claim "
                                            f"of fill {fill} (claim {named.previous()} is not a reversed claim)")
        try:
            rec = ops.settle(rx_id, fill, lines, expect_medfee_fen=total)
        except CommitUnknown as exc:  # the fill it settles: re-sent naming it, it claims no other fill
            raise CommitUnknown(exc.tx_id, exc.message, envelope=exc.envelope, rx_id=rx_id, fill=str(fill)) from exc
        except RxClientError as exc:
            if exc.reason != "DUPLICATE_CLAIM" and not (isinstance(exc, CommitError) and exc.reason == retry.LOST_RACE):
                raise
            return self._settled_after(ops, rx_id, fill, lines, total, exc)
        return self._claim_created(ops, rx_id, rec)

    @staticmethod
    def _claim_created(ops: RxOperations, rx_id: str, rec: dict[str, Any]) -> Reply:
        """201 for a claim just settled: never an error from here on (it committed; a 4xx would
        read "refused, fix the request" while the fund share is paid)."""
        location = _claim_location(rec) if rec.get("claim_id") else {"Location": rx_location(rx_id)}
        try:
            return Reply(201, mapping.claim_and_response(rec, ops.s.identity.org), location)
        except Exception as exc:  # noqa: BLE001 - settled: an error answer would hide it
            reason = getattr(exc, "reason", "") or "INTERNAL"
            ids = {"rx_id": rx_id, "claim_id": str(rec.get("claim_id") or ""), "tx_id": str(rec.get("tx_id") or "")}
            return Reply(201, mapping.operation_outcome(
                str(reason), f"a claim of {rx_id} was settled; building its answer failed: GET it later",
                {k: v for k, v in ids.items() if v}, severity="warning"), location)

    @staticmethod
    def _unnamed_fill(ops: RxOperations, rx_id: str) -> int:
        """The fill a Claim naming none settles: the first, while it is the only fill dispensed.
        Once a later fill is dispensed an unnamed Claim is ambiguous (a claim of that fill, or
        an earlier fill's claim sent again after a lost answer: the same body either way) and
        refused FILL_NOT_NAMED, never settled as the latest fill. A caller who may not read the
        prescription's trail, or whose role settles nothing, gets the contract's own refusal of
        the settlement."""
        if ops.s.identity.role != "clerk":  # WRONG_ROLE from the settlement, not "name the fill"
            return 1
        try:
            latest = max((int(st["fill"]) for st in ops.dispenses(rx_id)), default=0)
        except RxClientError as exc:
            if exc.reason not in ("ACCESS_DENIED", "NO_KEY_GRANT", "NOT_FOUND"):
                raise
            return 1
        if latest > 1:
            raise mapping.FhirError("FILL_NOT_NAMED", (
                f"{rx_id} has {latest} fills dispensed and the Claim names none: name the fill it claims, "
                f"a supportingInfo whose valueReference is the MedicationDispense answered for it "
                f"(MedicationDispense/{mapping.dispense_id(rx_id, 'N', 1)}, or identifier "
                f"{mapping.DISPENSE_SYSTEM}|{rx_id}/N), or the claim (identifier {mapping.CLAIM_SYSTEM}|"
                f"CLM-{rx_id}-N-1); nothing was settled"))
        return 1

    def _settled_after(self, ops: RxOperations, rx_id: str, fill: int, lines: list[ClaimLine] | None,
                       total: int | None, refusal: RxClientError) -> Reply:
        """After DUPLICATE_CLAIM (or a lost race): the fill's settled claim, compared."""
        try:
            # the fill the request settled (named, referred to, or the only one: _unnamed_fill);
            # 0 (never passed now) would be the contract's latest fill -- never an older fill's
            # claim (a race lost to another claim of the patient is no claim of this fill)
            fill = fill or max((int(st["fill"]) for st in ops.dispenses(rx_id)), default=0)
            settled = [st for st in ops.claim_steps(rx_id) if st.get("step") == "settle" and st.get("claim_id")]
            ids = [st["claim_id"] for st in settled if st.get("fill") == fill]
            rec = ops.claim(str(ids[-1]), open_note=False) if ids else None
        except RxClientError as exc:
            raise _uncompared(refusal, exc, rx_id=rx_id) from exc
        if rec is None or rec.get("status") != "SETTLED":
            raise refusal
        return self._settled(ops, rx_id, fill, lines, total, rec, refusal)

    def _settled(self, ops: RxOperations, rx_id: str, fill: int, lines: list[ClaimLine] | None,
                 total: int | None, rec: dict[str, Any], refusal: RxClientError | None) -> Reply:
        org = ops.s.identity.org
        try:
            lines_commitment = ops.claim_lines_commitment(rx_id, lines)
        except RxClientError as exc:
            if refusal is None:
                raise
            raise _uncompared(refusal, exc, rx_id=rx_id, claim_id=str(rec.get("claim_id", ""))) from exc
        why = retry.claim_conflict(rec, org, rx_id, fill, lines_commitment, total)
        if why is not None:
            msg = (refusal.message + "; " if refusal is not None and refusal.message else "") + why
            raise retry.Conflict("DUPLICATE_CLAIM", msg, rx_id=rx_id, claim_id=str(rec.get("claim_id", "")))
        return Reply(200, mapping.claim_and_response(rec, org), _claim_location(rec))

    def _issue(self, ops: RxOperations, body: Any, if_none_exist: str | None) -> Reply:
        """Issue; idempotent when the request names an identifier (:mod:`client.fhir.idempotency`):
        the rx id is derived from it, and a prescription already issued under it is answered
        (200) if it is the one described, else refused (409 DUPLICATE_RX)."""
        req = mapping.issue_request_from_fhir(body)
        key = (idempotency.from_if_none_exist(if_none_exist) if if_none_exist is not None
               else idempotency.from_resource(body))
        if key is None:
            return self._created(ops, str(ops.issue(req)["rx_id"]))
        rx_id = idempotency.rx_id_for(ops.s.identity.org, key)
        try:
            ops.issue(req, rx_id=rx_id)
        except DuplicateRx:
            return self._existing(ops, rx_id, req, key, None)
        except CommitError as exc:
            if exc.reason != "MVCC_READ_CONFLICT":
                raise
            # another copy of this create (a retry racing the original) committed first
            return self._existing(ops, rx_id, req, key, exc)
        return self._created(ops, rx_id)

    def _created(self, ops: RxOperations, rx_id: str) -> Reply:
        """201 for a prescription just issued: never an error from here on (a caller would
        POST again and, without an identifier, issue a second prescription)."""
        location = {"Location": rx_location(rx_id)}
        try:
            return Reply(201, mapping.medication_requests(ops.show(rx_id)), location)
        except Exception as exc:  # noqa: BLE001 - issued: an error answer would invite a second issue
            reason = getattr(exc, "reason", "") or "INTERNAL"
            return Reply(201, mapping.operation_outcome(
                str(reason), f"prescription {rx_id} was issued; reading it back failed: GET it later",
                {"rx_id": rx_id}, severity="warning"), location)

    def _existing(self, ops: RxOperations, rx_id: str, req: IssueRequest,
                  key: idempotency.BusinessId, cause: CommitError | None) -> Reply:
        """The answer when ``rx_id`` (derived from ``key``) was already issued."""
        try:
            meta = ops.show(rx_id)
        except RxClientError as exc:
            if cause is not None and exc.reason == "NOT_FOUND":
                raise cause from exc  # not issued under this id after all (or not readable): the conflict stands
            # NOT_FOUND after DUPLICATE_RX: issued, by someone whose prescription the caller
            # is no party of (the contract answers a non-party as a missing id)
            if exc.reason not in ("ACCESS_DENIED", "NO_KEY_GRANT", "NOT_FOUND"):
                raise
            meta = {}
        _, pseudonym = ops.patient(req.patient)
        if not idempotency.same_prescription(meta, req, pseudonym, ops.s.identity.org):
            raise DuplicateRx(rx_id, f"identifier {key} names prescription {rx_id}, issued earlier and "
                              "not the one this request describes (patient, diagnosis, days, drugs)")
        return Reply(200, mapping.medication_requests(meta), {"Location": rx_location(rx_id)})


def _uncompared(refusal: RxClientError, exc: RxClientError, **ids: str) -> RxClientError:
    """The answer when the read comparing a refused retry with the ledger failed (``exc``).
    A failure of the peer (5xx: timeout, unavailable ...) is answered as such, naming what to
    GET: the step on the ledger may be the caller's, so the refusal (409 "not the one
    described", 422) would be a definite answer nobody established. A read refused to the
    caller keeps the refusal: it may not read what would tell."""
    if _http_status(exc.reason) >= 500:
        return retry.Conflict(exc.reason, f"{refusal.reason}: the step could not be compared with the ledger "
                              f"({exc.message})", **ids)
    return refusal


def _readable(ops: RxOperations, rx_id: str) -> dict[str, Any] | None:
    """The prescription with its content as a GET reads it, or None when the caller may not
    read it -- NOT_FOUND included: a prescription the caller is no party of is answered as a
    missing one -- then the contract's own refusal of the step answers (NOT_FOUND for a
    missing id, the lock's rule order for another pharmacy's prescription, as before)."""
    try:
        meta = ops.show(rx_id)
    except RxClientError as exc:
        if exc.reason in ("NO_KEY_GRANT", "ACCESS_DENIED", "NOT_FOUND"):
            return None
        raise
    return meta if isinstance(meta.get("content"), dict) else None


def _claim_or_none(ops: RxOperations, claim_id: str) -> dict[str, Any] | None:
    try:
        return ops.claim(claim_id, open_note=False)
    except RxClientError as exc:
        if exc.reason == "CLAIM_NOT_FOUND":
            return None
        raise


def claim_location(claim_id: str) -> str:
    """Where a claim is read (``GET /fhir/Claim/{id}``)."""
    return f"/fhir/Claim/{urllib.parse.quote(claim_id, safe='')}"


def _claim_location(rec: dict[str, Any]) -> dict[str, str]:
    return {"Location": claim_location(str(rec["claim_id"]))}


def _rx_id(value: str) -> str:
    """A prescription id as the contract accepts it (client.rxid: 1-64 of ``[A-Za-z0-9-_.]``,
    so one issued with ``rx issue --rx-id RX.1`` is reachable here too), else 400 -- also for
    ``.`` and ``..``, URL dot-segments no client can address."""
    if not is_rx_id(value) or not value.strip("."):
        raise mapping.FhirError("FHIR_INVALID", "not a prescription id (hiRxno)")
    return value


def _rx_ref(refs: Any, what: str) -> str:
    for ref in refs or []:
        if ref.identifier is not None and ref.identifier.value:
            return _rx_id(str(ref.identifier.value))
        if ref.reference and "/" in ref.reference:
            # relative ("MedicationRequest/ID"), absolute ("https://host/fhir/MedicationRequest/ID")
            # or versioned (".../ID/_history/2"): the id is the segment after the resource type
            m = _REFERENCE.fullmatch(str(ref.reference))
            if m is None or m.group(1) != "MedicationRequest":
                # e.g. a MedicationDispense id is no prescription id (a Claim names its dispense
                # in supportingInfo, see client.fhir.retry.referenced_fill)
                raise mapping.FhirError("FHIR_INVALID", f"{what}: not a reference to a prescription "
                                        "(MedicationRequest/ID)")
            return _rx_id(m.group(2))
    raise mapping.FhirError("FHIR_INVALID", f"{what} must name the prescription (hiRxno)")


def public_message(reason: str, message: str, home: Path) -> str:
    """An error message as the caller may see it: no file paths of this host (HOME stands for
    the gateway's home directory) and no internal addresses (an unreachable peer's)."""
    if reason == "SERVICE_UNAVAILABLE":
        return "the ledger peer is unavailable; retry later"
    if reason in _UNKNOWN_OUTCOME_MESSAGES:  # their details may name internal addresses
        return _UNKNOWN_OUTCOME_MESSAGES[reason]
    for prefix in sorted({str(Path(home).resolve()), str(home)}, key=len, reverse=True):
        message = message.replace(prefix, "HOME")
    return message


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise mapping.FhirError("FHIR_INVALID", f"duplicate JSON key {key[:40]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise mapping.FhirError("FHIR_INVALID", f"{name} is not a JSON number")


def parse_body(data: bytes) -> dict[str, Any]:
    """The request body as one JSON object (FHIR_INVALID otherwise): UTF-8, no duplicate keys,
    no NaN/Infinity, nested at most MAX_JSON_DEPTH deep."""
    try:
        # UTF-8 only (a leading BOM is dropped): json.loads would take bytes in UTF-16 or UTF-32,
        # and UTF-8-encoded surrogates, too
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise mapping.FhirError("FHIR_INVALID", "body is not UTF-8") from exc
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError as exc:
        raise mapping.FhirError("FHIR_INVALID", f"JSON nested deeper than {MAX_JSON_DEPTH}") from exc
    except ValueError as exc:  # FhirError is not a ValueError
        raise mapping.FhirError("FHIR_INVALID", "body is not JSON") from exc
    if not isinstance(value, dict):
        raise mapping.FhirError("FHIR_INVALID", "body must be one FHIR resource (a JSON object)")
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise mapping.FhirError("FHIR_INVALID", f"JSON nested deeper than {MAX_JSON_DEPTH}")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return value


def capability_statement() -> dict[str, Any]:
    """What this gateway supports."""
    def res(rtype: str, interactions: list[str]) -> dict[str, Any]:
        return {"type": rtype, "interaction": [{"code": i} for i in interactions]}
    return {
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "date": "2026-11-25", "fhirVersion": "5.0.0", "format": ["json"],
        "rest": [{"mode": "server", "resource": [
            {**res("MedicationRequest", ["create", "read"]), "conditionalCreate": True},
            {**res("MedicationDispense", ["create"]), "conditionalCreate": True},
            {**res("Claim", ["create", "read"]), "conditionalCreate": True},
            {**res("PaymentReconciliation", ["search-type"]), "searchParam": [
                {"name": "from-block", "type": "number",
                 "documentation": "first block of the range (the X-Rxchain-Next-Block of the last one)"},
                {"name": "limit-blocks", "type": "number", "documentation": "blocks read at most (1-10000)"}]},
            {**res("Task", ["search-type"]), "searchParam": [
                {"name": "from-block", "type": "number",
                 "documentation": "first block of the range (the X-Rxchain-Next-Block of the last poll)"},
                {"name": "limit-blocks", "type": "number", "documentation": "blocks read at most (1-10000)"}]},
        ]}],
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT_S  # applied to the connection by StreamRequestHandler.setup
    default_request_version = "HTTP/1.0"  # even a garbled request line gets a status line
    server_version = "rxchain-fhir"

    def version_string(self) -> str:
        """No Python version in the Server header."""
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if isinstance(code, HTTPStatus) else code
        self.server.log(log_event("fhir_request", client=_peer(self.client_address),
                                  request=self.requestline, status=status, size=size))

    def log_error(self, format: str, *args: Any) -> None:
        self.server.log(log_event("fhir_http_error", client=_peer(self.client_address),
                                  detail=format % args))

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(log_event("fhir_http", client=_peer(self.client_address), detail=format % args))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors of the HTTP layer itself (bad request line, headers, method) as OperationOutcomes."""
        reason = {400: "BAD_REQUEST", 408: "TIMEOUT", 414: "TOO_LARGE", 431: "TOO_LARGE",
                  501: "METHOD_NOT_ALLOWED", 505: "BAD_REQUEST"}.get(code, "BAD_REQUEST")
        self.close_connection = True
        self.log_error("code %d, message %s", code, message)
        with contextlib.suppress(OSError):
            self._reply(405 if code == 501 else code,
                        mapping.operation_outcome(reason, message or "bad request"),
                        {"Allow": "GET, POST"} if code == 501 else None)  # a 405 must name them

    def _reply(self, status: int, resource: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(resource, dict) and resource.get("resourceType") not in (
                None, "CapabilityStatement", "OperationOutcome"):
            data = mapping.dumps(resource)
        else:
            data = json.dumps(resource, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        try:
            try:
                cert = self.connection.getpeercert(binary_form=True)
                if not cert:
                    raise RxClientError("UNAUTHENTICATED", "a client certificate is required")
                body: Any = None
                if method == "POST":
                    length = self._content_length()
                    data = self.rfile.read(length)
                    if len(data) < length:
                        raise RxClientError("BAD_CONTENT_LENGTH", "the body is shorter than Content-Length")
                    body = parse_body(data)
                conditional = self.headers.get_all("If-None-Exist") or []
                if len(conditional) > 1:
                    raise mapping.FhirError("FHIR_INVALID", "more than one If-None-Exist header")
                self.server.request_read(self.connection)
                reply = self.server.app.handle(method, self.path, body, cert,
                                               conditional[0] if conditional else None)
                self._reply(reply.status, reply.resource, reply.headers)
            except (RxClientError, RxError) as exc:
                if exc.reason in _CLOSE_REASONS:
                    self.close_connection = True  # the unread body must not be parsed as a request
                reply = error_reply(exc, self.server.app.ids.home)
                self._reply(reply.status, reply.resource, reply.headers)
            except Exception as exc:  # noqa: BLE001 - answer every request with an OperationOutcome
                self.server.log(log_event("fhir_internal_error", client=_peer(self.client_address),
                                          error=type(exc).__name__))
                self._reply(500, mapping.operation_outcome("INTERNAL", f"{type(exc).__name__}"))
        except OSError as exc:  # the client went away or timed out: nothing left to answer
            self.close_connection = True
            self.server.log(log_event("fhir_connection_lost", client=_peer(self.client_address),
                                      error=type(exc).__name__))

    def _content_length(self) -> int:
        """The declared body length: one header of decimal digits, at most MAX_BODY, of a JSON
        content type; no Transfer-Encoding."""
        if self.headers.get_all("Transfer-Encoding"):
            raise RxClientError("LENGTH_REQUIRED", "Transfer-Encoding is not supported; send Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise RxClientError("LENGTH_REQUIRED", "a POST needs a Content-Length")
        if len(values) > 1:
            raise RxClientError("BAD_CONTENT_LENGTH", "more than one Content-Length header")
        text = values[0].strip()
        if not _DIGITS.fullmatch(text):
            raise RxClientError("BAD_CONTENT_LENGTH", f"Content-Length must be a non-negative integer, "
                                f"got {text[:20]!r}")
        length = int(text)
        if length > MAX_BODY:
            raise RxClientError("TOO_LARGE", f"body exceeds {MAX_BODY} bytes")
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype not in JSON_TYPES:
            raise RxClientError("UNSUPPORTED_MEDIA_TYPE", f"Content-Type must be {FHIR_JSON}")
        return length

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


class _Refusal(_Handler):
    """An over-the-bound connection (TLS done): its one request is answered ``503`` with
    ``Retry-After`` and an OperationOutcome ``TOO_MANY_CONNECTIONS``, then it is closed."""

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()  # one request, never keep-alive

    def handle_expect_100(self) -> bool:
        """No ``100 Continue``: the 503 is the final answer (the client need not send the body)."""
        return True

    def parse_request(self) -> bool:
        """Parsed (else ``send_error`` has answered): drain a declared body, answer 503, and
        tell ``handle_one_request`` there is nothing to dispatch."""
        if not super().parse_request():
            return False
        with contextlib.suppress(OSError):
            self._drain_body()
            ticket = self.server.ticket(self.connection)
            what = (f"at most {self.server.admission.limits.max_per_source} connections from one address"
                    if ticket is not None and ticket.per_source else
                    f"at most {self.server.admission.limits.max_connections} connections at once")
            self._reply(503, mapping.operation_outcome(
                "TOO_MANY_CONNECTIONS", f"the gateway serves {what}; retry after {self.server.retry_after_s} s"),
                {"Retry-After": str(self.server.retry_after_s), "Connection": "close"})
        return False

    def _drain_body(self) -> None:
        """Read (and drop) a body of a valid ``Content-Length`` up to MAX_BODY, unless the
        client waits for ``100 Continue``: closing with unread data would reset the connection
        and could destroy the 503 before the client reads it. The refusal deadline bounds it."""
        if (self.headers.get("Expect") or "").lower() == "100-continue":
            return
        values = self.headers.get_all("Content-Length") or []
        if len(values) != 1 or not _DIGITS.fullmatch(values[0].strip()):
            return
        left = min(int(values[0].strip()), MAX_BODY)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of connects is accepted (and admitted or refused)

    def __init__(self, addr: tuple[str, int], app: FhirApp, log: Callable[[str], None],
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
                 limits: AdmissionLimits | None = None,
                 request_deadline_s: float = REQUEST_DEADLINE_S,
                 refusal_deadline_s: float = REFUSAL_DEADLINE_S,
                 retry_after_s: int = RETRY_AFTER_S,
                 source_key: Callable[[str], str] = source_of):
        """``source_key``: the source a peer address counts against (default
        :func:`client.fhir.admission.source_of`: all of the loopback is one source)."""
        super().__init__(addr, _Handler)
        self.app = app
        self.log = log
        self.handshake_timeout_s = handshake_timeout_s
        self.request_deadline_s = request_deadline_s
        self.refusal_deadline_s = refusal_deadline_s
        self.retry_after_s = retry_after_s
        self.admission = Admission(limits or AdmissionLimits())
        self.source_key = source_key
        self._tickets_lock = threading.Lock()
        self._tickets: dict[int, Ticket] = {}  # by id(request), while its worker runs
        self._deadlines_lock = threading.Lock()
        self._deadlines: dict[int, threading.Timer] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accept loop: a worker thread per admitted connection (:mod:`client.fhir.admission`);
        a connection with neither a slot nor a refusal slot is closed at once (no TLS yet, so
        no HTTP answer is possible)."""
        ticket = self.admission.admit(self.source_key(str(client_address[0])))
        if ticket.verdict is Verdict.CLOSE:
            self.log(log_event("fhir_closed_at_accept", "too many connections, and too many being refused",
                               client=_peer(client_address), bound="source" if ticket.per_source else "total"))
            self.shutdown_request(request)
            return
        with self._tickets_lock:
            self._tickets[id(request)] = ticket
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._tickets_lock:
            ticket = self._tickets.pop(id(request), None)
        if ticket is not None:
            self.admission.release(ticket)

    def ticket(self, request: Any) -> Ticket | None:
        """The admission ticket of ``request`` while its worker runs."""
        with self._tickets_lock:
            return self._tickets.get(id(request))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line, never a traceback on stderr."""
        self.log(log_event("fhir_connection_error", client=_peer(client_address)))

    def request_read(self, request: Any) -> None:
        """The request is read: its deadline no longer applies (the ledger call may take longer)."""
        with self._deadlines_lock:
            timer = self._deadlines.pop(id(request), None)
        if timer is not None:
            timer.cancel()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's worker thread: the TLS handshake (bounded), then the request,
        which must be read within ``request_deadline_s`` or the connection is shut down. A
        connection over the bound gets ``refusal_deadline_s`` for both, and the 503."""
        ticket = self.ticket(request)
        serve = ticket is None or ticket.verdict is Verdict.SERVE
        if isinstance(request, ssl.SSLSocket):
            # settimeout bounds the whole handshake (CPython runs it against one deadline)
            request.settimeout(self.handshake_timeout_s if serve
                               else min(self.handshake_timeout_s, self.refusal_deadline_s))
            try:
                request.do_handshake()
            except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
                self.log(log_event("fhir_tls_handshake_failed", "" if serve else "over the bound: closed unanswered",
                                   client=_peer(client_address), error=type(exc).__name__, detail=exc))
                return
            request.settimeout(None)
        deadline = self.request_deadline_s if serve else self.refusal_deadline_s
        timer = threading.Timer(deadline, _cut, (request, self.log, client_address))
        timer.daemon = True
        with self._deadlines_lock:
            self._deadlines[id(request)] = timer
        timer.start()
        try:
            if serve:
                super().finish_request(request, client_address)
            else:
                _Refusal(request, client_address, self)
        finally:
            self.request_read(request)


_PLAIN = re.compile(r"[A-Za-z0-9_./@+-]+(?::[A-Za-z0-9_./@+-]+)*")


def log_event(name: str, text: str = "", **fields: object) -> str:
    """One log line of the gateway in the nodes' form (node/logs.py): ``event=NAME key=value
    ...[: text]``. A value that is not a plain token (empty, spaces, quotes, ``=``, control or
    format characters: a request line is the client's text) is written as a Python string
    literal, which escapes what a terminal would interpret and reads back as the value."""
    parts = [f"event={name}"]
    for key, value in fields.items():
        text_value = str(value)
        parts.append(f"{key}={text_value if _PLAIN.fullmatch(text_value) else repr(text_value)}")
    return " ".join(parts) + (f": {text}" if text else "")


def _peer(client_address: Any) -> str:
    return f"{client_address[0]}:{client_address[1]}"


def _cut(request: Any, log: Callable[[str], None], client_address: Any) -> None:
    """Deadline passed while the request was still being read: shut the socket down (the blocked
    read in the worker returns), without touching the TLS object another thread is using."""
    log(log_event("fhir_request_deadline", "request not read within the deadline: closed",
                  client=_peer(client_address)))
    with contextlib.suppress(OSError):
        socket.socket.shutdown(request, socket.SHUT_RDWR)


def tls_context(cert_path: Path, key_path: Path, ca_bundle: Path) -> ssl.SSLContext:
    """Server TLS context requiring a client certificate from a consortium CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.load_verify_locations(str(ca_bundle))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_server(home: Path, host: str = "127.0.0.1", port: int = 8443,
                server_node: str | None = None,
                log: Callable[[str], None] = lambda _: None,
                handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
                max_connections: int = MAX_CONNECTIONS,
                request_deadline_s: float = REQUEST_DEADLINE_S,
                max_per_source: int = MAX_PER_SOURCE,
                refusal_deadline_s: float = REFUSAL_DEADLINE_S,
                source_key: Callable[[str], str] = source_of,
                events_idle_s: float | None = EVENTS_IDLE_S,
                follow_every_s: float = FOLLOW_EVERY_S) -> tuple[_Server, Identities]:
    """A bound (not yet serving) gateway; its TLS certificate is a peer node's certificate.
    At most ``max_connections`` connections, ``max_per_source`` (capped at ``max_connections``)
    from one source (BAD_ARGUMENTS unless both are at least 1); ``source_key`` maps a peer
    address to its source (default :func:`client.fhir.admission.source_of`);
    ``events_idle_s``: how long the peer may send no block while the Task search or the
    PaymentReconciliation awaits one (:attr:`client.gateway.Gateway.events_idle_s`);
    ``follow_every_s``: the period of the sessions' proactive follow of the config chain
    (:class:`client.session.Session`, 0: none)."""
    home = Path(home)
    try:
        limits = AdmissionLimits.for_gateway(max_connections, max_per_source)
    except ValueError as exc:
        raise RxClientError("BAD_ARGUMENTS", f"connection bounds: {exc}") from None
    ids = Identities(home, events_idle_s, follow_every_s)
    node = server_node or ids.net.peers[0].name
    if node not in {n.name for n in ids.net.peers}:
        raise RxClientError("BAD_ARGUMENTS", f"{node!r} is not a peer of this network")
    ndir = home / "nodes" / node
    try:
        server = _Server((host, port), FhirApp(ids), log, handshake_timeout_s, limits,
                         request_deadline_s, refusal_deadline_s, source_key=source_key)
    except OSError as exc:  # the address it cannot listen on is named (was a bare "Address already in use")
        reason = "PORT_IN_USE" if exc.errno == errno.EADDRINUSE else "IO_ERROR"
        raise RxClientError(reason, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    ctx = tls_context(ndir / "cert.pem", ndir / "key.pem", home / "ca-bundle.pem")
    # No handshake in accept(): finish_request does it in the worker thread, with a timeout.
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server, ids


class _EventLines(logging.Handler):
    """The sessions' log events (``client.session``: ``event=NAME key=value ...``) as lines of
    the gateway's log, beside its own."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # (a log line never fails the call that logs it)
            self._log(record.getMessage())


def serve_forever(home: Path, host: str, port: int,
                  progress: Callable[[str], None] = print, server_node: str | None = None,
                  max_per_source: int = MAX_PER_SOURCE, follow_every_s: float = FOLLOW_EVERY_S) -> None:
    """Run the gateway until interrupted (TLS certificate: ``server_node``'s, default the first peer;
    at most ``max_per_source`` connections from one address; its sessions follow the config chain
    every ``follow_every_s``, their events logged with the gateway's)."""
    server, ids = make_server(home, host, port, server_node=server_node, log=progress,
                              max_per_source=max_per_source, follow_every_s=follow_every_s)
    logger = logging.getLogger("client.session")
    handler = _EventLines(progress)
    if not logging.getLogger().handlers:  # (a process that configured logging has them written its way)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    progress(f"FHIR gateway on https://{host}:{server.server_address[1]}/fhir (mutual TLS)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        logger.removeHandler(handler)
        server.server_close()
        ids.close()
