"""Prefetched reads and the compact frames of the host <-> worker protocol.

The backend must see exactly the calls, in exactly the order, that it sees without
prefetching (so a peer's read/write set stays byte-identical); wrong predictions and stale
peeks never change a result silently; a worker sending malformed or lying compact frames is
killed with a protocol-violation reason and the pool keeps serving.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from node.ledger.statedb import Version, VersionedValue
from node.peer.simulator import TxSimulator
from node.sandbox import prefetch, protocol
from node.sandbox import types as t
from node.sandbox.inprocess import InProcessRunner
from node.sandbox.runtime import Sandbox
from tests.sandbox.helpers import CALLER, MemBackend, assert_serving, make_inv, value

READER = '''
from rxchain_contract import Context

def f(ctx: Context, rx: str) -> dict:
    a = ctx.get("rx/" + rx)
    b = ctx.get_from("other", "x/" + ctx.caller.org)
    n = 0
    if a is not None:
        n = a["n"]
    ctx.put("rx/" + rx, {"n": n + 1})
    c = ctx.get("rx/" + rx)
    d = ctx.get("missing/" + rx)
    ctx.delete("gone/" + rx)
    e = ctx.get("gone/" + rx)
    return {"a": a, "b": b, "c": c, "d": d, "e": e}
'''


@dataclass
class PeekMem(MemBackend):
    """MemBackend with a non-recording peek (optionally lying about one key)."""

    stale: str = ""

    def peek(self, namespace: str, key: str) -> bytes | None:
        if key == self.stale:
            return b'{"n":999}'
        return self.data.get((namespace, key))


class Refusal(Exception):
    reason = "ACCESS_DENIED"


@dataclass
class RefusingPeek(PeekMem):
    refuse: str = ""

    def get(self, namespace: str, key: str) -> bytes | None:
        if key == self.refuse:
            self.log.append(("get", namespace, key))
            raise Refusal("no reads of " + key)
        return super().get(namespace, key)


@pytest.fixture(scope="module")
def pool() -> Iterator[Sandbox]:
    sb = Sandbox(workers=1, allow_unchecked_for_tests=True)
    try:
        yield sb
    finally:
        sb.close()


_B = TypeVar("_B", bound=MemBackend)


class Writes:
    """Counts the host's writes to the worker (one per round trip)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        one, many = protocol.write_frame, protocol.write_frames

        def w1(fd: int, data: bytes) -> None:
            self.n += 1
            one(fd, data)

        def wn(fd: int, *frames: bytes, **kw: Any) -> None:
            self.n += 1
            many(fd, *frames, **kw)

        monkeypatch.setattr(protocol, "write_frame", w1)
        monkeypatch.setattr(protocol, "write_frames", wn)


def seeded(cls: type[_B]) -> _B:
    b = cls()
    b.data.update({("demo", "rx/RA"): b'{"n":1}', ("demo", "rx/RB"): b'{"n":5}',
                   ("other", "x/hosp1"): b'"o"', ("demo", "gone/RB"): b"7"})
    return b


def test_compact_codec_round_trips() -> None:
    table = [("ns", "k", b"v" * 3), ("ns", "k\u00e9", None), ("n2", "", b"")]
    assert protocol.decode_prefetch(protocol.encode_prefetch(table)) == table
    assert protocol.decode_prefetch(protocol.EMPTY_PREFETCH) == []
    assert protocol.decode_get(protocol.encode_get("ns", "key/1")) == ("ns", "key/1")
    assert protocol.decode_value(protocol.encode_value(None)) is None
    assert protocol.decode_value(protocol.encode_value(b"")) == b""
    ops = protocol.OpsBuilder()
    assert not ops
    ops.put("a", b"1")
    ops.read(7)
    ops.delete("b")
    assert protocol.decode_ops(ops.take()) == [
        (protocol.OP_PUT, "a", b"1", 0), (protocol.OP_READ, "", b"", 7),
        (protocol.OP_DELETE, "b", b"", 0)]
    assert not ops
    assert protocol.is_compact(protocol.OPS) and not protocol.is_compact(b"\x0a\x00")


@pytest.mark.parametrize(
    ("decode", "frame", "why"),
    [
        (protocol.decode_ops, protocol.OPS + b"P\x00\x05ab", "truncated"),
        (protocol.decode_ops, protocol.OPS + b"P\x00\x01a\x00\x00\x00\x09x", "truncated"),
        (protocol.decode_ops, protocol.OPS + b"R\x00\x00", "truncated"),
        (protocol.decode_ops, protocol.OPS + b"X", "unknown state operation"),
        (protocol.decode_ops, protocol.OPS + b"D\x00\x02\xff\xfe", "not UTF-8"),
        (protocol.decode_get, protocol.GET + b"\x00\x01a\x00\x01bZ", "trailing"),
        (protocol.decode_prefetch, protocol.EMPTY_PREFETCH + b"\x00", "trailing"),
        (protocol.decode_prefetch, protocol.GET, "expected a prefetch"),
        (protocol.decode_value, protocol.VALUE + b"\x02x", "malformed"),
        (protocol.decode_value, protocol.VALUE, "malformed"),
    ],
)
def test_malformed_compact_frames_are_refused(decode: Any, frame: bytes, why: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=why):
        decode(frame)


def test_templates_follow_arguments_and_caller() -> None:
    values = prefetch.sources(b'{"rx":"RX-1","n":3,"p":"x"}', CALLER)
    assert values == {"caller.org": "hosp1", "caller.name": "dr-wang", "arg.rx": "RX-1"}
    tpl = prefetch.template("demo", "grant/RX-1/hosp1", values)
    assert tpl == ("demo", ("grant/", ("arg.rx",), "/", ("caller.org",)))
    assert prefetch.render(tpl, {**values, "arg.rx": "RX-2"}) == ("demo", "grant/RX-2/hosp1")
    assert prefetch.render(tpl, {"caller.org": "h"}) is None
    pred = prefetch.Predictor()
    pred.learn("h", "f", values, [("demo", "rx/RX-1"), ("reg", "drug/D1"), ("demo", "rx/RX-1")])
    assert list(pred.predict("h", "f", {"arg.rx": "RX-9"})) == [("demo", "rx/RX-9"), ("reg", "drug/D1")]
    for _ in range(prefetch.MAX_IDLE):  # templates not read for MAX_IDLE calls are dropped
        pred.learn("h", "f", values, [("demo", "other")])
    assert list(pred.predict("h", "f", {"arg.rx": "RX-9"})) == [("demo", "other")]


def test_prefetched_reads_reach_the_backend_exactly_as_without_prefetch(
        pool: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for rx in ("RA", "RB"):  # A teaches the predictor; B is served from the prefetch table
        plain, peeking = seeded(MemBackend), seeded(PeekMem)
        inv = make_inv(READER, "f", {"rx": rx})
        writes = Writes(monkeypatch)
        r_plain = pool.invoke(inv, plain)
        n_plain = writes.n
        r_peek = pool.invoke(inv, peeking)
        n_peek = writes.n - n_plain
        assert r_peek == r_plain
        assert peeking.log == plain.log  # same calls, same order (put before the re-read)
    assert value(r_peek) == {"a": {"n": 5}, "b": "o", "c": {"n": 6}, "d": None, "e": None}
    # without prefetch: invoke + 5 gets; with: invoke + the 2 reads of keys it wrote
    assert (n_plain, n_peek) == (6, 3)


class _Reader:
    def __init__(self, data: dict[tuple[str, str], bytes]) -> None:
        self.data = data

    def get(self, ns: str, key: str) -> VersionedValue | None:
        v = self.data.get((ns, key))
        return None if v is None else VersionedValue(v, Version(3, len(key)))

    def range(self, ns: str, start: str, end: str, limit: int = 0,
              max_bytes: int = 0) -> list[tuple[str, VersionedValue]]:
        return []


class _NoPeek:
    """The simulator seen through the plain StateBackend protocol (no ``peek``: no prefetch)."""

    def __init__(self, sim: TxSimulator) -> None:
        self.get, self.range, self.history = sim.get, sim.range, sim.history
        self.put, self.delete = sim.put, sim.delete


def test_simulator_read_write_set_is_byte_identical_with_prefetch(pool: Sandbox) -> None:
    data = {("demo", "rx/RA"): b'{"n":1}', ("demo", "rx/RB"): b'{"n":5}', ("other", "x/hosp1"): b"1",
            ("demo", "gone/RB"): b"2"}
    reader = _Reader(data)
    sets = []
    hits = []
    for use_peek in (False, True, True):  # the peer's TxSimulator peeks itself
        sim = TxSimulator(reader, "demo")
        before = pool.stats()["prefetch_hits"]
        r = pool.invoke(make_inv(READER, "f", {"rx": "RB"}), sim if use_peek else _NoPeek(sim))
        assert r.ok, r.message
        hits.append(pool.stats()["prefetch_hits"] - before)
        sets.append((r, sim.rwset().SerializeToString()))
    assert sets[0] == sets[1] == sets[2]
    assert hits[0] == 0 and hits[2] >= 3  # a, b and d come from the table once learned


def test_stale_peek_fails_the_call_and_the_pool_keeps_serving(pool: Sandbox) -> None:
    pool.invoke(make_inv(READER, "f", {"rx": "RA"}), seeded(PeekMem))
    b = seeded(PeekMem)
    b.stale = "rx/RB"  # peek and get disagree: the state changed under the simulation
    r = pool.invoke(make_inv(READER, "f", {"rx": "RB"}), b)
    assert (r.ok, r.reason) == (False, "STATE_ERROR")
    assert "prefetched value" in r.message
    assert_serving(pool)


def test_backend_refusing_a_replayed_read_aborts_with_its_reason(pool: Sandbox) -> None:
    pool.invoke(make_inv(READER, "f", {"rx": "RA"}), seeded(PeekMem))
    b = seeded(RefusingPeek)
    b.refuse = "x/hosp1"
    r = pool.invoke(make_inv(READER, "f", {"rx": "RB"}), b)
    assert (r.ok, r.reason) == (False, "ACCESS_DENIED")
    assert "no reads of x/hosp1" in r.message
    # nothing after the refusal reached the backend
    assert b.log == [("get", "demo", "rx/RB"), ("get", "other", "x/hosp1")]
    assert_serving(pool)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


HOSTILE = '''
import os

def f(ctx):
    if ctx.tx_id != "learn":
        os.write(1, FRAME)
    return ctx.get("k")
'''


@pytest.mark.parametrize(
    ("mode", "frame", "why"),
    [
        ("index", protocol.OPS + b"R" + struct.pack(">I", 99), "prefetch entry 99 that was not sent"),
        ("kind", b"\x00Z", "unknown compact frame kind"),
        ("truncated", protocol.OPS + b"P\x00\x09k", "truncated compact frame"),
        ("written", protocol.OPS + b"P\x00\x01k\x00\x00\x00\x01" + b"1" + b"R" + struct.pack(">I", 0),
         "prefetched read of a key the invocation wrote"),
        ("badget", protocol.GET + b"\x00\x09", "truncated compact frame"),
    ],
)
def test_lying_worker_frames_are_protocol_violations(pool: Sandbox, mode: str, frame: bytes,
                                                     why: str) -> None:
    source = HOSTILE + f"\nFRAME = {_frame(frame)!r}  # {mode}\n"
    b = PeekMem()
    b.data[("demo", "k")] = b"1"
    learn = pool.invoke(make_inv(source, "f", tx_id="learn"), b, unchecked=True)
    assert learn.ok and json.loads(learn.result_json) == 1
    before = set(pool.worker_pids())
    r = pool.invoke(make_inv(source, "f", tx_id="hostile"), b, unchecked=True)
    assert (r.ok, r.reason) == (False, "WORKER_CRASHED")
    assert why in r.message
    assert set(pool.worker_pids()) != before
    assert_serving(pool)


def test_a_flood_of_state_operations_is_a_protocol_violation(pool: Sandbox) -> None:
    """A worker cannot make the host decode or replay more operations than the call could
    legitimately make (every state operation costs at least GAS_DELETE: 10,000 gas pay for
    at most 100, + 32)."""
    flood = protocol.OPS + (b"R" + struct.pack(">I", 0)) * 200
    source = HOSTILE + f"\nFRAME = {_frame(flood)!r}\n"
    limits = t.SandboxLimits(max_write_keys=1)
    b = PeekMem()
    b.data[("demo", "k")] = b"1"
    assert pool.invoke(make_inv(source, "f", tx_id="learn", gas=10_000, limits=limits), b,
                       unchecked=True).ok
    b.log.clear()
    r = pool.invoke(make_inv(source, "f", tx_id="flood", gas=10_000, limits=limits), b,
                    unchecked=True)
    assert (r.ok, r.reason) == (False, "WORKER_CRASHED")
    assert "more than 132 state operations" in r.message
    assert b.log == []  # nothing was replayed
    assert_serving(pool)


HOSTILE_LEARN = '''
from rxchain_contract import Context


def f(ctx: Context, a: str, b: str, c: str) -> int:
    n = 0
    key = (a + b + c)[:400] + ctx.tx_id[-4:]
    for i in range(40):
        if ctx.get(key) is None:
            n += 1
    return n
'''


def test_learning_is_bounded_and_long_namespaces_are_refused(
        pool: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unpredictable key read over and over is templated once per invocation (host CPU
    the contract does not pay for stays bounded); at most MAX_SOURCES arguments are
    substituted; a namespace longer than any contract name is refused by the API (same in
    every runner) and never learned."""
    templated: list[str] = []
    real = prefetch.template

    def counting(namespace: str, key: str, values: Any) -> prefetch.Template:
        templated.append(key)
        return real(namespace, key, values)

    monkeypatch.setattr(prefetch, "template", counting)
    for i in range(3):
        inv = make_inv(HOSTILE_LEARN, "f", {"a": "ab" * 100, "b": "cd" * 100, "c": "ef" * 100},
                       tx_id=f"tx-{i:04d}")
        r = pool.invoke(inv, seeded(PeekMem))
        assert r.ok and value(r) == 40, r.message
    assert len(templated) == 3  # one distinct key per invocation, 40 reads of it
    many = json.dumps({f"s{i:02d}": f"v{i:02d}" for i in range(40)}).encode()
    got = prefetch.sources(many, CALLER)
    assert len([k for k in got if k.startswith("arg.")]) == prefetch.MAX_SOURCES
    long_ns = make_inv('''
from rxchain_contract import Context


def g(ctx: Context) -> int:
    return ctx.get_from("n" * 300, "k") is None
''', "g")
    for runner in (pool, InProcessRunner()):
        r = runner.invoke(long_ns, seeded(PeekMem))
        assert (r.ok, r.reason) == (False, "CONTRACT_EXCEPTION") and "namespace" in r.message, r
    # and the host's predictor does not learn one either (a worker could send anything)
    predictor = prefetch.Predictor()
    predictor.learn("h" * 64, "g", {}, [("n" * (prefetch.MAX_NS_LEN + 1), "k"), ("ok", "k")])
    assert [ns for ns, _ in predictor.predict("h" * 64, "g", {})] == ["ok"]
