"""A value whose canonical JSON is far larger than its node count: refused before the
encoder builds it.  The node count bounds the walk of a value, not its text: ``[s] * 300``
of one 1,000,000-character string is 301 values and 300 MB of JSON, ``[BIG] * 100_000`` of
a 4096-bit literal 123 MB of digits.  ``ctx.put``, ``ctx.emit``, the result and
``ctx.canonical_json`` encoded it whole before the size check (SIZE_LIMIT after ~0.7 s of
CPU for 31,000 gas; MEMORY_LIMIT, which depends on the machine, a little further)."""

from __future__ import annotations

import json

import pytest

from node.sandbox import canonical
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import MemBackend, assert_serving, call, value

HEAD = "from rxchain_contract import Context\n\n"

SOURCE = HEAD + '''
def f(ctx: Context, use: str, copies: int) -> Any:
    x = "a" * 1000000
    v = [x] * copies
    if use == "put":
        ctx.put("k", v)
    elif use == "emit":
        ctx.emit("e", {"v": v})
    elif use == "canonical_json":
        return len(ctx.canonical_json(v))
    elif use == "int":
        return [10**1233] * (copies * 300)
    return v
'''.replace(") -> Any:", "):")


@pytest.mark.parametrize("use", ["put", "emit", "canonical_json", "result", "int"])
def test_a_huge_shared_value_is_refused_before_it_is_encoded(monkeypatch: pytest.MonkeyPatch, use: str) -> None:
    built: list[int] = []
    real = canonical._ENCODER.encode

    class Spy:
        def encode(self, v: object) -> str:
            text = real(v)
            built.append(len(text))
            return text

    monkeypatch.setattr(canonical, "_ENCODER", Spy())
    r = call(InProcessRunner(), SOURCE, "f", {"use": use, "copies": 300}, gas=10**7)
    assert (r.ok, r.reason) == (False, "SIZE_LIMIT"), (r.reason, r.message)
    assert all(n <= 1 << 20 for n in built), built  # nothing larger than the limit was built


def test_in_a_worker_a_gigabyte_of_json_is_size_limit_not_memory_limit(sandbox: Sandbox) -> None:
    r = call(sandbox, SOURCE, "f", {"use": "result", "copies": 3000}, gas=10**7)
    assert (r.ok, r.reason) == (False, "SIZE_LIMIT"), (r.reason, r.message)
    assert_serving(sandbox)


def test_values_under_the_limit_are_stored_and_charged_as_before(sandbox: Sandbox) -> None:
    src = HEAD + '''
def f(ctx: Context) -> dict:
    x = "a" * 300000
    ctx.put("k", [x, x, x])
    ctx.emit("e", {"v": [x, x]})
    return {"n": len(ctx.canonical_json([x, x, x])), "big": [10**1233] * 10}
'''
    be = MemBackend()
    a = call(InProcessRunner(), src, "f", backend=be)
    b = call(sandbox, src, "f")
    assert value(a)["n"] == 900_010
    assert json.loads(be.data[("demo", "k")]) == ["a" * 300000] * 3
    assert (a.result_json, a.gas_used, a.events) == (b.result_json, b.gas_used, b.events)


@pytest.mark.parametrize("v", [0, 9, 10, -10, 2**64, -(10**1233), 2**4096 - 1, True, None, "",
                               "ab\u0001", {"a": [1, "x"], "b": {}}, [[1, 2], {"k": None}], (1, "t")])
def test_min_chars_is_a_lower_bound(v: object) -> None:
    assert canonical.min_chars(v, 1 << 30) <= len(canonical.encode_text(v))
