"""The checker never crashes: any text is either rejected (with a line) or compiles."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from node.sandbox.errors import ContractRejected
from node.sandbox.instrument import compile_contract

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "contracts").glob("*.py"))] or [
    "from rxchain_contract import Context\n\ndef f(ctx: Context, n: int) -> int:\n    return n\n"
]


def _outcome(source: str) -> str:
    try:
        compiled = compile_contract(source, "fuzz")
    except ContractRejected as exc:
        assert exc.line >= 0 and exc.message
        return "rejected"
    assert isinstance(compiled.functions, dict)
    return "compiled"


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_mutated_contracts_are_rejected_or_compile(data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(CORPUS))
    lines = source.splitlines(keepends=True)
    start = data.draw(st.integers(0, max(0, len(lines) - 1)))
    length = data.draw(st.integers(0, 8))
    insert = data.draw(st.sampled_from(
        ["", "import os\n", "    x = 1.5\n", "\tpass\n", "def (:\n", "__import__('os')\n",
         "    return ().__class__\n", "X = [1] * 10\n", "    global y\n"]))
    mutated = "".join(lines[:start]) + insert + "".join(lines[start + length:])
    assert _outcome(mutated) in ("rejected", "compiled")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_random_text_is_rejected_or_compiles(text: str) -> None:
    assert _outcome(text) in ("rejected", "compiled")
