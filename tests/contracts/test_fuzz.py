"""Malformed input never crashes a contract: random mutations of a valid prescription's
content (and of a claim's lines) end in success or a named reason code -- never an
escaped exception (CONTRACT_EXCEPTION) or another runtime failure -- and a refusal
changes nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.sandbox.checker import check_source
from node.sandbox.types import BAD_ARGUMENTS, RUNTIME_REASONS
from tests.contracts import sandbox_adapter
from tests.contracts.chain import ROOT, Chain, who
from tests.contracts.flows import JIANG, WANG, lock_and_dispense, settle
from tests.contracts.rxclient import World

CRASHES = RUNTIME_REASONS - {BAD_ARGUMENTS}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6,
)
TOP = ["rx_id", "patient", "patient_info", "diagnosis", "first_visit", "days", "long_rx",
       "valid_days", "max_fills", "fill_interval_days", "drugs", "chronic_reason",
       "stability_assessment", "patient_confirmed"]
LINE = ["code", "qty", "days"]
INFO = ["birth_date", "guardian"]

mutation = st.one_of(
    st.tuples(st.just("top"), st.sampled_from(TOP), json_values | st.just("<delete>")),
    st.tuples(st.just("line"), st.sampled_from(LINE), json_values | st.just("<delete>")),
    st.tuples(st.just("info"), st.sampled_from(INFO), json_values | st.just("<delete>")),
)


def apply(content: dict[str, Any], muts: list[tuple[str, str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(content)
    for where, key, value in muts:
        target: Any = out
        if where == "line":
            target = out.get("drugs")
            target = target[0] if isinstance(target, list) and target else None
        elif where == "info":
            target = out.get("patient_info")
        if not isinstance(target, dict):
            continue
        if value == "<delete>":
            target.pop(key, None)
        else:
            target[key] = value
    return out


@pytest.fixture(scope="module")
def fuzz_world(runner: sandbox_adapter.Runner) -> World:
    """One loaded chain for all examples (each example uses fresh prescription ids)."""
    world = World(Chain(runner=runner))
    world.load()
    return world


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(muts=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_content_gets_a_reason_code(fuzz_world: World,
                                            muts: list[tuple[str, str, Any]]) -> None:
    world = fuzz_world
    rx_id = world.new_rx_id()
    content = apply(world.content(rx_id), muts)
    if not isinstance(content.get("patient"), str):
        content["patient"] = world.pid("patient-zhang")
    before = dict(world.chain.state.values)
    prep = world.prepare({**content, "rx_id": rx_id}, pharmacy="p01")
    prep.transient["content"] = content
    out = world.issue(prep, JIANG)
    assert out.reason not in CRASHES, (out.reason, out.message)
    if not out.ok:
        assert world.chain.state.values == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=json_values)
def test_malformed_claim_lines_get_a_reason_code(fuzz_world: World, lines: Any) -> None:
    world = fuzz_world
    rx_id = world.new_rx_id()
    prep = world.prepare(world.content(rx_id), pharmacy="p01")
    world.issue(prep, JIANG).unwrap()
    world.chain.submit("prescription", "review", WANG, rx_id=rx_id, approve=True,
                       reason="").unwrap()
    lock_and_dispense(world, prep).unwrap()
    before = dict(world.chain.state.values)
    out = settle(world, prep, lines=lines if lines is not None else [])
    assert out.reason not in CRASHES, (out.reason, out.message)
    if not out.ok:
        assert world.chain.state.values == before


CALLERS = ["h01:dr-jiang:doctor", "h01:pharm-he:pharmacist", "p01:pharm-wang:pharmacist",
           "p02:pharm-chen:pharmacist", "p01:courier-liu:courier", "ins01:clerk-qian:clerk",
           "reg01:auditor-fang:auditor", "h01:patient-zhang:patient", "h01:admin:admin",
           "ins01:admin:admin", "p01:admin:admin"]


def _signatures() -> list[tuple[str, str, list[tuple[str, str]]]]:
    out = []
    for name in ("registry", "prescription", "settlement"):
        checked = check_source((ROOT / "contracts" / f"{name}.py").read_text(encoding="utf-8"))
        for fn, sig in sorted(checked.functions.items()):
            out.append((name, fn, [(p.name, sorted(p.types)[0]) for p in sig.params]))
    return out


SIGNATURES = _signatures()
BY_TYPE: dict[str, st.SearchStrategy[Any]] = {
    "str": st.text(max_size=24) | st.sampled_from(["RX-2026-00001", "p01", "h01", "ins01", ""]),
    "int": st.integers(-5, 2**45),
    "bool": st.booleans(),
    "list": st.lists(json_values, max_size=3),
    "dict": st.dictionaries(st.sampled_from(["patient", "h01", "p01", "ins01", "community"]),
                            json_values, max_size=3),
}


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, str, str, dict[str, Any], dict[str, Any]]:
    contract, fn, params = draw(st.sampled_from(SIGNATURES))
    args = {name: draw(BY_TYPE[kind]) for name, kind in params}
    transient = draw(st.dictionaries(
        st.sampled_from(["content", "salt", "claim", "claim_salt", "lines", "dx_key",
                         "diagnoses", "icd10", "patient_binding", "patient_user", "trace_codes",
                         "trace_key", "cap_used_by_disease"]), json_values, max_size=3))
    return contract, fn, draw(st.sampled_from(CALLERS)), args, transient


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls())
def test_any_function_any_input_gets_a_reason_code(
    fuzz_world: World, call: tuple[str, str, str, dict[str, Any], dict[str, Any]]
) -> None:
    contract, fn, caller, args, transient = call
    out = fuzz_world.chain.query(contract, fn, who(caller), transient=transient, **args)
    assert out.reason not in CRASHES, (contract, fn, out.reason, out.message)


_PLAIN: dict[str, Any] = {"str": "RX-2026-00001", "int": 1, "bool": True, "list": [], "dict": {}}


def test_every_string_argument_rejects_a_nul_key_with_a_reason_code(fuzz_world: World) -> None:
    """Strings end up in state keys; a NUL (which no state key may hold) is the caller's bad
    argument, never a contract exception, whichever function and role."""
    crashed = []
    for contract, fn, params in SIGNATURES:
        for name, kind in params:
            if kind != "str":
                continue
            args = {p: ("\x00" if p == name else _PLAIN[k]) for p, k in params}
            for caller in CALLERS:
                out = fuzz_world.chain.query(contract, fn, who(caller), transient={}, **args)
                if out.reason in CRASHES:
                    crashed.append((contract, fn, name, caller, out.reason, out.message))
    assert not crashed, sorted({c[:3] for c in crashed})
