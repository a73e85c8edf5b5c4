"""An orderer of a running network stopped, its data directory fully emptied (no block past the
genesis block, no raft/) and restarted while still a voter: nothing local shows it lost its
state, the other orderers do (node.orderer.statecheck). Three orderer processes on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from node.crypto.canonical import block_header_hash
from node.orderer.statecheck import MARKER
from tests.orderer.cluster import Client, OrdererProcs, all_serving, leader_of, make_network, set_extra, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    net = make_network(tmp_path / "net")
    procs = OrdererProcs(net)
    try:
        yield procs, Client(net)
    finally:
        procs.close()
        for name in procs.names():
            print(f"===== {name}\n{procs.log_text(name)[-6000:]}")


def _data_dir(procs: OrdererProcs, name: str) -> Path:
    path: Path = procs.net.node_config_path(name)
    return path.parent / str(yaml.safe_load(path.read_text())["data_dir"])


def _exit_code(procs: OrdererProcs, name: str, timeout: float) -> int:
    proc = procs.procs[name]
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} still runs after {timeout} s")
    finally:
        procs.procs.pop(name, None)


def _hashes(client: Client, procs: OrdererProcs, name: str) -> list[bytes]:
    return [block_header_hash(b.header) for b in client.blocks(procs.target(name))]


def _order(procs: OrdererProcs, client: Client, target: str, n: int) -> list[str]:
    pairs = [client.envelope() for _ in range(n)]
    answers = client.broadcast(procs.target(target), [env for _, env in pairs])
    assert all(a.accepted for a in answers) and len(answers) == n, answers
    return [tx for tx, _ in pairs]


def _two_of_three_ordering(procs: OrdererProcs, client: Client, n: int) -> tuple[list[str], str, str]:
    """The first two founding orderers started, ``n`` envelopes ordered: (the two, the third
    -- never started --, their leader)."""
    names = procs.names()
    early, late = names[:2], names[2]
    for name in early:
        procs.start(name)
    all_serving(procs, client, early)
    leader = wait_until(lambda: leader_of(procs, client, early), 20, what="a leader of the two")
    _order(procs, client, leader, n)
    return early, late, leader


def test_an_emptied_voter_is_refused_at_once_or_once_another_orderer_answers(cluster):
    procs, client = cluster
    names = procs.names()
    # a brand-new network still starts, every orderer confirmed new by the others
    procs.start_all()
    all_serving(procs, client, names)
    wait_until(lambda: not any(client.status(procs.target(n)).raft_state_unconfirmed for n in names),
               20, what="every orderer confirmed new")
    for name in names:
        assert not (_data_dir(procs, name) / "raft" / MARKER).exists()
    leader = wait_until(lambda: leader_of(procs, client), 20, what="a leader")
    _order(procs, client, leader, 5)
    wait_until(lambda: all(client.status(procs.target(n)).height >= 2 for n in names), 20,
               what="a block everywhere")

    # a follower emptied and restarted: the others have it as a voter of a network with blocks
    victim = next(n for n in names if n != leader)
    others = [n for n in names if n != victim]
    assert procs.terminate(victim) == 0
    shutil.rmtree(_data_dir(procs, victim))
    procs.start(victim)
    assert _exit_code(procs, victim, 30) == 2
    log = procs.log_text(victim)
    assert "RAFT_STATE_LOST" in log and f"raft id {procs.net.orderers()[names.index(victim)].raft_id} as a voter" in log
    assert "remove it from the consortium's orderer set" in log
    # the two others go on ordering
    leader = wait_until(lambda: leader_of(procs, client, others), 20, what="a leader of the two")
    _order(procs, client, leader, 3)
    wait_until(lambda: len({client.status(procs.target(n)).height for n in others}) == 1, 20,
               what="the two at one height")
    before = _hashes(client, procs, others[0])
    assert len(before) >= 3 and _hashes(client, procs, others[1]) == before

    # the whole network down, the emptied one started first: nobody answers, it starts but
    # neither votes nor campaigns (the marker keeps it so across a restart) ...
    for name in others:
        assert procs.terminate(name) == 0
    procs.start(victim)
    wait_until(lambda: client.status(procs.target(victim)).raft_state_unconfirmed, 20,
               what="the emptied orderer up and unconfirmed")
    assert (_data_dir(procs, victim) / "raft" / MARKER).exists()
    assert procs.terminate(victim) == 0
    procs.start(victim)
    wait_until(lambda: client.status(procs.target(victim)).raft_state_unconfirmed, 20,
               what="the emptied orderer restarted, still unconfirmed")
    # ... until another one is back: alone with it, that one cannot be elected (the emptied
    # one refuses its vote), so the emptied one has received nothing and stops, RAFT_STATE_LOST
    procs.start(others[0])
    assert _exit_code(procs, victim, 30) == 2
    procs.start(others[1])
    assert "event=chain_stopped" in procs.log_text(victim) or '"event": "chain_stopped"' in procs.log_text(victim)
    all_serving(procs, client, others)
    leader = wait_until(lambda: leader_of(procs, client, others), 20, what="the two leading again")
    _order(procs, client, leader, 2)
    wait_until(lambda: all(client.status(procs.target(n)).height > len(before) for n in others), 20,
               what="a new block on both")
    after = _hashes(client, procs, others[0])
    assert after[: len(before)] == before and _hashes(client, procs, others[1]) == after


def test_a_founding_orderer_first_started_after_the_others_ordered_blocks_joins_with_first_start(cluster):
    """Two of the three founding orderers start and order blocks; the third is started only
    then. Nothing tells it from a voter that lost its state (refused RAFT_STATE_LOST, the
    message naming --first-start); started once with --first-start it catches up and votes.
    Restarted with the flag again, it is refused (BAD_CONFIG): the flag never covers a later loss."""
    procs, client = cluster
    names = procs.names()
    _early, late, leader = _two_of_three_ordering(procs, client, 5)

    procs.start(late)
    assert _exit_code(procs, late, 30) == 2
    assert "RAFT_STATE_LOST" in procs.log_text(late) and "--first-start" in procs.log_text(late)
    procs.start(late, "--first-start")
    all_serving(procs, client, [late])
    assert "event=raft_first_start_attested" in procs.log_text(late)
    assert not client.status(procs.target(late)).raft_state_unconfirmed
    wait_until(lambda: client.status(procs.target(late)).height == client.status(procs.target(leader)).height,
               30, what="the late orderer at the leader's height")

    # it votes: with the leader stopped, the other early one is elected only with its vote
    assert procs.terminate(leader) == 0
    survivors = [n for n in names if n != leader]
    new_leader = wait_until(lambda: leader_of(procs, client, survivors), 30, what="a leader of the two left")
    _order(procs, client, new_leader, 3)
    wait_until(lambda: len({client.status(procs.target(n)).height for n in survivors}) == 1, 20,
               what="the two at one height")
    assert _hashes(client, procs, survivors[0]) == _hashes(client, procs, survivors[1])

    assert procs.terminate(late) == 0
    procs.start(late, "--first-start")
    assert _exit_code(procs, late, 30) == 2
    assert "BAD_CONFIG" in procs.log_text(late)
    procs.start(late)  # without the flag it runs on with its state
    all_serving(procs, client, [late])
    assert not client.status(procs.target(late)).raft_state_unconfirmed


def test_first_start_left_on_the_command_line_never_covers_a_later_loss_of_the_data_directory(cluster):
    """The late founding orderer joined with --first-start and acknowledged blocks; its data
    directory is then lost and it is started again with the flag (left in its unit file). Blank
    storage looked like a first start and the flag confirmed it: its vote elected a leader
    missing blocks it had acknowledged (found by a review). The others recorded the messages
    it sent (node.orderer.heard): with every voter up it is refused RAFT_STATE_LOST at once;
    with a voter down it waits for its answer before its Raft starts, then gives up
    (FIRST_START_UNANSWERED); no leader missing the blocks is ever elected with its vote."""
    procs, client = cluster
    names = procs.names()
    early, late, _leader = _two_of_three_ordering(procs, client, 2)
    procs.start(late, "--first-start")
    all_serving(procs, client, names)
    wait_until(lambda: len({client.status(procs.target(n)).height for n in names}) == 1, 30,
               what="the three at one height")
    rid = procs.net.orderers()[names.index(late)].raft_id
    wait_until(lambda: any(rid in client.status(procs.target(n)).raft_heard_from for n in early), 20,
               what="an early orderer recording the late one's messages")

    # its data directory lost, restarted with the flag while every other voter runs: refused
    assert procs.terminate(late) == 0
    shutil.rmtree(_data_dir(procs, late))
    before = len(procs.log_text(late))
    procs.start(late, "--first-start")
    assert _exit_code(procs, late, 30) == 2
    log = procs.log_text(late)[before:]
    assert "RAFT_STATE_LOST" in log and f"from raft id {rid}" in log and "raft_first_start_attested" not in log

    # with an early orderer down, the flag waits for its answer before the late one's Raft
    # starts (it sends nothing meanwhile), then stops: never a vote before every voter answered
    set_extra(procs.net, late, first_start_wait_ms=3000)
    down = next(n for n in early if n != leader_of(procs, client, early))
    up = next(n for n in early if n != down)
    assert procs.terminate(down) == 0
    shutil.rmtree(_data_dir(procs, late))
    before = len(procs.log_text(late))
    procs.start(late, "--first-start")
    assert _exit_code(procs, late, 30) == 2
    log = procs.log_text(late)[before:]
    assert "event=raft_first_start_waiting" in log or "RAFT_STATE_LOST" in log, log[-2000:]
    assert "FIRST_START_UNANSWERED" in log or "RAFT_STATE_LOST" in log, log[-2000:]
    assert "event=raft_first_start_attested" not in log
    assert client.status(procs.target(up)).raft_voters == [1, 2, 3]
