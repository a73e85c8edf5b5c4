"""Prometheus metrics of one orderer (own CollectorRegistry: no module-level state)."""

from __future__ import annotations

import re
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# A refusal reason labels ``rxchain_orderer_broadcast_rejected`` only if it looks like a reason
# code and is one of the first MAX_REASON_LABELS seen; any other counts as OTHER. A follower
# answers with the reason the leader (another organisation's orderer) gave: each new one
# would otherwise add a label, for as long as the process runs.
MAX_REASON_LABELS = 32
REASON_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,47}")
OTHER_REASON = "OTHER"


class OrdererMetrics:
    """The orderer's gauges, counters and histograms."""

    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = {"node": node}
        r = self.registry
        self.is_leader = Gauge("rxchain_orderer_is_leader", "1 if this orderer leads", registry=r)
        self.term = Gauge("rxchain_orderer_raft_term", "Current Raft term", registry=r)
        self.cert_expiry = Gauge(
            "rxchain_orderer_cert_expiry_timestamp_seconds",
            "Unix time this orderer's certificate expires (from protocol version 2 its block "
            "signatures no longer count then: rotate it before)", registry=r)
        self.commit_index = Gauge("rxchain_orderer_raft_commit_index", "Raft commit index",
                                  registry=r)
        self.applied_index = Gauge("rxchain_orderer_raft_applied_index", "Raft applied index",
                                   registry=r)
        self.height = Gauge("rxchain_orderer_block_height", "Blocks in the block store",
                            registry=r)
        self.blocks = Counter("rxchain_orderer_blocks", "Blocks appended", registry=r)
        self.envelopes = Counter("rxchain_orderer_envelopes_ordered",
                                 "Envelopes in appended blocks (rate() gives envelopes/s)",
                                 registry=r)
        self.accepted = Counter("rxchain_orderer_broadcast_accepted",
                                "Broadcast envelopes answered accepted", registry=r)
        self.rejected = Counter("rxchain_orderer_broadcast_rejected",
                                "Broadcast envelopes refused, by reason", ["reason"], registry=r)
        self.fsync_seconds = Histogram(
            "rxchain_orderer_wal_fsync_seconds", "WAL fsync latency", registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.consensus_dropped = Counter(
            "rxchain_orderer_consensus_dropped",
            "Consensus messages dropped, by reason (non_member, bad_sender, invalid, backlog)",
            ["reason"], registry=r,
        )
        self.release_statements_refused = Counter(
            "rxchain_orderer_release_statements_refused",
            "Peers' release statements refused (told or relayed), by reason (malformed, other_name, "
            "other_certificate, other_network, not_a_peer, bad_signature, ahead)",
            ["reason"], registry=r,
        )
        self.blocks_rejected = Counter("rxchain_orderer_blocks_rejected",
                                       "Committed entries that were not a valid next block",
                                       registry=r)
        self.clock_offset_ms = Gauge(
            "rxchain_orderer_clock_offset_ms",
            "Another orderer's wall clock minus this one's, from its latest Raft message",
            ["orderer"], registry=r)
        self.clock_handovers = Counter(
            "rxchain_orderer_clock_handovers",
            "Leaderships handed over because a quorum of the orderers disagreed with this clock",
            registry=r)
        self.followers_lost_state = Counter(
            "rxchain_orderer_followers_lost_state",
            "Followers this leader found to have lost Raft entries they had acknowledged",
            ["orderer"], registry=r)
        self._reasons: set[str] = set()
        self._reasons_lock = threading.Lock()
        self.node_info = Gauge("rxchain_orderer_info", "Constant 1, labelled with the node",
                               list(labels), registry=r)
        self.node_info.labels(**labels).set(1)
        self._server: Any = None

    def count_rejected(self, reason: str) -> None:
        """Count a refused broadcast envelope by reason (bounded labels, see MAX_REASON_LABELS)."""
        with self._reasons_lock:
            if reason not in self._reasons:
                if len(self._reasons) >= MAX_REASON_LABELS or not REASON_CODE.fullmatch(reason):
                    reason = OTHER_REASON
                else:
                    self._reasons.add(reason)
        self.rejected.labels(reason=reason).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on ``port`` (0: do not serve)."""
        if port:
            self._server = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if isinstance(self._server, tuple):
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=2)
        self._server = None
