"""The launcher against careless operators: ports already taken, a node failing at start-up,
pid files naming process groups."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.errors import RxClientError
from client.launcher import Launcher
from client.network import NodeEndpoint, load_network
from tests.client.ports import free_base_port
from tests.client.test_launcher import _python, _tiny

NODES = ("orderer.ins01", "peer.h01", "peer.ins01")


@pytest.fixture
def base_port() -> int:
    return free_base_port(3)


def test_port_in_use_is_refused_before_any_node_starts(tmp_path: Path, base_port: int) -> None:
    """gRPC binds with SO_REUSEPORT: a second server on a taken port would share it silently."""
    home = _tiny(tmp_path, base_port)
    launcher = Launcher(home, python=_python(tmp_path))
    port = next(n.port for n in launcher_nodes(launcher) if n.name == "peer.h01")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as a gRPC server binds
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        with pytest.raises(RxClientError) as e:
            launcher.up(timeout_s=10)
        assert e.value.reason == "PORT_IN_USE"
        assert "peer.h01" in e.value.message and str(port) in e.value.message
        assert all(Launcher(home).running_pid(n) is None for n in NODES), "a node was started"
    finally:
        holder.close()
        launcher.down(grace_s=5)


def launcher_nodes(launcher: Launcher) -> list[NodeEndpoint]:
    return list(load_network(launcher.home).all_nodes)


def test_failed_start_up_leaves_nodes_running_before_it_alone(tmp_path: Path, base_port: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = _tiny(tmp_path, base_port)
    first = Launcher(home, python=_python(tmp_path))
    try:
        first.up(timeout_s=30)
        orderer = first.running_pid("orderer.ins01")
        first.down(grace_s=5, only={"peer.ins01"})
        monkeypatch.setenv("FAKE_NODE_EXIT", "peer.ins01")
        again = Launcher(home, python=_python(tmp_path))
        with pytest.raises(RxClientError):
            again.up(timeout_s=30)
        assert again.running_pid("orderer.ins01") == orderer  # it was running before: kept
    finally:
        first.down(grace_s=5)


# 0, -1: process groups; 1: init; the last two, a corrupt file: no pid can be that large (os.kill
# raised OverflowError: `network up/status/down` failed INTERNAL, `down` with the rest not stopped);
# None: the zombie child itself, a stale pid file whose number the kernel gave to another child
# of the process running the launcher (it was reaped: its owner saw exit status 0, not 7)
@pytest.mark.parametrize("text", ["0", "-1", "1", "2147483648", "99999999999999999999", None])
def test_pid_files_naming_groups_or_init_are_dead_and_reap_nothing(tmp_path: Path, base_port: int,
                                                                    text: str | None) -> None:
    """``waitpid(0 or -1)`` would reap any exited child of ours (here: one exiting with 7)."""
    home = _tiny(tmp_path, base_port)
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], stdin=subprocess.DEVNULL)
    try:
        for _ in range(500):  # bounded: until it is a zombie
            if Path(f"/proc/{child.pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                break
            time.sleep(0.01)
        (home / "run").mkdir(exist_ok=True)
        (home / "run" / "peer.h01.pid").write_text(f"{child.pid if text is None else text}\n")
        launcher = Launcher(home)
        assert launcher.running_pid("peer.h01") is None
        assert launcher.down(grace_s=0.5) == []
    finally:
        assert child.wait(10) == 7, "the launcher reaped an unrelated child of this process"
    os.kill(os.getpid(), 0)  # and this process was not signalled


def test_a_second_up_or_down_at_the_same_time_is_refused(tmp_path: Path, base_port: int) -> None:
    """Two concurrent `network up` on one home would both start every node."""
    home = _tiny(tmp_path, base_port)
    (home / "run").mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)",
         str(home / "run" / "launcher.lock")], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    launcher = Launcher(home, python=_python(tmp_path))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        for call in (lambda: launcher.up(timeout_s=10), lambda: launcher.down(grace_s=1)):
            with pytest.raises(RxClientError) as e:
                call()
            assert e.value.reason == "LAUNCHER_BUSY"
        assert all(launcher.running_pid(n) is None for n in NODES)
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
        launcher.down(grace_s=5)


def test_port_check_probes_an_ipv6_host_as_ipv6(tmp_path: Path) -> None:
    """A node on ``::1`` was probed with an IPv4 socket: every such port was PORT_IN_USE."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        listener.bind(("::1", 0))
        taken = listener.getsockname()[1]
        free = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        free.bind(("::1", 0))
        free_port = free.getsockname()[1]
        free.close()
        launcher = Launcher(tmp_path)
        launcher.check_ports_free([NodeEndpoint("peer.v6", "h01", "peer", "::1", free_port)])
        listener.listen()
        with pytest.raises(RxClientError) as e:
            launcher.check_ports_free([NodeEndpoint("peer.v6", "h01", "peer", "::1", taken)])
        assert e.value.reason == "PORT_IN_USE"
    finally:
        listener.close()


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda p: p.pop("port"), "has no 'port'"),
    (lambda p: p.__setitem__("port", "http"), "port must be an integer"),
    (lambda p: p.__setitem__("port", 70000), "port must be an integer"),
])
def test_a_bad_network_yaml_endpoint_is_bad_config(tmp_path: Path, base_port: int, change: Any,
                                                   fragment: str) -> None:
    """It raised a bare KeyError / ValueError (the CLI answered INTERNAL) or took port 70000."""
    home = _tiny(tmp_path, base_port)
    path = home / "network.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc["peers"][0])
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RxClientError) as e:
        load_network(home)
    assert e.value.reason == "BAD_CONFIG"
    assert str(path) in e.value.message and "peers[0]" in e.value.message and fragment in e.value.message


TAIL_UNDER_A_MEMORY_LIMIT = """
import json, resource, sys
from pathlib import Path
from client.launcher import Launcher
vm = int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmSize")).split()[1])
limit = vm * 1024 + (512 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
launcher = Launcher(Path(sys.argv[1]))
print(json.dumps([launcher.log_tail("peer.h01", 1), launcher.log_tail("peer.h01", 2)]))
"""


def test_the_log_tail_reads_the_end_of_a_large_log(tmp_path: Path) -> None:
    """`network status` (a stopped node's last line) and NODE_EXITED read the whole log, which
    grows for as long as the node runs: a 3 GiB log failed MemoryError under a 512 MiB margin."""
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "peer.h01.log"
    with log.open("wb") as f:  # sparse: no disk used
        f.truncate(3 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + b"x" * 70_000 + b"\nbefore\n{\"event\": \"peer_stopped\"}\n")
    proc = subprocess.run([sys.executable, "-c", TAIL_UNDER_A_MEMORY_LIMIT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == ['{"event": "peer_stopped"}', 'before\n{"event": "peer_stopped"}']


def test_a_node_whose_pid_file_cannot_be_written_is_stopped_with_the_others(tmp_path: Path,
                                                                            base_port: int) -> None:
    """start_node started the process, then failed writing its pid file: `up` stopped the nodes
    it had started except that one, left running with no pid file (`down` could not find it)."""
    home = _tiny(tmp_path, base_port)
    (home / "run" / "peer.h01.pid").mkdir(parents=True)  # write_text: IsADirectoryError
    launcher = Launcher(home, python=_python(tmp_path))
    try:
        with pytest.raises(IsADirectoryError):
            launcher.up(timeout_s=30)
        for name in NODES:
            assert launcher.running_pid(name) is None, f"{name} left running"
    finally:
        for child in list(launcher._children.values()):
            if child.poll() is None:
                child.kill()
            child.wait(10)
