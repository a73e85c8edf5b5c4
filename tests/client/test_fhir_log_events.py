"""The FHIR gateway (rxchain fhir serve, a long-running process) logs in the nodes' form:
``event=NAME key=value ...[: text]`` that node.logs.event_fields reads back; a request line or
error text the client chose is one quoted value, its control characters escaped (the access
log wrote them raw to the terminal before)."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

from client.fhir.server import log_event
from node.logs import event_fields
from tests.client.fhirwire import exchange, tcp
from tests.client.test_fhir import _client
from tests.harness.servers import serving_fhir

SERVER = Path(__file__).resolve().parents[2] / "client" / "fhir" / "server.py"


def _log_calls() -> list[ast.Call]:
    calls = []
    for node in ast.walk(ast.parse(SERVER.read_text())):
        if isinstance(node, ast.Call) and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "log")
            or (isinstance(node.func, ast.Name) and node.func.id == "log")
        ):
            calls.append(node)
    return calls


def test_every_gateway_log_line_is_an_event() -> None:
    calls = _log_calls()
    assert len(calls) >= 9
    for call in calls:
        (arg,) = call.args
        assert isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "log_event", (
            f"line {call.lineno}: {ast.unparse(call)}")
        assert isinstance(arg.args[0], ast.Constant) and str(arg.args[0].value).startswith("fhir_")
    events = {str(c.args[0].args[0].value) for c in calls}  # type: ignore[attr-defined]
    readme = (SERVER.parents[1] / "README.md").read_text()
    assert sorted(e for e in events if f"`{e}`" not in readme) == []


def test_log_event_values_read_back_whatever_they_hold() -> None:
    odd = "GET /x\x1b]52;c;eA==\x07 a='b\" c=d: e\u202e"
    line = log_event("fhir_request", "some text", client="127.0.0.1:5", request=odd, empty="", n=3)
    assert "\x1b" not in line and "\x07" not in line and "\u202e" not in line
    assert event_fields(line, None) == {"event": "fhir_request", "client": "127.0.0.1:5", "request": odd,
                                        "empty": "", "n": "3"}
    assert line.endswith(": some text")


def _wait_lines(lines: list[str], event: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [f for f in (event_fields(s, None) for s in list(lines)) if f.get("event") == event]
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no {event} in {lines}")


def test_served_requests_and_refused_handshakes_log_events(net_home: Any) -> None:
    lines: list[str] = []
    ctx = _client(net_home, net_home.user_dir("h01", "dr-jiang"))
    hostile = "GET /fhir/metadata\x1b]52;c;eA==\x07 a='b\" HTTP/1.1"
    with serving_fhir(net_home.home, log=lines.append) as port:
        status, _, _ = exchange(port, ctx, b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert status == 200
        (ok,) = _wait_lines(lines, "fhir_request")
        assert ok["request"] == "GET /fhir/metadata HTTP/1.1" and ok["status"] == "200"
        assert ok["client"].startswith("127.0.0.1:")
        status, _, _ = exchange(port, ctx, hostile.encode("latin-1") + b"\r\n\r\n")
        assert status == 400
        assert [f["request"] for f in _wait_lines(lines, "fhir_request")][-1] == hostile
        assert _wait_lines(lines, "fhir_http_error")[0]["detail"].startswith("code 400")
        with tcp(port) as raw:
            raw.sendall(b"not a TLS hello\r\n\r\n")
            raw.recv(100)
        (failed,) = _wait_lines(lines, "fhir_tls_handshake_failed")
        assert failed["error"] and failed["client"].startswith("127.0.0.1:")
    assert lines and all(line.startswith("event=fhir_") for line in lines)
    assert not any(c in "".join(lines) for c in "\x1b\x07")
