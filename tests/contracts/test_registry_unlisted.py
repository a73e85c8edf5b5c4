"""Suspensions holding a full bar unlisted (reg9): a suspension finding its code's bar full (16
entries) goes through kept in no list (review24); the bar went once the regulator lifted those
listed, and the code was anyone's while that suspension stood. The bar now counts them
(``unlisted``, each mark's ``counted`` naming the bar) and goes only once its list is empty and
the count back to 0: lifting one, making it final (the code then barred for good) or lifting
the suspension of a registration ended while suspended takes one off."""

from __future__ import annotations

import json

from node.sandbox import canonical
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, index, practitioner
from tests.contracts.test_registry_reinstatement import OTHER_CODE, reinstate
from tests.contracts.test_registry_residuals import REGULATOR, registration
from tests.contracts.test_registry_revocation import revoke

BAR = "praccode/" + OTHER_CODE  # (a code nobody holds: the first suspension bars it)
JIANG_BAR = "praccode/" + JIANG_CODE


def _full_bar(world: World, code: str = OTHER_CODE) -> None:
    """h03 writes 17 records inactive under ``code`` and the regulator suspends each: the first
    16 listed in the bar, x16 kept in none -- counted."""
    for i in range(17):
        assert practitioner(world, "h03", f"x{i}", code, active=False) == "OK"
        out = revoke(world, REGULATOR, "h03", f"x{i}", "LICENCE_SUSPENDED")
        assert out["changed"] is True
    assert "barred" not in out["revoked"] and out["revoked"]["counted"] == "praccode/" + code
    bar = index(world, "praccode/" + code)
    assert len(bar["suspensions"]) == 16 and bar["unlisted"] == 1


def _lift_listed(world: World) -> None:
    for i in range(16):
        assert reinstate(world, REGULATOR, "h03", f"x{i}")["changed"] is True


def test_the_code_stays_barred_while_a_suspension_kept_in_no_list_stands(world: World) -> None:
    """The attack: x16's suspension kept in none, the regulator lifts the 16 listed -- before,
    the bar went and h04 registered the code at once, x16's suspension standing; now the bar
    stays (held unlisted only: ``suspensions`` [], ``unlisted`` 1) until x16 is lifted too."""
    _full_bar(world)
    _lift_listed(world)
    bar = index(world, BAR)
    assert bar is not None and bar["revoked"]["reason"] == "LICENCE_SUSPENDED"
    assert bar["suspensions"] == [] and bar["unlisted"] == 1
    assert practitioner(world, "h04", "dr-new", OTHER_CODE) == "REGISTRATION_REVOKED"
    assert practitioner(world, "h03", "x0", OTHER_CODE) == "REGISTRATION_REVOKED"
    # lifting it frees the code as usual
    assert reinstate(world, REGULATOR, "h03", "x16")["reason"] == "WAS_INACTIVE"
    assert index(world, BAR) is None
    assert practitioner(world, "h04", "dr-new", OTHER_CODE) == "OK"


def test_the_holder_waiting_is_reactivated_only_once_the_one_kept_in_none_is_lifted(world: World) -> None:
    """Jiang suspended at h01 (the code's holder), h03's 15 records beside it (the bar full);
    h01 reinstated waits for the bar, a 16th of h03's is kept in none (the holder keeps its
    place: review25). Lifting the 15 listed reactivated h01 while that 16th stood; now h01
    waits on until it is lifted, then takes its code back."""
    assert revoke(world, REGULATOR, "h01", "dr-jiang", "LICENCE_SUSPENDED")["changed"] is True
    for i in range(16):
        assert practitioner(world, "h03", f"x{i}", JIANG_CODE, active=False) == "OK"
    for i in range(15):
        assert revoke(world, REGULATOR, "h03", f"x{i}", "LICENCE_SUSPENDED")["changed"] is True
    assert reinstate(world, REGULATOR, "h01", "dr-jiang")["pending"] == JIANG_BAR
    assert revoke(world, REGULATOR, "h03", "x15", "LICENCE_SUSPENDED")["revoked"]["counted"] == JIANG_BAR
    for i in range(15):
        assert reinstate(world, REGULATOR, "h03", f"x{i}")["pending_reactivated"] == []
    assert registration(world, "h01", "dr-jiang")["licence_active"] is False
    assert [p["org"] for p in index(world, JIANG_BAR)["pending"]] == ["h01"]
    last = reinstate(world, REGULATOR, "h03", "x15")
    assert [(p["org"], p["reactivated"]) for p in last["pending_reactivated"]] == [("h01", True)]
    assert registration(world, "h01", "dr-jiang")["licence_active"] is True
    assert index(world, JIANG_BAR) == {"org": "h01", "name": "dr-jiang"}


def test_the_one_kept_in_none_made_final_bars_the_code_for_good(world: World) -> None:
    """x16 made final (LICENCE_REVOKED) after the listed ones were lifted: the code barred for
    good by its mark, as a final revocation does -- before, the code was free and h04 took it,
    the final revocation then kept beside it (``outlived``)."""
    _full_bar(world)
    _lift_listed(world)
    assert practitioner(world, "h04", "dr-new", OTHER_CODE, active=False) == "OK"
    assert practitioner(world, "h04", "dr-new", OTHER_CODE) == "REGISTRATION_REVOKED"
    final = revoke(world, REGULATOR, "h03", "x16", "LICENCE_REVOKED")["revoked"]
    assert final["suspension"]["counted"] == BAR
    assert index(world, BAR) == {"org": "h03", "name": "x16", "revoked": final}
    assert practitioner(world, "h04", "dr-new", OTHER_CODE) == "REGISTRATION_REVOKED"


def test_the_one_kept_in_none_made_final_first_is_no_longer_counted(world: World) -> None:
    """Made final while the listed ones stand, it takes the bar over (a final bar, no list)."""
    _full_bar(world)
    final = revoke(world, REGULATOR, "h03", "x16", "LICENCE_REVOKED")["revoked"]
    assert index(world, BAR) == {"org": "h03", "name": "x16", "revoked": final}
    _lift_listed(world)
    assert index(world, BAR) == {"org": "h03", "name": "x16", "revoked": final}


def test_the_one_kept_in_none_ended_holds_the_bar_until_lifted(world: World) -> None:
    """Its registration ended while suspended (OTHER: reg7), its suspension stands -- the bar
    stays, as for a listed one -- until the regulator lifts it (the registration stays ended)."""
    _full_bar(world)
    assert revoke(world, REGULATOR, "h03", "x16", "OTHER")["revoked"]["suspension"]["counted"] == BAR
    _lift_listed(world)
    assert index(world, BAR)["unlisted"] == 1
    assert practitioner(world, "h04", "dr-new", OTHER_CODE) == "REGISTRATION_REVOKED"
    out = reinstate(world, REGULATOR, "h03", "x16")
    assert out["reason"] == "REVOCATION_FINAL" and index(world, BAR) is None
    assert practitioner(world, "h04", "dr-new", OTHER_CODE) == "OK"


def test_a_new_suspension_joins_a_bar_held_unlisted_only(world: World) -> None:
    """A bar held by counted suspensions only takes a new suspension into its list; it goes
    once both are lifted, in either order."""
    _full_bar(world)
    _lift_listed(world)
    assert practitioner(world, "h04", "dr-y", OTHER_CODE, active=False) == "OK"
    out = revoke(world, REGULATOR, "h04", "dr-y", "LICENCE_SUSPENDED")
    assert out["revoked"]["barred"] == BAR
    bar = index(world, BAR)
    assert [h["org"] for h in bar["suspensions"]] == ["h04"] and bar["unlisted"] == 1
    assert (bar["org"], bar["name"]) == ("h04", "dr-y")
    reinstate(world, REGULATOR, "h03", "x16")
    assert "unlisted" not in index(world, BAR)
    reinstate(world, REGULATOR, "h04", "dr-y")
    assert index(world, BAR) is None


def test_a_bar_and_a_mark_written_before_the_count_work_as_before(world: World) -> None:
    """A bar written before reg9 (no ``unlisted``) and a suspension kept in none then (no
    ``counted``): lifting those listed lifts the bar, as it did; lifting the old one writes
    nothing to the code's entry."""
    _full_bar(world)
    for key in (("registry", BAR), ("registry", "prac/h03/x16")):
        rec = json.loads(world.chain.state.values[key])
        rec.pop("unlisted", None)
        rec.get("revoked", {}).pop("counted", None)
        world.chain.state.values[key] = canonical.dumps(rec)
    _lift_listed(world)
    assert index(world, BAR) is None
    assert practitioner(world, "h04", "dr-new", OTHER_CODE) == "OK"
    entry = index(world, BAR)
    assert reinstate(world, REGULATOR, "h03", "x16")["changed"] is True
    assert index(world, BAR) == entry
