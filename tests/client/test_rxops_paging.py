"""trace and audit read every page of the contracts' paged views (start/next)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from client.errors import RxClientError
from client.rxops import RxOperations
from tests.client.contractgw import ContractGateway
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import AUDITOR, approved
from tests.contracts.rxclient import World
from tests.contracts.test_trace_history import _seed_versions


class PagedGateway:
    """Answers ``trace`` / ``audit_trail`` from a fixed list, ``size`` entries a page."""

    def __init__(self, entries: int, size: int, stuck: bool = False, unreadable: int = 0) -> None:
        self.entries, self.size, self.stuck, self.unreadable = entries, size, stuck, unreadable
        self.calls: list[dict[str, Any]] = []

    def evaluate(self, contract: str, fn: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(args)
        first = int(args["start"] or 0)
        after = min(self.entries, first + self.size)
        rows = [{"step": "lock", "actor": f"a{i}", "tx_id": "", "block": i} for i in range(first, after)]
        nxt = "" if after >= self.entries else str(first if self.stuck else after)
        key = "steps" if fn == "trace" else "events"
        return {"rx_id": args["rx_id"], "status": "DISPENSED", key: rows, "next": nxt,
                "unreadable": self.unreadable}


def _ops(gw: PagedGateway) -> RxOperations:
    ops = RxOperations.__new__(RxOperations)
    ops.s = cast(Any, type("S", (), {"gateway": gw})())
    return ops


@pytest.mark.parametrize(("entries", "size", "pages"), [(0, 5, 1), (5, 5, 1), (12, 5, 3), (2500, 1000, 3)])
def test_trace_and_audit_read_every_page(entries: int, size: int, pages: int) -> None:
    gw = PagedGateway(entries, size)
    trace = _ops(gw).trace("RX-1")
    assert [s["actor"] for s in trace["steps"]] == [f"a{i}" for i in range(entries)]
    assert trace["truncated"] is False and len(gw.calls) == pages
    audit = _ops(PagedGateway(entries, size)).audit("RX-1")
    assert [e["actor"] for e in audit["events"]] == [f"a{i}" for i in range(entries)]
    assert audit["truncated"] is False and audit["next"] == ""


def test_a_cursor_that_does_not_move_is_an_error() -> None:
    with pytest.raises(RxClientError) as err:
        _ops(PagedGateway(12, 5, stuck=True)).audit("RX-1")
    assert err.value.reason == "BAD_PAYLOAD"


def test_versions_past_the_history_window_are_reported() -> None:
    trace = _ops(PagedGateway(3, 5, unreadable=7)).trace("RX-1")
    assert trace["truncated"] is True and trace["unreadable"] == 7


def test_trace_follows_the_contracts_short_pages_of_a_big_record(world: World) -> None:  # noqa: F811
    """Over the real prescription contract: a 256 KiB record rewritten 70 times is traced in
    pages shorter than the 1000 steps asked for (each reads at most 16 MiB of values); the
    client reads every one, in order, and says nothing is missing."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    seeded = _seed_versions(world.chain, rx, 70, "consent", {"org": "h02"}, pad=250_000)
    gw = ContractGateway(world, AUDITOR)
    ops = RxOperations.__new__(RxOperations)
    ops.s = cast(Any, SimpleNamespace(gateway=gw))
    calls: list[dict[str, Any]] = []
    evaluate = gw.evaluate

    def counting(contract: str, fn: str, args: Any, transient: Any = None) -> Any:
        calls.append(args)
        return evaluate(contract, fn, args, transient)

    gw.evaluate = counting  # type: ignore[method-assign]
    trace = ops.trace(rx)
    assert [s["step"] for s in trace["steps"]] == ["issue", "review"] + ["consent"] * 70
    assert [s["tx_id"] for s in trace["steps"][2:]] == seeded
    assert trace["truncated"] is False and len(calls) >= 2
