"""--first-start and the orderer set's history: a voter that acknowledged blocks to an orderer
since taken out of the set, and then lost its data directory, is never confirmed new when the
flag is left on its command line -- not with its block store behind (it onboards again and
waits while an answer is ahead of it), and not when the raft id of the orderer that heard
from it was given to another orderer since (FIRST_START_REFUSED). Found by a review."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from node.config import load_node_config
from node.errors import RxError
from node.genesis import make_genesis
from node.orderer.server import OrdererServer, serve
from tests.orderer.cluster import Client, config_envelope, make_network, wait_until
from tests.orderer.inproc import LoggedMessages
from tests.orderer.test_onboard import ADMINS, _with_orderers


@pytest.mark.integration
def test_first_start_with_its_block_store_behind_does_not_miss_a_removed_leader_that_heard_from_it(
        tmp_path: Path) -> None:
    """Genesis orderers 1, 2 and X=3; X never ran. 1 and 2 order blocks; orderer 4 is added by a
    config update and leads. X is started with --first-start (rightly confirmed: nobody heard
    from it) and acknowledges blocks -- to leader 4 only (a follower sends nothing to another
    follower). X's data directory is lost; orderer 4 is taken out of the set (it still runs and
    its Status says it heard from X). The network is restarted (4 too): X comes up first with
    the flag left on its command line, its onboarding (one round, ``wait=False`` for a genesis orderer)
    finds nobody, and its check waits for the answers; 1 and 2 come back. X's block store
    holds the genesis block alone, so "every orderer any config since the genesis named" is
    {1, 2, 3}: orderer 4 is never asked, the answers' membership (1, 2, 3) does not name it,
    1 and 2 never heard from X -- it was confirmed new, though it acknowledged blocks. It is
    not confirmed (RAFT_STATE_LOST, or FIRST_START_UNANSWERED while it cannot know every
    orderer)."""
    net = make_network(tmp_path / "net", orderer_orgs=4, extra={"election_tick": 30})
    full = net.config
    start = _with_orderers(full, [1, 2, 3], full.sequence)
    net.genesis_path.write_bytes(make_genesis(start, int(time.time() * 1000)).SerializeToString())
    configs = {n.raft_id: load_node_config(net.node_config_path(n.name)) for n in net.orderers()}
    targets = {rid: f"127.0.0.1:{n.port}" for rid, n in zip(configs, net.orderers(), strict=True)}
    x = 3
    configs[x] = replace(configs[x], extra={**configs[x].extra, "first_start_wait_ms": 15_000})
    client = Client(net)
    servers: dict[int, OrdererServer] = {}
    events = LoggedMessages()
    log = logging.getLogger("node.orderer.server")
    level = log.level
    try:
        for rid in (1, 2):
            servers[rid] = serve(configs[rid])
        lead = wait_until(lambda: client.status(targets[1], 1.0).raft_leader or None, 20, what="a leader")
        answers = client.broadcast(targets[lead], [client.envelope()[1] for _ in range(3)])
        assert all(a.accepted for a in answers), answers
        [r] = client.broadcast(targets[lead], [config_envelope(
            net, _with_orderers(full, [1, 2, 3, 4], start.sequence + 1), ADMINS)])
        assert r.accepted, r.message
        servers[4] = serve(configs[4])
        wait_until(lambda: 4 in client.status(targets[1], 1.0).raft_voters, 30, what="4 a voter")

        def four_leads() -> bool:
            lead = client.status(targets[1], 1.0).raft_leader
            if lead == 4:
                return True
            if lead in servers:
                servers[lead].chain.hand_over_leadership()  # to the most caught-up: 4 on a tie
            return False

        wait_until(four_leads, 30, interval=0.5, what="orderer 4 leading")
        servers[x] = serve(configs[x], first_start=True)  # never ran: rightly confirmed
        answers = client.broadcast(targets[4], [client.envelope()[1] for _ in range(3)])
        assert all(a.accepted for a in answers), answers
        height = client.status(targets[4]).height
        wait_until(lambda: client.status(targets[x], 1.0).height >= height, 20, what="X caught up")
        wait_until(lambda: x in client.status(targets[4]).raft_heard_from, 20, what="4 hearing from X")
        assert not any(x in client.status(targets[r]).raft_heard_from for r in (1, 2))
        servers.pop(x).stop(0)
        shutil.rmtree(configs[x].data_dir)  # X's data directory lost

        [r] = client.broadcast(targets[4], [config_envelope(
            net, _with_orderers(full, [1, 2, 3], start.sequence + 2), ADMINS)])
        assert r.accepted, r.message
        wait_until(lambda: all(sorted(client.status(targets[r], 1.0).raft_voters) == [1, 2, 3]
                               for r in (1, 2)), 30, what="4's removal applied")
        assert x in client.status(targets[4]).raft_heard_from  # 4 runs, and says it heard from X

        for rid in (1, 2, 4):  # the network restarted: X comes up first
            servers.pop(rid).stop(0)
        log.addHandler(events)
        log.setLevel(logging.INFO)
        outcome: list[object] = []

        def again() -> None:
            try:
                outcome.append(serve(configs[x], first_start=True))  # the flag left on
            except BaseException as exc:  # reported below
                outcome.append(exc)

        thread = threading.Thread(target=again)
        thread.start()
        wait_until(lambda: any("raft_first_start_waiting" in e for e in events.seen) or outcome, 30,
                   what="X waiting for the answers")
        for rid in (1, 2, 4):
            servers[rid] = serve(configs[rid])
        thread.join(40)
        assert outcome, "X's start did not end"
        if isinstance(outcome[0], OrdererServer):
            servers[x] = outcome[0]
            height = servers[x].blocks.height()
            pytest.fail(f"orderer {x}, blank after acknowledging blocks to orderer 4, was confirmed new with "
                        f"--first-start though orderer 4 (running, removed from the set) heard from it: its "
                        f"block store was behind (height {height}) when it chose whom to ask")
        assert isinstance(outcome[0], RxError), outcome[0]
        assert outcome[0].reason in ("RAFT_STATE_LOST", "FIRST_START_UNANSWERED", "FIRST_START_REFUSED"), outcome[0]
    finally:
        log.removeHandler(events)
        log.setLevel(level)
        for server in servers.values():
            server.stop(0)


@pytest.mark.integration
def test_first_start_asks_the_former_holder_of_a_raft_id_given_to_another_orderer_since(tmp_path: Path) -> None:
    """Genesis orderers 1, 2 and X=3; X never ran. Orderer ins04 is added as raft id 4 and
    leads; X is started with --first-start (rightly confirmed) and acknowledges blocks -- to 4
    only. X's data directory is lost; ins04 is taken out of the set (it still runs, and its
    Status says it heard from X), and raft id 4 is given to another orderer, ins05, at another
    address (nothing in the config rules keeps a raft id to one orderer). X is started again,
    the flag left on its command line, its block store up to date. Asked by raft id, ins05
    answered for raft id 4, its record not naming X, and X was confirmed new, though it
    acknowledged blocks to the orderer that held raft id 4 before. A raft id held by more than
    one orderer now refuses the flag (FIRST_START_REFUSED: the Recovery procedure)."""
    net = make_network(tmp_path / "net", orderer_orgs=5, extra={"election_tick": 30})
    admins = ["ins01", "ins02", "ins03", "ins04"]  # MAJORITY(admin) of 6 organisations
    full = net.config
    start = _with_orderers(full, [1, 2, 3], full.sequence)
    net.genesis_path.write_bytes(make_genesis(start, int(time.time() * 1000)).SerializeToString())
    configs = {n.raft_id: load_node_config(net.node_config_path(n.name)) for n in net.orderers()}
    targets = {rid: f"127.0.0.1:{n.port}" for rid, n in zip(configs, net.orderers(), strict=True)}
    x = 3
    configs[x] = replace(configs[x], extra={**configs[x].extra, "first_start_wait_ms": 15_000})
    client = Client(net)
    servers: dict[int, OrdererServer] = {}
    try:
        for rid in (1, 2):
            servers[rid] = serve(configs[rid])
        lead = wait_until(lambda: client.status(targets[1], 1.0).raft_leader or None, 20, what="a leader")
        [r] = client.broadcast(targets[lead], [config_envelope(
            net, _with_orderers(full, [1, 2, 3, 4], start.sequence + 1), admins)])
        assert r.accepted, r.message
        servers[4] = serve(configs[4])
        wait_until(lambda: 4 in client.status(targets[1], 1.0).raft_voters, 30, what="4 a voter")

        def four_leads() -> bool:
            lead = client.status(targets[1], 1.0).raft_leader
            if lead == 4:
                return True
            if lead in servers:
                servers[lead].chain.hand_over_leadership()  # to the most caught-up: 4 on a tie
            return False

        wait_until(four_leads, 30, interval=0.5, what="orderer 4 leading")
        servers[x] = serve(configs[x], first_start=True)  # never ran: rightly confirmed
        answers = client.broadcast(targets[4], [client.envelope()[1] for _ in range(3)])
        assert all(a.accepted for a in answers), answers
        height = client.status(targets[4]).height
        wait_until(lambda: client.status(targets[x], 1.0).height >= height, 20, what="X caught up")
        wait_until(lambda: x in client.status(targets[4]).raft_heard_from, 20, what="4 hearing from X")
        assert not any(x in client.status(targets[r]).raft_heard_from for r in (1, 2))
        servers.pop(x).stop(0)
        shutil.rmtree(configs[x].data_dir)  # X's data directory lost

        [r] = client.broadcast(targets[4], [config_envelope(
            net, _with_orderers(full, [1, 2, 3], start.sequence + 2), admins)])
        assert r.accepted, r.message
        wait_until(lambda: all(sorted(client.status(targets[r], 1.0).raft_voters) == [1, 2, 3]
                               for r in (1, 2)), 30, what="ins04's removal applied")
        # raft id 4 given to ins05 (its own name, address and certificate)
        reused = _with_orderers(full, [1, 2, 3, 5], start.sequence + 3)
        for o in reused.orderers:
            if o.raft_id == 5:
                o.raft_id = 4

        def readded() -> bool:
            lead = client.status(targets[1], 1.0).raft_leader
            if not lead:
                return False
            [r] = client.broadcast(targets[lead], [config_envelope(net, reused, admins)])
            return r.accepted or "sequence" in r.message  # "still in Raft": again
        wait_until(readded, 30, interval=0.5, what="raft id 4 given to ins05")
        servers[5] = serve(replace(configs[5], raft_id=4))
        wait_until(lambda: sorted(client.status(targets[1], 1.0).raft_voters) == [1, 2, 3, 4], 40,
                   what="ins05 a voter as raft id 4")
        assert x in client.status(targets[4]).raft_heard_from  # ins04 runs, and says it heard from X
        assert x not in client.status(targets[5]).raft_heard_from

        try:
            servers[x] = serve(configs[x], first_start=True)  # the flag left on its command line
        except RxError as err:
            assert err.reason in ("RAFT_STATE_LOST", "FIRST_START_UNANSWERED", "FIRST_START_REFUSED"), err
            return
        pytest.fail(f"orderer {x}, blank after acknowledging blocks to raft id 4 (orderer ins04), was "
                    "confirmed new with --first-start: only ins05, which holds raft id 4 since, was asked")
    finally:
        for server in servers.values():
            server.stop(0)
