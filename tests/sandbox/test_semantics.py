"""Instrumentation preserves Python semantics: metered code returns what plain Python returns."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.sandbox.inprocess import InProcessRunner
from tests.sandbox.helpers import call

SNIPPETS = [
    "return [a + b, a - b, a * b, a // (b or 1), a % (b or 1), -a, abs(a), a ** 2, a << 3, a >> 1]",
    "return [a & b, a | b, a ^ b, ~a, divmod(a, b or 1), pow(a, 3, 7), min(a, b), max(a, b)]",
    "return [a < b, a <= b, a == b, a != b, a > b, a >= b, 0 < a < 100, a is None, a in [1, b]]",
    "x = [a, b, a + b]\nx += [1]\nx *= 2\nreturn [x, x[1:4], x[::-1], x[-2:], len(x), sorted(x)]",
    "s = 'abc' * (abs(a) % 5)\nreturn [s, s.upper(), s[1:], s.replace('b', 'xy'), s.split('c'), "
    "'-'.join([s, str(b)]), s.ljust(7, '.'), s.zfill(8), 'b' in s, s.count('a'), s.find('c')]",
    "d = {'k': a}\nd['j'] = b\nd['k'] += 1\nd.update({'z': 0})\nd.setdefault('q', [])\n"
    "return [d, sorted(d), list(d.items()), d.get('missing', 5), d.pop('z'), len(d)]",
    "return [x * x for x in range(abs(a) % 20) if x % 2 == b % 2]",
    "return {str(x): [y for y in range(x)] for x in range(abs(b) % 6)}",
    "return sorted({x % 5 for x in range(abs(a) % 30)})",
    "t = (a, b, (a, b))\nu, v, w = t\nreturn [u, v, list(w), t.count(a), t.index(b)]",
    "n = 0\ni = 0\nwhile i < abs(a) % 50:\n    i += 1\n    if i % 3 == 0:\n        continue\n"
    "    n += i\n    if n > 200:\n        break\nelse:\n    n = -n\nreturn [i, n]",
    "out = []\nfor i, ch in enumerate('hello'):\n    out.append(f'{i}:{ch}')\nreturn out",
    "return [f'{a:>6}', f'{b:+d}', f'{a!r}', f'{[a, b]}', f'{\"x\":^5}', '%d/%s' % (a, b), "
    "'%05d' % a, f'{a:x}']",
    "return [str(a), str([a, 'x']), repr('q'), str({'k': (1, 2)}), str(None), str(True), "
    "int(str(a)), bool(a)]",
    "return [sum([a, b, 3]), any([a > 0, b > 0]), all([]), list(zip([a, b], 'xy')), "
    "list(reversed([a, b])), list(map(abs, [a, b])), list(filter(None, [0, a, b]))]",
    "return [max([a, b], key=abs), min([a, b, 3], key=_neg), sorted([a, b, 0], reverse=True), "
    "sorted(['b', 'A', 'c'], key=str.lower)]",
    "try:\n    r = [1, 2][a]\nexcept IndexError:\n    r = 'idx'\nexcept (KeyError, ValueError):\n"
    "    r = 'other'\nelse:\n    r = [r]\nreturn r",
    "x = [3, 1, 2]\nx.sort()\nx.reverse()\nx.insert(1, a)\nx.remove(a)\nx.extend((b, b))\n"
    "return [x, x.pop(), x.index(b) if b in x else -1, x.copy()]",
    "def _fib(n: int) -> int:\n    return n if n < 2 else _fib(n - 1) + _fib(n - 2)\n"
    "return [_fib(abs(a) % 15), _fib(abs(b) % 10)]",
    "s = {a % 7, b % 7}\ns |= {9}\ns.add(4)\ns.discard(9)\nreturn [sorted(s), sorted(s & {4}), "
    "sorted(s - {4}), 4 in s, len(s | {100})]",
    "x = a\nx -= b\nx //= 3 if b % 3 else 1\nx |= 8\nx ^= 1\nx <<= 2\nx >>= 1\nx **= 2\nreturn x",
    "g = (i * 2 for i in range(5))\nreturn [list(g), dict(a=1, b=[a]), tuple('ab'), "
    "list(dict.fromkeys('aab')), isinstance(a, int), isinstance('x', (list, str))]",
    "return [chr(65 + abs(a) % 26), ord('a'), hex(a), bin(abs(b) % 64), oct(8), round(a, -1)]",
    "return ['a,b,,c'.split(','), ' x y '.strip().split(), 'AbC'.lower().startswith('ab'), "
    "'x=1'.partition('='), 'abc'.removeprefix('a'), '{}'.isalpha()]",
]


def _neg(x: int) -> int:
    return -x


def _plain(body: str, a: int, b: int) -> Any:
    ns: dict[str, Any] = {"_neg": _neg}
    src = "def f(a, b):\n" + "".join(f"    {ln}\n" for ln in body.splitlines())
    exec(compile(src, "<plain>", "exec"), ns)
    return json.loads(json.dumps(ns["f"](a, b)))


def _metered(runner: InProcessRunner, body: str, a: int, b: int) -> Any:
    src = (
        "from rxchain_contract import Context\n\n"
        "def _neg(x: int) -> int:\n    return -x\n\n"
        "def f(ctx: Context, a: int, b: int) -> list:\n"
        + "".join(f"    {ln}\n" for ln in body.splitlines())
    )
    r = call(runner, src, "f", {"a": a, "b": b}, gas=10_000_000)
    assert r.ok, (r.reason, r.message, body)
    return json.loads(r.result_json)


@pytest.mark.parametrize("body", SNIPPETS)
def test_snippet_matches_plain_python(body: str) -> None:
    runner = InProcessRunner()
    for a, b in [(0, 0), (7, -3), (-12, 5), (123, 45)]:
        assert _metered(runner, body, a, b) == _plain(body, a, b), (body, a, b)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.integers(-10**6, 10**6), b=st.integers(-10**6, 10**6),
       body=st.sampled_from(SNIPPETS))
def test_random_inputs_match_plain_python(a: int, b: int, body: str) -> None:
    assert _metered(InProcessRunner(), body, a, b) == _plain(body, a, b)
