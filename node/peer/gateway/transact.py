"""Gateway.Transact and Gateway.TransactBatch: endorse and submit requests pipelined on a stream.

Both RPCs share one engine (:class:`_Stream`). Many proposals and envelopes are in flight
at once; answers carry the request's correlation id and arrive in completion order. For a
submitted envelope the stream first registers interest in the tx id, then forwards it to
the ordering service, and pushes the commit status when the block holding it commits (or
an error: the orderer's refusal, or TIMEOUT after the commit timeout). The stream ends
once the client half-closes and every request has been answered.

Threads (each hand-off costs a GIL switch, so there are as few as possible): the stream's
reader thread takes requests off the wire and handles a submit right there (cheap checks,
then the broadcast client's asynchronous send: its answer comes back by callback, the
commit status from the commit notifier's callback). Only an endorsement, which runs the
contract and waits for the remote peers, goes to the work pool. Every answer is put on one
queue that the gRPC response generator drains: Transact sends each answer as its own
message; TransactBatch sends everything that is ready at that moment in one message (at
most :data:`MAX_ANSWERS_PER_MESSAGE` answers and :data:`MAX_MESSAGE_BYTES`, a larger answer alone), so
under load one message carries many answers and at low load nothing waits.

TransactBatch input rules: one message carries 1..:data:`MAX_REQUESTS_PER_BATCH`
requests. An empty message (BAD_REQUEST) or a larger one (TOO_MANY_ITEMS, none of its
requests is processed) is answered by one error with correlation id
:data:`BATCH_ERROR_CORRELATION_ID` (0, reserved for answers about a whole message); a
request with neither endorse nor submit gets BAD_REQUEST under its own id. Either way
the stream keeps serving.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor

from rxchain.v1 import identity_pb2, services_pb2

from node.errors import RxError
from node.peer.gateway.deps import DEFAULT_COMMIT_TIMEOUT_MS, GatewayDeps
from node.peer.gateway.endorse import endorse
from node.peer.gateway.submit import check_envelope
from node.peer.notifier import TxCommitted

MAX_IN_FLIGHT = 4096  # requests admitted and not yet answered-and-sent, per stream
MAX_POOLED = 16  # endorsements of one stream queued or running on the shared work pool
MAX_REQUESTS_PER_BATCH = 256
MAX_ANSWERS_PER_MESSAGE = 256
# answer bytes per TransactBatch message: with its framing well within gRPC's default 4 MiB
# receive bound, which a third-party client keeps unless told (it was 4 MiB plus the framing)
MAX_MESSAGE_BYTES = 1024 * 1024
BATCH_ERROR_CORRELATION_ID = 0
_POLL_S = 0.25

Answer = services_pb2.TransactResponse


class _Request:
    """One request in flight: answered at most once."""

    __slots__ = ("cancel", "cid", "deadline", "done")

    def __init__(self, cid: int) -> None:
        self.cid = cid
        self.done = False
        self.deadline = 0.0
        self.cancel: Callable[[], None] | None = None


class _Stream:
    """The shared engine of one Transact or TransactBatch call (see module docstring)."""

    def __init__(self, deps: GatewayDeps, work_pool: Executor, remote_pool: ThreadPoolExecutor,
                 commit_timeout_ms: int, clock: Callable[[], float]) -> None:
        self.deps = deps
        self.work_pool = work_pool
        self.remote_pool = remote_pool
        self.out: queue.SimpleQueue[Answer | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        # held: admitted and not yet handed to gRPC (answers queued in ``out`` count, so a
        # client that stops reading stops the reader: HTTP/2 flow control pushes back);
        # unanswered: admitted and not yet answered (the stream ends when it reaches 0)
        self.held = 0
        self.unanswered = 0
        self.reader_waiting = False
        self.input_done = False
        self.stopped = False  # the response side ended: queued work is skipped
        self.pooled = threading.BoundedSemaphore(MAX_POOLED)
        # Submits waiting for their commit, in registration (= deadline) order.
        self.waiting: dict[_Request, None] = {}
        self.commit_timeout_s = commit_timeout_ms / 1000
        self.clock = clock

    # ------------------------------------------------------------------ bookkeeping
    def admit(self, n: int, is_active: Callable[[], bool]) -> bool:
        """Reserve ``n`` in-flight slots (waits while the stream is full); False if the call ended."""
        with self.lock:
            while self.held and self.held + n > MAX_IN_FLIGHT:
                if not is_active() or self.stopped:
                    return False
                self.reader_waiting = True
                self.room.wait(_POLL_S)
                self.reader_waiting = False
            self.held += n
            self.unanswered += n
        return True

    def sent(self, n: int) -> None:
        """``n`` answers were handed to gRPC: their slots are free."""
        with self.lock:
            self.held -= n
            if self.reader_waiting:
                self.room.notify()

    def answer(self, req: _Request, resp: Answer) -> None:
        """Queue ``req``'s final answer (ignored if it was answered already)."""
        with self.lock:
            if req.done:
                return
            req.done = True
            if req.cancel is not None:
                self.waiting.pop(req, None)
            self.out.put(resp)  # under the lock: the end marker always comes last
            self.unanswered -= 1
            if self.input_done and self.unanswered == 0:
                self.out.put(None)

    def error(self, req: _Request, err: RxError) -> None:
        if req.cancel is not None:
            req.cancel()  # a failed submit no longer waits for its commit (idempotent)
        self.answer(req, Answer(
            correlation_id=req.cid, error=identity_pb2.ErrorDetail(reason=err.reason, message=err.message)))

    def end_input(self) -> None:
        """The client half-closed (or went away): end once everything is answered."""
        with self.lock:
            self.input_done = True
            if self.unanswered == 0:
                self.out.put(None)

    def expire(self, now: float) -> None:
        """Answer TIMEOUT for every submit whose commit did not come in time."""
        late: list[_Request] = []
        with self.lock:
            for req in self.waiting:
                if req.deadline > now:
                    break
                late.append(req)
        for req in late:
            self.error(req, RxError("TIMEOUT", "not committed within the commit timeout"))

    def close(self) -> None:
        """The response side ended: stop watching for commits nobody will read and skip
        the endorsements still queued for this stream."""
        with self.lock:
            self.stopped = True
            self.room.notify_all()
            left = list(self.waiting)
            self.waiting.clear()
        for req in left:
            if req.cancel is not None:
                req.cancel()

    # ------------------------------------------------------------------ requests
    def dispatch(self, msg: services_pb2.TransactRequest) -> None:
        """Handle one admitted request: a submit here, an endorsement on the work pool (at
        most MAX_POOLED of this stream at once, so one stream cannot fill the shared pool)."""
        req = _Request(msg.correlation_id)
        kind = msg.WhichOneof("kind")
        if kind == "submit":
            self._guarded(req, self._submit, msg)
        elif kind == "endorse":
            while not self.pooled.acquire(timeout=_POLL_S):
                if self.stopped:
                    return
            try:
                self.work_pool.submit(self._pooled, req, msg)
            except RuntimeError:  # the pool is shut down: the node is stopping
                self.pooled.release()
                self.error(req, RxError("SERVICE_UNAVAILABLE", "the gateway is stopping"))
        else:
            self.error(req, RxError("BAD_REQUEST", "request must carry endorse or submit"))

    def _pooled(self, req: _Request, msg: services_pb2.TransactRequest) -> None:
        try:
            if not self.stopped:  # nobody reads a cancelled stream's answers
                self._guarded(req, self._endorse, msg)
        finally:
            self.pooled.release()

    def _guarded(self, req: _Request, fn: Callable[[_Request, services_pb2.TransactRequest], None],
                 msg: services_pb2.TransactRequest) -> None:
        try:
            fn(req, msg)
        except RxError as err:
            self.error(req, err)
        except Exception as exc:  # noqa: BLE001 - one request's bug must not kill the stream
            self.error(req, RxError("INTERNAL", f"{type(exc).__name__}: {exc}"))

    def _endorse(self, req: _Request, msg: services_pb2.TransactRequest) -> None:
        resp = endorse(self.deps, msg.endorse, self.remote_pool)
        self.answer(req, Answer(correlation_id=req.cid, endorsed=resp))

    def _submit(self, req: _Request, msg: services_pb2.TransactRequest) -> None:
        tx_id = check_envelope(self.deps, msg.submit)
        cid = req.cid

        def on_commit(info: TxCommitted) -> None:
            self.answer(req, Answer(
                correlation_id=cid,
                committed=services_pb2.CommitStatusResponse(
                    tx_id=tx_id, code=info.code, block_number=info.block),  # type: ignore[arg-type]
            ))

        cancel = self.deps.notifier.watch(tx_id, on_commit)
        with self.lock:
            if not req.done:
                req.cancel = cancel
                req.deadline = self.clock() + self.commit_timeout_s
                self.waiting[req] = None
        loc = self.deps.ledger.tx_location(tx_id)
        if loc is not None:
            cancel()
            on_commit(TxCommitted(tx_id, loc.block, loc.code))
            return

        def on_answer(resp: services_pb2.BroadcastResponse | RxError) -> None:
            if isinstance(resp, RxError):
                cancel()
                self.error(req, resp)
            elif not resp.accepted:
                cancel()
                self.error(req, RxError(resp.reason or "REFUSED", resp.message))
            elif self.deps.on_submit is not None:
                self.deps.on_submit()

        self.deps.broadcast.submit_async(msg.submit, on_answer)

    def refuse_message(self, err: RxError) -> None:
        """Answer a whole malformed TransactBatch message (one slot already admitted)."""
        self.error(_Request(BATCH_ERROR_CORRELATION_ID), err)

    # ------------------------------------------------------------------ answers
    def batches(self, is_active: Callable[[], bool], max_items: int,
                max_bytes: int) -> Iterator[list[Answer]]:
        """Lists of ready answers (each at most ``max_items`` and ``max_bytes``, one larger alone)."""
        out = self.out
        carry: Answer | None = None
        next_expiry = self.clock() + _POLL_S
        try:
            while is_active():
                if self.deps.notifier.closed:  # the peer is stopping
                    with self.lock:
                        left = self.unanswered
                    if left:
                        raise RxError("SERVICE_UNAVAILABLE", f"the peer is stopping; {left} "
                                      "requests unanswered (ask CommitStatus for submitted tx ids)")
                    return
                now = self.clock()
                if now >= next_expiry:
                    self.expire(now)
                    next_expiry = now + _POLL_S
                first: Answer | None
                if carry is not None:
                    first, carry = carry, None
                else:
                    try:
                        first = out.get(timeout=_POLL_S)
                    except queue.Empty:
                        continue
                if first is None:
                    return
                batch = [first]
                ended = False
                if max_items > 1:
                    size = first.ByteSize()
                    while len(batch) < max_items:
                        try:
                            item = out.get_nowait()
                        except queue.Empty:
                            break
                        if item is None:
                            ended = True
                            break
                        n = item.ByteSize()
                        if size + n > max_bytes:
                            carry = item
                            break
                        batch.append(item)
                        size += n
                yield batch
                self.sent(len(batch))
                if ended:
                    return
        finally:
            self.close()


def start_reader(name: str, target: Callable[[], None]) -> None:
    """Run a stream's request reader on its own daemon thread."""
    threading.Thread(target=target, name=name, daemon=True).start()


def transact(
    deps: GatewayDeps,
    requests: Iterator[services_pb2.TransactRequest],
    is_active: Callable[[], bool],
    work_pool: Executor,
    remote_pool: ThreadPoolExecutor,
    commit_timeout_ms: int = DEFAULT_COMMIT_TIMEOUT_MS,
    clock: Callable[[], float] = time.monotonic,
    start: Callable[[str, Callable[[], None]], None] = start_reader,
) -> Iterator[services_pb2.TransactResponse]:
    """The response stream for one Transact call (one answer per message)."""
    st = _Stream(deps, work_pool, remote_pool, commit_timeout_ms, clock)

    def read() -> None:
        try:
            for msg in requests:
                if not st.admit(1, is_active):
                    return
                st.dispatch(msg)
        except Exception:  # noqa: BLE001, S110 - the client went away: stop reading
            pass
        finally:
            st.end_input()

    start("transact-reader", read)
    for batch in st.batches(is_active, 1, MAX_MESSAGE_BYTES):
        yield batch[0]


def transact_batch(
    deps: GatewayDeps,
    requests: Iterator[services_pb2.TransactBatchRequest],
    is_active: Callable[[], bool],
    work_pool: Executor,
    remote_pool: ThreadPoolExecutor,
    commit_timeout_ms: int = DEFAULT_COMMIT_TIMEOUT_MS,
    clock: Callable[[], float] = time.monotonic,
    max_answers: int = MAX_ANSWERS_PER_MESSAGE,
    max_bytes: int = MAX_MESSAGE_BYTES,
    start: Callable[[str, Callable[[], None]], None] = start_reader,
) -> Iterator[services_pb2.TransactBatchResponse]:
    """The response stream for one TransactBatch call (ready answers coalesced per message)."""
    st = _Stream(deps, work_pool, remote_pool, commit_timeout_ms, clock)

    def read() -> None:
        try:
            for msg in requests:
                n = len(msg.requests)
                if n == 0 or n > MAX_REQUESTS_PER_BATCH:
                    if not st.admit(1, is_active):
                        return
                    st.refuse_message(
                        RxError("BAD_REQUEST", "empty TransactBatch message") if n == 0 else
                        RxError("TOO_MANY_ITEMS", f"{n} requests in one message; at most "
                                f"{MAX_REQUESTS_PER_BATCH} (none was processed)"))
                    continue
                if not st.admit(n, is_active):
                    return
                for item in msg.requests:
                    st.dispatch(item)
        except Exception:  # noqa: BLE001, S110 - the client went away: stop reading
            pass
        finally:
            st.end_input()

    start("transact-batch-reader", read)
    for batch in st.batches(is_active, max(1, max_answers), max_bytes):
        yield services_pb2.TransactBatchResponse(responses=batch)
