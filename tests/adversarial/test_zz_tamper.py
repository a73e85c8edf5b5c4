"""Tampered block files on disk (runs last in the package: it stops and restarts peer.h02).

Two tamperings of a middle block of a stopped peer: (1) a flipped byte (the record checksum
no longer matches); (2) a changed envelope with the record checksum recomputed (what a
deliberate forger does). ``python -m node.ledger verify`` and ``rxchain ledger verify --local`` must name the block
in both; the
peer must refuse to start on the tampered ledger with a clear message; with the original
files back it starts and catches up."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rxchain.v1 import block_pb2

from node.ledger.blockstore import REC_HEAD_SIZE, encode_record
from tests.adversarial.support import AdvNet, Case, CaseTable
from tests.harness.procs import log_tail

pytestmark = pytest.mark.integration
PEER = "peer.h02"


def _segment(data: Path) -> Path:
    segs = sorted((data / "ledger" / "blocks").glob("seg-*.blk"))
    assert segs, "no block segment"
    return segs[0]


def _records(raw: bytes) -> list[tuple[int, int, int]]:
    """(offset, number, payload length) of every record of a segment."""
    out, off = [], 0
    while off + REC_HEAD_SIZE <= len(raw):
        number = int.from_bytes(raw[off + 4:off + 12], "big")
        length = int.from_bytes(raw[off + 12:off + 16], "big")
        out.append((off, number, length))
        off += REC_HEAD_SIZE + length
    return out


def _flip(raw: bytes, target: int) -> bytes:
    off, _, length = next(r for r in _records(raw) if r[1] == target)
    out = bytearray(raw)
    out[off + REC_HEAD_SIZE + length // 2] ^= 0x01
    return bytes(out)


def _forge(raw: bytes, target: int) -> bytes:
    """Change one byte inside an envelope of ``target`` and re-encode the record with a valid CRC."""
    off, number, length = next(r for r in _records(raw) if r[1] == target)
    block = block_pb2.Block.FromString(raw[off + REC_HEAD_SIZE:off + REC_HEAD_SIZE + length])
    env = bytearray(block.data.envelopes[0])
    env[len(env) // 2] ^= 0x01
    block.data.envelopes[0] = bytes(env)
    record = encode_record(number, block.SerializeToString())
    return raw[:off] + record + raw[off + REC_HEAD_SIZE + length:]


def _verify(adv: AdvNet, data: Path) -> tuple[int, str]:
    res = subprocess.run([sys.executable, "-m", "node.ledger", "verify", "--data", str(data),
                          "--genesis", str(adv.cons.net.genesis_path)],
                         capture_output=True, text=True, timeout=60, check=False)
    return res.returncode, (res.stdout + res.stderr).strip()


def _cli_verify(adv: AdvNet) -> tuple[int, str]:
    """``rxchain ledger verify --local --peer h02`` (the operator's command) with --json."""
    res = subprocess.run([sys.executable, "-m", "client.cli", "--json", "--home", str(adv.cons.home),
                          "ledger", "verify", "--local", "--peer", "h02"],
                         capture_output=True, text=True, timeout=60, check=False)
    return res.returncode, res.stdout.strip()


def _start_outcome(adv: AdvNet, timeout_s: float = 20.0) -> tuple[str, str]:
    """('refused', message) if the peer exits, ('serving', log) if it becomes healthy."""
    procs = adv.procs
    procs.restart(PEER)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not procs[PEER].running():
            return "refused", log_tail(adv.cons.log_path(PEER), 1500)
        if adv.cons.healthy(PEER):
            return "serving", log_tail(adv.cons.log_path(PEER), 1500)
        time.sleep(0.2)
    return "hung", log_tail(adv.cons.log_path(PEER), 1500)


@pytest.mark.parametrize("how", ["flipped byte (bad checksum)", "forged envelope with recomputed checksum"])
def test_tampered_block_file(adv: AdvNet, case_table: CaseTable, how: str) -> None:
    data = adv.cons.data_dir(PEER)
    assert adv.procs.terminate(PEER, grace_s=15) is not None
    seg = _segment(data)
    pristine = seg.read_bytes()
    blocks = [r[1] for r in _records(pristine)]
    target = blocks[len(blocks) // 2]
    assert 0 < target < blocks[-1]
    try:
        seg.write_bytes(_flip(pristine, target) if how.startswith("flipped") else _forge(pristine, target))
        rc, report = _verify(adv, data)
        cli_rc, cli_out = _cli_verify(adv)
        outcome, log = _start_outcome(adv)
        if adv.procs[PEER].running():
            adv.procs.kill9(PEER)
    finally:
        seg.write_bytes(pristine)
    # heal: the original files are back; the peer starts and the network still serves
    adv.procs.restart(PEER)
    adv.procs.wait_healthy(PEER, functools.partial(adv.cons.healthy, PEER), 60)
    last = log.strip().splitlines()[-1] if log.strip() else ""
    case = case_table.add(Case(f"tampered block file: {how}", PEER,
                               "verify names the block; start-up refused with a clear message",
                               outcome=f"verify rc={rc}: {report.splitlines()[0][:90]}; start: {outcome}: {last[:120]}",
                               reason="LEDGER_CORRUPT" if outcome == "refused" else ""))
    case.nothing_written = True  # the files were restored byte for byte; checked by the restart
    case.still_serving = adv.serving()
    assert rc == 1 and f"first bad block {target}" in report, report
    assert cli_rc == 1 and '"error"' in cli_out and f"block {target}" in cli_out, cli_out
    assert case.still_serving
    assert outcome == "refused", f"the peer started on a ledger whose block {target} was tampered ({how})"
    assert any(w in log for w in ("LEDGER_CORRUPT", "BAD_BLOCK", "corrupt", "checksum", str(target))), log
