"""A revocation for the licence (LICENCE_SUSPENDED, LICENCE_REVOKED) of a registration whose
code (licence) another registration still held in force -- a site's beside its holder, an
inactive record of the code beside the one practising -- bars nothing while that one practises
(reg8: test_registry_departed_holder). Once nobody held the code in force any more -- the
holder let it lapse, moved to another code, was revoked for another reason -- it was free
while the revocation still stood: anyone took the suspended (revoked for good) person's code
over at once, the order of the two events deciding what reg8 bars (review22)."""

from __future__ import annotations

import json

import pytest

from tests.contracts.chain import who
from tests.contracts.flows import JIANG, issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, P01_LICENCE, authorize, index, pharmacy, practitioner
from tests.contracts.test_registry_pending import squat
from tests.contracts.test_registry_reinstatement import OTHER_CODE, reinstate
from tests.contracts.test_registry_residuals import REGULATOR, registration, with_site
from tests.contracts.test_registry_revocation import revoke

SITE = who("h02:dr-jiang:doctor")


def test_a_site_revoked_for_good_beside_its_holder_bars_the_code_once_the_holder_lapses(world: World) -> None:
    with_site(world)
    mark = revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    # the holder practises on under the code (the regulator revoked the site's registration)
    assert issue(world, doctor=JIANG)[1].ok
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h02", "name": "dr-jiang", "revoked": mark}
    # nobody takes the revoked licence's code over: another hospital, the holder's own
    # organisation under another name, the holder back
    assert practitioner(world, "h03", "dr-x", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h01", "dr-x", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_a_site_suspended_beside_its_holder_bars_the_code_once_the_holder_is_closed(world: World) -> None:
    with_site(world)
    mark = revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "ORGANISATION_CLOSED")["changed"] is True
    bar = index(world, "praccode/" + JIANG_CODE)
    assert bar["revoked"]["tx_id"] == mark["tx_id"] and [h["org"] for h in bar["suspensions"]] == ["h02"]
    assert registration(world, "h02", "dr-jiang")["revoked"]["barred"] == "praccode/" + JIANG_CODE
    assert practitioner(world, "h03", "dr-x", JIANG_CODE) == "REGISTRATION_REVOKED"
    # lifted: the code is free, the site's registration active again holding it
    out = reinstate(world, REGULATOR, "h02", "dr-jiang")
    assert out["reactivated"] is True, out
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h02", "name": "dr-jiang"}
    assert issue(world, doctor=SITE)[1].ok


def test_a_site_suspended_beside_its_holder_bars_the_code_once_the_holder_moves_away(world: World) -> None:
    with_site(world)
    revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")
    assert practitioner(world, "h01", "dr-jiang", OTHER_CODE) == "OK"
    assert index(world, "praccode/" + JIANG_CODE)["revoked"]["reason"] == "LICENCE_SUSPENDED"
    assert practitioner(world, "h03", "dr-x", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_a_lifted_suspension_leaves_the_holder_free_to_lapse_and_return(world: World) -> None:
    """The bar stands only while the revocation does: lifted, the holder lapses and comes back
    (and the code goes to whoever registers it once nobody holds it, as before)."""
    with_site(world)
    revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")
    reinstate(world, REGULATOR, "h02", "dr-jiang")  # (CODE_IN_USE: h01 holds the code)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert "revoked" not in index(world, "praccode/" + JIANG_CODE)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "OK"
    assert issue(world, doctor=JIANG)[1].ok


def test_a_pharmacy_licence_suspended_beside_its_holder_is_barred_once_the_holder_moves(world: World) -> None:
    """p03 registers p01's licence number inactive and is suspended under it (p01 holds it in
    force); p01 moves to another number: the suspended number was free at once."""
    assert pharmacy(world, "p03", P01_LICENCE, active=False) == "OK"
    assert revoke(world, REGULATOR, "p03", "", "LICENCE_SUSPENDED")["changed"] is True
    assert index(world, "pharmlic/" + P01_LICENCE) == {
        "org": "p01", "name": "", "outlived": [{"org": "p03", "name": "", "tx_id": suspension_tx(world)}]}
    assert pharmacy(world, "p01", "YP-CQ-500105-0999") == "OK"
    assert index(world, "pharmlic/" + P01_LICENCE)["revoked"]["reason"] == "LICENCE_SUSPENDED"
    assert pharmacy(world, "p01", P01_LICENCE) == "REGISTRATION_REVOKED"


def suspension_tx(world: World) -> str:
    raw = world.chain.state.values[("registry", "pharmacy/p03")]
    return str(json.loads(raw)["revoked"]["tx_id"])


def test_the_revocations_an_entry_outlives_are_bounded(world: World) -> None:
    """At most 15 standing beside the holder (the bar they make, with the revocation making it,
    keeps at most 16 entries); lifting one makes room. A 16th goes through (review24: it was
    refused LIMIT_EXCEEDED) but is kept in none: the code is barred by the 15 kept."""
    squat(world, JIANG_CODE, 16, 15, prefix="dr-x")
    kept = index(world, "praccode/" + JIANG_CODE)["outlived"]
    assert revoke(world, REGULATOR, "h03", "dr-x15", "LICENCE_SUSPENDED")["changed"] is True
    assert index(world, "praccode/" + JIANG_CODE)["outlived"] == kept
    reinstate(world, REGULATOR, "h03", "dr-x0")  # (WAS_INACTIVE)
    assert len(index(world, "praccode/" + JIANG_CODE)["outlived"]) == 14
    assert practitioner(world, "h03", "dr-x0", JIANG_CODE, active=False) == "OK"
    assert revoke(world, REGULATOR, "h03", "dr-x0", "LICENCE_SUSPENDED")["changed"] is True
    assert len(index(world, "praccode/" + JIANG_CODE)["outlived"]) == 15
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False) == "OK"
    bar = index(world, "praccode/" + JIANG_CODE)
    assert len(bar["suspensions"]) == 15 and bar["revoked"]["reason"] == "LICENCE_SUSPENDED"


def test_standing_revocations_never_shield_a_site_from_the_regulator(world: World) -> None:
    """review24: h03 registered Jiang's code inactive under 15 names, each suspended by the
    regulator beside h01 holding the code: the suspension of her site at h02 (active) was then
    refused LIMIT_EXCEEDED, and the site practised on. Now it goes through (kept in no list
    beyond 15), and a final revocation is always kept -- alone: it bars the code for good once
    nobody holds it, whatever suspensions stand beside it."""
    with_site(world)
    for i in range(15):
        assert practitioner(world, "h03", f"dr-x{i}", JIANG_CODE, active=False) == "OK"
        assert revoke(world, REGULATOR, "h03", f"dr-x{i}", "LICENCE_SUSPENDED")["changed"] is True
    out = revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")
    assert out != "LIMIT_EXCEEDED" and out["changed"] is True
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert not issue(world, doctor=SITE)[1].ok
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h03", "dr-y", JIANG_CODE, active=False) == "OK"
    final = revoke(world, REGULATOR, "h03", "dr-y", "LICENCE_REVOKED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE)["outlived"] == [
        {"org": "h03", "name": "dr-y", "tx_id": final["tx_id"]}]
    assert issue(world, doctor=JIANG)[1].ok  # (the holder practises on)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-y", "revoked": final}
    for org, name in (("h01", "dr-jiang"), ("h02", "dr-jiang"), ("h04", "dr-z")):
        assert practitioner(world, org, name, JIANG_CODE) == "REGISTRATION_REVOKED"
    # (the suspensions beside it lifted: the code stays barred for good)
    for i in range(15):
        reinstate(world, REGULATOR, "h03", f"dr-x{i}")
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-y", "revoked": final}


# ---------------------------------------------------------------- a departed holder revoked


def _departed(world: World) -> None:
    """h01 (holder, h02 its site) moves Jiang to another code: the old code's entry still names
    h01's record, kept while h02 practises under it on h01's authorisation."""
    with_site(world)
    assert practitioner(world, "h01", "dr-jiang", OTHER_CODE) == "OK"
    assert registration(world, "h01", "dr-jiang")["left"] == [JIANG_CODE]


def test_suspending_a_departed_holder_withdraws_its_sites_under_the_code_it_left(world: World) -> None:
    """Revoking a holder withdraws the sites practising on its authorisation; moving the holder
    to another code first kept them practising under the old one (her organisation's move
    decided what the regulator's suspension took), and the code came free to anyone once they
    stopped. Lifted, the entry and its site come back as they were."""
    _departed(world)
    mark = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    assert mark["left"] == {JIANG_CODE: {"sites": {"h02": "dr-jiang"}, "site_active": ["h02"]}}
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert not issue(world, doctor=SITE)[1].ok
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang", "revoked": mark}
    assert practitioner(world, "h03", "dr-x", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["reactivated"] is True and out["left_sites_restored"] == {JIANG_CODE: ["h02"]}
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang",
                                                      "sites": {"h02": "dr-jiang"}}
    assert registration(world, "h01", "dr-jiang")["left"] == [JIANG_CODE]
    assert registration(world, "h02", "dr-jiang")["licence_active"] is True
    assert issue(world, doctor=SITE)[1].ok


def test_a_departed_holder_revoked_for_good_or_closed(world: World) -> None:
    """For good: the code it left barred for good, its site withdrawn. Closed (not her licence):
    its site withdrawn, the code free, as its current code's."""
    _departed(world)
    mark = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang", "revoked": mark}
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert "left" not in registration(world, "h01", "dr-jiang")


def test_a_departed_holder_closed_leaves_the_code_it_left_free(world: World) -> None:
    _departed(world)
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "ORGANISATION_CLOSED")["changed"] is True
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "OK"


def test_the_codes_a_record_left_are_bounded(world: World) -> None:
    """At most 8 codes whose entry still names the record, a site practising under each: the
    move leaving a 9th is refused LIMIT_EXCEEDED, nothing written; a code whose site stops
    practising leaves the list."""
    codes = [f"D5001030009{i:02d}" for i in range(10)]
    for i in range(9):
        assert practitioner(world, "h01", "dr-jiang", codes[i]) == "OK"
        assert authorize(world, "h01", codes[i], "h02") == "OK"
        assert practitioner(world, "h02", f"dr-s{i}", codes[i]) == "OK"
    assert registration(world, "h01", "dr-jiang")["left"] == codes[0:8]
    n = world.chain.state.values.copy()
    assert practitioner(world, "h01", "dr-jiang", codes[9]) == "LIMIT_EXCEEDED"
    assert world.chain.state.values == n
    assert practitioner(world, "h02", "dr-s0", codes[0], active=False) == "OK"
    assert practitioner(world, "h01", "dr-jiang", codes[9]) == "OK"
    assert registration(world, "h01", "dr-jiang")["left"] == codes[1:9]


# ---------------------------------------------------------------- lifted: the holder first


@pytest.mark.parametrize("first", ["h01", "h02"])
def test_the_code_s_holder_gets_it_back_before_its_site(world: World, first: str) -> None:
    """review24: her site at h02 suspended beside h01 holding the code (outlived), then h01
    suspended (the bar held by both): lifted holder first, h01 waited for the site's
    suspension, and lifting that one gave the code to the site -- reactivated before those
    waiting -- and refused h01, the code's holder, CODE_IN_USE (its organisation locked out
    while the site practised, on the authorisation of nobody). Whatever the order, the holder
    takes its code back; the site, withdrawn by its own suspension, is authorised anew."""
    with_site(world)
    revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")
    revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")
    second = "h02" if first == "h01" else "h01"
    outs = {first: reinstate(world, REGULATOR, first, "dr-jiang")}
    assert outs[first]["reactivated"] is False and outs[first]["reason"] == "REGISTRATION_REVOKED"
    outs[second] = reinstate(world, REGULATOR, second, "dr-jiang")
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    assert registration(world, "h01", "dr-jiang")["licence_active"] is True
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    assert issue(world, doctor=JIANG)[1].ok
    site = outs["h02"] if first == "h01" else outs["h01"]["pending_reactivated"][0]
    assert site["reactivated"] is False and site["reason"] == "CODE_IN_USE"
    assert authorize(world, "h01", JIANG_CODE, "h02") == "OK"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "OK"


def test_a_departed_holder_with_many_sites_is_suspended_and_reinstated(world: World) -> None:
    """review24: a holder that left 3 codes (and holds a 4th), 8 sites practising under each,
    emitted two events per site withdrawn (and per site restored): 66 and more, past the 64 an
    invocation may emit -- the regulator's suspension (and its lifting) was refused SIZE_LIMIT,
    the sites practising on. The codes it left now take one event each."""
    codes = [f"D50010300098{i}" for i in range(4)]
    sites = [f"h{n:02d}" for n in range(2, 10)]
    for i, code in enumerate(codes):
        assert practitioner(world, "h01", "dr-jiang", code) == "OK"
        for site in sites:
            assert authorize(world, "h01", code, site) == "OK"
            assert practitioner(world, site, f"dr-s{i}", code) == "OK"
    assert registration(world, "h01", "dr-jiang")["left"] == codes[0:3]
    out = world.chain.submit("registry", "revoke_registration", REGULATOR, org="h01", name="dr-jiang",
                             reason="LICENCE_SUSPENDED")
    assert out.ok, out.reason
    assert len(out.events) <= 64
    for i in range(4):
        assert not any(registration(world, site, f"dr-s{i}")["licence_active"] for site in sites)
    left = [json.loads(e.payload_json) for e in out.events if e.name == "registry.left_sites"]
    assert left == [
        {"code": code, "allowed": False, "sites": sites, "active": sites} for code in codes[0:3]]
    back = world.chain.submit("registry", "reinstate_registration", REGULATOR, org="h01", name="dr-jiang")
    assert back.ok, back.reason
    assert back.value["reactivated"] is True
    assert back.value["left_sites_restored"] == dict.fromkeys(codes[0:3], sites)
    for i in range(4):
        assert all(registration(world, site, f"dr-s{i}")["licence_active"] for site in sites)
