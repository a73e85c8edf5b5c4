"""Long division of big integers is charged: ``a // b``, ``a % b`` (and ``//=``, ``%=``)
and ``divmod(a, b)`` of a 4096-bit number by a 2048-bit one take ~12 us of CPU each and
were free -- a ``while`` loop of them ran 0.56 s (``//``) to 1.8 s (``divmod``) per 100,000
gas.  They pay (bits(a) - bits(b) + 1) * bits(b) / 2**15 (128 gas there); divisions of
ordinary amounts pay nothing more.  ``round(a, -k)`` likewise (it computes 10**k and
divides by it: ~31 us for k = 4096, free before)."""

from __future__ import annotations

import pytest

from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import call, value

HEAD = "from rxchain_contract import Context\n\n"

OPS = {
    "floordiv": "x = a // b",
    "mod": "x = a % b",
    "divmod": "x = divmod(a, b)",
    "ifloordiv": "x = a\n        x //= b",
    "imod": "x = a\n        x %= b",
}


def _loop(op: str) -> str:
    return HEAD + f'''
def f(ctx: Context, n: int) -> int:
    a = 2**4095 + 12345678901234567890
    b = 2**2047 + 98765432109876543
    i = 0
    while i < n:
        {OPS[op]}
        i += 1
    return i
'''


@pytest.mark.parametrize("op", sorted(OPS))
def test_dividing_big_integers_is_charged(op: str) -> None:
    runner = InProcessRunner()
    one = call(runner, _loop(op), "f", {"n": 1})
    two = call(runner, _loop(op), "f", {"n": 2})
    assert value(one) == 1 and value(two) == 2
    # one more iteration: its loop gas and (4096 - 2048 + 1) * 2048 >> 15 == 128 for the division
    assert two.gas_used - one.gas_used == 1 + 128
    r = call(runner, _loop(op), "f", {"n": 100_000}, gas=1_000_000)
    assert (r.ok, r.reason) == (False, "OUT_OF_GAS")


SMALL = HEAD + '''
def f(ctx: Context, a: int, b: int) -> list:
    x = a
    x //= b
    y = a
    y %= b
    return [a // b, a % b, divmod(a, b), x, y, divmod(True, 1), 10**25 // b, -a % 3]
'''


def test_ordinary_divisions_answer_and_cost_as_before(sandbox: Sandbox) -> None:
    args = {"a": 123_456_789_012, "b": -97}
    a, b = call(InProcessRunner(), SMALL, "f", args), call(sandbox, SMALL, "f", args)
    q, r = divmod(123_456_789_012, -97)
    assert value(a) == [q, r, [q, r], q, r, [1, 0], 10**25 // -97, -123_456_789_012 % 3]
    assert (a.result_json, a.gas_used) == (b.result_json, b.gas_used) == (a.result_json, 27)


ROUND = HEAD + '''
def f(ctx: Context, n: int, digits: int) -> int:
    a = 2**4095 + 12345678901234567890
    i = 0
    while i < n:
        x = round(a, digits)
        i += 1
    return i
'''


@pytest.mark.parametrize(("digits", "gas"), [(-4096, 176), (-600, 130), (-2, 0), (5, 0)])
def test_rounding_a_big_integer_to_negative_digits_is_charged(digits: int, gas: int) -> None:
    """``round(a, -k)`` divides by 10**k (which it computes first): ~31 us for k = 4096, free
    before; ordinary roundings pay nothing more."""
    runner = InProcessRunner()
    one = call(runner, ROUND, "f", {"n": 1, "digits": digits})
    two = call(runner, ROUND, "f", {"n": 2, "digits": digits})
    assert value(one) == 1 and value(two) == 2
    assert two.gas_used - one.gas_used == 1 + gas


def test_round_answers_as_before() -> None:
    src = HEAD + '''
def f(ctx: Context) -> list:
    return [round(1234567, -2), round(-1250, -2), round(1350, -2), round(7, 3), round(5), round(10**30, -29)]
'''
    assert value(call(InProcessRunner(), src, "f")) == [1234600, -1200, 1400, 7, 5, 10**30]
