"""FHIR R5 <-> rxchain mapping, with structural validation (fhir.resources) and code checks.

Inbound: a ``MedicationRequest`` (one drug) or a ``Bundle`` of MedicationRequests (one
prescription, up to 5 lines sharing subject, reason and dispenseRequest) becomes an
:class:`~client.rxops.IssueRequest`:

* ``subject.identifier.value``: the patient (HIS handle or 18-digit resident ID number);
* ``reason[0].concept.coding[0].code``: ICD-10 diagnosis (system ``http://hl7.org/fhir/sid/icd-10``);
* ``medication.concept.coding[0].code``: 23-character NHSA national drug code or a formulary
  short name; ``dispenseRequest.quantity.value``: boxes (a positive integer);
* ``dispenseRequest.expectedSupplyDuration.value``: days (unit ``d``);
  ``dispenseRequest.validityPeriod`` start/end: validity days (1-3; a dateTime's day in China time);
  ``dispenseRequest.numberOfRepeatsAllowed``: extra fills; ``dispenseInterval.value``: days;
  ``dispenseRequest.dispenser.identifier.value``: the pharmacy organisation id;
* ``courseOfTherapyType.coding[0].code == "continuous"``: long prescription, with the chronic
  reason in ``note[0].text``.

Outbound: ``MedicationRequest`` (status of a prescription), ``MedicationDispense`` and
``Claim`` + ``ClaimResponse`` (settlement: ``total`` carries medfee as *submitted*, the fund
share as *benefit*, personal account and cash as *copay* entries; money in CNY).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from client.errors import RxClientError
from client.rxops import CHINA_TZ, DrugLine, IssueRequest

ICD10 = re.compile(r"^[A-TV-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")
NATIONAL_CODE = re.compile(r"^[A-Z0-9]{23}$")
SHORT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,47}$")
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
DRUG_SYSTEM = "urn:nhsa:medListCodg"
PATIENT_SYSTEM = "urn:rxchain:patient"
RX_SYSTEM = "urn:rxchain:hiRxno"
TRACE_SYSTEM = "urn:rxchain:rxTraceCode"
ORG_SYSTEM = "urn:rxchain:org"
CLAIM_SYSTEM = "urn:rxchain:claim"
DISPENSE_SYSTEM = "urn:rxchain:dispense"  # a fill of a prescription: "{rx_id}/{fill}"
MAX_LINES = 5
MAX_COUNT = 2_147_483_647  # FHIR ``integer``: box counts and day counts never exceed it


class FhirError(RxClientError):
    """A FHIR resource failed validation (reason FHIR_INVALID or a code-check reason)."""


def _validate(resource_type: str, raw: Mapping[str, Any]) -> Any:
    """Structural validation with fhir.resources (R5)."""
    from fhir.resources import get_fhir_model_class
    from pydantic import ValidationError

    if not isinstance(raw, Mapping) or raw.get("resourceType") != resource_type:
        got = raw.get("resourceType") if isinstance(raw, Mapping) else type(raw).__name__
        raise FhirError("FHIR_INVALID", f"expected a {resource_type}, got {got!r}")
    try:
        return get_fhir_model_class(resource_type).model_validate(dict(raw))
    except RecursionError as exc:
        raise FhirError("FHIR_INVALID", f"{resource_type}: nested too deeply") from exc
    except ValidationError as exc:
        errors = exc.errors()
        if not errors:
            raise FhirError("FHIR_INVALID", f"{resource_type}: {exc}") from exc
        where = ".".join(str(p) for p in errors[0]["loc"])
        raise FhirError("FHIR_INVALID", f"{resource_type}.{where}: {errors[0]['msg']}") from exc


def validate_resource(raw: Mapping[str, Any]) -> Any:
    """Validate any resource by its own resourceType."""
    rtype = raw.get("resourceType") if isinstance(raw, Mapping) else None
    if not isinstance(rtype, str):
        raise FhirError("FHIR_INVALID", "resourceType is missing")
    try:
        return _validate(rtype, raw)
    except KeyError as exc:
        raise FhirError("FHIR_INVALID", f"unknown resourceType {rtype!r}") from exc


def check_icd10(code: str) -> str:
    """An ICD-10 code such as I10 or E11.9."""
    if not isinstance(code, str) or not ICD10.match(code):
        raise FhirError("BAD_DIAGNOSIS", f"{code!r} is not an ICD-10 code")
    return code


def check_drug_code(code: str) -> str:
    """A 23-character national drug code or a formulary short name."""
    if isinstance(code, str) and (NATIONAL_CODE.match(code) or SHORT_NAME.match(code)):
        return code
    raise FhirError("UNKNOWN_DRUG", f"{code!r} is neither a 23-char national code nor a short name")


def _first_code(concept: Any, what: str) -> str:
    codings = getattr(concept, "coding", None) or []
    if not codings or not codings[0].code:
        raise FhirError("FHIR_INVALID", f"{what} needs coding[0].code")
    return str(codings[0].code)


def positive_int(value: Any, what: str) -> int:
    """A whole number of boxes in 1..MAX_COUNT (FHIR_INVALID otherwise)."""
    if value is None:
        raise FhirError("FHIR_INVALID", f"{what} is required")
    try:
        d = Decimal(str(value))
        whole = d.is_finite() and d == d.to_integral_value() and 0 < d <= MAX_COUNT
    except ArithmeticError:
        whole = False
    if not whole:
        raise FhirError("FHIR_INVALID", f"{what} must be a whole number in 1..{MAX_COUNT}, "
                        f"got {str(value)[:20]}")
    return int(d)


def _days(duration: Any, what: str) -> int:
    if duration is None:
        raise FhirError("FHIR_INVALID", f"{what} is required")
    unit = (duration.code or duration.unit or "d").lower()
    if unit not in ("d", "day", "days"):
        raise FhirError("FHIR_INVALID", f"{what} must be in days (unit d)")
    return positive_int(duration.value, what)


def _requests(raw: Mapping[str, Any]) -> list[Any]:
    if not isinstance(raw, Mapping):
        raise FhirError("FHIR_INVALID", f"expected a MedicationRequest or Bundle, got {type(raw).__name__}")
    if raw.get("resourceType") == "Bundle":
        entries_raw = raw.get("entry")
        if isinstance(entries_raw, list) and len(entries_raw) > MAX_LINES:  # before validating them all
            raise FhirError("TOO_MANY_ITEMS", f"at most {MAX_LINES} drug lines per prescription")
        bundle = _validate("Bundle", raw)
        entries = [e.resource for e in (bundle.entry or []) if e.resource is not None]
        out = []
        for res in entries:
            if res.get_resource_type() != "MedicationRequest":
                raise FhirError("FHIR_INVALID", "the Bundle may hold only MedicationRequests")
            out.append(res)
        if not out:
            raise FhirError("FHIR_INVALID", "the Bundle holds no MedicationRequest")
        return out
    return [_validate("MedicationRequest", raw)]


def issue_request_from_fhir(raw: Mapping[str, Any]) -> IssueRequest:
    """Validate a MedicationRequest (or Bundle of them) and map it to an IssueRequest."""
    reqs = _requests(raw)
    if len(reqs) > MAX_LINES:
        raise FhirError("TOO_MANY_ITEMS", f"at most {MAX_LINES} drug lines per prescription")
    first = reqs[0]
    for r in reqs:
        if r.status != "active" or r.intent != "order":
            raise FhirError("FHIR_INVALID", "MedicationRequest must have status active, intent order")
        if r.doNotPerform:
            raise FhirError("FHIR_INVALID", "doNotPerform requests cannot be issued")
    ident = first.subject.identifier if first.subject else None
    patient = ident.value if ident is not None else None
    if not patient:
        raise FhirError("FHIR_INVALID", "subject.identifier.value (the patient) is required")
    if not first.reason or first.reason[0].concept is None:
        raise FhirError("FHIR_INVALID", "reason[0].concept (ICD-10 diagnosis) is required")
    diagnosis = check_icd10(_first_code(first.reason[0].concept, "reason[0].concept"))
    long_rx = False
    if first.courseOfTherapyType is not None:
        long_rx = _first_code(first.courseOfTherapyType, "courseOfTherapyType") == "continuous"
    drugs = []
    for r in reqs:
        if r.subject.identifier is None or r.subject.identifier.value != patient:
            raise FhirError("FHIR_INVALID", "all lines must have the same subject")
        if not _agrees(_shared(r, long_rx), _shared(first, long_rx)):
            # one prescription: a line with another diagnosis, duration, validity, pharmacy,
            # repeats, course or (long-term: the chronic reason) note would otherwise be
            # silently issued with the first's
            raise FhirError("FHIR_INVALID", "all lines must have the same reason, courseOfTherapyType, "
                            "dispenseRequest (except quantity) and, for a continuous course, note")
        code = check_drug_code(_first_code(r.medication.concept, "medication.concept"))
        if r.dispenseRequest is None or r.dispenseRequest.quantity is None:
            raise FhirError("FHIR_INVALID", "dispenseRequest.quantity (boxes) is required")
        drugs.append(DrugLine(code, positive_int(r.dispenseRequest.quantity.value,
                                                   "dispenseRequest.quantity.value")))
    disp = first.dispenseRequest
    days = _days(disp.expectedSupplyDuration, "dispenseRequest.expectedSupplyDuration")
    valid_days = 1
    vp = disp.validityPeriod
    if vp is not None and vp.start is not None and vp.end is not None:
        start = _as_date(vp.start)
        end = _as_date(vp.end)
        valid_days = (end - start).days + 1
        if valid_days < 1:
            raise FhirError("VALIDITY_LIMIT", "validityPeriod ends before it starts")
    for line in _raw_lines(raw):
        _check_repeats(line)
    repeats = int(disp.numberOfRepeatsAllowed or 0)
    interval = _days(disp.dispenseInterval, "dispenseInterval") if disp.dispenseInterval else 0
    pharmacy = ""
    if disp.dispenser is not None and disp.dispenser.identifier is not None:
        pharmacy = str(disp.dispenser.identifier.value or "")
    reason = str(first.note[0].text) if first.note else ""
    return IssueRequest(
        patient=str(patient), diagnosis=diagnosis, drugs=drugs, days=days, long_rx=long_rx,
        chronic_reason=reason if long_rx else "", valid_days=valid_days, pharmacy=pharmacy,
        max_fills=repeats + 1, fill_interval_days=interval,
    )


def _raw_lines(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The MedicationRequests of a (validated) request as sent: itself, or a Bundle's entries'."""
    if raw.get("resourceType") != "Bundle":
        return [raw]
    return [e["resource"] for e in raw.get("entry") or []
            if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)]


def _check_repeats(line: Mapping[str, Any]) -> None:
    """``dispenseRequest.numberOfRepeatsAllowed`` as sent is a JSON integer (FHIR unsignedInt).
    fhir.resources coerces ``true`` to 1, ``"2"`` to 2 and ``1.0`` to 1: an HIS sending
    "repeats allowed: true" would issue a prescription with an extra fill."""
    disp = line.get("dispenseRequest")
    value = disp.get("numberOfRepeatsAllowed") if isinstance(disp, Mapping) else None
    if value is not None and (type(value) is not int or value < 0):
        raise FhirError("FHIR_INVALID", "dispenseRequest.numberOfRepeatsAllowed must be a whole number "
                        f"(a JSON integer, 0 or more), got {json.dumps(value, default=str)[:20]}")


def _shared(r: Any, long_rx: bool) -> dict[str, Any]:
    """What every line of one prescription states once for all lines. A note is the chronic
    reason of a long-term prescription only; otherwise each line may carry its own (per-drug
    instructions, which the ledger does not record)."""
    whole = r.model_dump(exclude_none=True)  # (fhir.resources ignores include/exclude here)
    keys = ("reason", "courseOfTherapyType", "note") if long_rx else ("reason", "courseOfTherapyType")
    out = {k: whole[k] for k in keys if k in whole}
    disp = whole.get("dispenseRequest") or {}
    out.update({f"dispenseRequest.{k}": v for k, v in disp.items() if k != "quantity"})
    return out


def _agrees(line: Mapping[str, Any], first: Mapping[str, Any]) -> bool:
    """A later line may leave out what the first states (it inherits it), never contradict it."""
    return all(key in first and first[key] == value for key, value in line.items())


def _as_date(value: Any) -> dt.date:
    """The calendar day of a FHIR date or dateTime; a dateTime's in China time, as the contracts
    count validity days (``2026-11-26T16:00:00Z`` is 27 November: taken as the 26th, a day sent
    in UTC was two validity days, and three were four)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(CHINA_TZ).date() if value.tzinfo is not None else value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:  # a partial FHIR date ("2026", "2026-11")
        raise FhirError("FHIR_INVALID",
                        f"validityPeriod needs full dates (YYYY-MM-DD), got {str(value)[:20]!r}") from exc


FHIR_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")  # a resource's logical id (FHIR ``id``)


def _resource_id(value: str) -> dict[str, str]:
    """``{"id": value}`` when ``value`` is a FHIR id, else nothing: the contracts take rx ids
    (and so claim ids) with ``_`` and up to 64 characters, which a FHIR id cannot hold (with
    its suffix) -- the resource would not validate, and a dispense or claim that committed
    would be answered 400. The resource's identifiers name it all the same."""
    return {"id": value} if FHIR_ID.fullmatch(value) else {}


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def _money(fen: int) -> dict[str, Any]:
    """Exact yuan amount (a Decimal; serialised as a JSON number by :func:`dumps`)."""
    return {"value": Decimal(fen) / 100, "currency": "CNY"}


def dumps(resource: Mapping[str, Any]) -> bytes:
    """Validated FHIR JSON of a resource (decimals exact, empty elements dropped)."""
    model = validate_resource(resource)
    text: str = model.model_dump_json(exclude_none=True)
    return text.encode()


def _drug_concept(line: Mapping[str, Any]) -> dict[str, Any]:
    coding = {"system": DRUG_SYSTEM, "code": line["code"]}
    if line.get("name"):
        coding["display"] = line["name"]
    return {"concept": {"coding": [coding]}}


def _subject(meta: Mapping[str, Any], content: Mapping[str, Any] | None) -> dict[str, Any]:
    pseud = str(meta.get("patient", ""))
    return {"identifier": {"system": PATIENT_SYSTEM + ":pseudonym", "value": pseud}}


_RX_STATUS = {"ISSUED": "active", "APPROVED": "active", "LOCKED": "active",
              "DISPENSED": "completed", "DELIVERED": "completed", "REJECTED": "cancelled",
              "REVOKED": "cancelled", "EXPIRED": "ended", "ERASED": "entered-in-error"}


def medication_requests(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A Bundle of MedicationRequests describing an issued prescription (from ``rx show``)."""
    content = meta.get("content") if isinstance(meta.get("content"), Mapping) else None
    rx_id = str(meta["rx_id"])
    status = _RX_STATUS.get(str(meta.get("status", "")), "unknown")
    lines: Iterable[Mapping[str, Any]] = content["drugs"] if content else []
    entries = []
    for i, line in enumerate(lines):
        res = {
            "resourceType": "MedicationRequest", **_resource_id(f"{rx_id}-{i + 1}"),
            "identifier": [{"system": RX_SYSTEM, "value": rx_id}],
            "groupIdentifier": {"system": RX_SYSTEM, "value": rx_id},
            "status": status, "intent": "order", "medication": _drug_concept(line),
            "subject": _subject(meta, content),
            "reason": [{"concept": {"coding": [{"system": ICD10_SYSTEM,
                                                "code": content["diagnosis"]}]}}] if content else [],
            "dispenseRequest": {
                "quantity": {"value": line["qty"], "unit": "box"},
                "expectedSupplyDuration": {"value": line.get("days", content["days"] if content else 1),
                                           "unit": "d", "system": "http://unitsofmeasure.org",
                                           "code": "d"},
            },
        }
        if meta.get("issued_ms"):
            res["authoredOn"] = _iso(int(meta["issued_ms"]))
        _validate("MedicationRequest", res)
        entries.append({"resource": res})
    bundle = {"resourceType": "Bundle", "type": "collection",
              "identifier": {"system": RX_SYSTEM, "value": rx_id}, "entry": entries}
    _validate("Bundle", bundle)
    return bundle


ACTION_SYSTEM = "urn:rxchain:inboxAction"  # review, dispense, wait, deliver, none (client.inbox); routed_elsewhere
ROUTED_ELSEWHERE = "routed_elsewhere"  # (a prescription routed to another pharmacy: no work item here)
ROUTED_REASON = ("routed to another pharmacy: no further fill here (a fill this pharmacy dispensed and did not "
                 "hand over is listed to deliver until its courier does)")
_TASK_STATUS = {"review": "requested", "dispense": "ready", "wait": "on-hold", "deliver": "in-progress"}
_DONE = {"DELIVERED": "completed", "REVOKED": "cancelled", "REJECTED": "cancelled", "EXPIRED": "cancelled",
         "ERASED": "cancelled"}


def inbox_task(p: Mapping[str, Any], org: str) -> dict[str, Any]:
    """A pharmacy's work item (``client.inbox``'s prescription summary) as a FHIR Task: its
    ``status`` from what there is to do (review: requested, dispense: ready, wait for the next
    fill: on-hold with ``restriction.period.start``, deliver: in-progress; nothing: completed
    when delivered, cancelled when revoked, rejected, expired -- the validity passed, expire
    transaction or not -- or erased), ``businessStatus``
    the action (system ``urn:rxchain:inboxAction``) and the prescription's status, ``focus``
    the MedicationRequest by its identifier, ``owner`` the pharmacy."""
    action, status = str(p.get("action", "none")), str(p.get("status", ""))
    rx_id = str(p["rx_id"])
    final = "EXPIRED" if p.get("expired") is True else status  # (validity passed, no expire tx)
    task: dict[str, Any] = {
        "resourceType": "Task", "identifier": [{"system": RX_SYSTEM, "value": rx_id}],
        "status": _TASK_STATUS.get(action) or _DONE.get(final, "on-hold"), "intent": "order",
        "businessStatus": {"coding": [{"system": ACTION_SYSTEM, "code": action}], "text": status},
        "focus": {"type": "MedicationRequest", "identifier": {"system": RX_SYSTEM, "value": rx_id}},
        "owner": {"identifier": {"system": ORG_SYSTEM, "value": org}},
        "input": [{"type": {"text": name}, "valueInteger": int(p.get(key) or 0)}
                  for name, key in (("fills", "fills"), ("maxFills", "max_fills"),
                                    ("deliveredFills", "delivered_fills"))],
    }
    if action == "wait" and p.get("next_fill_ms"):
        task["restriction"] = {"period": {"start": _iso(int(p["next_fill_ms"]))}}
    _validate("Task", task)
    return task


def routed_task(rx_id: str) -> dict[str, Any]:
    """A prescription of the range routed to a pharmacy the caller's is not (``client.inbox``'s
    ``routed_elsewhere``) as a ``cancelled`` Task, ``businessStatus`` ``routed_elsewhere``: the
    Task an ERP kept for it from an earlier poll ends, nobody here dispenses it. The id only,
    as every member's events name it -- the pharmacy it left may no longer read it (``show``:
    NOT_FOUND, as for an id never issued), so nothing of its state, patient, hospital or new
    pharmacy, and no ``owner`` (most ids were never the caller's). A prescription routed away
    while a fill the caller dispensed is not handed over yet is no such Task but an
    in-progress one (to deliver) until its courier hands the fill over; the poll whose blocks
    hold that hand-over answers this Task for it."""
    task: dict[str, Any] = {
        "resourceType": "Task", "identifier": [{"system": RX_SYSTEM, "value": rx_id}],
        "status": "cancelled", "intent": "order",
        "statusReason": {"concept": {"text": ROUTED_REASON}},
        "businessStatus": {"coding": [{"system": ACTION_SYSTEM, "code": ROUTED_ELSEWHERE}]},
        "focus": {"type": "MedicationRequest", "identifier": {"system": RX_SYSTEM, "value": rx_id}},
    }
    _validate("Task", task)
    return task


def inbox_bundle(inbox: Mapping[str, Any], self_url: str, next_url: str | None) -> dict[str, Any]:
    """A searchset Bundle of :func:`inbox_task` entries, then one :func:`routed_task` per
    prescription routed elsewhere; ``next`` only when the block limit cut the range short
    (more blocks to read now)."""
    org = str(inbox["org"])
    entries = [{"resource": inbox_task(p, org), "search": {"mode": "match"}} for p in inbox["prescriptions"]]
    entries += [{"resource": routed_task(str(rx_id)), "search": {"mode": "match"}}
                for rx_id in inbox.get("routed_elsewhere") or []]
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "link": links,
              "entry": entries}
    _validate("Bundle", bundle)
    return bundle


PAYMENT_TYPE = "http://terminology.hl7.org/CodeSystem/payment-type"


def _china_date(ms: int) -> str:
    """The calendar day (China time, as the contracts count days) of ``ms``."""
    return dt.datetime.fromtimestamp(ms / 1000, CHINA_TZ).date().isoformat()


BLOCKS_SYSTEM = "urn:rxchain:blocks"  # a block range "FROM..NEXT": FROM up to, not including, NEXT


def payment_reconciliation(report: Mapping[str, Any], now_ms: int, more: bool = False) -> dict[str, Any]:
    """An insurer's claims report (``client.reconcile``) as a PaymentReconciliation: ``amount``
    the net fund share of the range (settled minus reversed, consistent claims only), one
    ``allocation`` per settle (type payment, the fund share) or reverse (type adjustment, the
    fund share given back, negative) of a consistent claim naming its Claim, dated by the
    China-time day of the step -- the allocations add up to ``amount``; the block range as
    ``identifier``; claims the caller could not read, or whose amounts break the settlement
    identities (not counted, their fund share noted apart), as notes. ``outcome`` partial with a
    ``disposition`` when ``more`` (the block limit or the report's cap of claims read,
    ``reads_capped``, cut the range short: the next report goes on at once), else complete."""
    first, nxt = int(report["from_block"]), int(report["next_block"])
    allocations = []
    for row in report["claims"]:
        if row.get("inconsistent") is True:
            continue  # (out of amount: a processNote names it)
        settled = row["event"] == "settled"
        alloc: dict[str, Any] = {
            "identifier": {"system": RX_SYSTEM + ":tx", "value": str(row["tx_id"])},
            "target": {"type": "Claim", "identifier": {"system": CLAIM_SYSTEM, "value": str(row["claim_id"])}},
            "type": {"coding": [{"system": PAYMENT_TYPE, "code": "payment" if settled else "adjustment"}]},
            "amount": _money(int(row["fund_fen"]) if settled else -int(row["fund_fen"])),
        }
        if row.get("time_ms"):
            alloc["date"] = _china_date(int(row["time_ms"]))
        allocations.append(alloc)
    res: dict[str, Any] = {
        "resourceType": "PaymentReconciliation",
        "identifier": [{"system": BLOCKS_SYSTEM, "value": f"{first}..{nxt}"}],
        "type": {"coding": [{"system": PAYMENT_TYPE, "code": "payment"}]},
        "status": "active", "created": _iso(now_ms), "date": _china_date(now_ms),
        "outcome": "partial" if more else "complete",
        "amount": _money(int(report["totals"]["net"]["fund_fen"])),
        "allocation": allocations,
    }
    if more:
        why = "the cap of claims one report reads" if report.get("reads_capped") is True else "limit-blocks"
        res["disposition"] = (f"blocks {first}..{nxt - 1} only ({why}): the next report goes on from block "
                              f"{nxt} (X-Rxchain-Next-Block) at once")
    if report.get("insurer"):
        res["paymentIssuer"] = {"identifier": {"system": ORG_SYSTEM, "value": str(report["insurer"])}}
    notes = [f"unreadable claim {c}: not counted" for c in report.get("unreadable") or []]
    notes += [f"inconsistent claim {c}: amounts break medfee = fund + patient = fund + account + cash "
              "(or are negative or not integer fen), not counted" for c in report.get("inconsistent") or []]
    odd = report["totals"].get("inconsistent") or {}
    if odd.get("count"):
        fund = odd.get("fund_fen")
        share = f"{Decimal(fund) / 100:.2f} CNY" if type(fund) is int else "unknown (an amount is not integer fen)"
        notes.append(f"inconsistent claims' fund share, settled minus reversed, not counted: {share}")
    notes += [f"malformed {m.get('event')} event in block {m.get('block')} (tx {m.get('tx_id')}): names no claim, "
              "not counted" for m in report.get("malformed") or []]
    if notes:
        res["processNote"] = [{"type": "display", "text": n} for n in notes]
    _validate("PaymentReconciliation", res)
    return res


def dispense_id(rx_id: str, fill: object, line: int) -> str:
    """The id of the MedicationDispense of line ``line`` (1-based) of fill ``fill`` of ``rx_id``
    (a Claim names the fill it claims by referring to it: :func:`client.fhir.retry.referenced_fill`)."""
    return f"{rx_id}-fill{fill}-{line}"


def medication_dispense(meta: Mapping[str, Any], content: Mapping[str, Any],
                        result: Mapping[str, Any], trace_codes: Iterable[str],
                        pharmacy: str, pharmacist: str) -> dict[str, Any]:
    """A MedicationDispense (one per drug line, in a Bundle) for a completed dispense."""
    rx_id = str(meta.get("rx_id") or content["rx_id"])
    codes = list(trace_codes)
    entries = []
    for i, line in enumerate(content["drugs"]):
        res: dict[str, Any] = {
            "resourceType": "MedicationDispense", **_resource_id(dispense_id(rx_id, result.get("fill", 1), i + 1)),
            "identifier": [{"system": RX_SYSTEM + ":tx", "value": str(result.get("tx_id", ""))},
                           {"system": DISPENSE_SYSTEM, "value": f"{rx_id}/{result.get('fill', 1)}"}],
            "status": "completed", "medication": _drug_concept(line),
            "subject": _subject(meta, content),
            "performer": [{"actor": {"identifier": {"system": ORG_SYSTEM + ":" + pharmacy,
                                                    "value": pharmacist}}}],
            "authorizingPrescription": [{"identifier": {"system": RX_SYSTEM, "value": rx_id}}],
            "quantity": {"value": line["qty"], "unit": "box"},
            "daysSupply": {"value": line.get("days", content.get("days", 1)), "unit": "d"},
        }
        if i == 0 and codes:
            res["extension"] = [{"url": TRACE_SYSTEM, "valueString": c} for c in codes]
        _validate("MedicationDispense", res)
        entries.append({"resource": res})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    _validate("Bundle", bundle)
    return bundle


def claim_and_response(rec: Mapping[str, Any], insurer: str) -> dict[str, Any]:
    """A Bundle with the Claim and ClaimResponse of a settled claim record."""
    claim_id = str(rec["claim_id"])
    events = rec.get("events") or [{}]
    created_ms = int(rec.get("time_ms") or events[0].get("time_ms") or 0)
    created = _iso(created_ms) if created_ms else dt.datetime.now(
        dt.UTC).isoformat().replace("+00:00", "Z")
    ctype = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                         "code": "pharmacy"}]}
    patient = {"identifier": {"system": PATIENT_SYSTEM + ":pseudonym",
                              "value": str(rec.get("patient", ""))}}
    claim = {
        "resourceType": "Claim", **_resource_id(claim_id),
        "identifier": [{"system": CLAIM_SYSTEM, "value": claim_id}],
        # a reversed claim is no longer payable: cancelled (GET /fhir/Claim reads this resource)
        "status": "active" if rec.get("status", "SETTLED") == "SETTLED" else "cancelled",
        "type": ctype, "use": "claim", "patient": patient,
        "created": created, "insurer": {"identifier": {"system": ORG_SYSTEM, "value": insurer}},
        "prescription": {"identifier": {"system": RX_SYSTEM, "value": str(rec.get("rx_id", ""))}},
        "total": _money(int(rec["medfee_fen"])),
    }

    def cat(code: str, fen: int, text: str) -> dict[str, Any]:
        return {"category": {"coding": [{"system":
                "http://terminology.hl7.org/CodeSystem/adjudication", "code": code}],
                "text": text}, "amount": _money(fen)}

    response = {
        "resourceType": "ClaimResponse", **_resource_id(claim_id + "-response"),
        "identifier": [{"system": CLAIM_SYSTEM, "value": claim_id}],
        "status": "active" if rec.get("status", "SETTLED") == "SETTLED" else "cancelled",
        "type": ctype, "use": "claim", "patient": patient, "created": created,
        "insurer": {"identifier": {"system": ORG_SYSTEM, "value": insurer}},
        "request": {"reference": f"Claim/{claim_id}"} if "id" in claim else {
            "type": "Claim", "identifier": {"system": CLAIM_SYSTEM, "value": claim_id}},
        "outcome": "complete",
        "total": [cat("submitted", int(rec["medfee_fen"]), "medfee"),
                  cat("benefit", int(rec["fund_fen"]), "fund"),
                  cat("deductible", int(rec.get("deductible_fen", 0)), "deductible"),
                  cat("copay", int(rec["account_fen"]), "personal account"),
                  cat("copay", int(rec["cash_fen"]), "cash")],
    }
    _validate("Claim", claim)
    _validate("ClaimResponse", response)
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": claim}, {"resource": response}]}
    _validate("Bundle", bundle)
    return bundle


def operation_outcome(reason: str, message: str, ids: Mapping[str, str] | None = None,
                      severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome carrying the rxchain reason code; ``ids`` (e.g. ``tx_id``, ``rx_id``
    of a transaction whose outcome is unknown) go in ``diagnostics`` as ``key=value; ...``."""
    issue: dict[str, Any] = {
        "severity": severity, "code": "processing",
        "details": {"coding": [{"system": "urn:rxchain:reason", "code": reason}], "text": message}}
    if ids:
        issue["diagnostics"] = "; ".join(f"{k}={v}" for k, v in ids.items())
    return {"resourceType": "OperationOutcome", "issue": [issue]}
