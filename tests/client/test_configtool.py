"""``client.configtool`` without a network: proposals, the update file, signatures, the
checks against the config in force and the bounded wait (the whole flow on a running network:
tests/e2e/test_config_update.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from netgen import GeneratedNetwork
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from client import configtool
from client.cli import main
from client.errors import CommitUnknown, RxClientError
from client.wallet import load_identity
from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Purpose, Verifier
from node.identity.policy import MAX_SIGNERS, parse_policy
from node.protocol import SUPPORTED_VERSIONS
from tests.client.conftest import FIXED_NOW
from tests.peer.kit import make_block, node_signer


def _config(**kw: Any) -> config_pb2.ConsortiumConfig:
    c = config_pb2.ConsortiumConfig(consortium_id="rx-test", sequence=3, **kw)
    c.organizations.add(id="h01", name="H", kind=config_pb2.HOSPITAL)
    c.policies.add(name="config_update", rule="MAJORITY(admin)")
    c.batch.timeout_ms = 50
    return c


def _admin(org: str, role: str = "admin") -> Any:
    ident = identity_pb2.Identity(org=org, cert_der=org.encode())
    return SimpleNamespace(org=org, role=role, label=f"{org}:{role}", identity=ident,
                           signer=SimpleNamespace(sign=lambda purpose, data: b"sig:" + org.encode() + data[:4]))


def test_a_proposal_is_the_config_in_force_changed_with_the_next_sequence() -> None:
    current = _config()
    update = configtool.propose(current, lambda c: setattr(c.batch, "timeout_ms", 60))
    new = config_pb2.ConsortiumConfig.FromString(update.config)
    assert (new.sequence, new.batch.timeout_ms, len(update.signatures)) == (4, 60, 0)
    assert configtool.changes(current, new) == ["batch.timeout_ms: 50 -> 60"]
    assert current.batch.timeout_ms == 50  # the config in force is not touched


def _sha(der: bytes) -> str:
    return '"sha256:' + hashlib.sha256(der).hexdigest() + '"'


def test_changes_show_every_field_signed_however_deep() -> None:
    current = _config()
    current.organizations[0].ca_cert_der = b"old-ca"
    current.organizations.add(id="p01", name="P", kind=config_pb2.PHARMACY)
    current.policies.add(name="lifecycle", rule="MAJORITY(admin)")

    def edit(c: config_pb2.ConsortiumConfig) -> None:
        c.organizations[0].ca_cert_der = b"new-ca"  # a rotated CA: which one, not just "h01 changed"
        c.organizations[0].revoked_serials.append("0a1b")
        c.policies[0].rule = "OutOf(2, 'h01.admin', 'p01.admin')"  # the rule itself, not its name
        for i in range(7):  # every one added, none cut off
            c.organizations.add(id=f"x{i}", name="X", kind=config_pb2.HOSPITAL)
        first, second = (config_pb2.PolicyEntry(name=x.name, rule=x.rule) for x in c.policies)
        del c.policies[:]
        c.policies.extend([second, first])  # reordered: the bytes signed differ

    new = config_pb2.ConsortiumConfig.FromString(configtool.propose(current, edit).config)
    lines = configtool.changes(current, new)
    assert f'organizations["h01"].ca_cert_der: {_sha(b"old-ca")} -> {_sha(b"new-ca")}' in lines
    assert 'organizations["h01"].revoked_serials: null -> ["0a1b"]' in lines
    assert ('policies["config_update"].rule: "MAJORITY(admin)" -> "OutOf(2, \'h01.admin\', \'p01.admin\')"'
            in lines)
    assert 'policies: order ["config_update", "lifecycle"] -> ["lifecycle", "config_update"]' in lines
    assert sum(line.startswith('organizations["x') and ": added " in line for line in lines) == 7
    assert all("old-ca" not in line and "bmV3" not in line for line in lines)  # DER as SHA-256, never base64


@pytest.mark.parametrize(("edit", "why"), [
    (lambda c: None, "changes nothing"),
    (lambda c: setattr(c, "protocol_version", 1), "changes nothing"),  # unset is version 1
    (lambda c: setattr(c, "consortium_id", "other"), "consortium id"),
])
def test_proposals_that_change_nothing_or_another_consortium_are_refused(edit: Any, why: str) -> None:
    with pytest.raises(RxClientError) as refused:
        configtool.propose(_config(), edit)
    assert refused.value.reason == "BAD_CONFIG_UPDATE" and why in refused.value.message


def test_the_protocol_version_is_never_lowered() -> None:
    with pytest.raises(RxClientError) as refused:
        configtool.propose(_config(protocol_version=3), lambda c: setattr(c, "protocol_version", 2))
    assert "never lowered" in refused.value.message


def test_a_proposal_retires_the_ids_it_removes_under_every_protocol_version() -> None:
    """The id of an organisation cut out of the config is listed in ``retired_org_ids`` (after
    the ids listed already, once), a listed id an edit dropped is put back, and an organisation
    added under a listed id is refused -- under version 1 too, where the orderers do not enforce
    it yet, so that ids removed before the raise are retired when it comes."""
    current = _config()
    current.organizations.add(id="p01", name="P", kind=config_pb2.PHARMACY)
    current.organizations.add(id="p02", name="P2", kind=config_pb2.PHARMACY)
    current.retired_org_ids.append("x9")

    def cut(c: config_pb2.ConsortiumConfig) -> None:
        kept = [o for o in c.organizations if o.id == "h01"]
        del c.organizations[:]
        c.organizations.extend(kept)
        c.retired_org_ids[:] = ["p02", "p02"]  # an edit listing one of the two, twice, dropping x9

    new = config_pb2.ConsortiumConfig.FromString(configtool.propose(current, cut).config)
    assert list(new.retired_org_ids) == ["p02", "x9", "p01"]
    for org_id in ("p01", "x9"):
        def add(c: config_pb2.ConsortiumConfig, org_id: str = org_id) -> None:
            c.organizations.add(id=org_id, kind=config_pb2.PHARMACY)

        with pytest.raises(RxClientError) as refused:
            configtool.propose(new, add)
        assert refused.value.reason == "BAD_CONFIG_UPDATE"
        assert f"organisation id '{org_id}' is retired" in refused.value.message
    with pytest.raises(RxClientError) as kept:
        configtool.propose(current, lambda c: c.retired_org_ids.append("p01"))
    assert "lists 'p01', an organisation of the new config" in kept.value.message
    assert configtool.summary(new)["retired_org_ids"] == ["p02", "x9", "p01"]


@pytest.mark.parametrize("entry", ["serial=0F4B76E6C8C75D4662C7C869217119A1E38F9ED6", "0F4B-76E6", "g1", "", "  "])
def test_a_revoked_serial_the_nodes_would_skip_is_refused_by_propose_sign_and_submit(entry: str) -> None:
    """The nodes read revoked_serials entries as hex serial numbers and skip any other
    (node.identity.msp.canonical_serial): ``serial=HEX``, what ``openssl x509 -serial -noout``
    prints, went in signed by every admin and revoked nothing (found following the README on a
    sample network: the doctor it named was still served)."""
    current = _config()
    with pytest.raises(RxClientError) as err:
        configtool.propose(current, lambda c: c.organizations[0].revoked_serials.append(entry))
    assert err.value.reason == "BAD_CONFIG_UPDATE" and repr(entry) in err.value.message
    made_elsewhere = config_pb2.ConsortiumConfig()  # a file another tool wrote: sign and submit check it
    made_elsewhere.CopyFrom(current)
    made_elsewhere.sequence += 1
    made_elsewhere.organizations[0].revoked_serials.append(entry)
    with pytest.raises(RxClientError) as signed:
        configtool.check_successor(current, made_elsewhere)
    assert signed.value.reason == "BAD_CONFIG_UPDATE" and repr(entry) in signed.value.message


@pytest.mark.parametrize("entry", ["0f4b76e6c8", "0F4B76E6C8", "0x0f4b", "0f:4b:76", "00ab"])
def test_revoked_serials_in_the_forms_the_nodes_read_are_proposed(entry: str) -> None:
    current = _config()
    current.organizations[0].revoked_serials.append("serial=01")  # in force already: not a reason to refuse
    new = config_pb2.ConsortiumConfig.FromString(
        configtool.propose(current, lambda c: c.organizations[0].revoked_serials.append(entry)).config)
    configtool.check_successor(current, new)
    assert list(new.organizations[0].revoked_serials) == ["serial=01", entry]


def test_a_proposal_must_follow_the_config_in_force() -> None:
    current = _config()
    nxt = config_pb2.ConsortiumConfig.FromString(
        configtool.propose(current, lambda c: setattr(c.batch, "timeout_ms", 60)).config)
    configtool.check_successor(current, nxt)
    with pytest.raises(RxClientError) as in_force:
        configtool.check_successor(nxt, nxt)
    assert in_force.value.reason == "ALREADY_IN_FORCE"
    later = config_pb2.ConsortiumConfig()
    later.CopyFrom(nxt)
    later.batch.timeout_ms = 70  # another update of the same sequence went in first
    with pytest.raises(RxClientError) as stale:
        configtool.check_successor(later, nxt)
    assert stale.value.reason == "STALE_CONFIG_UPDATE"
    other = config_pb2.ConsortiumConfig()
    other.CopyFrom(nxt)
    other.consortium_id = "staging"
    with pytest.raises(RxClientError) as foreign:
        configtool.check_successor(current, other)
    assert foreign.value.reason == "BAD_CONFIG_UPDATE"


def test_admins_sign_once_per_organisation(tmp_path: Path) -> None:
    update = configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60))
    one = configtool.sign(update, _admin("h01"))
    two = configtool.sign(one, _admin("p01"))
    assert [identity_pb2.Identity.FromString(s.signer).org for s in two.signatures] == ["h01", "p01"]
    assert two.signatures[0].signature == b"sig:h01" + update.config[:4]
    assert len(update.signatures) == 0  # signing returns a new update
    with pytest.raises(RxClientError) as again:
        configtool.sign(two, _admin("h01"))
    assert again.value.reason == "ALREADY_SIGNED"
    with pytest.raises(RxClientError) as doctor:
        configtool.sign(two, _admin("h02", "doctor"))
    assert doctor.value.reason == "WRONG_ROLE"
    path = tmp_path / "u.rxcfg"
    configtool.write_update(path, two)
    read, config = configtool.read_update(path)
    assert read == two and config.sequence == 4
    assert [p.name for p in tmp_path.iterdir()] == ["u.rxcfg"]  # no temporary file left


@pytest.mark.parametrize("data", [b"\xff" * 64, b"", config_pb2.ConfigUpdate(config=b"\xff\xff").SerializeToString(),
                                  b"\x0a" + b"\x00" * (configtool.MAX_UPDATE_BYTES + 8)])
def test_files_that_are_no_update_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "u.rxcfg"
    path.write_bytes(data)
    with pytest.raises(RxClientError) as bad:
        configtool.read_update(path)
    assert bad.value.reason == "BAD_CONFIG_UPDATE"
    with pytest.raises(RxClientError) as missing:
        configtool.read_update(tmp_path / "none.rxcfg")
    assert missing.value.reason == "BAD_CONFIG_UPDATE"


@pytest.mark.parametrize("extra", [
    b"\xa0\x06\x01",  # field 100 (varint 1): a field this release does not know, never in the changes shown
    b"\x48\x00",  # protocol_version = 0 encoded explicitly: parses as unset, the bytes signed differ
])
def test_config_bytes_other_than_what_propose_writes_are_refused(tmp_path: Path, extra: bytes) -> None:
    update = configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60))
    path = tmp_path / "u.rxcfg"
    configtool.write_update(path, update)
    configtool.read_update(path)
    configtool.write_update(path, config_pb2.ConfigUpdate(config=update.config + extra))
    with pytest.raises(RxClientError) as hidden:
        configtool.read_update(path)
    assert hidden.value.reason == "BAD_CONFIG_UPDATE" and "does not know" in hidden.value.message


def test_a_file_in_a_missing_directory_is_io_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "none" / "u.rxcfg"
    with pytest.raises(RxClientError) as missing:
        configtool.write_update(path, configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60)))
    assert missing.value.reason == "IO_ERROR" and str(path) in missing.value.message
    assert ".tmp" not in missing.value.message


def test_signing_keeps_who_may_read_the_file(tmp_path: Path) -> None:
    path = tmp_path / "u.rxcfg"
    update = configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60))
    configtool.write_update(path, update)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o664)  # a directory the admins share
    configtool.write_update(path, configtool.sign(update, _admin("h01")))
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


def test_a_peer_behind_the_proposal_is_named_as_such() -> None:
    current = _config()
    ahead = _config()
    ahead.sequence = current.sequence + 2
    with pytest.raises(RxClientError) as behind:
        configtool.check_successor(current, ahead)
    assert behind.value.reason == "STALE_CONFIG_UPDATE" and "lags behind" in behind.value.message


def test_json_round_trips_and_refuses_what_is_no_config() -> None:
    c = _config(protocol_version=2)
    assert configtool.from_json(configtool.to_json(c)) == c
    for bad in ({"sequence": "x"}, {"no_such_field": 1}, [1, 2], "text"):
        with pytest.raises(RxClientError) as refused:
            configtool.from_json(bad)
        assert refused.value.reason == "BAD_CONFIG_UPDATE", bad


def test_a_show_document_is_proposed_by_its_config_and_its_edits_outside_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    c = _config(protocol_version=2)
    shown = {"block": 0, "sequence": 3, "protocol_version": 2, "config": configtool.to_json(c)}
    path.write_text(json.dumps(shown))
    assert configtool.read_config_json(path) == c
    path.write_text(json.dumps(configtool.to_json(c)))  # the config alone
    assert configtool.read_config_json(path) == c
    path.write_text(json.dumps(dict(shown, protocol_version=3)))  # edited where it is not proposed
    with pytest.raises(RxClientError) as dropped:
        configtool.read_config_json(path)
    assert dropped.value.reason == "BAD_CONFIG_UPDATE" and "config.protocol_version" in dropped.value.message
    path.write_bytes(b" " * (configtool.MAX_UPDATE_BYTES * 2 + 1) + b"{}")
    with pytest.raises(RxClientError) as large:
        configtool.read_config_json(path)
    assert large.value.reason == "BAD_CONFIG_UPDATE" and "larger" in large.value.message
    for bad in (b"{", b"\xff", b"[1]"):
        path.write_bytes(bad)
        with pytest.raises(RxClientError) as refused:
            configtool.read_config_json(path)
        assert refused.value.reason == "BAD_CONFIG_UPDATE", bad


def test_the_wait_for_the_new_config_is_bounded() -> None:
    now = [0.0]
    reads: list[int] = []

    def read() -> tuple[int, config_pb2.ConsortiumConfig]:
        reads.append(1)
        return 7, _config()

    with pytest.raises(RxClientError) as late:
        configtool.wait_in_force(read, 4, timeout_s=1.0, sleep=lambda s: now.__setitem__(0, now[0] + s),
                                 clock=lambda: now[0])
    assert late.value.reason == "COMMIT_UNKNOWN" and 5 <= len(reads) <= 7  # ordered: it may yet go in (exit 3)
    assert configtool.wait_in_force(read, 3, clock=lambda: 0.0) == (7, _config())


def test_the_wait_outlasts_a_peer_restarting_and_names_the_update() -> None:
    now = [0.0]
    answers: list[Any] = [RxClientError("SERVICE_UNAVAILABLE", "peer down"), (7, _config())]

    def read() -> tuple[int, config_pb2.ConsortiumConfig]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, RxClientError):
            raise answer
        return answer  # type: ignore[no-any-return]

    tick = {"sleep": lambda s: now.__setitem__(0, now[0] + s), "clock": lambda: now[0]}
    assert configtool.wait_in_force(read, 3, timeout_s=5.0, **tick) == (7, _config())  # type: ignore[arg-type]
    answers[:] = [RxClientError("SERVICE_UNAVAILABLE", "peer down")]
    with pytest.raises(RxClientError) as late:
        configtool.wait_in_force(read, 4, timeout_s=1.0, tx_id="ab12", **tick)  # type: ignore[arg-type]
    assert isinstance(late.value, CommitUnknown) and late.value.detail["tx_id"] == "ab12"
    answers[:] = [RxClientError("LEDGER_INVALID", "block 4: no valid signature")]
    started = now[0]
    with pytest.raises(RxClientError) as bad:  # anything else is not waited out, yet the update was ordered
        configtool.wait_in_force(read, 4, timeout_s=1.0, tx_id="ab12", **tick)  # type: ignore[arg-type]
    assert isinstance(bad.value, CommitUnknown) and bad.value.detail["tx_id"] == "ab12"
    assert "LEDGER_INVALID: block 4" in bad.value.message and now[0] == started  # at once, no sleep


class _Orderers:
    """Broadcast answers by target, in place of the orderers (a BroadcastResponse or an RpcError)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any]) -> None:
        self.asked: list[str] = []
        orderers = self

        class Stub:
            def __init__(self, channel: str) -> None:
                self.target = channel

            def Broadcast(self, envelopes: Any, timeout: float) -> list[Any]:
                list(envelopes)
                orderers.asked.append(self.target)
                answer = answers[self.target]
                if isinstance(answer, Exception):
                    raise answer
                return [answer]

        class Channel(str):
            def close(self) -> None:
                pass

        monkeypatch.setattr(configtool, "secure_channel", lambda target, *a: Channel(target))
        monkeypatch.setattr(services_pb2_grpc, "AtomicBroadcastStub", Stub)


class _Broken(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "deadline exceeded"


def _envelope() -> tuple[str, bytes]:
    signer = SimpleNamespace(sign=lambda purpose, data: b"sig")
    ident = SimpleNamespace(identity=identity_pb2.Identity(org="h01", cert_der=b"c"), signer=signer)
    update = configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60))
    return configtool.envelope(update, ident, "rx-test", 1)  # type: ignore[arg-type]


def _answer(reason: str = "", message: str = "", accepted: str = "") -> services_pb2.BroadcastResponse:
    return services_pb2.BroadcastResponse(accepted=bool(accepted), tx_id=accepted, reason=reason, message=message)


def test_a_refusal_is_passed_through_and_an_orderer_unavailable_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    tx_id, raw = _envelope()
    ident: Any = SimpleNamespace(cert_path="c", key_path="k", ca_bundle_path="ca")
    _Orderers(monkeypatch, {"o1": _answer("NOT_LEADER", "no"), "o2": _answer(accepted=tx_id)})
    assert configtool.broadcast(ident, ["o1", "o2"], raw) == tx_id
    _Orderers(monkeypatch, {"o1": _answer("BAD_CONFIG_UPDATE", "admin signatures do not satisfy config_update")})
    with pytest.raises(RxClientError) as refused:
        configtool.broadcast(ident, ["o1", "o2"], raw)
    assert (refused.value.reason, refused.value.message) == (
        "BAD_CONFIG_UPDATE", "admin signatures do not satisfy config_update")


@pytest.mark.parametrize("first", [_answer("SERVICE_UNAVAILABLE", "block not committed in time"), _Broken()])
@pytest.mark.parametrize("then", [_answer("SERVICE_UNAVAILABLE", "no Raft leader"),
                                  _answer("BAD_CONFIG_UPDATE", "sequence 4, expected 5")])
def test_an_update_that_may_have_been_ordered_is_commit_unknown(monkeypatch: pytest.MonkeyPatch, first: Any,
                                                                then: Any) -> None:
    """Exit status 1 says "did not commit": an update the first orderer may have ordered is
    COMMIT_UNKNOWN (exit 3) naming its tx id -- also when the next refuses it for a sequence
    the first one's success would have taken."""
    tx_id, raw = _envelope()
    ident: Any = SimpleNamespace(cert_path="c", key_path="k", ca_bundle_path="ca")
    orderers = _Orderers(monkeypatch, {"o1": first, "o2": then})
    with pytest.raises(CommitUnknown) as unknown:
        configtool.broadcast(ident, ["o1", "o2"], raw)
    assert unknown.value.detail["tx_id"] == tx_id and orderers.asked == ["o1", "o2"]


def test_signatures_are_checked_as_the_orderers_check_them_the_new_one_included(net_home: GeneratedNetwork) -> None:
    current = net_home.config
    now_ms = int(FIXED_NOW.timestamp() * 1000) + 60_000
    update = configtool.propose(current, lambda c: setattr(c.batch, "timeout_ms", c.batch.timeout_ms + 1))
    h01 = load_identity(net_home.home, "h01", "admin")
    signed, orgs = configtool.add_signature(update, h01, current, Verifier(), now_ms)
    assert orgs == ["h01"]
    # a signature entry claiming the regulator, made with h01's admin certificate and key
    forged = config_pb2.ConfigUpdate()
    forged.CopyFrom(signed)
    claimed = identity_pb2.Identity.FromString(signed.signatures[0].signer)
    claimed.org = "reg01"
    forged.signatures.add(signer=claimed.SerializeToString(), signature=signed.signatures[0].signature)
    with pytest.raises(RxClientError) as bad:
        configtool.add_signature(forged, load_identity(net_home.home, "p01", "admin"), current, Verifier(), now_ms)
    assert bad.value.reason == "BAD_CONFIG_UPDATE" and "signature 2 (claiming 'reg01')" in bad.value.message
    # an admin of an organisation the config in force does not hold: its signature would sink the update
    without = config_pb2.ConsortiumConfig()
    without.CopyFrom(current)
    kept = [o for o in without.organizations if o.id != "reg01"]
    del without.organizations[:]
    without.organizations.extend(kept)
    with pytest.raises(RxClientError) as foreign:
        configtool.add_signature(signed, load_identity(net_home.home, "reg01", "admin"), without, Verifier(), now_ms)
    assert foreign.value.reason == "BAD_CONFIG_UPDATE" and "signature 2" in foreign.value.message


# ---------------------------------------------------------------- the proposal file: never overwritten unasked,
# signed under its lock


def test_propose_refuses_an_existing_file_unless_forced(net_home: GeneratedNetwork, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "u.rxcfg"
    update = configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60))
    signed = configtool.sign(update, _admin("h01"))
    configtool.create_update(path, signed)
    other = configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 70))
    with pytest.raises(RxClientError) as exists:
        configtool.create_update(path, other)
    assert exists.value.reason == "FILE_EXISTS" and str(path) in exists.value.message
    assert configtool.read_update(path)[0] == signed  # h01's signature still there
    # a file created between the check and the write is not replaced either (hard-linked in, not renamed over)
    monkeypatch.setattr(os.path, "lexists", lambda p: False)
    with pytest.raises(RxClientError) as raced:
        configtool.create_update(path, other)
    assert raced.value.reason == "FILE_EXISTS" and configtool.read_update(path)[0] == signed
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".u.rxcfg.lock", "u.rxcfg"]  # no temporary file left
    configtool.create_update(path, other, force=True)
    assert configtool.read_update(path)[0] == other
    # the command: refused before anything is read from a peer, exit status 1, the file untouched
    out, err = io.StringIO(), io.StringIO()
    status = main(["--json", "--home", str(net_home.home), "--as", "h01:admin", "config", "propose", "--out",
                   str(path), "--protocol-version", "2"], out=out, err=err)
    assert (status, json.loads(out.getvalue())["error"]) == (1, "FILE_EXISTS")
    assert configtool.read_update(path)[0] == other


def _signing_cli(net_home: GeneratedNetwork, monkeypatch: pytest.MonkeyPatch,
                 before_signing: Callable[[], object]) -> Callable[[str, Path], dict[str, Any]]:
    """``config sign`` in-process against ``net_home``'s genesis config as the config in force
    (``before_signing`` runs once the file was read and checked, before the signature is added)."""
    def in_force(*args: Any) -> tuple[int, config_pb2.ConsortiumConfig]:
        before_signing()
        return 0, net_home.config

    monkeypatch.setattr(configtool, "config_in_force", in_force)

    def sign(org: str, path: Path) -> dict[str, Any]:
        out, err = io.StringIO(), io.StringIO()
        main(["--json", "--home", str(net_home.home), "--as", f"{org}:admin", "config", "sign", str(path)],
             out=out, err=err)
        result: dict[str, Any] = json.loads(out.getvalue())
        return result

    return sign


def test_two_admins_signing_at_once_both_count(net_home: GeneratedNetwork, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Both admins read the file before either writes (a barrier): read, add own, write lost the
    first signature to the second writer; now each signs under the file's lock what it reads
    there, and both signatures are in the file."""
    path = tmp_path / "u.rxcfg"
    update = configtool.propose(net_home.config, lambda c: setattr(c.batch, "timeout_ms", c.batch.timeout_ms + 1))
    configtool.create_update(path, update)
    both_read = threading.Barrier(2, timeout=20)
    sign = _signing_cli(net_home, monkeypatch, both_read.wait)
    results: dict[str, dict[str, Any]] = {}
    threads = [threading.Thread(target=lambda org=org: results.__setitem__(org, sign(org, path)))
               for org in ("h01", "p01")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    final, _ = configtool.read_update(path)
    assert sorted(identity_pb2.Identity.FromString(s.signer).org for s in final.signatures) == ["h01", "p01"]
    assert sorted(len(r["signed_by"]) for r in results.values()) == [1, 2], results  # the second saw the first


def test_a_file_whose_config_changed_since_it_was_shown_is_not_signed(net_home: GeneratedNetwork, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "u.rxcfg"
    current = net_home.config
    update = configtool.propose(current, lambda c: setattr(c.batch, "timeout_ms", c.batch.timeout_ms + 1))
    other = configtool.propose(current, lambda c: setattr(c.limits, "gas_limit", c.limits.gas_limit + 1))
    configtool.create_update(path, update)
    # replaced (propose --force) between the read shown to the admin and the signature
    sign = _signing_cli(net_home, monkeypatch, lambda: configtool.create_update(path, other, force=True))
    assert sign("h01", path)["error"] == "FILE_CHANGED"
    assert configtool.read_update(path)[0] == other  # nothing signed, nothing written
    # replaced by a writer that takes no lock (a copy, an editor) while the signature is added
    now_ms = int(FIXED_NOW.timestamp() * 1000) + 60_000
    real = configtool.add_signature

    def add_then_replaced(*args: Any) -> Any:
        done = real(*args)
        (tmp_path / "copy").write_bytes(update.SerializeToString())
        (tmp_path / "copy").replace(path)
        return done

    monkeypatch.setattr(configtool, "add_signature", add_then_replaced)
    h01 = load_identity(net_home.home, "h01", "admin")
    with pytest.raises(RxClientError) as replaced:
        configtool.sign_file(path, other, h01, current, Verifier(), now_ms)
    assert replaced.value.reason == "FILE_CHANGED"
    assert configtool.read_update(path)[0] == update  # the other writer's file, not overwritten


def test_a_file_held_by_another_config_command_is_busy_after_a_bounded_wait(tmp_path: Path) -> None:
    path = tmp_path / "u.rxcfg"
    with configtool.locked(path):
        started = time.monotonic()
        with pytest.raises(RxClientError) as busy, configtool.locked(path, wait_s=0.3):
            pass
        assert busy.value.reason == "FILE_BUSY" and 0.3 <= time.monotonic() - started < 5
    with configtool.locked(path, wait_s=0.0):  # released: free at once
        pass
    with pytest.raises(RxClientError) as missing, configtool.locked(tmp_path / "none" / "u.rxcfg"):
        pass
    assert missing.value.reason == "IO_ERROR" and "u.rxcfg" in missing.value.message


def test_the_lock_file_is_readable_by_the_other_admins_whatever_the_umask(tmp_path: Path) -> None:
    """The lock file is opened read-only by every admin's account: made 0600 under the first
    admin's umask 077, it locked every other admin out of signing the proposal (IO_ERROR) --
    the proposal file itself is 0644 whatever the umask (write_update)."""
    path = tmp_path / "u.rxcfg"
    old = os.umask(0o077)
    try:
        configtool.create_update(path, configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60)))
    finally:
        os.umask(old)
    lock = tmp_path / ".u.rxcfg.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644 == stat.S_IMODE(path.stat().st_mode)
    os.chmod(lock, 0o600)  # a lock file another account made: its mode is not ours to change
    with configtool.locked(path, wait_s=0.0):
        pass
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    (tmp_path / "elsewhere").write_bytes(b"")
    os.symlink(tmp_path / "elsewhere", tmp_path / ".v.rxcfg.lock")  # never followed
    with pytest.raises(RxClientError) as link, configtool.locked(tmp_path / "v.rxcfg", wait_s=0.0):
        pass
    assert link.value.reason == "IO_ERROR"


def test_a_file_system_refusing_the_lock_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flock failing otherwise than "held" (NFS emulating it with a POSIX write lock on a file
    opened read-only: EBADF; no lock manager: ENOLCK) is IO_ERROR naming the file, not a traceback."""
    import errno as errno_

    def refuse(fd: int, op: int) -> None:
        raise OSError(errno_.ENOLCK, os.strerror(errno_.ENOLCK))

    monkeypatch.setattr("client.configtool.fcntl.flock", refuse)
    with pytest.raises(RxClientError) as refused, configtool.locked(tmp_path / "u.rxcfg"):
        pass
    assert refused.value.reason == "IO_ERROR" and "u.rxcfg" in refused.value.message


# ---------------------------------------------------------------- the config in force: the chain's, verified


class _Chain:
    """A chain on ``net_home``'s genesis: block 1 an ordinary block, blocks 2 and 3 config updates
    (sequence + 1, + 2; signed by a majority of admins), block 4 ordinary; all signed by orderer
    ins01 with honest metadata, as a sound peer holds them."""

    def __init__(self, net: GeneratedNetwork) -> None:
        self.home = net.home
        self.genesis = block_pb2.Block.FromString((net.home / "genesis.block").read_bytes())
        self.orderer = node_signer(net.home, "orderer.ins01", "ins01")
        self.at_ms = int(FIXED_NOW.timestamp() * 1000) + 60_000
        self.configs = [net.config]
        self.blocks = [self.genesis]
        self.add([b"not an envelope"], 0)
        for _ in range(2):
            self.add([self.update(net, self.configs[-1])], len(self.blocks))
            self.configs.append(config_pb2.ConsortiumConfig.FromString(
                config_pb2.ConfigUpdate.FromString(transaction_pb2.Transaction.FromString(
                    transaction_pb2.Envelope.FromString(self.blocks[-1].data.envelopes[0]).payload
                ).config_update).config))
        self.add([b"another"], 3)

    def update(self, net: GeneratedNetwork, current: config_pb2.ConsortiumConfig) -> bytes:
        update = configtool.propose(current, lambda c: setattr(c.batch, "timeout_ms", c.batch.timeout_ms + 1))
        for org in ("h01", "h02", "p01", "p02"):
            update = configtool.sign(update, load_identity(net.home, org, "admin"))
        return configtool.envelope(update, load_identity(net.home, "h01", "admin"), current.consortium_id,
                                   self.at_ms)[1]

    def add(self, envelopes: list[bytes], last_config: int) -> None:
        prev = block_header_hash(self.blocks[-1].header)
        block = make_block(len(self.blocks), prev, envelopes, self.orderer, self.at_ms)
        block.metadata.validation_codes.extend([transaction_pb2.VALID] * len(envelopes))
        block.metadata.last_config_block = last_config
        self.blocks.append(block)

    def resign(self, n: int) -> None:
        """Block ``n`` signed again by the orderer after its header changed."""
        block = self.blocks[n]
        del block.metadata.orderer_signatures[:]
        sig = block.metadata.orderer_signatures.add(signer=self.orderer.identity)
        sig.signature = self.orderer.sign(Purpose.BLOCK, block_header_hash(block.header))


class _Peer:
    """A peer serving ``blocks`` (Status height, PeerDeliver), in place of the gRPC stubs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, blocks: list[block_pb2.Block]) -> None:
        self.blocks = blocks
        self.asked: list[tuple[int, int]] = []
        peer = self

        class Admin:
            def __init__(self, channel: Any) -> None:
                pass

            def Status(self, req: Any, timeout: float) -> services_pb2.StatusResponse:
                return services_pb2.StatusResponse(height=len(peer.blocks))

        class Deliver:
            def __init__(self, channel: Any) -> None:
                pass

            def Deliver(self, req: services_pb2.DeliverRequest, timeout: float) -> Iterator[Any]:
                peer.asked.append((req.start_block, req.stop_block))
                stop = req.stop_block or len(peer.blocks) - 1
                for b in peer.blocks[req.start_block:stop + 1]:
                    yield services_pb2.DeliverResponse(block=b)

        class Channel:
            def close(self) -> None:
                pass

        monkeypatch.setattr(configtool, "secure_channel", lambda *a: Channel())
        monkeypatch.setattr(services_pb2_grpc, "AdminStub", Admin)
        monkeypatch.setattr(services_pb2_grpc, "PeerDeliverStub", Deliver)


_IDENT: Any = SimpleNamespace(cert_path="c", key_path="k", ca_bundle_path="ca")


def _in_force(chain: _Chain) -> tuple[int, config_pb2.ConsortiumConfig]:
    return configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier()))


@pytest.fixture(scope="module")
def chain_blocks(net_home: GeneratedNetwork) -> _Chain:
    return _Chain(net_home)


def _copy(chain: _Chain) -> _Chain:
    out = _Chain.__new__(_Chain)
    out.__dict__.update(chain.__dict__)
    out.blocks = [block_pb2.Block.FromString(b.SerializeToString()) for b in chain.blocks]
    return out


def test_the_config_in_force_is_the_last_valid_config_of_the_verified_chain(
        chain_blocks: _Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = _copy(chain_blocks)
    peer = _Peer(monkeypatch, chain.blocks)
    verified = configtool.ChainConfig(chain.genesis, Verifier())
    assert configtool.config_in_force(_IDENT, "peer", verified) == (3, chain.configs[2])
    assert chain.configs[2].sequence == chain.configs[0].sequence + 2
    chain.add([b"later"], 3)  # the wait after submit: only the blocks past those verified are asked for
    assert configtool.config_in_force(_IDENT, "peer", verified) == (3, chain.configs[2])
    assert peer.asked == [(0, 4), (5, 5)]


def _pointer_to_the_older_config(chain: _Chain) -> None:
    chain.blocks[4].metadata.last_config_block = 2  # an older config, still recorded VALID


def _forged_config_block(chain: _Chain) -> None:
    # the peer's own config in block 3 (another batch timeout): no orderer signed this header
    tx = transaction_pb2.Transaction.FromString(transaction_pb2.Envelope.FromString(
        chain.blocks[3].data.envelopes[0]).payload)
    update = config_pb2.ConfigUpdate.FromString(tx.config_update)
    config = config_pb2.ConsortiumConfig.FromString(update.config)
    config.batch.timeout_ms += 1000
    update.config = config.SerializeToString(deterministic=True)
    tx.config_update = update.SerializeToString()
    env = transaction_pb2.Envelope(payload=tx.SerializeToString(), signature=b"x")
    del chain.blocks[3].data.envelopes[:]
    chain.blocks[3].data.envelopes.append(env.SerializeToString())
    chain.blocks[3].header.data_hash = block_data_hash(list(chain.blocks[3].data.envelopes))
    chain.blocks[4].header.previous_hash = block_header_hash(chain.blocks[3].header)
    chain.resign(4)


def _invalid_config_recorded_valid(chain: _Chain) -> None:
    # block 3's update signed by 3 admins of 6 (short of MAJORITY(admin)), ordered, recorded VALID, named in force
    env = transaction_pb2.Envelope.FromString(chain.blocks[3].data.envelopes[0])
    tx = transaction_pb2.Transaction.FromString(env.payload)
    update = config_pb2.ConfigUpdate.FromString(tx.config_update)
    del update.signatures[3:]
    tx.config_update = update.SerializeToString()
    signer = load_identity(chain.home, "h01", "admin").signer
    payload = tx.SerializeToString()
    raw = transaction_pb2.Envelope(payload=payload, signature=signer.sign(Purpose.ENVELOPE, payload))
    del chain.blocks[3].data.envelopes[:]
    chain.blocks[3].data.envelopes.append(raw.SerializeToString())
    chain.blocks[3].header.data_hash = block_data_hash(list(chain.blocks[3].data.envelopes))
    chain.resign(3)
    chain.blocks[4].header.previous_hash = block_header_hash(chain.blocks[3].header)
    chain.resign(4)


def _valid_config_recorded_invalid(chain: _Chain) -> None:
    chain.blocks[3].metadata.validation_codes[:] = [transaction_pb2.BAD_PAYLOAD]


def _another_genesis(chain: _Chain) -> None:
    chain.blocks[0].header.timestamp_ms += 1


@pytest.mark.parametrize("tamper", [_pointer_to_the_older_config, _forged_config_block, _invalid_config_recorded_valid,
                                    _valid_config_recorded_invalid, _another_genesis])
def test_a_peer_naming_another_config_than_its_chain_shows_is_refused(
        chain_blocks: _Chain, monkeypatch: pytest.MonkeyPatch, tamper: Callable[[_Chain], None]) -> None:
    """``last_config_block`` and the validation codes are metadata no orderer signs: a peer
    naming the older config block 2 (the old tool read it as the config in force: the admin
    diffed and signed against it), a config block no orderer signed, a refused update marked
    VALID, or the config in force marked refused -- LEDGER_INVALID, nothing taken from it."""
    chain = _copy(chain_blocks)
    tamper(chain)
    _Peer(monkeypatch, chain.blocks)
    with pytest.raises(RxClientError) as refused:
        _in_force(chain)
    assert refused.value.reason == "LEDGER_INVALID", refused.value.message


def test_a_block_signed_by_no_orderer_of_the_config_in_force_is_refused(
        chain_blocks: _Chain, net_home: GeneratedNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = _copy(chain_blocks)
    chain.orderer = node_signer(net_home.home, "peer.h01", "h01")  # a peer's key signing as an orderer
    chain.resign(4)
    _Peer(monkeypatch, chain.blocks)
    with pytest.raises(RxClientError) as refused:
        _in_force(chain)
    assert refused.value.reason == "LEDGER_INVALID" and "block 4" in refused.value.message


def test_nothing_is_proposed_or_signed_on_a_config_the_chain_does_not_show(
        chain_blocks: _Chain, net_home: GeneratedNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = _copy(chain_blocks)
    _pointer_to_the_older_config(chain)
    _Peer(monkeypatch, chain.blocks)

    def cli(*args: str) -> tuple[int, dict[str, Any]]:
        out, err = io.StringIO(), io.StringIO()
        status = main(["--json", "--home", str(net_home.home), "--as", "h01:admin", "config", *args], out=out, err=err)
        return status, json.loads(out.getvalue())

    new = tmp_path / "new.rxcfg"
    assert cli("propose", "--out", str(new), "--protocol-version", "2")[1]["error"] == "LEDGER_INVALID"
    assert not new.exists()
    old = tmp_path / "old.rxcfg"  # made against block 2's config, the one the peer names
    configtool.write_update(old, configtool.propose(chain.configs[1], lambda c: setattr(c, "protocol_version", 2)))
    data = old.read_bytes()
    status, refused = cli("sign", str(old))
    assert (status, refused["error"]) == (1, "LEDGER_INVALID") and old.read_bytes() == data


def test_the_verified_prefix_outlasts_the_command_and_only_new_blocks_are_streamed(
        chain_blocks: _Chain, net_home: GeneratedNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every config command streamed and verified the whole chain from the genesis block: its
    cost grew with the ledger without bound, and past DELIVER_TIMEOUT_S of streaming no config
    command could run at all. The prefix verified is saved (CHAIN_STATE) and the next command
    streams only the blocks past it."""
    chain = _copy(chain_blocks)
    peer = _Peer(monkeypatch, chain.blocks)
    state = tmp_path / configtool.CHAIN_STATE
    first = configtool.ChainConfig(chain.genesis, Verifier(), state)
    assert configtool.config_in_force(_IDENT, "peer", first) == (3, chain.configs[2])
    assert json.loads(state.read_text())["height"] == 5
    chain.add([b"later"], 3)
    nxt = configtool.ChainConfig(chain.genesis, Verifier(), state)  # the next command
    assert nxt.height == 5 and nxt.resumed
    assert configtool.config_in_force(_IDENT, "peer", nxt) == (3, chain.configs[2])
    assert peer.asked == [(0, 4), (5, 5)]  # not the whole chain again
    assert json.loads(state.read_text())["height"] == 6
    # a config update past the saved prefix is judged against the config the state holds
    chain.add([chain.update(net_home, chain.configs[2])], 6)
    assert configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier(), state))[0] == 6
    # ... and a block past it that no orderer signed is refused as before (after a full verification)
    chain.add([b"forged"], 6)
    chain.blocks[-1].metadata.orderer_signatures[0].signature = b"x"
    with pytest.raises(RxClientError) as forged:
        configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier(), state))
    assert forged.value.reason == "LEDGER_INVALID" and "block 7" in forged.value.message
    assert json.loads(state.read_text())["height"] == 7  # nothing of the refused block saved


@pytest.mark.parametrize("case", ["another_chain", "another_chain_as_long", "peer_behind", "garbage",
                                  "another_genesis"])
def test_a_saved_state_the_peer_does_not_extend_is_dropped_and_the_chain_verified_again(
        chain_blocks: _Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """The saved state is never trusted over the chain: a peer behind it (another --peer), a torn
    file, another genesis block's -- the chain is verified from the genesis block again, and the
    answer is what a full verification gives; a chain verified so that holds another block where
    the state's chain held one is CHAIN_RESTARTED."""
    chain = _copy(chain_blocks)
    state = tmp_path / configtool.CHAIN_STATE
    _Peer(monkeypatch, chain.blocks)
    assert configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier(), state))[0] == 3
    other = _copy(chain_blocks)
    expected: tuple[int, config_pb2.ConsortiumConfig] = (3, chain.configs[2])
    if case == "another_chain":  # block 4 differs, the chain goes on from there
        other.blocks = other.blocks[:4]
        other.add([b"another network's block"], 3)
        other.add([b"more"], 3)
    elif case == "another_chain_as_long":  # nothing past the saved prefix: its last block is compared
        other.blocks = other.blocks[:4]
        other.add([b"another network's block"], 3)
    elif case == "peer_behind":
        other.blocks = other.blocks[:3]
        expected = (2, chain.configs[1])
    elif case == "garbage":
        state.write_text('{"format": 1, "genesis": "zz"')
    else:
        saved = json.loads(state.read_text())
        saved["genesis"] = "00" * 32
        state.write_text(json.dumps(saved))
    peer = _Peer(monkeypatch, other.blocks)
    if case.startswith("another_chain"):
        # another chain from the same genesis block (a network started again, or one forged with a
        # genesis orderer's key): it was verified from genesis, answered and -- being longer --
        # saved over the state, so the home's sessions pinned by it. Now CHAIN_RESTARTED, as a
        # session says it, and nothing of it saved.
        saved = state.read_bytes()
        with pytest.raises(RxClientError) as restarted:
            configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier(), state))
        assert restarted.value.reason == "CHAIN_RESTARTED" and "block 4" in restarted.value.message
        assert peer.asked[-1][0] == 0  # (judged on the chain verified from the genesis block)
        assert state.read_bytes() == saved
        return
    assert configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier(), state)) \
        == expected
    assert peer.asked[-1][0] == 0  # verified from the genesis block
    # the file is replaced only by a chain verified further: a peer behind (or as long) rolls
    # back no saved configuration -- sessions pin their peer's CA by it (test_session_ca)
    assert json.loads(state.read_text())["height"] == max(len(other.blocks), 5)


def test_a_stream_cut_short_keeps_the_blocks_verified_for_the_next_command(
        chain_blocks: _Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain too long to stream within DELIVER_TIMEOUT_S: the blocks verified before the
    deadline are kept, and the next command goes on from there -- not from block 0 again, which
    would run into the same deadline forever."""
    import grpc

    chain = _copy(chain_blocks)
    peer = _Peer(monkeypatch, chain.blocks)
    full = services_pb2_grpc.PeerDeliverStub

    class Deadline(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.DEADLINE_EXCEEDED

        def details(self) -> str:
            return "Deadline Exceeded"

    class CutShort(full):  # type: ignore[misc, valid-type]
        def Deliver(self, req: services_pb2.DeliverRequest, timeout: float) -> Iterator[Any]:
            for i, msg in enumerate(super().Deliver(req, timeout)):
                if i == 3:
                    raise Deadline()
                yield msg

    monkeypatch.setattr(services_pb2_grpc, "PeerDeliverStub", CutShort)
    state = tmp_path / configtool.CHAIN_STATE
    with pytest.raises(RxClientError) as late:
        configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier(), state))
    assert late.value.reason == "TIMEOUT" and json.loads(state.read_text())["height"] == 3
    monkeypatch.setattr(services_pb2_grpc, "PeerDeliverStub", full)
    assert configtool.config_in_force(_IDENT, "peer", configtool.ChainConfig(chain.genesis, Verifier(), state)) \
        == (3, chain.configs[2])
    assert peer.asked == [(0, 4), (3, 4)]


def test_a_block_past_a_protocol_this_release_lacks_is_protocol_unsupported_not_a_forgery(
        chain_blocks: _Chain, net_home: GeneratedNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past a config raising the protocol version beyond this release, blocks may be signed or
    hashed by rules it lacks: a check failing there is PROTOCOL_UNSUPPORTED (install a release
    implementing it), as ledger verify says -- LEDGER_INVALID told the admin the peer lied and
    to ask another, which every peer would answer alike."""
    chain = _copy(chain_blocks)
    beyond_version = max(SUPPORTED_VERSIONS) + 1
    update = configtool.propose(chain.configs[2], lambda c: setattr(c, "protocol_version", beyond_version))
    for org in ("h01", "h02", "p01", "p02"):
        update = configtool.sign(update, load_identity(net_home.home, org, "admin"))
    chain.add([configtool.envelope(update, load_identity(net_home.home, "h01", "admin"),
                                   chain.configs[2].consortium_id, chain.at_ms)[1]], 5)
    _Peer(monkeypatch, chain.blocks)
    assert _in_force(chain)[0] == 5  # the version-raising config itself is shown
    chain.add([f"a block of protocol {beyond_version}".encode()], 5)
    chain.blocks[-1].metadata.orderer_signatures[0].signature = b"signed otherwise under a later protocol"
    with pytest.raises(RxClientError) as beyond:
        _in_force(chain)
    assert beyond.value.reason == "PROTOCOL_UNSUPPORTED" and "block 6" in beyond.value.message
    chain.blocks[4].metadata.orderer_signatures[0].signature = b"x"  # before it: a forgery, as ever
    with pytest.raises(RxClientError) as forged:
        _in_force(chain)
    assert forged.value.reason == "LEDGER_INVALID" and "block 4" in forged.value.message


@pytest.mark.parametrize("next_signer", ["old", "rotated"])
def test_a_block_after_an_orderer_certificate_rotation_is_checked_against_the_new_certificate(
        chain_blocks: _Chain, net_home: GeneratedNetwork, monkeypatch: pytest.MonkeyPatch, next_signer: str) -> None:
    """Each block is checked against the config in force before it: the config block rotating
    orderer ins01's certificate is still the old certificate's to sign, the block after it the
    new one's -- a block the old key signs after the rotation is refused."""
    from cryptography import x509 as cx509

    from node.crypto import signing
    from node.crypto import x509 as rx509

    chain = _copy(chain_blocks)
    ca_dir = net_home.home / "orgs" / "ins01"
    key = signing.generate_key()
    cert = rx509.issue_cert(cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes()),
                            signing.load_private_key((ca_dir / "ca.key").read_bytes()), key.public_key(),
                            org="ins01", role="orderer", name="orderer.ins01", now=FIXED_NOW,
                            hosts=("127.0.0.1", "localhost", "orderer.ins01"))
    rotated = signing.Signer(key, identity_pb2.Identity(org="ins01", cert_der=rx509.cert_to_der(cert)))

    def rotate(c: config_pb2.ConsortiumConfig) -> None:
        c.orderers[0].cert_der = rx509.cert_to_der(cert)

    update = configtool.propose(chain.configs[2], rotate)
    for org in ("h01", "h02", "p01", "p02"):
        update = configtool.sign(update, load_identity(net_home.home, org, "admin"))
    chain.add([configtool.envelope(update, load_identity(net_home.home, "h01", "admin"),
                                   chain.configs[2].consortium_id, chain.at_ms)[1]], 5)
    _Peer(monkeypatch, chain.blocks)
    assert _in_force(chain)[0] == 5  # signed by the old certificate: the config in force before it
    if next_signer == "rotated":
        chain.orderer = rotated
    chain.add([b"after the rotation"], 5)
    if next_signer == "rotated":
        assert _in_force(chain)[0] == 5
        return
    with pytest.raises(RxClientError) as old:
        _in_force(chain)
    assert old.value.reason == "LEDGER_INVALID" and "block 6" in old.value.message


def test_a_file_signed_twice_for_one_organisation_or_beyond_the_orderers_bound_is_refused(
        net_home: GeneratedNetwork) -> None:
    # signed_by must name each organisation once: an admin counting signatures before signing (or
    # submitting) would otherwise count one organisation twice; and a file the orderers refuse for its
    # number of signatures alone is refused here, before anyone adds theirs
    from node.orderer.configtx import MAX_CONFIG_SIGNATURES

    current = net_home.config
    now_ms = int(FIXED_NOW.timestamp() * 1000) + 60_000
    update = configtool.propose(current, lambda c: setattr(c.batch, "timeout_ms", c.batch.timeout_ms + 1))
    signed, _ = configtool.add_signature(update, load_identity(net_home.home, "h01", "admin"), current,
                                         Verifier(), now_ms)
    twice = config_pb2.ConfigUpdate()
    twice.CopyFrom(signed)
    twice.signatures.add().CopyFrom(signed.signatures[0])
    with pytest.raises(RxClientError) as dup:
        configtool.check_signatures(twice, current, Verifier(), now_ms)
    assert dup.value.reason == "BAD_CONFIG_UPDATE" and "signature 2" in dup.value.message
    assert "h01" in dup.value.message
    many = config_pb2.ConfigUpdate()
    many.CopyFrom(signed)
    for _ in range(MAX_CONFIG_SIGNATURES):
        many.signatures.add().CopyFrom(signed.signatures[0])
    with pytest.raises(RxClientError) as bound:
        configtool.check_signatures(many, current, Verifier(), now_ms)
    assert bound.value.reason == "BAD_CONFIG_UPDATE" and str(MAX_CONFIG_SIGNATURES) in bound.value.message


def test_a_signature_past_the_signers_a_policy_check_counts_is_refused() -> None:
    """A consortium grown past MAX_SIGNERS (20) organisations: MAJORITY(admin) of 25 needs 13
    admins, and a policy check refuses any set of more than 20 distinct signers, so a 21st
    admin signature would make the orderers refuse the update whoever signed (BAD_CONFIG_UPDATE
    "admin signatures do not satisfy config_update"). Signing refuses it TOO_MANY_SIGNATURES,
    naming the way out (submit as it is). Before the fix the 21st was added (only 64 were
    refused)."""
    orgs = [f"h{i:02d}" for i in range(1, 26)]
    policy = parse_policy("MAJORITY(admin)", orgs)
    assert policy.evaluate((o, "admin") for o in orgs[:13])
    assert not policy.evaluate((o, "admin") for o in orgs[:MAX_SIGNERS + 1])  # why a 21st breaks it
    update = configtool.propose(_config(), lambda c: setattr(c.batch, "timeout_ms", 60))
    for org in orgs[:MAX_SIGNERS]:
        update = configtool.sign(update, _admin(org))
    with pytest.raises(RxClientError) as info:
        configtool.sign(update, _admin(orgs[MAX_SIGNERS]))
    assert info.value.reason == "TOO_MANY_SIGNATURES" and "submit it" in info.value.message


def test_chain_restarted_is_one_constant_of_configtool() -> None:
    """The reason a config command and a session give for a restarted network was written twice
    (a constant in client.follow, a literal in configtool): one edited alone would make the FHIR
    gateway's 503 mapping, or the session's check of what a follow raised, miss the other's. It is
    one constant, configtool's, which client.follow and the FHIR gateway's mapping use."""
    import ast

    from client import follow
    from client.fhir import server

    assert vars(follow)["CHAIN_RESTARTED"] is configtool.CHAIN_RESTARTED == "CHAIN_RESTARTED"
    assert server._STATUS[configtool.CHAIN_RESTARTED] == 503
    root = Path(configtool.__file__).parent
    literals = [str(path.relative_to(root)) for path in sorted(root.rglob("*.py"))
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Constant) and node.value == "CHAIN_RESTARTED"]
    assert literals == ["configtool.py"]  # (its definition)
