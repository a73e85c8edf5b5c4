"""Review of settle7 (contracts/README.md "Moving an account"): the issuing hospital's copy of the
claim key reaches its doctors only, and what an insurer she left reads -- ``settlement.trail``'s
pages, ``prescription.show`` and ``prescription.trace`` -- tells nothing of the fills, claims and
steps after the move that ended its cover: not by a page's size or cursor, not by a count."""

from __future__ import annotations

from tests.contracts.flows import HE, JIANG, NEW, NURSE
from tests.contracts.rxclient import World
from tests.contracts.test_account_transfer import with_ins02
from tests.contracts.test_settle_residuals7 import H01_ADMIN, _issued_with_copy


def test_get_key_serves_the_hospitals_claim_key_copy_to_its_doctors_only(world: World) -> None:
    """The hospital grant's ``claim_wrapped_key`` went to every reader of the grant -- its
    pharmacists too, who hand no claim key over (grant_claim_key is a doctor's). Now to its
    doctors only; the record key as before."""
    with_ins02(world)
    rx_id = _issued_with_copy(world).args["rx_id"]
    for doctor in (JIANG, NEW):
        got = world.chain.submit("prescription", "get_key", doctor, rx_id=rx_id).unwrap()
        assert "claim_wrapped_key" in got and got["kind"] == "hospital", (doctor, got)
    got = world.chain.submit("prescription", "get_key", HE, rx_id=rx_id).unwrap()
    assert got["kind"] == "hospital" and got["wrapped_key"] and "claim_wrapped_key" not in got, got
    for other in (NURSE, H01_ADMIN):
        assert world.chain.submit("prescription", "get_key", other, rx_id=rx_id).unwrap()["error"] == "NO_KEY_GRANT"
