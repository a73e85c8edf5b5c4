"""Every metric the README's Operations section names is one a node serves under that name:
an alert or dashboard written from the README must match something."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from node.orderer.metrics import OrdererMetrics
from node.peer.metrics import PeerMetrics

README = Path(__file__).resolve().parents[2] / "README.md"


def _served(registry: CollectorRegistry) -> set[str]:
    return {line.split()[2] for line in generate_latest(registry).decode().splitlines()
            if line.startswith("# TYPE ")}


def test_readme_metric_names_are_served() -> None:
    peer = PeerMetrics("peer.t")
    peer.watch_sandbox(lambda: {"workers": 1, "restarts": 0, "invocations": 0, "prefetch_hits": 0})
    served = _served(peer.registry) | _served(OrdererMetrics("orderer.t").registry)
    named = set(re.findall(r"`(rxchain_(?:peer|orderer)_[a-z_]+)", README.read_text()))
    assert len(named) > 20
    assert sorted(named - served) == []
