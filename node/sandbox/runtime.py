"""Host side of the sandbox: a warm pool of isolated worker processes.

``Sandbox.invoke(inv, backend)`` sends one InvokeRequest to an idle worker, answers its
state requests from ``backend`` (writes are applied to ``inv.contract`` only), and returns
the InvocationResult.  A worker that crashes, hangs past ``limits.wall_timeout_s``, exceeds
its memory or CPU limit, or breaks the protocol is killed and replaced; the call returns
TIMEOUT / MEMORY_LIMIT / WORKER_CRASHED and the pool keeps serving.

A worker serves one contract code for its whole life: the first invocation it runs binds it
to that invocation's namespace and code hash, and it is never handed another's (a contract
that subverted its worker could otherwise answer later invocations of every contract the
peer runs with results of its choosing, within the bounds the host checks).  Idle workers
are kept per code; a call whose code has no idle worker takes a fresh (unbound) one, starts
one while the pool is below its size, or else replaces the least recently used idle worker
of another code (``stats()["evictions"]``): the pool never holds more than ``workers``
processes, and a peer whose pool has a worker per contract it runs starts none per call.
A replacement costs a process start (~0.1 s of CPU), so a call whose code already has a
worker (busy) waits for one of its own rather than evict a worker of another code that was
busy within the last ``EVICT_IDLE_S``: under concurrent endorsements of two contracts, a
pool full of both would otherwise replace a worker at nearly every call (measured: the
endorsing peer's CPU per transaction five times over) -- and it waits ``SPARE_WAIT_S``
itself before it replaces any: a momentary burst of one contract's endorsements found its
workers busy for a few milliseconds and replaced the idle spare of another contract (every
worker the e2e benchmark's 60 tx/s level replaced, ~0.12-0.27 s of CPU each, which the
call itself waited for the new worker).  Nor does it replace the last worker of another
code used within ``RESERVE_IDLE_S``: every code in use keeps one, so a burst of one
contract's calls (the start of a benchmark level: every story issues first) no longer
takes the others' workers, which their next calls took back at once. A code with no worker
at all (nor one being started for it, nor a fresh replacement on its way to it) evicts the
least recently used idle worker at once.  A worker
that comes free goes to the first waiting call that may have it, one of its code or one
whose code has no worker (and is not promised a fresh replacement), not to whichever thread
next takes the lock (a caller that freed a worker and called again at once took it back
every time: a waiting call of the same code, or of a code with no worker, waited to its
deadline).  Likewise a fresh replacement of a killed worker goes to the first waiting call
(any may have it): the replacements being started are promised to the first that many
waiting calls, in arrival order, and a call further back with no worker evicts rather than
wait for one (a contract whose every call crashed its worker, called again at once, took
each replacement itself, and a waiting call of another code waited to its deadline).

Workers start with an empty environment (except PYTHONHASHSEED, the same on every peer so
that set iteration order is too), no inherited descriptors but the two pipe ends, rlimits and a
seccomp filter (see worker.py and seccomp_policy.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rxchain.v1 import sandbox_pb2 as pb

from node.sandbox import prefetch, protocol
from node.sandbox import types as t
from node.sandbox.api import (
    GAS_DELETE,
    GAS_HISTORY,
    GAS_HISTORY_SKIP,
    MAX_NAMESPACE_LEN,
    failed_read_gas,
    history_gas,
    valid_reason,
)
from node.sandbox.checker import check_source
from node.sandbox.engine import MAX_MESSAGE, bad_invocation, invalid_invocation
from node.sandbox.errors import ContractRejected
from node.sandbox.inprocess import InProcessRunner

__all__ = [
    "CallerInfo",
    "ContractEvent",
    "ContractRejected",
    "HistoryEntry",
    "InProcessRunner",
    "Invocation",
    "InvocationResult",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "StateBackend",
    "check_source",
]

CallerInfo = t.CallerInfo
ContractEvent = t.ContractEvent
HistoryEntry = t.HistoryEntry
Invocation = t.Invocation
InvocationResult = t.InvocationResult
SandboxLimits = t.SandboxLimits
StateBackend = t.StateBackend

_ROOT = Path(__file__).resolve().parents[2]
_BOOT = (
    "import sys; sys.path[:0] = {paths!r}; "
    "from node.sandbox.worker import main; main()"
)
START_TIMEOUT_S = 60.0
EVICT_IDLE_S = 1.0  # an idle worker of another code is replaced only after this long idle
# ... and the last worker of its code only after this long idle: a code in use keeps one
RESERVE_IDLE_S = 30.0
# ... and a call whose code has a worker (busy) replaces one only after waiting this long for
# its own: starting a worker and compiling the story's contracts takes 0.2-0.4 s, which the
# call would wait anyway, so a shorter wait is a momentary burst, not a shortage
SPARE_WAIT_S = 0.5
# A worker whose resident memory after a call is above this share of its memory limit is
# replaced (its RSS is read through a kept-open /proc/<pid>/statm: ~1 us per call).
RECYCLE_RSS_SHARE = 4
_PAGE = os.sysconf("SC_PAGE_SIZE")
ACQUIRE_TIMEOUT_S = 60.0  # waiting for an idle worker (plus the call's wall timeout)
MAX_EVENT_NAME = 128  # characters (Context.emit)
# Frames a worker may send: the WorkerReady frame (a pid and a flag) before its first call,
# then per call at most ``answer_frame_bound(inv)`` bytes (see there).
READY_FRAME_BYTES = 4096
OP_FRAMING = 24  # bytes of framing of one state operation: compact 7 (put), protobuf <= 24
EVENT_FRAMING = 16  # bytes of protobuf framing of one event (tags and two lengths)
FRAME_HEADROOM = 64 << 10  # message tags, reason, gas, flags, compact headers

# What a worker serves: (namespace, code hash, unchecked) -- the namespace its writes go
# to, the code the pool loads by hash, and (isolation tests only) the uncheckedness of it.
_Code = tuple[str, str, bool]


def answer_frame_bound(inv: t.Invocation) -> int:
    """The largest frame an honest worker sends while running ``inv``, from the limits
    the host enforces on what it receives: its ops frame holds at most every state
    operation of the call (``gas_limit // GAS_DELETE + 32``, each with at most
    OP_FRAMING bytes of framing) carrying at most ``max_write_bytes`` of keys and values
    (keys counted in characters, as the Context counts them, framed in UTF-8: at most 4
    bytes each, so 4 x ``max_write_bytes``);
    its result a result and ``max_events`` event payloads of at most ``max_value_bytes``,
    event names of MAX_EVENT_NAME characters and a message of MAX_MESSAGE characters (4
    UTF-8 bytes each); a read request a namespace of MAX_NAMESPACE_LEN characters and keys
    or range bounds of ``max_key_len``.  A frame could hold writes with a result, so the
    bound is the sum, plus FRAME_HEADROOM; never above ``protocol.MAX_FRAME``.  A header
    announcing more is refused before the frame is read (WORKER_CRASHED): a subverted
    worker used to make the host buffer up to 256 MiB per frame."""
    lim = inv.limits
    ops = inv.gas_limit // GAS_DELETE + 32
    bound = (4 * lim.max_write_bytes + ops * OP_FRAMING
             + (1 + lim.max_events) * lim.max_value_bytes
             + lim.max_events * (4 * MAX_EVENT_NAME + EVENT_FRAMING)
             + 4 * MAX_MESSAGE + 4 * MAX_NAMESPACE_LEN + 8 * lim.max_key_len
             + FRAME_HEADROOM)
    return min(bound, protocol.MAX_FRAME)


class SandboxError(Exception):
    """The pool cannot serve (closed, or workers fail to start)."""


# Why workers left the pool (``stats()["replaced_<cause>"]``): a fault of the call
# (``wall_timeout``, ``cpu_limit``: SIGXCPU, ``memory_limit``: the worker saw MemoryError,
# ``crashed``: it died or broke the protocol during a call, or died while idle,
# ``unsolicited``: it sent a frame while idle, ``host_error``: an exception in the host while
# it ran a call), ``rss``: its resident memory after a call was above 1/RECYCLE_RSS_SHARE of
# its limit, ``closed``: the pool closed during a call (whatever the call then saw); and the
# evictions (``evict_spare``: an idle worker chosen by ``_spare`` -- of a code that keeps
# another one, or its code's last idle past RESERVE_IDLE_S -- taken by a call whose own
# code's workers were busy or whose code waited for a fresh replacement;
# ``evict_missing``: the least recently used idle worker, taken by a call whose code had no
# worker; ``evict_handoff``: a freed worker handed to such a call instead of going idle).
FAULT_CAUSES = ("wall_timeout", "cpu_limit", "memory_limit", "crashed", "unsolicited",
                "host_error", "rss", "closed")
EVICT_CAUSES = ("evict_spare", "evict_missing", "evict_handoff")


class _WorkerDied(Exception):
    def __init__(self, reason: str, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        # why its worker is replaced (FAULT_CAUSES)
        self.cause = cause or ("wall_timeout" if reason == t.TIMEOUT else "crashed")


class _Worker:
    """One worker process and the host's view of its state."""

    def __init__(self, argv: list[str], hash_seed: int) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PYTHONHASHSEED": str(hash_seed), "PYTHONUTF8": "1",
                 "PYTHONDONTWRITEBYTECODE": "1"},
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        # writes wait for the pipe with the call's deadline (protocol.write_frames): a
        # worker that stops reading its stdin must not block the host for ever
        os.set_blocking(self.wfd, False)
        # a worker's frames are bounded by what it may answer: before its first call its
        # WorkerReady, then each call's answer_frame_bound (set by Sandbox._run)
        self.reader = protocol.FrameReader(self.proc.stdout.fileno(), READY_FRAME_BYTES)
        self.known: set[str] = set()
        self.code: _Code | None = None  # what it serves, from its first call on (never changes)
        self.last_used = 0  # the pool's call count when it last became idle (LRU eviction)
        self.idle_since = 0.0  # the pool clock when it last became idle
        self.limits: t.SandboxLimits | None = None
        self.pid = self.proc.pid
        self.seccomp = False
        self.dead = False
        self.cause = ""  # why it was retired after a call (dead: FAULT_CAUSES)
        self._statm_lock = threading.Lock()  # kill() may run in two threads at once
        try:  # the worker's resident memory, read after each call (see Sandbox._result)
            self.statm: int | None = os.open(f"/proc/{self.pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.statm = None

    def rss_bytes(self) -> int:
        """The worker's resident memory now (0 if it cannot be read)."""
        with self._statm_lock:
            if self.statm is None:
                return 0
            try:
                return int(os.pread(self.statm, 128, 0).split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                return 0

    def wait_ready(self, deadline: float, clock: Callable[[], float]) -> None:
        frame = self.reader.read(lambda: deadline - clock())
        msg = pb.WorkerMessage.FromString(frame)
        if msg.WhichOneof("kind") != "ready":
            raise protocol.ProtocolError("worker did not report ready")
        self.seccomp = msg.ready.seccomp

    def idle_fault(self) -> str | None:
        """Why the idle worker must not serve the next call, None if nothing: it sent
        something nobody asked for (``unsolicited``: a second answer, a frame after its
        result), which must not be read as the next call's, or its pipe hung up with
        nothing in it (``crashed``: it died while idle, e.g. killed by the OOM killer --
        counted as unsolicited, a protocol violation, before)."""
        if self.reader.buffered():
            return "unsolicited"
        ready = protocol.poll_fd(self.reader.fd, select.POLLIN, 0)
        if not ready:
            return None
        return "unsolicited" if ready & select.POLLIN else "crashed"

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with self._statm_lock:
            fd, self.statm = self.statm, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _failure(exc: Exception) -> pb.HostMessage:
    """StateFailure for a backend exception (its ``.reason`` if it has a valid one)."""
    reason = getattr(exc, "reason", None)
    reply = pb.HostMessage()
    reply.failure.reason = reason if isinstance(reason, str) and valid_reason(reason) else (
        t.STATE_ERROR
    )
    reply.failure.message = f"{type(exc).__name__}: {exc}"[:1024]
    reply.failure.gas = failed_read_gas(exc)
    return reply


class _Waiter:
    """A call waiting in ``Sandbox._acquire``; ``_release`` may hand it the worker it frees
    (``got``): one of its own code, or (``evict``) one of another code to replace, whose
    slot the releasing thread has reserved for it."""

    __slots__ = ("code", "evict", "got")

    def __init__(self, code: _Code) -> None:
        self.code = code
        self.got: _Worker | None = None
        self.evict = False


class _StateChanged(Exception):
    """The backend returned another value than it peeked (state changed under the call)."""

    reason = t.STATE_ERROR


class _CallState:
    """Host-side bookkeeping of one invocation."""

    __slots__ = ("failure", "history_gas_left", "left", "ops_left", "reads", "table", "write_bytes",
                 "written")

    def __init__(self, table: list[tuple[str, str, bytes | None]],
                 reads: list[tuple[str, str]] | None, inv: t.Invocation,
                 left: Callable[[], float]) -> None:
        self.left = left  # seconds to the call's wall-clock deadline
        self.table = table
        self.reads = reads
        # every state operation the Context sends (get, range, history, put, delete, a
        # prefetched read) has paid at least GAS_DELETE, the cheapest of them, before it is
        # sent.  Puts of one key may repeat (the write-set limits count distinct keys and
        # bytes), so the count of operations is bounded by gas, not by max_write_keys
        self.ops_left = inv.gas_limit // GAS_DELETE + 32
        # the call's gas limit less what its history reads have cost (as the Context charges
        # them): the peer reads no more for a worker claiming more gas left than that
        self.history_gas_left = inv.gas_limit
        self.write_bytes = 0  # counted as the worker's Context does: len(key) + len(value)
        self.written: set[str] = set()
        self.failure: pb.HostMessage | None = None


class _NoState:
    """Backend of warm-up calls (which never reach the contract's code)."""

    def get(self, namespace: str, key: str) -> bytes | None:
        return None

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        return []

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        return []

    def put(self, namespace: str, key: str, value: bytes) -> None:
        raise AssertionError("warm-up calls do not write")

    def delete(self, namespace: str, key: str) -> None:
        raise AssertionError("warm-up calls do not write")


class Sandbox:
    """Warm pool of contract workers; ``invoke`` is thread-safe."""

    def __init__(
        self,
        workers: int = 2,
        limits: t.SandboxLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        python: str = sys.executable,
        seccomp: bool = True,
        hash_seed: int = 0,
        allow_unchecked_for_tests: bool = False,
        prefetching: bool = True,
    ) -> None:
        """Start ``workers`` warm worker processes (``limits.memory_bytes`` is their RLIMIT_AS).

        ``workers`` is also the most processes the pool ever holds: each serves one contract
        code, so a pool with fewer workers than the contracts called in turn replaces a
        worker (start-up ~0.1 s plus the contract's compile) whenever the code changes.

        ``hash_seed`` is the workers' PYTHONHASHSEED: set iteration order depends on it, so
        every peer of a consortium must use the same value (a consortium-wide secret makes
        hash-collision attacks by contract authors harder; 0 is the public default).
        """
        if not 0 <= hash_seed <= 4294967295:
            raise ValueError("hash_seed must be in [0, 2**32)")
        if workers < 1:
            raise ValueError("a sandbox needs at least one worker")
        stack_hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
        if stack_hard != resource.RLIM_INFINITY and stack_hard < t.WORKER_STACK_BYTES:
            # the workers would exit at start-up (their stderr is /dev/null): say why here
            raise SandboxError(f"stack hard limit {stack_hard} bytes is below the "
                               f"{t.WORKER_STACK_BYTES} every contract worker runs with "
                               "(raise `ulimit -Hs`)")
        self._limits = limits or t.SandboxLimits()
        self._recycle_rss = self._limits.memory_bytes // RECYCLE_RSS_SHARE
        self._hash_seed = hash_seed
        self.invocations = 0
        self.prefetch_hits = 0
        self._clock = clock
        paths = [str(_ROOT), str(_ROOT / "gen")]
        self._argv = [python, "-s", "-B", "-P", "-c", _BOOT.format(paths=paths),
                      f"--memory={self._limits.memory_bytes}"]
        if not seccomp:
            self._argv.append("--no-seccomp")
        if allow_unchecked_for_tests:
            self._argv.append("--allow-unchecked")
        self._size = workers
        self._all: set[_Worker] = set()  # live processes (idle, busy, starting up)
        self._starting = 0  # slots reserved for processes being started (not in _all yet)
        self._fresh: list[_Worker] = []  # idle workers that have served no code yet
        self._idle: dict[_Code, list[_Worker]] = {}  # idle workers by the code they serve
        self._pending: dict[_Code, int] = {}  # workers being started for a code (in _starting)
        self._waiters: list[_Waiter] = []  # calls waiting for a worker, in arrival order
        self._replacing = 0  # fresh workers being started by _replace (in _starting)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a worker or a slot came free
        self._closed = False
        self._sources: dict[str, str] = {}
        self._prefetching = prefetching
        self._predictor = prefetch.Predictor()
        self.restarts = 0
        self.evictions = 0
        self.replaced: dict[str, int] = dict.fromkeys(FAULT_CAUSES + EVICT_CAUSES, 0)
        self._released = 0
        # every worker is forked by this one thread, which lives as long as the pool: a
        # worker's PR_SET_PDEATHSIG fires when the *thread* that forked it ends, and calls
        # that start workers (replacements, a worker for another code) may run in threads
        # that end before the worker does
        self._forker = ThreadPoolExecutor(1, thread_name_prefix="sandbox-fork")
        started: list[_Worker] = []
        deadline = clock() + START_TIMEOUT_S
        try:
            for _ in range(workers):
                with self._lock:
                    self._starting += 1
                started.append(self._spawn_unready())
            for w in started:
                w.wait_ready(deadline, clock)
        except (protocol.ProtocolError, TimeoutError, OSError, SandboxError) as exc:
            self.close()
            raise SandboxError(f"sandbox workers failed to start: {exc}") from None
        with self._lock:
            self._fresh.extend(started)

    # -- pool ----------------------------------------------------------------------------
    def _spawn_unready(self) -> _Worker:
        """Start a worker in a slot the caller reserved (``_starting``)."""
        try:
            w = self._forker.submit(_Worker, self._argv, self._hash_seed).result(
                START_TIMEOUT_S)
        except (OSError, RuntimeError, TimeoutError) as exc:  # RuntimeError: closed
            with self._changed:
                self._starting -= 1
                self._changed.notify_all()
            raise SandboxError(f"cannot start a sandbox worker: {exc}") from None
        with self._lock:
            self._starting -= 1
            closed = self._closed
            if not closed:
                self._all.add(w)
        if closed:  # close() ran while it started: it is no one's to stop
            w.kill()
            raise SandboxError("sandbox is closed")
        return w

    def _spawn(self) -> _Worker:
        w = self._spawn_unready()
        try:
            w.wait_ready(self._clock() + START_TIMEOUT_S, self._clock)
        except (protocol.ProtocolError, TimeoutError, OSError) as exc:
            self._discard(w)
            raise SandboxError(f"replacement worker failed to start: {exc}") from None
        return w

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._changed:
            self._all.discard(w)
            self._changed.notify_all()  # its slot is free

    def _replace(self, w: _Worker, cause: str) -> None:
        """Kill ``w`` and start a fresh replacement; a failed start leaves the slot free (the
        next call that finds no worker for its code starts one).  While it starts, a call
        whose code has no worker and which it is promised to (``_promised``) waits for it
        rather than evict a recent worker of another code (it evicted b's worker at once when
        a's stuck one was killed: two starts).  The fresh worker goes to the first waiting
        call (any call may have a fresh worker), else it is idle: handed over, not left for
        whichever thread takes the lock first -- a contract whose every call crashed its
        worker, called again at once, took each replacement itself, and a waiting call of
        another code waited to its deadline."""
        self._discard(w)
        with self._lock:
            self.restarts += 1
            # close() killed the worker under its call, which then saw its pipe close or
            # its process killed: counted as crashed (a fault of the call) before
            self.replaced["closed" if self._closed else cause] += 1
        with self._lock:
            if self._closed or len(self._all) + self._starting >= self._size:
                return  # closed, or a waiting call took the slot
            self._starting += 1
            self._replacing += 1
        fresh: _Worker | None = None
        try:
            fresh = self._spawn()
        except SandboxError:
            pass
        finally:
            with self._changed:
                self._replacing -= 1
                if fresh is not None and fresh in self._all:  # not closed meanwhile
                    if self._waiters:
                        waiter = self._waiters.pop(0)
                        fresh.code = waiter.code  # it serves that call's code from now on
                        waiter.got = fresh
                    else:
                        self._fresh.append(fresh)
                self._changed.notify_all()  # a fresh worker, or none: waiting calls look again

    def _release(self, w: _Worker) -> None:
        """``w`` finished a call and serves its code again: it goes to the first waiting call
        that may have it -- one of its code, or one whose code has no worker and is not
        promised a fresh replacement (``_promised``: it replaces it) -- else it is idle.
        Handed over, not left for whichever thread takes the lock first: a thread that freed
        a worker and called again at once took it back every time, and a waiting call waited
        to its deadline."""
        assert w.code is not None
        with self._changed:
            if not self._closed and w in self._all:
                full = not self._fresh and len(self._all) + self._starting >= self._size
                for i, waiter in enumerate(self._waiters):
                    if waiter.code == w.code:
                        break
                    # a call promised a fresh replacement (among the first ``_replacing``
                    # waiting) waits for it: replacing ``w`` too would start two
                    if full and i >= self._replacing and not self._has_worker(waiter.code):
                        waiter.evict = True
                        self._all.discard(w)
                        self._reserve(waiter.code)  # w's slot, for the worker started in its place
                        self.evictions += 1
                        self.replaced["evict_handoff"] += 1
                        break
                else:
                    waiter = None
                if waiter is not None:
                    self._waiters.remove(waiter)
                    waiter.got = w
                    self._changed.notify_all()
                    return
                self._released += 1
                w.last_used = self._released
                w.idle_since = self._clock()
                self._idle.setdefault(w.code, []).append(w)
                self._changed.notify_all()
                return
        w.kill()

    def _has_worker(self, code: _Code) -> bool:
        """A worker serves ``code`` (idle, busy, or being started for it) (lock held)."""
        return code in self._pending or any(x.code == code for x in self._all)

    def _promised(self, waiter: _Waiter | None) -> bool:
        """A fresh replacement being started will be handed to this call (``waiter``, or a
        call about to wait: the last in line): it is among the first ``_replacing`` waiting
        calls, to which ``_replace`` hands them in arrival order (lock held)."""
        if not self._replacing:
            return False
        pos = len(self._waiters) if waiter is None else self._waiters.index(waiter)
        return pos < self._replacing

    def _reserve(self, code: _Code) -> None:
        """Reserve a slot for a worker started for ``code`` (lock held)."""
        self._starting += 1
        self._pending[code] = self._pending.get(code, 0) + 1

    def _unreserve(self, code: _Code) -> None:
        """A worker started for ``code`` is in the pool, or failed to start (lock held)."""
        n = self._pending.pop(code) - 1
        if n:
            self._pending[code] = n

    def _lru(self) -> _Worker | None:
        """The idle worker (of any code) idle the longest (lock held)."""
        oldest: _Worker | None = None
        for ws in self._idle.values():
            if ws and (oldest is None or ws[0].last_used < oldest.last_used):
                oldest = ws[0]  # each list is in release order
        return oldest

    def _spare(self) -> tuple[_Worker | None, float]:
        """The idle worker a call whose code has a worker may replace, and else how long
        until one may be (lock held): the least recently used of those idle at least
        ``EVICT_IDLE_S`` whose code keeps another worker, or idle at least ``RESERVE_IDLE_S``
        if it is its code's last."""
        now = self._clock()
        best: _Worker | None = None
        wait = RESERVE_IDLE_S
        for c, ws in self._idle.items():
            if not ws:
                continue
            w = ws[0]  # each list is in release order: its code's longest idle
            spare = self._pending.get(c, 0) + sum(1 for x in self._all if x.code == c) > 1
            left = (EVICT_IDLE_S if spare else RESERVE_IDLE_S) - (now - w.idle_since)
            if left > 0:
                wait = min(wait, left)
            elif best is None or w.last_used < best.last_used:
                best = w
        return best, wait

    def _take_idle(self, w: _Worker) -> _Worker:
        """Remove ``w`` from the idle workers of its code and return it (lock held)."""
        assert w.code is not None
        ws = self._idle[w.code]
        ws.remove(w)
        if not ws:
            del self._idle[w.code]
        return w

    def _acquire(self, code: _Code, wait_s: float) -> _Worker:
        """A worker that serves ``code``: an idle one that served it (warm), a fresh one,
        one started in a free slot, or one started in place of the least recently used idle
        worker of another code -- never one that served another code.  A call that must
        wait is handed a worker by ``_release`` in arrival order (see there)."""
        since = self._clock()
        deadline = since + wait_s
        evict: _Worker | None = None
        waiter: _Waiter | None = None
        closed = False
        with self._changed:
            try:
                while True:
                    if waiter is not None and waiter.got is not None:
                        if not waiter.evict:
                            if self._closed:  # close() killed it
                                raise SandboxError("sandbox is closed")
                            return waiter.got
                        evict = waiter.got  # out of the pool (close() did not kill it), its
                        if self._closed:  # slot reserved for the worker started in its place
                            self._starting -= 1
                            self._unreserve(code)
                            closed = True
                        break
                    if self._closed:
                        raise SandboxError("sandbox is closed")
                    ws = self._idle.get(code)
                    if ws:
                        w = ws.pop()  # the most recently used: its caches are the warmest
                        if not ws:
                            del self._idle[code]
                        return w
                    if self._fresh:
                        w = self._fresh.pop()
                        w.code = code
                        return w
                    if len(self._all) + self._starting < self._size:
                        self._reserve(code)
                        break
                    pause = 0.5
                    if self._has_worker(code) or self._promised(waiter):
                        waited = self._clock() - since
                        if waited < SPARE_WAIT_S:  # a worker of its own may come free first
                            victim, wait_more = None, SPARE_WAIT_S - waited
                        else:
                            victim, wait_more = self._spare()
                        pause = min(pause, wait_more)
                        why = "evict_spare"
                    else:  # no worker of its own nor a fresh one on its way: the least
                        # recently used idle one, at once
                        victim = self._lru()
                        why = "evict_missing"
                    if victim is not None:
                        evict = self._take_idle(victim)
                        self._all.discard(evict)
                        self._reserve(code)  # its slot, for the worker started in its place
                        self.evictions += 1
                        self.replaced[why] += 1
                        break
                    left = deadline - self._clock()
                    if left <= 0:
                        raise SandboxError(f"no sandbox worker available within {wait_s:.0f} s")
                    if waiter is None:
                        waiter = _Waiter(code)
                        self._waiters.append(waiter)
                    self._changed.wait(max(0.001, min(pause, left)))
            finally:
                if waiter is not None and waiter.got is None:
                    self._waiters.remove(waiter)
        if closed and evict is not None:
            evict.kill()
            raise SandboxError("sandbox is closed")
        try:
            if evict is not None:
                evict.kill()
            w = self._spawn()
        except BaseException:
            with self._changed:
                self._unreserve(code)
                self._changed.notify_all()  # waiters of ``code`` may have none now
            raise
        with self._changed:
            w.code = code  # before it stops counting as pending: ``code`` never lacks one
            self._unreserve(code)
        return w

    @property
    def size(self) -> int:
        """The most worker processes the pool holds."""
        return self._size

    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(w.pid for w in self._all if w.proc.poll() is None)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: live workers, restarts, invocations, reads served from the
        prefetch table (each one a host round trip saved), evictions (idle workers of one
        code replaced to serve another: many mean fewer workers than contracts in use), and
        ``replaced_<cause>`` for each cause of FAULT_CAUSES (their sum is ``restarts``) and
        EVICT_CAUSES (their sum is ``evictions``)."""
        pids = len(self.worker_pids())
        with self._lock:
            out = {"workers": pids, "restarts": self.restarts,
                   "invocations": self.invocations, "prefetch_hits": self.prefetch_hits,
                   "evictions": self.evictions}
            out.update((f"replaced_{k}", v) for k, v in self.replaced.items())
        return out

    def seccomp_active(self) -> bool:
        with self._lock:
            return all(w.seccomp for w in self._all)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._fresh.clear()
            self._idle.clear()
            self._changed.notify_all()
        self._forker.shutdown(wait=False)
        for w in workers:
            w.kill()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- invocation ------------------------------------------------------------------------
    def invoke(
        self, inv: t.Invocation, backend: t.StateBackend, *, unchecked: bool = False
    ) -> t.InvocationResult:
        """Run one invocation (``unchecked`` is for the isolation tests only)."""
        if self._closed:
            raise SandboxError("sandbox is closed")
        problem = invalid_invocation(inv)
        if problem is not None:
            return bad_invocation(problem)
        known = self._sources.get(inv.code_hash)
        if known is None:
            self._sources[inv.code_hash] = inv.source
        elif known is not inv.source and known != inv.source:
            return t.InvocationResult(
                False, t.CONTRACT_REJECTED, "source differs from the code cached for this hash",
                b"", (), 0,
            )
        peek = getattr(backend, "peek", None)
        values: dict[str, str] | None = None
        entries: list[tuple[str, str, bytes | None]] | None = None
        reads: list[tuple[str, str]] | None = None
        predicted: dict[tuple[str, str], prefetch.Template] = {}
        if callable(peek) and self._prefetching:
            values = prefetch.sources(inv.args_json, inv.caller)
            predicted = self._predictor.predict(inv.code_hash, inv.function, values)
            entries = self._prefetch(inv, peek, predicted)
            reads = []
        code = (inv.contract, inv.code_hash, unchecked)
        w = self._acquire(code, ACQUIRE_TIMEOUT_S + inv.limits.wall_timeout_s)
        while (fault := w.idle_fault()) is not None:  # it broke the protocol or died idle
            self._replace(w, fault)
            w = self._acquire(code, ACQUIRE_TIMEOUT_S + inv.limits.wall_timeout_s)
        self.invocations += 1
        try:
            result = self._run(w, inv, backend, unchecked, entries, reads)
        except _WorkerDied as died:
            self._replace(w, died.cause)
            return t.InvocationResult(False, died.reason, died.message, b"", (), 0)
        except BaseException:
            self._replace(w, "host_error")
            raise
        if w.dead or self._closed:
            self._replace(w, w.cause if w.dead else "closed")
        else:
            self._release(w)
        if reads is not None and values is not None:
            self._predictor.learn(inv.code_hash, inv.function, values, reads, predicted)
        return result

    def warm(self, code_hash: str, source: str, contract: str) -> int:
        """Compile ``source`` for ``contract`` (its namespace) now, e.g. after deploy or at
        start-up, so its first endorsement does not pay the check/instrument/compile time:
        in a fresh idle worker, which then serves this code only, unless an idle worker
        already serves it.  Returns how many idle workers are ready for it (0: every
        worker is busy or serves other code -- warm never evicts); a rejected source
        raises ContractRejected."""
        check_source(source)
        code = (contract, code_hash, False)
        with self._lock:
            ready = len(self._idle.get(code, ()))
            if ready or not self._fresh:
                return ready
            w = self._fresh.pop()
            w.code = code
        fault = w.idle_fault()
        if fault is not None:
            self._replace(w, fault)
            return 0
        probe = t.Invocation(contract, code_hash, source, "_warm", b"{}", "warm", 0,
                             t.CallerInfo("", ""), {}, 0, self._limits)
        try:
            r = self._run(w, probe, _NoState(), False)
        except _WorkerDied as died:
            self._replace(w, died.cause)
            return 0
        except BaseException:
            self._replace(w, "host_error")
            raise
        if w.dead or self._closed:  # recycled by the probe (e.g. its memory): replace it
            self._replace(w, w.cause if w.dead else "closed")
            return 0
        self._release(w)
        return int(r.reason == t.UNKNOWN_FUNCTION)

    def _request(self, w: _Worker, inv: t.Invocation, with_source: bool,
                 unchecked: bool) -> bytes:
        msg = pb.HostMessage()
        req = msg.invoke
        req.contract = inv.contract
        req.code_hash = inv.code_hash
        if with_source:
            req.source = inv.source
        req.function = inv.function
        req.args_json = inv.args_json
        req.tx_id = inv.tx_id
        req.timestamp_ms = inv.timestamp_ms
        c = inv.caller
        rc = req.caller
        rc.org = c.org
        rc.role = c.role
        rc.name = c.name
        if c.attrs:
            rc.attrs.update(c.attrs)
        rc.org_kind = c.org_kind
        rc.hospital_level = c.hospital_level
        if inv.transient:
            req.transient.update(inv.transient)
        req.gas_limit = inv.gas_limit
        if w.limits is not inv.limits and w.limits != inv.limits:
            req.limits.CopyFrom(protocol.limits_to_msg(inv.limits))
        req.unchecked = unchecked
        return msg.SerializeToString()

    def _send(self, w: _Worker, left: Callable[[], float], *frames: bytes) -> None:
        try:
            protocol.write_frames(w.wfd, *frames, timeout=left)
        except TimeoutError:
            raise self._died(w, True) from None
        except OSError as exc:
            raise _WorkerDied(t.WORKER_CRASHED, f"worker pipe closed: {exc}") from None

    def _died(self, w: _Worker, timed_out: bool) -> _WorkerDied:
        if timed_out:
            w.kill()
            return _WorkerDied(t.TIMEOUT, "wall-clock timeout: worker killed")
        try:
            code = w.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            w.kill()
            code = w.proc.returncode
        if code == -signal.SIGXCPU:
            return _WorkerDied(t.TIMEOUT, "CPU time limit: worker killed", "cpu_limit")
        if code == -signal.SIGKILL:
            return _WorkerDied(t.WORKER_CRASHED, "worker was killed")
        return _WorkerDied(t.WORKER_CRASHED, f"worker exited with status {code}")

    def _prefetch(self, inv: t.Invocation, peek: t.PeekFn,
                  predicted: dict[tuple[str, str], prefetch.Template]) -> list[
        tuple[str, str, bytes | None]
    ]:
        """Predicted reads of ``inv`` with their current values (``peek`` never records)."""
        entries: list[tuple[str, str, bytes | None]] = []
        size = 0
        for ns, key in predicted:
            try:
                value = peek(ns, key)
            except Exception:  # noqa: BLE001, S112 - a key the backend refuses is not prefetched
                continue
            if value is not None:
                if type(value) is not bytes or len(value) > inv.limits.max_value_bytes:
                    continue
                size += len(value)
                if size > prefetch.MAX_BYTES:
                    break
            entries.append((ns, key, value))
        return entries

    def _run(self, w: _Worker, inv: t.Invocation, backend: t.StateBackend,
             unchecked: bool, entries: list[tuple[str, str, bytes | None]] | None = None,
             reads: list[tuple[str, str]] | None = None) -> t.InvocationResult:
        """One invocation on ``w``; ``entries`` is the prefetch table sent with the request,
        ``reads`` (if given) receives every (namespace, key) the contract got, in order."""
        if w.code != (inv.contract, inv.code_hash, unchecked):
            raise AssertionError("a worker is handed only invocations of the code it serves")
        w.reader.max_frame = answer_frame_bound(inv)
        clock = self._clock
        deadline = clock() + inv.limits.wall_timeout_s

        def left() -> float:
            return deadline - clock()

        table = entries or []
        pf = protocol.EMPTY_PREFETCH
        if table:
            try:
                pf = protocol.encode_prefetch(table)
            except ValueError:  # an entry too long for a compact frame: send no table
                table = []
        with_source = inv.code_hash not in w.known
        self._send(w, left, self._request(w, inv, with_source, unchecked), pf)
        w.limits = inv.limits
        if with_source:
            w.known.add(inv.code_hash)
        st = _CallState(table, reads, inv, left)
        while True:
            try:
                frame = w.reader.read(left)
            except TimeoutError:
                raise self._died(w, True) from None
            except protocol.ProtocolError as exc:
                if not exc.eof:
                    w.kill()
                    raise _WorkerDied(t.WORKER_CRASHED, f"protocol violation: {exc}") from None
                raise self._died(w, False) from None
            except OSError:
                raise self._died(w, False) from None
            if protocol.is_compact(frame):
                self._compact(w, inv, backend, frame, st)
                continue
            try:
                msg = pb.WorkerMessage.FromString(frame)
            except Exception:  # noqa: BLE001 - any parse failure is a protocol violation
                w.kill()
                raise _WorkerDied(t.WORKER_CRASHED, "worker sent a malformed message") from None
            if msg.writes:
                st.ops_left -= len(msg.writes)
                if st.ops_left < 0:
                    raise self._violation(w, "more state operations than the gas limit pays for")
                self._apply_ops(w, inv, backend, st, [
                    (protocol.OP_DELETE if wr.is_delete else protocol.OP_PUT, wr.key, wr.value, 0)
                    for wr in msg.writes
                ])
            kind = msg.WhichOneof("kind")
            if kind == "result":
                result = self._result(w, inv, msg.result)
                failure = st.failure
                if failure is not None:
                    return t.InvocationResult(False, failure.failure.reason,
                                              failure.failure.message, b"", (), result.gas_used)
                return result
            if kind == "get":
                self._check_read(w, inv, st, msg.get.namespace, msg.get.key)
            elif kind == "range":
                self._check_read(w, inv, st, msg.range.namespace, msg.range.start,
                                 msg.range.end, bounds=True)
            elif kind == "history":
                self._check_read(w, inv, st, msg.history.namespace, msg.history.key)
            if st.failure is not None and kind in ("get", "range", "history"):
                self._send(w, left, st.failure.SerializeToString())  # the worker aborts the call
                continue
            if kind == "need_source":
                if with_source:
                    w.kill()
                    raise _WorkerDied(t.WORKER_CRASHED, "worker asked twice for the source")
                with_source = True
                self._send(w, left, self._request(w, inv, True, unchecked), pf)
                w.known.add(inv.code_hash)
                continue
            if kind == "get" and reads is not None and len(reads) < prefetch.MAX_LEARNED_READS:
                reads.append((msg.get.namespace, msg.get.key))
            reply = self._answer(w, inv, backend, msg, kind, st)
            self._send(w, left, reply.SerializeToString())

    def _violation(self, w: _Worker, what: str) -> _WorkerDied:
        w.kill()
        return _WorkerDied(t.WORKER_CRASHED, f"protocol violation: {what}")

    def _check_read(self, w: _Worker, inv: t.Invocation, st: _CallState, namespace: str,
                    *keys: str, bounds: bool = False) -> None:
        """A read request is one the Context could have sent: paid for (``ops_left``), a
        namespace of at most MAX_NAMESPACE_LEN characters, keys of at most max_key_len
        UTF-8 bytes (range bounds: characters, may be empty), no NUL.  Otherwise a worker
        could make the backend record reads without bound (a key up to a frame's size)."""
        st.ops_left -= 1
        if st.ops_left < 0:
            raise self._violation(w, "more state requests than the gas limit pays for")
        if not namespace or len(namespace) > MAX_NAMESPACE_LEN or "\0" in namespace:
            raise self._violation(w, "read of an invalid namespace")
        cap = inv.limits.max_key_len
        for key in keys:
            if "\0" in key or (len(key) > cap if bounds else (
                not key or len(key.encode()) > cap
            )):
                raise self._violation(w, "read of an invalid key")

    def _compact(self, w: _Worker, inv: t.Invocation, backend: t.StateBackend, frame: bytes,
                 st: _CallState) -> None:
        """A compact frame from the worker: ops (applied in order) or a get (answered)."""
        head = frame[:2]
        try:
            if head == protocol.OPS:
                ops = protocol.decode_ops(frame, st.ops_left)
            elif head == protocol.GET:
                ns, key = protocol.decode_get(frame)
                self._check_read(w, inv, st, ns, key)
            else:
                raise protocol.ProtocolError(f"unknown compact frame kind {frame[1]:#x}")
        except protocol.ProtocolError as exc:
            raise self._violation(w, str(exc)) from None
        if head == protocol.OPS:
            st.ops_left -= len(ops)
            self._apply_ops(w, inv, backend, st, ops)
            return
        if st.failure is not None:
            self._send(w, st.left, st.failure.SerializeToString())
            return
        if st.reads is not None and len(st.reads) < prefetch.MAX_LEARNED_READS:
            st.reads.append((ns, key))
        try:
            value = backend.get(ns, key)
        except Exception as exc:  # noqa: BLE001 - backend failures abort the invocation
            self._send(w, st.left, _failure(exc).SerializeToString())
            return
        self._send(w, st.left, protocol.encode_value(value))

    def _apply_ops(self, w: _Worker, inv: t.Invocation, backend: t.StateBackend,
                   st: _CallState, ops: list[protocol.Op]) -> None:
        """Apply puts/deletes and replay prefetched reads in order; the first backend
        refusal (or a prefetched value the backend no longer returns) becomes the call's
        failure and nothing after it is applied."""
        limits = inv.limits
        contract = inv.contract
        for op, key, value, index in ops:
            if st.failure is not None:
                return
            if op == protocol.OP_READ:
                if index >= len(st.table):
                    raise self._violation(w, f"read of prefetch entry {index} that was not sent")
                ns, key, expected = st.table[index]
                if ns == contract and key in st.written:
                    raise self._violation(w, "prefetched read of a key the invocation wrote")
                if st.reads is not None and len(st.reads) < prefetch.MAX_LEARNED_READS:
                    st.reads.append((ns, key))
                try:
                    current = backend.get(ns, key)
                except Exception as exc:  # noqa: BLE001 - backend refusals abort the invocation
                    st.failure = _failure(exc)
                    return
                if current != expected:
                    st.failure = _failure(_StateChanged(
                        f"prefetched value of {ns}/{key[:200]!r} differs from the backend's"))
                    return
                self.prefetch_hits += 1
                continue
            if not key or len(key.encode()) > limits.max_key_len or (
                len(value) > limits.max_value_bytes
            ):
                w.kill()
                raise _WorkerDied(t.WORKER_CRASHED, "worker sent an invalid write")
            # the bounds the worker's Context enforces before it buffers a write (api.py
            # _record_write): distinct keys and total bytes.  Without them a worker could
            # make the backend hold max_write_keys x max_value_bytes (10 GB by default)
            if key not in st.written and len(st.written) >= limits.max_write_keys:
                raise self._violation(w, "worker wrote more keys than max_write_keys")
            st.write_bytes += len(key) + len(value)
            if st.write_bytes > limits.max_write_bytes:
                raise self._violation(w, "worker wrote more bytes than max_write_bytes")
            st.written.add(key)
            try:
                if op == protocol.OP_DELETE:
                    backend.delete(contract, key)
                else:
                    backend.put(contract, key, value)
            except Exception as exc:  # noqa: BLE001 - backend refusals abort the invocation
                st.failure = _failure(exc)
                return

    def _answer(self, w: _Worker, inv: t.Invocation, backend: t.StateBackend,
                msg: pb.WorkerMessage, kind: str | None, st: _CallState) -> pb.HostMessage:
        reply = pb.HostMessage()
        limits = inv.limits
        try:
            if kind == "get":
                value = backend.get(msg.get.namespace, msg.get.key)
                reply.get_reply.found = value is not None
                if value is not None:
                    reply.get_reply.value = value
            elif kind == "range":
                r = msg.range
                n = min(r.limit, limits.max_range_items)
                rows = backend.range(r.namespace, r.start, r.end, n) if n > 0 else []
                items = reply.range_reply.items
                for key, value in rows[:n]:
                    items.add(key=key, value=value)
                reply.range_reply.SetInParent()
            elif kind == "history":
                h = msg.history
                n = min(h.limit, limits.max_history_items)
                values = not h.no_values
                start = h.start if h.paged else None
                # what the Context charged before asking: an honest worker never asks once
                # its history reads have spent the call's gas limit
                st.history_gas_left -= GAS_HISTORY + GAS_HISTORY_SKIP * h.start
                if st.history_gas_left < 0:
                    raise self._violation(w, "history reads beyond what the gas limit pays for")
                gas_left = min(h.gas_left, st.history_gas_left)
                entries = backend.history(h.namespace, h.key, n, start=start, values=values,
                                          gas_left=gas_left)[:n] if n > 0 else []
                st.history_gas_left -= history_gas(entries, values)
                out = reply.history_reply.entries
                for e in entries:
                    has_value = values and e.value is not None
                    out.add(tx_id=e.tx_id, block=e.block, timestamp_ms=e.timestamp_ms,
                            is_delete=e.is_delete, value=e.value if has_value else b"",
                            block_bytes=e.block_bytes, has_value=has_value)
                reply.history_reply.SetInParent()
            else:
                w.kill()
                raise _WorkerDied(t.WORKER_CRASHED, f"unexpected worker message {kind!r}")
        except _WorkerDied:
            raise
        except Exception as exc:  # noqa: BLE001 - backend failures abort the invocation
            failure = _failure(exc)
            if kind == "history":
                # a refused history read may have read up to 16 MiB of values and their blocks
                # (its gas: failure.gas, which the host counts itself): it is the call's
                # outcome, and no later read reaches the backend -- a subverted worker going on
                # had the peer read again for 1,000 gas a read, and its own result taken
                st.history_gas_left -= failure.failure.gas
                st.failure = failure
            return failure
        return reply

    def _result(self, w: _Worker, inv: t.Invocation, r: pb.InvokeResult) -> t.InvocationResult:
        if len(r.result_json) > inv.limits.max_value_bytes or len(r.events) > (
            inv.limits.max_events
        ):
            w.kill()
            raise _WorkerDied(t.WORKER_CRASHED, "worker result exceeds the limits")
        if any(not e.name or len(e.name) > MAX_EVENT_NAME
               or len(e.payload_json) > inv.limits.max_value_bytes for e in r.events):
            w.kill()  # Context.emit refuses these: only a subverted worker sends them
            raise _WorkerDied(t.WORKER_CRASHED, "worker event exceeds the limits")
        events = tuple(t.ContractEvent(e.name, e.payload_json) for e in r.events)
        gas = min(r.gas_used, inv.gas_limit)
        if r.ok != (r.reason == "") or (r.reason and not valid_reason(r.reason)):
            w.kill()
            raise _WorkerDied(t.WORKER_CRASHED, "worker sent an inconsistent result")
        result = t.InvocationResult(r.ok, r.reason, r.message[:1024], r.result_json, events, gas)
        if r.recycle or (self._recycle_rss and w.rss_bytes() > self._recycle_rss):
            # memory a call left behind (a reference cycle not yet collected, allocator
            # fragmentation) must not make the next, unrelated call hit MEMORY_LIMIT
            w.kill()
            w.cause = "memory_limit" if r.recycle else "rss"
            w.dead = True
        return result
