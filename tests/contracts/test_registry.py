"""Registry: who may change what, input validation, policy versions, enrolment."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.contracts.chain import DAY_MS, Who, admin, who
from tests.contracts.flows import JIANG, WANG, approved, issue
from tests.contracts.rxclient import World, dx_key, pseudonym

DOCTOR: dict[str, Any] = {"name": "dr-li", "role": "doctor", "code": "D500103000077", "licence_active": True,
          "practice_years": 5, "internet_practice": True}
DRUG: dict[str, Any] = {"code": "XC09AAE001A001010100042", "spec": "10 mg x 16", "cls": "A",
                        "standard_fen": 900, "price_fen": 900, "controlled": "NONE"}


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
    # names are not ledger data any more: the old name arguments are refused
    assert submit(world, "set_drug", admin("ins01"),
                  **{**DRUG, "short_name": "enalapril"}) == "BAD_ARGUMENTS"
    assert submit(world, "set_drug", admin("ins02"), **DRUG) == "OK"
    by_code = world.chain.query("registry", "get_drug", WANG, code=DRUG["code"]).unwrap()
    assert by_code["price_fen"] == 900 and by_code["insurer"] == "ins02"
    assert not {"short_name", "generic_name"} & set(by_code)
    for missing in ("enalapril", "XC09AAE001A001010100043"):
        out = world.chain.query("registry", "get_drug", WANG, code=missing)
        assert out.reason == "UNKNOWN_DRUG"
    page = world.chain.query("registry", "list_drugs", WANG, start="", limit=200).unwrap()
    assert len(page) == len(world.sample["formulary"]) + 1


def test_an_insurer_cannot_reprice_another_insurers_formulary_entry(world: World) -> None:
    """Another insurer's set_drug prices the code for its own claims only (it was refused
    ACCESS_DENIED: the creator priced every insurer's claims): the entry stays the creator's."""
    amlodipine = world.codes["amlodipine"]
    cheap = {**DRUG, "code": amlodipine, "price_fen": 1, "standard_fen": 100000}
    assert submit(world, "set_drug", admin("ins02"), **cheap) == "OK"
    assert submit(world, "set_drug", admin("h01"), **cheap) == "ACCESS_DENIED"
    rec = world.chain.query("registry", "get_drug", WANG, code=amlodipine).unwrap()
    assert rec["price_fen"] == 2000 and rec["insurer"] == "ins01"
    own = world.chain.query("registry", "get_drug", WANG, code=amlodipine, insurer="ins02").unwrap()
    assert own["price_fen"] == 1 and own["insurer"] == "ins02"
    assert submit(world, "set_drug", admin("ins01"), **{**cheap, "price_fen": 2100}) == "OK"



def test_only_the_regulator_changes_a_drugs_controlled_class(world: World) -> None:
    """What is never prescribed online (DOMAIN.md 1.3) is read from the entry's controlled
    class. The insurer maintaining the morphine entry could set it NONE with set_drug, and a
    doctor then issued an internet prescription for morphine; it could as well mark a common
    drug NARCOTIC and stop it for every insurer's patients. Only a regulator admin changes it."""
    morphine = next(d for d in world.sample["formulary"] if d["short_name"] == "morphine")
    args = {k: morphine[k] for k in ("code", "spec", "cls", "standard_fen", "price_fen")}
    assert submit(world, "set_drug", admin("ins01"), **args, controlled="NONE") == "ACCESS_DENIED"
    assert issue(world, drugs=[("morphine", 1)])[1].reason == "FORBIDDEN_DRUG_CLASS"
    amlodipine = world.codes["amlodipine"]
    blocked = {**args, "code": amlodipine, "spec": "5 mg x 28 tablets", "cls": "A", "standard_fen": 2000,
               "price_fen": 2000}
    assert submit(world, "set_drug", admin("ins01"), **blocked, controlled="NARCOTIC") == "ACCESS_DENIED"
    # its prices and spec stay the insurer's, the class as it is
    assert submit(world, "set_drug", admin("ins01"), **{**args, "price_fen": 3600},
                  controlled="NARCOTIC") == "OK"
    for caller in (admin("ins01"), admin("h01"), admin("p01")):
        assert submit(world, "set_controlled", caller, code=amlodipine, controlled="NARCOTIC") == "ACCESS_DENIED"
    for caller in (who("reg01:auditor-fang:auditor"), JIANG):
        assert submit(world, "set_controlled", caller, code=amlodipine, controlled="NARCOTIC") == "WRONG_ROLE"
    regulator = admin("reg01")
    assert submit(world, "set_controlled", regulator, code="XC09AAE001A001010100043",
                  controlled="NONE") == "UNKNOWN_DRUG"
    assert submit(world, "set_controlled", regulator, code=amlodipine, controlled="OPIOID") == "BAD_ARGUMENTS"
    assert submit(world, "set_controlled", regulator, code="xc08", controlled="NONE") == "BAD_ARGUMENTS"
    assert submit(world, "set_controlled", regulator, code=amlodipine, controlled="SPECIAL_STORAGE") == "OK"
    rec = world.chain.query("registry", "get_drug", WANG, code=amlodipine).unwrap()
    assert (rec["controlled"], rec["insurer"], rec["cls"], rec["price_fen"]) == ("SPECIAL_STORAGE", "ins01", "A", 2000)
    assert rec["updated"]["by_org"] == "reg01"
    # a version timestamped before the entry's latest one is refused, as set_drug's
    out = world.chain.submit("registry", "set_controlled", regulator, at_ms=world.chain.now - 1,
                             code=amlodipine, controlled="NONE")
    assert out.reason == "POLICY_RETROACTIVE"
    # the insurer keeps maintaining it, with the regulator's class
    assert submit(world, "set_drug", admin("ins01"), **{**blocked, "price_fen": 2100},
                  controlled="SPECIAL_STORAGE") == "OK"

def test_policy_versions_by_effective_time(world: World) -> None:
    pol = dict(world.sample["policies"][0])
    assert world.chain.submit(
        "registry", "set_policy", admin("h01"), effective_ms=0, deductible_fen=1,
        ratio_bp={"community": 1}, cap_fen=1, cap_by_disease={}, b_share_bp=0,
    ).reason == "ACCESS_DENIED"
    assert world.chain.submit(
        "registry", "set_policy", who("ins01:clerk-qian:clerk"), effective_ms=0,
        deductible_fen=1, ratio_bp={"community": 1}, cap_fen=1, cap_by_disease={}, b_share_bp=0,
    ).reason == "WRONG_ROLE"
    # another insurer's admin writes its own policy, never ins01's
    world.set_policy({**pol, "insurer": "ins02", "deductible_fen": 1}, 0).unwrap()
    assert world.chain.query("registry", "get_policy", JIANG, insurer="ins01",
                             at_ms=0).unwrap()["deductible_fen"] == 20000
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
    assert world.chain.query("registry", "get_policy", JIANG, insurer="ins03",
                             at_ms=0).reason == "NO_POLICY"


def test_patient_enrolment_rules(world: World) -> None:
    zhang = world.patients["patient-zhang"]
    assert world.enrol(zhang, enrolled_by="h02").reason == "ACCESS_DENIED"
    assert world.enrol(zhang, enrolled_by="p01").reason == "ACCESS_DENIED"
    assert world.enrol(zhang, id_number="x").unwrap()  # a different pseudonym is a new patient
    full = {"dx_key": dx_key(), "diagnoses": [], "patient_binding": "ab" * 32,
            "patient_user": {"org": "h01", "name": "p"}}
    for drop in ("dx_key", "patient_binding", "patient_user"):
        t = {k: v for k, v in full.items() if k != drop}
        assert submit(world, "enrol_patient", admin("h01"), transient=t,
                      pseudonym="ab" * 32) == "BAD_TRANSIENT", drop
    assert submit(world, "enrol_patient", admin("h01"), transient=full,
                  pseudonym="Zhang Guilan") == "BAD_ARGUMENTS"
    bad = {**full, "diagnoses": [{"icd10": "I10", "date": "yesterday"}]}
    assert submit(world, "enrol_patient", admin("h01"), transient=bad,
                  pseudonym="cd" * 32) == "BAD_TRANSIENT"
    future = {**full, "diagnoses": [{"icd10": "I10", "date": "2030-01-01"}]}
    assert submit(world, "enrol_patient", admin("h01"), transient=future,
                  pseudonym="cd" * 32) == "BAD_TRANSIENT"
    args = {"pseudonym": "ef" * 32, "physical": True}
    t = {"dx_key": dx_key(), "icd10": "E11"}
    assert submit(world, "add_diagnosis", WANG, transient=t, **args) == "WRONG_ROLE"
    assert submit(world, "add_diagnosis", admin("h03"), transient=t, **args) == "UNKNOWN_PATIENT"
    rec = world.chain.query("registry", "get_patient", JIANG,
                            pseudonym=world.pid("patient-zhang")).unwrap()
    assert rec["hospital"] == "h01"
    assert len(rec["diagnoses"]) == 1 and len(rec["diagnoses"][0]["tag"]) == 64


def test_imported_diagnosis_must_say_whether_the_visit_was_physical(world: World) -> None:
    """Only a physical visit makes an internet visit a follow-up (DOMAIN.md 1.2): an imported
    diagnosis without the flag is refused, where it used to count as physical."""
    pt = world.patients["patient-zhang"]
    vague = [{"icd10": "I10", "date": "2023-05-18", "hospital": "h01"}]
    assert world.enrol(pt, diagnoses=vague).reason == "BAD_TRANSIENT"
    for flag in (1, "true", None):
        odd = [{**vague[0], "physical": flag}]
        assert world.enrol(pt, diagnoses=odd).reason == "BAD_TRANSIENT"
    assert world.enrol(pt, diagnoses=[{**vague[0], "physical": True}]).ok


def test_only_a_licensed_doctor_records_a_diagnosis(world: World) -> None:
    """A recorded physical diagnosis is what lets a later internet visit be a follow-up:
    a doctor certificate without an active registered licence cannot record one (it could
    before, e.g. with a suspended licence)."""
    pid = world.pid("patient-zhang")
    t = {"dx_key": dx_key(), "icd10": "E11"}
    unregistered = who("h01:dr-ghost:doctor")
    assert submit(world, "add_diagnosis", unregistered, transient=t, pseudonym=pid,
                  physical=True) == "UNAUTHORIZED"
    world.chain.submit("registry", "register_practitioner", admin("h01"), name="dr-jiang",
                       role="doctor", code="D500103000001", licence_active=False,
                       practice_years=10, internet_practice=True).unwrap()
    assert submit(world, "add_diagnosis", JIANG, transient=t, pseudonym=pid,
                  physical=True) == "UNAUTHORIZED"
    assert submit(world, "add_diagnosis", admin("h01"), transient=t, pseudonym=pid,
                  physical=True) == "OK"


def test_money_and_insurer_are_not_set_by_the_hospital(world: World) -> None:
    """Opening balance, deductible/cap seeds and the insurer: only the insurer writes them."""
    pt = {**world.patients["patient-zhang"], "name": "patient-new",
          "id_number": "500103198001010011", "user": {"org": "h01", "name": "patient-new"},
          "account_balance_fen": 10_000_000, "deductible_used_fen": 20000}
    # the old enrolment arguments (balance, seeds, insurer) no longer exist
    out = world.chain.submit(
        "registry", "enrol_patient", admin("h01"),
        transient={"dx_key": dx_key(), "diagnoses": [], "patient_binding": "ab" * 32,
                   "patient_user": {"org": "h01", "name": "patient-new"}},
        pseudonym=pseudonym(pt["id_number"]), insurer="ins01", balance_fen=10_000_000)
    assert out.reason == "BAD_ARGUMENTS"
    world.enrol(pt).unwrap()
    rec = world.chain.query("registry", "get_patient", admin("h01"),
                            pseudonym=pseudonym(pt["id_number"])).unwrap()
    assert not {"insurer", "opening_balance_fen", "seed_deductible_used_fen",
                "seed_cap_used_fen"} & set(rec)
    # nobody but an insurer clerk/admin opens the account
    for caller in (admin("h01"), JIANG, WANG, who("reg01:auditor-fang:auditor")):
        assert world.open_account(pt, caller=caller).reason == "WRONG_ROLE"
    # never enrolled: no request of hers either (reg6: the answer of any patient who did not ask)
    assert world.open_account({**pt, "id_number": "nobody"}).reason == "NOT_FOUND"
    assert world.open_account(pt, year=2099).reason == "BAD_ARGUMENTS"
    assert world.open_account(pt, account_balance_fen=-1).reason == "BAD_ARGUMENTS"
    assert world.open_account(pt, cap_used_by_disease={"I10": "x"}).reason == "BAD_TRANSIENT"
    # an insurer without a policy in force opens none (settle5)
    assert world.open_account(pt, caller=who("ins02:clerk-lu:clerk")).reason == "NO_POLICY"
    world.set_policy({**world.sample["policies"][0], "insurer": "ins02"}, 0).unwrap()
    world.chain.advance(1)
    opened = world.open_account(pt, caller=who("ins02:clerk-lu:clerk")).unwrap()
    assert opened["insurer"] == "ins02"
    assert world.open_account(pt).reason == "ACCOUNT_EXISTS"  # once, by one insurer
    status = world.chain.query("settlement", "patient_status", who("ins02:clerk-lu:clerk"),
                               pseudonym=pseudonym(pt["id_number"]), year=0).unwrap()
    assert status["account_balance_fen"] == 10_000_000
    assert status["deductible_used_fen"] == 20000
    # a prescription cannot be issued (no claim key holder) for an enrolled but uninsured patient
    world.enrol({**pt, "id_number": "500103198001010022"}).unwrap()
    world.patients["patient-uninsured"] = {**pt, "id_number": "500103198001010022"}
    world.chain.advance(1)
    assert issue(world, patient="patient-uninsured")[1].reason == "NO_ACCOUNT"


def test_diagnosis_date_is_the_transaction_date(world: World) -> None:
    pid = world.pid("patient-zhang")
    t = {"dx_key": dx_key(), "icd10": "E11"}
    # a caller-supplied date is no longer accepted (it allowed backdating)
    assert submit(world, "add_diagnosis", JIANG, transient=t, pseudonym=pid, date="2020-01-01",
                  physical=True) == "BAD_ARGUMENTS"
    assert submit(world, "add_diagnosis", JIANG, transient=t, pseudonym=pid,
                  physical=True) == "OK"
    rec = world.chain.query("registry", "get_patient", JIANG, pseudonym=pid).unwrap()
    last = rec["diagnoses"][-1]
    assert last["date"] == "2026-11-25" and last["recorded_ms"] == world.chain.now


def test_get_patient_is_restricted(world: World) -> None:
    pid = world.pid("patient-zhang")
    zhang = world.patient_who("patient-zhang")
    readers = [zhang, admin("h01"), JIANG, who("h01:pharm-he:pharmacist"),
               who("ins01:clerk-qian:clerk"), admin("ins01"), who("reg01:auditor-fang:auditor")]
    for reader in readers:
        assert world.chain.query("registry", "get_patient", reader, pseudonym=pid).ok, reader
    outsiders = [
        admin("h02"), who("h02:dr-zhou:doctor"), WANG, who("ins02:clerk-lu:clerk"),
        world.patient_who("patient-sun"),
        Who("h01", "patient-zhang", "patient"),  # her certificate name, but no binding
        Who("h02", "patient-sun", "patient", binding=zhang.binding),  # someone else's binding
        Who("h01", "patient-zhang", "patient", binding="00" * 32),
    ]
    for outsider in outsiders:
        out = world.chain.query("registry", "get_patient", outsider, pseudonym=pid)
        assert out.reason == "ACCESS_DENIED", outsider


def test_patient_certificate_is_keyed_not_a_bare_hash(world: World) -> None:
    pid = world.pid("patient-zhang")
    rec = world.chain.query("registry", "get_patient", JIANG, pseudonym=pid).unwrap()
    assert "user_hash" not in rec
    guessable = hashlib.sha256(b"patient-user|h01|patient-zhang").hexdigest()
    assert rec["user_tag"] != guessable
    assert guessable.encode() not in world.chain.raw_state_bytes()
    # without her binding the patient is refused everywhere
    prep = approved(world)
    bare = Who("h01", "patient-zhang", "patient")
    # (no party of the prescription: answered as for a missing id)
    assert world.chain.query("prescription", "show", bare, rx_id=prep.args["rx_id"]).reason == "NOT_FOUND"
    assert world.chain.submit("prescription", "get_key", bare,
                              rx_id=prep.args["rx_id"]).value["error"] == "NO_KEY_GRANT"
    assert world.chain.query("settlement", "patient_status", bare, pseudonym=pid,
                             year=0).reason == "ACCESS_DENIED"
    assert world.chain.query("prescription", "show", world.patient_who("patient-zhang"),
                             rx_id=prep.args["rx_id"]).ok


def test_diagnosis_list_is_bounded(world: World) -> None:
    pid = world.pid("patient-zhang")
    for i in range(15):
        assert submit(world, "add_diagnosis", admin("h01"),
                      transient={"dx_key": dx_key(), "icd10": f"E{i:02d}"},
                      pseudonym=pid, physical=True) == "OK"
    assert submit(world, "add_diagnosis", admin("h01"),
                  transient={"dx_key": dx_key(), "icd10": "E99"},
                  pseudonym=pid, physical=True) == "LIMIT_EXCEEDED"


def test_roles_that_read_no_patient_cannot_probe_enrolment(world: World) -> None:
    """Enrolment says a person is in the chronic-disease scheme, and members can compute a
    pseudonym from an ID number (they hold the consortium secret). Pharmacy staff, couriers,
    nurses and other roles that read no patient get ACCESS_DENIED from ``get_patient``,
    ``get_account`` and ``patient_status`` for an enrolled and a never-enrolled pseudonym
    alike (refused before the lookup; it used to be UNKNOWN_PATIENT for the latter)."""
    enrolled = world.pid("patient-zhang")
    nobody = hashlib.sha256(b"never enrolled").hexdigest()
    views: list[tuple[str, str, dict[str, Any]]] = [
        ("registry", "get_patient", {}), ("settlement", "get_account", {}),
        ("settlement", "patient_status", {"year": 0})]
    for caller in (WANG, who("p01:courier-liu:courier"), who("h01:nurse-xu:nurse"), admin("p01"),
                   who("reg01:clerk-a:clerk")):
        for contract, fn, extra in views:
            seen = [world.chain.query(contract, fn, caller, pseudonym=pid, **extra) for pid in (enrolled, nobody)]
            assert [(o.reason, o.message) for o in seen] == [("ACCESS_DENIED", seen[0].message)] * 2, (caller, fn)
    # the readers still read, and an unknown pseudonym is still UNKNOWN_PATIENT to them -- but
    # to an insurer, which reads only the patients it insures or who asked it (reg6), it is
    # ACCESS_DENIED as any patient it has no tie to
    for caller in (JIANG, who("ins01:clerk-qian:clerk"), who("reg01:auditor-fang:auditor")):
        for contract, fn, extra in views:
            assert world.chain.query(contract, fn, caller, pseudonym=enrolled, **extra).ok, (caller, fn)
            assert world.chain.query(contract, fn, caller, pseudonym=nobody, **extra).reason == (
                "ACCESS_DENIED" if caller.org == "ins01" else "UNKNOWN_PATIENT"), (caller, fn)
