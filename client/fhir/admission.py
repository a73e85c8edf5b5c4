"""Which connections the FHIR gateway serves, answers with 503, or closes at accept.

A connection holds a *slot* from accept until it is closed: at most ``max_connections`` in
all and at most ``max_per_source`` per source address, so one host (a stuck HIS, or a local
process opening connections that never finish their TLS handshake) cannot take every slot.
A connection over either bound gets a *refusal* slot if one is free (at most
``max_refusals`` in all, ``max_refusals_per_source`` per source): the gateway completes its
TLS handshake and answers ``503`` with ``Retry-After``. With no refusal slot free either, the
connection is closed at accept without an answer (nothing can be said before a handshake).

A *source* is what :func:`source_of` makes of the address ``accept()`` reports: one per IPv4
address (clients behind one NAT share a source), one for the whole loopback (a local process
can connect from any of 127.0.0.0/8 -- Linux routes all of it to ``lo`` -- so counting
127.0.0.2 apart from 127.0.0.1 would let one local process hold every slot), an IPv4-mapped
IPv6 address as its IPv4 address, and one per /64 for other IPv6 addresses (one host is
routinely given a whole /64). Thread-safe; pure bookkeeping, no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import threading
from dataclasses import dataclass

MAX_CONNECTIONS = 32
MAX_PER_SOURCE = 8
MAX_REFUSALS = 8
MAX_REFUSALS_PER_SOURCE = 2
LOOPBACK = "loopback"
IPV6_SOURCE_PREFIX = 64


def source_of(address: str) -> str:
    """The source a connection from ``address`` (as ``accept()`` reports it) counts against
    (see the module docstring); a string that is no IP address is its own source."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone names no other host
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return LOOPBACK
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)


@dataclass(frozen=True)
class AdmissionLimits:
    """The bounds (see the module docstring); ``ValueError`` unless 1 <= per source <= total."""

    max_connections: int = MAX_CONNECTIONS
    max_per_source: int = MAX_PER_SOURCE
    max_refusals: int = MAX_REFUSALS
    max_refusals_per_source: int = MAX_REFUSALS_PER_SOURCE

    def __post_init__(self) -> None:
        for total, per_source, what in ((self.max_connections, self.max_per_source, "connections"),
                                        (self.max_refusals, self.max_refusals_per_source, "refusals")):
            if not 1 <= per_source <= total:
                raise ValueError(f"need 1 <= max {what} per source ({per_source}) <= max {what} ({total})")

    @classmethod
    def for_gateway(cls, max_connections: int = MAX_CONNECTIONS,
                    max_per_source: int = MAX_PER_SOURCE) -> AdmissionLimits:
        """Limits for ``max_connections`` slots of which one source may hold ``max_per_source``
        (capped at ``max_connections``, so a small gateway stays usable by one client)."""
        return cls(max_connections=max_connections, max_per_source=min(max_per_source, max_connections))


class Verdict(enum.Enum):
    """What becomes of an accepted connection."""

    SERVE = "serve"    # it holds a slot
    REFUSE = "refuse"  # over the bound, holds a refusal slot: handshake, then 503
    CLOSE = "close"    # over the bound, no refusal slot: closed at accept, unanswered


@dataclass(frozen=True)
class Ticket:
    """The verdict on a connection from ``source``; ``per_source`` when it is over the bound
    because its source holds its share while other sources could still be served."""

    source: str
    verdict: Verdict
    per_source: bool = False


class Admission:
    """Slot bookkeeping: :meth:`admit` at accept, :meth:`release` when the connection ends."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._serving: dict[str, int] = {}
        self._refusing: dict[str, int] = {}
        self._served_total = 0
        self._refused_total = 0

    def admit(self, source: str) -> Ticket:
        """The verdict on a new connection from ``source`` (a SERVE or REFUSE ticket holds its
        slot until :meth:`release`)."""
        lim = self.limits
        with self._lock:
            mine = self._serving.get(source, 0)
            room = self._served_total < lim.max_connections
            if mine < lim.max_per_source and room:
                self._serving[source] = mine + 1
                self._served_total += 1
                return Ticket(source, Verdict.SERVE)
            refusing = self._refusing.get(source, 0)
            if refusing < lim.max_refusals_per_source and self._refused_total < lim.max_refusals:
                self._refusing[source] = refusing + 1
                self._refused_total += 1
                return Ticket(source, Verdict.REFUSE, per_source=room)
            return Ticket(source, Verdict.CLOSE, per_source=room)

    def release(self, ticket: Ticket) -> None:
        """The connection of ``ticket`` has ended: its slot is free again (nothing for CLOSE)."""
        if ticket.verdict is Verdict.CLOSE:
            return
        serve = ticket.verdict is Verdict.SERVE
        with self._lock:
            table = self._serving if serve else self._refusing
            left = table[ticket.source] - 1
            if left:
                table[ticket.source] = left
            else:
                del table[ticket.source]  # no entry per source ever seen: the table stays small
            if serve:
                self._served_total -= 1
            else:
                self._refused_total -= 1

    def counts(self) -> tuple[int, int]:
        """(connections served, connections being refused) now."""
        with self._lock:
            return self._served_total, self._refused_total
