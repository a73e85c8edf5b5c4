"""Where the machine's CPU goes by layer: a system-wide ``perf`` sample under load.

py-spy sees Python frames only, and only while a thread holds the interpreter lock. This
looks underneath: ``perf record -a -g`` samples every CPU at a fixed rate, and each sample
is charged to the shared object it landed in -- the interpreter, the kernel, the
``cryptography`` package (ECDSA, AES-GCM, ECDH), gRPC core (HTTP/2 and TLS), protobuf,
LevelDB, the C library (malloc, memcpy) -- and to the process it ran for. Kernel samples
are further split by what the process was doing there, from the call chain: futex waits
and wake-ups (thread hand-offs and the interpreter lock), scheduling and interrupts, TCP
(gRPC messages over loopback), fsync, polling, pipes and files (the sandbox workers),
memory. Idle samples (the ``swapper`` task) are counted apart; every share below is of the
busy samples.

``perf`` is a system tool (Debian ``linux-perf``), installed on demand with ``apt-get`` like
the ordering benchmark's ``etcd-server``. Where that is not possible, or sampling the whole
machine is not allowed, the e2e benchmark records why the breakdown is missing and goes on.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.procstat import node_processes

KERNEL = "kernel"
INTERPRETER = "Python interpreter"
CRYPTO = "cryptography (ECDSA, AES-GCM, ECDH)"
HASHING = "hashing (hashlib / OpenSSL)"
GRPC = "gRPC core (HTTP/2, TLS)"
PROTOBUF = "protobuf (upb)"
LEVELDB = "LevelDB"
LIBC = "C library (malloc, memcpy, locks)"
OTHER = "other"

# Ordered: the first rule whose prefix matches the object's file name wins.
_DSO_RULES: tuple[tuple[str, str], ...] = (
    ("libpython", INTERPRETER),
    ("python3", INTERPRETER),
    ("_rust.abi3", CRYPTO),
    ("_openssl.abi3", CRYPTO),
    ("_hashlib", HASHING),
    ("libcrypto", HASHING),
    ("cygrpc", GRPC),
    ("_message.abi3", PROTOBUF),
    ("_upb", PROTOBUF),
    ("libleveldb", LEVELDB),
    ("libsnappy", LEVELDB),
    ("_plyvel", LEVELDB),
    ("libc.so", LIBC),
    ("libc-", LIBC),
    ("ld-linux", LIBC),
    ("libstdc++", LIBC),
    ("libm.so", LIBC),
    ("libgcc", LIBC),
)

FUTEX = "futex: thread waits and wake-ups"
TCP = "TCP over loopback (gRPC messages)"
SYNC = "fsync / fdatasync"
POLL = "epoll / select"
PIPES = "pipes and files (read, write)"
SCHED = "scheduling and interrupts"
MEMORY = "memory (page faults, mmap)"
KERNEL_OTHER = "other kernel work"

# Checked in this order over the whole call chain: a futex wait that ends in the scheduler
# is a futex sample, a TCP send that runs the receiver's softirq is a TCP sample.
_KERNEL_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (FUTEX, ("__x64_sys_futex", "do_futex")),
    (TCP, ("tcp_", "net_rx_action", "__dev_queue_xmit", "__sys_sendmsg", "__sys_recvmsg",
           "__sys_sendto", "__sys_recvfrom", "sock_")),
    (SYNC, ("__x64_sys_fsync", "__x64_sys_fdatasync", "jbd2", "ext4_sync_file")),
    (POLL, ("do_epoll_wait", "__x64_sys_epoll", "__x64_sys_pselect6", "__x64_sys_select",
            "__x64_sys_poll", "__x64_sys_ppoll")),
    (PIPES, ("ksys_read", "ksys_write", "__x64_sys_read", "__x64_sys_write", "pipe_")),
    (MEMORY, ("asm_exc_page_fault", "__x64_sys_mmap", "__x64_sys_munmap", "__x64_sys_madvise",
              "__x64_sys_brk", "__x64_sys_mprotect")),
    (SCHED, ("schedule", "__schedule", "finish_task_switch", "try_to_wake_up", "asm_sysvec_",
             "irqentry_exit", "asm_common_interrupt", "handle_softirqs")),
)

IDLE_COMMS = ("swapper",)
SAMPLER_COMMS = ("perf",)  # perf itself (``perf`` and ``perf-exec``): not the system's work


def perf_path() -> str | None:
    """The ``perf`` binary, installed on demand from Debian's ``linux-perf`` (as the ordering
    benchmark installs ``etcd-server``); None if that is not possible here."""
    found = shutil.which("perf")
    if found is None and shutil.which("apt-get") is not None:
        try:
            subprocess.run(["apt-get", "install", "-y", "-q", "linux-perf"], capture_output=True,
                           check=False, timeout=300)
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = shutil.which("perf")
    return found


def record(binary: str, out: Path, duration_s: int, frequency: int = 499,
           delay_s: float = 0.0) -> subprocess.Popen[bytes]:
    """Sample every CPU (with call chains) for ``duration_s`` seconds into ``out``, starting
    ``delay_s`` seconds from now (``-D``: e.g. once a load has reached its steady state).

    ``cpu-clock`` (not the hardware ``cycles`` perf prefers where a PMU exists): a sample per
    1/``frequency`` s of each CPU's time, so busy samples / frequency are CPU seconds.
    ``-k mono``: sample times on the clock of ``time.monotonic``, so the benchmark can count
    the commits of exactly the sampled window."""
    argv = [binary, "record", "-e", "cpu-clock", "-k", "mono", "-F", str(frequency), "-a", "-g",
            "-D", str(round(delay_s * 1000)), "-o", str(out), "--", "sleep", str(delay_s + duration_s)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def script(binary: str, data: Path, timeout_s: float = 300.0) -> str:
    """The samples of ``data`` as text (``perf script``: a header line, then one frame per line)."""
    proc = subprocess.run([binary, "script", "-i", str(data), "-F", "comm,pid,tid,time,ip,sym,dso"],
                          capture_output=True, text=True, errors="replace", check=False, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"perf script failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout


KERNEL_ADDRESS = 0xFFFF800000000000  # x86-64: the upper half is the kernel's
_PAREN_DEPTH = {")": 1, "(": -1}


@dataclass(frozen=True)
class Sample:
    """One perf sample: who ran, when (monotonic s, if printed), and its call chain (leaf
    first) as (symbol, object) pairs."""

    comm: str
    pid: int
    time: float | None
    frames: tuple[tuple[str, str], ...]


def _header(line: str) -> tuple[str, int, float | None] | None:
    """(comm, pid, time) of a sample's first line ``comm pid/tid [time:]``; comm may hold blanks."""
    parts = line.split()
    for i in range(len(parts) - 1, -1, -1):
        pid, slash, tid = parts[i].partition("/")
        if slash and pid.isdigit() and tid.isdigit():
            comm = line[: line.rfind(parts[i])].strip()
            when: float | None = None
            if i + 1 < len(parts) and parts[i + 1].endswith(":"):
                try:
                    when = float(parts[i + 1][:-1])
                except ValueError:
                    when = None
            return comm, int(pid), when
    return None


def _frame(body: str) -> tuple[str, str] | None:
    """(symbol, object) of a frame line ``addr sym+off (object)``; the object is the last
    parenthesised group, which may itself hold parentheses (``/memfd:x (deleted)``). A kernel
    address perf could not name (``[unknown]``) counts as the kernel's."""
    if not body.endswith(")"):
        return None
    depth = 0
    for i in range(len(body) - 1, -1, -1):
        depth += _PAREN_DEPTH.get(body[i], 0)
        if depth == 0:
            break
    else:
        return None
    dso = body[i + 1 : -1]
    addr, _, sym = body[:i].strip().partition(" ")
    if dso == "[unknown]":
        try:
            if int(addr, 16) >= KERNEL_ADDRESS:
                dso = "[kernel.unknown]"
        except ValueError:
            pass
    return sym.strip().split("+0x")[0], dso


def parse_script(text: str) -> Iterator[Sample]:
    """Samples of ``perf script -F comm,pid,tid,time,ip,sym,dso`` output: a header line, the
    frames on indented lines, a blank line between samples."""
    header: tuple[str, int, float | None] | None = None
    frames: list[tuple[str, str]] = []
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if header is not None:
                yield Sample(header[0], header[1], header[2], tuple(frames))
            header, frames = None, []
        elif line[0].isspace():  # frames are indented; perf never pads a header's start
            frame = _frame(line.strip())
            if frame is not None and header is not None:
                frames.append(frame)
        else:
            if header is not None:  # a sample without a blank line after it
                yield Sample(header[0], header[1], header[2], tuple(frames))
                frames = []
            header = _header(line)


def is_kernel(dso: str) -> bool:
    """The kernel image, a kernel module (``[ext4]``) or an unnamed kernel address."""
    return dso.startswith("[") and dso not in ("[unknown]", "[vdso]", "[vsyscall]")


def layer_of(dso: str) -> str:
    """The layer a shared object belongs to (by its file name)."""
    if is_kernel(dso):
        return KERNEL
    name = dso.rsplit("/", 1)[-1]
    for prefix, layer in _DSO_RULES:
        if name.startswith(prefix):
            return layer
    return OTHER


def kernel_category(symbols: Iterable[str]) -> str:
    """What a kernel sample was doing, from the symbols of its whole call chain."""
    syms = tuple(symbols)
    for category, prefixes in _KERNEL_RULES:
        if any(s.startswith(prefixes) for s in syms):
            return category
    return KERNEL_OTHER


@dataclass
class LayerProfile:
    """Busy samples by layer, by kernel activity and by process (all shares of busy samples).

    Idle samples and the sampler's own (``perf``) are counted apart and are not busy; the
    first and last sample times bound the window the samples cover."""

    samples: int = 0
    idle: int = 0
    sampler: int = 0
    first_t: float | None = None
    last_t: float | None = None
    layers: Counter[str] = field(default_factory=Counter)
    kernel: Counter[str] = field(default_factory=Counter)
    processes: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def busy(self) -> int:
        return self.samples - self.idle - self.sampler

    def add(self, s: Sample, process: str) -> None:
        self.samples += 1
        if s.time is not None:
            self.first_t = s.time if self.first_t is None else min(self.first_t, s.time)
            self.last_t = s.time if self.last_t is None else max(self.last_t, s.time)
        if s.pid == 0 or s.comm.startswith(IDLE_COMMS):
            self.idle += 1
            return
        if s.comm.startswith(SAMPLER_COMMS):
            self.sampler += 1
            return
        leaf_dso = s.frames[0][1] if s.frames else "[unknown]"
        layer = layer_of(leaf_dso)
        self.layers[layer] += 1
        if layer == KERNEL:
            self.kernel[kernel_category(sym for sym, dso in s.frames if is_kernel(dso))] += 1
        self.processes.setdefault(process, Counter())[layer] += 1

    def as_dict(self, top_layers_per_process: int = 4) -> dict[str, object]:
        busy = self.busy or 1

        def shares(c: Counter[str]) -> dict[str, float]:
            return {k: round(v / busy, 4) for k, v in c.most_common()}

        by_process: dict[str, object] = {}
        for name, c in sorted(self.processes.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(c.values())
            by_process[name] = {
                "share": round(total / busy, 4),
                "layers": {k: round(v / total, 4) for k, v in c.most_common(top_layers_per_process)},
            }
        return {"samples": self.samples, "idle_share": round(self.idle / (self.samples or 1), 4),
                "sampler_share": round(self.sampler / (self.samples or 1), 4),
                "layers": shares(self.layers), "kernel": shares(self.kernel), "by_process": by_process}


def profile(samples: Iterable[Sample], names: Mapping[int, str]) -> LayerProfile:
    """Group samples; ``names`` maps pids to a process name (others: ``other processes``)."""
    prof = LayerProfile()
    for s in samples:
        prof.add(s, names.get(s.pid, "other processes"))
    return prof


def process_names(groups: Mapping[str, int], singles: Mapping[str, int],
                  known: Mapping[int, str] | None = None) -> dict[int, str]:
    """pid -> name for every process of the nodes (``name -> leader pid``; the descendants of
    a node, a peer's sandbox workers, are ``"<name> workers"``) and every single process;
    ``known`` (an earlier call's answer) keeps processes that have exited since, e.g. a
    recycled sandbox worker."""
    names: dict[int, str] = {**(known or {}), **node_processes(groups)}
    for name, pid in singles.items():
        names[pid] = name
    return names


def per_tx(prof: LayerProfile, frequency: int, txs: int) -> dict[str, object]:
    """:meth:`LayerProfile.as_dict` plus CPU ms per committed tx, in all and by layer.

    perf's CPU clock takes ``frequency`` samples per second of each CPU's time, so the busy
    samples divided by the frequency are the busy CPU seconds of the window."""
    out = prof.as_dict()
    if txs <= 0:
        return out
    ms = 1000 / frequency / txs
    out["busy_cpu_ms_per_tx"] = round(prof.busy * ms, 3)
    out["layers_ms_per_tx"] = {k: round(v * ms, 3) for k, v in prof.layers.most_common()}
    out["kernel_ms_per_tx"] = {k: round(v * ms, 3) for k, v in prof.kernel.most_common()}
    return out
