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
  and the net (settled minus reversed): what the fund owes for the range -- of the
  consistent claims only, so that the net is what was paid by the settlement rules;
* ``unreadable``: claims an event names that the caller may not read (another insurer's,
  when no insurer is chosen) -- counted, never guessed;
* ``inconsistent``: claims whose amounts break the settlement identities (DOMAIN.md: medfee
  = fund + patient, patient = account + cash), are negative or are not integer amounts in
  fen (null in their rows, never guessed) -- none on a correct ledger. Their rows are listed
  (flagged ``inconsistent``) but left out of the settled, reversed and net totals: their own
  sum, settled minus reversed, is ``totals.inconsistent`` (an amount null when one of them
  is not an integer), what the operations team has to clear up before paying it. Such a
  claim no longer stops the report (it did, BAD_PAYLOAD, until the ledger was fixed).
* ``malformed``: settle or reverse events whose payload names no claim the contract could
  have written (not an object, no claim id of 1-128 of ``A-Za-z0-9-_.``, no insurer) --
  block, tx id and event, listed whatever the insurer filter, never read nor guessed (none
  on a correct ledger: left out silently, such a settle was missing from the totals unseen).

Ranges are contiguous: ``next_block`` is where the next report starts (a checkpoint saved
only once a report is complete, so a report that fails part-way leaves the checkpoint where
it was and the next run covers the same blocks again, whole). A start beyond the peer's
height (the block before it not committed there: a checkpoint of another ledger, or a peer
behind) is refused START_BEYOND_HEIGHT rather than an empty report that waits there. Every
claim of the range is read once (``get_claim``) -- ``max_blocks`` and ``max_reads`` bound a
report, as for the pharmacy inbox: it stops before the block that would take it past
``max_reads`` claims (``reads_capped``; the next report goes on from ``next_block`` at once),
a block is never split and the first one is read whatever it names, so the totals of a range
read in several reports add up to those of one report over it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.errors import RxClientError
from client.events import BlockRange, EventSource

SETTLEMENT = "settlement"
EVENTS = {"claim.settled": "settled", "claim.reversed": "reversed"}
AMOUNTS = ("medfee_fen", "fund_fen", "patient_fen", "account_fen", "cash_fen")
MAX_BLOCKS = 100_000  # blocks one report reads at most (the next report goes on from there)
MAX_READS = 2_000  # claims one report reads at most (get_claim), but all those of its first block
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
    amounts: dict[str, int | None]  # None: not an integer amount in fen on the ledger
    status_now: str

    @property
    def inconsistent(self) -> bool:
        """An amount is not an integer in fen or is negative (the settlement rules never make
        one), or the amounts break the settlement identities (medfee = fund + patient,
        patient = account + cash)."""
        vals = [self.amounts[k] for k in AMOUNTS]
        if any(v is None or v < 0 for v in vals):
            return True
        medfee, fund, patient, account, cash = (v or 0 for v in vals)
        return medfee != fund + patient or patient != account + cash

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready fields (the amounts flattened in)."""
        return {"block": self.block, "tx_id": self.tx_id, "event": self.event, "claim_id": self.claim_id,
                "rx_id": self.rx_id, "fill": self.fill, "time_ms": self.time_ms, **self.amounts,
                "status_now": self.status_now, "inconsistent": self.inconsistent}


def _fen(rec: dict[str, Any], key: str) -> int | None:
    v = rec.get(key)
    return v if type(v) is int else None  # (a float, a string, a bool: not fen, never guessed)


def _step_time(rec: dict[str, Any], tx_id: str) -> int | None:
    steps = rec.get("events")
    for st in steps if isinstance(steps, list) else ():
        if isinstance(st, dict) and st.get("tx_id") == tx_id and type(st.get("time_ms")) is int:
            return int(st["time_ms"])
    return None


def _row(block: int, tx_id: str, kind: str, claim_id: str, rec: dict[str, Any]) -> ClaimRow:
    fill = rec.get("fill")
    return ClaimRow(block, tx_id, kind, claim_id, str(rec.get("rx_id", "")), fill if type(fill) is int else 0,
                    _step_time(rec, tx_id), {k: _fen(rec, k) for k in AMOUNTS}, str(rec.get("status", "")))


def _totals(rows: list[ClaimRow]) -> dict[str, int]:
    """The count and the amounts of consistent rows (every amount an integer)."""
    out = {"count": len(rows)}
    for k in AMOUNTS:
        out[k] = sum(r.amounts[k] or 0 for r in rows)
    return out


def _inconsistent_totals(rows: list[ClaimRow]) -> dict[str, int | None]:
    """The inconsistent rows' count and amounts, settled minus reversed; an amount None when
    one of them is not an integer (not known, never a partial sum)."""
    out: dict[str, int | None] = {"count": len(rows)}
    for k in AMOUNTS:
        total: int | None = 0
        for r in rows:
            v = r.amounts[k]
            total = None if v is None or total is None else total + (v if r.event == "settled" else -v)
        out[k] = total
    return out


def claim_report(source: EventSource, read_claim: ClaimReader, start: int,
                 max_blocks: int = MAX_BLOCKS, insurer: str | None = None,
                 max_reads: int = MAX_READS) -> dict[str, Any]:
    """The claims settled and reversed in blocks ``start`` .. the peer's height (at most
    ``max_blocks`` blocks, and whole blocks naming at most ``max_reads`` claims to read
    together -- the first block whatever it names; ``reads_capped`` when a report stopped
    before a block for it: go on from ``next_block``; ``more`` when a block follows the
    range, which a limit or the cap ended -- or may follow: reading the block past the limit
    failed, which fails nothing, :class:`client.events.BlockRange`), of ``insurer`` (None: every
    insurer's). ``source`` is the gateway's event stream (``Gateway.events``); ``read_claim``
    a claim record or None when the caller may not read it. Raises what the reads raise;
    nothing is remembered."""
    if not 1 <= max_blocks <= MAX_BLOCKS:
        raise RxClientError("BAD_ARGUMENTS", f"max_blocks must be 1-{MAX_BLOCKS}")
    if not 1 <= max_reads <= MAX_READS:
        raise RxClientError("BAD_ARGUMENTS", f"max_reads must be 1-{MAX_READS}")
    rows: list[ClaimRow] = []
    unreadable: list[str] = []
    malformed: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any] | None] = {}
    next_block = start
    blocks = 0
    capped = more = False
    # a block past the limit is the next report's (none: nothing follows; one that failed to be
    # read: perhaps one follows, the range read is still the answer)
    blocks_read = BlockRange(source, SETTLEMENT, start, max_blocks)
    for b in blocks_read:
        found: list[tuple[str, str, str]] = []  # tx id, event, claim id: the block's settles and reverses
        bad: list[dict[str, Any]] = []
        for ev in b.events:
            kind = EVENTS.get(ev.name)
            if ev.contract != SETTLEMENT or kind is None:
                continue
            payload = ev.payload if isinstance(ev.payload, dict) else {}
            claim_id, whose = payload.get("claim_id"), payload.get("insurer")
            if not isinstance(claim_id, str) or not _CLAIM_ID.fullmatch(claim_id) or not isinstance(whose, str):
                bad.append({"block": b.block, "tx_id": ev.tx_id, "event": kind})
                continue
            if insurer is None or whose == insurer:
                found.append((ev.tx_id, kind, claim_id))
        new = dict.fromkeys(claim_id for _, _, claim_id in found if claim_id not in records)
        if blocks > 0 and len(records) + len(new) > max_reads:
            capped = more = True  # this block is the next report's
            break
        malformed.extend(bad)
        for claim_id in new:
            records[claim_id] = read_claim(claim_id)
            if records[claim_id] is None:
                unreadable.append(claim_id)
        for tx_id, kind, claim_id in found:
            rec = records[claim_id]
            if rec is not None:
                rows.append(_row(b.block, tx_id, kind, claim_id, rec))
        next_block = b.block + 1
        blocks += 1
    more = more or blocks_read.more
    counted = [r for r in rows if not r.inconsistent]
    s_tot = _totals([r for r in counted if r.event == "settled"])
    r_tot = _totals([r for r in counted if r.event == "reversed"])
    net = {k: s_tot[k] - r_tot[k] for k in AMOUNTS}
    odd = [r for r in rows if r.inconsistent]
    return {"from_block": start, "next_block": next_block, "insurer": insurer,
            "claims": [r.as_dict() for r in rows],
            "totals": {"settled": s_tot, "reversed": r_tot, "net": net, "inconsistent": _inconsistent_totals(odd)},
            "unreadable": unreadable, "inconsistent": list(dict.fromkeys(r.claim_id for r in odd)),
            "malformed": malformed, "reads_capped": capped, "more": more}
