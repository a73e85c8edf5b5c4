"""A suspension made final (review13): ``revoke_registration`` on a suspended registration
answered ``changed`` false whatever the reason, so the only way to revoke a suspended licence
was to reinstate the suspension first -- which, since reg6, makes the record active again
(her code and her sites with it) until the revocation commits -- and the regulator revoking
the licence was told "not changed" while the suspension, liftable by any regulator admin,
stood. LICENCE_REVOKED now makes the suspension final: the mark replaced (the suspension kept
in it), the suspension's bars lifted and the code (licence) barred for good."""

from __future__ import annotations

from typing import Any

from tests.contracts.flows import JIANG, issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, P01_LICENCE, index, pharmacy, practitioner
from tests.contracts.test_registry_residuals import REGULATOR, registration
from tests.contracts.test_registry_revocation import revoke, versions


def _reinstate(world: World, org: str, name: str) -> Any:
    out = world.chain.submit("registry", "reinstate_registration", REGULATOR, org=org, name=name)
    return out.value if out.ok else out.reason


def test_a_suspended_licence_is_revoked_without_being_reinstated(world: World) -> None:
    suspension = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    out = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_REVOKED")
    assert out["changed"] is True, out
    final = out["revoked"]
    assert final["reason"] == "LICENCE_REVOKED" and final["suspension"] == suspension
    rec = registration(world, "h01", "dr-jiang")
    assert rec["revoked"] == final and rec["licence_active"] is False
    # the code barred for good, by the final mark (no suspension left to lift)
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang",
                                                      "revoked": final}
    n = versions(world, "prac/h01/dr-jiang")
    assert _reinstate(world, "h01", "dr-jiang") == "REVOCATION_FINAL"
    assert versions(world, "prac/h01/dr-jiang") == n
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert issue(world, doctor=JIANG)[1].reason == "UNAUTHORIZED_PRESCRIBER"
    # idempotent from here, and another final reason over a suspension still writes nothing
    again = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_REVOKED")
    assert again["changed"] is False and again["revoked"] == final


def test_a_suspension_sharing_its_bar_is_made_final_and_the_bar_stays(world: World) -> None:
    """Two suspensions hold the code's bar; one made final takes the bar over, so lifting the
    other no longer frees the code."""
    revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_SUSPENDED")
    final = revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_REVOKED")
    assert final["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-jiang",
                                                      "revoked": final["revoked"]}
    out = _reinstate(world, "h01", "dr-jiang")
    assert out["changed"] is True and out["reactivated"] is False
    assert out["reason"] == "REGISTRATION_REVOKED"
    assert index(world, "praccode/" + JIANG_CODE)["revoked"] == final["revoked"]
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_a_suspended_pharmacy_licence_is_revoked(world: World) -> None:
    revoke(world, REGULATOR, "p01", "", "LICENCE_SUSPENDED")
    out = revoke(world, REGULATOR, "p01", "", "LICENCE_REVOKED")
    assert out["changed"] is True and out["revoked"]["reason"] == "LICENCE_REVOKED"
    assert index(world, "pharmlic/" + P01_LICENCE) == {"org": "p01", "name": "",
                                                       "revoked": out["revoked"]}
    assert _reinstate(world, "p01", "") == "REVOCATION_FINAL"
    assert pharmacy(world, "p01", P01_LICENCE) == "REGISTRATION_REVOKED"
    assert issue(world, pharmacy="p01")[1].reason == "UNKNOWN_PHARMACY"


def test_a_second_suspension_writes_nothing(world: World) -> None:
    """A suspension over a suspension writes nothing; a reason that ends the registration ends
    it, the suspension standing in its mark (reg7: test_registry_pending)."""
    suspension = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    n = versions(world, "prac/h01/dr-jiang")
    out = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")
    assert out["changed"] is False and out["revoked"] == suspension
    assert versions(world, "prac/h01/dr-jiang") == n
    for reason in ("ORGANISATION_CLOSED", "DUPLICATE_REGISTRATION", "OTHER"):
        out = revoke(world, REGULATOR, "h01", "dr-jiang", reason)
        assert out["revoked"]["suspension"] == suspension
        assert out["changed"] is (reason == "ORGANISATION_CLOSED")
