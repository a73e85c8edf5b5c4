"""The leader's membership changes that follow the orderer set of the config in force: a new
orderer joins as a learner and is promoted only once caught up; what the driver may send
before its state is durable (driven in-process, fake clock, no driver thread)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest
from rxchain.v1 import block_pb2, config_pb2, raft_pb2

from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Purpose, Signer, load_signer
from node.orderer.chain import Chain, ChainOptions
from node.orderer.configrules import BAD_CONFIG_UPDATE
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import Ticket
from node.raft.durable import DurableStorage
from node.raft.types import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMeta
from tests.orderer.cluster import config_envelope, make_network, not_signed_in_force
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



class CopiesFetcher:
    """Serves, on successive fetches, the copies in ``rounds`` (one list of blocks each; the
    last repeated) and records the numbers asked for."""

    def __init__(self, rounds: list[list[block_pb2.Block]]) -> None:
        self.rounds = rounds
        self.asked: list[tuple[int, int]] = []

    def fetch(self, start: int, stop: int) -> Iterator[block_pb2.Block]:
        copies = self.rounds[min(len(self.asked), len(self.rounds) - 1)]
        self.asked.append((start, stop))
        for b in copies:
            if start <= b.header.number <= stop:
                out = block_pb2.Block()
                out.CopyFrom(b)
                yield out


def _signed(signer: Signer, block: block_pb2.Block, *, forged: bool = False) -> block_pb2.Block:
    """A copy of ``block`` signed by ``signer`` (``forged``: a signature of another header)."""
    out = block_pb2.Block()
    out.CopyFrom(block)
    sig = out.metadata.orderer_signatures.add()
    sig.signer.CopyFrom(signer.identity)
    sig.signature = signer.sign(Purpose.BLOCK, b"another header" if forged else block_header_hash(block.header))
    return out


@pytest.mark.parametrize("bad", ["another_block", "unsigned", "forged_signature", "signed_by_a_stranger"])
def test_an_orderer_not_in_the_set_stores_only_the_committed_block_as_an_orderer_in_force_signed_it(
        net, tmp_path, bad) -> None:
    """An orderer not in the orderer set (raft id 4: being added, or removed) stores the block
    of a committed entry as another orderer signed it. The copy it fetched used to be stored
    unchecked: another block of that number (stored, then block_mismatch: the driver stopped,
    and again on every restart), or one without a valid signature of an orderer of the config
    in force -- e.g. a copy an orderer added under an earlier release signed alone -- which
    every peer delivering from it refuses. Such a copy is now refused and fetched again."""
    genesis, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    storage = DurableStorage(tmp_path / "raft", fsync=False, bootstrap_conf_state=ConfState((1, 2, 3), (4,)))
    d = net.home / "nodes" / "orderer.ins02"
    member = load_signer(d / "cert.pem", d / "key.pem", "ins02")
    # its own certificate, which the config in force names for no orderer
    u = net.home / "orgs" / "ins03" / "users" / "admin"
    own = load_signer(u / "cert.pem", u / "key.pem", "ins03")
    committed = toy_block(1, block_header_hash(genesis.header))
    other = toy_block(1, block_header_hash(genesis.header))
    other.data.envelopes[0] = b"another env-1"
    other.header.data_hash = block_data_hash(list(other.data.envelopes))
    wrong = {
        "another_block": _signed(member, other),
        "unsigned": committed,
        "forged_signature": _signed(member, committed, forged=True),
        "signed_by_a_stranger": _signed(own, committed),
    }[bad]
    fetcher = CopiesFetcher([[wrong], [_signed(member, committed)]])
    chain = Chain(4, storage, blocks, own, Collect(), fetcher, tracker, OrdererMetrics("copy"),
                  rng=random.Random(4), clock=lambda: 100.0,
                  options=ChainOptions(tick_s=1000.0, election_tick=10, catch_up_retry_s=0.01))
    try:
        chain._apply_block(committed, Entry(term=2, index=5, data=committed.SerializeToString()))
        assert fetcher.asked == [(1, 1), (1, 1)]  # the bad copy refused, fetched again
        assert blocks.height() == 2
        stored = blocks.get(1)
        assert block_header_hash(stored.header) == block_header_hash(committed.header)
        assert not_signed_in_force([genesis, stored]) == []
    finally:
        storage.close()
        blocks.close()


def test_an_orderer_is_added_back_only_once_raft_applied_its_removal(net, tmp_path) -> None:
    """README "Recovery": an orderer that lost its data is taken out of the orderer set,
    emptied and added back with its old entry (same raft id). An update adding it back before
    the leader applied the ConfChange removing it left it a voter (the leader saw the orderer
    set match Raft's again): emptied, it came back a blank voter, as RAFT_STATE_LOST forbids.
    The leader now refuses that update until the removal is applied; then it is admitted (and
    the orderer rejoins as a learner)."""
    lead = Leader(net, tmp_path, ConfState(voters=(1, 2, 3)))
    try:
        start = lead.consortium
        assert sorted(o.raft_id for o in start.orderers) == [1, 2, 3]
        removed = config_pb2.ConsortiumConfig()
        removed.CopyFrom(start)
        removed.sequence = start.sequence + 1
        del removed.orderers[:]
        removed.orderers.extend(o for o in start.orderers if o.raft_id != 3)
        lead.tracker.adopt(removed, 1)  # its config block applied; the ConfChange not yet
        back = config_pb2.ConsortiumConfig()
        back.CopyFrom(start)
        back.sequence = removed.sequence + 1
        refused = Ticket("too-early")
        lead.chain._on_submit(config_envelope(net, back, ["ins01", "ins02", "ins03"]), refused, True)
        out = refused.peek()
        assert out is not None and out.reason == BAD_CONFIG_UPDATE and "[3]" in out.message, out
        # the leader removes it from Raft (orderer 2 acknowledging), then it may come back
        lead.reconfigure()
        lead.ack(2)
        assert lead.chain._conf_state.voters == (1, 2) and 3 not in lead.chain._conf_state.learners
        admitted = Ticket("after-removal")
        lead.chain._on_submit(config_envelope(net, back, ["ins01", "ins02", "ins03"]), admitted, True)
        out = admitted.peek()
        assert out is None or out.accepted, out
        assert lead.chain._config_inflight is not None  # cut and proposed
    finally:
        lead.close()
