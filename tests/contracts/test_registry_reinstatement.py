"""A regulator lifting a suspension (``registry.reinstate_registration``): a revocation for
LICENCE_SUSPENDED barred the code (licence) for good, so a suspension never ended; every other
reason stays final."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import Who, admin, who
from tests.contracts.flows import JIANG, issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, P01_LICENCE, authorize, index, pharmacy, practitioner
from tests.contracts.test_registry_residuals import REGULATOR, registration, with_site
from tests.contracts.test_registry_revocation import events, revoke, versions

OTHER_CODE = "D500103000777"


def reinstate(world: World, caller: Who, org: str, name: str) -> Any:
    out = world.chain.submit("registry", "reinstate_registration", caller, org=org, name=name)
    return out.value if out.ok else out.reason


def test_a_suspended_doctor_is_reinstated_and_registered_again(world: World) -> None:
    mark = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE)["revoked"] == mark
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["changed"] is True and out["reinstated"]["revoked"] == mark
    assert out["reinstated"]["by_org"] == "reg01"
    rec = registration(world, "h01", "dr-jiang")
    assert "revoked" not in rec and rec["reinstated"] == [out["reinstated"]]
    # active again as before the suspension, holding her code (reg6: it stayed inactive)
    assert rec["licence_active"] is True and out["reactivated"] is True and out["reason"] == ""
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    assert events(world, "registry.reinstated")[-1] == {
        "org": "h01", "name": "dr-jiang", "reactivated": True, "reason": "",
        "sites_restored": [], "sites_not_restored": {}, "pending": "", "pending_reactivated": []}
    assert issue(world, doctor=JIANG)[1].ok
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    assert registration(world, "h01", "dr-jiang")["reinstated"] == [out["reinstated"]]
    assert issue(world, doctor=JIANG)[1].ok
    # idempotent: a registration not revoked writes nothing
    n = versions(world, "prac/h01/dr-jiang")
    again = world.chain.submit("registry", "reinstate_registration", REGULATOR, org="h01",
                               name="dr-jiang")
    assert again.ok and again.value == {"org": "h01", "name": "dr-jiang",
                                        "reinstated": out["reinstated"], "changed": False}
    assert versions(world, "prac/h01/dr-jiang") == n and again.events == ()


def test_a_revoked_licence_is_final(world: World) -> None:
    for org, name, reason in (("h01", "dr-jiang", "LICENCE_REVOKED"),
                              ("h02", "dr-zhou", "ORGANISATION_CLOSED")):
        code = registration(world, org, name)["code"]
        assert revoke(world, REGULATOR, org, name, reason)["changed"] is True
        n_rec, n_code = versions(world, "prac/" + org + "/" + name), versions(world, "praccode/" + code)
        out = world.chain.submit("registry", "reinstate_registration", REGULATOR, org=org,
                                 name=name)
        assert out.reason == "REVOCATION_FINAL" and reason in out.message
        assert versions(world, "prac/" + org + "/" + name) == n_rec
        assert versions(world, "praccode/" + code) == n_code
        assert registration(world, org, name)["revoked"]["reason"] == reason
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_a_suspended_pharmacy_is_reinstated(world: World) -> None:
    assert revoke(world, REGULATOR, "p01", "", "LICENCE_SUSPENDED")["changed"] is True
    assert pharmacy(world, "p01", P01_LICENCE) == "REGISTRATION_REVOKED"
    assert issue(world, pharmacy="p01")[1].reason == "UNKNOWN_PHARMACY"
    out = reinstate(world, REGULATOR, "p01", "")
    assert out["changed"] is True and out["reactivated"] is True
    assert index(world, "pharmlic/" + P01_LICENCE) == {"org": "p01", "name": ""}
    assert world.chain.query("registry", "get_pharmacy", JIANG, org="p01").unwrap()["active"] is True
    assert issue(world, pharmacy="p01")[1].ok
    assert pharmacy(world, "p01", P01_LICENCE) == "OK"


def test_a_final_revocation_keeps_the_code_a_suspension_barred(world: World) -> None:
    """Suspended at h01, her licence is then revoked through her (inactive) registration at h03:
    the bar becomes the final one, and lifting the suspension at h01 leaves it."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    final = revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-jiang",
                                                      "revoked": final}
    assert reinstate(world, REGULATOR, "h01", "dr-jiang")["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE)["revoked"] == final
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_the_bar_is_lifted_after_the_record_moved_to_another_code(world: World) -> None:
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h01", "dr-jiang", OTHER_CODE, active=False) == "OK"
    assert reinstate(world, REGULATOR, "h01", "dr-jiang")["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "OK"


def test_the_history_is_bounded(world: World) -> None:
    for _ in range(9):
        assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
        assert reinstate(world, REGULATOR, "h01", "dr-jiang")["changed"] is True
    history = registration(world, "h01", "dr-jiang")["reinstated"]
    assert len(history) == 8 and len({h["tx_id"] for h in history}) == 8


def test_who_may_reinstate_and_bad_arguments(world: World) -> None:
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    n = versions(world, "prac/h01/dr-jiang")
    assert reinstate(world, admin("h01"), "h01", "dr-jiang") == "ACCESS_DENIED"
    assert reinstate(world, admin("ins01"), "h01", "dr-jiang") == "ACCESS_DENIED"
    assert reinstate(world, who("reg01:auditor-fang:auditor"), "h01", "dr-jiang") == "WRONG_ROLE"
    assert reinstate(world, REGULATOR, "h01", "dr/jiang") == "BAD_ARGUMENTS"
    assert reinstate(world, REGULATOR, "", "dr-jiang") == "BAD_ARGUMENTS"
    assert reinstate(world, REGULATOR, "h01", "dr-nobody") == "NOT_FOUND"
    assert reinstate(world, REGULATOR, "h01", "") == "NOT_FOUND"
    assert versions(world, "prac/h01/dr-jiang") == n
    assert "revoked" in registration(world, "h01", "dr-jiang")


# ---------------------------------------------------------------- two suspensions, one code (reg6)


def test_two_suspensions_of_one_code_both_hold_its_bar(world: World) -> None:
    """Jiang is suspended through her record at h01, then again through her (inactive) record at
    h03. The bar named the first only: reinstating h01 deleted it while h03's suspension stood,
    and she was registered active again. Now the bar lists both; it goes with the last."""
    first = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    second = revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    assert second["barred"] == "praccode/" + JIANG_CODE
    bar = index(world, "praccode/" + JIANG_CODE)
    assert (bar["org"], bar["name"], bar["revoked"]) == ("h01", "dr-jiang", first)
    assert [(h["org"], h["revoked"]["tx_id"]) for h in bar["suspensions"]] == [
        ("h01", first["tx_id"]), ("h03", second["tx_id"])]
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["changed"] is True
    # h03's suspension still holds the code: h01's record is not reactivated, nobody registers it
    assert out["reactivated"] is False and out["reason"] == "REGISTRATION_REVOKED"
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False
    bar = index(world, "praccode/" + JIANG_CODE)
    assert (bar["org"], bar["name"], bar["revoked"]) == ("h03", "dr-jiang", second)
    assert len(bar["suspensions"]) == 1
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=10) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "REGISTRATION_REVOKED"
    assert issue(world, doctor=JIANG)[1].reason == "UNAUTHORIZED_PRESCRIBER"
    # the last one lifted: the bar goes (h03's record was inactive: it stays so), and h01's,
    # held back by it, is reactivated (reg7: it stayed inactive)
    last = reinstate(world, REGULATOR, "h03", "dr-jiang")
    assert last["reactivated"] is False and last["reason"] == "WAS_INACTIVE"
    assert [(r["org"], r["reactivated"]) for r in last["pending_reactivated"]] == [("h01", True)]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert issue(world, doctor=JIANG)[1].ok


def test_two_suspensions_lifted_in_the_other_order(world: World) -> None:
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert reinstate(world, REGULATOR, "h03", "dr-jiang")["changed"] is True
    bar = index(world, "praccode/" + JIANG_CODE)
    assert bar["org"] == "h01" and [h["org"] for h in bar["suspensions"]] == ["h01"]
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "REGISTRATION_REVOKED"
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["reactivated"] is True  # the last suspension: the bar goes, h01 holds her code
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    assert issue(world, doctor=JIANG)[1].ok


def test_two_suspensions_of_one_pharmacy_licence(world: World) -> None:
    assert revoke(world, REGULATOR, "p01", "", "LICENCE_SUSPENDED")["changed"] is True
    assert pharmacy(world, "p04", P01_LICENCE, active=False) == "OK"
    assert revoke(world, REGULATOR, "p04", "", "LICENCE_SUSPENDED")["changed"] is True
    assert [h["org"] for h in index(world, "pharmlic/" + P01_LICENCE)["suspensions"]] == ["p01", "p04"]
    out = reinstate(world, REGULATOR, "p01", "")
    assert out["reactivated"] is False and out["reason"] == "REGISTRATION_REVOKED"
    assert pharmacy(world, "p01", P01_LICENCE) == "REGISTRATION_REVOKED"
    assert issue(world, pharmacy="p01")[1].reason == "UNKNOWN_PHARMACY"
    assert reinstate(world, REGULATOR, "p04", "")["reason"] == "WAS_INACTIVE"
    assert index(world, "pharmlic/" + P01_LICENCE) == {"org": "p01", "name": ""}  # (reg7)
    assert pharmacy(world, "p01", P01_LICENCE) == "OK"


def test_a_final_revocation_over_two_suspensions_stays(world: World) -> None:
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h04", "dr-jiang", JIANG_CODE, active=False) == "OK"
    final = revoke(world, REGULATOR, "h04", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h04", "name": "dr-jiang", "revoked": final}
    for org in ("h01", "h03"):
        assert reinstate(world, REGULATOR, org, "dr-jiang")["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE)["revoked"] == final
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


# ---------------------------------------------------------------- what reinstating restores (reg6)


def test_a_record_its_organisation_wrote_since_is_not_reactivated(world: World) -> None:
    """Her organisation wrote the suspended record since (it retired her, updated it): its
    decision stands -- the record stays as it wrote it, the code free for it to register."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=11) == "OK"
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["reactivated"] is False and out["reason"] == "RECORD_CHANGED"
    assert events(world, "registry.reinstated")[-1]["reason"] == "RECORD_CHANGED"
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=11) == "OK"


def test_a_suspended_site_is_not_reactivated_beside_its_holder(world: World) -> None:
    """A site's registration suspended loses its slot; the holder authorises it anew."""
    with_site(world)
    assert revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    out = reinstate(world, REGULATOR, "h02", "dr-jiang")
    assert out["reactivated"] is False and out["reason"] == "CODE_IN_USE"
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert authorize(world, "h01", JIANG_CODE, "h02") == "OK"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "OK"


def test_reinstating_a_holder_restores_the_sites_still_in_force(world: World) -> None:
    """Suspending the holder withdrew its sites (h02 registered and active, h04 authorised only,
    h03 registered). Reinstated, she holds the code again with the sites whose own registration
    is still in force: h02 active again, h04 authorised; h03's registration, revoked meanwhile
    (its organisation closed), is not restored and the event says so."""
    with_site(world)
    assert authorize(world, "h01", JIANG_CODE, "h03") == "OK"
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert authorize(world, "h01", JIANG_CODE, "h04") == "OK"
    mark = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    assert mark["sites"] == {"h02": "dr-jiang", "h03": "dr-jiang", "h04": ""}
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert revoke(world, REGULATOR, "h03", "dr-jiang", "ORGANISATION_CLOSED")["changed"] is True
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["reactivated"] is True
    assert out["sites_restored"] == ["h02", "h04"]
    assert out["sites_not_restored"] == {"h03": "REGISTRATION_REVOKED"}
    assert index(world, "praccode/" + JIANG_CODE) == {
        "org": "h01", "name": "dr-jiang", "sites": {"h02": "dr-jiang", "h04": ""}}
    assert registration(world, "h02", "dr-jiang")["licence_active"] is True
    assert registration(world, "h03", "dr-jiang")["licence_active"] is False
    assert issue(world, doctor=who("h02:dr-jiang:doctor"))[1].ok
    assert issue(world, doctor=JIANG)[1].ok
    assert events(world, "registry.reinstated")[-1]["sites_not_restored"] == {"h03": "REGISTRATION_REVOKED"}
    assert {"code": JIANG_CODE, "site": "h02", "allowed": True} in events(world, "registry.practice_site")
    # h04 registers her as the site it is again
    assert practitioner(world, "h04", "dr-jiang", JIANG_CODE, years=10) == "OK"


def test_a_site_its_organisation_wrote_since_keeps_what_it_wrote(world: World) -> None:
    with_site(world)
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, active=False, years=11) == "OK"
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["sites_restored"] == ["h02"]  # the authorisation: its registration as it wrote it
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=11) == "OK"


def test_a_suspension_the_previous_registry_wrote_is_reinstated_as_then(world: World) -> None:
    """A mark without ``was_active`` (written before reinstating reactivated): the record is left
    inactive as the previous registry left it (NOT_RECORDED), the bar lifted all the same."""
    import json

    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    key = ("registry", "prac/h01/dr-jiang")
    rec = json.loads(world.chain.state.values[key])
    del rec["revoked"]["was_active"]
    world.chain.state.values[key] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["reactivated"] is False and out["reason"] == "NOT_RECORDED"
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=10) == "OK"
