"""Submits envelopes to the ordering service over long-lived Broadcast streams.

One bidi stream per orderer, opened lazily and shared by every caller: requests are
written in order and the orderer answers each one in order, so answers are matched to a
FIFO of pending futures. When the stream breaks, every pending envelope is failed with
SERVICE_UNAVAILABLE and :meth:`BroadcastClient.submit` retries on the next orderer (round
robin, bounded attempts and backoff). Resubmitting is safe: a tx id is fixed by its
creator and the validator marks a second copy DUPLICATE_TXID.

Outcomes after a retry: an attempt whose answer was lost (timeout, broken stream, the
orderer's SERVICE_UNAVAILABLE/TIMEOUT) may still have been ordered. A later attempt refused
for a reason that could have gone the other way for that first copy (CLOCK_SKEW as the tx
ages, UNKNOWN_CREATOR as a certificate expires, BAD_CONFIG_UPDATE once the update is in
force ...) is therefore answered COMMIT_UNKNOWN, never as a definite refusal: the caller
must not propose the transaction again. Refusals decided by the envelope's bytes alone
(:data:`DETERMINISTIC_REFUSALS`) stay definite.

Leader following (optional, ``raft_targets`` given): a follower orderer re-verifies and
forwards every envelope to the Raft leader, so a background thread asks an orderer's
Admin.Status for the current leader every ``leader_poll_s`` (one bounded unary call) and
moves the stream to the leader's endpoint. The old stream is half-closed, not cancelled:
the orderer still answers the envelopes it holds, so a move never resubmits anything. An
orderer whose stream just failed is not moved back to for a cool-down, so failover wins
over a leader the peer cannot reach.

Stalls: a watchdog drops a stream (its pending envelopes then fail over) when its oldest
envelope waited longer than ``answer_timeout_s``, or sooner when nothing was answered for
``stall_s`` and the orderer does not answer Admin.Status within ``probe_timeout_s`` (a
paused, SIGSTOPped or hung process; a live orderer that is only slow keeps its stream).
Without this, a paused Raft leader held every caller for the whole answer timeout while
the other orderers had elected a new leader within a second.

Batching: envelopes go out on AtomicBroadcast.BroadcastBatch, whatever is queued when the
previous message has been written travelling as one EnvelopeBatch (see :class:`_Stream`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from node.config import Endpoint
from node.errors import ENVELOPE_REFUSALS, RxError, reason_from_rpc_error
from node.msgbound import budget_reader
from node.orderer.envelope_batch import encode_batch
from node.stream_caps import TOO_MANY_STREAMS

_log = logging.getLogger(__name__)

ChannelFactory = Callable[[str], grpc.Channel]
# Raft id -> "host:port" of every orderer in the committed configuration ({} when unknown).
RaftTargets = Callable[[], Mapping[int, str]]
# Refusals worth retrying on another orderer (or after a pause on the same one).
# ORDERER_CLOCK_SKEW: the orderers' clocks disagree (the leader hands over, or another
# orderer takes the envelope), not the client's fault
RETRYABLE = frozenset({"SERVICE_UNAVAILABLE", "NOT_LEADER", "NO_LEADER", "TIMEOUT", "STOPPING",
                       "ORDERER_CLOCK_SKEW"})
# Refusals every orderer gives an envelope at any time (its bytes decide): definite even
# after an attempt whose answer was lost.
DETERMINISTIC_REFUSALS = ENVELOPE_REFUSALS
# Retryable answers after which the envelope may have been ordered all the same.
_AMBIGUOUS = frozenset({"SERVICE_UNAVAILABLE", "TIMEOUT"})
COMMIT_UNKNOWN = "COMMIT_UNKNOWN"
_END = object()


class _NotSent(RxError):
    """The stream was closed before the envelope was queued on it: it never left."""


def _settle(resp: services_pb2.BroadcastResponse, lost: str) -> services_pb2.BroadcastResponse:
    """The final answer: ``resp``, unless it refuses an envelope that an earlier attempt
    (lost: why its answer was lost, "" if none) may have had ordered (module docstring)."""
    if resp.accepted or not lost or resp.reason in DETERMINISTIC_REFUSALS:
        return resp
    return services_pb2.BroadcastResponse(
        tx_id=resp.tx_id, accepted=False, reason=COMMIT_UNKNOWN,
        message=f"an earlier attempt may have been ordered ({lost}); a retry was refused: "
                f"{resp.reason} {resp.message}",
    )


class _Stream:
    """One open broadcast stream to one orderer.

    Batched (default): envelopes queued while the previous message was being written go
    out together as one EnvelopeBatch on AtomicBroadcast.BroadcastBatch (at most
    ``max_batch`` envelopes / ``max_batch_bytes()`` bytes; never waiting to fill a batch); each
    answer message carries the answers of one or more envelopes, in order. An orderer
    without BroadcastBatch (UNIMPLEMENTED before any answer) gets the same envelopes again
    on the one-envelope-per-message Broadcast (nothing was processed, so nothing repeats).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        channel: grpc.Channel,
        clock: Callable[[], float],
        *,
        batched: bool = True,
        max_batch: int = 256,
        max_batch_bytes: Callable[[], int] = lambda: 1024 * 1024,
        on_message: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._on_message = on_message
        self._channel = channel
        self._clock = clock
        self._max_batch = max_batch
        self._max_bytes = max_batch_bytes
        self._pending: deque[tuple[Future[services_pb2.BroadcastResponse], bytes, float]] = deque()
        self._lock = threading.Lock()
        self.alive = True
        self.finished = threading.Event()  # set when the reader has seen the stream end
        self.moved = False  # half-closed because new envelopes go to the leader now
        self.last_answer_at = clock()
        self.messages_sent = 0  # stream messages written (batching metric)
        self._answered = 0
        self.batched = batched
        self._requests: queue.Queue[Any] = queue.Queue()
        self._call: Any = self._open_call()
        self._reader = threading.Thread(
            target=self._read, name=f"broadcast-{endpoint.name}", daemon=True
        )
        self._reader.start()

    def _open_call(self) -> Any:
        if self.batched:
            call = self._channel.stream_stream(
                "/rxchain.v1.AtomicBroadcast/BroadcastBatch",
                request_serializer=None,
                response_deserializer=services_pb2.BroadcastBatchResponse.FromString,
            )
            return call(self._iter_batches(self._requests))
        call = self._channel.stream_stream(
            "/rxchain.v1.AtomicBroadcast/Broadcast",
            request_serializer=None,
            response_deserializer=services_pb2.BroadcastResponse.FromString,
        )
        return call(self._iter_single(self._requests))

    def _iter_single(self, requests: queue.Queue[Any]) -> Iterator[bytes]:
        while True:
            item = requests.get()
            if item is _END:
                return
            self._sent_one()
            yield item

    def _iter_batches(self, requests: queue.Queue[Any]) -> Iterator[bytes]:
        carry: Any = None
        while True:
            item = carry if carry is not None else requests.get()
            carry = None
            if item is _END:
                return
            batch = [item]
            size = len(item)
            budget = self._max_bytes()  # read per message: the bound in force may change
            while len(batch) < self._max_batch:
                try:
                    nxt = requests.get_nowait()
                except queue.Empty:
                    break
                if nxt is _END or size + len(nxt) > budget:
                    carry = nxt
                    break
                batch.append(nxt)
                size += len(nxt)
            self._sent_one()
            yield encode_batch(batch)

    def _sent_one(self) -> None:
        self.messages_sent += 1
        if self._on_message is not None:
            self._on_message()

    def send(
        self, envelope: transaction_pb2.Envelope, now: float
    ) -> Future[services_pb2.BroadcastResponse]:
        fut: Future[services_pb2.BroadcastResponse] = Future()
        raw = envelope.SerializeToString()
        with self._lock:
            if not self.alive:
                fut.set_exception(_NotSent("SERVICE_UNAVAILABLE", "stream closed"))
                return fut
            self._pending.append((fut, raw, now))
            self._requests.put(raw)  # under the lock: queue order == pending order
        return fut

    def _on_answers(self, answers: Sequence[services_pb2.BroadcastResponse]) -> None:
        """Match answers to the oldest pending envelopes (one lock round per message)."""
        with self._lock:
            futs = [self._pending.popleft()[0] for _ in range(min(len(answers), len(self._pending)))]
            self._answered += len(answers)
            self.last_answer_at = self._clock()
        for fut, resp in zip(futs, answers, strict=False):
            if not fut.done():
                fut.set_result(resp)

    def _read(self) -> None:
        while True:
            try:
                for resp in self._call:
                    self._on_answers(resp.responses if self.batched else (resp,))
                err = RxError("SERVICE_UNAVAILABLE", f"{self.endpoint.name} closed the stream")
            except grpc.RpcError as exc:
                if self._fall_back(exc):
                    continue
                err = RxError("SERVICE_UNAVAILABLE", f"{self.endpoint.name}: {exc.code()}")
                if reason_from_rpc_error(exc) == TOO_MANY_STREAMS:
                    # refused as it opened (the orderer's stream caps), before any envelope was
                    # read: none can have been ordered, a retry elsewhere is no resubmission
                    err = _NotSent("SERVICE_UNAVAILABLE", f"{self.endpoint.name}: {TOO_MANY_STREAMS}")
            break
        self._fail(err)
        self.finished.set()

    def _fall_back(self, exc: grpc.RpcError) -> bool:
        """Reopen on Broadcast when the orderer has no BroadcastBatch (nothing answered)."""
        code = exc.code() if hasattr(exc, "code") else None
        with self._lock:
            if not self.batched or code != grpc.StatusCode.UNIMPLEMENTED or self._answered:
                return False
            if not self.alive and not self.moved:
                return False  # closing
            old = self._requests
            self._requests = queue.Queue()
            self.batched = False
            for _, raw, _ in self._pending:
                self._requests.put(raw)
            if self.moved:
                self._requests.put(_END)
            old.put(_END)
            self._call = self._open_call()
        _log.info("event=broadcast_batch_unsupported orderer=%s", self.endpoint.name)
        return True

    def _fail(self, err: RxError) -> None:
        with self._lock:
            self.alive = False
            pending = [fut for fut, _, _ in self._pending]
            self._pending.clear()
        for fut in pending:
            if not fut.done():
                fut.set_exception(err)

    def oldest_pending(self) -> float | None:
        """Send time of the oldest unanswered envelope."""
        with self._lock:
            return self._pending[0][2] if self._pending else None

    def drain(self) -> None:
        """Half-close: no new envelopes; the orderer answers those it holds, then ends."""
        with self._lock:
            self.alive = False
            self.moved = True
            self._requests.put(_END)

    def close(self) -> None:
        with self._lock:
            self.alive = False
            self._requests.put(_END)
            call = self._call
        call.cancel()
        self._fail(RxError("SERVICE_UNAVAILABLE", "client closing"))


class BroadcastClient:
    """Shared, failover-capable submitter (see module docstring)."""

    def __init__(
        self,
        orderers: Sequence[Endpoint],
        channels: ChannelFactory,
        *,
        attempts: int = 6,
        answer_timeout_s: float = 10.0,
        backoff_s: float = 0.1,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        raft_targets: RaftTargets | None = None,
        leader_poll_s: float = 2.0,
        status_timeout_s: float = 1.0,
        stall_s: float = 0.5,
        probe_timeout_s: float = 1.0,
        batched: bool = True,
        max_batch: int = 256,
        max_batch_bytes: int = 1024 * 1024,
        message_bound: Callable[[], int] | None = None,
    ) -> None:
        if not orderers:
            raise RxError("BAD_CONFIG", "no orderers configured")
        self._clock = clock
        self._orderers = list(orderers)
        self._channels = channels
        self._attempts = attempts
        self._timeout = answer_timeout_s
        self._backoff = backoff_s
        self._closing = threading.Event()
        self._sleep = sleep or self._closing.wait
        self._lock = threading.Lock()
        self._index = 0
        self._stream: _Stream | None = None
        self._draining: list[_Stream] = []  # half-closed after a move to the leader
        self._failed_at: dict[str, float] = {}  # target -> when its stream last failed
        self._raft_targets = raft_targets
        self._leader_poll_s = leader_poll_s
        self._status_timeout = status_timeout_s
        self._status_channels: dict[str, grpc.Channel] = {}
        self._stall_s = stall_s
        self._probe_timeout = probe_timeout_s
        self._batched = batched
        self._max_batch = max_batch
        # envelope bytes of one EnvelopeBatch: the orderer's server refuses a message over its
        # bound as a whole (every envelope in it failed, outcome unknown)
        self._batch_bytes = budget_reader(message_bound, max_batch_bytes)
        self.resubmitted = 0  # at most this many envelopes were sent again after a stream failure
        self.messages_sent = 0  # stream messages written over all streams (batching metric)
        self._count_lock = threading.Lock()  # counters only (taken on gRPC's writer threads)
        self._watchdog = threading.Thread(target=self._watch, name="broadcast-watchdog",
                                          daemon=True)
        self._watchdog.start()
        self._poke = threading.Event()  # wakes the leader poller early (after a failover)
        self._poller: threading.Thread | None = None
        if raft_targets is not None:
            self._poller = threading.Thread(target=self._poll_leader, name="broadcast-leader",
                                            daemon=True)
            self._poller.start()

    def _watch(self) -> None:
        """Drop a stream that stalls (a paused or hung orderer): its pending envelopes fail
        over to the next orderer. Stalled: the oldest envelope waited longer than the answer
        timeout, or nothing was answered for ``stall_s`` while envelopes wait and the
        orderer does not answer Admin.Status within ``probe_timeout_s`` either."""
        while not self._closing.wait(min(0.25, self._timeout / 4, max(0.01, self._stall_s / 4))):
            self.check_streams()

    def check_streams(self) -> None:
        """One pass of the watchdog (public for tests)."""
        self._watch_draining()
        with self._lock:
            stream = self._stream
        if stream is not None and self._stalled(stream):
            _log.warning("event=broadcast_stalled orderer=%s", stream.endpoint.name)
            with self._lock:
                # The leader poller may have moved it to the draining list meanwhile.
                drained = stream in self._draining
                if drained:
                    self._draining.remove(stream)
            if drained:
                stream.close()
            else:
                self._rotate(stream)

    def _stalled(self, stream: _Stream) -> bool:
        oldest = stream.oldest_pending()
        if oldest is None:
            return False
        now = self._clock()
        if now - oldest > self._timeout:
            return True
        if now - oldest < self._stall_s or now - stream.last_answer_at < self._stall_s:
            return False
        return not self._probe(stream.endpoint)

    def _status_channel(self, ep: Endpoint) -> grpc.Channel:
        with self._lock:
            channel = self._status_channels.get(ep.target)
            if channel is None:
                channel = self._channels(ep.target)
                self._status_channels[ep.target] = channel
            return channel

    def _probe(self, ep: Endpoint) -> bool:
        """Whether ``ep`` answers Admin.Status in time (a paused process does not)."""
        try:
            services_pb2_grpc.AdminStub(self._status_channel(ep)).Status(
                services_pb2.StatusRequest(), timeout=self._probe_timeout
            )
        except grpc.RpcError:
            return False
        return True

    def _watch_draining(self) -> None:
        """Forget drained streams; close one whose answers stall (its envelopes then retry)."""
        with self._lock:
            draining = list(self._draining)
        for stream in draining:
            stalled = not stream.finished.is_set() and self._stalled(stream)
            if stream.finished.is_set() or stalled:
                with self._lock:
                    if stream in self._draining:
                        self._draining.remove(stream)
                if stalled:
                    _log.warning("event=broadcast_stalled orderer=%s draining=1", stream.endpoint.name)
                    stream.close()

    def _count_message(self) -> None:
        with self._count_lock:
            self.messages_sent += 1

    def _count_resubmit(self) -> None:
        with self._count_lock:
            self.resubmitted += 1

    def _current(self) -> _Stream:
        with self._lock:
            if self._stream is None or not self._stream.alive:
                ep = self._orderers[self._index % len(self._orderers)]
                self._stream = _Stream(
                    ep, self._channels(ep.target), self._clock, batched=self._batched,
                    max_batch=self._max_batch, max_batch_bytes=self._batch_bytes,
                    on_message=self._count_message,
                )
            return self._stream

    def _rotate(self, failed: _Stream) -> None:
        with self._lock:
            if self._stream is not failed:
                return
            self._stream = None
            self._index += 1
            self._failed_at[failed.endpoint.target] = self._clock()
        self._poke.set()
        # Outside the lock: closing fails the pending futures, whose callbacks may retry.
        failed.close()

    @property
    def current_orderer(self) -> str:
        """Name of the orderer new envelopes go to."""
        with self._lock:
            if self._stream is not None and self._stream.alive:
                return self._stream.endpoint.name
            return self._orderers[self._index % len(self._orderers)].name

    def _poll_leader(self) -> None:
        """Every ``leader_poll_s``, or at once after a failover (``_poke``)."""
        while not self._closing.is_set():
            self._poke.wait(self._leader_poll_s)
            self._poke.clear()
            if self._closing.is_set():
                return
            try:
                self.follow_leader()
            except Exception:  # noqa: BLE001 -- a bad poll must never stop the poller
                _log.exception("event=broadcast_leader_poll_failed")

    def _ask_leader(self) -> int:
        """The Raft leader id reported by the first orderer that answers (0: unknown)."""
        with self._lock:
            start = self._index
        n = len(self._orderers)
        for i in range(n):
            ep = self._orderers[(start + i) % n]
            try:
                status = services_pb2_grpc.AdminStub(self._status_channel(ep)).Status(
                    services_pb2.StatusRequest(), timeout=self._status_timeout
                )
            except grpc.RpcError:
                continue
            if status.raft_leader:
                return int(status.raft_leader)
        return 0

    def follow_leader(self) -> str | None:
        """Move new envelopes to the Raft leader's endpoint; the leader's name, if known.

        Called by the poller thread; public so a caller holding a hint can ask at once.
        """
        if self._raft_targets is None or self._closing.is_set():
            return None
        try:
            targets = self._raft_targets()
        except RxError:  # e.g. the configuration is not committed yet
            return None
        leader = self._ask_leader()
        target = targets.get(leader) if leader else None
        index = next((i for i, ep in enumerate(self._orderers) if ep.target == target), None)
        if index is None:
            return None
        endpoint = self._orderers[index]
        old: _Stream | None = None
        with self._lock:
            if self._closing.is_set():
                return None
            failed = self._failed_at.get(endpoint.target)
            if failed is not None and self._clock() - failed < 5 * self._leader_poll_s:
                return endpoint.name  # it just failed for us: stay on the failover choice
            current = self._orderers[self._index % len(self._orderers)]
            if current.target == endpoint.target:
                return endpoint.name
            self._index = index
            if self._stream is not None:
                old, self._stream = self._stream, None
                self._draining.append(old)
        if old is not None:
            old.drain()
        _log.info("event=broadcast_follow_leader orderer=%s", endpoint.name)
        return endpoint.name

    def submit(self, envelope: transaction_pb2.Envelope) -> services_pb2.BroadcastResponse:
        """Send one envelope; the orderer's answer (accepted, or refused with a reason).

        Raises RxError(SERVICE_UNAVAILABLE) when no orderer answered after all attempts.
        A refusal after an attempt whose answer was lost is COMMIT_UNKNOWN (module docstring).
        """
        last = "no attempt made"
        lost = ""  # why an earlier attempt's answer was lost (it may have been ordered)
        delay = self._backoff
        for attempt in range(self._attempts):
            if self._closing.is_set():
                break
            stream = self._current()
            try:
                resp = stream.send(envelope, self._clock()).result(timeout=self._timeout)
            except FutureTimeout:
                last = lost = f"{stream.endpoint.name} did not answer in {self._timeout}s"
                self._rotate(stream)
            except RxError as err:
                last = err.message
                if not isinstance(err, _NotSent):
                    lost = f"{stream.endpoint.name}: {last}"
                self._count_resubmit()
                if stream.moved and not self._closing.is_set():
                    continue  # raced with a move to the leader: resend there at once
                self._rotate(stream)
            else:
                if resp.accepted or resp.reason not in RETRYABLE:
                    return _settle(resp, lost)
                last = f"{stream.endpoint.name}: {resp.reason} {resp.message}"
                if resp.reason in _AMBIGUOUS:
                    lost = last
                self._rotate(stream)
            _log.info("event=broadcast_retry attempt=%d detail=%r", attempt + 1, last)
            self._sleep(delay)
            delay = min(delay * 2, 2.0)
        raise RxError("SERVICE_UNAVAILABLE", f"ordering service unavailable: {last}")

    def submit_async(
        self,
        envelope: transaction_pb2.Envelope,
        callback: Callable[[services_pb2.BroadcastResponse | RxError], None],
        _attempt: int = 0,
        _delay: float = 0.0,
        _lost: str = "",
    ) -> None:
        """Send without blocking; ``callback`` gets the orderer's answer or an RxError.

        The same failover rules as :meth:`submit`; retries are scheduled on timers, so a
        caller with thousands of envelopes in flight needs no thread per envelope (the
        orderer answers each envelope within its commit timeout).
        """
        if self._closing.is_set():
            callback(RxError("SERVICE_UNAVAILABLE", "client closing"))
            return
        delay = _delay or self._backoff
        stream = self._current()

        def retry(detail: str, maybe_ordered: bool) -> None:
            lost = detail if maybe_ordered else _lost
            if stream.moved and _attempt + 1 < self._attempts and not self._closing.is_set():
                self.submit_async(envelope, callback, _attempt + 1, delay, lost)  # moved to the leader
                return
            self._rotate(stream)
            if _attempt + 1 >= self._attempts or self._closing.is_set():
                callback(RxError("SERVICE_UNAVAILABLE", f"ordering service unavailable: {detail}"))
                return
            timer = threading.Timer(
                delay, self.submit_async,
                (envelope, callback, _attempt + 1, min(delay * 2, 2.0), lost),
            )
            timer.daemon = True
            timer.start()

        def on_done(fut: Future[services_pb2.BroadcastResponse]) -> None:
            exc = fut.exception()
            if exc is not None:
                self._count_resubmit()
                retry(f"{stream.endpoint.name}: {exc}", not isinstance(exc, _NotSent))
                return
            resp = fut.result()
            if resp.accepted or resp.reason not in RETRYABLE:
                callback(_settle(resp, _lost))
            else:
                retry(f"{stream.endpoint.name}: {resp.reason} {resp.message}", resp.reason in _AMBIGUOUS)

        stream.send(envelope, self._clock()).add_done_callback(on_done)

    def close(self) -> None:
        """Close the open stream."""
        self._closing.set()
        self._poke.set()
        with self._lock:
            stream, self._stream = self._stream, None
            draining, self._draining = self._draining, []
        if stream is not None:
            stream.close()
        for old in draining:
            old.close()
        if self._poller is not None:
            self._poller.join(self._status_timeout * len(self._orderers) + 1.0)
        with self._lock:
            channels, self._status_channels = list(self._status_channels.values()), {}
        for channel in channels:
            channel.close()
