"""ctx.history's pages, metadata reads and gas, through both runners (the backend's own
bounds -- bytes, gas left, snapshot height -- are tested on a real ledger in
tests/peer/test_redteam_history.py)."""

from __future__ import annotations

import pytest

from node.errors import RxError
from node.peer.history import HistoryReadError
from node.sandbox import types as t
from node.sandbox.api import (
    GAS_BYTES_PER_UNIT,
    GAS_HISTORY,
    GAS_HISTORY_BLOCK,
    GAS_HISTORY_BLOCK_BYTES_PER_UNIT,
    GAS_HISTORY_ENTRY,
    history_gas,
)
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import MemBackend, call, value

FULL_BLOCK = 4 << 20


@pytest.fixture(params=["inprocess", "sandbox"])
def runner(request: pytest.FixtureRequest, sandbox: Sandbox) -> object:
    return InProcessRunner() if request.param == "inprocess" else sandbox


HIST = '''
from rxchain_contract import Context

def old(ctx: Context, key: str, limit: int) -> list:
    return ctx.history(key, limit)

def page(ctx: Context, key: str, limit: int, start: int, values: bool) -> list:
    return ctx.history(key, limit, start, values)

def named(ctx: Context, key: str) -> list:
    return ctx.history(key, limit=2, start=1, values=False)

def bad(ctx: Context, key: str, start: Any, values: Any) -> str:
    try:
        ctx.history(key, 1, start, values)
    except ValueError as exc:
        return str(exc)
    return "accepted"

def every(ctx: Context, key: str, size: int) -> list:
    out = []
    got = ctx.history(key, size, 0)
    while len(got) > 0:
        out.extend([h["value"] for h in got])
        got = ctx.history(key, size, len(out))
    return out
'''


def _backend(block_bytes: int) -> MemBackend:
    """Five versions of ``k``: blocks 3, 3, 5 (a delete), 7, 9."""
    be = MemBackend()
    be.hist[("demo", "k")] = [
        t.HistoryEntry("tx-a", 3, 1000, False, b'{"v":1}', block_bytes),
        t.HistoryEntry("tx-b", 3, 1001, False, b'{"v":"' + b"x" * 1000 + b'"}', block_bytes),
        t.HistoryEntry("tx-c", 5, 2000, True, None),
        t.HistoryEntry("tx-d", 7, 3000, False, b'{"v":4}', block_bytes),
        t.HistoryEntry("tx-e", 9, 4000, False, b'{"v":5}', block_bytes),
    ]
    return be


def test_a_page_starts_at_its_version_and_reads_on(runner) -> None:
    be = _backend(100)
    got = value(call(runner, HIST, "page", {"key": "k", "limit": 2, "start": 1, "values": True}, be))
    assert [(h["tx_id"], h["block"], h["is_delete"]) for h in got] == [("tx-b", 3, False), ("tx-c", 5, True)]
    assert got[0]["value"] == {"v": "x" * 1000} and got[1]["value"] is None
    assert be.log[-1] == ("history", "demo", "k", 2, 1, True)
    # read page by page to the end: every value once, oldest first
    every = value(call(runner, HIST, "every", {"key": "k", "size": 2}, _backend(100)))
    assert every == [{"v": 1}, {"v": "x" * 1000}, None, {"v": 4}, {"v": 5}]
    assert value(call(runner, HIST, "page", {"key": "k", "limit": 5, "start": 5, "values": True},
                      _backend(100))) == []


def test_a_metadata_read_has_no_values_and_pays_no_block(runner) -> None:
    be = _backend(FULL_BLOCK)
    r = call(runner, HIST, "page", {"key": "k", "limit": 10, "start": 0, "values": False}, be)
    assert [(h["tx_id"], h["timestamp_ms"], h["value"]) for h in value(r)] == [
        ("tx-a", 1000, None), ("tx-b", 1001, None), ("tx-c", 2000, None), ("tx-d", 3000, None),
        ("tx-e", 4000, None)]
    assert be.log[-1] == ("history", "demo", "k", 10, 0, False)
    named = value(call(runner, HIST, "named", {"key": "k"}, _backend(FULL_BLOCK)))
    assert [h["tx_id"] for h in named] == ["tx-b", "tx-c"] and {h["value"] for h in named} == {None}
    # 20 gas per version and nothing for the full blocks they were written in
    with_values = call(runner, HIST, "page", {"key": "k", "limit": 10, "start": 0, "values": True},
                       _backend(FULL_BLOCK))
    blocks = 3 * (GAS_HISTORY_BLOCK + FULL_BLOCK // GAS_HISTORY_BLOCK_BYTES_PER_UNIT)
    assert with_values.gas_used - r.gas_used >= blocks


def test_history_gas_rises_with_the_bytes_of_the_blocks_read(runner) -> None:
    """History cost 1000 + 20 per version whatever the peer read for it (a full 4 MiB block per
    version: ~1.2 ms); a block read now pays its bytes."""
    small = call(runner, HIST, "old", {"key": "k", "limit": 10}, _backend(1000))
    full = call(runner, HIST, "old", {"key": "k", "limit": 10}, _backend(FULL_BLOCK))
    assert value(small) == value(full)
    # three runs of versions with values in one block (3, 7, 9); the delete reads none
    per_run = FULL_BLOCK // GAS_HISTORY_BLOCK_BYTES_PER_UNIT - 1000 // GAS_HISTORY_BLOCK_BYTES_PER_UNIT
    assert full.gas_used - small.gas_used == 3 * per_run
    entries = _backend(FULL_BLOCK).hist[("demo", "k")]
    assert history_gas(entries, True) == (
        5 * GAS_HISTORY_ENTRY + 3 * (GAS_HISTORY_BLOCK + FULL_BLOCK // GAS_HISTORY_BLOCK_BYTES_PER_UNIT)
        + sum(len(e.value or b"") // GAS_BYTES_PER_UNIT for e in entries))
    assert history_gas(entries, False) == 5 * GAS_HISTORY_ENTRY


def test_a_start_is_paid_before_the_read(runner) -> None:
    # one gas per version stepped over, before the backend is asked: a start no gas pays for
    # reads nothing
    be = _backend(100)
    r = call(runner, HIST, "page", {"key": "k", "limit": 1, "start": 50_000, "values": True}, be, gas=40_000)
    assert (r.ok, r.reason) == (False, t.OUT_OF_GAS)
    assert [e for e in be.log if e[0] == "history"] == []
    cheap = call(runner, HIST, "page", {"key": "k", "limit": 1, "start": 5, "values": True}, _backend(100))
    dear = call(runner, HIST, "page", {"key": "k", "limit": 1, "start": 1005, "values": True}, _backend(100))
    assert value(cheap) == value(dear) == [] and dear.gas_used - cheap.gas_used == 1000


@pytest.mark.parametrize(("start", "values", "message"), [
    (-1, True, "start must be None or an integer 0-4294967295"),
    (1 << 32, True, "start must be None or an integer 0-4294967295"),
    (True, True, "start must be None or an integer 0-4294967295"),
    ("0", True, "start must be None or an integer 0-4294967295"),
    (0, 1, "values must be True or False"),
    (None, None, "values must be True or False"),
])
def test_bad_history_arguments_are_refused_before_the_read(runner, start: object, values: object,
                                                          message: str) -> None:
    be = _backend(100)
    assert value(call(runner, HIST, "bad", {"key": "k", "start": start, "values": values}, be)) == message
    assert [e for e in be.log if e[0] == "history"] == []


def test_the_old_call_asks_the_backend_as_before(runner) -> None:
    be = _backend(0)
    r = call(runner, HIST, "old", {"key": "k", "limit": 4}, be)
    assert [h["tx_id"] for h in value(r)] == ["tx-a", "tx-b", "tx-c", "tx-d"]
    assert be.log[-1] == ("history", "demo", "k", 4)  # no start: the oldest versions
    assert call(runner, HIST, "old", {"key": "none", "limit": 4}, MemBackend()).gas_used > GAS_HISTORY


def test_both_runners_answer_and_charge_alike(sandbox: Sandbox) -> None:
    for args in ({"key": "k", "limit": 3, "start": 1, "values": True},
                 {"key": "k", "limit": 9, "start": 0, "values": False}):
        here = call(InProcessRunner(), HIST, "page", args, _backend(FULL_BLOCK))
        there = call(sandbox, HIST, "page", args, _backend(FULL_BLOCK))
        assert (here.result_json, here.gas_used) == (there.result_json, there.gas_used)


class _RefusingBackend(MemBackend):
    """A backend whose history reads fail SIZE_LIMIT after reading ``spent`` gas of
    versions (as node.peer.history.select_history does), or with a plain error (None)."""

    def __init__(self, spent: int | None) -> None:
        super().__init__()
        self.spent = spent

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        if self.spent is None:
            raise RxError(t.SIZE_LIMIT, "refused")
        raise HistoryReadError(t.SIZE_LIMIT, "the values of its first 17 entries exceed 16 MiB",
                               self.spent)


def test_a_failed_read_pays_for_the_versions_it_read(runner) -> None:
    """A read failing SIZE_LIMIT past 16 MiB of values was charged its base alone: the peer
    read up to 16 MiB of values (and their blocks) for 1,000 gas. The host hands the gas of
    what it read with the failure; the Context charges it (at most the gas left: the call
    still ends SIZE_LIMIT), the same through both runners."""
    plain = call(runner, HIST, "old", {"key": "k", "limit": 1000}, _RefusingBackend(None))
    paid = call(runner, HIST, "old", {"key": "k", "limit": 1000}, _RefusingBackend(54_321))
    assert (plain.ok, plain.reason, paid.ok, paid.reason) == (False, t.SIZE_LIMIT, False, t.SIZE_LIMIT)
    assert paid.gas_used - plain.gas_used == 54_321
    capped = call(runner, HIST, "old", {"key": "k", "limit": 1000}, _RefusingBackend(10**12), gas=200_000)
    assert (capped.reason, capped.gas_used) == (t.SIZE_LIMIT, 200_000)
