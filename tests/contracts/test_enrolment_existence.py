"""An insurer cannot tell an enrolled patient it has no tie to from a person never enrolled
(reg6). ``open_account`` answered UNKNOWN_PATIENT for a pseudonym never enrolled, opened an
account (or said ACCOUNT_EXISTS, naming her insurer) for an enrolled one; ``get_patient``,
``get_account``, ``patient_status``, ``request_transfer`` and ``cancel_transfer`` told it
UNKNOWN_PATIENT from ACCESS_DENIED / NO_ACCOUNT. Now an account is opened on her own request,
and every one of those answers an insurer she has no tie to the same, writing nothing."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.contracts.chain import DAY_MS, Who
from tests.contracts.flows import CLERK, CLERK2
from tests.contracts.rxclient import World, patient_binding, pseudonym
from tests.contracts.test_registry_residuals import INS02_POLICY, NEW_PATIENT

NOBODY = hashlib.sha256(b"never enrolled").hexdigest()


def _new(world: World) -> tuple[dict[str, Any], str, Who]:
    """patient-new enrolled at h01, no account; ins02 has a policy in force."""
    pt = {**world.patients["patient-zhang"], **NEW_PATIENT}
    world.enrol(pt).unwrap()
    world.set_policy(INS02_POLICY, 0).unwrap()
    world.chain.advance(1)
    her = Who("h01", "patient-new", "patient", binding=patient_binding("h01", "patient-new"))
    return pt, pseudonym(pt["id_number"]), her


def _answers(world: World, caller: Who, pid: str) -> list[tuple[str, str]]:
    """What ``caller`` is answered about ``pid`` by every call that names a patient, submitted
    (its writes committed when it succeeds)."""
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("registry", "get_patient", {}),
        ("settlement", "get_account", {}),
        ("settlement", "patient_status", {"year": 0}),
        ("settlement", "request_transfer", {"to_insurer": "ins03"}),
        ("settlement", "cancel_transfer", {}),
        ("settlement", "open_account", {"year": 0, "balance_fen": 1, "deductible_used_fen": 0}),
    ]
    out = []
    for contract, fn, extra in calls:
        res = world.chain.submit(contract, fn, caller, pseudonym=pid, **extra)
        out.append(("OK", fn) if res.ok else (res.reason, res.message))
    return out


def test_an_insurer_cannot_tell_an_enrolled_patient_from_a_stranger(world: World) -> None:
    """ins02 (a policy in force) has no tie to patient-new (enrolled, no account), to
    patient-zhang (ins01's) or to a pseudonym never enrolled: each call answers the three alike,
    and nothing is written -- before, open_account opened patient-new's account (with no say of
    hers), answered ACCOUNT_EXISTS naming ins01 for patient-zhang and UNKNOWN_PATIENT for the
    stranger."""
    _, pid, _ = _new(world)
    before = dict(world.chain.state.values)
    stranger = _answers(world, CLERK2, NOBODY)
    assert all(reason != "OK" for reason, _ in stranger), stranger
    assert "UNKNOWN_PATIENT" not in [reason for reason, _ in stranger]
    assert _answers(world, CLERK2, pid) == stranger
    assert _answers(world, CLERK2, world.pid("patient-zhang")) == stranger
    assert dict(world.chain.state.values) == before
    assert world.chain.query("settlement", "get_account", CLERK, pseudonym=pid).reason == "ACCESS_DENIED"


def test_her_own_request_opens_her_account(world: World) -> None:
    """She asks ins02 (request_transfer with no account yet: ``from`` ""); ins02 then reads her
    enrolment to decide and opens the account, which consumes the request. Another insurer she
    did not ask still opens nothing."""
    pt, pid, her = _new(world)
    req = world.chain.submit("settlement", "request_transfer", her, pseudonym=pid,
                             to_insurer="ins02").unwrap()
    assert req["from"] == "" and req["to"] == "ins02" and req["requested_by"] == "patient"
    assert world.chain.query("registry", "get_patient", CLERK2, pseudonym=pid).ok
    assert world.chain.query("registry", "get_patient", CLERK, pseudonym=pid).reason == "ACCESS_DENIED"
    assert world.open_account(pt, caller=CLERK, asked=False).reason == "NOT_FOUND"
    # a move request is no account yet: accept_transfer has nothing to move
    assert world.chain.submit("settlement", "accept_transfer", CLERK2, pseudonym=pid).reason == "NO_ACCOUNT"
    acct = world.open_account(pt, caller=CLERK2, asked=False).unwrap()
    assert acct["insurer"] == "ins02" and acct["request_tx_id"] == req["tx_id"]
    assert ("settlement", "xfer/" + pid) not in world.chain.state.values
    st = world.chain.query("settlement", "patient_status", CLERK2, pseudonym=pid, year=0).unwrap()
    assert st["account_balance_fen"] == NEW_PATIENT["account_balance_fen"]
    # once: the request is used up
    assert world.open_account(pt, caller=CLERK2, asked=False).reason == "NOT_FOUND"


def test_her_request_to_open_is_withdrawn_declined_or_lapses(world: World) -> None:
    pt, pid, her = _new(world)

    def ask() -> None:
        world.chain.submit("settlement", "request_transfer", her, pseudonym=pid,
                           to_insurer="ins02").unwrap()

    ask()
    assert world.chain.submit("settlement", "cancel_transfer", her, pseudonym=pid).ok  # withdrawn
    assert world.open_account(pt, caller=CLERK2, asked=False).reason == "NOT_FOUND"
    ask()
    assert world.chain.submit("settlement", "cancel_transfer", CLERK2, pseudonym=pid).ok  # declined
    assert world.open_account(pt, caller=CLERK2, asked=False).reason == "NOT_FOUND"
    ask()
    world.chain.advance(30 * DAY_MS + 1)  # consent for an account now, not whenever
    assert world.open_account(pt, caller=CLERK2, asked=False).reason == "NOT_FOUND"
    assert world.chain.query("registry", "get_patient", CLERK2, pseudonym=pid).reason == "ACCESS_DENIED"
    ask()
    assert world.open_account(pt, caller=CLERK2, asked=False).ok
