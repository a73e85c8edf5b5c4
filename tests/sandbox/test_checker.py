"""Static checks: every forbidden construct is rejected at deploy with its line number."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.sandbox.checker import check_source
from node.sandbox.errors import ContractRejected

HEAD = "from rxchain_contract import Context, ContractError\n\ndef f(ctx: Context) -> int:\n"
BODY_LINE = 4  # the first body line of HEAD + body


def body(*lines: str) -> str:
    return HEAD + "".join(f"    {ln}\n" for ln in lines)


# (source, expected line, fragment of the message)
REJECTED = [
    ("import os\n", 1, "imports are not allowed"),
    ("from os import path\n", 1, "only 'from rxchain_contract"),
    ("from rxchain_contract import *\n", 1, "has no '*'"),
    ("from rxchain_contract import os\n", 1, "has no 'os'"),
    (body("import os"), BODY_LINE, "imports are not allowed"),
    (body("import time", "return time.time()"), BODY_LINE, "imports are not allowed"),
    (body("import random"), BODY_LINE, "imports are not allowed"),
    (body("from datetime import datetime"), BODY_LINE, "import only at module level"),
    (body("return __import__('os')"), BODY_LINE, "double underscore"),
    (body("return ().__class__.__bases__[0].__subclasses__()"), BODY_LINE, "'__class__'"),
    (body("return f.__globals__"), BODY_LINE, "'__globals__'"),
    (body("return __builtins__"), BODY_LINE, "double underscore"),
    (body("return open('/etc/passwd').read()"), BODY_LINE, "builtin 'open'"),
    (body("return eval('1')"), BODY_LINE, "builtin 'eval'"),
    (body("exec('x = 1')"), BODY_LINE, "builtin 'exec'"),
    (body("return compile('1', 'x', 'eval')"), BODY_LINE, "builtin 'compile'"),
    (body("return getattr(ctx, 'x')"), BODY_LINE, "builtin 'getattr'"),
    (body("setattr(ctx, 'x', 1)"), BODY_LINE, "builtin 'setattr'"),
    (body("return globals()"), BODY_LINE, "builtin 'globals'"),
    (body("return vars()"), BODY_LINE, "builtin 'vars'"),
    (body("return type(ctx)"), BODY_LINE, "builtin 'type'"),
    (body("return object()"), BODY_LINE, "builtin 'object'"),
    (body("print('x')"), BODY_LINE, "builtin 'print'"),
    (body("return id(ctx)"), BODY_LINE, "builtin 'id'"),
    (body("return hash('x')"), BODY_LINE, "builtin 'hash'"),
    (body("breakpoint()"), BODY_LINE, "builtin 'breakpoint'"),
    (body("return memoryview(ctx)"), BODY_LINE, "builtin 'memoryview'"),
    (body("return ctx._host"), BODY_LINE, "attribute '_host'"),
    (body("return max.args[0]"), BODY_LINE, "attribute 'args'"),
    (body("return str.__dict__"), BODY_LINE, "attribute '__dict__'"),
    (body("return ctx.caller.mro"), BODY_LINE, "attribute 'mro'"),
    (body("g = (x for x in [1])", "return g.gi_frame"), BODY_LINE + 1, "attribute 'gi_frame'"),
    (body("return '{0.caller}'.format(ctx)"), BODY_LINE, "attribute 'format'"),
    (body("ctx.tx_id = 'x'"), BODY_LINE, "assigning or deleting attribute"),
    (body("x = [1, 2]", "x[0:1] = [5, 6, 7]"), BODY_LINE + 1, "slice assignment"),
    (body("return 1.5"), BODY_LINE, "float literals"),
    (body("return 1e3"), BODY_LINE, "float literals"),
    (body("return 3 / 2"), BODY_LINE, "'/' gives floats"),
    (body("x = 3", "x /= 2"), BODY_LINE + 1, "'/=' gives floats"),
    (body("return b'x'"), BODY_LINE, "bytes literals"),
    (body("global G"), BODY_LINE, "global is not allowed"),
    (body("x = 1", "def g() -> None:", "    nonlocal x"), BODY_LINE + 2, "nonlocal"),
    (body("yield 1"), BODY_LINE, "generators"),
    (body("return lambda: 1"), BODY_LINE, "lambda"),
    (body("class A:", "    pass"), BODY_LINE, "class definitions"),
    (body("with ctx:", "    pass"), BODY_LINE, "with is not allowed"),
    (body("try:", "    pass", "except:", "    pass"), BODY_LINE + 2, "bare 'except:'"),
    (body("try:", "    pass", "except BaseException:", "    pass"), BODY_LINE + 2, "except may only"),
    (body("try:", "    pass", "finally:", "    return 1"), BODY_LINE, "try/finally"),
    (body("match ctx:", "    case _:", "        pass"), BODY_LINE, "match is not allowed"),
    (body("return 1 in [1] in [[1]]"), BODY_LINE, "chained comparison"),
    ("async def g(ctx: Context) -> None:\n    pass\n", 1, "async functions"),
    ("from rxchain_contract import Context\nfor i in range(3):\n    pass\n", 2, "module level"),
    ("from rxchain_contract import Context\nX = 1\nX.y = 2\n", 3, "module level"),
    ("def __init__(ctx: int) -> None:\n    pass\n", 1, "not allowed"),
    ("def f(ctx, x) -> None:\n    pass\n", 1, "needs a type"),
    ("def f(ctx, x: float) -> None:\n    pass\n", 1, "type must be"),
    ("def f(ctx, *args: int) -> None:\n    pass\n", 1, "no *args"),
    ("def f() -> None:\n    pass\n", 1, "context first"),
    ("@decorator\ndef f(ctx: int) -> None:\n    pass\n", 1, "decorators"),
    ("X = {}\n\ndef _f(x: dict = X) -> None:\n    pass\n", 3, "default values must be literal"),
    ("def _f(x: list = []) -> None:\n    pass\n", 1, "default values must be literal"),
    ("def f(ctx: int) -> None:\n    pass\ndef f(ctx: int) -> None:\n    pass\n", 3, "twice"),
    ("def f(ctx: int) -> None:\n    return (\n", 2, "syntax error"),
    ("x = " + "(" * 300 + "1" + ")" * 300 + "\n", 1, ""),
    ("x = " + "[" * 100 + "]" * 100 + "\n", 1, "nesting deeper than 80"),
]


@pytest.mark.parametrize(("source", "line", "fragment"), REJECTED)
def test_rejected_with_line(source: str, line: int, fragment: str) -> None:
    with pytest.raises(ContractRejected) as info:
        check_source(source)
    exc = info.value
    assert exc.reason == "CONTRACT_REJECTED"
    assert exc.line == line, str(exc)
    assert fragment in exc.message, exc.message
    assert str(exc).startswith(f"line {line}:")


ACCEPTED = """
\"\"\"A contract using most of the allowed subset.\"\"\"
from rxchain_contract import Context, ContractError as CE

LIMIT = 10
NAMES = ("a", "b")


def _twice(x: int) -> int:
    return x * 2


def run(ctx: Context, n: int, tags: list[str], opts: dict | None = None, *, flag: bool = False) -> dict:
    total = 0
    i = 0
    while i < n:
        i += 1
        total += _twice(i)
    for k, v in enumerate(tags):
        total += len(v) + k
    squares = {x: x ** 2 for x in range(n) if x % 2 == 0}
    seen = {t.lower() for t in tags}
    try:
        opts = opts or {}
        _ = opts["missing"]
    except (KeyError, CE) as exc:
        total -= 1
    text = f"{total:>6}|{ctx.caller.org!r}" + "%s-%d" % ("x", 3)
    q, r = divmod(total, 7)
    return {"total": total, "sq": squares, "seen": sorted(seen), "text": text, "q": q, "r": r,
            "flag": flag, "max": max(tags, default=""), "hex": hex(n), "names": list(NAMES)}
"""


def test_accepts_the_contract_subset() -> None:
    checked = check_source(ACCEPTED)
    assert sorted(checked.functions) == ["run"]
    params = {p.name: p for p in checked.functions["run"].params}
    assert params["n"].types == frozenset({"int"}) and params["n"].required
    assert params["tags"].types == frozenset({"list"})
    assert params["opts"].nullable and not params["opts"].required
    assert not params["flag"].required
    assert checked.imports == {"Context": "Context", "CE": "ContractError"}


CONTRACTS = sorted((Path(__file__).resolve().parents[2] / "contracts").glob("*.py"))


@pytest.mark.parametrize("path", CONTRACTS, ids=[p.name for p in CONTRACTS])
def test_project_contracts_pass_the_checker(path: Path) -> None:
    checked = check_source(path.read_text(encoding="utf-8"))
    assert checked.functions, f"{path.name} exports no public function"


def test_acceptance_does_not_depend_on_warning_filters() -> None:
    # pytest runs with warnings as errors; these only warn in plain Python
    src = (
        "from rxchain_contract import Context\n\n"
        "def f(ctx: Context, x: int) -> list:\n"
        "    return ['\\d', x is 1]\n"
    )
    from node.sandbox.instrument import compile_contract

    assert "f" in compile_contract(src).functions
