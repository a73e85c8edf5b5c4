"""Prescription ids (hiRxno) chosen by the caller, checked as the prescription contract checks them.

The contract's ``issue`` accepts an ``rx_id`` of 1-64 characters of ``[A-Za-z0-9-_.]``
(``ID_CHARS`` and ``_is_id(rx_id, 64)`` in contracts/prescription.py) and refuses an id that
already exists with ``DUPLICATE_RX``. A caller that picks the id itself (``rx issue --rx-id``,
a FHIR MedicationRequest with an identifier) can therefore run the same issue again safely: a
rerun of one that committed is refused ``DUPLICATE_RX`` instead of becoming a second
prescription. The check is repeated here so a bad id is refused before anything is signed.
"""

from __future__ import annotations

import hashlib

from client.errors import RxClientError
from node.crypto.canonical import lp

RX_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
RX_ID_MAX = 64
# Prefix of ids derived from an integrator's business identifier (see ``derived_rx_id``).
DERIVED_PREFIX = "RXI-"
DERIVED_HEX = 40  # 160 bits of SHA-256: 44 characters in all


def is_rx_id(value: object) -> bool:
    """True for an id the prescription contract accepts."""
    return (isinstance(value, str) and 1 <= len(value) <= RX_ID_MAX
            and all(c in RX_ID_CHARS for c in value))


def check_rx_id(value: str) -> str:
    """``value`` if the contract would accept it as an rx id, else BAD_ARGUMENTS."""
    if not is_rx_id(value):
        raise RxClientError("BAD_ARGUMENTS", f"an rx id is 1-{RX_ID_MAX} characters of "
                            f"[A-Za-z0-9-_.], got {value[:80]!r}")
    return value


def derived_rx_id(org: str, system: str, value: str) -> str:
    """The rx id of the prescription an organisation's integrator names ``system|value``:
    ``RXI-`` + the first 40 hex digits of SHA-256 over the length-prefixed (org, system,
    value). The same identifier from the same organisation always gives the same id (a
    retried create finds the first one); another organisation's identical identifier gives
    another id. The id never reveals the identifier."""
    digest = hashlib.sha256(lp(b"rxchain-fhir-identifier-v1", org.encode(), system.encode(),
                               value.encode())).hexdigest()
    return DERIVED_PREFIX + digest[:DERIVED_HEX]
