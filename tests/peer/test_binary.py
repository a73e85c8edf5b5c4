"""``python -m node.peer``: a bad configuration is a clear error and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
