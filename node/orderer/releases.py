"""Which consortium protocol versions the other orderers' and the peers' releases implement.

Every Raft message carries the highest protocol version its sender's release implements
(``ConsensusRequest.max_protocol_version``; 0 from releases that do not tell). Peers tell
theirs in every Deliver request they send to an orderer (``DeliverRequest.max_protocol_version``):
the orderer serving the stream attributes it to the peer of the config in force whose
certificate the caller presented on the mutual-TLS connection (:func:`peer_named`: the
certificate must equal that ``PeerNode.cert_der``, so neither a client nor another peer can
speak for a peer, and no name is taken from the request), stamped with its own clock.
Orderers relay what they know of peers to each other in their Raft messages
(``ConsensusRequest.peer_releases``, at most :data:`MAX_RELAYED_PEERS` entries, sent when a
told version changes and every :data:`RELAY_REFRESH_S` seconds) and keep the latest told per
peer (relayed stamps are clamped to the receiver's clock, so a sender whose clock runs ahead
cannot pin an entry), so every orderer, and whichever becomes leader, learns what a peer told
to any of them. What peers told lives in memory only: a restarted orderer learns it again from
the others' relays and from the peers' next Deliver requests.

The leader admits a config update raising ``ConsortiumConfig.protocol_version`` only when
every voter, and every peer of the configuration the update puts in force, has told it
implements the new version (node.orderer.chain; a peer or voter never heard from counts as
lacking, and the refusal, BAD_CONFIG_UPDATE, names them): raised while some node still runs an
older release, that node would stop at that block (PROTOCOL_UNSUPPORTED, node.protocol) and,
were they a quorum of the orderers, ordering with them. A decommissioned peer is removed from
the config (an earlier update, or the raising one) so that it is not waited for. Orderers
answer what each peer of the config in force told in Admin.Status (``peer_releases``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from rxchain.v1 import config_pb2, services_pb2

from node.clock import wall_ms

MAX_RELAYED_PEERS = 1024  # entries per ConsensusRequest (more are ignored on receipt)
MAX_PEER_NAME = 256  # characters of a relayed peer name (longer: ignored)
RELAY_REFRESH_S = 5.0  # a sender relays what it knows of peers at least this often per stream
MAX_LISTED = 50  # lacking peers named in a refusal (then "... N in all")


@dataclass(frozen=True)
class PeerTold:
    """What a peer last told: the highest version its release implements, and when an orderer
    heard it (that orderer's clock, ms since the epoch)."""

    version: int
    told_ms: int


class ReleaseWatch:
    """The latest highest protocol version each other orderer and each peer told (thread-safe:
    gRPC threads observe, the Raft driver and the Raft senders read). ``wall_ms``: this node's
    clock (stamps what peers tell here, bounds relayed stamps); ``max_peers``: peers kept (the
    longest-silent is forgotten first)."""

    def __init__(self, wall_ms: Callable[[], int] = wall_ms, max_peers: int = 4096) -> None:
        self._lock = threading.Lock()
        self._told: dict[int, int] = {}
        self._wall_ms = wall_ms
        self._max_peers = max_peers
        self._peers: dict[str, PeerTold] = {}
        self._relay: list[services_pb2.PeerRelease] | None = None  # built on demand, see relay()
        # bumped when a peer's told version changes (or a peer is first heard): senders relay
        # at once then; read without the lock (an int attribute read is atomic)
        self.peer_changes = 0

    def observe(self, node_id: int, max_protocol_version: int) -> None:
        """Node ``node_id`` told it implements versions up to ``max_protocol_version``."""
        with self._lock:
            self._told[node_id] = max_protocol_version

    def told(self) -> dict[int, int]:
        """Node -> the highest version it last told (nodes never heard from are absent)."""
        with self._lock:
            return dict(self._told)

    def peer_told(self, name: str, max_protocol_version: int) -> None:
        """Peer ``name`` told this orderer (in a Deliver request whose caller certificate is
        that peer's) that its release implements versions up to ``max_protocol_version``."""
        with self._lock:
            self._keep(name, PeerTold(max_protocol_version, self._wall_ms()), direct=True)

    def merge_peers(self, entries: Iterable[services_pb2.PeerRelease]) -> None:
        """What another orderer relayed (the first :data:`MAX_RELAYED_PEERS` entries; names
        empty or longer than :data:`MAX_PEER_NAME` and entries never heard are skipped): each
        kept if told later than what is known here."""
        now = self._wall_ms()
        with self._lock:
            for i, entry in enumerate(entries):
                if i >= MAX_RELAYED_PEERS:
                    break
                if not 0 < len(entry.node) <= MAX_PEER_NAME or entry.told_wall_ms <= 0:
                    continue
                told = PeerTold(entry.max_protocol_version, min(entry.told_wall_ms, now))
                self._keep(entry.node, told, direct=False)

    def _keep(self, name: str, told: PeerTold, direct: bool) -> None:
        old = self._peers.get(name)
        if old is not None and (told.told_ms < old.told_ms or (told.told_ms == old.told_ms and not direct)):
            return
        if old is None and len(self._peers) >= self._max_peers:
            silent = min(self._peers, key=lambda n: self._peers[n].told_ms)
            del self._peers[silent]
        self._peers[name] = told
        self._relay = None
        if old is None or old.version != told.version:
            self.peer_changes += 1

    def peers(self) -> dict[str, PeerTold]:
        """Peer name -> what it last told (peers never heard from are absent)."""
        with self._lock:
            return dict(self._peers)

    def relay(self) -> list[services_pb2.PeerRelease]:
        """What to relay to the other orderers: the latest told per peer, most recent first, at
        most :data:`MAX_RELAYED_PEERS` (a shared list: copy it into a message, never modify it)."""
        with self._lock:
            if self._relay is None:
                latest = sorted(self._peers.items(), key=lambda kv: (-kv[1].told_ms, kv[0]))
                self._relay = [
                    services_pb2.PeerRelease(node=name, max_protocol_version=t.version, told_wall_ms=t.told_ms)
                    for name, t in latest[:MAX_RELAYED_PEERS]
                ]
            return self._relay


def lacking(voters: Collection[int], own_id: int, version: int, told: Mapping[int, int]) -> list[int]:
    """The voters other than ``own_id`` not known to implement ``version`` (sorted)."""
    return sorted(v for v in voters if v != own_id and told.get(v, 0) < version)


def lacking_peers(peers: Iterable[str], version: int, told: Mapping[str, PeerTold]) -> list[str]:
    """The peers (names) not known to implement ``version``, never heard from included (sorted)."""
    return sorted({p for p in peers if (t := told.get(p)) is None or t.version < version})


def describe_lacking_peers(missing: list[str], version: int, told: Mapping[str, PeerTold]) -> str:
    """The part of a refusal naming the lacking peers and what each told."""
    shown = [f"{name} ({'told ' + str(t.version) if (t := told.get(name)) else 'never heard from'})"
             for name in missing[:MAX_LISTED]]
    more = f" ... {len(missing)} in all" if len(missing) > MAX_LISTED else ""
    return (f"peers [{', '.join(shown)}{more}] have not told they implement protocol version "
            f"{version} (told 0: an older release; a peer tells its release when it connects to "
            "an orderer's Deliver; remove a decommissioned peer from the config)")


def peer_named(config: config_pb2.ConsortiumConfig, cert_der: bytes) -> str | None:
    """The name of the peer of ``config`` whose certificate is ``cert_der`` (None: not a peer's)."""
    if not cert_der:
        return None
    for peer in config.peers:
        if peer.cert_der == cert_der:
            return peer.name
    return None


def peer_release_intake(config: Callable[[], config_pb2.ConsortiumConfig],
                        watch: ReleaseWatch) -> Callable[[bytes, int], None]:
    """What an orderer's Deliver calls with an authenticated caller's certificate and the
    version its request told: recorded for the peer of the config in force holding that
    certificate, ignored for any other caller."""

    def told(cert_der: bytes, max_protocol_version: int) -> None:
        name = peer_named(config(), cert_der)
        if name is not None:
            watch.peer_told(name, max_protocol_version)

    return told


__all__ = ["MAX_RELAYED_PEERS", "RELAY_REFRESH_S", "PeerTold", "ReleaseWatch", "describe_lacking_peers",
           "lacking", "lacking_peers", "peer_named", "peer_release_intake"]
