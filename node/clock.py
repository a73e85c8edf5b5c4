"""The wall clock the nodes inject where a time must be milliseconds since the epoch
(certificate validity, the clock-skew bound, block stamps). Logic never calls it directly:
it is a constructor argument, so tests and simulations pass their own."""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
