"""Admin.Health / Admin.Status of any node, over mutual TLS."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc

from client.gateway import rpc_error
from client.wallet import WalletIdentity
from node.crypto.tls import secure_channel


@dataclass(frozen=True)
class NodeHealth:
    """A node's answer (or why there was none)."""

    name: str
    serving: bool
    detail: str = ""
    height: int = 0
    raft_leader: int = 0
    raft_term: int = 0
    last_block_hash: str = ""
    state_hash: str = ""
    # the consortium protocol versions the node's release implements, and the one in force
    # (node.protocol): what an operator checks on every node before raising the version
    protocol_versions: tuple[int, ...] = ()
    protocol_version: int = 0
    # orderers: (peer name, highest version its release told the ordering service; 0: never
    # heard from or an older release) for every peer of the config in force: the leader
    # refuses to raise the version while a peer lacks it (node.orderer.releases)
    peer_protocol_versions: tuple[tuple[str, int], ...] = ()
    # orderers: the peers (of those) whose version was told unsigned (a peer of a release that
    # does not sign what it tells, or an orderer of one relaying): it never admits a raise
    peers_unsigned: tuple[str, ...] = ()
    # orderers: started with blank Raft storage and not yet confirmed new by another orderer
    # (node.orderer.statecheck): it neither votes nor campaigns meanwhile
    raft_state_unconfirmed: bool = False


class AdminClient:
    """A short-lived connection to one node's Admin service."""

    def __init__(self, identity: WalletIdentity, target: str):
        self._channel = secure_channel(target, identity.cert_path, identity.key_path,
                                       identity.ca_bundle_path)
        self._stub = services_pb2_grpc.AdminStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def health(self, name: str, timeout: float = 2.0) -> NodeHealth:
        """Health; a failed RPC is reported as not serving."""
        try:
            h = self._stub.Health(services_pb2.HealthRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return NodeHealth(name, False, rpc_error(exc).reason)
        return NodeHealth(name, bool(h.serving), h.detail)

    def status(self, name: str, timeout: float = 3.0) -> NodeHealth:
        """Health plus status numbers."""
        h = self.health(name, timeout)
        if not h.serving:
            return h
        try:
            s = self._stub.Status(services_pb2.StatusRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return NodeHealth(name, False, rpc_error(exc).reason)
        return NodeHealth(name, True, h.detail, int(s.height), int(s.raft_leader),
                          int(s.raft_term), s.last_block_hash.hex(), s.state_hash.hex(),
                          tuple(int(v) for v in s.protocol_versions), int(s.protocol_version),
                          tuple((p.node, int(p.max_protocol_version)) for p in s.peer_releases),
                          tuple(p.node for p in s.peer_releases if p.told_wall_ms > 0 and not p.statement),
                          bool(s.raft_state_unconfirmed))
