"""Follower -> leader forwarding over Cluster.ForwardBatch (both sides).

Client side (:class:`LeaderForwarder`): one stream per leader; every envelope queued while
the previous message was being written travels in the next ``EnvelopeBatch`` (bounded by
``max_batch`` envelopes and ``max_batch_bytes``; the sender never waits to fill a batch).
The leader answers in order, several answers per message; answers are matched to the
tickets of the sent envelopes in order. The stream opens with an empty message the leader
answers with an empty one; envelopes are sent only after that answer, so a stream that
cannot connect hands them back as never sent (NOT_LEADER: the broadcast handler
re-dispatches them, safe because they were never ordered).

Leader changes: a watcher compares ``leader_id()`` with each stream's leader at once when
the chain reports a leader change (:meth:`LeaderForwarder.leader_changed`, a chain leader
listener) and every ``watch_s``. When the Raft leader has moved away from a stream's
orderer, the envelopes still queued (never sent) are handed back at once as NOT_LEADER and
are re-dispatched to the new leader; the envelopes already sent keep waiting for the old
leader's answers (on a graceful hand-over it answers them at once) for at most
``moved_grace_s`` without any answer, then they are answered SERVICE_UNAVAILABLE, outcome
unknown (a paused or partitioned old leader), instead of waiting out the commit timeout.
Redials: a leader whose stream broke after it opened is dialled again ``redial_s`` later. One
that ended the stream before answering its handshake -- refused it (PERMISSION_DENIED:
NOT_AN_ORDERER, REVOKED_CERT, EXPIRED_CERT ... as the leader judges this orderer; RESOURCE_EXHAUSTED
TOO_MANY_STREAMS ...) or could not be reached -- is dialled again after a wait doubling with each
such failure in a row, up to ``refused_redial_max_s`` (3 s, as node.orderer.transport.PeerSender
backs off a refusing peer) and jittered by ``rand`` into its upper half, so that the followers a
leader refuses do not dial it in step. An answered handshake resets the wait, and so does
that orderer's election, as the chain reports it (``leader_changed``) or the watcher sees it.
Nothing waits for a dial: an envelope for a leader not to be dialled yet is answered at once,
never held past its deadline -- after a refusal SERVICE_UNAVAILABLE naming the leader's reason
("envelope not sent"; the leader is alive and would refuse it again), after a failure to reach
it NOT_LEADER (re-dispatched by the broadcast handler, at most once per 20 ms: a new leader may
be elected meanwhile). Before, a refused leader was dialled again every
0.2 s for as long as envelopes came, each dial a refusal (and a log line) at the leader, and
the envelopes went round the broadcast handler's re-dispatch until their deadline, answered
"leader changed" without the reason. Logged ``forward_refused`` (the first of a leader and
reason at once, then at most one line per interval).

A leader that leads again while its stream drains (a flapping leader) gets that stream back
(one stream per leader) once the watcher sees it lead or an envelope is forwarded to it: a new
stream per return went past the leader's cap on one orderer's ForwardBatch streams, which
cancelled the oldest, its envelopes' outcome unknown; and left to the old leaders' grace, its
sent envelopes were answered outcome unknown though it led again.

Server side (:class:`ForwardBatchService`): the caller must be an orderer of the current
configuration (TLS certificate), re-checked per message, and its streams are held under the
Cluster stream caps (:func:`hold_cluster_stream`); the forwarded envelopes, already
validated by the forwarding orderer, are parsed again and reach the chain in one hand-off per
message (``BroadcastHandler.submit_local_many``); the config's checks come as the block is cut.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import grpc
from rxchain.v1 import identity_pb2, services_pb2

from node.crypto.tls import peer_identity
from node.errors import RxError, abort_with, reason_from_rpc_error
from node.orderer.broadcast import BroadcastHandler, batch_bytes, decode_batch
from node.orderer.envelope_batch import BatchDecodeError, encode_batch
from node.orderer.metrics import OrdererMetrics
from node.orderer.refusals import EveryInterval, NonMemberRefusals
from node.orderer.streams import coalesced_answers, refusal_ends, stream_error_logger
from node.orderer.ticket import NOT_LEADER, SERVICE_UNAVAILABLE, Outcome, Ticket
from node.stream_caps import ClusterCaps, StreamSlot

FORWARD_READ_AHEAD_BYTES = 32 * 1024 * 1024  # envelope bytes a ForwardBatch stream reads ahead

_log = logging.getLogger(__name__)

ChannelFactory = Callable[[str], grpc.Channel]
FORWARD_BATCH_METHOD = "/rxchain.v1.Cluster/ForwardBatch"
# the longest wait, growing, before an orderer that refused or could not be reached is dialled
# again (this forwarder's leader; node.orderer.transport.PeerSender's Raft peers)
REFUSED_REDIAL_MAX_S = 3.0
# The status codes with which a leader's server ended a stream it refused (it was reached and
# answered): a leader refusing this orderer refuses it again, so its envelopes are answered
# SERVICE_UNAVAILABLE with its reason until the next dial. Any other failure before the
# handshake (UNAVAILABLE, DEADLINE_EXCEEDED ...): the leader could not be reached; NOT_LEADER.
_REFUSALS = frozenset({
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED,
})


class Members(Protocol):
    """The orderer set (``transport.Membership``)."""

    def targets(self) -> dict[int, str]:
        """raft id -> address of every member."""
        ...

    def raft_id_of(self, identity: identity_pb2.Identity | None) -> int | None:
        """Raft id of the orderer presenting ``identity``, or None."""
        ...


def _not_sent(why: str) -> Outcome:
    return Outcome(NOT_LEADER, f"{why}; envelope not sent")


class _LeaderStream:
    """One ForwardBatch stream to one leader (see the module docstring)."""

    def __init__(
        self,
        leader_id: int,
        target: str,
        channel_factory: ChannelFactory,
        clock: Callable[[], float],
        max_batch: int,
        max_batch_bytes: Callable[[], int],
    ) -> None:
        self.leader_id = leader_id
        self._clock = clock
        self._max_batch = max_batch
        self._max_bytes = max_batch_bytes
        self._channel = channel_factory(target)
        self._queue: deque[tuple[bytes, Ticket]] = deque()
        self._inflight: deque[Ticket] = deque()
        self._cond = threading.Condition()
        self._open = threading.Event()
        self.broken = False
        self._ending = False
        self.last_answer_at = clock()
        # how the stream ended before its handshake was answered (set before ``broken``): its
        # gRPC status code and "REASON: detail", for the redial wait and the envelopes' answers
        self.ended_code: grpc.StatusCode | None = None
        self.ended_why = ""
        call = self._channel.stream_stream(
            FORWARD_BATCH_METHOD,
            request_serializer=None,
            response_deserializer=services_pb2.BroadcastBatchResponse.FromString,
        )
        self._responses = call(self._requests())
        self._thread = threading.Thread(target=self._receive, name="forward-recv", daemon=True)
        self._thread.start()

    def submit_many(self, items: Sequence[tuple[bytes, Ticket]]) -> None:
        with self._cond:  # never enqueue after _break emptied the queue
            if self.broken or self._ending:
                for _, ticket in items:
                    ticket.resolve(_not_sent(f"leader {self.leader_id} unreachable"))
                return
            was_empty = not self._queue
            self._queue.extend(items)
            if was_empty:
                self._cond.notify()

    def inflight(self) -> int:
        with self._cond:
            return len(self._inflight)

    @property
    def opened(self) -> bool:
        """The leader answered the handshake (it admitted the stream)."""
        return self._open.is_set()

    def _requests(self) -> Iterator[bytes]:
        # (a stream whose leader moved sends nothing more, but is not half-closed: its leader
        # may come back while it drains, and it gets the stream back -- LeaderForwarder._resume)
        yield b""  # handshake: an empty EnvelopeBatch
        while not self._open.wait(0.1):
            if self.broken:
                return
        while True:
            with self._cond:
                while not self._queue and not self.broken:
                    self._cond.wait(0.5)
                if self.broken:
                    return
                batch: list[bytes] = []
                size = 0
                budget = self._max_bytes()  # read per message: the bound in force may change
                while self._queue and len(batch) < self._max_batch:
                    envelope, ticket = self._queue[0]
                    if batch and size + len(envelope) > budget:
                        break
                    self._queue.popleft()
                    batch.append(envelope)
                    size += len(envelope)
                    self._inflight.append(ticket)
            yield encode_batch(batch)

    def _receive(self) -> None:
        try:
            for resp in self._responses:
                if not self._open.is_set():
                    self._open.set()  # the handshake answer
                    continue
                with self._cond:
                    n = min(len(resp.responses), len(self._inflight))
                    tickets = [self._inflight.popleft() for _ in range(n)]
                    self.last_answer_at = self._clock()
                for ticket, ans in zip(tickets, resp.responses, strict=False):
                    ticket.resolve(Outcome("" if ans.accepted else ans.reason, ans.message))
        except grpc.RpcError as exc:
            if not self._open.is_set():
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                details = exc.details() if callable(getattr(exc, "details", None)) else ""
                reason = reason_from_rpc_error(exc)
                # (the reason code leads the details of an rxchain abort: not repeated)
                self.ended_why = str(details or "") if str(details or "").startswith(reason) \
                    else f"{reason}: {details or ''}".rstrip(": ")
                self.ended_code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            if not self.broken:  # (not closed by us: a drained stream's end is no news)
                _log.info("event=forward_stream_ended leader=%d error=%r", self.leader_id,
                          str(exc.code() if hasattr(exc, "code") else exc))
        finally:
            self.fail("forward stream to the leader broke")

    def stop_sending(self) -> list[Ticket]:
        """Leader moved: take no more envelopes; the tickets of the never-sent ones, to be
        handed back NOT_LEADER (:func:`hand_back`). Those sent still get their answers."""
        with self._cond:
            self._ending = True
            queued = [t for _, t in self._queue]
            self._queue.clear()
            return queued

    def resume(self) -> None:
        """Its leader leads again (within the grace): take envelopes again."""
        with self._cond:
            self._ending = False

    def fail(self, why: str) -> None:
        """Break the stream: sent envelopes' outcome unknown, queued ones not sent."""
        with self._cond:
            self.broken = True
            inflight, self._inflight = list(self._inflight), deque()
            queued = [t for _, t in self._queue]
            self._queue.clear()
            self._cond.notify_all()
        for t in inflight:  # sent: the leader may have ordered them, outcome unknown
            t.resolve(Outcome(SERVICE_UNAVAILABLE, f"{why} (outcome unknown)"))
        for t in queued:  # never sent: safe to re-dispatch (NOT_LEADER is retried)
            t.resolve(_not_sent(f"leader {self.leader_id} unreachable"))

    def close(self) -> None:
        self.fail("forwarder closing")
        self._responses.cancel()  # type: ignore[no-untyped-call]
        self._channel.close()


class _Redial:
    """When a leader may be dialled again (``at``, the forwarder's clock) and why: after
    ``failures`` streams in a row it ended before their handshake (0: after a stream it had
    admitted), the last one ``refused`` by its server with ``code`` and ``why`` ("REASON:
    detail"), or not reached."""

    __slots__ = ("at", "code", "failures", "refused", "why")

    def __init__(self, at: float, failures: int, refused: bool = False, code: str = "", why: str = "") -> None:
        self.at = at
        self.failures = failures
        self.refused = refused
        self.code = code
        self.why = why

    def outcome(self, leader_id: int, left_s: float) -> Outcome:
        """The answer to an envelope for the leader until then (never sent)."""
        if self.refused:
            return Outcome(SERVICE_UNAVAILABLE, f"leader {leader_id} refused this orderer's forward stream "
                                                f"({self.code} {self.why}); dialled again in {left_s:.1f} s; "
                                                f"envelope not sent")
        why = f" ({self.code} {self.why})" if self.code else ""
        return _not_sent(f"leader {leader_id} unreachable{why}; dialled again in {left_s:.1f} s")


def hand_back(stream: _LeaderStream, queued: list[Ticket]) -> None:
    """Answer ``queued`` (never sent to ``stream``'s leader, who no longer leads) NOT_LEADER:
    re-dispatched by the broadcast handler."""
    for t in queued:
        t.resolve(_not_sent(f"orderer {stream.leader_id} no longer leads"))


class LeaderForwarder:
    """Follower side of Cluster.ForwardBatch (the broadcast handler's forwarder)."""

    def __init__(
        self,
        membership: Members,
        channel_factory: ChannelFactory,
        leader_id: Callable[[], int],
        *,
        clock: Callable[[], float] = time.monotonic,
        redial_s: float = 0.2,
        refused_redial_max_s: float = REFUSED_REDIAL_MAX_S,
        rand: Callable[[], float] = random.random,
        refused_lines: EveryInterval | None = None,
        watch_s: float = 0.25,
        moved_grace_s: float = 1.0,
        max_batch: int = 512,
        max_batch_bytes: int | Callable[[], int] = 4 * 1024 * 1024,
    ) -> None:
        """``max_batch_bytes``: envelope bytes of one forwarded message, or a function giving
        them (read per message: node.msgbound). A leader whose stream broke is dialled again
        ``redial_s`` (``clock``) later; one that refused the stream or could not be reached
        before its handshake after a wait doubling per such failure in a row, at most
        ``refused_redial_max_s``, times 0.5 to 1 by ``rand`` (a float in [0, 1)); a refusal
        logged as ``refused_lines`` lets (module doc)."""
        self._membership = membership
        self._factory = channel_factory
        self._leader_id = leader_id
        self._clock = clock
        self._redial_s = redial_s
        self._refused_redial_max_s = max(refused_redial_max_s, redial_s)
        self._rand = rand
        self._refused_lines = refused_lines if refused_lines is not None else EveryInterval()
        self._redials: dict[int, _Redial] = {}  # leader -> when it may be dialled again, and why
        self._last_leader = 0  # the leader the watcher saw last
        # the leaders the chain reported elected (leader_changed) since the lock was last taken
        # (appended without it: the driver thread must not block)
        self._elected: deque[int] = deque()
        self._watch_s = watch_s
        self._grace_s = moved_grace_s
        self._max_batch = max_batch
        self._max_bytes: Callable[[], int] = (
            max_batch_bytes if callable(max_batch_bytes) else lambda: max_batch_bytes)
        self._streams: dict[int, _LeaderStream] = {}
        self._moved: dict[_LeaderStream, float] = {}  # stream -> when its leader moved away
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="forward-watch", daemon=True)
        self._watcher.start()

    def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
        """Forward one envelope to ``leader_id``."""
        return self.submit_many(leader_id, [(envelope, tx_id)])[0]

    def submit_many(self, leader_id: int, items: Sequence[tuple[bytes, str]]) -> list[Ticket]:
        """Forward several (envelope, tx id) to ``leader_id`` in one hand-off."""
        tickets = [Ticket(tx_id) for _, tx_id in items]
        with self._lock:
            self._take_elected()
            stream = self._streams.get(leader_id) or self._resume(leader_id)
            if stream is None or stream.broken:
                if stream is not None:
                    del self._streams[leader_id]
                    self._broke(leader_id, stream)
                    stream.close()
                redial = self._redials.get(leader_id)
                now = self._clock()
                if redial is not None and now < redial.at:
                    # Not dialled again yet (module doc): answered at once, never held.
                    outcome = redial.outcome(leader_id, redial.at - now)
                    for t in tickets:
                        t.resolve(outcome)
                    return tickets
                target = self._membership.targets().get(leader_id)
                if target is None:
                    for t in tickets:
                        t.resolve(Outcome(SERVICE_UNAVAILABLE, f"leader {leader_id} unknown"))
                    return tickets
                stream = _LeaderStream(leader_id, target, self._factory, self._clock,
                                       self._max_batch, self._max_bytes)
                self._streams[leader_id] = stream
        stream.submit_many([(env, t) for (env, _), t in zip(items, tickets, strict=True)])
        return tickets

    def _take_elected(self) -> None:
        """(under the lock) A leader the chain reported newly elected is dialled at once,
        whatever it refused before (it may have restarted, its config caught up, this orderer's
        certificate renewed). Read from what the chain reported, not only from what the watcher
        sees when it runs: an envelope dispatched to the new leader before the watcher ran, or
        a leader that lost and regained the lead between two passes of the watcher, found its
        stale wait (up to 3 s: its envelopes answered SERVICE_UNAVAILABLE, not sent)."""
        while self._elected:
            self._redials.pop(self._elected.popleft(), None)

    def _broke(self, leader_id: int, stream: _LeaderStream) -> None:
        """(under the lock) When ``leader_id``, whose ``stream`` broke, may be dialled again:
        ``redial_s`` after a stream it had admitted; after a refusal or failure before the
        handshake, a wait doubling per such failure in a row, bounded and jittered (module doc)."""
        now = self._clock()
        before = self._redials.get(leader_id)
        if stream.opened:  # it had admitted the stream (a success: the wait starts over)
            self._redials[leader_id] = _Redial(now + self._redial_s, 0)
            return
        failures = (before.failures if before is not None else 0) + 1
        wait = min(self._redial_s * 2 ** min(failures, 32), self._refused_redial_max_s)
        wait *= 0.5 + 0.5 * min(max(self._rand(), 0.0), 1.0)
        code = stream.ended_code
        refused = code in _REFUSALS
        self._redials[leader_id] = _Redial(now + wait, failures, refused, code.name if code else "", stream.ended_why)
        if refused and code is not None:
            told = self._refused_lines.note((leader_id, stream.ended_why.split(":", 1)[0]))
            if told:
                _log.warning("event=forward_refused leader=%d code=%s reason=%r refused=%d retry_s=%.2f: the "
                             "leader refuses this orderer's ForwardBatch stream (its certificate, as the "
                             "leader's clock and config judge it? no orderer of the config in force there?); "
                             "envelopes for it are answered SERVICE_UNAVAILABLE until it is dialled again, "
                             "with a growing wait; at most one line per interval",
                             leader_id, code.name, stream.ended_why, told, wait)

    def _resume(self, leader_id: int) -> _LeaderStream | None:
        """(under the lock) The stream to ``leader_id`` that still drains since it moved away,
        given back to it (it leads again: a flapping leader), or None. A new stream per return
        went past the leader's cap on one orderer's ForwardBatch streams (two:
        node.stream_caps.ClusterCaps), which cancelled the oldest, still owed answers: the
        outcome of its envelopes unknown, though the leader ordered them."""
        stream = next((s for s in self._moved if s.leader_id == leader_id and not s.broken), None)
        if stream is None:
            return None
        del self._moved[stream]
        stream.resume()
        self._streams[leader_id] = stream
        _log.info("event=forward_leader_back leader=%d inflight=%d: the leader leads again; its "
                  "stream, still draining, is used again", leader_id, stream.inflight())
        return stream

    def check_leader(self) -> None:
        """One pass of the watcher (public for tests with an injected clock)."""
        leader = self._leader_id()
        now = self._clock()
        handed: list[tuple[_LeaderStream, list[Ticket]]] = []
        expired: list[_LeaderStream] = []
        with self._lock:
            self._take_elected()
            if leader != self._last_leader:
                # a leader newly elected is dialled at once, whatever it refused before (it may
                # have restarted, its config caught up, this orderer's certificate renewed)
                self._last_leader = leader
                self._redials.pop(leader, None)
            for rid, stream in list(self._streams.items()):
                if leader and rid != leader:
                    del self._streams[rid]
                    self._moved[stream] = now
                    # (under the lock: a return of its leader given it back cannot be undone)
                    handed.append((stream, stream.stop_sending()))
            if leader and leader not in self._streams:
                # its leader leads again: its stream is no old leader's, whose quiet grace would
                # close it (its envelopes' outcome unknown) unless a new one was forwarded first
                self._resume(leader)
            for stream, moved_at in list(self._moved.items()):
                quiet_since = max(moved_at, stream.last_answer_at)
                if stream.broken or stream.inflight() == 0 or now - quiet_since >= self._grace_s:
                    del self._moved[stream]
                    expired.append(stream)
        for stream, queued in handed:
            hand_back(stream, queued)
            _log.info("event=forward_leader_moved from=%d to=%d requeued=%d: queued envelopes "
                      "re-dispatched", stream.leader_id, leader, len(queued))
        for stream in expired:
            if stream.inflight():
                _log.warning("event=forward_unanswered leader=%d envelopes=%d grace_s=%.1f: the old "
                             "leader did not answer forwarded envelopes within the grace period after "
                             "the leader change", stream.leader_id, stream.inflight(), self._grace_s)
            stream.close()

    def leader_changed(self, leader_id: int) -> None:
        """Chain leader listener (driver thread, must not block): check streams at once; a
        leader newly elected is dialled at once (:meth:`_take_elected`)."""
        if leader_id:
            self._elected.append(leader_id)
        self._wake.set()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._watch_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check_leader()
            except Exception:  # noqa: BLE001 -- the watcher must keep running
                _log.exception("event=forward_watcher_failed")

    def close(self) -> None:
        """Close every stream and stop the watcher."""
        self._stop.set()
        self._wake.set()
        self._watcher.join(2)
        with self._lock:
            streams = [*self._streams.values(), *self._moved]
            self._streams, self._moved = {}, {}
        for s in streams:
            s.close()


def hold_cluster_stream(streams: ClusterCaps | None, context: grpc.ServicerContext, rid: int, what: str,
                        caller: identity_pb2.Identity | None = None) -> StreamSlot | None:
    """Hold a slot of ``streams`` (none: uncapped) for the member ``rid``'s ``what`` stream
    until the RPC ends, or abort it TOO_MANY_STREAMS (RESOURCE_EXHAUSTED) before a message is
    read: each holds a gRPC worker while it lasts, and a subverted or looping orderer opening
    streams without end took every worker of the others (Deliver, Broadcast, Admin, and the
    other orderers' Step streams: no Raft). ``caller`` (its TLS identity) is then checked
    again while the stream lasts (ClusterCaps.watch_with): an orderer removed, or whose
    certificate was revoked or expired, kept its idle streams and their slots. The slot the
    sweeper refuses, if any: the stream's handler ends it with its refusal (a Forward
    stream's: node.orderer.streams; a Step stream's: node.orderer.transport.ClusterService.step)."""
    if streams is None:
        return None
    try:
        return streams.admit(context, rid, what, caller, ends_itself=True).watched
    except RxError as err:
        abort_with(context, err)


class ForwardBatchService:
    """Leader side of Cluster.ForwardBatch."""

    def __init__(
        self,
        membership: Members,
        broadcast: BroadcastHandler,
        metrics: OrdererMetrics,
        commit_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        refusals: NonMemberRefusals | None = None,
        streams: ClusterCaps | None = None,
    ) -> None:
        """``refusals`` refuses (counts and logs) non-members, ``streams`` caps each member's
        streams (node.stream_caps; none: uncapped); both shared with ClusterService."""
        self._membership = membership
        self._streams = streams
        self._refusals = refusals if refusals is not None else NonMemberRefusals(metrics)
        self._broadcast = broadcast
        self._metrics = metrics
        self._commit_timeout_s = commit_timeout_s
        self._clock = clock

    def forward_batch(
        self, requests: Iterator[list[bytes] | BatchDecodeError], context: grpc.ServicerContext
    ) -> Iterator[services_pb2.BroadcastBatchResponse]:
        """Cluster.ForwardBatch: envelopes a follower validated, ordered if we lead."""
        ident = peer_identity(context)
        rid = self._membership.raft_id_of(ident)
        if rid is None:
            self._refusals.refuse(context, ident, "ForwardBatch")
        slot = hold_cluster_stream(self._streams, context, rid, "ForwardBatch", ident)

        def dispatch(batch: list[bytes] | BatchDecodeError) -> list[tuple[Ticket, float]]:
            if isinstance(batch, BatchDecodeError):
                bad = Ticket.done(Outcome("BAD_PAYLOAD", f"not an EnvelopeBatch: {batch}"))
                return [(bad, self._clock())]
            if self._membership.raft_id_of(ident) != rid:  # e.g. its certificate was rotated
                refused = Outcome(NOT_LEADER, "NOT_AN_ORDERER: forwarding orderer's certificate "
                                              "is not in the current configuration")
                return [(Ticket.done(refused), self._clock()) for _ in batch]
            deadline = self._clock() + self._commit_timeout_s
            return [(t, deadline) for t in self._broadcast.submit_local_many(batch)]

        def answer(item: tuple[Ticket, float]) -> services_pb2.BroadcastResponse:
            ticket, deadline = item
            outcome = ticket.wait(max(0.0, deadline - self._clock()))
            if outcome is None:
                outcome = Outcome(SERVICE_UNAVAILABLE, "not committed in time (outcome unknown)")
            return services_pb2.BroadcastResponse(
                accepted=outcome.accepted, reason=outcome.reason, message=outcome.message
            )

        return refusal_ends(context, slot, coalesced_answers(
            requests, dispatch, answer, lambda item: item[0].peek() is not None,
            lambda answers: services_pb2.BroadcastBatchResponse(responses=answers),
            on_error=stream_error_logger(_log, "forward"), weigh=batch_bytes, max_bytes=FORWARD_READ_AHEAD_BYTES,
            answer_bytes=self._broadcast.answer_bytes, slot=slot,
        ))

    def handler(self) -> grpc.GenericRpcHandler[object, object]:
        """A generic handler for Cluster.ForwardBatch only (Step and Forward are served by
        ``transport.ClusterService``'s handler of the same service)."""
        return grpc.method_handlers_generic_handler(
            "rxchain.v1.Cluster",
            {
                "ForwardBatch": grpc.stream_stream_rpc_method_handler(
                    self.forward_batch,
                    request_deserializer=decode_batch,
                    response_serializer=services_pb2.BroadcastBatchResponse.SerializeToString,
                ),
            },
        )
