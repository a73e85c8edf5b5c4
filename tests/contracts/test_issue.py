"""Issuing an internet prescription: every rule and reason code of DOMAIN.md section 1."""

from __future__ import annotations

from typing import Any

import pytest

from tests.contracts.chain import Who, admin, who
from tests.contracts.flows import JIANG, NEW, NURSE, WANG, ZHOU, issue
from tests.contracts.rxclient import World, commit, dx_key


def reason(world: World, **kw: Any) -> str:
    _prep, out = issue(world, **kw)
    assert not out.ok, "expected a rejection"
    return out.reason


def add_drug(world: World, code: str, short: str, controlled: str) -> None:
    world.chain.submit("registry", "set_drug", admin("ins01"), code=code, spec="1 box", cls="A",
                       standard_fen=1000, price_fen=1000, controlled=controlled).unwrap()
    world.codes[short] = code


def test_valid_follow_up_prescription_is_issued(world: World) -> None:
    prep, out = issue(world)
    res = out.unwrap()
    assert res["status"] == "ISSUED"
    rx = world.chain.query("prescription", "show", JIANG, rx_id=prep.args["rx_id"]).unwrap()
    assert rx["hospital"] == "h01"
    assert rx["hospital_level"] == "tertiary"
    assert rx["dr_code"] == "D500103000001"
    assert rx["pharmacy"] == "p01"
    assert rx["commitment"] == prep.args["commitment"]
    assert "drugs" not in rx and "diagnosis" not in rx
    assert out.block is not None


@pytest.mark.parametrize(
    "doctor",
    [NURSE, WANG, who("h01:pharm-he:pharmacist"), who("h03:dr-ghost:doctor"), admin("h01")],
)
def test_only_registered_doctors_prescribe(world: World, doctor: Who) -> None:
    assert reason(world, doctor=doctor) == "UNAUTHORIZED_PRESCRIBER"


@pytest.mark.parametrize("field", ["licence_active", "internet_practice"])
def test_inactive_licence_or_no_internet_practice(world: World, field: str) -> None:
    rec = dict(next(p for p in world.sample["practitioners"] if p["name"] == "dr-zhou"))
    rec[field] = False
    args = {k: rec[k] for k in ("name", "role", "code", "licence_active", "practice_years",
                                "internet_practice")}
    world.chain.submit("registry", "register_practitioner", admin("h02"), **args).unwrap()
    assert reason(world, doctor=ZHOU) == "UNAUTHORIZED_PRESCRIBER"


def test_less_than_three_years_of_practice(world: World) -> None:
    assert reason(world, doctor=NEW) == "PRESCRIBER_NOT_ELIGIBLE"


def test_first_visit_or_other_diagnosis_is_not_follow_up(world: World) -> None:
    assert reason(world, first_visit=True) == "NOT_FOLLOW_UP"
    assert reason(world, diagnosis="E11.9") == "NOT_FOLLOW_UP"
    # an online (non-physical) earlier diagnosis does not count
    world.chain.submit("registry", "add_diagnosis", admin("h01"),
                       transient={"dx_key": dx_key(), "icd10": "E11.9"},
                       pseudonym=world.pid("patient-zhang"), physical=False).unwrap()
    assert reason(world, diagnosis="E11.9") == "NOT_FOLLOW_UP"
    world.chain.submit("registry", "add_diagnosis", admin("h02"),
                       transient={"dx_key": dx_key(), "icd10": "E11.9"},
                       pseudonym=world.pid("patient-zhang"), physical=True).unwrap()
    world.chain.advance(1)
    issue(world, diagnosis="E11.9", drugs=[("metformin", 2)])[1].unwrap()


def test_a_physical_diagnosis_counts_only_for_later_visits(world: World) -> None:
    """The diagnosis date is the transaction's: a doctor cannot backdate one to turn a
    first visit into a follow-up; recorded now, it counts from the next transaction on."""
    pid = world.pid("patient-zhang")
    t = {"dx_key": dx_key(), "icd10": "J45"}
    backdated = world.chain.submit("registry", "add_diagnosis", JIANG, transient=t,
                                   pseudonym=pid, date="2020-01-01", physical=True)
    assert backdated.reason == "BAD_ARGUMENTS"
    world.chain.submit("registry", "add_diagnosis", JIANG, transient=t, pseudonym=pid,
                       physical=True).unwrap()
    # the same instant (one visit) is not a follow-up of itself
    assert reason(world, diagnosis="J45", drugs=[("metformin", 1)]) == "NOT_FOLLOW_UP"
    # an issue timestamped before the diagnosis does not see it either
    rx_id = world.new_rx_id()
    prep = world.prepare(world.content(rx_id, diagnosis="J45", drugs=[("metformin", 1)]),
                         pharmacy="p01")
    assert world.issue(prep, JIANG, at_ms=world.chain.now - 60_000).reason == "NOT_FOLLOW_UP"
    world.chain.advance(60_000)
    issue(world, diagnosis="J45", drugs=[("metformin", 1)])[1].unwrap()


def test_wrong_dx_key_cannot_fake_a_follow_up(world: World) -> None:
    rx_id = world.new_rx_id()
    prep = world.prepare(world.content(rx_id), pharmacy="")
    prep.transient["dx_key"] = "11" * 32
    assert world.issue(prep, JIANG).reason == "NOT_FOLLOW_UP"


@pytest.mark.parametrize(
    "controlled",
    ["NARCOTIC", "PSYCHOTROPIC_I", "PSYCHOTROPIC_II", "TOXIC", "RADIOACTIVE"],
)
def test_forbidden_drug_classes(world: World, controlled: str) -> None:
    add_drug(world, "XZ99ZZZ001A00101010" + str(len(controlled)).zfill(4), "x-" + controlled.lower(),
             controlled)
    short = "x-" + controlled.lower()
    assert reason(world, drugs=[("amlodipine", 1), (short, 1)]) == "FORBIDDEN_DRUG_CLASS"


def test_sample_narcotic_and_psychotropic(world: World) -> None:
    assert reason(world, drugs=[("morphine", 1)]) == "FORBIDDEN_DRUG_CLASS"
    assert reason(world, drugs=[("alprazolam", 1)]) == "FORBIDDEN_DRUG_CLASS"


def test_item_count_and_formulary(world: World) -> None:
    six = [("amlodipine", 1)] * 6
    assert reason(world, drugs=six) == "TOO_MANY_ITEMS"
    issue(world, drugs=[("amlodipine", 1)] * 5)[1].unwrap()
    assert reason(world, drugs=[("XC99ZZZ999A999999999999", 1)]) == "UNKNOWN_DRUG"
    assert reason(world, drugs=[("aspirin", 1)]) == "UNKNOWN_DRUG"
    assert reason(world, drugs=[("amlodipine", 0)]) == "QUANTITY_LIMIT"


LONG_OK = {"long_rx": True, "chronic_reason": "stable hypertension, BP controlled"}
ASSESSED = {"stability_assessment": "BP < 140/90 for 6 months", "patient_confirmed": True}


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({"days": 7}, None),
        ({"days": 8}, "QUANTITY_LIMIT"),
        ({"days": 14, "long_rx": True}, "QUANTITY_LIMIT"),  # no chronic reason
        ({"days": 28, **LONG_OK}, None),
        ({"days": 29, **LONG_OK}, "QUANTITY_LIMIT"),  # no stability assessment
        ({"days": 56, **LONG_OK, "stability_assessment": "stable"}, "QUANTITY_LIMIT"),
        ({"days": 56, **LONG_OK, **ASSESSED}, None),
        ({"days": 84, **LONG_OK, **ASSESSED}, None),
        ({"days": 85, **LONG_OK, **ASSESSED}, "QUANTITY_LIMIT"),
        ({"days": 28, "max_fills": 3, "fill_interval_days": 28, **LONG_OK, **ASSESSED}, None),
        ({"days": 28, "max_fills": 4, "fill_interval_days": 28, **LONG_OK, **ASSESSED},
         "QUANTITY_LIMIT"),
        ({"days": 4, "max_fills": 2, "fill_interval_days": 4}, "QUANTITY_LIMIT"),
        # any supply over 84 days is QUANTITY_LIMIT (DOMAIN.md 1.5), not BAD_CONTENT above 366
        ({"days": 367}, "QUANTITY_LIMIT"),
        ({"days": 400, **LONG_OK, **ASSESSED}, "QUANTITY_LIMIT"),
        ({"days": 0}, "BAD_CONTENT"),
    ],
)
def test_days_of_supply(world: World, fields: dict[str, Any], expected: str | None) -> None:
    _prep, out = issue(world, **fields)
    assert out.reason == (expected or "")
    assert out.ok == (expected is None)


def test_line_days_cannot_exceed_prescription(world: World) -> None:
    rx_id = world.new_rx_id()
    content = world.content(rx_id)
    content["drugs"][0]["days"] = 8
    assert world.issue(world.prepare(content, pharmacy="p01"), JIANG).reason == "QUANTITY_LIMIT"


def test_long_prescription_excluded_classes(world: World) -> None:
    assert reason(world, drugs=[("amoxicillin", 2)], days=28, **LONG_OK) == "LONGRX_EXCLUDED_CLASS"
    add_drug(world, "XB01ABS001B002010100099", "insulin-pen", "SPECIAL_STORAGE")
    assert reason(world, drugs=[("insulin-pen", 1)], days=14, **LONG_OK) == "LONGRX_EXCLUDED_CLASS"
    # the same drugs on an ordinary prescription are fine
    issue(world, drugs=[("amoxicillin", 2)], days=5)[1].unwrap()
    issue(world, drugs=[("insulin-pen", 1)], days=7)[1].unwrap()


@pytest.mark.parametrize("valid_days,ok", [(1, True), (3, True), (4, False), (0, False)])
def test_validity_limit(world: World, valid_days: int, ok: bool) -> None:
    _prep, out = issue(world, valid_days=valid_days)
    assert out.ok == ok
    if not ok:
        assert out.reason == "VALIDITY_LIMIT"


def test_validity_ends_at_local_midnight(world: World) -> None:
    _prep, out = issue(world, valid_days=3)
    end = out.unwrap()["valid_end_ms"]
    # T0 is 2026-11-25 10:00 China time; 3 days -> end of 2026-11-27 China time
    assert end == 1_795_795_200_000 - 1


def test_guardian_for_children_under_six(world: World) -> None:
    child = {"name": "child", "birth_date": "2021-11-26"}  # turns 5 tomorrow
    assert reason(world, patient_info=child) == "GUARDIAN_REQUIRED"
    issue(world, patient_info={**child, "guardian": "mother, present in video"})[1].unwrap()
    six = {"name": "child", "birth_date": "2020-11-25"}  # sixth birthday today
    issue(world, patient_info=six)[1].unwrap()
    five = {"name": "child", "birth_date": "2020-11-26"}
    assert reason(world, patient_info=five) == "GUARDIAN_REQUIRED"


def test_commitment_and_content_must_match(world: World) -> None:
    rx_id = world.new_rx_id()
    prep = world.prepare(world.content(rx_id), pharmacy="p01")
    prep.args["commitment"] = commit(prep.salt, world.content(rx_id, days=6))
    assert world.issue(prep, JIANG).reason == "HASH_MISMATCH"

    prep = world.prepare(world.content(rx_id), pharmacy="p01")
    prep.args["claim_commitment"] = commit(prep.claim_salt, {"rx_id": rx_id, "lines": []})
    assert world.issue(prep, JIANG).reason == "HASH_MISMATCH"

    prep = world.prepare(world.content(rx_id, patient="patient-sun"), pharmacy="p01")
    prep.args["patient"] = world.pid("patient-zhang")
    assert world.issue(prep, JIANG).reason == "BAD_CONTENT"

    prep = world.prepare(world.content(rx_id), pharmacy="p01")
    del prep.transient["content"]
    assert world.issue(prep, JIANG).reason == "BAD_TRANSIENT"

    prep = world.prepare(world.content(rx_id), pharmacy="p01")
    world.issue(prep, JIANG).unwrap()
    assert world.issue(prep, JIANG).reason == "DUPLICATE_RX"


def test_patient_must_be_an_enrolled_pseudonym(world: World) -> None:
    rx_id = world.new_rx_id()
    content = world.content(rx_id)
    content["patient"] = "patient-zhang"
    prep = world.prepare(content, pharmacy="p01")
    assert world.issue(prep, JIANG).reason == "BAD_ARGUMENTS"
    content["patient"] = "ab" * 32
    prep = world.prepare(content, pharmacy="p01")
    assert world.issue(prep, JIANG).reason == "UNKNOWN_PATIENT"


def test_key_grants_at_issue_are_exactly_the_parties(world: World) -> None:
    rx_id = world.new_rx_id()
    prep = world.prepare(world.content(rx_id), pharmacy="p01")
    prep.args["keys"]["p02"] = prep.args["keys"]["p01"]
    assert world.issue(prep, JIANG).reason == "BAD_ARGUMENTS"
    prep = world.prepare(world.content(rx_id), pharmacy="p01")
    del prep.args["keys"]["patient"]
    assert world.issue(prep, JIANG).reason == "BAD_ARGUMENTS"
    prep = world.prepare(world.content(rx_id), pharmacy="p01", insurer="ins02")
    assert world.issue(prep, JIANG).reason == "BAD_ARGUMENTS"
    prep = world.prepare(world.content(rx_id), pharmacy="p09")
    assert world.issue(prep, JIANG).reason == "UNKNOWN_PHARMACY"
