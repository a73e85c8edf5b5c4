"""Which consortium protocol versions the other orderers' and the peers' releases implement.

Every Raft message carries the highest protocol version its sender's release implements
(``ConsensusRequest.max_protocol_version``; 0 from releases that do not tell). Peers tell
theirs in every Deliver request they send to an orderer, signed: a ``ReleaseStatement`` (node
name, version, the peer's clock, the SHA-256 of its certificate, the network: its genesis block
header hash, so that what a peer told in another network never counts here) and the peer's
signature of it
(``DeliverRequest.release_statement``/``release_signature``, node.identity.release). The orderer
serving the stream takes it only about the caller itself -- the statement must name the
certificate the caller presented on the mutual-TLS connection and be signed by its key -- and
records it for the peer of the config in force holding that certificate (:func:`peer_named`:
equal to that ``PeerNode.cert_der``) if the statement names that peer. Orderers relay what they
know of peers to each other in their Raft messages (``ConsensusRequest.peer_releases``,
everything known, the statements byte for byte, in chunks of at most
:data:`MAX_RELAYED_PEERS` entries and :data:`MAX_RELAYED_BYTES` per message, sent when a told version changes and every
:data:`RELAY_REFRESH_S` seconds), and every orderer checks every signed entry it merges
against the certificate of the config in force (name, certificate digest, signature; a
statement's signature is verified once per orderer: the verdict is cached by the statement's
and signature's digest, and an entry no newer than the one held is not looked at; an orderer
that relays a signature that does not verify -- an honest one never does -- has its
statements ignored for :data:`DISTRUST_S`, so made-up ones cost one verification, not one per
peer in every message). An entry
that does not check out is dropped, counted by reason (``on_refused``: metrics) and logged
once: an orderer cannot make a peer say what it did not sign. What peers told lives in memory
only: a restarted orderer learns it again from the others' relays (the first message of each
Raft stream carries one) and from the peers' next Deliver requests.

Order of a peer's words. Of two signed statements of one peer the later ``signed_wall_ms``
(the peer's own clock) wins: an old statement replayed (by an orderer, or a relay delayed)
never overrides a newer one held. A statement signed more than :data:`STATEMENT_AHEAD_MS`
ahead of this orderer's clock is refused here (a peer whose clock jumped ahead would otherwise
out-rank its later words for as long as the jump). What a peer tells an orderer directly (over
its own TLS connection, in the order it speaks) replaces what that orderer held, and an
unsigned word told there is stamped later than the word before it: a peer rolled back to a
release that does not sign is seen rolled back at once where it speaks, and by the other
orderers once their clocks pass its last signed stamp (at most that peer's clock lead). A
signed word told directly replaces what that orderer held too, but only until another
orderer relays a word of the peer signed later by the peer's clock: a peer whose clock went
back (by more than the time between its two words) is held everywhere to its former signed
word until its clock passes that word's stamp -- keep peers' clocks from stepping back, and
restart a peer rolled back after its clock is right. What
an old statement replayed can still do is stand in for a newer one an orderer never received:
every orderer relays what it holds, so that needs the newer one kept from the leader
altogether (by the only orderer the peer talked to); a raise then waits for the version the
old word told, or wins if the peer implemented it then and was rolled back since -- operators
roll a peer back before, not after, they let a raise through.

Unsigned words. A peer of the previous release tells ``max_protocol_version`` without a
statement; an orderer of the previous release relays entries without statements. Such a word
is kept (a direct one stamped with this orderer's clock, a relayed one with the sender's,
moved back by how far the sender's clock runs ahead of this one -- by more than
:data:`RELAY_SKEW_IGNORED_MS`, ``ConsensusRequest.sent_wall_ms`` -- and never later than now),
relayed, shown as unsigned, ordered against signed ones by those stamps, and never counts as
implementing a version above the one in force: it can hold a raise back (as any voting orderer
can, telling a low version of its own), never admit one. So a rolling upgrade goes: install
the new release on every node, in any order (an orderer of the previous release still takes
the repeated ``node``/``max_protocol_version``/``told_wall_ms`` of a signed entry, as before);
once every peer runs it and has connected, each is known by a signed word and the raise goes
through.

What was told is a certificate's word, kept under the name the config gives that certificate,
so every config adopted goes to :meth:`ReleaseWatch.follow_config`. A signed word counts only
while its statement names the peer's name and certificate in the config in force: rotated to
another certificate (or renamed: the peer tells again under its new name) the peer has not
told until it tells under it, whatever its former certificate said. An unsigned word of a name
whose certificate changed is dropped, and relays of unsigned words told before the config
block's stamp are ignored for it (a lagging orderer would otherwise bring the old word back).
What a peer certificate (role peer: orderers' Deliver passes no other caller's word) told
directly while no peer of the config held it is set aside under that certificate
(:data:`MAX_PENDING` certificates, the longest silent forgotten first) and given to the peer a
later config names with it (a signed word only if it names that peer): a peer re-added with the
same certificate, or started with its new certificate before the update rotating to it was
adopted (none tells again while its Deliver stream lasts). Relays about names of no peer of the
config in force are ignored (they would evict real peers' entries). A
change is relayed at once, but at most every :data:`RELAY_MIN_INTERVAL_S` per stream (a peer
changing what it tells on every Deliver request would otherwise put the whole relay into
every Raft message).

The leader admits a config update raising ``ConsortiumConfig.protocol_version`` only when
every voter, and every peer of the configuration the update puts in force, has told it
implements the new version, a peer in a statement it signed under the certificate that
configuration gives it (:meth:`ReleaseWatch.words_for`: an update rotating a peer's
certificate waits for the new one's word; node.orderer.chain; a peer or
voter never heard from counts as lacking, and the refusal, BAD_CONFIG_UPDATE, names them):
raised while some node still runs an older release, that node would stop at that block
(PROTOCOL_UNSUPPORTED, node.protocol) and, were they a quorum of the orderers, ordering with
them. A decommissioned peer is removed from the config (an earlier update, or the raising one)
so that it is not waited for. Orderers answer what each peer of the config in force told in
Admin.Status (``peer_releases``, with the statement when signed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from rxchain.v1 import config_pb2, services_pb2

from node.clock import wall_ms
from node.crypto.hashing import sha256
from node.crypto.signing import Verifier
from node.identity.release import (
    MAX_NODE_NAME,
    StatementRefused,
    check_network,
    check_statement,
    parse_statement,
    signed_by,
)
from node.msgbound import MIN_MESSAGE_BYTES
from node.orderer.configtx import OrdererConfig

_log = logging.getLogger(__name__)

MAX_RELAYED_PEERS = 1024  # entries per ConsensusRequest (more are ignored on receipt)
# and their bytes per message: a quarter of the smallest max_message_bytes a config allows
# (node.msgbound), beside Raft entries of up to half the bound (1,024 statements are ~215 kB)
MAX_RELAYED_BYTES = MIN_MESSAGE_BYTES // 4
RELAY_REFRESH_S = 5.0  # a sender relays what it knows of peers at least this often per stream
RELAY_MIN_INTERVAL_S = 0.5  # and, on changes, at most this often (besides the first and refreshes)
RELAY_SKEW_IGNORED_MS = 1000  # sender clock offsets below this are transit noise (stamps kept)
STATEMENT_AHEAD_MS = 300_000  # statements signed further ahead of this orderer's clock: refused
MAX_PENDING = 64  # certificates no peer of the config holds whose tells are kept (see follow_config)
MAX_LISTED = 50  # lacking peers named in a refusal (then "... N in all")
MAX_VERDICTS = 16_384  # statement signatures whose verdict is remembered (about 4 per peer)
LOG_INTERVAL_S = 1.0  # refused statements are logged (each once) at most this often
DISTRUST_S = 60.0  # a sender that relayed a signature that does not verify: its statements ignored this long


@dataclass(frozen=True)
class PeerTold:
    """What a peer last told: the highest version its release implements, and when -- signed:
    the serialized ``ReleaseStatement`` and the peer's signature, ``told_ms`` its
    ``signed_wall_ms`` (the peer's clock); unsigned (``statement`` empty): when an orderer
    heard it (that orderer's clock, ms since the epoch)."""

    version: int
    told_ms: int
    statement: bytes = b""
    signature: bytes = b""

    @property
    def signed(self) -> bool:
        """Told in a statement the peer signed (checked against its certificate)."""
        return bool(self.statement)


class ReleaseWatch:
    """The latest highest protocol version each other orderer and each peer told (thread-safe:
    gRPC threads observe, the Raft driver and the Raft senders read). ``wall_ms``: this node's
    clock (stamps unsigned words told here, bounds relayed stamps and statements' clocks);
    ``max_peers``: peers kept (the longest-silent is forgotten first) until a config is
    followed (then its peers only); ``verifier``: checks statements' signatures (one of its
    own when not given); ``on_refused``: told the reason of every statement refused;
    ``network``: the header hash of this network's genesis block, which every statement must
    name (``other_network`` otherwise; empty -- tests -- takes statements naming none only)."""

    def __init__(self, wall_ms: Callable[[], int] = wall_ms, max_peers: int = 4096,
                 verifier: Verifier | None = None, on_refused: Callable[[str], None] | None = None,
                 network: bytes = b"") -> None:
        self._lock = threading.Lock()
        self._network = network
        self._told: dict[int, int] = {}
        self._wall_ms = wall_ms
        self._max_peers = max_peers
        self._peers: dict[str, PeerTold] = {}
        self._relay: list[services_pb2.PeerRelease] | None = None  # built on demand, see relay()
        # the config in force (follow_config; None: never told, every name is kept): the
        # certificate of each peer name, and per name the stamp unsigned relays must be later than
        self._certs: dict[str, bytes] | None = None
        self._names: dict[bytes, str] | None = None  # the other way round
        self._floor: dict[str, int] = {}
        # sha256(certificate) -> what a certificate no peer of the config holds told
        self._pending: OrderedDict[bytes, PeerTold] = OrderedDict()
        self._verifier = verifier or Verifier()
        self._on_refused = on_refused
        # sha256(statement, signature) -> whether the signature verified under the certificate
        # the statement names (one verification per statement, however often it is relayed),
        # and the statements refused already logged (each is logged once)
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()
        self._logged: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        # sender -> time.monotonic() until which its relayed statements are ignored: it relayed a
        # signature that does not verify, which an honest orderer never does (it relays only
        # statements it verified), and each made-up one costs a verification here
        self._distrusted: dict[int, float] = {}
        self._logged_at = -1e18  # time.monotonic() of the last refusal logged
        self._unlogged = 0  # refusals not logged since (the rate limit)
        self.refused: Counter[str] = Counter()  # statements refused, by reason
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

    def following(self) -> bool:
        """Whether a config is followed (:meth:`follow_config`)."""
        return self._certs is not None

    def peer_told(self, name: str, max_protocol_version: int) -> None:
        """Peer ``name`` told this orderer, unsigned (in a Deliver request whose caller
        certificate is that peer's, without a statement), that its release implements versions
        up to ``max_protocol_version``."""
        with self._lock:
            self._keep(name, self._heard(name, max_protocol_version, self._wall_ms()), direct=True)

    def certificate_told(self, cert_der: bytes, max_protocol_version: int,
                         statement: bytes = b"", signature: bytes = b"") -> bool:
        """The caller presenting ``cert_der`` told ``max_protocol_version`` (unsigned), or the
        serialized ReleaseStatement ``statement`` with its ``signature`` (then only it counts:
        about the caller's own certificate, signed by its key, naming the peer the config
        gives that certificate; else refused and nothing recorded): recorded for the peer the
        followed config names with that certificate, else set aside in case a config adopted
        later does (only when a version is told: clients tell none). False, and nothing done,
        while no config is followed (:meth:`follow_config`)."""
        now = self._wall_ms()
        if self._certs is None:
            return False
        told = PeerTold(max_protocol_version, now)
        parsed = None
        if statement or signature:
            try:
                parsed = parse_statement(statement, signature)
                if parsed.cert_sha256 != sha256(cert_der):
                    raise StatementRefused("other_certificate", f"{parsed.node}: a statement about "
                                                                "another certificate than the caller's")
                check_network(parsed, self._network)
                self._check_clock(parsed, now)
                if not self._signed_by(cert_der, statement, signature):
                    raise StatementRefused("bad_signature", f"{parsed.node}: the caller did not sign it")
            except StatementRefused as refused:
                self._refuse(refused, statement, signature, "a Deliver request")
                return True
            told = PeerTold(parsed.max_protocol_version, parsed.signed_wall_ms, statement, signature)
        with self._lock:
            name = (self._names or {}).get(cert_der)
            other = name is not None and parsed is not None and parsed.node != name
            if name is not None and not other:
                self._keep(name, told if told.signed else self._heard(name, max_protocol_version, now), direct=True)
            elif name is None and told.version > 0:
                self._set_aside(sha256(cert_der), told)
        if other and parsed is not None:
            self._refuse(StatementRefused("other_name", f"{parsed.node!r} told by {name!r}"),
                         statement, signature, "a Deliver request")
        return True

    def _heard(self, name: str, version: int, now: int) -> PeerTold:
        """An unsigned word peer ``name`` told here at ``now``: later than what it told before
        (a signed word's stamp is the peer's clock, which may run ahead of this one: a peer
        rolled back to a release that does not sign must not look older than its last word)."""
        held = self._peers.get(name)
        return PeerTold(version, now if held is None else max(now, held.told_ms + 1))

    def _check_clock(self, parsed: services_pb2.ReleaseStatement, now: int) -> None:
        """StatementRefused ``ahead`` for a statement signed more than STATEMENT_AHEAD_MS
        ahead of ``now`` (this orderer's clock): checked before any signature is verified, so
        a far-future statement cannot pin a peer's word above every later one."""
        if parsed.signed_wall_ms > now + STATEMENT_AHEAD_MS:
            raise StatementRefused("ahead", f"{parsed.node}: signed {parsed.signed_wall_ms - now} ms "
                                            "ahead of this orderer's clock")

    def _signed_by(self, cert_der: bytes, statement: bytes, signature: bytes) -> bool:
        """Whether the key of ``cert_der`` (the certificate the statement names) signed it,
        verified once per statement and signature."""
        key = sha256(len(statement).to_bytes(4, "big") + statement + signature)
        with self._cache_lock:
            verdict = self._verdicts.get(key)
            if verdict is not None:
                self._verdicts.move_to_end(key)
                return verdict
        verdict = signed_by(self._verifier, cert_der, statement, signature)
        with self._cache_lock:
            self._verdicts[key] = verdict
            while len(self._verdicts) > MAX_VERDICTS:
                self._verdicts.popitem(last=False)
        return verdict

    def _refuse(self, refused: StatementRefused, statement: bytes, signature: bytes, where: str) -> None:
        """Count a statement refused, and log it the first time (relays repeat it)."""
        key = sha256(refused.reason.encode() + b"\0" + statement + signature)
        with self._cache_lock:
            self.refused[refused.reason] += 1
            seen = key in self._logged
            self._logged[key] = None
            while len(self._logged) > MAX_VERDICTS:
                self._logged.popitem(last=False)
        if self._on_refused is not None:
            self._on_refused(refused.reason)
        if seen:
            return
        with self._cache_lock:  # a line a second at most: a hostile relay may make up many
            mono = time.monotonic()
            if mono - self._logged_at < LOG_INTERVAL_S:
                self._unlogged += 1
                return
            self._logged_at, unlogged, self._unlogged = mono, self._unlogged, 0
        _log.warning("event=release_statement_refused reason=%s from=%r detail=%r not_logged_before=%d",
                     refused.reason, where, refused.detail, unlogged)

    def _set_aside(self, key: bytes, told: PeerTold) -> None:
        self._pending[key] = told
        self._pending.move_to_end(key)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def follow_config(self, peers: Iterable[tuple[str, bytes]], changed_ms: int) -> None:
        """The config in force now has these peers (name, certificate), adopted from a block
        stamped ``changed_ms`` (the leader's clock): what no longer counts for a name -- a
        signed word not naming it and its certificate now, an unsigned word of a name whose
        certificate changed -- is set aside under the certificate it was told under (a peer
        re-added with it gets it back), relays of unsigned words about a name now another
        certificate's must be told after ``changed_ms``, and names of no peer are forgotten
        (see the module docstring)."""
        certs = dict(peers)
        with self._lock:
            old = self._certs
            for name in list(self._peers):
                told = self._peers[name]
                cert = certs.get(name)
                if told.signed:
                    said = services_pb2.ReleaseStatement.FromString(told.statement)  # parsed before
                    if cert is None or said.node != name or said.cert_sha256 != sha256(cert):
                        del self._peers[name]
                        self._set_aside(said.cert_sha256, told)
                    continue
                was = old.get(name) if old is not None else cert
                if cert is None or was != cert:
                    del self._peers[name]
                    if was is not None:
                        self._set_aside(sha256(was), told)
            if old is not None:
                for name, cert in certs.items():
                    if old.get(name) != cert:
                        self._floor[name] = changed_ms  # the name is another certificate's now
            for name, cert in certs.items():
                key = sha256(cert)
                aside = self._pending.get(key)
                if aside is None:
                    continue
                if aside.signed and services_pb2.ReleaseStatement.FromString(aside.statement).node != name:
                    continue  # signed as another name: not this peer's word
                del self._pending[key]
                if (known := self._peers.get(name)) is None or known.told_ms < aside.told_ms:
                    self._peers[name] = aside
            self._floor = {n: f for n, f in self._floor.items() if n in certs}
            self._certs = certs
            self._names = {cert: name for name, cert in certs.items()}
            self._relay = None
            self.peer_changes += 1

    def merge_peers(self, entries: Iterable[services_pb2.PeerRelease], sent_wall_ms: int = 0,
                    sender: int = 0) -> None:
        """What another orderer relayed (the first :data:`MAX_RELAYED_PEERS` entries), in a
        message sent when the sender's clock read ``sent_wall_ms`` (0: unknown). A signed entry
        is kept if its statement checks out against the config followed (refused and counted
        otherwise, as when no config is followed) and is later than what is known here; an
        unsigned one (names empty, longer than ``MAX_NODE_NAME`` or of no peer of the
        config in force, and entries never heard are skipped) has its stamp moved back by how
        far the sender's clock is ahead of this node's, and is kept if later than what is known
        here. Signatures are verified outside the lock, once per statement. ``sender`` (the
        relaying orderer's Raft id; 0: unknown) relaying a signature that does not verify has
        its signed entries ignored, unverified, for :data:`DISTRUST_S` (the rest of this
        message included): an honest orderer relays only statements it verified, so only a
        hostile or broken one does, and made-up statements would cost a verification each,
        in every message it sends."""
        now = self._wall_ms()
        # only a sender ahead moves stamps (back): one behind, or a backlog here, would move
        # them forward, making an old word look newer than it is
        offset = sent_wall_ms - now if sent_wall_ms > 0 else 0
        if offset <= RELAY_SKEW_IGNORED_MS:
            offset = 0
        with self._lock:
            certs = self._certs
            known = dict(self._peers)
        checked: list[tuple[str, PeerTold, bytes]] = []  # name, word, certificate (b"": unsigned)
        # the latest statement per peer named: at most one signature verified per peer and
        # message, however many entries a sender makes up for it
        latest: dict[str, tuple[services_pb2.ReleaseStatement, services_pb2.PeerRelease]] = {}
        for i, entry in enumerate(entries):
            if i >= MAX_RELAYED_PEERS:
                break
            if entry.statement or entry.signature:
                try:
                    parsed = parse_statement(entry.statement, entry.signature)
                except StatementRefused as refused:
                    self._refuse(refused, entry.statement, entry.signature, "a relay")
                    continue
                if (best := latest.get(parsed.node)) is None or best[0].signed_wall_ms < parsed.signed_wall_ms:
                    latest[parsed.node] = (parsed, entry)
                continue
            name = entry.node
            if not 0 < len(name) <= MAX_NODE_NAME or entry.told_wall_ms <= 0:
                continue
            if certs is not None and name not in certs:
                continue
            checked.append((name, PeerTold(entry.max_protocol_version, min(entry.told_wall_ms - offset, now)), b""))
        for parsed, entry in latest.values():
            if self._distrusts(sender):
                break
            if (signed := self._check_relayed(entry, parsed, certs, known, now, sender)) is not None:
                checked.append(signed)
        if not checked:
            return
        with self._lock:
            for name, told, cert in checked:
                if told.signed:
                    if self._certs is not certs and (self._certs or {}).get(name) != cert:
                        continue  # the config changed meanwhile: not this peer's certificate now
                elif told.told_ms <= self._floor.get(name, 0) or (
                        self._certs is not None and name not in self._certs):
                    continue
                self._keep(name, told, direct=False)

    def _distrusts(self, sender: int) -> bool:
        """Whether ``sender``'s relayed statements are ignored now (see :meth:`merge_peers`)."""
        with self._cache_lock:
            until = self._distrusted.get(sender)
            if until is not None and time.monotonic() >= until:
                del self._distrusted[sender]
                until = None
        return until is not None

    def _check_relayed(self, entry: services_pb2.PeerRelease, parsed: services_pb2.ReleaseStatement,
                       certs: Mapping[str, bytes] | None, known: Mapping[str, PeerTold],
                       now: int, sender: int = 0) -> tuple[str, PeerTold, bytes] | None:
        """A relayed signed entry (its statement parsed as ``parsed``) that checks out and is
        newer than ``known`` (None: not newer, or refused: counted and logged; a signature that
        does not verify makes ``sender`` distrusted)."""
        statement, signature = entry.statement, entry.signature
        name = parsed.node
        try:
            if entry.node and entry.node != name:
                raise StatementRefused("other_name", f"a statement of {name!r} relayed as {entry.node!r}'s")
            held = known.get(name)
            if held is not None and (held.statement == statement or held.told_ms >= parsed.signed_wall_ms):
                return None  # held already, or older: nothing to verify (a replay changes nothing)
            cert = certs.get(name) if certs is not None else None
            if cert is None:
                raise StatementRefused("not_a_peer", f"{name!r} is no peer of the config in force")
            check_statement(parsed, name, cert)
            check_network(parsed, self._network)
            self._check_clock(parsed, now)
            if not self._signed_by(cert, statement, signature):
                with self._cache_lock:
                    self._distrusted[sender] = time.monotonic() + DISTRUST_S
                raise StatementRefused("bad_signature", f"{name}: the signature does not verify under its "
                                                        f"certificate (relays of {sender} ignored {DISTRUST_S:.0f} s)")
        except StatementRefused as refused:
            self._refuse(refused, statement, signature, "a relay")
            return None
        return name, PeerTold(parsed.max_protocol_version, parsed.signed_wall_ms, statement, signature), cert

    def _keep(self, name: str, told: PeerTold, direct: bool) -> None:
        """Keep ``told`` for ``name`` if it is later than what is held: relayed, by its stamp;
        told here (``direct``: by the holder of the peer's certificate, over its TLS connection,
        in the order it spoke), always -- a peer whose clock went back is not held to its
        former word where it speaks (until another orderer relays a signed word of it stamped
        later: see the module docstring)."""
        old = self._peers.get(name)
        if old == told or (old is not None and not direct and told.told_ms <= old.told_ms):
            return
        if old is None and self._certs is None and len(self._peers) >= self._max_peers:
            silent = min(self._peers, key=lambda n: self._peers[n].told_ms)
            del self._peers[silent]
        self._peers[name] = told
        self._relay = None
        if old is None or old.version != told.version or old.signed != told.signed:
            self.peer_changes += 1

    def words_for(self, peers: Iterable[tuple[str, bytes]]) -> dict[str, PeerTold]:
        """Peer name -> what counts as its word under the certificate ``peers`` gives it (the
        peers of a config about to be put in force: the leader checks a raise against them):
        a signed word naming that name and that certificate, held or set aside (a peer started
        with its new certificate before the update rotating to it), else an unsigned word held
        while the config followed gives the name that certificate. Absent: none -- a word the
        name gave under another certificate (rotated, or swapped, by the same update) is no
        word of the certificate that will be the peer's."""
        out: dict[str, PeerTold] = {}
        with self._lock:
            for name, cert in peers:
                digest = sha256(cert)
                held = self._peers.get(name)
                if held is not None and (_names(held, name, digest) if held.signed
                                         else (self._certs or {}).get(name) == cert):
                    out[name] = held
                elif (aside := self._pending.get(digest)) is not None and aside.signed and _names(aside, name, digest):
                    out[name] = aside
        return out

    def peers(self) -> dict[str, PeerTold]:
        """Peer name -> what it last told (peers never heard from are absent)."""
        with self._lock:
            return dict(self._peers)

    def relay(self) -> list[services_pb2.PeerRelease]:
        """What to relay to the other orderers: the latest told per peer, most recent first,
        signed words with their statements byte for byte (a shared list: copy it into
        messages, at most :data:`MAX_RELAYED_PEERS` entries each, never modify it). All of it:
        a peer whose stream has lasted long told long ago, and it will not tell again."""
        with self._lock:
            if self._relay is None:
                latest = sorted(self._peers.items(), key=lambda kv: (-kv[1].told_ms, kv[0]))
                self._relay = [peer_release(name, t) for name, t in latest]
            return self._relay


def _names(told: PeerTold, name: str, cert_sha256: bytes) -> bool:
    """Whether the signed word ``told`` (its statement parsed before) names peer ``name`` and
    the certificate whose digest is ``cert_sha256``."""
    said = services_pb2.ReleaseStatement.FromString(told.statement)
    return said.node == name and said.cert_sha256 == cert_sha256


def peer_release(name: str, told: PeerTold | None) -> services_pb2.PeerRelease:
    """The PeerRelease of what peer ``name`` told (None: never heard from)."""
    if told is None:
        return services_pb2.PeerRelease(node=name)
    return services_pb2.PeerRelease(node=name, max_protocol_version=told.version, told_wall_ms=told.told_ms,
                                    statement=told.statement, signature=told.signature)


def lacking(voters: Collection[int], own_id: int, version: int, told: Mapping[int, int]) -> list[int]:
    """The voters other than ``own_id`` not known to implement ``version`` (sorted)."""
    return sorted(v for v in voters if v != own_id and told.get(v, 0) < version)


def lacking_peers(peers: Iterable[str], version: int, told: Mapping[str, PeerTold]) -> list[str]:
    """The peers (names) not known to implement ``version`` by a word they signed, never heard
    from and told unsigned included (sorted)."""
    return sorted({p for p in peers if (t := told.get(p)) is None or not t.signed or t.version < version})


def _told(t: PeerTold | None, elsewhere: bool) -> str:
    if t is None:
        return "told under another certificate only" if elsewhere else "never heard from"
    return f"told {t.version}" + ("" if t.signed else " unsigned")


def describe_lacking_peers(missing: list[str], version: int, told: Mapping[str, PeerTold],
                           held: Collection[str] = ()) -> str:
    """The part of a refusal naming the lacking peers and what each told (``told``:
    :meth:`ReleaseWatch.words_for` the new config; ``held``: the names a word is held for,
    under whatever certificate)."""
    shown = [f"{name} ({_told(told.get(name), name in held)})" for name in missing[:MAX_LISTED]]
    more = f" ... {len(missing)} in all" if len(missing) > MAX_LISTED else ""
    return (f"peers [{', '.join(shown)}{more}] have not told they implement protocol version "
            f"{version} (told 0: an older release; unsigned: a release that does not sign what it "
            "tells, which never admits a raise; a peer tells its release when it connects to "
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
                        watch: ReleaseWatch) -> Callable[[bytes, int, bytes, bytes], None]:
    """What an orderer's Deliver calls with an authenticated caller's certificate and what its
    request told (the version, the signed statement and its signature; both empty: unsigned):
    recorded for the peer of the config ``watch`` follows holding that certificate (a watch
    following no config is made to follow ``config``'s first: tests); for any other caller set
    aside in case a later config names its certificate a peer's
    (:meth:`ReleaseWatch.certificate_told`), never taken for another peer."""

    def told(cert_der: bytes, max_protocol_version: int, statement: bytes = b"", signature: bytes = b"") -> None:
        if not cert_der:
            return
        if not watch.following():
            watch.follow_config(((p.name, p.cert_der) for p in config().peers), 0)
        watch.certificate_told(cert_der, max_protocol_version, statement, signature)

    return told


__all__ = ["DISTRUST_S", "MAX_PENDING", "MAX_RELAYED_BYTES", "MAX_RELAYED_PEERS", "RELAY_MIN_INTERVAL_S",
           "RELAY_REFRESH_S", "RELAY_SKEW_IGNORED_MS", "STATEMENT_AHEAD_MS", "PeerTold", "ReleaseWatch",
           "config_follower", "describe_lacking_peers", "lacking", "lacking_peers", "peer_named",
           "peer_release", "peer_release_intake"]
