"""Operations reserved for another role or organisation, on the real contracts (deployed by
the project's own bootstrapper): a pharmacy issuing a prescription, a patient settling a
claim, a hospital changing the insurance policy, a doctor registering a pharmacy."""

from __future__ import annotations

from typing import Any

import pytest

from client.errors import RxClientError
from tests.adversarial.support import AdvNet, Case, CaseTable

pytestmark = pytest.mark.integration

ISSUE_ARGS = {"rx_id": "RX-forged", "patient": "a" * 64, "ciphertext": "QUJD", "commitment": "b" * 64, "keys": {},
              "claim_ciphertext": "QUJD", "claim_commitment": "c" * 64, "claim_keys": {}, "pharmacy": ""}
POLICY_ARGS = {"effective_ms": 0, "deductible_fen": 0, "ratio_bp": {"community": 10000, "tertiary": 10000},
               "cap_fen": 10**9, "cap_by_disease": {}, "b_share_bp": 0}

CASES = [
    ("pharmacy issues a prescription", "p01", "pharm-test", "prescription", "issue", ISSUE_ARGS,
     {"UNAUTHORIZED_PRESCRIBER"}),
    ("nurse issues a prescription", "h01", "nurse-test", "prescription", "issue", ISSUE_ARGS,
     {"UNAUTHORIZED_PRESCRIBER"}),
    ("patient settles a claim", "h01", "patient-test", "settlement", "settle", {"rx_id": "RX-forged", "fill": 0},
     {"WRONG_ROLE"}),
    ("pharmacist settles a claim", "p01", "pharm-test", "settlement", "settle", {"rx_id": "RX-forged", "fill": 0},
     {"WRONG_ROLE"}),
    ("hospital admin changes the insurance policy", "h01", "admin", "registry", "set_policy", POLICY_ARGS,
     {"ACCESS_DENIED"}),
    ("insurer clerk changes the insurance policy", "ins01", "clerk-test", "registry", "set_policy", POLICY_ARGS,
     {"WRONG_ROLE"}),
    ("hospital admin registers a pharmacy", "h01", "admin", "registry", "register_pharmacy",
     {"licence_no": "YP-FAKE-1", "active": True}, {"ACCESS_DENIED"}),
]


@pytest.mark.parametrize("case_", CASES, ids=[c[0] for c in CASES])
def test_reserved_operation_refused(adv: AdvNet, case_table: CaseTable, case_: tuple[Any, ...]) -> None:
    title, org, user, contract, fn, args, expected = case_
    assert adv.real_contracts
    before = adv.snapshot()
    with adv.gateway(org, user) as gw:
        try:
            gw.submit(contract, fn, args)
            reason, message = "", "ACCEPTED"
        except RxClientError as exc:
            reason, message = exc.reason, exc.message
    case = case_table.add(Case(f"{contract}.{fn}: {title}", f"peer.{org}", "/".join(sorted(expected)),
                               outcome=f"{reason}: {message[:80]}", reason=reason))
    case.nothing_written = adv.snapshot() == before
    case.still_serving = adv.serving()
    assert reason in expected, case
    assert case.passed, case
