"""Claims reconciliation: what an insurer settled and reversed over a range of blocks.

An insurer's operations team pays the fund's share of every settled claim to the pharmacy
or hospital and books each patient's personal-account share, day by day; a regulator's
auditor checks the same figures. :func:`claim_report` follows the settlement contract's
``claim.settled`` and ``claim.reversed`` events (VALID transactions only, as the peer sends
them) from a block on, reads each claim the caller may read (``settlement.get_claim``: the
insurer's own claims, or every claim for an auditor) and adds up the amounts, in integer fen:

* one row per event, in ledger order: block, tx id, ``settled`` or ``reversed``, the claim
  id, prescription and fill, the time the contract recorded for that step, the amounts
  (medical fee, fund, patient, personal account, cash) and the claim's status now;
* totals of the settled rows, of the reversed rows (a reversal gives back the whole claim)
  and the net (settled minus reversed): what the fund owes for the range;
* ``unreadable``: claims an event names that the caller may not read (another insurer's,
  when no insurer is chosen) -- counted, never guessed;
* ``inconsistent``: claims whose amounts break the settlement identities (medical fee = fund
  + patient share, patient share = personal account + cash) -- none on a correct ledger; a
  reconciliation that finds one stops trusting the range.
* ``malformed``: settle or reverse events whose payload names no claim the contract could
  have written (not an object, no claim id of 1-128 of ``A-Za-z0-9-_.``, no insurer) --
  block, tx id and event, listed whatever the insurer filter, never read nor guessed (none
  on a correct ledger: left out silently, such a settle was missing from the totals unseen).

Ranges are contiguous: ``next_block`` is where the next report starts (a checkpoint saved
only once a report is complete, so a report that fails part-way leaves the checkpoint where
it was and the next run covers the same blocks again, whole). A start beyond the peer's
height (the block before it not committed there: a checkpoint of another ledger, or a peer
behind) is refused START_BEYOND_HEIGHT rather than an empty report that waits there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.errors import RxClientError
from client.events import EventSource, blocks_from

SETTLEMENT = "settlement"
EVENTS = {"claim.settled": "settled", "claim.reversed": "reversed"}
AMOUNTS = ("medfee_fen", "fund_fen", "patient_fen", "account_fen", "cash_fen")
MAX_BLOCKS = 100_000  # blocks one report reads at most (the next report goes on from there)
_CLAIM_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # what settlement.get_claim takes (_is_id)

ClaimReader = Callable[[str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class ClaimRow:
    """One settle or reverse of a claim, as the report lists it."""

    block: int
    tx_id: str
    event: str  # "settled" or "reversed"
    claim_id: str
    rx_id: str
    fill: int
    time_ms: int | None  # the step's time as the contract recorded it (None: not found)
    amounts: dict[str, int]
    status_now: str

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready fields (the amounts flattened in)."""
        return {"block": self.block, "tx_id": self.tx_id, "event": self.event, "claim_id": self.claim_id,
                "rx_id": self.rx_id, "fill": self.fill, "time_ms": self.time_ms, **self.amounts,
                "status_now": self.status_now}


def _fen(rec: dict[str, Any], key: str, claim_id: str) -> int:
    v = rec.get(key)
    if type(v) is not int:
        raise RxClientError("BAD_PAYLOAD", f"claim {claim_id}: {key} is not an integer amount in fen")
    return v


def _step_time(rec: dict[str, Any], tx_id: str) -> int | None:
    for st in rec.get("events") or ():
        if isinstance(st, dict) and st.get("tx_id") == tx_id and type(st.get("time_ms")) is int:
            return int(st["time_ms"])
    return None


def _totals(rows: list[ClaimRow]) -> dict[str, int]:
    out = {"count": len(rows)}
    for k in AMOUNTS:
        out[k] = sum(r.amounts[k] for r in rows)
    return out


def claim_report(source: EventSource, read_claim: ClaimReader, start: int,
                 max_blocks: int = MAX_BLOCKS, insurer: str | None = None) -> dict[str, Any]:
    """The claims settled and reversed in blocks ``start`` .. the peer's height (at most
    ``max_blocks`` blocks), of ``insurer`` (None: every insurer's). ``source`` is the
    gateway's event stream (``Gateway.events``); ``read_claim`` a claim record or None when
    the caller may not read it. Raises what the reads raise; nothing is remembered."""
    if not 1 <= max_blocks <= MAX_BLOCKS:
        raise RxClientError("BAD_ARGUMENTS", f"max_blocks must be 1-{MAX_BLOCKS}")
    rows: list[ClaimRow] = []
    unreadable: list[str] = []
    inconsistent: list[str] = []
    malformed: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any] | None] = {}
    next_block = start
    blocks = 0
    for b in blocks_from(source, SETTLEMENT, start):
        for ev in b.events:
            kind = EVENTS.get(ev.name)
            if ev.contract != SETTLEMENT or kind is None:
                continue
            payload = ev.payload if isinstance(ev.payload, dict) else {}
            claim_id, whose = payload.get("claim_id"), payload.get("insurer")
            if not isinstance(claim_id, str) or not _CLAIM_ID.fullmatch(claim_id) or not isinstance(whose, str):
                malformed.append({"block": b.block, "tx_id": ev.tx_id, "event": kind})
                continue
            if insurer is not None and whose != insurer:
                continue
            if claim_id not in records:
                records[claim_id] = read_claim(claim_id)
                if records[claim_id] is None:
                    unreadable.append(claim_id)
            rec = records[claim_id]
            if rec is None:
                continue
            amounts = {k: _fen(rec, k, claim_id) for k in AMOUNTS}
            if (amounts["medfee_fen"] != amounts["fund_fen"] + amounts["patient_fen"]
                    or amounts["patient_fen"] != amounts["account_fen"] + amounts["cash_fen"]) \
                    and claim_id not in inconsistent:
                inconsistent.append(claim_id)
            fill = rec.get("fill")
            rows.append(ClaimRow(b.block, ev.tx_id, kind, claim_id, str(rec.get("rx_id", "")),
                                 fill if type(fill) is int else 0, _step_time(rec, ev.tx_id), amounts,
                                 str(rec.get("status", ""))))
        next_block = b.block + 1
        blocks += 1
        if blocks >= max_blocks:
            break
    settled = [r for r in rows if r.event == "settled"]
    reversed_ = [r for r in rows if r.event == "reversed"]
    s_tot, r_tot = _totals(settled), _totals(reversed_)
    net = {k: s_tot[k] - r_tot[k] for k in AMOUNTS}
    return {"from_block": start, "next_block": next_block, "insurer": insurer,
            "claims": [r.as_dict() for r in rows],
            "totals": {"settled": s_tot, "reversed": r_tot, "net": net},
            "unreadable": unreadable, "inconsistent": inconsistent, "malformed": malformed}
