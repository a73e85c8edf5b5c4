"""An orderer's worst-case worker split (node.stream_caps): every client slot (``max_streams``),
every node slot (``max_node_streams``) and every Cluster slot (``max_cluster_streams``) held must
still leave a gRPC worker. A node.yaml over-committing the pool is refused at start
(BAD_CONFIG naming the keys): the other orderers' Raft streams then waited for a worker under a
flood of client streams. The sample consortium's orderers reserve what its 16 peers and 3
orderers hold at worst (34; the default 32 was short by two), and an orderer whose reserve is
short of its consortium logs ``node_reserve_short``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from netgen import generate, load_spec

from node.config import load_node_config
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.stream_caps import ClusterCaps, StreamCaps, reserve_need, reserve_short
from tests.foundation.conftest import FIXED_NOW, small_consortium

SAMPLE = Path(__file__).resolve().parents[2] / "network-config" / "consortium.yaml"


def _orderer_split(extra: dict[str, Any], workers: int) -> tuple[int, int, int]:
    """(clients, nodes, cluster) of an orderer with these node.yaml keys (as node.config does)."""
    cluster = ClusterCaps.from_extra(extra, workers).total
    caps = StreamCaps.from_extra(extra, workers, cluster=cluster)
    return caps.total, caps.nodes, cluster


@pytest.mark.parametrize("workers", [3, 8, 16, 32, 64, 100, 128, 130, 512, 4096])
def test_an_orderers_default_split_leaves_a_worker(workers: int) -> None:
    """Defaults never over-commit the pool (a small pool's Cluster cap and reserve share what the
    clients leave); the default 128 workers keep their split: 64, 32, 16 and 16 for unary."""
    clients, nodes, cluster = _orderer_split({}, workers)
    assert clients + nodes + cluster <= workers - 1 and cluster >= 1
    if workers == 128:
        assert (clients, nodes, cluster) == (64, 32, 16)


# a leader of three orderers holds the two followers' Step and ForwardBatch streams
THREE_ORDERERS_LEADER = 4


@pytest.mark.parametrize(("workers", "split"), [
    (3, (1, 0, 1)), (4, (1, 1, 1)), (8, (3, 1, 3)), (10, (4, 1, 4)), (16, (7, 1, 7)), (24, (11, 1, 11)),
    (32, (15, 1, 15)), (34, (16, 1, 16)), (35, (17, 1, 16)), (48, (24, 7, 16)), (64, (32, 15, 16)),
    (65, (32, 16, 16)), (128, (64, 32, 16)),
])
def test_a_small_pools_cluster_cap_keeps_what_it_held_within_what_the_clients_leave(
        workers: int, split: tuple[int, int, int]) -> None:
    """The other orderers' Cluster streams get what the clients leave first, up to the 16 (or
    an eighth) they had, and the default reserve the rest. Before (halving what the clients
    leave between them): 16 workers gave 3 Cluster slots, 32 gave 7 -- a leader of three
    orderers (two Step and two ForwardBatch streams) refused one follower's stream
    TOO_MANY_STREAMS for good (node.stream_caps.ClusterCaps.admit), where these pools had
    held 15 and 16. A short reserve bites only under a flood of client streams, and is told.
    ops1: the reserve is at least one slot wherever the pool has a worker for it (4 and more:
    taken from the clients' default share; it was 0 up to 34 workers)."""
    assert _orderer_split({}, workers) == split
    if workers >= 10:
        assert split[2] >= THREE_ORDERERS_LEADER
    if workers >= 4:
        assert split[1] >= 1


def _flood(caps: StreamCaps) -> int:
    """Client streams of distinct certificates until one is refused; how many got in."""
    n = 0
    while True:
        try:
            caps.acquire(StreamCaps.key_of(b"client-%d" % n), "Deliver")
        except RxError as err:
            assert err.reason == "TOO_MANY_STREAMS"
            return n
        n += 1


@pytest.mark.parametrize("workers", [4, 8, 16, 32])
def test_a_small_orderers_default_split_keeps_a_peer_streaming_under_a_client_flood(workers: int) -> None:
    """ops1: an orderer of 8, 16 or 32 workers (the default split: half for clients, the Cluster
    cap what they leave) reserved no slot for the nodes: clients holding every slot they may left a
    peer's Deliver refused TOO_MANY_STREAMS -- no block reached it. Now one slot is the nodes'."""
    cluster = ClusterCaps.from_extra({}, workers).total
    caps = StreamCaps.from_extra({}, workers, cluster=cluster)
    try:
        flooded = _flood(caps)
        caps.acquire(StreamCaps.key_of(b"peer.h01"), "Deliver", node=True)  # the reserve's slot (refused before)
        assert flooded == caps.total and flooded + 1 + cluster <= workers - 1  # a worker left for unary
        with pytest.raises(RxError) as err:  # (and no more: one slot, as the split says)
            caps.acquire(StreamCaps.key_of(b"peer.h02"), "Deliver", node=True)
        assert err.value.reason == "TOO_MANY_STREAMS"
    finally:
        caps.close()


def test_a_set_reserve_of_0_or_max_streams_keeps_its_split() -> None:
    """Only the defaults move: max_node_streams 0 set, or max_streams set, is what the node.yaml says."""
    assert _orderer_split({"max_node_streams": 0}, 16) == (8, 0, 7)
    assert _orderer_split({"max_streams": 8}, 16) == (8, 0, 7)
    assert _orderer_split({"max_streams_per_caller": 8}, 16) == (8, 0, 7)  # (one client's cap set to all)
    assert StreamCaps.from_extra({}, 3).nodes == 1  # a peer of 3 workers: 1 client, 1 node, 1 unary (was 0)


@pytest.mark.parametrize(("extra", "split"), [
    # a reserve set: the default Cluster cap fitted into what it and the clients leave (refused before)
    ({"grpc_workers": 100, "max_node_streams": 34}, (50, 34, 15)),
    ({"grpc_workers": 24, "max_node_streams": 8}, (12, 8, 3)),
])
def test_a_set_reserve_gets_the_default_cluster_cap_fitted(extra: dict[str, Any], split: tuple[int, int, int]) -> None:
    assert _orderer_split(extra, extra["grpc_workers"]) == split


@pytest.mark.parametrize(("extra", "fragment"), [
    # valid before: 64 + 63 < 128, and the 16 Cluster streams were not counted
    ({"max_node_streams": 63}, "extra.max_node_streams must be between 0 and grpc_workers - 1 - max_streams - "
                               "max_cluster_streams (47), not 63"),
    ({"max_node_streams": 48}, "(47), not 48"),
    # clients alone leave the Cluster streams fewer workers than their cap
    ({"max_streams": 120}, "extra.max_streams (120) and max_cluster_streams (16) must together be less"),
    ({"max_cluster_streams": 64}, "extra.max_streams (64) and max_cluster_streams (64)"),
])
def test_an_orderer_over_committing_its_workers_is_refused(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RxError) as info:
        _orderer_split(extra, 128)
    assert info.value.reason == "BAD_CONFIG" and fragment in info.value.message, info.value.message
    assert "Cluster streams (Raft)" in info.value.message


def test_the_same_keys_fit_exactly_and_a_peer_has_no_cluster_streams() -> None:
    """The largest reserve that fits is taken; a peer's pool holds no Cluster streams, so its
    rule is unchanged (max_streams + max_node_streams < grpc_workers)."""
    assert _orderer_split({"max_node_streams": 47}, 128) == (64, 47, 16)
    assert _orderer_split({"max_streams": 100}, 128) == (100, 11, 16)  # the default reserve fitted
    assert StreamCaps.from_extra({"max_node_streams": 63}, 128).nodes == 63


def test_a_refused_split_is_refused_at_load(tmp_path: Path) -> None:
    """Through node.config (what the binary runs before anything starts): the orderer's
    node.yaml is refused naming its path; the same keys in a peer's load."""
    net = generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    for name, refused in (("orderer.ins01", True), ("peer.h01", False)):
        path = net.node_config_path(name)
        doc = yaml.safe_load(path.read_text())
        doc["extra"] = {"max_streams": 32, "max_node_streams": 31, "grpc_workers": 64}
        path.write_text(yaml.safe_dump(doc))
        if refused:
            with pytest.raises(RxError) as info:
                load_node_config(path)
            assert info.value.reason == "BAD_CONFIG" and str(path) in info.value.message
            assert "extra.max_node_streams" in info.value.message
        else:
            assert load_node_config(path).stream_caps().nodes == 31


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate(load_spec(SAMPLE), tmp_path_factory.mktemp("sample"), clock=lambda: FIXED_NOW)


def test_the_sample_orderers_reserve_what_its_nodes_hold_at_worst(sample: Any, caplog: Any) -> None:
    """16 peers (a Deliver and a Broadcast stream each on one orderer at worst) and 2 other
    orderers' Deliver: 34 node streams. The sample's orderers reserved the default 32."""
    cfg = config_from_genesis(read_genesis(sample.genesis_path))
    peers, orderers = len(cfg.peers), len(cfg.orderers)
    assert (peers, orderers, reserve_need(peers, orderers)) == (16, 3, 34)
    for o in cfg.orderers:
        nc = load_node_config(sample.node_config_path(o.name))
        caps = nc.stream_caps()
        cluster = nc.cluster_caps().total
        assert caps.nodes >= 34, (o.name, caps.nodes)
        assert caps.total == 64 and cluster == 16  # the clients' and other orderers' shares unchanged
        assert nc.grpc_workers - caps.total - caps.nodes - cluster >= 16  # unary calls keep 16
        with caplog.at_level(logging.WARNING, logger="node.stream_caps"):
            assert reserve_short(caps, peers, orderers, o.name) == 0
    assert "node_reserve_short" not in caplog.text
    # the peers keep their defaults: their reserve (16) holds the other 15 peers' endorsement streams
    for p in cfg.peers:
        assert "extra" not in yaml.safe_load(sample.node_config_path(p.name).read_text())


def test_a_short_reserve_is_told_at_start(caplog: Any) -> None:
    """A warning naming the reserve and the need, not a refusal (a config update adds peers
    while the orderers run; module doc of node.stream_caps)."""
    caps = StreamCaps.from_extra({}, 128, cluster=16)
    with caplog.at_level(logging.WARNING, logger="node.stream_caps"):
        assert reserve_short(caps, 16, 3, "orderer.x") == 2
        assert reserve_short(caps, 15, 3, "orderer.x") == 0
    lines = [r.getMessage() for r in caplog.records if "node_reserve_short" in r.getMessage()]
    assert len(lines) == 1 and "reserve=32 need=34 peers=16 orderers=3" in lines[0], lines
