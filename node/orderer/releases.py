"""Which consortium protocol versions the other orderers' and the peers' releases implement.

Every Raft message carries the highest protocol version its sender's release implements
(``ConsensusRequest.max_protocol_version``; 0 from releases that do not tell). Peers tell
theirs in every Deliver request they send to an orderer (``DeliverRequest.max_protocol_version``):
the orderer serving the stream attributes it to the peer of the config in force whose
certificate the caller presented on the mutual-TLS connection (:func:`peer_named`: the
certificate must equal that ``PeerNode.cert_der``, so neither a client nor another peer can
speak for a peer, and no name is taken from the request), stamped with its own clock.
Orderers relay what they know of peers to each other in their Raft messages
(``ConsensusRequest.peer_releases``, everything known, in chunks of at most
:data:`MAX_RELAYED_PEERS` entries per message, sent when a told version changes and every
:data:`RELAY_REFRESH_S` seconds) and keep the latest told per
peer (relayed stamps are clamped to the receiver's clock, see below), so every orderer,
and whichever becomes leader, learns what a peer told to any of them. What peers told lives
in memory only: a restarted orderer learns it again from the others' relays (the first message
of each Raft stream carries one) and from the peers' next Deliver requests.

What was told is a certificate's word, kept under the name the config gives that certificate,
so every config adopted goes to :meth:`ReleaseWatch.follow_config`. A name whose certificate
changed (rotated, or removed and added again with another) loses what the former certificate
told, and relays told before the config block's stamp are ignored for it (a lagging orderer
would otherwise bring the old word back). What a certificate told while no peer of the config
held it is set aside under that certificate (:data:`MAX_PENDING` certificates, the longest
silent forgotten first) and given to the peer a later config names with it: a peer renamed,
re-added with the same certificate, or started with its new certificate before the update
rotating to it was adopted (none tells again while its Deliver stream lasts). Relays about
names of no peer of the config in force are ignored (they would evict real peers' entries). A
relayed stamp from a sender whose clock runs ahead (``ConsensusRequest.sent_wall_ms``, by more
than :data:`RELAY_SKEW_IGNORED_MS`) is moved back by that much, so such an orderer does not pin
an old word as the latest (its stamps, re-relayed every few seconds, would otherwise be clamped
to "now" again and again, beating a newer word told to another orderer for as long as it is
ahead); one whose clock runs behind only makes its own words look older. A change is relayed at once, but at
most every :data:`RELAY_MIN_INTERVAL_S` per stream (a peer changing what it tells on every
Deliver request would otherwise put the whole relay into every Raft message).

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
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from rxchain.v1 import config_pb2, services_pb2

from node.clock import wall_ms
from node.crypto.hashing import sha256
from node.orderer.configtx import OrdererConfig

MAX_RELAYED_PEERS = 1024  # entries per ConsensusRequest (more are ignored on receipt)
MAX_PEER_NAME = 256  # characters of a relayed peer name (longer: ignored)
RELAY_REFRESH_S = 5.0  # a sender relays what it knows of peers at least this often per stream
RELAY_MIN_INTERVAL_S = 0.5  # and, on changes, at most this often (besides the first and refreshes)
RELAY_SKEW_IGNORED_MS = 1000  # sender clock offsets below this are transit noise (stamps kept)
MAX_PENDING = 64  # certificates no peer of the config holds whose tells are kept (see follow_config)
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
    longest-silent is forgotten first) until a config is followed (then its peers only)."""

    def __init__(self, wall_ms: Callable[[], int] = wall_ms, max_peers: int = 4096) -> None:
        self._lock = threading.Lock()
        self._told: dict[int, int] = {}
        self._wall_ms = wall_ms
        self._max_peers = max_peers
        self._peers: dict[str, PeerTold] = {}
        self._relay: list[services_pb2.PeerRelease] | None = None  # built on demand, see relay()
        # the config in force (follow_config; None: never told, every name is kept): the
        # certificate of each peer name, and per name the stamp relays must be later than
        self._certs: dict[str, bytes] | None = None
        self._names: dict[bytes, str] | None = None  # the other way round
        self._floor: dict[str, int] = {}
        # sha256(certificate) -> what a certificate no peer of the config holds told
        self._pending: OrderedDict[bytes, PeerTold] = OrderedDict()
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

    def certificate_told(self, cert_der: bytes, max_protocol_version: int) -> bool:
        """The caller presenting ``cert_der`` told ``max_protocol_version``: recorded for the
        peer the followed config names with that certificate, else set aside in case a config
        adopted later does (only when a version is told: clients tell none). False, and
        nothing done, while no config is followed (:meth:`follow_config`)."""
        now = self._wall_ms()
        with self._lock:
            if self._names is None:
                return False
            name = self._names.get(cert_der)
            if name is not None:
                self._keep(name, PeerTold(max_protocol_version, now), direct=True)
            elif max_protocol_version > 0:
                self._set_aside(sha256(cert_der), PeerTold(max_protocol_version, now))
            return True

    def _set_aside(self, key: bytes, told: PeerTold) -> None:
        self._pending[key] = told
        self._pending.move_to_end(key)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def follow_config(self, peers: Iterable[tuple[str, bytes]], changed_ms: int) -> None:
        """The config in force now has these peers (name, certificate), adopted from a block
        stamped ``changed_ms`` (the leader's clock): what a name's former certificate told is
        set aside under that certificate (a peer renamed, or re-added with it, gets it back),
        relays about a name now another certificate's must be told after ``changed_ms``, and
        names of no peer are forgotten (see the module docstring)."""
        certs = dict(peers)
        with self._lock:
            old = self._certs
            for name in list(self._peers):
                was = old.get(name) if old is not None else certs.get(name)
                if certs.get(name) is None or was != certs[name]:
                    told = self._peers.pop(name)
                    if was is not None:
                        self._set_aside(sha256(was), told)
            if old is not None:
                for name, cert in certs.items():
                    if old.get(name) != cert:
                        self._floor[name] = changed_ms  # the name is another certificate's now
            for name, cert in certs.items():
                key = sha256(cert)
                if key in self._pending:
                    told = self._pending.pop(key)
                    if (known := self._peers.get(name)) is None or known.told_ms < told.told_ms:
                        self._peers[name] = told
            self._floor = {n: f for n, f in self._floor.items() if n in certs}
            self._certs = certs
            self._names = {cert: name for name, cert in certs.items()}
            self._relay = None
            self.peer_changes += 1

    def merge_peers(self, entries: Iterable[services_pb2.PeerRelease], sent_wall_ms: int = 0) -> None:
        """What another orderer relayed (the first :data:`MAX_RELAYED_PEERS` entries; names
        empty, longer than :data:`MAX_PEER_NAME` or of no peer of the config in force, and
        entries never heard are skipped), in a message sent when the sender's clock read
        ``sent_wall_ms`` (0: unknown): each stamp is moved back by how far that clock is ahead
        of this node's, and kept if told later than what is known here."""
        now = self._wall_ms()
        # only a sender ahead moves stamps (back): one behind, or a backlog here, would move
        # them forward, making an old word look newer than it is
        offset = sent_wall_ms - now if sent_wall_ms > 0 else 0
        if offset <= RELAY_SKEW_IGNORED_MS:
            offset = 0
        with self._lock:
            names = self._certs
            for i, entry in enumerate(entries):
                if i >= MAX_RELAYED_PEERS:
                    break
                name = entry.node
                if not 0 < len(name) <= MAX_PEER_NAME or entry.told_wall_ms <= 0:
                    continue
                if names is not None and name not in names:
                    continue
                stamp = min(entry.told_wall_ms - offset, now)
                if stamp <= self._floor.get(name, 0):
                    continue
                self._keep(name, PeerTold(entry.max_protocol_version, stamp), direct=False)

    def _keep(self, name: str, told: PeerTold, direct: bool) -> None:
        old = self._peers.get(name)
        if old is not None and (told.told_ms < old.told_ms or (told.told_ms == old.told_ms and not direct)):
            return
        if old is None and self._certs is None and len(self._peers) >= self._max_peers:
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
        """What to relay to the other orderers: the latest told per peer, most recent first (a
        shared list: copy it into messages, at most :data:`MAX_RELAYED_PEERS` entries each, never
        modify it). All of it: a peer whose stream has lasted long told long ago, and it will
        not tell again."""
        with self._lock:
            if self._relay is None:
                latest = sorted(self._peers.items(), key=lambda kv: (-kv[1].told_ms, kv[0]))
                self._relay = [
                    services_pb2.PeerRelease(node=name, max_protocol_version=t.version, told_wall_ms=t.told_ms)
                    for name, t in latest
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


def config_follower(watch: ReleaseWatch, block_stamp: Callable[[int], int]
                    ) -> Callable[[OrdererConfig], None]:
    """What an orderer calls with the config in force at start-up and with every config it
    adopts: tells ``watch`` the config's peers (:meth:`ReleaseWatch.follow_config`), with the
    stamp ``block_stamp`` gives the block that carried it (the genesis config: 0)."""

    def follow(cfg: OrdererConfig) -> None:
        stamp = block_stamp(cfg.block_number) if cfg.block_number > 0 else 0
        watch.follow_config(((p.name, p.cert_der) for p in cfg.config.peers), stamp)

    return follow


def peer_release_intake(config: Callable[[], config_pb2.ConsortiumConfig],
                        watch: ReleaseWatch) -> Callable[[bytes, int], None]:
    """What an orderer's Deliver calls with an authenticated caller's certificate and the
    version its request told: recorded for the peer of the config ``watch`` follows (else of
    ``config``) holding that certificate; for any other caller set aside in case a later config
    names its certificate a peer's (:meth:`ReleaseWatch.certificate_told`), never taken for
    another peer."""

    def told(cert_der: bytes, max_protocol_version: int) -> None:
        if not cert_der or watch.certificate_told(cert_der, max_protocol_version):
            return
        name = peer_named(config(), cert_der)  # a watch following no config (tests)
        if name is not None:
            watch.peer_told(name, max_protocol_version)

    return told


__all__ = ["MAX_PENDING", "MAX_RELAYED_PEERS", "RELAY_MIN_INTERVAL_S", "RELAY_REFRESH_S",
           "RELAY_SKEW_IGNORED_MS", "PeerTold", "ReleaseWatch", "config_follower", "describe_lacking_peers",
           "lacking", "lacking_peers", "peer_named", "peer_release_intake"]
