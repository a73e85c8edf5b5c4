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
  fill is due -- also while a fill it dispensed is not handed over yet: no fill waits for
  another's hand-over), ``wait`` (the next fill of a repeat prescription is not due yet:
  ``next_fill_ms``), ``deliver`` (nothing to dispense now and a fill it dispensed not handed
  over yet -- also once the prescription expired, or after a re-route),
  ``none`` (final: delivered,
  revoked, rejected, expired, erased; validity passed -- ``expired``, the next fill's
  deadline ``fill_deadline_ms`` is over, whether or not anyone sent the ``expire``
  transaction: review, lock and dispense are refused EXPIRED; or locked by another
  pharmacy) -- a revoked prescription is listed so that nobody dispenses it. ``deliver_by``
  names the pharmacy whose courier has a fill to hand over (the caller's own when it owes
  one, else the one owing the latest fill not handed over, after a re-route the previous
  pharmacy; None when nothing is pending, or erased) and ``deliver_fills`` those fills, oldest first:
  what its courier names in ``deliver(rx_id, fill)`` (``delivered_fills`` counts the fills
  handed over);
* ``routed_elsewhere``: the ids of the prescriptions of the range with a ``route`` step that
  the caller does not serve now, in ledger order. A prescription routed away is no longer
  the caller's to read (its changes and state are not shown): a work queue kept from earlier
  reads drops it. The ids are those every member's events name (most were never the
  caller's), nothing more is told. A prescription routed away while the latest fill, which
  the caller dispensed, is not handed over yet stays in ``prescriptions`` (``deliver``,
  ``deliver_by`` the caller) until its courier delivers it or another pharmacy dispenses the
  next fill: the contract lets the dispensing pharmacy read it until then. ``deliver`` takes
  that pharmacy's courier for any fill it dispensed, readable or not (``rx deliver RX``: its
  latest fill; ``--fill N`` an earlier one).
  A range holding its last hand-over (a ``deliver`` step of the caller's organisation on a
  prescription it may no longer read) lists the id here too, the route step perhaps in an
  earlier range.

Ranges are contiguous: ``next_block`` is where the next inbox read starts (with a checkpoint
file it moves only once a read is complete); a start beyond the peer's height is refused
START_BEYOND_HEIGHT, as for the claim report (:func:`client.events.blocks_from`: a checkpoint
of another ledger would otherwise wait there, and the blocks below it be skipped once the
ledger grows past it; a peer behind: retry). Event payloads without a prescription id the contract
would take are skipped. Every prescription named in the range is read once (``show``), the
caller's or not -- ``max_blocks`` and ``max_reads`` bound a read (a read stops before the block
that would take it past ``max_reads`` prescriptions: ``reads_capped``, the next read goes on
there at once; a block is never split); a served one with a fill not handed over whose
last step is not that dispense is read once more (``trace``: which fills are not handed over
and who dispensed them). A fill the previous contract release let go unrecorded (counted in
``delivered_fills`` by its latest-fill ``deliver``) is not seen until a ``deliver`` recounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeGuard

from client.errors import RxClientError
from client.events import BlockRange, EventSource

PRESCRIPTION = "prescription"
MAX_BLOCKS = 100_000  # blocks one read covers at most (the next goes on from there)
MAX_READS = 2_000  # prescriptions one read reads at most (show), but all those of its first block
DAY_MS = 86_400_000
TZ_MS = 28_800_000  # China-local days (UTC+8), as the contract counts them
FINAL = ("DELIVERED", "REVOKED", "REJECTED", "EXPIRED", "ERASED")
# the roles whose organisation's inbox it is (a hospital's and a pharmacy's staff; a patient's
# certificate is her hospital's too, but what she reads is her own prescriptions)
STAFF_ROLES = ("doctor", "pharmacist", "nurse", "admin", "courier")

RxReader = Callable[[str], "dict[str, Any] | None"]
# rx id -> {fill: the org that dispensed it} of its fills not handed over yet; None: unknown
OwedReader = Callable[[str], "dict[int, str] | None"]


def _int(meta: dict[str, Any], key: str) -> int:
    v = meta.get(key)
    return v if type(v) is int else 0


def serves(meta: dict[str, Any], org: str) -> bool:
    """Whether ``org`` is the pharmacy that serves this prescription now: the routed pharmacy,
    or the issuing hospital (its own pharmacy) while it is routed to none."""
    pharmacy = meta.get("pharmacy") or ""
    return pharmacy == org or (pharmacy == "" and meta.get("hospital") == org)


def action(meta: dict[str, Any], org: str, now_ms: int, owed: dict[int, str] | None = None) -> str:
    """What ``org`` has to do with the prescription at ``now_ms``, as the prescription contract
    would let it: the serving pharmacy's next step (review, dispense, wait; a review, lock or
    dispense after the validity ended is refused EXPIRED whether or not anyone sent the
    ``expire`` transaction, so nothing then), else ``deliver`` when ``org`` dispensed a fill not
    handed over yet -- delivered even once the prescription expired (``deliver`` refuses only an
    erased one), or routed away. ``owed``: the fills not handed over and who dispensed them
    (None: unknown -- the latest fill, if it is not handed over, taken as ``org``'s). A due
    fill comes first (its validity runs; no fill waits for another's hand-over)."""
    status = str(meta.get("status", ""))
    if status == "ERASED":
        return "none"
    nxt = _next_step(meta, org, now_ms) if serves(meta, org) else "none"
    if nxt != "dispense" and owed_fills(meta, org, owed):
        return "deliver"
    return nxt


def _next_step(meta: dict[str, Any], org: str, now_ms: int) -> str:
    """The next step of ``org``, the serving pharmacy: review, dispense, wait or none."""
    status = str(meta.get("status", ""))
    fills, max_fills = _int(meta, "fills"), _int(meta, "max_fills")
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
        due = _next_fill_ms(meta)
        return "dispense" if due is None or now_ms >= due else "wait"
    return "none"


def owed_fills(meta: dict[str, Any], org: str, owed: dict[int, str] | None) -> list[int]:
    """The fills ``org`` dispensed and did not hand over yet, oldest first (``owed`` None:
    unknown -- the latest fill when it is not handed over, taken as ``org``'s)."""
    if _int(meta, "fills") <= _int(meta, "delivered_fills"):
        return []
    if owed is None:
        return [_int(meta, "fills")]
    return sorted(f for f, by in owed.items() if by == org)


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
    # the contract's rule: from midnight (China time) fill_interval_days after the last fill's day
    day = (_int(meta, "last_fill_ms") + TZ_MS) // DAY_MS
    return (day + _int(meta, "fill_interval_days")) * DAY_MS - TZ_MS


def _summary(meta: dict[str, Any], org: str, now_ms: int, owed: dict[int, str] | None) -> dict[str, Any]:
    """The prescription as the inbox lists it: what to do first (read in the human output's
    one line per prescription), then the state it follows from."""
    lock = meta.get("lock")
    fills, max_fills = _int(meta, "fills"), _int(meta, "max_fills")
    open_fills = fills < max_fills and meta.get("status") not in FINAL
    by, pending = _deliver_by(meta, org, owed)
    return {
        "rx_id": meta.get("rx_id"), "action": action(meta, org, now_ms, owed),
        "status": meta.get("status"), "hospital": meta.get("hospital"), "pharmacy": meta.get("pharmacy") or "",
        "fills": fills, "max_fills": max_fills, "delivered_fills": _int(meta, "delivered_fills"),
        "next_fill_ms": _next_fill_ms(meta) if open_fills and fills > 0 else None,
        "valid_end_ms": _int(meta, "valid_end_ms"),
        "fill_deadline_ms": fill_deadline_ms(meta) if open_fills else None,
        "expired": expired(meta, now_ms),
        "locked_by": lock.get("org") if isinstance(lock, dict) else None,
        "deliver_by": by, "deliver_fills": pending,
    }


def _deliver_by(meta: dict[str, Any], org: str, owed: dict[int, str] | None) -> tuple[str | None, list[int]]:
    """Whose courier has fills to hand over, and which: ``org`` when it owes one, else the
    pharmacy owing the latest fill not handed over; (None, []) when nothing is pending, or
    the prescription was erased (``deliver`` refuses it ERASED: nobody hands anything over)."""
    if meta.get("status") == "ERASED":
        return None, []
    mine = owed_fills(meta, org, owed)
    if mine or not owed:
        return (org, mine) if mine else (None, [])
    other = owed[max(owed)]
    return other, owed_fills(meta, other, owed)


def pharmacy_inbox(source: EventSource, read_rx: RxReader, org: str, start: int, now_ms: int,
                   max_blocks: int = MAX_BLOCKS, owed: OwedReader | None = None,
                   max_reads: int = MAX_READS) -> dict[str, Any]:
    """The prescriptions of blocks ``start`` .. the peer's height that ``org`` serves now: at
    most ``max_blocks`` blocks, and whole blocks naming at most ``max_reads`` prescriptions
    together (the first block whatever it names; ``reads_capped`` when a read stopped before
    a block for it: go on from ``next_block``; ``more`` when a block follows the range, which
    a limit or the cap ended -- or may follow: reading the block past the limit failed, which
    fails nothing, :class:`client.events.BlockRange`). ``source`` is the gateway's event stream;
    ``read_rx`` the prescription's metadata (``show``) or None when the caller may not read
    it; ``now_ms`` decides whether a repeat fill is due; ``owed`` a prescription's fills not
    handed over yet and the organisation that dispensed each (asked only when some fill is not
    handed over and the last step is not the dispense of the only one; without it, or None:
    unknown, the latest fill taken as ``org``'s). Raises what the reads raise; remembers nothing."""
    if not 1 <= max_blocks <= MAX_BLOCKS:
        raise RxClientError("BAD_ARGUMENTS", f"max_blocks must be 1-{MAX_BLOCKS}")
    if not 1 <= max_reads <= MAX_READS:
        raise RxClientError("BAD_ARGUMENTS", f"max_reads must be 1-{MAX_READS}")
    seen: list[tuple[int, str, str, str, str, str]] = []  # block, tx, step, status, org, rx
    named: dict[str, None] = {}  # the prescriptions to read, in order
    next_block = start
    blocks = 0
    capped = more = False
    # a block past the limit is the next read's (none: nothing follows; one that failed to be read:
    # perhaps one follows, the range read is still the answer)
    blocks_read = BlockRange(source, PRESCRIPTION, start, max_blocks)
    for b in blocks_read:
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
    more = more or blocks_read.more
    mine: dict[str, dict[str, Any]] = {}
    pending: dict[str, dict[int, str] | None] = {}
    for rx_id in named:
        meta = read_rx(rx_id)
        if not isinstance(meta, dict):
            continue
        if serves(meta, org):
            mine[rx_id], pending[rx_id] = meta, _owed(meta, rx_id, owed)
        elif _int(meta, "fills") > _int(meta, "delivered_fills") and owed is not None:
            # routed away before the caller's courier handed a fill it dispensed over: still
            # the caller's to deliver (the contract lets the dispensing pharmacy read it until then)
            due = _owed(meta, rx_id, owed)
            if due and org in due.values():
                mine[rx_id], pending[rx_id] = meta, due
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
            "prescriptions": [_summary(m, org, now_ms, pending[rx_id]) for rx_id, m in mine.items()],
            "routed_elsewhere": routed, "reads_capped": capped, "more": more}


def _owed(meta: dict[str, Any], rx_id: str, owed: OwedReader | None) -> dict[int, str] | None:
    """The fills not handed over yet and who dispensed each: none when every fill is; the latest
    fill, by the org of the last step, when that is its dispense and the only fill pending (no
    read); else ``owed``'s answer (a re-route or fills since may have left others pending)."""
    fills, delivered = _int(meta, "fills"), _int(meta, "delivered_fills")
    if fills <= delivered:
        return {}
    step = meta.get("step")
    if fills == delivered + 1 and isinstance(step, dict) and step.get("step") == "dispense" \
            and isinstance(step.get("org"), str):
        return {fills: str(step["org"])}
    return owed(rx_id) if owed is not None else None


def owed_of_trail(steps: list[Any]) -> dict[int, str] | None:
    """The fills not handed over yet and the org that dispensed each, from a prescription's
    whole trail (``trace``): its ``dispense`` steps less the fills its ``deliver`` steps name
    (``detail.fill``: the fill handed over, the latest fill under the previous contract
    release). None when a step is malformed (unknown)."""
    dispensed: dict[int, str] = {}
    delivered: set[int] = set()
    for st in steps:
        if not isinstance(st, dict) or st.get("step") not in ("dispense", "deliver"):
            continue
        detail = st.get("detail")
        fill = detail.get("fill") if isinstance(detail, dict) else None
        if type(fill) is not int or fill < 1:
            return None
        if st["step"] == "deliver":
            delivered.add(fill)
        elif isinstance(st.get("org"), str):
            dispensed[fill] = str(st["org"])
        else:
            return None
    return {f: by for f, by in dispensed.items() if f not in delivered}


def _is_rx_id(v: object) -> TypeGuard[str]:
    """A prescription id as the contract takes it: 1-64 characters of [A-Za-z0-9-_.]."""
    return isinstance(v, str) and 1 <= len(v) <= 64 and v.isascii() and all(c.isalnum() or c in "-_." for c in v)


def _text(v: object) -> str:
    return v if isinstance(v, str) else ""
