"""A FHIR gateway served on 127.0.0.1 for the duration of a ``with`` block."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from client.fhir.server import make_server


@contextlib.contextmanager
def serving_fhir(home: Path, **options: Any) -> Iterator[int]:
    """Serve the gateway of ``home`` (``make_server`` options) on a free port; yields the port
    and stops the server and its identities afterwards."""
    server, ids = make_server(home, "127.0.0.1", 0, **options)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        ids.close()
        t.join(5)
