"""review14: the config commands (``rxchain config show|propose|sign|submit``) save a peer's
blocks only once the orderers confirm them, as a session's follow does (client.follow): one peer
serving a fork one compromised orderer signed -- an admin-signed rotation of h01's CA never
committed -- was saved to config-chain.json (its CA pinned by every session of the home) and
h01's genuine CA written to the denylist (rotated-cas.json: refused CA_ROTATED_AWAY from then on).

The peer is the configtool fake of tests/client/test_configtool.py (its gRPC stubs replaced); the
orderers are the follow fakes of tests/client/test_follow_trust.py, answering by name. The home's
one orderer is orderer.ins01: a majority is that one."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rxchain.v1 import block_pb2

from client import configtool, follow
from client.cli import main
from client.errors import CommitUnknown, RxClientError
from client.network import load_network
from client.session import verified_network
from node.genesis import config_from_genesis
from tests.client.test_configtool import _Peer
from tests.client.test_follow_segments import _chain
from tests.client.test_follow_trust import _Clock, _fake, _orderers_block, _World
from tests.client.test_session_ca import Rotated, rotated  # noqa: F401


def _show(home: Path, peer: list[block_pb2.Block], orderer: list[block_pb2.Block],
          monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any], _World]:
    """``config show`` as h01's admin while its peer serves ``peer`` and orderer.ins01 holds ``orderer``."""
    _Peer(monkeypatch, peer)
    world = _World(_Clock(), {"orderer.ins01": orderer})
    monkeypatch.setattr(follow, "_Peer", _fake(world))
    out, err = io.StringIO(), io.StringIO()
    status = main(["--json", "--home", str(home), "--as", "h01:admin", "config", "show"], out=out, err=err)
    return status, json.loads(out.getvalue()), world


def test_config_show_does_not_save_a_fork_the_orderers_do_not_hold(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The peer serves block 1 rotating h01's CA, signed by orderer.ins01's key (compromised), which
    the orderer's chain does not hold: ORDERERS_DISAGREE, nothing saved -- before, the fork was
    saved (sessions pinned h01's peer to its CA) and h01's genuine CA denied."""
    genesis, fork, _ = _chain(rotated)
    status, out, world = _show(rotated.home, [genesis, fork], [genesis], monkeypatch)
    assert (status, out["error"]) == (1, "ORDERERS_DISAGREE"), out
    assert not (rotated.home / configtool.CHAIN_STATE).exists()
    assert not (rotated.home / configtool.CA_DENYLIST).exists()
    assert verified_network(rotated.home, load_network(rotated.home)).config.sequence == 0
    assert "orderer.ins01:blocks 1-1" in world.asked


def test_config_show_saves_a_rotation_the_orderers_hold(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The same block held by the orderer: shown, saved, and the CA it rotated away from denied."""
    genesis, rotation, _ = _chain(rotated)
    status, out, _ = _show(rotated.home, [genesis, rotation], [genesis, _orderers_block(rotation)], monkeypatch)
    assert (status, out["sequence"], out["block"]) == (0, 1, 1), out
    assert json.loads((rotated.home / configtool.CHAIN_STATE).read_text())["height"] == 2
    h01 = next(o for o in config_from_genesis(genesis).organizations if o.id == "h01")
    denied = json.loads((rotated.home / configtool.CA_DENYLIST).read_text())["rotated_away"]
    assert denied == [{"org": "h01", "ca_sha256": configtool.ca_fingerprint(h01.ca_cert_der)}]


def test_config_show_does_not_save_data_blocks_the_orderers_do_not_hold(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Block 2 (a data block) is not the orderer's: the config in force is shown (the same without
    it), block 2 is not saved -- saved, it was a checkpoint every honest peer's chain then
    differed at (CHAIN_RESTARTED)."""
    genesis, rotation, two = _chain(rotated)
    status, out, _ = _show(rotated.home, [genesis, rotation, two], [genesis, _orderers_block(rotation)],
                           monkeypatch)
    assert (status, out["sequence"]) == (0, 1), out
    assert json.loads((rotated.home / configtool.CHAIN_STATE).read_text())["height"] == 2


def test_submits_wait_asks_again_while_the_orderers_have_not_all_written_the_block() -> None:
    """ORDERERS_DISAGREE during the wait after a submit (an orderer asked to confirm the new block
    has not written it yet) is asked again, not COMMIT_UNKNOWN at once."""
    answers: list[Any] = [RxClientError("ORDERERS_DISAGREE", "1 of the 2 orderers needed"), (3, None)]

    def read() -> Any:
        got = answers.pop(0)
        if isinstance(got, Exception):
            raise got
        return got[0], type("C", (), {"sequence": 2})()

    assert configtool.wait_in_force(read, 2, timeout_s=10, sleep=lambda s: None)[0] == 3
    with pytest.raises(CommitUnknown):  # (any other refusal still ends it at once)
        configtool.wait_in_force(lambda: (_ for _ in ()).throw(RxClientError("LEDGER_INVALID", "x")), 2,
                                 sleep=lambda s: None)
