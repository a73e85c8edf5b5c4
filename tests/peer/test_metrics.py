"""PeerMetrics: validation codes counted per block, sandbox counters read at each scrape."""

from __future__ import annotations

from prometheus_client import generate_latest
from rxchain.v1 import block_pb2, transaction_pb2

from node.ledger.ledger import CommitResult
from node.peer.committer import CommittedBlock
from node.peer.metrics import PeerMetrics
from node.peer.validator import ValidatedBlock


def _scrape(m: PeerMetrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in generate_latest(m.registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_codes_of_a_block_are_counted_and_height_follows() -> None:
    m = PeerMetrics("peer.t")
    V, M = transaction_pb2.VALID, transaction_pb2.MVCC_READ_CONFLICT
    for number, codes in ((3, [V, V, M, V]), (4, [M])):
        m.on_commit(CommittedBlock(ValidatedBlock(block_pb2.Block(), [], codes),
                                   CommitResult(number, b"s", b"h")), 0.004)
    got = _scrape(m)
    assert got['rxchain_peer_tx_validation_total{code="VALID"}'] == 3
    assert got['rxchain_peer_tx_validation_total{code="MVCC_READ_CONFLICT"}'] == 2
    assert got["rxchain_peer_block_height"] == 5
    assert got["rxchain_peer_commit_seconds_count"] == 2


def test_sandbox_counters_are_read_at_each_scrape() -> None:
    m = PeerMetrics("peer.t")
    stats = {"workers": 2, "restarts": 0, "invocations": 7, "prefetch_hits": 11, "evictions": 0}
    m.watch_sandbox(lambda: dict(stats))
    got = _scrape(m)
    assert got["rxchain_peer_sandbox_workers"] == 2
    assert got["rxchain_peer_sandbox_invocations_total"] == 7
    assert got["rxchain_peer_sandbox_prefetch_hits_total"] == 11
    assert got["rxchain_peer_sandbox_evictions_total"] == 0
    stats.update(restarts=1, invocations=9, workers=1, evictions=3)
    got = _scrape(m)
    assert (got["rxchain_peer_sandbox_restarts_total"], got["rxchain_peer_sandbox_invocations_total"],
            got["rxchain_peer_sandbox_workers"], got["rxchain_peer_sandbox_evictions_total"]) == (
        1, 9, 1, 3)


def test_sandbox_replacements_are_exported_by_cause() -> None:
    # a pool replacing workers said how many, not why (a cumulative CPU limit, memory
    # recycling, evictions...): each replaced_<cause> counter is a labelled series
    m = PeerMetrics("peer.t")
    stats = {"workers": 4, "restarts": 1, "evictions": 3, "replaced_rss": 1,
             "replaced_evict_spare": 2, "replaced_evict_missing": 1, "replaced_cpu_limit": 0}
    m.watch_sandbox(lambda: dict(stats))
    got = {k: v for k, v in _scrape(m).items() if k.startswith("rxchain_peer_sandbox_replacements")}
    assert got == {'rxchain_peer_sandbox_replacements_total{cause="cpu_limit"}': 0,
                   'rxchain_peer_sandbox_replacements_total{cause="evict_missing"}': 1,
                   'rxchain_peer_sandbox_replacements_total{cause="evict_spare"}': 2,
                   'rxchain_peer_sandbox_replacements_total{cause="rss"}': 1}
