"""--first-start and the orderer set's history: a voter that acknowledged blocks to an orderer
since taken out of the set, and then lost its data directory, is never confirmed new when the
flag is left on its command line -- not with its block store behind (it onboards again and
waits while an answer is ahead of it), and not when the raft id of the orderer that heard
from it was given to another orderer since (FIRST_START_REFUSED). Found by a review."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from node.errors import RxError
from node.orderer.server import OrdererServer, serve
from tests.orderer.cluster import config_envelope, wait_until
from tests.orderer.founders import Founders, X, founders, restart_x_first
from tests.orderer.test_onboard import ADMINS, _with_orderers


def _heard_only_by_four_then_lost(f: Founders, admins: list[str]) -> None:
    """1 and 2 order blocks; orderer 4 is added by a config update and leads; X starts with
    --first-start (rightly confirmed: nobody heard from it) and acknowledges blocks -- to leader
    4 only (a follower sends nothing to another follower); X's data directory is lost; 4 is
    taken out of the orderer set (it still runs and says it heard from X)."""
    client, targets, servers, full, start = f.client, f.targets, f.servers, f.full, f.start
    for rid in (1, 2):
        servers[rid] = serve(f.configs[rid])
    lead = wait_until(lambda: client.status(targets[1], 1.0).raft_leader or None, 20, what="a leader")
    answers = client.broadcast(targets[lead], [client.envelope()[1] for _ in range(3)])
    assert all(a.accepted for a in answers), answers
    [r] = client.broadcast(targets[lead], [config_envelope(
        f.net, _with_orderers(full, [1, 2, 3, 4], start.sequence + 1), admins)])
    assert r.accepted, r.message
    servers[4] = serve(f.configs[4])
    wait_until(lambda: 4 in client.status(targets[1], 1.0).raft_voters, 30, what="4 a voter")

    def four_leads() -> bool:
        lead = client.status(targets[1], 1.0).raft_leader
        if lead == 4:
            return True
        if lead in servers:
            servers[lead].chain.hand_over_leadership()  # to the most caught-up: 4 on a tie
        return False

    wait_until(four_leads, 30, interval=0.5, what="orderer 4 leading")
    servers[X] = serve(f.configs[X], first_start=True)  # never ran: rightly confirmed
    answers = client.broadcast(targets[4], [client.envelope()[1] for _ in range(3)])
    assert all(a.accepted for a in answers), answers
    height = client.status(targets[4]).height
    wait_until(lambda: client.status(targets[X], 1.0).height >= height, 20, what="X caught up")
    wait_until(lambda: X in client.status(targets[4]).raft_heard_from, 20, what="4 hearing from X")
    assert not any(X in client.status(targets[r]).raft_heard_from for r in (1, 2))
    servers.pop(X).stop(0)
    shutil.rmtree(f.configs[X].data_dir)  # X's data directory lost
    [r] = client.broadcast(targets[4], [config_envelope(
        f.net, _with_orderers(full, [1, 2, 3], start.sequence + 2), admins)])
    assert r.accepted, r.message
    wait_until(lambda: all(sorted(client.status(targets[r], 1.0).raft_voters) == [1, 2, 3]
                           for r in (1, 2)), 30, what="4's removal applied")
    assert X in client.status(targets[4]).raft_heard_from  # 4 runs, and says it heard from X


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
    f = founders(tmp_path, 15_000, orderer_orgs=4, extra={"election_tick": 30})
    x = X
    try:
        _heard_only_by_four_then_lost(f, ADMINS)
        outcome = restart_x_first(f, (1, 2, 4))
        if isinstance(outcome, OrdererServer):
            pytest.fail(f"orderer {x}, blank after acknowledging blocks to orderer 4, was confirmed new with "
                        f"--first-start though orderer 4 (running, removed from the set) heard from it: its "
                        f"block store was behind (height {outcome.blocks.height()}) when it chose whom to ask")
        assert isinstance(outcome, RxError), outcome
        assert outcome.reason in ("RAFT_STATE_LOST", "FIRST_START_UNANSWERED", "FIRST_START_REFUSED"), outcome
    finally:
        f.stop()


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
    f = founders(tmp_path, 15_000, orderer_orgs=5, extra={"election_tick": 30})
    admins = ["ins01", "ins02", "ins03", "ins04"]  # MAJORITY(admin) of 6 organisations
    client, targets, servers, configs, net, full, start, x = (
        f.client, f.targets, f.servers, f.configs, f.net, f.full, f.start, X)
    try:
        _heard_only_by_four_then_lost(f, admins)
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
        f.stop()
