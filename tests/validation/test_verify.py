"""ledger verify: names the first bad block; tampered block files are refused at start-up."""

from __future__ import annotations

import shutil

import pytest
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.genesis import read_genesis
from node.ledger.__main__ import main as ledger_main
from node.ledger.blockstore import REC_HEAD_SIZE, BlockStore
from node.ledger.errors import LedgerError
from node.ledger.ledger import Ledger
from node.ledger.statedb import StateDB
from node.ledger.verify import verify_ledger
from tests.validation.conftest import StaticPolicies, rx_definition


@pytest.fixture
def built(peer, net, tmp_path):
    """A ledger with 5 blocks (valid and invalid txs), closed, and its genesis."""
    for b in range(4):
        envs = [peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01],
                                [RwSpec("rx", reads=[("hot", None)], writes=[("hot", b"x"),
                                 (f"k{b}", b"v")])])
                for _ in range(3)]
        block = make_block(peer.ledger.height(), peer.ledger.blocks.last_hash(), envs,
                           [net.orderer1])
        codes = peer.committer.commit_block(block).validated.codes
        assert codes[0] == (tx_pb.VALID if b == 0 else tx_pb.MVCC_READ_CONFLICT)
    state_hash = peer.ledger.state_hash()
    peer.ledger.close()
    return tmp_path / "ledger", read_genesis(net.home / "genesis.block"), state_hash


def rewrite(src, dst, mutate):
    """Copy the block store, letting ``mutate(n, block)`` tamper (the store only checks the
    header chain on append, and metadata is outside the header hash)."""
    with BlockStore(src / "blocks", readonly=True) as a, BlockStore(dst / "blocks") as b:
        for n in range(a.height()):
            block = a.get(n)
            mutate(n, block)
            b.append(block)


def test_sound_ledger_verifies(built):
    directory, genesis, state_hash = built
    report = verify_ledger(directory, genesis)
    assert report.ok, report.summary()
    assert report.height == 5 and report.state_hash == state_hash.hex()
    full = verify_ledger(directory, genesis, policies=StaticPolicies({"rx": rx_definition()}))
    assert full.ok and full.revalidated, full.summary()


def test_tampered_envelope_named(built, tmp_path):
    directory, genesis, _ = built

    def mutate(n, block):
        if n == 2:
            env = tx_pb.Envelope.FromString(block.data.envelopes[1])
            env.signature = env.signature[:-1] + bytes([env.signature[-1] ^ 1])
            block.data.envelopes[1] = env.SerializeToString()

    rewrite(directory, tmp_path / "t", mutate)
    report = verify_ledger(tmp_path / "t", genesis)
    assert not report.ok and report.first_bad_block == 2
    assert report.reason == "BAD_BLOCK" and "data hash" in report.message
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path / "t")
    assert e.value.block == 2 and e.value.reason == "BAD_DATA_HASH"
    assert "refusing to start" in e.value.message


def test_tampered_validation_code_named(built, tmp_path):
    directory, genesis, _ = built

    def mutate(n, block):
        if n == 3:
            block.metadata.validation_codes[0] = tx_pb.VALID  # was MVCC_READ_CONFLICT

    rewrite(directory, tmp_path / "t", mutate)
    report = verify_ledger(tmp_path / "t", genesis)
    assert (report.ok, report.first_bad_block, report.reason) == (
        False, 3, "STATE_HASH_MISMATCH")
    full = verify_ledger(tmp_path / "t", genesis,
                         policies=StaticPolicies({"rx": rx_definition()}))
    assert (full.ok, full.first_bad_block, full.reason) == (
        False, 3, "VALIDATION_CODES_MISMATCH")


def test_foreign_orderer_signature_named(built, tmp_path, net):
    directory, genesis, _ = built

    def mutate(n, block):
        if n == 4:
            sig = block.metadata.orderer_signatures[0]
            sig.signer.cert_der = net.peer_h01.identity.cert_der
            sig.signer.org = "h01"

    rewrite(directory, tmp_path / "t", mutate)
    report = verify_ledger(tmp_path / "t", genesis)
    assert (report.first_bad_block, report.reason) == (4, "BAD_ORDERER_SIGNATURE")


def test_corrupted_record_and_cli(built, tmp_path, net, capsys):
    directory, _genesis, _ = built
    gen = str(net.home / "genesis.block")
    assert ledger_main(["verify", "--data", str(directory), "--genesis", gen]) == 0
    assert "ledger OK: 5 blocks" in capsys.readouterr().out
    copy = tmp_path / "c"
    shutil.copytree(directory, copy)
    with BlockStore(copy / "blocks", readonly=True) as bs:
        loc = bs._locs[1]
    seg = copy / "blocks" / "seg-000000.blk"
    data = bytearray(seg.read_bytes())
    data[loc.offset + REC_HEAD_SIZE + 40] ^= 0x10
    seg.write_bytes(bytes(data))
    assert ledger_main(["verify", "--data", str(copy), "--genesis", gen]) == 1
    out = capsys.readouterr().out
    assert "first bad block 1: LEDGER_CORRUPT" in out
    with pytest.raises(LedgerError) as e:
        Ledger(copy)
    assert e.value.block == 1
    # the wrong genesis is caught at block 0
    other = read_genesis(net.home / "genesis.block")
    other.header.data_hash = b"\x00" * 32
    assert verify_ledger(directory, other).reason in ("BAD_GENESIS", "GENESIS_MISMATCH")


def test_state_behind_of_another_ledger_named(built, tmp_path):
    """A state database behind the block store is compared too: one that is not this block
    store's (a backup of another peer or network) was reported OK ("replayed on the next
    start") while the start refuses it (STATE_MISMATCH)."""
    directory, genesis, _ = built
    genuine = tmp_path / "genuine"  # this ledger's own state after block 2, blocks 3-4 not applied
    with BlockStore(directory / "blocks", readonly=True) as a, BlockStore(genuine / "blocks") as b:
        for n in range(3):
            b.append(a.get(n))
    Ledger(genuine).close()  # replays blocks 0..2 into a new state
    behind = tmp_path / "behind"
    shutil.copytree(directory, behind)
    shutil.rmtree(behind / "state")
    shutil.copytree(genuine / "state", behind / "state")
    report = verify_ledger(behind, genesis)
    assert report.ok, report.summary()
    assert any("live state is at block 2" in w for w in report.warnings)
    Ledger(behind).close()  # and the start replays blocks 3-4 onto it

    foreign = tmp_path / "foreign"
    shutil.copytree(directory, foreign)
    shutil.rmtree(foreign / "state")
    with StateDB(foreign / "state") as db:  # another ledger's state after its block 2
        for n in range(3):
            db.apply_block(n, [], bytes([n + 7]) * 32)
    report = verify_ledger(foreign, genesis)
    assert not report.ok and (report.first_bad_block, report.reason) == (2, "STATE_HASH_MISMATCH")
    assert "does not belong to this block store" in report.message
    with pytest.raises(LedgerError) as e:
        Ledger(foreign)
    assert e.value.reason == "STATE_MISMATCH"


def test_damaged_live_state_is_not_named_in_use(built, tmp_path):
    directory, genesis, _ = built
    copy = tmp_path / "c"
    shutil.copytree(directory, copy)
    (copy / "state" / "CURRENT").unlink()
    report = verify_ledger(copy, genesis)
    assert report.ok, report.summary()  # the blocks are sound: the state is rebuilt from them
    (warning,) = [w for w in report.warnings if "live state" in w]
    assert "no CURRENT" in warning and "running node" not in warning
