"""A peer's access-audit log (node.peer.audit) over AccessAudit: who got or was refused a
prescription's key from that peer, and when. Only the peer organisation's admins and regulator
auditors/admins are answered (others: AUDIT_ACCESS_DENIED).

The pages carry the records as the peer stored them; :func:`check_chain` re-checks a run of
them here (each record's ``prev_hash`` is the SHA-256 of the one before), so a peer answering
a doctored page of consecutive records is caught without trusting its own Verify.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from rxchain.v1 import audit_pb2, audit_pb2_grpc

from client.errors import RxClientError
from client.gateway import rpc_error
from client.wallet import WalletIdentity
from node.crypto.tls import secure_channel

PATHS = {audit_pb2.ACCESS_EVALUATE: "evaluate", audit_pb2.ACCESS_ENDORSE: "endorse"}
# the most records a peer answers a page (node.peer.audit.MAX_PAGE; a request's ``limit``, 0 its
# default of 100): a page holding more is refused before it is parsed -- one of 16 MiB (the channel's
# bound) held ~400,000 records, past a merged view's bound, from each peer read at once
MAX_PAGE = 1000


def _parse(raw: bytes) -> audit_pb2.AccessRecord:
    """One record as the peer answered it; RxClientError AUDIT_CHAIN_BROKEN if it does not parse
    (its chain cannot be checked: a peer's answer, never a traceback)."""
    try:
        return audit_pb2.AccessRecord.FromString(raw)
    except DecodeError:
        raise RxClientError("AUDIT_CHAIN_BROKEN", f"a record answered ({len(raw)} bytes) does not parse") from None


def record_dict(raw: bytes) -> dict[str, Any]:
    """One stored record as JSON-friendly values (hashes in hex), with its own ``hash``."""
    r = _parse(raw)
    out = {"id": r.id, "time_ms": r.time_ms, "org": r.org, "role": r.role, "name": r.name,
           "cert_sha256": r.cert_sha256.hex(), "authenticated": r.authenticated,
           "contract": r.contract, "function": r.function, "record_id": r.record_id,
           "outcome": r.outcome, "height": r.height, "tx_id": r.tx_id,
           "path": PATHS.get(r.path, "unspecified"), "prev_hash": r.prev_hash.hex(),
           "hash": hashlib.sha256(raw).hexdigest()}
    if r.suppressed:  # a RATE_LIMITED summary: refusals counted, not recorded one by one
        # shared: every unauthenticated refusal over the bound they share, no one certificate's
        out["suppressed"], out["since_ms"], out["shared"] = r.suppressed, r.since_ms, r.shared
    return out


def check_chain(records: Sequence[bytes]) -> None:
    """RxClientError AUDIT_CHAIN_BROKEN unless consecutive records (ids n, n+1, ...) chain."""
    prev: tuple[int, bytes] | None = None
    for raw in records:
        r = _parse(raw)
        if prev is not None:
            if r.id != prev[0] + 1:
                raise RxClientError("AUDIT_CHAIN_BROKEN", f"record {prev[0] + 1} is missing (got {r.id})")
            if r.prev_hash != prev[1]:
                raise RxClientError("AUDIT_CHAIN_BROKEN", f"record {r.id} does not chain to record {prev[0]}")
        prev = (r.id, hashlib.sha256(raw).digest())


def head_dict(h: audit_pb2.AuditHead) -> dict[str, Any]:
    return {"first_id": h.first_id, "first_prev_hash": h.first_prev_hash.hex(), "last_id": h.last_id,
            "last_hash": h.last_hash.hex(), "pruned": h.pruned}


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    more: bool
    next_id: int
    next_ms: int
    head: dict[str, Any]


class AuditClient:
    """A short-lived connection to one peer's AccessAudit service."""

    def __init__(self, identity: WalletIdentity, target: str, timeout_s: float = 30.0) -> None:
        self._channel = secure_channel(target, identity.cert_path, identity.key_path, identity.ca_bundle_path)
        self._stub = audit_pb2_grpc.AccessAuditStub(self._channel)
        self._timeout = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def query(self, *, start_id: int = 0, by_time: bool = False, start_ms: int = 0, end_ms: int = 0,
              record_id: str = "", limit: int = 0, deadline: Deadline | None = None,
              take_bytes: Callable[[int], None] | None = None) -> Page:
        """One page (records with their hashes; a page in id order without a record_id filter is
        checked to chain here). ``deadline``: the request waits at most until it (AUDIT_DEADLINE_EXCEEDED
        once passed), never past its own timeout. AUDIT_CHAIN_BROKEN for a page holding more records
        than asked (``limit``, else :data:`MAX_PAGE`), before any of them is parsed. ``take_bytes``:
        called with the bytes of the page's records as answered (serialized, their sum) before any of
        them is parsed -- a merged view's bound (:meth:`RecordBound.take_bytes`), whose error is the
        page's."""
        req = audit_pb2.AuditQueryRequest(
            order=audit_pb2.AUDIT_BY_TIME if by_time else audit_pb2.AUDIT_BY_ID, start_id=start_id,
            start_ms=start_ms, end_ms=end_ms, record_id=record_id, limit=limit)
        timeout = self._timeout if deadline is None else min(self._timeout, deadline.remaining())
        try:
            res = self._stub.Query(req, timeout=timeout)
        except grpc.RpcError as exc:
            if deadline is not None:
                deadline.remaining()  # (a wait the deadline cut short: that, not the RPC's TIMEOUT)
            raise rpc_error(exc) from None
        asked = limit or MAX_PAGE
        if len(res.records) > asked:  # (before any is parsed or counted: a peer answers ``limit`` at most)
            raise RxClientError("AUDIT_CHAIN_BROKEN", f"a page of {len(res.records)} records answered to a "
                                                      f"request for {asked} at most")
        if take_bytes is not None:  # (before any is parsed: a page of 16 MiB holds records of ~16 KB)
            take_bytes(sum(len(r) for r in res.records))
        if not by_time and not record_id:
            check_chain(res.records)
        return Page([record_dict(r) for r in res.records], res.more, res.next_id, res.next_ms, head_dict(res.head))

    def pages(self, **kwargs: Any) -> Iterator[Page]:
        """Every page from the arguments of :meth:`query` on."""
        while True:
            page = self.query(**kwargs)
            yield page
            if not page.more:
                return
            kwargs["start_id"], kwargs["start_ms"] = page.next_id, page.next_ms or kwargs.get("start_ms", 0)

    def verify(self, *, start_id: int = 0, limit: int = 0, anchor: tuple[int, bytes] | None = None,
               all_pages: bool = True, deadline: Deadline | None = None) -> dict[str, Any]:
        """The peer's Verify from ``start_id`` (every page until the head when ``all_pages``). With
        an ``anchor``, ``anchor_checked`` says whether it was compared (false: the peer declares it
        pruned, so nothing shows the log was not rewritten since: note a newer anchor).
        ``deadline``: every page's request waits until it at most (never past its own timeout),
        checked again after each page (AUDIT_DEADLINE_EXCEEDED): a peer answering each page slowly
        held a verify of its whole log pages x 30 s."""
        checked = 0
        anchored, anchor_checked = anchor is not None, False
        while True:
            req = audit_pb2.AuditVerifyRequest(start_id=start_id, limit=limit)
            if anchor is not None:
                req.anchor_id, req.anchor_hash = anchor
            timeout = self._timeout if deadline is None else min(self._timeout, deadline.remaining())
            try:
                res = self._stub.Verify(req, timeout=timeout)
            except grpc.RpcError as exc:
                if deadline is not None:
                    deadline.remaining()  # (a wait the deadline cut short: that, not the RPC's TIMEOUT)
                raise rpc_error(exc) from None
            if deadline is not None:
                deadline.remaining()
            checked += res.checked
            anchor_checked = anchor_checked or res.anchor_checked
            if not res.ok or not res.more or not all_pages:
                break
            start_id, anchor = res.next_id, None
        out = {"ok": res.ok, "checked": checked, "head": head_dict(res.head), "more": res.more,
               "next_id": res.next_id}
        if anchored:
            out["anchor_checked"] = anchor_checked  # false: the anchor was pruned, nothing compared
        if not res.ok:
            out.update(first_bad_id=res.first_bad_id, reason=res.reason, detail=res.detail)
        return out


MERGE_PAGE = MAX_PAGE  # records per page when reading a whole log to merge: the most a peer answers
MAX_MERGED_RECORDS = 200_000  # records read at most, all the peers of a view together (~160-250 bytes each)
# bytes of records (serialized, as answered) read at most, all the peers of a view together: the
# records bound alone let a peer answer pages of 1,000 records of ~16 KB (16 MiB, the channel's
# bound), ~3 GB held before it tripped. Honest records (node.peer.audit.AccessLog.append): a grant
# 234 bytes, a refusal 242, a RATE_LIMITED summary 163 -- 200,000 of them ~48 MB, 1/5 of this --;
# the largest an authenticated member makes (organisation id 56, role 10, a common name of 64
# three-byte characters, rx id 64, outcome 64) 572 -- 200,000 ~114 MB, under half. Only records
# at the peer's own bounds on what an unauthenticated refusal records (org 64, role 64, name 128,
# record_id 128 and tx_id 128 characters, of 4-byte characters or escaped surrogates: 2,835 bytes)
# can pass it before 200,000 records do (~94,700 of them: narrow the view with --since)
MAX_MERGED_BYTES = 256 << 20
MERGE_DEADLINE_S = 120.0  # a merged view's whole read, every peer and page (each request also 30 s at most)
MERGE_WORKERS = 8  # peers of a merged view read at once (threads: min(peers, this))
MERGE_LATE_S = 5.0  # a peer's read not back this long after the deadline (its requests all end by it) is
# given up: its channel closed, its thread waited for this long at most, then left (daemon, its result unread)
DEADLINE_EXCEEDED = "AUDIT_DEADLINE_EXCEEDED"


class Deadline:
    """A merged view's time to read every peer's log, or a verify's to read one (``clock``:
    seconds, injected; monotonic)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._end = clock() + seconds

    def left(self) -> float:
        """Seconds left (<= 0 once passed)."""
        return self._end - self.clock()

    def remaining(self) -> float:
        """Seconds left; RxClientError AUDIT_DEADLINE_EXCEEDED once none are."""
        left = self.left()
        if left <= 0:
            raise RxClientError(DEADLINE_EXCEEDED, f"the view was not read within its deadline ({self.seconds:g} s, "
                                                   "--deadline-s): a peer answering slowly, or a log too long to "
                                                   "read (narrow the view with --since)")
        return left


class RecordBound:
    """The records, and their bytes, a merged view reads at most, every peer together. The peers
    are read at once (threads): each counts a page's records against it before keeping them -- their
    bytes as answered before any is parsed (:meth:`take_bytes`), their number once the page is checked
    (:meth:`take`) -- under one lock, so both bounds hold however their pages interleave -- those a
    peer read, kept or dropped, while it is read; the records it kept once it is read (as when the
    peers were read one after another)."""

    def __init__(self, limit: int, peers: int = 1, max_bytes: int = MAX_MERGED_BYTES) -> None:
        self.limit, self.peers, self.max_bytes = limit, peers, max_bytes
        self._held = 0
        self._held_bytes = 0
        self._lock = threading.Lock()

    def take(self, n: int, own: int) -> None:
        """Count ``n`` records more answered to a read that counted ``own`` before them; RxClientError
        AUDIT_TOO_LARGE (nothing counted) when the peers' together would pass the limit."""
        with self._lock:
            if self._held + n <= self.limit:
                self._held += n
                return
            others = self._held - own
        self._refuse(f"{self.limit} records", "", f"{others} read", others)

    def take_bytes(self, n: int, own: int) -> None:
        """Count ``n`` bytes of records more (a page's, as answered, before any is parsed) answered to a
        read that counted ``own`` before them; RxClientError AUDIT_TOO_LARGE (nothing counted) when the
        peers' together would pass ``max_bytes`` (the bytes bound)."""
        with self._lock:
            if self._held_bytes + n <= self.max_bytes:
                self._held_bytes += n
                return
            others = self._held_bytes - own
        self._refuse(f"{self.max_bytes} bytes of records", " (the view's bytes bound)",
                     f"the view's bytes bound; {others} bytes read", others)

    def _refuse(self, what: str, alone: str, others_read: str, others: int) -> NoReturn:
        """AUDIT_TOO_LARGE for more than ``what`` to read: one peer's (``alone`` says which bound), or
        the peers' together (``others_read``: what the other peers' reads held when it passed)."""
        if not others:
            raise RxClientError("AUDIT_TOO_LARGE", f"more than {what} to read{alone}: narrow the view "
                                                   "(--since), or read the peer page by page (--peer ORG --start ID)")
        raise RxClientError("AUDIT_TOO_LARGE", f"more than {what} to read from the {self.peers} peers' logs "
                                               f"together ({others_read} from the others' when it passed): "
                                               "narrow the view (--since), name fewer peers, or read each page "
                                               "by page (--peer ORG --start ID)")

    def give_back(self, n: int, n_bytes: int = 0) -> None:
        """``n`` records of ``n_bytes`` counted that a read no longer holds (dropped: its log pruned
        while read)."""
        with self._lock:
            self._held -= n
            self._held_bytes -= n_bytes


class ReadStopped(Exception):
    """A peer's read stopped between pages: another peer of the view failed it (never shown)."""


def read_verified(client: AuditClient, *, start_id: int = 0, max_records: int = MAX_MERGED_RECORDS,
                  max_bytes: int = MAX_MERGED_BYTES, deadline: Deadline | None = None,
                  bound: RecordBound | None = None,
                  stop: threading.Event | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of one peer's log from ``start_id`` (0: the oldest kept) to its head, in id
    order, with the head, checked HERE: each chains to the one before across pages, the newest
    hashes to the head of the last page (read from the same snapshot as its records), and --
    read from the oldest kept -- the oldest chains to the hash the head keeps (32 zero bytes until
    records are pruned). So a record changed among those read breaks the chain to the head
    (records before ``start_id`` are not read, so not checked). A log pruned past the records read
    while it is read (a page starting at the oldest kept, after a gap) is the log from there:
    those read before are dropped, the page checked as the oldest kept. RxClientError AUDIT_CHAIN_BROKEN
    otherwise (also for a page that holds no record but says more follow: the read is bounded
    by ``max_records`` whatever the peer answers), AUDIT_TOO_LARGE past ``max_records`` read,
    kept or dropped, or past ``max_bytes`` of records read (serialized, as answered: each page's
    counted before any of its records is parsed; nothing merged; ``bound``: both counted there
    instead, with the other peers' of a view, which then counts only those kept once read),
    AUDIT_DEADLINE_EXCEEDED once ``deadline``
    passed (each request waits until it at most; checked again after each page). :class:`ReadStopped`
    once ``stop`` is set, checked after each page (no further one asked)."""
    bound = bound if bound is not None else RecordBound(max_records, max_bytes=max_bytes)
    records: list[dict[str, Any]] = []
    head: dict[str, Any] = {}
    read = 0  # records answered, kept or not (a log pruned while read drops those read before)
    answered = [0, 0]  # bytes of the records answered, kept or not; of the last page's
    kept_bytes = 0  # bytes of ``records``

    def take_bytes(n: int) -> None:  # (called by query() with a page's, before any record is parsed)
        bound.take_bytes(n, answered[0])
        answered[0] += n
        answered[1] = n

    # each page counted (bytes) and checked to chain by query(), each request waiting until the deadline at most
    for page in client.pages(start_id=start_id, limit=MERGE_PAGE, deadline=deadline, take_bytes=take_bytes):
        if stop is not None and stop.is_set():
            raise ReadStopped()
        if deadline is not None:  # (a fake or a peer answering within its wait: checked here too)
            deadline.remaining()
        head = page.head
        if page.more and not page.records:  # (a page by id that says more holds its limit of records:
            # read on, a peer answering empty pages forever would hold the view forever)
            raise RxClientError("AUDIT_CHAIN_BROKEN", f"a page from record {page.next_id} held no record but "
                                                      "said more follow")
        if records and page.records and page.records[0]["id"] > records[-1]["id"] + 1 \
                and page.records[0]["id"] == head["first_id"]:
            # the log was pruned past the records read (a page starts at the oldest kept): they are
            # no longer kept; the view is the log from its oldest kept, checked as such below
            records, kept_bytes = [], 0
        if not records and page.records:
            first = page.records[0]
            if start_id <= head["first_id"] or first["id"] <= head["first_id"]:  # from the oldest kept
                if (first["id"], first["prev_hash"]) != (head["first_id"], head["first_prev_hash"]):
                    raise RxClientError("AUDIT_CHAIN_BROKEN", f"record {first['id']} is not the oldest kept "
                                        f"({head['first_id']}) or does not chain to the hash the head keeps")
            elif first["id"] != start_id:
                raise RxClientError("AUDIT_CHAIN_BROKEN", f"record {start_id} is missing (got {first['id']})")
        elif records and page.records:
            last, nxt = records[-1], page.records[0]
            if nxt["id"] != last["id"] + 1 or nxt["prev_hash"] != last["hash"]:
                raise RxClientError("AUDIT_CHAIN_BROKEN", f"record {nxt['id']} does not chain to record {last['id']}")
        bound.take(len(page.records), read)
        records.extend(page.records)
        read += len(page.records)
        kept_bytes += answered[1]
    if records:
        if (records[-1]["id"], records[-1]["hash"]) != (head["last_id"], head["last_hash"]):
            raise RxClientError("AUDIT_CHAIN_BROKEN", f"the newest record read ({records[-1]['id']}) is not the "
                                                      f"head's ({head['last_id']}) or does not hash to it")
    elif head and start_id <= head["last_id"] and (
            head["first_id"] or (head["last_id"] and head["last_hash"] != head["first_prev_hash"])):
        # none answered: the peer must say it keeps none (none written, or every one pruned: then
        # the newest's hash is the one the head keeps for the pruned)
        raise RxClientError("AUDIT_CHAIN_BROKEN", f"no record answered from {start_id}, but the head names "
                                                  f"records {head['first_id']}..{head['last_id']}")
    bound.give_back(read - len(records), answered[0] - kept_bytes)
    return records, head


CLOCK_MARGIN_MS = 600_000  # a merged view from --since reads each log from 10 minutes before


def first_id_from(client: AuditClient, since_ms: int, deadline: Deadline | None = None) -> int:
    """The id to read a log from for the records of ``since_ms`` on: the first record at or after
    ``since_ms - CLOCK_MARGIN_MS`` by the peer's time index (records are written in id order with
    the peer's clock: one stepped back further than the margin can put a record of the window
    before it), or past the head when none is."""
    page = client.query(by_time=True, start_ms=max(0, since_ms - CLOCK_MARGIN_MS), limit=1, deadline=deadline)
    return int(page.records[0]["id"]) if page.records else int(page.head["last_id"]) + 1


PeerRead = tuple[list[dict[str, Any]], dict[str, Any]]


def read_peers(clients: Sequence[tuple[str, AuditClient]], *, since_ms: int, deadline: Deadline,
               bound: RecordBound, workers: int = MERGE_WORKERS) -> list[PeerRead]:
    """Every peer's log (:func:`read_verified`, from :func:`first_id_from` with ``since_ms``), in the
    order given, read by ``min(peers, workers)`` threads at once, each taking the next peer not yet
    read: a view of many peers takes about its slowest one's time, not their sum. The first peer to
    fail fails them all, its error naming it (AUDIT_DEADLINE_EXCEEDED: every peer not read by then,
    in the order given): nothing more is asked (a read stops after its page), the peers still being
    read have their clients closed (a request being answered is cancelled), and every thread is
    joined before this returns -- those not back ``MERGE_LATE_S`` after that, all together (a peer
    answering past its request's own timeout), are left, their channels closed and their results
    never read."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    n = len(clients)
    results: list[PeerRead | None] = [None] * n
    cond = threading.Condition()
    stop = threading.Event()  # set (under cond) once the view failed, or on the way out
    queue = iter(range(n))  # peers not started (taken under cond)
    running: set[int] = set()
    failures: list[tuple[int, BaseException]] = []  # the first one alone: (peer index or -1, error)
    ended = [0]  # threads ended

    def take() -> int | None:
        with cond:
            i = None if stop.is_set() else next(queue, None)
            if i is not None:
                running.add(i)
            return i

    def read(i: int) -> PeerRead:
        client = clients[i][1]
        start = first_id_from(client, since_ms, deadline) if since_ms else 0
        return read_verified(client, start_id=start, deadline=deadline, bound=bound, stop=stop)

    def work() -> None:
        try:
            while (i := take()) is not None:
                try:
                    got = read(i)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread (moot once stopped)
                    with cond:
                        running.discard(i)
                        if not stop.is_set():
                            failures.append((i, exc))
                            stop.set()
                    return
                with cond:
                    running.discard(i)
                    results[i] = got
        finally:
            with cond:
                ended[0] += 1
                cond.notify_all()

    threads = [threading.Thread(target=work, name=f"rxchain-audit-{k}", daemon=True) for k in range(min(n, workers))]
    try:
        for t in threads:
            t.start()
        with cond:
            while not failures and ended[0] < len(threads):
                left = deadline.left()
                if left < -MERGE_LATE_S:  # (each request waits until the deadline at most: one stuck)
                    failures.append((-1, RxClientError(DEADLINE_EXCEEDED, f"the view was not read within its "
                                                                          f"deadline ({deadline.seconds:g} s, "
                                                                          "--deadline-s)")))
                    break
                cond.wait(max(left, 0.0) + MERGE_LATE_S)
    finally:
        with cond:
            stop.set()  # nothing more is started or asked
            busy = sorted(running)
        try:
            for i in busy:  # a request being answered is cancelled
                clients[i][1].close()
        finally:
            end = deadline.clock() + MERGE_LATE_S  # one wait for them all, not one each
            for t in threads:
                if t.ident is not None:  # (started)
                    t.join(max(end - deadline.clock(), 0.0))
    if failures:
        i, exc = failures[0]
        if not isinstance(exc, RxClientError):
            raise exc
        if exc.reason == DEADLINE_EXCEEDED or i < 0:
            late = [name for (name, _), got in zip(clients, results, strict=True) if got is None]
            raise RxClientError(DEADLINE_EXCEEDED, f"{', '.join(late)}: {exc.message}") from None
        raise RxClientError(exc.reason, f"{clients[i][0]}: {exc.message}") from None
    if any(got is None for got in results):  # (never: each peer is read, or the view failed)
        raise RxClientError("INTERNAL", "a peer's log was not read")
    return [got for got in results if got is not None]


def merged(clients: Sequence[tuple[str, AuditClient]], *, since_ms: int = 0, until_ms: int = 0,
           record_id: str = "", limit: int = 0, max_records: int = MAX_MERGED_RECORDS,
           max_bytes: int = MAX_MERGED_BYTES, deadline_s: float = MERGE_DEADLINE_S,
           clock: Callable[[], float] = time.monotonic, workers: int = MERGE_WORKERS) -> dict[str, Any]:
    """One view of several peers' logs: each read -- whole, or with ``since_ms`` from the first
    record of the window (:func:`first_id_from`) -- to its head and its chain checked here
    (:func:`read_verified`), then the records in ``[since_ms, until_ms)`` (0: no bound) of
    ``record_id`` ("" = all) merged by time -- (``time_ms``, peer, id) -- each marked with the
    ``peer`` it came from. ``limit`` (0: all): at most that many, cut at a millisecond's edge
    (``more`` and ``next_ms``, the time to go on from with ``since_ms``; a millisecond holding more
    than ``limit`` records is answered whole). ``peers``: each log's head and records checked.
    The peers are read at once, ``min(peers, workers)`` threads (:func:`read_peers`); the view is the
    same whichever answers first. A peer that cannot be read, or whose chain does not verify, fails
    the whole view, its error naming the peer (the first to fail: the others are stopped, a slow
    one does not hold the error). Bounds, all the peers together: ``max_records`` records read
    and ``max_bytes`` bytes of them (as answered, each page's counted before it is parsed)
    (:class:`RecordBound`, AUDIT_TOO_LARGE naming the peer that would pass one, and which),
    ``deadline_s`` seconds
    by ``clock`` for every request and page (AUDIT_DEADLINE_EXCEEDED naming every peer not read by
    then; each request waits until then at most) -- a slow or endless peer holds the view no longer,
    and more ``--peer`` take no more memory."""
    names = [name for name, _ in clients]
    if len(set(names)) != len(names):
        raise RxClientError("BAD_ARGUMENTS", f"a peer is named twice: {names}")
    deadline = Deadline(deadline_s, clock)
    reads = read_peers(clients, since_ms=since_ms, deadline=deadline,
                       bound=RecordBound(max_records, len(clients), max_bytes), workers=workers)
    out: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    for (name, _), (records, head) in zip(clients, reads, strict=True):  # in the order named
        peers.append({"peer": name, "checked": len(records), "head": head})
        out.extend({**r, "peer": name} for r in records
                   if r["time_ms"] >= since_ms and (not until_ms or r["time_ms"] < until_ms)
                   and (not record_id or r["record_id"] == record_id))
    order = {name: i for i, name in enumerate(names)}
    out.sort(key=lambda r: (r["time_ms"], order[r["peer"]], r["id"]))
    more, next_ms = False, 0
    if limit and len(out) > limit:
        cut = limit
        while cut > 0 and out[cut - 1]["time_ms"] == out[limit]["time_ms"]:
            cut -= 1  # a millisecond is never split across views
        if cut == 0:  # one millisecond holds more than limit: answered whole
            cut = limit
            while cut < len(out) and out[cut]["time_ms"] == out[0]["time_ms"]:
                cut += 1
        more = cut < len(out)
        next_ms = out[cut]["time_ms"] if more else 0
        out = out[:cut]
    return {"records": out, "peers": peers, "more": more, "next_ms": next_ms}

