"""The peer's access-audit log: who got (or was refused) decryption material, when.

A prescription's wrapped key is released by the contract function ``prescription.get_key``.
A submitted call leaves a KEY_FETCH record on the ledger, but an Evaluate (a query, never
ordered) and an endorsement that is never submitted answer the same key with no trace there.
So every call of an :data:`AUDITED` function this peer answers -- Gateway.Evaluate and every
endorsement (Gateway.Endorse/Transact/TransactBatch, Endorser.ProcessProposal[s]) --,
granted or refused, appends one ``rxchain.v1.AccessRecord`` to this log BEFORE the answer
leaves the peer. A granted call whose record cannot be written durably is refused instead
(AUDIT_WRITE_FAILED, or AUDIT_FULL when the log holds ``max_records`` records none of which
is past retention): the key is never released unrecorded.

Storage: a LevelDB of its own under ``data_dir/audit`` (not the ledger's ``state/``, which is
derived data an operator may delete to rebuild from the blocks; this log is not derived from
anything). Appends are group-committed: concurrent callers queue their records, one writer
chains every record queued after the head and writes them in one synced write batch, and each
caller returns after that sync (a failed batch refuses every grant of it). Key layout (integers
unsigned big-endian)::

    b"r" u64 id                    -> AccessRecord (serialized; the bytes the chain hashes)
    b"t" u64 time_ms u64 id        -> b""   (time index)
    b"x" record_id 0x00 u64 id     -> b""   (prescription index)
    b"mhead"                       -> u64 last_id | 32-byte SHA-256 of record last_id
    b"mbase"                       -> u64 first_id | 32-byte prev hash of record first_id | u64 pruned
    b"mpending"                    -> JSON: the refusals counted, not yet summarised (below)

Chain: record ``n`` carries ``prev_hash = SHA-256(stored bytes of record n-1)`` (32 zero bytes
for record 1); ``mhead`` holds the newest record's hash. :meth:`AccessLog.verify` finds a
record removed (a gap), modified (the next record's ``prev_hash``, or ``mhead``, no longer
matches), unparseable, or records cut off the end. Query and Verify read the head
(``mhead``/``mbase``) from the same database snapshot as the records (appends and pruning go on
meanwhile). Whoever can rewrite the whole directory can
rebuild a consistent chain: compare the head with one noted earlier outside the peer
(``Verify`` with ``anchor_id``/``anchor_hash``, ``rxchain audit verify --anchor ID:HASH``;
an anchor pruned further back than the last pruned record cannot be compared: ``anchor_checked``
false, as a rewrite declaring the front pruned would look).

Bounds: ``retention_days`` (node.yaml ``extra.audit_retention_days``, default 3650) and
``max_records`` (``extra.audit_max_records``, default 20,000,000; a record is ~250-350
bytes, so ~7 GB at most). Each append first removes up to :data:`PRUNE_BATCH` of the
oldest records older than retention (their hash stays as ``mbase``'s anchor, ``pruned``
counts them); when ``max_records`` are still kept the call is refused AUDIT_FULL. The last
1% of ``max_records`` (:data:`REFUSAL_RESERVE_DIVISOR`) is kept for grants: a refusal is not
recorded once ``max_records - max_records // 100`` are kept (the call is refused anyway), so
refusals never fill the room grants need.

Refusals are rate-limited per certificate (:class:`RefusalLimiter`, node.yaml
``extra.audit_refusals_per_minute`` / ``audit_refusal_burst``; unauthenticated ones also share
``audit_unauthenticated_per_minute`` / ``audit_unauthenticated_burst``): one over the limit is
not recorded but counted -- answered RESOURCE_EXHAUSTED AUDIT_RATE_LIMITED -- and each
certificate's count is written as one summary record (outcome RATE_LIMITED, ``suppressed``,
``since_ms``) per :data:`SUMMARY_WINDOW_MS`. Grants are never limited.

The counts not yet summarised survive a crash: :class:`Auditor` keeps them (every certificate's
count, its start and identity) in the one key ``mpending`` of the same database, overwritten --
by a refusal (recorded or counted) when the counts changed and the last save is
:data:`PENDING_SAVE_MS` old (the first count at once) -- and written in the same batch as
every summary record, so a summary and the counts it took out of ``mpending`` are written
together (a crash never counts one twice). At start the counts found there are written as their
summary records, :data:`SUMMARY_BATCH` records a synced batch (:meth:`AccessLog.append_summaries`).
A crash loses at most the counts of one save interval (those counted within
:data:`PENDING_SAVE_MS` after the last save); the key is one value, overwritten, deleted once
nothing is counting: the log does not grow by it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import plyvel
from cryptography import x509
from google.protobuf.message import DecodeError
from rxchain.v1 import audit_pb2

from node.errors import RxError
from node.fsutil import make_dirs_durable

_log = logging.getLogger(__name__)

# (contract, function) pairs whose answer carries decryption material: prescription.get_key
# answers the caller's wrapped record key and note keys. No other function of the consortium's
# contracts returns a wrapped key (the settlement and registry views return ciphertext-free
# metadata; dx_key / trace_key reach contracts only as transient inputs, never in an answer).
# Pinned here on purpose, not declared by a contract, definition or config: an upgrade or one
# operator could then switch the log off (README "Access-audit log"; tests/peer/test_access_audit_scope.py).
AUDITED: frozenset[tuple[str, str]] = frozenset({("prescription", "get_key")})
RECORD_ID_ARG = "rx_id"  # the argument naming the record
MAX_RECORD_ID_CHARS = 128  # a longer (or non-string) argument is recorded cut (the call is refused anyway)
MAX_TX_ID_CHARS = 128  # a tx id is 64 hex characters; a refusal's header may claim any: recorded cut

GRANTED = "GRANTED"
AUDIT_WRITE_FAILED = "AUDIT_WRITE_FAILED"
AUDIT_FULL = "AUDIT_FULL"
AUDIT_ACCESS_DENIED = "AUDIT_ACCESS_DENIED"
AUDIT_RATE_LIMITED = "AUDIT_RATE_LIMITED"  # a refusal over its certificate's limit (the answer)
RATE_LIMITED = "RATE_LIMITED"  # the outcome of a summary record of such refusals

DEFAULT_RETENTION_DAYS = 3650
DEFAULT_MAX_RECORDS = 20_000_000
PRUNE_BATCH = 64  # oldest records past retention removed per append at most
DAY_MS = 86_400_000
REFUSAL_RESERVE_DIVISOR = 100  # the last max_records // 100 records are kept for grants

# refusals recorded one by one (token buckets, node.yaml extra): per certificate, and for all
# unauthenticated ones together; over that they are counted, one summary record per window
DEFAULT_REFUSALS_PER_MINUTE = 10
DEFAULT_REFUSAL_BURST = 60
DEFAULT_UNAUTHENTICATED_PER_MINUTE = 60
DEFAULT_UNAUTHENTICATED_BURST = 300
SUMMARY_WINDOW_MS = 60_000
MAX_BUCKETS = 10_000  # certificates tracked per kind (authenticated, unauthenticated), LRU

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_SCAN = 10_000  # index entries a filtered page looks at before it answers (more=true)
MAX_VERIFY = 100_000
MAX_QUERY_RECORD_ID = MAX_RECORD_ID_CHARS

ZERO_HASH = b"\0" * 32
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">Q32s")
_BASE = struct.Struct(">Q32sQ")
_HEAD_KEY = b"mhead"
_BASE_KEY = b"mbase"
_MAX_U64 = (1 << 64) - 1
_MAX_I32 = (1 << 31) - 1  # a protobuf enum (a record's path)
_PENDING_KEY = b"mpending"
# summary records written per synced batch: a start after a crash writes the counts it left (at
# most 2 * MAX_BUCKETS + 1 = 20,001) in ~21 fsyncs, not one each (each batch also rewrites
# mpending, ~12 MB at most: one per record made that quadratic); a batch of 1,000 is ~350 KB
SUMMARY_BATCH = 1_000
PENDING_SAVE_MS = 1_000  # the refusal counts not yet summarised are saved at most this often
# mpending read at start at most this long (larger: unreadable, not parsed). A limiter saves at
# most 2 * MAX_BUCKETS + 1 counts of ~300-600 bytes (~12 MB): the bound is well above that.
MAX_PENDING_BYTES = 64 << 20


def _rkey(rid: int) -> bytes:
    return b"r" + _U64.pack(rid)


def _tkey(time_ms: int, rid: int) -> bytes:
    return b"t" + _U64.pack(min(max(time_ms, 0), _MAX_U64)) + _U64.pack(rid)


def _xkey(record_id: str, rid: int) -> bytes:
    return b"x" + record_id.encode("utf-8") + b"\0" + _U64.pack(rid)


def _text(value: str) -> str:
    """``value`` as a protobuf string takes it: a lone surrogate (JSON's "\\ud800" parses to one)
    does not encode as UTF-8, and one such record would fail the whole batch it is written in."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def record_hash(raw: bytes) -> bytes:
    """A record's hash: SHA-256 of its stored bytes."""
    return hashlib.sha256(raw).digest()


def record_id_of(args: Mapping[str, Any]) -> str:
    """The record id a call names (its ``rx_id``), as recorded: at most MAX_RECORD_ID_CHARS,
    a non-string argument as its JSON text, NUL characters dropped (they end the index key)."""
    value = args.get(RECORD_ID_ARG, "")
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))[:MAX_RECORD_ID_CHARS]
    return text[:MAX_RECORD_ID_CHARS].replace("\0", "")


def outcome_of(status: int, reason: str, payload: bytes) -> str:
    """GRANTED for a 200 answer that is no refusal, else the reason code. A 200 answer with an
    ``error`` member is get_key's committed denial (NO_KEY_GRANT)."""
    if status != 200:
        return reason or f"STATUS_{status}"
    if b'"error"' not in payload:  # (a grant's answer carries its ciphertext: not parsed for nothing)
        return GRANTED
    try:
        value = json.loads(payload) if payload else None
    except ValueError:
        return GRANTED
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return value["error"][:64] or "REFUSED"
    return GRANTED


@dataclass(frozen=True)
class Caller:
    """Who asked, as the proposal's creator certificate says."""

    org: str
    role: str
    name: str
    cert_der: bytes
    authenticated: bool


@dataclass(frozen=True)
class Head:
    first_id: int
    first_prev_hash: bytes
    last_id: int
    last_hash: bytes
    pruned: int

    def to_proto(self) -> audit_pb2.AuditHead:
        empty = self.last_id < self.first_id
        return audit_pb2.AuditHead(first_id=0 if empty else self.first_id, first_prev_hash=self.first_prev_hash,
                                   last_id=self.last_id, last_hash=self.last_hash, pruned=self.pruned)


@dataclass(eq=False)
class _Pending:
    """One record waiting in :meth:`AccessLog.append`'s queue; ``rid`` or ``error`` once done."""

    caller: Caller
    contract: str
    function: str
    record_id: str
    outcome: str
    height: int
    tx_id: str
    path: int
    suppressed: int = 0
    since_ms: int = 0
    shared: bool = False  # the summary of every unauthenticated refusal over the shared bound
    cert_sha256: bytes | None = None  # a summary restored after a crash: its certificate's hash as saved
    rid: int = 0
    error: RxError | None = None
    done: bool = False

    def fail(self, error: RxError) -> None:
        self.error, self.done = error, True


def _item(caller: Caller, contract: str, function: str, record_id: str, outcome: str, height: int, tx_id: str,
          path: int, suppressed: int = 0, since_ms: int = 0, shared: bool = False,
          cert_sha256: bytes | None = None) -> _Pending:
    """One record to queue, its strings as a protobuf string takes them (:func:`_text`)."""
    who = Caller(_text(caller.org), _text(caller.role), _text(caller.name), caller.cert_der, caller.authenticated)
    return _Pending(who, _text(contract), _text(function), _text(record_id), _text(outcome), height,
                    _text(tx_id[:MAX_TX_ID_CHARS]), path, suppressed, since_ms, shared, cert_sha256)


def _fail_all(items: list[_Pending], error: RxError) -> None:
    for item in items:
        item.fail(error)


class AccessLog:
    """The durable, hash-chained access-audit log (module docstring). Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], clock_ms: Callable[[], int], *,
                 retention_days: int = DEFAULT_RETENTION_DAYS, max_records: int = DEFAULT_MAX_RECORDS,
                 sync: bool = True) -> None:
        self._dir = os.fspath(directory)
        self._clock = clock_ms
        self._retention_ms = retention_days * DAY_MS
        self._max_records = max_records
        self._sync = sync
        self._lock = threading.Lock()
        self._wrote = threading.Condition(self._lock)  # a group was written (append)
        # save_pending writes (an fsync) under this one, not _lock: a grant never waits on it (close takes both)
        self._pending_lock = threading.Lock()
        self._queue: list[_Pending] = []  # records waiting for the next group
        self._writing = False  # a thread is writing a group (the lock released meanwhile)
        self._before_close: list[Callable[[], None]] = []  # e.g. the rate-limit summaries still counting
        self._pending_state: Callable[[], bytes] | None = None  # the counts not summarised (Auditor)
        try:
            make_dirs_durable(self._dir, sync=sync)
            self._db: Any = plyvel.DB(self._dir, create_if_missing=True, compression=None)
        except (OSError, plyvel.Error) as exc:
            raise RxError("IO_ERROR", f"cannot open the access-audit log {self._dir}: {exc}") from exc
        try:
            self._head = _head_of(self._db)
        except RxError as exc:
            self._db.close()
            raise RxError("AUDIT_LOG_CORRUPT", f"{self._dir}: {exc.message}") from exc

    def before_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` (once) at :meth:`close`, before the log closes: it may still append."""
        with self._lock:
            self._before_close.append(hook)

    def track_pending(self, state: Callable[[], bytes]) -> None:
        """Write ``state()`` (the refusal counts not yet summarised; b"": none) as ``mpending`` in
        every batch that writes a summary record, so the two change together."""
        with self._lock:
            self._pending_state = state

    def load_pending(self) -> bytes | None:
        """The refusal counts saved last (``mpending``), or None."""
        try:
            value: bytes | None = self._db.get(_PENDING_KEY)
        except plyvel.Error as exc:
            raise RxError(AUDIT_WRITE_FAILED, f"the access-audit log could not be read: {exc}",
                          grpc.StatusCode.UNAVAILABLE) from exc
        return value

    def save_pending(self, state: bytes) -> None:
        """Overwrite ``mpending`` with ``state`` (b"": delete it). RxError AUDIT_WRITE_FAILED. Not
        under the lock appends take: a grant is never held by this write's fsync (the Auditor's
        flush lock orders it with the batches that write summaries and ``mpending``)."""
        with self._pending_lock:
            if self._db.closed:
                raise RxError(AUDIT_WRITE_FAILED, "the access-audit log is closed", grpc.StatusCode.UNAVAILABLE)
            try:
                if state:
                    self._db.put(_PENDING_KEY, state, sync=self._sync)
                else:
                    self._db.delete(_PENDING_KEY, sync=self._sync)
            except plyvel.Error as exc:
                raise RxError(AUDIT_WRITE_FAILED, f"the access-audit log could not be written: {exc}",
                              grpc.StatusCode.UNAVAILABLE) from exc

    def close(self) -> None:
        with self._lock:
            hooks, self._before_close = self._before_close, []
        for hook in hooks:
            hook()
        with self._lock:
            while self._writing:  # the group being written finishes first
                self._wrote.wait()
            with self._pending_lock:  # (and a save of the counts)
                if not self._db.closed:
                    self._db.close()

    def head(self) -> Head:
        with self._lock:
            return self._head

    # ------------------------------------------------------------------ append

    def append(self, caller: Caller, contract: str, function: str, record_id: str, outcome: str,
               height: int, tx_id: str, path: int, *, suppressed: int = 0, since_ms: int = 0,
               shared: bool = False, cert_sha256: bytes | None = None) -> int:
        """Write one record durably; its id. RxError AUDIT_FULL / AUDIT_WRITE_FAILED when it
        could not be (nothing written then).

        Group commit: concurrent callers queue their records; one of them (the writer) takes
        every record queued, chains them after the head and writes them in ONE synced batch
        with the lock released (others queue meanwhile, for the next batch); every caller of
        the batch returns only after that batch's sync. Same records, same chain, one fsync
        per batch instead of one per record. A refusal (``outcome`` not GRANTED) is refused
        AUDIT_FULL already within the grants' reserve (the last 1% of ``max_records``).
        ``cert_sha256``: the certificate's hash when its DER is no longer known (a summary
        restored after a crash)."""
        item = _item(caller, contract, function, record_id, outcome, height, tx_id, path, suppressed, since_ms,
                     shared, cert_sha256)
        self._commit([item])
        if item.error is not None:
            raise item.error
        return item.rid

    def append_summaries(self, summaries: list[Summary]) -> list[int | RxError]:
        """Write the RATE_LIMITED summary records of ``summaries`` in ONE synced batch (chained in
        order, with any record queued meanwhile): each one's id, or its error (AUDIT_FULL,
        AUDIT_WRITE_FAILED: that one not written). :meth:`append`'s group commit with the
        summaries queued together, so a start writing the counts a crash left takes one fsync per
        :data:`SUMMARY_BATCH`, not one per count."""
        items = [_item(s.caller, s.contract, s.function, "", RATE_LIMITED, 0, "", s.path, s.count, s.since_ms,
                       s.shared, s.cert_sha256 or None) for s in summaries]
        self._commit(items)
        return [item.error if item.error is not None else item.rid for item in items]

    def _commit(self, items: list[_Pending]) -> None:
        """Queue ``items`` and return once each is written or failed (the group commit)."""
        if not items:
            return
        with self._lock:
            self._queue.extend(items)  # (one group takes them all: the writer takes the whole queue)
            while not all(item.done for item in items):
                if self._writing:
                    self._wrote.wait()
                    continue
                if self._db.closed:
                    _fail_all(self._queue, RxError(AUDIT_WRITE_FAILED, "the access-audit log is closed",
                                                   grpc.StatusCode.UNAVAILABLE))
                    self._queue = []
                    break
                self._writing = True  # this thread writes every record queued now
                group, self._queue = self._queue, []
                try:
                    self._lock.release()
                    try:
                        self._write_group(group)
                    finally:
                        self._lock.acquire()
                finally:
                    _fail_all([it for it in group if not it.done],  # (not reached but by a BaseException)
                              RxError(AUDIT_WRITE_FAILED, "the access-audit log write was interrupted",
                                      grpc.StatusCode.UNAVAILABLE))
                    self._writing = False
                    self._wrote.notify_all()

    def _write_group(self, group: list[_Pending]) -> None:
        """Chain ``group`` after the head and write it in one synced batch; each item gets its
        id or its error. Only the one writer (``_writing``) runs this; the head it reads and sets
        is read by others under the lock."""
        h = self._head
        now = self._clock()
        try:
            batch = self._db.write_batch(sync=self._sync)
            first, first_prev, pruned = h.first_id, h.first_prev_hash, h.pruned
            cutoff = now - self._retention_ms
            for _ in range(PRUNE_BATCH * len(group)):
                if first > h.last_id:
                    break
                raw = self._db.get(_rkey(first))
                old = _parse(raw)
                if raw is None or old is None or old.time_ms >= cutoff:
                    break  # a damaged front is left for verify to report
                batch.delete(_rkey(first))
                batch.delete(_tkey(old.time_ms, first))
                if old.record_id:
                    batch.delete(_xkey(old.record_id, first))
                first_prev = record_hash(raw)
                first += 1
                pruned += 1
            last_id, last_hash = h.last_id, h.last_hash
            written: list[_Pending] = []
            refusal_bound = self._max_records - self._max_records // REFUSAL_RESERVE_DIVISOR
            for item in group:
                if last_id - first + 1 >= self._max_records:
                    item.fail(RxError(AUDIT_FULL, f"the access-audit log holds {self._max_records} records "
                                                  "within retention (extra.audit_max_records): nothing is "
                                                  "released unrecorded", grpc.StatusCode.RESOURCE_EXHAUSTED))
                    continue
                if item.outcome != GRANTED and last_id - first + 1 >= refusal_bound:
                    item.fail(RxError(AUDIT_FULL, f"the access-audit log holds {refusal_bound} records within "
                                                  "retention: the rest of extra.audit_max_records is kept for "
                                                  "grants, refusals are no longer recorded",
                                      grpc.StatusCode.RESOURCE_EXHAUSTED))
                    continue
                rid = last_id + 1
                try:  # one record that cannot be built fails alone, not the batch
                    rec = audit_pb2.AccessRecord(
                        id=rid, prev_hash=last_hash, time_ms=now, org=item.caller.org, role=item.caller.role,
                        name=item.caller.name, cert_sha256=_fingerprint(item),
                        authenticated=item.caller.authenticated, contract=item.contract, function=item.function,
                        record_id=item.record_id, outcome=item.outcome, height=item.height, tx_id=item.tx_id,
                        path=item.path, suppressed=item.suppressed, since_ms=item.since_ms,  # type: ignore[arg-type]
                        shared=item.shared)
                    raw = rec.SerializeToString()
                    xkey = _xkey(item.record_id, rid) if item.record_id else b""
                except (ValueError, TypeError, OverflowError) as exc:
                    item.fail(RxError(AUDIT_WRITE_FAILED, f"the access-audit record could not be built: {exc}",
                                      grpc.StatusCode.UNAVAILABLE))
                    continue
                batch.put(_rkey(rid), raw)
                batch.put(_tkey(now, rid), b"")
                if xkey:
                    batch.put(xkey, b"")
                last_id, last_hash = rid, record_hash(raw)
                item.rid = rid
                written.append(item)
            if written:
                batch.put(_HEAD_KEY, _HEAD.pack(last_id, last_hash))
            if self._pending_state is not None and any(item.suppressed for item in written):
                try:
                    state: bytes | None = self._pending_state()  # the counts these summaries took out
                except Exception as exc:  # noqa: BLE001 - never refuses the group's grants
                    _log.error("event=audit_pending_unreadable detail=%r", f"not saved: {exc}"[:200])
                    state = None
                if state:
                    batch.put(_PENDING_KEY, state)
                elif state is not None:
                    batch.delete(_PENDING_KEY)
            if first != h.first_id:
                batch.put(_BASE_KEY, _BASE.pack(first, first_prev, pruned))
            if written or first != h.first_id:
                batch.write()
        except Exception as exc:  # noqa: BLE001 - any failure: no key of the group is released
            _fail_all(group, RxError(AUDIT_WRITE_FAILED, f"the access-audit log could not be written: {exc}",
                                     grpc.StatusCode.UNAVAILABLE))
            return
        if first != h.first_id:
            _log.info("event=audit_pruned first_id=%d pruned=%d", first, pruned)
        with self._lock:
            self._head = Head(first, first_prev, last_id, last_hash, pruned)
        for item in written:
            item.done = True

    # ------------------------------------------------------------------ read

    def query(self, req: audit_pb2.AuditQueryRequest) -> audit_pb2.AuditQueryResponse:
        """One page (request already checked by :func:`check_query`)."""
        limit = req.limit or DEFAULT_PAGE
        with self._db.snapshot() as snap:
            head = _head_of(snap)
            out = audit_pb2.AuditQueryResponse(head=head.to_proto())
            if req.order == audit_pb2.AUDIT_BY_TIME:
                start = _tkey(req.start_ms, req.start_id)
                scanned = 0
                with snap.iterator(start=start, stop=b"u", include_value=False) as it:
                    for key in it:
                        t, rid = _U64.unpack(key[1:9])[0], _U64.unpack(key[9:17])[0]
                        if (req.end_ms and t >= req.end_ms) or not key.startswith(b"t"):
                            return out
                        if len(out.records) >= limit or scanned >= MAX_SCAN:
                            out.more, out.next_id, out.next_ms = True, rid, t
                            return out
                        scanned += 1
                        raw = snap.get(_rkey(rid))
                        if raw is None:
                            continue
                        rec = _parse(raw)
                        if req.record_id and (rec is None or rec.record_id != req.record_id):
                            continue
                        out.records.append(raw)
                return out
            if req.record_id:
                prefix = b"x" + req.record_id.encode("utf-8") + b"\0"
                with snap.iterator(start=prefix + _U64.pack(req.start_id), stop=prefix + b"\xff" * 8,
                                   include_value=False) as it:
                    for key in it:
                        rid = _U64.unpack(key[-8:])[0]
                        if len(out.records) >= limit:
                            out.more, out.next_id = True, rid
                            return out
                        raw = snap.get(_rkey(rid))
                        if raw is not None:
                            out.records.append(raw)
                return out
            first = max(req.start_id, head.first_id)
            with snap.iterator(start=_rkey(first), stop=b"s") as it:
                for key, raw in it:
                    if len(out.records) >= limit:
                        out.more, out.next_id = True, _U64.unpack(key[1:9])[0]
                        return out
                    out.records.append(raw)
        return out

    def verify(self, req: audit_pb2.AuditVerifyRequest) -> audit_pb2.AuditVerifyResponse:
        """Check the chain over [start_id, start_id + limit) (request checked by :func:`check_verify`)."""
        limit = req.limit or MAX_VERIFY
        snap = self._db.snapshot()
        try:
            head = _head_of(snap)  # the head of the same snapshot: appends and pruning go on meanwhile
        except RxError:
            snap.close()
            raise
        out = audit_pb2.AuditVerifyResponse(ok=True, head=head.to_proto())

        def bad(rid: int, reason: str, detail: str) -> audit_pb2.AuditVerifyResponse:
            out.ok, out.first_bad_id, out.reason, out.detail, out.more = False, rid, reason, detail, False
            return out

        with snap:
            if req.anchor_id:
                raw = snap.get(_rkey(req.anchor_id))
                if req.anchor_id + 1 == head.first_id:  # the last pruned: the head keeps its hash
                    if head.first_prev_hash != req.anchor_hash:
                        return bad(req.anchor_id, "ANCHOR_MISMATCH",
                                   f"record {req.anchor_id} (pruned) did not hash to the anchor given")
                    out.anchor_checked = True
                elif req.anchor_id < head.first_id:
                    pass  # pruned further back: nothing to compare with (anchor_checked false)
                elif raw is None or record_hash(raw) != req.anchor_hash:
                    return bad(req.anchor_id, "ANCHOR_MISMATCH",
                               f"record {req.anchor_id} is gone or no longer hashes to the anchor given")
                else:
                    out.anchor_checked = True
            rid = max(req.start_id, head.first_id)
            if rid > head.last_id:
                extra = snap.get(_rkey(head.last_id + 1))
                if extra is not None:
                    return bad(head.last_id + 1, "HEAD_MISMATCH", "a record past the head")
                return out
            if rid == head.first_id:
                prev: bytes | None = head.first_prev_hash
            else:
                before = snap.get(_rkey(rid - 1))
                prev = None if before is None else record_hash(before)
                if prev is None:
                    return bad(rid - 1, "RECORD_MISSING", f"record {rid - 1} is missing")
            end = min(head.last_id, rid + limit - 1)
            expect = rid
            with snap.iterator(start=_rkey(rid), stop=_rkey(end) + b"\0") as it:
                for key, raw in it:
                    got = _U64.unpack(key[1:9])[0]
                    if got != expect:
                        return bad(expect, "RECORD_MISSING", f"record {expect} is missing")
                    rec = _parse(raw)
                    if rec is None or rec.id != got:
                        return bad(got, "RECORD_MALFORMED", f"record {got} does not parse as itself")
                    if rec.prev_hash != prev:
                        return bad(got, "CHAIN_BROKEN",
                                   f"record {got} does not chain to record {got - 1} (one of them was changed)")
                    prev = record_hash(raw)
                    expect += 1
                    out.checked += 1
            if expect <= end:
                return bad(expect, "RECORD_MISSING", f"record {expect} is missing")
            if end < head.last_id:
                out.more, out.next_id = True, end + 1
                return out
            if prev != head.last_hash:
                return bad(head.last_id, "HEAD_MISMATCH",
                           f"record {head.last_id} does not hash to the head (it was changed)")
            if snap.get(_rkey(head.last_id + 1)) is not None:
                return bad(head.last_id + 1, "HEAD_MISMATCH", "a record past the head")
        return out


def _fingerprint(item: _Pending) -> bytes:
    """The caller's certificate's SHA-256; empty for the summary of all unauthenticated refusals
    (``shared``: not a caller claiming an empty certificate, whose summary names SHA-256 of no
    bytes as its refusals' records do)."""
    if item.outcome == RATE_LIMITED and item.shared:
        return b""
    if item.cert_sha256 is not None:
        return item.cert_sha256
    return hashlib.sha256(item.caller.cert_der).digest()


def _head_of(reader: Any) -> Head:
    """The head as stored (``mhead``, ``mbase``) in ``reader`` (the DB or a snapshot of it)."""
    head, base = reader.get(_HEAD_KEY), reader.get(_BASE_KEY)
    try:
        last_id, last_hash = _HEAD.unpack(head) if head is not None else (0, ZERO_HASH)
        first_id, first_prev, pruned = _BASE.unpack(base) if base is not None else (1, ZERO_HASH, 0)
    except struct.error as exc:
        raise RxError("AUDIT_LOG_CORRUPT", "unreadable head of the access-audit log") from exc
    return Head(first_id, first_prev, last_id, last_hash, pruned)


def _parse(raw: bytes | None) -> audit_pb2.AccessRecord | None:
    if raw is None:
        return None
    try:
        return audit_pb2.AccessRecord.FromString(raw)
    except DecodeError:
        return None


def check_query(req: audit_pb2.AuditQueryRequest) -> None:
    """BAD_REQUEST for a request out of bounds (nothing read)."""
    if req.limit > MAX_PAGE:
        raise RxError("BAD_REQUEST", f"limit {req.limit} exceeds {MAX_PAGE}")
    if req.order not in (audit_pb2.AUDIT_BY_ID, audit_pb2.AUDIT_BY_TIME):
        raise RxError("BAD_REQUEST", f"unknown order {req.order}")
    if req.start_ms < 0 or req.end_ms < 0:
        raise RxError("BAD_REQUEST", "start_ms and end_ms are Unix milliseconds (>= 0)")
    if req.order == audit_pb2.AUDIT_BY_ID and (req.start_ms or req.end_ms):
        raise RxError("BAD_REQUEST", "start_ms and end_ms page by time: order BY_TIME")
    if len(req.record_id) > MAX_QUERY_RECORD_ID or "\0" in req.record_id:
        raise RxError("BAD_REQUEST", f"record_id is at most {MAX_QUERY_RECORD_ID} characters, no NUL")


def check_verify(req: audit_pb2.AuditVerifyRequest) -> None:
    """BAD_REQUEST for a request out of bounds (nothing read)."""
    if req.limit > MAX_VERIFY:
        raise RxError("BAD_REQUEST", f"limit {req.limit} exceeds {MAX_VERIFY}")
    if bool(req.anchor_id) != bool(req.anchor_hash) or (req.anchor_hash and len(req.anchor_hash) != 32):
        raise RxError("BAD_REQUEST", "an anchor is a record id with its 32-byte SHA-256")


@dataclass
class _Bucket:
    """One token bucket of :class:`RefusalLimiter`, and the refusals it counted (not recorded)
    since ``since_ms``, with the last such caller (what its summary record names)."""

    tokens: float
    at_ms: int
    suppressed: int = 0
    since_ms: int = 0
    caller: Caller | None = None
    contract: str = ""
    function: str = ""
    path: int = 0


@dataclass(frozen=True)
class Summary:
    """Refusals counted instead of recorded: ``count`` since ``since_ms`` by ``caller``
    (``shared``: every unauthenticated refusal over the shared bound, no one caller's)."""

    caller: Caller
    contract: str
    function: str
    path: int
    count: int
    since_ms: int
    shared: bool = False
    cert_sha256: bytes = b""  # restored from ``mpending``: the certificate's hash (its DER is not saved)

    def fingerprint(self) -> bytes:
        """The hash its record names: empty for the shared summary."""
        if self.shared:
            return b""
        return self.cert_sha256 or hashlib.sha256(self.caller.cert_der).digest()


def encode_pending(counts: list[Summary]) -> bytes:
    """``mpending``'s value: JSON (never pickle), b"" for no counts."""
    if not counts:
        return b""
    return json.dumps({"v": 1, "counts": [
        {"org": s.caller.org, "role": s.caller.role, "name": s.caller.name, "cert_sha256": s.fingerprint().hex(),
         "authenticated": s.caller.authenticated, "contract": s.contract, "function": s.function, "path": s.path,
         "count": s.count, "since_ms": s.since_ms, "shared": s.shared} for s in counts]},
        separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_pending(raw: bytes) -> list[Summary]:
    """The counts :func:`encode_pending` saved; ValueError for anything else (also a value over
    :data:`MAX_PENDING_BYTES`, or nested past the parser's recursion limit)."""
    if len(raw) > MAX_PENDING_BYTES:
        raise ValueError(f"{len(raw)} bytes: more than any limiter saves ({MAX_PENDING_BYTES} bytes)")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise ValueError("nested past the parser's recursion limit") from None
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != 1 \
            or not isinstance(doc.get("counts"), list):
        raise ValueError("not a version-1 pending-counts document")
    out = []
    for c in doc["counts"]:
        if not isinstance(c, dict):
            raise ValueError("a count is not an object")
        strings = [c.get(k) for k in ("org", "role", "name", "contract", "function", "cert_sha256")]
        numbers = [c.get(k) for k in ("path", "count", "since_ms")]
        if (not all(isinstance(v, str) for v in strings) or not all(type(v) is int and v >= 0 for v in numbers)
                or not isinstance(c.get("authenticated"), bool) or not isinstance(c.get("shared"), bool)):
            raise ValueError("a count has a missing or mistyped field")
        if c["count"] > _MAX_U64 or c["since_ms"] > _MAX_U64 or c["path"] > _MAX_I32:
            raise ValueError("a count has a number no record holds")  # (its summary could never be written)
        cert = bytes.fromhex(c["cert_sha256"])
        if len(cert) not in (0, hashlib.sha256().digest_size) or c["shared"] != (not cert) or c["count"] < 1:
            raise ValueError("a count names no certificate, or counts nothing")
        out.append(Summary(Caller(c["org"], c["role"], c["name"], b"", c["authenticated"]), c["contract"],
                           c["function"], c["path"], c["count"], c["since_ms"], c["shared"], cert))
    return out


_GLOBAL = ("g", b"")


def _bucket_key(caller: Caller) -> bytes:
    """The certificate a refusal's bucket is kept for: an authenticated caller's by the part its
    CA signed (``tbsCertificate``) -- the same certificate with its CA's ECDSA signature (r, s)
    re-encoded as (r, n - s) verifies too, so the whole DER would give its holder a second
    bucket --; a claimed (unauthenticated) one by its bytes, as sent."""
    if caller.authenticated:
        try:
            return hashlib.sha256(x509.load_der_x509_certificate(caller.cert_der).tbs_certificate_bytes).digest()
        except ValueError:  # (verified, so it parses; any other bytes keep their own bucket)
            pass
    return hashlib.sha256(caller.cert_der).digest()


class RefusalLimiter:
    """Which refusals are recorded one by one: a token bucket per certificate (an authenticated
    one's by the part its CA signed: :func:`_bucket_key`), ``per_minute`` tokens a minute up to
    ``burst``; an unauthenticated refusal (its
    certificate only claimed) takes a token from its certificate's bucket AND from one bucket
    shared by all unauthenticated refusals (``unauth_per_minute`` / ``unauth_burst``), so
    forging certificates does not multiply the bound. A refusal without a token is counted
    (``admit`` False); :meth:`due` hands out each bucket's count once its window
    (``window_ms`` from the first counted) has passed. An unauthenticated certificate's summary
    takes a token of the shared bucket too, else its count joins the shared summary. Buckets are
    kept for ``max_keys`` certificates of each kind (least recently used dropped; a dropped
    authenticated one's count is due at once, an unauthenticated one's joins the shared count).
    Thread-safe; ``clock_ms`` injected."""

    def __init__(self, clock_ms: Callable[[], int], *, per_minute: int = DEFAULT_REFUSALS_PER_MINUTE,
                 burst: int = DEFAULT_REFUSAL_BURST, unauth_per_minute: int = DEFAULT_UNAUTHENTICATED_PER_MINUTE,
                 unauth_burst: int = DEFAULT_UNAUTHENTICATED_BURST, window_ms: int = SUMMARY_WINDOW_MS,
                 max_keys: int = MAX_BUCKETS) -> None:
        self._clock = clock_ms
        self._rate, self._burst = per_minute / 60_000, burst
        self._urate, self._uburst = unauth_per_minute / 60_000, unauth_burst
        self._window = window_ms
        self._max_keys = max_keys
        self._lock = threading.Lock()
        now = clock_ms()
        self._auth: OrderedDict[bytes, _Bucket] = OrderedDict()
        self._unauth: OrderedDict[bytes, _Bucket] = OrderedDict()
        self._global = _Bucket(float(unauth_burst), now)
        self._open: OrderedDict[tuple[str, bytes], _Bucket] = OrderedDict()  # counting, oldest window first
        self._evicted: list[Summary] = []  # counts of authenticated buckets dropped (LRU): due at once

    def now_ms(self) -> int:
        return self._clock()

    def pending(self) -> list[Summary]:
        """Every count not yet handed out by :meth:`due` (what a crash would lose)."""
        with self._lock:
            out = list(self._evicted)
            for key, b in self._open.items():
                caller = b.caller if b.caller is not None and key != _GLOBAL else Caller("", "", "", b"", False)
                out.append(Summary(caller, b.contract, b.function, b.path, b.suppressed, b.since_ms, key == _GLOBAL))
            return out

    def restore(self, counts: list[Summary]) -> None:
        """Counts saved before a crash: due at once (each as saved: its own start)."""
        with self._lock:
            self._evicted.extend(counts)

    def tracked(self) -> int:
        """Buckets held (bounded by 2 * max_keys + 1)."""
        with self._lock:
            return len(self._auth) + len(self._unauth) + 1

    def _refill(self, b: _Bucket, rate: float, burst: int, now: int) -> None:
        if now > b.at_ms:
            b.tokens = min(float(burst), b.tokens + (now - b.at_ms) * rate)
            b.at_ms = now

    def _bucket(self, table: OrderedDict[bytes, _Bucket], kind: str, fp: bytes, burst: int, now: int) -> _Bucket:
        b = table.get(fp)
        if b is not None:
            table.move_to_end(fp)
            return b
        b = table[fp] = _Bucket(float(burst), now)
        if len(table) > self._max_keys:
            old_fp, old = table.popitem(last=False)
            if old.suppressed and self._open.pop((kind, old_fp), None) is not None:
                if kind == "a":  # due at once (handed out by the next due()), as counted: a
                    # bucket the same certificate gets again counts apart, never over this one
                    self._evicted.append(Summary(old.caller or Caller("", "", "", b"", False), old.contract,
                                                 old.function, old.path, old.suppressed, old.since_ms))
                else:
                    self._count(_GLOBAL, self._global, old.caller or Caller("", "", "", b"", False), old.contract,
                                old.function, old.path, now, old.suppressed, old.since_ms)
        return b

    def _count(self, key: tuple[str, bytes], b: _Bucket, caller: Caller, contract: str, function: str,
               path: int, now: int, n: int = 1, since_ms: int | None = None) -> None:
        """Count ``n`` refusals in ``b`` (``key``), the first of them at ``since_ms`` (default
        ``now``; a count joining the shared one keeps its own start)."""
        first = now if since_ms is None else since_ms
        if not b.suppressed:
            b.since_ms = first
            self._open[key] = b
        else:
            b.since_ms = min(b.since_ms, first)
        b.suppressed += n
        b.caller, b.contract, b.function, b.path = caller, contract, function, path

    def admit(self, caller: Caller, contract: str, function: str, path: int) -> bool:
        """True: record this refusal. False: it was counted (over its limit)."""
        now = self._clock()
        fp = _bucket_key(caller)
        with self._lock:
            if caller.authenticated:
                b = self._bucket(self._auth, "a", fp, self._burst, now)
                self._refill(b, self._rate, self._burst, now)
                if b.tokens >= 1:
                    b.tokens -= 1
                    return True
                self._count(("a", fp), b, caller, contract, function, path, now)
                return False
            b = self._bucket(self._unauth, "u", fp, self._burst, now)
            self._refill(b, self._rate, self._burst, now)
            g = self._global
            self._refill(g, self._urate, self._uburst, now)
            if b.tokens >= 1 and g.tokens >= 1:
                b.tokens -= 1
                g.tokens -= 1
                return True
            if g.tokens < 1:
                self._count(_GLOBAL, g, Caller("", "", "", b"", False), contract, function, path, now)
            else:
                self._count(("u", fp), b, caller, contract, function, path, now)
            return False

    def due(self, *, everything: bool = False) -> list[Summary]:
        """The counts whose window has passed (``everything``: all of them, e.g. at close)."""
        now = self._clock()
        with self._lock:
            out, self._evicted = self._evicted, []
            while self._open:
                key, b = next(iter(self._open.items()))
                if not everything and now - b.since_ms < self._window:
                    break
                del self._open[key]
                count, b.suppressed = b.suppressed, 0
                caller = b.caller or Caller("", "", "", b"", False)
                if key[0] == "u":
                    self._refill(self._global, self._urate, self._uburst, now)
                    if self._global.tokens < 1:  # no room: joins the shared count
                        self._count(_GLOBAL, self._global, Caller("", "", "", b"", False), b.contract,
                                    b.function, b.path, now, count, b.since_ms)
                        continue
                    self._global.tokens -= 1
                if key == _GLOBAL:
                    caller = Caller("", "", "", b"", False)
                out.append(Summary(caller, b.contract, b.function, b.path, count, b.since_ms, key == _GLOBAL))
        return out


class Auditor:
    """What the endorser calls: which calls are audited, and their records (``on_record``
    counts them by result for the metrics: granted, refused, write_failed; suppressed: a
    refusal counted by ``limiter`` instead of recorded)."""

    def __init__(self, log: AccessLog, on_record: Callable[[str], None] | None = None,
                 limiter: RefusalLimiter | None = None, *, save_every_ms: int = PENDING_SAVE_MS) -> None:
        self.log = log
        self._on_record = on_record
        self._limiter = limiter
        self._save_every_ms = save_every_ms
        # one thread at a time writes summaries or saves the counts (mpending never goes back)
        self._flush_lock = threading.Lock()
        self._unwritten: list[Summary] = []  # summaries handed out, after the one being written
        self._dirty = False  # counted since the counts were last saved
        self._saved_ms: int | None = None
        if limiter is not None:
            log.track_pending(self._pending_state)
            self._restore(limiter)
            log.before_close(lambda: self.flush(everything=True))  # no count is lost at a stop

    def _restore(self, limiter: RefusalLimiter) -> None:
        """Write the counts a crash left in ``mpending`` as their summary records."""
        raw = self.log.load_pending()
        if not raw:
            return
        try:
            counts = decode_pending(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            _log.error("event=audit_pending_unreadable detail=%r", str(exc)[:200])
            with contextlib.suppress(RxError):  # (not summaries: they would name no one)
                self.log.save_pending(b"")
            return
        _log.warning("event=audit_pending_restored counts=%d suppressed=%d", len(counts),
                     sum(c.count for c in counts))
        limiter.restore(counts)
        with self._flush_lock:  # (at start: one line per batch, not one per restored count)
            self._flush(limiter, False, restored=True)

    def _pending_state(self) -> bytes:
        """``mpending`` now: the limiter's counts and the summaries handed out not yet written."""
        assert self._limiter is not None
        self._dirty = False  # (before the snapshot: a count after it marks it again)
        return encode_pending(self._limiter.pending() + self._unwritten)

    @staticmethod
    def audited(contract: str, function: str) -> bool:
        return (contract, function) in AUDITED

    def granted(self, caller: Caller, contract: str, function: str, args: Mapping[str, Any], outcome: str,
                height: int, tx_id: str, path: int) -> None:
        """Record an answer about to leave the peer; RxError (AUDIT_WRITE_FAILED, AUDIT_FULL) when
        it could not be recorded: the caller must then refuse the call instead of answering."""
        try:
            self.log.append(caller, contract, function, record_id_of(args), outcome, height, tx_id, path)
        except RxError as err:
            _log.error("event=audit_write_failed reason=%s org=%s role=%s function=%s tx_id=%s detail=%r",
                       err.reason, caller.org, caller.role, function, tx_id, err.message)
            self._count("write_failed")
            raise
        self._count("granted" if outcome == GRANTED else "refused")

    def refused(self, caller: Caller, contract: str, function: str, args: Mapping[str, Any], reason: str,
                height: int, tx_id: str, path: int, *, strict: bool = False) -> None:
        """Record a refusal (it is refused whether or not the record could be written; ``strict``:
        a record not written raises as :meth:`granted` does, for an answer that is itself the
        refusal); RxError AUDIT_RATE_LIMITED (RESOURCE_EXHAUSTED) when it is over its
        certificate's limit: then only counted, and the caller must answer that error instead."""
        if not self.admit_refusal(caller, contract, function, path, reason):
            raise RxError(AUDIT_RATE_LIMITED,
                          f"refused ({reason}); this certificate's refusals of {contract}.{function} are over the "
                          "access-audit limit (extra.audit_refusals_per_minute): counted, not recorded one by one",
                          grpc.StatusCode.RESOURCE_EXHAUSTED)
        if strict:
            self.granted(caller, contract, function, args, reason, height, tx_id, path)
            return
        with contextlib.suppress(RxError):  # logged: the refusal stands
            self.granted(caller, contract, function, args, reason, height, tx_id, path)

    def admit_refusal(self, caller: Caller, contract: str, function: str, path: int, reason: str) -> bool:
        """False: this refusal is over its certificate's limit, counted instead of recorded. Any
        summary whose window passed is written first; the counts (``mpending``) are saved after
        if they changed and PENDING_SAVE_MS passed since their last save."""
        self.flush()
        if self._limiter is None:
            return True
        admitted = self._limiter.admit(caller, contract, function, path)
        if not admitted:
            self._count("suppressed")
            self._dirty = True
        # any refusal saves the counts once PENDING_SAVE_MS passed since the last save
        if self._dirty and self._flush_lock.acquire(blocking=False):  # (else a flush is writing)
            try:
                self._save_counts()
            finally:
                self._flush_lock.release()
        return admitted

    def _save_counts(self) -> None:
        """Save the counts (``mpending``) if they changed and the last save is PENDING_SAVE_MS old
        (the flush lock held)."""
        assert self._limiter is not None
        now = self._limiter.now_ms()
        if not self._dirty or (self._saved_ms is not None and 0 <= now - self._saved_ms < self._save_every_ms):
            return  # (a clock stepped back saves at once, not an interval later)
        try:
            self.log.save_pending(self._pending_state())
        except RxError as err:
            self._dirty = True
            _log.error("event=audit_write_failed reason=%s org=%s role=%s function=%s tx_id=%s detail=%r",
                       err.reason, "", "", "", "", f"the pending refusal counts were not saved: {err.message}")
            return
        self._saved_ms = now

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries due (``everything``: all counted, at close)."""
        if self._limiter is None:
            return
        if not self._flush_lock.acquire(blocking=everything):
            return  # another thread is writing the summaries due
        try:
            self._flush(self._limiter, everything)
        finally:
            self._flush_lock.release()

    def _flush(self, limiter: RefusalLimiter, everything: bool, *, restored: bool = False) -> None:
        """``restored``: the counts a crash left, written at start -- one ``audit_pending_written``
        line per batch (up to 20,001 counts) instead of one ``audit_refusals_suppressed`` per count."""
        due = limiter.due(everything=everything)
        step = max(1, SUMMARY_BATCH)
        for start in range(0, len(due), step):  # one synced batch per SUMMARY_BATCH summaries
            chunk = due[start:start + step]
            self._unwritten = due[start + step:]  # mpending, written with this batch, keeps the rest
            written: list[int] = []
            for s, result in zip(chunk, self.log.append_summaries(chunk), strict=True):
                if isinstance(result, RxError):
                    _log.error("event=audit_write_failed reason=%s org=%s role=%s function=%s tx_id=%s detail=%r",
                               result.reason, s.caller.org, s.caller.role, s.function, "", result.message)
                    self._count("write_failed")
                    rid = 0
                else:
                    self._count("refused")
                    rid = result
                    written.append(rid)
                if restored:
                    continue
                _log.warning("event=audit_refusals_suppressed org=%s role=%s cert=%s authenticated=%s shared=%s "
                             "suppressed=%d since_ms=%d record=%d", s.caller.org, s.caller.role,
                             s.fingerprint().hex()[:16], s.caller.authenticated, s.shared, s.count, s.since_ms, rid)
            if restored:
                _log.warning("event=audit_pending_written certs=%d suppressed=%d written=%d first_record=%d "
                             "last_record=%d", len(chunk), sum(c.count for c in chunk), len(written),
                             min(written, default=0), max(written, default=0))
        self._unwritten = []

    def _count(self, result: str) -> None:
        if self._on_record is not None:
            self._on_record(result)
