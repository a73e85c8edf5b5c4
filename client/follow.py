"""A session follows the consortium's config chain itself: the CA it pins its peer to moves with a
CA rotation without waiting for an ``rxchain config`` command.

A session pins its peer's TLS to the CA that the config chain its home verified
(``HOME/config-chain.json``, :class:`client.configtool.ChainConfig`) names for the peer's
organisation. When the peer presents a certificate of a CA that pin does not hold (the handshake
fails: :func:`presented_cert`, :func:`issued_by`), the session asks up to :data:`FOLLOW_PEERS`
other peers -- each pinned to its own organisation's CA in the verified config -- for the blocks
past the verified chain's last one (:func:`follow_chain`), then, when none extended it, up to
:data:`FOLLOW_ORDERERS` orderers (``AtomicBroadcast.Deliver``, each pinned to its own
organisation's CA likewise: a network of one peer has no other peer to ask; an orderer's blocks
carry no validation codes, and the config it adopts is the one the orderers' rule adopts here),
verifies them as the config commands
and ``ledger verify`` do (numbered in turn, linking, ``data_hash``, a signature of an orderer of the
config in force, every config transaction judged by the orderers' own rule,
:meth:`node.orderer.configtx.ConfigTracker.block_config`), saves the longer chain (never a
shorter one) and pins the CA in force at its end. A peer serving a block that does not verify, or
a config update the rules refuse, moves nothing: the blocks before it stay verified, the
refused config is not adopted. An orderer signs blocks alone: every extension -- an orderer's
or a peer's -- is confirmed in segments split at config blocks, each config block by a majority
(:func:`orderers_needed`) of the orderers of the config in force before it, the blocks after it
by the new config's (:func:`_extend`, :func:`_confirm`; ORDERERS_DISAGREE otherwise, nothing of
the unconfirmed segment saved; a peer's unconfirmed data blocks are merely not kept) -- one
compromised orderer's fork holding an admin-signed update never committed (an abandoned
proposal), served by itself or by a compromised peer, would otherwise be saved and its CA
pinned. The orderers are dialled at the addresses the network description and the config name
(:func:`orderer_endpoints`), none whose organisation's CA is one rotated away from
(:func:`pinned_ca`, the denylist ``client.configtool.CA_DENYLIST``). Every step is bounded: a status call of
:data:`STATUS_TIMEOUT_S`, a stream of :data:`DELIVER_S`, :data:`FOLLOW_PEERS` peers, one follow
per failed call, and the whole follow by :data:`FOLLOW_BUDGET_S` (each call's deadline is the
earlier of its own bound and its source's share of the budget -- the time left over the sources
not asked yet, an orderer's less the time of its agreement calls: one stalling source no
longer starves the others; a peer is not asked once the
budget passed).

A session's periodic (proactive) follow is :func:`follow_current`: it takes the home's chain for
current only when a majority of the orderers report its height, else follows from the orderers
and must bring a longer chain -- no one node's "nothing new" ends it.

A patient's session cannot follow: peers and orderers stream no blocks to patient certificates
(WRONG_ROLE); her app takes ``config-chain.json`` from its provider (client/README.md).

A network started again from the same genesis block leaves homes with a config chain whose blocks
are not on the new chain. Before extending the verified chain, the peer's blocks at the numbers
of its checkpoints (the config block in force, the last block verified:
:meth:`ChainConfig.checkpoints`) are compared with the ones verified; a peer whose block differs
has its own chain verified from ``genesis.block`` up to that block: if it verifies (orderers'
signatures all along) and holds another block there, the chains diverged -- CHAIN_RESTARTED with
the remedy, nothing changed, once no other peer or orderer asked extends the chain verified (an
orderer signs blocks alone: one compromised orderer's fork verifies so) -- and from an orderer only
once :func:`orderers_needed` orderers hold its block there (:func:`_confirm_restart`;
SERVICE_UNAVAILABLE naming it otherwise, nothing changed); if not (or it holds
the block verified after all: the one it sent
first was not its own), the peer is lying (LEDGER_INVALID, the next peer is asked). A peer whose chain is shorter
than a checkpoint merely lags behind: it is no evidence of a restart and changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from rxchain.v1 import block_pb2, config_pb2, services_pb2, services_pb2_grpc

from client.configtool import (
    CA_DENYLIST,
    CA_ROTATED_AWAY,
    CHAIN_RESTARTED,
    CHAIN_STATE,
    ChainConfig,
    ca_fingerprint,
    read_denylist,
)
from client.errors import RxClientError
from client.gateway import rpc_error
from client.network import NetworkInfo, NodeEndpoint
from client.wallet import WalletIdentity
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.crypto.tls import secure_channel
from node.errors import RxError
from node.genesis import read_genesis

FOLLOW_PEERS = 3  # peers asked for the blocks past the verified chain, at most
# orderers asked, at most, once no peer extended the chain: a network of one peer cannot follow a
# rotation of its CA from peers (its own is the one the old pin cannot check)
FOLLOW_ORDERERS = 3
STATUS_TIMEOUT_S = 3.0  # a peer's height
DELIVER_S = 30.0  # one stream of blocks (a longer gap is verified on by the next follow: progress is saved)
PROBE_TIMEOUT_S = 3.0  # the TLS handshake reading the certificate a peer presents
# a whole follow: without it, peers answering each stream just inside DELIVER_S held the call (and
# the session's follow lock, which its other calls wait on) for minutes -- 3 peers x (a status,
# up to 4 checkpoint streams and the blocks' stream)
FOLLOW_BUDGET_S = 45.0


def presented_cert(target: str, identity: WalletIdentity, timeout: float = PROBE_TIMEOUT_S) -> bytes | None:
    """The DER certificate the server at ``target`` presents in a TLS handshake (with this wallet's
    client certificate; the server's is read, not trusted); None when it cannot be reached."""
    host, _, port = target.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock, \
                ctx.wrap_socket(sock) as tls:
            return tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None


def issued_by(cert_der: bytes, ca_pem: bytes) -> bool:
    """Whether ``cert_der`` was issued (signed) by a CA certificate of the PEM ``ca_pem``."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        return False
    for ca in cas:
        with contextlib.suppress(ValueError, TypeError, InvalidSignature):
            cert.verify_directly_issued_by(ca)
            return True
    return False


class _Peer:
    """A peer's blocks, over a channel pinned to its organisation's CA in the verified config; an
    orderer's (``orderer``: ``AtomicBroadcast.Deliver``, blocks without validation codes)."""

    def __init__(self, identity: WalletIdentity, endpoint: NodeEndpoint, ca_pem: bytes,
                 deadline: float = float("inf"), clock: Callable[[], float] = time.monotonic,
                 orderer: bool = False) -> None:
        self.name = endpoint.name
        self.orderer = orderer
        self._deadline, self._clock = deadline, clock  # (the follow's: FOLLOW_BUDGET_S)
        self._channel = secure_channel(endpoint.target, identity.cert_path, identity.key_path,
                                       identity.ca_bundle_path, server_name=endpoint.name,
                                       root_certificates=ca_pem)

    def close(self) -> None:
        self._channel.close()

    def _timeout(self, bound: float) -> float:
        """``bound``, or the time the follow has left when less; SERVICE_UNAVAILABLE when none."""
        left = self._deadline - self._clock()
        if left <= 0:
            raise RxClientError("SERVICE_UNAVAILABLE", f"the follow ran out of its time for {self.name} (its "
                                "share of the budget)")
        return min(bound, left)

    def height(self) -> int:
        timeout = self._timeout(STATUS_TIMEOUT_S)
        try:
            res = services_pb2_grpc.AdminStub(self._channel).Status(services_pb2.StatusRequest(),
                                                                     timeout=timeout)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from exc
        return int(res.height)

    def blocks(self, start: int, stop: int, bound: float | None = None) -> Generator[block_pb2.Block, None, None]:
        """Blocks ``start``..``stop`` as the peer streams them (at most ``bound`` --
        :data:`DELIVER_S` by default -- in all)."""
        req = services_pb2.DeliverRequest(start_block=start, stop_block=stop, follow=False)
        timeout = self._timeout(DELIVER_S if bound is None else bound)
        stub: Any = (services_pb2_grpc.AtomicBroadcastStub(self._channel) if self.orderer
                     else services_pb2_grpc.PeerDeliverStub(self._channel))
        call: Any = stub.Deliver(req, timeout=timeout)
        try:
            for msg in call:
                if msg.WhichOneof("kind") != "block":
                    return
                yield msg.block
                if msg.block.header.number >= stop:
                    return
        except grpc.RpcError as exc:
            raise rpc_error(exc) from exc
        finally:
            call.cancel()


def _check_same_chain(peer: _Peer, chain: ChainConfig, genesis: block_pb2.Block, height: int,
                      state_path: Path, diverged: Callable[[int, bytes], None] | None = None) -> None:
    """CHAIN_RESTARTED when the peer's chain, verified from the genesis block, holds another block
    at a checkpoint of ``chain``; LEDGER_INVALID when it differs there but does not verify, or
    when the peer answered for that block alone with another one (or none) than its chain holds.
    Checkpoints past the peer's ``height`` are not judged (a peer behind is no evidence). An
    orderer's (``peer.orderer``) only once ``diverged`` (:func:`_confirm_restart`) passed for its
    block there -- a majority of the orderers hold it; SERVICE_UNAVAILABLE otherwise (and without
    ``diverged``): an orderer signs blocks alone, so one compromised orderer's fork verifies."""
    for number, expected in chain.checkpoints():
        if number >= height:
            continue
        with contextlib.closing(peer.blocks(number, number)) as one:
            got = next(one, None)
        if got is not None and got.header.number == number and block_header_hash(got.header) == expected:
            chain.peer_metadata(got)  # (its codes and pointer, not an earlier peer's)
            continue
        fresh = ChainConfig(genesis, Verifier(max_entries=64, max_own=1))  # (no state: nothing saved)
        last = b""  # the header hash of the peer's block ``number`` in the chain verified
        with contextlib.closing(peer.blocks(0, number)) as blocks:
            for block in blocks:
                fresh.feed(block)  # LEDGER_INVALID: the peer's chain does not verify -- a lying peer
                last = block_header_hash(block.header)
        if fresh.height != number + 1:
            raise RxClientError("SERVICE_UNAVAILABLE", f"the peer {peer.name} sent {fresh.height} of the "
                                f"{number + 1} blocks needed to check its chain")
        if last == expected:
            # its chain holds the block verified: the block it sent (or withheld) first was not its own
            raise RxClientError("LEDGER_INVALID", f"the peer {peer.name} answered a request for its block "
                                f"{number} with {'another block' if got is not None else 'none'}, but its "
                                "chain holds the one verified")
        if peer.orderer:
            if diverged is None:
                raise RxClientError("SERVICE_UNAVAILABLE", f"the orderer {peer.name}'s chain, verified from "
                                    f"genesis.block, holds a different block {number} from the config chain this "
                                    "home verified; no other orderer was asked: nothing was changed")
            diverged(number, last)  # SERVICE_UNAVAILABLE unless a majority of the orderers hold it
        source = "orderer" if peer.orderer else "peer"
        raise RxClientError(CHAIN_RESTARTED, f"the {source} {peer.name}'s chain, verified from genesis.block, holds a "
                            f"different block {number} from the config chain this home verified ({state_path}): "
                            "the network was started again from the same genesis block (or its orderers "
                            "forked), and the CAs pinned from that file may be the old network's. Nothing was "
                            f"changed. Remedy: once the consortium confirms the restart, remove {state_path}; "
                            "the next session or config command verifies the new chain from genesis.block")


def orderer_endpoints(net: NetworkInfo) -> list[NodeEndpoint]:
    """The orderers to dial for the configuration ``net`` describes: the orderer nodes of the
    configuration at the addresses the network description lists for them, then at the addresses
    the configuration names (an orderer a config update added, or moved, is not in the network
    description written at ``network up``); then the network description's other orderers (a
    node the configuration does not list: asked, never counted: :func:`_is_member`). Each
    address once; each is pinned to its organisation's CA in the configuration, as any source."""
    out: list[NodeEndpoint] = []
    seen: set[tuple[str, str]] = set()

    def add(endpoint: NodeEndpoint) -> None:
        if (endpoint.name, endpoint.target) not in seen:
            seen.add((endpoint.name, endpoint.target))
            out.append(endpoint)

    for node in net.config.orderers:
        for listed in net.orderers:
            if (listed.name, listed.org) == (node.name, node.org):
                add(listed)
    for node in net.config.orderers:
        if node.host and 0 < node.port <= 65535:
            add(NodeEndpoint(node.name, node.org, "orderer", node.host, int(node.port)))
    for listed in net.orderers:
        add(listed)
    return out


def pinned_ca(net: NetworkInfo, org: str, denied: dict[str, str]) -> bytes:
    """The PEM CA of ``org`` in the configuration ``net`` describes, to pin its node's TLS to;
    CA_ROTATED_AWAY when that CA is one a config chain this home verified rotated away from
    (``denied``: the denylist, :func:`client.configtool.read_denylist`) -- after the remedy for
    CHAIN_RESTARTED (config-chain.json removed) the genesis CAs are in force again, perhaps one
    whose key leaked: a node presenting it is not trusted."""
    der = net.org(org).ca_cert_der
    if ca_fingerprint(der) in denied:
        raise RxClientError(CA_ROTATED_AWAY, f"{org}'s CA in force here (sha256 {ca_fingerprint(der)[:16]}...) is "
                            f"one a config chain this home verified rotated away from ({CA_DENYLIST}): its "
                            "nodes are not trusted until a chain verified from other organisations' nodes puts "
                            "another CA in force")
    return net.ca_pem(org)


def _is_member(net: NetworkInfo, endpoint: NodeEndpoint) -> bool:
    """Whether ``endpoint`` is an orderer of the verified configuration ``net`` describes (its name
    and organisation those of one of the config's orderer nodes; any listed one when the config
    names none)."""
    members = {(o.name, o.org) for o in net.config.orderers}
    return not members or (endpoint.name, endpoint.org) in members


def _orderer_nodes(net: NetworkInfo) -> list[int]:
    """For each orderer entry of the verified configuration ``net`` describes, the orderer it is
    (an index): entries sharing a raft id or a certificate (block signatures) are one orderer,
    whatever their names -- the config rules keep raft ids unique, not names nor certificates."""
    nodes = net.config.orderers
    root = list(range(len(nodes)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    first: dict[tuple[str, int | bytes], int] = {}
    for i, node in enumerate(nodes):
        keys: list[tuple[str, int | bytes]] = [("raft", node.raft_id)]
        if node.cert_der:
            keys.append(("cert", node.cert_der))
        for key in keys:
            root[find(i)] = find(first.setdefault(key, i))
    return [find(i) for i in range(len(nodes))]


def _node_of(net: NetworkInfo, name: str, org: str | None) -> frozenset[object]:
    """The orderer(s) of ``net``'s configuration an endpoint of ``name`` (and ``org``, when
    known) is -- several when entries of one name are distinct orderers: counted as one, as it
    cannot tell which answered --; by name when the configuration names no orderers."""
    if not net.config.orderers:
        return frozenset({name})
    nodes = _orderer_nodes(net)
    return frozenset(nodes[i] for i, o in enumerate(net.config.orderers)
                     if o.name == name and (org is None or o.org == org))


def orderers_needed(net: NetworkInfo) -> int:
    """How many orderers must hold the last block of an extension fetched from an orderer before
    it is taken: a majority of the orderers of the verified configuration ``net`` describes (its
    orderer nodes, each orderer once: entries sharing a raft id or a certificate are one,
    :func:`_orderer_nodes`; the network description's orderer endpoints, each name once, when it
    names none). Counted by name, one orderer listed under two names counted twice, and two
    orderers under one name once."""
    if net.config.orderers:
        return len(set(_orderer_nodes(net))) // 2 + 1
    return len({o.name for o in net.orderers}) // 2 + 1


def _dial_orderer(endpoint: NodeEndpoint, net: NetworkInfo, identity: WalletIdentity, denied: dict[str, str],
                  deadline: float, clock: Callable[[], float], make: Callable[..., _Peer],
                  said: list[str]) -> _Peer | None:
    """A connection to the orderer ``endpoint`` pinned to its organisation's CA in ``net``'s
    configuration, none rotated away from (:func:`pinned_ca`); None, with why in ``said``, when
    it cannot be made."""
    try:
        return make(identity, endpoint, pinned_ca(net, endpoint.org, denied), deadline, clock, True)
    except RxClientError as exc:
        said.append(f"{endpoint.name}: {exc.reason}: {exc.message}")
    except OSError as exc:
        said.append(f"{endpoint.name}: IO_ERROR: {exc.strerror or exc}")
    return None


def _holders(number: int, want: bytes, source: _Peer | _Named, others: list[NodeEndpoint], net: NetworkInfo,
             identity: WalletIdentity, deadline: float, clock: Callable[[], float],
             make: Callable[..., _Peer], source_counts: bool,
             denied: dict[str, str] | None = None, source_org: str | None = None) -> tuple[list[str], list[str], int]:
    """The orderers that hold block ``number`` with header hash ``want`` -- ``source``
    (``source_counts``: an orderer of the verified configuration) and as many of ``others`` as it
    takes to reach :func:`orderers_needed`, asked in turn (each a call of at most
    :data:`STATUS_TIMEOUT_S`, none past ``deadline``; each orderer once, by name; only the
    configuration's: :func:`_is_member`; each pinned to its organisation's CA in ``net``'s
    configuration, none rotated away from: :func:`pinned_ca`) -- what the others said, and how
    many are needed. Each orderer counts once: by the configuration's entries its endpoint's name
    (and organisation) names, entries sharing a raft id or a certificate one orderer
    (:func:`_node_of`; ``source_org``: the source's organisation, when known)."""
    needed = orderers_needed(net)
    agree: list[str] = [source.name] if source_counts else []
    mine = _node_of(net, source.name, source_org) if source.orderer else frozenset()
    counted: set[object] = set(mine) if source_counts else set()
    said: list[str] = []
    for endpoint in others:
        if len(agree) >= needed:
            break
        node = _node_of(net, endpoint.name, endpoint.org)
        if endpoint.name in agree or (source.orderer and endpoint.name == source.name) or node & counted \
                or node & mine:
            continue  # (one orderer at two addresses, or under two names: once)
        if not _is_member(net, endpoint):
            said.append(f"{endpoint.name}: not an orderer of the verified configuration")
            continue
        if clock() >= deadline:
            said.append(f"{endpoint.name}: not asked: the follow ran out of time")
            break
        other = _dial_orderer(endpoint, net, identity, denied or {}, deadline, clock, make, said)
        if other is None:
            continue
        try:
            with contextlib.closing(other.blocks(number, number, STATUS_TIMEOUT_S)) as one:
                got = next(one, None)
            if got is not None and got.header.number == number and block_header_hash(got.header) == want:
                agree.append(endpoint.name)
                counted |= node
            else:
                said.append(f"{endpoint.name}: holds {'another block' if got is not None else 'no block'} {number}")
        except RxClientError as exc:
            said.append(f"{endpoint.name}: {exc.reason}: {exc.message}")
        finally:
            other.close()
    if source.orderer and not source_counts:
        said.insert(0, f"{source.name}: not an orderer of the verified configuration")
    return agree, said, needed


def _confirm(number: int, want: bytes, source: _Peer | _Named, others: list[NodeEndpoint], net: NetworkInfo,
             identity: WalletIdentity, deadline: float, clock: Callable[[], float],
             make: Callable[..., _Peer], source_counts: bool = True,
             denied: dict[str, str] | None = None, source_org: str | None = None) -> None:
    """ORDERERS_DISAGREE unless :func:`orderers_needed` orderers of the configuration ``net``
    describes -- the one in force before block ``number`` -- hold it (header hash ``want``):
    ``source``, which served the blocks (``source_counts``: an orderer of that configuration; a
    peer never counts), and as many of ``others`` as it takes, asked in turn (each a call of at
    most :data:`STATUS_TIMEOUT_S`, none past ``deadline``). An orderer signs blocks alone: one
    compromised orderer could extend the chain with a fork holding an admin-signed config
    update the orderers never committed (an abandoned proposal) -- served by itself, or by a
    compromised peer -- and the session saved it and pinned its CA. Each orderer counts once
    (one listed at two addresses is one, and so is one the configuration lists under two names:
    :func:`_holders`), and only an orderer of that configuration counts
    (:func:`_is_member`: the network description still lists an orderer a config update
    removed -- perhaps for a leaked key)."""
    agree, said, needed = _holders(number, want, source, others, net, identity, deadline, clock, make,
                                   source_counts, denied, source_org)
    if len(agree) < needed:
        kind = "orderer" if source.orderer else "peer"
        raise RxClientError("ORDERERS_DISAGREE", f"the blocks to {number} the {kind} {source.name} served are held "
                            f"by {len(agree)} of the {needed} orderers needed ({', '.join(agree)}"
                            + (f"; {'; '.join(said)}" if said else "") + "): nothing of them was saved or pinned")


@dataclasses.dataclass(frozen=True)
class _Named:
    """The source of blocks to confirm that is no :class:`_Peer` of the follow (a config
    command's peer: :func:`orderers_confirm`)."""

    name: str
    orderer: bool = False


def orderers_confirm(home: Path, net: NetworkInfo, identity: WalletIdentity, source: str, *,
                     budget_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> Confirm:
    """The ``confirm`` of :func:`client.configtool.config_in_force` for the config commands: a
    block of the peer ``source`` is kept only once a majority of the orderers of the config in
    force before it hold it (:func:`_confirm`, ORDERERS_DISAGREE otherwise), as a session's follow
    confirms a peer's blocks -- each orderer dialled at the addresses the network description and
    that config name (:func:`orderer_endpoints`), pinned to its organisation's CA there, none
    rotated away from (the denylist: :func:`pinned_ca`; read now -- IO_ERROR / BAD_CONFIG when it
    cannot be); each confirmation bounded by ``budget_s`` (:data:`FOLLOW_BUDGET_S`)."""
    try:
        genesis = read_genesis(Path(home) / "genesis.block")
    except RxError as exc:
        raise RxClientError(exc.reason, exc.message) from exc
    denied = read_denylist(Path(home) / CA_DENYLIST, block_header_hash(genesis.header))
    budget = FOLLOW_BUDGET_S if budget_s is None else budget_s
    named = _Named(source)

    def confirm(number: int, want: bytes, config: config_pb2.ConsortiumConfig) -> None:
        segment = net if config.sequence <= net.config.sequence else net.with_config(config)
        _confirm(number, want, named, orderer_endpoints(segment), segment, identity, clock() + budget, clock,
                 _Peer, False, denied)

    return confirm


def _confirm_restart(number: int, want: bytes, source: _Peer, others: list[NodeEndpoint], net: NetworkInfo,
                     identity: WalletIdentity, deadline: float, clock: Callable[[], float],
                     make: Callable[..., _Peer], source_counts: bool = True,
                     denied: dict[str, str] | None = None, source_org: str | None = None) -> None:
    """SERVICE_UNAVAILABLE naming ``source`` unless :func:`orderers_needed` orderers (counted as
    :func:`_confirm` counts them) hold the block ``number`` (header hash ``want``) that ``source``'s
    chain, verified from genesis.block, holds in place of the one verified. An orderer signs blocks
    alone: one compromised orderer's fork verifies from genesis, and its CHAIN_RESTARTED told the
    operator to remove config-chain.json -- the genesis CAs pinned again."""
    agree, said, needed = _holders(number, want, source, others, net, identity, deadline, clock, make,
                                   source_counts, denied, source_org)
    if len(agree) < needed:
        raise RxClientError("SERVICE_UNAVAILABLE", f"the orderer {source.name}'s chain, verified from genesis.block, "
                            f"holds a different block {number} from the config chain this home verified, held by "
                            f"{len(agree)} of the {needed} orderers needed to say the network was started again ("
                            + ", ".join(agree) + (f"; {'; '.join(said)}" if said else "")
                            + "): nothing was changed")


# confirm(number, header hash, the config in force before that block): ORDERERS_DISAGREE unless a
# majority of that config's orderers hold it (:func:`_confirm`)
Confirm = Callable[[int, bytes, config_pb2.ConsortiumConfig], None]


def _extend(peer: _Peer, chain: ChainConfig, genesis: block_pb2.Block, state_path: Path,
            confirm: Confirm | None, diverged: Callable[[int, bytes], None] | None = None) -> None:
    """Extend ``chain`` by ``peer``'s blocks, confirmed in segments split at config blocks: each
    block installing a new config is kept only once ``confirm`` passed for it with the config in
    force before it (a majority of that config's orderers hold it), and the next segment is
    confirmed by the new config's orderers (a full orderer turnover is followed). The blocks past
    the last config block (data blocks, changing no config) are confirmed likewise by the
    config in force at the end: an orderer's are refused ORDERERS_DISAGREE otherwise; a peer's
    are then merely not kept -- the config in force, and every pin, is the same without them,
    but saved unconfirmed they would be checkpoints (:meth:`ChainConfig.checkpoints`) a forked
    chain set, and every honest peer's chain would then look restarted (CHAIN_RESTARTED, whose
    remedy drops the verified chain). Whatever ends the extension (a stream cut short, a block
    that does not verify, a segment not confirmed), the confirmed prefix is saved and the rest
    forgotten. Its chain diverging at a checkpoint is CHAIN_RESTARTED (an orderer's only once
    ``diverged`` -- :func:`_confirm_restart` -- passed)."""
    height = peer.height()
    if height < 1:
        raise RxClientError("SERVICE_UNAVAILABLE", f"the peer {peer.name} holds no block yet")
    _check_same_chain(peer, chain, genesis, height, state_path, diverged)
    if height < chain.height:
        raise RxClientError("SERVICE_UNAVAILABLE", f"the peer {peer.name} holds {height} blocks, behind the "
                            f"{chain.height} verified")
    before = chain.height
    kept = chain.mark()  # the chain as last confirmed
    # (number, header hash, the config in force before it, the chain just after it) of each config block fed
    configs: list[tuple[int, bytes, config_pb2.ConsortiumConfig, tuple[Any, ...]]] = []
    failure: RxClientError | None = None
    try:
        if height > chain.height:
            try:
                with contextlib.closing(peer.blocks(chain.height, height - 1)) as blocks:
                    for block in blocks:
                        in_force, config = chain.verified()
                        chain.feed(block)
                        if chain.verified()[0] != in_force:
                            configs.append((block.header.number, chain.last_hash, config, chain.mark()))
            except RxClientError as exc:
                failure = exc
            if failure is None and chain.height < height:
                failure = RxClientError("SERVICE_UNAVAILABLE", f"the peer {peer.name} sent {chain.height} of "
                                        f"its {height} blocks")
        if chain.height > before:
            if confirm is None:
                raise RxClientError("ORDERERS_DISAGREE", f"the blocks {peer.name} served were not confirmed: "
                                    "no orderer to ask")
            # (the pointer and codes the source gave, checked before any agreement call)
            chain.in_force(peer.orderer, save=False)
            end = chain.mark()
            confirmed = before - 1
            for number, want, config, after in configs:
                confirm(number, want, config)
                kept, confirmed = after, number
            if chain.height - 1 > confirmed:
                chain.rollback(end)
                try:
                    confirm(chain.height - 1, chain.last_hash, chain.verified()[1])
                    kept = end
                except RxClientError:
                    if peer.orderer:
                        raise
    except RxClientError as exc:
        _keep(chain, kept, before, peer.orderer)
        raise (exc if failure is None or exc.reason == "ORDERERS_DISAGREE" else failure) from None
    except BaseException:
        _keep(chain, kept, before, peer.orderer)
        raise
    chain.rollback(kept)
    if failure is not None:
        _keep(chain, kept, before, peer.orderer)
        raise failure
    chain.in_force(peer.orderer)  # LEDGER_INVALID when the peer's pointer or code disagrees with the verified chain


def _keep(chain: ChainConfig, kept: tuple[Any, ...], before: int, ordered: bool) -> None:
    """Return ``chain`` to ``kept`` (its confirmed prefix) and save it when it grew."""
    chain.rollback(kept)
    if chain.height > before:
        with contextlib.suppress(RxClientError):
            chain.in_force(ordered)


def _home_chain(home: Path, net: NetworkInfo) -> tuple[Path, block_pb2.Block, ChainConfig, dict[str, str],
                                                       NetworkInfo]:
    """(the saved chain's path, the genesis block, the chain ``home`` verified, the CAs rotated
    away from, ``net`` with the configuration in force at its end) -- IO_ERROR when the chain (or
    the denylist) is there but cannot be read now."""
    state_path = Path(home) / CHAIN_STATE
    try:
        genesis = read_genesis(Path(home) / "genesis.block")
    except RxError as exc:
        raise RxClientError(exc.reason, exc.message) from exc
    chain = ChainConfig(genesis, Verifier(max_entries=64, max_own=1), state_path)
    if chain.unreadable is not None:  # (not one removed: the peers are not pinned to the genesis CAs for it)
        raise RxClientError("IO_ERROR", f"{chain.unreadable}: the config chain this home verified cannot "
                            "be followed now")
    denied = read_denylist(Path(home) / CA_DENYLIST, block_header_hash(genesis.header))
    pinned = net.with_config(chain.verified()[1]) if chain.resumed else net
    return state_path, genesis, chain, denied, pinned


def _orderers_current(height: int, net: NetworkInfo, identity: WalletIdentity, denied: dict[str, str],
                      deadline: float, clock: Callable[[], float],
                      make: Callable[..., _Peer]) -> tuple[list[str], list[str], int]:
    """The orderers of the configuration ``net`` describes (:func:`_is_member`, each orderer once:
    entries sharing a raft id or a certificate are one, :func:`_node_of`,
    pinned to its organisation's CA there, none rotated away from: :func:`pinned_ca`) that report
    a chain of exactly ``height`` blocks -- asked in turn (a status call of at most
    :data:`STATUS_TIMEOUT_S` each, none past ``deadline``) until :func:`orderers_needed` of them
    did --, what the others said, and how many are needed."""
    needed = orderers_needed(net)
    current: list[str] = []
    said: list[str] = []
    answered: set[str] = set()
    counted: set[object] = set()
    for endpoint in orderer_endpoints(net):
        if len(current) >= needed:
            break
        one = _node_of(net, endpoint.name, endpoint.org)
        if endpoint.name in answered or one & counted or not _is_member(net, endpoint):
            continue  # (one orderer at two addresses or under two names: once; one not in the configuration: never)
        if clock() >= deadline:
            said.append(f"{endpoint.name}: not asked: the follow ran out of time")
            break
        node = _dial_orderer(endpoint, net, identity, denied, deadline, clock, make, said)
        if node is None:
            continue
        try:
            held = node.height()
        except RxClientError as exc:
            said.append(f"{endpoint.name}: {exc.reason}: {exc.message}")
            continue
        finally:
            node.close()
        answered.add(endpoint.name)
        counted |= one
        if held == height:
            current.append(endpoint.name)
        else:
            said.append(f"{endpoint.name}: holds {held} blocks")
    return current, said, needed


def follow_current(home: Path, net: NetworkInfo, identity: WalletIdentity, *, budget_s: float | None = None,
                   clock: Callable[[], float] = time.monotonic, make: Callable[..., _Peer] = _Peer) -> ChainConfig:
    """The proactive follow of a session (``client.session``): the config chain ``home`` verified,
    taken as current only when :func:`orderers_needed` orderers of the configuration in force at
    its end report a chain of exactly its height (:func:`_orderers_current`: one status call of
    at most :data:`STATUS_TIMEOUT_S` each) -- "nothing new" is never one node's word: the first
    peer a follow asked ended it when it held the verified height, and one peer lagging or
    withholding blocks hid a rotation until the next period. Otherwise the chain is followed from
    the orderers (:func:`follow_chain` without the peers, on the budget left), and must grow:
    SERVICE_UNAVAILABLE naming what each orderer said when it does not (the majority could not
    be heard, and no orderer served a block past it). The whole bounded by ``budget_s``
    (:data:`FOLLOW_BUDGET_S` by default); the errors of :func:`follow_chain` otherwise."""
    _, _, chain, denied, pinned = _home_chain(home, net)
    budget_s = FOLLOW_BUDGET_S if budget_s is None else budget_s
    deadline = clock() + budget_s
    current, said, needed = _orderers_current(chain.height, pinned, identity, denied, deadline, clock, make)
    if len(current) >= needed:
        return chain
    heard = (f"{len(current)} of the {needed} orderers needed report the {chain.height} blocks this home "
             f"verified as their chain ({', '.join(current) or 'none'}; {'; '.join(said) or 'no orderer listed'})")
    try:
        followed = follow_chain(home, net, identity, budget_s=max(0.0, deadline - clock()), clock=clock,
                                from_peers=False)
    except RxClientError as exc:
        if exc.reason != "SERVICE_UNAVAILABLE":
            raise
        raise RxClientError("SERVICE_UNAVAILABLE", f"{heard}, and {exc.message}") from exc
    if followed.height <= chain.height:
        raise RxClientError("SERVICE_UNAVAILABLE", f"{heard}, and no orderer served a block past them: the "
                            "config chain this home verified is not known to be current")
    return followed


def follow_chain(home: Path, net: NetworkInfo, identity: WalletIdentity, *,
                 skip: frozenset[str] = frozenset(), budget_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, from_peers: bool = True) -> ChainConfig:
    """The config chain ``home`` verified, extended by the blocks of the first peer (not named in
    ``skip``; at most :data:`FOLLOW_PEERS` asked) that serves them verified, else of the first
    orderer (at most :data:`FOLLOW_ORDERERS`: the verified configuration's -- at the addresses
    the network description lists, then at those the configuration names -- then the network
    description's others: :func:`orderer_endpoints`; each pinned to its own organisation's CA in
    the verified config, none rotated away from: :func:`pinned_ca`), its blocks verified alike
    and confirmed in segments split at config blocks, each by a majority of the orderers of the
    config in force before it (:func:`_extend`, :func:`_confirm`), and saved
    (``HOME/config-chain.json``; only when longer than the one saved). CHAIN_RESTARTED when a
    peer's verified chain -- or an orderer's, a majority of the orderers holding its block there
    -- diverges from it and no other one asked extends it; SERVICE_UNAVAILABLE naming each one's
    failure when none could extend it (one behind it, one serving a block that does not verify,
    or a config block the orderers do not hold -- nothing of theirs adopted; or ``budget_s`` --
    :data:`FOLLOW_BUDGET_S` by default -- ran out: none is asked past it, no call outlasts it);
    IO_ERROR when the saved chain (or the denylist, :data:`client.configtool.CA_DENYLIST`) is
    there but cannot be read now (none asked). ``from_peers`` False: the orderers only
    (:func:`follow_current`)."""
    state_path, genesis, chain, denied, pinned = _home_chain(home, net)
    failures: list[str] = []
    restarted: RxClientError | None = None  # (CHAIN_RESTARTED, from the first source that showed it)
    budget_s = FOLLOW_BUDGET_S if budget_s is None else budget_s
    deadline = clock() + budget_s
    listed = orderer_endpoints(pinned)
    sources = [(p, False) for p in pinned.peers if from_peers and p.name not in skip][:FOLLOW_PEERS] + [
        (o, True) for o in listed if o.name not in skip][:FOLLOW_ORDERERS]
    for i, (endpoint, orderer) in enumerate(sources):
        now = clock()
        if now >= deadline:
            failures.append(f"{endpoint.name}: not asked: the follow ran out of its {budget_s:g} s")
            break
        # each source's share of the time left: one stalling source (the first peer, asked first
        # every follow) used the whole budget, and the orderers were never reached ...
        share = now + (deadline - now) / (len(sources) - i)
        # ... less the agreement calls of the blocks it serves (:func:`_confirm`): the last
        # source's share was the deadline itself -- its stream running to it left no time to
        # ask the others, and what it had delivered was dropped every follow (a gap longer than
        # one follow's time never crossed)
        reserve = min(STATUS_TIMEOUT_S * (orderers_needed(pinned) - (1 if orderer else 0)), (deadline - now) / 2)
        share = min(share, deadline - reserve)
        try:
            peer = _Peer(identity, endpoint, pinned_ca(pinned, endpoint.org, denied), share, clock, orderer)
        except RxClientError as exc:  # (an organisation the verified config no longer holds; a CA denied)
            failures.append(f"{endpoint.name}: {exc.reason}: {exc.message}")
            continue
        except OSError as exc:  # (the wallet's files, read for the channel: EMFILE under load)
            failures.append(f"{endpoint.name}: IO_ERROR: {exc.strerror or exc}")
            continue

        def confirm(number: int, want: bytes, config: config_pb2.ConsortiumConfig, source: _Peer = peer,
                    endpoint: NodeEndpoint = endpoint) -> None:
            # (the config in force before block ``number``: the verified one for the first segment)
            segment = pinned if config.sequence <= pinned.config.sequence else net.with_config(config)
            others = [o for o in orderer_endpoints(segment) if o != endpoint]
            counts = source.orderer and _is_member(segment, endpoint)
            _confirm(number, want, source, others, segment, identity, deadline, clock, _Peer, counts, denied,
                     endpoint.org)

        def diverged(number: int, want: bytes, source: _Peer = peer, endpoint: NodeEndpoint = endpoint) -> None:
            others = [o for o in listed if o != endpoint]
            _confirm_restart(number, want, source, others, pinned, identity, deadline, clock, _Peer,
                             _is_member(pinned, endpoint), denied, endpoint.org)

        try:
            _extend(peer, chain, genesis, state_path, confirm, diverged if orderer else None)
            return chain
        except RxClientError as exc:
            # a restart one source shows is said once no other extends the chain verified: an
            # orderer signs blocks alone, so one compromised orderer's fork verifies from
            # genesis.block -- taken at once, its word stopped every follow (and told the
            # operator to drop the verified chain: the genesis CAs pinned again)
            if exc.reason == CHAIN_RESTARTED and restarted is None:
                restarted = exc
            failures.append(f"{endpoint.name}: {exc.reason}: {exc.message}")
        finally:
            peer.close()
    if restarted is not None:
        raise restarted
    raise RxClientError("SERVICE_UNAVAILABLE", "no peer or orderer extended the verified config chain: "
                        + ("; ".join(failures) or "no other peer, no orderer"))
