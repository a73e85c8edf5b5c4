"""Endorser clients for the other organisations' peers (mTLS with this peer's cert).

Each remote peer gets one long-lived ``Endorser.ProcessProposals`` stream. A proposal
is queued with a fresh correlation id and a future; the stream's request iterator sends
whatever is queued when gRPC asks for the next message as ONE ``ProposalBatch`` (it
never waits to fill a batch), and a reader thread resolves the futures from the answer
batches. The caller waits on its future directly, with the same per-peer timeout as the
unary call had.

Failures: when the stream breaks (peer down, connection cut, server stopping) every
proposal in flight on it fails at once with SERVICE_UNAVAILABLE -- a retryable reason, so
the next peer of the organisation, or the gateway's replacement organisation, is asked --
and the next proposal opens a new stream. A peer that answers the stream UNIMPLEMENTED
(an older release), or refuses it TOO_MANY_STREAMS (its stream caps are full), is asked with
unary ``ProcessProposal`` calls for a while (:data:`UNARY_RETRY_S`) and the affected
proposals are re-sent that way.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.config import Endpoint
from node.errors import RxError, reason_from_rpc_error
from node.msgbound import budget_reader
from node.stream_caps import TOO_MANY_STREAMS

ChannelFactory = Callable[[str], grpc.Channel]
Clock = Callable[[], float]

_log = logging.getLogger(__name__)

MAX_SEND_ITEMS = 64  # proposals per request message (the server accepts up to 256)
MAX_SEND_BYTES = 1 << 20  # and bytes per request message, at most half the bound (node.msgbound)
IDLE_CLOSE_S = 1.0  # a stream with nothing in flight for this long is half-closed (reopened on use)
UNARY_RETRY_S = 60.0  # after UNIMPLEMENTED (or TOO_MANY_STREAMS), use unary calls this long before trying again
STREAM_UNIMPLEMENTED = "STREAM_UNIMPLEMENTED"  # internal: re-send this proposal by unary call


class _PeerStream:
    """The ProcessProposals stream to one peer, reopened on demand after a failure."""

    def __init__(self, ep: Endpoint, stub: services_pb2_grpc.EndorserStub, ids: Iterator[int],
                 clock: Clock, *, use_stream: bool = True,
                 message_bound: Callable[[], int] | None = None) -> None:
        self.ep = ep
        # proposal bytes of one request message: the peer's server refuses a message over its
        # bound as a whole (every proposal in it failed SERVICE_UNAVAILABLE)
        self._batch_bytes = budget_reader(message_bound, MAX_SEND_BYTES)
        self._use_stream = use_stream
        self._stub = stub
        self._ids = ids
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, Future[transaction_pb2.ProposalResponse]] = {}
        self._queue: queue.SimpleQueue[services_pb2.CorrelatedProposal | None] | None = None
        self._cancel: Callable[[], object] | None = None  # cancels the open stream
        self._generation = 0
        self._unary_until = float("-inf")
        self._closed = False
        self.opened = 0  # streams opened so far (for tests and metrics)

    def unary(self) -> bool:
        """True while this peer is asked by unary calls (it does not serve the stream)."""
        return not self._use_stream or self._clock() < self._unary_until

    def send(self, signed: transaction_pb2.SignedProposal
             ) -> tuple[int, Future[transaction_pb2.ProposalResponse]]:
        """Queue ``signed`` on the stream (opening it if needed); its answer's future."""
        fut: Future[transaction_pb2.ProposalResponse] = Future()
        cid = next(self._ids)
        with self._lock:
            if self._closed:
                raise RxError("SERVICE_UNAVAILABLE", f"{self.ep.name}: client closed")
            if self._queue is None:
                self._open()
            assert self._queue is not None
            self._pending[cid] = fut
            self._queue.put(services_pb2.CorrelatedProposal(correlation_id=cid, proposal=signed))
        return cid, fut

    def forget(self, cid: int) -> None:
        """Drop a proposal whose caller stopped waiting (a late answer is ignored)."""
        with self._lock:
            self._pending.pop(cid, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            cancel = self._cancel
        if cancel is not None:
            cancel()

    def _open(self) -> None:  # under self._lock
        self._generation += 1
        self.opened += 1
        q: queue.SimpleQueue[services_pb2.CorrelatedProposal | None] = queue.SimpleQueue()
        self._queue = q
        generation = self._generation
        call = self._stub.ProcessProposals(_batches(q, IDLE_CLOSE_S, lambda: self._retire(generation),
                                                    self._batch_bytes))
        self._cancel = call.cancel
        threading.Thread(target=self._read, args=(call, self._generation), daemon=True,
                         name=f"endorse-stream-{self.ep.name}").start()

    def _read(self, call: Iterator[services_pb2.ProposalResponseBatch], generation: int) -> None:
        failure: RxError = StreamBroken("SERVICE_UNAVAILABLE", f"{self.ep.name}: endorsement stream ended")
        try:
            for batch in call:
                with self._lock:
                    resolved = [(self._pending.pop(item.correlation_id, None), item)
                                for item in batch.items]
                for fut, item in resolved:
                    if fut is None:
                        continue  # the caller gave up (timeout)
                    if item.HasField("response"):
                        fut.set_result(item.response)
                    elif item.HasField("error"):
                        fut.set_exception(RxError(item.error.reason or "RPC_FAILED",
                                                  f"{self.ep.name}: {item.error.message}"))
                    else:
                        fut.set_exception(RxError("RPC_FAILED", f"{self.ep.name}: empty answer"))
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            details = exc.details() if callable(getattr(exc, "details", None)) else ""
            if code == grpc.StatusCode.UNIMPLEMENTED or (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_from_rpc_error(exc) == TOO_MANY_STREAMS):
                self._unary_until = self._clock() + UNARY_RETRY_S
                failure = RxError(STREAM_UNIMPLEMENTED, f"{self.ep.name}: {details}")
            else:
                # Whatever the cause, the proposals in flight were not answered: retryable.
                failure = StreamBroken(
                    "SERVICE_UNAVAILABLE", f"{self.ep.name}: stream failed ({reason_from_rpc_error(exc)}: {details})")
        except Exception as exc:  # noqa: BLE001 - never leave futures hanging
            failure = StreamBroken("SERVICE_UNAVAILABLE", f"{self.ep.name}: stream reader failed: {exc}")
        self._fail(generation, failure)

    def _retire(self, generation: int) -> bool:
        """Idle: end this stream if nothing is in flight (so a stopping peer is not held)."""
        with self._lock:
            if generation != self._generation or self._pending:
                return generation != self._generation
            self._generation += 1  # the stream's normal end is then no failure
            self._queue = self._cancel = None
            return True

    def _fail(self, generation: int, err: RxError) -> None:
        with self._lock:
            if generation != self._generation:
                return
            pending, self._pending = self._pending, {}
            q, self._queue, self._cancel = self._queue, None, None
        if q is not None:
            q.put(None)  # ends the request iterator
        if pending:
            _log.info("event=endorse_stream_failed peer=%s in_flight=%d reason=%s",
                      self.ep.name, len(pending), err.reason)
        for fut in pending.values():
            fut.set_exception(type(err)(err.reason, err.message))  # one exception object per waiter


def _batches(
    q: queue.SimpleQueue[services_pb2.CorrelatedProposal | None],
    idle_s: float = IDLE_CLOSE_S,
    on_idle: Callable[[], bool] = lambda: False,
    max_bytes: Callable[[], int] = lambda: MAX_SEND_BYTES,
) -> Iterator[services_pb2.ProposalBatch]:
    """The request iterator: whatever is queued when gRPC asks, as one message of at most
    :data:`MAX_SEND_ITEMS` proposals and ``max_bytes()`` bytes (read per message: the bound in
    force may change; one larger proposal goes alone).

    After ``idle_s`` with nothing queued it asks ``on_idle`` whether to end (half-close).
    """
    carry: services_pb2.CorrelatedProposal | None = None
    while True:
        first = carry
        carry = None
        while first is None:
            try:
                first = q.get(timeout=idle_s)
            except queue.Empty:
                if on_idle():
                    return
                continue
            if first is None:
                return
        items = [first]
        size = first.ByteSize()
        budget = max_bytes()
        end = False
        while len(items) < MAX_SEND_ITEMS:
            try:
                nxt = q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                end = True
                break
            nsize = nxt.ByteSize()
            if size + nsize > budget:
                carry = nxt
                break
            items.append(nxt)
            size += nsize
        yield services_pb2.ProposalBatch(items=items)
        if end:
            return


class StreamBroken(RxError):
    """The stream a proposal was sent on failed before it was answered (retryable)."""


SUSPECT_S = 15.0  # how long an organisation that did not answer is left out of plans
UNREACHABLE_REASONS = frozenset({"TIMEOUT", "SERVICE_UNAVAILABLE", "DEADLINE_EXCEEDED", "RPC_FAILED"})


class PendingEndorsement:
    """One remote endorsement in flight: :meth:`result` waits for it (in the caller's thread).

    The peers of the organisation are asked in turn; the next one only after the current
    one failed or timed out (each with the full per-peer timeout, as the unary calls were).
    A proposal whose stream broke is sent once more to the same peer on a fresh stream
    within what is left of that peer's timeout (endorsing is read-only, so a repeat is
    harmless): a peer that restarted while the stream sat idle is not counted as failed,
    and a peer that is down fails the new stream at once.
    """

    def __init__(self, owner: RemoteEndorsers, org: str, signed: transaction_pb2.SignedProposal) -> None:
        self._owner = owner
        self.org = org
        self._signed = signed
        self._peers = owner.peer_streams(org)
        self._index = 0
        self._last: RxError | None = None
        self._cid = 0
        self._fut: Future[transaction_pb2.ProposalResponse] | None = None
        self._deadline = 0.0
        self._resent = False
        self._start()

    def _start(self) -> None:
        """Send to the current peer by stream (unary peers are called in :meth:`result`)."""
        self._fut = None
        self._resent = False
        self._deadline = self._owner.clock() + self._owner.timeout_s
        while self._index < len(self._peers):
            peer = self._peers[self._index]
            if peer.unary():
                return
            try:
                self._cid, self._fut = peer.send(self._signed)
                return
            except RxError as err:
                self._last = err
                self._index += 1

    def result(self) -> transaction_pb2.ProposalResponse:
        """The first peer's answer that is a ProposalResponse; RxError if none answered."""
        try:
            answer = self._result()
        except RxError as err:
            if err.reason in UNREACHABLE_REASONS:  # not a refusal of this proposal
                self._owner._note(self.org, answered=False)
            raise
        self._owner._note(self.org, answered=True)
        return answer

    def _result(self) -> transaction_pb2.ProposalResponse:
        while self._index < len(self._peers):
            peer = self._peers[self._index]
            fut = self._fut
            if fut is None:
                try:
                    return self._owner.unary(peer.ep, self._signed)
                except RxError as err:
                    self._last = err
            else:
                left = self._deadline - self._owner.clock()
                try:
                    return fut.result(timeout=max(left, 0.0))
                except FutureTimeout:
                    peer.forget(self._cid)
                    self._last = RxError(
                        "TIMEOUT", f"{peer.ep.name}: no answer within {self._owner.timeout_s:g} s")
                except StreamBroken as err:
                    self._last = err
                    if not self._resent and left > 0:
                        self._resent = True
                        try:
                            self._cid, self._fut = peer.send(self._signed)
                            continue
                        except RxError as again:
                            self._last = again
                except RxError as err:
                    if err.reason == STREAM_UNIMPLEMENTED:
                        self._fut = None  # same peer again, by unary call
                        continue
                    self._last = err
            self._index += 1
            self._start()
        raise self._last or RxError("SERVICE_UNAVAILABLE", f"no peer of {self.org} is configured")


class RemoteEndorsers:
    """Endorser streams per peer endpoint, grouped by organisation."""

    def __init__(
        self, peers: Sequence[Endpoint], channels: ChannelFactory, timeout_s: float = 30.0,
        clock: Clock = time.monotonic, *, use_stream: bool = True,
        message_bound: Callable[[], int] | None = None,
    ) -> None:
        """``use_stream=False`` asks every peer by unary ProcessProposal calls (benchmarks);
        ``message_bound`` is the gRPC message bound the peers' servers hold to (none: requests
        carry up to :data:`MAX_SEND_BYTES`)."""
        self._by_org: dict[str, list[Endpoint]] = {}
        for ep in peers:
            self._by_org.setdefault(ep.org, []).append(ep)
        self._channels = channels
        self.timeout_s = timeout_s
        self.clock = clock
        self._use_stream = use_stream
        self._message_bound = message_bound
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stubs: dict[str, services_pb2_grpc.EndorserStub] = {}
        self._streams: dict[str, _PeerStream] = {}
        self._org_streams: dict[str, list[_PeerStream]] = {}
        self._suspect_until: dict[str, float] = {}

    def orgs(self) -> list[str]:
        """Organisations with at least one remote peer, in configuration order."""
        return list(self._by_org)

    def suspects(self) -> set[str]:
        """Organisations none of whose peers answered in time recently (for SUSPECT_S):
        plans leave them out while the policy can be met without them, so a stalled peer
        does not cost every transaction routed to it the full timeout."""
        if not self._suspect_until:  # the usual case (read without the lock, as in _note)
            return set()
        now = self.clock()
        with self._lock:
            return {org for org, until in self._suspect_until.items() if until > now}

    def _note(self, org: str, answered: bool) -> None:
        if answered and org not in self._suspect_until:  # the usual case: nothing to clear
            return
        with self._lock:
            if answered:
                self._suspect_until.pop(org, None)
            else:
                self._suspect_until[org] = self.clock() + SUSPECT_S

    def _stub(self, ep: Endpoint) -> services_pb2_grpc.EndorserStub:
        with self._lock:
            stub = self._stubs.get(ep.target)
            if stub is None:
                stub = self._stubs[ep.target] = services_pb2_grpc.EndorserStub(
                    self._channels(ep.target)
                )
            return stub

    def peer_streams(self, org: str) -> list[_PeerStream]:
        """The streams to ``org``'s peers, in configuration order (created lazily)."""
        known = self._org_streams.get(org)
        if known is not None:
            return known
        out = []
        for ep in self._by_org.get(org, []):
            stub = self._stub(ep)
            with self._lock:
                stream = self._streams.get(ep.target)
                if stream is None:
                    stream = self._streams[ep.target] = _PeerStream(
                        ep, stub, self._ids, self.clock, use_stream=self._use_stream,
                        message_bound=self._message_bound)
            out.append(stream)
        with self._lock:
            self._org_streams[org] = out
        return out

    def streams_opened(self) -> int:
        """How many ProcessProposals streams were opened (reconnections included)."""
        with self._lock:
            return sum(s.opened for s in self._streams.values())

    def begin(self, org: str, signed: transaction_pb2.SignedProposal) -> PendingEndorsement:
        """Send ``signed`` to ``org`` now; wait for the answer with ``.result()``."""
        return PendingEndorsement(self, org, signed)

    def endorse(
        self, org: str, signed: transaction_pb2.SignedProposal
    ) -> transaction_pb2.ProposalResponse:
        """Ask the peers of ``org`` in turn; the first answer wins. RxError otherwise."""
        return self.begin(org, signed).result()

    def unary(self, ep: Endpoint, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        """One unary ProcessProposal call (peers without the stream)."""
        try:
            resp: transaction_pb2.ProposalResponse = self._stub(ep).ProcessProposal(
                signed, timeout=self.timeout_s
            )
            return resp
        except grpc.RpcError as exc:
            details = exc.details() if callable(getattr(exc, "details", None)) else ""
            raise RxError(reason_from_rpc_error(exc), f"{ep.name}: {details}") from None

    def close(self) -> None:
        """Cancel every stream; later calls fail with SERVICE_UNAVAILABLE."""
        with self._lock:
            streams = list(self._streams.values())
        for s in streams:
            s.close()
