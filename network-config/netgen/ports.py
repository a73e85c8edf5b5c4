"""Free TCP ports on 127.0.0.1 for local networks (tests, benchmarks, launcher checks).

netgen gives node ``i`` port ``base + i`` and metrics port ``base + 200 + i``, so a
consortium needs a base where both runs of ports are free. Ports are probed by binding;
another process may still grab one before the node binds it, which the process manager
reports as a start failure with the node's log. Bases are chosen below the kernel's
ephemeral range (``ip_local_port_range``): the outgoing connections of the very processes
a test starts take ports from that range, and one of them landing on a probed port between
the probe and the node's bind made a node fail to start (seen once in CI: a peer's metrics
port "Address already in use").
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

LOCALHOST = "127.0.0.1"
_MIN_PORT = 10000
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_low(path: str = _EPHEMERAL_RANGE, default: int = 32768) -> int:
    """The first port of the kernel's ephemeral range (``default`` when it cannot be read)."""
    try:
        with open(path, encoding="ascii") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default
    return low if low > _MIN_PORT + 1000 else default


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True if ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = LOCALHOST) -> int:
    """One free port chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(count: int, host: str = LOCALHOST) -> list[int]:
    """``count`` distinct free ports (all bound at once while probing, so distinct)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _all_free(ports: Iterable[int]) -> bool:
    return all(port_is_free(p) for p in ports)


def free_base_port(count: int, offsets: tuple[int, ...] = (0, 200), attempts: int = 200,
                   rng: random.Random | None = None) -> int:
    """A base port ``b`` such that ``b + off + i`` is free for every offset and ``i < count``."""
    pick = rng or random.Random()  # noqa: S311 - port spreading, not security
    for _ in range(attempts):
        base = pick.randrange(_MIN_PORT, ephemeral_low() - max(offsets) - count)
        if _all_free(base + off + i for off in offsets for i in range(count)):
            return base
    raise RuntimeError(f"no free run of {count} ports with offsets {offsets} after {attempts} attempts")
