"""Cost of the access-audit record (node.peer.audit) on an endorsement.

``python -m bench.audit_bench [--n N] [--rounds R]`` writes ``bench/results/audit.json``.

``prescription.get_key`` is on the story's path (the pharmacy and the insurer each fetch a key,
submitted: 2 of the 7 transactions, each endorsed by two peers), so every one of those
endorsements now writes one synced LevelDB batch before it answers. This bench endorses the
same proposals in this process (``Endorser.endorse``: checks, simulation, signature; the
``_lifecycle.approvals`` query, so no sandbox: the cheapest endorsement there is, which makes
the ratio an upper bound) with and without an audit log that records every one of them
(fsync on, on this machine's disk), rounds alternating. Reported per endorsement: the calling
thread's CPU and the wall time (the fsync waits off-CPU), and the ratios audited / plain;
``append_*`` is ``AccessLog.append`` alone.

Concurrency (``--threads T``, default 8): the peer endorses on many gRPC worker threads, and
appends are group-committed (one synced batch for every record queued meanwhile). Measured with
T threads sharing the same work: ``threaded_*_wall_us`` per endorsement (plain and audited) and
``threaded_append_wall_us`` per ``AccessLog.append`` -- wall time over all threads, i.e. the
inverse of the throughput.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from netgen import generate
from rxchain.v1 import transaction_pb2

from bench.common import write_result
from bench.endorse_bench import _NoSandbox, _proposal
from bench.txbuild import SMALL_CONSORTIUM, node_signer, user_signer
from node.crypto.signing import Verifier
from node.genesis import read_genesis
from node.ledger.ledger import Ledger
from node.peer.audit import GRANTED, AccessLog, Auditor, Caller
from node.peer.config_view import ConfigView
from node.peer.endorser import Endorser
from node.peer.lifecycle import Lifecycle


class _EveryCall(Auditor):
    """Records every call (the bench's proposals stand in for get_key)."""

    @staticmethod
    def audited(contract: str, function: str) -> bool:
        return True


def _measure(endorser: Endorser, proposals: list[transaction_pb2.SignedProposal]) -> tuple[float, float]:
    c0, w0 = time.thread_time(), time.perf_counter()
    for signed in proposals:
        endorser.endorse(signed)
    n = len(proposals)
    return 1e6 * (time.thread_time() - c0) / n, 1e6 * (time.perf_counter() - w0) / n


def threaded(work: Callable[[Any], object], items: Sequence[Any], threads: int) -> float:
    """Wall microseconds per item with ``threads`` threads taking ``items`` in turn."""
    chunks = [items[i::threads] for i in range(threads)]

    def one(chunk: Sequence[Any]) -> None:
        for item in chunk:
            work(item)

    workers = [threading.Thread(target=one, args=(c,)) for c in chunks]
    w0 = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return 1e6 * (time.perf_counter() - w0) / len(items)


def run(n: int, rounds: int, threads: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        home = Path(tmp) / "net"
        generate(SMALL_CONSORTIUM, home)
        signer = user_signer(home, "h01", "dr-a")
        rng = random.Random(7)
        now = int(time.time() * 1000)
        proposals = [_proposal(signer, SMALL_CONSORTIUM["consortium_id"], rng, now)  # type: ignore[arg-type]
                     for _ in range(n)]
        ledger = Ledger(Path(tmp) / "ledger", fsync=False)
        log = AccessLog(Path(tmp) / "audit", lambda: int(time.time() * 1000), sync=True)
        try:
            ledger.commit_genesis(read_genesis(home / "genesis.block"))
            peer = node_signer(home, "peer.p01", "p01")

            def endorser(audit: Auditor | None) -> Endorser:
                return Endorser(ledger, ConfigView(ledger.state, Verifier()), peer, _NoSandbox(), Lifecycle(),
                                lambda: int(time.time() * 1000), audit=audit)

            plain, audited = endorser(None), endorser(_EveryCall(log))
            _measure(plain, proposals[:50])
            _measure(audited, proposals[:50])
            rows: dict[str, list[tuple[float, float]]] = {"plain": [], "audited": []}
            for _ in range(rounds):
                rows["plain"].append(_measure(plain, proposals))
                rows["audited"].append(_measure(audited, proposals))
            who = Caller("h01", "doctor", "dr-a", signer.cert_der, True)
            c0, w0 = time.thread_time(), time.perf_counter()
            for i in range(n):
                log.append(who, "prescription", "get_key", f"RX-{i}", GRANTED, 1, "t" * 64, 1)
            append_cpu, append_wall = 1e6 * (time.thread_time() - c0) / n, 1e6 * (time.perf_counter() - w0) / n
            fresh = [_proposal(signer, SMALL_CONSORTIUM["consortium_id"], rng, now)  # type: ignore[arg-type]
                     for _ in range(2 * n * rounds)]
            th: dict[str, list[float]] = {"plain": [], "audited": [], "append": []}
            for r in range(rounds):
                batch = fresh[2 * n * r:2 * n * (r + 1)]
                th["plain"].append(threaded(plain.endorse, batch[:n], threads))
                th["audited"].append(threaded(audited.endorse, batch[n:], threads))
                th["append"].append(threaded(
                    lambda i: log.append(who, "prescription", "get_key", f"RX-{i}", GRANTED, 1, "t" * 64, 1),
                    range(n), threads))
        finally:
            log.close()
            ledger.close()

    def med(mode: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[mode])

    return {
        "n": n, "rounds": rounds,
        "plain_cpu_us": med("plain", 0), "audited_cpu_us": med("audited", 0),
        "plain_wall_us": med("plain", 1), "audited_wall_us": med("audited", 1),
        "cpu_ratio": med("audited", 0) / med("plain", 0), "wall_ratio": med("audited", 1) / med("plain", 1),
        "per_round": rows, "append_cpu_us": append_cpu, "append_wall_us": append_wall,
        "threads": threads, "threaded_plain_wall_us": statistics.median(th["plain"]),
        "threaded_audited_wall_us": statistics.median(th["audited"]),
        "threaded_wall_ratio": statistics.median(th["audited"]) / statistics.median(th["plain"]),
        "threaded_append_wall_us": statistics.median(th["append"]), "threaded_per_round": th,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=8)
    a = p.parse_args(argv)
    res = run(a.n, a.rounds, a.threads)
    write_result("audit", res)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()
           if k not in ("per_round", "threaded_per_round")})


if __name__ == "__main__":
    main()
