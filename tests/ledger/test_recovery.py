"""Kill -9 at injected points of a commit: restart loses nothing and applies nothing twice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from node.ledger.blockstore import BlockStore
from node.ledger.errors import LedgerError
from node.ledger.ledger import Ledger
from node.ledger.statedb import StateDB
from tests.ledger.chain import dump_state
from tests.ledger.crash_driver import build_block

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL = 5


def run_driver(directory, crash_at=None, total=TOTAL):
    env = dict(os.environ)
    env.pop("RXCHAIN_CRASH_AT", None)
    if crash_at:
        env["RXCHAIN_CRASH_AT"] = crash_at
    proc = subprocess.run([sys.executable, "-m", "tests.ledger.crash_driver", str(directory),
                           str(total)], cwd=ROOT, env=env, capture_output=True, timeout=60,
                          check=False)
    return proc.returncode, proc.stderr.decode()


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


SIGKILL_TOTAL = 40


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    ref = tmp_path_factory.mktemp("longref")
    rc, err = run_driver(ref, total=SIGKILL_TOTAL)
    assert rc == 0, err
    return ref


@pytest.mark.parametrize("delay_ms", [3, 19])
def test_real_sigkill_during_commits(tmp_path, long_reference, delay_ms):
    """SIGKILL at an arbitrary moment of a run of commits; a restart converges."""
    import signal
    import time

    total = SIGKILL_TOTAL
    ref = long_reference
    victim = tmp_path / "victim"
    env = {k: v for k, v in os.environ.items() if k != "RXCHAIN_CRASH_AT"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.ledger.crash_driver", str(victim),
                             str(total)], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        seg = victim / "blocks" / "seg-000000.blk"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if seg.exists() and seg.stat().st_size > 0:
                break
            time.sleep(0.001)
        time.sleep(delay_ms / 1000)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    rc, err = run_driver(victim, total=total)
    assert rc == 0, err
    with Ledger(ref) as a, Ledger(victim) as b:
        assert a.height() == b.height() == total
        assert a.state_hash() == b.state_hash()
    assert dump_state(ref) == dump_state(victim)


def test_failed_state_write_blocks_further_commits_until_restart(tmp_path):
    from node.ledger.txwrites import outcomes_from_block

    def boom(point, number):
        if point == "mid_batch" and number == 1:
            raise OSError("disk full")

    with Ledger(tmp_path, fsync=False, crash_hook=boom) as ledger:
        b0 = build_block(0, b"\0" * 32)
        ledger.commit(b0, outcomes_from_block(b0))
        b1 = build_block(1, ledger.blocks.last_hash())
        with pytest.raises(OSError):
            ledger.commit(b1, outcomes_from_block(b1))
        b2 = build_block(2, ledger.blocks.last_hash())
        with pytest.raises(LedgerError) as e:
            ledger.commit(b2, outcomes_from_block(b2))
        assert e.value.reason == "STATE_MISMATCH"
    with Ledger(tmp_path) as ledger:  # restart replays block 1
        assert ledger.height() == 2
        sp = ledger.savepoint()
        assert sp is not None and sp.block == 1
        assert ledger.block(1).metadata.state_hash == ledger.state_hash()
