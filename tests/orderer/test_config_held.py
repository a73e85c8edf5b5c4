"""A leader just elected, before it may cut (found by a review).

A config envelope waited only while another config block was *in flight* (proposed); one held,
not yet proposed -- a leader just elected cuts nothing until it applied its term's first entry
-- did not count. A second config envelope taken in that window was checked against the config
in force, not against the first's result, and both were proposed back to back: the second
block's limits replaced the first's at cut time, and a first config dropped at cut time
restored the cutter's batch limits though the second was held behind it. A held config now
counts as in flight; one dropped as its block is cut lets the waiting ones in.

Such a leader has not applied the entries of earlier terms either: its re-check of forwarded
envelopes judged them by a config it was about to leave. It now judges them as the block is cut.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from rxchain.v1 import config_pb2, transaction_pb2

from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose, load_signer
from node.orderer.broadcast import BroadcastHandler, EnvelopeValidator
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import ORDERER_CLOCK_SKEW, TOO_LARGE, Ticket
from node.raft.types import ConfState
from tests.orderer.cluster import Client, config_envelope, make_network
from tests.orderer.inproc import Collect, Leader
from tests.orderer.test_batch import NoForward
from tests.orderer.test_clockwatch import _LOWERED

ADMINS = ["ins01", "ins02", "ins03"]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("held") / "net")


def _reelected(net, data: Path, now_ms: int) -> Leader:
    """Orderer 1 leading voters 1-3, then deposed by orderer 2 (a higher term) and elected again:
    a LEADER that may not cut yet (its term's first entry is not applied: ``_lead_ready``)."""
    lead = Leader(net, data, ConfState(voters=(1, 2, 3)), Collect(), wall_ms=lambda: now_ms)
    lead.ack(2)
    lead.ack(3)
    lead.reelect()
    return lead


def test_a_second_config_taken_before_the_first_is_proposed_does_not_hide_its_lowered_envelope_limit(
        net, tmp_path: Path) -> None:
    """C1 lowers max_envelope_bytes to 32 KiB; C2 (same sequence, a different change) is taken
    while C1 is held. Both are proposed; C2 is invalid once C1 is applied (its sequence), so the
    blocks behind them are governed by C1 -- but the leader checks them against C2's limits
    (and the old config's): a 40 KB envelope is ordered into a block whose config allows 32 KiB,
    which no peer checks (the bug d27437f fixed, back through this window). C2 should also have
    been checked against C1's result ("one config block at a time") and refused."""
    now_ms = int(time.time() * 1000)
    lead = _reelected(net, tmp_path, now_ms)
    try:
        c1, c2 = Ticket("c1"), Ticket("c2")
        lead.chain._on_submit(config_envelope(net, lead.next_config(limits__max_envelope_bytes=32_768), ADMINS),
                              c1, True)
        lead.chain._on_submit(config_envelope(net, lead.next_config(batch__timeout_ms=200), ADMINS), c2, True)
        lead.ack(2)  # the new term's entry commits: the leader may cut
        assert lead.chain._lead_ready()
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        large = Client(net).envelope(size=40_000, timestamp_ms=now_ms)
        assert 32_768 < len(large[1]) < 65_536
        t_large = Ticket("large")
        lead.chain._on_submit(large[1], t_large, False)
        lead.now += 1.0  # the batch timeout
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        lead.ack(2)  # everything proposed commits
        assert lead.tracker.current.config.limits.max_envelope_bytes == 32_768  # C1 is in force
        out = t_large.peek()
        assert out is not None and out.reason == TOO_LARGE, (
            f"a {len(large[1])}-byte envelope was answered {out} behind a config block lowering "
            "max_envelope_bytes to 32768")
    finally:
        lead.close()


def test_a_second_config_taken_before_the_first_is_proposed_is_checked_against_its_result(
        net, tmp_path: Path) -> None:
    """"One config block at a time: the next one is checked against its result" (_on_submit):
    a config envelope taken while another is held, not yet proposed, is checked against the
    config in force instead and ordered; both carry the same sequence, so the second is
    answered accepted but never adopted (every orderer and peer finds it invalid)."""
    now_ms = int(time.time() * 1000)
    lead = _reelected(net, tmp_path, now_ms)
    try:
        c1, c2 = Ticket("c1"), Ticket("c2")
        lead.chain._on_submit(config_envelope(net, lead.next_config(batch__timeout_ms=100), ADMINS), c1, True)
        lead.chain._on_submit(config_envelope(net, lead.next_config(batch__timeout_ms=200), ADMINS), c2, True)
        lead.ack(2)
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        lead.ack(2)
        o1, o2 = c1.peek(), c2.peek()
        assert o1 is not None and o1.accepted, o1
        assert lead.tracker.current.config.batch.timeout_ms == 100
        assert o2 is not None and not o2.accepted, (
            f"the second config update was answered {o2} but is not in force "
            f"(batch.timeout_ms {lead.tracker.current.config.batch.timeout_ms})")
    finally:
        lead.close()


class _OnChain:
    """The broadcast handler's view of ``lead``'s chain, driven from the test thread (no driver:
    each submit reaches ``_on_submit`` at once)."""

    def __init__(self, lead: Leader) -> None:
        self._lead = lead

    def submit(self, envelope: bytes, tx_id: str = "", is_config: bool = False) -> Ticket:
        return self.submit_many([(envelope, is_config)])[0]

    def submit_many(self, items: Any) -> list[Ticket]:
        tickets = [Ticket() for _ in items]
        for (envelope, is_config), t in zip(items, tickets, strict=True):
            self._lead.chain._on_submit(envelope, t, is_config)
        return tickets

    def leader_id(self) -> int:
        return 1

    def own_id(self) -> int:
        return 1


def test_a_new_leader_orders_what_the_config_it_has_yet_to_apply_allows(net, tmp_path: Path) -> None:
    """A leader just elected has not applied the entries of earlier terms
    yet -- a config block the former leader committed among them (raising max_envelope_bytes
    to 128 KiB here), which a follower has applied. That follower forwards a 100 KB envelope
    (right after a leader change the envelopes handed back NOT_LEADER are re-dispatched at
    once): the leader's re-check refused it TOO_LARGE against the config it was about to leave,
    a definitive refusal, though it cuts nothing before it applied that config block and the
    envelope is within the config in force when its block is cut (``_within_limits`` checks the
    size as the block is cut)."""
    now_ms = int(time.time() * 1000)
    lead = Leader(net, tmp_path, ConfState(voters=(1, 2, 3)), Collect(), wall_ms=lambda: now_ms)
    try:
        lead.ack(2)
        lead.ack(3)
        raise_ = Ticket("raise")
        lead.chain._on_submit(config_envelope(net, lead.next_config(limits__max_envelope_bytes=131_072), ADMINS),
                              raise_, True)
        lead.chain._process_ready()
        assert lead.chain._config_inflight is not None  # in the log, not committed here yet
        # deposed and elected again: the config block is in its log, not applied
        lead.reelect()
        assert lead.tracker.current.config.limits.max_envelope_bytes == 65_536
        msp = lambda: lead.tracker.current.msp  # noqa: E731
        validator = EnvelopeValidator(msp, lead.consortium.consortium_id,
                                      lambda: lead.tracker.current.config.limits.max_envelope_bytes,
                                      lambda: now_ms)
        handler = BroadcastHandler(validator, _OnChain(lead), NoForward(), OrdererMetrics("t"))
        big = Client(net).envelope(size=100_000, timestamp_ms=now_ms)
        assert 65_536 < len(big[1]) <= 131_072
        (ticket,) = handler.submit_local_many([big[1]])  # forwarded by the follower
        lead.ack(2)  # the new term's entry commits, the config block with it: applied
        assert lead.tracker.current.config.limits.max_envelope_bytes == 131_072
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        lead.now += 1.0
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        lead.ack(2)
        out = ticket.peek()
        assert out is not None and out.accepted, (
            f"a {len(big[1])}-byte envelope, within the 131072 in force when the leader cuts, was "
            f"answered {out}")
    finally:
        lead.close()


def _config_envelope_at(net, new_config: config_pb2.ConsortiumConfig, timestamp_ms: int) -> bytes:
    """``config_envelope`` with the header timestamp ``timestamp_ms``."""
    config_bytes = new_config.SerializeToString()
    update = config_pb2.ConfigUpdate(config=config_bytes)
    signers = [load_signer(net.user_dir(org, "admin") / "cert.pem", net.user_dir(org, "admin") / "key.pem", org)
               for org in ADMINS]
    for s in signers:
        update.signatures.add(signer=s.identity_bytes, signature=s.sign(Purpose.CONFIG, config_bytes))
    nonce = secrets.token_bytes(24)
    header = transaction_pb2.TxHeader(
        tx_id=compute_tx_id(nonce, signers[0].identity), type=transaction_pb2.CONFIG,
        creator=signers[0].identity, nonce=nonce, timestamp_ms=timestamp_ms,
        consortium_id=new_config.consortium_id)
    payload = transaction_pb2.Transaction(header=header.SerializeToString(),
                                          config_update=update.SerializeToString()).SerializeToString()
    return transaction_pb2.Envelope(payload=payload,
                                    signature=signers[0].sign(Purpose.ENVELOPE, payload)).SerializeToString()


def test_a_first_config_dropped_at_cut_time_takes_the_second_ones_narrowed_batch_limits_along(
        net, tmp_path: Path) -> None:
    """C1 (a batch timeout change) and C2 (lowering max_message_bytes to
    256 KiB and batch.max_bytes to 100 000) are held by a leader just elected; C1 is dropped at
    cut time (ORDERER_CLOCK_SKEW: it was taken by an orderer whose clock agreed with its
    client's, the leader's is 20 minutes ahead). ``_propose_block`` restored the cutter's batch
    limits to the config in force though C2, which had narrowed them, was proposed right after:
    the blocks cut behind C2 held the old batch.max_bytes (1 MiB), over the bound C2 puts in
    force. C2 now waits for C1 and narrows the limits when it is taken."""
    now_ms = int(time.time() * 1000)
    ahead_ms = now_ms + 1_200_000  # the leader's clock, 20 minutes ahead (the bound is 10)
    lead = _reelected(net, tmp_path, ahead_ms)
    try:
        c1, c2 = Ticket("c1"), Ticket("c2")
        lead.chain._on_submit(_config_envelope_at(net, lead.next_config(batch__timeout_ms=100), now_ms), c1, True)
        lowered = lead.next_config(limits__max_message_bytes=_LOWERED, batch__max_bytes=100_000)
        lead.chain._on_submit(_config_envelope_at(net, lowered, ahead_ms), c2, True)
        lead.ack(2)
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        out = c1.peek()
        assert out is not None and out.reason == ORDERER_CLOCK_SKEW, out
        client = Client(net)
        for i in range(8):  # 8 x ~40 KB: within the old batch.max_bytes, over the lowered bound
            lead.chain._on_submit(client.envelope(size=40_000, timestamp_ms=ahead_ms)[1], Ticket(f"t{i}"), False)
        lead.now += 1.0  # the batch timeout
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        lead.ack(2)
        out = c2.peek()
        assert out is not None and out.accepted, out
        assert lead.tracker.current.config.limits.max_message_bytes == _LOWERED
        sizes = lead.sizes_after(out.block_number)
        assert sizes and max(sizes) <= _LOWERED, sizes
    finally:
        lead.close()

