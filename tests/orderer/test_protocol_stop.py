"""An orderer that applies a config block raising the protocol version beyond its release
stores the block and stops (PROTOCOL_UNSUPPORTED): the driver reports it and the process
exits 2 instead of serving on with a dead chain (node.protocol)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from rxchain.v1 import config_pb2

from node.crypto.signing import load_signer
from node.errors import RxError
from node.orderer.blockcutter import Pending
from node.orderer.chain import Chain, ChainOptions, bootstrap_conf_state
from node.orderer.configtx import validate_update
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import Ticket
from node.protocol import PROTOCOL_UNSUPPORTED, SUPPORTED_VERSIONS
from node.raft.durable import DurableStorage
from tests.orderer.cluster import config_envelope, make_network
from tests.orderer.inproc import Collect, Leader, NoFetch, genesis_parts, wait_leader

BEYOND = max(SUPPORTED_VERSIONS) + 1


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("protocol") / "net")


def _raised(lead_config: config_pb2.ConsortiumConfig, net, version: int = BEYOND) -> bytes:
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(lead_config)
    new.sequence += 1
    new.protocol_version = version
    return config_envelope(net, new, ["ins01", "ins02", "ins03"])


def test_the_leader_does_not_admit_a_version_it_does_not_implement(net, tmp_path: Path) -> None:
    lead = Leader(net, tmp_path)
    try:
        ticket = Ticket("cfg")
        lead.chain._on_submit(_raised(lead.tracker.current.config, net), ticket, True)
        out = ticket.peek()
        assert out is not None and out.reason == "BAD_CONFIG_UPDATE", out
        assert f"protocol version {BEYOND}" in out.message
    finally:
        lead.close()


def test_applying_the_block_stores_it_then_stops(net, tmp_path: Path) -> None:
    """Admitted by a leader of a newer release, the block is ordered and stored like on every
    orderer; this one then refuses to go on."""
    lead = Leader(net, tmp_path)
    try:
        height = lead.blocks.height()
        lead.chain._held.append([Pending(_raised(lead.tracker.current.config, net), Ticket("cfg"))])
        lead.chain._maybe_cut()
        with pytest.raises(RxError) as err:
            lead.chain._process_ready()
        assert err.value.reason == PROTOCOL_UNSUPPORTED
        assert lead.blocks.height() == height + 1
        assert lead.tracker.current.config.protocol_version == BEYOND
    finally:
        lead.close()


def test_the_driver_thread_reports_the_stop(net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, blocks, tracker = genesis_parts(net.genesis_path, tmp_path / "blocks")
    # a leader of a newer release: admission as in validate_update alone
    monkeypatch.setattr(tracker, "validate_now",
                        lambda raw: validate_update(tracker.current, raw, tracker._verifier))
    storage = DurableStorage(tmp_path / "raft", bootstrap_conf_state=bootstrap_conf_state([1]), fsync=False)
    d = net.home / "nodes" / "orderer.ins01"
    chain = Chain(1, storage, blocks, load_signer(d / "cert.pem", d / "key.pem", "ins01"), Collect(),
                  NoFetch(), tracker, OrdererMetrics("p"), rng=random.Random(3),
                  options=ChainOptions(tick_s=0.01, election_tick=5))
    chain.start()
    try:
        wait_leader(chain)
        ticket = chain.submit(_raised(tracker.current.config, net), is_config=True)
        assert chain.failed.wait(10)
        assert isinstance(chain.failure, RxError) and chain.failure.reason == PROTOCOL_UNSUPPORTED
        assert ticket.wait(5) is not None  # every ticket answered
        assert tracker.current.config.protocol_version == BEYOND
    finally:
        chain.stop()
        storage.close()
        blocks.close()


class _DyingServer:
    def __init__(self, failure: BaseException) -> None:
        self._failure = failure
        self.polls = 0
        self.stopped = threading.Event()

    def failure(self) -> BaseException | None:
        self.polls += 1
        return self._failure if self.polls > 1 else None

    def stop(self, grace_s: float = 2.0) -> None:
        self.stopped.set()


@pytest.mark.parametrize(("failure", "code"), [
    (RxError(PROTOCOL_UNSUPPORTED, "orderer 1: the consortium runs protocol version 9"), 2),
    (RuntimeError("a bug in the driver"), 70),
])
def test_the_process_exits_when_its_chain_stops(capsys: pytest.CaptureFixture[str],
                                                failure: BaseException, code: int) -> None:
    from node.orderer.__main__ import run_until_stopped

    server = _DyingServer(failure)
    assert run_until_stopped(server, threading.Event(), poll_s=0.01) == code
    assert server.stopped.is_set() and server.polls == 2
    assert str(failure) in capsys.readouterr().err
    # a signal first: a graceful stop, exit 0
    done, calm = threading.Event(), _DyingServer(failure)
    done.set()
    assert run_until_stopped(calm, done, poll_s=0.01) == 0 and calm.stopped.is_set()


def test_the_leader_admits_a_raise_only_once_every_voter_implements_it(
        net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised while an orderer still runs an older release, that one would stop at the block
    (and a quorum of them would stop ordering): the leader waits until every voter has told,
    in its Raft messages, that it implements the new version."""
    import node.protocol as protocol
    from node.orderer.releases import ReleaseWatch
    from node.raft.types import ConfState

    newer = max(SUPPORTED_VERSIONS) + 1
    monkeypatch.setattr(protocol, "SUPPORTED_VERSIONS", frozenset({*SUPPORTED_VERSIONS, newer}))
    releases = ReleaseWatch()
    lead = Leader(net, tmp_path, ConfState(voters=(1, 2, 3)), releases=releases)
    try:
        def admit() -> str:
            ticket = Ticket("cfg")
            lead.chain._on_submit(_raised(lead.tracker.current.config, net, newer), ticket, True)
            out = ticket.peek()
            return "" if out is None else out.reason + " " + out.message  # None: held for a block

        said = admit()
        assert said.startswith("BAD_CONFIG_UPDATE orderers [2, 3] have not told"), said
        releases.observe(2, newer)
        releases.observe(3, max(SUPPORTED_VERSIONS))  # an older release
        said = admit()
        assert said.startswith("BAD_CONFIG_UPDATE orderers [3]") and f"{{3: {newer - 1}}}" in said, said
        releases.observe(3, newer)
        assert admit() == ""  # admitted: on its way into a block
        assert lead.chain._config_inflight is not None  # proposed as the next block
    finally:
        lead.close()
