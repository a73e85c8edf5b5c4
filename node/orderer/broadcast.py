"""Broadcast intake: validate envelopes, order them here (leader) or forward to the leader.

Checks, in order, each answered with a reason code and nothing ordered:

* TOO_LARGE: the envelope exceeds ``Limits.max_envelope_bytes``;
* BAD_PAYLOAD: the envelope, its Transaction or TxHeader does not parse, has no creator,
  or names another consortium;
* CLOCK_SKEW: the header's timestamp is more than ``Limits.max_clock_skew_ms`` from this
  orderer's clock.  Peers check the creator's and the endorsers' certificates at that
  timestamp, so without this bound a client could backdate a transaction into the validity
  window of certificates that have since expired;
* UNKNOWN_CREATOR: the creator is not a valid member (unknown organisation, certificate not
  issued by the organisation's CA, expired, revoked, wrong role -- detail in the message);
* BAD_SIGNATURE: the creator's signature over the payload does not verify;
* BAD_TXID: the tx id is not ``compute_tx_id(nonce, creator)`` (it cannot be chosen);
* BAD_CONFIG_UPDATE: a CONFIG envelope whose update is invalid (see ``configtx``);
* SERVICE_UNAVAILABLE: no leader, no quorum, or the block was not committed in time (the
  answer always comes within ``commit_timeout_s`` plus ``no_leader_wait_s``).

A follower forwards valid envelopes to the leader (Cluster.ForwardBatch, or Cluster.Forward);
an envelope a former leader refused with NOT_LEADER (it was never proposed) is re-dispatched
once a leader is known again, within the same time bound -- one envelope at most once per 20 ms
(``REDISPATCH_PACE_S``: a leader the forwarder does not dial yet answers it NOT_LEADER at once,
and it went round without a pause until its deadline). The leader parses what it is
forwarded again (BAD_PAYLOAD, ``EnvelopeValidator.recheck``); what depends on the config in
force (the size) is judged as its block is cut, against the config that block falls under
(``node.orderer.chain``): the follower may not have applied the latest config block yet, nor
a leader just elected the earlier terms' entries.

BroadcastBatch carries several envelopes per stream message (an ``EnvelopeBatch``, split
without re-serialising, see ``envelope_batch``): each envelope gets the same checks and
its own answer, in order; the valid ones of a message reach the chain (or the forwarder)
in one hand-off; answers of consecutive messages that are ready together travel in one
``BroadcastBatchResponse``. A message holding more than ``max_batch_envelopes`` envelopes
or ``max_batch_bytes`` bytes has every envelope refused TOO_LARGE (nothing ordered); a
message that is not an EnvelopeBatch ends the stream with INVALID_ARGUMENT / BAD_PAYLOAD
after the answers to the messages before it, one holding more than ``MAX_READ_ENVELOPES``
envelopes (refused as it is split) with RESOURCE_EXHAUSTED / TOO_LARGE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from rxchain.v1 import services_pb2, transaction_pb2

from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose
from node.crypto.tls import peer_identity
from node.errors import RxError, abort_with
from node.identity.caller import CallerCheck
from node.identity.msp import MSP
from node.msgbound import budget_reader
from node.orderer.configrules import BAD_CONFIG_UPDATE
from node.orderer.envelope_batch import MAX_READ_ENVELOPES, BatchDecodeError, BatchTooLarge, split_batch
from node.orderer.metrics import OrdererMetrics
from node.orderer.recent import RecentTxIndex
from node.orderer.refusals import EveryInterval
from node.orderer.streams import coalesced_answers, immediate, ordered_answers, stream_error_logger
from node.orderer.ticket import (
    BAD_PAYLOAD,
    BAD_SIGNATURE,
    BAD_TXID,
    CLOCK_SKEW,
    NOT_LEADER,
    SERVICE_UNAVAILABLE,
    TOO_LARGE,
    UNKNOWN_CREATOR,
    Outcome,
    Ticket,
)
from node.stream_caps import StreamCaps, StreamSlot

_log = logging.getLogger(__name__)

Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Checked:
    """A validated envelope."""

    raw: bytes
    tx_id: str
    is_config: bool = False


class EnvelopeValidator:
    """Stateless checks of one envelope against the consortium configuration."""

    def __init__(
        self,
        msp_source: Callable[[], MSP],
        consortium_id: str,
        max_envelope_bytes: int | Callable[[], int],
        clock_ms: Callable[[], int],
        config_check: Callable[[bytes, int], None] | None = None,
        max_skew_ms: Callable[[], int] = lambda: 0,
    ) -> None:
        """``max_envelope_bytes``: a bound, or the consortium's in force (read per envelope);
        ``max_skew_ms``: the consortium's ``max_clock_skew_ms`` in force (0: no bound)."""
        self._msp = msp_source
        self._max_skew_ms = max_skew_ms
        self._config_check = config_check
        self._consortium_id = consortium_id
        self._max = max_envelope_bytes
        self._clock_ms = clock_ms
        self._lock = threading.Lock()  # the MSP and Verifier caches are not thread-safe

    def check(self, raw: bytes) -> Checked | tuple[str, Outcome]:
        """A Checked envelope, or (tx_id, refusal)."""
        limit = self._max() if callable(self._max) else self._max
        if len(raw) > limit:
            return "", Outcome(TOO_LARGE, f"envelope of {len(raw)} bytes exceeds {limit}")
        parsed = self._parse(raw)
        if isinstance(parsed, tuple):
            return parsed
        env, header = parsed.envelope, parsed.header
        tx_id = header.tx_id
        now = self._clock_ms()
        skew = self._max_skew_ms()
        if skew and abs(now - header.timestamp_ms) > skew:
            return tx_id, Outcome(
                CLOCK_SKEW, f"timestamp {header.timestamp_ms} is more than {skew} ms from {now}")
        try:
            with self._lock:
                self._msp().verify(header.creator, env.signature, Purpose.ENVELOPE, env.payload, now)
        except RxError as err:
            if err.reason == "BAD_SIGNATURE":
                return tx_id, Outcome(BAD_SIGNATURE, err.message)
            return tx_id, _unknown_creator(err)
        except Exception as exc:  # noqa: BLE001 -- e.g. cryptography's InvalidVersion on a mangled cert
            return tx_id, _unknown_creator(exc)
        if tx_id != compute_tx_id(header.nonce, header.creator):
            # peers would mark it BAD_TXID; refusing it here also keeps a forged tx id from
            # being taken for another envelope's (see ``recent``)
            return tx_id, Outcome(BAD_TXID, "tx id is not sha256(nonce, creator)")
        if header.type == transaction_pb2.CONFIG:
            if self._config_check is None:
                return tx_id, Outcome(BAD_CONFIG_UPDATE, "config updates are not accepted here")
            try:
                self._config_check(raw, self._clock_ms())
            except RxError as err:
                return tx_id, Outcome(BAD_CONFIG_UPDATE, err.message)
            return Checked(raw, tx_id, is_config=True)
        if header.type != transaction_pb2.INVOKE:
            return tx_id, Outcome(BAD_PAYLOAD, f"unknown transaction type {header.type}")
        return Checked(raw, tx_id)

    def recheck(self, raw: bytes) -> Checked | tuple[str, Outcome]:
        """An envelope another orderer checked and forwarded to this one (the leader), checked
        again for what depends on nothing but its bytes: it parses, names a creator and this
        consortium (BAD_PAYLOAD: an empty or mangled one in a forwarded batch was ordered as it
        came).

        What depends on the config in force is judged as its block is cut, against the config
        that block falls under (``Chain._within_limits``: the size, TOO_LARGE, as peers do not
        check it; the clock). Judged here, against this orderer's config in force, a leader just
        elected -- which cuts nothing before it applied the earlier terms' entries, a config
        block among them -- refused what the config it was about to apply allows, and an
        envelope resubmitted after a config update was refused though a block holds it. The
        creator's membership and signature are the forwarding orderer's check (peers judge
        the creator again as they validate)."""
        parsed = self._parse(raw)
        if isinstance(parsed, tuple):
            return parsed
        header = parsed.header
        return Checked(raw, header.tx_id, is_config=header.type == transaction_pb2.CONFIG)

    def _parse(self, raw: bytes) -> _Parsed | tuple[str, Outcome]:
        """The checks of :meth:`check` that depend on the bytes alone: parsing, creator
        present, consortium."""
        try:
            env = transaction_pb2.Envelope.FromString(raw)
            tx = transaction_pb2.Transaction.FromString(env.payload)
            header = transaction_pb2.TxHeader.FromString(tx.header)
        except DecodeError as exc:
            return "", Outcome(BAD_PAYLOAD, f"envelope does not parse: {exc}")
        if not env.payload or not header.HasField("creator") or not header.creator.cert_der:
            return header.tx_id, Outcome(BAD_PAYLOAD, "envelope has no payload or no creator")
        if header.consortium_id != self._consortium_id:
            return header.tx_id, Outcome(
                BAD_PAYLOAD, f"consortium {header.consortium_id!r} is not {self._consortium_id!r}"
            )
        return _Parsed(env, header)


@dataclass(frozen=True)
class _Parsed:
    """An envelope and its header, parsed."""

    envelope: transaction_pb2.Envelope
    header: transaction_pb2.TxHeader


def _unknown_creator(exc: Exception) -> Outcome:
    """The refusal of a creator the MSP does not admit (``exc`` tells why)."""
    if isinstance(exc, RxError):
        return Outcome(UNKNOWN_CREATOR, f"{exc.reason}: {exc.message}")
    return Outcome(UNKNOWN_CREATOR, f"BAD_CERT: creator certificate does not parse: {exc}")


class Orderer(Protocol):
    """What broadcast needs from the chain."""

    def submit(self, envelope: bytes, tx_id: str = "", is_config: bool = False) -> Ticket:
        """Order a validated envelope on this node (the leader)."""
        ...

    def submit_many(self, items: Sequence[tuple[bytes, bool]]) -> list[Ticket]:
        """Order several validated (envelope, is_config) on this node at once."""
        ...

    def leader_id(self) -> int:
        """Current leader's raft id (0: none known)."""
        ...

    def own_id(self) -> int:
        """This node's raft id."""
        ...


class LeaderForwarder(Protocol):
    """Sends validated envelopes to the leader."""

    def submit(self, leader_id: int, envelope: bytes, tx_id: str) -> Ticket:
        """Forward one envelope; the ticket carries the leader's answer."""
        ...


@dataclass(frozen=True)
class BroadcastOptions:
    """Time bounds of an answer."""

    commit_timeout_s: float = 5.0
    no_leader_wait_s: float = 1.0
    max_in_flight_per_stream: int = 8192
    max_batch_envelopes: int = 1024
    max_stream_bytes: int = 16 * 1024 * 1024  # envelope bytes a stream reads ahead of its answers
    max_batch_bytes: int = 4 * 1024 * 1024
    max_answers_per_message: int = 4096


# the least time between two dispatches of one envelope answered NOT_LEADER (BroadcastHandler.answer)
REDISPATCH_PACE_S = 0.02


class BroadcastHandler:
    """Validation, dispatch and answers for Broadcast streams."""

    def __init__(
        self,
        validator: EnvelopeValidator,
        orderer: Orderer,
        forwarder: LeaderForwarder,
        metrics: OrdererMetrics,
        options: BroadcastOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        recent: RecentTxIndex | None = None,
        message_bound: Callable[[], int] | None = None,
    ) -> None:
        """``message_bound``: the gRPC message bound of the nodes its answers go to (none: one
        answer message holds up to ``max_answers_per_message`` answers, whatever they weigh)."""
        self._recent = recent
        self._settled_at = -1.0  # when a NOT_LEADER answer last waited for the leader to settle
        self._validator = validator
        self._orderer = orderer
        self._forwarder = forwarder
        self._metrics = metrics
        self._opt = options or BroadcastOptions()
        self._clock = clock
        self._accepting = True
        self._refused_lines = EveryInterval()  # envelope_refused lines, per reason
        self.answer_bytes: Callable[[], int] | None = (
            None if message_bound is None else budget_reader(message_bound, self._opt.max_batch_bytes))

    def stop_accepting(self) -> None:
        """Answer every new envelope SERVICE_UNAVAILABLE (graceful shutdown)."""
        self._accepting = False

    def _wait_leader(self, deadline: float) -> int:
        while True:
            leader = self._orderer.leader_id()
            if leader or self._clock() >= deadline:
                return leader
            time.sleep(0.02)

    def dispatch_checked(self, checked: Checked, deadline: float) -> Ticket:
        """Send a valid envelope to the leader (here or remote)."""
        leader = self._wait_leader(min(deadline, self._clock() + self._opt.no_leader_wait_s))
        if not leader:
            return immediate(Outcome(SERVICE_UNAVAILABLE, "no Raft leader (no quorum?)"),
                             checked.tx_id)
        if leader == self._orderer.own_id():
            return self._orderer.submit(checked.raw, checked.tx_id, checked.is_config)
        return self._forwarder.submit(leader, checked.raw, checked.tx_id)

    def submit_local(self, checked: Checked) -> Ticket:
        """Order an envelope validated by another orderer (Cluster.Forward) on this node (see
        :meth:`submit_local_many`)."""
        return self.submit_local_many([checked.raw])[0]

    def submit_local_many(self, raws: Sequence[bytes]) -> list[Ticket]:
        """Order envelopes another orderer validated and forwarded (Cluster.ForwardBatch) on
        this node, in one hand-off to the chain. Each must parse (``EnvelopeValidator.recheck``,
        BAD_PAYLOAD); one already in a block is answered so; the config's checks come as its
        block is cut (``Chain._within_limits``). A refused one is answered with its reason and
        never ordered; the others are not affected."""
        if not self._accepting:
            return [
                immediate(Outcome(SERVICE_UNAVAILABLE, "orderer is shutting down"))
                for _ in raws
            ]
        out: list[Ticket | None] = [None] * len(raws)
        fresh: list[tuple[int, Checked]] = []
        # Around a leader change: the forwarding orderer may not have stored the block that
        # already holds a resubmitted envelope yet; this leader has (see ``recent``).
        dedup = self._recent is not None and self._recent.active()
        for i, raw in enumerate(raws):
            result = self._validator.recheck(raw)
            if not isinstance(result, Checked):
                tx_id, outcome = result
                _log.info("event=forwarded_envelope_refused tx_id=%r reason=%s detail=%r: an envelope "
                          "another orderer forwarded, refused by this leader",
                          tx_id, outcome.reason, outcome.message)
                out[i] = immediate(outcome, tx_id)
                continue
            out[i] = self._already_ordered(result.tx_id, raw) if dedup else None
            if out[i] is None:
                fresh.append((i, result))
        if fresh:
            tickets = self._orderer.submit_many([(c.raw, c.is_config) for _, c in fresh])
            for (i, _), t in zip(fresh, tickets, strict=True):
                out[i] = t
        return [t for t in out if t is not None]

    def dispatch(self, raw: bytes) -> tuple[Checked | None, Ticket]:
        """Validate and dispatch one envelope (every answer names the tx id when it parsed)."""
        result = self._validator.check(raw)
        if not isinstance(result, Checked):
            tx_id, outcome = result
            return None, immediate(outcome, tx_id)
        if not self._accepting:
            return None, immediate(Outcome(SERVICE_UNAVAILABLE, "orderer is shutting down"), result.tx_id)
        done = self._already_ordered(result.tx_id, result.raw)
        if done is not None:
            return None, done
        return result, self.dispatch_checked(result, self._clock() + self._opt.commit_timeout_s)

    def _already_ordered(self, tx_id: str, raw: bytes) -> Ticket | None:
        """An accepted answer for an envelope already in a block stored around the last
        leader change (a resubmission after an unknown outcome; see ``recent``), else None."""
        if self._recent is None:
            return None
        number = self._recent.lookup(tx_id, raw)
        if number is None:
            return None
        _log.info("event=envelope_already_ordered tx_id=%r block=%d: not ordered again", tx_id, number)
        return immediate(Outcome(block_number=number, message=f"already ordered in block {number}"), tx_id)

    def answer(self, checked: Checked | None, ticket: Ticket, deadline: float) -> Outcome:
        """Wait for the outcome (re-dispatching after NOT_LEADER) within ``deadline``; one
        envelope is re-dispatched at most once per ``REDISPATCH_PACE_S``."""
        dispatched_at: float | None = None  # when this loop last re-dispatched it
        while True:
            outcome = ticket.wait(max(0.0, deadline - self._clock()))
            if outcome is None:
                return Outcome(SERVICE_UNAVAILABLE, "not committed in time (outcome unknown)")
            if outcome.reason != NOT_LEADER or checked is None:
                return outcome
            now = self._clock()
            if now >= deadline:
                return Outcome(SERVICE_UNAVAILABLE, "leader changed; envelope not ordered")
            # Let the new leader settle once per leader change, not once per envelope: a
            # batch of envelopes handed back together is re-dispatched without 20 ms each.
            if now - self._settled_at > REDISPATCH_PACE_S:
                time.sleep(REDISPATCH_PACE_S)
                self._settled_at = self._clock()
            elif dispatched_at is not None and now - dispatched_at < REDISPATCH_PACE_S:
                # Answered NOT_LEADER at once again (a leader the forwarder does not dial yet,
                # node.orderer.forward): not re-dispatched at once. Before, the envelope went
                # round here without a pause for 20 ms out of every 40 until its deadline
                # (tens of thousands of dispatches a second, half a core per waiting stream).
                time.sleep(min(REDISPATCH_PACE_S - (now - dispatched_at), deadline - now))
            # A resubmission may have waited here while its first copy's block committed.
            dispatched_at = self._clock()
            ticket = self._already_ordered(checked.tx_id, checked.raw) or self.dispatch_checked(checked, deadline)

    def stream(self, requests: Iterable[bytes], slot: StreamSlot | None = None
               ) -> Iterator[services_pb2.BroadcastResponse]:
        """Answers for a Broadcast stream, in order; with ``slot``, until the stream caps'
        sweeper refuses its caller (the refusal raised: node.orderer.streams)."""

        def dispatch(raw: bytes) -> _Held:
            checked, ticket = self.dispatch(raw)
            return _Held(checked, ticket, self._clock() + self._opt.commit_timeout_s)

        return ordered_answers(
            requests, dispatch, self._answer_held, max_in_flight=self._opt.max_in_flight_per_stream,
            on_error=stream_error_logger(_log, "broadcast"), weigh=len, max_bytes=self._opt.max_stream_bytes,
            slot=slot,
        )

    def _count(self, outcome: Outcome, tx_id: str) -> None:
        if outcome.accepted:
            self._metrics.accepted.inc()
            return
        self._metrics.count_rejected(outcome.reason)
        if outcome.reason == SERVICE_UNAVAILABLE:
            return
        # bad input: worth a log line, per reason the first at once, then one per interval
        # telling how many since (every one is counted in the metric): a line per refusal let
        # any certificate write 4096 lines (about 800 KB) for one 8 KiB message of empty envelopes
        told = self._refused_lines.note(outcome.reason)
        if told == 1:
            _log.info("event=envelope_refused tx_id=%r reason=%s detail=%r: refused envelope", tx_id,
                      outcome.reason, outcome.message)
        elif told > 1:
            _log.info("event=envelope_refused tx_id=%r reason=%s detail=%r refused=%d: refused envelope "
                      "(this many for this reason since the last line)", tx_id, outcome.reason,
                      outcome.message, told)

    def dispatch_many(self, raws: Sequence[bytes]) -> list[_Held]:
        """Validate several envelopes and dispatch the valid ones in one hand-off (to the
        chain when this node leads, else to the forwarder)."""
        deadline = self._clock() + self._opt.commit_timeout_s
        total = sum(len(r) for r in raws)
        if len(raws) > self._opt.max_batch_envelopes or total > self._opt.max_batch_bytes:
            refusal = Outcome(
                TOO_LARGE,
                f"batch of {len(raws)} envelopes / {total} bytes exceeds "
                f"{self._opt.max_batch_envelopes} envelopes / {self._opt.max_batch_bytes} bytes",
            )
            return [_Held(None, immediate(refusal), deadline)] * len(raws)  # one answer, shared
        held: list[_Held | None] = [None] * len(raws)
        valid: list[tuple[int, Checked]] = []
        dedup = self._recent is not None and self._recent.active()
        for i, raw in enumerate(raws):
            result = self._validator.check(raw)
            if not isinstance(result, Checked):
                held[i] = _Held(None, immediate(result[1], result[0]), deadline)
                continue
            done = self._already_ordered(result.tx_id, result.raw) if dedup else None
            if done is not None:
                held[i] = _Held(None, done, deadline)
            else:
                valid.append((i, result))
        if valid:
            for (i, checked), ticket in zip(valid, self._dispatch_valid(valid, deadline), strict=True):
                held[i] = _Held(checked, ticket, deadline)
        return [h for h in held if h is not None]

    def _dispatch_valid(self, valid: Sequence[tuple[int, Checked]], deadline: float) -> list[Ticket]:
        if not self._accepting:
            return [immediate(Outcome(SERVICE_UNAVAILABLE, "orderer is shutting down"), c.tx_id)
                    for _, c in valid]
        leader = self._wait_leader(min(deadline, self._clock() + self._opt.no_leader_wait_s))
        if not leader:
            return [immediate(Outcome(SERVICE_UNAVAILABLE, "no Raft leader (no quorum?)"), c.tx_id)
                    for _, c in valid]
        if leader == self._orderer.own_id():
            tickets = self._orderer.submit_many([(c.raw, c.is_config) for _, c in valid])
            for (_, c), t in zip(valid, tickets, strict=True):
                t.tx_id = c.tx_id
            return tickets
        many = getattr(self._forwarder, "submit_many", None)
        if many is not None:
            return list(many(leader, [(c.raw, c.tx_id) for _, c in valid]))
        return [self._forwarder.submit(leader, c.raw, c.tx_id) for _, c in valid]

    def _answer_held(self, held: _Held) -> services_pb2.BroadcastResponse:
        outcome = self.answer(held.checked, held.ticket, held.deadline)
        tx_id = held.checked.tx_id if held.checked is not None else held.ticket.tx_id
        self._count(outcome, tx_id)
        return services_pb2.BroadcastResponse(
            tx_id=tx_id, accepted=outcome.accepted, reason=outcome.reason, message=outcome.message
        )

    def batch_stream(
        self, requests: Iterable[list[bytes] | BatchDecodeError], context: grpc.ServicerContext | None = None,
        slot: StreamSlot | None = None,
    ) -> Iterator[services_pb2.BroadcastBatchResponse]:
        """Answers for a BroadcastBatch stream: one per envelope, in order, coalesced; ``slot``:
        as for :meth:`stream`."""

        def dispatch(batch: list[bytes] | BatchDecodeError) -> list[_Held | BatchDecodeError]:
            if isinstance(batch, BatchDecodeError):
                return [batch]
            return list(self.dispatch_many(batch))

        def answer(item: _Held | BatchDecodeError) -> services_pb2.BroadcastResponse:
            if isinstance(item, BatchTooLarge):
                err = RxError(TOO_LARGE, f"EnvelopeBatch refused: {item}")
                if context is None:
                    raise err
                abort_with(context, err)
            if isinstance(item, BatchDecodeError):
                err = RxError("BAD_PAYLOAD", f"not an EnvelopeBatch: {item}")
                if context is None:
                    raise err
                abort_with(context, err)
            return self._answer_held(item)

        def until_malformed(
            reqs: Iterable[list[bytes] | BatchDecodeError],
        ) -> Iterator[list[bytes] | BatchDecodeError]:
            # a malformed message ends the stream (BAD_PAYLOAD once the answers before it are
            # sent): nothing after it is read, so nothing after it is ordered unanswered
            for r in reqs:
                yield r
                if isinstance(r, BatchDecodeError):
                    return

        return coalesced_answers(
            until_malformed(requests), dispatch, answer, _ready,
            lambda answers: services_pb2.BroadcastBatchResponse(responses=answers),
            max_in_flight=max(1, self._opt.max_in_flight_per_stream // 64),
            max_per_message=self._opt.max_answers_per_message,
            on_error=stream_error_logger(_log, "broadcast"),
            weigh=batch_bytes, max_bytes=self._opt.max_stream_bytes,
            answer_bytes=self.answer_bytes, slot=slot,
        )


@dataclass(frozen=True)
class _Held:
    """A dispatched envelope travelling from the reader to the answer generator."""

    checked: Checked | None
    ticket: Ticket
    deadline: float


def _ready(item: _Held | BatchDecodeError) -> bool:
    """Whether the answer to ``item`` is known without waiting (NOT_LEADER re-dispatches).
    A malformed message never is: it must not be merged into the answers before it (it
    ends the stream once those are sent)."""
    if isinstance(item, BatchDecodeError):
        return False
    outcome = item.ticket.peek()
    return outcome is not None and outcome.reason != NOT_LEADER


# What one envelope read ahead costs besides its bytes (its answer, ticket and bookkeeping),
# counted in its read-ahead weight: empty envelopes weighed nothing, and a stream read ahead
# 128 messages of 1024 of them (131,072 answers held, about 200 MB).
ENVELOPE_READ_COST = 1024


def batch_bytes(batch: list[bytes] | BatchDecodeError) -> int:
    """The read-ahead weight of a decoded batch message: its envelope bytes, and
    ENVELOPE_READ_COST per envelope."""
    if isinstance(batch, BatchDecodeError):
        return 0
    return sum(len(r) for r in batch) + ENVELOPE_READ_COST * len(batch)


def decode_batch(data: bytes) -> list[bytes] | BatchDecodeError:
    """Request deserializer of the batch RPCs: the envelopes verbatim, or the decode error
    (answered in order, BAD_PAYLOAD -- or TOO_LARGE past MAX_READ_ENVELOPES envelopes --
    instead of gRPC's opaque INTERNAL)."""
    try:
        return split_batch(data, MAX_READ_ENVELOPES)
    except BatchDecodeError as err:
        return err


def _held_stream(
    streams: StreamCaps | None, context: grpc.ServicerContext, what: str,
    answers: Callable[[StreamSlot | None], Iterator[Resp]], check_caller: CallerCheck | None = None,
) -> Iterator[Resp]:
    """``answers()`` under a slot of ``streams`` (none: uncapped) for the caller's TLS certificate,
    or the call aborted TOO_MANY_STREAMS (RESOURCE_EXHAUSTED) before a request is read.

    A Broadcast stream holds a gRPC worker for as long as it lasts (and a reader thread): any
    certificate the mTLS layer admits, a patient's too, opening as many idle ones as the
    orderer has workers left none for Cluster.Step, Forward, Deliver or Admin calls. The
    certificate is checked with ``check_caller`` (the MSP in force) first: one the configuration
    refuses (revoked, expired, of an organisation removed, whose CA the orderer's bundle may
    still hold) gets no slot -- PERMISSION_DENIED with the MSP's reason -- as on the peers'
    gateway: certificates minted at will by a removed organisation's CA held client slots up
    to the total cap (TOO_MANY_STREAMS for every member's Broadcast). While the stream is open
    the caps' sweeper checks its caller again and, once it is refused, wakes the answer
    generator (given the slot: ``answers(slot)``), which ends the call PERMISSION_DENIED with the
    reason (node.stream_caps): the reader, blocked reading requests, never checked it."""
    slot = None
    if streams is not None:
        ident = peer_identity(context)
        try:
            if ident is not None and check_caller is not None:
                check_caller(context)
            slot = streams.admit(context, ident.cert_der if ident is not None else b"", what, ends_itself=True)
        except RxError as err:
            abort_with(context, err)
    try:
        yield from answers(slot)
    except RxError as err:
        if slot is None or err is not slot.refused:
            raise
        abort_with(context, err)
    finally:
        if slot is not None:
            slot.release()


def broadcast_batch_method_handler(
    handler: BroadcastHandler, streams: StreamCaps | None = None, check_caller: CallerCheck | None = None,
) -> grpc.RpcMethodHandler[list[bytes] | BatchDecodeError, services_pb2.BroadcastBatchResponse]:
    """Stream-stream handler of AtomicBroadcast.BroadcastBatch (envelopes never re-serialised);
    each stream is held under ``streams`` (node.stream_caps; none: uncapped) once
    ``check_caller`` admits its certificate (:func:`_held_stream`)."""

    def behaviour(
        requests: Iterator[list[bytes] | BatchDecodeError], context: grpc.ServicerContext
    ) -> Iterator[services_pb2.BroadcastBatchResponse]:
        return _held_stream(streams, context, "AtomicBroadcast.BroadcastBatch",
                            lambda slot: handler.batch_stream(requests, context, slot), check_caller)

    return grpc.stream_stream_rpc_method_handler(
        behaviour,
        request_deserializer=decode_batch,
        response_serializer=services_pb2.BroadcastBatchResponse.SerializeToString,
    )


def broadcast_method_handler(
    handler: BroadcastHandler, streams: StreamCaps | None = None, check_caller: CallerCheck | None = None,
) -> grpc.RpcMethodHandler[bytes, services_pb2.BroadcastResponse]:
    """Stream-stream handler taking raw envelope bytes (never re-serialised); each stream is
    held under ``streams`` (node.stream_caps; none: uncapped) once ``check_caller`` admits its
    certificate (:func:`_held_stream`)."""

    def behaviour(
        requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[services_pb2.BroadcastResponse]:
        return _held_stream(streams, context, "AtomicBroadcast.Broadcast", lambda slot: handler.stream(requests, slot),
                            check_caller)

    return grpc.stream_stream_rpc_method_handler(
        behaviour,
        request_deserializer=None,
        response_serializer=services_pb2.BroadcastResponse.SerializeToString,
    )
