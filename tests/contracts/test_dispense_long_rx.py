"""Dispense applies issue's long-prescription class rule on the formulary as of the dispense."""

from __future__ import annotations

import pytest

from tests.contracts.flows import WANG, approved, dispense
from tests.contracts.rxclient import World
from tests.contracts.test_open_findings import ASSESSED, LONG, call, reclassify


@pytest.mark.parametrize("controlled", ["ANTIMICROBIAL", "SPECIAL_STORAGE"])
def test_a_drug_reclassified_into_a_long_rx_excluded_class_is_not_dispensed_on_a_long_rx(
    world: World, controlled: str
) -> None:
    prep = approved(world, drugs=[("amlodipine", 28)], **LONG, **ASSESSED)
    rx = prep.args["rx_id"]
    assert call(world, "lock", WANG, rx) == "OK"
    world.chain.advance(60_000)
    reclassify(world, "amlodipine", controlled)
    out = dispense(world, prep)
    assert (out.ok, out.reason) == (False, "LONGRX_EXCLUDED_CLASS") and controlled in out.message
    world.chain.advance(60_000)
    reclassify(world, "amlodipine", "NONE")
    assert dispense(world, prep).unwrap()["fill"] == 1


def test_the_same_class_on_an_ordinary_prescription_is_dispensed(world: World) -> None:
    prep = approved(world)
    assert call(world, "lock", WANG, prep.args["rx_id"]) == "OK"
    reclassify(world, "amlodipine", "ANTIMICROBIAL")
    assert dispense(world, prep).ok
