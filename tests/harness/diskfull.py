"""A small filesystem for "disk full" tests.

As root, :class:`SmallDisk` mounts a tmpfs with a ``size=`` limit on a directory the
test owns (a node's data directory); :meth:`SmallDisk.fill` writes a filler file until
the filesystem reports ENOSPC and :meth:`SmallDisk.drain` deletes it again. Without root
(or when mounting is not permitted) it falls back to RLIMIT_FSIZE on the node process:
``fill`` lowers the process's file-size limit with ``prlimit`` so every write that would
grow a file fails (EFBIG, SIGXFSZ ignored by the harness's pre-exec hook), ``drain``
lifts it. Either way the node sees its writes fail and must refuse work, not corrupt.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import subprocess
from pathlib import Path

_FILLER = ".harness-filler"


def can_mount_tmpfs() -> bool:
    """True when we are root (mount is tried for real by :meth:`SmallDisk.mount`)."""
    return os.geteuid() == 0


class SmallDisk:
    """A size-limited directory: a tmpfs mount as root, else an RLIMIT_FSIZE budget."""

    def __init__(self, path: Path, size_bytes: int, *, force_rlimit: bool = False) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.mode = "rlimit" if force_rlimit or not can_mount_tmpfs() else "tmpfs"
        self.mounted = False
        self.fallback_reason = "" if self.mode == "tmpfs" else "not root: RLIMIT_FSIZE on the node process"
        self._pid: int | None = None

    def mount(self) -> None:
        """Create the mount (tmpfs mode; the directory must be empty) or do nothing (rlimit)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.mode != "tmpfs":
            return
        if any(self.path.iterdir()):
            raise RuntimeError(f"{self.path} is not empty; mount the small disk before the node writes")
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0700", "tmpfs", str(self.path)],
            capture_output=True, text=True, check=False, timeout=10,
        )
        if res.returncode != 0:
            # Root without CAP_SYS_ADMIN (e.g. some containers): fall back, and say so.
            self.mode = "rlimit"
            self.fallback_reason = res.stderr.strip()
            return
        self.mounted = True

    def attach(self, pid: int) -> None:
        """Remember the process whose limit ``fill`` lowers in rlimit mode."""
        self._pid = pid

    def fill(self) -> int:
        """Make further writes fail; returns the bytes written by the filler (tmpfs mode)."""
        if self.mode == "tmpfs":
            written = 0
            block = b"\0" * 65536
            fd = os.open(self.path / _FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                while True:
                    try:
                        n = os.write(fd, block)
                    except OSError as exc:
                        if exc.errno == errno.ENOSPC:
                            break
                        raise
                    written += n
                # Fill the last fragments too (small writes until even 1 byte fails).
                for size in (4096, 512, 1):
                    while True:
                        try:
                            written += os.write(fd, b"\0" * size)
                        except OSError as exc:
                            if exc.errno == errno.ENOSPC:
                                break
                            raise
            finally:
                os.close(fd)
            return written
        if self._pid is None:
            raise RuntimeError("rlimit mode: attach(pid) the node process before fill()")
        resource.prlimit(self._pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        return 0

    def drain(self) -> None:
        """Undo :meth:`fill`."""
        if self.mode == "tmpfs":
            (self.path / _FILLER).unlink(missing_ok=True)
            return
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(self._pid, resource.RLIMIT_FSIZE,
                                 (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def free_bytes(self) -> int:
        """Free bytes on the filesystem holding ``path``."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def unmount(self) -> None:
        """Unmount (tmpfs mode; lazy, so a still-running process cannot block it)."""
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False, timeout=10)
            self.mounted = False

    def __enter__(self) -> SmallDisk:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()
