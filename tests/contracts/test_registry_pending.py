"""Suspensions of one code (reg7): the registration reinstated while another suspension still
barred its code stayed inactive for good -- lifting the last suspension now reactivates it,
re-checked; a registration ended (ORGANISATION_CLOSED...) while suspended is ended at once and
the suspension's bar stays until lifted or made final; a code holds a bounded number of
suspensions."""

from __future__ import annotations

from tests.contracts.chain import who
from tests.contracts.flows import JIANG, issue
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, P01_LICENCE, index, pharmacy, practitioner
from tests.contracts.test_registry_reinstatement import OTHER_CODE, reinstate
from tests.contracts.test_registry_residuals import REGULATOR, registration, with_site
from tests.contracts.test_registry_revocation import events, revoke, versions


def squat(world: World, code: str, written: int, suspended: int, prefix: str = "dr-jiang-") -> None:
    """h03 writes ``written`` records inactive under ``code`` (``prefix`` + i), then the regulator
    suspends the first ``suspended`` of them: the entries another organisation can put in a bar."""
    for i in range(written):
        assert practitioner(world, "h03", f"{prefix}{i}", code, active=False) == "OK"
    for i in range(suspended):
        assert revoke(world, REGULATOR, "h03", f"{prefix}{i}", "LICENCE_SUSPENDED")["changed"] is True


def _two_suspensions(world: World) -> None:
    """Jiang suspended at h01 (active, the code's holder), then through her inactive record at
    h03; h01 reinstated first is held back by h03's suspension."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["reactivated"] is False and out["reason"] == "REGISTRATION_REVOKED"
    assert out["pending"] == "praccode/" + JIANG_CODE
    assert out["reinstated"]["pending"] == "praccode/" + JIANG_CODE
    assert index(world, "praccode/" + JIANG_CODE)["pending"] == [
        {"org": "h01", "name": "dr-jiang", "tx_id": out["reinstated"]["tx_id"]}]
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False


def test_lifting_the_last_suspension_reactivates_the_one_held_back(world: World) -> None:
    _two_suspensions(world)
    last = reinstate(world, REGULATOR, "h03", "dr-jiang")
    assert last["reactivated"] is False and last["reason"] == "WAS_INACTIVE"
    assert last["pending_reactivated"] == [
        {"org": "h01", "name": "dr-jiang", "reactivated": True, "reason": "",
         "sites_restored": [], "sites_not_restored": {}}]
    assert events(world, "registry.reinstated")[-1]["pending_reactivated"] == last["pending_reactivated"]
    assert registration(world, "h01", "dr-jiang")["licence_active"] is True
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang"}
    assert issue(world, doctor=JIANG)[1].ok


def test_the_one_held_back_gets_its_sites_back(world: World) -> None:
    with_site(world)
    _two_suspensions(world)
    assert registration(world, "h02", "dr-jiang")["licence_active"] is False
    last = reinstate(world, REGULATOR, "h03", "dr-jiang")
    assert last["pending_reactivated"][0]["reactivated"] is True
    assert last["pending_reactivated"][0]["sites_restored"] == ["h02"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang",
                                                      "sites": {"h02": "dr-jiang"}}
    assert registration(world, "h02", "dr-jiang")["licence_active"] is True
    assert issue(world, doctor=who("h02:dr-jiang:doctor"))[1].ok


def test_the_one_held_back_is_checked_again(world: World) -> None:
    """Its organisation wrote it since: its decision stands (RECORD_CHANGED)."""
    _two_suspensions(world)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=11) == "OK"
    n = versions(world, "prac/h01/dr-jiang")
    last = reinstate(world, REGULATOR, "h03", "dr-jiang")
    assert last["pending_reactivated"] == [
        {"org": "h01", "name": "dr-jiang", "reactivated": False, "reason": "RECORD_CHANGED",
         "sites_restored": [], "sites_not_restored": {}}]
    assert versions(world, "prac/h01/dr-jiang") == n
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, years=11) == "OK"


def test_the_one_held_back_revoked_since_stays_revoked(world: World) -> None:
    _two_suspensions(world)
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "ORGANISATION_CLOSED")["changed"] is True
    last = reinstate(world, REGULATOR, "h03", "dr-jiang")
    assert last["pending_reactivated"][0]["reason"] == "REGISTRATION_REVOKED"
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False


def test_suspended_again_it_waits_no_more(world: World) -> None:
    """Held back, then suspended again: it holds the bar again (the pending entry goes)."""
    _two_suspensions(world)
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    bar = index(world, "praccode/" + JIANG_CODE)
    assert "pending" not in bar and [h["org"] for h in bar["suspensions"]] == ["h03", "h01"]
    last = reinstate(world, REGULATOR, "h03", "dr-jiang")
    assert last["pending_reactivated"] == []
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False


def test_a_final_revocation_drops_the_one_held_back(world: World) -> None:
    _two_suspensions(world)
    final = revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-jiang",
                                                      "revoked": final}
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"


def test_a_pharmacy_held_back_is_reactivated(world: World) -> None:
    assert revoke(world, REGULATOR, "p01", "", "LICENCE_SUSPENDED")["changed"] is True
    assert pharmacy(world, "p04", P01_LICENCE, active=False) == "OK"
    assert revoke(world, REGULATOR, "p04", "", "LICENCE_SUSPENDED")["changed"] is True
    out = reinstate(world, REGULATOR, "p01", "")
    assert out["reason"] == "REGISTRATION_REVOKED" and out["pending"] == "pharmlic/" + P01_LICENCE
    last = reinstate(world, REGULATOR, "p04", "")
    assert last["pending_reactivated"] == [
        {"org": "p01", "name": "", "reactivated": True, "reason": "",
         "sites_restored": [], "sites_not_restored": {}}]
    assert index(world, "pharmlic/" + P01_LICENCE) == {"org": "p01", "name": ""}
    assert issue(world, pharmacy="p01")[1].ok


# ---------------------------------------------------------------- a registration ended while suspended


def test_a_suspended_registration_is_ended_and_the_bar_stays(world: World) -> None:
    suspension = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["revoked"]
    out = revoke(world, REGULATOR, "h01", "dr-jiang", "ORGANISATION_CLOSED")
    assert out["changed"] is True
    mark = out["revoked"]
    assert mark["reason"] == "ORGANISATION_CLOSED" and mark["suspension"] == suspension
    assert registration(world, "h01", "dr-jiang")["revoked"] == mark
    # her licence is still suspended: the bar (the suspension's) stays
    assert index(world, "praccode/" + JIANG_CODE)["revoked"] == suspension
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    # idempotent: another reason, or a second suspension, writes nothing
    n = versions(world, "prac/h01/dr-jiang")
    for reason in ("ORGANISATION_CLOSED", "OTHER", "LICENCE_SUSPENDED"):
        assert revoke(world, REGULATOR, "h01", "dr-jiang", reason)["changed"] is False
    assert versions(world, "prac/h01/dr-jiang") == n
    # lifted: the bar goes, the registration stays ended
    lifted = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert lifted["changed"] is True and lifted["reactivated"] is False
    assert lifted["reason"] == "REVOCATION_FINAL" and lifted["reinstated"]["revoked"] == suspension
    rec = registration(world, "h01", "dr-jiang")
    assert rec["revoked"]["reason"] == "ORGANISATION_CLOSED" and "suspension" not in rec["revoked"]
    assert rec["licence_active"] is False and rec["reinstated"] == [lifted["reinstated"]]
    assert index(world, "praccode/" + JIANG_CODE) is None
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert reinstate(world, REGULATOR, "h01", "dr-jiang") == "REVOCATION_FINAL"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "OK"


def test_an_ended_registration_s_suspension_is_made_final(world: World) -> None:
    suspension = revoke(world, REGULATOR, "p01", "", "LICENCE_SUSPENDED")["revoked"]
    ended = revoke(world, REGULATOR, "p01", "", "DUPLICATE_REGISTRATION")["revoked"]
    out = revoke(world, REGULATOR, "p01", "", "LICENCE_REVOKED")
    assert out["changed"] is True
    final = out["revoked"]
    assert final["reason"] == "LICENCE_REVOKED" and final["suspension"] == suspension
    assert final["ended"]["reason"] == "DUPLICATE_REGISTRATION"
    assert final["ended"]["tx_id"] == ended["tx_id"] and "suspension" not in final["ended"]
    assert index(world, "pharmlic/" + P01_LICENCE) == {"org": "p01", "name": "", "revoked": final}
    assert reinstate(world, REGULATOR, "p01", "") == "REVOCATION_FINAL"
    assert pharmacy(world, "p04", P01_LICENCE) == "REGISTRATION_REVOKED"


# ---------------------------------------------------------------- the bar's list is bounded


def test_a_code_holds_a_bounded_number_of_suspensions(world: World) -> None:
    """At most 16 entries; a suspension finding them full goes through (review24: refused
    LIMIT_EXCEEDED, its registration shielded from the regulator -- its organisation moved it to
    another code and made it active): a registration waiting for the bar gives way first (it
    waits no more, ``pending_refused`` LIMIT_EXCEEDED: its organisation registers it again),
    else the suspension is kept in none, the code barred by those kept. The waiting one giving
    way is never the code's own holder (review25: the test below)."""
    with_site(world)  # (h02 a site of h01's: suspended beside it, then h01, the bar held by both)
    assert revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    squat(world, JIANG_CODE, 17, 13)
    assert reinstate(world, REGULATOR, "h02", "dr-jiang")["pending"] == "praccode/" + JIANG_CODE
    assert revoke(world, REGULATOR, "h03", "dr-jiang-13", "LICENCE_SUSPENDED")["changed"] is True
    bar = index(world, "praccode/" + JIANG_CODE)
    assert len(bar["suspensions"]) == 15 and len(bar["pending"]) == 1
    out = revoke(world, REGULATOR, "h03", "dr-jiang-14", "LICENCE_SUSPENDED")
    assert out != "LIMIT_EXCEEDED" and out["revoked"]["barred"] == "praccode/" + JIANG_CODE
    bar = index(world, "praccode/" + JIANG_CODE)
    assert len(bar["suspensions"]) == 16 and "pending" not in bar
    assert registration(world, "h02", "dr-jiang")["reinstated"][-1]["pending_refused"] == "LIMIT_EXCEEDED"
    assert revoke(world, REGULATOR, "h03", "dr-jiang-15", "LICENCE_SUSPENDED")["changed"] is True
    out = revoke(world, REGULATOR, "h03", "dr-jiang-16", "LICENCE_SUSPENDED")
    assert out != "LIMIT_EXCEEDED" and "barred" not in out["revoked"]
    assert out["revoked"]["counted"] == "praccode/" + JIANG_CODE  # (held unlisted, counted: reg9)
    assert index(world, "praccode/" + JIANG_CODE) == dict(bar, unlisted=2)
    assert registration(world, "h03", "dr-jiang-16")["revoked"]["reason"] == "LICENCE_SUSPENDED"
    assert practitioner(world, "h03", "dr-jiang-16", OTHER_CODE) == "REGISTRATION_REVOKED"
    # a final revocation still takes the bar over
    assert revoke(world, REGULATOR, "h03", "dr-jiang-16", "LICENCE_REVOKED")["changed"] is True
    assert "suspensions" not in index(world, "praccode/" + JIANG_CODE)


def test_nothing_waits_for_a_final_bar(world: World) -> None:
    """Held back by a final revocation's bar, a reinstated registration waits for nothing."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    final = revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    out = reinstate(world, REGULATOR, "h01", "dr-jiang")
    assert out["reason"] == "REGISTRATION_REVOKED" and out["pending"] == ""
    assert "pending" not in out["reinstated"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h03", "name": "dr-jiang",
                                                      "revoked": final}


def test_a_suspension_made_final_keeps_the_code_it_barred_before_the_record_moved(world: World) -> None:
    """review17: LICENCE_REVOKED over a suspension whose record had moved to another code since
    lifted its bar on the old code and barred only the new one: her old code came free -- her
    organisation registered her (another record of her, waiting for that bar) active under it
    at once, her licence revoked for good. The old code's bar is made final too."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h03", "dr-jiang", JIANG_CODE, active=False) == "OK"
    assert revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h03", "dr-jiang", OTHER_CODE, active=False) == "OK"  # moved away
    assert reinstate(world, REGULATOR, "h01", "dr-jiang")["pending"] == "praccode/" + JIANG_CODE
    final = revoke(world, REGULATOR, "h03", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    for code in (JIANG_CODE, OTHER_CODE):
        assert index(world, "praccode/" + code) == {"org": "h03", "name": "dr-jiang", "revoked": final}
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False


def test_a_lone_suspension_made_final_after_a_move_keeps_the_old_code_barred(world: World) -> None:
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    assert practitioner(world, "h01", "dr-jiang", OTHER_CODE, active=False) == "OK"
    final = revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_REVOKED")["revoked"]
    assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang", "revoked": final}
    assert practitioner(world, "h02", "dr-jiang", JIANG_CODE) == "REGISTRATION_REVOKED"
    assert reinstate(world, REGULATOR, "h01", "dr-jiang") == "REVOCATION_FINAL"


def test_a_site_suspended_with_its_holder_is_active_again_once_both_are_lifted(world: World) -> None:
    """review17: her licence suspended at both her registrations -- the holder's at h01, the
    site's at h02 -- and lifted at both (either order): the site stayed inactive, only
    authorised again, while lifting the holder's alone made it active. The holder's suspension
    made it inactive; the site's own suspension and its lifting -- the regulator's writes, no
    decision of h02 -- were taken for "written since". Now it is active again, once."""
    for first, second in (("h01", "h02"), ("h02", "h01")):
        with_site(world)
        assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
        assert revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
        outs = [reinstate(world, REGULATOR, first, "dr-jiang"), reinstate(world, REGULATOR, second, "dr-jiang")]
        assert registration(world, "h01", "dr-jiang")["licence_active"] is True
        assert registration(world, "h02", "dr-jiang")["licence_active"] is True
        assert index(world, "praccode/" + JIANG_CODE) == {"org": "h01", "name": "dr-jiang",
                                                          "sites": {"h02": "dr-jiang"}}
        assert sum(o["reason"] == "WAS_INACTIVE" for o in outs) == 1  # the site's own: the holder's did
        assert issue(world, doctor=who("h02:dr-jiang:doctor"))[1].ok
        # a site h02 wrote meanwhile stays as h02 left it (its decision stands)
        assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
        assert revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
        assert reinstate(world, REGULATOR, "h02", "dr-jiang")["reason"] == "WAS_INACTIVE"
        assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, active=False, years=12) == "OK"
        assert reinstate(world, REGULATOR, "h01", "dr-jiang")["sites_restored"] == ["h02"]
        assert registration(world, "h02", "dr-jiang")["licence_active"] is False
        assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=12) == "OK"  # h02 itself
        # ... also while it was suspended (inactive)
        assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
        assert revoke(world, REGULATOR, "h02", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
        assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, active=False, years=13) == "OK"
        assert reinstate(world, REGULATOR, "h02", "dr-jiang")["reason"] == "WAS_INACTIVE"
        assert reinstate(world, REGULATOR, "h01", "dr-jiang")["sites_restored"] == ["h02"]
        assert registration(world, "h02", "dr-jiang")["licence_active"] is False
        assert practitioner(world, "h02", "dr-jiang", JIANG_CODE, years=13) == "OK"


def test_a_full_bar_never_evicts_the_code_s_own_holder_waiting_for_it(world: World) -> None:
    """review25: a suspension finding the bar full made the registration waiting longest give
    way -- the code's own holder too. Another organisation's 15 records written inactive under
    the code and suspended, then a 16th, evicted the holder: once the regulator lifted them the
    code came free and that organisation took it over (registered under it at once), the holder
    refused CODE_IN_USE. The holder now keeps its place (the new suspension is kept in none, the
    code barred by those kept and by it, counted: reg9) and is reactivated when the bar goes."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    squat(world, JIANG_CODE, 16, 15)
    assert reinstate(world, REGULATOR, "h01", "dr-jiang")["pending"] == "praccode/" + JIANG_CODE
    out = revoke(world, REGULATOR, "h03", "dr-jiang-15", "LICENCE_SUSPENDED")
    assert out["changed"] is True and "barred" not in out["revoked"]
    bar = index(world, "praccode/" + JIANG_CODE)
    assert len(bar["suspensions"]) == 15 and [p["org"] for p in bar["pending"]] == ["h01"]
    assert "pending_refused" not in registration(world, "h01", "dr-jiang")["reinstated"][-1]
    assert practitioner(world, "h03", "dr-jiang-15", OTHER_CODE) == "REGISTRATION_REVOKED"
    for i in range(15):
        assert reinstate(world, REGULATOR, "h03", f"dr-jiang-{i}")["pending_reactivated"] == []
    last = reinstate(world, REGULATOR, "h03", "dr-jiang-15")  # (the one kept in none: reg9)
    assert [(p["org"], p["reactivated"]) for p in last["pending_reactivated"]] == [("h01", True)]
    assert registration(world, "h01", "dr-jiang")["licence_active"] is True
    assert practitioner(world, "h03", "dr-jiang-x", JIANG_CODE) == "CODE_IN_USE"
    assert issue(world)[1].ok


def test_a_full_bar_never_evicts_the_pharmacy_holding_the_licence(world: World) -> None:
    """review25: as the code's holder above, a pharmacy waiting for its licence's bar (active
    when suspended: it held the licence) was evicted by a 16th suspension of registrations other
    pharmacies wrote inactive under the licence, and one of them took the licence once they were
    lifted (LICENCE_IN_USE to the holder)."""
    others = [f"p{n}" for n in range(10, 26)]
    assert revoke(world, REGULATOR, "p01", "", "LICENCE_SUSPENDED")["changed"] is True
    for org in others:
        assert pharmacy(world, org, P01_LICENCE, active=False) == "OK"
    for org in others[0:15]:
        assert revoke(world, REGULATOR, org, "", "LICENCE_SUSPENDED")["changed"] is True
    assert reinstate(world, REGULATOR, "p01", "")["pending"] == "pharmlic/" + P01_LICENCE
    out = revoke(world, REGULATOR, others[15], "", "LICENCE_SUSPENDED")
    assert out["changed"] is True and "barred" not in out["revoked"]
    assert [p["org"] for p in index(world, "pharmlic/" + P01_LICENCE)["pending"]] == ["p01"]
    for org in others[0:15]:
        assert reinstate(world, REGULATOR, org, "")["pending_reactivated"] == []
    last = reinstate(world, REGULATOR, others[15], "")  # (the one kept in none: reg9)
    assert [(p["org"], p["reactivated"]) for p in last["pending_reactivated"]] == [("p01", True)]
    assert pharmacy(world, others[0], P01_LICENCE) == "LICENCE_IN_USE"
    assert issue(world, pharmacy="p01")[1].ok
