"""A fault-injecting TCP proxy on 127.0.0.1 (threads; one listener per link).

A test puts a :class:`Link` between a caller and a node by rewriting the caller's
``node.yaml`` endpoint to the link's port. Per link, at any time:

* ``PASS``: bytes flow both ways;
* ``DROP``: everything is silently discarded both ways (new connections are accepted but
  never reach the node: a black hole, the caller only notices through its deadlines);
* ``REFUSE``: new connections are reset at once (a dead host); existing ones keep going
  unless :meth:`Link.cut` is called;
* ``DELAY``: every chunk is held ``delay_s`` before it is forwarded, both ways;
* ``BLACKHOLE_UP`` / ``BLACKHOLE_DOWN``: one direction discarded (caller→node / node→caller),
  the other forwarded: an asymmetric partition.

:meth:`Link.cut` resets every existing connection (RST) whatever the mode.
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from tests.harness.ports import LOCALHOST

_CHUNK = 65536
_POLL_S = 0.1


class Mode(enum.Enum):
    """What a link does with traffic."""

    PASS = "pass"
    DROP = "drop"
    REFUSE = "refuse"
    DELAY = "delay"
    BLACKHOLE_UP = "blackhole_up"
    BLACKHOLE_DOWN = "blackhole_down"


@dataclass
class LinkStats:
    """Counters of one link."""

    accepted: int = 0
    refused: int = 0
    cut: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0) so the other side sees the cut immediately."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    """One proxied connection: client socket, optional upstream socket, two pumps."""

    def __init__(self, link: Link, client: socket.socket, upstream: socket.socket | None) -> None:
        self.link = link
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(True,), daemon=True, name=f"{self.link.name}-up").start()
        if self.upstream is not None:
            threading.Thread(target=self._pump, args=(False,), daemon=True, name=f"{self.link.name}-down").start()

    def _pump(self, up: bool) -> None:
        src = self.client if up else self.upstream
        dst = self.upstream if up else self.client
        assert src is not None
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select([src], [], [], _POLL_S)
                if not ready:
                    continue
                data = src.recv(_CHUNK)
                if not data:
                    break
                if self.link.discards(up) or dst is None:
                    self.link.count(up, len(data), dropped=True)
                    continue
                delay = self.link.delay_now()
                if delay > 0:
                    time.sleep(delay)
                dst.sendall(data)
                self.link.count(up, len(data), dropped=False)
        except OSError:
            pass
        finally:
            self.close(rst=False)

    def close(self, rst: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.upstream):
            if s is None:
                continue
            if rst:
                _reset(s)
            else:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        self.link.forget(self)


class Link:
    """A listener on 127.0.0.1 forwarding to one target, with a switchable fault mode."""

    def __init__(self, name: str, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.name = name
        self.target = (target_host, target_port)
        self.stats = LinkStats()
        self._lock = threading.Lock()
        self._mode = Mode.PASS
        self._delay_s = 0.0
        self._conns: set[_Conn] = set()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOCALHOST, listen_port))
        self._sock.listen(128)
        self._sock.settimeout(_POLL_S)
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name=f"{name}-accept")
        self._thread.start()

    # ------------------------------------------------------------------ control

    @property
    def mode(self) -> Mode:
        """Current mode."""
        return self._mode

    def set_mode(self, mode: Mode, delay_s: float = 0.0) -> None:
        """Switch the mode (``delay_s`` only for DELAY)."""
        if mode is Mode.DELAY and delay_s <= 0:
            raise ValueError("DELAY needs a positive delay_s")
        with self._lock:
            self._mode = mode
            self._delay_s = delay_s if mode is Mode.DELAY else 0.0

    def heal(self) -> None:
        """Back to PASS."""
        self.set_mode(Mode.PASS)

    def cut(self) -> int:
        """Reset every existing connection; returns how many were cut."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close(rst=True)
        with self._lock:
            self.stats.cut += len(conns)
        return len(conns)

    def active_connections(self) -> int:
        """Connections currently open through this link."""
        with self._lock:
            return len(self._conns)

    def stop(self) -> None:
        """Ask the accept loop to end (close() waits for it)."""
        self._stop.set()

    def close(self) -> None:
        """Stop listening and reset every connection."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()
        self.cut()

    # ------------------------------------------------------------------ used by connections

    def discards(self, up: bool) -> bool:
        mode = self._mode
        if mode is Mode.DROP:
            return True
        return (mode is Mode.BLACKHOLE_UP and up) or (mode is Mode.BLACKHOLE_DOWN and not up)

    def delay_now(self) -> float:
        return self._delay_s

    def count(self, up: bool, n: int, dropped: bool) -> None:
        with self._lock:
            if up:
                if dropped:
                    self.stats.dropped_up += n
                else:
                    self.stats.bytes_up += n
            elif dropped:
                self.stats.dropped_down += n
            else:
                self.stats.bytes_down += n

    def forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setblocking(True)
            mode = self._mode
            if mode is Mode.REFUSE:
                with self._lock:
                    self.stats.refused += 1
                _reset(client)
                continue
            upstream: socket.socket | None = None
            if mode is not Mode.DROP:
                try:
                    upstream = socket.create_connection(self.target, timeout=2.0)
                    upstream.settimeout(None)
                except OSError:
                    _reset(client)
                    continue
            conn = _Conn(self, client, upstream)
            with self._lock:
                self.stats.accepted += 1
                self._conns.add(conn)
            conn.start()


class FaultProxy:
    """A set of named links; :meth:`close` stops them all (use as a fixture)."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}

    def add(self, name: str, target_host: str, target_port: int, listen_port: int = 0) -> Link:
        """Create (and start) a link."""
        if name in self.links:
            raise ValueError(f"link {name} exists")
        link = Link(name, target_host, target_port, listen_port)
        self.links[name] = link
        return link

    def __getitem__(self, name: str) -> Link:
        return self.links[name]

    def heal_all(self) -> None:
        """Every link back to PASS."""
        for link in self.links.values():
            link.heal()

    def close(self) -> None:
        """Close every link (all accept loops are told to stop first, then joined)."""
        for link in self.links.values():
            link.stop()
        for link in self.links.values():
            link.close()
