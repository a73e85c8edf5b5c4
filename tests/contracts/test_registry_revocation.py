"""A regulator's licence revocation of a registration (``registry.revoke_registration``), and
a regulator's ``reindex`` never taking a code (or licence) over from a lapsed holder on an
organisation's behalf."""

from __future__ import annotations

import json
from typing import Any

from tests.contracts.chain import Who, admin, who
from tests.contracts.flows import JIANG, WANG, issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import (
    JIANG_CODE,
    P01_LICENCE,
    authorize,
    index,
    pharmacy,
    practitioner,
)
from tests.contracts.test_registry_residuals import (
    LEGACY_CODE,
    LEGACY_LICENCE,
    REGULATOR,
    legacy,
    registration,
    reindex,
    under_legacy_registry,
    with_site,
)


def revoke(world: World, caller: Who, org: str, name: str, reason: str = "LICENCE_REVOKED") -> Any:
    out = world.chain.submit("registry", "revoke_registration", caller, org=org, name=name,
                             reason=reason)
    return out.value if out.ok else out.reason


def versions(world: World, key: str) -> int:
    return len(world.chain.state.versions.get(("registry", key), []))


def events(world: World, name: str) -> list[dict[str, Any]]:
    return [json.loads(e.payload_json) for e in world.chain.events if e.name == name]


# ---------------------------------------------------------------- reindex by a regulator


def test_a_regulator_does_not_take_a_code_over_from_a_lapsed_holder(world: World) -> None:
    """The index names h02/dr-dup, whose licence lapsed: the legacy registration may take the
    code over, but that is h01's own call -- a regulator's reindex is refused, nothing written."""
    legacy(world)
    assert practitioner(world, "h02", "dr-dup", LEGACY_CODE) == "OK"
    assert practitioner(world, "h02", "dr-dup", LEGACY_CODE, active=False) == "OK"
    assert pharmacy(world, "p04", LEGACY_LICENCE) == "OK"
    assert pharmacy(world, "p04", LEGACY_LICENCE, active=False) == "OK"
    n_code, n_lic = versions(world, "praccode/" + LEGACY_CODE), versions(world, "pharmlic/" + LEGACY_LICENCE)
    out = world.chain.submit("registry", "reindex", REGULATOR, org="h01", name="dr-legacy")
    assert out.reason == "ACCESS_DENIED" and "h02/dr-dup" in out.message
    assert reindex(world, REGULATOR, "p03", "") == "ACCESS_DENIED"
    assert versions(world, "praccode/" + LEGACY_CODE) == n_code
    assert versions(world, "pharmlic/" + LEGACY_LICENCE) == n_lic
    assert index(world, "praccode/" + LEGACY_CODE) == {"org": "h02", "name": "dr-dup"}
    # the organisations' own admins take them over
    assert reindex(world, admin("h01"), "h01", "dr-legacy")["index"] == {"org": "h01", "name": "dr-legacy"}
    assert reindex(world, admin("p03"), "p03", "")["index"] == {"org": "p03", "name": ""}


def test_a_regulator_still_indexes_a_free_code_and_a_site_slot(world: World) -> None:
    legacy(world)
    assert reindex(world, REGULATOR, "h01", "dr-legacy")["changed"] is True  # nobody held it
    assert authorize(world, "h01", LEGACY_CODE, "h03") == "OK"

    def at_site() -> None:
        assert practitioner(world, "h03", "dr-legacy", LEGACY_CODE) == "OK"

    under_legacy_registry(world, at_site)
    assert reindex(world, REGULATOR, "h03", "dr-legacy")["index"] == {
        "org": "h01", "name": "dr-legacy", "sites": {"h03": "dr-legacy"}}
    # the holder itself, indexed already: nothing to take over
    assert reindex(world, REGULATOR, "h01", "dr-legacy")["changed"] is False


# ---------------------------------------------------------------- revoke_registration


def test_a_revoked_doctor_no_longer_issues_and_stays_inactive(world: World) -> None:
    assert issue(world, doctor=JIANG)[1].ok
    out = revoke(world, REGULATOR, "h01", "dr-jiang")
    assert out["changed"] is True and out["revoked"]["reason"] == "LICENCE_REVOKED"
    assert out["revoked"]["by_org"] == "reg01"
    rec = registration(world, "h01", "dr-jiang")
    assert rec["licence_active"] is False and rec["revoked"] == out["revoked"]
    # her licence revoked: the code stays barred, naming the revoked registration (review10)
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang",
                                                      "revoked": out["revoked"]}
    assert events(world, "registry.revoked")[-1] == {"org": "h01", "name": "dr-jiang",
                                                    "reason": "LICENCE_REVOKED"}
    # the prescription contract reads the record: a revoked doctor cannot issue
    assert issue(world, doctor=JIANG)[1].reason == "UNAUTHORIZED_PRESCRIBER"
    # her organisation cannot make the record active again (nothing written), under any code
    n = versions(world, "prac/h01/dr-jiang")
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=10) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h01", "dr-jiang", "D500103000777", years=10) == "REGISTRATION_REVOKED"
    assert versions(world, "prac/h01/dr-jiang") == n
    assert index(world, "praccode/D500103000777") is None
    # an inactive update is still written, and keeps the mark
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=11) == "OK"
    assert registration(world, "h01", "dr-jiang")["revoked"] == out["revoked"]
    # idempotent: nothing written again
    n = versions(world, "prac/h01/dr-jiang")
    again = world.chain.submit("registry", "revoke_registration", REGULATOR, org="h01",
                               name="dr-jiang", reason="OTHER")
    assert again.ok and again.value == {"org": "h01", "name": "dr-jiang",
                                        "revoked": out["revoked"], "changed": False}
    assert versions(world, "prac/h01/dr-jiang") == n and again.events == ()


def test_revoking_a_holder_withdraws_its_sites_and_frees_the_code(world: World) -> None:
    with_site(world)  # h01 holds Jiang's code, h02 registered her as a site
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "ORGANISATION_CLOSED")["changed"] is True
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert "revoked" not in registration(world, "h02", "dr-jiang")
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert {"code": JIANG_CODE, "site": "h02", "allowed": False} in events(world, "registry.practice_site")
    assert issue(world, doctor=who("h02:dr-jiang:doctor"))[1].reason == "UNAUTHORIZED_PRESCRIBER"
    # the code is free: a registration of her in force elsewhere holds it anew, with no sites
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h02", "name": "dr-jiang"}


def test_revoking_a_site_withdraws_it(world: World) -> None:
    with_site(world)
    mark = revoke(world, REGULATOR, "h02", "dr-jiang")["revoked"]
    # (the holder practising, her licence's revocation bars the code once she no longer does:
    # test_registry_outlived_revocation)
    assert index(world, "praccode/" + JIANG_CODE) == {
        "org": "h01", "name": "dr-jiang", "sites": {},
        "outlived": [{"org": "h02", "name": "dr-jiang", "tx_id": mark["tx_id"]}]}
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert registration(world, "h01", "dr-jiang")["licence_active"] is True  # the holder stays
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "REGISTRATION_REVOKED"
    # no longer a site: another name there is refused too
    assert practitioner(world, "h02", "dr-jiang-2", JIANG_CODE, years=10) == "CODE_IN_USE"
    assert issue(world, doctor=JIANG)[1].ok


def test_a_revoked_pharmacy_frees_its_licence_and_stays_inactive(world: World) -> None:
    out = revoke(world, REGULATOR, "p01", "", "ORGANISATION_CLOSED")
    assert out["changed"] is True and out["name"] == ""
    assert world.chain.query("registry", "get_pharmacy", JIANG, org="p01").unwrap()["active"] is False
    assert index(world, "pharmlic/" + P01_LICENCE) is None
    assert pharmacy(world, "p01", P01_LICENCE) == "REGISTRATION_REVOKED"
    assert issue(world, pharmacy="p01")[1].reason == "UNKNOWN_PHARMACY"
    assert revoke(world, REGULATOR, "p01", "")["changed"] is False
    assert pharmacy(world, "p04", P01_LICENCE) == "OK"
    # its pharmacist's own registration is another one, revoked on its own
    assert registration(world, "p01", WANG.name)["licence_active"] is True


def test_a_duplicate_legacy_registration_is_revoked_and_the_other_indexed(world: World) -> None:
    """Two legacy active records of one code: reindex indexes the first, refuses the second
    CODE_IN_USE; the regulator revokes the one that is not genuine, and indexes the other."""
    def write() -> None:
        assert practitioner(world, "h02", "dr-twin", LEGACY_CODE) == "OK"

    legacy(world)
    under_legacy_registry(world, write)
    assert reindex(world, admin("h02"), "h02", "dr-twin")["changed"] is True
    assert reindex(world, REGULATOR, "h01", "dr-legacy") == "CODE_IN_USE"
    assert revoke(world, REGULATOR, "h02", "dr-twin", "DUPLICATE_REGISTRATION")["changed"] is True
    assert index(world, "praccode/" + LEGACY_CODE) is None
    assert reindex(world, REGULATOR, "h01", "dr-legacy")["index"] == {"org": "h01", "name": "dr-legacy"}


def test_who_may_revoke_and_bad_arguments(world: World) -> None:
    n = versions(world, "prac/h01/dr-jiang")
    assert revoke(world, admin("h01"), "h01", "dr-jiang") == "ACCESS_DENIED"
    assert revoke(world, admin("ins01"), "h01", "dr-jiang") == "ACCESS_DENIED"
    assert revoke(world, who("reg01:auditor-fang:auditor"), "h01", "dr-jiang") == "WRONG_ROLE"
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "he prescribed too much") == "BAD_ARGUMENTS"
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "") == "BAD_ARGUMENTS"
    assert revoke(world, REGULATOR, "h01", "dr/jiang") == "BAD_ARGUMENTS"
    assert revoke(world, REGULATOR, "", "dr-jiang") == "BAD_ARGUMENTS"
    assert revoke(world, REGULATOR, "h01", "dr-nobody") == "NOT_FOUND"
    assert revoke(world, REGULATOR, "h01", "") == "NOT_FOUND"  # h01 has no pharmacy
    assert versions(world, "prac/h01/dr-jiang") == n
    assert registration(world, "h01", "dr-jiang")["licence_active"] is True
