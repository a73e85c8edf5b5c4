"""The leader's membership changes that follow the orderer set of the config in force: a new
orderer joins as a learner and is promoted only once caught up; what the driver may send
before its state is durable (driven in-process, fake clock, no driver thread)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest
from rxchain.v1 import block_pb2, config_pb2, raft_pb2

from node.crypto.canonical import block_header_hash
from node.crypto.signing import load_signer
from node.orderer.chain import Chain, ChainOptions
from node.orderer.metrics import OrdererMetrics
from node.raft.durable import DurableStorage
from node.raft.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta
from tests.orderer.cluster import make_network
from tests.orderer.inproc import Collect, Leader, genesis_parts
from tests.orderer.toyblocks import toy_block


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("reconfigure") / "net")


@pytest.fixture
def leader(net, tmp_path) -> Iterator[Leader]:
    lead = Leader(net, tmp_path)
    try:
        yield lead
    finally:
        lead.close()


def test_new_orderers_join_as_learners_so_ordering_goes_on_while_they_are_down(leader: Leader) -> None:
    """The config names orderers 1, 2, 3; Raft has voter 1 only and 2, 3 are not running.
    Adding them as voters at once would make a quorum of 2 that cannot form (the old code
    did: no block committed until the new orderers run and caught up)."""
    assert leader.reconfigure(rounds=4) == ConfState(voters=(1,), learners=(2, 3))
    assert leader.order_one()
    assert leader.order_one()


def test_a_learner_is_promoted_once_caught_up(leader: Leader) -> None:
    assert leader.reconfigure(rounds=2) == ConfState(voters=(1,), learners=(2, 3))
    assert leader.reconfigure(rounds=2) == ConfState(voters=(1,), learners=(2, 3))  # nobody caught up
    leader.ack(2)
    assert leader.reconfigure() == ConfState(voters=(1, 2), learners=(3,))
    assert leader.reconfigure(rounds=2) == ConfState(voters=(1, 2), learners=(3,))  # 3 still behind
    leader.ack(3)
    leader.reconfigure()  # proposes the promotion of 3; committing it needs voter 2 now
    assert leader.chain._conf_state == ConfState(voters=(1, 2), learners=(3,))
    leader.ack(2)
    assert leader.chain._conf_state == ConfState(voters=(1, 2, 3), learners=())


def test_a_learner_the_config_no_longer_names_is_removed(leader: Leader) -> None:
    assert leader.reconfigure(rounds=2) == ConfState(voters=(1,), learners=(2, 3))
    smaller = config_pb2.ConsortiumConfig()
    smaller.CopyFrom(leader.consortium)
    del smaller.orderers[2:]  # orderer 3 is dropped from the config before it caught up
    leader.tracker.adopt(smaller, 0)
    assert leader.reconfigure(rounds=2) == ConfState(voters=(1,), learners=(2,))
    assert leader.order_one()


def test_a_voter_the_config_no_longer_names_is_removed_while_learners_catch_up(net, tmp_path) -> None:
    """Raft voters 1 and 4, the config names 1, 2, 3 (orderer 4 was replaced): 2 and 3 join
    as learners, and the removal of 4 does not wait for them to catch up."""
    lead = Leader(net, tmp_path, ConfState(voters=(1, 4)))
    try:
        for _ in range(2):
            lead.reconfigure()
            lead.ack(4)  # the quorum of {1, 4} needs 4 to commit each change
        assert lead.chain._conf_state == ConfState(voters=(1, 4), learners=(2, 3))
        lead.reconfigure()  # neither learner caught up: the removal of 4 goes ahead
        lead.ack(4)
        assert lead.chain._conf_state == ConfState(voters=(1,), learners=(2, 3))
        assert lead.order_one()
    finally:
        lead.close()


class DurabilityCheck(Collect):
    """Records, for every append or heartbeat sent, whether the sender had its commit index
    durable at that moment (DurableStorage updates its index only after the WAL write)."""

    def __init__(self) -> None:
        super().__init__()
        self.storage: DurableStorage | None = None
        self.ahead: list[tuple[int, int]] = []

    def send(self, messages: Sequence[Message]) -> None:
        super().send(messages)
        assert self.storage is not None
        durable = self.storage.last_index()
        self.ahead += [(m.commit, durable) for m in messages
                       if m.type in (MessageType.APP, MessageType.HEARTBEAT) and m.commit > durable]


def test_a_single_voter_never_sends_the_commit_of_entries_it_has_not_persisted(net, tmp_path) -> None:
    """A single voter commits an entry as it appends it. The leader's early send (appends go
    out while it fsyncs) then told its learner to commit -- and apply -- a block the leader
    could still lose in a crash, and replace after restarting: the learner's block store
    would hold a block no other orderer has. Such appends now wait for the fsync."""
    transport = DurabilityCheck()
    lead = Leader(net, tmp_path, ConfState(voters=(1,), learners=(2,)), transport)
    transport.storage = lead.storage
    try:
        lead.ack(2)
        for _ in range(3):
            assert lead.order_one()
        appends = [m for m in transport.sent if m.type == MessageType.APP and m.entries]
        assert len(appends) >= 3 and appends[-1].commit == appends[-1].entries[-1].index
        assert transport.ahead == []
    finally:
        lead.close()


class RecordingFetcher:
    """Serves toy blocks chained onto the genesis block and records how many messages the
    node had sent when it was asked."""

    def __init__(self, genesis_hash: bytes, count: int, transport: Collect) -> None:
        self.blocks = []
        prev = genesis_hash
        for n in range(1, count + 1):
            b = toy_block(n, prev)
            prev = block_header_hash(b.header)
            self.blocks.append(b)
        self.transport = transport
        self.sent_when_asked: list[int] = []

    def fetch(self, start: int, stop: int) -> Iterator[block_pb2.Block]:
        self.sent_when_asked.append(len(self.transport.sent))
        yield from (b for b in self.blocks if start <= b.header.number <= stop)


def test_a_snapshot_is_acknowledged_only_after_its_blocks_are_fetched(net, tmp_path) -> None:
    """The acknowledgement of a snapshot tells the leader this node holds everything up to
    it: it used to leave before the blocks were fetched, so a learner could be promoted to
    voter (and counted in the quorum) while its driver was still busy fetching the chain."""
    genesis, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    storage = DurableStorage(tmp_path / "raft", fsync=False, bootstrap_conf_state=ConfState((1, 2, 3), (4,)))
    d = net.home / "nodes" / "orderer.ins02"
    transport = Collect()
    fetcher = RecordingFetcher(block_header_hash(genesis.header), 3, transport)
    chain = Chain(2, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins02"), transport,
                  fetcher, tracker, OrdererMetrics("snap"), rng=random.Random(2), clock=lambda: 100.0,
                  options=ChainOptions(tick_s=1000.0, election_tick=10))
    try:
        data = raft_pb2.OrdererSnapshotData(
            last_block_number=3, last_block_hash=block_header_hash(fetcher.blocks[-1].header))
        snap = Snapshot(SnapshotMeta(20, 2, ConfState((1, 2, 3), (4,))), data.SerializeToString())
        chain._node.step(Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=snap))
        chain._process_ready()
        assert blocks.height() == 4 and chain._applied == 20
        assert fetcher.sent_when_asked == [0]  # nothing acknowledged before the fetch
        [ack] = [m for m in transport.sent if m.type == MessageType.APP_RESP]
        assert (ack.to, ack.index, ack.reject) == (1, 20, False)
    finally:
        storage.close()
        blocks.close()
