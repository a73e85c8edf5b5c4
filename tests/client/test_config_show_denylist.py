"""``rxchain config show`` reports the home's denylist of rotated-away CAs (rotated-cas.json): how
full it is against its bounds, and -- the case an operator must act on -- when it is full and the
CAs the verified chain rotated away from were left out of it. Before, a save refused DENYLIST_FULL
was only a warning log line (``ca_denylist_full``) no command showed.

The peer and orderer are the fakes of tests/client/test_config_confirm.py (h01's CA rotated in
block 1, held by the orderers)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rxchain.v1 import block_pb2, config_pb2

from client import configtool, follow
from client.cli import main
from client.errors import RxClientError
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.genesis import config_from_genesis, read_genesis
from tests.client.test_config_confirm import _show
from tests.client.test_configtool import _Peer
from tests.client.test_follow_segments import _chain
from tests.client.test_follow_trust import _Clock, _fake, _orderers_block, _World
from tests.client.test_session_ca import Rotated, rotated  # noqa: F401


def _rotation(rot: Rotated) -> tuple[list[block_pb2.Block], list[block_pb2.Block], str]:
    """(the peer's blocks, the orderer's, the fingerprint of h01's CA block 1 rotates away from)."""
    genesis, rotation, _ = _chain(rot)
    h01 = next(o for o in config_from_genesis(genesis).organizations if o.id == "h01")
    return [genesis, rotation], [genesis, _orderers_block(rotation)], configtool.ca_fingerprint(h01.ca_cert_der)


def test_config_show_reports_the_denylists_fill(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    peer, orderer, old_fp = _rotation(rotated)
    status, out, _ = _show(rotated.home, peer, orderer, monkeypatch)
    assert status == 0, out
    path = rotated.home / configtool.CA_DENYLIST
    assert out["denylist"] == {
        "file": str(path), "entries": 1, "max_entries": configtool.MAX_DENYLIST_ENTRIES,
        "bytes": len(path.read_bytes()), "max_bytes": configtool.MAX_DENYLIST_BYTES, "full": False,
        "not_denied": []}
    assert old_fp in path.read_text()


def test_config_show_says_when_the_denylist_is_full_and_what_it_left_out(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The cap reached: the chain is saved, the CA it rotated away from is not denied -- said by the
    command, in its JSON and its human form (was: a log line only)."""
    monkeypatch.setattr(configtool, "MAX_DENYLIST_ENTRIES", 0)
    (rotated.home / configtool.CA_DENYLIST).unlink(missing_ok=True)
    peer, orderer, old_fp = _rotation(rotated)
    status, out, _ = _show(rotated.home, peer, orderer, monkeypatch)
    assert (status, out["sequence"]) == (0, 1), out
    fill = out["denylist"]
    assert (fill["entries"], fill["max_entries"], fill["full"]) == (0, 0, True)
    assert fill["not_denied"] == [{"org": "h01", "ca_sha256": old_fp}]
    assert fill["warning"].startswith("DENYLIST_FULL: it cannot take the 1 CA(s)")
    assert not (rotated.home / configtool.CA_DENYLIST).exists()
    _Peer(monkeypatch, peer)  # (again, human: the chain saved is read on from)
    monkeypatch.setattr(follow, "_Peer", _fake(_World(_Clock(), {"orderer.ins01": orderer})))
    human = io.StringIO()
    assert main(["--home", str(rotated.home), "--as", "h01:admin", "config", "show"], out=human,
                err=io.StringIO()) == 0
    text = human.getvalue()
    assert "denylist:" in text and "full: yes" in text and "warning: DENYLIST_FULL" in text and old_fp in text


def test_config_show_says_the_denylist_cannot_take_one_ca_more(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Within its entries but at its size: every CA the chain rotated away from denied, but the next
    rotation's would be refused (the bytes bound, as add_to_denylist counts it)."""
    peer, orderer, _ = _rotation(rotated)
    status, out, _ = _show(rotated.home, peer, orderer, monkeypatch)
    assert status == 0, out
    size = out["denylist"]["bytes"]
    monkeypatch.setattr(configtool, "MAX_DENYLIST_BYTES", size + 10)  # (an entry is ~100 bytes)
    _, again, _ = _show(rotated.home, peer, orderer, monkeypatch)
    fill = again["denylist"]
    assert (fill["entries"], fill["bytes"], fill["max_bytes"], fill["full"], fill["not_denied"]) == (
        1, size, size + 10, True, [])
    assert fill["warning"].startswith("DENYLIST_FULL: it cannot take one CA more")
    monkeypatch.setattr(configtool, "MAX_DENYLIST_BYTES", size + 1000)
    _, roomy, _ = _show(rotated.home, peer, orderer, monkeypatch)
    assert roomy["denylist"]["full"] is False and "warning" not in roomy["denylist"]


def test_a_denylist_that_cannot_be_read_is_reported_so(tmp_path: Path) -> None:
    """(config show refuses such a file before, as every session of the home does; a file damaged
    after the command's save is reported, not a traceback)"""
    path = tmp_path / configtool.CA_DENYLIST
    path.write_text("not json")
    fill = configtool.denylist_fill(path, b"\x01" * 32, {"ab" * 32: "h01"})
    assert fill == {"file": str(path), "error": "BAD_CONFIG", "message": fill["message"]}
    assert "damaged or edited" in fill["message"]


def test_one_ca_more_is_of_an_organisation_in_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``full`` with every CA named is whether add_to_denylist takes one CA more of an organisation in
    force -- not of the longest name the file holds (an organisation removed, whose id is never
    reused, or a name edited in): was full with room for the next entry."""
    genesis = b"\x01" * 32
    path = tmp_path / configtool.CA_DENYLIST
    edited, nxt = "aa" * 32, "cc" * 32
    configtool.add_to_denylist(path, genesis, {edited: "x" * 2000})
    monkeypatch.setattr(configtool, "MAX_DENYLIST_BYTES", len(path.read_bytes()) + 200)  # (an entry: ~110 + its id)
    fill = configtool.denylist_fill(path, genesis, {edited: "x" * 2000}, ["h01", "ins01"])
    assert (fill["entries"], fill["full"], fill["not_denied"]) == (1, False, []) and "warning" not in fill
    configtool.add_to_denylist(path, genesis, {nxt: "ins01"})  # taken, as it said
    fill = configtool.denylist_fill(path, genesis, {edited: "x" * 2000, nxt: "ins01"}, ["h01", "ins01"])
    assert (fill["entries"], fill["full"]) == (2, True)  # 90 bytes left: the next is refused
    with pytest.raises(RxClientError) as err:
        configtool.add_to_denylist(path, genesis, {"dd" * 32: "ins01"})
    assert err.value.reason == configtool.DENYLIST_FULL


def test_the_fill_counts_without_the_cas_put_back_in_force(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A CA the chain put back in force that the file still names (the save that drops it skipped:
    the state's lock busy, another process's save) is no room taken: add_to_denylist drops it. Was
    counted: full, DENYLIST_FULL said, and the save then took the CA rotated away from."""
    genesis = read_genesis(rotated.home / "genesis.block")
    chain = configtool.ChainConfig(genesis, Verifier(), rotated.home / configtool.CHAIN_STATE)
    (back,) = chain.rotated_away  # h01's genesis CA, written to the file as the state is resumed
    path = rotated.home / configtool.CA_DENYLIST
    assert configtool.read_denylist(path, block_header_hash(genesis.header)) == {back: "h01"}
    monkeypatch.setattr(configtool, "MAX_DENYLIST_ENTRIES", 1)
    away = "cc" * 32
    chain.rotated_away, chain.reinstated = {away: "h01"}, {back}  # (a rotation back, then away again)
    fill = chain.denylist_fill(["h01"])
    assert fill is not None and fill["full"] is False and fill["not_denied"] == [{"org": "h01", "ca_sha256": away}]
    assert not fill["warning"].startswith("DENYLIST_FULL")
    chain.save_denylist()  # taken, as it said
    assert configtool.read_denylist(path, block_header_hash(genesis.header)) == {away: "h01"}


def test_propose_sign_and_submit_say_a_full_denylist_too(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """Each saves the chain it reads as config show does: a save refused DENYLIST_FULL, or a denylist
    that cannot take the CAs rotated away from, is their ``denylist`` too (was: the log line alone)."""
    monkeypatch.setattr(configtool, "MAX_DENYLIST_ENTRIES", 0)
    (rotated.home / configtool.CA_DENYLIST).unlink(missing_ok=True)
    peer, orderer, old_fp = _rotation(rotated)
    monkeypatch.setattr(configtool, "broadcast", lambda *_: "")  # (the orderers took it)

    def in_force(read: Callable[[], tuple[int, config_pb2.ConsortiumConfig]], sequence: int,
                 **_: object) -> tuple[int, config_pb2.ConsortiumConfig]:
        read()  # (the chain read and saved, as while waiting) and the block holding the update
        return 2, configtool.read_update(update)[1]

    monkeypatch.setattr(configtool, "wait_in_force", in_force)

    def run(*args: str, who: str = "h02:admin") -> dict[str, Any]:  # (h01's admins: of the CA rotated away from)
        _Peer(monkeypatch, peer)
        monkeypatch.setattr(follow, "_Peer", _fake(_World(_Clock(), {"orderer.ins01": orderer})))
        out = io.StringIO()
        status = main(["--json", "--home", str(rotated.home), "--as", who, "config", *args], out=out,
                      err=io.StringIO())
        result: dict[str, Any] = json.loads(out.getvalue())
        assert status == 0, result
        return result

    update = tmp_path / "u.rxcfg"
    for result in (run("propose", "--out", str(update), "--protocol-version", "2"), run("sign", str(update)),
                   run("submit", str(update))):
        fill = result["denylist"]
        assert (fill["full"], fill["not_denied"]) == (True, [{"org": "h01", "ca_sha256": old_fp}]), result
        assert fill["warning"].startswith("DENYLIST_FULL: it cannot take the 1 CA(s)")
    assert not (rotated.home / configtool.CA_DENYLIST).exists()
    monkeypatch.setattr(configtool, "MAX_DENYLIST_ENTRIES", 4096)  # room: saved, nothing to say
    assert "denylist" not in run("sign", str(update), who="p01:admin") and old_fp in (rotated.home / configtool.CA_DENYLIST).read_text()
