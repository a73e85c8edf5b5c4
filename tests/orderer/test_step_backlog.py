"""Raft messages received from one orderer wait for the driver under a bound of that orderer's
own (ChainOptions.max_queued_steps_per_peer, max_queued_step_bytes_per_peer): the Cluster.Step
handler reads a stream as fast as it arrives and handed every message to an unbounded queue, so
an orderer sending faster than the driver steps (a compromised one sending 4 MiB appends in a
loop) grew the other orderers' memory without limit. Past the bound its messages are dropped
(counted as ``backlog``; Raft retransmits), and the other orderers' messages are not affected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.orderer.chain import Chain
from node.raft.types import Entry, EntryType, Message, MessageType
from tests.orderer.cluster import make_network
from tests.orderer.inproc import Leader


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_network(tmp_path_factory.mktemp("backlog") / "net")


def _backlog_dropped(chain: Chain) -> float:
    value: float = chain._metrics.consensus_dropped.labels(reason="backlog")._value.get()
    return value


def test_raft_messages_of_one_orderer_queue_within_its_bound(net: Any, tmp_path: Path) -> None:
    lead = Leader(net, tmp_path)
    try:
        chain = lead.chain
        cap = chain._opt.max_queued_steps_per_peer
        term = chain._node.status().term
        ack = Message(MessageType.APP_RESP, to=1, frm=2, term=term, index=1)
        for _ in range(cap + 100):  # the driver steps none meanwhile
            chain.step(ack)
        assert chain._inbox.qsize() == cap  # old code: cap + 100, and on for as long as it sends
        assert _backlog_dropped(chain) == 100
        chain.step(Message(MessageType.APP_RESP, to=1, frm=3, term=term, index=1))  # another orderer
        assert chain._inbox.qsize() == cap + 1
        for _ in range(10):  # the driver steps some: room again
            chain._handle(*chain._inbox.get_nowait())
        chain.step(ack)
        assert chain._inbox.qsize() == cap + 1 - 10 + 1 and _backlog_dropped(chain) == 100
        while not chain._inbox.empty():
            chain._handle(*chain._inbox.get_nowait())
        assert chain._queued_steps == {}  # every message taken left its sender's backlog
    finally:
        lead.close()


def test_raft_message_bytes_of_one_orderer_queue_within_its_bound(net: Any, tmp_path: Path) -> None:
    lead = Leader(net, tmp_path)
    try:
        chain = lead.chain
        budget = chain._opt.max_queued_step_bytes_per_peer
        term = chain._node.status().term
        data = b"x" * (budget // 2 + 1)
        app = Message(MessageType.APP, to=1, frm=3, term=term, index=1, log_term=term,
                      entries=(Entry(term, 2, EntryType.NORMAL, data),))
        huge = Message(MessageType.APP, to=1, frm=2, term=term, index=1, log_term=term,
                       entries=(Entry(term, 2, EntryType.NORMAL, data * 3),))
        chain.step(huge)  # one message larger than the budget: alone, taken
        chain.step(app)  # another orderer's: its own budget
        chain.step(app)  # over orderer 3's budget with the first
        assert chain._inbox.qsize() == 2 and _backlog_dropped(chain) == 1
        assert chain._queued_steps == {2: (1, len(data) * 3), 3: (1, len(data))}
    finally:
        lead.close()
