"""Multi-process fault tests: three orderer processes on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import time
import urllib.request
from collections import Counter

import pytest

from node.crypto.canonical import block_header_hash
from tests.orderer.cluster import (
    Client,
    OrdererProcs,
    Pump,
    all_serving,
    leader_of,
    make_network,
    tx_ids_of,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    net = make_network(tmp_path / "net", extra={"snapshot_interval_blocks": 5})
    procs = OrdererProcs(net)
    try:
        procs.start_all()
        yield procs, Client(net)
    finally:
        procs.close()
        for name in procs.names():
            print(f"===== {name}\n{procs.log_text(name)[-6000:]}")


def _hashes(client: Client, procs: OrdererProcs, name: str) -> list[bytes]:
    return [block_header_hash(b.header) for b in client.blocks(procs.target(name))]


def test_leader_kill_failover_catch_up_and_identical_stores(cluster):
    procs, client = cluster
    names = procs.names()
    all_serving(procs, client, names)
    leader = wait_until(lambda: leader_of(procs, client), 20, what="first leader")
    pump = Pump(procs, client)
    pump.start()
    try:
        wait_until(lambda: len(pump.accepted) >= 200, 30, what="envelopes before the kill")
        procs.kill(leader)  # kill -9 while the client keeps broadcasting
        survivors = [n for n in names if n != leader]

        def new_leader_elected() -> str | None:
            ld = leader_of(procs, client, survivors)
            return ld if ld and ld != leader else None

        new_leader = wait_until(new_leader_elected, 15, what="a new leader")
        count = len(pump.accepted)
        wait_until(lambda: len(pump.accepted) >= count + 200, 30,
                   what="ordering under the new leader")
    finally:
        pump.stop()
    assert new_leader in survivors
    # Restart the killed orderer: its log lags (and is behind snapshots taken every 5
    # blocks), so it must catch up through install-snapshot plus block fetch.
    procs.start(leader)
    target_height = max(client.status(procs.target(n)).height for n in survivors)
    wait_until(lambda: client.status(procs.target(leader), 1.0).height >= target_height, 30,
               what="the restarted orderer to catch up")
    # One more round so every node has the same final height.
    extra = [client.envelope() for _ in range(10)]
    resps = client.broadcast(procs.target(leader), [e for _, e in extra])
    assert all(r.accepted for r in resps), [r.reason for r in resps]
    pump.accepted.extend(tx for tx, _ in extra)
    final = max(client.status(procs.target(n)).height for n in names)
    for n in names:
        wait_until(lambda n=n: client.status(procs.target(n), 1.0).height >= final, 20,
                   what=f"{n} to reach height {final}")

    chains = {n: _hashes(client, procs, n) for n in names}
    assert chains[names[0]] == chains[names[1]] == chains[names[2]]
    blocks = client.blocks(procs.target(names[0]))
    # Chained correctly (block store checks on append, re-checked here end to end).
    for prev, cur in itertools.pairwise(blocks):
        assert cur.header.previous_hash == block_header_hash(prev.header)
        assert cur.header.number == prev.header.number + 1
    seen = Counter(tx for b in blocks[1:] for tx in tx_ids_of(b))
    assert all(c == 1 for c in seen.values()), "an envelope was ordered twice"
    missing = [tx for tx in pump.accepted if tx not in seen]
    assert not missing, f"{len(missing)} accepted envelopes are in no block"
    # Every refusal is a clear reason, never a hang or an unexplained failure.
    assert {reason for _, reason in pump.refused} <= {"SERVICE_UNAVAILABLE"}
    # Each orderer signed its copy of every block it ordered.
    assert all(len(b.metadata.orderer_signatures) >= 1 for b in blocks[1:])
    # Operations: Prometheus metrics on the metrics port.
    spec = next(n for n in procs.net.orderers() if n.name == new_leader)
    with urllib.request.urlopen(f"http://127.0.0.1:{spec.metrics_port}/metrics",
                                timeout=5) as resp:
        text = resp.read().decode()
    assert "rxchain_orderer_is_leader 1.0" in text
    assert f"rxchain_orderer_block_height {float(final)}" in text
    assert "rxchain_orderer_wal_fsync_seconds_count" in text
    assert 'rxchain_orderer_broadcast_accepted_total' in text


def test_quorum_loss_reports_unavailable_then_resumes(cluster):
    procs, client = cluster
    names = procs.names()
    all_serving(procs, client, names)
    resps = client.broadcast(procs.target(names[0]), [client.envelope()[1] for _ in range(5)])
    assert all(r.accepted for r in resps)
    leader = leader_of(procs, client)
    assert leader is not None
    followers = [n for n in names if n != leader]
    ids = {n.name: n.raft_id for n in procs.net.orderers()}
    # Graceful SIGTERM of the leader: it hands leadership over before exiting, so the
    # others name a new leader at once (no election timeout), and it exits cleanly.
    assert procs.terminate(leader) == 0
    st = client.status(procs.target(followers[0]))
    assert st.raft_leader not in (0, ids[leader]), st
    assert "hands leadership to" in procs.log_text(leader)
    # the log line an alert selects on (jq 'select(.event=="leadership_transfer")'): JSON members
    docs = [json.loads(line) for line in procs.log_text(leader).splitlines() if line.startswith("{")]
    handed = [d for d in docs if d.get("event") == "leadership_transfer"]
    assert handed and handed[-1]["orderer"] == ids[leader] and handed[-1]["target"] in set(ids.values()) - {ids[leader]}
    assert any(d.get("event") == "leader_elected" and isinstance(d.get("term"), int) for d in docs)
    # Now stop a second one: no quorum.
    procs.kill(followers[1])
    survivor = followers[0]
    time.sleep(1.0)
    start = time.monotonic()
    resps = client.broadcast(procs.target(survivor), [client.envelope()[1] for _ in range(3)],
                             timeout=30)
    elapsed = time.monotonic() - start
    assert [r.accepted for r in resps] == [False, False, False]
    assert {r.reason for r in resps} == {"SERVICE_UNAVAILABLE"}
    # Bounded: commit timeout (4 s in these configs) + leader wait (1 s), with slack.
    assert elapsed < 15, elapsed
    # Its block store is written without fsync (the WAL is synced): simulate losing the
    # tail of the last block file in the crash. Restart must repair and re-apply it.
    seg_dir = procs.net.home / "nodes" / followers[1] / "data" / "blocks"
    last_seg = sorted(seg_dir.glob("seg-*.blk"))[-1]
    with open(last_seg, "r+b") as f:
        f.truncate(max(0, last_seg.stat().st_size - 7))
    procs.start(followers[1])
    wait_until(lambda: leader_of(procs, client, [survivor, followers[1]]), 20,
               what="a leader after restart")

    def ordered() -> bool:
        rs = client.broadcast(procs.target(survivor), [client.envelope()[1]], timeout=10)
        return bool(rs[0].accepted)

    wait_until(ordered, 20, interval=0.2, what="ordering to resume")
    h0 = _hashes(client, procs, survivor)
    wait_until(lambda: _hashes(client, procs, followers[1]) == h0, 20,
               what="both live orderers identical")
    assert "torn tail" in procs.log_text(followers[1])
