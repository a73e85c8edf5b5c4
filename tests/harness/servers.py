"""Servers run on 127.0.0.1 in a thread for the duration of a ``with`` block."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from client.fhir.server import make_server

# How often serve_forever looks for a shutdown request: its default (0.5 s) made every
# ``with serving(...)`` block last at least half a second longer than its requests.
POLL_INTERVAL_S = 0.02


@contextlib.contextmanager
def serving(server: socketserver.TCPServer) -> Iterator[int]:
    """Run ``server.serve_forever`` in a thread; yields its port, then shuts it down and closes it."""
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, daemon=True)
    t.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


@contextlib.contextmanager
def serving_fhir(home: Path, **options: Any) -> Iterator[int]:
    """Serve the FHIR gateway of ``home`` (``make_server`` options) on a free port; yields the
    port and stops the server and its identities afterwards."""
    server, ids = make_server(home, "127.0.0.1", 0, **options)
    try:
        with serving(server) as port:
            yield port
    finally:
        ids.close()
