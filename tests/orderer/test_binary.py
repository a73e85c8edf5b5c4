"""``python -m node.orderer``: a bad configuration is one clear BAD_CONFIG line and exit code 2,
and a node refused at start-up has written nothing into its data directory."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.nodeyaml import edited_node_yaml
from tests.orderer.cluster import ROOT, make_network

START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net = make_network(tmp_path_factory.mktemp("obin"))
    return Path(net.node_config_path(net.orderers()[0].name)).parent


def _run(node_dir: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> subprocess.CompletedProcess[str]:
    path = edited_node_yaml(node_dir, tmp_path, change)
    return subprocess.run([sys.executable, "-m", "node.orderer", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _assert_bad_config(proc: subprocess.CompletedProcess[str], fragment: str, tmp_path: Path) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rxchain orderer: BAD_CONFIG") and fragment in last, last
    data = tmp_path / "data"
    assert not data.exists() or not any(data.iterdir()), sorted(data.rglob("*"))


@pytest.mark.parametrize(("fragment", "change"), [
    ("extra.tick_ms", lambda d: d.__setitem__("extra", {"tick_ms": "fast"})),
    ("extra.grpc_workers", lambda d: d.__setitem__("extra", {"grpc_workers": 0})),
    ("extra must be a mapping", lambda d: d.__setitem__("extra", "tick_ms=5")),
    # the Cluster stream caps and the nodes' reserve (node.stream_caps) are checked at start-up
    ("extra.max_cluster_streams", lambda d: d.__setitem__("extra", {"grpc_workers": 8, "max_cluster_streams": 8})),
    ("extra.max_cluster_streams_per_orderer", lambda d: d.__setitem__(
        "extra", {"max_cluster_streams": 4, "max_cluster_streams_per_orderer": 5})),
    ("extra.max_node_streams", lambda d: d.__setitem__("extra", {"grpc_workers": 8, "max_node_streams": 4})),
    # the worst-case split: clients, nodes and the other orderers' Cluster streams leave a worker
    # (64 + 63 + 16 of 128: started before, Raft starved under a flood of client streams)
    ("Cluster streams (Raft)", lambda d: d.__setitem__("extra", {"max_node_streams": 63})),
    ("metrics_port", lambda d: d.__setitem__("metrics_port", 70000)),
    ("cannot load certificate/key", lambda d: d.__setitem__("key", d["ca_bundle"])),
    # each of these exited 1 ("start-up failed: ValueError/IsADirectoryError"), the data
    # directory written: first_start_wait_ms was read unchecked, the CA bundle only as the
    # servers and channels were built
    ("extra.first_start_wait_ms", lambda d: d.__setitem__("extra", {"first_start_wait_ms": "abc"})),
    ("extra.first_start_wait_ms", lambda d: d.__setitem__("extra", {"first_start_wait_ms": -1})),
    ("holds no readable PEM certificate", lambda d: d.__setitem__("ca_bundle", d["genesis"])),
    ("is not a file", lambda d: d.__setitem__("ca_bundle", str(Path(d["genesis"]).parent))),
    ("is not a file", lambda d: d.__setitem__("key", str(Path(d["genesis"]).parent))),
])
def test_bad_values_exit_2(node_dir: Path, tmp_path: Path, fragment: str,
                           change: Callable[[dict[str, Any]], None]) -> None:
    _assert_bad_config(_run(node_dir, tmp_path, change), fragment, tmp_path)


def test_port_in_use_exits_2_before_writing_anything(node_dir: Path, tmp_path: Path) -> None:
    with _busy_port() as busy:
        proc = _run(node_dir, tmp_path, lambda d: d.__setitem__("port", busy.getsockname()[1]))
    _assert_bad_config(proc, "cannot listen", tmp_path)


def test_metrics_port_in_use_exits_2_before_writing_anything(node_dir: Path, tmp_path: Path) -> None:
    with _busy_port() as busy:
        proc = _run(node_dir, tmp_path, lambda d: d.__setitem__("metrics_port", busy.getsockname()[1]))
    _assert_bad_config(proc, "metrics_port", tmp_path)
