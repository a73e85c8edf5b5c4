"""Hypothesis: random sequences of txs with random (possibly stale) reads, range reads and
writes, validated by the real committer (real signatures), against a reference model."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, TxKit, make_block
from node.crypto.signing import Verifier
from node.genesis import read_genesis
from node.ledger.ledger import Ledger
from node.peer.committer import Committer
from tests.validation.conftest import StaticPolicies, rx_definition

KEYS = [f"k{i}" for i in range(5)]

tx_strategy = st.fixed_dictionaries({
    "reads": st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=3,
                      unique_by=lambda r: r[0]),
    "writes": st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=3,
                       unique_by=lambda w: w[0]),
    "range": st.sampled_from([None, "full", 1, 2]),
    "range_stale": st.booleans(),
})
blocks_strategy = st.lists(st.lists(tx_strategy, min_size=1, max_size=6), min_size=1, max_size=5)


class Model:
    """Reference semantics: version = (block, tx); stale reads and in-block writes conflict."""

    def __init__(self) -> None:
        self.state: dict[str, tuple[bytes, tuple[int, int]]] = {}
        self.prev_state: dict[str, tuple[bytes, tuple[int, int]]] = {}
        self.previous: dict[str, tuple[int, int] | None] = {}

    def range_read(self, kind, stale):
        """What a simulation saw: (exhausted, [(key, version)]) over [k, l)."""
        base = self.prev_state if stale else self.state
        items = [(k, base[k][1]) for k in sorted(base)]
        if kind == "full" or len(items) <= kind:
            return True, items
        return False, items[:kind]

    def range_conflict(self, exhausted, seen, written):
        now = [(k, self.state[k][1]) for k in sorted(self.state)]
        if exhausted:
            return now != seen or bool(written)
        last = seen[-1][0]
        return now[: len(seen)] != seen or any(k <= last for k in written)

    def version(self, key):
        v = self.state.get(key)
        return None if v is None else v[1]

    def stale_version(self, key):
        if key in self.previous and self.previous[key] != self.version(key):
            return self.previous[key]
        return (0, 99)  # never a real version

    def apply_block(self, number, txs):
        codes = []
        written: set[str] = set()
        new_state = dict(self.state)
        for i, (reads, writes, rng) in enumerate(txs):
            ok = all(k not in written and v == self.version(k) for k, v in reads)
            if ok and rng is not None and self.range_conflict(rng[0], rng[1], written):
                code = tx_pb.PHANTOM_READ_CONFLICT
            elif not ok:
                code = tx_pb.MVCC_READ_CONFLICT
            else:
                code = tx_pb.VALID
            codes.append(code)
            if code == tx_pb.VALID:
                for k, value in writes:
                    written.add(k)
                    if value is None:
                        new_state.pop(k, None)
                    else:
                        new_state[k] = (value, (number, i))
        for k in written:
            self.previous[k] = self.version(k)
        self.prev_state = self.state
        self.state = new_state
        return codes


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(blocks=blocks_strategy)
def test_mvcc_matches_reference_model(net, tmp_path_factory, blocks):
    directory = tmp_path_factory.mktemp("mvcc")
    ledger = Ledger(directory, fsync=False)
    try:
        ledger.commit_genesis(read_genesis(net.home / "genesis.block"))
        committer = Committer(ledger, Verifier(), StaticPolicies({"rx": rx_definition()}))
        kit = TxKit("test-rx", random.Random(3))
        model = Model()
        for spec_block in blocks:
            number = ledger.height()
            envs, model_txs = [], []
            for i, tx in enumerate(spec_block):
                reads = []
                for k_idx, stale in tx["reads"]:
                    k = KEYS[k_idx]
                    reads.append((k, model.stale_version(k) if stale else model.version(k)))
                writes = [(KEYS[k], None if delete else f"{number}.{i}.{k}".encode())
                          for k, delete in tx["writes"]]
                ranges = []
                rng = None
                if tx["range"] is not None:
                    rng = model.range_read(tx["range"], tx["range_stale"])
                    ranges.append(("k", "l", rng[0], rng[1]))
                envs.append(kit.invoke(net.doctor, [net.peer_h01, net.peer_p01],
                                       [RwSpec("rx", reads=reads, writes=writes, ranges=ranges)]))
                model_txs.append((reads, writes, rng))
            block = make_block(number, ledger.blocks.last_hash(), envs, [net.orderer1])
            codes = committer.commit_block(block).validated.codes
            assert codes == model.apply_block(number, model_txs)
        actual = {k: (vv.value, (vv.version.block, vv.version.tx))
                  for k, vv in ledger.state.range("rx", "", "")}
        assert actual == model.state
    finally:
        ledger.close()
