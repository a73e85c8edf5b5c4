"""Red-team review of moving an account (review4): the insurer a patient asks to leave cannot
keep her by withdrawing or replacing her request."""

from __future__ import annotations

from tests.contracts.chain import admin, who
from tests.contracts.flows import CLERK, CLERK2
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import INS02_POLICY, call, with_ins02, zhang

INS03_POLICY = {**INS02_POLICY, "insurer": "ins03"}
CLERK3 = who("ins03:clerk-xu:clerk")


def test_her_insurer_neither_withdraws_nor_replaces_her_own_request(world: World) -> None:
    with_ins02(world)
    world.set_policy(INS03_POLICY, 0).unwrap()
    world.chain.advance(1)
    mine = call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert mine["requested_by"] == "patient"
    # the insurer she leaves: no withdrawal, no replacement by a request of its own (to an
    # insurer that would decline, or one of its choosing) -- by clerk or admin
    for caller in (CLERK, admin("ins01")):
        assert call(world, "cancel_transfer", caller) == "ACCESS_DENIED"
        assert call(world, "request_transfer", caller, to_insurer="ins03") == "ACCESS_DENIED"
    assert call(world, "accept_transfer", CLERK3) == "NOT_FOUND"
    # her request stands: the insurer asked takes her
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"
    # she replaces and withdraws her own; the insurer asked declines
    call(world, "request_transfer", zhang(world), to_insurer="ins01")
    assert call(world, "request_transfer", zhang(world), to_insurer="ins03")["to"] == "ins03"
    assert call(world, "cancel_transfer", CLERK3)["requested_by"] == "patient"  # declined
    call(world, "request_transfer", zhang(world), to_insurer="ins03")
    assert call(world, "cancel_transfer", zhang(world))["to"] == "ins03"
    # a request her insurer made: it replaces and withdraws it, and so may she
    assert call(world, "request_transfer", CLERK2, to_insurer="ins01")["requested_by"] == "ins02"
    assert call(world, "request_transfer", CLERK2, to_insurer="ins03")["to"] == "ins03"
    assert call(world, "cancel_transfer", CLERK2)["to"] == "ins03"
    call(world, "request_transfer", CLERK2, to_insurer="ins03")
    assert call(world, "request_transfer", zhang(world), to_insurer="ins01")["requested_by"] == "patient"
    assert call(world, "cancel_transfer", CLERK2) == "ACCESS_DENIED"
