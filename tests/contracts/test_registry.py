"""Registry: who may change what, input validation, policy versions, enrolment."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import DAY_MS, Who, admin, who
from tests.contracts.flows import JIANG, WANG, approved
from tests.contracts.rxclient import World, dx_key

DOCTOR: dict[str, Any] = {"name": "dr-li", "role": "doctor", "code": "D500103000077", "licence_active": True,
          "practice_years": 5, "internet_practice": True}
DRUG: dict[str, Any] = {"code": "XC09AAE001A001010100042", "short_name": "enalapril", "generic_name": "Enalapril",
        "spec": "10 mg x 16", "cls": "A", "standard_fen": 900, "price_fen": 900,
        "controlled": "NONE"}


def submit(world: World, fn: str, caller: Who, transient: dict[str, Any] | None = None,
           **args: Any) -> str:
    out = world.chain.submit("registry", fn, caller, transient=transient, **args)
    return "OK" if out.ok else out.reason


def test_each_admin_registers_only_its_own_people(world: World) -> None:
    assert submit(world, "register_practitioner", JIANG, **DOCTOR) == "WRONG_ROLE"
    assert submit(world, "register_practitioner", admin("ins01"), **DOCTOR) == "ACCESS_DENIED"
    # an h01 admin writing "dr-zhou" creates h01/dr-zhou; h02/dr-zhou is untouched
    assert submit(world, "register_practitioner", admin("h01"),
                  **{**DOCTOR, "name": "dr-zhou", "licence_active": False}) == "OK"
    h02 = world.chain.query("registry", "get_practitioner", JIANG, org="h02", name="dr-zhou")
    assert h02.unwrap()["licence_active"] is True
    assert submit(world, "register_practitioner", admin("h01"),
                  **{**DOCTOR, "role": "surgeon"}) == "BAD_ARGUMENTS"
    assert submit(world, "register_practitioner", admin("h01"),
                  **{**DOCTOR, "practice_years": -1}) == "BAD_ARGUMENTS"
    assert submit(world, "register_practitioner", admin("h01"),
                  **{**DOCTOR, "name": "Dr Li/../x"}) == "BAD_ARGUMENTS"


def test_pharmacy_registration_and_deactivation(world: World) -> None:
    assert submit(world, "register_pharmacy", admin("h01"), licence_no="X-1",
                  active=True) == "ACCESS_DENIED"
    assert submit(world, "register_pharmacy", admin("p02"), licence_no="YP-2",
                  active=False) == "OK"
    prep = approved(world)
    rx = prep.args["rx_id"]
    out = world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                             wrapped_key=world.wrap_for(rx, "p02"))
    assert out.reason == "UNKNOWN_PHARMACY"


def test_formulary_is_maintained_by_insurer_admins(world: World) -> None:
    assert submit(world, "set_drug", admin("h01"), **DRUG) == "ACCESS_DENIED"
    assert submit(world, "set_drug", who("ins01:clerk-qian:clerk"), **DRUG) == "WRONG_ROLE"
    assert submit(world, "set_drug", admin("ins01"), **{**DRUG, "code": "XC09"}) == "BAD_ARGUMENTS"
    assert submit(world, "set_drug", admin("ins01"), **{**DRUG, "cls": "C"}) == "BAD_ARGUMENTS"
    assert submit(world, "set_drug", admin("ins01"),
                  **{**DRUG, "controlled": "OPIOID"}) == "BAD_ARGUMENTS"
    assert submit(world, "set_drug", admin("ins01"), **{**DRUG, "price_fen": 0}) == "BAD_ARGUMENTS"
    assert submit(world, "set_drug", admin("ins01"),
                  **{**DRUG, "short_name": "amlodipine"}) == "DUPLICATE_NAME"
    assert submit(world, "set_drug", admin("ins02"), **DRUG) == "OK"
    by_name = world.chain.query("registry", "get_drug", WANG, code_or_name="enalapril").unwrap()
    by_code = world.chain.query("registry", "get_drug", WANG, code_or_name=DRUG["code"]).unwrap()
    assert by_name == by_code and by_name["price_fen"] == 900
    missing = world.chain.query("registry", "get_drug", WANG, code_or_name="aspirin")
    assert missing.reason == "UNKNOWN_DRUG"
    page = world.chain.query("registry", "list_drugs", WANG, start="", limit=200).unwrap()
    assert len(page) == len(world.sample["formulary"]) + 1


def test_policy_versions_by_effective_time(world: World) -> None:
    pol = dict(world.sample["policies"][0])
    assert world.chain.submit(
        "registry", "set_policy", admin("h01"), effective_ms=0, deductible_fen=1,
        ratio_bp={"community": 1}, cap_fen=1, cap_by_disease={}, b_share_bp=0,
    ).reason == "ACCESS_DENIED"
    bad = {**pol, "ratio_bp": {"community": 10001}}
    assert world.set_policy(bad, 0).reason == "BAD_ARGUMENTS"
    bad = {**pol, "ratio_bp": {"planet": 5000}}
    assert world.set_policy(bad, 0).reason == "BAD_ARGUMENTS"
    t0 = world.chain.now
    world.set_policy({**pol, "deductible_fen": 30000}, t0 + 10 * DAY_MS).unwrap()
    world.set_policy({**pol, "deductible_fen": 40000}, t0 + 20 * DAY_MS).unwrap()

    def deductible_at(at: int) -> int:
        out = world.chain.query("registry", "get_policy", JIANG, insurer="ins01", at_ms=at)
        value: int = out.unwrap()["deductible_fen"]
        return value

    assert deductible_at(t0) == 20000
    assert deductible_at(t0 + 10 * DAY_MS - 1) == 20000
    assert deductible_at(t0 + 10 * DAY_MS) == 30000
    assert deductible_at(t0 + 19 * DAY_MS) == 30000
    assert deductible_at(t0 + 400 * DAY_MS) == 40000
    assert world.chain.query("registry", "get_policy", JIANG, insurer="ins02",
                             at_ms=0).reason == "NO_POLICY"


def test_patient_enrolment_rules(world: World) -> None:
    zhang = world.patients["patient-zhang"]
    assert world.enrol(zhang, enrolled_by="h02").reason == "ACCESS_DENIED"
    assert world.enrol(zhang, enrolled_by="p01").reason == "ACCESS_DENIED"
    assert world.enrol(zhang, id_number="x").unwrap()  # a different pseudonym is a new patient
    out = world.chain.submit(
        "registry", "enrol_patient", admin("h01"), transient={"diagnoses": []},
        pseudonym="ab" * 32, insurer="ins01", user_org="h01", user_name="p", balance_fen=0,
        deductible_used_fen=0, cap_used_fen=0)
    assert out.reason == "BAD_TRANSIENT"
    out = world.chain.submit(
        "registry", "enrol_patient", admin("h01"),
        transient={"dx_key": dx_key(), "diagnoses": []},
        pseudonym="Zhang Guilan", insurer="ins01", user_org="h01", user_name="p",
        balance_fen=0, deductible_used_fen=0, cap_used_fen=0)
    assert out.reason == "BAD_ARGUMENTS"
    out = world.chain.submit(
        "registry", "enrol_patient", admin("h01"),
        transient={"dx_key": dx_key(), "diagnoses": [{"icd10": "I10", "date": "yesterday"}]},
        pseudonym="cd" * 32, insurer="ins01", user_org="h01", user_name="p",
        balance_fen=0, deductible_used_fen=0, cap_used_fen=0)
    assert out.reason == "BAD_TRANSIENT"
    args = {"pseudonym": "ef" * 32, "date": "2025-01-01", "physical": True}
    t = {"dx_key": dx_key(), "icd10": "E11"}
    assert submit(world, "add_diagnosis", WANG, transient=t, **args) == "WRONG_ROLE"
    assert submit(world, "add_diagnosis", admin("h03"), transient=t, **args) == "UNKNOWN_PATIENT"
    rec = world.chain.query("registry", "get_patient", JIANG,
                            pseudonym=world.pid("patient-zhang")).unwrap()
    assert rec["hospital"] == "h01" and rec["insurer"] == "ins01"
    assert len(rec["diagnoses"]) == 1 and len(rec["diagnoses"][0]["tag"]) == 64
    assert rec["seed_year"] == 2026


def test_diagnosis_list_is_bounded(world: World) -> None:
    pid = world.pid("patient-zhang")
    for i in range(15):
        assert submit(world, "add_diagnosis", admin("h01"),
                      transient={"dx_key": dx_key(), "icd10": f"E{i:02d}"},
                      pseudonym=pid, date="2025-01-01", physical=True) == "OK"
    assert submit(world, "add_diagnosis", admin("h01"),
                  transient={"dx_key": dx_key(), "icd10": "E99"},
                  pseudonym=pid, date="2025-01-01", physical=True) == "LIMIT_EXCEEDED"
