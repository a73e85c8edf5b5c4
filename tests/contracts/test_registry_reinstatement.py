"""A regulator lifting a suspension (``registry.reinstate_registration``): a revocation for
LICENCE_SUSPENDED barred the code (licence) for good, so a suspension never ended; every other
reason stays final."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import Who, admin, who
from tests.contracts.flows import JIANG, issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, P01_LICENCE, index, pharmacy, practitioner
from tests.contracts.test_registry_residuals import REGULATOR, registration
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
    assert rec["licence_active"] is False  # her organisation registers her again
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert events(world, "registry.reinstated")[-1] == {"org": "h01", "name": "dr-jiang"}
    assert issue(world, doctor=JIANG)[1].reason == "UNAUTHORIZED_PRESCRIBER"
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
    assert reinstate(world, REGULATOR, "p01", "")["changed"] is True
    assert index(world, "pharmlic/" + P01_LICENCE) is None
    assert pharmacy(world, "p01", P01_LICENCE) == "OK"
    assert issue(world, pharmacy="p01")[1].ok


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
