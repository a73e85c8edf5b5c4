"""Small disks: a size-limited tmpfs (root) and the RLIMIT_FSIZE fallback."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness.diskfull import SmallDisk
from tests.harness.procs import ProcessManager

# Reports through a FIFO: in rlimit mode any write growing a regular file fails, logs included.
WRITER = (
    "import os, sys, time\n"
    "path = sys.argv[1]\n"
    "out = open(sys.argv[2], 'w', buffering=1)\n"
    "n = 0\n"
    "while True:\n"
    "    try:\n"
    "        with open(path + '/w' + str(n), 'wb') as f:\n"
    "            f.write(b'x' * 8192)\n"
    "        print('ok', n, file=out)\n"
    "    except OSError as e:\n"
    "        print('fail', e.errno, file=out)\n"
    "    n += 1\n"
    "    time.sleep(0.05)\n"
)


def _wait_for(pred, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs mounts need root; the rlimit fallback is tested below")
def test_tmpfs_fill_and_drain(tmp_path: Path) -> None:
    disk = SmallDisk(tmp_path / "data", 2 << 20)
    with disk:
        assert disk.mode == "tmpfs", disk.fallback_reason
        assert disk.free_bytes() <= 2 << 20
        (disk.path / "before").write_bytes(b"x" * 1000)
        written = disk.fill()
        assert written > 0
        with pytest.raises(OSError) as info, (disk.path / "after").open("wb") as f:
            f.write(b"y" * 8192)
            f.flush()
            os.fsync(f.fileno())
        assert info.value.errno == errno.ENOSPC
        disk.drain()
        (disk.path / "after").write_bytes(b"y" * 8192)
        assert (disk.path / "before").read_bytes() == b"x" * 1000
    assert not disk.mounted
    assert not (tmp_path / "data" / "before").exists()  # the tmpfs is gone


def test_mount_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    disk = SmallDisk(tmp_path / "d", 1 << 20)
    if disk.mode == "tmpfs":
        with pytest.raises(RuntimeError, match="not empty"):
            disk.mount()


@pytest.mark.parametrize("force_rlimit", [True, False])
def test_process_sees_write_failures_then_recovers(procs: ProcessManager, tmp_path: Path,
                                                   force_rlimit: bool) -> None:
    if not force_rlimit and os.geteuid() != 0:
        pytest.skip("tmpfs variant needs root; the rlimit variant ran")
    disk = SmallDisk(tmp_path / "data", 4 << 20, force_rlimit=force_rlimit)
    fifo = tmp_path / "status"
    os.mkfifo(fifo)
    lines: list[str] = []

    def read() -> None:
        with fifo.open() as f:
            for line in f:
                lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with disk:
        mp = procs.start("w", [sys.executable, "-c", WRITER, str(disk.path), str(fifo)], tmp_path / "w.log",
                         fsize_limit=None if disk.mode == "tmpfs" else (1 << 62))
        disk.attach(mp.pid)
        assert _wait_for(lambda: "ok 2" in lines)
        disk.fill()
        want = "fail 28" if disk.mode == "tmpfs" else "fail 27"  # ENOSPC / EFBIG
        assert _wait_for(lambda: want in lines), lines[-5:]
        assert mp.running()  # a full disk must not kill the process by signal
        disk.drain()
        mark = len(lines)
        assert _wait_for(lambda: any(line.startswith("ok") for line in lines[mark:]))
        procs.kill9("w")
    reader.join(timeout=5)
