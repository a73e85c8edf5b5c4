"""Calls whose proposals carry transient inputs name their endorsers: a patient's session (her
binding travels with every proposal that names them, client.gateway) and sample-data loading
(a patient's medical data) never leave the choice to the gateway."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from client.bootstrap import Bootstrapper
from client.errors import EndorsementError, NoKeyGrant
from client.gateway import SubmitResult
from client.network import load_network
from client.records import OpenedRecord
from client.rxops import RxOperations

RECORD = {"rx_id": "RX-1", "hospital": "h01", "pharmacy": "p01", "insurer": "ins01", "status": "ISSUED"}


class _Gateway:
    """Answers ``show`` with RECORD (or NOT_FOUND for RX-other) and records every submit."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        self.default_transient = defaults
        self.submits: list[tuple[str, list[str] | None]] = []
        self.shown = 0

    def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
        assert fn == "show"
        self.shown += 1
        if args["rx_id"] != "RX-1":
            raise EndorsementError("NOT_FOUND", "no such prescription")
        return dict(RECORD)

    def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
               endorsing_orgs: list[str] | None = None) -> SubmitResult:
        self.submits.append((fn, None if endorsing_orgs is None else list(endorsing_orgs)))
        return SubmitResult("tx", "VALID", 3, {"error": "NO_KEY_GRANT", "message": "none"})


def _ops(net_home: Any, defaults: dict[str, Any], peer_org: str = "h01") -> tuple[RxOperations, _Gateway]:
    gw = _Gateway(defaults)
    session = SimpleNamespace(gateway=gw, net=load_network(net_home.home), peer_org=peer_org,
                              identity=SimpleNamespace(role="patient" if defaults else "doctor"),
                              decryption_keys=list)
    return RxOperations(session), gw  # type: ignore[arg-type]


def test_a_patients_calls_name_the_records_parties(net_home: Any) -> None:
    """A patient's session adds her binding (transient) to its proposals: get_key and the consent
    calls were submitted naming no endorsers, so the gateway picked any peers for the binding.
    They now name the record's parties that run a peer, her session's peer first if it is one."""
    ops, gw = _ops(net_home, {"patient_binding": "ab" * 32})
    with pytest.raises(NoKeyGrant):
        ops._get_key("RX-1")
    with pytest.raises(NoKeyGrant):  # a withdrawal fetches her key first (its note keys)
        ops.revoke_consent("RX-1", "h02")
    assert gw.submits == [("get_key", ["h01", "p01"])] * 2
    ops, gw = _ops(net_home, {"patient_binding": "ab" * 32}, peer_org="ins01")
    # a contract from before note keys names no readers: the withdrawal alone is submitted
    opened = OpenedRecord("RX-1", "content", "patient", {}, "", b"k" * 32)
    ops._get_key = lambda rx_id: opened  # type: ignore[method-assign]
    ops.revoke_consent("RX-1", "h02")
    assert gw.submits == [("revoke_consent", ["ins01", "h01"])]
    # a record that does not show to her: no endorsers, so the binding stays home (gateway.submit)
    # and the refusal is the contract's, audited as anyone's
    ops, gw = _ops(net_home, {"patient_binding": "ab" * 32})
    with pytest.raises(NoKeyGrant):
        ops._get_key("RX-other")
    assert gw.submits == [("get_key", None)]


def test_other_sessions_leave_calls_without_transient_inputs_to_the_gateway(net_home: Any) -> None:
    ops, gw = _ops(net_home, {})
    with pytest.raises(NoKeyGrant):
        ops._get_key("RX-1")
    assert gw.submits == [("get_key", None)] and gw.shown == 0


def test_sample_data_names_the_parties_even_when_fewer_than_two_run_a_peer(net_home: Any, tmp_path: Path) -> None:
    """Enrolment and account opening carry diagnoses: when fewer than two of the organisations
    concerned ran a peer, the gateway was left to choose (None), and picked any peer the policy
    took. They now name those that do (none: the call is refused ENDORSERS_REQUIRED by the SDK)."""
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    boot = Bootstrapper(home)
    try:
        assert boot._parties("h01", "ins99") == ["h01"]
        assert boot._parties("h01", "ins01") == ["h01", "ins01"]
        assert boot._parties("h99", "") == []
    finally:
        boot.close()


def test_a_patients_route_names_the_records_parties(net_home: Any) -> None:
    """The patient routes her prescription (contracts/README: the issuing hospital or the
    patient): the route named no endorsers, so her session left her binding out of it
    (client.gateway) and the contract, which knows her only by it, answered NOT_FOUND -- no
    patient could route. It now names the record's parties, as her other calls on it."""
    ops, gw = _ops(net_home, {"patient_binding": "ab" * 32})
    ops._get_key = lambda rx_id: OpenedRecord("RX-1", "content", "patient", {}, "", b"k" * 32)  # type: ignore[method-assign]
    pharmacy = ec.generate_private_key(ec.SECP256R1()).public_key()
    ops.s.records_public_key = lambda org: pharmacy  # type: ignore[method-assign]
    ops.route("RX-1", "p02")
    assert gw.submits == [("route", ["h01", "p01"])]
    ops, gw = _ops(net_home, {})  # the hospital's staff: no default inputs, the gateway picks
    ops._get_key = lambda rx_id: OpenedRecord("RX-1", "content", "h01", {}, "", b"k" * 32)  # type: ignore[method-assign]
    ops.s.records_public_key = lambda org: pharmacy  # type: ignore[method-assign]
    ops.route("RX-1", "p02")
    assert gw.submits == [("route", None)] and gw.shown == 0


class _NoAccountGateway(_Gateway):
    """A patient with no account yet (reg6: she asks an insurer to open it)."""

    def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
        if fn == "get_account":
            raise EndorsementError("NO_ACCOUNT", "the patient's insurer has not opened her account")
        assert fn == "get_patient"
        return {"hospital": "h01"}


def test_a_patient_without_an_account_asks_an_insurer_to_open_it(net_home: Any) -> None:
    """Her request to open an account names the insurer asked and her hospital as endorsers;
    the SDK's NO_ACCOUNT from get_account used to end the call before it was sent."""
    ops, _ = _ops(net_home, {"patient_binding": "ab" * 32})
    gw = _NoAccountGateway({"patient_binding": "ab" * 32})
    ops.s.gateway = gw  # type: ignore[assignment]
    ops.pseudonym = lambda ref: "cd" * 32  # type: ignore[method-assign]
    out = ops.request_transfer("patient-new", "ins01")
    assert out["patient"] == "patient-new"
    assert gw.submits == [("request_transfer", ["h01", "ins01"])]
