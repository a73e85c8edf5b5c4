"""Methods of ranges and dict views reached around the meter.

* ``range.count(x)`` / ``range.index(x)`` answer an int in O(1), but compare anything else
  (a string, None, a list...) with every int of the range in C, ~20 ns each: a range is
  not a sized value for ``Meter.meth``, so it paid 1 gas -- ``range(10**7).count("x")``
  ran 0.2 s for 13 gas and ``range(10**18).count("x")`` until TIMEOUT, an outcome that
  depends on the machine (peers endorse differently).  The unbound ``range.count(r, x)``
  (``range`` is the raw builtin type) did the same.
* ``Meter.attr`` wrapped the bound methods of sized values only: ``f = d.keys().isdisjoint``
  (or ``f = r.count``) handed out the raw bound method, and calling ``f`` skipped the
  meter altogether (``f(range(2, 10**7))`` iterated 10**7 ints for 13 gas).
"""

from __future__ import annotations

import pytest

from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import assert_serving, call, value

HEAD = "from rxchain_contract import Context\n\n"

HOSTILE = {
    "bound": "return range(n).count('x')",
    "bound_index": "return range(n).index(None)",
    "bound_list": "return range(n).count([])",
    "unbound": "return range.count(range(n), 'x')",
    "unbound_index": "return range.index(range(n), None)",
    "bound_attr": "f = range(n).count\n    return f('x')",
    "unbound_attr": "f = range.index\n    return f(range(n), 'x')",
    "keys_isdisjoint_attr": "f = {1: 1}.keys().isdisjoint\n    return f(range(2, n))",
    "items_isdisjoint_attr": "f = {1: 1}.items().isdisjoint\n    return f(range(2, n))",
}


def _src(body: str) -> str:
    return HEAD + f"def f(ctx: Context, n: int) -> Any:\n    {body}\n".replace(" -> Any", "")


@pytest.mark.parametrize("use", sorted(HOSTILE))
def test_a_long_c_loop_behind_a_range_or_view_method_is_charged(use: str) -> None:
    """10**7 elements walked in C cost far more than 100,000 gas (they cost 12-13 gas and
    0.1-0.2 s of CPU): OUT_OF_GAS at once."""
    r = call(InProcessRunner(), _src(HOSTILE[use]), "f", {"n": 10**7}, gas=100_000)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.reason, r.message, r.gas_used)


@pytest.mark.parametrize("use", ["bound", "unbound", "unbound_attr"])
def test_a_range_of_10_to_the_18_is_out_of_gas_not_a_timeout(sandbox: Sandbox, use: str) -> None:
    """In a worker: a deterministic OUT_OF_GAS, not a TIMEOUT (which depends on the machine)."""
    r = call(sandbox, _src(HOSTILE[use]), "f", {"n": 10**18}, gas=1_000_000)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.reason, r.message)
    assert_serving(sandbox)


SEMANTICS = HEAD + '''
def f(ctx: Context) -> list:
    r = range(10, 0, -3)
    count = r.count
    index = range.index
    s = {1: 2}.items().isdisjoint
    out = [r.index(4), r.count(7), r.count(True), range.count(r, 10), count(1), index(r, 1),
           range(5).count("x"), range(5).count([]), s([(1, 2)]), s([(1, 3)]),
           {1: 2}.keys().isdisjoint([3])]
    try:
        range.count([1], 1)
    except TypeError as e:
        out.append(str(e))
    try:
        r.index("x")
    except ValueError as e:
        out.append(str(e))
    return out
'''


def test_range_and_view_methods_answer_as_before(sandbox: Sandbox) -> None:
    expected = [2, 1, 1, 1, 1, 3, 0, 0, False, True, True,
                "range.count() needs a range as first argument", "sequence.index(x): x not in sequence"]
    a = call(InProcessRunner(), SEMANTICS, "f")
    b = call(sandbox, SEMANTICS, "f")
    assert value(a) == expected
    assert (a.result_json, a.gas_used) == (b.result_json, b.gas_used)


def test_an_int_searched_in_a_huge_range_stays_cheap() -> None:
    """``range.count/index`` of an int (or bool) is O(1) in CPython and pays 1 gas as before."""
    src = _src("return [range(n).count(5), range(n).index(n - 1), range.count(range(n), True)]")
    r = call(InProcessRunner(), src, "f", {"n": 10**18}, gas=100)
    assert value(r) == [1, 10**18 - 1, 1]
