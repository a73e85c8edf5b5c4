"""Raw HTTPS exchanges with the FHIR gateway for tests that need the bytes on the wire
(half-sent requests, bad headers, connections from another loopback address)."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any


def tcp(port: int, source: str | None = None, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the gateway on 127.0.0.1, from the loopback address ``source`` if given."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=None if source is None else (source, 0))


def tls(port: int, ctx: ssl.SSLContext, timeout: float = 5.0, source: str | None = None) -> ssl.SSLSocket:
    """A TLS connection (handshake done) to the gateway, presenting ``ctx``'s client certificate."""
    return ctx.wrap_socket(tcp(port, source, timeout), server_hostname="localhost")


def exchange(port: int, ctx: ssl.SSLContext, data: bytes,
             source: str | None = None) -> tuple[int, dict[str, Any], bytes]:
    """Send raw bytes; (status, JSON body, raw head) of the answer, read until the server closes."""
    with tls(port, ctx, source=source) as s:
        s.sendall(data)
        out = b""
        for _ in range(1000):  # bounded: the server closes after one answer
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body), head


def outcome_code(body: dict[str, Any]) -> str:
    """The reason code of an OperationOutcome answer."""
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["details"]["coding"][0]["code"])
