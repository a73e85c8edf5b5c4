"""Red-team review of the protocol version stop (node.protocol) on the orderer paths other
than applying a committed Raft entry: an orderer that stores, while catching up (a restart
behind a snapshot, a snapshot sent by the leader, a learner joining, a lagging follower), a
config block raising the protocol version beyond its release must stop there -- not treat
the refusal as a failed fetch, retry and go on storing (and signing) the blocks after it.
And a chain that stopped on its own leads nothing: a submit is answered at once (NOT_LEADER)
instead of waiting in the queue of a driver that is gone."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rxchain.v1 import block_pb2, config_pb2, raft_pb2

from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import load_signer
from node.errors import RxError
from node.ledger.blockstore import BlockStore
from node.orderer.blockcutter import Pending
from node.orderer.chain import Chain, ChainOptions, bootstrap_conf_state
from node.orderer.configtx import validate_update
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import NOT_LEADER, Ticket
from node.protocol import PROTOCOL_UNSUPPORTED, SUPPORTED_VERSIONS
from node.raft.durable import DurableStorage
from node.raft.errors import RaftError
from node.raft.types import Message, MessageType, StateRole
from tests.orderer.cluster import config_envelope, make_network
from tests.orderer.inproc import Collect, Leader, genesis_parts, wait_leader

BEYOND = max(SUPPORTED_VERSIONS) + 1


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("protocol-catchup") / "net")


@pytest.fixture(scope="module")
def chain_blocks(net, tmp_path_factory) -> list[block_pb2.Block]:
    """Blocks 1 (a config raising the version, as ordered by a leader of a newer release)
    and 2 (an empty block after it) of the network."""
    data = tmp_path_factory.mktemp("newer-release-leader")
    lead = Leader(net, data)
    try:
        new = config_pb2.ConsortiumConfig()
        new.CopyFrom(lead.tracker.current.config)
        new.sequence += 1
        new.protocol_version = BEYOND
        lead.chain._held.append([Pending(config_envelope(net, new, ["ins01", "ins02", "ins03"]), Ticket("cfg"))])
        lead.chain._maybe_cut()
        with pytest.raises(RxError):
            lead.chain._process_ready()  # this leader's own release stops too
        raised = block_pb2.Block()
        raised.CopyFrom(lead.blocks.get(1))
    finally:
        lead.close()
    return [raised, _empty_block_after(raised)]


def _empty_block_after(prev: block_pb2.Block) -> block_pb2.Block:
    """An empty block chained to ``prev`` (as fetched: no orderer signature yet)."""
    block = block_pb2.Block()
    block.header.number = prev.header.number + 1
    block.header.previous_hash = block_header_hash(prev.header)
    block.header.data_hash = block_data_hash([])
    block.header.timestamp_ms = prev.header.timestamp_ms + 1
    return block


class _Fetch:
    """Serves the given blocks (a catch-up source); counts the fetches."""

    def __init__(self, blocks: list[block_pb2.Block]) -> None:
        self.blocks = blocks
        self.calls = 0

    def fetch(self, start: int, stop: int) -> Iterator[block_pb2.Block]:
        self.calls += 1
        for b in self.blocks:
            if start <= b.header.number <= stop:
                yield b


def _chain(net, data: Path, fetcher: _Fetch) -> tuple[Chain, DurableStorage, BlockStore]:
    _, blocks, tracker = genesis_parts(net.genesis_path, data / "blocks")
    storage = DurableStorage(data / "raft", bootstrap_conf_state=bootstrap_conf_state([1]), fsync=False)
    d = net.home / "nodes" / "orderer.ins01"
    chain = Chain(1, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins01"), Collect(),
                  fetcher, tracker, OrdererMetrics("catchup"), rng=random.Random(3),
                  options=ChainOptions(tick_s=0.01, election_tick=5, catch_up_retry_s=0.01))
    return chain, storage, blocks


def test_catching_up_stops_at_the_block_raising_the_version(net, tmp_path: Path,
                                                            chain_blocks: list[block_pb2.Block]) -> None:
    """The refusal is not a fetch failure to retry: the config block is stored, the block
    after it is not, and PROTOCOL_UNSUPPORTED reaches the driver."""
    fetcher = _Fetch(chain_blocks)
    chain, storage, blocks = _chain(net, tmp_path, fetcher)
    try:
        with pytest.raises(RxError) as err:
            chain._catch_up(2)
        assert err.value.reason == PROTOCOL_UNSUPPORTED
        assert blocks.height() == 2  # genesis + the config block, not block 2
        assert fetcher.calls == 1
    finally:
        storage.close()
        blocks.close()


def test_a_restart_behind_a_snapshot_stops_instead_of_ordering_on(net, tmp_path: Path,
                                                                  chain_blocks: list[block_pb2.Block]) -> None:
    """The driver's first step (catch up to the snapshot it restarted from) meets the block:
    the chain reports the stop (the process exits 2) and a submit is answered at once."""
    fetcher = _Fetch(chain_blocks)
    chain, storage, blocks = _chain(net, tmp_path, fetcher)
    chain._pending_snapshot_catch_up = raft_pb2.OrdererSnapshotData(
        last_block_number=2, last_block_hash=block_header_hash(chain_blocks[1].header))
    chain.start()
    try:
        assert chain.failed.wait(10), "the chain went on after the block raising the version"
        assert isinstance(chain.failure, RxError) and chain.failure.reason == PROTOCOL_UNSUPPORTED
        assert blocks.height() == 2
        out = chain.submit(b"envelope", "t1").wait(1.0)
        assert out is not None and out.reason == NOT_LEADER, out
    finally:
        chain.stop()
        storage.close()
        blocks.close()


def test_a_leader_whose_chain_stopped_answers_submits_at_once(net, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader whose chain stops (here: it applies the block raising the version, admitted
    as by a leader of a newer release) no longer claims to lead: envelopes handed to it
    before the process exits get NOT_LEADER (the broadcast service re-dispatches them)
    instead of waiting, unanswered, for a commit timeout in the queue of a driver that is
    gone; a graceful hand-over does not wait for a leadership it no longer has."""
    chain, storage, blocks = _chain(net, tmp_path, _Fetch([]))
    tracker = chain._tracker
    monkeypatch.setattr(tracker, "validate_now",
                        lambda raw: validate_update(tracker.current, raw, tracker._verifier))
    chain.start()
    try:
        wait_leader(chain)
        new = config_pb2.ConsortiumConfig()
        new.CopyFrom(tracker.current.config)
        new.sequence += 1
        new.protocol_version = BEYOND
        chain.submit(config_envelope(net, new, ["ins01", "ins02", "ins03"]), is_config=True)
        assert chain.failed.wait(10)
        st = chain.status()
        assert st.role != StateRole.LEADER and st.leader == 0
        ticket = chain.submit(b"envelope", "t1")
        out = ticket.wait(1.0)
        assert out is not None and out.reason == NOT_LEADER
        tickets = chain.submit_many([(b"a", False), (b"b", False)])
        assert all(t.wait(1.0) is not None for t in tickets)
        # a submit that read the role just before the driver ended is answered too
        chain._status = dataclasses.replace(st, role=StateRole.LEADER, leader=1)
        for submit in (lambda: [chain.submit(b"late", "t2")], lambda: chain.submit_many([(b"c", False)])):
            for t in submit():
                out = t.wait(1.0)
                assert out is not None and out.reason == NOT_LEADER
        chain._status = st
        started = time.monotonic()
        assert chain.hand_over_leadership(timeout_s=2.0)
        assert time.monotonic() - started < 1.0
    finally:
        chain.stop()
        storage.close()
        blocks.close()


def test_blocks_fetched_to_complete_a_snapshot_are_made_durable(net, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks a follower fetches to reach a snapshot it received are written without
    fsync; they are synced before the snapshot is relied on (they waited for the next local
    snapshot: a power loss before it could leave a hole below the blocks appended since)."""
    import node.orderer.chain as chain_mod

    _, gblocks, _ = genesis_parts(net.genesis_path, tmp_path / "g" / "blocks")
    block1 = _empty_block_after(gblocks.get(0))
    gblocks.close()
    chain, storage, blocks = _chain(net, tmp_path / "data", _Fetch([block1]))
    synced: list[str] = []
    monkeypatch.setattr(chain_mod, "sync_block_files", synced.append)
    try:
        chain._catch_up_to_snapshot(raft_pb2.OrdererSnapshotData(
            last_block_number=1, last_block_hash=block_header_hash(block1.header)))
        assert blocks.height() == 2
        assert synced == [blocks.directory]
    finally:
        storage.close()
        blocks.close()


# the driver thread ends with the error (logged as raft_driver_failed and raised on)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_append_conflicting_with_a_committed_entry_stops_the_chain(net, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """RaftLog refuses to truncate a committed entry (CommittedEntryConflict: this orderer's
    log and the leader's disagree on a committed entry, etcd-raft panics). The driver stops on
    it -- failure set, the process exits 70 -- instead of taking it for an invalid message to
    drop (it was: a warning per message, and the orderer went on answering heartbeats, live to
    the leader, while dropping every append). Message validation and the append handler keep
    a peer's message from reaching the check, so the step here runs it directly."""
    from node.raft.types import Entry

    chain, storage, blocks = _chain(net, tmp_path, _Fetch([]))
    chain.start()
    try:
        wait_leader(chain)
        deadline = time.monotonic() + 10
        while chain.status().commit < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        committed = chain.status().commit
        assert committed >= 1
        log = chain._node.raft.log
        # the driver thread steps it: an append over committed entry 1
        monkeypatch.setattr(chain._node, "step", lambda m: log.append([Entry(term=99, index=1)]))
        chain.step(Message(MessageType.HEARTBEAT, to=1, frm=2, term=1))
        assert chain.failed.wait(10), "the chain dropped the conflicting append and went on"
        assert isinstance(chain.failure, RaftError) and chain.failure.reason == "committed_entry_conflict"
        assert chain.status().commit == committed and log.term(1) != 99
    finally:
        chain.stop()
        storage.close()
        blocks.close()
