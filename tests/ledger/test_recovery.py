"""Kill -9 at injected points of a commit: restart loses nothing and applies nothing twice."""

from __future__ import annotations

import os
import subprocess
import sys

import plyvel
import pytest

from node.ledger.blockstore import BlockStore
from node.ledger.errors import LedgerError
from node.ledger.ledger import Ledger
from node.ledger.statedb import StateDB
from tests.ledger.crash_driver import build_block

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL = 5


def run_driver(directory, crash_at=None):
    env = dict(os.environ)
    env.pop("RXCHAIN_CRASH_AT", None)
    if crash_at:
        env["RXCHAIN_CRASH_AT"] = crash_at
    proc = subprocess.run([sys.executable, "-m", "tests.ledger.crash_driver", str(directory),
                           str(TOTAL)], cwd=ROOT, env=env, capture_output=True, timeout=60,
                          check=False)
    return proc.returncode, proc.stderr.decode()


def dump_state(directory):
    db = plyvel.DB(str(directory / "state"))
    try:
        return list(db.iterator())
    finally:
        db.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    rc, err = run_driver(d)
    assert rc == 0, err
    with Ledger(d) as ledger:
        assert ledger.height() == TOTAL
        state_hash = ledger.state_hash()
    return state_hash, dump_state(d)


@pytest.mark.parametrize("point", ["after_blockstore", "mid_batch", "after_batch"])
@pytest.mark.parametrize("block", [0, 3])
def test_kill_at_point_then_restart(tmp_path, reference, point, block):
    rc, err = run_driver(tmp_path, f"{point}:{block}")
    assert rc == 137, err
    # What the crash left behind.
    bs = BlockStore(tmp_path / "blocks")
    assert bs.height() == block + 1  # the block store append was fsynced before the hook
    bs.close()
    db = StateDB(tmp_path / "state")
    sp = db.savepoint()
    applied = -1 if sp is None else sp.block
    db.close()
    assert applied == (block if point == "after_batch" else block - 1)
    # Restart: replay (if needed) and complete the run.
    rc, err = run_driver(tmp_path)
    assert rc == 0, err
    with Ledger(tmp_path) as ledger:
        assert ledger.height() == TOTAL
        assert ledger.state_hash() == reference[0]
    assert dump_state(tmp_path) == reference[1]


def test_state_ahead_of_blocks_refused(tmp_path):
    rc, err = run_driver(tmp_path)
    assert rc == 0, err
    import shutil

    shutil.rmtree(tmp_path / "blocks")
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path)
    assert e.value.reason == "STATE_MISMATCH"


def test_replay_refuses_tampered_stored_codes(tmp_path):
    """A block whose stored codes/state hash disagree is not silently replayed."""
    with Ledger(tmp_path, fsync=False) as ledger:
        from node.ledger.txwrites import outcomes_from_block

        b0 = build_block(0, b"\0" * 32)
        ledger.commit(b0, outcomes_from_block(b0))
    # Append block 1 to the block store only, with a state hash that does not match.
    b1 = build_block(1, b"")
    with BlockStore(tmp_path / "blocks") as bs:
        b1.header.previous_hash = bs.last_hash()
        b1.metadata.state_hash = b"\x07" * 32
        bs.append(b1)
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path)
    assert e.value.reason == "LEDGER_CORRUPT"
