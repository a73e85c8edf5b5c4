"""Consortium generator: idempotence, layout, genesis, and bad consortium files."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from netgen import generate, load_spec
from netgen.generate import plan_nodes

from node.config import load_node_config
from node.crypto import signing
from node.crypto import x509 as rx509
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis

from .conftest import FIXED_NOW, small_consortium

SAMPLE = Path(__file__).resolve().parents[2] / "network-config" / "consortium.yaml"


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_is_idempotent(tmp_path: Path) -> None:
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    first = _digest_tree(tmp_path)
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    assert _digest_tree(tmp_path) == first
    assert "genesis.block" in first and "orgs/h01/users/dr-jiang/key.pem" in first


def test_generate_completes_missing_material(tmp_path: Path) -> None:
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    before = _digest_tree(tmp_path)
    (tmp_path / "orgs/p01/users/pharm-wang/cert.pem").unlink()
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    after = _digest_tree(tmp_path)
    assert after["orgs/p01/users/pharm-wang/key.pem"] == before["orgs/p01/users/pharm-wang/key.pem"]
    assert "orgs/p01/users/pharm-wang/cert.pem" in after
    assert after["genesis.block"] == before["genesis.block"]


def test_genesis_and_node_configs(tmp_path: Path) -> None:
    net = generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    cfg = config_from_genesis(read_genesis(net.genesis_path))
    assert [o.id for o in cfg.organizations] == ["h01", "h02", "p01", "ins01", "reg01"]
    assert [o.name for o in cfg.orderers] == ["orderer.ins01"]
    assert {p.name for p in cfg.peers} == {"peer.h01", "peer.h02", "peer.p01", "peer.ins01"}
    assert cfg.batch.max_tx_count == 10 and cfg.limits.gas_limit == 100000
    assert all(o.records_cert_der for o in cfg.organizations)
    nc = load_node_config(net.node_config_path("peer.h01"))
    assert nc.kind == "peer" and nc.port == 21051 and nc.host == "127.0.0.1"
    assert [e.name for e in nc.orderers] == ["orderer.ins01"]
    assert "peer.h01" not in [e.name for e in nc.peers]
    oc = load_node_config(net.node_config_path("orderer.ins01"))
    assert oc.raft_id == 1


def test_sample_consortium_file() -> None:
    spec = load_spec(SAMPLE)
    ids = [o.id for o in spec.orgs]
    assert ids[:12] == [f"h{i:02d}" for i in range(1, 13)]
    assert {"p01", "p02", "ins01", "ins02", "ins03", "reg01"} <= set(ids)
    levels = {o.id: o.level for o in spec.orgs if o.kind == "hospital"}
    assert levels["h01"] == "tertiary" and all(levels[f"h{i:02d}"] == "community" for i in range(2, 13))
    nodes = plan_nodes(spec)
    assert [n.name for n in nodes if n.kind == "orderer"] == ["orderer.ins01", "orderer.ins02", "orderer.ins03"]
    assert len([n for n in nodes if n.kind == "peer"]) == 16
    users = {(o.id, u.name): u for o in spec.orgs for u in o.users}
    assert users[("h01", "dr-jiang")].attrs["practice_years"] == "10"
    assert users[("h01", "dr-new")].attrs["practice_years"] == "2"
    assert users[("h01", "nurse-liu")].role == "nurse"
    for key in [("h02", "dr-zhou"), ("h01", "pharm-he"), ("p01", "pharm-wang"), ("p02", "pharm-chen"),
                ("p01", "courier-1"), ("ins01", "clerk-zhao"), ("reg01", "auditor-1"),
                ("h01", "patient-zhang"), ("h02", "patient-sun")]:
        assert key in users


def _mutate(fn: Any) -> dict[str, Any]:
    raw = copy.deepcopy(small_consortium())
    fn(raw)
    return raw


@pytest.mark.parametrize(
    ("mutation", "fragment"),
    [
        (lambda r: r["organizations"].append(dict(r["organizations"][0])), "duplicate organisation id 'h01'"),
        (lambda r: r["organizations"][0].update(kind="clinic"), "unknown kind 'clinic'"),
        (lambda r: r["organizations"][1].update(id="patient"), "'patient' is reserved"),
        (lambda r: r["organizations"][0].update(level="county"), "hospital level"),
        (lambda r: r["organizations"][2].update(orderer=True), "only insurers run orderers"),
        (lambda r: r["organizations"][2]["users"].append({"name": "dr-x", "role": "doctor"}), "role 'doctor' not allowed"),
        (lambda r: r["policies"].update(lifecycle="AND(zz01.admin)"), "unknown organisation 'zz01'"),
        (lambda r: r["policies"].update(lifecycle="AND(h01.admin"), "policy lifecycle"),
        (lambda r: r["batch"].update(max_tx_count=0), "batch.max_tx_count"),
        (lambda r: r["limits"].pop("gas_limit"), "missing gas_limit"),
        (lambda r: r.update(base_port="x"), "base_port"),
        (lambda r: r["organizations"][3].update(orderer=False), "at least one insurer"),
    ],
)
def test_bad_consortium_files(tmp_path: Path, mutation: Any, fragment: str) -> None:
    with pytest.raises(RxError) as e:
        generate(_mutate(mutation), tmp_path, clock=lambda: FIXED_NOW)
    assert e.value.reason == "BAD_CONFIG"
    assert fragment in e.value.message
    assert not (tmp_path / "genesis.block").exists()


def test_bad_node_config(tmp_path: Path) -> None:
    p = tmp_path / "node.yaml"
    p.write_text("name: x\nkind: peer\n")
    with pytest.raises(RxError, match="missing keys"):
        load_node_config(p)
    p.write_text("[not, a, mapping]")
    with pytest.raises(RxError, match="must be a mapping"):
        load_node_config(p)


def test_malformed_genesis_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "genesis.block"
    p.write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(RxError) as e:
        read_genesis(p)
    assert e.value.reason == "BAD_CONFIG"


def test_tampered_genesis_is_refused(tmp_path: Path) -> None:
    net = generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    block = read_genesis(net.genesis_path)
    block.data.envelopes[0] = block.data.envelopes[0] + b"\x00"
    p = tmp_path / "tampered.block"
    p.write_bytes(block.SerializeToString())
    with pytest.raises(RxError, match="data hash mismatch"):
        read_genesis(p)


def _read_roles_of_the_contract() -> set[str]:
    """The union of contracts/prescription.py READ_ROLES, read from its source."""
    import ast
    src = (Path(__file__).resolve().parents[2] / "contracts" / "prescription.py").read_text()
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "READ_ROLES"
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            return {role for roles in value.values() for role in roles}
    raise AssertionError("READ_ROLES not found")


def test_only_the_roles_that_read_records_hold_the_records_key(tmp_path: Path) -> None:
    from netgen.generate import RECORDS_KEY_FILE, RECORDS_READER_ROLES
    assert set(RECORDS_READER_ROLES) == _read_roles_of_the_contract()
    spec = load_spec(SAMPLE)
    generate(spec, tmp_path, clock=lambda: FIXED_NOW)
    holders: list[str] = []
    others: list[str] = []
    for org in spec.orgs:
        for user in org.users:
            wallet = tmp_path / "orgs" / org.id / "users" / user.name
            (holders if (wallet / RECORDS_KEY_FILE).exists() else others).append(user.role)
            if (wallet / RECORDS_KEY_FILE).exists():
                assert (wallet / RECORDS_KEY_FILE).stat().st_mode & 0o077 == 0
    assert holders and set(holders) <= RECORDS_READER_ROLES
    assert {"courier", "nurse", "admin", "patient"} & set(others)
    assert not RECORDS_READER_ROLES & set(others)


def test_a_records_key_left_in_another_wallet_is_removed(tmp_path: Path) -> None:
    from netgen.generate import RECORDS_KEY_FILE
    spec = load_spec(SAMPLE)
    generate(spec, tmp_path, clock=lambda: FIXED_NOW)
    courier = next((o.id, u.name) for o in spec.orgs for u in o.users if u.role == "courier")
    stale = tmp_path / "orgs" / courier[0] / "users" / courier[1] / RECORDS_KEY_FILE
    stale.write_bytes((tmp_path / "orgs" / courier[0] / "records" / "key.pem").read_bytes())
    generate(spec, tmp_path, clock=lambda: FIXED_NOW)
    assert not stale.exists()


def test_patient_wallets_hold_their_binding(tmp_path: Path) -> None:
    from netgen.generate import PATIENT_BINDING_FILE, patient_cert_name

    from client.records import patient_binding
    spec = load_spec(SAMPLE)
    generate(spec, tmp_path, clock=lambda: FIXED_NOW)
    secret = bytes.fromhex((tmp_path / "consortium-secret").read_text().strip())
    patients = [(o.id, u.name) for o in spec.orgs for u in o.users if u.role == "patient"]
    assert patients
    for org, name in patients:
        path = tmp_path / "orgs" / org / "users" / name / PATIENT_BINDING_FILE
        assert path.stat().st_mode & 0o077 == 0
        assert path.read_text() == patient_binding(secret, org, patient_cert_name(secret, org, name))


def test_a_records_key_left_in_a_patient_wallet_is_removed(tmp_path: Path) -> None:
    """Second review: the stale-copy clean-up skipped patient wallets (e.g. a user whose
    role became patient kept the organisation's records key)."""
    from netgen.generate import RECORDS_KEY_FILE
    spec = load_spec(SAMPLE)
    generate(spec, tmp_path, clock=lambda: FIXED_NOW)
    org, name = next((o.id, u.name) for o in spec.orgs for u in o.users if u.role == "patient")
    stale = tmp_path / "orgs" / org / "users" / name / RECORDS_KEY_FILE
    stale.write_bytes((tmp_path / "orgs" / org / "records" / "key.pem").read_bytes())
    generate(spec, tmp_path, clock=lambda: FIXED_NOW)
    assert not stale.exists()


@pytest.mark.parametrize(("policies", "limits", "why"), [
    ({"config_update": "h01.admin"}, {}, "one organisation alone"),
    ({"config_update": "MAJORITY(admin)", "lifecycle_endorsement": "MAJORITY(member)"}, {},
     "may name peers only"),
    ({"config_update": "MAJORITY(admin)", "lifecycle": "AND(h01.admin, h01.admin)"}, {},
     "lifecycle"),
    ({"config_update": "MAJORITY(admin)", "lifecyle": "MAJORITY(admin)"}, {}, "unknown policy name"),
    ({"config_update": "MAJORITY(admin)"}, {"max_clock_skew_ms": 10 * 86_400_000}, "max_clock_skew_ms"),
])
def test_a_genesis_the_first_config_update_could_not_reproduce_is_bad_config(
        tmp_path: Path, policies: dict[str, str], limits: dict[str, int], why: str) -> None:
    """The genesis meets the rules every config update must meet (node.orderer.configrules),
    checked before anything is written."""
    spec = small_consortium()
    spec["policies"] = policies
    spec["limits"] = {**spec["limits"], **limits}
    with pytest.raises(RxError) as err:
        generate(spec, tmp_path / "net")
    assert err.value.reason == "BAD_CONFIG" and why in err.value.message, err.value.message
    assert not (tmp_path / "net").exists()


@pytest.mark.parametrize("version", ["2", True, -1, 1 << 32, 1.0, None])
def test_a_bad_protocol_version_is_bad_config(tmp_path: Path, version: Any) -> None:
    spec = small_consortium()
    spec["protocol_version"] = version
    with pytest.raises(RxError) as err:
        generate(spec, tmp_path / "net")
    assert err.value.reason == "BAD_CONFIG" and "protocol_version" in err.value.message, err.value.message
    assert not (tmp_path / "net").exists()


def test_the_protocol_version_of_the_consortium_file_is_the_genesis_one(tmp_path: Path) -> None:
    spec = small_consortium()
    assert config_from_genesis(read_genesis(generate(spec, tmp_path / "unset").genesis_path)).protocol_version == 0
    spec["protocol_version"] = 1
    assert config_from_genesis(read_genesis(generate(spec, tmp_path / "one").genesis_path)).protocol_version == 1


def _expired_ca(org_dir: Path, now: dt.datetime) -> None:
    """An ``org_dir`` holding a CA (key and certificate) that expired a year before ``now``."""
    key = signing.generate_key()
    org_dir.mkdir(parents=True, mode=0o700)
    (org_dir / "ca.key").write_bytes(signing.key_to_pem(key))
    (org_dir / "ca.key").chmod(0o600)
    (org_dir / "ca.pem").write_bytes(rx509.cert_to_pem(rx509.make_ca(org_dir.name, key, now - dt.timedelta(days=800),
                                                                      days=435)))


@pytest.mark.parametrize("orderer_org", [True, False])
def test_a_genesis_at_version_2_over_an_expired_ca_is_bad_config(tmp_path: Path, orderer_org: bool) -> None:
    """netgen keeps a CA a home already holds (restored, placed by hand). Version 2 counts no member of
    a CA outside its validity period: a genesis at version 2 over an expired one counted no admin,
    doctor or node of that organisation from block 0 -- over the orderers' organisation's, no block
    signature, so the network never committed a block. Refused before the genesis is written, as the
    update raising the version is; version 1 ignores the CA's validity, as before."""
    org = "ins01" if orderer_org else "h02"
    spec = small_consortium()
    spec["protocol_version"] = 2
    home = tmp_path / "v2"
    _expired_ca(home / "orgs" / org, FIXED_NOW)
    with pytest.raises(RxError) as err:
        generate(spec, home, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG", err.value
    assert f"organisation {org}: CA certificate is not valid at" in err.value.message, err.value.message
    assert "remove it and its key" in err.value.message, err.value.message
    assert not (home / "genesis.block").exists()
    spec["protocol_version"] = 1
    home = tmp_path / "v1"
    _expired_ca(home / "orgs" / org, FIXED_NOW)
    assert generate(spec, home, clock=lambda: FIXED_NOW).genesis_path.exists()


def test_a_genesis_at_version_2_over_an_expired_orderer_certificate_is_bad_config(tmp_path: Path) -> None:
    """A home whose certificates were issued 900 days ago (825 days of validity) and whose genesis
    is made now keeps them: version 2 counts no block signature of the expired orderer
    certificate, so no block after the genesis could ever be committed. Refused, nothing of the
    genesis written; the orderer's certificate removed (with its key), a new one is issued."""
    spec = small_consortium()
    spec["protocol_version"] = 2
    home = tmp_path / "net"
    generate(spec, home, clock=lambda: FIXED_NOW - dt.timedelta(days=900))
    (home / "genesis.block").unlink()
    with pytest.raises(RxError) as err:
        generate(spec, home, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG", err.value
    assert "orderer 1: its certificate is not valid at" in err.value.message, err.value.message
    assert not (home / "genesis.block").exists()
    (home / "nodes" / "orderer.ins01" / "cert.pem").unlink()
    (home / "nodes" / "orderer.ins01" / "key.pem").unlink()
    config = config_from_genesis(read_genesis(generate(spec, home, clock=lambda: FIXED_NOW).genesis_path))
    assert config.protocol_version == 2


def test_a_protocol_version_this_release_does_not_implement_is_bad_config(tmp_path: Path) -> None:
    """A genesis at version 3 was written, and every node of this release refused to start on it
    (PROTOCOL_UNSUPPORTED): a network that could never run, checked by rules not its own."""
    spec = small_consortium()
    spec["protocol_version"] = 3
    with pytest.raises(RxError) as err:
        generate(spec, tmp_path / "net", clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG" and "protocol_version 3" in err.value.message, err.value.message
    assert "implements [1, 2]" in err.value.message, err.value.message
    assert not (tmp_path / "net").exists()


def test_a_genesis_over_a_ca_certificate_that_is_no_ca_is_bad_config(tmp_path: Path) -> None:
    """A home's ca.pem that is not a CA certificate (BasicConstraints ca=false), kept by netgen: every
    config update checks every organisation's CA certificate so (BAD_CONFIG_UPDATE), so the
    consortium could never change its configuration. Refused before the genesis is written."""
    home = tmp_path / "net"
    org_dir = home / "orgs" / "h02"
    org_dir.mkdir(parents=True, mode=0o700)
    key = signing.generate_key()
    (org_dir / "ca.key").write_bytes(signing.key_to_pem(key))
    (org_dir / "ca.key").chmod(0o600)
    name = cx509.Name([cx509.NameAttribute(cx509.NameOID.COMMON_NAME, "ca.h02")])
    cert = (cx509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(cx509.random_serial_number()).not_valid_before(FIXED_NOW - dt.timedelta(days=1))
            .not_valid_after(FIXED_NOW + dt.timedelta(days=365))
            .add_extension(cx509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (org_dir / "ca.pem").write_bytes(rx509.cert_to_pem(cert))
    with pytest.raises(RxError) as err:
        generate(small_consortium(), home, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG", err.value
    assert "organisation h02: CA certificate is not a CA certificate" in err.value.message, err.value.message
    assert not (home / "genesis.block").exists()


def test_certificates_end_no_later_than_the_ca_that_issued_them(tmp_path: Path) -> None:
    """netgen keeps a CA a home holds, which may end before 825 days: the certificates it issued
    under it ran past its end, and from protocol version 2 a certificate counts only while its CA
    is valid -- they looked valid for months they could sign nothing in. They now end with the
    CA; under a CA of ten years they keep their 825 days."""
    home = tmp_path / "net"
    key = signing.generate_key()
    org_dir = home / "orgs" / "h02"
    org_dir.mkdir(parents=True, mode=0o700)
    (org_dir / "ca.key").write_bytes(signing.key_to_pem(key))
    (org_dir / "ca.key").chmod(0o600)
    ca = rx509.make_ca("h02", key, FIXED_NOW, days=100)
    (org_dir / "ca.pem").write_bytes(rx509.cert_to_pem(ca))
    generate(small_consortium(), home, clock=lambda: FIXED_NOW)
    ends = {p.relative_to(home).as_posix(): cx509.load_pem_x509_certificate(p.read_bytes()).not_valid_after_utc
            for p in home.rglob("cert.pem")}
    h02 = {k: v for k, v in ends.items() if "h02" in k}
    others = {k: v for k, v in ends.items() if "h02" not in k}
    assert h02 and others
    assert set(h02.values()) == {ca.not_valid_after_utc}, h02
    assert set(others.values()) == {FIXED_NOW + dt.timedelta(days=825)}, others
