"""Hash flooding: dict keys and set elements whose hashes collide.

N distinct keys of one hash make each insertion or lookup compare O(N) entries in C.  The
colliding values are computed here, as an attacker would offline: integers equal modulo
2**61 - 1, and pairs / two-element frozensets of *small* integers solved through CPython
3.11's tuple (xxHash-style) and frozenset (shuffle-xor) hash steps.  Each hostile contract
ran to completion before the fix, for a few gas per key while its chains cost N**2 / 2
comparisons; now it is refused (big integers) or pays per comparison and runs out of gas.
Ordinary keys (integers below the bound, tuples and frozensets whose hashes differ) pay
what they paid: the same gas with the collision charge switched off.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import call, value

HEAD = "from rxchain_contract import Context\n\n"
BOUND = 2**61 - 1  # sys.hash_info.modulus on 64-bit CPython
M64 = 1 << 64
_P1, _P2, _P5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
N = 2000  # colliding keys per hostile contract: ~50 ms of chain walking before the fix


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) % M64


def _rotr(x: int, r: int) -> int:
    return ((x >> r) | (x << (64 - r))) % M64


def _int_of_hash(h: int) -> int | None:
    """An integer below the key bound whose hash is ``h`` (unsigned 64-bit), or None."""
    v = h - M64 if h >= 1 << 63 else h
    return v if -BOUND < v < BOUND and v != -1 and hash(v) == v else None


def colliding_pairs(n: int) -> list[list[int]]:
    """``n`` pairs of integers below 2**61 whose tuples share one hash (the second item
    solved from the first through tuplehash's invertible steps)."""
    inv1, inv2 = pow(_P1, -1, M64), pow(_P2, -1, M64)
    after = _rotr((12345 - (2 ^ (_P5 ^ 3527539))) % M64 * inv1 % M64, 31)
    out: list[list[int]] = []
    a = 1
    while len(out) < n:
        b = _int_of_hash((after - _rotl((_P5 + a * _P2) % M64, 31) * _P1 % M64) * inv2 % M64)
        if b is not None:
            out.append([a, b])
        a += 1
    assert len({hash(tuple(p)) for p in out}) == 1 and len({tuple(p) for p in out}) == n
    return out


def _shuffle(h: int) -> int:
    return (((h ^ 89869747) ^ (h << 16)) * 3644798167) % M64


def _unshuffle(y: int) -> int:
    v = (y * pow(3644798167, -1, M64)) % M64 ^ 89869747
    u = v
    for _ in range(4):
        u = v ^ ((u << 16) % M64)
    return u


def colliding_frozenset_pairs(n: int) -> list[list[int]]:
    """``n`` pairs of small integers whose two-element frozensets share one hash (the xor
    of the shuffled element hashes held constant)."""
    x = _shuffle(1) ^ _shuffle(2)
    out: list[list[int]] = []
    a = 3
    while len(out) < n:
        b = _int_of_hash(_unshuffle(x ^ _shuffle(a)))
        if b is not None and b not in (a, 1, 2):
            out.append([a, b])
        a += 1
    assert len({hash(frozenset(p)) for p in out}) == 1 and len({frozenset(p) for p in out}) == n
    return out


BIG = [12345 + k * BOUND for k in range(N)]  # all hash to 12345
PAIRS = colliding_pairs(N)
FPAIRS = colliding_frozenset_pairs(N)


def fn(*lines: str, params: str = "") -> str:
    return HEAD + f"def f(ctx: Context{params}) -> Any:\n" + "".join(f"    {ln}\n" for ln in lines)


def run(src: str, args: dict[str, Any] | None = None, gas: int = 500_000) -> t.InvocationResult:
    return call(InProcessRunner(), src, "f", args or {}, gas=gas)


def refused(r: t.InvocationResult) -> bool:
    return not r.ok and r.reason == "CONTRACT_EXCEPTION" and "2**61 - 1" in r.message


# ------------------------------------------------------------------ integers beyond 2**61-1
BIG_INT_USES = {
    "dict keys": ["d = {}", "for x in xs:", "    d[x] = 1", "return len(d)"],
    "set add": ["s = set()", "for x in xs:", "    s.add(x)", "return len(s)"],
    "set comprehension": ["return len({x for x in xs})"],
    "dict comprehension": ["return len({x: 0 for x in xs})"],
    "set()": ["return len(set(xs))"],
    "frozenset()": ["return len(frozenset(xs))"],
    "dict.fromkeys": ["return len(dict.fromkeys(xs))"],
    "dict(pairs)": ["return len(dict([(x, 1) for x in xs]))"],
    "set.update": ["s = {1}", "s.update(xs)", "return len(s)"],
    "set.union": ["return len({1}.union(xs))"],
    "keys view |": ["return len({1: 1}.keys() | xs)"],
    "keys view ^": ["return len({1: 1}.keys() ^ xs)"],
    "setdefault": ["d = {}", "for x in xs:", "    d.setdefault(x, 0)", "return len(d)"],
    "starred set display": ["return len({*xs})"],
    "negative": ["s = set()", "for x in xs:", "    s.add(-x)", "return len(s)"],
    "in tuples": ["s = set()", "for x in xs:", "    s.add((1, (x, 'a')))", "return len(s)"],
    "in tuple keys": ["d = {}", "for x in xs:", "    d[(None, x)] = 1", "return len(d)"],
    "frozensets": ["s = set()", "for x in xs:", "    s.add(frozenset([x]))", "return len(s)"],
}


@pytest.mark.parametrize("use", list(BIG_INT_USES.values()), ids=list(BIG_INT_USES))
def test_integers_sharing_hashes_are_refused_as_keys(use: list[str]) -> None:
    r = run(fn(*use, params=", xs: list"), {"xs": BIG})
    assert refused(r), (r.ok, r.reason, r.message)


@pytest.mark.parametrize("display", ["{%s}", "{%s: 0}"])
def test_big_integer_literals_in_displays_are_refused(display: str) -> None:
    """Literal keys skip the run-time check only when their hash is their own."""
    element = display[1:-1]
    src = fn("return len({" + ", ".join(element % x for x in BIG[:200]) + "})")
    r = run(src, gas=10**6)
    assert refused(r), (r.ok, r.reason, r.message)


def test_the_bound_is_exact_and_lookups_of_big_integers_still_answer() -> None:
    top = BOUND - 1
    r = run(fn("d = {top: 1, -top: 2, (top, 'a'): 3}", "s = {top, -top, (1, -top)}",
               "d[top + 1 - 1] = 4",
               "v = {1: top + 1}",
               "return [d[top], top + 1 in d, top + 1 in s, d.get(top + 1, 0), len(s), len(d),",
               "        v.values() == [], len(v.keys() - [top + 1]), len(v.items() & [(1, 2)])]",
               params=", top: int"), {"top": top})
    assert value(r) == [4, False, False, 0, 3, 3, False, 1, 0]
    for use in ["return len({top + 1: 0})", "return len({-top - 1})", "return len({(1, top + 1)})",
                "d = {}\n    d[top + 1] = 0\n    return 0", "return len({1: top + 1}.items() - [(1, 2)])"]:
        r = run(fn(use, params=", top: int"), {"top": top})
        assert refused(r), (use, r.ok, r.reason, r.message)


# ------------------------------------------------------------------ colliding tuples and frozensets
TUPLE_USES = {
    "dict keys": ["d = {}", "for a, b in ps:", "    d[(a, b)] = 1", "return len(d)"],
    "subscript pair": ["d = {}", "for a, b in ps:", "    d[a, b] = 1", "return len(d)"],
    "set add": ["s = set()", "for a, b in ps:", "    s.add((a, b))", "return len(s)"],
    "set comprehension": ["return len({(a, b) for a, b in ps})"],
    "dict comprehension": ["return len({(a, b): 0 for a, b in ps})"],
    "set()": ["return len(set([(a, b) for a, b in ps]))"],
    "dict.fromkeys": ["return len(dict.fromkeys([(a, b) for a, b in ps]))"],
    "items view": ["d = {a: b for a, b in ps}", "return len(d.items() | ())"],
    "set(items)": ["d = {a: b for a, b in ps}", "return len(set(d.items()))"],
    "items view -": ["d = {a: b for a, b in ps}", "return len(d.items() - ())"],
    "items view &": ["d = {a: b for a, b in ps}", "return len(d.items() & list(d.items()))"],
    "with None": ["d = {}", "for a, b in ps:", "    d[(a, b, None)] = 1", "return len(d)"],
    "nested": ["s = set()", "for a, b in ps:", "    s.add(((a, b), 'x'))", "return len(s)"],
    "frozensets": ["s = set()", "for a, b in fps:", "    s.add(frozenset([a, b]))", "return len(s)"],
    "frozenset keys": ["d = {}", "for a, b in fps:", "    d[frozenset([a, b])] = 0", "return len(d)"],
}


@pytest.mark.parametrize("use", list(TUPLE_USES.values()), ids=list(TUPLE_USES))
def test_colliding_tuples_and_frozensets_pay_their_chains(use: list[str]) -> None:
    """2,000 colliding keys: ~2,000,000 comparisons, charged one gas each (before the fix
    the whole contract cost ~20,000-60,000 gas)."""
    r = run(fn(*use, params=", ps: list, fps: list"), {"ps": PAIRS, "fps": FPAIRS})
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.ok, r.reason, r.message)


def _lookups(use: str, n: int, reps: int) -> str:
    build = ["s = set()", "d = {}", "for a, b in ps[:n]:", "    s.add((a, b))", "    d[(a, b)] = 0",
             "fs = {frozenset(p) for p in fps[:n]}", "ds = {frozenset(p): 0 for p in fps[:n]}",
             "a, b = ps[n]", "t = (a, b)", "ft = frozenset(fps[n])", "acc = 0"]
    return fn(*build, f"for i in range({reps}):", f"    {use}", "return acc",
              params=", ps: list, fps: list, n: int")


LOOKUPS = ["acc += t in s", "acc += t in d", "acc += d.get(t, 0)", "acc += d[a, b] if t in d else 0",
           "s.discard(t)", "d.pop(t, 0)", "acc += ft in fs", "acc += ds.get(ft, 0)"]
# whole-table operations: each walks every chain (~45,000-90,000 comparisons), 30 of them
TABLE_OPS = ["acc += len(s | s)", "acc += len(s & s)", "acc += int(s == s)", "acc += len(dict(d))",
             "acc += len(s.copy())", "acc += len(d | d)", "acc += len({**d})", "acc += len(s.union(s))",
             "acc += len(fs - fs)", "acc += int(d == d)"]


@pytest.mark.parametrize(("use", "reps"), [(u, 1000) for u in LOOKUPS] + [(u, 30) for u in TABLE_OPS])
def test_lookups_and_set_operations_in_colliding_tables_pay_their_chains(use: str, reps: int) -> None:
    """300 colliding keys (paid once, ~45,000 gas), then each lookup walks their chain:
    1,000 lookups are ~300,000 comparisons (before the fix ~3-5 gas each), 30 table
    operations ~1,500,000-2,700,000 (before: ~1-2 gas per element)."""
    args = {"ps": PAIRS, "fps": FPAIRS, "n": 300}
    r = run(_lookups(use, 300, reps), args, gas=250_000)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.ok, r.reason, r.message)


MODULE = HEAD + "PAIRS = [{pairs}]\nD = {{p: 0 for p in PAIRS}}\n\n" + (
    "def f(ctx: Context, a: int, b: int) -> int:\n"
    "    acc = 0\n"
    "    for i in range(1000):\n"
    "        acc += int((a, b) in D)\n"
    "    return acc\n")


@pytest.mark.parametrize("module_cache", [True, False])
def test_lookups_in_a_module_level_table_pay_the_module_body_collisions(module_cache: bool) -> None:
    """The module body runs once and its values are copied for each call: its recorded
    keys go with them, so a call's lookups pay the chains the body built."""
    src = MODULE.format(pairs=", ".join(f"({a}, {b})" for a, b in PAIRS[:300]))
    a, b = PAIRS[300]
    runner = InProcessRunner(module_cache=module_cache)
    for _ in range(2):  # the second call takes the cached module path
        r = call(runner, src, "f", {"a": a, "b": b}, gas=250_000)
        assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.ok, r.reason, r.message)


def test_charges_grow_with_the_chains() -> None:
    """Collisions are charged per comparison: k colliding keys cost ~k**2/2 gas more than
    k keys whose hashes differ (the same contract fed distinct-hash pairs)."""
    src = fn("s = set()", "for a, b in ps:", "    s.add((a, b))", "return len(s)", params=", ps: list")
    plain = [[i, i + 1] for i in range(1, 401)]
    gas = {}
    for k in (100, 200, 400):
        hostile, ordinary = run(src, {"ps": PAIRS[:k]}, gas=10**6), run(src, {"ps": plain[:k]}, gas=10**6)
        assert value(hostile) == value(ordinary) == k
        gas[k] = hostile.gas_used - ordinary.gas_used
        args_gas = len(json.dumps(PAIRS[:k])) // 32  # the arguments' size is charged too
        assert k * (k - 1) // 2 <= gas[k] <= k * (k - 1) // 2 + args_gas
    assert gas[400] > 3.5 * gas[200] > 12 * gas[100]


# ------------------------------------------------------------------ ordinary keys are unaffected
ORDINARY = fn(
    "d = {}", "s = set()", "for i in range(300):", "    d[i] = i", "    d[(i, str(i), None)] = i",
    "    s.add((i, -i))", "    s.add(frozenset([i, i + 1]))", "    s.add(2**61 - 2 - i)",
    "u = s | {(1, -1)}", "v = {**d}", "w = dict.fromkeys(s)", "x = {k: 1 for k in s}",
    "acc = len(u) + len(v) + len(w) + len(x) + int(s == set(s)) + len(s & u) + len(d | d)",
    "for i in range(300):", "    acc += int((i, -i) in s) + d.get((i, str(i), None), 0) + d[i]",
    "return acc")


def test_ordinary_keys_pay_no_collision_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Integers below the bound, tuples (with None too), frozensets, set operations and
    lookups: the same gas with the collision ledger switched off."""
    from node.sandbox import hashguard

    on = run(ORDINARY, gas=10**7)
    monkeypatch.setattr(hashguard.HashLedger, "admit", lambda self, v, h: 0)
    off = run(ORDINARY, gas=10**7)
    assert value(on) == value(off)
    assert on.gas_used == off.gas_used


def test_story_gas_unchanged_by_the_collision_charge(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo story pays no collision charge: transaction by transaction, the same gas
    with the ledger switched off."""
    from node.sandbox import hashguard
    from tests.sandbox.test_sparse_iteration import _story_gas

    charged = _story_gas()
    monkeypatch.setattr(hashguard.HashLedger, "admit", lambda self, v, h: 0)
    free = _story_gas()
    assert len(charged) > 30
    assert charged == free


# ------------------------------------------------------------------ the same on every peer
def test_the_ledger_hash_of_a_tuple_holding_none_is_the_same_in_every_process() -> None:
    """None hashes by its address (ASLR: another value in each process); the ledger hashes
    a stand-in instead, so its charges cannot differ between peers."""
    code = ("from node.sandbox.hashguard import stable_hash\n"
            "print(stable_hash((1, None, ('x', None)), True), hash((1, None)))")
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                           env={"PYTHONHASHSEED": "0"}).stdout.split() for _ in range(3)]  # the workers' seed
    assert len({o[0] for o in outs}) == 1
    assert len({o[1] for o in outs}) > 1  # what hashing None itself would have given


def test_worker_and_in_process_charge_colliding_keys_alike() -> None:
    """Colliding keys holding None, looked up and copied: the same result and gas in a
    worker process (its own address of None, PYTHONHASHSEED 0) as in this one."""
    src = fn("d = {}", "for a, b in ps:", "    d[(a, b, None)] = 1", "acc = 0", "for a, b in ps:",
             "    acc += d.get((a, b, None), 0) + len(dict(d))", "return acc", params=", ps: list")
    args = {"ps": PAIRS[:150]}
    local = call(InProcessRunner(), src, "f", args, gas=10**7)
    with Sandbox(workers=1) as sb:
        remote = call(sb, src, "f", args, gas=10**7)
    assert value(local) == value(remote) == 150 * 151
    assert local.gas_used == remote.gas_used > 150 * 149 // 2 + 150 * 150 * 149
