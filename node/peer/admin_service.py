"""Admin.Health and Admin.Status of a peer."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from rxchain.v1 import config_pb2, services_pb2, services_pb2_grpc

from node.crypto.canonical import block_header_hash
from node.errors import guarded_unary
from node.identity.msp import Principal
from node.ledger.ledger import Ledger
from node.protocol import SUPPORTED_VERSIONS, protocol_version


class PeerAdminService(services_pb2_grpc.AdminServicer):
    """Health (serving once genesis is committed and not stopping; open to any caller the
    mTLS layer admits, e.g. probes) and Status (ledger height and hashes: ``check_caller``
    checks the caller's certificate with the MSP first)."""

    def __init__(self, name: str, ledger: Ledger, stopping: Callable[[], bool],
                 check_caller: Callable[[grpc.ServicerContext], Principal]) -> None:
        self._name = name
        self._ledger = ledger
        self._stopping = stopping
        self._check_caller = check_caller

    @guarded_unary
    def Health(
        self, request: services_pb2.HealthRequest, context: grpc.ServicerContext
    ) -> services_pb2.HealthResponse:
        if self._stopping():
            return services_pb2.HealthResponse(serving=False, node=self._name, role="peer",
                                               detail="shutting down")
        if self._ledger.height() == 0:
            return services_pb2.HealthResponse(serving=False, node=self._name, role="peer",
                                               detail="no genesis block")
        return services_pb2.HealthResponse(serving=True, node=self._name, role="peer")

    @guarded_unary
    def Status(
        self, request: services_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> services_pb2.StatusResponse:
        self._check_caller(context)
        sp = self._ledger.savepoint()  # block and state hash from one read
        if sp is None:
            return services_pb2.StatusResponse(node=self._name, role="peer")
        last = block_header_hash(self._ledger.block(sp.block).header)
        raw = self._ledger.current_config_bytes() or b""
        return services_pb2.StatusResponse(
            node=self._name, role="peer", height=sp.block + 1, last_block_hash=last,
            state_hash=sp.state_hash,
            config=raw if request.include_config else b"",
            protocol_versions=sorted(SUPPORTED_VERSIONS),
            protocol_version=protocol_version(config_pb2.ConsortiumConfig.FromString(raw)),
        )
