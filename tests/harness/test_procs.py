"""The process manager: start, health wait, kill -9, pause/resume, terminate, cleanup."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.harness.procs import HarnessError, ProcessManager

SLEEPER = "import sys, time\nprint('up', flush=True)\nwhile True: time.sleep(0.05)\n"
TERM_AWARE = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(3)))\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(0.05)\n"
)
TERM_DEAF = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\nwhile True: time.sleep(0.05)\n"


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _up(log: Path, times: int = 1) -> bool:
    """The child printed its own "up" line ``times`` times (the harness header quotes argv)."""
    return log.read_text().splitlines().count("up") >= times


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]


def test_start_logs_and_kill9(procs: ProcessManager, tmp_path: Path) -> None:
    mp = procs.start("a", _py(SLEEPER), tmp_path / "a.log")
    log = tmp_path / "a.log"
    procs.wait_healthy("a", lambda: _up(log), timeout_s=10)
    assert mp.running()
    assert procs.kill9("a") == -signal.SIGKILL
    assert not mp.running()
    # restart appends to the same log
    procs.restart("a")
    procs.wait_healthy("a", lambda: _up(log, 2), timeout_s=10)
    assert "start #2" in log.read_text()


def test_pause_and_resume(procs: ProcessManager, tmp_path: Path) -> None:
    mp = procs.start("p", _py(SLEEPER), tmp_path / "p.log")
    procs.wait_healthy("p", lambda: _up(tmp_path / "p.log"), timeout_s=10)
    procs.pause("p")
    deadline = time.monotonic() + 5
    while _state(mp.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _state(mp.pid) == "T"
    procs.resume("p")
    deadline = time.monotonic() + 5
    while _state(mp.pid) == "T" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _state(mp.pid) in ("S", "R")


def test_terminate_graceful_then_forced(procs: ProcessManager, tmp_path: Path) -> None:
    procs.start("g", _py(TERM_AWARE), tmp_path / "g.log")
    procs.wait_healthy("g", lambda: _up(tmp_path / "g.log"), timeout_s=10)
    assert procs.terminate("g", grace_s=5) == 3
    assert "bye" in (tmp_path / "g.log").read_text()
    procs.start("d", _py(TERM_DEAF), tmp_path / "d.log")
    procs.wait_healthy("d", lambda: _up(tmp_path / "d.log"), timeout_s=10)
    assert procs.terminate("d", grace_s=0.5) == -signal.SIGKILL


def test_wait_healthy_reports_exit_and_timeout(procs: ProcessManager, tmp_path: Path) -> None:
    procs.start("x", _py("print('boom: bad config'); raise SystemExit(2)"), tmp_path / "x.log")
    with pytest.raises(HarnessError, match="boom: bad config"):
        procs.wait_healthy("x", lambda: False, timeout_s=10)
    procs.start("y", _py(SLEEPER), tmp_path / "y.log")
    with pytest.raises(HarnessError, match="not healthy after"):
        procs.wait_healthy("y", lambda: False, timeout_s=0.3)


def test_close_kills_everything_including_paused_and_children(tmp_path: Path) -> None:
    pm = ProcessManager()
    child_pid_file = tmp_path / "child.pid"
    spawner = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([sys.executable, '-c', 'import time\\nwhile True: time.sleep(0.05)'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(c.pid))\n"
        "while True: time.sleep(0.05)\n"
    )
    a = pm.start("a", _py(spawner), tmp_path / "a.log")
    b = pm.start("b", _py(SLEEPER), tmp_path / "b.log")
    pm.wait_healthy("a", child_pid_file.exists, timeout_s=10)
    pm.pause("b")
    child = int(child_pid_file.read_text())
    pm.close()
    assert not a.running() and not b.running()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if _state(child) == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("grandchild survived close()")


def test_fsize_limit_makes_writes_fail_without_killing(procs: ProcessManager, tmp_path: Path) -> None:
    target = tmp_path / "big"
    code = (
        "import errno\n"
        f"f = open({str(target)!r}, 'wb', buffering=0)\n"
        "try:\n    f.write(b'x' * 10000)\nexcept OSError as e:\n    print('errno', e.errno, flush=True)\n"
    )
    procs.start("w", _py(code), tmp_path / "w.log", fsize_limit=4096)
    procs["w"].popen.wait(timeout=10)  # type: ignore[union-attr]
    assert procs["w"].returncode() == 0
    out = (tmp_path / "w.log").read_text()
    # Either a short write (4096 bytes land) or EFBIG -- never a SIGXFSZ death.
    assert target.stat().st_size <= 4096
    assert "errno 27" in out or target.stat().st_size == 4096
