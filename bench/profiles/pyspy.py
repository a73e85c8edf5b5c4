"""py-spy sampling of running processes and a plain-text digest of the collapsed stacks.

``record`` starts ``py-spy record --format raw`` (collapsed stacks: ``frame;frame;... N``)
against a pid for a fixed duration; ``digest`` turns a raw file into the top functions by
self samples and by inclusive samples, the figures the summary quotes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE_NO = re.compile(r":\d+\)$")


def pyspy_path() -> str | None:
    """The py-spy binary of this venv (installed on demand), or None if unavailable."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    found = shutil.which("py-spy")
    if found:
        return found
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "py-spy"],
                          capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode == 0 and here.exists():
        return str(here)
    return None


def record(binary: str, pid: int, out: Path, duration_s: int, rate: int = 200,
           subprocesses: bool = False) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` (non-blocking: the target is never paused).

    ``--gil``: only the thread holding the GIL is sampled, so the samples are where the
    interpreter spends CPU (threads blocked in waits and gRPC polls are left out; C code
    that releases the GIL -- OpenSSL, LevelDB, gRPC core -- shows as missing samples)."""
    argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(duration_s),
            "--format", "raw", "--output", str(out), "--nonblocking", "--gil"]
    if subprocesses:
        argv.append("--subprocesses")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass(frozen=True)
class Digest:
    """Top functions of one profile, and the samples grouped into cost buckets."""

    samples: int
    top_self: list[tuple[str, float]]
    top_inclusive: list[tuple[str, float]]
    buckets: list[tuple[str, float]]


# Frames every stack has (thread start-up, pools, the sandbox worker's boot line): left out
# of the inclusive ranking, which is meant to show where work happens.
_GENERIC = ("Thread.run (", "Thread._bootstrap", "_worker (futures", "_WorkItem.run (", "<module> (",
            "_run_code (", "_run_module_as_main (", "main (sandbox/worker.py)", "serve (sandbox/worker.py)",
            "main() --memory")

# Leaf frame (file) -> cost bucket; first match wins.
_BUCKETS = (
    ("contract code + metering (sandbox worker)", ("<contract", "sandbox/meter.py", "sandbox/engine.py",
                                                   "sandbox/instrument.py", "sandbox/api.py", "sandbox/canonical.py")),
    ("sandbox IPC (frames, pipes)", ("sandbox/",)),
    ("signatures and AEAD", ("crypto/signing.py", "crypto/aead.py", "hazmat")),
    ("thread hand-off (locks, conditions, queues, pools)", ("threading.py", "queue.py", "futures/thread.py",
                                                             "futures/_base.py")),
    ("gRPC Python layer", ("grpc/",)),
    ("JSON", ("json/",)),
    ("validation", ("peer/validator.py", "identity/")),
    ("ledger (block store, state DB, history)", ("ledger/",)),
    ("endorsement + gateway", ("peer/endorser.py", "peer/simulator.py", "gateway/", "peer/policy_provider.py",
                               "peer/")),
    ("ordering (raft, chain, broadcast)", ("raft/", "orderer/")),
    ("protobuf / hashing / canonical", ("canonical.py", "hashing.py", "protobuf")),
    ("benchmark client", ("bench/", "client/")),
)


def bucket_of(frame: str) -> str:
    """The cost bucket of a leaf frame."""
    for name, needles in _BUCKETS:
        if any(n in frame for n in needles):
            return name
    return "other"


def _frame_name(frame: str) -> str:
    # "fn (path/to/file.py:123)" -> "fn (to/file.py)"
    frame = _LINE_NO.sub(")", frame.strip())
    if "(" in frame:
        fn, _, loc = frame.partition(" (")
        parts = loc.rstrip(")").split("/")
        loc = "/".join(parts[-2:])
        return f"{fn} ({loc})"
    return frame


def digest(path: Path, top: int = 12) -> Digest:
    """Self and inclusive shares (of all samples) of the most expensive functions."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return Digest(0, [], [], [])
    buckets: Counter[str] = Counter()
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame_name(f) for f in stack.split(";")]
        # py-spy puts "process N:..." and "thread (...)" pseudo-frames first
        frames = [f for f in frames if " (" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        buckets[bucket_of(frames[-1])] += count
        for f in set(frames):
            if not f.startswith(_GENERIC):
                incl_c[f] += count
    if total == 0:
        return Digest(0, [], [], [])
    return Digest(
        total,
        [(k, round(v / total, 3)) for k, v in self_c.most_common(top)],
        [(k, round(v / total, 3)) for k, v in incl_c.most_common(top)],
        [(k, round(v / total, 3)) for k, v in buckets.most_common()],
    )
