"""Free loopback port ranges for tests that start node processes."""

from __future__ import annotations

import os
import random
import socket


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(n_nodes: int = 9) -> int:
    """A base port whose node ports (base..base+n) and metrics ports (base+200..) are free."""
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big"))
    for _ in range(200):
        base = rng.randrange(30000, 45000, 10)
        ports = [*range(base, base + n_nodes), *range(base + 200, base + 200 + n_nodes)]
        if all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range")
