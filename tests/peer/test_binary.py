"""``python -m node.peer``: a bad configuration is a clear error and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.config import load_node_config
from node.errors import RxError
from tests.harness.nodeyaml import edited_node_yaml
from tests.peer.conftest import Net


def run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.peer", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_missing_config_exits_2(tmp_path: Path) -> None:
    proc = run(tmp_path / "nope.yaml")
    assert proc.returncode == 2
    assert "BAD_CONFIG" in proc.stderr and "nope.yaml" in proc.stderr


def test_orderer_config_or_broken_yaml_exits_2(net: Net, tmp_path: Path) -> None:
    proc = run(net.home / "nodes" / "orderer.ins01" / "node.yaml")
    assert proc.returncode == 2 and "not a peer" in proc.stderr
    broken = tmp_path / "node.yaml"
    broken.write_text("name: [unclosed\n")
    proc = run(broken)
    assert proc.returncode == 2 and "BAD_CONFIG" in proc.stderr
    src = (net.home / "nodes" / "peer.h01" / "node.yaml").read_text()
    missing = tmp_path / "missing-key.yaml"
    missing.write_text(src.replace("genesis:", "genesis_file:"))
    proc = run(missing)
    assert proc.returncode == 2 and "missing keys: genesis" in proc.stderr


def test_port_in_use_exits_2(net: Net, tmp_path: Path) -> None:
    import shutil
    import socket

    import yaml

    node_dir = tmp_path / "peer"
    shutil.copytree(net.home / "nodes" / "peer.h01", node_dir,
                    ignore=shutil.ignore_patterns("data"))
    doc = yaml.safe_load((node_dir / "node.yaml").read_text())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        doc.update(port=busy.getsockname()[1], metrics_port=0,
                   genesis=str(net.home / "genesis.block"), extra={"sandbox_workers": 1})
        (node_dir / "node.yaml").write_text(yaml.safe_dump(doc))
        proc = run(node_dir / "node.yaml")
    assert proc.returncode == 2, proc.stderr
    assert "cannot listen" in proc.stderr
    data = node_dir / doc["data_dir"] if not Path(doc["data_dir"]).is_absolute() else Path(doc["data_dir"])
    assert not data.exists() or not any(data.iterdir()), "the peer wrote into data_dir before the bind check"


def _edited(net: Net, tmp_path: Path, node: str, change: Any) -> Path:
    """A copy of ``node``'s generated node.yaml with absolute paths, ``change(doc)`` applied."""
    return edited_node_yaml(net.home / "nodes" / node, tmp_path, change)


BAD_VALUES = [
    ("orderers[0].port", lambda d: d["orderers"][0].__setitem__("port", "31883x")),
    ("orderers[0].port", lambda d: d["orderers"][0].__setitem__("port", 0)),
    ("extra must be a mapping", lambda d: d.__setitem__("extra", ["grpc_workers", 8])),
    ("extra.grpc_workers", lambda d: d.__setitem__("extra", {"grpc_workers": 0})),
    ("extra.orderer_quorum", lambda d: d.__setitem__("extra", {"orderer_quorum": "two"})),
    ("extra.sandbox_workers", lambda d: d.__setitem__("extra", {"sandbox_workers": True})),
    ("extra.max_streams", lambda d: d.__setitem__("extra", {"max_streams": -1})),
    ("extra.max_node_streams", lambda d: d.__setitem__("extra", {"grpc_workers": 8, "max_node_streams": 4})),
    ("extra.max_streams_per_node", lambda d: d.__setitem__("extra", {"max_streams_per_node": "x"})),
    ("metrics_port", lambda d: d.__setitem__("metrics_port", 70000)),
    ("port", lambda d: d.__setitem__("port", "http")),
    ("raft_id", lambda d: d.__setitem__("raft_id", [1])),
]


@pytest.mark.parametrize(("fragment", "change"), BAD_VALUES, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_VALUES)])
def test_bad_values_are_bad_config_naming_the_key(net: Net, tmp_path: Path, fragment: str, change: Any) -> None:
    path = _edited(net, tmp_path, "peer.h01", change)
    with pytest.raises(RxError) as info:
        load_node_config(path)
    assert info.value.reason == "BAD_CONFIG"
    assert fragment in info.value.message and str(path) in info.value.message


def test_integer_extras_are_kept(net: Net, tmp_path: Path) -> None:
    path = _edited(net, tmp_path, "peer.h01", lambda d: d.__setitem__(
        "extra", {"grpc_workers": 16, "orderer_quorum": 1, "deliver_stall_s": 2.5, "other": "kept"}))
    cfg = load_node_config(path)
    assert cfg.extra == {"grpc_workers": 16, "orderer_quorum": 1, "deliver_stall_s": 2.5, "other": "kept"}


# ops1: int() took these strings as numbers ("1_000" -> 1000, " 5 " -> 5, a full-width digit ->
# 5): a config integer is a YAML integer, nothing else, and a refusal names the key
NOT_YAML_INTEGERS: list[tuple[str, Any, str]] = [
    ("port", "7051", "port must be an integer, not '7051'"),
    ("port", " 7051 ", "port must be an integer, not ' 7051 '"),
    ("metrics_port", "9_000", "metrics_port must be an integer, not '9_000'"),
    ("metrics_port", True, "metrics_port must be an integer, not True"),
    ("extra.grpc_workers", "16", "extra.grpc_workers must be an integer, not '16'"),
    ("extra.audit_max_records", "1_000_000", "extra.audit_max_records must be an integer, not '1_000_000'"),
    ("extra.orderer_quorum", " 1 ", "extra.orderer_quorum must be an integer, not ' 1 '"),
    ("extra.sandbox_workers", "\uff15", "extra.sandbox_workers must be an integer, not '\uff15'"),
    ("extra.sandbox_workers", 4.0, "extra.sandbox_workers must be an integer, not 4.0"),
    ("orderers[0].port", "7050", "orderers[0].port must be an integer, not '7050'"),
]


@pytest.mark.parametrize(("key", "value", "fragment"), NOT_YAML_INTEGERS,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(NOT_YAML_INTEGERS)])
def test_an_integer_key_takes_only_a_yaml_integer(net: Net, tmp_path: Path, key: str, value: Any,
                                                  fragment: str) -> None:
    def change(doc: dict[str, Any]) -> None:
        if key.startswith("extra."):
            doc.setdefault("extra", {})[key.removeprefix("extra.")] = value
        elif key == "orderers[0].port":
            doc["orderers"][0]["port"] = value
        else:
            doc[key] = value

    path = _edited(net, tmp_path, "peer.h01", change)
    with pytest.raises(RxError) as info:
        load_node_config(path)
    assert info.value.reason == "BAD_CONFIG"
    assert f"{path}: {fragment}" in info.value.message, info.value.message


@pytest.mark.parametrize(("fragment", "change"), [
    ("extra must be a mapping", lambda d: d.__setitem__("extra", ["grpc_workers", 8])),
    ("metrics_port", lambda d: d.__setitem__("metrics_port", 70000)),
    ("extra.max_streams", lambda d: d.__setitem__("extra", {"grpc_workers": 8, "max_streams": 8})),
    # exited 1 ("start-up failed: ValueError/IsADirectoryError") with a ledger written
    ("holds no readable PEM certificate", lambda d: d.__setitem__("ca_bundle", d["genesis"])),
    ("is not a file", lambda d: d.__setitem__("key", str(Path(d["genesis"]).parent))),
])
def test_binary_bad_values_exit_2_in_one_line(net: Net, tmp_path: Path, fragment: str, change: Any) -> None:
    proc = run(_edited(net, tmp_path, "peer.h01", change))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rxchain peer: BAD_CONFIG") and fragment in last, last
    data = tmp_path / "data"
    assert not data.exists() or not any(data.iterdir()), sorted(data.rglob("*"))
