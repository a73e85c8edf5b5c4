"""The gRPC Gateway servicer: maps each RPC to its module and errors to status codes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc

from node.crypto.tls import peer_identity
from node.errors import guarded_stream, guarded_unary
from node.identity.caller import CallerCheck, while_admitted
from node.peer.gateway.commit_status import commit_status
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.endorse import endorse
from node.peer.gateway.evaluate import evaluate
from node.peer.gateway.events import events, own_txs_only
from node.peer.gateway.submit import submit
from node.peer.gateway.transact import start_reader, transact, transact_batch
from node.stream_caps import StreamCaps, StreamSlot

CLOSE_WAIT_S = 5.0  # how long close() waits for the gateway's running work
UNCAPPED = 1 << 30  # stream caps when none are given (unit tests)
RECHECK_S = 1.0  # how often an open Transact/TransactBatch stream's caller is checked again


class _InFlight:
    """Counts the gateway's own running work -- Transact reader threads (a submit reads the
    ledger on them) and work-pool tasks (local endorsements) -- so that :meth:`wait` can
    hold the peer's shutdown until none is left and the ledger is closed under nobody."""

    def __init__(self) -> None:
        self._n = 0
        self._cv = threading.Condition()

    def enter(self) -> None:
        with self._cv:
            self._n += 1

    def leave(self, *_: object) -> None:
        with self._cv:
            self._n -= 1
            if self._n == 0:
                self._cv.notify_all()

    def reader(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            finally:
                self.leave()

        self.enter()
        try:
            start_reader(name, run)
        except BaseException:
            self.leave()
            raise

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Count a unary handler's work (it may read the ledger) while it runs."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def wait(self, timeout_s: float) -> bool:
        """True once nothing runs (within ``timeout_s``)."""
        with self._cv:
            return self._cv.wait_for(lambda: self._n == 0, timeout=timeout_s)


class _TrackedPool(ThreadPoolExecutor):
    """A thread pool whose submitted tasks count as in-flight until done or cancelled."""

    def __init__(self, workers: int, prefix: str, inflight: _InFlight) -> None:
        super().__init__(workers, thread_name_prefix=prefix)
        self._inflight = inflight

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._inflight.enter()
        try:
            fut = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._inflight.leave()
            raise
        fut.add_done_callback(self._inflight.leave)  # also runs when shutdown cancels it
        return fut


class GatewayService(services_pb2_grpc.GatewayServicer):
    """gRPC Gateway."""

    def __init__(self, deps: GatewayDeps, workers: int = 32, streams: StreamCaps | None = None) -> None:
        self._deps = deps
        # CommitStatus and Events serve committed data without a signed request: the TLS
        # certificate is checked with the MSP, and their waits are capped (TOO_MANY_STREAMS).
        # Transact and TransactBatch streams (each holds a gRPC worker and a reader thread
        # for as long as it is open) share the same caps, per TLS certificate.
        self._check_caller = CallerCheck(lambda: deps.configs.current().msp)
        self._streams = streams or StreamCaps(UNCAPPED, UNCAPPED)
        self._inflight = _InFlight()
        self._remote_pool = ThreadPoolExecutor(workers, thread_name_prefix="gw-remote")
        self._work_pool = _TrackedPool(workers, "gw-transact", self._inflight)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Stop the worker pools and the remote endorsement streams, then wait up to
        ``wait_s`` for the Transact readers and endorsements still running (call it after
        the gRPC server stopped: its cancelled streams end the readers). True when none
        is left, so the ledger can be closed."""
        self._deps.remotes.close()
        self._work_pool.shutdown(wait=False, cancel_futures=True)
        self._remote_pool.shutdown(wait=False, cancel_futures=True)
        return self._inflight.wait(wait_s)

    def _admit_stream(self, context: grpc.ServicerContext, what: str) -> StreamSlot:
        """A stream cap's slot for a Transact/TransactBatch call, counted per TLS client
        certificate (TOO_MANY_STREAMS over a cap). The requests it carries are signed and
        checked one by one, but the stream holds a gRPC worker and a reader thread from the
        start, so the certificate is checked with the MSP first: one the configuration in
        force refuses (revoked, expired, of an organisation removed, whose CA the node's bundle
        may still hold) gets no slot -- it could otherwise hold them up to the total cap with
        certificates minted at will. A caller without one (only on an insecure test server)
        counts as one anonymous caller."""
        ident = peer_identity(context)
        if ident is not None:
            self._check_caller(context)
        return self._streams.admit(context, ident.cert_der if ident is not None else b"", what, ends_itself=True)

    def _while_admitted(self, context: grpc.ServicerContext, slot: StreamSlot) -> Callable[[], bool]:
        """``context.is_active`` for a Transact/TransactBatch stream, which also checks its
        caller again (at most every RECHECK_S): RxError with the MSP's reason (REVOKED_CERT,
        UNKNOWN_ORG ..., PERMISSION_DENIED) once a config update revoked its certificate or
        removed its organisation, or it expired, which ends the stream and frees its slot. The
        requests it carries are refused one by one then, but a stream kept open (idle) held its
        gRPC worker, reader thread and cap slot for as long as the connection lived. The caps'
        sweeper's refusal of the caller (``slot``) ends it as well."""
        ident = peer_identity(context)
        if ident is None:  # (only on an insecure test server)
            return context.is_active
        checked = [time.monotonic()]  # _admit_stream checked it

        def active() -> bool:
            slot.check()
            if not context.is_active():
                return False
            now = time.monotonic()
            if now - checked[0] >= RECHECK_S:
                self._check_caller.check(ident)
                checked[0] = now
            return True

        return active

    @guarded_unary
    def Evaluate(
        self, request: services_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> services_pb2.EvaluateResponse:
        with self._inflight.busy():  # it may read the ledger: the peer's stop waits for it
            return evaluate(self._deps, request)

    @guarded_unary
    def Endorse(
        self, request: services_pb2.EndorseRequest, context: grpc.ServicerContext
    ) -> services_pb2.EndorseResponse:
        with self._inflight.busy():  # it may read the ledger: the peer's stop waits for it
            return endorse(self._deps, request, self._remote_pool)

    @guarded_unary
    def Submit(
        self, request: services_pb2.SubmitRequest, context: grpc.ServicerContext
    ) -> services_pb2.SubmitResponse:
        return submit(self._deps, request)  # waits for a commit (woken when the notifier closes): not counted

    @guarded_unary
    def CommitStatus(
        self, request: services_pb2.CommitStatusRequest, context: grpc.ServicerContext
    ) -> services_pb2.CommitStatusResponse:
        caller = self._check_caller(context)
        held: list[StreamSlot] = []

        def wait_slot() -> StreamSlot:
            held.append(self._streams.admit(context, caller.cert_der, "Gateway.CommitStatus", ends_itself=True))
            return held[-1]

        def active() -> bool:  # a wait ends with the caps' sweeper's refusal of its caller
            if held:
                held[-1].check()
            return context.is_active()

        # waits for a commit (woken when the notifier closes): not counted in _inflight
        return commit_status(self._deps, request, active, wait_slot)

    @guarded_stream
    def Events(
        self, request: services_pb2.EventsRequest, context: grpc.ServicerContext
    ) -> Iterator[services_pb2.EventsResponse]:
        caller = self._check_caller(context)
        with self._streams.admit(context, caller.cert_der, "Gateway.Events", ends_itself=True) as slot:
            # a follower stream: ends when the call is cancelled or the caller is no longer
            # admitted (checked before each block's events, and by the caps' sweeper while it
            # waits), not counted in _inflight; a patient's certificate is served only its own
            # transactions (events.py)
            yield from while_admitted(self._check_caller, caller,
                                      events(self._deps, request, slot.live(context.is_active), own_txs_only(caller)))

    @guarded_stream
    def Transact(
        self,
        request_iterator: Iterator[services_pb2.TransactRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[services_pb2.TransactResponse]:
        # an RxError (e.g. the peer is stopping with requests unanswered) ends the stream
        # with its status
        with self._admit_stream(context, "Gateway.Transact") as slot:
            yield from transact(
                self._deps, request_iterator, self._while_admitted(context, slot), self._work_pool,
                self._remote_pool, start=self._inflight.reader,
            )

    @guarded_stream
    def TransactBatch(
        self,
        request_iterator: Iterator[services_pb2.TransactBatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[services_pb2.TransactBatchResponse]:
        # an RxError (e.g. the peer is stopping with requests unanswered) ends the stream
        # with its status
        with self._admit_stream(context, "Gateway.TransactBatch") as slot:
            yield from transact_batch(
                self._deps, request_iterator, self._while_admitted(context, slot), self._work_pool,
                self._remote_pool, start=self._inflight.reader,
            )

