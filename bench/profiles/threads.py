"""Context switches and CPU per transaction, thread by thread: where the hand-offs happen.

A sampling profile shows where the interpreter runs; it does not show what waking threads
costs. On these machines one hand-off costs ~13 us of CPU between threads and ~18 us
between processes (``bench.grpc_model_bench``), and a story transaction causes ~150
voluntary context switches across the nodes (see ``analysis.md``). :func:`snapshot` reads
every thread's voluntary and involuntary switches and its CPU time from ``/proc``;
:func:`per_tx` turns two snapshots into switches per committed transaction by process;
:func:`thread_labels` names Python threads from one ``py-spy dump`` (thread name and the
innermost frame that is not a wait); :func:`top_threads` ranks the threads by voluntary
switches per transaction and, separately, by CPU per transaction -- which threads burn the
interpreter's share (py-spy shows functions, not which thread of gRPC's runs them; perf
shows layers, not threads).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from bench.procstat import node_processes

# Frames that only say "waiting": the label uses the first frame below them.
_WAIT_FILES = ("threading.py", "queue.py", "concurrent/futures", "<frozen runpy>")
# py-spy's thread states: idle, active, active+gil, ...
_THREAD = re.compile(r'^Thread (\d+) \(([\w+]+)\)(?:: "(.*)")?')

# (process, pid, tid) -> (voluntary, involuntary, CPU nanoseconds, comm)
Snapshot = dict[tuple[str, int, int], tuple[int, int, int, str]]


def switches_from_status(text: str) -> tuple[int, int]:
    """(voluntary, involuntary) context switches from a ``/proc/<pid>/task/<tid>/status``.

    Voluntary: the thread went to sleep -- in these Python nodes almost always a message or a
    result handed from one thread to another (a queue, a condition, a socket, the interpreter
    lock) or an fsync. Involuntary: the kernel preempted it while runnable, which on an
    oversubscribed machine mostly counts the competition for the cores."""
    vol = invol = 0
    for line in text.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            vol = int(line.split()[-1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            invol = int(line.split()[-1])
    return vol, invol


def cpu_ns_from_schedstat(text: str) -> int:
    """Nanoseconds a thread (or process) has run on a CPU, from its ``schedstat`` (first
    field; 0 if the text holds none)."""
    parts = text.split()
    return int(parts[0]) if parts and parts[0].isdigit() else 0


def task_stats(pid: int) -> dict[int, tuple[int, int, int, str]]:
    """tid -> (voluntary, involuntary, CPU ns, comm) of a process's live threads (empty if
    gone). CPU is 0 where the kernel has no ``schedstat`` (the switch counts still count)."""
    out: dict[int, tuple[int, int, int, str]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}/"
        try:
            with open(base + "status", encoding="ascii", errors="replace") as fh:
                vol, invol = switches_from_status(fh.read())
            with open(base + "comm", encoding="utf-8", errors="replace") as fh:
                comm = fh.read().strip()
        except (OSError, ValueError):
            continue
        try:
            with open(base + "schedstat", encoding="ascii", errors="replace") as fh:
                cpu_ns = cpu_ns_from_schedstat(fh.read())
        except OSError:
            cpu_ns = 0
        out[int(tid)] = (vol, invol, cpu_ns, comm)
    return out


def snapshot(groups: Mapping[str, int], singles: Mapping[str, int] | None = None) -> Snapshot:
    """Every live thread of every process group (``name -> leader pid``; the other members
    and descendants of a group -- a peer's sandbox workers -- count as ``"<name> workers"``)
    and of every single process in ``singles`` (e.g. the benchmark's own, whose children are
    the nodes)."""
    snap: Snapshot = {}
    for pid, owner in node_processes(groups).items():
        for tid, value in task_stats(pid).items():
            snap[(owner, pid, tid)] = value
    for name, pid in (singles or {}).items():
        for tid, value in task_stats(pid).items():
            snap[(name, pid, tid)] = value
    return snap


def parse_dump(text: str) -> dict[int, str]:
    """tid -> "thread name: innermost frame that is not a wait" from ``py-spy dump`` output."""
    labels: dict[int, str] = {}
    tid: int | None = None
    name = ""
    for line in text.splitlines():
        m = _THREAD.match(line)
        if m:
            tid, name = int(m.group(1)), m.group(3) or ""
            labels[tid] = name
            continue
        frame = line.strip()
        if tid is None or not frame or labels[tid] != name:
            continue  # not in a thread, or this thread is labelled already
        if any(f in frame for f in _WAIT_FILES):
            continue
        labels[tid] = f"{name}: {frame.split(' (')[0]}"
    return labels


def thread_labels(binary: str, pid: int, timeout_s: float = 20.0) -> dict[int, str]:
    """Labels of a Python process's threads (empty if py-spy cannot read it)."""
    try:
        proc = subprocess.run([binary, "dump", "--nonblocking", "--pid", str(pid)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_dump(proc.stdout)


def local_labels() -> dict[int, str]:
    """Labels of this process's Python threads, the same way (no py-spy needed; this
    module's own frames are skipped, so the calling thread is named by its caller)."""
    frames = sys._current_frames()  # every thread's current frame (documented in sys)
    labels: dict[int, str] = {}
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        label = t.name
        frame = frames.get(t.ident) if t.ident is not None else None
        if frame is not None:
            for fs in reversed(traceback.extract_stack(frame)):
                if fs.filename != __file__ and not any(f in fs.filename for f in _WAIT_FILES):
                    label = f"{t.name}: {fs.name}"
                    break
        labels[t.native_id] = label
    return labels


def _deltas(before: Snapshot, after: Snapshot) -> Iterator[tuple[str, int, int, int, int, str]]:
    """(process, tid, voluntary, involuntary, CPU ns, comm) between the snapshots, for the
    threads present in both (a thread that started or ended inside the window has a partial
    count: left out, so an exiting thread cannot make a delta negative)."""
    for key, (v, i, ns, comm) in after.items():
        if key in before:
            name, _pid, tid = key
            v0, i0, ns0, _ = before[key]
            yield name, tid, v - v0, i - i0, ns - ns0, comm


def per_tx(before: Snapshot, after: Snapshot, txs: int) -> dict[str, Any]:
    """Context switches per tx by process and in all, voluntary and involuntary."""
    n = max(1, txs)
    by_process: dict[str, float] = {}
    vol = invol = 0
    for name, _tid, dv, di, _ns, _comm in _deltas(before, after):
        vol += dv
        invol += di
        by_process[name] = by_process.get(name, 0.0) + (dv + di) / n
    return {
        "by_process": {k: round(v, 1) for k, v in sorted(by_process.items())},
        "voluntary": round(vol / n, 1),
        "involuntary": round(invol / n, 1),
        "total": round((vol + invol) / n, 1),
    }


def top_threads(before: Snapshot, after: Snapshot, labels: Mapping[int, str], txs: int,
                limit: int = 20) -> dict[str, Any]:
    """Voluntary switches (hand-offs) per tx in all, by process, and the ``limit`` busiest
    threads; and the same for CPU milliseconds per tx (``cpu_*``), busiest first."""
    n = max(1, txs)
    rows: list[tuple[float, str, str]] = []
    cpu_rows: list[tuple[float, str, str]] = []
    by_process: dict[str, float] = {}
    cpu_by_process: dict[str, float] = {}
    for name, tid, dv, _di, dns, comm in _deltas(before, after):
        label = labels.get(tid) or comm
        by_process[name] = by_process.get(name, 0.0) + dv / n
        rows.append((dv / n, name, label))
        ms = dns / 1e6 / n
        cpu_by_process[name] = cpu_by_process.get(name, 0.0) + ms
        cpu_rows.append((ms, name, label))
    rows.sort(key=lambda r: -r[0])
    cpu_rows.sort(key=lambda r: -r[0])
    return {
        "per_tx_total": round(sum(by_process.values()), 1),
        "per_tx_by_process": {k: round(v, 1) for k, v in sorted(by_process.items())},
        "top": [{"process": p, "thread": t, "per_tx": round(d, 2)} for d, p, t in rows[:limit]],
        "cpu_ms_per_tx_total": round(sum(cpu_by_process.values()), 3),
        "cpu_ms_per_tx_by_process": {k: round(v, 3) for k, v in sorted(cpu_by_process.items())},
        "cpu_top": [{"process": p, "thread": t, "cpu_ms_per_tx": round(d, 3)}
                    for d, p, t in cpu_rows[:limit]],
    }
