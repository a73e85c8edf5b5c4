"""A node refuses to start (BAD_CONFIG) when its TLS certificate does not carry its node name as a
subject alternative name: other nodes dial it pinned to that name (NodeChannels), so it would
otherwise start and fail every incoming connection with an opaque handshake error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from netgen import generate, load_spec
from netgen.generate import GeneratedNetwork

from node.config import load_node_config
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.tls import certificate_names, certificate_names_host
from node.errors import RxError
from tests.harness.certs import issue_from_org_ca, write_cert_files
from tests.harness.nodeyaml import edited_node_yaml

from .conftest import FIXED_NOW

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "network-config" / "consortium.yaml"
START_TIMEOUT_S = 60


def _issue(net: GeneratedNetwork, org: str, name: str, role: str, hosts: tuple[str, ...],
           out: Path) -> tuple[Path, Path]:
    """(cert, key) files of a new certificate of ``org``'s CA for ``name`` with SANs ``hosts``."""
    return write_cert_files(*issue_from_org_ca(net.home, org, name, role, hosts), out)


def _with_cert(cert: Path, key: Path) -> Any:
    return lambda d: d.update(cert=str(cert), key=str(key))


def test_every_node_of_the_sample_consortium_passes(tmp_path: Path) -> None:
    net = generate(load_spec(SAMPLE), tmp_path, clock=lambda: FIXED_NOW)
    assert len(net.nodes) >= 19
    for node in net.nodes:
        cfg = load_node_config(net.node_config_path(node.name))
        cert = x509.load_pem_x509_certificate(cfg.cert_path.read_bytes())
        assert f"DNS:{node.name}" in certificate_names(cert)


@pytest.mark.parametrize("node", ["peer.h01", "orderer.ins01"])
def test_a_certificate_without_the_node_name_is_bad_config(network: GeneratedNetwork, tmp_path: Path,
                                                           node: str) -> None:
    org = node.split(".", 1)[1]
    kind = node.split(".", 1)[0]
    cert, key = _issue(network, org, node, kind, ("127.0.0.1", "localhost"), tmp_path / "tls")
    path = edited_node_yaml(network.home / "nodes" / node, tmp_path, _with_cert(cert, key))
    with pytest.raises(RxError) as e:
        load_node_config(path)
    assert e.value.reason == "BAD_CONFIG"
    msg = e.value.message
    assert msg.startswith(f"{path}: node {node}: its TLS certificate {cert} does not name it"), msg
    assert "subject alternative names found: DNS:localhost, IP:127.0.0.1" in msg, msg
    assert f"expected DNS:{node}" in msg, msg


def test_another_nodes_certificate_is_bad_config_naming_what_it_carries(network: GeneratedNetwork,
                                                                       tmp_path: Path) -> None:
    """peer.h02's certificate (same CA bundle, a valid node certificate) under peer.h01's name."""
    other = network.home / "nodes" / "peer.h02"
    path = edited_node_yaml(network.home / "nodes" / "peer.h01", tmp_path,
                            _with_cert(other / "cert.pem", other / "key.pem"))
    with pytest.raises(RxError) as e:
        load_node_config(path)
    assert e.value.reason == "BAD_CONFIG"
    assert "node peer.h01:" in e.value.message and "DNS:peer.h02" in e.value.message
    assert "expected DNS:peer.h01" in e.value.message


def test_a_certificate_without_any_san_is_bad_config(network: GeneratedNetwork, tmp_path: Path) -> None:
    cert, key = _issue(network, "h01", "peer.h01", "peer", (), tmp_path / "tls")
    path = edited_node_yaml(network.home / "nodes" / "peer.h01", tmp_path, _with_cert(cert, key))
    with pytest.raises(RxError) as e:
        load_node_config(path)
    assert "subject alternative names found: none; expected DNS:peer.h01" in e.value.message


def test_an_unreadable_certificate_is_bad_config(network: GeneratedNetwork, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    path = edited_node_yaml(network.home / "nodes" / "peer.h01", tmp_path, lambda d: d.update(cert=str(bad)))
    with pytest.raises(RxError) as e:
        load_node_config(path)
    assert e.value.reason == "BAD_CONFIG" and f"node peer.h01: cannot read its certificate {bad}" in e.value.message


@pytest.mark.parametrize(("module", "node"), [("node.peer", "peer.h01"), ("node.orderer", "orderer.ins01")])
def test_the_node_binary_refuses_to_start(network: GeneratedNetwork, tmp_path: Path, module: str,
                                          node: str) -> None:
    """Exit code 2, one BAD_CONFIG line naming the node and the names, nothing written."""
    org, kind = node.split(".", 1)[1], node.split(".", 1)[0]
    cert, key = _issue(network, org, node, kind, ("127.0.0.1", "localhost"), tmp_path / "tls")
    path = edited_node_yaml(network.home / "nodes" / node, tmp_path, _with_cert(cert, key))
    proc = subprocess.run([sys.executable, "-m", module, "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f": BAD_CONFIG: {path}: node {node}: its TLS certificate" in last, last
    assert f"expected DNS:{node}" in last, last
    data = tmp_path / "data"
    assert not data.exists() or not any(data.iterdir())


def _cert(hosts: tuple[str, ...]) -> x509.Certificate:
    ca_key = signing.generate_key()
    ca = rx509.make_ca("h01", ca_key, FIXED_NOW)
    return rx509.issue_cert(ca, ca_key, signing.generate_key().public_key(), org="h01", role="peer",
                            name="peer.h01", now=FIXED_NOW, hosts=hosts)


def test_name_matching_follows_the_tls_client() -> None:
    cert = _cert(("Peer.H01", "10.0.0.7", "*.hosp.example", "::1"))
    assert certificate_names(cert) == ["DNS:Peer.H01", "DNS:*.hosp.example", "IP:10.0.0.7", "IP:::1"]
    for name in ("peer.h01", "PEER.h01.", "peer.hosp.example", "10.0.0.7", "::1", "0:0:0:0:0:0:0:1"):
        assert certificate_names_host(cert, name), name
    for name in ("peer.h02", "h01", "a.b.hosp.example", "hosp.example", "10.0.0.8", "peer"):
        assert not certificate_names_host(cert, name), name
    # a wildcard over a single label names nothing (gRPC refuses top-level wildcards)
    assert not certificate_names_host(_cert(("*.h01",)), "peer.h01")
    # the common name is not a SAN
    assert not certificate_names_host(_cert(()), "peer.h01")
