"""The module body runs once per contract: calls must not notice (results, writes, gas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from tests.sandbox.helpers import MemBackend, call, value
from tests.sandbox.test_semantics import SNIPPETS

HEAD = "from rxchain_contract import Context\n\n"

MODULE = HEAD + '''
ROLES = {"hospital": ["doctor"], "pharmacy": ["pharmacist"]}
ALIAS = ROLES
PAIR = ([1], (2, [3]))
NAMES = ("a", "b")
LIMIT = 10 ** 3
SEEN = set()
SORT = sorted


def touch(ctx: Context, who: str) -> dict:
    ROLES.setdefault(who, []).append(ctx.tx_id)
    ALIAS["x"] = ["y"]
    PAIR[0].append(len(PAIR[0]))
    PAIR[1][1].append(9)
    SEEN.add(who)
    return {"roles": ROLES, "same": ALIAS is ROLES, "pair": PAIR, "seen": SORT(SEEN),
            "limit": LIMIT, "names": NAMES}
'''


def test_mutable_module_values_are_fresh_for_every_call() -> None:
    runner = InProcessRunner()
    first = value(call(runner, MODULE, "touch", {"who": "insurer"}, tx_id="tx-1"))
    for i in range(2, 5):
        again = value(call(runner, MODULE, "touch", {"who": "insurer"}, tx_id="tx-1"))
        assert again == first, i
    assert first["same"] is True  # aliasing between module names is kept
    assert first["roles"]["insurer"] == ["tx-1"] and first["pair"] == [[1, 1], [2, [3, 9]]]


def _both(source: str, function: str, args: dict[str, Any], **kw: Any) -> tuple[t.InvocationResult, ...]:
    out = []
    for cached in (True, False):
        runner = InProcessRunner(module_cache=cached)
        be = MemBackend()
        results = [call(runner, source, function, args, be, **kw) for _ in range(2)]
        assert results[0] == results[1]
        out.append((results[0], be.log))
    (a, log_a), (b, log_b) = out
    assert a == b and log_a == log_b
    return a, b


@pytest.mark.parametrize("body", SNIPPETS)
def test_cached_module_matches_fresh_execution(body: str) -> None:
    src = (
        HEAD + "TABLE = {'k': [1, 2]}\nBIG = 7 ** 20\n\n"
        "def _neg(x: int) -> int:\n    return -x\n\n"
        "def f(ctx: Context, a: int, b: int) -> list:\n"
        + "".join(f"    {ln}\n" for ln in body.splitlines())
    )
    a, _ = _both(src, "f", {"a": 7, "b": -3})
    assert a.ok and a.gas_used > 0


@pytest.mark.parametrize("gas", [5, 60, 10_000_000])
def test_module_gas_and_limits_match_fresh_execution(gas: int) -> None:
    src = HEAD + "T = [x * 2 for x in range(40)]\n\ndef f(ctx: Context) -> int:\n    return sum(T)\n"
    a, _ = _both(src, "f", {}, gas=gas)
    assert (a.ok, a.reason) == ((True, "") if gas > 100 else (False, "OUT_OF_GAS"))


def test_failing_module_body_takes_the_fresh_path() -> None:
    src = HEAD + "X = {}['missing']\n\ndef f(ctx: Context) -> int:\n    return 1\n"
    a, _ = _both(src, "f", {})
    assert (a.ok, a.reason) == (False, "CONTRACT_EXCEPTION") and "KeyError" in a.message


def test_stateful_module_values_take_the_fresh_path() -> None:
    src = HEAD + "IT = reversed([1, 2, 3])\n\ndef f(ctx: Context) -> list:\n    return list(IT)\n"
    runner = InProcessRunner()
    assert [value(call(runner, src, "f", {})) for _ in range(3)] == [[3, 2, 1]] * 3


CONTRACTS = sorted((Path(__file__).resolve().parents[2] / "contracts").glob("*.py"))


@pytest.mark.parametrize("path", CONTRACTS, ids=[p.name for p in CONTRACTS])
def test_project_contracts_use_the_module_cache(path: Path) -> None:
    from node.sandbox.engine import Engine

    engine = Engine()
    compiled = engine.load("x", path.read_text(encoding="utf-8"))
    assert engine._module(compiled, t.SandboxLimits(), 10_000_000) is not None


@pytest.mark.parametrize(
    "module",
    [
        "ITEMS = [0]\nPUSH = ITEMS.append\nCOPY = ITEMS.copy\n",
        "def _make() -> list:\n    box = []\n    def _push(x: int) -> list:\n"
        "        box.append(x)\n        return box\n    return [_push]\nPUSHERS = _make()\n"
        "PUSH = PUSHERS[0]\n\ndef _copy() -> list:\n    return PUSH(0)\n\nCOPY = _copy\n",
    ],
    ids=["bound-method", "closure"],
)
def test_module_values_bound_to_state_do_not_leak(module: str) -> None:
    src = HEAD + module + "\n\ndef f(ctx: Context) -> int:\n    PUSH(1)\n    return len(COPY())\n"
    runner = InProcessRunner()
    counts = [value(call(runner, src, "f", {})) for _ in range(3)]
    assert counts == [counts[0]] * 3
