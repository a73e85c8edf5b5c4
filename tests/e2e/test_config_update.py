"""Consortium config updates with ``rxchain config`` on the running test network: a proposal
file travels between the organisations' admins, each signs it, one submits it, and the
ordering service puts it in force only with a majority of admin signatures (the
``config_update`` policy, ``MAJORITY(admin)`` of the 8 organisations here: 5)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rxchain.v1 import config_pb2, identity_pb2

from node.protocol import MAX_PROTOCOL_VERSION, SUPPORTED_VERSIONS
from tests.e2e.conftest import Net, rxchain

BEYOND = max(SUPPORTED_VERSIONS) + 1  # a version no release of this code implements

ADMINS = ("h01", "h02", "p01", "p02", "ins01", "ins02", "ins03", "reg01")


def _sign(net: Net, path: Path, orgs: tuple[str, ...]) -> list[str]:
    signed: list[str] = []
    for org in orgs:
        signed = net.cli("--as", f"{org}:admin", "config", "sign", str(path))["signed_by"]
    return signed


def test_a_config_update_goes_in_with_a_majority_of_admins_only(net: Net, tmp_path: Path) -> None:
    whole = net.cli("--as", "h01:admin", "config", "show")  # --json: the whole config
    policies = {p["name"]: p["rule"] for p in whole["config"]["policies"]}
    assert (whole["protocol_version"], policies["config_update"]) == (MAX_PROTOCOL_VERSION, "MAJORITY(admin)")
    assert whole["config"]["consortium_id"] == "rx-e2e"
    sequence = whole["sequence"]
    edited = dict(whole["config"])
    edited["batch"] = dict(edited["batch"], timeout_ms=int(edited["batch"]["timeout_ms"]) + 10)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"config": edited}))
    upd = tmp_path / "update.rxcfg"
    proposed = net.cli("--as", "h01:admin", "config", "propose", "--out", str(upd), "--from-json", str(cfg))
    assert proposed["sequence"] == sequence + 1 and proposed["signatures"] == 0
    assert [c.split(":")[0] for c in proposed["changes"]] == ["batch.timeout_ms"]
    # a doctor signs nothing; an organisation signs once
    assert net.cli_error("--as", "h01:dr-jiang", "config", "sign", str(upd))["error"] == "WRONG_ROLE"
    assert _sign(net, upd, ADMINS[:4]) == list(ADMINS[:4])
    assert net.cli_error("--as", "h02:admin", "config", "sign", str(upd))["error"] == "ALREADY_SIGNED"
    # a signature the file claims but no admin made is refused before anyone counts on it
    update = config_pb2.ConfigUpdate.FromString(upd.read_bytes())
    claimed = identity_pb2.Identity.FromString(update.signatures[0].signer)
    claimed.org = "reg01"  # h01's admin certificate passed off as the regulator's
    update.signatures.add(signer=claimed.SerializeToString(), signature=update.signatures[0].signature)
    forged = tmp_path / "forged.rxcfg"
    forged.write_bytes(update.SerializeToString())
    bad = net.cli_error("--as", "ins01:admin", "config", "sign", str(forged))
    assert bad["error"] == "BAD_CONFIG_UPDATE" and "signature 5" in bad["message"], bad
    # only admins submit
    assert net.cli_error("--as", "h01:dr-jiang", "config", "submit", str(upd))["error"] == "WRONG_ROLE"
    # four of eight: the orderers refuse it, nothing changes
    refused = net.cli_error("--as", "h01:admin", "config", "submit", str(upd))
    assert refused["error"] == "BAD_CONFIG_UPDATE" and "config_update" in refused["message"], refused
    assert net.cli("--as", "h01:admin", "config", "show")["sequence"] == sequence
    # the fifth signature: in force, on every peer asked
    assert len(_sign(net, upd, ADMINS[4:5])) == 5
    done = net.cli("--as", "ins01:admin", "config", "submit", str(upd))
    assert done["sequence"] == sequence + 1 and len(done["signed_by"]) == 5
    for peer in ("h01", "p01", "ins01"):
        now = net.cli("--as", "h01:admin", "config", "show", "--peer", peer)
        assert now["sequence"] == sequence + 1 and now["block"] == done["block"], (peer, now)
        assert now["config"]["batch"]["timeout_ms"] == edited["batch"]["timeout_ms"]
    # the same file again: in force already; an update proposed before it went in: stale
    assert net.cli_error("--as", "h01:admin", "config", "submit", str(upd))["error"] == "ALREADY_IN_FORCE"
    late = tmp_path / "late.rxcfg"
    late.write_bytes(upd.read_bytes())
    assert net.cli_error("--as", "h02:admin", "config", "sign", str(late))["error"] == "ALREADY_IN_FORCE"


def test_a_protocol_version_this_release_lacks_is_refused_and_files_are_checked(net: Net, tmp_path: Path) -> None:
    before = net.cli("--as", "h01:admin", "config", "show")
    upd = tmp_path / "pv.rxcfg"
    proposed = net.cli("--as", "h01:admin", "config", "propose", "--out", str(upd), "--protocol-version", str(BEYOND))
    assert proposed["changes"] == [f"protocol_version: {MAX_PROTOCOL_VERSION} -> {BEYOND}"]
    _sign(net, upd, ADMINS[:5])
    refused = net.cli_error("--as", "h01:admin", "config", "submit", str(upd))
    assert refused["error"] == "BAD_CONFIG_UPDATE" and f"implements {sorted(SUPPORTED_VERSIONS)}" in refused["message"], (
        refused)
    after = net.cli("--as", "h01:admin", "config", "show")
    assert (after["sequence"], after["protocol_version"]) == (before["sequence"], MAX_PROTOCOL_VERSION)
    # a byte of the signed config changed: the signatures no longer hold
    data = bytearray(upd.read_bytes())
    data[-3] ^= 0x01
    tampered = tmp_path / "tampered.rxcfg"
    tampered.write_bytes(bytes(data))
    bad = net.cli_error("--as", "h01:admin", "config", "submit", str(tampered))
    assert bad["error"] == "BAD_CONFIG_UPDATE", bad
    garbage = tmp_path / "garbage.rxcfg"
    garbage.write_bytes(b"\xff" * 64)
    assert net.cli_error("--as", "h01:admin", "config", "sign", str(garbage))["error"] == "BAD_CONFIG_UPDATE"
    # nothing to change; lowering is never proposed
    same = net.cli_error("--as", "h01:admin", "config", "propose", "--out", str(tmp_path / "x"),
                         "--protocol-version", str(MAX_PROTOCOL_VERSION))
    assert same["error"] == "BAD_CONFIG_UPDATE" and "changes nothing" in same["message"]
    lower = net.cli_error("--as", "h01:admin", "config", "propose", "--out", str(tmp_path / "y"),
                          "--protocol-version", "1")
    assert lower["error"] == "BAD_CONFIG_UPDATE" and "never lowered" in lower["message"]
    assert net.cli("--as", "h01:admin", "config", "show")["sequence"] == before["sequence"]


def _signers(path: Path) -> list[str]:
    update = config_pb2.ConfigUpdate.FromString(path.read_bytes())
    return sorted(identity_pb2.Identity.FromString(s.signer).org for s in update.signatures)


def test_a_signed_proposal_is_never_overwritten_unasked_and_admins_signing_at_once_all_count(
        net: Net, tmp_path: Path) -> None:
    upd = tmp_path / "pv.rxcfg"
    net.cli("--as", "h01:admin", "config", "propose", "--out", str(upd), "--protocol-version", str(BEYOND))
    _sign(net, upd, ("h01",))
    signed = upd.read_bytes()
    again = net.cli_error("--as", "h02:admin", "config", "propose", "--out", str(upd), "--protocol-version", str(BEYOND))
    assert again["error"] == "FILE_EXISTS" and upd.read_bytes() == signed  # h01's signature kept
    # three admins sign at once, each in its own process: every signature that succeeded is in the file
    orgs = ("h02", "p01", "p02")
    with ThreadPoolExecutor(len(orgs)) as pool:
        results = dict(zip(orgs, pool.map(
            lambda org: rxchain(net.home, "--as", f"{org}:admin", "config", "sign", str(upd)), orgs), strict=True))
    assert all(rc == 0 or (rc, out["error"]) == (1, "FILE_BUSY") for rc, out in results.values()), results
    assert _signers(upd) == sorted(["h01", *(org for org, (rc, _) in results.items() if rc == 0)]), results
    replaced = net.cli("--as", "h02:admin", "config", "propose", "--out", str(upd), "--protocol-version", str(BEYOND),
                       "--force")
    assert replaced["signatures"] == 0 and _signers(upd) == []
