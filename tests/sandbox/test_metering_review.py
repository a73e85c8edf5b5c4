"""Second look at the slot and hash-collision charges (sparse dicts/sets, hash flooding).

* A set built from a dict view (``d.items() - ()``, ``d.keys() | [x]``) may hold what a
  set element may not (an item whose value is None or a function, a None key): hashed by
  address, so its order differs between worker processes.  Its elements were charged one
  by one, in that order, until the first refused one: the gas of the refusal (and the
  type named, with several refused kinds) differed between peers -- and a contract can
  catch the TypeError and go on.
* Once two recorded keys collided, every copy or comparison of a tuple-keyed table (and a
  view's set operation) re-hashed each tuple for 2 gas: a tuple sharing its sub-tuples
  (``t = (t, t)``, 18 times) is 2**18 elements to hash for CPython and to walk for the
  ledger, ~100 ms per ``d.items().isdisjoint([])`` for 7 gas.
* Keys/items views inside compared values (``view in [other]``, ``[a] == [b]``, ``sorted``
  of views, ``list.index``) compare like sets, but were charged as O(1) values.
* ``d == e`` of flat dicts and ``a == b`` of flat lists were charged len/32 for a lookup or
  a comparison per element (~1.3-7 us of CPU per gas); so was a string searched in a long
  list (2.4 us per gas); an items view compared as a set compared its values (big lists)
  in C for ~13 gas.
* A call of a cached module recorded a tuple equal to one the module body recorded as a
  second value of its hash, and paid a collision the same call without the cache did not.
"""

from __future__ import annotations

import pytest

from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import call, value
from tests.sandbox.test_module_cache import _both

HEAD = "from rxchain_contract import Context\n\n"

VIEW_SET = HEAD + '''
def _f() -> int:
    return 1

def f(ctx: Context, k: int, kind: str) -> dict:
    d = {}
    for i in range(60):
        d[(i, "x")] = i
    if kind == "none_value":
        d[(k, "y")] = None
    elif kind == "none_key":
        d[None] = 1
    elif kind == "both":
        d[(k, "y")] = _f
        d[(k + 1, "y")] = None
    caught = ""
    try:
        if kind == "none_key":
            r = d.keys() | [(k, "z")]
        else:
            r = d.items() - ()
    except TypeError as e:
        caught = str(e)
    return {"caught": caught}
'''


@pytest.mark.parametrize("kind", ["none_value", "none_key", "both"])
def test_a_refused_set_from_a_view_costs_the_same_whatever_its_hash_order(kind: str) -> None:
    """Where the refused element lands in the set's hash order must not change the gas (in
    one process, moving it by its key moves it in that order)."""
    runner = InProcessRunner()
    seen = set()
    for k in range(100, 106):
        r = call(runner, VIEW_SET, "f", {"k": k, "kind": kind})
        caught = value(r)["caught"]
        assert "cannot be a set element" in caught
        seen.add((r.gas_used, caught))
    assert len(seen) == 1, seen
    if kind == "both":  # the kind named does not depend on the order either
        assert next(iter(seen))[1].startswith("NoneType")


def test_a_refused_set_from_a_view_costs_the_same_in_every_worker() -> None:
    """Separate worker processes (None and functions at other addresses) agree."""
    seen = set()
    for _ in range(3):
        with Sandbox(workers=1) as sb:
            r = call(sb, VIEW_SET, "f", {"k": 7, "kind": "none_value"})
            seen.add((r.ok, r.reason, r.message, r.result_json, r.gas_used))
    assert len(seen) == 1, seen


SHARED = HEAD + '''
def f(ctx: Context, depth: int, use: str, reps: int) -> int:
    t = (1, 2)
    for _ in range(depth):
        t = (t, t)
    hot = {(-1, 0), (-2, 0)}  # -1 and -2 hash alike: the ledger has a collision
    c = 0
    if use == "items":
        d = {1: t}
        for _ in range(reps):
            if d.items().isdisjoint([]):
                c += 1
    else:
        d = {t: 1}
        for _ in range(reps):
            c += len(dict(d))
    return c
'''


@pytest.mark.parametrize("use", ["items", "keys"])
def test_rehashing_shared_subtuples_pays_every_element(use: str) -> None:
    runner = InProcessRunner()
    depth = 12 if use == "keys" else 15
    base = call(runner, SHARED, "f", {"depth": depth, "use": use, "reps": 0}, gas=10**8)
    more = call(runner, SHARED, "f", {"depth": depth, "use": use, "reps": 4}, gas=10**8)
    assert base.ok and more.ok, (more.reason, more.message)
    assert (more.gas_used - base.gas_used) // 4 >= 2**depth  # was 3-7 gas per rehash


VIEWS = HEAD + '''
def f(ctx: Context, n: int, use: str) -> int:
    a = {}
    b = {}
    for i in range(n):
        a[i] = [i]
        b[i] = [i]
    x = a.items() if use.startswith("items") else a.keys()
    y = b.items() if use.startswith("items") else b.keys()
    if use == "none":
        return 0
    if use.endswith("in"):
        return 1 if x in [y] else 0
    if use.endswith("eq"):
        return 1 if [x] == [y] else 0
    if use.endswith("index"):
        return [y].index(x)
    return len(sorted([x, y, x]))
'''


@pytest.mark.parametrize("use", ["keys_in", "keys_eq", "keys_index", "keys_sorted", "items_in", "items_eq"])
def test_views_inside_compared_values_are_charged_like_sets(use: str) -> None:
    """Comparing two views of n keys walks n keys (was 1-3 gas whatever n)."""
    runner = InProcessRunner()
    n = 5000
    built = call(runner, VIEWS, "f", {"n": n, "use": "none"}, gas=10**8)
    compared = call(runner, VIEWS, "f", {"n": n, "use": use}, gas=10**8)
    assert built.ok and compared.ok, (compared.reason, compared.message)
    assert compared.gas_used - built.gas_used >= n, (compared.gas_used, built.gas_used)


FLAT = HEAD + '''
def f(ctx: Context, n: int, kind: str, reps: int) -> int:
    if kind == "dict":
        a = {i: str(i) for i in range(n)}
        b = {i: str(i) for i in range(n)}
    else:
        a = [str(i) for i in range(n)]
        b = [str(i) for i in range(n)]
    c = 0
    for _ in range(reps):
        if a == b:
            c += 1
    return c
'''


@pytest.mark.parametrize(("kind", "per_element"), [("dict", 1), ("list", 8)])
def test_flat_dict_and_list_equality_pay_per_element(kind: str, per_element: int) -> None:
    """A dict pays a gas per key looked up, a list one per 8 elements (was 1 per 32)."""
    runner = InProcessRunner()
    n = 20_000
    limits = t.SandboxLimits(max_collection_len=n)
    base = call(runner, FLAT, "f", {"n": n, "kind": kind, "reps": 0}, gas=10**8, limits=limits)
    more = call(runner, FLAT, "f", {"n": n, "kind": kind, "reps": 4}, gas=10**8, limits=limits)
    assert value(more) == 4
    assert (more.gas_used - base.gas_used) // 4 >= n // per_element


def test_unequal_lengths_are_not_charged_per_element() -> None:
    """``==`` of dicts or lists of different lengths answers without walking them."""
    src = HEAD + '''
def f(ctx: Context, n: int) -> int:
    a = [i for i in range(n)]
    b = a + [1]
    d = {i: i for i in range(n)}
    e = {i: i for i in range(n + 1)}
    c = 0
    for _ in range(4):
        if a == b or d == e:
            c += 1
    return c
'''
    runner = InProcessRunner()
    few = call(runner, src, "f", {"n": 4000})
    assert value(few) == 0
    assert few.gas_used < 4000 * 6  # building them; the four comparisons add ~4 * 250


MODULE_TUPLE = HEAD + '''
TABLE = {(1, 2): "a", ("x", None): "b"}

def f(ctx: Context, a: int, b: str) -> int:
    s = set()
    s.add((a, 2))
    d = {}
    d[(b, None)] = 1
    return len(s) + len(d)
'''


HOT_MODULE = HEAD + '''
K = {(-1, 0): 1, (-2, 0): 2, (5, "n"): 3}
F = frozenset([(-1, 0), (-2, 0)])

def f(ctx: Context, a: int, b: str) -> int:
    d = dict(K)
    d[(-1, 0)] = 4
    d[(a - 2, 0)] = 5
    s = set()
    s.add((-2, a - 1))
    e = {F: 1}
    c = 1 if (-2, 0) in d else 0
    c += 1 if d == dict(K) else 0
    c += len(d.items() - ()) + len(K.keys() | [(-1, 0), (7, 7)])
    return c + len(s) + len(e)
'''


@pytest.mark.parametrize(("source", "expected"), [(MODULE_TUPLE, 2), (HOT_MODULE, 10)])
def test_a_cached_module_charges_equal_tuples_like_a_fresh_one(source: str, expected: int) -> None:
    """Both paths must charge alike: a worker whose module body once failed (memory) runs
    the fresh path from then on while the other peers' workers use the cache."""
    a, _ = _both(source, "f", {"a": 1, "b": "x"})
    assert value(a) == expected


SEARCH = HEAD + '''
def f(ctx: Context, n: int, use: str, reps: int) -> int:
    a = [str(i + 1000000) for i in range(n)]
    b = tuple(a)
    c = 0
    for _ in range(reps):
        if use == "in":
            c += 1 if "zzzzzzz" in a else 0
        elif use == "count":
            c += a.count("zzzzzzz")
        else:
            c += 1 if "zzzzzzz" in b else 0
    return c
'''


@pytest.mark.parametrize("use", ["in", "count", "tuple"])
def test_a_string_searched_in_a_long_list_pays_per_8_elements(use: str) -> None:
    """Each element is compared with the string (was 1 gas per 32 elements, 2.4 us of CPU
    per gas); the first 64 elements stay free."""
    runner = InProcessRunner()
    n = 20_000
    limits = t.SandboxLimits(max_collection_len=n)
    base = call(runner, SEARCH, "f", {"n": n, "use": use, "reps": 0}, gas=10**8, limits=limits)
    more = call(runner, SEARCH, "f", {"n": n, "use": use, "reps": 4}, gas=10**8, limits=limits)
    assert value(more) == 0
    assert (more.gas_used - base.gas_used) // 4 >= n // 32 + (n - 64) // 8
    short = call(runner, SEARCH, "f", {"n": 64, "use": use, "reps": 4}, gas=10**8)
    short0 = call(runner, SEARCH, "f", {"n": 64, "use": use, "reps": 0}, gas=10**8)
    per_search = (short.gas_used - short0.gas_used) // 4
    assert per_search <= 4  # the loop and the search: 1 + 64 // 32


ITEM_VALUES = HEAD + '''
def f(ctx: Context, n: int, use: str) -> int:
    a = {1: [str(i) for i in range(n)]}
    b = {1: [str(i) for i in range(n)]}
    if use == "eq":
        return 1 if a.items() == b.items() else 0
    if use == "le":
        return 1 if a.items() <= b.items() else 0
    if use == "chain":
        return 1 if a.items() == b.items() == b.items() else 0
    if use == "disjoint":
        return 1 if a.items().isdisjoint(b.items()) else 0
    return 0
'''


@pytest.mark.parametrize("use", ["eq", "le", "chain", "disjoint"])
def test_items_views_compared_pay_for_their_values(use: str) -> None:
    """``{1: big_list}.items() == e.items()`` compares the lists in C (was 13 gas)."""
    runner = InProcessRunner()
    n = 5000
    built = call(runner, ITEM_VALUES, "f", {"n": n, "use": "none"}, gas=10**8)
    compared = call(runner, ITEM_VALUES, "f", {"n": n, "use": use}, gas=10**8)
    assert value(compared) == (0 if use == "disjoint" else 1)
    assert compared.gas_used - built.gas_used >= n


MINMAX = HEAD + '''
def f(ctx: Context, width: int, n: int, kind: str) -> int:
    xs = []
    for i in range(n):
        xs.append("s" * (width + i % 3))
    if kind == "max":
        return len(max(xs))
    if kind == "min":
        return len(min(xs))
    return 0
'''


@pytest.mark.parametrize("kind", ["max", "min"])
def test_min_max_over_strings_charge_one_gas_each_and_their_length(kind: str) -> None:
    """min/max over a list of strings: one gas per value and 1 per 32 characters of each
    (what a comparison's memcmp walks) -- the same charge for short strings (no walk of
    their own: 0.5-0.7 us of CPU per gas before) as for long ones."""
    runner = InProcessRunner()
    n = 300
    gas = {}
    for width in (1, 64, 200):
        none = call(runner, MINMAX, "f", {"width": width, "n": n, "kind": "none"}, gas=10**7)
        got = call(runner, MINMAX, "f", {"width": width, "n": n, "kind": kind}, gas=10**7)
        assert value(got) == width + (2 if kind == "max" else 0)
        gas[width] = got.gas_used - none.gas_used
    chars = {w: sum((w + i % 3) >> 5 for i in range(n)) for w in (1, 64, 200)}
    assert chars[1] == 0
    assert gas[64] - gas[1] == chars[64] and gas[200] - gas[1] == chars[200]
    assert n <= gas[1] <= n + 8  # one per value (plus the call itself)


@pytest.mark.parametrize("left", [0, 1, 2, 3, 10**6])
def test_min_max_charge_what_the_walk_of_the_value_charges_for_every_type(left: int) -> None:
    """The string shortcut of ``Meter._compared`` charges exactly what walking the value
    charged (``nested_cost((v,))`` for a compared type, nothing else): same gas left and the
    same OUT_OF_GAS at the same point, for strings about the 32-character steps and for what
    else min/max may see (key= results, views, tuples and lists of strings, numbers)."""
    from node.sandbox.errors import OutOfGas
    from node.sandbox.meter import _COMPARED, Meter

    values = ["", "a" * 31, "a" * 32, "a" * 63, "a" * 64, "b" * 1000, ("a" * 40, "b"), ["c" * 70],
              {"k" * 33: "v" * 99}, {1, 2}, frozenset({"a" * 50}), {"a" * 40: 1}.keys(),
              {"a" * 40: "b" * 40}.items(), {"a": "b" * 99}.values(), 7, None, True]
    for v in values:
        got = []
        for walk in (True, False):
            m = Meter(10**6, t.SandboxLimits())
            m.left = left
            try:
                if not walk:
                    m._compared(v)
                elif type(v) in _COMPARED:
                    m.nested_cost((v,))
                got.append((m.left, ""))
            except OutOfGas as exc:
                got.append((m.left, str(exc)))
        assert got[0] == got[1], v
