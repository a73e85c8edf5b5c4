"""--first-start rounds (onboarding again before each round; answers above the block store's
height; raft ids held by more than one orderer): cases a review found -- a round under steady
load never concluded, an orderer moved by remove and add-back refused every first start, the
server kept the message bound read before the check onboarded again. The rotation test is a
guard: a certificate rotated in place is not another holder."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import grpc
import pytest
from rxchain.v1 import block_pb2, config_pb2, transaction_pb2

from node.errors import RxError
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.orderer import statecheck
from node.orderer.configtx import OrdererConfig
from node.orderer.server import OrdererServer, _every_orderer, check_blank_state, serve
from node.orderer.statecheck import Answer, Verdict, judge_first_start
from node.raft.storage import MemoryStorage
from node.raft.types import ConfState
from tests.orderer.cluster import config_envelope, wait_until
from tests.orderer.founders import X, founders, restart_x_first
from tests.orderer.test_onboard import ADMINS
from tests.orderer.test_statecheck import ME, _check, _heard, ans


def test_a_first_start_under_steady_load_is_not_inconclusive_for_ever(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Orderers 1 and 3 order blocks under steady load (a block every batch timeout, 50 ms);
    blank founding orderer 2 is started with --first-start. Each round onboards (its block
    store reaches the others' height h), then asks: by the time the answers come, the leader
    cut another block (h + 1). "An answer above its height" makes every round inconclusive, and
    after first_start_wait_ms the flag fails FIRST_START_UNANSWERED though nobody heard from it
    and no config block is in the blocks it lacks. Blocks cut after this orderer started cannot
    name an orderer its lost incarnation (if any) sent anything to: the height to reach is one
    answered before the round, not the moving one of the round itself."""
    height = [10]

    def known() -> tuple[dict[int, str], int]:  # onboarding caught up to the others' height
        height[0] += 1
        return {1: "a:1", 2: "me:1", 3: "c:1"}, height[0]

    def one_ahead(targets: object, channels: object, timeout_s: float) -> list[Answer]:
        h = height[0] + 1  # the leader cut a block meanwhile
        return [_heard(ans("a", height=h, applied=h + 4, leader=True), 3), _heard(ans("c", height=h, applied=h + 4), 1)]

    monkeypatch.setattr(statecheck, "ask", one_ahead)
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    storage = MemoryStorage(ConfState((1, 2, 3), ()))
    try:
        unconfirmed = check_blank_state(_check(tmp_path, ["a:1", "c:1"]), storage, first_start=True,
                                        every_orderer=known, first_start_wait_s=10.0,
                                        clock=lambda: now[0], sleep=sleep)
    except RxError as err:
        pytest.fail(f"--first-start never concluded under steady load ({err.reason}: {err.message}); "
                    f"{now[0]:.1f} s of rounds, each answer one block above the height onboarding reached")
    assert unconfirmed is False


def _config_block(number: int, cfg: config_pb2.ConsortiumConfig) -> block_pb2.Block:
    update = config_pb2.ConfigUpdate(config=cfg.SerializeToString())
    tx = transaction_pb2.Transaction(header=transaction_pb2.TxHeader(type=transaction_pb2.CONFIG).SerializeToString(),
                                     config_update=update.SerializeToString())
    block = block_pb2.Block()
    block.header.number = number
    block.data.envelopes.append(transaction_pb2.Envelope(payload=tx.SerializeToString()).SerializeToString())
    block.metadata.last_config_block = number
    return block


class _Blocks:
    """The configs in turn, each in a config block followed by a block of data."""

    def __init__(self, configs: list[config_pb2.ConsortiumConfig]) -> None:
        self.blocks: list[block_pb2.Block] = []
        for cfg in configs:
            number = len(self.blocks)
            self.blocks.append(_config_block(number, cfg))
            data = block_pb2.Block()
            data.header.number = number + 1
            data.metadata.last_config_block = number
            self.blocks.append(data)

    def get(self, number: int) -> block_pb2.Block:
        return self.blocks[number]


def _orderer(raft_id: int, name: str, port: int, cert: bytes = b"cert") -> config_pb2.OrdererNode:
    return config_pb2.OrdererNode(raft_id=raft_id, org="ins01", name=name, host="127.0.0.1", port=port,
                                  cert_der=cert)


def _every(configs: list[config_pb2.ConsortiumConfig], own_id: int = 0) -> dict[int, str]:
    blocks = _Blocks(configs)
    in_force = OrdererConfig(configs[-1], cast(MSP, None), len(blocks.blocks) - 2)
    return _every_orderer(cast(BlockStore, blocks), in_force, own_id)


def _cfg(*orderers: config_pb2.OrdererNode) -> config_pb2.ConsortiumConfig:
    cfg = config_pb2.ConsortiumConfig()
    cfg.orderers.extend(orderers)
    return cfg


def test_a_rotated_certificate_is_not_a_raft_id_held_twice() -> None:
    """Rotation in place (same name and address, another certificate): one holder."""
    a, b, c = _orderer(1, "o1", 7001), _orderer(2, "o2", 7002), _orderer(3, "o3", 7003)
    rotated = _orderer(1, "o1", 7001, cert=b"new cert")
    assert _every([_cfg(a, b, c), _cfg(rotated, b, c)]) == {1: "127.0.0.1:7001", 2: "127.0.0.1:7002",
                                                            3: "127.0.0.1:7003"}


def test_an_orderer_moved_by_remove_and_add_back_does_not_refuse_every_first_start() -> None:
    """The config rules keep an orderer's address while it is in the set: moving one takes a
    config update removing it and one adding it back at its new address (same raft id, name and
    certificate) -- the README's own way to change an entry (and a founding orderer whose genesis
    address was wrong is moved so before it ever ran: then its OWN raft id, which it never asks,
    refuses its --first-start). From then on every --first-start of
    the network, whichever orderer it is, fails FIRST_START_REFUSED ("raft id [4] held by more
    than one orderer"), for ever (the history never forgets it), though it is one orderer, the
    same name its TLS certificate carries, answering at its new address with its own record."""
    a, b, c = _orderer(1, "o1", 7001), _orderer(2, "o2", 7002), _orderer(3, "o3", 7003)
    d_old, d_new = _orderer(4, "o4", 7004), _orderer(4, "o4", 7104)
    history = [_cfg(a, b, c), _cfg(a, b, c, d_old), _cfg(a, b, c), _cfg(a, b, c, d_new)]
    try:
        every = _every(history)
    except RxError as err:
        pytest.fail(f"orderer o4 moved (removed at :7004, added back at :7104) refuses every --first-start: "
                    f"{err.reason}: {err.message}")
    assert every[4] == "127.0.0.1:7104"



def test_its_own_entry_moved_before_it_ever_ran_does_not_refuse_its_first_start() -> None:
    """Founding orderer 3 never ran; its genesis address was wrong, so the admins removed it and
    added it back at the right one (the only way the config rules allow; same raft id, name and
    certificate). Started with --first-start (README: a founding orderer started late), it is
    refused FIRST_START_REFUSED for its OWN raft id -- which the check never asks (only the
    others are) -- where the check would confirm it (a learner once re-added), and the refusal
    tells it to take the remove-and-add-back it already took. (``_every_orderer`` is not told
    whose check it is: a fix leaving its own raft id out passes it here.)"""
    a, b = _orderer(1, "o1", 7001), _orderer(2, "o2", 7002)
    c_old, c_new = _orderer(3, "o3", 7003), _orderer(3, "o3", 7103)
    try:
        every = _every([_cfg(a, b, c_old), _cfg(a, b), _cfg(a, b, c_new)], own_id=3)
    except RxError as err:
        pytest.fail(f"its own entry moved refuses its --first-start: {err.reason}: {err.message}")
    assert every[1] == "127.0.0.1:7001" and every[2] == "127.0.0.1:7002"



@pytest.mark.integration
def test_a_first_start_that_onboarded_again_serves_the_message_bound_in_force(tmp_path: Path) -> None:
    """Genesis orderers 1, 2 and X=3 (X never ran); 1 and 2 order a config update raising
    max_message_bytes (4 MiB in the genesis config, now 16 MiB). The network is restarted and X,
    with --first-start, comes up first: its onboarding finds nobody and its check waits; 1 and 2
    come back, X's next round onboards again -- storing the config block raising the bound -- and
    X is rightly confirmed new. But serve() read the server's message bound (``max_msg``) right
    after the FIRST onboarding, before the check: X's gRPC server (and its Raft appends, its
    batches) run under the genesis config's 4 MiB, refusing the envelopes, blocks and Raft
    messages the others accept (69bb174's fault, back through the check's onboarding)."""
    f = founders(tmp_path, 30_000)
    client, targets, servers, configs, x = f.client, f.targets, f.servers, f.configs, X
    try:
        for rid in (1, 2):
            servers[rid] = serve(configs[rid])
        lead = wait_until(lambda: client.status(targets[1], 1.0).raft_leader or None, 20, what="a leader")
        raised = config_pb2.ConsortiumConfig()
        raised.CopyFrom(f.start)
        raised.sequence = f.start.sequence + 1
        raised.limits.max_message_bytes = 16 << 20
        raised.limits.max_envelope_bytes = 6 << 20
        [r] = client.broadcast(targets[lead], [config_envelope(f.net, raised, ADMINS)])
        assert r.accepted, r.message
        height = client.status(targets[lead]).height
        wait_until(lambda: all(client.status(targets[rid], 1.0).height >= height for rid in (1, 2)), 20,
                   what="the raise applied")
        outcome = restart_x_first(f, (1, 2))
        assert isinstance(outcome, OrdererServer), outcome
        assert outcome.blocks.height() >= height  # it onboarded the raise
        big = b"\x0a" + b"x" * (5 << 20)  # over the genesis bound, within the raised one; no envelope
        try:
            [r] = client.broadcast(targets[x], [big])
        except Exception as exc:
            pytest.fail(f"orderer {x}, confirmed by --first-start after onboarding the config raising "
                        f"max_message_bytes to 16 MiB, still serves the genesis bound: {exc!r}")
        assert (r.accepted, r.reason) == (False, "BAD_PAYLOAD"), r.message
    finally:
        f.stop()


@pytest.mark.integration
def test_a_first_start_while_the_others_order_under_steady_load_is_confirmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Genesis orderers 1, 2 and X=3 (X never ran); 1 and 2 order blocks without pause (clients
    broadcasting all along, a block each batch timeout, 50 ms). X is started with --first-start:
    nobody ever heard from it, every orderer answers at once -- but each round onboards up to the
    others' height and then asks, and by the time the answers come the leader cut another
    block: "an answer above its block store" every round, FIRST_START_UNANSWERED after
    first_start_wait_ms, on a network that only did what it is for. The Status round trip is
    given 100 ms here (orderers of different organisations in different data centres; on one
    host's loopback a round lands between two blocks now and then)."""
    ask = statecheck.ask

    def far(targets: Sequence[str], channels: Callable[[str], grpc.Channel], timeout_s: float) -> list[Answer]:
        time.sleep(0.1)  # the round trip to another data centre
        return ask(targets, channels, timeout_s)

    monkeypatch.setattr(statecheck, "ask", far)
    f = founders(tmp_path, 15_000)
    client, targets, servers, configs, x = f.client, f.targets, f.servers, f.configs, X
    stop = threading.Event()
    accepted = [0]

    def pump(target: str) -> None:
        while not stop.is_set():
            try:
                answers = client.broadcast(target, [client.envelope()[1] for _ in range(5)], timeout=10)
                accepted[0] += sum(a.accepted for a in answers)
            except Exception:
                time.sleep(0.05)

    loaders = [threading.Thread(target=pump, args=(targets[1 + i % 2],), daemon=True) for i in range(4)]
    try:
        for rid in (1, 2):
            servers[rid] = serve(configs[rid])
        wait_until(lambda: client.status(targets[1], 1.0).raft_leader or None, 20, what="a leader")
        for loader in loaders:
            loader.start()
        wait_until(lambda: accepted[0] >= 50, 20, what="the network under load")
        try:
            servers[x] = serve(configs[x], first_start=True)
        except RxError as err:
            pytest.fail(f"orderer {x}, never ran and never heard from, was refused --first-start while the "
                        f"others ordered under load ({accepted[0]} envelopes): {err.reason}: {err.message}")
    finally:
        stop.set()
        for loader in loaders:
            loader.join(15)
        f.stop()


def test_an_answer_without_a_record_says_it_may_have_been_told_it_lost_state() -> None:
    """An orderer a leader told STATE_LOST now answers untracked for good (4c6249c), and every
    --first-start of the network waits on it until FIRST_START_UNANSWERED -- whose reason names
    only "a release before, or upgraded since": the operator looks for an old release that is
    not there. The reason names the lost state too."""
    a, c = ans("a", height=5, applied=9, leader=True), replace(ans("c", height=5, applied=9), heard=None)
    verdict, why = judge_first_start(ME, [_heard(a, 3), c], frozenset({1, 3}))
    assert verdict == Verdict.UNKNOWN
    assert "lost" in why, why


def test_a_raft_id_held_by_orderers_of_different_names_refuses_the_flag() -> None:
    """Raft id 4 given to another orderer after ins04 was taken out: asked by raft id, ins04 --
    perhaps the leader that heard from this one -- would never be (FIRST_START_REFUSED, the
    holders named)."""
    a, b, c = _orderer(1, "o1", 7001), _orderer(2, "o2", 7002), _orderer(3, "o3", 7003)
    history = [_cfg(a, b, c), _cfg(a, b, c, _orderer(4, "o4", 7004)), _cfg(a, b, c),
               _cfg(a, b, c, _orderer(4, "o5", 7005))]
    with pytest.raises(RxError) as err:
        _every(history, own_id=3)
    assert err.value.reason == "FIRST_START_REFUSED" and "raft id 4: ins01/o4, ins01/o5" in err.value.message


def test_a_raft_id_reused_by_another_organisations_orderer_of_the_same_name_refuses_the_flag() -> None:
    """Names are TLS server names each organisation's CA issues: two organisations may use the
    same one. Raft id 4 held by ins01's "o4", then by ins02's "o4": two orderers (the former
    perhaps the leader that heard from this one), refused -- a name-only rule took them for one
    moved orderer and asked only the latest (found by a review)."""
    a, b, c = _orderer(1, "o1", 7001), _orderer(2, "o2", 7002), _orderer(3, "o3", 7003)
    ins02_o4 = _orderer(4, "o4", 7005, cert=b"ins02 cert")
    ins02_o4.org = "ins02"
    history = [_cfg(a, b, c), _cfg(a, b, c, _orderer(4, "o4", 7004)), _cfg(a, b, c), _cfg(a, b, c, ins02_o4)]
    with pytest.raises(RxError) as err:
        _every(history, own_id=3)
    assert err.value.reason == "FIRST_START_REFUSED" and "ins01/o4, ins02/o4" in err.value.message


def test_a_first_start_that_knows_no_other_orderer_is_refused(tmp_path: Path) -> None:
    """Its block store names no other orderer (a genesis of one, onboarding reaching nobody):
    nobody could be asked whether it ran -- refused, not confirmed (found by a review); and the
    check cannot run without knowing every orderer."""
    storage = MemoryStorage(ConfState((1, 2, 3), ()))
    with pytest.raises(RxError) as err:
        check_blank_state(_check(tmp_path, []), storage, first_start=True, every_orderer=lambda: ({}, 1))
    assert err.value.reason == "FIRST_START_REFUSED"
    with pytest.raises(ValueError):
        check_blank_state(_check(tmp_path, []), storage, first_start=True)

