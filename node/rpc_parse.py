"""Requests that do not parse get BAD_REQUEST with a reason code, not gRPC's bare INTERNAL.

gRPC deserializes a request before any servicer code runs; when the bytes are not a message
of the method's type it ends the call with INTERNAL "Exception deserializing request!" and no
``rxchain-reason``, so a client cannot tell a malformed request from a crashed node.
:class:`ParseGuard`, a server interceptor installed on every peer and orderer server, wraps
each method's deserializer: bytes that do not parse become an :class:`Unparsed` marker, and
the call is ended with INVALID_ARGUMENT and reason BAD_REQUEST (naming the method and the
parse error) before the servicer sees anything -- for a stream, at the message that does not
parse, after the ones before it were handled. Nothing else changes: a method without a
deserializer (raw bytes) is left alone. Cost: wrapping a method's handler, once per call
(~2 us), and per request message two extra Python calls (the deserializer's wrapper, and the
isinstance check of the guarded behaviour or stream iterator).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from node.errors import RxError, abort_with

BAD_REQUEST = "BAD_REQUEST"


@dataclass(frozen=True)
class Unparsed:
    """What a request that did not parse is handed on as."""

    method: str
    error: str


def _refuse(context: grpc.ServicerContext, bad: Unparsed) -> None:
    abort_with(context, RxError(BAD_REQUEST, f"{bad.method}: the request does not parse: {bad.error}",
                                grpc.StatusCode.INVALID_ARGUMENT))


def _checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Unparsed):
            _refuse(context, request)
        yield request


if TYPE_CHECKING:  # generic in the type stubs only
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


class ParseGuard(_Interceptor):
    """See the module docstring."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or not hasattr(handler, "_replace"):
            return handler
        method = handler_call_details.method
        parse = handler.request_deserializer

        def deserialize(raw: bytes) -> Any:
            try:
                return parse(raw)
            except Exception as exc:  # noqa: BLE001 -- DecodeError and whatever a parser raises
                return Unparsed(method, f"{type(exc).__name__}: {exc}")

        changes: dict[str, Any] = {"request_deserializer": deserialize}
        if handler.unary_unary is not None:
            changes["unary_unary"] = _unary(handler.unary_unary)
        if handler.unary_stream is not None:
            changes["unary_stream"] = _unary(handler.unary_stream)
        if handler.stream_unary is not None:
            changes["stream_unary"] = _streaming(handler.stream_unary)
        if handler.stream_stream is not None:
            changes["stream_stream"] = _streaming(handler.stream_stream)
        replaced: grpc.RpcMethodHandler[Any, Any] = handler._replace(**changes)
        return replaced


def _unary(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Unparsed):
            _refuse(context, request)
        return behavior(request, context)

    return guarded


def _streaming(behavior: Callable[[Iterator[Any], grpc.ServicerContext], Any],
               ) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
    def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behavior(_checked(requests, context), context)

    return guarded


__all__ = ["BAD_REQUEST", "ParseGuard", "Unparsed"]
