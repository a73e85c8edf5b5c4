"""`network up`'s one-time bootstrap (client.bootstrap.Bootstrapper.ensure) and its record,
HOME/bootstrap.json, on a network started again from the same genesis.block with its ledgers
emptied (README "Recovery"): the record names contracts committed at blocks the new chain does
not reach. Followed on a sample network, `network up` reported the three contracts and the
sample data of the record while the chain held the genesis block alone, and the next call was
UNKNOWN_CONTRACT; and with the record removed, every call of the load first waited 15 s for its
peer to reach the old chain's last block (HOME/run/last-block). Now the record is checked against the
orderers' height first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from client.bootstrap import STATE_FILE, Bootstrapper, recorded_block
from client.session import LAST_BLOCK_FILE, read_last_block

RECORD = {"contracts": {"registry": {"block": 6, "code_hash": "aa", "sequence": 1},
                        "prescription": {"block": 15, "code_hash": "bb", "sequence": 1},
                        "settlement": {"block": 22, "code_hash": "cc", "sequence": 1}},
          "sample_data": {"patients": 2}}


def _run(net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: dict[str, Any],
         chain_height: int | None) -> tuple[list[str], dict[str, Any]]:
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    (home / STATE_FILE).write_text(json.dumps(record))
    (home / "run").mkdir(exist_ok=True)
    (home / LAST_BLOCK_FILE).write_text("52\n")  # the last block a client of the home saw committed
    done: list[str] = []

    def deploy(self: Bootstrapper) -> dict[str, Any]:
        done.append("deploy")
        return {"registry": {"block": 3, "code_hash": "dd", "sequence": 1}}

    def load(self: Bootstrapper, path: Path) -> dict[str, int]:
        done.append("sample_data")
        return {"patients": 2}

    monkeypatch.setattr(Bootstrapper, "deploy", deploy)
    monkeypatch.setattr(Bootstrapper, "load_sample_data", load)
    boot = Bootstrapper(home)
    try:
        state = boot.ensure(chain_height=chain_height)
    finally:
        boot.close()
    assert json.loads((home / STATE_FILE).read_text()) == state
    return done, state


def test_a_record_of_blocks_the_chain_does_not_reach_is_bootstrapped_again(
        net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done, state = _run(net_home, tmp_path, monkeypatch, RECORD, chain_height=1)  # the genesis block alone
    assert done == ["deploy", "sample_data"]
    assert state["contracts"] == {"registry": {"block": 3, "code_hash": "dd", "sequence": 1}}
    # the old chain's last block is no longer waited for before every call
    assert read_last_block(tmp_path / "home") == -1


@pytest.mark.parametrize("height", [23, 5000, None])  # past the last block recorded; or no orderer answered
def test_a_record_the_chain_holds_is_not_repeated(net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  height: int | None) -> None:
    done, state = _run(net_home, tmp_path, monkeypatch, RECORD, chain_height=height)
    assert done == [] and state == RECORD
    assert read_last_block(tmp_path / "home") == 52


def test_the_last_block_a_record_names() -> None:
    assert recorded_block(RECORD) == 22
    assert recorded_block({"contracts": {"registry": {"block": None}}}) is None  # found defined already
    assert recorded_block({}) is None
    assert recorded_block({"contracts": {"x": {"block": True}, "y": "z"}}) is None
