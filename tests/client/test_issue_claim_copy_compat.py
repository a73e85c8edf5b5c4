"""The issuing hospital's copy of the claim key that ``RxOperations.issue`` sends (settle7,
contracts/README.md "Moving an account"): for whom it is wrapped, and an issue against a
prescription contract deployed before the copy, which holds ``claim_keys`` to exactly the
patient's insurer. No peer runs: ``Gateway.submit`` plays the contract's answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.errors import EndorsementError
from client.gateway import Gateway, SubmitResult
from client.records import claim_wrap_context, unb64
from client.rxops import DrugLine, IssueRequest, RxOperations
from client.session import Session
from client.wallet import load_identity
from node.crypto import aead
from tests.client.offline import offline_home

OLD_REFUSAL = "claim_keys must hold exactly the patient's insurer ins01"


def _old_contract(claim_keys: dict[str, Any]) -> str | None:
    """The prescription contract before settle7: any claim key but the insurer's refused."""
    return OLD_REFUSAL if len(claim_keys) != 1 else None


def _issue(net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           refusal: Callable[[dict[str, Any]], str | None] = lambda keys: None,
           ) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """Issue as h01:dr-jiang; a proposal whose ``claim_keys`` ``refusal`` answers with a message
    is refused BAD_ARGUMENTS so, nothing written (raised to the caller if the SDK does not
    propose again). The result and every proposal's ``claim_keys``."""
    home = offline_home(net_home, tmp_path, monkeypatch, lambda rx_id: None)
    proposed: list[dict[str, Any]] = []

    def submit(self: Gateway, contract: str, function: str, args: Any = None, transient: Any = None,
               endorsing_orgs: list[str] | None = None) -> SubmitResult:
        if function == "issue":
            proposed.append(dict(args["claim_keys"]))
            refused = refusal(args["claim_keys"])
            if refused is not None:
                raise EndorsementError("BAD_ARGUMENTS", refused)
        return SubmitResult("cd" * 32, "VALID", 3, {})

    monkeypatch.setattr(Gateway, "submit", submit)
    ops = RxOperations(Session(home, "h01:dr-jiang"))
    try:
        res = ops.issue(IssueRequest(patient="patient-zhang", diagnosis="I10", drugs=[DrugLine("amlodipine", 1)],
                                     days=7, pharmacy="p01"))
    finally:
        ops.s.close()
    return home, res, proposed


def _opens(key: Any, wrapped: str, rx_id: str) -> bool:
    try:
        aead.unwrap_key(key, unb64(wrapped), claim_wrap_context(rx_id, "h01"))
    except aead.DecryptionError:
        return False
    return True


def test_the_hospitals_copy_opens_for_the_issuing_doctor_not_with_the_records_key(
        net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy was wrapped for h01's records key, which its pharmacists hold too: a pharmacist
    opened it straight from the issue's arguments (and from ``get_key``) and held the claim key.
    Now it is wrapped for the issuing doctor's certificate key: it opens for her alone."""
    home, res, proposed = _issue(net_home, tmp_path, monkeypatch)
    assert len(proposed) == 1 and sorted(proposed[0]) == ["h01", "ins01"]
    copy = proposed[0]["h01"]
    pharmacist = load_identity(home, "h01", "pharm-he")
    assert pharmacist.records_key is not None
    assert not _opens(pharmacist.records_key, copy, res["rx_id"])
    assert not _opens(pharmacist.private_key, copy, res["rx_id"])
    assert not _opens(load_identity(home, "h01", "nurse-liu").private_key, copy, res["rx_id"])
    assert _opens(load_identity(home, "h01", "dr-jiang").private_key, copy, res["rx_id"])


def test_issue_against_a_contract_from_before_the_copy_goes_through_without_it(
        net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client upgraded before the contract: its issue was refused BAD_ARGUMENTS (claim_keys)
    and the doctor could issue nothing. It is proposed once more without the hospital's copy."""
    _, res, proposed = _issue(net_home, tmp_path, monkeypatch, _old_contract)
    assert res["rx_id"].startswith("RX") and res["tx_id"] == "cd" * 32, res
    assert [sorted(p) for p in proposed] == [["h01", "ins01"], ["ins01"]]
    assert proposed[1]["ins01"] == proposed[0]["ins01"]


@pytest.mark.parametrize("refusal", [
    # any other BAD_ARGUMENTS of the issue
    "keys must hold exactly patient, h01 and the pharmacy",
    # review18: the current contract's refusal of a key wrapped for another insurer than hers
    # (this client took ins01, the contract names ins02) -- any BAD_ARGUMENTS naming claim_keys
    # was proposed again without the copy, which no such proposal passes
    "claim_keys must hold exactly the patient's insurer ins02",
])
def test_another_refusal_of_the_issue_is_not_retried(
        net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str) -> None:
    """Only the old contract's claim_keys refusal, naming the issue's insurer, is retried: any
    other BAD_ARGUMENTS is raised as it came, proposed once (with the hospital's copy)."""
    proposed: list[dict[str, Any]] = []

    def refuse(keys: dict[str, Any]) -> str:
        proposed.append(keys)
        return refusal

    with pytest.raises(EndorsementError) as err:
        _issue(net_home, tmp_path, monkeypatch, refuse)
    assert err.value.reason == "BAD_ARGUMENTS" and err.value.message == refusal
    assert [sorted(keys) for keys in proposed] == [["h01", "ins01"]]
