"""The gRPC Gateway servicer: maps each RPC to its module and errors to status codes."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc

from node.errors import RxError, abort_with
from node.peer.gateway.commit_status import commit_status
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.endorse import endorse
from node.peer.gateway.evaluate import evaluate
from node.peer.gateway.events import events
from node.peer.gateway.submit import submit
from node.peer.gateway.transact import transact, transact_batch


class GatewayService(services_pb2_grpc.GatewayServicer):
    """gRPC Gateway."""

    def __init__(self, deps: GatewayDeps, workers: int = 32) -> None:
        self._deps = deps
        self._remote_pool = ThreadPoolExecutor(workers, thread_name_prefix="gw-remote")
        self._work_pool = ThreadPoolExecutor(workers, thread_name_prefix="gw-transact")

    def close(self) -> None:
        """Stop the worker pools and the remote endorsement streams."""
        close_remotes = getattr(self._deps.remotes, "close", None)  # test doubles may have none
        if close_remotes is not None:
            close_remotes()
        self._work_pool.shutdown(wait=False, cancel_futures=True)
        self._remote_pool.shutdown(wait=False, cancel_futures=True)

    def Evaluate(
        self, request: services_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> services_pb2.EvaluateResponse:
        try:
            return evaluate(self._deps, request)
        except RxError as err:
            abort_with(context, err)

    def Endorse(
        self, request: services_pb2.EndorseRequest, context: grpc.ServicerContext
    ) -> services_pb2.EndorseResponse:
        try:
            return endorse(self._deps, request, self._remote_pool)
        except RxError as err:
            abort_with(context, err)

    def Submit(
        self, request: services_pb2.SubmitRequest, context: grpc.ServicerContext
    ) -> services_pb2.SubmitResponse:
        try:
            return submit(self._deps, request)
        except RxError as err:
            abort_with(context, err)

    def CommitStatus(
        self, request: services_pb2.CommitStatusRequest, context: grpc.ServicerContext
    ) -> services_pb2.CommitStatusResponse:
        try:
            return commit_status(self._deps, request)
        except RxError as err:
            abort_with(context, err)

    def Events(
        self, request: services_pb2.EventsRequest, context: grpc.ServicerContext
    ) -> Iterator[services_pb2.EventsResponse]:
        try:
            yield from events(self._deps, request, context.is_active)
        except RxError as err:
            abort_with(context, err)

    def Transact(
        self,
        request_iterator: Iterator[services_pb2.TransactRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[services_pb2.TransactResponse]:
        yield from transact(
            self._deps, request_iterator, context.is_active, self._work_pool, self._remote_pool
        )

    def TransactBatch(
        self,
        request_iterator: Iterator[services_pb2.TransactBatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[services_pb2.TransactBatchResponse]:
        yield from transact_batch(
            self._deps, request_iterator, context.is_active, self._work_pool, self._remote_pool
        )
