"""Idempotent issue over FHIR: the prescription id comes from the integrator's identifier.

Without it every retried ``POST /fhir/MedicationRequest`` (after a lost answer, a 504, a
client timeout) would issue a second prescription under a fresh id. The identifier that
names the prescription, in this order:

1. the ``If-None-Exist: identifier=SYSTEM|VALUE`` header (FHIR conditional create; only the
   ``identifier`` parameter, exactly one, with both system and value, is supported);
2. for a ``Bundle``: ``Bundle.identifier``, else the ``groupIdentifier`` the lines carry (the
   lines that carry one must carry the same);
3. for one ``MedicationRequest``: its ``groupIdentifier``, else its first ``identifier``.

An identifier of any system is accepted; it needs a system (a bare value names nothing
outside the sender). The rx id is then:

* ``urn:rxchain:hiRxno`` (this consortium's prescription-number system, the one the gateway's
  own MedicationRequests carry): the value itself, which must be an rx id the contract
  accepts and a FHIR id (1-64 of ``[A-Za-z0-9-]``, starting with a letter or digit);
* any other system: :func:`client.rxid.derived_rx_id` of (caller's organisation, system,
  value) -- ``RXI-`` and 40 hex digits, the same on every retry.

The contract refuses a second issue under one id (DUPLICATE_RX); :func:`same_prescription`
decides whether the prescription found is the one the request describes (a retry: answer it,
200) or another one under a reused identifier (409).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from client.fhir.mapping import RX_SYSTEM, FhirError
from client.rxid import derived_rx_id, is_rx_id
from client.rxops import IssueRequest

MAX_SYSTEM = 1024
MAX_VALUE = 256
MAX_HEADER = 2048
# The gateway's prescription path (``GET /fhir/MedicationRequest/{id}``) and FHIR ``id``.
# An rx id that is also a FHIR id (no ``_``, which the resources' ids cannot hold).
FHIR_RX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


@dataclass(frozen=True)
class BusinessId:
    """An integrator's identifier of a prescription: ``system|value``."""

    system: str
    value: str

    def __str__(self) -> str:
        return f"{self.system}|{self.value}"


def _business_id(system: Any, value: Any, where: str) -> BusinessId:
    if not isinstance(value, str) or not value:
        raise FhirError("FHIR_INVALID", f"{where} needs a value")
    if not isinstance(system, str) or not system:
        raise FhirError("FHIR_INVALID", f"{where} needs a system: the prescription id is derived from "
                        "system|value, and a value without a system names nothing")
    if len(system) > MAX_SYSTEM or len(value) > MAX_VALUE:
        raise FhirError("FHIR_INVALID", f"{where}: system at most {MAX_SYSTEM}, value at most "
                        f"{MAX_VALUE} characters")
    return BusinessId(system, value)


def from_if_none_exist(header: str) -> BusinessId:
    """The identifier of an ``If-None-Exist: identifier=SYSTEM|VALUE`` header (URL-encoded or
    not); any other search is FHIR_INVALID (never silently ignored: the caller relies on it)."""
    text = header.strip()
    if len(text) > MAX_HEADER:
        raise FhirError("FHIR_INVALID", f"If-None-Exist longer than {MAX_HEADER} characters")
    if text.startswith("?"):
        text = text[1:]
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                                       max_num_fields=1)
    except ValueError:
        pairs = []
    if len(pairs) != 1 or pairs[0][0] != "identifier":
        raise FhirError("FHIR_INVALID", "If-None-Exist supports exactly one search: identifier=system|value")
    system, sep, value = pairs[0][1].partition("|")
    if not sep:
        raise FhirError("FHIR_INVALID", "If-None-Exist identifier needs system|value")
    return _business_id(system, value, "If-None-Exist identifier")


def _identifier(raw: Any, where: str) -> BusinessId | None:
    if not isinstance(raw, Mapping):
        return None
    return _business_id(raw.get("system"), raw.get("value"), where)


def from_resource(raw: Mapping[str, Any]) -> BusinessId | None:
    """The identifier naming the prescription a (validated) MedicationRequest or Bundle of them
    describes, or None when it carries none (then every POST issues a new prescription)."""
    if raw.get("resourceType") == "Bundle":
        found = _identifier(raw.get("identifier"), "Bundle.identifier")
        if found is not None:
            return found
        groups: set[BusinessId] = set()
        for i, entry in enumerate(raw.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(resource, Mapping):
                group = _identifier(resource.get("groupIdentifier"), f"entry[{i}].groupIdentifier")
                if group is not None:
                    groups.add(group)
        if len(groups) > 1:
            raise FhirError("FHIR_INVALID", "the lines of one prescription carry different groupIdentifiers")
        return groups.pop() if groups else None
    group = _identifier(raw.get("groupIdentifier"), "groupIdentifier")
    if group is not None:
        return group
    idents = raw.get("identifier")
    if isinstance(idents, list) and idents:
        return _identifier(idents[0], "identifier[0]")
    return None


def rx_id_for(org: str, ident: BusinessId) -> str:
    """The rx id the identifier names for a caller of ``org`` (see the module docstring)."""
    if ident.system == RX_SYSTEM:
        if not (is_rx_id(ident.value) and FHIR_RX_ID.fullmatch(ident.value)):
            raise FhirError("FHIR_INVALID", f"an identifier of system {RX_SYSTEM} is the prescription id: "
                            "1-64 of [A-Za-z0-9-], starting with a letter or digit")
        return ident.value
    return derived_rx_id(org, ident.system, ident.value)


# The terms of the issued content (named as in IssueRequest) a retry must state alike, each with
# the prescription contract's default for content that leaves it out.
_TERMS: tuple[tuple[str, object], ...] = (
    ("long_rx", False), ("chronic_reason", ""), ("valid_days", 1), ("max_fills", 1), ("fill_interval_days", 0))


def same_prescription(meta: Mapping[str, Any], req: IssueRequest, pseudonym: str, org: str) -> bool:
    """True when the prescription ``meta`` (``RxOperations.show``: metadata and decrypted
    content) is the one ``req`` describes: issued by ``org`` for the same patient, diagnosis,
    days of supply, course (long-term, its chronic reason), validity days, fills and fill
    interval, and drug lines (code or short name, boxes, in order). A caller who cannot read
    its content cannot tell: False. (The pharmacy is not compared: it may be re-routed since.)"""
    content = meta.get("content")
    if meta.get("hospital") != org or not isinstance(content, Mapping):
        return False
    if (content.get("patient"), content.get("diagnosis"), content.get("days")) != (
            pseudonym, req.diagnosis, req.days):
        return False
    # what else the prescription fixes at issue (absent: the contract's default, as it issued it)
    for name, default in _TERMS:
        if content.get(name, default) != getattr(req, name):
            return False
    lines = content.get("drugs")
    if not isinstance(lines, list) or len(lines) != len(req.drugs):
        return False
    for line, drug in zip(lines, req.drugs, strict=True):
        if not isinstance(line, Mapping) or line.get("qty") != drug.qty:
            return False
        if drug.drug not in (line.get("code"), line.get("short_name")):
            return False
    return True
