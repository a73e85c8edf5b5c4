"""Settlement: the five worked examples of DOMAIN.md section 3 to the fen, counters, balance,
duplicate and over-claims, reversal, policy versions, authorisation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contracts.chain import DAY_MS, admin, who
from tests.contracts.flows import CLERK, CLERK2, JIANG, ZHOU, approved, lock_and_dispense, settle
from tests.contracts.rxclient import Prepared, World

EXAMPLE = [("amlodipine", 2), ("benidipine", 2), ("calcium-supplement", 1)]


def make_patient(world: World, name: str, **overrides: Any) -> str:
    base = dict(world.patients["patient-zhang"])
    base.update(name=name, id_number=f"5001031970010{len(world.patients):05d}"[:18],
                user={"org": "h01", "name": name})
    base.update(overrides)
    world.patients[name] = base
    world.admit(base)
    return name


def dispensed(world: World, doctor=ZHOU, patient: str = "patient-zhang",
              drugs: list[tuple[str, int]] | None = None, **fields: Any) -> Prepared:
    prep = approved(world, doctor=doctor, patient=patient, drugs=drugs or EXAMPLE, **fields)
    lock_and_dispense(world, prep).unwrap()
    return prep


def status(world: World, patient: str) -> dict[str, Any]:
    st: dict[str, Any] = world.chain.query("settlement", "patient_status", CLERK,
                                           pseudonym=world.pid(patient), year=0).unwrap()
    return st


def amounts(claim: dict[str, Any]) -> tuple[int, ...]:
    return (claim["medfee_fen"], claim["fund_fen"], claim["patient_fen"],
            claim["account_fen"], claim["cash_fen"])


def test_example_community_hospital(world: World) -> None:
    prep = dispensed(world, doctor=ZHOU)
    claim = settle(world, prep).unwrap()
    assert claim["hospital_level"] == "community"
    assert claim["fulamt_fen"] == 1000
    assert claim["overlmt_fen"] == 0
    assert claim["preself_fen"] == 500
    assert claim["inscp_fen"] == 8500
    assert claim["deductible_fen"] == 0
    assert amounts(claim) == (10000, 7225, 2775, 1775, 1000)
    st = status(world, "patient-zhang")
    assert st["account_balance_fen"] == 50000 - 1775
    assert st["cap_used_fen"] == 7225
    assert st["deductible_used_fen"] == 20000


def test_example_tertiary_hospital(world: World) -> None:
    prep = dispensed(world, doctor=JIANG)
    claim = settle(world, prep).unwrap()
    assert claim["hospital_level"] == "tertiary"
    assert amounts(claim) == (10000, 5950, 4050, 3050, 1000)


def test_example_first_claim_of_the_year(world: World) -> None:
    make_patient(world, "patient-first", deductible_used_fen=0)
    prep = dispensed(world, patient="patient-first", drugs=EXAMPLE[:2])
    claim = settle(world, prep).unwrap()
    assert claim["inscp_fen"] == 8500
    assert claim["deductible_fen"] == 8500
    assert amounts(claim) == (9000, 0, 9000, 9000, 0)
    assert claim["deductible_remaining_fen"] == 11500
    st = status(world, "patient-first")
    assert st["deductible_used_fen"] == 8500
    assert st["cap_used_fen"] == 0
    assert st["account_balance_fen"] == 50000 - 9000


def test_example_cap_almost_used(world: World) -> None:
    make_patient(world, "patient-cap", cap_used_by_disease={"I10": 198000})
    prep = dispensed(world, patient="patient-cap")
    claim = settle(world, prep).unwrap()
    assert amounts(claim) == (10000, 2000, 8000, 7000, 1000)
    assert status(world, "patient-cap")["cap_used_fen"] == 200000


def test_example_cap_used_up(world: World) -> None:
    make_patient(world, "patient-capped", cap_used_by_disease={"I10": 200000})
    prep = dispensed(world, patient="patient-capped")
    claim = settle(world, prep).unwrap()
    assert amounts(claim) == (10000, 0, 10000, 9000, 1000)
    assert status(world, "patient-capped")["cap_used_fen"] == 200000


def test_cap_usage_is_per_disease(world: World) -> None:
    """The insurer seeds cap usage per disease: a cap used up for hypertension does not cap
    a diabetes claim (the old enrolment seeded the same figure for every disease)."""
    diagnoses = [{"icd10": "I10", "date": "2023-05-18", "hospital": "h01", "physical": True},
                 {"icd10": "E11", "date": "2024-01-08", "hospital": "h01", "physical": True}]
    make_patient(world, "patient-two", diagnoses=diagnoses,
                 cap_used_by_disease={"I10": 200000, "E11": 5000})
    st = status(world, "patient-two")
    assert st["cap_used_fen"] == 205000 and sorted(st["cap_used_by_disease"].values()) == [5000, 200000]
    i10 = dispensed(world, patient="patient-two", drugs=[("amlodipine", 2)])
    assert settle(world, i10).unwrap()["fund_fen"] == 0  # hypertension cap used up
    e11 = dispensed(world, patient="patient-two", diagnosis="E11", drugs=[("amlodipine", 2)])
    claim = settle(world, e11).unwrap()
    assert claim["fund_fen"] == 3400  # 40.00 x 85%, the diabetes cap still has room
    assert claim["cap_remaining_fen"] == 200000 - 5000 - 3400
    after = status(world, "patient-two")
    assert sorted(after["cap_used_by_disease"].values()) == [5000 + 3400, 200000]


def test_small_account_balance_spills_to_cash(world: World) -> None:
    # patient-sun: deductible 200.00 remaining, balance 12.00, community hospital h02
    prep = dispensed(world, patient="patient-sun", drugs=[("amlodipine", 1)])
    claim = settle(world, prep).unwrap()
    assert claim["deductible_fen"] == 2000
    assert amounts(claim) == (2000, 0, 2000, 1200, 800)
    st = status(world, "patient-sun")
    assert st["account_balance_fen"] == 0
    assert st["deductible_used_fen"] == 2000


def test_price_above_payment_standard_is_cash(world: World) -> None:
    # metformin: price 18.00, standard 15.00 (class A): 2 boxes -> overlmt 6.00
    prep = dispensed(world, drugs=[("metformin", 2)])
    claim = settle(world, prep).unwrap()
    assert claim["overlmt_fen"] == 600
    assert claim["inscp_fen"] == 3000
    assert claim["fund_fen"] == 2550
    assert claim["account_fen"] == 3600 - 2550 - 600
    assert claim["cash_fen"] == 600


def test_duplicate_claim_and_reversal_restores_exactly(world: World) -> None:
    make_patient(world, "patient-rev", deductible_used_fen=15000,
                 cap_used_by_disease={"I10": 1000})
    before = status(world, "patient-rev")
    prep = dispensed(world, patient="patient-rev")
    claim = settle(world, prep).unwrap()
    assert claim["deductible_fen"] == 5000
    assert settle(world, prep).reason == "DUPLICATE_CLAIM"
    after = status(world, "patient-rev")
    assert after["deductible_used_fen"] == 20000
    assert after["cap_used_fen"] == 1000 + claim["fund_fen"]
    rev = world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                             reason="RETURNED_GOODS").unwrap()
    assert rev["status"] == "REVERSED"
    assert status(world, "patient-rev") == before
    again = world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                               reason="DUPLICATE")
    assert again.reason == "ALREADY_REVERSED"
    # after a reversal the dispense can be claimed again, with the same result
    second = settle(world, prep).unwrap()
    assert second["claim_id"] != claim["claim_id"]
    assert amounts(second) == amounts(claim)


def test_claim_only_what_was_dispensed(world: World) -> None:
    prep = dispensed(world)
    codes = world.codes
    out = settle(world, prep, lines=[{"code": codes["metformin"], "qty": 1}])
    assert out.reason == "ITEM_NOT_DISPENSED"
    out = settle(world, prep, lines=[{"code": codes["amlodipine"], "qty": 3}])
    assert out.reason == "QTY_EXCEEDS_DISPENSED"
    out = settle(world, prep, lines=[{"code": codes["amlodipine"], "qty": 1},
                                     {"code": codes["amlodipine"], "qty": 2}])
    assert out.reason == "QTY_EXCEEDS_DISPENSED"
    part = settle(world, prep, lines=[{"code": codes["amlodipine"], "qty": 1}]).unwrap()
    assert amounts(part) == (2000, 1700, 300, 300, 0)



def test_a_claim_above_the_dispense_gets_the_domain_reason_whatever_its_size(world: World) -> None:
    """DOMAIN.md 3: a claim may only contain what was dispensed [ITEM_NOT_DISPENSED,
    QTY_EXCEEDS_DISPENSED]. A claimed line above 1000 boxes (the prescription's per-line cap)
    used to be BAD_TRANSIENT for both, as if the transient were malformed."""
    prep = dispensed(world)
    codes = world.codes
    out = settle(world, prep, lines=[{"code": codes["amlodipine"], "qty": 1001}])
    assert out.reason == "QTY_EXCEEDS_DISPENSED"
    out = settle(world, prep, lines=[{"code": codes["metformin"], "qty": 5000}])
    assert out.reason == "ITEM_NOT_DISPENSED"
    for malformed in (0, -1, True, "2", 10**30):
        out = settle(world, prep, lines=[{"code": codes["amlodipine"], "qty": malformed}])
        assert out.reason == "BAD_TRANSIENT", malformed
    assert settle(world, prep).ok

def test_claim_needs_a_dispense_and_the_true_claim_subset(world: World) -> None:
    prep = approved(world, doctor=ZHOU, drugs=EXAMPLE)
    assert settle(world, prep).reason == "NOT_DISPENSED"
    lock_and_dispense(world, prep).unwrap()
    forged = dict(prep.claim)
    forged["lines"] = [{"code": world.codes["amlodipine"], "qty": 20}]
    out = world.chain.submit("settlement", "settle", CLERK,
                             transient={"claim": forged, "claim_salt": prep.claim_salt},
                             rx_id=prep.args["rx_id"], fill=0)
    assert out.reason == "HASH_MISMATCH"
    out = world.chain.submit("settlement", "settle", CLERK, rx_id=prep.args["rx_id"], fill=0)
    assert out.reason == "BAD_TRANSIENT"


def test_only_the_patients_insurer_clerk_settles(world: World) -> None:
    prep = dispensed(world)
    other = settle(world, prep, clerk=CLERK2)
    assert other.reason == "ACCESS_DENIED"
    assert "ins01" not in other.message  # whose patient she is is not another insurer's to learn (as reverse)
    assert settle(world, prep, clerk=admin("ins01")).reason == "WRONG_ROLE"
    assert settle(world, prep, clerk=JIANG).reason == "WRONG_ROLE"
    claim = settle(world, prep).unwrap()
    out = world.chain.submit("settlement", "reverse", CLERK2, claim_id=claim["claim_id"],
                             reason="OTHER")
    assert out.reason == "CLAIM_NOT_FOUND"  # as if missing: no existence probe


def test_policy_change_applies_to_claims_after_it(world: World) -> None:
    pol = dict(world.sample["policies"][0])
    pol["ratio_bp"] = {"community": 9000, "tertiary": 8000}
    effective = world.chain.now + 10 * DAY_MS
    world.set_policy(pol, effective).unwrap()
    assert world.set_policy(pol, world.chain.now - 1).reason == "POLICY_RETROACTIVE"
    before = dispensed(world)
    assert settle(world, before).unwrap()["fund_fen"] == 7225
    world.chain.advance(10 * DAY_MS)
    after = dispensed(world)
    claim = settle(world, after).unwrap()
    assert claim["fund_fen"] == 7650  # 8500 * 90%
    assert claim["policy_effective_ms"] == effective



def test_a_policy_write_behind_a_later_written_version_is_refused(world: World) -> None:
    """Policy versions are keyed by effective time and a version may take effect from its own
    transaction's time, which the orderer accepts within its clock-skew bound (10 minutes in
    network-config). A second admin whose clock is behind published, after a colleague's
    version, one that took effect before it: it re-priced a dispense made before either was
    published, and the colleague's older change shadowed it from then on. As set_drug: a write
    timestamped before a version already written is POLICY_RETROACTIVE (retry)."""
    pol = dict(world.sample["policies"][0])
    world.chain.advance(DAY_MS)  # the sample version is a day old
    prep = dispensed(world)
    world.chain.advance(60_000)
    world.set_policy({**pol, "ratio_bp": {"community": 9000, "tertiary": 8000}}, 0).unwrap()
    behind = world.chain.now - 120_000  # before the dispense (it was priced at 85%)
    out = world.chain.submit(
        "registry", "set_policy", admin("ins01"), at_ms=behind, effective_ms=0,
        deductible_fen=pol["deductible_fen"], ratio_bp={"community": 1000, "tertiary": 1000},
        cap_fen=pol["cap_fen"], cap_by_disease=pol.get("cap_by_disease", {}),
        b_share_bp=pol["b_share_bp"])
    assert out.reason == "POLICY_RETROACTIVE"
    assert settle(world, prep).unwrap()["fund_fen"] == 7225  # the version in force at the dispense
    # a version scheduled for later is no write from the future: an interim one still goes in
    world.set_policy({**pol, "deductible_fen": 1}, world.chain.now + 10 * DAY_MS).unwrap()
    world.chain.advance(1)
    assert world.set_policy({**pol, "deductible_fen": 2}, 0).ok
    assert world.chain.query("registry", "get_policy", JIANG, insurer="ins01",
                             at_ms=0).unwrap()["deductible_fen"] == 2

@pytest.mark.parametrize("b_share_bp,expected_preself", [(1000, 500), (333, 167), (0, 0)])
def test_b_share_rounds_half_up(world: World, b_share_bp: int, expected_preself: int) -> None:
    pol = dict(world.sample["policies"][0])
    pol["b_share_bp"] = b_share_bp
    world.set_policy(pol, world.chain.now + 1).unwrap()
    world.chain.advance(1)
    prep = dispensed(world, drugs=[("benidipine", 2)])
    claim = settle(world, prep).unwrap()
    assert claim["preself_fen"] == expected_preself
    assert claim["medfee_fen"] == claim["fund_fen"] + claim["patient_fen"]


def test_the_same_drug_on_two_lines_is_rounded_per_line(world: World) -> None:
    """DOMAIN.md section 3 rounds per line: benidipine 25.00 at a B share of 3.33 % is
    0.8325 -> 0.83 on each of two one-box lines (1.66), not 1.665 -> 1.67 once per drug."""
    pol = dict(world.sample["policies"][0])
    pol["b_share_bp"] = 333
    world.set_policy(pol, world.chain.now + 1).unwrap()
    world.chain.advance(1)
    prep = dispensed(world, drugs=[("benidipine", 1), ("benidipine", 1)])
    claim = settle(world, prep).unwrap()
    assert claim["preself_fen"] == 166 and claim["medfee_fen"] == 5000
    assert claim["medfee_fen"] == claim["fund_fen"] + claim["patient_fen"]
    one_line = dispensed(world, drugs=[("benidipine", 2)])
    assert settle(world, one_line).unwrap()["preself_fen"] == 167
    # a claim listing the two boxes as one line is one line: rounded once
    again = dispensed(world, drugs=[("benidipine", 1), ("benidipine", 1)])
    merged = settle(world, again, lines=[{"code": world.codes["benidipine"], "qty": 2}]).unwrap()
    assert merged["preself_fen"] == 167


def test_unknown_claims_and_who_reads_accounts(world: World) -> None:
    out = world.chain.submit("settlement", "reverse", CLERK, claim_id="CLM-X-1-1", reason="OTHER")
    assert out.reason == "CLAIM_NOT_FOUND"
    out = world.chain.submit("settlement", "settle", CLERK, rx_id="RX-NOPE", fill=0)
    assert out.reason == "NOT_FOUND"
    prep = dispensed(world)
    claim = settle(world, prep).unwrap()
    readers = [CLERK, world.patient_who("patient-zhang"), admin("h01"),
               who("reg01:auditor-fang:auditor")]
    for reader in readers:
        assert world.chain.query("settlement", "get_claim", reader,
                                 claim_id=claim["claim_id"]).ok
        assert world.chain.query("settlement", "patient_status", reader,
                                 pseudonym=world.pid("patient-zhang"), year=0).ok
    for outsider, refusal in ((who("p02:pharm-chen:pharmacist"), "ACCESS_DENIED"), (CLERK2, "CLAIM_NOT_FOUND"),
                              (world.patient_who("patient-sun"), "CLAIM_NOT_FOUND")):
        # a role that reads no claims is refused, another reader's claim is as missing (the probe test)
        assert world.chain.query("settlement", "get_claim", outsider,
                                 claim_id=claim["claim_id"]).reason == refusal
        assert world.chain.query("settlement", "patient_status", outsider,
                                 pseudonym=world.pid("patient-zhang"),
                                 year=0).reason == "ACCESS_DENIED"
    last_year = world.chain.query("settlement", "patient_status", CLERK,
                                  pseudonym=world.pid("patient-zhang"), year=2025).unwrap()
    assert last_year["deductible_used_fen"] == 0 and last_year["cap_used_fen"] == 0


def test_claim_counts_in_the_year_of_the_dispense(world: World) -> None:
    """The benefit year is the date of service: a dispense on 31 December settled on
    1 January uses the old year's (met) deductible, not the new year's. It used to be the
    settling transaction's year, so a late settlement reset the patient's deductible."""
    hour = 3_600_000
    world.chain.advance(36 * DAY_MS + 12 * hour)  # 2026-12-31 22:00 China time
    prep = dispensed(world, doctor=ZHOU)
    world.chain.advance(3 * hour)  # 2027-01-01 01:00 China time
    claim = settle(world, prep).unwrap()
    assert claim["year"] == 2026 and claim["deductible_fen"] == 0
    assert amounts(claim) == (10000, 7225, 2775, 1775, 1000)
    st = world.chain.query("settlement", "patient_status", CLERK, pseudonym=world.pid("patient-zhang"),
                           year=2026).unwrap()
    assert st["cap_used_fen"] == 7225
    assert status(world, "patient-zhang")["cap_used_fen"] == 0  # 2027 untouched
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                       reason="BILLING_ERROR").unwrap()
    st = world.chain.query("settlement", "patient_status", CLERK, pseudonym=world.pid("patient-zhang"),
                           year=2026).unwrap()
    assert st["cap_used_fen"] == 0 and st["account_balance_fen"] == 50000


def test_policy_and_prices_are_those_in_force_at_the_dispense(world: World) -> None:
    """A policy version or formulary price published after the dispense does not re-price
    it: otherwise the insurer (who publishes both and settles) could lower its share of
    goods already handed out by changing them before settling."""
    prep = dispensed(world, doctor=ZHOU)
    world.chain.advance(DAY_MS)
    pol = dict(world.sample["policies"][0])
    pol["ratio_bp"] = {"community": 1000, "tertiary": 1000}
    new_policy_ms = world.set_policy(pol, 0).unwrap()["effective_ms"]
    world.chain.submit("registry", "set_drug", admin("ins01"), code=world.codes["amlodipine"],
                       spec="5 mg x 28 tablets", cls="B", standard_fen=100, price_fen=100,
                       controlled="NONE").unwrap()
    world.chain.advance(DAY_MS)
    claim = settle(world, prep).unwrap()
    assert amounts(claim) == (10000, 7225, 2775, 1775, 1000)
    assert claim["policy_effective_ms"] <= claim["dispensed_ms"] < new_policy_ms
    # a dispense after the changes is priced and reimbursed by the new figures
    later = dispensed(world, doctor=ZHOU)
    claim2 = settle(world, later).unwrap()
    assert claim2["medfee_fen"] == 2 * 100 + 2 * 2500 + 1000
    assert claim2["ratio_bp"] == 1000 and claim2["policy_effective_ms"] == new_policy_ms


def _probe(world: World, caller: Any, claim_id: str) -> tuple[bool, str, str]:
    out = world.chain.query("settlement", "get_claim", caller, claim_id=claim_id)
    return out.ok, out.reason, out.message.replace(claim_id, "ID")


def test_a_non_party_cannot_tell_an_existing_claim_from_a_missing_one(world: World) -> None:
    """A claim id is CLM-{rx_id}-{fill}-{n}: its existence says the prescription was dispensed
    and claimed. Whoever may not read the claim gets for it exactly the answer (reason and
    message, the id aside) a never-settled id of the same shape gets: roles that read no
    claims ACCESS_DENIED before anything is looked up, the others CLAIM_NOT_FOUND. It used to
    be ACCESS_DENIED for the claim and CLAIM_NOT_FOUND for the missing id."""
    prep = dispensed(world)
    claim = settle(world, prep).unwrap()
    rx_id = prep.args["rx_id"]
    real, missing = claim["claim_id"], f"CLM-{rx_id}-2-1"
    assert real == f"CLM-{rx_id}-1-1"
    outsiders = [
        (CLERK2, "CLAIM_NOT_FOUND"),  # another insurer
        (world.patient_who("patient-sun"), "CLAIM_NOT_FOUND"),  # another patient
        (who("h02:dr-zhou:doctor"), "CLAIM_NOT_FOUND"),  # not her enrolling hospital (h01)
        (admin("h02"), "CLAIM_NOT_FOUND"),
        (who("p01:pharm-wang:pharmacist"), "ACCESS_DENIED"),  # the pharmacy that dispensed it
        (who("p02:pharm-chen:pharmacist"), "ACCESS_DENIED"),
        (who("p01:courier-liu:courier"), "ACCESS_DENIED"),
        (who("h02:nurse-xu:nurse"), "ACCESS_DENIED"),
        (who("reg01:clerk-a:clerk"), "ACCESS_DENIED"),
    ]
    for caller, reason in outsiders:
        seen_real, seen_missing = _probe(world, caller, real), _probe(world, caller, missing)
        assert seen_real == seen_missing == (False, reason, seen_real[2]), (caller, seen_real, seen_missing)
    # the readers still read it, and a missing id is CLAIM_NOT_FOUND to them too
    for reader in (CLERK, admin("ins01"), world.patient_who("patient-zhang"), admin("h01"),
                   who("h01:dr-jiang:doctor"), who("h01:pharm-he:pharmacist"), who("reg01:auditor-fang:auditor")):
        assert world.chain.query("settlement", "get_claim", reader, claim_id=real).unwrap()["claim_id"] == real
        assert _probe(world, reader, missing)[:2] == (False, "CLAIM_NOT_FOUND")
    # a patient without her binding is no patient of this claim: as missing
    bare = world.patient_who("patient-zhang")
    bare = who(f"{bare.org}:{bare.name}:patient")
    assert _probe(world, bare, real) == _probe(world, bare, missing)


def test_another_insurer_cannot_probe_claims_by_reversing_them(world: World) -> None:
    """``reverse`` by a clerk of another insurer answers a claim of this insurer as a missing
    one (it was ACCESS_DENIED, naming the insurer), and changes nothing."""
    prep = dispensed(world)
    claim = settle(world, prep).unwrap()
    missing = f"CLM-{prep.args['rx_id']}-2-1"
    outs = [world.chain.submit("settlement", "reverse", CLERK2, claim_id=cid, reason="OTHER")
            for cid in (claim["claim_id"], missing)]
    assert [o.reason for o in outs] == ["CLAIM_NOT_FOUND", "CLAIM_NOT_FOUND"]
    assert outs[0].message.replace(claim["claim_id"], "ID") == outs[1].message.replace(missing, "ID")
    assert "ins01" not in outs[0].message
    rec = world.chain.query("settlement", "get_claim", CLERK, claim_id=claim["claim_id"]).unwrap()
    assert rec["status"] == "SETTLED"
    assert world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                              reason="OTHER").unwrap()["status"] == "REVERSED"


def test_a_reversed_claim_is_read_by_its_readers_and_hidden_from_the_others(world: World) -> None:
    """After a reversal the claim's readers still read it (REVERSED) and everybody else still
    gets exactly what a never-settled id gets; the fill's next claim is read alike."""
    prep = dispensed(world)
    first = settle(world, prep).unwrap()["claim_id"]
    world.chain.submit("settlement", "reverse", CLERK, claim_id=first, reason="BILLING_ERROR").unwrap()
    second = settle(world, prep).unwrap()["claim_id"]
    missing = f"CLM-{prep.args['rx_id']}-1-3"
    for reader in (CLERK, admin("ins01"), world.patient_who("patient-zhang"), admin("h01"),
                   who("h01:dr-jiang:doctor"), who("h01:pharm-he:pharmacist"), who("reg01:auditor-fang:auditor")):
        got = [world.chain.query("settlement", "get_claim", reader, claim_id=cid).unwrap()["status"]
               for cid in (first, second)]
        assert got == ["REVERSED", "SETTLED"], reader
    for outsider in (CLERK2, world.patient_who("patient-sun"), admin("h02"), who("p01:pharm-wang:pharmacist")):
        seen = [_probe(world, outsider, cid) for cid in (first, second, missing)]
        assert seen[0] == seen[1] == seen[2] and not seen[0][0], (outsider, seen)
