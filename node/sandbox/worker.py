"""Contract worker process: ``python -c <boot> [--allow-unchecked]`` started by runtime.py.

Start-up: die with the parent (PR_SET_PDEATHSIG), warm up every code path, apply rlimits
(address space, open files, file size 0, no child processes, no core dumps), install the
seccomp filter, then report WorkerReady.  Afterwards the worker only reads HostMessage
frames from fd 0 and writes WorkerMessage frames to fd 1.  Module globals of contracts are
re-created for each invocation; compiled code is cached per code hash.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

from rxchain.v1 import sandbox_pb2 as pb

from node.sandbox import protocol, seccomp_policy
from node.sandbox import types as t
from node.sandbox.engine import Engine, rejected_result
from node.sandbox.errors import ContractRejected, StateError

IN_FD = 0
OUT_FD = 1
# Every worker runs with the same C stack, whatever ``ulimit -s`` the peer inherited: C code
# that recurses without CPython's guard (hashing a tuple nested 300,000 deep, a chain of
# 300,000 nested ``zip`` objects) then crashes the worker at the same depth on every peer
# (WORKER_CRASHED) instead of succeeding on some and crashing on others.
STACK_BYTES = t.WORKER_STACK_BYTES
PR_SET_PDEATHSIG = 1
NOBODY = 65534

_WARMUP = '''
from rxchain_contract import Context, ContractError
def warm(ctx: Context, n: int) -> dict:
    ctx.put("k", {"a": [1, "x", True, None]})
    v = ctx.get("k")
    r = ctx.range("a", "z", 10)
    h = ctx.history("k")
    ctx.emit("e", {"n": n})
    s = sorted({3, 1, 2}) + [x * 2 for x in range(n)]
    t = f"{n:>3}|{s!r}" + "%d" % n + str({"a": (1, 2)}) + ",".join(["a", "b"]).upper()
    try:
        {}["missing"]
    except KeyError as exc:
        t += str(exc)
    return {"v": v, "r": len(r), "h": len(h), "s": s, "t": t, "x": ctx.sha256_hex(t),
            "y": ctx.hmac_sha256_hex("00ff", t), "z": ctx.transient("p"),
            "c": ctx.canonical_json({"b": [1, "\u00e9\\n"], "a": None})}
'''


class PipeHost:
    """StateHost talking to the host over the pipe.

    Puts, deletes and reads served from the invocation's prefetch table are recorded in an
    ops frame (program order) that is sent before the next request and before the result.
    A key this invocation wrote is never served from the prefetch table.
    """

    def __init__(self, reader: protocol.FrameReader, contract: str = "",
                 prefetch: list[tuple[str, str, bytes | None]] | None = None) -> None:
        self._reader = reader
        self._contract = contract
        self.ops = protocol.OpsBuilder()
        self._prefetched: dict[tuple[str, str], tuple[int, bytes | None]] = {}
        for i, (ns, key, value) in enumerate(prefetch or ()):
            self._prefetched.setdefault((ns, key), (i, value))

    def flush_frames(self, request: bytes) -> None:
        """Send pending ops (if any) and ``request`` with one write."""
        if self.ops:
            protocol.write_frames(OUT_FD, self.ops.take(), request)
        else:
            protocol.write_frame(OUT_FD, request)

    def _reply(self) -> bytes:
        frame = self._reader.read()
        if protocol.is_compact(frame):
            return frame
        reply = pb.HostMessage.FromString(frame)
        if reply.WhichOneof("kind") == "failure":
            raise StateError(reply.failure.message, reply.failure.reason or t.STATE_ERROR)
        raise StateError(f"protocol: unexpected {reply.WhichOneof('kind')}")

    def _ask(self, m: pb.WorkerMessage, expect: str) -> pb.HostMessage:
        self.flush_frames(m.SerializeToString())
        reply = pb.HostMessage.FromString(self._reader.read())
        kind = reply.WhichOneof("kind")
        if kind == "failure":
            raise StateError(reply.failure.message, reply.failure.reason or t.STATE_ERROR,
                             reply.failure.gas)
        if kind != expect:
            raise StateError(f"protocol: expected {expect}, got {kind}")
        return reply

    def get(self, namespace: str, key: str) -> bytes | None:
        hit = self._prefetched.get((namespace, key))
        if hit is not None:
            self.ops.read(hit[0])
            return hit[1]
        self.flush_frames(protocol.encode_get(namespace, key))
        frame = self._reply()
        try:
            return protocol.decode_value(frame)
        except protocol.ProtocolError as exc:
            raise StateError(f"protocol: {exc}") from None

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        m = pb.WorkerMessage()
        m.range.namespace = namespace
        m.range.start = start
        m.range.end = end
        m.range.limit = limit
        r = self._ask(m, "range_reply").range_reply
        return [(kv.key, kv.value) for kv in r.items]

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        m = pb.WorkerMessage()
        m.history.namespace = namespace
        m.history.key = key
        m.history.limit = limit
        m.history.paged = start is not None
        m.history.start = start or 0
        m.history.no_values = not values
        m.history.gas_left = max(0, gas_left or 0)
        r = self._ask(m, "history_reply").history_reply
        return [
            t.HistoryEntry(e.tx_id, e.block, e.timestamp_ms, e.is_delete,
                           e.value if e.has_value else None, e.block_bytes)
            for e in r.entries
        ]

    def put(self, key: str, value: bytes) -> None:
        if self._prefetched:
            self._prefetched.pop((self._contract, key), None)
        self.ops.put(key, value)

    def delete(self, key: str) -> None:
        if self._prefetched:
            self._prefetched.pop((self._contract, key), None)
        self.ops.delete(key)


class _WarmHost:
    def get(self, namespace: str, key: str) -> bytes | None:
        return b'{"a":[1,"x",true,null]}'

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]:
        return [("b", b"1")]

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]:
        return [t.HistoryEntry("tx", 1, 1, False, b"2", 100)]

    def put(self, key: str, value: bytes) -> None:
        return None

    def delete(self, key: str) -> None:
        return None


def _warm_up(engine: Engine) -> None:
    """Exercise every code path once so nothing needs to be loaded after seccomp."""
    compiled = engine.load("warmup", _WARMUP)
    result = engine.run(
        compiled,
        contract="warmup",
        function="warm",
        args_json=b'{"n":3}',
        tx_id="tx",
        timestamp_ms=1,
        caller=t.CallerInfo("org", "role"),
        transient={"p": b'"x"'},
        gas_limit=1_000_000,
        limits=t.SandboxLimits(),
        host=_WarmHost(),
    )
    if not result.ok:
        raise SystemExit(f"worker warm-up failed: {result.reason} {result.message}")
    engine.forget("warmup")
    pb.WorkerMessage(result=pb.InvokeResult(ok=True)).SerializeToString()
    table = protocol.decode_prefetch(protocol.encode_prefetch([("a", "k", b"v"), ("a", "m", None)]))
    protocol.decode_value(protocol.encode_value(table[0][2]))
    ops = protocol.OpsBuilder()
    ops.put("k", b"v")
    ops.delete("k")
    ops.read(1)
    protocol.decode_ops(ops.take())
    protocol.decode_get(protocol.encode_get("a", "k"))
    pb.HostMessage.FromString(pb.HostMessage(invoke=pb.InvokeRequest()).SerializeToString())


def _limit_process(memory_bytes: int) -> None:
    if os.getuid() == 0:
        # never run contracts as root: drop to nobody (clears every capability)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
    if os.getppid() == 1:
        raise SystemExit("parent already gone")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    stack_hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    if stack_hard != resource.RLIM_INFINITY and stack_hard < STACK_BYTES:
        raise SystemExit(f"stack hard limit {stack_hard} is below the {STACK_BYTES} bytes "
                         "every contract worker runs with (raise `ulimit -Hs`)")
    resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, stack_hard))
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


class _CpuBudget:
    """Per-invocation RLIMIT_CPU: soft = CPU seconds spent so far + 1 + budget (capped by
    the hard limit).  The soft value only changes when a whole CPU second has passed, so
    the setrlimit call is skipped while it would set the same value."""

    def __init__(self) -> None:
        self._hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        self._soft = -1

    def set(self, seconds: int) -> None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime) + 1 + max(1, seconds)
        if self._hard != resource.RLIM_INFINITY:
            soft = min(soft, self._hard)
        if soft != self._soft:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, self._hard))
            self._soft = soft


def _result_message(r: t.InvocationResult, recycle: bool) -> bytes:
    m = pb.WorkerMessage()
    res = m.result
    res.ok = r.ok
    res.reason = r.reason
    res.message = r.message
    res.result_json = r.result_json
    res.gas_used = r.gas_used
    res.recycle = recycle
    for e in r.events:
        res.events.add(name=e.name, payload_json=e.payload_json)
    return m.SerializeToString()


def serve(checked: Engine, raw: Engine | None) -> None:
    """Answer invocations until the host closes the pipe (or a recycle is needed)."""
    reader = protocol.FrameReader(IN_FD)
    limits = t.SandboxLimits()
    budget = _CpuBudget()
    while True:
        try:
            frame = reader.read()
        except protocol.ProtocolError:
            return  # host closed the pipe
        msg = pb.HostMessage.FromString(frame)
        if msg.WhichOneof("kind") != "invoke":
            raise SystemExit("protocol: expected an invoke request")
        prefetch = protocol.decode_prefetch(reader.read())  # always follows the request
        req = msg.invoke
        if req.HasField("limits"):
            limits = protocol.limits_from_msg(req.limits)
        host = PipeHost(reader, req.contract, prefetch)
        if req.unchecked and raw is None:
            raise SystemExit("protocol: unchecked code refused")
        engine = raw if req.unchecked and raw is not None else checked
        budget.set(limits.cpu_seconds)  # covers compiling too
        compiled = engine.cached(req.code_hash)
        if compiled is None:
            if not req.source:
                out = pb.WorkerMessage()
                out.need_source.code_hash = req.code_hash
                protocol.write_frame(OUT_FD, out.SerializeToString())
                continue
            try:
                compiled = engine.load(req.code_hash, req.source)
            except ContractRejected as exc:
                protocol.write_frame(OUT_FD, _result_message(rejected_result(exc), False))
                continue
        recycle = False
        try:
            result = engine.run(
                compiled,
                contract=req.contract,
                function=req.function,
                args_json=req.args_json,
                tx_id=req.tx_id,
                timestamp_ms=req.timestamp_ms,
                caller=protocol.caller_from_msg(req.caller),
                transient=dict(req.transient),
                gas_limit=req.gas_limit,
                limits=limits,
                host=host,
            )
        except MemoryError:
            host.ops.clear()
            result = t.InvocationResult(
                False, t.MEMORY_LIMIT, "worker memory limit reached", b"", (),
                engine.meter.used()
            )
            recycle = True
        if result.reason == t.MEMORY_LIMIT:
            recycle = True  # a MemoryError was seen: start afresh
        host.flush_frames(_result_message(result, recycle))
        if recycle:
            return


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    allow_unchecked = "--allow-unchecked" in args
    memory = 0
    no_seccomp = "--no-seccomp" in args
    for a in args:
        if a.startswith("--memory="):
            memory = int(a.split("=", 1)[1])
    engine = Engine()
    _warm_up(engine)
    raw = Engine(skip_checks=True) if allow_unchecked else None
    _limit_process(memory)
    if not no_seccomp:
        seccomp_policy.install()
    ready = pb.WorkerMessage()
    ready.ready.pid = os.getpid()
    ready.ready.seccomp = not no_seccomp
    protocol.write_frame(OUT_FD, ready.SerializeToString())
    serve(engine, raw)
