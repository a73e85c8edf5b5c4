"""Gateway.Evaluate: run a query on the local peer; nothing is signed or ordered."""

from __future__ import annotations

from rxchain.v1 import services_pb2

from node.errors import RxError
from node.peer.gateway.deps import GatewayDeps


def evaluate(deps: GatewayDeps, request: services_pb2.EvaluateRequest) -> services_pb2.EvaluateResponse:
    """The contract's response (status 400/500 with a reason when it refused)."""
    if not request.HasField("proposal"):
        raise RxError("BAD_REQUEST", "proposal is required")
    sim = deps.endorser.simulate(request.proposal, endorse=False)
    return services_pb2.EvaluateResponse(result=sim.response)
