"""A client's commitment (``sha256(salt + canonical_json(content))``) is recomputed inside
the sandbox by ``ctx.canonical_json``, the node's own encoder: content with control
characters, quotes, backslashes and non-ASCII never spuriously mismatches (HASH_MISMATCH),
and content without a canonical form (a lone surrogate) is refused (BAD_CONTENT)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings

from tests.contracts import sandbox_adapter
from tests.contracts.chain import Chain
from tests.contracts.flows import JIANG
from tests.contracts.rxclient import World
from tests.sandbox.canonical_values import expected, json_values


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
    ctx.canonical_json inside the sandbox; a free-form field with arbitrary JSON never
    mismatches."""
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


@pytest.mark.parametrize("note", ["line\nbreak", "tab\there", "\x01\x02", 'q"uo\\te', {"k\x00": ["\x1f"]},
                                  "汉字 é", 2**70, -1, [], {}, "\u2028", "\\u0000"])
def test_edge_case_content_is_accepted(canon_world: World, note: Any) -> None:
    world = canon_world
    rx_id = world.new_rx_id()
    prep = world.prepare(world.content(rx_id, visit={"note": note}), pharmacy="p01")
    out = world.issue(prep, JIANG)
    assert out.ok, (out.reason, out.message)
