"""The launcher with stand-in node processes: start order, health wait, exits, stop bounds."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netgen import generate

from client.errors import RxClientError
from client.launcher import Launcher, is_node_process
from tests.client.conftest import FIXED_NOW, client_consortium
from tests.client.ports import free_base_port

FAKE = Path(__file__).with_name("fake_node.py")


def _tiny(tmp_path: Path, base_port: int) -> Path:
    raw = client_consortium(base_port)
    raw["organizations"] = [o for o in raw["organizations"] if o["id"] in ("h01", "ins01")]
    home = tmp_path / "home"
    generate(raw, home, clock=lambda: FIXED_NOW)
    return home


def _python(tmp_path: Path) -> str:
    """An executable that runs the fake node instead of ``python -m node.X``."""
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.fixture
def base_port() -> int:
    return free_base_port(3)


def test_up_status_down(tmp_path: Path, base_port: int):
    home = _tiny(tmp_path, base_port)
    launcher = Launcher(home, python=_python(tmp_path))
    progress: list[str] = []
    try:
        procs = launcher.up(timeout_s=30, progress=progress.append)
        assert [p.kind for p in procs] == ["orderer", "peer", "peer"]
        assert progress[0].startswith("started 1 orderers")
        assert all((home / "run" / f"{p.name}.pid").exists() for p in procs)
        progress.clear()
        again = launcher.up(timeout_s=30, progress=progress.append)  # idempotent: the same processes
        assert [p.pid for p in again] == [p.pid for p in procs]
        assert progress[0].startswith("started 0 orderers (1 already running);")  # not "started 1"
        assert any(line.startswith("started 0 peers (2 already running);") for line in progress)
        rows = launcher.status()
        assert [r["serving"] for r in rows] == [True, True, True]
        assert rows[0]["height"] == 1
    finally:
        stopped = launcher.down(grace_s=5)
    assert sorted(s["stopped"] for s in stopped) == ["SIGTERM"] * 3
    assert not list((home / "run").glob("*.pid"))
    assert launcher.status()[0]["serving"] is False


def test_node_exiting_at_start_is_reported_with_its_log(tmp_path: Path, base_port: int,
                                                        monkeypatch: pytest.MonkeyPatch):
    """The node's log line names why; the nodes this start-up started are stopped again."""
    home = _tiny(tmp_path, base_port)
    monkeypatch.setenv("FAKE_NODE_EXIT", "peer.ins01")
    launcher = Launcher(home, python=_python(tmp_path))
    try:
        with pytest.raises(RxClientError) as e:
            launcher.up(timeout_s=30)
        assert e.value.reason == "NODE_EXITED"
        assert "peer.ins01: refusing to start" in e.value.message
        fresh = Launcher(home)  # another invocation, knowing the nodes by pid files only
        nodes = ("orderer.ins01", "peer.h01", "peer.ins01")
        assert {n: fresh.running_pid(n) for n in nodes} == dict.fromkeys(nodes)
        assert not list((home / "run").glob("*.pid"))
    finally:
        launcher.down(grace_s=5)


def test_stubborn_node_is_killed_after_the_grace(tmp_path: Path, base_port: int,
                                                 monkeypatch: pytest.MonkeyPatch):
    home = _tiny(tmp_path, base_port)
    monkeypatch.setenv("FAKE_NODE_STUBBORN", "1")
    launcher = Launcher(home, python=_python(tmp_path))
    try:
        launcher.up(timeout_s=30)
    finally:
        stopped = launcher.down(grace_s=0.5)
    assert sorted(s["stopped"] for s in stopped) == ["SIGKILL"] * 3
    for s in stopped:
        with pytest.raises(ProcessLookupError):
            os.kill(s["pid"], 0)


def _sleeper(*argv: str) -> subprocess.Popen[bytes]:
    """A process in its own session whose command line carries ``argv`` (it sleeps, bounded)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv],
                            start_new_session=True, stdin=subprocess.DEVNULL)


def _wait_cmdline(proc: subprocess.Popen[bytes], text: str) -> None:
    """Wait (bounded) until the child has exec'd, so its cmdline is its own."""
    for _ in range(200):
        try:
            if text in Path(f"/proc/{proc.pid}/cmdline").read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{proc.pid} never showed {text!r}")


def test_is_node_process_checks_module_and_config(tmp_path: Path):
    cfg = tmp_path / "nodes" / "peer.h01" / "node.yaml"
    node = _sleeper("-m", "node.peer", "--config", str(cfg))
    other = _sleeper("-m", "node.peer", "--config", str(tmp_path / "elsewhere.yaml"))
    plain = _sleeper()
    try:
        _wait_cmdline(node, "node.peer")
        _wait_cmdline(other, "node.peer")
        assert is_node_process(node.pid, cfg)
        assert not is_node_process(other.pid, cfg)
        assert not is_node_process(plain.pid, cfg)
        assert not is_node_process(2**22 + 7, cfg)  # beyond pid_max: no such process
    finally:
        for p in (node, other, plain):
            p.kill()
            p.wait(10)


def test_down_never_signals_a_reused_pid(tmp_path: Path, base_port: int):
    """Pid files naming an unrelated live process (a reused pid): not a node, not signalled."""
    home = _tiny(tmp_path, base_port)
    bystander = _sleeper("unrelated")
    try:
        _wait_cmdline(bystander, "unrelated")
        (home / "run").mkdir(exist_ok=True)
        for name in ("orderer.ins01", "peer.h01", "peer.ins01"):
            (home / "run" / f"{name}.pid").write_text(f"{bystander.pid}\n")
        launcher = Launcher(home, python=_python(tmp_path))
        assert launcher.running_pid("peer.h01") is None
        assert launcher.down(grace_s=0.5) == []
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert not list((home / "run").glob("*.pid"))
    finally:
        bystander.kill()
        bystander.wait(10)
