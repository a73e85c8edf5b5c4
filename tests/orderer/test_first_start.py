"""--first-start asks every orderer any config named whom it heard from, and a leader just
elected takes no config update before it may cut (cases a review found)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from node.config import load_node_config
from node.errors import RxError
from node.orderer.server import OrdererServer, serve
from node.orderer.statecheck import Verdict, judge
from node.orderer.ticket import Ticket
from node.raft.types import ConfState
from tests.orderer.cluster import Client, config_envelope, make_network, set_extra, wait_until, without_orderer
from tests.orderer.inproc import Collect, Leader
from tests.orderer.test_config_held import ADMINS
from tests.orderer.test_statecheck import ans


def test_first_start_is_not_new_while_answers_still_count_a_voter_that_did_not_answer() -> None:
    """Five voters 1-5; leader 1 counted blank orderer 5's acknowledgements (5 only ever
    answered leader 1, so only 1's record names it) and committed, with 3 and 5, an entry and
    then its own removal; 2 and 4 lag and have applied neither. Orderer 5 lost its data
    directory and is started again with --first-start left on its command line. Orderer 1 is
    out of the set (stopped, and not among the targets anyway: membership.targets() is the
    config in force); 2, 3, 4 answer, none heard from 5. judge_first_start takes "every other
    voter" from the most advanced answer only (3: voters 2-5) and says NEW -- yet 2 and 4 still
    count 1 a voter (quorum 3 of 5): 2 campaigns, 4 and the blank 5 grant (its empty log is
    never behind), and 2, which lacks the entries 1, 3 and 5 committed, leads and overwrites
    them (judge_first_start took "every other voter" from the most advanced answer only; found
    by a review). Every voter any answer names must have answered (here 1 did not): not NEW."""
    me = 5
    b = replace(ans("b", height=8, applied=10, voters=(1, 2, 3, 4, 5)), heard=frozenset({1}))
    c = replace(ans("c", height=9, applied=12, voters=(2, 3, 4, 5)), heard=frozenset({1}))
    d = replace(ans("d", height=8, applied=10, voters=(1, 2, 3, 4, 5)), heard=frozenset({1}))
    verdict, why = judge(me, [b, c, d], first_start=True)
    assert verdict != Verdict.NEW, (
        f"blank voter {me} confirmed new ({why}) though answers 'o-b' and 'o-d' still count voter 1 "
        "-- the leader that counted its acknowledgements -- and 1 did not answer")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("rev4") / "net")


def test_a_config_held_by_a_leader_just_elected_is_judged_against_the_config_it_has_yet_to_apply(
        net, tmp_path: Path) -> None:
    """Sizes are judged at cut time because a leader just elected has not applied the earlier
    terms' entries -- but a config envelope it took in that window was validated at once
    (validate_now), against the config it was about to leave. C0 (sequence s+1, raising
    max_envelope_bytes) is in the leader's log from its former term, not applied; C1 (sequence
    s+1 too, another change) is taken, validated against sequence s, held, and proposed behind
    C0 once C0 is applied: C1 is answered accepted with a block number, but every orderer and
    peer finds it stale (its sequence) and it never is in force -- the client was told its
    update took effect (found by a review). It now waits, as a second config does, until the
    leader may cut, and is validated against C0's result: refused."""
    now_ms = int(time.time() * 1000)
    lead = Leader(net, tmp_path, ConfState(voters=(1, 2, 3)), Collect(), wall_ms=lambda: now_ms)
    try:
        lead.ack(2)
        lead.ack(3)
        c0 = Ticket("c0")
        lead.chain._on_submit(config_envelope(net, lead.next_config(limits__max_envelope_bytes=131_072), ADMINS),
                              c0, True)
        lead.chain._process_ready()
        assert lead.chain._config_inflight is not None  # in the log, not committed yet
        lead.reelect()
        c1 = Ticket("c1")
        lead.chain._on_submit(config_envelope(net, lead.next_config(batch__timeout_ms=200), ADMINS), c1, True)
        lead.ack(2)  # the new term's entry commits, C0 with it: applied
        assert lead.tracker.current.config.limits.max_envelope_bytes == 131_072
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        lead.ack(2)
        out = c1.peek()
        in_force = lead.tracker.current.config.batch.timeout_ms
        assert out is not None and not (out.accepted and in_force != 200), (
            f"config update C1 was answered {out} but is not in force (batch.timeout_ms {in_force}): "
            "validated against the config its leader had yet to apply")
    finally:
        lead.close()


@pytest.mark.integration
def test_first_start_is_refused_when_the_removed_leader_that_counted_its_acknowledgements_heard_from_it(
        tmp_path: Path) -> None:
    """Three founding orderers served in this process. Two start and order blocks; the third,
    X, joins with --first-start (a1eb2fd's case) and acknowledges blocks -- to the leader L
    only: a follower sends nothing to another follower, so the other voter F never hears from
    X. X's data directory is then lost, and L is taken out of the orderer set by a config
    update (committed by L and F). X is started again with the flag left on its command line.
    L still runs and its Status says it heard from X; the check asked only the orderers of the
    config in force and waited only for the voters of the most advanced membership: F alone,
    which never heard from X -- X was confirmed new and started blank, though it acknowledged
    blocks (found by a review). Every orderer any config named (those removed too) is asked."""
    # a longer election timeout: X must not campaign (its pre-vote would reach F) on a busy host
    net = make_network(tmp_path / "net", extra={"election_tick": 30})
    configs = {n.raft_id: load_node_config(net.node_config_path(n.name)) for n in net.orderers()}
    targets = {rid: f"127.0.0.1:{n.port}" for rid, n in zip(configs, net.orderers(), strict=True)}
    client = Client(net)
    servers: dict[int, OrdererServer] = {}
    x = 3
    try:
        for rid in (1, 2):
            servers[rid] = serve(configs[rid])
        lead = wait_until(lambda: client.status(targets[1], 1.0).raft_leader or None, 20, what="a leader")
        f = 3 - lead
        answers = client.broadcast(targets[lead], [client.envelope()[1] for _ in range(3)])
        assert all(a.accepted for a in answers), answers
        servers[x] = serve(configs[x], first_start=True)  # a founding orderer started late
        height = client.status(targets[lead]).height
        wait_until(lambda: client.status(targets[x], 1.0).height >= height, 20, what="X caught up")
        answers = client.broadcast(targets[lead], [client.envelope()[1] for _ in range(3)])
        assert all(a.accepted for a in answers), answers
        wait_until(lambda: x in client.status(targets[lead]).raft_heard_from, 20, what="L hearing from X")
        assert x not in client.status(targets[f]).raft_heard_from  # a follower hears only leaders
        servers.pop(x).stop(0)
        shutil.rmtree(configs[x].data_dir)  # X's data directory lost

        removal = config_envelope(net, without_orderer(net.config, lead), ADMINS)
        [r] = client.broadcast(targets[lead], [removal])
        assert r.accepted, r.message
        wait_until(lambda: list(client.status(targets[f], 1.0).raft_voters) == sorted({f, x}), 30,
                   what="F applying L's removal")
        assert x in client.status(targets[lead]).raft_heard_from  # L runs, and says it heard from X

        try:
            servers[x] = serve(configs[x], first_start=True)  # the flag left on its command line
        except RxError as err:
            assert err.reason == "RAFT_STATE_LOST", err
            return
        pytest.fail(f"orderer {x}, blank after acknowledging blocks to orderer {lead}, was confirmed new "
                    f"with --first-start though orderer {lead} (running, removed from the set) heard "
                    f"from it: raft_voters of {f} now {list(client.status(targets[f]).raft_voters)}")
    finally:
        for server in servers.values():
            server.stop(0)


@pytest.mark.integration
def test_two_founding_orderers_started_late_together_stop_naming_the_recovery_procedure(tmp_path: Path) -> None:
    """Five founding orderers; three start and order blocks (a quorum), the other two -- which
    never ran -- are started later, at once, each with --first-start. Each waits, before its
    Raft and its server start, for the answer of every orderer any config named -- the other
    late one among them, which is waiting the same way and answers nothing. Neither may be
    confirmed on the answers of the three alone (the other late one may be a voter that lost
    its data and heard from it): both stop FIRST_START_UNANSWERED, the message naming the
    README Recovery procedure (remove, add back) the documented limit leaves them."""
    net = make_network(tmp_path / "net", orderer_orgs=5)
    for n in net.orderers():
        set_extra(net, n.name, first_start_wait_ms=4000)
    configs = {n.raft_id: load_node_config(net.node_config_path(n.name)) for n in net.orderers()}
    targets = {rid: f"127.0.0.1:{n.port}" for rid, n in zip(configs, net.orderers(), strict=True)}
    client = Client(net)
    servers: dict[int, OrdererServer] = {}
    failures: dict[int, BaseException] = {}
    try:
        for rid in (1, 2, 3):
            servers[rid] = serve(configs[rid])
        lead = wait_until(lambda: client.status(targets[1], 1.0).raft_leader or None, 20, what="a leader")
        answers = client.broadcast(targets[lead], [client.envelope()[1] for _ in range(3)])
        assert all(a.accepted for a in answers), answers

        def late(rid: int) -> None:
            try:
                servers[rid] = serve(configs[rid], first_start=True)
            except BaseException as exc:  # reported below
                failures[rid] = exc

        threads = [threading.Thread(target=late, args=(rid,)) for rid in (4, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(failures) == [4, 5] and not any(rid in servers for rid in (4, 5))
        for exc in failures.values():
            assert isinstance(exc, RxError) and exc.reason == "FIRST_START_UNANSWERED", exc
            assert "Recovery" in exc.message and "did not answer" in exc.message
    finally:
        for server in servers.values():
            server.stop(0)
