"""The contract API (Context, arguments, results, errors), through both runners."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import CALLER, MemBackend, call, make_inv, value


@pytest.fixture(params=["inprocess", "sandbox"])
def runner(request: pytest.FixtureRequest, sandbox: Sandbox) -> object:
    return InProcessRunner() if request.param == "inprocess" else sandbox


STATE = '''
from rxchain_contract import Context, ContractError

def write(ctx: Context, key: str, value: dict) -> None:
    ctx.put(key, value)

def read(ctx: Context, key: str) -> dict | None:
    return ctx.get(key)

def scan(ctx: Context, start: str, end: str, limit: int = 100) -> list:
    return ctx.range(start, end, limit)

def other(ctx: Context, ns: str, key: str) -> dict:
    return {"one": ctx.get_from(ns, key), "many": ctx.range_from(ns, "", "~", 10)}

def mixed(ctx: Context) -> list:
    ctx.put("a", 1)
    first = ctx.get("a")
    ctx.delete("a")
    ctx.put("b", [1, "x", None, True, {"k": -5}])
    return [first, ctx.get("a"), ctx.get("b")]

def trail(ctx: Context, key: str) -> list:
    return ctx.history(key)

def secret(ctx: Context) -> dict:
    p = ctx.transient("patient")
    return {"has": p is not None, "missing": ctx.transient("nope"), "len": len(p["name"])}

def who(ctx: Context) -> dict:
    c = ctx.caller
    return {"org": c.org, "role": c.role, "name": c.name, "attrs": c.attrs, "kind": c.org_kind,
            "level": c.hospital_level, "tx": ctx.tx_id, "ts": ctx.timestamp_ms, "ns": ctx.contract}

def events(ctx: Context, n: int) -> int:
    for i in range(n):
        ctx.emit("tick", {"i": i})
    return n

def hashes(ctx: Context, text: str) -> list:
    return [ctx.sha256_hex(text), ctx.hmac_sha256_hex("00ff", text)]

def refuse(ctx: Context, how: str) -> None:
    if how == "fail":
        ctx.fail("NOT_FOLLOW_UP", "no earlier diagnosis")
    if how == "raise":
        raise ContractError("RX_EXPIRED")
    if how == "bad_reason":
        raise ContractError("lower case", "x")
    if how == "keyerror":
        return {}["missing"]
    if how == "float_result":
        return {1, 2}
    if how == "bad_key":
        ctx.put("", 1)
    if how == "write_then_fail":
        ctx.put("w", 1)
        ctx.fail("LATE", "after a write")
    return None
'''


def test_put_get_delete_range(runner) -> None:
    be = MemBackend()
    for k in ("rx/1", "rx/2", "rx/3", "zz"):
        assert call(runner, STATE, "write", {"key": k, "value": {"k": k}}, be).ok
    assert be.data[("demo", "rx/2")] == b'{"k":"rx/2"}'
    assert value(call(runner, STATE, "read", {"key": "rx/2"}, be)) == {"k": "rx/2"}
    assert value(call(runner, STATE, "read", {"key": "nope"}, be)) is None
    rows = value(call(runner, STATE, "scan", {"start": "rx/", "end": "rx0", "limit": 2}, be))
    assert rows == [["rx/1", {"k": "rx/1"}], ["rx/2", {"k": "rx/2"}]]
    be.log.clear()
    r = call(runner, STATE, "mixed", {}, be)
    # the backend sees the calls in program order (buffered writes are flushed before reads)
    assert [e[:3] for e in be.log] == [
        ("put", "demo", "a"), ("get", "demo", "a"), ("delete", "demo", "a"),
        ("put", "demo", "b"), ("get", "demo", "a"), ("get", "demo", "b"),
    ]
    assert value(r) == [1, None, [1, "x", None, True, {"k": -5}]]


def test_read_other_namespace(runner) -> None:
    be = MemBackend()
    be.data[("registry", "drug/1")] = b'{"name":"x"}'
    r = value(call(runner, STATE, "other", {"ns": "registry", "key": "drug/1"}, be))
    assert r == {"one": {"name": "x"}, "many": [["drug/1", {"name": "x"}]]}
    assert ("registry", "drug/1") in be.data and not be.writes()


def test_history(runner) -> None:
    be = MemBackend()
    be.hist[("demo", "k")] = [
        t.HistoryEntry("tx-a", 3, 1000, False, b'{"v":1}'),
        t.HistoryEntry("tx-b", 5, 2000, True, None),
    ]
    assert value(call(runner, STATE, "trail", {"key": "k"}, be)) == [
        {"tx_id": "tx-a", "block": 3, "timestamp_ms": 1000, "is_delete": False, "value": {"v": 1}},
        {"tx_id": "tx-b", "block": 5, "timestamp_ms": 2000, "is_delete": True, "value": None},
    ]


def test_transient_caller_and_tx_fields(runner) -> None:
    r = call(runner, STATE, "secret", {}, transient={"patient": {"name": "Li Mei"}})
    assert value(r) == {"has": True, "missing": None, "len": 6}
    assert b"Li Mei" not in r.result_json
    w = value(call(runner, STATE, "who", {}, tx_id="tx-9", timestamp_ms=1234, contract="rx"))
    assert w == {"org": CALLER.org, "role": "doctor", "name": "dr-wang", "attrs": dict(CALLER.attrs),
                 "kind": "hospital", "level": "tertiary", "tx": "tx-9", "ts": 1234, "ns": "rx"}


def test_events_and_hashes(runner) -> None:
    r = call(runner, STATE, "events", {"n": 3})
    assert r.ok and [(e.name, e.payload_json) for e in r.events] == [
        ("tick", b'{"i":0}'), ("tick", b'{"i":1}'), ("tick", b'{"i":2}')]
    too_many = call(runner, STATE, "events", {"n": 100})
    assert too_many.reason == "SIZE_LIMIT" and too_many.events == ()
    import hashlib
    import hmac
    h = value(call(runner, STATE, "hashes", {"text": "处方"}))
    assert h == [hashlib.sha256("处方".encode()).hexdigest(),
                 hmac.new(bytes.fromhex("00ff"), "处方".encode(), hashlib.sha256).hexdigest()]


@pytest.mark.parametrize(
    ("how", "reason", "message"),
    [
        ("fail", "NOT_FOLLOW_UP", "no earlier diagnosis"),
        ("raise", "RX_EXPIRED", ""),
        ("bad_reason", "CONTRACT_EXCEPTION", "invalid ContractError reason 'lower case'"),
        ("keyerror", "CONTRACT_EXCEPTION", "KeyError: 'missing'"),
        ("float_result", "BAD_VALUE", "result: set is not a JSON value (no floats, sets, bytes)"),
        ("bad_key", "CONTRACT_EXCEPTION", "ValueError: state key must be a non-empty string"),
        ("write_then_fail", "LATE", "after a write"),
    ],
)
def test_errors_carry_reason_and_message(runner, how: str, reason: str, message: str) -> None:
    r = call(runner, STATE, "refuse", {"how": how})
    assert (r.ok, r.reason, r.result_json, r.events) == (False, reason, b"", ())
    assert r.message.startswith(message), r.message


@pytest.mark.parametrize(
    ("function", "args", "reason"),
    [
        ("read", {}, "BAD_ARGUMENTS"),
        ("read", {"key": 5}, "BAD_ARGUMENTS"),
        ("read", {"key": "a", "extra": 1}, "BAD_ARGUMENTS"),
        ("read", b'{"key": 1.5}', "BAD_ARGUMENTS"),
        ("read", b'{"key": NaN}', "BAD_ARGUMENTS"),
        ("read", b"[1]", "BAD_ARGUMENTS"),
        ("read", b"{not json", "BAD_ARGUMENTS"),
        ("events", {"n": True}, "BAD_ARGUMENTS"),
        ("write", {"key": "k", "value": [1]}, "BAD_ARGUMENTS"),
        ("write", {"key": "k", "value": None}, "BAD_ARGUMENTS"),
        ("nothing", {}, "UNKNOWN_FUNCTION"),
        ("Context", {}, "UNKNOWN_FUNCTION"),
    ],
)
def test_bad_arguments_and_unknown_functions(runner, function: str, args, reason: str) -> None:
    be = MemBackend()
    r = call(runner, STATE, function, args, be)
    assert (r.ok, r.reason) == (False, reason), r.message
    assert be.log == []


def test_private_functions_are_not_callable(runner) -> None:
    src = "from rxchain_contract import Context\n\ndef _admin(ctx: Context) -> int:\n    return 1\n"
    assert call(runner, src, "_admin", {}).reason == "UNKNOWN_FUNCTION"


def test_rejected_source_at_invoke(runner) -> None:
    r = call(runner, "import os\n", "f", {})
    assert (r.ok, r.reason) == (False, "CONTRACT_REJECTED")
    assert "line 1" in r.message


TEXT = '''
from rxchain_contract import Context

def _helper(x: int) -> int:
    return x

def show(ctx: Context) -> list:
    d = {"b": [1, (2, 3)], "a": {"x", "y"}}
    return [str(_helper), repr(ctx), str(ctx.caller), f"{_helper}", "%s" % (_helper,), str(d),
            repr("q'"), str(None), f"{d!r:>40}"]
'''


def test_text_of_values_is_deterministic(runner) -> None:
    r = value(call(runner, TEXT, "show", {}))
    assert r[:5] == ["<function>", "<Context>", "<Caller>", "<function>", "<function>"]
    assert r[5] == "{'b': [1, (2, 3)], 'a': {'x', 'y'}}"
    assert r[6:8] == ['"q\'"', "None"]
    assert "0x" not in json.dumps(r)


GLOBALS = '''
from rxchain_contract import Context

SEEN = []
COUNT = {"n": 0}

def visit(ctx: Context) -> list:
    SEEN.append(ctx.tx_id)
    COUNT["n"] += 1
    return [len(SEEN), COUNT["n"]]
'''


def test_module_globals_do_not_persist_between_invocations(runner) -> None:
    for i in range(4):
        assert value(call(runner, GLOBALS, "visit", {}, tx_id=f"tx-{i}")) == [1, 1]


def test_same_invocation_same_bytes_and_gas_on_both_runners(sandbox: Sandbox) -> None:
    inv = make_inv(STATE, "mixed", {})
    a, b = MemBackend(), MemBackend()
    ra = InProcessRunner().invoke(inv, a)
    rb = sandbox.invoke(inv, b)
    assert ra == rb and a.log == b.log


@pytest.mark.parametrize(
    "change",
    [
        {"gas_limit": -1},
        {"gas_limit": 1 << 64},
        {"timestamp_ms": 1.5},
        {"function": ""},
        {"args_json": "{}"},
        {"caller": t.CallerInfo("o", "r", attrs={"years": 5})},  # type: ignore[dict-item]
        {"transient": {"p": "not bytes"}},
        {"limits": t.SandboxLimits(max_recursion_depth=-1)},
        {"limits": t.SandboxLimits(max_events=1 << 40)},
        {"limits": t.SandboxLimits(wall_timeout_s=0)},
    ],
)
def test_malformed_invocations_change_nothing(runner, sandbox: Sandbox, change: dict[str, Any]) -> None:

    restarts = sandbox.restarts
    be = MemBackend()
    r = runner.invoke(replace(make_inv(STATE, "events", {"n": 1}), **change), be)
    assert (r.ok, r.reason) == (False, "BAD_ARGUMENTS") and r.message.startswith("invalid")
    assert be.log == [] and sandbox.restarts == restarts
    assert value(call(runner, STATE, "events", {"n": 1})) == 1


def test_caller_attribute_order_is_canonical(runner) -> None:
    src = (
        "from rxchain_contract import Context\n\n"
        "def f(ctx: Context) -> list:\n    return list(ctx.caller.attrs)\n"
    )
    attrs = {f"k{i:02d}": str(i) for i in (7, 3, 11, 1, 5)}
    inv = replace(make_inv(src, "f", {}), caller=t.CallerInfo("o", "r", attrs=attrs))
    assert value(runner.invoke(inv, MemBackend())) == sorted(attrs)
