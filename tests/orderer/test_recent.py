"""RecentTxIndex: a resubmission of an envelope already in a block stored around a leader
change is answered accepted (with that block) and not ordered again (clock injected)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from rxchain.v1 import block_pb2, transaction_pb2

from node.crypto.signing import Purpose, Verifier
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.orderer.broadcast import BroadcastHandler, EnvelopeValidator
from node.orderer.metrics import OrdererMetrics
from node.orderer.recent import RecentTxIndex, tx_id_of
from node.orderer.ticket import NOT_LEADER, Outcome, Ticket
from tests.orderer.cluster import Client, make_network
from tests.orderer.fakes import NoForward, OrdersAtOnce


class Blocks:
    def __init__(self) -> None:
        self.blocks: list[block_pb2.Block] = [block_pb2.Block()]  # genesis
        self.reads = 0

    def add(self, envelopes: list[bytes]) -> int:
        b = block_pb2.Block()
        b.header.number = len(self.blocks)
        b.data.envelopes.extend(envelopes)
        self.blocks.append(b)
        return b.header.number

    def height(self) -> int:
        return len(self.blocks)

    def get(self, number: int) -> block_pb2.Block:
        self.reads += 1
        return self.blocks[number]


class GatedBlocks(Blocks):
    """Reads wait at ``gate`` while ``gated`` (``entered`` says a read is waiting)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gated = True

    def get(self, number: int) -> block_pb2.Block:
        if self.gated:
            self.entered.set()
            assert self.gate.wait(10)
        return super().get(number)


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_network(tmp_path_factory.mktemp("recent") / "net")


def test_index_window_opens_on_leader_change_and_closes(net: Any) -> None:
    client = Client(net)
    blocks, clock, leader = Blocks(), Clock(), [0]
    old = [client.envelope() for _ in range(3)]
    for tx, raw in old:
        assert tx_id_of(raw) == tx
    for i in range(40):  # older blocks, beyond the lookback
        blocks.add([old[0][1]] if i == 0 else [])
    last = blocks.add([old[1][1], old[2][1]])
    index = RecentTxIndex(blocks, lambda: leader[0], clock=clock, window_s=30, lookback_blocks=8)
    assert index.lookup(*old[1]) is None  # no leader known yet: no window
    assert blocks.reads == 0
    leader[0] = 1
    assert index.lookup(*old[1]) == last
    assert index.lookup(*old[0]) is None  # block 1 is outside the lookback
    later = client.envelope()
    n = blocks.add([later[1]])
    assert index.lookup(*later) == n  # blocks stored during the window are indexed
    # another envelope claiming a stored tx id is not "already ordered": only the same bytes
    assert index.lookup(later[0], client.envelope()[1]) is None
    clock.now += 31
    assert index.lookup(*later) is None  # window closed, index dropped
    assert not index.active()
    leader[0] = 2  # a new leader: a new window
    assert index.lookup(*later) == n
    assert index.lookup("", later[1]) is None




def _handler(net: Any, orderer: OrdersAtOnce, index: RecentTxIndex) -> BroadcastHandler:
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    msp = MSP(consortium, Verifier())
    validator = EnvelopeValidator(lambda: msp, consortium.consortium_id, 65536,
                                  lambda: int(time.time() * 1000))
    return BroadcastHandler(validator, orderer, NoForward(), OrdererMetrics("t"), recent=index)


def test_resubmitted_envelope_is_answered_from_its_block_not_ordered_again(net: Any) -> None:
    client = Client(net)
    blocks = Blocks()
    first, fresh = client.envelope(), client.envelope()
    n = blocks.add([first[1]])
    orderer = OrdersAtOnce(block_number=99)
    h = _handler(net, orderer, RecentTxIndex(blocks, lambda: 1))
    # Broadcast (one per message) and BroadcastBatch, and the leader side of a forward.
    single = list(h.stream(iter([first[1], fresh[1]])))
    batch = [r for m in h.batch_stream(iter([[first[1], fresh[1]]])) for r in m.responses]
    for answers in (single, batch):
        assert [a.accepted for a in answers] == [True, True]
        assert [a.tx_id for a in answers] == [first[0], fresh[0]]
        assert answers[0].message == f"already ordered in block {n}"
    forwarded = h.submit_local_many([first[1], fresh[1]])
    assert [t.wait(1) for t in forwarded] == [Outcome(block_number=n, message=f"already ordered in block {n}"),
                                              Outcome(block_number=99)]
    assert orderer.submitted == [fresh[1]] * 3  # the first copy was never ordered again


def test_redispatch_after_not_leader_checks_the_index_again(net: Any) -> None:
    client = Client(net)
    blocks = Blocks()
    tx, raw = client.envelope()
    orderer = OrdersAtOnce(block_number=99)
    h = _handler(net, orderer, RecentTxIndex(blocks, lambda: 1))
    checked, _ = h.dispatch(raw)
    assert checked is not None and orderer.submitted == [raw]
    # Suppose the envelope had been forwarded to a leader that lost leadership (handed
    # back NOT_LEADER) while its first copy's block committed meanwhile.
    n = blocks.add([raw])
    outcome = h.answer(checked, Ticket.done(Outcome(NOT_LEADER, "moved"), tx), time.monotonic() + 5)
    assert outcome == Outcome(block_number=n, message=f"already ordered in block {n}")
    assert orderer.submitted == [raw]


def test_index_is_rebuilt_from_the_lookback_on_each_leader_change(net: Any) -> None:
    client = Client(net)
    blocks, clock, leader = Blocks(), Clock(), [1]
    early = client.envelope()
    n = blocks.add([early[1]])
    index = RecentTxIndex(blocks, lambda: leader[0], clock=clock, window_s=30, lookback_blocks=4)
    assert index.lookup(*early) == n
    assert len(index) == 1
    for _ in range(10):
        blocks.add([])
    clock.now += 20
    leader[0] = 2  # the leader flaps within the window: the index restarts from the lookback
    assert index.lookup(*early) is None
    assert len(index) == 0


def test_an_envelope_claiming_another_tx_id_is_refused_not_taken_for_it(net: Any) -> None:
    """A member signing its own envelope under a victim's (stored) tx id: the orderer refuses
    it (BAD_TXID), and the victim's byte-identical resubmission is still recognised."""
    victim, attacker = Client(net, org="h01", user="dr"), Client(net, user="dr")
    victim_tx, victim_raw = victim.envelope()
    blocks = Blocks()
    n = blocks.add([victim_raw])
    orderer = OrdersAtOnce(block_number=99)
    h = _handler(net, orderer, RecentTxIndex(blocks, lambda: 1))
    hdr = transaction_pb2.TxHeader(tx_id=victim_tx, type=transaction_pb2.INVOKE,
                                   creator=attacker.signer.identity, nonce=b"n" * 24,
                                   timestamp_ms=int(time.time() * 1000),
                                   consortium_id=transaction_pb2.TxHeader.FromString(
                                       transaction_pb2.Transaction.FromString(
                                           transaction_pb2.Envelope.FromString(victim_raw).payload
                                       ).header).consortium_id)
    payload = transaction_pb2.Transaction(header=hdr.SerializeToString(),
                                          invocation=b"other").SerializeToString()
    forged = transaction_pb2.Envelope(payload=payload,
                                      signature=attacker.signer.sign(Purpose.ENVELOPE, payload)).SerializeToString()
    forged_answer, genuine = list(h.stream(iter([forged, victim_raw])))
    assert (forged_answer.accepted, forged_answer.reason) == (False, "BAD_TXID")
    assert genuine.accepted and genuine.message == f"already ordered in block {n}"
    assert orderer.submitted == []


def test_a_long_backlog_is_indexed_a_bounded_number_of_blocks_per_lookup(net: Any) -> None:
    """A follower that stored a long catch-up during the window: each lookup parses at most
    ``max_blocks_per_call`` blocks, later lookups go on from there until the tail is found."""
    client = Client(net)
    blocks, leader = Blocks(), [1]
    index = RecentTxIndex(blocks, lambda: leader[0], lookback_blocks=4, max_blocks_per_call=10)
    assert index.active()  # the window opens at height 1
    for _ in range(45):
        blocks.add([])
    tail = client.envelope()
    n = blocks.add([tail[1]])
    answers = []
    for _ in range(6):
        before = blocks.reads
        answers.append(index.lookup(*tail))
        assert blocks.reads - before <= 10
    assert answers == [None] * 4 + [n, n]  # blocks 1-10, 11-20, 21-30, 31-40, then 41-46


def test_lookups_do_not_wait_long_for_another_lookups_indexing(net: Any) -> None:
    """Parsing runs outside the lock: while one lookup is stuck reading a block, the window
    check and the size answer at once, another lookup gives up after ``wait_s`` (a miss),
    and once the reader finishes its envelope is found."""
    client = Client(net)
    blocks, leader = GatedBlocks(), [1]
    index = RecentTxIndex(blocks, lambda: leader[0], wait_s=0.2)
    assert index.active()
    env = client.envelope()
    n = blocks.add([env[1]])
    first: list[int | None] = []
    reader = threading.Thread(target=lambda: first.append(index.lookup(*env)))
    reader.start()
    try:
        assert blocks.entered.wait(10)
        assert index.active() and len(index) == 0  # not blocked by the parse
        t0 = time.monotonic()
        assert index.lookup(*env) is None  # waited for the other lookup, then gave up
        assert 0.15 <= time.monotonic() - t0 < 5
    finally:
        blocks.gate.set()
        reader.join(10)
    assert first == [n]
    assert index.lookup(*env) == n and len(index) == 1


def test_an_index_dropped_during_a_parse_keeps_nothing_from_it(net: Any) -> None:
    """A leader change while a lookup parses: the new window starts from its own lookback,
    the stale pass's results are discarded."""
    client = Client(net)
    blocks, leader = GatedBlocks(), [1]
    index = RecentTxIndex(blocks, lambda: leader[0], lookback_blocks=1)
    assert index.active()
    old = client.envelope()
    blocks.add([old[1]])
    blocks.add([])
    reader = threading.Thread(target=index.lookup, args=old)
    reader.start()
    try:
        assert blocks.entered.wait(10)
        leader[0] = 2  # drops the index; the new window's lookback starts at block 1 of 2
        blocks.gated = False
        assert index.active()
    finally:
        blocks.gate.set()
        reader.join(10)
    assert len(index) == 0  # the pass that began before the change kept nothing
    assert index.lookup(*old) is None  # block 1 is outside the new lookback


def test_a_block_that_cannot_be_read_is_read_again_by_the_next_lookup(net: Any) -> None:
    """A read error mid-pass: the blocks parsed before it count, the failed one and those
    after it are read by the next lookup (nothing is skipped), and the lookup does not raise."""
    client = Client(net)
    fail = [2]

    class FlakyBlocks(Blocks):
        def get(self, number: int) -> block_pb2.Block:
            if number in fail:
                fail.remove(number)
                raise OSError("transient read error")
            return super().get(number)

    blocks = FlakyBlocks()
    index = RecentTxIndex(blocks, lambda: 1, lookback_blocks=4)
    assert index.active()
    first, second, third = client.envelope(), client.envelope(), client.envelope()
    n1, n2, n3 = blocks.add([first[1]]), blocks.add([second[1]]), blocks.add([third[1]])
    assert index.lookup(*third) is None  # block 2 failed: the pass stopped after block 1
    assert len(index) == 1
    assert index.lookup(*second) == n2  # read again from block 2 on
    assert index.lookup(*first) == n1 and index.lookup(*third) == n3


def test_a_stuck_pass_is_waited_for_once_and_a_new_window_does_not_wait_for_it(net: Any) -> None:
    """The rest of a batch does not wait ``wait_s`` per envelope for a pass that outlasted
    one wait; a leader change starts a pass of its own instead of waiting for the stale one."""
    client = Client(net)
    blocks, leader = GatedBlocks(), [1]
    index = RecentTxIndex(blocks, lambda: leader[0], lookback_blocks=4, wait_s=1.0)
    assert index.active()
    env = client.envelope()
    n = blocks.add([env[1]])
    reader = threading.Thread(target=index.lookup, args=env)
    reader.start()
    try:
        assert blocks.entered.wait(10)
        t0 = time.monotonic()
        batch = [index.lookup(*client.envelope()) for _ in range(8)]
        assert batch == [None] * 8
        assert time.monotonic() - t0 < 3.0  # one wait of 1 s in all, not one per envelope
        blocks.gated = False
        leader[0] = 2  # a new window: its own pass (waiting for the stuck one would miss)
        assert index.lookup(*env) == n
    finally:
        blocks.gate.set()
        reader.join(10)
    assert index.lookup(*env) == n  # the stale pass ended without disturbing the new index


def test_a_pass_running_when_the_window_closes_keeps_nothing(net: Any) -> None:
    client = Client(net)
    blocks, clock = GatedBlocks(), Clock()
    index = RecentTxIndex(blocks, lambda: 1, clock=clock, window_s=30)
    assert index.active()
    env = client.envelope()
    blocks.add([env[1]])
    reader = threading.Thread(target=index.lookup, args=env)
    reader.start()
    try:
        assert blocks.entered.wait(10)
        clock.now += 31
        assert not index.active()  # the window closes while the pass runs
    finally:
        blocks.gate.set()
        reader.join(10)
    assert len(index) == 0  # its results belonged to the closed window
