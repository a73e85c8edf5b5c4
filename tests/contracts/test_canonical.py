"""The contracts' own canonical JSON (``_canon``; contracts cannot import) is the same
function as ``node.crypto.canonical.canonical_json``: equal output on random JSON values,
including control characters, quotes, backslashes, non-ASCII and lone surrogates (which
have no canonical form: the client cannot commit to them, the contract answers BAD_CONTENT),
so a commitment made by a client can never spuriously mismatch (HASH_MISMATCH)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from node.crypto.canonical import canonical_json
from tests.contracts import sandbox_adapter
from tests.contracts.chain import ROOT, Chain
from tests.contracts.flows import JIANG
from tests.contracts.rxclient import World

HELPERS = ("HEX", "JSON_ESCAPES", "_canon_str", "_canon")
WITH_CANON = ("prescription", "settlement")


def _helper_nodes(contract: str) -> list[ast.stmt]:
    tree = ast.parse((ROOT / "contracts" / f"{contract}.py").read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        name = ""
        if isinstance(node, ast.FunctionDef):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        if name in HELPERS:
            out.append(node)
    assert len(out) == len(HELPERS), f"{contract}: helpers {HELPERS} not all found"
    return out


def _load_canon(contract: str) -> Callable[[Any], str]:
    """The contract's helpers, compiled alone from its source (exactly the deployed code)."""
    module = ast.Module(body=_helper_nodes(contract), type_ignores=[])
    namespace: dict[str, Any] = {}
    exec(compile(module, f"contracts/{contract}.py", "exec"), namespace)
    fn: Callable[[Any], str] = namespace["_canon"]
    return fn


CANON = {name: _load_canon(name) for name in WITH_CANON}

# every code point, surrogates and control characters included
chars = st.characters(blacklist_categories=())
texts = st.text(chars, max_size=12) | st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\u2028",
                                                       "\ud800", "\U0001f48a", "\\u0000"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=25,
)


def expected(value: Any) -> str:
    """canonical_json as text, "" when it has none (a lone surrogate cannot be UTF-8)."""
    try:
        return canonical_json(value).decode("utf-8")
    except UnicodeEncodeError:
        return ""


def test_the_helpers_are_the_same_code_in_every_contract() -> None:
    dumps = {name: [ast.dump(n) for n in _helper_nodes(name)] for name in WITH_CANON}
    assert dumps["prescription"] == dumps["settlement"]


@pytest.mark.parametrize("contract", WITH_CANON)
@settings(max_examples=400, deadline=None)
@given(value=json_values)
def test_canon_equals_canonical_json(contract: str, value: Any) -> None:
    assert CANON[contract](value) == expected(value)


@pytest.mark.parametrize("value", ["line\nbreak", "tab\there", "\x01\x02", 'q"uo\\te', "\ud83d",
                                   {"k\x00": ["\x1f"]}, "汉字 é", 2**70, -1, [], {}])
def test_canon_on_edge_cases(value: Any) -> None:
    for contract in WITH_CANON:
        assert CANON[contract](value) == expected(value)


@pytest.fixture(scope="module")
def canon_world(runner: sandbox_adapter.Runner) -> World:
    world = World(Chain(runner=runner))
    world.load()
    return world


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(note=json_values)
def test_any_committable_content_is_accepted_through_the_sandbox(canon_world: World,
                                                                 note: Any) -> None:
    """End to end: the client commits with canonical_json, the contract recomputes with
    _canon inside the sandbox; a free-form field with arbitrary JSON never mismatches."""
    world = canon_world
    rx_id = world.new_rx_id()
    content = world.content(rx_id, visit={"note": note})
    # a lone surrogate has no UTF-8 form: such content can be neither committed nor sent
    assume(expected(content) != "")
    prep = world.prepare(content, pharmacy="p01")
    out = world.issue(prep, JIANG)
    assert out.ok, (out.reason, out.message)
    verified = world.chain.query("prescription", "verify", JIANG, transient={
        "content": content, "salt": prep.salt}, rx_id=rx_id)
    assert verified.ok, (verified.reason, verified.message)
