"""Gas of iterating sparse dicts and sets (slots of deleted entries / empty table slots).

CPython keeps a dict's deleted entries until it grows again, and a set iterates its whole
hash table: delete 19,999 of 20,000 keys and every ``for k in d: break`` scans ~22,000
slots.  Each hostile pattern below runs ``REPS`` times over a sparse container and over a
dense one built by the same code; the difference in gas must be at least ``REPS`` times the
slack charge (:mod:`node.sandbox.slots`) -- the pre-fix meter charged the two the same.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from node.sandbox import canonical, meter, slots
from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import MemBackend, call, make_inv, value

N = 20_000
REPS = 20
HEAD = "from rxchain_contract import Context, ContractError\n\n"

# usable entries of a dict that held N keys: 2/3 of a 2**15 table
DICT_SLACK_GAS = ((2 << 15) // 3 - 1) // slots.SLACK_PER_GAS  # 85
SET_SLACK_GAS = ((1 << 17) - 1) // slots.SLACK_PER_GAS  # 511: set(range(20000)) has 131,072 slots


def _contract(setup: list[str], body: list[str], sparse: bool) -> str:
    """``f(ctx)``: build a container, delete all but its last element, keep it sparse or
    rebuild it dense (``d``/``s``/``sd``), then run ``body`` REPS times."""
    lines = [
        "d = {i: i for i in range(N)}",
        "sd = {str(i): i for i in range(N)}",
        "s = set(range(N))",
        "for i in range(N - 1):",
        "    del d[i]",
        "    del sd[str(i)]",
        "    s.discard(i)",
        # both variants pay these three rebuilds; only the dense one keeps them
        "d2 = dict(d.items())",
        "sd2 = dict(sd.items())",
        "s2 = set(list(s))",
    ]
    if not sparse:
        lines += ["d = d2", "sd = sd2", "s = s2"]
    lines += ["e = {N - 1: N - 1}", "se = {N - 1}", *setup, "acc = 0", "for _ in range(REPS):"]
    lines += [f"    {b}" for b in body]
    lines += ["return acc"]
    src = HEAD + f"N = {N}\nREPS = {REPS}\n\n" + "def f(ctx: Context) -> int:\n"
    return src + "".join(f"    {ln}\n" for ln in lines)


def _gas(setup: list[str], body: list[str], sparse: bool, gas: int = 5_000_000) -> tuple[int, Any]:
    r = call(InProcessRunner(), _contract(setup, body, sparse), "f", gas=gas)
    return r.gas_used, value(r)


# (setup lines, loop body, slack scans charged per repetition at least)
DICT_PATTERNS: dict[str, tuple[list[str], list[str], int]] = {
    "for-break": ([], ["for k in d:", "    acc += k", "    break"], 1),
    "for-break-values": ([], ["for v in d.values():", "    acc += v", "    break"], 1),
    "for-break-items": ([], ["for k, v in d.items():", "    acc += v", "    break"], 1),
    "list": ([], ["acc += len(list(d))"], 1),
    "tuple": ([], ["acc += len(tuple(d))"], 1),
    "sorted": ([], ["acc += len(sorted(d))"], 1),
    "min": ([], ["acc += min(d)"], 1),
    "max-values": ([], ["acc += max(d.values())"], 1),
    "sum": ([], ["acc += sum(d)"], 1),
    "any": ([], ["acc += any(d)"], 1),
    "all": ([], ["acc += all(d.values())"], 1),
    "comprehension": ([], ["acc += len([k for k in d])"], 1),
    "dict-comprehension": ([], ["acc += len({k: v for k, v in d.items()})"], 1),
    "enumerate": ([], ["for i, k in enumerate(d):", "    acc += k", "    break"], 1),
    "zip": ([], ["for k, x in zip(d, [1]):", "    acc += x"], 1),
    "map": ([], ["for x in map(abs, d):", "    acc += x", "    break"], 1),
    "filter": ([], ["for x in filter(None, d):", "    acc += x", "    break"], 1),
    "reversed": ([], ["for k in reversed(d):", "    acc += k", "    break"], 1),
    "eq": ([], ["acc += d == e"], 1),
    "eq-nested": (["le = [e]"], ["acc += [d] == le"], 1),
    "chained-eq": ([], ["acc += d == e == e"], 1),
    "keys-view-eq": ([], ["acc += d.keys() == se"], 1),
    "items-view-set-op": ([], ["acc += len(d.items() & {(N - 1, N - 1)})"], 1),
    "in-values": ([], ["acc += (N - 1) in d.values()"], 1),
    "in-keys-view": ([], ["acc += (N - 1) in d.keys()"], 1),
    "copy": ([], ["acc += len(d.copy())"], 1),
    "dict-call": ([], ["acc += len(dict(d))"], 1),
    "star-star": ([], ["acc += len({**d})"], 1),
    "star": ([], ["acc += len([*d])"], 1),
    "dict-or": ([], ["acc += len(d | e)"], 1),
    "update": (["u = {}"], ["u.update(d)", "acc += len(u)"], 1),
    "unpack": ([], ["(k,) = d", "acc += k"], 1),
    "unpack-for-target": (["dl = [d, d]"], ["for (k,) in dl:", "    acc += k"], 2),
    "unpack-nested": (["pair = (d, 1)"], ["(k,), x = pair", "acc += k + x"], 1),
    "unpack-comprehension": (["dl = [d]"], ["acc += len([k for (k,) in dl])"], 1),
    "join": ([], ["acc += len(','.join(sd))"], 1),
    "str": ([], ["acc += len(str(d))"], 1),
    "fstring": ([], ["acc += len(f'{d}')"], 1),
    "percent": ([], ["acc += len('x' % sd)"], 1),
    "canonical-json": ([], ["acc += len(ctx.canonical_json(sd))"], 1),
    "isdisjoint-view": ([], ["acc += d.keys().isdisjoint([1])"], 1),
}

SET_PATTERNS: dict[str, tuple[list[str], list[str], int]] = {
    "set-for-break": ([], ["for x in s:", "    acc += x", "    break"], 1),
    "set-list": ([], ["acc += len(list(s))"], 1),
    "set-min": ([], ["acc += min(s)"], 1),
    "set-eq": ([], ["acc += s == se"], 1),
    "set-le": ([], ["acc += s <= se"], 1),
    "set-or": ([], ["acc += len(s | se)"], 1),
    "set-copy": ([], ["acc += len(s.copy())"], 1),
    "set-call": ([], ["acc += len(set(s))"], 1),
    "frozenset-call": ([], ["acc += len(frozenset(s))"], 1),
    "set-union-method": ([], ["acc += len(s.union(se))"], 1),
    "set-comprehension": ([], ["acc += len({x for x in s})"], 1),
    "set-pop-add": ([], ["x = s.pop()", "s.add(x)", "acc += x"], 1),
    "set-in-list": (["ls = [s]"], ["acc += se in ls"], 1),
    "set-str": ([], ["acc += len(str(s))"], 1),
}


@pytest.mark.parametrize("name", sorted(DICT_PATTERNS))
def test_sparse_dict_pays_for_its_slack(name: str) -> None:
    setup, body, scans = DICT_PATTERNS[name]
    sparse, got_sparse = _gas(setup, body, True)
    dense, got_dense = _gas(setup, body, False)
    assert got_sparse == got_dense  # same results, only the gas differs
    assert sparse - dense >= REPS * scans * DICT_SLACK_GAS, (name, sparse, dense)


@pytest.mark.parametrize("name", sorted(SET_PATTERNS))
def test_sparse_set_pays_for_its_slack(name: str) -> None:
    setup, body, scans = SET_PATTERNS[name]
    sparse, got_sparse = _gas(setup, body, True)
    dense, got_dense = _gas(setup, body, False)
    assert got_sparse == got_dense
    assert sparse - dense >= REPS * scans * SET_SLACK_GAS, (name, sparse, dense)


def test_put_of_a_sparse_dict_pays_for_its_slack() -> None:
    """State values are encoded by a walk and the JSON encoder: both scan the slack."""
    body = ["ctx.put('k', sd)", "acc += 1"]
    sparse, _ = _gas([], body, True)
    dense, _ = _gas([], body, False)
    assert sparse - dense >= REPS * 2 * DICT_SLACK_GAS


def test_hostile_loop_runs_out_of_gas_after_few_scans() -> None:
    """``while True: for k in d: break`` over a dict left with one of 20,000 keys: every
    iteration start pays the ~21,800 deleted slots, so a gas limit allows few scans."""
    src = HEAD + "def f(ctx: Context, n: int) -> int:\n" + "".join(f"    {ln}\n" for ln in [
        "d = {i: i for i in range(20000)}",
        "for i in range(19999):",
        "    del d[i]",
        "scans = 0",
        "while scans < n:",
        "    for k in d:",
        "        break",
        "    scans += 1",
        "return scans",
    ])
    build = call(InProcessRunner(), src, "f", {"n": 0}, gas=10_000_000)
    ten = call(InProcessRunner(), src, "f", {"n": 10}, gas=10_000_000)
    per_scan = (ten.gas_used - build.gas_used) / 10
    assert per_scan >= DICT_SLACK_GAS  # was 2: the loop step and the for's one element
    r = call(InProcessRunner(), src, "f", {"n": 10**9}, gas=build.gas_used + 100 * DICT_SLACK_GAS)
    assert r.reason == "OUT_OF_GAS"


ORDINARY = HEAD + "def f(ctx: Context, n: int, m: int) -> int:\n" + "".join(f"    {ln}\n" for ln in [
    "d = {i: str(i) for i in range(n)}",
    "sd = {str(i): i for i in range(n)}",
    "s = set(range(m))",
    "for i in range(0, n, 7):",  # a few deletions, as ordinary code does
    "    del d[i]",
    "    s.discard(i)",
    "acc = 0",
    "for _ in range(5):",
    "    for k in d:",
    "        acc += 1",
    "    for k, v in sd.items():",
    "        acc += v",
    "    for x in s:",
    "        acc += x",
    "    acc += len(list(d)) + len([y for y in s]) + (d == d) + (s == s) + len(str(sd)) + min(s, default=-1)",
    "    acc += len(dict(d)) + len(s.copy()) + len(sorted(sd)) + sum(d) + len(ctx.canonical_json(sd))",
    "    for i, k in enumerate(d):",
    "        acc += i",
    "return acc",
])


@pytest.mark.parametrize("n", [0, 1, 5, 76, 341])
def test_small_containers_pay_no_slack(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dicts up to 341 keys and sets up to 76 elements (with a few deletions) pay exactly
    what they paid without the slack charge."""
    charged = call(InProcessRunner(), ORDINARY, "f", {"n": n, "m": min(n, 76)})
    monkeypatch.setattr(meter, "slack_gas", lambda v: 0)
    monkeypatch.setattr(canonical, "slack_gas", lambda v: 0)
    free = call(InProcessRunner(), ORDINARY, "f", {"n": n, "m": min(n, 76)})
    assert charged.ok and charged == free


def test_big_dense_containers_pay_little_slack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense containers of 10,000 keys/elements pay some slack on each scan (a dict holds
    10,922 entries, a set 32,768 slots): loops over them pay at most 3 % more than without
    the charge."""
    charged = call(InProcessRunner(), ORDINARY, "f", {"n": 10_000, "m": 10_000}, gas=10_000_000)
    monkeypatch.setattr(meter, "slack_gas", lambda v: 0)
    monkeypatch.setattr(canonical, "slack_gas", lambda v: 0)
    free = call(InProcessRunner(), ORDINARY, "f", {"n": 10_000, "m": 10_000}, gas=10_000_000)
    assert value(charged) == value(free)
    assert free.gas_used < charged.gas_used <= free.gas_used * 1.03, (charged.gas_used, free.gas_used)


def test_dict_slots_formula_matches_cpython() -> None:
    """Every dict size getsizeof reports is one of the formula's (no fallback), for str and
    other keys, grown, presized, copied, merged and cleared; the slots bound the entries."""
    seen = set()
    for keys in (range(3000), [str(i) for i in range(3000)]):
        d: dict[Any, int] = {}
        for k in keys:
            d[k] = 1
            size = sys.getsizeof(d) - slots._DICT_BASE
            assert size in slots._DICT_USABLE
            assert len(d) <= slots.dict_slots(d)
            seen.add(size)
        for other in (d.copy(), dict(d), dict.fromkeys(keys), {**d}, d | {}):
            assert sys.getsizeof(other) - slots._DICT_BASE in slots._DICT_USABLE
        d.clear()
        assert slots.dict_slots(d) == 0 and slots.slack(d) == 0
    assert len(seen) >= 2 * 9  # table sizes 8 .. 4096 for both entry kinds
    assert slots.slack({i: i for i in range(5)}) == 0  # 5 usable entries of an 8-slot table
    big = {i: i for i in range(N)}
    for i in range(N - 1):
        del big[i]
    assert slots.slack(big) == (2 << 15) // 3 - 1
    assert slots.slack(big.keys()) == slots.slack(big.items()) == slots.slack(big)


def test_set_slots_formula_matches_cpython() -> None:
    assert slots.set_slots(set()) == 8
    assert slots.set_slots({1, 2, 3}) == 8
    s = set(range(N))
    assert slots.set_slots(s) == 1 << 17
    assert slots.set_slots(frozenset(s)) >= N
    for i in range(N - 1):
        s.discard(i)
    assert slots.slack(s) == (1 << 17) - 1
    assert slots.slack_gas(s) == SET_SLACK_GAS
    assert slots.slack([1, 2]) == slots.slack("abc") == 0


def _story_gas() -> list[tuple[str, str, bool, int]]:
    from tests.contracts.chain import Chain
    from tests.contracts.rxclient import World
    from tests.contracts.test_worker_sandbox import play

    gas: list[tuple[str, str, bool, int]] = []
    inner = InProcessRunner().invoke

    def tee(inv: t.Invocation, backend: t.StateBackend) -> t.InvocationResult:
        res = inner(inv, backend)
        gas.append((inv.contract, inv.function, res.ok, res.gas_used))
        return res

    world = World(Chain(runner=tee), seed=11)
    world.load()
    play(world)
    return gas


def test_story_gas_unchanged_by_slack_charges(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo story (registry load, issue, review, dispense, settle, refusals) pays no
    slack: transaction by transaction, the same gas with the charge switched off."""
    charged = _story_gas()
    monkeypatch.setattr(meter, "slack_gas", lambda v: 0)
    monkeypatch.setattr(canonical, "slack_gas", lambda v: 0)
    free = _story_gas()
    assert len(charged) > 30
    assert charged == free


UNPACKING = HEAD + '''def f(ctx: Context) -> list:
    out = []
    d = {"a": 1, "b": 2}
    a, b = d
    out.append([a, b])
    (x, y), z = d.items()
    out.append([x, y, z])
    p, *q = d.values()
    out.append([p, q])
    m, *(n, o) = [1, 2, 3]
    out.append([m, n, o])
    (k1, k2), w = (d, 5)
    out.append([k1, k2, w])
    (e1, e2), (g1, *g2) = map(list, ({"u": 1, "v": 2}, [7, 8, 9]))
    out.append([e1, e2, g1, g2])
    for i, (k, v) in enumerate(d.items()):
        out.append([i, k, v])
    for k, v in d.items():
        out.append([k, v])
    else:
        out.append("else")
    for (s1, s2) in [{3, 4}]:
        out.append(sorted([s1, s2]))
    out.append([k + str(v) for k, v in d.items()])
    out.append([[r, t] for (r, t), _ in zip(["ab", "cd"], [0, 1])])
    out.append({k: i for i, (k, _) in enumerate(d.items())})
    a = b = 1, 2
    out.append([a, b])
    c1, c2 = c3 = d
    out.append([c1, c2, sorted(c3)])
    try:
        a, b = [1, 2, 3]
    except ValueError as exc:
        out.append(str(exc))
    try:
        for a, (b, c) in [(1, (2,))]:
            pass
    except ValueError as exc:
        out.append(str(exc))
    return out
'''


def test_unpacking_keeps_python_semantics() -> None:
    """The instrumented targets (``__rx_targets__``/``__rx_step__``/``__rx_itt__``) assign
    what Python assigns and raise Python's errors."""
    native: dict[str, Any] = {}
    exec(compile(UNPACKING.replace("from rxchain_contract import Context, ContractError", ""),
                 "<native>", "exec"), {"Context": object}, native)
    expected = native["f"](None)
    assert value(call(InProcessRunner(), UNPACKING, "f")) == json.loads(json.dumps(expected))


def test_worker_charges_the_same_slack(sandbox: Sandbox) -> None:
    """The isolated worker (seccomp, dropped privileges) computes the same slack as the
    in-process engine, views included."""
    src = _contract([], ["for v in d.values():", "    acc += v", "    break", "acc += len(s | se)"], True)
    inv = make_inv(src, "f", gas=5_000_000)
    worker = sandbox.invoke(inv, MemBackend())
    local = InProcessRunner().invoke(inv, MemBackend())
    assert worker.ok and worker == local
    dense = call(InProcessRunner(), _contract([], ["for v in d.values():", "    acc += v", "    break",
                                                   "acc += len(s | se)"], False), "f", gas=5_000_000)
    assert worker.gas_used - dense.gas_used >= REPS * (DICT_SLACK_GAS + 2 * SET_SLACK_GAS)
