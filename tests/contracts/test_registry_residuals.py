"""Registry residuals: withdrawing a practice site once its holder is no longer in force,
fair room for the hospitals sharing a patient's diagnosis record, indexing registrations from
before codes and licences were indexed (``reindex``), and who of the insurers reads an
enrolment."""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from tests.contracts.chain import DAY_MS, ROOT, Who, admin, who
from tests.contracts.flows import CLERK, CLERK2, JIANG
from tests.contracts.rxclient import World, dx_key, patient_binding, pseudonym
from tests.contracts.test_registry_decisions import (
    JIANG_CODE,
    add_dx,
    authorize,
    diagnoses,
    index,
    pharmacy,
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


# ---------------------------------------------------------------- reindex

# The registry before practitioner codes and pharmacy licences were indexed (its
# register_practitioner and register_pharmacy, as that release wrote them: no praccode/ or
# pharmlic/ entry).
LEGACY_REGISTRY = '''
from rxchain_contract import Context


def register_practitioner(ctx: Context, name: str, role: str, code: str, licence_active: bool,
                          practice_years: int, internet_practice: bool) -> dict:
    org = ctx.caller.org
    rec = {"org": org, "name": name, "role": role, "code": code, "licence_active": licence_active,
           "practice_years": practice_years, "internet_practice": internet_practice,
           "updated": {"by_org": org, "by": ctx.caller.name, "ms": ctx.timestamp_ms,
                       "tx_id": ctx.tx_id}}
    ctx.put("prac/" + org + "/" + name, rec)
    return rec


def register_pharmacy(ctx: Context, licence_no: str, active: bool) -> dict:
    org = ctx.caller.org
    rec = {"org": org, "licence_no": licence_no, "active": active,
           "updated": {"by_org": org, "by": ctx.caller.name, "ms": ctx.timestamp_ms,
                       "tx_id": ctx.tx_id}}
    ctx.put("pharmacy/" + org, rec)
    return rec
'''

LEGACY_CODE = "D500103000099"
LEGACY_LICENCE = "YP-CQ-500199-0009"


def under_legacy_registry(world: World, write: Callable[[], None]) -> None:
    """``write`` runs under the previous registry; then the current one is defined again."""
    ch = world.chain
    current = ch._sources["registry"]
    ch._sources["registry"] = LEGACY_REGISTRY
    ch._hashes["registry"] = hashlib.sha256(LEGACY_REGISTRY.encode()).hexdigest()
    try:
        write()
    finally:
        ch._sources["registry"] = current
        ch._hashes["registry"] = hashlib.sha256(current.encode()).hexdigest()


def legacy(world: World) -> None:
    """h01/dr-legacy (active), h01/dr-retired (inactive) and pharmacy p03 registered by the
    previous registry: no index entry."""
    def write() -> None:
        assert practitioner(world, "h01", "dr-legacy", LEGACY_CODE) == "OK"
        assert practitioner(world, "h01", "dr-retired", "D500103000098", active=False) == "OK"
        assert pharmacy(world, "p03", LEGACY_LICENCE) == "OK"

    under_legacy_registry(world, write)
    assert index(world, "praccode/" + LEGACY_CODE) is None
    assert index(world, "pharmlic/" + LEGACY_LICENCE) is None


def reindex(world: World, caller: Who, org: str, name: str) -> Any:
    out = world.chain.submit("registry", "reindex", caller, org=org, name=name)
    return out.value if out.ok else out.reason


def test_a_legacy_registration_is_indexed_and_then_holds_its_code(world: World) -> None:
    """A registration from before the index held nothing: another organisation registered the
    same drCode (or licence) active beside it. ``reindex`` indexes it without changing it."""
    legacy(world)
    before = registration(world, "h01", "dr-legacy")
    out = reindex(world, admin("h01"), "h01", "dr-legacy")
    assert out == {"org": "h01", "name": "dr-legacy", "code": LEGACY_CODE, "active": True,
                   "changed": True, "index": {"org": "h01", "name": "dr-legacy"}}
    assert registration(world, "h01", "dr-legacy") == before  # the record is not touched
    assert index(world, "praccode/" + LEGACY_CODE) == {"org": "h01", "name": "dr-legacy"}
    assert practitioner(world, "h02", "dr-dup", LEGACY_CODE) == "CODE_IN_USE"
    # idempotent: nothing written again
    seen = world.chain.submit("registry", "reindex", admin("h01"), org="h01", name="dr-legacy")
    assert seen.unwrap()["changed"] is False and seen.block is not None
    assert len(world.chain.state.versions[("registry", "praccode/" + LEGACY_CODE)]) == 1
    # an inactive registration holds nothing
    assert reindex(world, admin("h01"), "h01", "dr-retired") == {
        "org": "h01", "name": "dr-retired", "code": "D500103000098", "active": False,
        "changed": False, "index": {}}
    assert index(world, "praccode/D500103000098") is None
    # the pharmacy, by a regulator admin
    assert pharmacy(world, "p04", LEGACY_LICENCE, active=False) == "OK"
    assert reindex(world, REGULATOR, "p03", "") == {
        "org": "p03", "name": "", "licence_no": LEGACY_LICENCE, "active": True, "changed": True,
        "index": {"org": "p03", "name": ""}}
    assert pharmacy(world, "p04", LEGACY_LICENCE) == "LICENCE_IN_USE"
    assert reindex(world, admin("p03"), "p03", "")["changed"] is False


def test_reindex_refuses_a_code_another_active_registration_holds(world: World) -> None:
    legacy(world)
    # the duplicate got in first (the gap reindex closes): the legacy one cannot take its code
    assert practitioner(world, "h02", "dr-dup", LEGACY_CODE) == "OK"
    assert pharmacy(world, "p04", LEGACY_LICENCE) == "OK"
    assert reindex(world, admin("h01"), "h01", "dr-legacy") == "CODE_IN_USE"
    assert reindex(world, REGULATOR, "p03", "") == "LICENCE_IN_USE"
    assert index(world, "praccode/" + LEGACY_CODE) == {"org": "h02", "name": "dr-dup"}
    assert index(world, "pharmlic/" + LEGACY_LICENCE) == {"org": "p04", "name": ""}
    # the duplicate leaves the code: the legacy registration takes it over (its own admin's
    # call, never a regulator's: test_registry_revocation)
    assert practitioner(world, "h02", "dr-dup", LEGACY_CODE, active=False) == "OK"
    assert reindex(world, admin("h01"), "h01", "dr-legacy")["index"] == {"org": "h01", "name": "dr-legacy"}
    # a legacy registration at a site the holder authorised takes the site's place
    assert authorize(world, "h01", LEGACY_CODE, "h03") == "OK"
    def at_site() -> None:
        assert practitioner(world, "h03", "dr-legacy", LEGACY_CODE) == "OK"

    under_legacy_registry(world, at_site)
    assert reindex(world, admin("h03"), "h03", "dr-legacy")["index"] == {
        "org": "h01", "name": "dr-legacy", "sites": {"h03": "dr-legacy"}}
    assert reindex(world, admin("h03"), "h03", "dr-legacy")["changed"] is False
    assert practitioner(world, "h03", "dr-legacy-2", LEGACY_CODE) == "CODE_IN_USE"


def test_who_may_reindex(world: World) -> None:
    legacy(world)
    assert reindex(world, admin("h02"), "h01", "dr-legacy") == "ACCESS_DENIED"
    assert reindex(world, admin("ins01"), "h01", "dr-legacy") == "ACCESS_DENIED"
    assert reindex(world, JIANG, "h01", "dr-legacy") == "WRONG_ROLE"
    assert reindex(world, admin("h01"), "h01", "dr-nobody") == "NOT_FOUND"
    assert reindex(world, admin("h01"), "h01", "") == "NOT_FOUND"  # h01 has no pharmacy
    for bad in ("dr legacy", "x" * 65, "dr/legacy"):
        assert reindex(world, admin("h01"), "h01", bad) == "BAD_ARGUMENTS", bad
    assert reindex(world, REGULATOR, "", "dr-legacy") == "BAD_ARGUMENTS"
    assert index(world, "praccode/" + LEGACY_CODE) is None


# ---------------------------------------------------------------- get_patient


NEW_PATIENT: dict[str, Any] = {"name": "patient-new", "id_number": "500103198001010011",
                               "user": {"org": "h01", "name": "patient-new"},
                               "account_balance_fen": 10_000, "deductible_used_fen": 0}
INS02_POLICY = {"insurer": "ins02", "deductible_fen": 30000, "ratio_bp": {"community": 9000},
                "cap_fen": 150000, "cap_by_disease": {}, "b_share_bp": 2000}


def read(world: World, caller: Who, pid: str) -> tuple[str, str]:
    out = world.chain.query("registry", "get_patient", caller, pseudonym=pid)
    return ("OK", "") if out.ok else (out.reason, out.message)


def test_an_insurer_reads_an_enrolment_only_when_it_insures_her(world: World) -> None:
    """Any insurer's clerk or admin read the enrolment (her hospital, diagnosis tags) of every
    patient without an account yet. Now only the insurer holding her account, or the one a
    pending request of hers asks to take it over (30 days); the others get the answer of any
    non-party. The account is opened without reading it (open_account reads it itself)."""
    pt = {**world.patients["patient-zhang"], **NEW_PATIENT}
    world.enrol(pt).unwrap()
    pid = pseudonym(pt["id_number"])
    outsider = read(world, admin("h02"), pid)
    assert outsider[0] == "ACCESS_DENIED"
    for caller in (CLERK, admin("ins01"), CLERK2, admin("ins02")):
        assert read(world, caller, pid) == outsider, caller
    assert read(world, admin("h01"), pid) == ("OK", "")
    world.set_policy(INS02_POLICY, 0).unwrap()  # an insurer opens accounts with a policy in force
    world.chain.advance(1)
    assert world.open_account(pt, caller=CLERK2).ok  # no enrolment read first
    assert read(world, CLERK2, pid) == ("OK", "")
    assert read(world, admin("ins02"), pid) == ("OK", "")
    assert read(world, CLERK, pid) == outsider
    # she asks ins01 to take her over: ins01 reads her enrolment while it decides (30 days)
    world.set_policy({**INS02_POLICY, "insurer": "ins01"}, 0).unwrap()
    her = Who("h01", "patient-new", "patient", binding=patient_binding("h01", "patient-new"))
    world.chain.advance(1)
    assert world.chain.submit("settlement", "request_transfer", her, pseudonym=pid,
                              to_insurer="ins01").ok
    assert read(world, CLERK, pid) == ("OK", "")
    assert read(world, who("ins03:clerk-x:clerk"), pid) == outsider
    world.chain.advance(30 * DAY_MS + 1)
    assert read(world, CLERK, pid) == outsider
    # a request her insurer made without her shows the insurer asked nothing
    assert world.chain.submit("settlement", "cancel_transfer", her, pseudonym=pid).ok
    assert world.chain.submit("settlement", "request_transfer", CLERK2, pseudonym=pid,
                              to_insurer="ins01").ok
    assert read(world, CLERK, pid) == outsider
    assert read(world, her, pid) == ("OK", "")
    assert read(world, who("reg01:auditor-fang:auditor"), pid) == ("OK", "")


def test_the_registry_reads_pending_transfers_as_long_as_settlement_keeps_them() -> None:
    """The registry's copy of settlement's TRANSFER_EXPIRY_MS (contracts cannot import)."""
    def constant(name: str) -> str:
        tree = ast.parse((ROOT / "contracts" / name).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TRANSFER_EXPIRY_MS":
                return ast.unparse(node.value)
        raise AssertionError(name)

    assert constant("registry.py") == constant("settlement.py") == "30 * 24 * 3600 * 1000"
