"""Endorser clients for the other organisations' peers (mTLS with this peer's cert)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from rxchain.v1 import services_pb2_grpc, transaction_pb2

from node.config import Endpoint
from node.errors import RxError, reason_from_rpc_error

ChannelFactory = Callable[[str], grpc.Channel]


class RemoteEndorsers:
    """One Endorser stub per peer endpoint, grouped by organisation."""

    def __init__(
        self, peers: Sequence[Endpoint], channels: ChannelFactory, timeout_s: float = 30.0
    ) -> None:
        self._by_org: dict[str, list[Endpoint]] = {}
        for ep in peers:
            self._by_org.setdefault(ep.org, []).append(ep)
        self._channels = channels
        self._timeout = timeout_s
        self._stubs: dict[str, services_pb2_grpc.EndorserStub] = {}

    def orgs(self) -> list[str]:
        """Organisations with at least one remote peer, in configuration order."""
        return list(self._by_org)

    def _stub(self, ep: Endpoint) -> services_pb2_grpc.EndorserStub:
        stub = self._stubs.get(ep.target)
        if stub is None:
            stub = self._stubs[ep.target] = services_pb2_grpc.EndorserStub(
                self._channels(ep.target)
            )
        return stub

    def endorse(
        self, org: str, signed: transaction_pb2.SignedProposal
    ) -> transaction_pb2.ProposalResponse:
        """Ask the peers of ``org`` in turn; the first answer wins. RxError otherwise."""
        last = RxError("SERVICE_UNAVAILABLE", f"no peer of {org} is configured")
        for ep in self._by_org.get(org, []):
            try:
                resp: transaction_pb2.ProposalResponse = self._stub(ep).ProcessProposal(
                    signed, timeout=self._timeout
                )
                return resp
            except grpc.RpcError as exc:
                details = exc.details() if callable(getattr(exc, "details", None)) else ""
                last = RxError(reason_from_rpc_error(exc), f"{ep.name}: {details}")
        raise last
