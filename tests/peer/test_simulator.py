"""TxSimulator: recorded reads/writes, canonical order, limits, no state writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.errors import RxError
from node.ledger.statedb import KeyWrite, StateDB, TxOutcome, next_state_hash
from node.peer.simulator import SimulationLimits, TxSimulator


@pytest.fixture
def db(tmp_path: Path):
    d = StateDB(tmp_path / "s", sync=False)
    outcomes = [TxOutcome(0, "t0", 1, 1, [KeyWrite("c", k, v, False)
                                          for k, v in (("a", b"1"), ("b", b"2"), ("d", b"4"))])]
    d.apply_block(0, outcomes, next_state_hash(b"\0" * 32, 0, outcomes))
    try:
        yield d
    finally:
        d.close()


def test_reads_writes_recorded_sorted(db: StateDB) -> None:
    with db.snapshot() as snap:
        sim = TxSimulator(snap, "c")
        assert sim.get("c", "d") == b"4"
        assert sim.get("c", "zz") is None
        assert sim.get("c", "a") == b"1"
        assert sim.get("c", "d") == b"4"  # second read not recorded twice
        sim.put("c", "z", b"9")
        sim.put("c", "b", b"x")
        sim.put("c", "b", b"y")  # last write wins
        sim.delete("c", "a")
        assert sim.get("c", "b") == b"y"  # own write, no read recorded
        rows = sim.range("c", "a", "c", 0)
        rw = sim.rwset()
    assert rows == [("a", b"1"), ("b", b"2")]
    ns = rw.ns_rwsets[0]
    assert [r.key for r in ns.reads] == ["a", "d", "zz"]
    assert ns.reads[0].version.block == 0 and ns.reads[0].HasField("version")
    assert not ns.reads[2].HasField("version")
    assert [(w.key, w.value, w.is_delete) for w in ns.writes] == [
        ("a", b"", True), ("b", b"y", False), ("z", b"9", False)]
    assert ns.range_queries[0].exhausted and [r.key for r in ns.range_queries[0].reads] == ["a", "b"]
    vv = db.get("c", "b")
    assert vv is not None and vv.value == b"2" and db.get("c", "z") is None


def test_peek_returns_what_get_would_and_records_nothing(db: StateDB) -> None:
    with db.snapshot() as snap:
        sim = TxSimulator(snap, "c")
        assert sim.peek("c", "a") == b"1" and sim.peek("c", "zz") is None
        assert sim.peek("other", "a") is None
        assert not sim.rwset().ns_rwsets  # nothing recorded, not even an empty namespace set
        sim.put("c", "a", b"own")
        sim.delete("c", "b")
        assert sim.peek("c", "a") == sim.get("c", "a") == b"own"
        assert sim.peek("c", "b") is sim.get("c", "b") is None
        with pytest.raises(RxError):
            sim.peek("c", "bad\0key")
        ns = sim.rwset().ns_rwsets[0]
    assert [r.key for r in ns.reads] == []


def test_range_with_limit_not_exhausted(db: StateDB) -> None:
    with db.snapshot() as snap:
        sim = TxSimulator(snap, "c")
        assert [k for k, _ in sim.range("c", "", "", 2)] == ["a", "b"]
        rq = sim.rwset().ns_rwsets[0].range_queries[0]
    assert not rq.exhausted


def test_a_range_read_is_bounded_in_bytes_not_only_in_keys(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A contract asking for many large values gets SIZE_LIMIT (deterministic: it depends on
    the state only) instead of the peer holding them all; fewer keys are answered."""
    import node.peer.simulator as simulator

    monkeypatch.setattr(simulator, "MAX_RANGE_BYTES", 10_000)
    d = StateDB(tmp_path / "big", sync=False)
    try:
        writes = [KeyWrite("c", f"k{i:02d}", bytes([i]) * 3000, False) for i in range(8)]
        outcomes = [TxOutcome(0, "t0", 1, 1, writes)]
        d.apply_block(0, outcomes, next_state_hash(b"\0" * 32, 0, outcomes))
        with d.snapshot() as snap:
            sim = TxSimulator(snap, "c")
            assert [k for k, _ in sim.range("c", "", "", 3)] == ["k00", "k01", "k02"]
            with pytest.raises(RxError) as err:
                sim.range("c", "", "", 0)
            assert err.value.reason == "SIZE_LIMIT" and "fewer keys" in err.value.message
            with pytest.raises(RxError):
                sim.range("c", "", "", 4)  # 12,000 bytes of values
            assert len(sim.rwset().ns_rwsets[0].range_queries) == 1  # only the answered one
    finally:
        d.close()


def test_writes_only_own_namespace_and_limits(db: StateDB) -> None:
    with db.snapshot() as snap:
        sim = TxSimulator(snap, "c", SimulationLimits(max_write_set_keys=2, max_value_bytes=4))
        assert sim.get("other", "a") is None  # reading other namespaces is fine
        with pytest.raises(RxError) as err:
            sim.put("other", "k", b"v")
        assert err.value.reason == "ACCESS_DENIED"
        with pytest.raises(RxError) as err:
            sim.put("c", "k", b"12345")
        assert err.value.reason == "SIZE_LIMIT"
        sim.put("c", "k1", b"1")
        sim.put("c", "k2", b"1")
        sim.put("c", "k1", b"2")  # rewriting a key is not a new key
        with pytest.raises(RxError) as err:
            sim.put("c", "k3", b"1")
        assert err.value.reason == "WRITE_SET_LIMIT"


ops = st.lists(st.tuples(st.sampled_from(["get", "put", "del", "range"]),
                         st.sampled_from(["a", "b", "c", "d", "e"]),
                         st.binary(max_size=3)), max_size=30)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # db is read-only here
@given(ops=ops)
def test_rwset_is_deterministic(db: StateDB, ops) -> None:
    outs = []
    for _ in range(2):
        with db.snapshot() as snap:
            sim = TxSimulator(snap, "c")
            for op, key, value in ops:
                if op == "get":
                    sim.get("c", key)
                elif op == "put":
                    sim.put("c", key, value)
                elif op == "del":
                    sim.delete("c", key)
                else:
                    sim.range("c", key, "", 2)
            outs.append(sim.rwset().SerializeToString())
    assert outs[0] == outs[1]
    # Writes in the canonical set follow the model: last write wins, sorted by key.
    model: dict[str, bytes | None] = {}
    for op, key, value in ops:
        if op == "put":
            model[key] = value
        elif op == "del":
            model[key] = None
    from rxchain.v1 import transaction_pb2
    rw = transaction_pb2.TxRwSet.FromString(outs[0])
    got = {w.key: (None if w.is_delete else w.value) for ns in rw.ns_rwsets for w in ns.writes}
    assert got == model
    keys = [w.key for ns in rw.ns_rwsets for w in ns.writes]
    assert keys == sorted(keys)
