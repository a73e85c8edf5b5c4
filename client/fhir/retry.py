"""Retry-safe dispense and claim over FHIR: what a re-sent POST is compared with.

A pharmacy ERP or an insurer whose answer was lost (504/502, a dropped connection) sends its
POST again. The contract then refuses the step as done already (ALREADY_DISPENSED,
FILLS_EXHAUSTED or TOO_EARLY for a dispense, DUPLICATE_CLAIM for a claim) or the retry's own
transaction loses to the first one (MVCC_READ_CONFLICT). The gateway then reads what the
ledger holds, through the views a GET uses (``prescription.show`` and ``trace``,
``settlement.trail`` and ``get_claim``: the contract's own role checks, so nothing comes back
that the caller could not read anyway), and compares:

* **dispense** (a fill of a prescription): the fill the request names (identifier
  ``urn:rxchain:dispense|{rx_id}/{fill}``, in the body's ``identifier`` or as
  ``If-None-Exist``), else the latest fill, was dispensed by the caller's pharmacy with as
  the same trace codes as the request carries (the ledger keeps only their keyed hashes:
  ``prescription.trace_fills`` tells which fill recorded each; a retry's codes all belong to
  that fill, another fill's boxes do not). The request's ``medication`` and ``quantity``
  must name a line of the prescription (checked before anything is submitted, first POST and
  retry alike: a fill dispenses every line of the prescription).
* **claim** (the active claim of a fill): the claim the request names (identifier
  ``urn:rxchain:claim|CLM-{rx_id}-{fill}-{n}``), else the active claim of the fill it names
  through the dispense it claims (:func:`referenced_fill`: a ``supportingInfo`` referring to
  the MedicationDispense the gateway answered, ``MedicationDispense/{rx_id}-fill{N}-{line}``
  or ``urn:rxchain:dispense|{rx_id}/{N}``), else of fill 1 -- a Claim naming no fill is taken
  only while fill 1 is the only fill dispensed, see below --
  is the caller's insurer's, SETTLED, for that prescription and fill; it claims the same
  lines (``Claim.item``: national code and boxes; none = everything dispensed), compared
  through the claim's ``lines_commitment`` (the lines committed under the claim salt, which
  only the claim grant holders know; the same boxes split into other lines are another claim:
  the B share is rounded per line, :func:`client.rxops.claim_lines_commitment_of`); and, when
  the request states ``Claim.total``, its medical fee is that amount (a first POST stating a
  total is evaluated before it is submitted and refused AMOUNT_MISMATCH when it differs).

A match is answered ``200`` with the resource the first success returned (built again from
the ledger: tx id, pharmacist and fill from the trail; the claim record from
``get_claim``). Anything else keeps the contract's refusal, as a ``409`` for a state
conflict (ALREADY_DISPENSED, FILLS_EXHAUSTED, DUPLICATE_CLAIM) with the reason and, for a
claim the caller may read, its id in ``diagnostics``.

A retry that lost an MVCC race matches only a step committed meanwhile (a fill newer than the
prescription read before submitting; for a claim, the latest fill's): a race lost to another
write keeps the refusal. So does a dispense refused ALREADY_LOCKED: the lock it named (its
first attempt's, found held) changed hands -- dispensed under and the next fill locked, or
freed and taken again (then nothing newer is on the ledger and the refusal stands). A
comparing read failing at the peer answers as that failure (5xx).

Without a named fill, a POST on a repeat prescription inside its fill interval is a retry of
the latest fill (TOO_EARLY otherwise); after the interval it dispenses the next fill. Name
the fill to be exact (a retry carrying the boxes' trace codes is told by them: refused
TRACE_CODE_REUSED, it is compared with the fill that recorded them). No fill waits for the
previous one's hand-over any more (the contract's NOT_DELIVERED is gone: ``deliver`` names
any fill), so nothing else refuses the next fill once the interval passed.

A Claim naming no fill (no claim identifier, no dispense in ``supportingInfo``) settles fill 1
only while it is the prescription's only fill dispensed (submitted as fill 1, so a fill
dispensed meanwhile is never taken instead). Once a later fill is dispensed it is refused
FILL_NOT_NAMED (422, nothing submitted): a Claim of fill 1 re-sent after a lost answer and
a new Claim of the latest fill are the same body, and the gateway used to settle the latest
fill with it. Name the fill (or the claim) to claim a repeat fill.

An integrator identifier of another system cannot name a dispense or a claim: the ledger
records none (unlike an issue, whose rx id the gateway derives from it), so it is ignored in
the body and refused (FHIR_INVALID) in ``If-None-Exist``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from client.errors import RxClientError
from client.fhir import idempotency
from client.fhir.mapping import (
    CLAIM_SYSTEM,
    DISPENSE_SYSTEM,
    MAX_LINES,
    TRACE_SYSTEM,
    FhirError,
    positive_int,
)
from client.rxops import ClaimLine

# Refusals of a new fill meaning "that fill is taken": compare with what the ledger holds.
FILL_TAKEN = ("ALREADY_DISPENSED", "FILLS_EXHAUSTED", "TOO_EARLY")
# The request's boxes went out before: in a fill of this prescription, a retry of that fill.
CODES_USED = "TRACE_CODE_REUSED"
# A retry's own transaction lost to the first one's (both read the prescription or the guard).
LOST_RACE = "MVCC_READ_CONFLICT"
# The lock the dispense named changed hands: the lock its first attempt took (or found held)
# may have gone out with that fill meanwhile, and another call locked the next one.
LOCK_TAKEN = "ALREADY_LOCKED"
# Refusals that match only a fill committed while the request ran (newer than it read before).
RACES = (LOST_RACE, LOCK_TAKEN)
MAX_FILL = 99  # the settlement contract's bound on a fill number
MAX_CLAIM_SEQ = 999
CLAIM_ID = re.compile(r"CLM-([A-Za-z0-9._-]{1,64})-([1-9][0-9]{0,1})-([1-9][0-9]{0,2})")
_CLAIM_PATH_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
TRACE_CODE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # what prescription.dispense takes (ASCII only)
# a MedicationDispense the gateway answered: id {rx_id}-fill{N}-{line} (mapping.medication_dispense)
_DISPENSE_ID = re.compile(r"([A-Za-z0-9._-]{1,64})-fill([1-9][0-9]?)-([1-9][0-9]?)")
_DISPENSE_REFERENCE = re.compile(r"(?:[^?#]*/)?MedicationDispense/([^/?#]+)(?:/_history/[^/?#]+)?")
# any other reference to a MedicationDispense (a query, a fragment, a search, a contained one)
_ANY_DISPENSE_REFERENCE = re.compile(r"(?:^|/)MedicationDispense(?:[/?#]|$)")


class Conflict(RxClientError):
    """A refusal after comparing a request with what the ledger holds; ``detail`` names the
    ids the caller may read (``diagnostics`` of the answer)."""

    def __init__(self, reason: str, message: str, **ids: str):
        super().__init__(reason, message)
        self.detail: dict[str, str] = dict(ids)


@dataclass(frozen=True)
class ClaimRef:
    """A claim named by its id ``CLM-{rx_id}-{fill}-{seq}`` (seq: the n-th claim of the fill)."""

    claim_id: str
    fill: int
    seq: int

    def previous(self) -> str:
        """The id of the claim of the same fill before this one."""
        return self.claim_id.rsplit("-", 1)[0] + f"-{self.seq - 1}"


def dispense_identifier(rx_id: str, fill: int) -> dict[str, str]:
    """The identifier of fill ``fill`` of ``rx_id`` (on every MedicationDispense answered)."""
    return {"system": DISPENSE_SYSTEM, "value": f"{rx_id}/{fill}"}


def _named(body: Mapping[str, Any], header: str | None, system: str) -> set[str]:
    """The values of ``system`` the request names: body ``identifier`` entries and the
    ``If-None-Exist`` identifier (which must be of ``system``)."""
    values: set[str] = set()
    if header is not None:
        found = idempotency.from_if_none_exist(header)
        if found.system != system:
            raise FhirError("FHIR_INVALID", f"If-None-Exist here supports identifier={system}|... only: the "
                            "ledger records no other identifier of this resource")
        values.add(found.value)
    idents = body.get("identifier")
    for ident in idents if isinstance(idents, list) else []:
        if isinstance(ident, Mapping) and ident.get("system") == system and isinstance(ident.get("value"), str):
            values.add(ident["value"])
    if len(values) > 1:
        raise FhirError("FHIR_INVALID", f"the request names more than one {system} identifier")
    return values


def _fill_of(value: str, rx_id: str, what: str) -> int:
    """The fill of a ``urn:rxchain:dispense`` identifier value ``{rx_id}/{fill}``."""
    rx, sep, fill = value.rpartition("/")
    if not sep or rx != rx_id or not fill.isdigit() or not fill.isascii() or not 1 <= int(fill) <= MAX_FILL:
        raise FhirError("FHIR_INVALID", f"a {DISPENSE_SYSTEM} identifier is {rx_id}/FILL ({what}, a fill "
                        f"1-{MAX_FILL})")
    return int(fill)


def named_fill(body: Mapping[str, Any], header: str | None, rx_id: str) -> int:
    """The fill a MedicationDispense names (``urn:rxchain:dispense|{rx_id}/{fill}``), 0 if none."""
    values = _named(body, header, DISPENSE_SYSTEM)
    if not values:
        return 0
    return _fill_of(values.pop(), rx_id, "the authorizing prescription")


def _fill_of_dispense_id(value: str, rx_id: str, where: str) -> int:
    """The fill of a MedicationDispense id :func:`dispense_id` made for ``rx_id``."""
    m = _DISPENSE_ID.fullmatch(value)
    if m is None or m.group(1) != rx_id or not 1 <= int(m.group(3)) <= MAX_LINES:
        raise FhirError("FHIR_INVALID", f"{where}: a MedicationDispense this gateway answered for {rx_id} is "
                        f"MedicationDispense/{rx_id}-fillFILL-LINE")
    return int(m.group(2))


def referenced_fill(model: Any, rx_id: str) -> int:
    """The fill a Claim names through the dispense it claims, 0 if none: a ``supportingInfo``
    whose ``valueReference`` is the MedicationDispense the gateway answered (``reference``
    ``MedicationDispense/{rx_id}-fill{N}-{line}``, relative, absolute or versioned, or
    ``identifier`` ``urn:rxchain:dispense|{rx_id}/{N}``) or whose ``valueIdentifier`` is that
    identifier. Other supporting information is not looked at; a dispense of another
    prescription, two fills, a MedicationDispense referred to otherwise (a query, a fragment,
    a search, a contained resource: no fill it names could be told), or the dispense's
    identifier as the Claim's own ``identifier`` are FHIR_INVALID (a Claim settles one fill of
    its prescription)."""
    for i, ident in enumerate(getattr(model, "identifier", None) or []):
        if ident.system == DISPENSE_SYSTEM:  # passed over, the Claim would settle fill 1 as unnamed
            raise FhirError("FHIR_INVALID", f"identifier[{i}]: a Claim's identifier names a claim "
                            f"({CLAIM_SYSTEM}|CLM-{rx_id}-FILL-N); the fill it claims is a supportingInfo whose "
                            f"valueIdentifier is {DISPENSE_SYSTEM}|{rx_id}/FILL (or whose valueReference is "
                            f"the MedicationDispense)")
    fills: set[int] = set()
    for i, info in enumerate(getattr(model, "supportingInfo", None) or []):
        where = f"supportingInfo[{i}]"
        ref = info.valueReference
        for ident in (info.valueIdentifier, ref.identifier if ref is not None else None):
            if ident is not None and ident.system == DISPENSE_SYSTEM:
                fills.add(_fill_of(str(ident.value or ""), rx_id, f"{where}: the Claim's prescription"))
        if ref is not None and ref.reference:
            m = _DISPENSE_REFERENCE.fullmatch(str(ref.reference))
            if m is not None:
                fills.add(_fill_of_dispense_id(m.group(1), rx_id, where))
            elif ref.type == "MedicationDispense" or _ANY_DISPENSE_REFERENCE.search(str(ref.reference)):
                # passed over, the Claim would name no fill and settle fill 1 while it claims another
                raise FhirError("FHIR_INVALID", f"{where}: a MedicationDispense is referred to as "
                                f"MedicationDispense/{rx_id}-fillFILL-LINE (relative, absolute or versioned; "
                                "no query, fragment, search or contained resource), or by identifier "
                                f"{DISPENSE_SYSTEM}|{rx_id}/FILL")
    if len(fills) > 1:
        raise FhirError("FHIR_INVALID", f"supportingInfo names fills {sorted(fills)}: a Claim settles one fill")
    return fills.pop() if fills else 0


def named_claim(body: Mapping[str, Any], header: str | None, rx_id: str) -> ClaimRef | None:
    """The claim a Claim names (``urn:rxchain:claim|CLM-{rx_id}-{fill}-{seq}``), or None."""
    values = _named(body, header, CLAIM_SYSTEM)
    if not values:
        return None
    claim_id = values.pop()
    m = CLAIM_ID.fullmatch(claim_id)
    if m is None or m.group(1) != rx_id:
        raise FhirError("FHIR_INVALID", f"a {CLAIM_SYSTEM} identifier is CLM-{rx_id}-FILL-N (the claim's "
                        "prescription, fill and sequence number)")
    return ClaimRef(claim_id, int(m.group(2)), int(m.group(3)))


def claim_path_id(value: str) -> str:
    """A claim id in a path (``GET /fhir/Claim/{id}``), as the settlement contract accepts it."""
    if not _CLAIM_PATH_ID.fullmatch(value) or not value.strip("."):
        raise FhirError("FHIR_INVALID", "not a claim id")
    return value


def trace_codes(model: Any) -> list[str]:
    """The box trace codes of a MedicationDispense (``extension`` ``urn:rxchain:rxTraceCode``,
    ``valueString``), checked as the contract checks them before anything is submitted: one
    code per box (a code twice is no retry of any fill: each hash is recorded once), 1-64 of
    ``[A-Za-z0-9-_.]``; FHIR_INVALID otherwise (the contract's refusal would come after the lock)."""
    codes: list[str] = []
    seen: set[str] = set()  # a list's `in` made a body of 16k codes cost ~0.8 s of CPU
    for i, ext in enumerate(model.extension or []):
        if ext.url != TRACE_SYSTEM:
            continue
        code = ext.valueString
        if not isinstance(code, str) or not TRACE_CODE.fullmatch(code):
            raise FhirError("FHIR_INVALID", f"extension[{i}] ({TRACE_SYSTEM}) needs a valueString of 1-64 "
                            "characters of [A-Za-z0-9-_.]")
        if code in seen:
            raise FhirError("FHIR_INVALID", f"extension[{i}]: trace code {code} appears twice (one per box)")
        seen.add(code)
        codes.append(code)
    return codes


def requested_item(model: Any) -> tuple[str | None, int | None]:
    """The drug code (``medication.concept.coding[0].code``) and boxes (``quantity.value``)
    a MedicationDispense names, each None when absent."""
    concept = getattr(model.medication, "concept", None) if model.medication is not None else None
    codings = getattr(concept, "coding", None) or []
    code = str(codings[0].code) if codings and codings[0].code else None
    qty = None
    if model.quantity is not None and model.quantity.value is not None:
        qty = positive_int(model.quantity.value, "quantity.value")
    return code, qty


def check_item(content: Mapping[str, Any], code: str | None, qty: int | None) -> None:
    """The named drug (code or short name) and boxes are a line of the prescription
    ``content``, else ITEM_NOT_PRESCRIBED (nothing is submitted)."""
    if code is None and qty is None:
        return
    lines = [ln for ln in content.get("drugs") or [] if isinstance(ln, Mapping)]
    for line in lines:
        if (code is None or code in (line.get("code"), line.get("short_name"))) and (
                qty is None or qty == line.get("qty")):
            return
    said = " ".join(p for p in (code, None if qty is None else f"x{qty}") if p)
    raise FhirError("ITEM_NOT_PRESCRIBED", f"the MedicationDispense names {said}, which is no line of the "
                    "prescription (a fill dispenses every line, as prescribed)")


def dispense_conflict(step: Mapping[str, Any] | None, fill: int, org: str, codes: int,
                      code_fills: Sequence[int] = ()) -> str | None:
    """Why fill ``fill`` (its trail step, None if not dispensed) is not the dispense a request
    of pharmacy ``org`` with ``codes`` trace codes describes; None when it is. ``code_fills``:
    the fill each of the request's codes was recorded in (``prescription.trace_fills``; 0:
    not on this prescription), all ``fill`` for a retry."""
    if step is None:
        return f"fill {fill} is not dispensed"
    if step.get("org") != org:
        return f"fill {fill} was dispensed by another pharmacy"
    if step.get("trace_codes") != codes:
        return (f"fill {fill} was dispensed by this pharmacy with {step.get('trace_codes')} trace codes, "
                f"this request carries {codes}")
    other = [i for i, f in enumerate(code_fills) if f != fill]
    if other:
        i = other[0]
        where = f"fill {code_fills[i]}" if code_fills[i] else "no fill of this prescription"
        return (f"fill {fill} was dispensed by this pharmacy with other boxes: {len(other)} of this request's "
                f"{codes} trace codes were not (the first, #{i + 1}, was recorded in {where})")
    return None


def check_item_count(body: Mapping[str, Any]) -> None:
    """At most MAX_LINES ``item`` in a raw Claim, before it is validated (the settlement
    contract takes 1-5 claim lines: a longer list could never have been settled, and is no
    retry of a claim either)."""
    items = body.get("item")
    if isinstance(items, list) and len(items) > MAX_LINES:
        raise FhirError("TOO_MANY_ITEMS", f"at most {MAX_LINES} items (claim lines) per Claim")


def claim_lines(model: Any) -> list[ClaimLine] | None:
    """The lines a Claim claims (``item[].productOrService.coding[0].code`` and
    ``quantity.value``), None without items (everything dispensed)."""
    if not model.item:
        return None
    lines = []
    for i, item in enumerate(model.item):
        codings = getattr(item.productOrService, "coding", None) or []
        if not codings or not codings[0].code:
            raise FhirError("FHIR_INVALID", f"item[{i}].productOrService needs coding[0].code (the national code)")
        if item.quantity is None or item.quantity.value is None:
            raise FhirError("FHIR_INVALID", f"item[{i}].quantity.value (boxes) is required")
        lines.append(ClaimLine(str(codings[0].code), positive_int(item.quantity.value, f"item[{i}].quantity.value")))
    return lines


def claim_total(model: Any) -> int | None:
    """``Claim.total`` in fen (CNY), None when absent."""
    if model.total is None or model.total.value is None:
        return None
    if model.total.currency not in (None, "CNY"):
        raise FhirError("FHIR_INVALID", "total.currency must be CNY")
    fen = Decimal(str(model.total.value)) * 100
    if not fen.is_finite() or fen != fen.to_integral_value() or fen < 0:
        raise FhirError("FHIR_INVALID", "total.value must be a non-negative amount in whole fen")
    return int(fen)


def claim_conflict(rec: Mapping[str, Any], org: str, rx_id: str, fill: int, lines_commitment: str,
                   total_fen: int | None) -> str | None:
    """Why the settled claim ``rec`` is not the claim a request of insurer ``org`` describes
    (prescription, fill -- 0: any --, lines through their commitment, medical fee); None when
    it is."""
    claim_id = rec.get("claim_id")
    if rec.get("insurer") != org or rec.get("rx_id") != rx_id or rec.get("status") != "SETTLED":
        return f"claim {claim_id} is not a settled claim of this insurer for {rx_id}"
    if fill and rec.get("fill") != fill:
        return f"claim {claim_id} settles fill {rec.get('fill')}, not fill {fill}"
    if rec.get("lines_commitment") != lines_commitment:
        return f"claim {claim_id} settled other lines (drugs or boxes) than this request claims"
    if total_fen is not None and rec.get("medfee_fen") != total_fen:
        return f"claim {claim_id} settled a medical fee of {rec.get('medfee_fen')} fen, not {total_fen}"
    return None
