"""Gateway.Transact: endorse and submit requests pipelined on one bidi stream.

Requests are handled concurrently by a worker pool, so many proposals and envelopes are
in flight at once; answers carry the request's correlation id and arrive in completion
order. For a submitted envelope the stream first registers interest in the tx id, then
forwards it to the ordering service, and pushes the commit status when the block holding
it commits (or an error: the orderer's refusal, or TIMEOUT after the commit timeout). The
stream ends once the client half-closes and every request has been answered.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from rxchain.v1 import identity_pb2, services_pb2

from node.errors import RxError
from node.peer.gateway.deps import DEFAULT_COMMIT_TIMEOUT_MS, GatewayDeps
from node.peer.gateway.endorse import endorse
from node.peer.gateway.submit import check_envelope
from node.peer.notifier import TxCommitted

MAX_IN_FLIGHT = 4096
_POLL_S = 0.25


class _Stream:
    def __init__(self, deps: GatewayDeps, remote_pool: ThreadPoolExecutor,
                 commit_timeout_ms: int, clock: Callable[[], float]) -> None:
        self.deps = deps
        self.remote_pool = remote_pool
        self.out: queue.Queue[services_pb2.TransactResponse | None] = queue.Queue()
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self.outstanding = 0
        self.input_done = False
        self.waiting: dict[int, tuple[float, Callable[[], None]]] = {}
        self.answered: set[int] = set()
        self.commit_timeout_s = commit_timeout_ms / 1000
        self.clock = clock

    def answer(self, cid: int, resp: services_pb2.TransactResponse, *, final: bool = True) -> None:
        with self.lock:
            if cid in self.answered:
                return
            if final:
                self.answered.add(cid)
                self.waiting.pop(cid, None)
        self.out.put(resp)
        if final:
            self.finish_one()

    def error(self, cid: int, err: RxError) -> None:
        self.answer(cid, services_pb2.TransactResponse(
            correlation_id=cid, error=identity_pb2.ErrorDetail(reason=err.reason, message=err.message)))

    def finish_one(self) -> None:
        self.slots.release()
        with self.lock:
            self.outstanding -= 1
            end = self.input_done and self.outstanding == 0
        if end:
            self.out.put(None)

    def handle(self, req: services_pb2.TransactRequest) -> None:
        cid = req.correlation_id
        try:
            kind = req.WhichOneof("kind")
            if kind == "endorse":
                resp = endorse(self.deps, req.endorse, self.remote_pool)
                self.answer(cid, services_pb2.TransactResponse(correlation_id=cid, endorsed=resp))
            elif kind == "submit":
                self.submit(cid, req)
            else:
                raise RxError("BAD_REQUEST", "request must carry endorse or submit")
        except RxError as err:
            self.error(cid, err)
        except Exception as exc:  # noqa: BLE001 - one request's bug must not kill the stream
            self.error(cid, RxError("INTERNAL", f"{type(exc).__name__}: {exc}"))

    def submit(self, cid: int, req: services_pb2.TransactRequest) -> None:
        tx_id = check_envelope(self.deps, req.submit)

        def on_commit(info: TxCommitted) -> None:
            self.answer(cid, services_pb2.TransactResponse(
                correlation_id=cid,
                committed=services_pb2.CommitStatusResponse(
                    tx_id=tx_id, code=info.code, block_number=info.block),  # type: ignore[arg-type]
            ))

        cancel = self.deps.notifier.watch(tx_id, on_commit)
        with self.lock:
            self.waiting[cid] = (self.clock() + self.commit_timeout_s, cancel)
        loc = self.deps.ledger.tx_location(tx_id)
        if loc is not None:
            cancel()
            on_commit(TxCommitted(tx_id, loc.block, loc.code))
            return

        def on_answer(resp: services_pb2.BroadcastResponse | RxError) -> None:
            if isinstance(resp, RxError):
                cancel()
                self.error(cid, resp)
            elif not resp.accepted:
                cancel()
                self.error(cid, RxError(resp.reason or "REFUSED", resp.message))
            elif self.deps.on_submit is not None:
                self.deps.on_submit()

        self.deps.broadcast.submit_async(req.submit, on_answer)

    def expire(self) -> None:
        now = self.clock()
        with self.lock:
            late = [(cid, c) for cid, (deadline, c) in self.waiting.items() if deadline <= now]
        for cid, cancel in late:
            cancel()
            self.error(cid, RxError("TIMEOUT", "not committed within the commit timeout"))


def transact(
    deps: GatewayDeps,
    requests: Iterator[services_pb2.TransactRequest],
    is_active: Callable[[], bool],
    work_pool: ThreadPoolExecutor,
    remote_pool: ThreadPoolExecutor,
    commit_timeout_ms: int = DEFAULT_COMMIT_TIMEOUT_MS,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[services_pb2.TransactResponse]:
    """The response stream for one Transact call."""
    st = _Stream(deps, remote_pool, commit_timeout_ms, clock)

    def read() -> None:
        try:
            for req in requests:
                while not st.slots.acquire(timeout=_POLL_S):
                    if not is_active():
                        return
                with st.lock:
                    st.outstanding += 1
                work_pool.submit(st.handle, req)
        except Exception:  # noqa: BLE001, S110 - the client went away: stop reading
            pass
        finally:
            with st.lock:
                st.input_done = True
                end = st.outstanding == 0
            if end:
                st.out.put(None)

    threading.Thread(target=read, name="transact-reader", daemon=True).start()
    while is_active() and not deps.notifier.closed:
        try:
            item = st.out.get(timeout=_POLL_S)
        except queue.Empty:
            st.expire()
            continue
        if item is None:
            return
        yield item
