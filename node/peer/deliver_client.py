"""Pulls blocks from the ordering service and hands them to the committer.

One thread: connect to an orderer, ask ``Deliver(start_block = ledger height, follow)``,
commit every block received, and on any failure (stream error, orderer down, a block the
validator refuses) move to the next orderer, round robin, after a bounded exponential
backoff. The backoff resets once a block is committed. Because every request starts at
the ledger's height, a restart, a reconnect or a lagging peer resumes exactly where it
stopped.

Stall detection: an orderer that keeps the stream open but sends nothing (paused, cut
off from its cluster, or censoring) is noticed by a progress watchdog. Once no block has
arrived for ``stall_s``, every check (each ``stall_s / 2``) asks all orderers at once for
their height (Admin.Status, ``probe_timeout_s`` each, in parallel) and drops the stream when

* another orderer is ahead of this peer's ledger (reason ``STALLED``), or
* the stream has been silent for ``unresponsive_s`` and the serving orderer itself does not
  answer the probe in time (a paused or cut-off process, reason ``UNRESPONSIVE``): gRPC
  keepalive would notice only after ``keepalive_time + keepalive_timeout`` (up to ~15 s).

The puller then moves to the orderer that answered with the greatest height, without the
failure backoff (the probe just showed it is alive), and resumes at the ledger height as
always, so no block is applied twice. ``DeliverSettings.from_extra`` reads these bounds from
a node.yaml's ``extra`` keys.

Every Deliver request tells the highest consortium protocol version this release implements
(``max_protocol_version``), and, given ``sign_release``, in a ReleaseStatement the peer signs
afresh for each request (its name, the version, its clock, its certificate's digest, the
network's genesis block header hash:
node.identity.release): the orderers attribute it to this peer by its TLS certificate, relay
the signed statement among themselves, and refuse a config update raising the version until
every peer has told, signed, that it implements it (node.orderer.releases). So a peer's
release is known to the ordering service once it has connected (a peer never connected counts
as lacking).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from rxchain.v1 import block_pb2, services_pb2, services_pb2_grpc

from node.config import Endpoint
from node.errors import RxError
from node.protocol import MAX_PROTOCOL_VERSION

_log = logging.getLogger(__name__)

# Refusals of a block as received (bad chain, number or signatures): try another orderer.
# Anything else raised while committing (disk full, I/O error, corrupt ledger) is fatal:
# the ledger may be half-written, so the peer stops and reopens it (see __main__).
BLOCK_REFUSALS = frozenset(
    {"BAD_BLOCK", "BAD_ORDERER_SIGNATURE", "BAD_BLOCK_NUMBER", "BAD_PREVIOUS_HASH"}
)

# What an orderer's status may end a Deliver stream with (OK: a range delivered); any other
# reason, the orderer's own words, is STREAM_ENDED: it labels the peer's failover metric and
# its log lines, and an orderer (or a later release) must not add a label per answer.
STATUS_REASONS = frozenset({"OK", "STREAM_ENDED"})
# The part of an orderer's status message kept in the failover log line.
STATUS_MESSAGE_CHARS = 200

ChannelFactory = Callable[[str], grpc.Channel]
# version -> (serialized ReleaseStatement, signature): what a peer signs for a Deliver request
ReleaseSigner = Callable[[int], tuple[bytes, bytes]]


@dataclass(frozen=True)
class Backoff:
    """Bounded exponential backoff between attempts."""

    initial_s: float = 0.05
    max_s: float = 2.0
    factor: float = 2.0

    def next(self, current: float) -> float:
        """The delay after ``current`` (0 = first failure)."""
        return self.initial_s if current <= 0 else min(self.max_s, current * self.factor)


@dataclass(frozen=True)
class DeliverSettings:
    """Watchdog bounds (seconds); see the module docstring."""

    stall_s: float = 1.0
    unresponsive_s: float = 3.0
    probe_timeout_s: float = 1.0

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> DeliverSettings:
        """Read ``deliver_stall_s``, ``deliver_unresponsive_s`` and ``deliver_probe_timeout_s``
        from a node.yaml ``extra`` mapping (absent keys keep the defaults)."""
        keys = {"stall_s": "deliver_stall_s", "unresponsive_s": "deliver_unresponsive_s",
                "probe_timeout_s": "deliver_probe_timeout_s"}
        values: dict[str, float] = {}
        for attr, key in keys.items():
            if key not in extra:
                continue
            raw = extra[key]
            # a YAML number only: float() would take "1_000", " 5 " or a boolean as seconds
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise RxError("BAD_CONFIG", f"extra.{key} must be a number of seconds, not {type(raw).__name__}")
            value = float(raw)
            if not value >= 0 or value > 3600:
                raise RxError("BAD_CONFIG", f"extra.{key} must be between 0 and 3600 seconds")
            values[attr] = value
        settings = cls(**values)
        if settings.stall_s > 0 and settings.probe_timeout_s <= 0:
            raise RxError("BAD_CONFIG", "extra.deliver_probe_timeout_s must be positive")
        return settings


def _status_error(reason: str, message: str) -> RxError:
    """The error a Deliver stream's status ends it with: a reason of :data:`STATUS_REASONS`
    (another is named in the message), the orderer's message cut to its first characters."""
    if len(message) > STATUS_MESSAGE_CHARS:
        message = message[:STATUS_MESSAGE_CHARS] + "..."
    if reason in STATUS_REASONS:
        return RxError(reason, message)
    named = reason if len(reason) <= 64 else reason[:64] + "..."
    return RxError("STREAM_ENDED", f"status {named!r}: {message}" if reason else message)


@dataclass(frozen=True)
class _Probe:
    """What one Admin.Status probe found: ``answered`` is False on no answer in time."""

    answered: bool
    height: int


def _probe_result(fut: Any) -> _Probe:
    try:
        return _Probe(True, int(fut.result().height))
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        silent = code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                          grpc.StatusCode.CANCELLED)
        return _Probe(not silent, -1)
    except grpc.FutureCancelledError:
        return _Probe(False, -1)


class _Redial(Exception):
    """The message bound in force rose since the stream's channel was dialled."""

    def __init__(self, was: int, now: int) -> None:
        super().__init__(f"message bound {was} -> {now}")
        self.was = was
        self.now = now


class _Fatal(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class DeliverClient:
    """Block puller with failover across orderers (see module docstring)."""

    def __init__(
        self,
        orderers: Sequence[Endpoint],
        channels: ChannelFactory,
        height: Callable[[], int],
        commit: Callable[[block_pb2.Block], object],
        backoff: Backoff = Backoff(),
        on_error: Callable[[str, str], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        stall_s: float = 1.0,
        probe_timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        unresponsive_s: float = 3.0,
        max_protocol_version: int = MAX_PROTOCOL_VERSION,
        sign_release: ReleaseSigner | None = None,
        message_bound: Callable[[], int] | None = None,
    ) -> None:
        """``max_protocol_version``: told to the orderers in every Deliver request (the
        highest consortium protocol version this release implements; node.orderer.releases),
        in a statement ``sign_release`` signs (None: unsigned, which never admits a raise).
        ``message_bound``: the gRPC message bound in force, which ``channels`` dials with; once a
        committed block raises it (a config update), the stream is dialled again at the ledger
        height, from the same orderer: the blocks after a raise may be larger than the channel
        accepts (a new peer starts with the genesis config's bound). A lowered bound is not
        dialled again: the stream keeps accepting the larger blocks (the orderers cut the
        blocks behind a config block lowering it within both configs' limits, and a stream
        dialled later takes the lowered one)."""
        if not orderers:
            raise RxError("BAD_CONFIG", "the peer has no orderers to pull blocks from")
        self._orderers = list(orderers)
        self._max_protocol_version = max_protocol_version
        self._sign_release = sign_release
        self._message_bound = message_bound
        self._channels = channels
        self._height = height
        self._commit = commit
        self._backoff = backoff
        self._on_error = on_error
        self._on_fatal = on_fatal
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stall_s = stall_s
        self._unresponsive_s = unresponsive_s
        self._probe_timeout_s = probe_timeout_s
        self._probe_channels: dict[str, grpc.Channel] = {}
        self._clock = clock
        self._last_progress = clock()
        self._index = 0
        self._stalled = ""
        self._stall_reason = ""
        self.current: str = ""

    def start(self) -> None:
        """Start the puller thread."""
        self._thread = threading.Thread(target=self._run, name="deliver-client", daemon=True)
        self._thread.start()
        if self._stall_s > 0:
            self._watchdog = threading.Thread(
                target=self._watch, name="deliver-watchdog", daemon=True
            )
            self._watchdog.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop pulling (cancels the open stream) and join the thread."""
        self._stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._watchdog is not None:
            self._watchdog.join(timeout_s)
        for channel in self._probe_channels.values():
            channel.close()

    def _watch(self) -> None:
        """Drop a silent stream whose orderer is behind or does not answer (module docstring)."""
        while not self._stop.wait(self._stall_s / 2):
            silent = self._clock() - self._last_progress
            if silent < self._stall_s:
                continue
            with self._lock:
                current = self._index % len(self._orderers)
                call = self._call
            if call is None:
                continue
            height = self._height()
            probes = self._probe_all(current, height)
            if self._stop.is_set():
                return
            others = [i for i in range(len(self._orderers)) if i != current and probes[i].answered]
            best = max(others, key=lambda i: probes[i].height, default=-1)
            if best >= 0 and probes[best].height > height:
                reason = "STALLED"
            elif silent >= self._unresponsive_s and not probes[current].answered:
                reason = "UNRESPONSIVE"
                if best < 0:
                    best = (current + 1) % len(self._orderers)  # nobody answered: plain round robin
            else:
                continue
            with self._lock:
                if self._call is not call:
                    continue  # the stream already ended on its own
                self._stalled = self._orderers[current].name
                self._stall_reason = reason
                self._index = best - 1  # _run moves on by one
            _log.warning(
                "event=deliver_stalled reason=%s orderer=%s silent_s=%.1f next=%s next_height=%d height=%d",
                reason, self._orderers[current].name, silent, self._orderers[best].name,
                probes[best].height, height,
            )
            call.cancel()

    def _probe_all(self, current: int, height: int) -> list[_Probe]:
        """Admin.Status of every orderer in parallel, each bounded by ``probe_timeout_s``.
        Returns as soon as another orderer answers above ``height`` (no need to wait out a
        paused one) or every probe is done; unfinished probes count as unanswered. A server
        that answers with an error (e.g. no Admin service) is alive, height -1."""
        results: list[_Probe | None] = [None] * len(self._orderers)
        pending = [len(self._orderers)]
        lock = threading.Lock()
        decided = threading.Event()

        def done(index: int, fut: Any) -> None:
            probe = _probe_result(fut)
            with lock:
                results[index] = probe
                pending[0] -= 1
                last = pending[0] == 0
            if last or (index != current and probe.height > height):
                decided.set()

        futures: list[Any] = []
        for ep in self._orderers:
            channel = self._probe_channels.get(ep.target)
            if channel is None:
                channel = self._probe_channels[ep.target] = self._channels(ep.target)
            futures.append(services_pb2_grpc.AdminStub(channel).Status.future(
                services_pb2.StatusRequest(), timeout=self._probe_timeout_s))
        for index, fut in enumerate(futures):
            fut.add_done_callback(functools.partial(done, index))
        decided.wait(self._probe_timeout_s + 1.0)
        with lock:
            out = [r if r is not None else _Probe(False, -1) for r in results]
        for fut in futures:
            fut.cancel()  # a no-op for finished ones
        return out

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            with self._lock:
                index = self._index
            ep = self._orderers[index % len(self._orderers)]
            self.current = ep.name
            progressed = False
            try:
                progressed = self._pull(ep)
                reason = "STREAM_ENDED"
                detail = "orderer ended the stream"
            except _Redial as redial:
                with self._lock:
                    dropped = self._stalled == ep.name
                    if dropped:  # the watchdog dropped this stream meanwhile: its choice stands
                        reason, self._stalled = self._stall_reason, ""
                if not dropped:
                    _log.info("event=deliver_redial orderer=%s message_bound=%d was=%d",
                              ep.name, redial.now, redial.was)
                    delay = 0.0
                    continue
                progressed = True
                detail = ("no blocks while others advance" if reason == "STALLED"
                          else "silent stream and no answer to a probe")
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                if code == grpc.StatusCode.CANCELLED and self._stop.is_set():
                    return
                reason, detail = "SERVICE_UNAVAILABLE", f"{code}: {exc}"
                with self._lock:
                    if self._stalled == ep.name:
                        reason, self._stalled = self._stall_reason, ""
                        detail = ("no blocks while others advance" if reason == "STALLED"
                                  else "silent stream and no answer to a probe")
            except RxError as err:
                reason, detail = err.reason, err.message
            except _Fatal as fatal:
                _log.critical("event=commit_failed detail=%r", str(fatal.cause), exc_info=fatal.cause)
                if self._on_fatal is not None:
                    self._on_fatal(fatal.cause)
                return
            if self._stop.is_set():
                return
            _log.warning("event=deliver_failover orderer=%s reason=%s detail=%r", ep.name, reason, detail)
            if self._on_error is not None:
                self._on_error(ep.name, reason)
            with self._lock:
                self._index += 1
            if progressed or reason in ("STALLED", "UNRESPONSIVE"):
                delay = 0.0  # the watchdog's probe just showed the next orderer alive
            else:
                delay = self._backoff.next(delay)
            self._stop.wait(delay if delay else self._backoff.initial_s)

    def _bound(self) -> int:
        return self._message_bound() if self._message_bound is not None else 0

    def _pull(self, ep: Endpoint) -> bool:
        """Commit the blocks of one Deliver stream from ``ep``; True if any was committed.
        _Redial once a committed block raised the message bound the stream was dialled at."""
        dialled = self._bound()
        stub = services_pb2_grpc.AtomicBroadcastStub(self._channels(ep.target))
        start = self._height()
        request = services_pb2.DeliverRequest(
            start_block=start, follow=True, max_protocol_version=self._max_protocol_version)
        if self._sign_release is not None:
            request.release_statement, request.release_signature = self._sign_release(self._max_protocol_version)
        call: Any = stub.Deliver(request)
        with self._lock:
            self._call = call
        self._last_progress = self._clock()
        if self._stop.is_set():
            call.cancel()
        progressed = False
        try:
            for resp in call:
                if self._stop.is_set():
                    return progressed
                if resp.HasField("status"):
                    raise _status_error(resp.status.reason, resp.status.message)
                block = resp.block
                expected = self._height()
                if block.header.number < expected:
                    continue  # already committed (e.g. a duplicate after reconnect)
                try:
                    self._commit(block)
                except RxError as err:
                    if err.reason not in BLOCK_REFUSALS:
                        raise _Fatal(err) from err
                    raise
                except Exception as exc:
                    raise _Fatal(exc) from exc
                progressed = True
                self._last_progress = self._clock()
                now = self._bound()
                if now > dialled:
                    raise _Redial(dialled, now)
        finally:
            call.cancel()
            with self._lock:
                self._call = None
        return progressed
