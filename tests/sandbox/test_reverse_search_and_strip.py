"""String methods whose C loop is quadratic in the pattern: charged by that worst case.

* ``rfind``/``rindex``/``rsplit``/``rpartition`` search backwards without the two-way
  algorithm of a forward search: O(len * len(sub)) for a long ``sub`` that almost matches.
  ``("a"*10**6).rfind("a"*10**5 + "b" + "a"*10**5)`` ran 18 s for ~100,000 gas (1 +
  len/32 for the search): TIMEOUT, an outcome that depends on the machine.
* ``strip``/``lstrip``/``rstrip(chars)`` look every stripped character up in ``chars`` by a
  linear scan: ``chr(0x1F600)*10**5`` stripped of ``chr(0x1F601)*10**5 + chr(0x1F600)`` ran
  2.3 s for 12,500 gas.
* ``startswith``/``endswith`` of a tuple compared every entry (a memcmp each) for 1 + len/32.
Patterns of at most 32 characters pay what they paid.
"""

from __future__ import annotations

import pytest

from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import assert_serving, call, value

HEAD = "from rxchain_contract import Context\n\n"

SOURCE = HEAD + '''
def f(ctx: Context, use: str, n: int, k: int) -> int:
    if use.endswith("strip"):
        s = chr(0x1F600) * n
        chars = chr(0x1F601) * k + chr(0x1F600)
        if use == "strip":
            return len(s.strip(chars))
        if use == "lstrip":
            return len(s.lstrip(chars))
        return len(str.rstrip(s, chars))
    s = "a" * n
    sub = "a" * k + "b" + "a" * k
    if use == "rfind":
        return s.rfind(sub)
    if use == "rindex":
        try:
            return s.rindex(sub)
        except ValueError:
            return -1
    if use == "rsplit":
        return len(s.rsplit(sub, 1))
    if use == "rsplit_kw":
        return len(s.rsplit(sep=sub))
    f = s.rpartition
    return len(f(sub)[0])
'''

# sizes that ran 0.3-0.5 s of CPU for less than 100,000 gas before
HOSTILE = {
    "rfind": (10**6, 2000),
    "rindex": (10**6, 2000),
    "rsplit": (10**6, 2000),
    "rsplit_kw": (10**6, 2000),
    "rpartition": (10**6, 2000),
    "strip": (30_000, 30_000),
    "lstrip": (30_000, 30_000),
    "rstrip": (30_000, 30_000),
}


@pytest.mark.parametrize("use", sorted(HOSTILE))
def test_a_quadratic_search_or_strip_is_charged_its_worst_case(use: str) -> None:
    n, k = HOSTILE[use]
    r = call(InProcessRunner(), SOURCE, "f", {"use": use, "n": n, "k": k}, gas=1_000_000)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.reason, r.message, r.gas_used)


@pytest.mark.parametrize("use", ["rfind", "strip"])
def test_the_worst_case_in_a_worker_is_out_of_gas_not_a_timeout(sandbox: Sandbox, use: str) -> None:
    """Sizes that ran 18 s (rfind) / minutes (strip) before: a deterministic OUT_OF_GAS."""
    n, k = (10**6, 10**5) if use == "rfind" else (10**6, 10**6)
    r = call(sandbox, SOURCE, "f", {"use": use, "n": n, "k": k}, gas=10_000_000)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.reason, r.message)
    assert_serving(sandbox)


ORDINARY = HEAD + '''
def f(ctx: Context) -> list:
    s = "a/b/c  " * 100
    t = "x" * 32
    return [s.rfind("/"), len(s.rsplit("/", 1)), s.rpartition("/")[2], len(s.strip()),
            len(s.rstrip(" c")), len(s.lstrip("a")), len(str.rstrip(s)), s.rindex("b"),
            len(s.rsplit(maxsplit=1)), len(s.rsplit(sep="/")), s.rfind(t), len(s.strip(t))]
'''


def test_short_patterns_pay_what_they_paid(sandbox: Sandbox) -> None:
    a = call(InProcessRunner(), ORDINARY, "f")
    b = call(sandbox, ORDINARY, "f")
    assert value(a) == [696, 2, "c  ", 698, 697, 699, 698, 695, 2, 201, -1, 700]
    assert a.gas_used == b.gas_used == 774  # the gas of the previous release


def test_a_long_pattern_pays_the_documented_figure() -> None:
    src = HEAD + '''
def f(ctx: Context) -> list:
    s = "a/b/c  " * 100
    return [s.rfind("x" * 40), len(s.strip("x" * 40))]
'''
    short = HEAD + '''
def f(ctx: Context) -> list:
    s = "a/b/c  " * 100
    return [s.rfind("x" * 4), len(s.strip("x" * 4))]
'''
    long_, base = call(InProcessRunner(), src, "f"), call(InProcessRunner(), short, "f")
    assert value(long_) == [-1, 700]
    # (700 - 40 + 1) * 40 // 1024 + 700 * (40 - 32) // 512, and 1 more to build each longer string
    assert long_.gas_used - base.gas_used == 25 + 10 + 2


AFFIX = HEAD + '''
def f(ctx: Context, use: str, n: int) -> bool:
    s = chr(0x1F600) * 100000
    p = chr(0x1F600) * 50000 + "b" + chr(0x1F600) * 49999
    t = (p,) * n
    if use == "startswith":
        return s.startswith(t)
    g = s.endswith
    return g(t)
'''


@pytest.mark.parametrize("use", ["startswith", "endswith"])
def test_startswith_a_tuple_pays_for_every_entry_compared(use: str) -> None:
    """Each entry is a memcmp of up to 100,000 characters: 1 per 32 characters, like a
    string comparison (10,000 entries: 16,580 gas in all and ~0.02 s before; 10**6: ~3.5 s)."""
    runner = InProcessRunner()
    r = call(runner, AFFIX, "f", {"use": use, "n": 10_000}, gas=1_000_000)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS"), (r.reason, r.message, r.gas_used)
    base = call(runner, AFFIX, "f", {"use": use, "n": 1}, gas=1_000_000)
    more = call(runner, AFFIX, "f", {"use": use, "n": 2}, gas=1_000_000)
    assert value(base) is False and value(more) is False
    assert more.gas_used - base.gas_used == 1 + 100_000 // 32  # one more entry compared


def test_startswith_of_short_affixes_answers_as_before(sandbox: Sandbox) -> None:
    src = HEAD + '''
def f(ctx: Context) -> list:
    return ["abc".startswith("a"), "abc".endswith(("x", "c")), "abc".startswith(("b",), 1),
            str.endswith("abc", "bc", 0, 3), "abc".startswith(()), "abc".endswith("")]
'''
    a, b = call(InProcessRunner(), src, "f"), call(sandbox, src, "f")
    assert value(a) == [True, True, True, True, False, True]
    assert (a.result_json, a.gas_used) == (b.result_json, b.gas_used)
