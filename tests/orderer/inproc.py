"""In-process orderer chains for tests: a transport that records what it is asked to send,
a fetcher that is never needed, a sink that drops what a sender reports, the genesis parts a
Chain starts from, a bounded wait for a started Chain to lead, and :class:`Leader`, a Chain
leading a Raft group whose other voters the test plays (fake clock, no driver thread)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from rxchain.v1 import block_pb2, config_pb2, services_pb2

from node.crypto.signing import Verifier, load_signer
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.orderer.blockcutter import Pending
from node.orderer.chain import Chain, ChainOptions, bootstrap_conf_state
from node.orderer.configtx import ConfigTracker, OrdererConfig
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import Ticket
from node.raft.durable import DurableStorage
from node.raft.types import ConfState, Message, MessageType, StateRole
from tests.orderer.cluster import Client


class Collect:
    """Transport of a one-orderer chain: nothing to send to, records what it is asked."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, messages: Sequence[Message]) -> None:
        self.sent.extend(messages)


class NoFetch:
    def fetch(self, start: int, stop: int) -> Iterator[block_pb2.Block]:
        raise RuntimeError("a single orderer never catches up from others")


class NullSink:
    """What a PeerSender reports to (received messages, unreachable peers, snapshots): dropped."""

    def step(self, m: Message) -> None:
        pass

    def report_unreachable(self, i: int) -> None:
        pass

    def report_snapshot(self, i: int, ok: bool) -> None:
        pass


def wait_leader(chain: Chain, timeout_s: float = 10.0) -> None:
    """Wait until the started ``chain`` leads (a single voter elects itself); fail the test
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while chain.status().role != StateRole.LEADER and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chain.status().role == StateRole.LEADER, chain.status()


def genesis_parts(genesis_path: Path, blocks_dir: Path) -> tuple[block_pb2.Block, BlockStore, ConfigTracker]:
    """What an in-process Chain starts from: the genesis block, a new block store (no fsync)
    holding it, and a config tracker of the genesis consortium."""
    genesis = read_genesis(genesis_path)
    consortium = config_from_genesis(genesis)
    verifier = Verifier()
    blocks = BlockStore(blocks_dir, fsync=False)
    blocks.append(genesis)
    tracker = ConfigTracker(OrdererConfig(consortium, MSP(consortium, verifier), 0), verifier)
    return genesis, blocks, tracker


class Leader:
    """Orderer 1 of the 3-orderer network, leading the voters of ``conf_state`` (by default
    the only one), driven from the test thread with a fake clock (no driver thread); the
    other voters are simulated by stepping their answers into it."""

    def __init__(self, net, data: Path, conf_state: ConfState | None = None,
                 transport: Collect | None = None, **chain_kwargs: Any) -> None:
        self.net = net
        genesis = read_genesis(net.genesis_path)
        self.consortium = config_from_genesis(genesis)
        self.verifier = Verifier()
        self.blocks = BlockStore(data / "blocks", fsync=False)
        self.blocks.append(genesis)
        self.tracker = ConfigTracker(
            OrdererConfig(self.consortium, MSP(self.consortium, self.verifier), 0), self.verifier)
        self.storage = DurableStorage(data / "raft", fsync=False,
                                      bootstrap_conf_state=conf_state or bootstrap_conf_state([1]))
        d = net.home / "nodes" / "orderer.ins01"
        self.now = 100.0
        self.chain = Chain(1, self.storage, self.blocks, load_signer(d / "cert.pem", d / "key.pem", "ins01"),
                           transport or Collect(), NoFetch(), self.tracker, OrdererMetrics("reconf"),
                           rng=random.Random(5), clock=lambda: self.now,
                           options=ChainOptions(tick_s=1000.0, election_tick=10), **chain_kwargs)
        self.chain._node.campaign()
        others = [v for v in (conf_state.voters if conf_state else ()) if v != 1]
        for _ in range(10):
            self.chain._process_ready()
            if self.chain._lead_ready():
                break
            node = self.chain._node
            for other in others:  # the other voters grant their votes and follow
                if node.status().role == StateRole.LEADER:
                    self.ack(other)
                else:
                    node.step(Message(MessageType.PRE_VOTE_RESP, to=1, frm=other, term=node.status().term + 1))
                    node.step(Message(MessageType.VOTE_RESP, to=1, frm=other, term=node.status().term))
        assert self.chain._lead_ready()

    def reconfigure(self, rounds: int = 1) -> ConfState:
        for _ in range(rounds):
            self.now += 2.0
            self.chain._maybe_reconfigure(self.now)
            self.chain._process_ready()
        return self.chain._conf_state

    def order_one(self) -> bool:
        ticket = Ticket("t")
        self.chain._held.append([Pending(Client(self.net).envelope()[1], ticket)])
        self.chain._maybe_cut()
        self.chain._process_ready()
        out = ticket.peek()
        return out is not None and out.accepted

    def ack(self, frm: int) -> None:
        """``frm`` acknowledges the leader's whole log (it caught up)."""
        st = self.chain._node.status()
        self.chain._node.step(Message(MessageType.APP_RESP, to=1, frm=frm, term=st.term,
                                      index=st.last_index))
        self.chain._process_ready()

    def next_config(self, **changes: int) -> config_pb2.ConsortiumConfig:
        """The genesis config as the next sequence, with ``changes`` (``group__field=value``,
        e.g. ``limits__max_envelope_bytes=32_768``)."""
        new = config_pb2.ConsortiumConfig()
        new.CopyFrom(self.consortium)
        new.sequence += 1
        for name, value in changes.items():
            group, attr = name.split("__")
            setattr(getattr(new, group), attr, value)
        return new

    def sizes_after(self, number: int) -> list[int]:
        """The serialized size of every block stored after block ``number``."""
        return [self.blocks.get(n).ByteSize() for n in range(number + 1, self.blocks.height())]

    def reelect(self) -> None:
        """Deposed by orderer 2 (a higher term), then elected again with its vote: a LEADER that
        may not cut yet (its term's first entry is not applied, nor what its log holds from
        the former term: ``_lead_ready``)."""
        node = self.chain._node
        node.step(Message(MessageType.HEARTBEAT, to=1, frm=2, term=node.status().term + 1))
        self.chain._process_ready()
        assert node.status().role != StateRole.LEADER
        node.campaign()
        for _ in range(10):
            self.chain._process_ready()
            if node.status().role == StateRole.LEADER:
                break
            node.step(Message(MessageType.PRE_VOTE_RESP, to=1, frm=2, term=node.status().term + 1))
            node.step(Message(MessageType.VOTE_RESP, to=1, frm=2, term=node.status().term))
        self.chain._process_ready()
        assert self.chain._role == StateRole.LEADER and not self.chain._lead_ready()

    def close(self) -> None:
        self.storage.close()
        self.blocks.close()


class LoggedMessages(logging.Handler):
    """The messages logged (INFO and above) by the loggers it is added to, in this process."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def step_server() -> tuple[grpc.Server, int, list[services_pb2.ConsensusRequest]]:
    """A Cluster.Step server recording every request it receives (plaintext, 127.0.0.1):
    (server -- stop it --, port, the requests so far)."""
    got: list[services_pb2.ConsensusRequest] = []

    def step(requests: Iterator[services_pb2.ConsensusRequest], context: Any) -> services_pb2.ConsensusResponse:
        got.extend(requests)
        return services_pb2.ConsensusResponse()

    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("rxchain.v1.Cluster", {
        "Step": grpc.stream_unary_rpc_method_handler(
            step, request_deserializer=services_pb2.ConsensusRequest.FromString,
            response_serializer=services_pb2.ConsensusResponse.SerializeToString)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, got
