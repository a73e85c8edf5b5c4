"""The checker on synthetic, really signed ledgers: it passes a sound run and FAILS on a
lost tx, a duplicate, a fork (state hash, codes, block hash), a lagging peer, an invented
tx, a wrong validation code, a double dispense, a broken settlement and a tampered file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netgen import GeneratedNetwork, generate
from rxchain.v1 import transaction_pb2

from tests.harness.checker import Ack, FaultEvent, PeerView, check, peer_view, settlement_problem
from tests.harness.consortium import consortium_dict
from tests.harness.synthetic import SyntheticChain

MVCC = transaction_pb2.MVCC_READ_CONFLICT
DUP = transaction_pb2.DUPLICATE_TXID


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> GeneratedNetwork:
    return generate(consortium_dict(23000, orderers=1, hospitals=1), tmp_path_factory.mktemp("net"))


def _j(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _claim(medfee: int = 5000, fund: int = 3500, patient: int = 1500, account: int = 1000, cash: int = 500) -> bytes:
    return _j({"medfee_fen": medfee, "fund_fen": fund, "patient_fen": patient, "account_fen": account,
               "cash_fen": cash})


class Run:
    """A sound little run: 3 blocks of prescription/settlement txs, all acknowledged."""

    def __init__(self, net: GeneratedNetwork) -> None:
        self.chain = SyntheticChain(net)
        self.dr = self.chain.user("h01", "dr-test")
        self.ph = self.chain.user("p01", "pharm-test")
        self.clerk = self.chain.user("ins01", "clerk-test")
        self.acks: list[Ack] = []
        self.submitted: list[str] = []
        self.envs: dict[str, bytes] = {}
        b1 = [self.tx(self.dr, "prescription", {"rx/RX1": _j({"max_fills": 1, "status": "ISSUED"})}),
              self.tx(self.dr, "prescription", {"rx/RX2": _j({"max_fills": 2, "status": "ISSUED"})})]
        self.block(b1)
        self.dispense_rx1 = self.tx(self.ph, "prescription", {}, disp=("RX1", 1))
        self.block([self.dispense_rx1, self.tx(self.ph, "prescription", {}, disp=("RX2", 1))])
        self.block([self.tx(self.clerk, "settlement", {"claim/CLM-RX1-1-1": _claim()})])

    def tx(self, who, ns: str, writes: dict[str, bytes], disp: tuple[str, int] | None = None) -> str:
        if disp is not None:
            # the dispense record carries its own tx id: compute it first (deterministic nonce)
            probe_nonce = (len(self.submitted) + 1000).to_bytes(24, "big")
            from node.crypto.canonical import compute_tx_id
            tx_id = compute_tx_id(probe_nonce, who.identity)
            writes = {f"disp/{disp[0]}/{disp[1]:03d}": _j({"rx_id": disp[0], "fill": disp[1], "tx_id": tx_id})}
            got, env = self.chain.envelope(who, ns, "dispense", writes, nonce=probe_nonce)
            assert got == tx_id
        else:
            tx_id, env = self.chain.envelope(who, ns, "f", writes)
        self.envs[tx_id] = env
        self.submitted.append(tx_id)
        return tx_id

    def block(self, tx_ids: list[str], codes: list[int] | None = None, ack: bool = True) -> None:
        b = self.chain.add_block([self.envs[t] for t in tx_ids], codes)
        if ack:
            for t, c in zip(tx_ids, b.metadata.validation_codes, strict=True):
                self.acks.append(Ack(t, c, b.header.number))

    def views(self, n: int = 3) -> list[PeerView]:
        return [PeerView(f"peer{i}", self.chain.copy_blocks()) for i in range(n)]


def test_sound_run_passes_and_prints_table(net: GeneratedNetwork) -> None:
    run = Run(net)
    faults = [FaultEvent("kill9", "orderer.ins01", 1.0, 2.0, 0.8), FaultEvent("pause", "peer.h01", 3.0, 4.0, 0.1)]
    rep = check(run.views(), run.acks, run.submitted, faults=faults)
    table = rep.table()
    print(table)
    assert rep.ok, rep.problems()
    assert rep.acknowledged == 5 and rep.found == 5
    assert "kill9=1" in table and "VERDICT: OK" in table
    assert rep.to_dict()["faults_by_kind"] == {"kill9": 1, "pause": 1}


def test_lost_tx_fails(net: GeneratedNetwork) -> None:
    run = Run(net)
    ghost = run.tx(run.dr, "prescription", {"rx/RX9": _j({"max_fills": 1})})
    run.acks.append(Ack(ghost, transaction_pb2.VALID, None))  # told committed, never ordered
    rep = check(run.views(), run.acks, run.submitted)
    assert not rep.ok
    assert len(rep.lost) == 3 and rep.found == 5  # missing on all three peers
    assert "lost (3)" in rep.table()


def test_duplicate_fails_but_caught_resubmission_does_not(net: GeneratedNetwork) -> None:
    run = Run(net)
    again = run.acks[0].tx_id
    run.block([again], codes=[DUP], ack=False)  # resubmission caught by the validator: fine
    rep = check(run.views(), run.acks, run.submitted)
    assert rep.ok, rep.problems()
    assert rep.resubmissions == 1
    run.block([again], codes=[transaction_pb2.VALID], ack=False)  # applied twice: not fine
    rep = check(run.views(), run.acks, run.submitted)
    assert not rep.ok and len(rep.duplicated) == 3


def test_divergent_state_hash_fails(net: GeneratedNetwork) -> None:
    run = Run(net)
    views = run.views()
    views[2].blocks[2].metadata.state_hash = b"\x01" * 32
    rep = check(views, run.acks, run.submitted)
    assert not rep.ok
    assert rep.divergent_peers == ["peer2"]
    assert "state hash" in rep.divergence[0] and "height 2" in rep.divergence[0]


def test_divergent_codes_and_block_hash_fail(net: GeneratedNetwork) -> None:
    run = Run(net)
    views = run.views()
    views[1].blocks[1].metadata.validation_codes[0] = MVCC
    views[0].blocks[3].header.data_hash = b"\x00" * 32
    rep = check(views, run.acks, run.submitted)
    assert rep.divergent_peers == ["peer0", "peer1"]
    assert any("validation codes" in d for d in rep.divergence)
    assert any("block hash" in d for d in rep.divergence)
    # peer1 also reports the acknowledged tx with the wrong code
    assert any(w.startswith("peer1:") for w in rep.wrong_code)


def test_orderer_chain_compared_by_header_hash(net: GeneratedNetwork) -> None:
    run = Run(net)
    orderer = PeerView("orderer", run.chain.copy_blocks())
    for b in orderer.blocks:  # an orderer's copy has no codes / state hash: not a divergence
        del b.metadata.validation_codes[:]
        b.metadata.state_hash = b""
    assert check(run.views(), run.acks, run.submitted, orderers=[orderer]).ok
    orderer.blocks[2].header.previous_hash = b"\x07" * 32
    rep = check(run.views(), run.acks, run.submitted, orderers=[orderer])
    assert rep.divergent_peers == ["orderer"] and "orderer orderer" in rep.divergence[0]


def test_lagging_peer_fails(net: GeneratedNetwork) -> None:
    run = Run(net)
    views = run.views()
    del views[1].blocks[-1]
    rep = check(views, run.acks, run.submitted)
    assert not rep.ok and rep.lagging and not rep.divergent_peers


def test_unknown_tx_fails(net: GeneratedNetwork) -> None:
    run = Run(net)
    intruder = run.tx(run.dr, "prescription", {"rx/RXX": _j({"max_fills": 1})})
    run.submitted.remove(intruder)
    run.block([intruder], ack=False)
    rep = check(run.views(), run.acks, run.submitted)
    assert not rep.ok and len(rep.unknown) == 3
    assert check(run.views(), run.acks, run.submitted, allowed=[intruder]).ok


def test_wrong_code_fails(net: GeneratedNetwork) -> None:
    run = Run(net)
    acks = [Ack(a.tx_id, MVCC, a.block) if i == 0 else a for i, a in enumerate(run.acks)]
    rep = check(run.views(), acks, run.submitted)
    assert not rep.ok and len(rep.wrong_code) == 3


def test_double_dispense_fails(net: GeneratedNetwork) -> None:
    run = Run(net)
    run.block([run.tx(run.ph, "prescription", {}, disp=("RX1", 1))])  # same fill again
    rep = check(run.views(), run.acks, run.submitted)
    assert not rep.ok
    assert any("RX1 fill 001 dispensed by 2 txs" in d for d in rep.double_dispense)
    # a second fill beyond max_fills (1) is also caught
    run2 = Run(net)
    run2.block([run2.tx(run2.ph, "prescription", {}, disp=("RX1", 2))])
    rep2 = check(run2.views(), run2.acks, run2.submitted)
    assert any("max_fills 1" in d for d in rep2.double_dispense)
    # but RX2 (max 2 fills) may be dispensed twice
    run3 = Run(net)
    run3.block([run3.tx(run3.ph, "prescription", {}, disp=("RX2", 2))])
    assert check(run3.views(), run3.acks, run3.submitted).ok


def test_settlement_invariants(net: GeneratedNetwork) -> None:
    assert settlement_problem(json.loads(_claim())) == ""
    assert "medfee" in settlement_problem(json.loads(_claim(medfee=5001)))
    assert "patient" in settlement_problem(json.loads(_claim(cash=499)))
    assert "non-negative" in settlement_problem(json.loads(_claim(fund=-1, patient=6001, account=5501)))
    assert "non-negative" in settlement_problem({"medfee_fen": 1.5})
    run = Run(net)
    run.block([run.tx(run.clerk, "settlement", {"claim/CLM-X": _claim(account=1001)})])
    rep = check(run.views(), run.acks, run.submitted)
    assert not rep.ok and rep.settlement_violations
    # an INVALID tx's bad record is not applied, so it is not a violation
    run2 = Run(net)
    run2.block([run2.tx(run2.clerk, "settlement", {"claim/CLM-Y": _claim(account=1001)})], codes=[MVCC])
    assert check(run2.views(), run2.acks, run2.submitted).ok


def test_verify_ledger_on_disk_and_tamper(net: GeneratedNetwork, tmp_path: Path) -> None:
    run = Run(net)
    data = run.chain.write_store(tmp_path / "peer0")
    view = peer_view("peer0", data, net.genesis_path)
    assert view.verify_ok, view.verify_summary
    assert len(view.blocks) == 4
    assert check([view], run.acks, run.submitted).ok
    # 1. flip one byte inside block 1's first envelope (a middle block): verify names it
    seg = max((data / "ledger" / "blocks").glob("*"), key=lambda p: p.stat().st_size)
    pristine = seg.read_bytes()
    raw = bytearray(pristine)
    at = raw.find(run.envs[run.acks[0].tx_id])
    assert at > 0
    raw[at + 40] ^= 0xFF
    seg.write_bytes(bytes(raw))
    try:
        bad = peer_view("peer0", data, net.genesis_path)
    except Exception as exc:  # the read-only store itself refused the damaged file
        bad = PeerView("peer0", [], verify_ok=False, verify_summary=f"unreadable: {exc}")
    assert not bad.verify_ok
    rep = check([bad], run.acks, run.submitted)
    assert not rep.ok and "peer0" in rep.verify_failures
    # 2. damage in the LAST record looks like a torn append: verify warns and the block is
    # dropped, so the acknowledged txs of that block are reported lost.
    raw = bytearray(pristine)
    raw[-200] ^= 0xFF
    seg.write_bytes(bytes(raw))
    tail = peer_view("peer0", data, net.genesis_path)
    assert len(tail.blocks) == 3 and "torn tail" in tail.verify_summary
    rep = check([tail], run.acks, run.submitted)
    assert not rep.ok and len(rep.lost) == 1
