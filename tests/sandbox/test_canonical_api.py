"""``ctx.canonical_json``: node.crypto.canonical.canonical_json inside a contract, metered."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings

from node.crypto.canonical import canonical_json
from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.canonical_values import expected, json_values
from tests.sandbox.helpers import call, value

SOURCE = '''
from rxchain_contract import Context


def canon(ctx: Context, v: dict) -> str:
    return ctx.canonical_json(v["x"])


def odd(ctx: Context, kind: str) -> str:
    if kind == "set":
        return ctx.canonical_json([{1, 2}])
    if kind == "key":
        return ctx.canonical_json({1: 2})
    if kind == "surrogate":
        return ctx.canonical_json(["\\ud800"])
    if kind == "tuple":
        return ctx.canonical_json((1, "a"))
    return ctx.canonical_json("x" * 5000)
'''

@settings(max_examples=200, deadline=None)
@given(json_values)
def test_matches_the_node_canonical_encoding(v: Any) -> None:
    r = call(InProcessRunner(), SOURCE, "canon", {"v": {"x": v}})
    assert value(r) == expected(v)


def test_values_without_canonical_json_give_empty_text_and_limits_hold() -> None:
    runner = InProcessRunner()
    assert [value(call(runner, SOURCE, "odd", {"kind": k}))
            for k in ("set", "key", "surrogate", "tuple")] == ["", "", "", '[1,"a"]']
    big = call(runner, SOURCE, "odd", {"kind": "big"}, limits=t.SandboxLimits(max_value_bytes=1000))
    assert (big.ok, big.reason) == (False, "SIZE_LIMIT")


def test_gas_is_per_value_and_byte_and_the_same_in_the_worker(sandbox: Sandbox) -> None:
    small = {"x": [1, 2]}
    large = {"x": [1, 2] + ["abcdefgh" * 8] * 10}
    runner = InProcessRunner()
    r_small = call(runner, SOURCE, "canon", {"v": small})
    r_large = call(runner, SOURCE, "canon", {"v": large})
    text = canonical_json(large["x"])
    args_extra = len(json.dumps({"v": large}).encode()) // 32 - len(json.dumps({"v": small}).encode()) // 32
    result_extra = len(r_large.result_json) // 32 - len(r_small.result_json) // 32
    # 20 + 1 per JSON value + bytes/32: 13 values against 3
    api_extra = (20 + 13 + len(text) // 32) - (20 + 3 + len(canonical_json(small["x"])) // 32)
    assert r_large.gas_used - r_small.gas_used == args_extra + result_extra + api_extra
    assert sandbox.invoke(_inv(large), _NoBackend()) == r_large


def _inv(v: dict[str, Any]) -> t.Invocation:
    from tests.sandbox.helpers import make_inv

    return make_inv(SOURCE, "canon", {"v": v})


class _NoBackend:
    def get(self, namespace: str, key: str) -> bytes | None:
        return None

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        return []

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        return []

    def put(self, namespace: str, key: str, value: bytes) -> None:
        raise AssertionError("no writes")

    def delete(self, namespace: str, key: str) -> None:
        raise AssertionError("no writes")


BAD_BIG = '''
from rxchain_contract import Context


def bad(ctx: Context, n: int, kind: str, calls: int) -> int:
    tail = "\\ud800"
    if kind == "set":
        tail = [{1}]
    big = [0] * n + [tail]
    empty = 0
    for _ in range(calls):
        if ctx.canonical_json(big) == "":
            empty += 1
    return empty
'''


def test_values_without_canonical_json_pay_for_the_walk() -> None:
    """The walk (and the encoding up to a lone surrogate) is charged whatever the outcome:
    repeating canonical_json on a large invalid value costs gas per value, every call."""
    runner = InProcessRunner()
    for kind in ("surrogate", "set"):
        one = call(runner, BAD_BIG, "bad", {"n": 20000, "kind": kind, "calls": 1})
        five = call(runner, BAD_BIG, "bad", {"n": 20000, "kind": kind, "calls": 5})
        assert value(one) == 1 and value(five) == 5
        assert five.gas_used - one.gas_used >= 4 * 20000, (kind, one.gas_used, five.gas_used)
    capped = call(runner, BAD_BIG, "bad", {"n": 20000, "kind": "set", "calls": 10000},
                  gas=2_000_000)
    assert (capped.ok, capped.reason) == (False, "OUT_OF_GAS")
