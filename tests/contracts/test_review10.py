"""Review of the second wave of registry and settlement changes (review10)."""

from __future__ import annotations

from tests.contracts.chain import who
from tests.contracts.flows import issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, P01_LICENCE, index, pharmacy, practitioner
from tests.contracts.test_registry_residuals import REGULATOR, registration, with_site
from tests.contracts.test_registry_revocation import revoke, versions

OTHER_CODE = "D500103000777"


def test_a_revoked_licence_is_not_registered_again_under_another_name(world: World) -> None:
    """A regulator revoked Jiang's licence (LICENCE_REVOKED): her record stays inactive, but the
    code -- her licence -- was freed, so her organisation registered her again at once under
    another name (or another organisation did) and she issued as before. The code stays barred."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_REVOKED")["changed"] is True
    bar = index(world, "praccode/" + JIANG_CODE)
    assert bar is not None and bar["revoked"]["reason"] == "LICENCE_REVOKED"
    n = versions(world, "praccode/" + JIANG_CODE)
    assert practitioner(world, "h01", "dr-jiang-2", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert versions(world, "praccode/" + JIANG_CODE) == n
    assert issue(world, doctor=who("h01:dr-jiang-2:doctor"))[1].reason == "UNAUTHORIZED_PRESCRIBER"
    # an inactive registration under the code is still written, and moving the revoked record
    # to another code (inactive) does not lift the bar
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert practitioner(world, "h01", "dr-jiang", OTHER_CODE, active=False) == "OK"
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert index(world, "praccode/" + JIANG_CODE)["revoked"] == bar["revoked"]


def test_a_site_of_a_revoked_licence_does_not_take_the_code_over(world: World) -> None:
    """Revoking the holder's licence withdrew its site (made inactive, not revoked): the site
    registered her again active at once and, the code freed, became its holder."""
    with_site(world)
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=10) == "REGISTRATION_REVOKED"
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert index(world, "praccode/" + JIANG_CODE)["org"] == "h01"
    assert issue(world, doctor=who("h02:dr-jiang:doctor"))[1].reason == "UNAUTHORIZED_PRESCRIBER"


def test_an_organisation_closed_still_frees_the_code(world: World) -> None:
    """Reasons about the registration, not her licence, leave the code free for her next one."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "ORGANISATION_CLOSED")["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE) == "OK"


def test_a_barred_code_is_not_reindexed_for_a_legacy_registration(world: World) -> None:
    """A legacy active record of a barred code (written before the index) is not indexed."""
    from tests.contracts.test_registry_residuals import LEGACY_CODE, legacy, reindex

    legacy(world)  # h01/dr-legacy, active, unindexed
    assert practitioner(world, "h02", "dr-dup", LEGACY_CODE) == "OK"
    assert revoke(world, REGULATOR, "h02", "dr-dup", "LICENCE_REVOKED")["changed"] is True
    n = versions(world, "praccode/" + LEGACY_CODE)
    assert reindex(world, REGULATOR, "h01", "dr-legacy") == "REGISTRATION_REVOKED"
    assert versions(world, "praccode/" + LEGACY_CODE) == n


def test_a_revoked_pharmacy_licence_is_not_registered_again_elsewhere(world: World) -> None:
    """A pharmacy's licence revoked: another organisation registered the freed licence number
    active at once. It stays barred; the revoked pharmacy may still write itself inactive under
    another licence without lifting the bar."""
    assert revoke(world, REGULATOR, "p01", "", "LICENCE_REVOKED")["changed"] is True
    bar = index(world, "pharmlic/" + P01_LICENCE)
    assert bar is not None and bar["org"] == "p01" and bar["revoked"]["reason"] == "LICENCE_REVOKED"
    n = versions(world, "pharmlic/" + P01_LICENCE)
    assert pharmacy(world, "p04", P01_LICENCE) == "REGISTRATION_REVOKED"
    assert pharmacy(world, "p01", "LIC-P01-NEW", active=False) == "OK"
    assert pharmacy(world, "p04", P01_LICENCE) == "REGISTRATION_REVOKED"
    assert versions(world, "pharmlic/" + P01_LICENCE) == n
