"""An organisation rotating its records certificate keeps reading what was wrapped for the old
one: its wallets keep the earlier keys (``previous-records-keys/``, client.wallet), each grant
and note key opens with the key it was wrapped for, and the current key must be the one of the
records certificate in force -- in the newest configuration the home verified, which is also
where record keys are wrapped to (never a records certificate a peer merely answered)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rxchain.v1 import block_pb2, config_pb2, transaction_pb2

from bench.txbuild import TxKit, make_block, node_signer, user_signer
from client import configtool
from client.errors import KeyNotHeld, NoKeyGrant, RxClientError, WalletError
from client.network import load_network
from client.rxops import RxOperations
from client.session import Session
from client.wallet import MAX_PREVIOUS_RECORDS_KEYS, PREVIOUS_RECORDS_KEYS_DIR, load_identity_dir
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.genesis import config_from_genesis, read_genesis
from tests.client.test_note_keys import NOTE, _issued, _ops, _patient
from tests.client.test_session_ca import _as_ordered, _local, _Orderer, _ordering, _Peer, _serving
from tests.contracts.chain import who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import JIANG, ZHOU
from tests.contracts.rxclient import World

# ------------------------------------------------------------ unwrapping after a rotation

def _rotate(w: World, org: str) -> ec.EllipticCurvePrivateKey:
    """``org``'s records certificate is replaced: from now on keys are wrapped for a new key.
    Returns the old one (what the org's wallets keep in previous-records-keys/)."""
    old = w.keyring.of(org)
    w.keyring.keys[org] = ec.generate_private_key(ec.SECP256R1())
    return old


def _reader(w: World, keys: list[ec.EllipticCurvePrivateKey]) -> RxOperations:
    """h02's doctor whose wallet holds ``keys`` (the current records key first)."""
    ops = _ops(w, ZHOU, "h02")[0]
    ops.s.decryption_keys = lambda: list(keys)  # type: ignore[method-assign]
    return ops


def _granted_then_rotated(w: World) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """h02 holds a consent granted before its records certificate rotated (its record key
    wrapped for the old key); after the rotation the patient re-routes p01 -> p02, which makes
    note key 1 wrapped for h02's new key, and the doctor revokes with a note under it."""
    rx = _issued(w)
    patient = _patient(w)
    patient.grant_consent(rx, "h02")
    old = _rotate(w, "h02")
    patient.route(rx, "p02")
    _ops(w, JIANG, "h01")[0].revoke(rx, "OTHER", note=NOTE)
    return rx, old


def test_a_grant_before_a_rotation_and_a_note_after_it_both_read(world: World) -> None:  # noqa: F811
    """With the new key and the previous one, h02 reads the content (its record key wrapped
    for the old certificate) and the note (note key 1 wrapped for the new one). The note stayed
    sealed: a grant's note keys were opened only with the key that opened its record key."""
    rx, old = _granted_then_rotated(world)
    ops = _reader(world, [world.keyring.of("h02"), old])
    shown = ops.show(rx)
    assert shown["content"]["rx_id"] == rx
    assert shown["revocation"]["note"] == NOTE
    assert ops._get_key(rx).note_keys.keys() == {1}


def test_a_wallet_with_only_the_new_key_is_told_key_not_held(world: World) -> None:  # noqa: F811
    """Without the previous key the old wrap opens with none of the wallet's keys: KEY_NOT_HELD
    (still a NoKeyGrant), naming previous-records-keys/ -- not NO_KEY_GRANT, which reads as
    "no grant" while the org holds one. ``show`` reads the metadata and says so in ``denied``."""
    rx, _ = _granted_then_rotated(world)
    ops = _reader(world, [world.keyring.of("h02")])
    with pytest.raises(KeyNotHeld) as e:
        ops._get_key(rx)
    assert isinstance(e.value, NoKeyGrant)
    assert e.value.reason == "KEY_NOT_HELD" and "previous-records-keys" in e.value.message
    shown = ops.show(rx)
    assert shown["content"] is None and shown["denied"] == "KEY_NOT_HELD"


def test_a_route_after_the_rotation_re_wraps_with_both_keys(world: World) -> None:  # noqa: F811
    """The hospital's records certificate rotated after issue: its doctor, holding both keys,
    re-routes -- re-wrapping the record key (old wrap) and note key 1 (new wrap) for p02."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    old = _rotate(world, "h01")
    patient.revoke_consent(rx, "h02")  # note key 1: wrapped for h01's new key
    jiang = _ops(world, JIANG, "h01")[0]
    jiang.s.decryption_keys = lambda: [world.keyring.of("h01"), old]  # type: ignore[method-assign]
    jiang.route(rx, "p02")
    jiang.revoke(rx, "OTHER", note=NOTE)
    chen = _ops(world, who("p02:pharm-chen:pharmacist"), "p02")[0]
    assert chen.show(rx)["revocation"]["note"] == NOTE


# ------------------------------------------------------------ the wallet's layout

def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _put(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _wallet(net_home: Any, tmp_path: Path) -> Path:
    d = tmp_path / "w"
    shutil.copytree(net_home.user_dir("h01", "dr-jiang"), d)
    return d


def test_previous_records_keys_are_loaded_in_name_order(net_home: Any, tmp_path: Path) -> None:
    d = _wallet(net_home, tmp_path)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
    _put(d / PREVIOUS_RECORDS_KEYS_DIR / "2025.pem", _key_pem(keys[1]))
    _put(d / PREVIOUS_RECORDS_KEYS_DIR / "2024.pem", _key_pem(keys[0]))
    ident = load_identity_dir(d, net_home.ca_bundle_path)
    assert [k.public_key().public_numbers() for k in ident.previous_records_keys] == [
        k.public_key().public_numbers() for k in keys]
    assert ident.records_key is not None  # the current one is untouched


@pytest.mark.parametrize("case", ["readable by others", "not pem", "another name", "a file", "too many"])
def test_a_bad_previous_records_keys_directory_is_bad_wallet(net_home: Any, tmp_path: Path, case: str) -> None:
    d = _wallet(net_home, tmp_path)
    prev = d / PREVIOUS_RECORDS_KEYS_DIR
    key = _key_pem(ec.generate_private_key(ec.SECP256R1()))
    if case == "readable by others":
        _put(prev / "old.pem", key, 0o644)
    elif case == "not pem":
        _put(prev / "old.pem", b"not a key")
    elif case == "another name":
        _put(prev / "old.key", key)  # would be left out silently
    elif case == "a file":
        _put(prev, key)
    else:
        for i in range(MAX_PREVIOUS_RECORDS_KEYS + 1):
            _put(prev / f"{i:03}.pem", key)
    with pytest.raises(WalletError) as e:
        load_identity_dir(d, net_home.ca_bundle_path)
    assert e.value.reason == "BAD_WALLET"


# ------------------------------------------------------------ a rotation the home verified

def _config_block(home: Path, genesis: block_pb2.Block,
                  edit: Callable[[config_pb2.ConsortiumConfig], None]) -> block_pb2.Block:
    """Block 1: the genesis config edited, signed by 4 of the 6 admins (MAJORITY) and the orderer."""
    base = config_from_genesis(genesis)
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(base)
    new.sequence = base.sequence + 1
    edit(new)
    now_ms = time.time_ns() // 1_000_000
    kit = TxKit(base.consortium_id, random.Random(7), clock_ms=now_ms)
    admins = [user_signer(home, org, "admin") for org in ("h02", "p01", "p02", "ins01")]
    env = kit.config_tx(admins[0], new, admins)
    block = make_block(1, block_header_hash(genesis.header), [env], [node_signer(home, "orderer.ins01", "ins01")],
                       timestamp_ms=now_ms)
    block.metadata.last_config_block = 1
    block.metadata.validation_codes.append(transaction_pb2.VALID)
    return block


def _records_cert(home: Path, org: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A new records certificate of ``org`` (its own CA) for ``key``."""
    odir = home / "orgs" / org
    ca = x509.load_pem_x509_certificate((odir / "ca.pem").read_bytes())
    ca_key = signing.load_private_key((odir / "ca.key").read_bytes())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    cert = rx509.issue_cert(ca, ca_key, key.public_key(), org=org, role="client", name=f"records.{org}",
                            now=now, days=30)
    return rx509.cert_to_der(cert)


def _org(config: config_pb2.ConsortiumConfig, org: str) -> config_pb2.Organization:
    return next(o for o in config.organizations if o.id == org)


def _home_rotating_h01(net_home: Any, tmp_path: Path, verify_rotation: bool) -> tuple[
        Path, block_pb2.Block, ec.EllipticCurvePrivateKey]:
    """A copy of the network home, the config block 1 rotating h01's records certificate and the
    new certificate's key; config-chain.json verified through block 1 (``verify_rotation``) or
    through the genesis block only."""
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    new_key = ec.generate_private_key(ec.SECP256R1())
    der = _records_cert(home, "h01", new_key)
    genesis = read_genesis(home / "genesis.block")
    block1 = _config_block(home, genesis, lambda c: setattr(_org(c, "h01"), "records_cert_der", der))
    verifying = configtool.ChainConfig(genesis, Verifier(), home / configtool.CHAIN_STATE)
    verifying.feed(genesis)
    if verify_rotation:
        verifying.feed(block1)
        assert _org(verifying.verified()[1], "h01").records_cert_der == der  # adopted by the orderers' rules
    verifying.save()
    return home, block1, new_key


def _verified_plus_org(home: Path, like: str, org: str) -> config_pb2.ConsortiumConfig:
    """The configuration the home verified with one more organisation ``org`` (a copy of ``like``)
    and the next sequence number: one added since (or made up by a peer)."""
    verified = configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(),
                                      home / configtool.CHAIN_STATE).verified()[1]
    added = config_pb2.ConsortiumConfig()
    added.CopyFrom(verified)
    added.sequence += 1
    extra = added.organizations.add()
    extra.CopyFrom(_org(verified, like))
    extra.id = org
    return added


@pytest.fixture
def rotated_home(net_home: Any, tmp_path: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A home that verified a config update rotating h01's records certificate (config-chain.json);
    returns (home, the new certificate's key)."""
    home, _, new_key = _home_rotating_h01(net_home, tmp_path, verify_rotation=True)
    return home, new_key


def test_a_rotated_wallet_opens_a_session(rotated_home: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """The new key as org-records-key.pem, the old one in previous-records-keys/: the session
    opens and unwraps with all of them. It was refused BAD_WALLET: the key was checked against
    the genesis records certificate whatever the home verified since."""
    home, new_key = rotated_home
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    old = (wallet / "org-records-key.pem").read_bytes()
    _put(wallet / PREVIOUS_RECORDS_KEYS_DIR / "records-1.pem", old)
    _put(wallet / "org-records-key.pem", _key_pem(new_key))
    with Session(home, "h01:dr-jiang") as s:
        keys = [k.public_key().public_numbers() for k in s.decryption_keys()]
    assert keys[1:] == [new_key.public_key().public_numbers(),
                        signing.load_private_key(old).public_key().public_numbers()]


def test_a_wallet_not_updated_after_a_verified_rotation_is_told_where_the_old_key_goes(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    home, _ = rotated_home
    with pytest.raises(WalletError) as e:
        Session(home, "h01:dr-jiang")
    assert e.value.reason == "BAD_WALLET" and PREVIOUS_RECORDS_KEYS_DIR in e.value.message


def _answering(s: Session, config: config_pb2.ConsortiumConfig) -> None:
    """The session's peer answers ``config`` as the configuration in force."""
    raw = config.SerializeToString()
    s.gateway.status = lambda **_: SimpleNamespace(config=raw)  # type: ignore[method-assign,assignment]


def test_keys_are_wrapped_for_the_verified_records_certificate_only(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """The home verified h01's rotation. A peer answering the genesis configuration (h01's old
    records certificate) -- or one naming a records certificate of its own choosing -- is
    refused RECORDS_CERT_UNVERIFIED: keys were wrapped for whatever certificate the peer named.
    A peer answering the verified configuration gets the new certificate's key."""
    home, new_key = rotated_home
    wallet = home / "orgs" / "p01" / "users" / "pharm-wang"
    genesis_config = config_from_genesis(read_genesis(home / "genesis.block"))
    verified = configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(),
                                      home / configtool.CHAIN_STATE).verified()[1]
    forged = config_pb2.ConsortiumConfig()
    forged.CopyFrom(verified)
    forged.sequence += 5
    _org(forged, "h01").records_cert_der = _records_cert(home, "h01", ec.generate_private_key(ec.SECP256R1()))
    assert (wallet / "org-records-key.pem").exists()
    for config in (genesis_config, forged):
        with Session(home, "p01:pharm-wang") as s:
            _answering(s, config)
            with pytest.raises(RxClientError) as e:
                s.records_public_key("h01")
            assert e.value.reason == "RECORDS_CERT_UNVERIFIED", config.sequence
            # an organisation whose records certificate the chain and the peer agree on
            p02 = x509.load_der_x509_certificate(_org(verified, "p02").records_cert_der).public_key()
            assert isinstance(p02, ec.EllipticCurvePublicKey)
            assert s.records_public_key("p02").public_numbers() == p02.public_numbers()
    with Session(home, "p01:pharm-wang") as s:
        _answering(s, verified)
        assert s.records_public_key("h01").public_numbers() == new_key.public_key().public_numbers()


def test_without_a_verified_chain_the_peers_records_certificate_stands(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """No config-chain.json: as before, the configuration the peer answers (checked by its MSP)."""
    home, new_key = rotated_home
    verified = configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(),
                                      home / configtool.CHAIN_STATE).verified()[1]
    (home / configtool.CHAIN_STATE).unlink()
    with Session(home, "p01:pharm-wang") as s:
        _answering(s, verified)
        assert s.records_public_key("h01").public_numbers() == new_key.public_key().public_numbers()


def test_a_peer_that_does_not_answer_leaves_the_verified_records_certificate(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """The peer gives no configuration: the newest one the home verified stands for the call
    (the genesis one did, whose records certificate h01 rotated away from)."""
    home, new_key = rotated_home

    def down(**_: Any) -> Any:
        raise RxClientError("SERVICE_UNAVAILABLE", "peer down")

    with Session(home, "p01:pharm-wang") as s:
        s.gateway.status = down  # type: ignore[method-assign,assignment]
        assert s.records_public_key("h01").public_numbers() == new_key.public_key().public_numbers()
        assert s.current_network().config.sequence == 1


def test_an_organisation_the_verified_chain_does_not_hold_is_records_cert_unverified(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey]) -> None:
    """The peer names an organisation added since the home verified (or made up): its records
    certificate is no more verified than a rotated one -- refused the same way, not wrapped for."""
    home, _ = rotated_home
    added = _verified_plus_org(home, "p02", "p09")
    with Session(home, "p01:pharm-wang") as s:
        _answering(s, added)
        with pytest.raises(RxClientError) as e:
            s.records_public_key("p09")
        assert e.value.reason == "RECORDS_CERT_UNVERIFIED"
        with pytest.raises(RxClientError) as e:
            s.records_public_key("p10")
        assert e.value.reason == "UNKNOWN_ORG"


# ------------------------------------------------------------ a rotation the home has not verified yet

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unfollowed_home(net_home: Any, tmp_path: Path) -> tuple[Path, block_pb2.Block, ec.EllipticCurvePrivateKey]:
    """A home that verified the genesis block only (config-chain.json of height 1) while block 1,
    rotating h01's records certificate, committed since; returns (home, block 1, the new key)."""
    return _home_rotating_h01(net_home, tmp_path, verify_rotation=False)


@pytest.mark.parametrize("served", ["rotation", "nothing-new"])
def test_a_records_rotation_the_home_has_not_verified_is_followed(
        unfollowed_home: tuple[Path, block_pb2.Block, ec.EllipticCurvePrivateKey], served: str) -> None:
    """The peer reports h01's rotated records certificate, which the home has not verified (no
    config command ran here since): the call was refused RECORDS_CERT_UNVERIFIED until someone ran
    `rxchain config show`. The session now follows the chain itself once -- another peer's blocks,
    every one verified -- and wraps for the new certificate; when no peer serves a block that
    verifies it, the refusal stands (and the follow is not repeated within the interval)."""
    home, block1, new_key = unfollowed_home
    genesis = read_genesis(home / "genesis.block")
    blocks = [genesis, block1] if served == "rotation" else [genesis]
    rotated_config = configtool.ChainConfig(genesis, Verifier(), None)
    rotated_config.feed(genesis)
    rotated_config.feed(block1)
    peer = _Peer(blocks)
    # (orderer.ins01 holds the rotation too: a config block a peer serves is confirmed by the orderers)
    with _serving(home, "peer.h02", blocks, peer) as port, _ordering(home, _Orderer(_as_ordered(blocks))) as o_port:
        net = _local(load_network(home), {"h01": _closed_port(), "h02": port})
        net = dataclasses.replace(net, orderers=tuple(dataclasses.replace(o, host="127.0.0.1", port=o_port)
                                                      for o in net.orderers))
        with Session(home, "p01:pharm-wang", network=net) as s:
            _answering(s, rotated_config.verified()[1])
            if served == "rotation":
                assert s.records_public_key("h01").public_numbers() == new_key.public_key().public_numbers()
                assert json.loads((home / configtool.CHAIN_STATE).read_text())["height"] == 2
                return
            for _ in range(2):
                with pytest.raises(RxClientError) as e:
                    s.records_public_key("h01")
                assert e.value.reason == "RECORDS_CERT_UNVERIFIED"
            assert peer.asked == 1
    assert json.loads((home / configtool.CHAIN_STATE).read_text())["height"] == 1


@pytest.mark.parametrize("content", [b"{torn", b'{"format": 1, "genesis": "00", "height": 9}'])
def test_a_chain_state_that_verifies_nothing_wraps_for_no_reported_certificate(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey], content: bytes) -> None:
    """config-chain.json is there but verifies nothing (torn, another network's): the session
    took the peer's word for every records certificate, as if the home had never verified a
    chain -- a peer could have the key wrapped for a certificate of its choosing by spoiling the
    file. It is now RECORDS_CERT_UNVERIFIED, naming the file and the remedy."""
    home, _ = rotated_home
    verified = configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(),
                                      home / configtool.CHAIN_STATE).verified()[1]
    (home / configtool.CHAIN_STATE).write_bytes(content)
    with Session(home, "p01:pharm-wang") as s:
        _answering(s, verified)
        with pytest.raises(RxClientError) as e:
            s.records_public_key("h01")
    assert e.value.reason == "RECORDS_CERT_UNVERIFIED" and configtool.CHAIN_STATE in e.value.message


# ------------------------------------------------------------ the rotation command

def _rotate_cli(home: Path, as_: str, key_path: Path) -> tuple[int, dict[str, Any]]:
    """``rxchain wallet rotate-records-key --key KEY_PATH`` in-process: (exit status, its JSON)."""
    import io

    from client.cli import main

    out, err = io.StringIO(), io.StringIO()
    status = main(["--json", "--home", str(home), "--as", as_, "wallet", "rotate-records-key",
                   "--key", str(key_path)], out=out, err=err)
    return status, json.loads(out.getvalue())


def _files(d: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``d`` (but the rotation's lock file, left in place as config commands'
    locks are): its bytes and mode."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mode & 0o777) for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".org-records-key.pem.lock"}


def test_the_rotation_command_keeps_the_old_key_and_installs_the_new(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey], tmp_path: Path) -> None:
    """No command wrote previous-records-keys/: after a records certificate rotation operators moved
    the old key by hand (and a wallet not moved was refused BAD_WALLET, naming the move). `rxchain
    wallet rotate-records-key --key NEW.pem` keeps the current key there (private, named by its
    public key) and installs the new one: the session opens and holds both."""
    home, new_key = rotated_home
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    old_pem = (wallet / "org-records-key.pem").read_bytes()
    key_path = tmp_path / "new-records.pem"
    _put(key_path, _key_pem(new_key))
    with pytest.raises(WalletError) as e:
        Session(home, "h01:dr-jiang")
    assert "wallet rotate-records-key" in e.value.message  # (the refusal names the command)
    status, out = _rotate_cli(home, "h01:dr-jiang", key_path)
    assert status == 0, out
    kept = wallet / out["kept"]
    assert kept.parent.name == PREVIOUS_RECORDS_KEYS_DIR and kept.name.startswith("records-")
    assert kept.read_bytes() == old_pem and kept.stat().st_mode & 0o777 == 0o600
    assert (wallet / "org-records-key.pem").read_bytes() == _key_pem(new_key)
    assert (wallet / "org-records-key.pem").stat().st_mode & 0o777 == 0o600
    assert out["previous_keys"] == 1 and out["config_sequence"] == 1
    assert sorted(p.name for p in wallet.iterdir() if p.name.endswith(".tmp")) == []  # no temporary file left
    with Session(home, "h01:dr-jiang") as s:
        keys = [k.public_key().public_numbers() for k in s.decryption_keys()]
    assert keys[1:] == [new_key.public_key().public_numbers(),
                        signing.load_private_key(old_pem).public_key().public_numbers()]


@pytest.mark.parametrize("case", ["mismatch", "unverified", "readable by others", "not a key",
                                  "full", "no records key", "busy"])
def test_the_rotation_command_refuses_bad_input_and_changes_nothing(
        net_home: Any, tmp_path: Path, case: str) -> None:
    """A key that is not the one of the records certificate the home verified in force (another
    key; the rotation not verified here yet: `config show` named), not private or no P-256 key,
    a previous-records-keys/ at its 32 keys, a wallet without a records
    key (a nurse's), another rotation of the wallet running: each refused with its reason, the
    wallet as it was."""
    import fcntl

    home, _, new_key = _home_rotating_h01(net_home, tmp_path, verify_rotation=case != "unverified")
    user = "nurse-liu" if case == "no records key" else "dr-jiang"
    wallet = home / "orgs" / "h01" / "users" / user
    key_path = tmp_path / "new-records.pem"
    _put(key_path, _key_pem(ec.generate_private_key(ec.SECP256R1()) if case == "mismatch" else new_key),
         0o644 if case == "readable by others" else 0o600)
    if case == "not a key":
        _put(key_path, b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    if case == "full":
        for i in range(MAX_PREVIOUS_RECORDS_KEYS):
            _put(wallet / PREVIOUS_RECORDS_KEYS_DIR / f"{i:03}.pem", _key_pem(ec.generate_private_key(ec.SECP256R1())))
    before = _files(wallet)
    lock = os.open(wallet / ".org-records-key.pem.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if case == "busy":
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, out = _rotate_cli(home, f"h01:{user}", key_path)
    finally:
        os.close(lock)
    expected = {"mismatch": "RECORDS_KEY_MISMATCH", "unverified": "RECORDS_KEY_MISMATCH",
                "readable by others": "BAD_KEY", "not a key": "BAD_KEY",
                "full": "TOO_MANY_RECORDS_KEYS", "no records key": "NO_RECORDS_KEY", "busy": "FILE_BUSY"}[case]
    assert (status, out["error"]) == (1, expected), out
    if case == "unverified":
        assert "rxchain config show" in out["message"]
    assert _files(wallet) == before


def test_a_rotation_cut_short_is_completed_by_running_it_again(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The old key was kept, then installing the new one failed (a full disk, a crash): the wallet
    still loads (its old key in both places), and the command run again installs the new key
    without keeping the old one twice."""
    from client import wallet as wallet_mod

    home, new_key = rotated_home
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    old_pem = (wallet / "org-records-key.pem").read_bytes()
    key_path = tmp_path / "new-records.pem"
    _put(key_path, _key_pem(new_key))

    def full(path: Any, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wallet_mod, "replace_file", full)
    status, out = _rotate_cli(home, "h01:dr-jiang", key_path)
    assert (status, out["error"]) == (1, "IO_ERROR")
    assert (wallet / "org-records-key.pem").read_bytes() == old_pem
    assert len(load_identity_dir(wallet, home / "ca-bundle.pem").previous_records_keys) == 1
    monkeypatch.undo()
    status, out = _rotate_cli(home, "h01:dr-jiang", key_path)
    assert status == 0 and out["kept"] is None and out["previous_keys"] == 1, out
    assert [p.read_bytes() for p in (wallet / PREVIOUS_RECORDS_KEYS_DIR).iterdir()] == [old_pem]
    with Session(home, "h01:dr-jiang") as s:
        assert len(s.decryption_keys()) == 3


def test_the_rotation_command_run_again_after_it_went_through_changes_nothing_and_succeeds(
        rotated_home: tuple[Path, ec.EllipticCurvePrivateKey], tmp_path: Path) -> None:
    """A rerun of a rotation that went through (a script retrying, an operator unsure) was refused
    ALREADY_INSTALLED (exit 1): it is done, so it now succeeds (exit 0) and says nothing changed,
    the wallet as it was; another key is still refused."""
    home, new_key = rotated_home
    wallet = home / "orgs" / "h01" / "users" / "dr-jiang"
    key_path = tmp_path / "new-records.pem"
    _put(key_path, _key_pem(new_key))
    status, out = _rotate_cli(home, "h01:dr-jiang", key_path)
    assert status == 0 and out["changed"] is True, out
    before = _files(wallet)
    status, out = _rotate_cli(home, "h01:dr-jiang", key_path)
    assert status == 0, out
    assert out["changed"] is False and out["kept"] is None and out["previous_keys"] == 1
    assert "nothing changed" in out["note"]
    assert _files(wallet) == before
    _put(key_path, _key_pem(ec.generate_private_key(ec.SECP256R1())))
    status, out = _rotate_cli(home, "h01:dr-jiang", key_path)
    assert (status, out["error"]) == (1, "RECORDS_KEY_MISMATCH")
    assert _files(wallet) == before


def test_a_wallet_holding_the_key_of_an_earlier_rotation_is_told_to_rotate(net_home: Any, tmp_path: Path) -> None:
    """h01's records certificate was rotated twice (blocks 1 and 2) and the home verified both; a
    wallet still holding the key of the certificate of block 1 -- neither the genesis one nor the
    one in force -- was told only to verify the verifying (`config show`), which it had: the hint
    recognised the genesis certificate's key alone. Any records certificate the verified verifying put
    in force is recognised now: the refusal names `wallet rotate-records-key`."""
    home, block1, second_key = _home_rotating_h01(net_home, tmp_path, verify_rotation=True)
    genesis = read_genesis(home / "genesis.block")
    third_key = ec.generate_private_key(ec.SECP256R1())
    third_der = _records_cert(home, "h01", third_key)
    verifying = configtool.ChainConfig(genesis, Verifier(), home / configtool.CHAIN_STATE)
    assert verifying.resumed and verifying.height == 2
    base = verifying.verified()[1]
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(base)
    new.sequence = base.sequence + 1
    _org(new, "h01").records_cert_der = third_der
    now_ms = time.time_ns() // 1_000_000
    kit = TxKit(base.consortium_id, random.Random(8), clock_ms=now_ms)
    admins = [user_signer(home, org, "admin") for org in ("h02", "p01", "p02", "ins01")]
    block2 = make_block(2, block_header_hash(block1.header), [kit.config_tx(admins[0], new, admins)],
                        [node_signer(home, "orderer.ins01", "ins01")], timestamp_ms=now_ms)
    block2.metadata.last_config_block = 2
    block2.metadata.validation_codes.append(transaction_pb2.VALID)
    verifying.feed(block2)
    verifying.in_force()  # (saves it)
    assert _org(configtool.ChainConfig(genesis, Verifier(), home / configtool.CHAIN_STATE).verified()[1],
                "h01").records_cert_der == third_der
    _put(home / "orgs" / "h01" / "users" / "dr-jiang" / "org-records-key.pem", _key_pem(second_key))
    with pytest.raises(WalletError) as e:
        Session(home, "h01:dr-jiang")
    assert e.value.reason == "BAD_WALLET"
    assert "wallet rotate-records-key" in e.value.message and PREVIOUS_RECORDS_KEYS_DIR in e.value.message


class _WatchedLock:
    """A lock that says when a thread starts waiting for it (``waiting``); ``inner`` is taken
    directly by the holder."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.waiting = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.waiting.set()
        return self.inner.acquire(blocking, timeout)

    def release(self) -> None:
        self.inner.release()

    def locked(self) -> bool:
        return self.inner.locked()


def test_a_records_rotation_a_follow_under_way_verifies_is_taken(
        unfollowed_home: tuple[Path, block_pb2.Block, ec.EllipticCurvePrivateKey]) -> None:
    """A follow of the session under way (the proactive one) verifies h01's records rotation while
    a call waits for it (review19): the call's own follow then ran not (the proactive one ran within
    the interval) and the call was refused RECORDS_CERT_UNVERIFIED, though the session now held the
    rotated certificate. The chain grown meanwhile is compared again: the new certificate's key."""
    home, block1, new_key = unfollowed_home
    genesis = read_genesis(home / "genesis.block")
    rotated_config = configtool.ChainConfig(genesis, Verifier(), None)
    rotated_config.feed(genesis)
    rotated_config.feed(block1)
    with Session(home, "p01:pharm-wang", follow_every_s=0) as s:
        _answering(s, rotated_config.verified()[1])
        lock = _WatchedLock()
        s._follow_lock = lock  # type: ignore[assignment]
        lock.inner.acquire()
        errors: list[BaseException] = []

        def follow_under_way() -> None:
            try:
                assert lock.waiting.wait(10)
                with s._state_lock:
                    s._adopt(rotated_config.verified()[1], rotated_config.height)
                s._proactive_followed, s._proactive_finding = s._monotonic(), None
            except BaseException as exc:  # (reported by the test)
                errors.append(exc)
            finally:
                lock.inner.release()

        worker = threading.Thread(target=follow_under_way, daemon=True)
        worker.start()
        try:
            key = s.records_public_key("h01")
        finally:
            worker.join(10)
        assert errors == [] and not worker.is_alive()
        assert key.public_numbers() == new_key.public_key().public_numbers()
