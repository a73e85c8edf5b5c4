"""Onboarding: an orderer added once every orderer of the genesis block has been replaced.

A new orderer knows of the network only its genesis block: the orderers it names are gone.
It joins by catching its block store up, every block verified from that genesis block, from
the orderers its node.yaml names before its Raft node starts (node.orderer.onboard)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, services_pb2

from node.config import load_node_config
from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Purpose, Signer, Verifier, load_signer
from node.errors import RxError
from node.genesis import config_from_genesis, make_genesis, read_genesis
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.orderer.configtx import ConfigTracker, OrdererConfig
from node.orderer.onboard import ONBOARDING_FAILED, Onboarding, OnboardOptions
from node.orderer.server import serve
from node.orderer.statecheck import is_blank
from node.protocol import PROTOCOL_UNSUPPORTED, SUPPORTED_VERSIONS
from node.raft.durable import DurableStorage
from node.raft.types import HardState
from node.raft.wal import has_segments
from tests.orderer.cluster import (
    Client,
    OrdererProcs,
    all_serving,
    config_envelope,
    make_network,
    not_signed_in_force,
    wait_until,
)
from tests.orderer.toyblocks import toy_block

ADMINS = ["ins01", "ins02", "ins03"]  # 3 of the 5 organisations: MAJORITY(admin)


def _with_orderers(full: config_pb2.ConsortiumConfig, raft_ids: list[int], sequence: int) -> config_pb2.ConsortiumConfig:
    out = config_pb2.ConsortiumConfig()
    out.CopyFrom(full)
    out.sequence = sequence
    del out.orderers[:]
    out.orderers.extend(o for o in full.orderers if o.raft_id in raft_ids)
    return out


def _submit(procs: OrdererProcs, client: Client, names: list[str], envelope: bytes, sequence: int) -> None:
    """Broadcast the config update of ``sequence`` until one of ``names`` orders it (an answer
    lost after it was ordered: a retry is then told the sequence is taken)."""
    taken = f"sequence {sequence}, expected {sequence + 1}"

    def submitted() -> bool:
        for name in names:
            [r] = client.broadcast(procs.target(name), [envelope], timeout=15)
            if r.accepted or taken in r.message:
                return True
        return False

    wait_until(submitted, 30, interval=0.3, what=f"config update {sequence} ordered")


@pytest.mark.integration
def test_an_orderer_joins_after_every_genesis_orderer_was_replaced(tmp_path):
    """Genesis: orderer 1 alone. Orderers 2 and 3 are added, 1 is removed and stopped, then 4
    is added: its genesis block names only orderer 1. It used to dial only 1 (to fetch blocks)
    and to refuse the leader's Raft messages (NOT_AN_ORDERER: the leader is no orderer of the
    genesis config), so it never joined and the others never promoted it. It now catches up
    from the orderers its node.yaml names, verifying every block, and joins under the current
    orderer set."""
    net = make_network(tmp_path / "net", orderer_orgs=4, extra={"snapshot_interval_blocks": 5})
    full = net.config
    start = _with_orderers(full, [1], full.sequence)
    net.genesis_path.write_bytes(make_genesis(start, int(time.time() * 1000)).SerializeToString())
    procs = OrdererProcs(net)
    client = Client(net)
    names = {n.raft_id: n.name for n in net.orderers()}
    try:
        procs.start(names[1])
        all_serving(procs, client, [names[1]])
        sequence = start.sequence
        steps: list[tuple[list[int], str]] = [([1, 2], "voters=(1, 2)"), ([1, 2, 3], "voters=(1, 2, 3)"),
                                              ([2, 3], "voters=(2, 3)")]
        for members, conf_state in steps:
            sequence += 1
            live = [names[r] for r in sorted(names) if names[r] in procs.procs]
            _submit(procs, client, live, config_envelope(net, _with_orderers(full, members, sequence), ADMINS),
                    sequence)
            for rid in members:
                if names[rid] not in procs.procs:
                    procs.start(names[rid])
            wait_until(lambda cs=conf_state, m=members: all(cs in procs.log_text(names[r]) for r in m), 40,
                       what=f"Raft at {conf_state}")
            for _ in range(3):  # a few blocks (snapshots every 5) under each orderer set
                rs = client.broadcast(procs.target(names[members[-1]]), [client.envelope()[1]], timeout=15)
                assert rs[0].accepted, rs[0].message
        procs.kill(names[1])  # decommissioned: no orderer of the genesis block is left
        rest = [names[2], names[3]]
        all_serving(procs, client, rest)
        sequence += 1
        _submit(procs, client, rest, config_envelope(net, _with_orderers(full, [2, 3, 4], sequence), ADMINS),
                sequence)
        procs.start(names[4])
        wait_until(lambda: all("voters=(2, 3, 4)" in procs.log_text(n) for n in rest), 40,
                   what="orderer 4 to join and be promoted to voter")
        assert "event=onboarded" in procs.log_text(names[4])
        # it votes: with orderer 2 down, 3 and 4 form the quorum of three voters
        procs.kill(names[2])

        def ordered() -> bool:
            rs = client.broadcast(procs.target(names[4]), [client.envelope()[1]], timeout=10)
            return bool(rs[0].accepted)

        wait_until(ordered, 30, interval=0.3, what="ordering by orderers 3 and 4")
        height = client.status(procs.target(names[3])).height
        wait_until(lambda: client.status(procs.target(names[4]), 1.0).height >= height, 20,
                   what="orderer 4 at orderer 3's height")
        mine = client.blocks(procs.target(names[4]))
        theirs = client.blocks(procs.target(names[3]))
        assert [block_header_hash(b.header) for b in mine] == [block_header_hash(b.header) for b in theirs]
        assert not_signed_in_force(mine) == []  # what peers delivering from it check
    finally:
        procs.close()
        for name in procs.names():
            print(f"===== {name}\n{procs.log_text(name)[-6000:]}")


# ---------------------------------------------------------------------------- in process
# Genesis: orderer 1 alone. Block 1 adds orderer 2 (signed by 1), block 2 removes 1 (signed by
# 2), block 3 adds orderer 3 (signed by 2), block 4 is ordered by 2 and 3 (signed by 3). The
# orderer onboarded is orderer 3: its genesis block names only orderer 1, gone.


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Any]:
    net = make_network(tmp_path_factory.mktemp("onboard") / "net", orderer_orgs=3)
    full = net.config
    start = _with_orderers(full, [1], full.sequence)
    genesis = make_genesis(start, int(time.time() * 1000))
    net.genesis_path.write_bytes(genesis.SerializeToString())
    signers = {rid: _node_signer(net, rid) for rid in (1, 2, 3)}
    blocks = [genesis]
    plan = [([1, 2], 1), ([2], 2), ([2, 3], 2), (None, 3)]
    for sequence, (members, signer) in enumerate(plan, start=start.sequence + 1):
        if members is None:
            b = toy_block(len(blocks), block_header_hash(blocks[-1].header))
        else:
            b = _block(len(blocks), block_header_hash(blocks[-1].header),
                       config_envelope(net, _with_orderers(full, members, sequence), ADMINS))
        blocks.append(_signed(signers[signer], b))
    return {"net": net, "blocks": blocks, "signers": signers}


def _node_signer(net, raft_id: int) -> Signer:
    d = net.home / "nodes" / f"orderer.ins0{raft_id}"
    return load_signer(d / "cert.pem", d / "key.pem", f"ins0{raft_id}")


def _block(number: int, previous_hash: bytes, envelope: bytes) -> block_pb2.Block:
    b = block_pb2.Block()
    b.header.number = number
    b.header.previous_hash = previous_hash
    b.header.timestamp_ms = int(time.time() * 1000)
    b.data.envelopes.append(envelope)
    b.header.data_hash = block_data_hash(list(b.data.envelopes))
    return b


def _signed(signer: Signer, block: block_pb2.Block, header_hash: bytes | None = None) -> block_pb2.Block:
    out = block_pb2.Block()
    out.CopyFrom(block)
    sig = out.metadata.orderer_signatures.add()
    sig.signer.CopyFrom(signer.identity)
    sig.signature = signer.sign(Purpose.BLOCK, header_hash or block_header_hash(block.header))
    return out


class Source:
    """A plaintext Deliver server on 127.0.0.1 serving ``blocks`` (``silent``: never answers;
    ``stall_after``: stops sending, the stream left open, after that many blocks)."""

    def __init__(self, blocks: list[block_pb2.Block], silent: bool = False, stall_after: int | None = None,
                 delay_s: float = 0.0) -> None:
        self.blocks, self.silent, self.stall_after, self.delay_s = blocks, silent, stall_after, delay_s
        self.asked: list[int] = []
        self._release = threading.Event()
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.AtomicBroadcast", {
            "Deliver": grpc.unary_stream_rpc_method_handler(
                self._deliver, request_deserializer=services_pb2.DeliverRequest.FromString,
                response_serializer=services_pb2.DeliverResponse.SerializeToString)})])
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _deliver(self, request: services_pb2.DeliverRequest, context: Any) -> Iterator[services_pb2.DeliverResponse]:
        self.asked.append(request.start_block)
        if self.silent:
            self._release.wait(10)
            return
        for i, b in enumerate(self.blocks[request.start_block:]):
            if i == self.stall_after:
                self._release.wait(10)
                return
            if self.delay_s:
                self._release.wait(self.delay_s)
            yield services_pb2.DeliverResponse(block=b)
        yield services_pb2.DeliverResponse(status=identity_pb2.ErrorDetail(reason="OK"))

    def close(self) -> None:
        self._release.set()
        self.server.stop(0).wait(5)


class Clock:
    """A fake monotonic clock advanced by the sleeps it is asked for."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, 0

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += 1


def _onboarding(chain: dict[str, Any], tmp_path: Path, endpoints: list[str], clock: Clock | None = None,
                **options: Any) -> tuple[Onboarding, BlockStore, ConfigTracker]:
    net = chain["net"]
    genesis = read_genesis(net.genesis_path)
    consortium = config_from_genesis(genesis)
    verifier = Verifier()
    store = BlockStore(tmp_path / "blocks", fsync=False)
    store.append(genesis)
    tracker = ConfigTracker(OrdererConfig(consortium, MSP(consortium, verifier), 0), verifier)
    clock = clock or Clock()
    onboarding = Onboarding(3, store, tracker, chain["signers"][3], grpc.insecure_channel, endpoints,
                            verifier=verifier, options=OnboardOptions(**{"wait_s": 5.0, **options}),
                            own_targets=[f"{o.host}:{o.port}" for o in net.config.orderers],
                            clock=lambda: clock.now, sleep=clock.sleep)
    return onboarding, store, tracker


def _hashes(blocks: list[block_pb2.Block]) -> list[bytes]:
    return [block_header_hash(b.header) for b in blocks]


def test_onboarding_stores_the_chain_verified_and_adopts_its_configs(chain, tmp_path) -> None:
    source = Source(chain["blocks"])
    onboarding, store, tracker = _onboarding(chain, tmp_path, [source.target])
    try:
        result = onboarding.run(wait=True)
        stored = [store.get(n) for n in range(store.height())]
    finally:
        source.close()
        store.close()
    assert (result.start_height, result.height, result.source) == (1, 5, source.target)
    assert _hashes(stored) == _hashes(chain["blocks"])
    assert tracker.current.block_number == 3 and tracker.current.orderer_ids() == [2, 3]
    assert [b.metadata.last_config_block for b in stored[1:]] == [1, 2, 3, 3]
    # what peers delivering from it check: blocks 1-3 as the others signed them (orderer 3 was
    # not in force before them), block 4 with its own signature added (it was)
    assert not_signed_in_force(stored) == []
    own = chain["signers"][3].identity.cert_der
    assert [any(s.signer.cert_der == own for s in b.metadata.orderer_signatures) for b in stored[1:]] == \
        [False, False, False, True]


def _tampered(chain: dict[str, Any], how: str) -> list[block_pb2.Block]:
    """The chain with block 2 (the config block removing orderer 1) replaced."""
    blocks = list(chain["blocks"])
    b = block_pb2.Block()
    b.CopyFrom(blocks[2])
    signers = chain["signers"]
    if how == "forged_signature":
        b = _signed(signers[2], blocks[2], b"another header")
        del b.metadata.orderer_signatures[0]
    elif how == "signed_by_a_stranger":  # orderer 3: no orderer of the config in force before it
        b = _signed(signers[3], blocks[2])
        del b.metadata.orderer_signatures[0]
    elif how == "unsigned":
        del b.metadata.orderer_signatures[:]
    elif how == "another_data":
        b.data.envelopes.append(b"more")
    elif how == "another_chain":
        b.header.previous_hash = b"\x00" * 32
        b = _signed(signers[2], b)
    blocks[2] = b
    return blocks


@pytest.mark.parametrize("how", ["forged_signature", "signed_by_a_stranger", "unsigned", "another_data",
                                 "another_chain"])
def test_a_block_failing_verification_is_never_stored_and_the_next_source_is_asked(chain, tmp_path, how) -> None:
    bad, good = Source(_tampered(chain, how)), Source(chain["blocks"])
    onboarding, store, _ = _onboarding(chain, tmp_path, [bad.target, good.target])
    try:
        result = onboarding.run(wait=True)
        stored = [store.get(n) for n in range(store.height())]
    finally:
        bad.close()
        good.close()
        store.close()
    assert result.failures[bad.target].startswith("BAD_BLOCK: block 2"), result.failures
    assert good.asked == [2]  # the verified prefix kept, the rest from the next source
    assert _hashes(stored) == _hashes(chain["blocks"]) and not_signed_in_force(stored) == []


def _refused(onboarding: Onboarding, store: BlockStore, source: Source) -> tuple[RxError, int]:
    """Onboarding (waiting) that must be refused: its error and the height stored by then."""
    try:
        with pytest.raises(RxError) as err:
            onboarding.run(wait=True)
        return err.value, store.height()
    finally:
        source.close()
        store.close()


def test_a_config_block_the_orderers_rules_refuse_is_not_adopted(chain, tmp_path) -> None:
    """Block 1 carries an update with too few admin signatures, signed by orderer 1: it is
    stored as a block (as on every orderer) but its config never goes in force, so block 2,
    signed by orderer 2 only, is refused."""
    net, signers = chain["net"], chain["signers"]
    blocks = list(chain["blocks"])
    weak = config_envelope(net, _with_orderers(net.config, [1, 2], net.config.sequence + 1), ["ins01"])
    blocks[1] = _signed(signers[1], _block(1, block_header_hash(blocks[0].header), weak))
    b = block_pb2.Block()
    b.CopyFrom(blocks[2])
    b.header.previous_hash = block_header_hash(blocks[1].header)
    del b.metadata.orderer_signatures[:]
    blocks[2] = _signed(signers[2], b)
    source = Source(blocks)
    onboarding, store, tracker = _onboarding(chain, tmp_path, [source.target], wait_s=2.0, retry_s=1.0)
    err, height = _refused(onboarding, store, source)
    assert err.reason == ONBOARDING_FAILED and "no valid signature" in err.message
    assert height == 2 and tracker.current.block_number == 0


def test_a_config_raising_the_protocol_version_beyond_this_release_stops_onboarding_there(chain, tmp_path) -> None:
    """As the Raft driver does: the block raising it is stored, nothing after it is judged by
    rules this release may lack, and the start is refused (PROTOCOL_UNSUPPORTED, exit 2)."""
    net, signers = chain["net"], chain["signers"]
    genesis = chain["blocks"][0]
    raised = config_pb2.ConsortiumConfig()
    raised.CopyFrom(config_from_genesis(genesis))
    raised.sequence += 1
    raised.protocol_version = max(SUPPORTED_VERSIONS) + 1
    first = _signed(signers[1], _block(1, block_header_hash(genesis.header), config_envelope(net, raised, ADMINS)))
    after = _signed(signers[1], toy_block(2, block_header_hash(first.header)))
    source = Source([genesis, first, after])
    onboarding, store, tracker = _onboarding(chain, tmp_path, [source.target])
    err, height = _refused(onboarding, store, source)
    assert err.reason == PROTOCOL_UNSUPPORTED
    assert height == 2 and tracker.current.block_number == 1


def test_an_orderer_not_in_genesis_gives_up_after_the_bound_naming_every_source(chain, tmp_path) -> None:
    silent = Source([], silent=True)
    dead = Source([])
    dead.close()  # nothing listens there any more
    clock = Clock()
    onboarding, store, _ = _onboarding(chain, tmp_path, [silent.target, dead.target], clock,
                                       wait_s=3.0, retry_s=1.0, answer_timeout_s=0.3)
    t0 = time.monotonic()
    try:
        with pytest.raises(RxError) as err:
            onboarding.run(wait=True)
    finally:
        silent.close()
        store.close()
    assert err.value.reason == ONBOARDING_FAILED
    assert f"{silent.target}: NO_ANSWER" in err.value.message and f"{dead.target}: UNAVAILABLE" in err.value.message
    assert clock.slept == 3 and time.monotonic() - t0 < 10  # 4 rounds of 0.3 s at most


def test_a_source_stopping_mid_stream_costs_the_answer_bound_not_the_stream_bound(chain, tmp_path) -> None:
    """A source that sent a block and then nothing more, its stream left open (hung, or cut off
    by a partition), held an orderer's start until the whole stream's bound (120 s; 8 s here),
    every start of an orderer of a network with such a source: each answer is now bounded as
    the first one is. The block it sent is kept and the next source goes on from there."""
    stalling, good = Source(chain["blocks"], stall_after=1), Source(chain["blocks"])
    onboarding, store, tracker = _onboarding(chain, tmp_path, [stalling.target, good.target],
                                             answer_timeout_s=0.5, call_timeout_s=8.0)
    t0 = time.monotonic()
    try:
        result = onboarding.run(wait=False)
        elapsed = time.monotonic() - t0
    finally:
        stalling.close()
        good.close()
        store.close()
    assert elapsed < 4, elapsed
    assert (result.height, result.source) == (5, good.target)
    assert result.failures[stalling.target].startswith("NO_ANSWER")
    assert (stalling.asked, good.asked) == ([1], [2])  # block 1 from the stalling one was kept
    assert tracker.current.block_number == 3


def test_an_orderer_not_waiting_asks_again_while_streams_cut_short_gain_blocks(chain, tmp_path) -> None:
    """Each source's stream ends at its bound (call_timeout_s: 120 s, of a long chain) before
    it has sent everything. One round was all for an orderer not waiting (restarting, or named
    by the genesis config: README Recovery's add-back): Raft started on a partial chain, under
    a config in force that may name none of the current orderers (here: block 3's, that adds
    orderer 3, never reached). Rounds go on while they gain blocks from streams cut short."""
    slow = Source(chain["blocks"], delay_s=0.4)
    onboarding, store, tracker = _onboarding(chain, tmp_path, [slow.target], call_timeout_s=1.0)
    try:
        result = onboarding.run(wait=False)
    finally:
        slow.close()
        store.close()
    assert (result.height, result.source) == (5, slow.target)
    assert tracker.current.block_number == 3 and len(slow.asked) > 1
    # a source that stops answering mid-stream is hung, not cut short: one round is all
    stalling = Source(chain["blocks"], stall_after=1)
    onboarding, store, _ = _onboarding(chain, tmp_path / "stalling", [stalling.target], answer_timeout_s=0.5)
    try:
        result = onboarding.run(wait=False)
    finally:
        stalling.close()
        store.close()
    assert (result.height, result.source, stalling.asked) == (2, "", [1])


def test_a_genesis_orderer_of_a_new_network_starts_at_once(chain, tmp_path) -> None:
    """A brand-new network: the other orderers are not up yet, or hold only the genesis block.
    One round, no waiting: Raft starts on the genesis block."""
    fresh = Source(chain["blocks"][:1])
    dead = Source([])
    dead.close()
    clock = Clock()
    onboarding, store, tracker = _onboarding(chain, tmp_path, [dead.target], clock)
    try:
        assert onboarding.run(wait=False).height == 1 and clock.slept == 0
        onboarding._endpoints.append(fresh.target)
        result = onboarding.run(wait=True)
        assert (result.height, result.source, clock.slept) == (1, fresh.target, 0)
    finally:
        fresh.close()
        store.close()
    assert tracker.current.block_number == 0


def test_only_an_orderer_with_a_blank_raft_state_is_onboarded(tmp_path) -> None:
    storage = DurableStorage(tmp_path / "raft", fsync=False)
    try:
        assert is_blank(storage)
        storage.save_ready(HardState(term=1, vote=0, commit=0), [], None)
        assert not is_blank(storage)
    finally:
        storage.close()


# ---------------------------------------------------------------------------- serve()


@pytest.fixture
def three_of_four(tmp_path) -> Any:
    """A network of 4 orderers whose genesis block names the first 3; none running."""
    net = make_network(tmp_path / "net", orderer_orgs=4, extra={"onboard_wait_ms": 1500, "onboard_answer_ms": 500})
    full = net.config
    net.genesis_path.write_bytes(
        make_genesis(_with_orderers(full, [1, 2, 3], full.sequence), int(time.time() * 1000)).SerializeToString())
    return net


def test_a_new_orderer_reaching_no_orderer_refuses_to_start_naming_each(three_of_four) -> None:
    """Orderer 4, which the genesis block does not name, reaches nobody: ONBOARDING_FAILED after
    the bound (extra.onboard_wait_ms), never a Raft node started on the genesis membership. Its
    Raft storage was created first: blocks a next start fetches then are no sign of a lost WAL
    (RAFT_STATE_LOST)."""
    net = three_of_four
    config = load_node_config(net.node_config_path("orderer.ins04"))
    t0 = time.monotonic()
    with pytest.raises(RxError) as err:
        serve(config)
    assert 1.5 <= time.monotonic() - t0 < 15
    assert err.value.reason == ONBOARDING_FAILED
    for n in net.orderers()[:3]:
        assert f"127.0.0.1:{n.port}: UNAVAILABLE" in err.value.message
    assert has_segments(config.data_dir / "raft" / "wal")


def test_an_orderer_restarting_with_its_raft_state_starts_at_once_with_nobody_up(three_of_four) -> None:
    """Orderer 4 (the genesis block does not name it) took part in the log: it asks the others
    once before Raft starts, never waits for them (its Raft log is its own)."""
    config = load_node_config(three_of_four.node_config_path("orderer.ins04"))
    storage = DurableStorage(config.data_dir / "raft", fsync=False)
    storage.save_ready(HardState(term=2, vote=0, commit=0), [], None)
    storage.close()
    t0 = time.monotonic()
    server = serve(config)
    try:
        assert time.monotonic() - t0 < 5
    finally:
        server.stop(0)


def test_a_genesis_orderer_of_a_new_network_starts_at_once_with_nobody_up(three_of_four) -> None:
    """The first orderer of a brand-new network to start: nobody to fetch from, and no waiting."""
    config = load_node_config(three_of_four.node_config_path("orderer.ins01"))
    t0 = time.monotonic()
    server = serve(config)
    try:
        assert time.monotonic() - t0 < 5
        assert server.blocks.height() == 1
    finally:
        server.stop(0)


@pytest.mark.integration
def test_an_orderer_down_while_every_orderer_it_knows_was_replaced_catches_up_on_restart(tmp_path):
    """Genesis: orderers 1, 2, 3. Orderer 3 is down while 4, 5 and 6 are added and 1 and 2
    removed (and stopped): its block store's config in force names 1, 2 and 3 only. Restarted
    with its data it took part in the log (no onboarding as a new orderer), so it refused the
    leader's messages (NOT_AN_ORDERER) and fetched blocks only from 1 and 2: it never caught
    up. It now catches its block store up from the orderers its node.yaml names before Raft
    starts. (Six orderers: each removal must commit without the one removed and orderer 3.)"""
    net = make_network(tmp_path / "net", orderer_orgs=6, extra={"snapshot_interval_blocks": 5})
    admins = ["ins01", "ins02", "ins03", "ins04"]  # 4 of the 7 organisations
    full = net.config
    start = _with_orderers(full, [1, 2, 3], full.sequence)
    net.genesis_path.write_bytes(make_genesis(start, int(time.time() * 1000)).SerializeToString())
    procs = OrdererProcs(net)
    client = Client(net)
    names = {n.raft_id: n.name for n in net.orderers()}
    try:
        for rid in (1, 2, 3):
            procs.start(names[rid])
        all_serving(procs, client, [names[1], names[2], names[3]])
        rs = client.broadcast(procs.target(names[1]), [client.envelope()[1] for _ in range(3)], timeout=15)
        assert all(r.accepted for r in rs)
        wait_until(lambda: client.status(procs.target(names[3]), 1.0).height >= 2, 20, what="orderer 3 at height 2")
        procs.kill(names[3])
        sequence = start.sequence
        for members in ([1, 2, 3, 4], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6], [3, 4, 5, 6]):
            sequence += 1
            live = [names[r] for r in sorted(names) if names[r] in procs.procs]
            _submit(procs, client, live, config_envelope(net, _with_orderers(full, members, sequence), admins),
                    sequence)
            for rid in members:
                if names[rid] not in procs.procs and rid != 3:
                    procs.start(names[rid])
            conf_state = f"voters={tuple(members)}"
            up = [r for r in members if r != 3]
            wait_until(lambda cs=conf_state, u=up: all(cs in procs.log_text(names[r]) for r in u), 40,
                       what=f"Raft at {conf_state}")
            for rid in (1, 2):
                if rid not in members:
                    procs.kill(names[rid])  # decommissioned
        procs.start(names[3])
        height = client.status(procs.target(names[4])).height
        wait_until(lambda: client.status(procs.target(names[3]), 1.0).height >= height, 40,
                   what="orderer 3 at the others' height")
        procs.kill(names[4])  # orderers 3, 5 and 6 now form the quorum of 3 of 4: 3 votes again

        def ordered() -> bool:
            rs = client.broadcast(procs.target(names[3]), [client.envelope()[1]], timeout=10)
            return bool(rs[0].accepted)

        wait_until(ordered, 30, interval=0.3, what="ordering by orderers 3, 5 and 6")
        assert not_signed_in_force(client.blocks(procs.target(names[3]))) == []
    finally:
        procs.close()
        for name in procs.names():
            print(f"===== {name}\n{procs.log_text(name)[-4000:]}")


def test_a_restarting_orderer_onboards_across_a_raised_message_bound_from_one_source(tmp_path: Path) -> None:
    """One Deliver stream carried the whole chain: the first block over the bound it was dialled
    at, behind the config block raising it, failed that source RESOURCE_EXHAUSTED, and an
    orderer restarting (asking each source once) started Raft on the partial chain, its server
    bound read from it (found by the review). The same source is asked again at the new bound."""
    net = make_network(tmp_path / "net")
    genesis = read_genesis(net.genesis_path)
    consortium = config_from_genesis(genesis)
    assert consortium.limits.max_message_bytes == 4 << 20
    raised = config_pb2.ConsortiumConfig()
    raised.CopyFrom(consortium)
    raised.sequence += 1
    raised.limits.max_message_bytes = 16 << 20
    raised.limits.max_envelope_bytes = 6 << 20
    signer = _node_signer(net, 1)
    b1 = _signed(signer, _block(1, block_header_hash(genesis.header), config_envelope(net, raised, ADMINS)))
    b2 = _signed(signer, _block(2, block_header_hash(b1.header), b"x" * (5 << 20)))  # over the old bound
    source = Source([genesis, b1, b2])
    verifier = Verifier()
    store = BlockStore(tmp_path / "blocks", fsync=False)
    store.append(genesis)
    tracker = ConfigTracker(OrdererConfig(consortium, MSP(consortium, verifier), 0), verifier)

    def channel(target: str) -> grpc.Channel:  # the bound in force as it is dialled (node.orderer.server)
        bound = tracker.current.config.limits.max_message_bytes
        return grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", bound)])

    onboarding = Onboarding(3, store, tracker, _node_signer(net, 3), channel, [source.target], verifier=verifier,
                            options=OnboardOptions(wait_s=5.0), own_targets=[],
                            clock=time.monotonic, sleep=time.sleep)
    try:
        result = onboarding.run(wait=False)
    finally:
        source.close()
        store.close()
    assert tracker.current.config.limits.max_message_bytes == 16 << 20
    assert result.height == 3, (result.height, result.failures)
