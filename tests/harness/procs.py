"""Start, signal and always clean up node processes.

Every process runs in its own session (process group) with stdout and stderr appended to
a log file, so a restart keeps the earlier output and a failure message can quote the
tail. :meth:`ProcessManager.close` SIGCONTs and SIGKILLs every group it started; the
``procs`` fixture calls it in a finaliser, so nothing outlives a test even when it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class HarnessError(RuntimeError):
    """A process did not start, stop or become healthy as the test expected."""


def log_tail(path: Path, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of a log file ('' if missing)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass
class ManagedProcess:
    """A process the manager started (possibly several times: restarts reuse the spec)."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    cwd: Path | None = None
    fsize_limit: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    history: list[tuple[float, str]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """Pid of the current incarnation."""
        if self.popen is None:
            raise HarnessError(f"{self.name} was never started")
        return self.popen.pid

    def running(self) -> bool:
        """True while the current incarnation has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        """Exit status (negative: killed by that signal), None while running."""
        return None if self.popen is None else self.popen.poll()


# Runs first in the child: ignore SIGXFSZ (so writes past the limit fail with EFBIG instead
# of killing the node; the disposition survives exec), set RLIMIT_FSIZE, exec the real argv.
# A wrapper instead of preexec_fn, which is unsafe in a test process that runs threads.
_FSIZE_WRAPPER = (
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _with_fsize_limit(argv: Sequence[str], fsize_limit: int | None) -> list[str]:
    if fsize_limit is None:
        return list(argv)
    return [sys.executable, "-c", _FSIZE_WRAPPER, str(fsize_limit), *argv]


class ProcessManager:
    """Owns every process a test starts; :meth:`close` stops them all."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._procs: dict[str, ManagedProcess] = {}
        self._clock = clock

    def __getitem__(self, name: str) -> ManagedProcess:
        return self._procs[name]

    def names(self) -> list[str]:
        """Names of every process ever started here."""
        return list(self._procs)

    def start(self, name: str, argv: Sequence[str], log_path: Path, *,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              fsize_limit: int | None = None) -> ManagedProcess:
        """Start ``argv`` as ``name`` (refused if ``name`` is still running)."""
        old = self._procs.get(name)
        if old is not None and old.running():
            raise HarnessError(f"{name} is already running (pid {old.pid})")
        full_env = dict(os.environ)
        full_env.update(env or {})
        mp = old or ManagedProcess(name, list(argv), log_path, full_env, cwd, fsize_limit)
        if old is not None:
            mp.argv, mp.log_path, mp.env, mp.cwd, mp.fsize_limit = list(argv), log_path, full_env, cwd, fsize_limit
        self._procs[name] = mp
        self._spawn(mp)
        return mp

    def _spawn(self, mp: ManagedProcess) -> None:
        mp.log_path.parent.mkdir(parents=True, exist_ok=True)
        with mp.log_path.open("ab") as log:
            log.write(f"\n=== harness: start #{mp.starts + 1} of {mp.name}: {' '.join(mp.argv)}\n".encode())
            log.flush()
            mp.popen = subprocess.Popen(
                _with_fsize_limit(mp.argv, mp.fsize_limit), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=mp.env, cwd=mp.cwd, start_new_session=True,
            )
        mp.paused = False
        mp.starts += 1
        mp.history.append((self._clock(), "start"))

    def restart(self, name: str) -> ManagedProcess:
        """Start ``name`` again with its last argv (it must have exited)."""
        mp = self._procs[name]
        if mp.running():
            raise HarnessError(f"{name} is still running; stop it first")
        self._spawn(mp)
        return mp

    def wait_healthy(self, name: str, probe: Callable[[], bool], timeout_s: float,
                     interval_s: float = 0.1) -> float:
        """Poll ``probe`` until it returns True; the seconds it took. Raises with the log tail
        if the process exits or the timeout passes."""
        mp = self._procs[name]
        t0 = self._clock()
        deadline = t0 + timeout_s
        while True:
            if not mp.running():
                raise HarnessError(
                    f"{name} exited with {mp.returncode()} before becoming healthy; log tail:\n"
                    + log_tail(mp.log_path))
            try:
                if probe():
                    return self._clock() - t0
            except Exception:
                pass
            if self._clock() >= deadline:
                raise HarnessError(
                    f"{name} not healthy after {timeout_s:.1f}s; log tail:\n" + log_tail(mp.log_path))
            time.sleep(interval_s)

    def _signal(self, mp: ManagedProcess, sig: int) -> None:
        if mp.popen is None or mp.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(mp.popen.pid, sig)

    def kill9(self, name: str, timeout_s: float = 10.0) -> int:
        """SIGKILL the process group and reap it; returns the exit status."""
        mp = self._procs[name]
        self._signal(mp, signal.SIGKILL)
        mp.history.append((self._clock(), "kill9"))
        return self._reap(mp, timeout_s)

    def pause(self, name: str) -> None:
        """SIGSTOP the process group."""
        mp = self._procs[name]
        self._signal(mp, signal.SIGSTOP)
        mp.paused = True
        mp.history.append((self._clock(), "pause"))

    def resume(self, name: str) -> None:
        """SIGCONT the process group."""
        mp = self._procs[name]
        self._signal(mp, signal.SIGCONT)
        mp.paused = False
        mp.history.append((self._clock(), "resume"))

    def terminate(self, name: str, grace_s: float = 10.0) -> int:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the exit status."""
        mp = self._procs[name]
        if mp.paused:
            self.resume(name)
        self._signal(mp, signal.SIGTERM)
        mp.history.append((self._clock(), "terminate"))
        if mp.popen is None:
            raise HarnessError(f"{name} was never started")
        try:
            return mp.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(mp, signal.SIGKILL)
            return self._reap(mp, 10.0)

    def _reap(self, mp: ManagedProcess, timeout_s: float) -> int:
        if mp.popen is None:
            raise HarnessError(f"{mp.name} was never started")
        try:
            return mp.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{mp.name} (pid {mp.popen.pid}) did not exit after SIGKILL") from exc

    def close(self) -> None:
        """Kill every process group still alive (paused ones are continued first)."""
        for mp in self._procs.values():
            if mp.popen is None:
                continue
            self._signal(mp, signal.SIGCONT)
            self._signal(mp, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                mp.popen.wait(timeout=10.0)
        # Also kill any leftover children of already-exited leaders (same group).
        for mp in self._procs.values():
            if mp.popen is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(mp.popen.pid, signal.SIGKILL)
