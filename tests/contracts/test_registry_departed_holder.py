"""A code's index entry naming a registration no longer in force under it (reg8): its holder
moved to another code -- and was suspended there -- or let its licence lapse, the entry kept
while a site practised under the code. A revocation for the licence of the last registration
practising under that code left it free: the entry named somebody, so nothing barred it, and
anyone took the suspended (revoked) person's code over at once."""

from __future__ import annotations

from tests.contracts.chain import who
from tests.contracts.flows import JIANG, issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, P01_LICENCE, index, pharmacy, practitioner
from tests.contracts.test_registry_reinstatement import OTHER_CODE, reinstate
from tests.contracts.test_registry_residuals import REGULATOR, registration, with_site
from tests.contracts.test_registry_revocation import revoke

SITE = who("h02:dr-jiang:doctor")


def _moved_then_suspended(world: World) -> None:
    """h01 (holder, h02 its site) moves Jiang to another code: the old code's entry still names
    h01's record, kept while h02 practises under it. (Suspended there, h01's record took the
    site with it since review22 -- test_registry_outlived_revocation --; so it is not here.)"""
    with_site(world)
    assert practitioner(world, "h01", "dr-jiang", OTHER_CODE) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang",
                                                      "sites": {"h02": "dr-jiang"}}
    # the site practises on under the old code (its own registration)
    assert issue(world, doctor=SITE)[1].ok


def test_the_last_registration_under_a_departed_holders_code_suspended_bars_it(world: World) -> None:
    _moved_then_suspended(world)
    mark = revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    assert mark["barred"] == "praccode/" + JIANG_CODE
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h02", "name": "dr-jiang", "revoked": mark}
    # nobody takes the suspended person's code over: her site under another name, another
    # organisation, the departed holder moving back
    assert practitioner(world, "h02", "dr-jiang-2", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h01", "dr-x", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert not issue(world, doctor=SITE)[1].ok
    # lifted: the site holds the code again, as it practised before
    out = reinstate(world, REGULATOR, "h02", "dr-jiang")
    assert out["reactivated"] is True and out["reason"] == ""
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h02", "name": "dr-jiang"}
    assert registration(world, "h02", "dr-jiang")["licence_active"] is True
    assert issue(world, doctor=SITE)[1].ok


def test_a_final_revocation_of_the_last_one_bars_the_code_for_good(world: World) -> None:
    _moved_then_suspended(world)
    mark = revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h02", "name": "dr-jiang", "revoked": mark}
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_a_lapsed_holders_code_is_barred_with_its_last_site(world: World) -> None:
    """The holder let the licence lapse (same code): the site's licence revoked left the code
    free -- her old organisation made her active again at once under it."""
    with_site(world)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE)["revoked"]["reason"] == "LICENCE_SUSPENDED"
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_another_reason_leaves_the_entry_and_a_holder_in_force_keeps_the_code(world: World) -> None:
    """Unchanged: a registration ended for another reason ends no licence (the code is taken
    over, as before), and a site suspended beside its holder in force leaves the holder holding
    the code."""
    _moved_then_suspended(world)
    assert revoke(world, REGULATOR, "h02", "dr-jiang", "ORGANISATION_CLOSED")["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang", "sites": {}}
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-jiang"}


def test_a_site_suspended_beside_its_holder_in_force_bars_nothing(world: World) -> None:
    with_site(world)
    mark = revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    # (kept to bar the code once the holder no longer practises: test_registry_outlived_revocation)
    assert index(world, "praccode/" + JIANG_CODE) == {
        "org": "h01", "name": "dr-jiang", "sites": {},
        "outlived": [{"org": "h02", "name": "dr-jiang", "tx_id": mark["tx_id"]}]}
    assert issue(world, doctor=JIANG)[1].ok


def test_a_lapsed_pharmacy_licence_is_barred_with_the_last_registration_carrying_it(world: World) -> None:
    """p01 lets its licence lapse (the entry kept, naming it); p02 registers the same number
    inactive and is suspended: the number stayed free -- p01 active again under it at once."""
    assert pharmacy(world, "p01", P01_LICENCE, active=False) == "OK"
    assert index(world, "pharmlic/" + P01_LICENCE) == {"org": "p01", "name": ""}
    assert pharmacy(world, "p02", P01_LICENCE, active=False) == "OK"
    assert revoke(world, REGULATOR, "p02", "", "LICENCE_SUSPENDED")["changed"] is True
    assert index(world, "pharmlic/" + P01_LICENCE)["revoked"]["reason"] == "LICENCE_SUSPENDED"
    assert pharmacy(world, "p01", P01_LICENCE) == "REGISTRATION_REVOKED"
