"""Orderer-to-orderer transport: Raft messages on Cluster.Step streams over mutual TLS, and
the follower-to-leader Cluster.Forward stream.

Outbound: one :class:`PeerSender` per other orderer holds a client stream and a bounded
queue; sending never blocks the Raft driver (a full queue or a broken stream drops the
message and reports the peer unreachable -- Raft retransmits; a peer refusing this orderer
PERMISSION_DENIED -- no member, or its certificate revoked or expired there -- is dialled again
with a growing wait, at most ``REFUSED_REDIAL_MAX_S``). The messages of one Ready for one peer
are queued as one item (one wake-up of the sender thread per Ready, not per message) on a
``queue.SimpleQueue`` (no Python-level Condition per hand-off).

Inbound (:class:`ClusterService`): the caller is identified by its TLS client certificate
(``node.crypto.tls.peer_identity``) and must be an orderer of the current configuration
(its certificate equals an ``OrdererNode.cert_der``); otherwise the stream is refused with
PERMISSION_DENIED, counted, and logged boundedly (``refusals``); a member's streams are then
held under :class:`node.stream_caps.ClusterCaps` (per orderer and method, its newest replacing
its oldest, and in total; over the total TOO_MANY_STREAMS), once its certificate passed the
check the caps' sweeper applies to the open ones (:func:`cluster_recheck`: refused
PERMISSION_DENIED with the MSP's reason, e.g. EXPIRED_CERT, by the node's clock). Membership follows the
config in force (the server subscribes it to config adoption), and open streams re-check it
per message, so after a config block rotates an orderer's certificate the new one is
accepted for that raft id and the old one refused from that block on. Raft messages (Step)
alone also come from, and go to, an orderer a config update took out of the set until Raft
has applied its removal (:class:`Membership`): the removal needs its acknowledgement when it
leaves one voter. Every message must also name that orderer's raft id as its sender and this node as recipient.
Stale or replayed messages are Raft's business (terms).
Each message also tells the sender's clock (clockwatch) and the highest protocol version its
release implements, and now and then what it knows of the peers' releases (releases).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import grpc
from rxchain.v1 import identity_pb2, raft_pb2, services_pb2

from node.clock import wall_ms
from node.crypto.tls import peer_identity
from node.errors import RxError, abort_with, reason_from_rpc_error
from node.orderer.broadcast import BroadcastHandler, Checked
from node.orderer.clockwatch import ClockWatch
from node.orderer.forward import FORWARD_READ_AHEAD_BYTES, REFUSED_REDIAL_MAX_S, hold_cluster_stream
from node.orderer.metrics import OrdererMetrics
from node.orderer.raft_codec import decode_message, encode_message
from node.orderer.refusals import EveryInterval, NonMemberRefusals
from node.orderer.releases import (
    MAX_RELAYED_BYTES,
    MAX_RELAYED_PEERS,
    RELAY_MIN_INTERVAL_S,
    RELAY_REFRESH_S,
    ReleaseWatch,
)
from node.orderer.streams import ordered_answers, refusal_ends
from node.orderer.ticket import NOT_LEADER, SERVICE_UNAVAILABLE, Outcome, Ticket
from node.protocol import MAX_PROTOCOL_VERSION, MEMBERSHIP_VERSION
from node.raft.errors import InvalidMessage
from node.raft.types import Message, MessageType
from node.stream_caps import ClusterCaps, StreamSlot

_log = logging.getLogger(__name__)

ChannelFactory = Callable[[str], grpc.Channel]

REDIAL_S = 0.1  # wait before a Raft stream that ended is dialled again
# how often a Step handler whose reader steps the messages looks whether its call is still on
# (it is woken at once when its reader ends or its caller is refused: node.stream_caps)
STEP_POLL_S = 0.5


class RaftSink(Protocol):
    """Where inbound messages and delivery reports go (the Chain)."""

    def step(self, msg: Message) -> None:
        """Deliver an inbound message."""
        ...

    def report_unreachable(self, node_id: int) -> None:
        """A peer could not be reached."""
        ...

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """A snapshot message was sent or failed."""
        ...


class Membership:
    """The orderer set of the config in force: raft id <-> certificate and address (replaced on
    config updates). Only its members forward envelopes, and envelopes are forwarded only to
    them (:meth:`raft_id_of`, :meth:`targets`).

    Raft messages also go to and come from the orderers an update took out of the set while
    Raft still counts them (a voter or learner until the leader's REMOVE_NODE is applied:
    :meth:`set_in_raft`): their last entry is kept (:meth:`raft_peer_of`, :meth:`raft_targets`).
    The removal must be committed by the voters before it, the removed one among them: with two
    orderers going to one, its acknowledgement is the only way to a majority, and cutting it
    off with the config block left Raft unable to commit anything again. An entry a config no
    longer admits (``keep`` of :meth:`update`: e.g. its certificate revoked) is dropped at once.
    """

    def __init__(
        self,
        orderers: Sequence[tuple[int, bytes, str]],
        former: Sequence[tuple[int, bytes, str]] = (),
    ) -> None:
        """``former``: orderers earlier configs named and the one in force does not (the last
        entry of each), kept for Raft while :meth:`set_in_raft` names them."""
        self._lock = threading.Lock()
        self._members: dict[int, tuple[bytes, str]] = {}
        self._former = {rid: (cert, target) for rid, cert, target in former}
        self._keep: Callable[[bytes], bool] | None = None
        self._in_raft: frozenset[int] = frozenset()
        self.update(orderers)

    def update(
        self, orderers: Sequence[tuple[int, bytes, str]], keep: Callable[[bytes], bool] | None = None
    ) -> None:
        """Adopt a new orderer set: (raft_id, cert_der, "host:port") each. The members it drops
        become former members (for Raft messages while Raft counts them); ``keep`` (None: all)
        says which former members' certificates the new config still admits."""
        with self._lock:
            members = {rid: (cert, target) for rid, cert, target in orderers}
            former = {**self._former, **self._members}
            self._former = {rid: e for rid, e in former.items() if rid not in members}
            self._members = members
            self._keep = keep
            self._derive()

    def set_in_raft(self, raft_ids: Iterable[int]) -> None:
        """The raft ids Raft counts now (voters and learners of the applied ConfState)."""
        with self._lock:
            self._in_raft = frozenset(raft_ids)
            self._derive()

    def _derive(self) -> None:
        self._by_cert = {cert: rid for rid, (cert, _) in self._members.items()}
        self._targets = {rid: target for rid, (_, target) in self._members.items()}
        keep = self._keep
        departing = {rid: e for rid, e in self._former.items()
                     if rid in self._in_raft and (keep is None or keep(e[0]))}
        self._raft_by_cert = {**{cert: rid for rid, (cert, _) in departing.items()}, **self._by_cert}
        self._raft_targets = {**{rid: target for rid, (_, target) in departing.items()}, **self._targets}

    def raft_id_of(self, identity: identity_pb2.Identity | None) -> int | None:
        """Raft id of the orderer presenting ``identity``, or None for a non-member."""
        if identity is None:
            return None
        return self._by_cert.get(identity.cert_der)

    def raft_peer_of(self, identity: identity_pb2.Identity | None) -> int | None:
        """Like :meth:`raft_id_of`, also for an orderer taken out of the set that Raft still
        counts (for Raft messages only)."""
        if identity is None:
            return None
        return self._raft_by_cert.get(identity.cert_der)

    def targets(self) -> dict[int, str]:
        """raft id -> address of every member."""
        return dict(self._targets)

    def raft_targets(self) -> dict[int, str]:
        """raft id -> address of every member and of every orderer taken out of the set that
        Raft still counts (where Raft messages go)."""
        return dict(self._raft_targets)


def cluster_recheck(
    membership: Membership, check: Callable[[identity_pb2.Identity], object],
    version: Callable[[], int] | None = None,
) -> Callable[[int, str, identity_pb2.Identity], None]:
    """The check of a Cluster stream's caller, new and open (node.stream_caps.ClusterCaps.watch_with):
    still the orderer of raft id ``rid`` for ``method`` (Step: also one a config took out of the
    set that Raft still counts, as its messages are) -- RxError NOT_AN_ORDERER, PERMISSION_DENIED,
    as a new stream is refused -- and its certificate admitted by ``check`` (the MSP in force:
    not revoked, not expired, its organisation not removed).

    Under a protocol version before MEMBERSHIP_VERSION (``version``: the one in force; none:
    the latest rules) a Step stream of an orderer the config in force names is not refused for
    its certificate: version 1 lets a config update revoke the certificate of an orderer it
    keeps, which still counts towards the Raft quorum and whose block signatures still count
    (MSP.block_signers); refusing its Raft messages -- every sweep, and at accept, for good --
    left the others short of that quorum when it was needed (two of three orderers revoked so:
    no ordering at all). From that version on no update keeps an orderer it revokes
    (configrules), and an expired certificate fails the TLS handshake of a new connection at
    any version: refusing them costs no vote the transport had not already lost."""

    def recheck(rid: int, method: str, ident: identity_pb2.Identity) -> None:
        now = membership.raft_peer_of(ident) if method == "Step" else membership.raft_id_of(ident)
        if now != rid:
            raise RxError("NOT_AN_ORDERER", f"the caller is no longer orderer {rid} of the current "
                                            "configuration", grpc.StatusCode.PERMISSION_DENIED)
        if (method == "Step" and version is not None and version() < MEMBERSHIP_VERSION
                and membership.raft_id_of(ident) == rid):
            return  # (docstring: a voter version 1 keeps, whatever its certificate)
        check(ident)

    return recheck


class PeerSender:
    """A client stream to one peer orderer, fed from a bounded queue."""

    def __init__(
        self,
        own_id: int,
        peer_id: int,
        target: str,
        channel_factory: ChannelFactory,
        sink: RaftSink,
        max_queue: int = 4096,
        max_queued_bytes: int = 64 * 1024 * 1024,
        wall_ms: Callable[[], int] = wall_ms,
        releases: ReleaseWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
        relay_refresh_s: float = RELAY_REFRESH_S,
        relay_min_interval_s: float = RELAY_MIN_INTERVAL_S,
        redial_s: float = REDIAL_S,
        refused_redial_max_s: float = REFUSED_REDIAL_MAX_S,
        refused_lines: EveryInterval | None = None,
    ) -> None:
        """``wall_ms``: this node's clock, told in every message (see clockwatch);
        ``releases``: what peers told of their releases, relayed (in chunks of at most
        MAX_RELAYED_PEERS entries and MAX_RELAYED_BYTES, one per message) from the first message of each stream, when
        a told version changes (at most once per ``relay_min_interval_s``: a peer changing what
        it tells on every Deliver request must not put the whole relay into every Raft message)
        and every ``relay_refresh_s`` (``clock``) seconds (see releases). A stream that ended is
        dialled again after ``redial_s``; one the peer refused PERMISSION_DENIED -- NOT_AN_ORDERER
        (this orderer is no orderer of the config in force there: removed, or its certificate
        rotated, and not told), or its certificate refused there (EXPIRED_CERT, REVOKED_CERT ...)
        -- after twice the wait of the refusal before, up to ``refused_redial_max_s``, logged as
        ``refused_lines`` lets (the first at once, then a line per interval)."""
        self._own_id = own_id
        self._redial_s = redial_s
        self._refused_redial_max_s = refused_redial_max_s
        self._refused_lines = refused_lines if refused_lines is not None else EveryInterval()
        self._refused_in_row = 0  # PERMISSION_DENIED refusals since the last stream that was not one
        self.redial_wait_s = redial_s  # the wait before the next dial (read by tests)
        self._wall_ms = wall_ms
        self._releases = releases
        self._clock = clock
        self._relay_refresh_s = relay_refresh_s
        self._relay_min_interval_s = relay_min_interval_s
        self._max_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._peer_id = peer_id
        self._target = target
        self._factory = channel_factory
        self._sink = sink
        self._max_queue = max_queue
        self._queued = 0  # messages in the queue (bounded by max_queue), under _bytes_lock
        self._queue: queue.SimpleQueue[list[Message] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"raft-send-{own_id}-{peer_id}", daemon=True
        )
        self._thread.start()

    def send(self, msg: Message) -> None:
        """Queue one message (see :meth:`send_many`)."""
        self.send_many([msg])

    def send_many(self, messages: Sequence[Message]) -> None:
        """Queue messages in order as one item; drop each that does not fit (and report)
        when the queue is full by count or by bytes (a slow peer must not make us buffer
        without limit)."""
        kept: list[Message] = []
        dropped: list[Message] = []
        with self._bytes_lock:
            for msg in messages:
                size = _payload_bytes(msg)
                if self._queued >= self._max_queue or (
                    self._queued_bytes + size > self._max_bytes and self._queued_bytes > 0
                ):
                    dropped.append(msg)
                    continue
                self._queued += 1
                self._queued_bytes += size
                kept.append(msg)
        if kept:
            self._queue.put(kept)
        for msg in dropped:
            self._report_failure(msg)

    def _release(self, size: int) -> None:
        with self._bytes_lock:
            self._queued -= 1
            self._queued_bytes -= size

    def _report_failure(self, msg: Message) -> None:
        self._sink.report_unreachable(self._peer_id)
        if msg.type == MessageType.SNAP:
            self._sink.report_snapshot(self._peer_id, False)

    def _requests(self, call_over: threading.Event) -> Iterator[services_pb2.ConsensusRequest]:
        # One generator per call; it must stop pulling from the shared queue as soon as its
        # call is over, or gRPC's consumer thread of a dead call would steal messages.
        releases = self._releases
        relayed_changes = -1  # the first message of each call relays what peers told
        relayed_at = 0.0
        change_relayed_at = -1e18  # the last relay a change sent (rate-limited)
        relay: list[services_pb2.PeerRelease] = []  # the relay going out, a chunk per message
        relay_pos = 0
        while not self._stop.is_set() and not call_over.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:  # close() or finish(): the sender is done
                self._stop.set()
                return
            # The whole item leaves the budget now: if the call dies while this generator is
            # suspended mid-item, gRPC never resumes it and nothing else would release it.
            for msg in item:
                self._release(_payload_bytes(msg))
            for i, msg in enumerate(item):
                if call_over.is_set():
                    for lost in item[i:]:
                        self._report_failure(lost)
                    return
                req = services_pb2.ConsensusRequest(
                    from_id=self._own_id, payload=encode_message(msg), sent_wall_ms=self._wall_ms(),
                    max_protocol_version=MAX_PROTOCOL_VERSION)
                if releases is not None:
                    now = self._clock()
                    changes = releases.peer_changes
                    due = relayed_changes == -1 or now - relayed_at >= self._relay_refresh_s
                    if not due and changes != relayed_changes and now - change_relayed_at >= self._relay_min_interval_s:
                        due, change_relayed_at = True, now
                    if due:
                        relayed_changes, relayed_at = changes, now
                        relay, relay_pos = releases.relay(), 0
                    if relay_pos < len(relay):
                        end = _relay_chunk_end(relay, relay_pos)
                        req.peer_releases.extend(relay[relay_pos:end])
                        relay_pos = end
                yield req
                if msg.type == MessageType.SNAP:
                    self._sink.report_snapshot(self._peer_id, True)

    def _run(self) -> None:
        from rxchain.v1 import services_pb2_grpc

        while not self._stop.is_set():
            channel = self._factory(self._target)
            call_over = threading.Event()
            refused = ""
            try:
                stub = services_pb2_grpc.ClusterStub(channel)
                stub.Step(self._requests(call_over))
            except grpc.RpcError as exc:
                if _code_of(exc) == grpc.StatusCode.PERMISSION_DENIED:
                    refused = reason_from_rpc_error(exc) or "PERMISSION_DENIED"
                else:
                    _log.debug("event=raft_stream_ended to=%d target=%s error=%r", self._peer_id, self._target,
                               str(exc))
                self._sink.report_unreachable(self._peer_id)
            finally:
                call_over.set()
                channel.close()
            # Drop what queued up while disconnected: Raft resends what still matters.
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # finish() while disconnected
                    self._stop.set()
                for msg in item or ():
                    self._release(_payload_bytes(msg))
                    self._report_failure(msg)
            self._stop.wait(self._redial_wait(refused))

    def _redial_wait(self, refused: str) -> float:
        """The wait before dialling again after a stream ended (``refused``: the reason of a
        PERMISSION_DENIED refusal -- NOT_AN_ORDERER, or this orderer's certificate refused by the
        peer's MSP: EXPIRED_CERT, REVOKED_CERT ...; "" otherwise): a peer refusing this orderer
        answers at once, so dialling it again at the usual pace was ten refusals a second, each
        a warning in the peer's log (and, before the peer checked the certificate at accept,
        a stream admitted until its next sweep); backed off, bounded so that an orderer the
        peer admits again (its config caught up, its certificate renewed) is soon heard."""
        if not refused:
            self._refused_in_row = 0
            self.redial_wait_s = self._redial_s
            return self.redial_wait_s
        self._refused_in_row += 1
        self.redial_wait_s = min(self._redial_s * 2 ** min(self._refused_in_row, 32), self._refused_redial_max_s)
        if refused != "NOT_AN_ORDERER":
            told = self._refused_lines.note((self._peer_id, refused))
            if told:
                _log.warning("event=refused_by_peer orderer=%d peer=%d target=%s reason=%s refused=%d "
                             "retry_s=%.1f: the peer refuses this orderer's Raft stream PERMISSION_DENIED "
                             "(its certificate expired or revoked there, as the peer's clock and config "
                             "judge it?); dialled again with a growing wait, at most one line per interval",
                             self._own_id, self._peer_id, self._target, refused, told, self.redial_wait_s)
            return self.redial_wait_s
        told = self._refused_lines.note(self._peer_id)
        if told == 1:
            _log.warning("event=refused_as_non_member orderer=%d peer=%d target=%s refused=%d retry_s=%.1f: "
                         "the peer refuses this orderer as no orderer of the configuration in force "
                         "(NOT_AN_ORDERER): a config update removed it, or rotated its certificate, and "
                         "it has not caught up; stop it if it was removed. Dialled again with a growing "
                         "wait; further refusals are told in one line per interval", self._own_id,
                         self._peer_id, self._target, told, self.redial_wait_s)
        elif told > 1:
            _log.warning("event=refused_as_non_member orderer=%d peer=%d target=%s refused=%d retry_s=%.1f: "
                         "refused again, this many times since the last line", self._own_id, self._peer_id,
                         self._target, told, self.redial_wait_s)
        return self.redial_wait_s

    @property
    def target(self) -> str:
        """The address this sender dials."""
        return self._target

    def finish(self) -> None:
        """Send what is queued, then stop the sender thread (not waiting for it): the last
        messages to an orderer Raft has just removed carry the commit of its removal, which
        it applies (else, never told, it would campaign for votes nobody answers)."""
        self._queue.put(None)

    def close(self) -> None:
        """Stop the sender thread."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(2)


def _code_of(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _payload_bytes(msg: Message) -> int:
    size = sum(len(e.data) for e in msg.entries)
    if msg.snapshot is not None:
        size += len(msg.snapshot.data)
    return size


class RaftTransport:
    """Routes outbound Raft messages to per-peer senders (the Chain's Transport)."""

    def __init__(
        self,
        own_id: int,
        membership: Membership,
        channel_factory: ChannelFactory,
        sink: RaftSink | None = None,
        wall_ms: Callable[[], int] = wall_ms,
        releases: ReleaseWatch | None = None,
    ) -> None:
        """``releases``: what peers told of their releases, relayed to the other orderers."""
        self._own_id = own_id
        self._wall_ms = wall_ms
        self._releases = releases
        self._membership = membership
        self._factory = channel_factory
        self._sink = sink
        self._senders: dict[int, PeerSender] = {}
        self._lock = threading.Lock()

    def bind(self, sink: RaftSink) -> None:
        """Set where delivery reports go (the Chain is built after the transport)."""
        self._sink = sink

    def send(self, messages: Sequence[Message]) -> None:
        """Queue each message for its recipient (one queue item per recipient, in order)."""
        if len(messages) == 1:
            by_peer: dict[int, list[Message]] = {messages[0].to: [messages[0]]}
        else:
            by_peer = {}
            for msg in messages:
                by_peer.setdefault(msg.to, []).append(msg)
        for peer_id, batch in by_peer.items():
            sender = self._sender(peer_id)
            if sender is not None:
                sender.send_many(batch)

    def _sender(self, peer_id: int) -> PeerSender | None:
        with self._lock:
            sender = self._senders.get(peer_id)
            if sender is None:
                target = self._membership.raft_targets().get(peer_id)
                if target is None or self._sink is None:
                    return None
                sender = PeerSender(self._own_id, peer_id, target, self._factory, self._sink,
                                    wall_ms=self._wall_ms, releases=self._releases)
                self._senders[peer_id] = sender
            return sender

    def drop_departed(self) -> None:
        """Stop the senders to orderers Raft messages no longer go to (taken out of the
        orderer set, and out of Raft; or moved) once they have sent what is queued: the removed
        orderer is no longer dialled. Called on the Raft driver's thread: the sender threads
        end on their own."""
        targets = self._membership.raft_targets()
        with self._lock:
            gone = [rid for rid, s in self._senders.items() if targets.get(rid) != s.target]
            senders = [self._senders.pop(rid) for rid in gone]
        for rid, sender in zip(gone, senders, strict=True):
            _log.info("event=raft_peer_dropped orderer=%d peer=%d target=%s: out of the orderer set "
                      "and out of Raft (or at another address now)", self._own_id, rid, sender.target)
            sender.finish()

    def close(self) -> None:
        """Stop all senders."""
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for s in senders:
            s.close()


class ClusterService:
    """Server side of the Cluster service (Step and Forward)."""

    def __init__(
        self,
        own_id: int,
        membership: Membership,
        sink: RaftSink,
        broadcast: BroadcastHandler,
        metrics: OrdererMetrics,
        commit_timeout_s: float = 5.0,
        clock_watch: ClockWatch | None = None,
        releases: ReleaseWatch | None = None,
        refusals: NonMemberRefusals | None = None,
        streams: ClusterCaps | None = None,
    ) -> None:
        """``clock_watch`` is told each member's clock from its messages, ``releases`` the
        protocol versions its release implements and what it relays of peers' releases;
        ``refusals`` refuses (counts and logs) non-members (shared with ForwardBatchService);
        ``streams`` caps each member's streams (node.stream_caps; none: uncapped; shared too)."""
        self._own_id = own_id
        self._streams = streams
        self._refusals = refusals if refusals is not None else NonMemberRefusals(metrics)
        self._clock_watch = clock_watch
        self._releases = releases
        self._membership = membership
        self._sink = sink
        self._broadcast = broadcast
        self._metrics = metrics
        self._commit_timeout_s = commit_timeout_s

    def _caller(
        self, context: grpc.ServicerContext, what: str, *, raft: bool = False
    ) -> tuple[int, identity_pb2.Identity, StreamSlot | None]:
        """The calling orderer (its raft id and identity) and the slot the stream caps' sweeper
        refuses it through (forward.hold_cluster_stream); ``raft``: for Raft messages, also an
        orderer taken out of the set that Raft still counts (Membership.raft_peer_of)."""
        ident = peer_identity(context)
        rid = self._membership.raft_peer_of(ident) if raft else self._membership.raft_id_of(ident)
        if rid is None or ident is None:
            self._refusals.refuse(context, ident, what)
        return rid, ident, hold_cluster_stream(self._streams, context, rid, what, ident)

    def step(
        self, requests: Iterator[services_pb2.ConsensusRequest], context: grpc.ServicerContext
    ) -> services_pb2.ConsensusResponse:
        """Cluster.Step: a stream of Raft messages from one orderer. When the stream caps'
        sweeper checks its caller again (``slot``), the messages are read and stepped on a
        reader thread of the stream's own -- the same work, no hand-off per message -- while the
        handler waits for that reader's end or the caller's refusal, and then ends the call
        PERMISSION_DENIED with the reason (node.stream_caps): blocked reading the requests
        itself, it could not be woken, and the sweeper cancelled the call (its caller saw
        CANCELLED, not why)."""
        rid, ident, slot = self._caller(context, "Step", raft=True)  # a non-member: aborted
        if slot is None:  # uncapped or not checked again (tests): nothing refuses it while it lasts
            self._step_all(requests, rid, ident, None)
            return services_pb2.ConsensusResponse()
        ended = threading.Event()
        failed: list[BaseException] = []

        def read() -> None:
            try:
                self._step_all(requests, rid, ident, slot)
            except BaseException as exc:  # noqa: BLE001 - raised again on the handler's thread
                failed.append(exc)
                if not isinstance(exc, grpc.RpcError):  # (the call ended: no news)
                    # logged here: raised after the handler returned (its call refused, or
                    # over), it was kept in ``failed`` and never told
                    _log.error("event=raft_step_reader_failed from=%d error=%r: stepping this orderer's "
                               "Raft messages failed; its stream ends", rid, exc, exc_info=exc)
            finally:
                ended.set()

        slot.on_refused(ended.set)
        threading.Thread(target=read, name=f"raft-step-from-{rid}", daemon=True).start()
        while not ended.wait(STEP_POLL_S):
            if not context.is_active():  # cancelled, or the server stops: its requests end too
                ended.wait(STEP_POLL_S)
                break
        if slot.refused is not None:
            abort_with(context, slot.refused)  # its reader's requests end with the call
        if failed:
            raise failed[0]
        return services_pb2.ConsensusResponse()

    def _step_all(
        self, requests: Iterator[services_pb2.ConsensusRequest], rid: int, ident: identity_pb2.Identity,
        slot: StreamSlot | None,
    ) -> None:
        """Step the Raft messages of orderer ``rid``'s stream until it ends, or until the stream
        caps' sweeper refused its caller (``slot``)."""
        for req in requests:
            if slot is not None and slot.refused is not None:
                return  # no message of a refused caller is stepped (its handler ends the call)
            # Re-checked per message: a member removed by a config update is cut off once Raft
            # has applied its removal too (at once if the config no longer admits its certificate).
            if self._membership.raft_peer_of(ident) != rid or req.from_id != rid:
                self._metrics.consensus_dropped.labels(reason="bad_sender").inc()
                continue
            try:
                msg = decode_message(req.payload)
            except InvalidMessage as err:
                self._metrics.consensus_dropped.labels(reason="invalid").inc()
                _log.warning("event=raft_message_undecodable from=%d error=%r: dropped", rid, str(err))
                continue
            if msg.frm != rid or msg.to != self._own_id:
                self._metrics.consensus_dropped.labels(reason="bad_sender").inc()
                continue
            if self._clock_watch is not None:
                self._clock_watch.observe(rid, req.sent_wall_ms)
            if self._releases is not None:
                self._releases.observe(rid, req.max_protocol_version)
                if req.peer_releases:
                    self._releases.merge_peers(req.peer_releases, req.sent_wall_ms, rid)
            self._sink.step(msg)

    def forward(
        self, requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[services_pb2.BroadcastResponse]:
        """Cluster.Forward: envelopes a follower validated, ordered here if we lead."""
        rid, ident, slot = self._caller(context, "Forward")

        def dispatch(raw: bytes) -> tuple[Ticket, float]:
            # The forwarding orderer validated the envelope; we parse it again (submit_local)
            if self._membership.raft_id_of(ident) != rid:
                return _refused(), time.monotonic()
            ticket = self._broadcast.submit_local(Checked(raw, ""))
            return ticket, time.monotonic() + self._commit_timeout_s

        def answer(item: tuple[Ticket, float]) -> services_pb2.BroadcastResponse:
            ticket, deadline = item
            outcome = ticket.wait(max(0.0, deadline - time.monotonic()))
            if outcome is None:
                outcome = Outcome(SERVICE_UNAVAILABLE, "not committed in time (outcome unknown)")
            return services_pb2.BroadcastResponse(
                accepted=outcome.accepted, reason=outcome.reason, message=outcome.message
            )

        return refusal_ends(context, slot, ordered_answers(requests, dispatch, answer, weigh=len,
                                                           max_bytes=FORWARD_READ_AHEAD_BYTES, slot=slot))

    def forward_batch(
        self, requests: Iterator[raft_pb2.ForwardedEnvelopes], context: grpc.ServicerContext
    ) -> Iterator[raft_pb2.ForwardAnswers]:
        """OrdererCluster.ForwardBatch: like Forward, several envelopes per message."""
        rid, ident, slot = self._caller(context, "ForwardBatch")

        def dispatch(batch: raft_pb2.ForwardedEnvelopes) -> tuple[list[Ticket], float]:
            if self._membership.raft_id_of(ident) != rid:  # e.g. its certificate was rotated
                return [_refused() for _ in batch.envelopes], time.monotonic()
            tickets = self._broadcast.submit_local_many(list(batch.envelopes))
            return tickets, time.monotonic() + self._commit_timeout_s

        def answer(item: tuple[list[Ticket], float]) -> raft_pb2.ForwardAnswers:
            tickets, deadline = item
            out = raft_pb2.ForwardAnswers()
            for ticket in tickets:
                outcome = ticket.wait(max(0.0, deadline - time.monotonic()))
                if outcome is None:
                    outcome = Outcome(SERVICE_UNAVAILABLE, "not committed in time (outcome unknown)")
                out.answers.add(
                    accepted=outcome.accepted, reason=outcome.reason, message=outcome.message
                )
            return out

        return refusal_ends(context, slot, ordered_answers(requests, dispatch, answer, weigh=_forwarded_bytes,
                                                           max_bytes=FORWARD_READ_AHEAD_BYTES, slot=slot))

    def batch_handler(self) -> grpc.GenericRpcHandler[object, object]:
        """The generic handler of OrdererCluster (ForwardBatch)."""
        return grpc.method_handlers_generic_handler(
            "rxchain.v1.OrdererCluster",
            {
                "ForwardBatch": grpc.stream_stream_rpc_method_handler(
                    self.forward_batch,
                    request_deserializer=raft_pb2.ForwardedEnvelopes.FromString,
                    response_serializer=raft_pb2.ForwardAnswers.SerializeToString,
                ),
            },
        )

    def handler(self) -> grpc.GenericRpcHandler[object, object]:
        """The generic handler registering Step (parsed) and Forward (raw bytes)."""
        return grpc.method_handlers_generic_handler(
            "rxchain.v1.Cluster",
            {
                "Step": grpc.stream_unary_rpc_method_handler(
                    self.step,
                    request_deserializer=services_pb2.ConsensusRequest.FromString,
                    response_serializer=services_pb2.ConsensusResponse.SerializeToString,
                ),
                "Forward": grpc.stream_stream_rpc_method_handler(
                    self.forward,
                    request_deserializer=None,
                    response_serializer=services_pb2.BroadcastResponse.SerializeToString,
                ),
            },
        )


def _relay_chunk_end(relay: Sequence[services_pb2.PeerRelease], start: int) -> int:
    """Where the chunk of ``relay`` one message carries from ``start`` ends: at most
    MAX_RELAYED_PEERS entries and MAX_RELAYED_BYTES (one larger entry alone)."""
    end, size = start, 0
    while end < len(relay) and end - start < MAX_RELAYED_PEERS:
        n = relay[end].ByteSize() + 3  # its field tag and length
        if end > start and size + n > MAX_RELAYED_BYTES:
            break
        size += n
        end += 1
    return end


def _forwarded_bytes(batch: raft_pb2.ForwardedEnvelopes) -> int:
    """Envelope bytes of a forwarded batch (its read-ahead weight)."""
    return sum(len(e) for e in batch.envelopes)


def _refused() -> Ticket:
    """The answer to an envelope forwarded by a caller that is no longer a member (never
    ordered, so the client may retry elsewhere)."""
    ticket = Ticket()
    ticket.resolve(Outcome(NOT_LEADER, "NOT_AN_ORDERER: forwarding orderer's certificate is not "
                                       "in the current configuration"))
    return ticket


class _ForwardStream:
    """One ForwardBatch stream to a leader; answers are matched to tickets in order.

    Envelopes queued while the previous message was being sent travel together in one
    ForwardedEnvelopes message (at most ``max_batch`` and ``max_bytes()`` envelope bytes, a
    larger envelope alone: the leader's gRPC bound refuses a larger message as a whole). The stream opens with an empty
    message the leader answers with an empty one; envelopes are only sent after that
    answer, so a stream that fails to connect returns them as never sent (retryable)
    instead of "outcome unknown"."""

    def __init__(self, target: str, channel_factory: ChannelFactory, max_batch: int = 512,
                 max_bytes: Callable[[], int] = lambda: 4 << 20):
        self._channel = channel_factory(target)
        self._max_batch = max_batch
        self._max_bytes = max_bytes
        self._queue: queue.Queue[tuple[bytes, Ticket] | None] = queue.Queue()
        self._inflight: deque[Ticket] = deque()
        self._lock = threading.Lock()
        self._open = threading.Event()
        self.broken = False
        call = self._channel.stream_stream(
            "/rxchain.v1.OrdererCluster/ForwardBatch",
            request_serializer=raft_pb2.ForwardedEnvelopes.SerializeToString,
            response_deserializer=raft_pb2.ForwardAnswers.FromString,
        )
        self._responses = call(self._requests())
        self._thread = threading.Thread(target=self._receive, name="forward-recv", daemon=True)
        self._thread.start()

    @property
    def opened(self) -> bool:
        """The leader answered the handshake (it admitted the stream)."""
        return self._open.is_set()

    def submit(self, envelope: bytes, ticket: Ticket) -> None:
        with self._lock:  # never enqueue after _break drained the queue
            if self.broken:
                ticket.resolve(Outcome(NOT_LEADER, "leader unreachable; envelope not sent"))
                return
            self._queue.put((envelope, ticket))

    def _requests(self) -> Iterator[raft_pb2.ForwardedEnvelopes]:
        yield raft_pb2.ForwardedEnvelopes()  # handshake
        while not self._open.wait(0.1):
            if self.broken:
                return
        carry: tuple[bytes, Ticket] | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            items = [first]
            size = len(first[0]) if first is not None else 0
            budget = self._max_bytes()  # read per message: the bound in force may change
            while len(items) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    if size + len(item[0]) > budget:
                        carry = item  # the next message's first
                        break
                    size += len(item[0])
                items.append(item)
            batch = raft_pb2.ForwardedEnvelopes()
            end = False
            with self._lock:
                for item in items:
                    if item is None:
                        end = True
                        continue
                    envelope, ticket = item
                    if self.broken:
                        ticket.resolve(
                            Outcome(NOT_LEADER, "leader unreachable; envelope not sent")
                        )
                        continue
                    self._inflight.append(ticket)
                    batch.envelopes.append(envelope)
            if batch.envelopes:
                yield batch
            if end and carry is None:
                return
            if end:  # queued before the stream ended: sent, as when it fitted the message
                self._queue.put(None)

    def _receive(self) -> None:
        try:
            for resp in self._responses:
                if not self._open.is_set():
                    self._open.set()  # the handshake answer
                    continue
                with self._lock:
                    tickets = [
                        self._inflight.popleft()
                        for _ in range(min(len(resp.answers), len(self._inflight)))
                    ]
                for ticket, ans in zip(tickets, resp.answers, strict=False):
                    ticket.resolve(Outcome("" if ans.accepted else ans.reason, ans.message))
        except grpc.RpcError as exc:
            _log.info("event=forward_stream_ended error=%r",
                      str(exc.code() if hasattr(exc, "code") else exc))
        finally:
            self._break()

    def _break(self) -> None:
        with self._lock:
            self.broken = True
            inflight, self._inflight = list(self._inflight), deque()
            queued: list[Ticket] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    queued.append(item[1])
            self._queue.put(None)
        for t in inflight:  # sent: the leader may have ordered them, outcome unknown
            t.resolve(Outcome(SERVICE_UNAVAILABLE, "forward stream to leader broke"))
        for t in queued:  # never sent: safe to re-dispatch (NOT_LEADER is retried)
            t.resolve(Outcome(NOT_LEADER, "leader unreachable; envelope not sent"))

    def close(self) -> None:
        self._queue.put(None)
        self._channel.close()


class Forwarder:
    """Follower side of OrdererCluster.ForwardBatch, the legacy forward RPC (node.yaml
    ``extra.forward_rpc: legacy``; kept for comparison in benchmarks): the broadcast handler's
    forwarder in place of :class:`node.orderer.forward.LeaderForwarder`.

    Redials as LeaderForwarder's: a leader whose stream broke after it answered the handshake is
    dialled again ``redial_s`` later; one that ended it before (refused it, or could not be
    reached) after a wait doubling with each such failure in a row -- 0.4, 0.8, 1.6 s ... with
    the default 0.2 s -- up to ``refused_redial_max_s`` (3 s), times 0.5 to 1 by ``rand``, so the
    followers it refuses do not dial it in step. An envelope for a leader not to be dialled yet
    is answered NOT_LEADER at once (never held; the broadcast handler re-dispatches it). Before,
    a refusing leader was dialled again every 0.2 s for as long as envelopes came."""

    def __init__(
        self,
        membership: Membership,
        channel_factory: ChannelFactory,
        clock: Callable[[], float] = time.monotonic,
        redial_s: float = 0.2,
        max_batch_bytes: Callable[[], int] = lambda: 4 << 20,
        *,
        refused_redial_max_s: float = REFUSED_REDIAL_MAX_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """``max_batch_bytes``: envelope bytes of one forwarded message (node.msgbound)."""
        self._membership = membership
        self._factory = channel_factory
        self._clock = clock
        self._redial_s = redial_s
        self._refused_redial_max_s = max(refused_redial_max_s, redial_s)
        self._rand = rand
        self._max_bytes = max_batch_bytes
        # leader -> (when it may be dialled again, streams in a row it ended before the handshake)
        self._redials: dict[int, tuple[float, int]] = {}
        self._streams: dict[int, _ForwardStream] = {}
        self._lock = threading.Lock()

    def _broke(self, leader_id: int, stream: _ForwardStream) -> None:
        """(under the lock) When ``leader_id``, whose ``stream`` broke, may be dialled again."""
        now = self._clock()
        if stream.opened:  # it had admitted the stream: the wait starts over
            self._redials[leader_id] = (now + self._redial_s, 0)
            return
        failures = self._redials.get(leader_id, (0.0, 0))[1] + 1
        wait = min(self._redial_s * 2 ** min(failures, 32), self._refused_redial_max_s)
        wait *= 0.5 + 0.5 * min(max(self._rand(), 0.0), 1.0)
        self._redials[leader_id] = (now + wait, failures)

    def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
        """Forward ``envelope`` to ``leader_id``."""
        ticket = Ticket(tx_id)
        with self._lock:
            stream = self._streams.get(leader_id)
            if stream is None or stream.broken:
                if stream is not None:
                    stream.close()
                    del self._streams[leader_id]
                    self._broke(leader_id, stream)
                at = self._redials.get(leader_id, (-1e18, 0))[0]
                if self._clock() < at:
                    # Do not redial a leader that just failed (class doc): answered at once
                    ticket.resolve(Outcome(NOT_LEADER, f"leader {leader_id} unreachable; dialled again in "
                                                       f"{at - self._clock():.1f} s"))
                    return ticket
                target = self._membership.targets().get(leader_id)
                if target is None:
                    ticket.resolve(Outcome(SERVICE_UNAVAILABLE, f"leader {leader_id} unknown"))
                    return ticket
                stream = _ForwardStream(target, self._factory, max_bytes=self._max_bytes)
                self._streams[leader_id] = stream
        stream.submit(envelope, ticket)
        return ticket

    def close(self) -> None:
        """Close every stream."""
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for s in streams:
            s.close()
