"""Errors with reason codes, and their mapping to gRPC status codes.

Every refusal in rxchain carries a machine-readable reason code (``BAD_SIGNATURE``,
``UNKNOWN_CREATOR``, ``NOT_FOLLOW_UP`` ...) and a human-readable message. Servicers abort
with :func:`abort_with`; the reason travels in trailing metadata ``rxchain-reason`` and,
structured, in ``rxchain-error-bin`` (a serialized ``rxchain.v1.ErrorDetail``).
"""

from __future__ import annotations

from typing import NoReturn

import grpc

REASON_METADATA_KEY = "rxchain-reason"
DETAIL_METADATA_KEY = "rxchain-error-bin"

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
    "BAD_SIGNATURE": grpc.StatusCode.UNAUTHENTICATED,
    "UNKNOWN_ORG": grpc.StatusCode.PERMISSION_DENIED,
    "UNKNOWN_CREATOR": grpc.StatusCode.PERMISSION_DENIED,
    "EXPIRED_CERT": grpc.StatusCode.PERMISSION_DENIED,
    "REVOKED_CERT": grpc.StatusCode.PERMISSION_DENIED,
    "ACCESS_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "WRONG_ROLE": grpc.StatusCode.PERMISSION_DENIED,
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


def abort_with(context: grpc.ServicerContext, err: RxError) -> NoReturn:
    """Abort the current RPC with ``err``'s status code and reason metadata."""
    context.set_trailing_metadata(
        (
            (REASON_METADATA_KEY, err.reason),
            (DETAIL_METADATA_KEY, error_detail_bytes(err)),
        )
    )
    context.abort(err.grpc_code, str(err))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


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
