"""node.rpc_parse.ParseGuard: a request that does not parse ends the call with
INVALID_ARGUMENT and reason BAD_REQUEST before the servicer sees it (gRPC alone answers a
bare INTERNAL), in unary and streaming methods alike; requests that parse are untouched."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from rxchain.v1 import services_pb2

from node.errors import reason_from_rpc_error
from node.rpc_parse import ParseGuard

GARBAGE = b"\xff\xff\xff"  # not a StatusRequest (a field tag with no end)
GOOD = services_pb2.StatusRequest(include_config=True).SerializeToString()


class _Seen:
    def __init__(self) -> None:
        self.requests: list[Any] = []


def _server(seen: _Seen, guarded: bool) -> tuple[grpc.Server, int]:
    def unary(request: services_pb2.StatusRequest, context: grpc.ServicerContext) -> bytes:
        seen.requests.append(request)
        return b""

    def stream(requests: Iterator[services_pb2.StatusRequest], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            seen.requests.append(r)
            yield b"ok"

    server = grpc.server(ThreadPoolExecutor(4), interceptors=[ParseGuard()] if guarded else [])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.S", {
        "Unary": grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=services_pb2.StatusRequest.FromString),
        "Stream": grpc.stream_stream_rpc_method_handler(
            stream, request_deserializer=services_pb2.StatusRequest.FromString),
        "Raw": grpc.unary_unary_rpc_method_handler(unary),  # no deserializer: left alone
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.parametrize("guarded", [True, False])
def test_a_request_that_does_not_parse_is_bad_request(guarded: bool) -> None:
    seen = _Seen()
    server, port = _server(seen, guarded)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            unary = ch.unary_unary("/test.S/Unary", None, None)
            assert unary(GOOD, timeout=10) == b""
            with pytest.raises(grpc.RpcError) as err:
                unary(GARBAGE, timeout=10)
            if not guarded:  # what gRPC does alone: no reason the caller could act on
                assert err.value.code() == grpc.StatusCode.INTERNAL
                assert reason_from_rpc_error(err.value) == "RPC_FAILED"
                return
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_from_rpc_error(err.value) == "BAD_REQUEST"
            assert "/test.S/Unary: the request does not parse" in (err.value.details() or "")
            assert len(seen.requests) == 1  # the servicer never saw the bad one

            stream = ch.stream_stream("/test.S/Stream", None, None)
            answers: list[bytes] = []
            with pytest.raises(grpc.RpcError) as err:
                for a in stream(iter([GOOD, GOOD, GARBAGE, GOOD]), timeout=10):
                    answers.append(a)
            assert reason_from_rpc_error(err.value) == "BAD_REQUEST"
            assert answers == [b"ok", b"ok"] and len(seen.requests) == 3

            assert ch.unary_unary("/test.S/Raw", None, None)(GARBAGE, timeout=10) == b""
            assert seen.requests[-1] == GARBAGE
    finally:
        server.stop(0)
