"""A pharmacy's inbox: the prescriptions routed to it, and what happened to them, block by block.

A prescription "flows to the pharmacy" on the ledger: the hospital issues it routed to a
pharmacy (or the patient routes it later), the pharmacy reviews, locks, dispenses and
delivers, the doctor may revoke it. A pharmacy's system learns of it from the prescription
contract's events (``rx.issue``, ``rx.route``, ``rx.review``, ``rx.revoke`` ...; VALID
transactions only, every member sees them: they carry the prescription id, the status and
the acting organisation, nothing else). :func:`pharmacy_inbox` follows those events from a
block on and keeps the prescriptions that are, as the ledger reads now, the caller's to serve
-- routed to its organisation, or issued unrouted by its own hospital (the hospital's
pharmacy) -- reading each with ``prescription.show`` (which only the parties may read):

* ``changes``: one row per event of such a prescription in the range, in ledger order
  (block, tx id, step, the status it left, the acting organisation);
* ``prescriptions``: each such prescription as it is now, with what the pharmacy has to do,
  as the contract would let it at ``now_ms``: ``review`` (issued, not yet reviewed),
  ``dispense`` (approved, or locked by this pharmacy, or a repeat prescription whose next
  fill is due), ``wait`` (the next fill of a repeat prescription is not due yet:
  ``next_fill_ms`` -- or the last fill is not handed over yet by the pharmacy ``deliver_by``
  names: the contract refuses the next lock NOT_DELIVERED until then, unless that pharmacy's
  registration is no longer active), ``deliver`` (a fill it dispensed and did not hand over
  yet -- also once the prescription expired; ``deliver_by`` names the pharmacy whose courier
  hands the pending fill over: the one that dispensed it, after a re-route the previous one,
  and then the serving pharmacy's action is about the next fill), ``none`` (final: delivered,
  revoked, rejected, expired, erased; validity passed -- ``expired``, the next fill's
  deadline ``fill_deadline_ms`` is over, whether or not anyone sent the ``expire``
  transaction: review, lock and dispense are refused EXPIRED; or locked by another
  pharmacy) -- a revoked prescription is listed so that nobody dispenses it;
* ``routed_elsewhere``: the ids of the prescriptions of the range with a ``route`` step that
  the caller does not serve now, in ledger order. A prescription routed away is no longer
  the caller's to read (its changes and state are not shown): a work queue kept from earlier
  reads drops it. The ids are those every member's events name (most were never the
  caller's), nothing more is told. A prescription routed away while a fill the caller
  dispensed is not handed over yet stays in ``prescriptions`` (``deliver``, ``deliver_by``
  the caller) until its courier delivers it: the contract lets the dispensing pharmacy read
  it until then, and ``deliver`` takes that pharmacy's courier. A range holding that
  hand-over (a ``deliver`` step of the caller's organisation on a prescription it may no
  longer read) lists the id here too, the route step perhaps in an earlier range.

Ranges are contiguous: ``next_block`` is where the next inbox read starts (with a checkpoint
file it moves only once a read is complete); a start beyond the peer's height is refused
START_BEYOND_HEIGHT, as for the claim report (:func:`client.events.blocks_from`: a checkpoint
of another ledger would otherwise wait there, and the blocks below it be skipped once the
ledger grows past it; a peer behind: retry). Event payloads without a prescription id the contract
would take are skipped. Every prescription named in the range is read once (``show``), the
caller's or not -- ``max_blocks`` and ``max_reads`` bound a read (a read stops before the block
that would take it past ``max_reads`` prescriptions: ``reads_capped``, the next read goes on
there at once; a block is never split); a served one with a fill not handed over whose
last step is not that dispense is read once more (``trace``: who dispensed it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from client.errors import RxClientError
from client.events import EventSource, blocks_from

PRESCRIPTION = "prescription"
MAX_BLOCKS = 100_000  # blocks one read covers at most (the next goes on from there)
MAX_READS = 2_000  # prescriptions one read reads at most (show), but all those of its first block
DAY_MS = 86_400_000
FINAL = ("DELIVERED", "REVOKED", "REJECTED", "EXPIRED", "ERASED")
# the roles whose organisation's inbox it is (a hospital's and a pharmacy's staff; a patient's
# certificate is her hospital's too, but what she reads is her own prescriptions)
STAFF_ROLES = ("doctor", "pharmacist", "nurse", "admin", "courier")

RxReader = Callable[[str], "dict[str, Any] | None"]
DispenserReader = Callable[[str], "str | None"]  # rx id -> the org that dispensed its latest fill


def _int(meta: dict[str, Any], key: str) -> int:
    v = meta.get(key)
    return v if type(v) is int else 0


def serves(meta: dict[str, Any], org: str) -> bool:
    """Whether ``org`` is the pharmacy that serves this prescription now: the routed pharmacy,
    or the issuing hospital (its own pharmacy) while it is routed to none."""
    pharmacy = meta.get("pharmacy") or ""
    return pharmacy == org or (pharmacy == "" and meta.get("hospital") == org)


def action(meta: dict[str, Any], org: str, now_ms: int, dispensed_by: str | None = None,
           held: bool = True) -> str:
    """What the serving pharmacy ``org`` has to do with the prescription at ``now_ms``, as the
    prescription contract would let it: a dispensed fill not handed over is delivered even once
    the prescription expired (``deliver`` refuses only an erased one), by the courier of the
    pharmacy that dispensed it (``dispensed_by``; None: unknown, taken as ``org``) -- after a
    re-route that is the previous pharmacy, and the serving one has the next fill; a review, lock or
    dispense after the validity ended is refused EXPIRED whether or not anyone sent the
    ``expire`` transaction, so there is nothing to do then. ``held``: whether that pharmacy's
    missing hand-over still holds the next fill (the contract: while its registration is
    active, or it is the issuing hospital's own pharmacy)."""
    status = str(meta.get("status", ""))
    fills, max_fills = _int(meta, "fills"), _int(meta, "max_fills")
    if status == "ERASED":
        return "none"
    if fills > _int(meta, "delivered_fills") and dispensed_by in (None, org):
        return "deliver"
    if status in FINAL or expired(meta, now_ms):
        return "none"
    if status == "ISSUED":
        return "review"
    lock = meta.get("lock")
    if status == "LOCKED":
        return "dispense" if isinstance(lock, dict) and lock.get("org") == org else "none"
    if status == "APPROVED":
        return "dispense"
    if status == "DISPENSED" and fills < max_fills:
        if fills > _int(meta, "delivered_fills") and held:
            return "wait"  # another pharmacy's courier still owes the last fill (lock: NOT_DELIVERED)
        due = _next_fill_ms(meta)
        return "dispense" if due is None or now_ms >= due else "wait"
    return "none"


def fill_deadline_ms(meta: dict[str, Any]) -> int:
    """The validity end of the next fill (the contract's rule): the first fill by
    ``valid_end_ms``, repeat fill k+1 by ``valid_end_ms`` + k fill intervals."""
    return _int(meta, "valid_end_ms") + _int(meta, "fills") * _int(meta, "fill_interval_days") * DAY_MS


def expired(meta: dict[str, Any], now_ms: int) -> bool:
    """The prescription can no longer be reviewed or filled at ``now_ms``: status EXPIRED, or
    fills left whose validity passed without an ``expire`` transaction (a review after
    ``valid_end_ms``, a lock or dispense after :func:`fill_deadline_ms`: EXPIRED)."""
    status = str(meta.get("status", ""))
    if status == "EXPIRED":
        return True
    if status in FINAL or _int(meta, "fills") >= _int(meta, "max_fills"):
        return False
    return now_ms > fill_deadline_ms(meta)


def _next_fill_ms(meta: dict[str, Any]) -> int | None:
    if _int(meta, "fills") == 0:
        return None
    return _int(meta, "last_fill_ms") + _int(meta, "fill_interval_days") * DAY_MS


def _summary(meta: dict[str, Any], org: str, now_ms: int, dispensed_by: str | None,
             held: bool = True) -> dict[str, Any]:
    """The prescription as the inbox lists it: what to do first (read in the human output's
    one line per prescription), then the state it follows from."""
    lock = meta.get("lock")
    fills, max_fills = _int(meta, "fills"), _int(meta, "max_fills")
    open_fills = fills < max_fills and meta.get("status") not in FINAL
    return {
        "rx_id": meta.get("rx_id"), "action": action(meta, org, now_ms, dispensed_by, held),
        "status": meta.get("status"), "hospital": meta.get("hospital"), "pharmacy": meta.get("pharmacy") or "",
        "fills": fills, "max_fills": max_fills, "delivered_fills": _int(meta, "delivered_fills"),
        "next_fill_ms": _next_fill_ms(meta) if open_fills and fills > 0 else None,
        "valid_end_ms": _int(meta, "valid_end_ms"),
        "fill_deadline_ms": fill_deadline_ms(meta) if open_fills else None,
        "expired": expired(meta, now_ms),
        "locked_by": lock.get("org") if isinstance(lock, dict) else None,
        "deliver_by": (dispensed_by or org) if fills > _int(meta, "delivered_fills") else None,
    }


def pharmacy_inbox(source: EventSource, read_rx: RxReader, org: str, start: int, now_ms: int,
                   max_blocks: int = MAX_BLOCKS, dispenser: DispenserReader | None = None,
                   max_reads: int = MAX_READS, active: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The prescriptions of blocks ``start`` .. the peer's height that ``org`` serves now: at
    most ``max_blocks`` blocks, and whole blocks naming at most ``max_reads`` prescriptions
    together (the first block whatever it names; ``reads_capped`` when a read stopped before
    a block for it: go on from ``next_block``; ``more`` when a block follows the range, which
    a limit or the cap ended). ``source`` is the gateway's event stream;
    ``read_rx`` the prescription's metadata (``show``) or None when the caller may not read
    it; ``now_ms`` decides whether a repeat fill is due; ``dispenser`` the organisation that
    dispensed a prescription's latest fill (asked only for a fill not handed over whose
    dispense is not the prescription's last step; without it, or None, the fill is taken as
    ``org``'s); ``active`` whether a pharmacy's registration is active (asked only for one that
    owes the hand-over of a prescription ``org`` serves: an inactive one's holds no fill, as the
    contract's NOT_DELIVERED; without it, taken as active). Raises what the reads raise;
    remembers nothing."""
    if not 1 <= max_blocks <= MAX_BLOCKS:
        raise RxClientError("BAD_ARGUMENTS", f"max_blocks must be 1-{MAX_BLOCKS}")
    if not 1 <= max_reads <= MAX_READS:
        raise RxClientError("BAD_ARGUMENTS", f"max_reads must be 1-{MAX_READS}")
    seen: list[tuple[int, str, str, str, str, str]] = []  # block, tx, step, status, org, rx
    named: dict[str, None] = {}  # the prescriptions to read, in order
    next_block = start
    blocks = 0
    capped = more = False
    for b in blocks_from(source, PRESCRIPTION, start):
        if blocks >= max_blocks:
            more = True  # a block past the limit: the next read's (none: nothing follows)
            break
        rows: list[tuple[int, str, str, str, str, str]] = []
        for ev in b.events:
            if ev.contract != PRESCRIPTION or not ev.name.startswith("rx.") or not isinstance(ev.payload, dict):
                continue
            rx_id = ev.payload.get("rx_id")
            if not _is_rx_id(rx_id) or ev.name in ("rx.key_fetch", "rx.key_denied"):
                continue  # (an id show would refuse, BAD_ARGUMENTS, would stop every later read)
            rows.append((b.block, ev.tx_id, ev.name[3:], _text(ev.payload.get("status")),
                         _text(ev.payload.get("org")), rx_id))
        new = dict.fromkeys(row[5] for row in rows if row[5] not in named)
        if blocks > 0 and len(named) + len(new) > max_reads:
            capped = more = True  # this block is the next read's
            break
        seen.extend(rows)
        named.update(new)
        next_block = b.block + 1
        blocks += 1
    mine: dict[str, dict[str, Any]] = {}
    dispensers: dict[str, str | None] = {}
    for rx_id in named:
        meta = read_rx(rx_id)
        if not isinstance(meta, dict):
            continue
        if serves(meta, org):
            mine[rx_id], dispensers[rx_id] = meta, _dispensed_by(meta, rx_id, dispenser)
        elif _int(meta, "fills") > _int(meta, "delivered_fills") and dispenser is not None:
            # routed away before the caller's courier handed its fill over: still the caller's
            # to deliver (the contract lets the dispensing pharmacy read it until then)
            by = _dispensed_by(meta, rx_id, dispenser)
            if by == org:
                mine[rx_id], dispensers[rx_id] = meta, by
    changes = [{"block": blk, "tx_id": tx, "step": step, "status": status, "by": by, "rx_id": rx}
               for blk, tx, step, status, by, rx in seen if rx in mine]
    # a prescription routed to another pharmacy is no longer readable by the one it leaves:
    # its id (as every member's events name it) tells a work queue kept from earlier reads
    # to drop it -- and so does the caller's own hand-over of a fill it owed after a re-route
    # (unreadable from then on: a read going on from a checkpoint past the route step saw
    # the id in no list, and the queue kept the delivery for good)
    routed = list(dict.fromkeys(rx for _, _, step, _, by, rx in seen
                                if (step == "route" or (step == "deliver" and by == org)) and rx not in mine))
    return {"from_block": start, "next_block": next_block, "org": org, "changes": changes,
            "prescriptions": [_summary(m, org, now_ms, dispensers[rx_id], _held(m, org, dispensers[rx_id], active))
                              for rx_id, m in mine.items()],
            "routed_elsewhere": routed, "reads_capped": capped, "more": more}


def _held(meta: dict[str, Any], org: str, by: str | None, active: Callable[[str], bool] | None) -> bool:
    """Whether the hand-over pharmacy ``by`` owes (None: none pending, or unknown) holds the
    next fill of a prescription ``org`` serves, as the contract's NOT_DELIVERED: the caller's
    own and the issuing hospital's pharmacy's always, another pharmacy's while its
    registration is active (``active``; without it, taken as active)."""
    if active is None or by is None or by in (org, meta.get("hospital")) or not serves(meta, org):
        return True
    return active(by)


def _dispensed_by(meta: dict[str, Any], rx_id: str, dispenser: DispenserReader | None) -> str | None:
    """Whose courier hands over the latest fill when it is not handed over yet: the org of the
    last step when that is the dispense (no read), else ``dispenser``'s answer (a re-route
    since may have left it with the previous pharmacy); None when nothing is pending or unknown."""
    if _int(meta, "fills") <= _int(meta, "delivered_fills"):
        return None
    step = meta.get("step")
    if isinstance(step, dict) and step.get("step") == "dispense" and isinstance(step.get("org"), str):
        return str(step["org"])
    return dispenser(rx_id) if dispenser is not None else None


def _is_rx_id(v: object) -> TypeGuard[str]:
    """A prescription id as the contract takes it: 1-64 characters of [A-Za-z0-9-_.]."""
    return isinstance(v, str) and 1 <= len(v) <= 64 and v.isascii() and all(c.isalnum() or c in "-_." for c in v)


def _text(v: object) -> str:
    return v if isinstance(v, str) else ""
