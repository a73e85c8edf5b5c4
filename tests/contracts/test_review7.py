"""review7: residuals of the registry's site withdrawal, the settlement's unsettled-fill moves
and the trace cursors (contract tests on the in-memory ledger)."""

from __future__ import annotations

from tests.contracts.chain import admin
from tests.contracts.rxclient import World
from tests.contracts.test_registry_decisions import JIANG_CODE, practitioner
from tests.contracts.test_registry_residuals import REGULATOR, with_site, withdraw


def _versions(world: World, key: str) -> int:
    return len(world.chain.state.versions.get(("registry", key), []))


def test_withdrawing_a_site_never_authorised_writes_nothing(world: World) -> None:
    """A withdrawal naming an organisation the code's entry does not list (never authorised,
    or withdrawn already) rewrote the entry and emitted ``registry.practice_site`` -- an
    audit event saying the regulator (or a lapsed holder) withdrew a site that never was one.
    It answers the entry as it is now, and writes and emits nothing."""
    with_site(world)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    key = "praccode/" + JIANG_CODE
    for caller in (REGULATOR, admin("h01")):
        before = (_versions(world, key), len(world.chain.events))
        out = world.chain.submit("registry", "authorize_practice_site", caller, code=JIANG_CODE,
                                 site="h03", allowed=False)
        assert out.ok, (out.reason, out.message)
        assert out.value["sites"] == {"h02": "dr-jiang"}
        assert out.events == () and (_versions(world, key), len(world.chain.events)) == before
    # a real withdrawal still writes, and a second one of the same site writes nothing more
    assert withdraw(world, REGULATOR, "h02") == "OK"
    after = (_versions(world, key), len(world.chain.events))
    assert withdraw(world, admin("h01"), "h02") == "OK"
    assert (_versions(world, key), len(world.chain.events)) == after
