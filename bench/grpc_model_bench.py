"""Transport model: CPU per streamed message for gRPC Python's threaded API and its asyncio API.

``python -m bench.grpc_model_bench`` writes ``bench/results/grpc_model.json``.

The nodes use the threaded (``grpc.server`` + thread pool) API: every message crosses from
gRPC's polling thread to a handler thread, and the node then hands it on to its own
threads. ``grpc.aio`` runs handlers on one event loop instead. This benchmark measures what
moving to it would buy, before anyone rewrites a node for it: a server process echoes 1 kB
messages on one bidirectional stream, a client process keeps ``window`` of them in flight,
and both processes' CPU (``/proc`` utime+stime, from the first message to the last) is
divided by the messages. Every combination of threaded/asyncio server and client runs,
rounds alternating; reported per message and as the asyncio/threaded ratio per side.
Loopback without TLS: the nodes add TLS on top, the same for both APIs.

It also measures the cost of one hand-off, the unit the e2e benchmark counts per transaction
(context switches): two threads passing a token through ``queue.SimpleQueue`` and two
processes passing a byte through pipes, CPU (all threads/processes) per one-way hand-off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import IO, Any

import grpc
from netgen.ports import free_base_port

from bench.common import write_result
from bench.procstat import process_cpu_s

SIZE = 1000
KINDS = ("threaded", "asyncio")
METHOD = "/rxbench.Echo/Stream"


def _same(b: bytes) -> bytes:
    return b


def _handler(behaviour: Any) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        "rxbench.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(behaviour, _same, _same)})


def _serve_threaded(port: int) -> None:
    def echo(requests: Iterator[bytes], _ctx: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_handler(echo),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    sys.stdin.readline()
    server.stop(0)


async def _serve_asyncio(port: int) -> None:
    async def echo(requests: AsyncIterator[bytes], _ctx: grpc.aio.ServicerContext[bytes, bytes]
                   ) -> AsyncIterator[bytes]:
        async for m in requests:
            yield m

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(echo),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await server.stop(0)


def _client_threaded(port: int, n: int, window: int, server_pid: int) -> tuple[float, float, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(METHOD, request_serializer=_same, response_deserializer=_same)
        slots = threading.Semaphore(window)
        msg = b"x" * SIZE

        def requests() -> Iterator[bytes]:
            for _ in range(n):
                if not slots.acquire(timeout=30):
                    return
                yield msg

        c0, s0, t0 = process_cpu_s(os.getpid()), process_cpu_s(server_pid), time.monotonic()
        got = 0
        for _ in call(requests(), timeout=120):
            got += 1
            slots.release()
        c1, s1, t1 = process_cpu_s(os.getpid()), process_cpu_s(server_pid), time.monotonic()
    if got != n:
        raise RuntimeError(f"{got} of {n} echoes")
    return c1 - c0, s1 - s0, t1 - t0


async def _client_asyncio(port: int, n: int, window: int, server_pid: int) -> tuple[float, float, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(METHOD, request_serializer=_same, response_deserializer=_same)(
            None, timeout=120)  # None: requests are written with call.write
        slots = asyncio.Semaphore(window)
        msg = b"x" * SIZE

        async def send() -> None:
            for _ in range(n):
                await asyncio.wait_for(slots.acquire(), 30)
                await call.write(msg)
            await call.done_writing()

        c0, s0, t0 = process_cpu_s(os.getpid()), process_cpu_s(server_pid), time.monotonic()
        writer = asyncio.ensure_future(send())
        got = 0
        async for _ in call:
            got += 1
            slots.release()
        await writer
        c1, s1, t1 = process_cpu_s(os.getpid()), process_cpu_s(server_pid), time.monotonic()
    if got != n:
        raise RuntimeError(f"{got} of {n} echoes")
    return c1 - c0, s1 - s0, t1 - t0


def _read_within(stream: IO[bytes], timeout_s: float, line: bool = False) -> bytes:
    """One byte (or one line) from a child's pipe, or RuntimeError after ``timeout_s``."""
    ready, _, _ = select.select([stream], [], [], timeout_s)
    if not ready:
        raise RuntimeError(f"no answer from the child process in {timeout_s} s")
    return stream.readline() if line else stream.read(1)


def handoff_us(n: int = 20000) -> dict[str, float]:
    """CPU microseconds per one-way hand-off: thread to thread, and process to process."""
    ping: queue.SimpleQueue[int] = queue.SimpleQueue()
    pong: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        for _ in range(n):
            pong.put(ping.get(timeout=30))

    t = threading.Thread(target=echo)
    c0 = time.process_time()
    t.start()
    for i in range(n):
        ping.put(i)
        pong.get(timeout=30)
    t.join(30)
    threads_us = 1e6 * (time.process_time() - c0) / (2 * n)
    with subprocess.Popen(
        [sys.executable, "-c", "import sys\nr, w = sys.stdin.buffer, sys.stdout.buffer\n"
         f"for _ in range({n + 1}):\n    w.write(r.read(1)); w.flush()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"x")  # one exchange first: the child's start-up is not counted
            proc.stdin.flush()
            _read_within(proc.stdout, 30)
            c0, s0 = time.process_time(), process_cpu_s(proc.pid)
            for _ in range(n):
                proc.stdin.write(b"x")
                proc.stdin.flush()
                proc.stdout.read(1)
            c1, s1 = time.process_time(), process_cpu_s(proc.pid)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    processes_us = 1e6 * ((c1 - c0) + (s1 - s0)) / (2 * n)
    return {"threads_cpu_us_per_handoff": round(threads_us, 1),
            "processes_cpu_us_per_handoff": round(processes_us, 1)}


def one_round(server: str, client: str, n: int, window: int) -> dict[str, float]:
    """One server process, one stream of ``n`` echoes; CPU microseconds per message."""
    port = free_base_port(1, offsets=(0,))
    with subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_model_bench", "--serve", server, "--port", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            if _read_within(proc.stdout, 60, line=True).strip() != b"ready":
                raise RuntimeError("echo server did not start")
            if client == "threaded":
                c, s, wall = _client_threaded(port, n, window, proc.pid)
            else:
                c, s, wall = asyncio.run(_client_asyncio(port, n, window, proc.pid))
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return {"client_cpu_us_per_msg": 1e6 * c / n, "server_cpu_us_per_msg": 1e6 * s / n, "msg_per_s": n / wall}


def main(argv: list[str] | None = None) -> int:
    """Run every combination, ``rounds`` times each, interleaved; write the JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.grpc_model_bench")
    ap.add_argument("--n", type=int, default=10000, help="messages per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--windows", default="1,64", help="messages in flight, comma-separated levels")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        if args.serve == "threaded":
            _serve_threaded(args.port)
        else:
            asyncio.run(_serve_asyncio(args.port))
        return 0
    handoffs = [handoff_us() for _ in range(args.rounds)]
    handoff = {k: round(statistics.median(h[k] for h in handoffs), 1) for k in handoffs[0]}
    print(f"hand-off: {handoff}", flush=True)
    levels: list[dict[str, Any]] = []
    for window in (int(w) for w in args.windows.split(",")):
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for server in KINDS:
                for client in KINDS:
                    runs.setdefault(f"{server}_server_{client}_client", []).append(
                        one_round(server, client, args.n, window))
        med = {k: {m: round(statistics.median(r[m] for r in v), 1) for m in v[0]} for k, v in runs.items()}
        tt, aa = med["threaded_server_threaded_client"], med["asyncio_server_asyncio_client"]
        level = {
            "window": window,
            "by_combination": med,
            # (a CPU figure of 0 is below one clock tick: too few messages, see --n)
            "ratio_server_cpu_asyncio_over_threaded": round(
                aa["server_cpu_us_per_msg"] / max(tt["server_cpu_us_per_msg"], 1e-9), 3),
            "ratio_client_cpu_asyncio_over_threaded": round(
                aa["client_cpu_us_per_msg"] / max(tt["client_cpu_us_per_msg"], 1e-9), 3),
        }
        levels.append(level)
        print(f"window {window}: threaded server {tt['server_cpu_us_per_msg']} us/msg, client "
              f"{tt['client_cpu_us_per_msg']}; asyncio server {aa['server_cpu_us_per_msg']}, client "
              f"{aa['client_cpu_us_per_msg']} (ratios {level['ratio_server_cpu_asyncio_over_threaded']}, "
              f"{level['ratio_client_cpu_asyncio_over_threaded']})", flush=True)
    top = levels[-1]
    path = write_result("grpc_model", {
        **handoff,
        "message_bytes": SIZE, "messages_per_round": args.n, "rounds": args.rounds, "levels": levels,
        "ratio_server_cpu_asyncio_over_threaded": top["ratio_server_cpu_asyncio_over_threaded"],
        "ratio_client_cpu_asyncio_over_threaded": top["ratio_client_cpu_asyncio_over_threaded"],
        "threaded_cpu_us_per_msg_both_sides": round(
            top["by_combination"]["threaded_server_threaded_client"]["server_cpu_us_per_msg"]
            + top["by_combination"]["threaded_server_threaded_client"]["client_cpu_us_per_msg"], 1),
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
