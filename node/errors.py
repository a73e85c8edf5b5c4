"""Errors with reason codes, and their mapping to gRPC status codes.

Every refusal in rxchain carries a machine-readable reason code (``BAD_SIGNATURE``,
``UNKNOWN_CREATOR``, ``NOT_FOLLOW_UP`` ...) and a human-readable message. Servicers abort
with :func:`abort_with`; the reason travels in trailing metadata ``rxchain-reason`` and,
structured, in ``rxchain-error-bin`` (a serialized ``rxchain.v1.ErrorDetail``). Servicer
methods decorated with :func:`guarded_unary` / :func:`guarded_stream` abort with an RxError's
reason, and turn any other exception into a logged ``INTERNAL`` (never gRPC's ``UNKNOWN``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import grpc

_log = logging.getLogger(__name__)

REASON_METADATA_KEY = "rxchain-reason"
DETAIL_METADATA_KEY = "rxchain-error-bin"

# Refusals an envelope's bytes alone decide: every orderer (and gateway) gives them the same at
# any time, so they stay definite even after an earlier attempt whose answer was lost (every
# other refusal of a retry then means the outcome is unknown: COMMIT_UNKNOWN).
ENVELOPE_REFUSALS = frozenset({"BAD_PAYLOAD", "BAD_TXID", "BAD_SIGNATURE"})

# Default gRPC status per reason code family; anything unlisted is FAILED_PRECONDITION.
_GRPC_CODES: dict[str, grpc.StatusCode] = {
    "BAD_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "BAD_PAYLOAD": grpc.StatusCode.INVALID_ARGUMENT,
    "BAD_HEADER": grpc.StatusCode.INVALID_ARGUMENT,
    "BAD_ARGUMENTS": grpc.StatusCode.INVALID_ARGUMENT,
    "BAD_POLICY": grpc.StatusCode.INVALID_ARGUMENT,
    "BAD_CONFIG": grpc.StatusCode.INVALID_ARGUMENT,
    "BAD_CERT": grpc.StatusCode.UNAUTHENTICATED,
    "TOO_LARGE": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "TOO_MANY_STREAMS": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "BAD_SIGNATURE": grpc.StatusCode.UNAUTHENTICATED,
    "UNKNOWN_ORG": grpc.StatusCode.PERMISSION_DENIED,
    "UNKNOWN_CREATOR": grpc.StatusCode.PERMISSION_DENIED,
    "EXPIRED_CERT": grpc.StatusCode.PERMISSION_DENIED,
    "REVOKED_CERT": grpc.StatusCode.PERMISSION_DENIED,
    "ACCESS_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "WRONG_ROLE": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_AN_ORDERER": grpc.StatusCode.PERMISSION_DENIED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "SERVICE_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "TIMEOUT": grpc.StatusCode.DEADLINE_EXCEEDED,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


class RxError(Exception):
    """A refusal with a reason code. ``str(err)`` is ``"REASON: message"``."""

    def __init__(self, reason: str, message: str = "", grpc_code: grpc.StatusCode | None = None):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message
        self.grpc_code = grpc_code or _GRPC_CODES.get(reason, grpc.StatusCode.FAILED_PRECONDITION)


def error_detail_bytes(err: RxError) -> bytes:
    """Serialized ``ErrorDetail`` for ``err``."""
    from rxchain.v1 import identity_pb2

    return identity_pb2.ErrorDetail(reason=err.reason, message=err.message).SerializeToString()


# The most UTF-8 bytes of a message an aborted RPC carries. The message rides in its trailers
# twice (grpc-message, percent-encoded: up to 3 bytes a byte, and rxchain-error-bin), and gRPC
# clients drop trailers over 8 KiB by default (RESOURCE_EXHAUSTED "metadata size exceeds ...
# limit": the reason code lost). Many messages quote the request (a consortium id, a contract
# name, organisations asked for), and a contract's may be 1024 characters of Chinese text.
MAX_WIRE_MESSAGE_BYTES = 1024


def wire_error(err: RxError) -> RxError:
    """``err`` with its message cut to :data:`MAX_WIRE_MESSAGE_BYTES` (saying so), for the wire."""
    raw = err.message.encode("utf-8", "replace")
    if len(raw) <= MAX_WIRE_MESSAGE_BYTES:
        return err
    head = raw[:MAX_WIRE_MESSAGE_BYTES].decode("utf-8", "ignore")
    return RxError(err.reason, f"{head}... ({len(raw)} bytes, cut)", err.grpc_code)


def abort_with(context: grpc.ServicerContext, err: RxError) -> NoReturn:
    """Abort the current RPC with ``err``'s status code and reason metadata (the message
    cut to :data:`MAX_WIRE_MESSAGE_BYTES`)."""
    err = wire_error(err)
    context.set_trailing_metadata(
        (
            (REASON_METADATA_KEY, err.reason),
            (DETAIL_METADATA_KEY, error_detail_bytes(err)),
        )
    )
    try:
        context.abort(err.grpc_code, str(err))
    except Exception as exc:
        exc.rx_aborted = True  # type: ignore[attr-defined]  # see _is_abort
        raise
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _is_abort(exc: BaseException) -> bool:
    """True for the exception ``context.abort`` raises (the RPC's status is already set):
    marked by :func:`abort_with`, or grpc's bare ``Exception()`` of a direct abort."""
    return bool(getattr(exc, "rx_aborted", False)) or (type(exc) is Exception and not exc.args)


_Self = TypeVar("_Self")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_MAX_INTERNAL_DETAIL = 200


def _internal(method: str, exc: Exception) -> RxError:
    _log.exception("event=rpc_internal_error method=%s error=%s", method, type(exc).__name__)
    return RxError("INTERNAL", f"{method} failed: {type(exc).__name__}: {exc}"[:_MAX_INTERNAL_DETAIL])


def _abort_for(context: grpc.ServicerContext, method: str, exc: Exception) -> NoReturn:
    """What a guarded servicer does with an exception: an RxError aborts with its reason, an
    abort already made passes through, anything else is a logged INTERNAL."""
    if isinstance(exc, RxError):
        abort_with(context, exc)
    if _is_abort(exc):
        raise exc
    abort_with(context, _internal(method, exc))


def guarded_unary(
    method: Callable[[_Self, _Req, grpc.ServicerContext], _Resp],
) -> Callable[[_Self, _Req, grpc.ServicerContext], _Resp]:
    """Decorate a unary servicer method: an RxError aborts with its reason; any other
    exception (a bug, ``RecursionError`` on hostile input ...) is logged and aborts with
    ``INTERNAL`` instead of gRPC's reasonless ``UNKNOWN``."""
    name = method.__qualname__

    @functools.wraps(method)
    def wrapper(self: _Self, request: _Req, context: grpc.ServicerContext) -> _Resp:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every exception gets a reason code
            _abort_for(context, name, exc)

    return wrapper


def guarded_stream(
    method: Callable[[_Self, _Req, grpc.ServicerContext], Iterator[_Resp]],
) -> Callable[[_Self, _Req, grpc.ServicerContext], Iterator[_Resp]]:
    """:func:`guarded_unary` for a method returning a response stream."""
    name = method.__qualname__

    @functools.wraps(method)
    def wrapper(self: _Self, request: _Req, context: grpc.ServicerContext) -> Iterator[_Resp]:
        try:
            yield from method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every exception gets a reason code
            _abort_for(context, name, exc)

    return wrapper


def reason_from_rpc_error(exc: grpc.RpcError) -> str:
    """The rxchain reason code carried by a failed RPC, or a code derived from its status."""
    trailing = getattr(exc, "trailing_metadata", None)
    if callable(trailing):
        for key, value in trailing() or ():
            if key == REASON_METADATA_KEY and isinstance(value, str):
                return value
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return "SERVICE_UNAVAILABLE"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "TIMEOUT"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "TOO_LARGE"
    return "RPC_FAILED"
