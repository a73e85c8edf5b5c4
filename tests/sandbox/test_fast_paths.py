"""Fast paths of the engine give exactly what the general code gives (values, errors, gas)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.sandbox import canonical
from node.sandbox import types as t
from node.sandbox.engine import fresh_copy, invalid_invocation, is_flat
from node.sandbox.errors import BadValue, SizeLimit
from node.sandbox.inprocess import InProcessRunner
from tests.sandbox.helpers import call, make_inv, value


def reference_nodes(value: Any, max_nodes: int) -> int:
    """The general walk of canonical.check_value (explicit stack), for comparison."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise SizeLimit("too many")
        tv = type(v)
        if tv is str or tv is int or tv is bool or v is None:
            continue
        if depth >= canonical.MAX_DEPTH:
            raise BadValue("deep")
        if tv is dict:
            for k, item in v.items():
                if type(k) is not str:
                    raise BadValue("key")
                stack.append((item, depth + 1))
        elif tv is list or tv is tuple:
            stack.extend((item, depth + 1) for item in v)
        else:
            raise BadValue("type")
    return nodes


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (BadValue, SizeLimit) as exc:
        return type(exc).__name__


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(json_like, st.sampled_from([1, 3, 10, 1 << 20]))
def test_node_count_matches_the_general_walk(value: Any, max_nodes: int) -> None:
    assert outcome(canonical.check_value, value, "v", max_nodes) == outcome(
        reference_nodes, value, max_nodes)


@pytest.mark.parametrize("depth", [63, 64, 65])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_depth_limit_is_unchanged(depth: int, kind: str) -> None:
    v: Any = 1
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    assert outcome(canonical.check_value, v, "v") == outcome(reference_nodes, v, 1 << 20)


def test_shared_substructures_stay_bounded() -> None:
    v = [[1] * 1000] * 1000
    with pytest.raises(SizeLimit):
        canonical.check_value(v, "v", 5000)


def test_flat_module_values() -> None:
    shared = [1]
    assert is_flat({"a": {"x": "y", "z": ("p", 1)}, "b": [1, "s"], "c": {1, 2}})
    assert not is_flat({"a": [[1]]})  # nested list needs a deep copy
    assert not is_flat({"a": shared, "b": shared})  # aliasing must be kept
    assert not is_flat({"a": (1, [2])})
    values = {"a": {"x": "y"}, "b": [1, ("t",)], "c": {3}}
    assert fresh_copy(values) == values
    for name, v in fresh_copy(values).items():
        assert v is not values[name]


FLAT = '''
from rxchain_contract import Context

ESC = {"a": "b"}
ROLES = {"hospital": ("doctor", "nurse")}
ORDER = [3, 1, 2]
SEEN = {"x"}


def touch(ctx: Context, who: str) -> dict:
    ESC[who] = ctx.tx_id
    ROLES[who] = ("clerk",)
    ORDER.append(len(ORDER))
    ORDER.sort()
    SEEN.add(who)
    return {"esc": ESC, "roles": ROLES, "order": ORDER, "seen": sorted(SEEN)}
'''


def test_flat_module_values_are_fresh_for_every_call_with_the_same_gas() -> None:
    cached, fresh = InProcessRunner(), InProcessRunner(module_cache=False)
    first = call(cached, FLAT, "touch", {"who": "insurer"})
    for _ in range(3):
        assert call(cached, FLAT, "touch", {"who": "insurer"}) == first
        assert call(fresh, FLAT, "touch", {"who": "insurer"}) == first
    assert value(first)["order"] == [1, 2, 3, 3]


REPLACE = '''
from rxchain_contract import Context


def rep(ctx: Context, s: str, old: str, new: str) -> str:
    return s.replace(old, new)
'''


@pytest.mark.parametrize(("s", "old", "new"), [
    ("abc" * 100, "x", "yy"), ("abc" * 100, "b", "yy"), ("abc", "", "-"), ("", "a", "b"),
    ("a" * 40, "a", ""),
])
def test_replace_charges_by_the_documented_formula(s: str, old: str, new: str) -> None:
    """gas(replace) = 1 + (len(s) + len(result)) // 32, with or without matches."""
    runner = InProcessRunner()
    args, base_args = {"s": s, "old": old, "new": new}, {"s": "", "old": "q", "new": ""}
    r, base = call(runner, REPLACE, "rep", args), call(runner, REPLACE, "rep", base_args)
    assert value(r) == s.replace(old, new)
    n = len(s.replace(old, new))
    extra_args = len(make_inv(REPLACE, "rep", args).args_json) // 32 - len(
        make_inv(REPLACE, "rep", base_args).args_json) // 32
    extra_result = len(r.result_json) // 32 - len(base.result_json) // 32
    assert r.gas_used - base.gas_used == (len(s) + n) // 32 + extra_args + extra_result


def test_limits_are_still_validated() -> None:
    ok = make_inv(REPLACE, "rep", {})
    assert invalid_invocation(ok) is None
    bad = make_inv(REPLACE, "rep", {}, limits=t.SandboxLimits(max_events=1 << 32))
    assert invalid_invocation(bad) == "limits.max_events is out of range"
    bad2 = make_inv(REPLACE, "rep", {}, limits=t.SandboxLimits(wall_timeout_s=0))
    assert invalid_invocation(bad2) == "limits.wall_timeout_s must be positive"


SET_ORDER = '''
from rxchain_contract import Context

S = {x for x in [0, 1, 2, 4, 16]}
NESTED = [{"k": {3, 11, 19}}]


def f(ctx: Context) -> list:
    return [[x for x in S], [x for x in NESTED[0]["k"]]]
'''


def test_module_sets_iterate_as_the_module_body_built_them() -> None:
    """A copied set can iterate in another order than the one built by the module body
    (its table size differs): modules holding sets run afresh, like the reference path."""
    cached, fresh = InProcessRunner(), InProcessRunner(module_cache=False)
    want = value(call(fresh, SET_ORDER, "f", {}))
    assert want[0] == [x for x in {x for x in [0, 1, 2, 4, 16]}]  # noqa: C416 - built as the contract does
    for _ in range(3):
        assert value(call(cached, SET_ORDER, "f", {})) == want
