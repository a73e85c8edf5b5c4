"""Hostile contracts found by a red-team review: each case once ran unmetered, crashed a
worker at will, depended on the peer's settings, or left memory behind for the next call.

Expected results are computed, not written down: starred unpacking is compared with plain
Python running the same statements, and settings-dependent cases with the same call under
other settings.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.sandbox import types as t
from node.sandbox.engine import SHARE_DEPTH, Engine
from node.sandbox.inprocess import BackendHost, InProcessRunner
from node.sandbox.instrument import compile_contract
from node.sandbox.meter import _percent_bound
from node.sandbox.runtime import Sandbox
from node.sandbox.worker import STACK_BYTES
from tests.sandbox.helpers import CALLER, MemBackend, assert_serving, call, value

HEAD = "from rxchain_contract import Context\n\n"
MEMORY = 256 << 20


def fn(*lines: str, params: str = "") -> str:
    return HEAD + f"def f(ctx: Context{params}) -> Any:\n" + "".join(f"    {ln}\n" for ln in lines)


# --------------------------------------------------------------------- starred unpacking
STARRED = {
    "tail": ["a, *rest = [1, 2, 3, 4]", "return [a, rest]"],
    "middle": ["a, *m, z = (1, 2, 3, 4)", "return [a, m, z]"],
    "nested": ["(a, (b, *c)), d = [[1, [2, 3, 4]], 5]", "return [a, b, c, d]"],
    "starred tuple": ["a, *(b, c) = [1, 2, 3]", "return [a, b, c]"],
    "chained targets": ["x = a, *b = [1, 2, 3]", "return [x, a, b]"],
    "for loop": ["out = []", "for a, *b in [[1, 2, 3], [4]]:", "    out.append([a, b])",
                 "return out"],
    "comprehension": ["return [[a, b] for a, *b in [[1, 2], [3, 4, 5]]]"],
    "generator": ["a, *b = (i * 2 for i in range(5))", "return [a, b]"],
    "string": ["a, *b = 'xyz'", "return [a, b]"],
    "nested, first child starred": ["(*a, b), c = [[1, 2, 3], 4]", "return [a, b, c]"],
    "nested starred name beside a starred tuple": [
        '(*a, (((p, *q), r),)), z = [["hi", [[["P", "Q"], "R"]]], 0]', "return [a, p, q, r, z]"],
}


def plain_python(lines: list[str]) -> object:
    ns: dict[str, object] = {}
    exec("def f():\n" + "".join(f"    {ln}\n" for ln in lines), ns)
    return json.loads(json.dumps(ns["f"]()))  # type: ignore[operator]


@pytest.mark.parametrize("name", sorted(STARRED))
def test_starred_unpacking_keeps_python_semantics(name: str) -> None:
    lines = STARRED[name]
    assert value(call(InProcessRunner(), fn(*lines), "f", {})) == plain_python(lines)


def test_starred_unpacking_too_short_is_the_python_error() -> None:
    r = call(InProcessRunner(), fn("a, b, *c = [1]", "return 0"), "f", {})
    assert (r.ok, r.reason) == (False, "CONTRACT_EXCEPTION")
    assert "not enough values to unpack" in r.message


@pytest.mark.parametrize("target", ["a, *rest", "*rest, a", "(a, *rest), b"])
def test_starred_unpacking_is_charged_per_element(target: str) -> None:
    def gas(n: int) -> int:
        src = fn(f"{target} = {'[list(range(n)), 0]' if target.startswith('(') else 'range(n)'}",
                 "return len(rest)", params=", n: int")
        r = call(InProcessRunner(), src, "f", {"n": n})
        assert r.ok, r.message
        return r.gas_used

    assert gas(20_010) - gas(10) >= 20_000


@pytest.mark.parametrize("body", [
    ["a, *rest = range(10 ** 8)", "return len(rest)"],
    ["(*rest, a), b = [range(10 ** 8), 0]", "return len(rest)"],
    ["for (*rest, a), b in [[range(10 ** 8), 0]]:", "    return len(rest)", "return 0"],
    ["for a, *rest in [range(10 ** 8)]:", "    return len(rest)", "return 0"],
])
def test_starred_unpacking_is_bounded(body: list[str]) -> None:
    r = call(InProcessRunner(), fn(*body), "f", {}, gas=10**9)
    assert (r.ok, r.reason) == (False, "SIZE_LIMIT"), r.message


# --------------------------------------------------------------------- hashing tuples
SHARED = ["t = (1,)", "for i in range(5):", "    t = tuple([t] * 50)"]  # 50**5 leaves


@pytest.mark.parametrize("use", [
    ["return int(t in {1})"], ["return len({t})"], ["return len({t: 1})"],
    ["return {1: 2}.get(t, 0)"], ["d = {1: 2}", "return d.get((t, 1), 0)"],
    ["d = {(1, 2): 3}", "return d[t, 1]"],
])
def test_hashing_tuples_that_share_sub_tuples_is_charged(use: list[str]) -> None:
    r = call(InProcessRunner(), fn(*SHARED, *use), "f", {}, gas=10**7)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), r.message


DEEP_USES = ["return int(t in {1})", "d = {1: 2}\n    return d.get(t, 0)", "d = {1: 2}\n    return d[t]",
             "d = {1: 2}\n    del d[t]\n    return 0", "return len({1: 2}.keys() | [t])",
             "return int({1: t}.items() <= {(1, 2)})"]


def test_hashing_deeply_nested_tuples_is_refused_not_a_crash() -> None:
    limits = t.SandboxLimits(memory_bytes=MEMORY)
    with Sandbox(workers=1, limits=limits) as sb:
        for use in DEEP_USES:
            src = fn("t = ()", "for i in range(300000):", "    t = (t,)", use)
            r = call(sb, src, "f", {}, gas=10**7, limits=limits)
            assert (r.ok, r.reason) == (False, "RECURSION_LIMIT"), (use, r.message)
        # no crash, no replacement (each source is another code: its own worker in turn)
        assert sb.stats()["restarts"] == 0
        assert sb.stats()["evictions"] == len(DEEP_USES) - 1


def test_a_frozenset_key_is_not_walked_again() -> None:
    def gas(times: int) -> int:
        src = fn("t = (1,)", "for i in range(12):", "    t = (t, t)", "fs = frozenset([t])", "d = {}",
                 f"for i in range({times}):", "    d[fs] = i", "return len(d)")
        r = call(InProcessRunner(), src, "f", {}, gas=10**8)
        assert value(r) == 1
        return r.gas_used

    once, many = gas(1), gas(41)
    assert many - once < 40 * 100  # each further d[fs] = i costs a few gas, not 2**12 leaves


def test_tuple_keys_still_work_and_cost_by_length() -> None:
    def run(n: int) -> tuple[object, int]:
        src = fn("k = tuple(range(n))", "d = {k: 'v'}", "return [d[k], d.get(k), k in d, len({k})]",
                 params=", n: int")
        r = call(InProcessRunner(), src, "f", {"n": n})
        return value(r), r.gas_used

    (small, g_small), (big, g_big) = run(2), run(2002)
    assert small == big == ["v", "v", True, 1]
    assert g_big - g_small >= 4 * 2000  # the tuple is walked for each of four hashes


# --------------------------------------------------------------------- nested comparisons
NESTED = ["a = [1]", "b = [1]", "for i in range(5):", "    a = [a] * 40", "    b = [b] * 40"]  # 40**5


@pytest.mark.parametrize("use", ["return int(a == b)", "return int(a < b)", "return int(a in [b])",
                                 "return int(b in [0, a])", "return int({1} in [{1}] + [a])"])
def test_comparing_lists_that_share_sub_lists_is_charged(use: str) -> None:
    r = call(InProcessRunner(), fn(*NESTED, use), "f", {}, gas=10**7)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), r.message


def test_nested_comparisons_still_work_and_cost_by_size() -> None:
    def run(n: int) -> tuple[object, int]:
        src = fn("a = [{'k': [i, 'x']} for i in range(n)]", "b = [{'k': [i, 'x']} for i in range(n)]",
                 "return [a == b, a < b, a[0] in b]", params=", n: int")
        r = call(InProcessRunner(), src, "f", {"n": n})
        return value(r), r.gas_used

    (small, g_small), (big, g_big) = run(2), run(1002)
    assert small == big == [True, False, True]
    assert g_big - g_small >= 3 * 2 * 1000  # each of a's 1000 dicts and their lists, per comparison


# --------------------------------------------------------------------- sorting and searching
# Each of these compares a with b (or with each other) and walks 40**5 shared sub-lists.
SEARCHES = {
    "sorted": ["return len(sorted([a, b]))"],
    "sorted, nested one deeper": ["return len(sorted([[a], [b]]))"],
    "list.sort": ["x = [b, a]", "x.sort()", "return 0"],
    "sorted by key": ["def k(i: int) -> list:", "    return [a, b][i]", "return sorted([0, 1], key=k)"],
    "list.sort by key": ["def k(i: int) -> list:", "    return [a, b][i]", "x = [0, 1]",
                         "x.sort(key=k, reverse=True)", "return x"],
    "max of arguments": ["return int(max(a, b) is a)"],
    "min of an iterable": ["return int(min([a, b]) is a)"],
    "min by key": ["def k(i: int) -> list:", "    return [a, b][i]", "return min(range(2), key=k)"],
    "list.index": ["return [a, 1].index(b)"],
    "list.count": ["return [a].count(b)"],
    "list.remove": ["x = [a]", "x.remove(b)", "return 0"],
    "tuple.index": ["return (a,).index(b)"],
    "in dict values": ["return int(b in {'k': a}.values())"],
}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_sorting_and_searching_nested_values_is_charged(name: str) -> None:
    r = call(InProcessRunner(), fn(*NESTED, *SEARCHES[name]), "f", {}, gas=10**7)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), r.message


# Equal but distinct 100,000-character strings: each comparison of two is a full memcmp.
LONG = ["s = 'x' * 100000", "u = 'x' * 99999 + 'x'", "a = [s] * 1000", "b = [u] * 1000"]
STRING_SEARCHES = {
    "==": ["for i in range(100):", "    r = a == b", "return 0"],
    "in": ["for i in range(100):", "    r = u in a", "return 0"],
    "list.count": ["for i in range(100):", "    r = a.count(u)", "return 0"],
    "sorted": ["for i in range(100):", "    r = sorted(a + b)", "return 0"],
    "sorted tuples": ["for i in range(100):", "    r = sorted([(s, 1), (u, 2)] * 100)", "return 0"],
    "max": ["for i in range(100):", "    r = max(a + b)", "return 0"],
}


@pytest.mark.parametrize("name", sorted(STRING_SEARCHES))
def test_comparing_long_strings_is_charged_by_length(name: str) -> None:
    r = call(InProcessRunner(), fn(*LONG, *STRING_SEARCHES[name]), "f", {}, gas=10**7)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), r.message


ORDERING = {
    "sorted rows": ["rows = [[3, 'b'], [1, 'z'], [3, 'a'], [1, 'y', [0]], [2]]",
                    "return [sorted(rows), sorted(rows, reverse=True)]"],
    "stable by key": ["def k(r: list) -> int:", "    return r[0]",
                      "rows = [[2, 'x'], [1, 'p'], [2, 'a'], [1, 'q'], [0, [1, 2]]]",
                      "return [sorted(rows, key=k), sorted(rows, key=k, reverse=True)]"],
    "list.sort in place": ["def k(r: list) -> list:", "    return [-r[0], r[1:]]",
                           "rows = [[2, 'x'], [1, 'p'], [2, 'a'], [1, 'q']]",
                           "rows.sort(key=k)", "other = [[1], [0, [5]], [0, [4]]]", "other.sort(reverse=True)",
                           "return [rows, other]"],
    "items": ["d = {'b': {'x': [1]}, 'a': {'y': [2]}, 'c': {}}", "return sorted(d.items())"],
    "tuples with equal heads": ["return sorted([(1, [3]), (1, [2]), (0, [9, 9])])"],
    "min and max": ["rows = [[3, [1]], [3, [0]], [1, [7]], [2]]",
                    "def k(r: list) -> list:", "    return r[1:]",
                    "return [min(rows), max(rows), min(rows[0], rows[1]), max(*rows),",
                    "        min(rows, key=k), max(rows, key=k), min([], default=[0])]"],
    "searching": ["rows = [[1, [2]], [3], [1, [2]]]",
                  "rows.remove([1, [2]])",
                  "return [rows.index([1, [2]]), rows.count([1, [2]]), (['x'], [3]).index([3]),",
                  "        int([3] in {'k': [3]}.values()), int([4] in {'k': [3]}.values())]"],
}


@pytest.mark.parametrize("name", sorted(ORDERING))
def test_sorting_and_searching_keep_python_semantics(name: str) -> None:
    lines = ORDERING[name]
    assert value(call(InProcessRunner(), fn(*lines), "f", {})) == plain_python(lines)


def test_sorting_a_dicts_items_pays_no_more_for_big_values() -> None:
    def gas(size: int) -> int:
        src = fn("d = {}", "for i in range(200):", "    d[str(i)] = {'v': list(range(size))}",
                 "return len(sorted(d.items()))", params=", size: int")
        r = call(InProcessRunner(), src, "f", {"size": size})
        assert value(r) == 200
        return r.gas_used

    def sort_gas(size: int) -> int:  # the sort's own share, without building the values
        src = fn("d = {}", "for i in range(200):", "    d[str(i)] = {'v': list(range(size))}", "return 0",
                 params=", size: int")
        r = call(InProcessRunner(), src, "f", {"size": size})
        return gas(size) - r.gas_used

    assert sort_gas(1000) == sort_gas(1)  # distinct string keys decide every comparison


def test_sorting_nested_values_costs_their_size() -> None:
    def gas(size: int) -> int:
        src = fn("rows = [[0, list(range(size))] for i in range(64)]", "x = sorted(rows)", "return 0",
                 params=", size: int")
        r = call(InProcessRunner(), src, "f", {"size": size})
        assert r.ok, r.message
        return r.gas_used

    build = 64 * (1000 // 4)  # allocation charges of the 64 inner lists, roughly
    assert gas(1001) - gas(1) >= 64 * 1000 * 7 - build  # each row's size, once per merge level (1 + 7)


# --------------------------------------------------------------------- %-formatting
def test_percent_format_bound_is_never_below_the_output() -> None:
    rng = random.Random(7)
    texts = ["", "abc", "é\x00\n", "\U0001f600" * 3, "x" * 50, "(k)", "%"]
    specs = ["%s", "%r", "%a", "%d", "%5d", "%-7.2s", "%05x", "%o", "%c", "%%", "%.9s", "%9999s",
             "%(k)s", "%(k)r", "%((k))s", "%(a%b)4s", "%e", "%#g", "%-12.3f", "%(k)E"]
    for _ in range(3000):
        parts = [rng.choice(specs + texts) for _ in range(rng.randint(0, 6))]
        fmt = "".join(parts)
        keyed = "%(" in fmt
        if keyed:
            values: object = {"k": rng.choice(texts), "(k)": rng.choice(texts), "a%b": rng.choice(texts)}
        else:
            values = tuple(rng.choice([rng.choice(texts), rng.randint(-10**30, 10**30), 65])
                           for _ in range(sum(p in specs and p != "%%" for p in parts)))
        try:
            out = fmt % values
        except (TypeError, ValueError, KeyError, OverflowError):
            continue
        assert _percent_bound(fmt, values) >= len(out), (fmt, values)


def test_percent_format_charges_each_conversion() -> None:
    def gas(n: int) -> int:
        r = call(InProcessRunner(), fn(f"return len('%()s' * {n} % {{'': ''}})"), "f", {}, gas=10**8)
        assert value(r) == 0
        return r.gas_used

    assert gas(10_010) - gas(10) >= 4 * 10_000


@pytest.mark.parametrize(("expr", "ok"), [
    ("'%(a)9999s' * 110000 % {'a': 'x'}", False),
    ("'%e' * 200000 % ((-1,) * 200000)", False),
    ("'%(a)s' * 200000 % {'a': 'x' * 1000}", False),
    ("'%s|%5d|%(x)s' % {'x': 1} if False else '%s|%5d|%r' % ('ab', 42, 'c')", True),
])
def test_percent_format_is_refused_before_it_is_built(expr: str, ok: bool) -> None:
    r = call(InProcessRunner(), fn(f"return {expr}"), "f", {}, gas=10**8)
    if ok:
        assert value(r) == eval(expr)
    else:
        assert (r.ok, r.reason) == (False, "SIZE_LIMIT") and "upper bound" in r.message


# --------------------------------------------------------------------- big integers
DIGITS = 1234  # 4096 bits, the default max_int_bits


@pytest.mark.parametrize(("digits", "ok"), [(DIGITS, True), (DIGITS + 1, False)])
def test_integer_arguments_are_bounded(digits: int, ok: bool) -> None:
    src = fn("return n % 7", params=", n: int")
    args = b'{"n": -' + b"9" * digits + b"}"
    r = call(InProcessRunner(), src, "f", args)
    if ok:
        assert value(r) == -int("9" * digits) % 7
    else:
        assert (r.ok, r.reason) == (False, "BAD_ARGUMENTS")
        assert "digits" in r.message


def test_integer_state_values_are_bounded() -> None:
    be = MemBackend()
    be.data[("demo", "big")] = b"1" * (DIGITS + 1)
    be.data[("demo", "ok")] = b"1" * DIGITS
    src = fn("ctx.get('ok')", "return ctx.get('big')")
    r = call(InProcessRunner(), src, "f", {}, be)
    assert (r.ok, r.reason) == (False, "BAD_VALUE"), r.message


def test_modular_pow_is_charged_per_step_and_by_operand_size() -> None:
    src = fn("return pow(b + 1, b + 3, m) % 2", params=", b: int, m: int")

    def gas(bits: int, mod_bits: int) -> int:
        r = call(InProcessRunner(), src, "f", {"b": 1 << (bits - 1), "m": (1 << (mod_bits - 1)) + 7},
                 gas=10**9)
        assert r.ok, r.message
        return r.gas_used

    small, big = gas(1024, 1024), gas(4096, 4096)
    assert big > 500_000  # ~0.13-0.16 s of CPU on these machines: ~3-5 M gas per second
    assert 25 < big / small < 64  # 4x the bits: 16x the steps' cost, 64x the products'
    # a small modulus: 4096 squarings of 16-bit numbers still take ~0.1 ms
    assert gas(4096, 16) > 1000


# --------------------------------------------------------------------- deep module values
def deep_module(depth: int) -> str:
    return HEAD + (
        "def _deep() -> tuple:\n    v = ()\n"
        f"    for i in range({depth}):\n        v = (v,)\n    return v\n\n"
        "DEEP = _deep()\nLIST = [DEEP]\n\n"
        "def f(ctx: Context) -> int:\n    LIST.append(1)\n    return len(LIST)\n"
    )


@pytest.mark.parametrize("depth", [SHARE_DEPTH - 2, 600, 2000])
def test_deep_module_values_match_the_reference_path(depth: int) -> None:
    src = deep_module(depth)
    reference = call(InProcessRunner(module_cache=False), src, "f", {})
    cached = InProcessRunner()
    for _ in range(2):  # the second call uses the cached module when it is shareable
        r = call(cached, src, "f", {})
        assert (r.ok, r.reason, r.result_json, r.gas_used) == (
            reference.ok, reference.reason, reference.result_json, reference.gas_used)
    assert value(reference) == 2


def test_call_copies_do_not_stay_in_the_module_cache() -> None:
    src = HEAD + "KEEP = []\n\ndef f(ctx: Context) -> int:\n" \
        "    KEEP.append('x' * 100000)\n    return len(KEEP)\n"
    engine = Engine()
    compiled = compile_contract(src, "keep")
    for _ in range(3):
        r = engine.run(compiled, contract="demo", function="f", args_json=b"{}", tx_id="tx",
                       timestamp_ms=1, caller=CALLER, transient={}, gas_limit=10**6,
                       limits=t.SandboxLimits(), host=BackendHost(MemBackend(), "demo"))
        assert r.result_json == b"1"  # each call starts from the module's empty list
    keep = [c for c in _module_namespaces(engine) if "KEEP" in c]
    assert keep and all(ns["KEEP"] == [] for ns in keep)


def _module_namespaces(engine: Engine) -> Iterator[dict[str, object]]:
    for _compiled, _limits, module, _retry in engine._modules.values():
        if module is not None:
            yield module.ns


# --------------------------------------------------------------------- worker processes
ZIP_CHAIN = fn("z = zip([1])", "for i in range(300000):", "    z = zip(z)",
               "n = 0", "for x in z:", "    n += 1", "return n")


@pytest.fixture()
def stack_limit() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))


def _outcome(inherited_stack: int) -> tuple[str, tuple[str, bool, str]]:
    resource.setrlimit(resource.RLIMIT_STACK,
                       (inherited_stack, resource.getrlimit(resource.RLIMIT_STACK)[1]))
    limits = t.SandboxLimits(memory_bytes=MEMORY, wall_timeout_s=30)
    with Sandbox(workers=1, limits=limits) as sb:
        [pid] = sb.worker_pids()
        line = next(ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines()
                    if ln.startswith("Max stack size"))
        r = call(sb, ZIP_CHAIN, "f", {}, gas=10**7, limits=limits)
        assert_serving(sb)
    return line.split()[3], (r.reason, r.ok, r.result_json.decode())


def test_worker_stack_does_not_depend_on_the_peer_ulimit(stack_limit: None) -> None:
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    assert hard == resource.RLIM_INFINITY or hard >= 512 << 20, "needs `ulimit -Hs` >= 512 MiB"
    default_stack, default = _outcome(8 << 20)
    large_stack, large = _outcome(512 << 20)
    assert default_stack == large_stack == str(STACK_BYTES)
    assert default == large  # a 512 MiB stack would let the 300,000-deep chain finish


def test_a_stack_hard_limit_below_the_workers_is_refused_with_the_reason() -> None:
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_STACK, (4 << 20, 4 << 20))\n"
            "from node.sandbox.runtime import Sandbox, SandboxError\n"
            "try:\n    Sandbox(workers=1)\nexcept SandboxError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "stack hard limit 4194304 bytes is below the 8388608" in out


def test_worker_holding_much_memory_is_replaced_before_the_next_call() -> None:
    limits = t.SandboxLimits(memory_bytes=MEMORY)
    hog = HEAD + "KEEP = []\n\ndef f(ctx: Context) -> int:\n" \
        "    a = []\n    b = [a]\n    a.append(b)\n" \
        "    for i in range(100):\n        a.append('x' * 1000000 + str(i))\n    return len(a)\n"
    with Sandbox(workers=1, limits=limits) as sb:
        [first] = sb.worker_pids()
        assert_serving(sb)
        assert sb.worker_pids() == [first]  # a small call keeps its worker
        r = call(sb, hog, "f", {}, gas=10**8, limits=limits)
        assert value(r) == 101
        # ~100 MB (a cycle not yet collected) > a quarter of 256 MiB: replaced (a restart,
        # not the eviction the hog's own code made of PING's worker)
        assert sb.stats()["restarts"] == 1 and sb.stats()["evictions"] == 1
        assert (sb.stats()["replaced_rss"], sb.stats()["replaced_evict_missing"]) == (1, 1)
        assert_serving(sb)
        [second] = sb.worker_pids()
        assert second != first


# list.sort(key=...) empties the list while the keys are computed: a key sees [], and one
# that adds to the list gets ValueError (before the fix, the metered sort let the key see the
# whole list and loop over what it appended until the gas ran out); a comparison that raises
# leaves the list as partly sorted as list.sort leaves it (it was left untouched).
KEYS_SEE_THE_SORT = {
    "key sees an empty list": ["x = [3, 1, 2]", "seen = []",
                               "def k(v: int) -> int:", "    seen.append(len(x))", "    return v",
                               "x.sort(key=k)", "return [x, seen]"],
    "key adding to the list": ["x = [3, 1, 2]",
                               "def k(v: int) -> int:", "    x.append(v)", "    return -v",
                               "try:", "    x.sort(key=k, reverse=True)", "    r = 'sorted'",
                               "except ValueError as e:", "    r = str(e)",
                               "return [x, r]"],
    "comparison raising": ["x = [0, [], [], [0]]",  # int < list: TypeError part way through
                           "def k(v: Any) -> Any:", "    return v",
                           "try:", "    x.sort(key=k, reverse=True)", "    r = 'sorted'",
                           "except TypeError:", "    r = 'raised'",
                           "return [x, r]"],
    "reverse not an integer": ["calls = []",  # refused before any key call, as list.sort does
                               "def k(v: int) -> int:", "    calls.append(v)", "    return v",
                               "try:", "    r = sorted([2, 1], key=k, reverse='x')",
                               "except TypeError:", "    r = 'raised'",
                               "return [calls, r]"],
    "key raising": ["x = [3, 1, 2]",
                    "def k(v: int) -> int:", "    x.append(v)", "    return v // (v - 1)",
                    "try:", "    x.sort(key=k)", "    r = 'sorted'",
                    "except ZeroDivisionError:", "    r = 'raised'",
                    "return [x, r]"],
}


@pytest.mark.parametrize("name", sorted(KEYS_SEE_THE_SORT))
def test_sort_key_sees_the_list_as_python_does(name: str) -> None:
    lines = KEYS_SEE_THE_SORT[name]
    assert value(call(InProcessRunner(), fn(*lines), "f", {}, gas=10**6)) == plain_python(lines)
