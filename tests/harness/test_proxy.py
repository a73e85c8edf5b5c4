"""The fault proxy: pass, drop, refuse, delay, one-way black holes and cuts."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.harness.proxy import FaultProxy, Mode
from tests.harness.servers import serving


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    with serving(server) as port:
        yield port


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    s.settimeout(1.0)
    return s


def _roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_pass_forwards_both_ways(fault_proxy: FaultProxy, echo: int) -> None:
    link = fault_proxy.add("a->b", "127.0.0.1", echo)
    with _connect(link.port) as s:
        assert _roundtrip(s, b"hello" * 1000) == b"hello" * 1000
    # the pump counts a chunk after sending it on: the echo may come back before it has counted
    end = time.monotonic() + 5
    while link.stats.bytes_up < 5000 and time.monotonic() < end:
        time.sleep(0.01)
    assert link.stats.bytes_up == 5000 and link.stats.accepted == 1


def test_drop_blackholes_existing_and_new(fault_proxy: FaultProxy, echo: int) -> None:
    link = fault_proxy.add("l", "127.0.0.1", echo)
    s = _connect(link.port)
    assert _roundtrip(s, b"x") == b"x"
    link.set_mode(Mode.DROP)
    s.sendall(b"lost")
    with pytest.raises(TimeoutError):
        s.recv(10)
    with _connect(link.port) as s2:  # accepted, but nothing comes back
        s2.sendall(b"also lost")
        with pytest.raises(TimeoutError):
            s2.recv(10)
    link.heal()
    assert _roundtrip(s, b"back") == b"back"
    s.close()
    assert link.stats.dropped_up >= len(b"lost") + len(b"also lost")


def test_refuse_resets_new_connections(fault_proxy: FaultProxy, echo: int) -> None:
    link = fault_proxy.add("l", "127.0.0.1", echo)
    link.set_mode(Mode.REFUSE)
    data = b"?"
    try:
        with _connect(link.port) as s:
            s.sendall(b"x")
            data = s.recv(10)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    assert data == b""
    deadline = time.monotonic() + 2
    while link.stats.refused < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.stats.refused == 1
    link.heal()
    with _connect(link.port) as s:
        assert _roundtrip(s, b"ok") == b"ok"


def test_delay_adds_latency(fault_proxy: FaultProxy, echo: int) -> None:
    link = fault_proxy.add("l", "127.0.0.1", echo)
    link.set_mode(Mode.DELAY, delay_s=0.2)
    with _connect(link.port) as s:
        t0 = time.monotonic()
        assert _roundtrip(s, b"slow") == b"slow"
        assert time.monotonic() - t0 >= 0.35  # 0.2 s each way
    with pytest.raises(ValueError):
        link.set_mode(Mode.DELAY)


def test_one_way_blackholes(fault_proxy: FaultProxy) -> None:
    # A sink server that records what arrives and sends a greeting on connect.
    received: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(3.0)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.settimeout(3.0)
        conn.sendall(b"greeting")
        try:
            while data := conn.recv(100):
                received.append(data)
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    link = fault_proxy.add("l", "127.0.0.1", srv.getsockname()[1])
    link.set_mode(Mode.BLACKHOLE_DOWN)  # node -> caller discarded
    with _connect(link.port) as s:
        with pytest.raises(TimeoutError):
            s.recv(100)
        link.set_mode(Mode.BLACKHOLE_UP)  # caller -> node discarded
        s.sendall(b"never")
        time.sleep(0.3)
        assert received == []
        link.heal()
        s.sendall(b"arrives")
        deadline = time.monotonic() + 3
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    t.join(timeout=5)
    srv.close()
    assert b"".join(received) == b"arrives"
    assert link.stats.dropped_down == len(b"greeting")


def test_cut_resets_existing_connections(fault_proxy: FaultProxy, echo: int) -> None:
    link = fault_proxy.add("l", "127.0.0.1", echo)
    s = _connect(link.port)
    assert _roundtrip(s, b"a") == b"a"
    assert link.active_connections() == 1
    assert link.cut() == 1
    with pytest.raises((ConnectionResetError, BrokenPipeError, TimeoutError)):
        for _ in range(5):
            s.sendall(b"b")
            if s.recv(10) == b"":
                raise ConnectionResetError("closed")
            time.sleep(0.05)
    s.close()
    with _connect(link.port) as s2:  # new connections still work
        assert _roundtrip(s2, b"c") == b"c"
