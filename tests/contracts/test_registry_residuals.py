"""Registry residuals: withdrawing a practice site once its holder is no longer in force,
fair room for the hospitals sharing a patient's diagnosis record, indexing registrations from
before codes and licences were indexed (``reindex``), and who of the insurers reads an
enrolment."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from tests.contracts.chain import Who, admin, who
from tests.contracts.flows import JIANG
from tests.contracts.rxclient import World, dx_key
from tests.contracts.test_registry_decisions import (
    JIANG_CODE,
    add_dx,
    authorize,
    diagnoses,
    index,
    practitioner,
)

REGULATOR = admin("reg01")


def registration(world: World, org: str, name: str) -> dict[str, Any]:
    rec: dict[str, Any] = world.chain.query("registry", "get_practitioner", JIANG, org=org,
                                            name=name).unwrap()
    return rec


def withdraw(world: World, caller: Who, site: str, code: str = JIANG_CODE) -> str:
    out = world.chain.submit("registry", "authorize_practice_site", caller, code=code, site=site,
                             allowed=False)
    return "OK" if out.ok else out.reason


def with_site(world: World) -> None:
    """h01 (holder of Jiang's code) authorises h02, which registers her under it."""
    assert authorize(world, "h01", JIANG_CODE, "h02") == "OK"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "OK"


# ---------------------------------------------------------------- practice sites


def test_a_lapsed_holder_withdraws_the_sites_it_authorised(world: World) -> None:
    """The holder's licence lapsed: its sites kept the code in use (CODE_IN_USE to her new
    employer) and its withdrawal was refused ACCESS_DENIED (a holder in force only). The
    organisation the index names withdraws what it authorised, in force or not; it authorises
    nothing new until it is in force again."""
    with_site(world)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"
    assert authorize(world, "h01", JIANG_CODE, "h04") == "ACCESS_DENIED"  # authorising: in force
    assert withdraw(world, admin("h01"), "h02") == "OK"
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang", "sites": {}}
    # nobody practises under the code any more: her new employer takes it over
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-jiang"}
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"


def test_a_site_withdraws_itself_whatever_its_holder(world: World) -> None:
    """A site's admin withdraws its own site (its registration under the code made inactive,
    the authorisation gone): it used to be BAD_ARGUMENTS ("no site of its own")."""
    with_site(world)
    # the holder moved to another code: the entry (and the site) keep the code in use
    assert practitioner(world, "h01", "dr-jiang", "D500103007777", years=10) == "OK"
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"
    assert withdraw(world, admin("h02"), "h02") == "OK"
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert index(world, "praccode/" + JIANG_CODE)["sites"] == {}
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "OK"
    # ... also while the holder is in force: it is no site any more
    assert authorize(world, "h03", JIANG_CODE, "h04") == "OK"
    assert practitioner(world, "h04", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert withdraw(world, admin("h04"), "h04") == "OK"
    assert registration(world, "h04", "dr-jiang")["licence_active"] is False
    assert practitioner(world, "h04", "dr-jiang", JIANG_CODE, years=10) == "CODE_IN_USE"
    # a site authorises nobody, itself included; an organisation that is no site has nothing
    # to withdraw; the holder is no site of its own
    assert authorize(world, "h04", JIANG_CODE, "h04") == "BAD_ARGUMENTS"
    assert withdraw(world, admin("h05"), "h05") == "ACCESS_DENIED"
    assert withdraw(world, admin("h03"), "h03") == "BAD_ARGUMENTS"
    assert withdraw(world, admin("h05"), "h05", code="D500103000404") == "ACCESS_DENIED"


def test_the_regulator_withdraws_any_site_and_authorises_none(world: World) -> None:
    with_site(world)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    # only the named holder, the site itself or the regulator: no other organisation
    for caller in (admin("h03"), admin("p01"), admin("ins01")):
        assert withdraw(world, caller, "h02") == "ACCESS_DENIED", caller
    assert withdraw(world, JIANG, "h02") == "WRONG_ROLE"
    assert withdraw(world, who("reg01:auditor-fang:auditor"), "h02") == "WRONG_ROLE"
    assert registration(world, "h02", "dr-jiang")["licence_active"] is True
    assert world.chain.submit("registry", "authorize_practice_site", REGULATOR, code=JIANG_CODE,
                              site="h03", allowed=True).reason == "ACCESS_DENIED"
    assert withdraw(world, REGULATOR, "h02", code="D500103000404") == "NOT_FOUND"
    assert withdraw(world, REGULATOR, "h02") == "OK"
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "OK"


# ---------------------------------------------------------------- diagnosis room


def test_a_fourth_hospital_gets_its_share_of_the_shared_room(world: World) -> None:
    """Three other hospitals filling the 48 entries shared by the hospitals but her enrolling
    one locked every further hospital out (LIMIT_EXCEEDED). Now, the room being full, the
    hospital holding the most entries gives up its oldest to a hospital holding at least 2
    fewer: a fourth ends with a fair share (12 each), and no two take room back and forth."""
    for org in ("h02", "h03", "h04"):
        for i in range(16):
            assert add_dx(world, admin(org), f"{org.upper()}{i:02d}") == "OK", (org, i)
    out = world.chain.submit("registry", "add_diagnosis", admin("h05"),
                             transient={"dx_key": dx_key(), "icd10": "X00"},
                             pseudonym=world.pid("patient-zhang"), physical=True).unwrap()
    assert out["recorded"] is True and out["evicted"] == "h02"  # the oldest of the fullest
    for i in range(1, 12):
        assert add_dx(world, admin("h05"), f"X{i:02d}") == "OK", i
    assert add_dx(world, admin("h05"), "X99") == "LIMIT_EXCEEDED"  # 12 each: its share
    rec = diagnoses(world)
    count = {org: len([d for d in rec if d["by"] == org]) for org in ("h01", "h02", "h03", "h04", "h05")}
    assert count == {"h01": 1, "h02": 12, "h03": 12, "h04": 12, "h05": 12}
    # each gave up its oldest entries, in recording order
    pid = world.pid("patient-zhang")
    tags = {d["tag"] for d in rec}
    for org in ("h02", "h03", "h04"):
        kept = [i for i in range(16) if _tag(pid, f"{org.upper()}{i:02d}") in tags]
        assert kept == list(range(4, 16)), org
    # an evicted hospital cannot take its room back (12 against 12), a repeat is still free
    assert add_dx(world, admin("h02"), "H0299") == "LIMIT_EXCEEDED"
    assert add_dx(world, admin("h02"), "H0215") == "OK"
    assert len(diagnoses(world)) == 49
    # the enrolling hospital's own room is untouched, and a re-enrolment keeps the others'
    assert add_dx(world, admin("h01"), "E11") == "OK"
    zhang = world.patients["patient-zhang"]
    world.enrol(zhang, diagnoses=[{"icd10": "J45", "date": "2024-03-01", "hospital": "h01",
                                   "physical": True}]).unwrap()
    assert len([d for d in diagnoses(world) if d["by"] != "h01"]) == 48
    # a sixth hospital: room from the fullest again (12 -> 11 for the oldest of them)
    out = world.chain.submit("registry", "add_diagnosis", admin("h06"),
                             transient={"dx_key": dx_key(), "icd10": "Y00"},
                             pseudonym=pid, physical=True).unwrap()
    assert out["evicted"] == "h02"
    last = [e for e in world.chain.events if e.name == "registry.diagnosis"][-1]
    assert json.loads(last.payload_json) == {"hospital": "h06", "evicted": "h02"}


def _tag(pid: str, icd10: str) -> str:
    return hmac.new(bytes.fromhex(dx_key()), f"{pid}|{icd10}".encode(), hashlib.sha256).hexdigest()
