"""Prometheus metrics of one peer (own CollectorRegistry: no module-level state)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rxchain.v1 import transaction_pb2

from node.peer.committer import CommittedBlock


class _SandboxCollector(Collector):
    """The contract sandbox's counters, read from ``Sandbox.stats()`` at each scrape."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily("rxchain_peer_sandbox_workers", "Live contract worker processes",
                                value=s.get("workers", 0))
        for key, doc in (("restarts", "Contract workers replaced (killed, crashed, timed out)"),
                         ("invocations", "Sandboxed contract invocations"),
                         ("prefetch_hits", "Contract reads served from the prefetch table "
                                           "(host round trips saved)"),
                         ("evictions", "Idle contract workers of one code replaced to serve "
                                       "another (many: fewer sandbox_workers than contracts)")):
            yield CounterMetricFamily(f"rxchain_peer_sandbox_{key}", doc, value=s.get(key, 0))
        by_cause = CounterMetricFamily(
            "rxchain_peer_sandbox_replacements",
            "Contract workers replaced, by cause (node/sandbox/runtime.py FAULT_CAUSES: a fault "
            "or a recycle, summing to restarts; EVICT_CAUSES: evictions)", labels=["cause"])
        for key in sorted(s):
            if key.startswith("replaced_"):
                by_cause.add_metric([key[len("replaced_"):]], s[key])
        yield by_cause


class PeerMetrics:
    """Height, commit latency, validation codes by reason, endorsements (rate() = per s)."""

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.height = Gauge("rxchain_peer_block_height", "Committed blocks", registry=r)
        self.cert_expiry = Gauge(
            "rxchain_peer_cert_expiry_timestamp_seconds",
            "Unix time this peer's certificate expires (its endorsements no longer count then)",
            registry=r)
        self.commit_seconds = Histogram(
            "rxchain_peer_commit_seconds", "Validate+commit latency per block", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.validation = Counter(
            "rxchain_peer_tx_validation", "Committed txs by validation code", ["code"], registry=r
        )
        self.endorsements = Counter(
            "rxchain_peer_endorsements", "Proposals endorsed (rate() gives endorsements/s)",
            registry=r,
        )
        self.submitted = Counter("rxchain_peer_gateway_submitted",
                                 "Envelopes accepted by the ordering service", registry=r)
        self.access_audit = Counter(
            "rxchain_peer_access_audit_records",
            "Access-audit records of key releases by result (granted, refused; write_failed: "
            "not written, the key was not released; suppressed: a refusal over its certificate's "
            "limit, counted in a RATE_LIMITED summary instead)", ["result"], registry=r,
        )
        self.deliver_failovers = Counter(
            "rxchain_peer_deliver_failovers", "Deliver stream failures by reason", ["reason"],
            registry=r,
        )
        info = Gauge("rxchain_peer_info", "Constant 1, labelled with the node", ["node"],
                     registry=r)
        info.labels(node=node).set(1)
        self._server: Any = None

    def on_commit(self, committed: CommittedBlock, seconds: float) -> None:
        """Record one committed block."""
        self.height.set(committed.result.number + 1)
        self.commit_seconds.observe(seconds)
        for code, n in Tally(committed.validated.codes).items():
            self.validation.labels(code=transaction_pb2.TxValidationCode.Name(code)).inc(n)

    def watch_sandbox(self, stats: Callable[[], dict[str, int]]) -> None:
        """Export the sandbox's workers / restarts / invocations / prefetch hits / evictions
        and its replacements by cause."""
        self.registry.register(_SandboxCollector(stats))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on ``port`` (0: do not serve)."""
        if port:
            self._server = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if isinstance(self._server, tuple):
            server, _thread = self._server
            server.shutdown()
            server.server_close()
