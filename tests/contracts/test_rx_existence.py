"""A prescription's existence is told only to its parties.

An rx id is random (``RX{date}-{org}-{40 bits}``) or derived from a hospital's own order
number (``client.rxid.derived_rx_id``: anyone who knows or guesses the numbers computes the
ids). Every view of one prescription answers a caller who is no party of it exactly as an id
never issued: the same reason and message (the id aside). Each test here failed on the views
that answered NOT_FOUND for a missing id and ACCESS_DENIED (or a result) for an existing one.
"""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import DAY_MS, Who, admin, who
from tests.contracts.flows import (
    AUDITOR,
    CHEN,
    CLERK,
    CLERK2,
    COURIER,
    COURIER2,
    HE,
    JIANG,
    NURSE,
    WANG,
    ZHOU,
    approved,
    content_transient,
    lock_and_dispense,
    settle,
)
from tests.contracts.rxclient import Prepared, World

# (contract, function, further arguments) of every read view of one prescription
VIEWS: list[tuple[str, str, dict[str, Any]]] = [
    ("prescription", "show", {}),
    ("prescription", "trace", {}),
    ("prescription", "trace", {"start": "1", "limit": 5}),
    ("prescription", "trace_fills", {"hashes": ["ab" * 32]}),
    ("prescription", "trace_fills", {"hashes": []}),  # bad arguments: still as a missing id
    ("settlement", "trail", {}),
]


def _outsiders(world: World) -> list[Who]:
    """Callers who are no party of a prescription of patient-zhang issued by h01, routed to
    p01 and insured by ins01."""
    zhang = world.patient_who("patient-zhang")
    return [
        CHEN, COURIER2, who("p02:admin:admin"),  # another pharmacy
        ZHOU, admin("h02"), who("h02:nurse-ma:nurse"),  # another hospital
        CLERK2, admin("ins02"),  # another insurer
        who("reg01:clerk-a:clerk"),  # the regulator, not an auditor
        world.patient_who("patient-sun"),  # another patient
        Who(zhang.org, zhang.name, "patient"),  # her certificate without her binding
    ]


def _answer(world: World, contract: str, fn: str, caller: Who, rx_id: str,
            submit: bool = False, transient: dict[str, Any] | None = None,
            **args: Any) -> tuple[bool, str, str]:
    call = world.chain.submit if submit else world.chain.query
    out = call(contract, fn, caller, transient=transient, rx_id=rx_id, **args)
    return out.ok, out.reason, out.message.replace(rx_id, "ID")


def _claimed(world: World) -> Prepared:
    prep = approved(world)
    lock_and_dispense(world, prep).unwrap()
    settle(world, prep).unwrap()
    return prep


def test_a_non_party_gets_the_missing_ids_answer_from_every_view(world: World) -> None:
    """show, trace, trace_fills and settlement.trail: NOT_FOUND "no prescription ID" for an
    issued, dispensed and claimed prescription and for an id never issued alike -- whatever
    the other arguments (a bad trace_fills list included)."""
    rx = _claimed(world).args["rx_id"]
    missing = rx + "9"
    for caller in _outsiders(world):
        for contract, fn, args in VIEWS:
            seen = [_answer(world, contract, fn, caller, i, **args) for i in (rx, missing)]
            assert seen == [(False, "NOT_FOUND", "no prescription ID")] * 2, (caller, fn, args, seen)
    # the parties still read every view (and a missing id is NOT_FOUND to them too)
    parties = [JIANG, HE, NURSE, admin("h01"), WANG, COURIER, CLERK, admin("ins01"), AUDITOR,
               world.patient_who("patient-zhang")]
    for caller in parties:
        for contract, fn, args in VIEWS:
            if fn == "trace_fills" and not args["hashes"]:
                continue
            assert world.chain.query(contract, fn, caller, rx_id=rx, **args).ok, (caller, fn, args)
            assert _answer(world, contract, fn, caller, missing, **args)[1] == "NOT_FOUND"


def test_consent_makes_a_party_and_withdrawing_it_unmakes_one(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    zhang = world.patient_who("patient-zhang")
    assert _answer(world, "prescription", "show", ZHOU, rx)[1] == "NOT_FOUND"
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                       wrapped_key=world.wrap_for(rx, "h02")).unwrap()
    for contract, fn, args in VIEWS[:4]:
        assert world.chain.query(contract, fn, ZHOU, rx_id=rx, **args).ok, fn
    world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02").unwrap()
    assert _answer(world, "prescription", "show", ZHOU, rx) == (False, "NOT_FOUND", "no prescription ID")


def test_get_key_audits_every_denial_party_or_not(world: World) -> None:
    """get_key (a submitted call) is the one exception, by DOMAIN.md section 4 ("anyone else
    asking gets nothing [NO_KEY_GRANT], and every ... denied access is an audit event"): a
    non-party and a party without a grant alike get the committed, audited NO_KEY_GRANT -- the
    outsider's attempt is on the prescription's audit trail; a missing id is NOT_FOUND."""
    rx = approved(world).args["rx_id"]
    missing = rx + "9"
    outsiders = _outsiders(world)
    for caller in outsiders:
        out = world.chain.submit("prescription", "get_key", caller, rx_id=rx)
        assert out.ok and out.block is not None and out.value["error"] == "NO_KEY_GRANT", (caller, out)
        assert "wrapped_key" not in out.value
        assert _answer(world, "prescription", "get_key", caller, missing, submit=True) == (
            False, "NOT_FOUND", "no prescription ID")
    out = world.chain.submit("prescription", "get_key", NURSE, rx_id=rx)
    assert out.ok and out.block is not None and out.value["error"] == "NO_KEY_GRANT"
    events = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx).unwrap()["events"]
    denied = [(e["org"], e["outcome"]) for e in events if e["event"] == "KEY_FETCH"]
    assert sorted(denied) == sorted([(c.org, "DENIED") for c in outsiders] + [("h01", "DENIED")])


def test_audit_trail_refuses_roles_before_the_lookup_and_non_parties_as_missing(world: World) -> None:
    """audit_trail: a role that reads no audit trail gets ACCESS_DENIED whatever the id (it
    was NOT_FOUND for a missing id); another hospital's admin and another patient get the
    missing id's NOT_FOUND (was ACCESS_DENIED); a party who may not read it -- an admin of a
    hospital holding the patient's consent -- ACCESS_DENIED."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    missing = rx + "9"
    zhang = world.patient_who("patient-zhang")
    denied = (False, "ACCESS_DENIED", "audit trails are for the patient, the hospital and auditors")
    for caller in (JIANG, HE, WANG, COURIER2, CLERK, CLERK2, who("reg01:clerk-a:clerk"), admin("p01")):
        seen = [_answer(world, "prescription", "audit_trail", caller, i) for i in (rx, missing)]
        assert seen == [denied] * 2, (caller, seen)
    for caller in (admin("h02"), world.patient_who("patient-sun"), Who(zhang.org, zhang.name, "patient")):
        seen = [_answer(world, "prescription", "audit_trail", caller, i) for i in (rx, missing)]
        assert seen == [(False, "NOT_FOUND", "no prescription ID")] * 2, (caller, seen)
    for reader in (admin("h01"), AUDITOR, zhang):
        assert world.chain.query("prescription", "audit_trail", reader, rx_id=rx).ok
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                       wrapped_key=world.wrap_for(rx, "h02")).unwrap()
    assert _answer(world, "prescription", "audit_trail", admin("h02"), rx) == denied


def test_verify_tells_a_non_party_only_what_the_content_it_holds_proves(world: World) -> None:
    """verify: content that does not match is HASH_MISMATCH to a party and the missing id's
    NOT_FOUND to anyone else (it was HASH_MISMATCH, against NOT_FOUND for a missing id);
    whoever holds the matching content (it names the id) is answered ok; the transient
    inputs' shape is checked before the id is looked up."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    missing = rx + "9"
    right = content_transient(prep)
    wrong = {**right, "salt": "0" * 64}
    for caller in [*_outsiders(world), JIANG, WANG, AUDITOR]:
        seen = _answer(world, "prescription", "verify", caller, missing, transient=wrong)
        assert seen == (False, "NOT_FOUND", "no prescription ID"), caller
        assert _answer(world, "prescription", "verify", caller, rx, transient=right)[0], caller
        assert _answer(world, "prescription", "verify", caller, missing,
                       transient={"content": right["content"]})[1] == "BAD_TRANSIENT", caller
    for caller in _outsiders(world):
        assert _answer(world, "prescription", "verify", caller, rx, transient=wrong) == \
            (False, "NOT_FOUND", "no prescription ID"), caller
    for caller in (JIANG, WANG, CLERK, AUDITOR):
        assert _answer(world, "prescription", "verify", caller, rx, transient=wrong)[1] == "HASH_MISMATCH"


def test_consent_calls_refuse_other_roles_first_and_other_patients_as_missing(world: World) -> None:
    """grant_consent and revoke_consent: any role but a patient ACCESS_DENIED whatever the id
    (was NOT_FOUND for a missing id); another patient, or hers without the binding, the
    missing id's NOT_FOUND (was ACCESS_DENIED). Nothing is written."""
    rx = approved(world).args["rx_id"]
    missing = rx + "9"
    zhang = world.patient_who("patient-zhang")
    calls: list[tuple[str, dict[str, Any]]] = [
        ("grant_consent", {"org": "h02", "wrapped_key": world.wrap_for(rx, "h02")}),
        ("revoke_consent", {"org": "p01"})]
    for fn, args in calls:
        verb = "grants consent" if fn == "grant_consent" else "withdraws consent"
        for caller in (JIANG, admin("h01"), WANG, CLERK, AUDITOR, ZHOU):
            seen = [_answer(world, "prescription", fn, caller, i, submit=True, **args) for i in (rx, missing)]
            assert seen == [(False, "ACCESS_DENIED", "only the patient " + verb)] * 2, (fn, caller, seen)
        for caller in (world.patient_who("patient-sun"), Who(zhang.org, zhang.name, "patient")):
            seen = [_answer(world, "prescription", fn, caller, i, submit=True, **args) for i in (rx, missing)]
            assert seen == [(False, "NOT_FOUND", "no prescription ID")] * 2, (fn, caller, seen)
    trace = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()
    assert [s["step"] for s in trace["steps"]] == ["issue", "review"]
    assert world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx,
                              org="p01").reason == "NO_KEY_GRANT"  # (a pharmacy grant, no consent)


def test_issue_tells_an_existing_id_only_to_a_prescriber(world: World) -> None:
    """DUPLICATE_RX is checked after the prescriber: a caller who may not prescribe gets the
    same refusal for an issued id as for a new one (it got DUPLICATE_RX). A doctor still
    learns it (see contracts/README.md: ids carry no issuing organisation to bind them to)."""
    taken = approved(world)
    fresh = world.prepare(world.content(world.new_rx_id()), pharmacy="p01")
    for caller in (HE, WANG, CLERK, AUDITOR, admin("h01"), world.patient_who("patient-zhang")):
        seen = [world.issue(p, caller) for p in (taken, fresh)]
        assert [(o.reason, o.message) for o in seen] == [("UNAUTHORIZED_PRESCRIBER", seen[1].message)] * 2
    assert world.issue(taken, JIANG).reason == "DUPLICATE_RX"
    assert world.issue(taken, ZHOU).reason == "DUPLICATE_RX"


def _filled_by_p01_then_rerouted(world: World, settled: bool = False) -> tuple[Any, str]:
    """A two-fill prescription whose fill 1 p01 dispensed (its insurer settled it, if
    ``settled``), then re-routed to p02 before p01's courier handed the fill over."""
    prep = approved(world, max_fills=2, fill_interval_days=28, long_rx=True, days=28,
                    chronic_reason="stable hypertension", stability_assessment="stable 6 months",
                    patient_confirmed=True)
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    if settled:
        settle(world, prep).unwrap()
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    return prep, rx


def test_the_pharmacy_routed_away_from_reads_it_while_its_courier_owes_the_fill(world: World) -> None:
    """A re-route before p01's courier handed its fill over: p01 may still read the
    prescription (``deliver`` takes its courier; its inbox lists the delivery) -- and only
    until the hand-over; another pharmacy never. Before, p01 was an outsider at once: a work
    queue that dropped what it may no longer read dropped the delivery it owed."""
    _, rx = _filled_by_p01_then_rerouted(world)
    for viewer in (WANG, COURIER):
        for contract, fn, args in VIEWS[:4]:
            assert world.chain.query(contract, fn, viewer, rx_id=rx, **args).ok, (viewer, fn)
    assert _answer(world, "prescription", "show", who("p03:pharm-x:pharmacist"), rx) == (
        False, "NOT_FOUND", "no prescription ID")
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    for viewer in (WANG, COURIER):
        assert _answer(world, "prescription", "show", viewer, rx) == (False, "NOT_FOUND", "no prescription ID")


def test_settlement_trail_reads_the_pharmacy_routed_away_from_as_prescription_trace(world: World) -> None:
    """settlement.trail's parties are prescription.trace's (contracts/README.md): the pharmacy
    routed away from while its courier owes the fill reads the claims' steps too, until the
    hand-over, then gets the missing id's answer. It was NOT_FOUND to it throughout -- told
    it is no party by one view, a party by the others."""
    _, rx = _filled_by_p01_then_rerouted(world, settled=True)
    for viewer in (WANG, COURIER):
        steps = world.chain.query("settlement", "trail", viewer, rx_id=rx).unwrap()["steps"]
        assert [s["step"] for s in steps] == ["settle"], viewer
    assert _answer(world, "settlement", "trail", who("p03:pharm-x:pharmacist"), rx) == (
        False, "NOT_FOUND", "no prescription ID")
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    for viewer in (WANG, COURIER):
        assert _answer(world, "settlement", "trail", viewer, rx) == (False, "NOT_FOUND", "no prescription ID")


def test_a_pharmacy_owing_an_earlier_fill_reads_nothing_after_it_but_still_hands_it_over(world: World) -> None:
    """Fills no longer wait for each other's hand-over: p02 dispenses (and hands over) fill 2
    after a re-route while p01's courier still owes fill 1. p01 reads the prescription only
    while it owes the latest fill (what it dispensed is what it saw): from fill 2 on it is no
    party (NOT_FOUND in every view, settlement.trail too) -- the fill's dispense record keeps
    its courier's right to record the hand-over, which needs no read."""
    from tests.contracts.flows import dispense

    prep, rx = _filled_by_p01_then_rerouted(world)
    for viewer in (WANG, COURIER):  # owes the latest fill: a party
        for contract, fn, args in VIEWS[:4] + VIEWS[5:]:
            assert world.chain.query(contract, fn, viewer, rx_id=rx, **args).ok, (viewer, fn)
    world.chain.advance(28 * DAY_MS)
    world.chain.submit("prescription", "lock", CHEN, rx_id=rx).unwrap()
    dispense(world, prep, CHEN).unwrap()
    world.chain.submit("prescription", "deliver", COURIER2, rx_id=rx).unwrap()
    for viewer in (WANG, COURIER, who("p03:pharm-x:pharmacist")):
        for contract, fn, _args in (VIEWS[0], VIEWS[5]):
            assert _answer(world, contract, fn, viewer, rx) == (False, "NOT_FOUND", "no prescription ID")
    out = world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    assert (out["fill"], out["status"]) == (1, "DELIVERED")
