"""The commit benchmark's small-block phase: thread CPU split into signature checks and the rest."""

from __future__ import annotations

from pathlib import Path

from netgen import generate

from bench.commit_bench import small_blocks
from bench.txbuild import SMALL_CONSORTIUM
from node.genesis import read_genesis


def test_small_blocks_split_cpu_into_signature_checks_and_the_rest(tmp_path: Path) -> None:
    home = tmp_path / "net"
    generate(SMALL_CONSORTIUM, home)
    genesis = read_genesis(home / "genesis.block")
    out = small_blocks(home, genesis, tmp_path / "ledger", txs_per_block=3, n_blocks=5, warm=1)
    assert out["txs_per_block"] == 3 and out["blocks_counted"] == 4
    # 3 ECDSA verifies per tx are tens of microseconds at the least, on any machine
    assert out["signature_checks_ms_per_tx"] > 0.03
    assert out["rest_ms_per_tx"] > 0
    assert out["cpu_ms_per_tx"] > out["signature_checks_ms_per_tx"]
    # the parts add up (each rounded to 0.001)
    assert abs(out["signature_checks_ms_per_tx"] + out["rest_ms_per_tx"] - out["cpu_ms_per_tx"]) <= 0.002

