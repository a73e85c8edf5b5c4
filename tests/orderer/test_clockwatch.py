"""An orderer whose wall clock is wrong: the leader stamps every block with its clock and
peers refuse transactions too far from their block's stamp, so a leader with a wrong clock
would make every transaction invalid. The leader refuses such envelopes at cut time
(ORDERER_CLOCK_SKEW, retryable) and hands leadership over when a quorum of the orderers
disagrees with its clock (``node.orderer.clockwatch``)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from node.orderer.blockcutter import Pending
from node.orderer.clockwatch import ClockWatch, odd_clock_out
from node.orderer.metrics import OrdererMetrics
from node.orderer.ticket import ORDERER_CLOCK_SKEW, TOO_LARGE, Ticket
from node.orderer.transport import PeerSender
from node.peer.broadcast_client import RETRYABLE
from node.protocol import SUPPORTED_VERSIONS
from node.raft.types import ConfState, Message, MessageType, StateRole
from tests.orderer.cluster import (
    Client,
    OrdererProcs,
    config_envelope,
    leader_of,
    make_network,
    set_extra,
    tx_ids_of,
    wait_until,
)
from tests.orderer.inproc import Collect, Leader, NullSink, step_server

HOUR_MS = 3_600_000
BASE_MS = 1_800_000_000_000
SKEW_MS = 600_000  # the test consortium's max_clock_skew_ms (tests/orderer/cluster.py)


@pytest.mark.parametrize(("voters", "offsets", "expected"), [
    ((1, 2, 3), {2: 10, 3: -20}, None),  # everybody agrees
    ((1, 2, 3), {2: -HOUR_MS, 3: -HOUR_MS + 5}, 2),  # leader an hour ahead: to the lowest id
    ((1, 2, 3), {2: -HOUR_MS, 3: 1}, None),  # a follower is off: the leader agrees with 3
    ((1, 2, 3), {2: -HOUR_MS, 3: HOUR_MS}, None),  # nobody agrees with anybody: stay
    ((1, 2, 3), {2: -HOUR_MS}, None),  # one against one (3 not heard from): stay
    ((1, 2, 3), {2: -HOUR_MS, 3: -HOUR_MS, 4: 0}, 2),  # 4 is not a voter (a learner)
    ((1, 2, 3, 4, 5), {2: 0, 3: -HOUR_MS, 4: -HOUR_MS, 5: -HOUR_MS}, 3),
    ((1, 2, 3, 4, 5), {2: -HOUR_MS, 3: -HOUR_MS, 4: 0, 5: 0}, None),  # 1, 4, 5 agree
    # the quorum agrees with 3 most (within the bound of 2 and 4 both), so it gets it
    ((1, 2, 3, 4, 5), {2: -HOUR_MS - 250_000, 3: -HOUR_MS, 4: -HOUR_MS + 250_000}, 3),
    ((1, 2, 3), {2: -300_000, 3: -300_000}, None),  # exactly at the bound: agrees
    ((1, 2, 3), {2: -300_001, 3: -300_001}, 2),
])
def test_the_leader_steps_aside_only_for_a_quorum_that_disagrees_with_it(
        voters: tuple[int, ...], offsets: dict[int, int], expected: int | None) -> None:
    assert odd_clock_out(1, voters, offsets, tolerance_ms=300_000) == expected


def test_no_bound_or_not_a_voter_means_no_verdict() -> None:
    assert odd_clock_out(1, (1, 2, 3), {2: -HOUR_MS, 3: -HOUR_MS}, tolerance_ms=0) is None
    assert odd_clock_out(9, (1, 2, 3), {2: -HOUR_MS, 3: -HOUR_MS}, tolerance_ms=1) is None


def test_clock_watch_keeps_fresh_offsets_only() -> None:
    now = [100.0]
    watch = ClockWatch(lambda: BASE_MS, clock=lambda: now[0], max_age_s=10.0)
    watch.observe(2, BASE_MS - 1_500)
    watch.observe(3, 0)  # a sender that does not tell its clock
    assert watch.offsets() == {2: -1_500}
    now[0] += 6.0
    watch.observe(4, BASE_MS + 20)
    watch.observe(2, BASE_MS - 1_000)  # the latest one counts
    assert watch.offsets() == {2: -1_000, 4: 20}
    now[0] += 10.5
    assert watch.offsets() == {}


def test_every_raft_message_tells_the_senders_clock() -> None:
    server, port, got = step_server()

    readings = iter(range(BASE_MS, BASE_MS + 1000))
    sender = PeerSender(1, 2, f"127.0.0.1:{port}", grpc.insecure_channel, NullSink(),
                        wall_ms=lambda: next(readings))
    try:
        sender.send_many([Message(MessageType.HEARTBEAT, to=2, frm=1, term=1) for _ in range(3)])
        wait_until(lambda: len(got) == 3, 10, what="three messages")
        sender.close()
        assert [r.sent_wall_ms for r in got] == [BASE_MS, BASE_MS + 1, BASE_MS + 2]
        # and the highest protocol version its release implements (node.orderer.releases)
        assert {r.max_protocol_version for r in got} == {max(SUPPORTED_VERSIONS)}
    finally:
        sender.close()
        server.stop(0)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return make_network(tmp_path_factory.mktemp("clocks") / "net")


def _three_voters(net, data: Path, leader_clock_ms: int,
                  watch: ClockWatch | None) -> tuple[Leader, Collect]:
    transport = Collect()
    lead = Leader(net, data, ConfState(voters=(1, 2, 3)), transport,
                  wall_ms=lambda: leader_clock_ms, clock_watch=watch)
    lead.ack(2)
    lead.ack(3)
    transport.sent.clear()
    return lead, transport


AHEAD_MS = BASE_MS + HOUR_MS  # the wall clock of a leader an hour ahead


def _leader_an_hour_ahead(net, data: Path) -> tuple[Leader, Collect, ClockWatch]:
    """Three voters led by orderer 1, whose clock reads :data:`AHEAD_MS`; the watch it
    compares the others' clocks with (nothing observed yet)."""
    watch = ClockWatch(lambda: AHEAD_MS)
    lead, transport = _three_voters(net, data, AHEAD_MS, watch)
    return lead, transport, watch


@pytest.mark.parametrize(("follower_offsets", "hands_to"), [
    ({2: -HOUR_MS, 3: -HOUR_MS}, 2),  # the leader is an hour ahead of both
    ({2: 3_000, 3: -HOUR_MS}, None),  # 3 is the odd one out: the leader stays
])
def test_a_leader_a_quorum_disagrees_with_hands_leadership_over(
        net, tmp_path: Path, follower_offsets: dict[int, int], hands_to: int | None) -> None:
    lead, transport, watch = _leader_an_hour_ahead(net, tmp_path)
    try:
        for node, offset in follower_offsets.items():
            watch.observe(node, AHEAD_MS + offset)
        metrics: OrdererMetrics = lead.chain._metrics
        checks = lead.chain._opt.clock_disagree_checks
        assert checks == 3
        for _ in range(checks - 1):  # not on the first odd verdicts: only when they persist
            lead.chain._check_clocks(lead.now, watch)
            lead.chain._process_ready()
        assert [m for m in transport.sent if m.type == MessageType.TIMEOUT_NOW] == []
        assert metrics.clock_handovers._value.get() == 0
        lead.chain._check_clocks(lead.now, watch)
        lead.chain._process_ready()
        timeouts = [m.to for m in transport.sent if m.type == MessageType.TIMEOUT_NOW]
        assert timeouts == ([] if hands_to is None else [hands_to])
        assert metrics.clock_handovers._value.get() == (0 if hands_to is None else 1)
        assert metrics.clock_offset_ms.labels(orderer="3")._value.get() == follower_offsets[3]
    finally:
        lead.close()


def test_one_agreeing_check_restarts_the_count(net, tmp_path: Path) -> None:
    """A clock found odd twice, then once within the bound (a stepped clock, a slow message),
    needs three odd checks in a row again before leadership moves."""
    lead, transport, watch = _leader_an_hour_ahead(net, tmp_path)
    try:
        def check(offset: int) -> None:
            for node in (2, 3):
                watch.observe(node, AHEAD_MS + offset)
            lead.chain._check_clocks(lead.now, watch)
            lead.chain._process_ready()

        for offset in (-HOUR_MS, -HOUR_MS, 0, -HOUR_MS, -HOUR_MS):
            check(offset)
        assert [m for m in transport.sent if m.type == MessageType.TIMEOUT_NOW] == []
        check(-HOUR_MS)
        assert [m.to for m in transport.sent if m.type == MessageType.TIMEOUT_NOW] == [2]
    finally:
        lead.close()


def test_leadership_does_not_go_to_a_voter_not_heard_from_since_the_last_quorum_check(
        net, tmp_path: Path) -> None:
    """Orderer 2 agrees with 3 about the time but died (its offset is still within the 10 s
    horizon): the leader hands over to 3, which the Raft core saw active, not to 2 (the lower
    id, which the verdict would otherwise pick); with neither active it keeps trying."""
    lead, transport, watch = _leader_an_hour_ahead(net, tmp_path)
    try:
        for node in (2, 3):
            watch.observe(node, AHEAD_MS - HOUR_MS)
        progress = lead.chain._node.raft.tracker.progress
        progress[2].recent_active = False
        progress[3].recent_active = False
        for _ in range(lead.chain._opt.clock_disagree_checks + 2):
            lead.chain._check_clocks(lead.now, watch)
            lead.chain._process_ready()
        assert [m for m in transport.sent if m.type == MessageType.TIMEOUT_NOW] == []
        progress[3].recent_active = True
        lead.chain._check_clocks(lead.now, watch)  # the count was kept: hands over at once
        lead.chain._process_ready()
        assert [m.to for m in transport.sent if m.type == MessageType.TIMEOUT_NOW] == [3]
    finally:
        lead.close()


def test_a_target_well_inside_the_bound_is_preferred() -> None:
    """Hysteresis: 2 agrees with the quorum only near the edge of the tolerance, 3 well inside
    it; 3 gets leadership although 2 has the lower id (its own checks would then be a quarter
    of the tolerance from moving it on). Without such a target the loose bound still picks."""
    tol = 300_000
    voters = (1, 2, 3, 4, 5)
    # 1 is an hour ahead; 2, 3, 4, 5 sit at -HOUR +- small amounts: 2 at the quorum's edge
    offsets = {2: -HOUR_MS - 290_000, 3: -HOUR_MS, 4: -HOUR_MS + 10_000, 5: -HOUR_MS - 5_000}
    assert odd_clock_out(1, voters, offsets, tol) == 3
    assert odd_clock_out(1, voters, offsets, tol, eligible={2}) == 2  # loose bound fallback
    assert odd_clock_out(1, voters, offsets, tol, eligible=set()) is None


def test_a_leader_deposed_in_the_same_loop_does_not_move_the_new_leaders_leadership(
        net, tmp_path: Path) -> None:
    """The clock check runs after the loop stepped its messages but before the Ready that
    tells the chain it lost leadership: the Raft core already follows orderer 3 (a higher-term
    heartbeat), while the chain still believes it leads. Its verdict (its clock disagrees,
    leadership to 2) must not reach 3: a follower forwards transfer_leader to its leader,
    which would hand a leadership nobody measured over to 2."""
    lead, transport, watch = _leader_an_hour_ahead(net, tmp_path)
    try:
        for node in (2, 3):
            watch.observe(node, AHEAD_MS - HOUR_MS)
        term = lead.chain._node.status().term
        lead.chain._node.step(Message(MessageType.HEARTBEAT, to=1, frm=3, term=term + 1))
        role_seen_by_chain = lead.chain._role
        assert role_seen_by_chain == StateRole.LEADER  # the Ready telling it is not processed yet
        lead.chain._check_clocks(lead.now, watch)
        lead.chain._process_ready()
        assert lead.chain._role == StateRole.FOLLOWER and lead.chain.leader_id() == 3
        sent = [(m.type, m.to, m.index) for m in transport.sent
                if m.type in (MessageType.TRANSFER_LEADER, MessageType.TIMEOUT_NOW)]
        assert sent == []
        assert lead.chain._metrics.clock_handovers._value.get() == 0
    finally:
        lead.close()


def _cut(lead: Leader, envelopes: list[bytes]) -> list[Ticket]:
    tickets = [Ticket(f"t{i}") for i in range(len(envelopes))]
    lead.chain._held.append([Pending(e, t) for e, t in zip(envelopes, tickets, strict=True)])
    lead.chain._maybe_cut()
    lead.chain._process_ready()
    return tickets


def test_the_leader_refuses_at_cut_time_what_every_peer_would_refuse(net, tmp_path: Path) -> None:
    """Envelopes reach the leader checked against the clock of the orderer that took them;
    one further than the skew bound from the leader's stamp would be TX_TIMESTAMP_SKEW on
    every peer. It is answered ORDERER_CLOCK_SKEW (retryable) and left out of the block."""
    lead = Leader(net, tmp_path, wall_ms=lambda: BASE_MS)
    try:
        client = Client(net)
        height = lead.blocks.height()
        good = client.envelope(timestamp_ms=BASE_MS - SKEW_MS)  # exactly at the bound
        late = client.envelope(timestamp_ms=BASE_MS - SKEW_MS - 1)
        early = client.envelope(timestamp_ms=BASE_MS + SKEW_MS + 1)
        t_good, t_late, t_early = _cut(lead, [good[1], late[1], early[1]])
        for t in (t_late, t_early):
            out = t.peek()
            assert out is not None and out.reason == ORDERER_CLOCK_SKEW, out
        assert ORDERER_CLOCK_SKEW in RETRYABLE  # the peers' broadcast client tries again
        out = t_good.peek()
        assert out is not None and out.accepted, out
        assert lead.blocks.height() == height + 1
        block = lead.blocks.get(height)
        assert len(block.data.envelopes) == 1 and block.data.envelopes[0] == good[1]
        assert block.header.timestamp_ms == BASE_MS
        # a batch with nothing left makes no block
        (t_only,) = _cut(lead, [client.envelope(timestamp_ms=BASE_MS - HOUR_MS)[1]])
        out = t_only.peek()
        assert out is not None and out.reason == ORDERER_CLOCK_SKEW
        assert lead.blocks.height() == height + 1
    finally:
        lead.close()


def test_behind_a_config_block_in_flight_both_skew_bounds_apply(net, tmp_path: Path) -> None:
    """A config block narrowing max_clock_skew_ms is proposed but not yet committed; the leader
    pipelines the next block behind it. Peers judge that block by the NEW bound (the config in
    force before it), so an envelope within the old bound but not the new one is refused
    ORDERER_CLOCK_SKEW at cut time, not ordered into a block every peer would mark it
    TX_TIMESTAMP_SKEW in."""
    now_ms = int(time.time() * 1000)  # the config envelope carries the real time
    lead, _ = _three_voters(net, tmp_path, now_ms, None)
    try:
        new = lead.next_config(limits__max_clock_skew_ms=60_000)
        assert lead.consortium.limits.max_clock_skew_ms == SKEW_MS
        cfg_ticket = Ticket("cfg")
        lead.chain._on_submit(config_envelope(net, new, ["ins01", "ins02", "ins03"]), cfg_ticket, True)
        lead.chain._process_ready()
        assert lead.chain._config_inflight is not None and cfg_ticket.peek() is None  # not committed
        client = Client(net)
        far = client.envelope(timestamp_ms=now_ms - 120_000)  # within the old bound only
        near = client.envelope(timestamp_ms=now_ms - 1_000)
        t_far, t_near = _cut(lead, [far[1], near[1]])
        out = t_far.peek()
        assert out is not None and out.reason == ORDERER_CLOCK_SKEW, out
        lead.ack(2)  # the config block and the block behind it commit
        cfg_out, near_out = cfg_ticket.peek(), t_near.peek()
        assert cfg_out is not None and cfg_out.accepted, cfg_out
        assert near_out is not None and near_out.accepted, near_out
        assert lead.tracker.current.config.limits.max_clock_skew_ms == 60_000
        block = lead.blocks.get(near_out.block_number)
        assert list(block.data.envelopes) == [near[1]]
        assert lead.chain._config_inflight is None
        # with the config adopted, its bound alone applies
        (t_again,) = _cut(lead, [client.envelope(timestamp_ms=now_ms - 61_000)[1]])
        out = t_again.peek()
        assert out is not None and out.reason == ORDERER_CLOCK_SKEW, out
    finally:
        lead.close()


def test_the_leader_refuses_at_cut_time_an_envelope_over_the_limit_in_force(net, tmp_path: Path) -> None:
    """Forwarded envelopes are judged against the config in force as their block is cut (the
    forwarding orderer may not have applied a config block lowering max_envelope_bytes; no
    peer checks the size): one over the limit is answered TOO_LARGE and left out."""
    now_ms = int(time.time() * 1000)
    lead = Leader(net, tmp_path, wall_ms=lambda: now_ms)
    try:
        client = Client(net)
        over = client.envelope(size=70_000, timestamp_ms=now_ms)
        ok = client.envelope(timestamp_ms=now_ms)
        assert len(over[1]) > lead.consortium.limits.max_envelope_bytes == 65_536
        t_over, t_ok = _cut(lead, [over[1], ok[1]])
        out = t_over.peek()
        assert out is not None and out.reason == TOO_LARGE, out
        out = t_ok.peek()
        assert out is not None and out.accepted, out
        assert list(lead.blocks.get(out.block_number).data.envelopes) == [ok[1]]
    finally:
        lead.close()


def test_behind_a_config_block_in_flight_a_lowered_envelope_limit_applies(net, tmp_path: Path) -> None:
    """A config block lowering max_envelope_bytes is proposed but not yet committed; the leader
    pipelines the next block behind it. Its envelopes were checked against the config in force
    as they were taken, so one within the old limit but over the new one would be ordered into
    a block the new config governs (no peer checks the size). It is refused TOO_LARGE at cut
    time; once the config is adopted the broadcast check refuses it as it comes."""
    now_ms = int(time.time() * 1000)
    lead, _ = _three_voters(net, tmp_path, now_ms, None)
    try:
        new = lead.next_config(limits__max_envelope_bytes=32_768)
        assert lead.consortium.limits.max_envelope_bytes == 65_536
        cfg_ticket = Ticket("cfg")
        lead.chain._on_submit(config_envelope(net, new, ["ins01", "ins02", "ins03"]), cfg_ticket, True)
        lead.chain._process_ready()
        assert lead.chain._config_inflight is not None and cfg_ticket.peek() is None  # not committed
        client = Client(net)
        large = client.envelope(size=40_000, timestamp_ms=now_ms)  # within the old limit only
        small = client.envelope(timestamp_ms=now_ms)
        assert 32_768 < len(large[1]) < 65_536
        t_large, t_small = _cut(lead, [large[1], small[1]])
        out = t_large.peek()
        assert out is not None and out.reason == TOO_LARGE, out
        assert "32768" in out.message
        lead.ack(2)  # the config block and the block behind it commit
        cfg_out, small_out = cfg_ticket.peek(), t_small.peek()
        assert cfg_out is not None and cfg_out.accepted, cfg_out
        assert small_out is not None and small_out.accepted, small_out
        assert list(lead.blocks.get(small_out.block_number).data.envelopes) == [small[1]]
        # with no config block in flight, the envelopes the broadcast check took are cut as they are
        (t_again,) = _cut(lead, [client.envelope(size=20_000, timestamp_ms=now_ms)[1]])
        lead.ack(2)
        out = t_again.peek()
        assert out is not None and out.accepted, out
    finally:
        lead.close()


_LOWERED = 256 << 10


def test_a_block_cut_behind_a_config_block_lowering_the_message_bound_fits_it(net, tmp_path: Path) -> None:
    """The leader's cutter kept the batch limits of the config in force until a config block
    lowering ``max_message_bytes`` (and ``batch.max_bytes``) was applied: a block cut behind it
    held up to the old batch.max_bytes, over the bound a peer dials at once it committed the
    config block (found by the review). Both configs' batch limits apply meanwhile."""
    now_ms = int(time.time() * 1000)
    lead, _ = _three_voters(net, tmp_path, now_ms, None)
    try:
        # 2 x max(batch, envelope) fits the lowered bound
        new = lead.next_config(limits__max_message_bytes=_LOWERED, batch__max_bytes=100_000)
        assert lead.consortium.limits.max_message_bytes == 4 << 20
        assert lead.consortium.batch.max_bytes == 1 << 20
        cfg_ticket = Ticket("cfg")
        lead.chain._on_submit(config_envelope(net, new, ["ins01", "ins02", "ins03"]), cfg_ticket, True)
        lead.chain._process_ready()
        assert lead.chain._config_inflight is not None and cfg_ticket.peek() is None  # not committed
        client = Client(net)
        tickets = []
        for i in range(8):  # 8 x ~40 KB: within the old batch.max_bytes, over the lowered bound
            t = Ticket(f"t{i}")
            lead.chain._on_submit(client.envelope(size=40_000, timestamp_ms=now_ms)[1], t, False)
            tickets.append(t)
        lead.now += 1.0  # the batch timeout: cut what is pending
        lead.chain._maybe_cut()
        lead.chain._process_ready()
        lead.ack(2)  # the config block and the blocks behind it commit
        cfg_out = cfg_ticket.peek()
        assert cfg_out is not None and cfg_out.accepted, cfg_out
        assert lead.tracker.current.config.limits.max_message_bytes == _LOWERED
        sizes = lead.sizes_after(cfg_out.block_number)
        # a peer dialled at the bound in force (the lowered one) must be able to receive each
        assert sizes and max(sizes) <= _LOWERED, sizes
    finally:
        lead.close()


def test_appends_after_a_config_block_lowering_the_message_bound_fit_it(net, tmp_path: Path) -> None:
    """The entries of one Raft append were bounded by half the bound this orderer started with
    (4 MiB here) until its restart: an orderer restarted under a config lowering
    ``max_message_bytes`` refused, as a whole, an append catching it up on several blocks
    (each within the lowered bound), again at every retry. The limit follows the config in
    force (found by the review of 4cafb46)."""
    now_ms = int(time.time() * 1000)
    lead, transport = _three_voters(net, tmp_path, now_ms, None)
    try:
        new = lead.next_config(limits__max_message_bytes=_LOWERED, batch__max_bytes=100_000)
        cfg_ticket = Ticket("cfg")
        lead.chain._on_submit(config_envelope(net, new, ["ins01", "ins02", "ins03"]), cfg_ticket, True)
        lead.chain._process_ready()
        lead.ack(2)
        cfg_out = cfg_ticket.peek()
        assert cfg_out is not None and cfg_out.accepted, cfg_out
        client = Client(net)
        for _ in range(8):  # 8 blocks of ~40 KB behind it, acknowledged by orderer 2 only
            _cut(lead, [client.envelope(size=40_000, timestamp_ms=now_ms)[1]])
            lead.ack(2)
        assert lead.blocks.height() >= cfg_out.block_number + 9
        node = lead.chain._node
        transport.sent.clear()
        # orderer 3 restarted (under the lowered bound) and has nothing past the config block
        st = node.status()
        node.step(Message(MessageType.APP_RESP, to=1, frm=3, term=st.term, index=st.last_index,
                          reject=True, reject_hint=st.last_index - 9))
        lead.chain._process_ready()
        appends = [m for m in transport.sent if m.type == MessageType.APP and m.to == 3 and m.entries]
        assert appends, transport.sent
        sizes = [sum(len(e.data) for e in m.entries) for m in appends]
        assert max(sizes) <= _LOWERED // 2, sizes
    finally:
        lead.close()


# ---------------------------------------------------------------- three orderer processes


@pytest.mark.integration
def test_an_orderer_an_hour_ahead_leads_only_until_the_others_can_outvote_its_clock(
        tmp_path: Path) -> None:
    """Orderer 1's clock is an hour ahead and it is elected first (short election timeout).
    With only orderer 2 beside it, one clock stands against one: it keeps leading, and what
    orderer 2 takes is refused ORDERER_CLOCK_SKEW at cut time (not ordered into blocks every
    peer would invalidate). Once orderer 3 runs, two clocks outvote its clock: it hands
    leadership to 2 or 3, and envelopes are ordered into blocks stamped with the right time."""
    net = make_network(tmp_path / "net")
    names = {n.raft_id: n.name for n in net.orderers()}
    set_extra(net, names[1], clock_offset_ms=HOUR_MS, election_tick=6)
    for rid in (2, 3):
        set_extra(net, names[rid], election_tick=200)  # 10-20 s: orderer 1 campaigns first
    procs = OrdererProcs(net)
    client = Client(net)
    try:
        procs.start(names[1])
        procs.start(names[2])
        assert wait_until(lambda: leader_of(procs, client, [names[1], names[2]]), 30,
                          what="a leader") == names[1]
        target2 = procs.target(names[2])
        (refused,) = client.broadcast(target2, [client.envelope()[1]])
        assert (refused.accepted, refused.reason) == (False, ORDERER_CLOCK_SKEW), refused
        assert leader_of(procs, client, [names[1], names[2]]) == names[1]

        procs.start(names[3])
        # either orderer with the right clock may take it (the watch hands over to a voter the
        # Raft core saw active, 2 or the newly started 3 alike)
        assert wait_until(lambda: leader_of(procs, client) in (names[2], names[3]) or None, 30,
                          what="leadership moved to orderer 2 or 3") is True
        tx_id, raw = client.envelope()
        (ok,) = client.broadcast(target2, [raw])
        assert ok.accepted, ok
        (block,) = [b for b in client.blocks(target2) if tx_id in tx_ids_of(b)]
        assert abs(block.header.timestamp_ms - int(time.time() * 1000)) < 60_000
        assert "event=clock_disagrees" in procs.log_text(names[1])
        st = client.status(target2)  # what an operator checks before raising the protocol version
        assert (list(st.protocol_versions), st.protocol_version) == (sorted(SUPPORTED_VERSIONS), 1)
    finally:
        procs.close()
        for name in names.values():
            print(f"===== {name}\n{procs.log_text(name)[-3000:]}")
