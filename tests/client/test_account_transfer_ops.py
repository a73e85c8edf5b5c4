"""RxOperations' account transfer calls over the real contracts (tests/contracts chain): the
patient's request names her parties as endorsers (her binding goes only to them), the insurer
asked accepts, a pending request is withdrawn."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from client.errors import EndorsementError
from client.gateway import SubmitResult
from client.rxops import RxOperations
from tests.client.contractgw import ContractGateway
from tests.contracts.chain import Who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import CLERK, CLERK2
from tests.contracts.rxclient import World, trace_key

INS02_POLICY = {"insurer": "ins02", "deductible_fen": 30000, "ratio_bp": {"community": 9000},
                "cap_fen": 150000, "cap_by_disease": {}, "b_share_bp": 2000}


class RecordingGateway(ContractGateway):
    """Records the endorsers each submit names."""

    def __init__(self, w: World, caller: Who, patient: bool) -> None:
        super().__init__(w, caller)
        if patient:  # a patient's session adds her binding to every proposal
            self.default_transient = {"patient_binding": caller.binding}
        self.named: list[tuple[str, Any]] = []

    def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
               endorsing_orgs: Any = None) -> SubmitResult:
        self.named.append((fn, endorsing_orgs))
        return super().submit(contract, fn, args, transient, endorsing_orgs)


def _ops(w: World, caller: Who, peer_org: str, patient: bool = False) -> tuple[RxOperations, RecordingGateway]:
    gw = RecordingGateway(w, caller, patient)
    peers = [SimpleNamespace(org=o) for o in ("h01", "ins01", "p01")]  # ins02 runs no peer
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=gw, identity=SimpleNamespace(org=caller.org, user=caller.name, role=caller.role),
        net=SimpleNamespace(peers=peers), trace_key=trace_key(), peer_org=peer_org))
    return ops, gw


def test_a_patient_moves_her_account_and_names_her_parties_as_endorsers(world: World) -> None:  # noqa: F811
    world.set_policy(INS02_POLICY, 0).unwrap()
    pid = world.pid("patient-zhang")
    her, her_gw = _ops(world, world.patient_who("patient-zhang"), peer_org="h01", patient=True)
    req = her.request_transfer(pid, "ins02")
    assert (req["from"], req["to"], req["requested_by"], req["patient"]) == (
        "ins01", "ins02", "patient", pid)
    # her insurer and her hospital run peers (the insurer asked does not); her peer first
    assert her_gw.named == [("request_transfer", ["h01", "ins01"])]
    ins02, ins02_gw = _ops(world, CLERK2, peer_org="ins01")
    moved = ins02.accept_transfer(pid)
    assert moved["insurer"] == "ins02" and moved["transfers"][0]["from"] == "ins01"
    assert ins02_gw.named == [("accept_transfer", None)]  # no binding: the gateway picks
    with pytest.raises(EndorsementError) as err:
        ins02.accept_transfer(pid)
    assert err.value.reason == "NOT_FOUND"


def test_a_pending_request_is_withdrawn_and_then_nothing_moves(world: World) -> None:  # noqa: F811
    world.set_policy(INS02_POLICY, 0).unwrap()
    pid = world.pid("patient-zhang")
    ins01, _ = _ops(world, CLERK, peer_org="ins01")
    assert ins01.request_transfer(pid, "ins02")["requested_by"] == "ins01"
    her, her_gw = _ops(world, world.patient_who("patient-zhang"), peer_org="p01", patient=True)
    assert her.cancel_transfer(pid)["to"] == "ins02"
    assert her_gw.named == [("cancel_transfer", ["ins01", "h01"])]
    ins02, _ = _ops(world, CLERK2, peer_org="ins01")
    with pytest.raises(EndorsementError) as err:
        ins02.accept_transfer(pid)
    assert err.value.reason == "NOT_FOUND"
    assert ins01.patient_status(pid)["account_balance_fen"] == 50000
