"""Registry decisions: practitioner codes and pharmacy licences held by one registration at a
time, and diagnosis room per hospital (one hospital cannot fill another's)."""

from __future__ import annotations

import json
from typing import Any

from tests.contracts.chain import Who, admin, who
from tests.contracts.flows import JIANG, ZHOU, issue
from tests.contracts.rxclient import World, dx_key

JIANG_CODE = "D500103000001"  # sample data: h01/dr-jiang
HE_CODE = "P500103000001"  # sample data: h01/pharm-he
P01_LICENCE = "YP-CQ-500105-0001"  # sample data: p01


def practitioner(world: World, org: str, name: str, code: str, active: bool = True,
                 role: str = "doctor", years: int = 5) -> str:
    out = world.chain.submit("registry", "register_practitioner", admin(org), name=name,
                             role=role, code=code, licence_active=active, practice_years=years,
                             internet_practice=True)
    return "OK" if out.ok else out.reason


def pharmacy(world: World, org: str, licence: str, active: bool = True) -> str:
    out = world.chain.submit("registry", "register_pharmacy", admin(org), licence_no=licence,
                             active=active)
    return "OK" if out.ok else out.reason


def index(world: World, key: str) -> Any:
    raw = world.chain.state.values.get(("registry", key))
    return None if raw is None else json.loads(raw)


def test_a_practitioner_code_is_held_by_one_active_registration(world: World) -> None:
    # another organisation, or another record of the holder's own, cannot take an active code
    assert practitioner(world, "h02", "dr-fake", JIANG_CODE) == "CODE_IN_USE"
    assert practitioner(world, "p01", "pharm-fake", HE_CODE, role="pharmacist") == "CODE_IN_USE"
    assert practitioner(world, "h01", "dr-jiang-2", JIANG_CODE) == "CODE_IN_USE"
    assert world.chain.query("registry", "get_practitioner", JIANG, org="h02",
                             name="dr-fake").reason == "NOT_FOUND"
    # the holder updates its own record (re-registration by the same holder)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=11) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    # an inactive registration holds nothing and takes nothing (a retired record stays writable)
    assert practitioner(world, "h02", "dr-fake", JIANG_CODE, active=False) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    assert practitioner(world, "h02", "dr-fake", JIANG_CODE, active=True) == "CODE_IN_USE"


def test_a_retired_code_can_be_taken_over_and_the_old_holder_cannot_return(world: World) -> None:
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    # she moved to h02: its admin registers her code
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h02", "name": "dr-jiang"}
    # h01 reactivating its old record would make two active holders
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"
    # h02's doctor prescribes; h01's (inactive) does not
    assert issue(world, doctor=JIANG)[1].reason == "UNAUTHORIZED_PRESCRIBER"


def test_changing_a_code_releases_the_old_one(world: World) -> None:
    assert practitioner(world, "h01", "dr-jiang", "D500103009999", years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert index(world, "praccode/D500103009999") == {"org": "h01", "name": "dr-jiang"}
    assert practitioner(world, "h02", "dr-other", JIANG_CODE) == "OK"
    assert practitioner(world, "h02", "dr-other2", "D500103009999") == "CODE_IN_USE"


def test_a_pharmacy_licence_is_held_by_one_active_pharmacy(world: World) -> None:
    assert pharmacy(world, "p02", P01_LICENCE) == "LICENCE_IN_USE"
    assert world.chain.query("registry", "get_pharmacy", JIANG, org="p02").unwrap()[
        "licence_no"] == "YP-CQ-500107-0002"
    assert pharmacy(world, "p03", P01_LICENCE) == "LICENCE_IN_USE"
    assert pharmacy(world, "p01", P01_LICENCE) == "OK"  # the holder re-registers
    assert pharmacy(world, "p03", P01_LICENCE, active=False) == "OK"  # holds nothing
    assert index(world, "pharmlic/" + P01_LICENCE) == {"org": "p01", "name": ""}
    # p01 closes; the licence passes to p03; p01 cannot come back under it
    assert pharmacy(world, "p01", P01_LICENCE, active=False) == "OK"
    assert pharmacy(world, "p03", P01_LICENCE) == "OK"
    assert pharmacy(world, "p01", P01_LICENCE) == "LICENCE_IN_USE"
    # p01 under a new licence number; p02 moving to another number frees its old one
    assert pharmacy(world, "p01", "YP-CQ-500105-0009") == "OK"
    assert pharmacy(world, "p02", "YP-CQ-500107-0003") == "OK"
    assert index(world, "pharmlic/YP-CQ-500107-0002") is None
    assert pharmacy(world, "p04", "YP-CQ-500107-0002") == "OK"


# ---------------------------------------------------------------- diagnoses


def add_dx(world: World, caller: Who, icd10: str, physical: bool = True,
           patient: str = "patient-zhang") -> str:
    out = world.chain.submit("registry", "add_diagnosis", caller,
                             transient={"dx_key": dx_key(), "icd10": icd10},
                             pseudonym=world.pid(patient), physical=physical)
    return "OK" if out.ok else out.reason


def diagnoses(world: World, patient: str = "patient-zhang") -> list[dict[str, Any]]:
    rec = world.chain.query("registry", "get_patient", admin("h01"), pseudonym=world.pid(patient))
    out: list[dict[str, Any]] = rec.unwrap()["diagnoses"]
    return out


def test_another_hospital_cannot_fill_the_enrolling_hospitals_room(world: World) -> None:
    """Zhang is enrolled by h01 (one imported diagnosis). h02 used to be able to add 15
    diagnoses and leave h01 none (16 per patient, shared)."""
    for i in range(16):
        assert add_dx(world, admin("h02"), f"Z{i:02d}") == "OK", i
    assert add_dx(world, admin("h02"), "Z99") == "LIMIT_EXCEEDED"  # 16 per hospital
    assert add_dx(world, JIANG, "E11") == "OK"  # h01's room is its own
    for i in range(14):
        assert add_dx(world, admin("h01"), f"Y{i:02d}") == "OK", i
    assert add_dx(world, admin("h01"), "Y99") == "LIMIT_EXCEEDED"  # 1 imported + 15 added
    assert len(diagnoses(world)) == 32
    world.chain.advance(1)
    issue(world, diagnosis="E11", drugs=[("metformin", 1)])[1].unwrap()


def test_other_hospitals_share_a_bounded_pool_and_never_the_enrollers(world: World) -> None:
    for org in ("h02", "h03", "h04"):
        for i in range(16):
            assert add_dx(world, admin(org), f"{org.upper()}{i:02d}") == "OK", (org, i)
    # 48 from other hospitals: a fourth takes the oldest entry of the fullest (it was refused:
    # test_registry_residuals), the pool stays 48 and the enrolling hospital's room its own
    assert add_dx(world, admin("h05"), "X01") == "OK"
    assert add_dx(world, admin("h01"), "E11") == "OK"
    assert len(diagnoses(world)) == 1 + 48 + 1


def test_the_same_diagnosis_recorded_again_takes_no_room(world: World) -> None:
    """A chronic patient's monthly visits each recording her diagnosis filled the 16 in 16
    months; the same (diagnosis, physical) from the same hospital is on record once."""
    for _ in range(20):
        assert add_dx(world, ZHOU, "E11") == "OK"
    assert add_dx(world, ZHOU, "E11", physical=False) == "OK"
    mine = [d for d in diagnoses(world) if d["by"] == "h02"]
    assert len(mine) == 2 and sorted(d["physical"] for d in mine) == [False, True]
    out = world.chain.submit("registry", "add_diagnosis", ZHOU,
                             transient={"dx_key": dx_key(), "icd10": "E11"},
                             pseudonym=world.pid("patient-zhang"), physical=True)
    assert out.unwrap() == {"pseudonym": world.pid("patient-zhang"), "diagnoses": 3,
                            "recorded": False, "evicted": ""}


def test_re_enrolment_keeps_the_diagnoses_other_hospitals_recorded(world: World) -> None:
    assert add_dx(world, ZHOU, "E11") == "OK"
    zhang = world.patients["patient-zhang"]
    fresh = [{"icd10": "J45", "date": "2024-03-01", "hospital": "h01", "physical": True}]
    world.enrol(zhang, diagnoses=fresh).unwrap()
    by = sorted((d["by"], d["hospital"]) for d in diagnoses(world))
    assert by == [("h01", "h01"), ("h02", "h02")]  # h01's import replaced, h02's entry kept
    world.chain.advance(1)
    issue(world, doctor=who("h02:dr-zhou:doctor"), diagnosis="E11",
          drugs=[("metformin", 1)])[1].unwrap()


# ---------------------------------------------------------------- multi-site practice

def authorize(world: World, org: str, code: str, site: str, allowed: bool = True) -> str:
    out = world.chain.submit("registry", "authorize_practice_site", admin(org), code=code,
                             site=site, allowed=allowed)
    return "OK" if out.ok else out.reason


def test_a_doctor_practises_at_a_site_her_holder_authorised(world: World) -> None:
    """A tertiary hospital's doctor also practising at a community centre (multi-site practice)
    was refused CODE_IN_USE there: one drCode, one active registration. The holder's admin now
    authorises the site, which registers her under the same code and one name; others stay
    refused, and a withdrawal makes the site's registration inactive."""
    # only the holder authorises (a would-be site cannot authorise itself), never itself
    assert authorize(world, "h02", JIANG_CODE, "h03") == "ACCESS_DENIED"
    assert authorize(world, "h02", JIANG_CODE, "h02") == "BAD_ARGUMENTS"
    assert authorize(world, "h01", JIANG_CODE, "h01") == "BAD_ARGUMENTS"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"
    assert authorize(world, "h01", JIANG_CODE, "h02") == "OK"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {
        "org": "h01", "name": "dr-jiang", "sites": {"h02": "dr-jiang"}}
    # one name per site; another organisation is still refused
    assert practitioner(world, "h02", "dr-jiang-2", JIANG_CODE, years=10) == "CODE_IN_USE"
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"
    # both registrations are active; the holder's re-registration keeps the site
    assert world.chain.query("registry", "get_practitioner", JIANG, org="h02",
                             name="dr-jiang").unwrap()["licence_active"] is True
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=11) == "OK"
    assert index(world, "praccode/" + JIANG_CODE)["sites"] == {"h02": "dr-jiang"}
    # withdrawn: the site's registration is inactive and cannot come back
    assert authorize(world, "h01", JIANG_CODE, "h02", allowed=False) == "OK"
    assert world.chain.query("registry", "get_practitioner", JIANG, org="h02",
                             name="dr-jiang").unwrap()["licence_active"] is False
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang", "sites": {}}
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"


def test_a_site_leaving_the_code_keeps_its_authorisation_and_sites_are_bounded(world: World) -> None:
    assert authorize(world, "h01", JIANG_CODE, "h02") == "OK"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "OK"
    # the site's record moves to another code: the site stays authorised, under no name
    assert practitioner(world, "h02", "dr-jiang", "D500103007777", years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE)["sites"] == {"h02": ""}
    assert practitioner(world, "h02", "dr-jiang-b", JIANG_CODE, years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE)["sites"] == {"h02": "dr-jiang-b"}
    for i in range(3, 10):  # seven more: eight in all
        assert authorize(world, "h01", JIANG_CODE, f"h{i:02d}") == "OK"
    assert authorize(world, "h01", JIANG_CODE, "h10") == "LIMIT_EXCEEDED"
    assert authorize(world, "h01", JIANG_CODE, "h09") == "OK"  # already a site: no new room
    # a holder whose licence is inactive authorises nothing
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    assert authorize(world, "h01", JIANG_CODE, "h10") == "ACCESS_DENIED"


def test_a_holder_leaving_the_code_leaves_no_active_site_to_a_new_holder(world: World) -> None:
    """The holder's registration lapsing (or moving to another code) while a site she
    authorised still practised under the code let another organisation take the code over:
    the index forgot the site, whose registration stayed active beside the new holder's --
    two active registrations under one drCode, the site's withdrawn by nobody any more."""
    assert authorize(world, "h01", JIANG_CODE, "h02") == "OK"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "OK"
    # the holder's licence lapses: the site still practises under the code
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    assert practitioner(world, "h03", "dr-fake", JIANG_CODE) == "CODE_IN_USE"
    assert practitioner(world, "h02", "dr-jiang-2", JIANG_CODE) == "CODE_IN_USE"
    assert index(world, "praccode/" + JIANG_CODE)["sites"] == {"h02": "dr-jiang"}
    # the holder comes back (her sites kept) ...
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {
        "org": "h01", "name": "dr-jiang", "sites": {"h02": "dr-jiang"}}
    # ... then moves to another code: the index stays while the site practises under it
    assert practitioner(world, "h01", "dr-jiang", "D500103007777", years=10) == "OK"
    assert practitioner(world, "h03", "dr-fake", JIANG_CODE) == "CODE_IN_USE"
    assert index(world, "praccode/" + JIANG_CODE)["sites"] == {"h02": "dr-jiang"}
    # the site leaves it too: the code is free
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    assert practitioner(world, "h03", "dr-new", JIANG_CODE) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-new"}
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"
