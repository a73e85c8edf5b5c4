"""The e2e finalizer's last resort: SIGKILL only processes that really are our nodes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import kill_leftovers


def _sleeper(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv],
                            start_new_session=True, stdin=subprocess.DEVNULL)


def _wait_cmdline(proc: subprocess.Popen[bytes], text: str) -> None:
    for _ in range(200):
        try:
            if text in Path(f"/proc/{proc.pid}/cmdline").read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{proc.pid} never showed {text!r}")


def test_kill_leftovers_spares_a_reused_pid(tmp_path: Path):
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    cfg = home / "nodes" / "peer.h01" / "node.yaml"
    node = _sleeper("-m", "node.peer", "--config", str(cfg))
    bystander = _sleeper("unrelated")
    try:
        _wait_cmdline(node, "node.peer")
        _wait_cmdline(bystander, "unrelated")
        (home / "run" / "peer.h01.pid").write_text(f"{node.pid}\n")
        (home / "run" / "peer.p01.pid").write_text(f"{bystander.pid}\n")  # pid reused
        (home / "run" / "orderer.ins01.pid").write_text("not a pid\n")
        assert kill_leftovers(home) == [node.pid]
        assert node.wait(10) == -9
        assert bystander.poll() is None, "an unrelated process group was killed"
    finally:
        for p in (node, bystander):
            p.kill()
            p.wait(10)
