"""The Raft driver of an orderer: one thread owns the RawNode, storage and block store.

Loop (etcd-raft's contract): wait for an event or the next tick → tick / step / propose →
for each Ready: persist (WAL fsync) → install snapshot (fetch the blocks it covers) → send
messages → apply committed entries → advance → maybe snapshot.

Each Raft NORMAL entry is one whole serialized Block cut by the leader. The leader starts
cutting only after it has applied every entry of earlier terms (its own term's first
entry is applied), so it chains new blocks onto the last committed one; it pipelines
further blocks onto the last one it proposed. On apply every orderer checks the number,
previous hash and data hash, adds its own signature over the canonical header hash to the
metadata and appends the block to its block store. An orderer whose certificate is not the
one the config in force names for its raft id (a config block rotated it; the operator
restarts it on the new certificate, possibly before it applied that block) cannot sign a
valid copy: it stores the copy another orderer signed instead (fetched like a catch-up). A broadcast ticket is answered
"accepted" only when the block holding its envelope is applied with the header the leader
proposed: an accepted envelope is committed, in exactly one block.

Per block the leader sends each follower the block's append and a commit-only append;
a follower acknowledges the first and leaves out the identical acknowledgement of the
second (:meth:`Chain._drop_repeated_acks`), and the leader sends no heartbeat to a follower
it sent an append within the last heartbeat interval (:meth:`Chain._drop_redundant_heartbeats`).
Raft messages of one Ready travel to each peer
as one queue item, heartbeats go every ``heartbeat_tick`` (2) ticks, and the driver's inbox
is a ``queue.SimpleQueue``: the per-block work is mostly the stream messages themselves.

Snapshots are taken every ``snapshot_interval_blocks`` blocks and carry the last block's
number and hash (OrdererSnapshotData); a node receiving a snapshot (lagging or new) pulls
the missing blocks from another orderer's Deliver through the injected ``fetcher``.

Thread safety: other threads only call :meth:`Chain.step`, :meth:`Chain.submit`,
:meth:`Chain.report_unreachable` / :meth:`Chain.report_snapshot` (all enqueue) and read
:meth:`Chain.status` (a snapshot of plain values).
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2, raft_pb2, transaction_pb2

from node.clock import wall_ms
from node.crypto.canonical import block_data_hash, block_header_hash
from node.crypto.signing import Purpose, Signer, Verifier, block_signers
from node.errors import RxError
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.orderer.blockcutter import BatchParams, BlockCutter, Pending
from node.orderer.clockwatch import ClockWatch, odd_clock_out
from node.orderer.configrules import BAD_CONFIG_UPDATE
from node.orderer.configtx import (
    ConfigTracker,
    OrdererConfig,
    config_of_block,
    tx_timestamp_ms,
    tx_type,
)
from node.orderer.heard import HeardRecord
from node.orderer.metrics import OrdererMetrics
from node.orderer.refusals import EveryInterval
from node.orderer.releases import ReleaseWatch, describe_lacking_peers, lacking, lacking_peers
from node.orderer.ticket import NOT_LEADER, ORDERER_CLOCK_SKEW, SERVICE_UNAVAILABLE, TOO_LARGE, Outcome, Ticket
from node.protocol import PROTOCOL_UNSUPPORTED, protocol_version, require_supported
from node.raft.config import Config
from node.raft.durable import DurableStorage
from node.raft.errors import CommittedEntryConflict, ProposalDropped, RaftError
from node.raft.node import RawNode, may_send_before_persist
from node.raft.tracker import ProgressState
from node.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    Snapshot,
    SoftState,
    StateRole,
)

_log = logging.getLogger(__name__)

RAFT_STATE_LOST = "RAFT_STATE_LOST"


PROMOTE_MAX_LAG = 8
"""A learner within this many Raft entries of the leader's last index is promoted to voter."""


class Transport(Protocol):
    """Sends Raft messages to other orderers (non-blocking, best effort)."""

    def send(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for delivery."""
        ...


class BlockFetcher(Protocol):
    """Pulls committed blocks from other orderers (catch-up after a snapshot)."""

    def fetch(self, start: int, stop: int) -> Iterator[block_pb2.Block]:
        """Blocks ``start..stop`` inclusive from some other orderer; raises on failure."""
        ...


@dataclass(frozen=True)
class ChainOptions:
    """Timing and sizing of the driver."""

    tick_s: float = 0.05
    election_tick: int = 10
    # Heartbeats every 2 ticks (100 ms with the default tick): an idle follower still hears
    # from the leader five times per election timeout, at half the stream messages of one
    # heartbeat per tick. Clamped to a quarter of ``election_tick`` (see Chain.__init__).
    heartbeat_tick: int = 2
    snapshot_interval_blocks: int = 100
    max_uncommitted_bytes: int = 64 * 1024 * 1024
    max_size_per_msg: int = 4 * 1024 * 1024
    inflight_expiry_s: float = 30.0
    catch_up_retry_s: float = 0.2
    # A follower does not repeat, for a commit-only append, an acknowledgement it sent less
    # than this long ago (see Chain._drop_repeated_acks); 0 sends every one. None: one
    # heartbeat interval.
    repeated_ack_window_s: float | None = None
    # The leader leaves out heartbeats to peers it sent an append within the last
    # heartbeat interval (see Chain._drop_redundant_heartbeats).
    thin_heartbeats: bool = True
    # A cut block is stamped with the leader's wall clock, raised to the previous block's
    # stamp when that is at most this far ahead (a clock stepping back a little, or a new
    # leader's clock a little behind the old one's). A previous stamp further ahead comes from
    # a clock that had jumped forward: the stamp follows the clock again, or every later block
    # (of every later leader) would carry the wrong time and make every tx TX_TIMESTAMP_SKEW
    # until real time caught up.
    max_stamp_hold_ms: int = 5_000
    # How often the clocks of the other orderers are compared with this one's (a leader
    # whose clock a quorum disagrees with hands leadership over; see node.orderer.clockwatch).
    clock_check_s: float = 1.0
    # How many consecutive checks must find the leader's clock the odd one out before it
    # hands leadership over (a flapping guard; see node.orderer.clockwatch).
    clock_disagree_checks: int = 3
    # Raft messages from one orderer waiting for the driver, at most this many and this many
    # bytes of entries and snapshot data (one larger message alone); more are dropped (Raft
    # retransmits), as the sending side drops what does not fit its queue (transport.PeerSender).
    # The Cluster.Step handler reads a stream as fast as it arrives: an orderer sending faster
    # than the driver steps (a compromised one, appends of 4 MiB) grew the queue without bound.
    max_queued_steps_per_peer: int = 4096
    max_queued_step_bytes_per_peer: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class ChainStatus:
    """Plain values describing the chain, readable from any thread."""

    raft_id: int
    term: int
    leader: int
    role: StateRole
    commit: int
    applied: int
    height: int
    last_hash: bytes
    conf_state: ConfState = field(default_factory=ConfState)
    state_unconfirmed: bool = False
    commit_term: int = 0  # the term of the entry at ``commit`` (0: compacted away, unknown)


@dataclass
class _Inflight:
    header_hash: bytes
    tickets: list[Ticket]
    proposed_at: float


class Chain:
    """Drives one RawNode for the orderer (see the module docstring)."""

    def __init__(
        self,
        raft_id: int,
        storage: DurableStorage,
        blocks: BlockStore,
        signer: Signer,
        transport: Transport,
        fetcher: BlockFetcher,
        tracker: ConfigTracker,
        metrics: OrdererMetrics,
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = wall_ms,
        options: ChainOptions | None = None,
        clock_watch: ClockWatch | None = None,
        releases: ReleaseWatch | None = None,
        state_unconfirmed: bool = False,
        heard: HeardRecord | None = None,
    ) -> None:
        """``clock_watch``: the other orderers' clocks as their messages tell them (None: not
        compared); ``releases``: the protocol versions the other orderers' and the peers'
        releases implement (None: a config update raising the version is admitted without
        asking); ``state_unconfirmed``: the Raft storage is blank and the other orderers have
        not yet said this orderer is new (node.orderer.statecheck): it neither votes nor
        campaigns until :meth:`confirm_state`; ``heard``: where the raft id of every message's
        sender is recorded before the message is stepped (node.orderer.heard)."""
        self._id = raft_id
        self._heard = heard
        self._storage = storage
        self._blocks = blocks
        self._signer = signer
        self._transport = transport
        self._fetcher = fetcher
        self._metrics = metrics
        self._clock = clock
        self._wall_ms = wall_ms  # the time stamped into cut blocks
        self._clock_watch = clock_watch
        self._releases = releases
        self._last_clock_check = -1e18
        self._clock_disagreements = 0  # consecutive checks that found this leader's clock odd
        self._clock_term = 0  # ... all in this term (a leadership lost and won again restarts the count)
        self._opt = options or ChainOptions()
        self._tracker = tracker
        self._cutter: BlockCutter[Ticket] = BlockCutter(
            BatchParams.from_config(tracker.current.config.batch), clock
        )
        self._last_conf_change_at = -1e9
        snap = storage.snapshot()
        self._node = RawNode(
            Config(
                id=raft_id,
                election_tick=self._opt.election_tick,
                heartbeat_tick=heartbeat_ticks(self._opt),
                rng=rng,
                pre_vote=True,
                check_quorum=True,
                max_size_per_msg=self._opt.max_size_per_msg,
                max_committed_size_per_ready=self._opt.max_size_per_msg,
                max_uncommitted_size=self._opt.max_uncommitted_bytes,
                state_unconfirmed=state_unconfirmed,
            ),
            storage,
        )
        # SimpleQueue: put/get in C, no Python-level Condition per hand-off.
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        # sender raft id -> (messages, payload bytes) of its Raft messages in the inbox
        self._queued_steps: dict[int, tuple[int, int]] = {}
        self._queued_steps_lock = threading.Lock()
        self._backlog_lines = EveryInterval()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # set when the driver stops on its own (the process should exit: see __main__)
        self.failed = threading.Event()
        self.failure: BaseException | None = None
        self._ended = threading.Event()  # the driver thread has finished (see _run)
        self._applied = snap.meta.index
        self._conf_state = storage.initial_state()[1]
        self._last_snap_block = 0
        self._pending_snapshot_catch_up: raft_pb2.OrdererSnapshotData | None = None
        self._signer_in_force_logged = -1
        # checks the copies stored while our own signature is not in force (_append_fetched)
        self._verifier = Verifier()
        if not snap.is_empty:
            data = raft_pb2.OrdererSnapshotData.FromString(snap.data)
            self._last_snap_block = data.last_block_number
            if blocks.height() <= data.last_block_number:
                self._pending_snapshot_catch_up = data
        # Leader state (driver thread only).
        self._role = StateRole.FOLLOWER
        self._leader = 0
        self._lead_ready_index: int | None = None
        self._next_number = 0
        self._prev_hash = b""
        self._prev_ts = 0
        self._held: list[list[Pending[Ticket]]] = []
        self._config_inflight: int | None = None
        # the limits of the config the in-flight config block carries (see _within_limits)
        self._config_inflight_limits: config_pb2.Limits | None = None
        self._config_waiting: list[tuple[bytes, Ticket]] = []
        # a config envelope held, not yet proposed (a leader cuts nothing before _lead_ready):
        # it counts as in flight for the next one (one config block at a time)
        self._config_held = False
        self._inflight: dict[int, _Inflight] = {}
        self._last_expiry_check = 0.0
        # (config in force, conf state) last found to need no ConfChange (see _maybe_reconfigure).
        self._members_match: tuple[object, ConfState] | None = None
        self._status_key: tuple[int, ...] = ()
        self._leader_listeners: list[Callable[[int], None]] = []
        self._state_lost_listeners: list[Callable[[bool], None]] = []
        self._lost_told_until = 0  # the highest commit index a leader's MsgStateLost named
        self._lost_catching_up = False  # told, and not yet caught up
        recovered_ban = self._node.hard_state.lost_until
        if recovered_ban:
            # told before a restart and not caught up since: the ban is in the Raft hard
            # state, and the core withholds the vote again (the status shows it unconfirmed)
            self._lost_told_until = recovered_ban
            self._lost_catching_up = True
            _log.error("event=raft_state_lost_recovered orderer=%d until=%d commit=%d: a leader told "
                       "this orderer before its restart that it lost Raft entries it had acknowledged; "
                       "no vote before its commit index reaches %d; see README: Recovery", raft_id,
                       recovered_ban, self._node.hard_state.commit, recovered_ban)
        self._conf_state_listeners: list[Callable[[ConfState], None]] = []
        window = self._opt.repeated_ack_window_s
        self._ack_window_s = (
            heartbeat_ticks(self._opt) * self._opt.tick_s if window is None else window
        )
        self._last_ack: tuple[tuple[int, int, int], float] | None = None
        self.repeated_acks_dropped = 0
        self._stepped_entries = False  # an append with entries was stepped since the last send
        self._hb_interval_s = (
            heartbeat_ticks(self._opt) * self._opt.tick_s if self._opt.thin_heartbeats else 0.0
        )
        self._last_append_to: dict[int, float] = {}
        self.heartbeats_dropped = 0
        self._status = self._make_status()

    # ------------------------------------------------------------------ thread API

    def start(self) -> None:
        """Start the driver thread."""
        self._thread = threading.Thread(target=self._run, name=f"raft-{self._id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the driver thread (pending tickets are answered SERVICE_UNAVAILABLE)."""
        self._stop.set()
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout_s)

    def step(self, msg: Message) -> None:
        """Hand a Raft message received from a peer to the driver; dropped (counted, reason
        ``backlog``) when that peer's messages waiting for the driver are already
        ``max_queued_steps_per_peer`` or ``max_queued_step_bytes_per_peer`` bytes."""
        size = _payload_bytes(msg)
        with self._queued_steps_lock:
            count, held = self._queued_steps.get(msg.frm, (0, 0))
            full = count >= self._opt.max_queued_steps_per_peer or (
                held > 0 and held + size > self._opt.max_queued_step_bytes_per_peer)
            if not full:
                self._queued_steps[msg.frm] = (count + 1, held + size)
        if not full:
            self._inbox.put(("step", msg))
            return
        self._metrics.consensus_dropped.labels(reason="backlog").inc()
        told = self._backlog_lines.note(msg.frm)
        if told:
            _log.warning("event=raft_backlog_dropped orderer=%d peer=%d dropped=%d queued=%d queued_bytes=%d: "
                         "Raft messages of that orderer arrive faster than this one steps them; dropped "
                         "(Raft retransmits what matters)", self._id, msg.frm, told, count, held)

    def _step_taken(self, msg: Message) -> None:
        """``msg`` left the inbox: out of its sender's backlog."""
        with self._queued_steps_lock:
            count, held = self._queued_steps.get(msg.frm, (0, 0))
            if count <= 1:
                self._queued_steps.pop(msg.frm, None)
            else:
                self._queued_steps[msg.frm] = (count - 1, max(0, held - _payload_bytes(msg)))

    def confirm_state(self, why: str) -> None:
        """The other orderers told this blank orderer it is new: it may vote and campaign."""
        self._inbox.put(("confirm", why))

    def state_lost(self, why: str) -> None:
        """The other orderers told this blank orderer it is a voter that lost its state: the
        chain stops with RAFT_STATE_LOST (the process exits, see __main__)."""
        self._inbox.put(("state_lost", why))

    def report_unreachable(self, node_id: int) -> None:
        """The transport could not reach ``node_id``."""
        self._inbox.put(("unreachable", node_id))

    def report_snapshot(self, node_id: int, ok: bool) -> None:
        """A snapshot message to ``node_id`` was sent (ok) or failed."""
        self._inbox.put(("snap_status", (node_id, ok)))

    def hand_over_leadership(self, timeout_s: float = 1.0) -> bool:
        """If this node leads, transfer leadership to the most up-to-date voter and wait
        (bounded) until it has moved; used on graceful shutdown so the cluster does not
        wait for an election timeout. Returns True when another node leads."""
        if self._status.role != StateRole.LEADER:
            return True
        self._inbox.put(("transfer", None))
        deadline = self._clock() + timeout_s
        while self._clock() < deadline:
            st = self._status
            if st.role != StateRole.LEADER and st.leader not in (0, self._id):
                return True
            time.sleep(0.02)
        return False

    def submit(self, envelope: bytes, tx_id: str = "", is_config: bool = False) -> Ticket:
        """Queue a validated envelope for ordering on this node (which must lead). A
        config envelope is cut into a block of its own."""
        ticket = Ticket(tx_id)
        if self._status.role != StateRole.LEADER:
            ticket.resolve(Outcome(NOT_LEADER, f"orderer {self._id} is not the leader"))
            return ticket
        self._inbox.put(("submit", (envelope, ticket, is_config)))
        if self._ended.is_set():  # the driver ended after the role was read: answer here
            self._drain_inbox(f"orderer {self._id} is not the leader", NOT_LEADER)
        return ticket

    def leader_id(self) -> int:
        """Raft id of the current leader (0: none known)."""
        return self._status.leader

    def add_leader_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(leader_id)`` (0: none known) from the driver thread whenever the
        known leader changes, after :meth:`status` reflects it, so a component that follows
        the leader (e.g. a forwarder) need not poll. It must not block. Register before
        :meth:`start`."""
        self._leader_listeners.append(listener)

    def add_state_lost_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` from the driver thread when the leader tells this orderer it
        lost entries it had acknowledged and the Raft core withholds its vote for it
        (MessageType.STATE_LOST), once that ban is durable (in the Raft hard state,
        ``HardState.lost_until``, after the Ready that carried it), and ``listener(False)``
        once its commit index reached the one it was told (durably too: the Ready lifting the
        ban is synced). A restart before it caught up recovers the ban: the core withholds the
        vote again, and ``listener(True)`` is called again when the driver starts. The server
        leaves the blank-start marker (node.orderer.statecheck) meanwhile and removes it once
        caught up. It must not block for long. Register before :meth:`start`."""
        self._state_lost_listeners.append(listener)

    def add_conf_state_listener(self, listener: Callable[[ConfState], None]) -> None:
        """Call ``listener(conf_state)`` now and, from the driver thread, whenever the applied
        Raft membership changes (a ConfChange applied, a snapshot installed; a restart
        replaying the log goes through them again): the transport keeps an orderer taken out of
        the orderer set while Raft still counts it. It must not block. Register before
        :meth:`start`."""
        self._conf_state_listeners.append(listener)
        listener(self._conf_state)

    def _conf_state_changed(self) -> None:
        for listener in self._conf_state_listeners:
            listener(self._conf_state)

    def own_id(self) -> int:
        """This orderer's Raft id."""
        return self._id

    def submit_many(self, items: Sequence[tuple[bytes, bool]]) -> list[Ticket]:
        """:meth:`submit` for several (envelope, is_config) at once (one queue hand-off)."""
        tickets = [Ticket() for _ in items]
        if self._status.role != StateRole.LEADER:
            for t in tickets:
                t.resolve(Outcome(NOT_LEADER, f"orderer {self._id} is not the leader"))
            return tickets
        self._inbox.put(("submit_many", (list(items), tickets)))
        if self._ended.is_set():
            self._drain_inbox(f"orderer {self._id} is not the leader", NOT_LEADER)
        return tickets

    def status(self) -> ChainStatus:
        """The latest status (updated by the driver after every Ready)."""
        return self._status

    def wait_for_height(self, height: int, timeout_s: float) -> bool:
        """Block until the block store holds ``height`` blocks (or timeout)."""
        return self._blocks.wait_for_height(height, timeout_s)

    # ------------------------------------------------------------------ driver loop

    def _run(self) -> None:
        try:
            if self._lost_catching_up:
                # the ban recovered from the hard state: the listeners hear of it again (a
                # crash may have come between saving it and telling them)
                for listener in self._state_lost_listeners:
                    listener(True)
            if self._pending_snapshot_catch_up is not None:
                self._catch_up_to_snapshot(self._pending_snapshot_catch_up)
                self._pending_snapshot_catch_up = None
            self._loop()
        except Exception as exc:
            self.failure = exc
            if not (isinstance(exc, RxError) and exc.reason in (PROTOCOL_UNSUPPORTED, RAFT_STATE_LOST)):
                _log.exception("event=raft_driver_failed orderer=%d: stopping the chain", self._id)
                raise
            # a config block raised the protocol version beyond this release, or the other
            # orderers said this blank one lost its Raft state: a refusal
            _log.critical("event=chain_stopped orderer=%d reason=%s detail=%r", self._id,
                          exc.reason, exc.message)
        finally:
            # A stopped driver leads nothing: submits from now on are answered NOT_LEADER at
            # once (see submit) instead of queueing for a driver that is gone, and a
            # hand-over does not wait for a leadership that no longer acts.
            self._role, self._leader = StateRole.FOLLOWER, 0
            self._metrics.is_leader.set(0)
            self._status = self._make_status()
            self._ended.set()
            self._fail_all("ordering service stopping")
            sync_block_files(self._blocks.directory)
            if self.failure is not None:
                self.failed.set()

    def _loop(self) -> None:
        tick_s = self._opt.tick_s
        next_tick = self._clock() + tick_s
        while not self._stop.is_set():
            now = self._clock()
            wait = next_tick - now
            deadline = self._cutter.deadline()
            if deadline is not None and self._lead_ready():
                wait = min(wait, deadline - now)
            try:
                kind, payload = self._inbox.get(timeout=max(0.0, wait))
                self._handle(kind, payload)
                for _ in range(4096):
                    kind, payload = self._inbox.get_nowait()
                    self._handle(kind, payload)
            except queue.Empty:
                pass
            now = self._clock()
            if now >= next_tick:
                self._node.tick()
                next_tick += tick_s
                if next_tick < now:
                    next_tick = now + tick_s
            self._maybe_cut()
            self._maybe_reconfigure(now)
            if self._clock_watch is not None and now - self._last_clock_check >= self._opt.clock_check_s:
                self._check_clocks(now, self._clock_watch)
            self._process_ready()
            if self._inflight and now - self._last_expiry_check > 0.5:
                self._expire_inflight(now)

    def _handle(self, kind: str, payload: object) -> None:
        if kind == "step":
            assert isinstance(payload, Message)
            self._step_taken(payload)
            if self._heard is not None:
                self._heard.note(payload.frm)  # durably, before it is acted on
            if payload.entries and payload.type == MessageType.APP:
                self._stepped_entries = True
            try:
                self._node.step(payload)
            except CommittedEntryConflict:
                raise  # not a message to drop: the logs disagree on a committed entry, stop
            except RaftError as err:
                self._metrics.consensus_dropped.labels(reason="invalid").inc()
                _log.warning("event=raft_message_invalid from=%d error=%r: dropped", payload.frm, str(err))
            if payload.type == MessageType.APP_RESP and payload.reject:
                self._report_lost_followers()
            # a MessageType.STATE_LOST the core took sets its ban (HardState.lost_until): acted
            # on once the Ready carrying it is durable (_process_ready, _lost_told)
        elif kind == "submit":
            envelope, ticket, is_config = cast(tuple[bytes, Ticket, bool], payload)
            self._on_submit(envelope, ticket, is_config)
        elif kind == "submit_many":
            items, tickets = cast(tuple[list[tuple[bytes, bool]], list[Ticket]], payload)
            for (envelope, is_config), ticket in zip(items, tickets, strict=True):
                self._on_submit(envelope, ticket, is_config)
        elif kind == "transfer":
            self._transfer_leadership()
        elif kind == "confirm":
            if self._node.state_unconfirmed:
                self._node.confirm_state()
                self._status = self._make_status()
                _log.info("event=raft_state_confirmed orderer=%d detail=%r: may vote and campaign",
                          self._id, payload)
        elif kind == "state_lost":
            raise state_lost_error(self._id, str(payload))
        elif kind == "unreachable":
            assert isinstance(payload, int)
            self._node.report_unreachable(payload)
        elif kind == "snap_status":
            node_id, ok = cast(tuple[int, bool], payload)
            self._node.report_snapshot(node_id, ok)

    # ------------------------------------------------------------------ leader side

    def _report_lost_followers(self) -> None:
        """Alert on every follower the Raft core found to have lost entries it acknowledged (an
        orderer restarted with its data emptied that the start-up check let through; the core
        replicates to it again). Its vote may lose committed blocks until it caught up."""
        for follower, acked, now in self._node.take_lost_followers():
            self._metrics.followers_lost_state.labels(orderer=str(follower)).inc()
            _log.error("event=follower_lost_state orderer=%d follower=%d acknowledged=%d log_at=%d: "
                       "this follower had acknowledged Raft entries it no longer holds (its data "
                       "directory emptied or lost?); see README: Recovery",
                       self._id, follower, acked, now)

    def _transfer_leadership(self) -> None:
        status = self._node.status()
        if status.role != StateRole.LEADER:
            return
        candidates = [
            (pr.match, rid) for rid, pr in status.progress.items()
            if rid != self._id and not pr.is_learner and pr.recent_active
        ]
        if candidates:
            target = max(candidates)[1]
            _log.info("event=leadership_transfer orderer=%d target=%d: hands leadership to the most "
                      "caught-up orderer", self._id, target)
            self._node.transfer_leader(target)

    def _check_clocks(self, now: float, watch: ClockWatch) -> None:
        """Export the other orderers' clock offsets; a leader whose clock a quorum of the
        voters disagrees with hands leadership to one they agree with (see clockwatch)."""
        self._last_clock_check = now
        offsets = watch.offsets()
        for node_id, offset in offsets.items():
            self._metrics.clock_offset_ms.labels(orderer=str(node_id)).set(offset)
        # The Raft core's role, not ``_role``: a message stepped in this loop (a new leader's
        # append) may have made this node a follower before the Ready that tells ``_role``, and
        # a follower forwards transfer_leader to the new leader, which would hand leadership
        # on, on this node's stale verdict.
        if self._role != StateRole.LEADER or self._node.soft_state.role != StateRole.LEADER:
            self._clock_disagreements = 0
            return
        term = self._node.raft.term
        if term != self._clock_term:
            # leadership lost and won back between two checks: the count starts again
            self._clock_term, self._clock_disagreements = term, 0
        tolerance = self._tracker.current.config.limits.max_clock_skew_ms // 2
        voters = self._conf_state.voters
        if odd_clock_out(self._id, voters, offsets, tolerance) is None:
            self._clock_disagreements = 0
            return
        self._clock_disagreements += 1
        if self._clock_disagreements < self._opt.clock_disagree_checks:
            return
        # Only to a voter the Raft core heard from since its last quorum check: one that died
        # within the offsets' horizon would take a transfer it never completes. None alive and
        # agreed with now: the next check tries again (the count is kept).
        progress = self._node.status().progress
        alive = {rid for rid, pr in progress.items() if pr.recent_active and not pr.is_learner}
        target = odd_clock_out(self._id, voters, offsets, tolerance, eligible=alive)
        if target is None:
            return
        self._clock_disagreements = 0
        _log.warning(
            "event=clock_disagrees orderer=%d offsets_ms=%s tolerance_ms=%d target=%d: a quorum of "
            "the orderers disagrees with this clock; leadership goes to the target", self._id,
            ",".join(f"{rid}:{ms}" for rid, ms in sorted(offsets.items())), tolerance, target)
        self._metrics.clock_handovers.inc()
        self._node.transfer_leader(target)

    def _check_voters_implement(self, new: config_pb2.ConsortiumConfig) -> None:
        """BAD_CONFIG_UPDATE when ``new`` raises the protocol version while a voter, or a peer
        of ``new``, has not told it implements the new one (a peer: in a statement it signed
        under the certificate ``new`` gives it; node.orderer.releases)."""
        version = protocol_version(new)
        if self._releases is None or version <= protocol_version(self._tracker.current.config):
            return
        told = self._releases.told()
        missing = lacking(self._conf_state.voters, self._id, version, told)
        # a peer's word under the certificate ``new`` gives it (an update may rotate it)
        peers_told = self._releases.words_for((p.name, p.cert_der) for p in new.peers)
        missing_peers = lacking_peers((p.name for p in new.peers), version, peers_told)
        why = []
        if missing:
            said = {n: told.get(n, 0) for n in missing}
            why.append(f"orderers {missing} have not told they implement protocol version {version} "
                       f"(highest told: {said}; 0: not heard or an older release)")
        if missing_peers:
            why.append(describe_lacking_peers(missing_peers, version, peers_told, self._releases.peers()))
        if why:
            raise RxError(BAD_CONFIG_UPDATE, "; ".join(why) + ": upgrade them first")

    def _check_readded_out_of_raft(self, new: config_pb2.ConsortiumConfig) -> None:
        """BAD_CONFIG_UPDATE when ``new`` adds back an orderer whose removal Raft has not
        applied yet (its raft id still a voter or learner): the leader would see no membership
        change to make, and the orderer -- emptied, as README "Recovery" has it -- would come
        back a blank voter, the very thing RAFT_STATE_LOST refuses. Retried once the removal
        is applied (the leader proposes it within a second of the config block), it rejoins
        as a learner."""
        in_force = set(self._tracker.current.orderer_ids())
        in_raft = set(self._conf_state.voters) | set(self._conf_state.learners)
        pending = sorted(o.raft_id for o in new.orderers if o.raft_id not in in_force and o.raft_id in in_raft)
        if pending:
            raise RxError(
                BAD_CONFIG_UPDATE,
                f"orderers {pending} are still in Raft (their removal is not applied yet; voters "
                f"{sorted(self._conf_state.voters)}, learners {sorted(self._conf_state.learners)}): "
                "add them back once it is",
            )

    def _lead_ready(self) -> bool:
        return (
            self._role == StateRole.LEADER
            and self._lead_ready_index is not None
            and self._applied >= self._lead_ready_index
        )

    def _on_submit(self, envelope: bytes, ticket: Ticket, is_config: bool) -> None:
        if self._role != StateRole.LEADER:
            ticket.resolve(Outcome(NOT_LEADER, f"orderer {self._id} is not the leader"))
            return
        if is_config:
            if self._config_inflight is not None or self._config_held or not self._lead_ready():
                # One config block at a time: the next one is checked against its result. And
                # a leader just elected checks none before it applied the earlier terms'
                # entries (a config block among them may be the one it would be checked against).
                self._config_waiting.append((envelope, ticket))
                return
            try:
                new = self._tracker.validate_now(envelope)
                self._check_voters_implement(new)
                self._check_readded_out_of_raft(new)
            except RxError as err:
                ticket.resolve(Outcome(err.reason, err.message))
                return
            pending = self._cutter.cut()
            if pending:
                self._held.append(pending)
            self._held.append([Pending(envelope, ticket)])
            self._config_held = True
            # the blocks cut behind it until it is applied are judged by its config and may be
            # received by nodes dialled at its max_message_bytes: cut them within both configs'
            # batch limits (restored once it is applied, or dropped: _end_config_inflight)
            self._cutter.set_params(self._cutter.params.narrowest(BatchParams.from_config(new.batch)))
            self._maybe_cut()
            return
        batches = self._cutter.add(envelope, ticket)
        if batches:
            self._held.extend(batches)
            self._maybe_cut()

    def _maybe_cut(self) -> None:
        if not self._lead_ready():
            return
        if self._next_number == 0:
            self._next_number = self._blocks.height()
            self._prev_hash = self._blocks.last_hash()
            self._prev_ts = self._blocks.get(self._next_number - 1).header.timestamp_ms if self._next_number else 0
            # Blocks still in flight from an earlier leadership at or above the store's
            # height were not in the log this leader applied before cutting: they were
            # replaced and can never commit. Answer them now (their numbers are reused).
            self._fail_replaced([n for n in self._inflight if n >= self._next_number])
        held, self._held = self._held, []
        for batch in held:
            self._propose_block(batch)
        due = self._cutter.cut_if_due()
        if due:
            self._propose_block(due)
        # the config envelopes waiting behind one applied or dropped as its block was cut, or
        # for this leader to be able to cut
        if self._config_waiting and self._config_inflight is None and not self._config_held:
            self._resubmit_waiting_configs()

    def _resubmit_waiting_configs(self) -> None:
        """The config envelopes that waited for the one before them, submitted again (each
        checked against the config in force now)."""
        waiting, self._config_waiting = self._config_waiting, []
        for envelope, ticket in waiting:
            self._on_submit(envelope, ticket, True)

    def _propose_block(self, batch: list[Pending[Ticket]]) -> None:
        # the leader's clock, not below the previous block's unless that is implausibly far
        # ahead of it (see ChainOptions.max_stamp_hold_ms)
        now_ms = self._wall_ms()
        ahead = self._prev_ts - now_ms
        stamp = self._prev_ts if 0 < ahead <= self._opt.max_stamp_hold_ms else now_ms
        config_batch = len(batch) == 1 and tx_type(batch[0].envelope) == transaction_pb2.CONFIG
        if config_batch:
            self._config_held = False  # proposed now, or dropped
        batch = self._within_limits(batch, stamp)
        if not batch:
            if config_batch:
                self._end_config_inflight()  # never proposed: its batch limits go
            return
        envelopes = [p.envelope for p in batch]
        tickets = [p.tag for p in batch]
        block = block_pb2.Block()
        block.header.number = self._next_number
        block.header.previous_hash = self._prev_hash
        block.header.data_hash = block_data_hash(envelopes)
        block.header.timestamp_ms = stamp
        block.data.envelopes.extend(envelopes)
        try:
            self._node.propose(block.SerializeToString())
        except ProposalDropped as err:
            for t in tickets:
                t.resolve(Outcome(SERVICE_UNAVAILABLE, f"proposal dropped: {err.detail}"))
            if config_batch:
                self._end_config_inflight()  # never proposed: its batch limits go
            return
        header_hash = block_header_hash(block.header)
        self._fail_replaced([self._next_number])
        self._inflight[self._next_number] = _Inflight(header_hash, tickets, self._clock())
        if config_batch:
            self._config_inflight = self._next_number
            self._config_inflight_limits = _limits_of_config_block(block)
        self._next_number += 1
        self._prev_hash = header_hash
        self._prev_ts = block.header.timestamp_ms

    def _within_limits(self, batch: list[Pending[Ticket]], stamp: int) -> list[Pending[Ticket]]:
        """``batch`` less the envelopes over the envelope size limit, answered TOO_LARGE, and
        those whose timestamp is further than the skew bound from ``stamp``, answered
        ORDERER_CLOCK_SKEW (retryable).

        The size is judged here, against the config the block falls under, for every envelope:
        one a follower forwarded was checked against its config in force, which may lag behind
        this leader's (and a leader just elected judges nothing before it applied the earlier
        terms' entries); behind a config block still in flight the limits of the config it
        carries apply too (below): one lowering ``max_envelope_bytes`` would otherwise get a
        larger envelope ordered after it, which no peer checks.

        Every peer would mark them TX_TIMESTAMP_SKEW against the block's stamp. The orderer
        that took them checked them against its own clock, so one of the two orderers'
        clocks is off: the client is not at fault, and a retry succeeds once the orderer
        with the wrong clock no longer leads (see clockwatch) or is no longer asked.

        Peers judge a block by the bound of the config in force before it. Behind a config
        block still in flight that is the bound the config block carries (or, should it not be
        adopted, the current one): both bounds apply until it is applied, so a block cut
        meanwhile never holds a transaction the peers would refuse."""
        limits = [self._tracker.current.config.limits]
        if self._config_inflight is not None and self._config_inflight_limits is not None:
            limits.append(self._config_inflight_limits)
        skew = min((lim.max_clock_skew_ms for lim in limits if lim.max_clock_skew_ms), default=0)
        size = min((lim.max_envelope_bytes for lim in limits if lim.max_envelope_bytes), default=0)
        if not skew and not size:
            return batch
        kept: list[Pending[Ticket]] = []
        for p in batch:
            if size and len(p.envelope) > size:
                p.tag.resolve(Outcome(
                    TOO_LARGE, f"envelope of {len(p.envelope)} bytes exceeds {size}, the limit of "
                    "the config in force as its block is cut"))
                continue
            if not skew:
                kept.append(p)
                continue
            ts = tx_timestamp_ms(p.envelope)
            if ts is not None and abs(ts - stamp) > skew:
                p.tag.resolve(Outcome(
                    ORDERER_CLOCK_SKEW, f"timestamp {ts} is more than {skew} ms from the "
                    f"leader's clock ({stamp}); the orderers' clocks disagree, retry"))
                continue
            kept.append(p)
        return kept

    def _fail_replaced(self, numbers: Sequence[int]) -> None:
        """Answer SERVICE_UNAVAILABLE to the tickets of the in-flight blocks ``numbers``
        (those present): a new proposal takes their number, and once out of ``_inflight``
        neither _resolve nor _expire_inflight would ever answer them."""
        for n in numbers:
            f = self._inflight.pop(n, None)
            if f is not None:
                for t in f.tickets:
                    t.resolve(Outcome(SERVICE_UNAVAILABLE, f"block {n} was replaced after a leader change"))

    def _reset_leader_state(self, reason: str) -> None:
        pending = self._cutter.cut()
        for batch in [*self._held, pending]:
            for p in batch:
                p.tag.resolve(Outcome(SERVICE_UNAVAILABLE, reason))
        self._held = []
        self._next_number = 0
        self._prev_hash = b""
        self._prev_ts = 0
        self._lead_ready_index = None
        self._end_config_inflight()
        self._config_held = False
        waiting, self._config_waiting = self._config_waiting, []
        for _, ticket in waiting:
            ticket.resolve(Outcome(SERVICE_UNAVAILABLE, reason))

    def _expire_inflight(self, now: float) -> None:
        self._last_expiry_check = now
        for number in [
            n for n, f in self._inflight.items()
            if now - f.proposed_at > self._opt.inflight_expiry_s
        ]:
            for t in self._inflight.pop(number).tickets:
                t.resolve(Outcome(SERVICE_UNAVAILABLE, f"block {number} was not committed"))

    def _fail_all(self, reason: str) -> None:
        self._reset_leader_state(reason)
        for f in self._inflight.values():
            for t in f.tickets:
                t.resolve(Outcome(SERVICE_UNAVAILABLE, reason))
        self._inflight.clear()
        self._drain_inbox(reason, SERVICE_UNAVAILABLE)

    def _drain_inbox(self, reason: str, code: str) -> None:
        """Answer ``code`` to every submit still queued (the driver no longer runs; the
        queue is thread-safe, so a submitting thread may drain it too)."""
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                cast(tuple[bytes, Ticket, bool], payload)[1].resolve(Outcome(code, reason))
            elif kind == "submit_many":
                for t in cast(tuple[object, list[Ticket]], payload)[1]:
                    t.resolve(Outcome(code, reason))

    # ------------------------------------------------------------------ Ready handling

    def _process_ready(self) -> None:
        while self._node.has_ready():
            rd: Ready = self._node.ready()
            if rd.soft_state is not None:
                self._on_soft_state(rd.soft_state)
            early = self._may_send_before_persist(rd)
            if early:
                self._send(rd.messages)
            self._storage.save_ready(rd.hard_state, rd.entries, rd.snapshot, sync=rd.must_sync)
            if rd.hard_state is not None and rd.hard_state.lost_until > self._lost_told_until:
                self._lost_told(rd.hard_state.lost_until)
            if rd.snapshot is not None and not rd.snapshot.is_empty:
                # Before the messages: they acknowledge the snapshot, and the leader must not
                # count this node as holding it (e.g. promote it from learner to voter) while
                # it is still fetching the blocks the snapshot covers.
                self._install_snapshot(rd.snapshot)
            if rd.messages and not early:
                self._send(rd.messages)
            if rd.committed_entries:
                self._apply(rd.committed_entries)
            self._node.advance(rd)
            self._maybe_snapshot()
            if self._lost_catching_up and not self._node.withholds_votes:
                self._lost_catching_up = False  # its log holds what it was told about
                for listener in self._state_lost_listeners:
                    listener(False)
            self._refresh_status()

    def _lost_told(self, until: int) -> None:
        """A leader told this orderer it lost entries it had acknowledged (MessageType.STATE_LOST)
        and the Raft core withholds its vote until its commit index reaches ``until``; the ban
        is durable now (in the hard state just saved). The leader tells it again with every
        heartbeat until it caught up: logged and the listeners told once (again only for a
        higher ``until``)."""
        self._lost_told_until = until
        _log.error("event=raft_state_lost_told orderer=%d leader=%d until=%d: the leader found "
                   "this orderer rejecting Raft entries it had acknowledged (its data directory "
                   "emptied or lost?); no vote before its commit index reaches %d; see README: "
                   "Recovery", self._id, self._node.soft_state.leader, until, until)
        self._lost_catching_up = True
        for listener in self._state_lost_listeners:
            listener(True)

    def _send(self, messages: Sequence[Message]) -> None:
        """Hand a Ready's messages to the transport, less the redundant ones."""
        if self._role == StateRole.LEADER:
            self._stepped_entries = False
            messages = self._drop_redundant_heartbeats(messages)
        else:
            messages = self._drop_repeated_acks(messages)
        if messages:
            self._transport.send(messages)

    def _drop_redundant_heartbeats(self, messages: Sequence[Message]) -> Sequence[Message]:
        """Leader: leave out a heartbeat to a peer that was sent an append less than a
        heartbeat interval ago.

        The append did what the heartbeat would (reset the follower's election timer,
        carry the commit index, draw a response that marks the follower active), so under
        load heartbeats stop costing stream messages. A peer that gets no appends -- idle,
        or paused because it lags, is probed or is being sent a snapshot -- still gets
        every heartbeat, so the recovery their responses drive is unchanged."""
        if self._hb_interval_s <= 0:
            return messages
        now = self._clock()
        out: list[Message] = []
        for m in messages:
            if m.type == MessageType.APP:
                self._last_append_to[m.to] = now
            elif m.type == MessageType.HEARTBEAT and now - self._last_append_to.get(m.to, -1e18) < self._hb_interval_s:
                self.heartbeats_dropped += 1
                continue
            out.append(m)
        return out

    def _drop_repeated_acks(self, messages: Sequence[Message]) -> Sequence[Message]:
        """Leave out a follower's acknowledgement of commit-only appends that repeats,
        within the ack window, the last one it sent (same leader, term and index, not a
        rejection).

        Such repeats answer the leader's commit-only appends (one after every block): the
        leader learnt that index from the first one, so the repeat changes nothing there
        and costs a stream message and a Raft step on both sides per block. Dropping a
        message is always safe in Raft (the transport is lossy anyway). For liveness, a
        Ready that answers any append carrying entries (a resend or probe after a lost
        acknowledgement) sends all its acknowledgements, and a repeat goes out anyway
        once the window has passed since the last one sent."""
        entries_answered, self._stepped_entries = self._stepped_entries, False
        if self._ack_window_s <= 0:
            return messages
        out: list[Message] = []
        for m in messages:
            if m.type == MessageType.APP_RESP and not m.reject:
                key = (m.to, m.term, m.index)
                now = self._clock()
                last = self._last_ack
                if (
                    not entries_answered and last is not None and last[0] == key
                    and now - last[1] < self._ack_window_s
                ):
                    self.repeated_acks_dropped += 1
                    continue
                self._last_ack = (key, now)
            out.append(m)
        return out

    def _may_send_before_persist(self, rd: Ready) -> bool:
        """Whether this leader sends ``rd``'s appends and heartbeats while it persists the
        Ready (see :func:`node.raft.node.may_send_before_persist`; this driver persists
        synchronously: acknowledgements are stepped only after ``save_ready`` returns)."""
        return may_send_before_persist(rd, self._role, self._storage.hard_state)

    def _on_soft_state(self, ss: SoftState) -> None:
        was_leader = self._role == StateRole.LEADER
        leader_changed = ss.leader != self._leader
        self._role = ss.role
        self._leader = ss.leader
        if ss.role == StateRole.LEADER and not was_leader:
            self._lead_ready_index = self._node.status().last_index
            self._next_number = 0
            _log.info("event=leader_elected orderer=%d term=%d", self._id, self._node.hard_state.term)
        elif was_leader and ss.role != StateRole.LEADER:
            _log.info("event=leadership_lost orderer=%d leader=%d", self._id, ss.leader)
            self._reset_leader_state("leadership lost before the envelope was proposed")
        self._metrics.is_leader.set(1 if ss.role == StateRole.LEADER else 0)
        if leader_changed and self._leader_listeners:
            self._status = self._make_status()
            for listener in self._leader_listeners:
                try:
                    listener(ss.leader)
                except Exception:  # noqa: BLE001 -- a listener must not stop the driver
                    _log.exception("event=leader_listener_failed orderer=%d", self._id)

    def _apply(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            self._applied = e.index
            if e.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(e.data)
                self._conf_state = self._node.apply_conf_change(cc)
                _log.info("event=conf_change_applied orderer=%d change=%r conf_state=%r", self._id,
                          str(cc), str(self._conf_state))
                self._conf_state_changed()
                continue
            if not e.data:
                continue  # a new leader's empty entry
            block = block_pb2.Block()
            try:
                block.ParseFromString(e.data)
            except DecodeError:
                self._metrics.blocks_rejected.inc()
                _log.error("event=raft_entry_not_block index=%d: skipped", e.index)
                continue
            self._apply_block(block, e)

    def _apply_block(self, block: block_pb2.Block, entry: Entry) -> None:
        number = block.header.number
        header_hash = block_header_hash(block.header)
        height = self._blocks.height()
        if number < height:
            stored = block_header_hash(self._blocks.get(number).header)
            if stored != header_hash:
                raise RaftError(
                    "block_mismatch",
                    f"committed entry {entry.index} holds block {number} with header hash "
                    f"{header_hash.hex()[:16]} but the store has {stored.hex()[:16]}",
                )
            self._resolve(number, header_hash)
            return
        if number > height:
            self._catch_up(number - 1)
        envelopes = list(block.data.envelopes)
        if (
            block.header.previous_hash != self._blocks.last_hash()
            or block.header.data_hash != block_data_hash(envelopes)
        ):
            self._metrics.blocks_rejected.inc()
            _log.error(
                "event=block_not_chained index=%d block=%d last_block=%d: the committed entry's "
                "block does not chain onto the last stored block; skipped",
                entry.index, number, self._blocks.height() - 1,
            )
            self._resolve(number, b"")
            if self._role == StateRole.LEADER:
                self._next_number = 0  # re-chain from the store
            return
        if not self._signer_in_force():
            self._append_copy(number, header_hash)
            self._resolve(number, header_hash)
            return
        block.metadata.raft_term = entry.term
        block.metadata.raft_index = entry.index
        sign_block(block, header_hash, self._signer)
        self._append_with_config(block)
        self._metrics.envelopes.inc(len(envelopes))
        self._metrics.height.set(self._blocks.height())
        self._resolve(number, header_hash)

    def _signer_in_force(self) -> bool:
        """Whether our certificate is this orderer's certificate in the config in force
        (it is not between a config block rotating it and our restart on the new one, or
        on a restart on the new one before that block is applied). Nor is it while this
        orderer is not in the orderer set: being added (replaying the log ordered before the
        config block that adds it) or removed (the blocks after the one removing it, e.g. an
        orderer removed and added back after losing its data): peers check a block's
        signatures against the orderers of the config in force before it, so a block signed
        by us alone there would be refused by every peer that delivers from us."""
        return signs_in_force(self._tracker.current.config, self._id, self._signer.identity.cert_der)

    def _append_copy(self, number: int, header_hash: bytes) -> None:
        """Store block ``number`` as signed by another orderer: our own signature would not
        verify against the config in force for it (our certificate was rotated, or we are not
        in the orderer set)."""
        if self._signer_in_force_logged != self._tracker.current.block_number:
            self._signer_in_force_logged = self._tracker.current.block_number
            _log.warning(
                "event=signer_not_in_force orderer=%d config_block=%d: its certificate is not the "
                "one the config block names for it (or the config names no orderer with its raft "
                "id); it stores copies other orderers signed until its certificate is in force",
                self._id, self._tracker.current.block_number,
            )
        self._catch_up(number, header_hash)
        if self._blocks.height() <= number:
            return  # stopping
        stored = block_header_hash(self._blocks.get(number).header)
        if stored != header_hash:
            raise RaftError(
                "block_mismatch",
                f"block {number} fetched from another orderer differs from the committed one",
            )

    def _end_config_inflight(self) -> None:
        """No config block in flight any more: the batch limits of the config in force alone."""
        self._config_inflight = None
        self._cutter.set_params(BatchParams.from_config(self._tracker.current.config.batch))

    def _resolve(self, number: int, header_hash: bytes) -> None:
        if self._config_inflight is not None and number >= self._config_inflight:
            self._end_config_inflight()
            self._resubmit_waiting_configs()
        for n in [n for n in self._inflight if n <= number]:
            f = self._inflight.pop(n)
            if n == number and f.header_hash == header_hash:
                outcome = Outcome(block_number=number)
                self._metrics.accepted.inc(len(f.tickets))
            else:
                outcome = Outcome(
                    SERVICE_UNAVAILABLE, f"block {n} was replaced after a leader change"
                )
            for t in f.tickets:
                t.resolve(outcome)

    # ------------------------------------------------------------------ snapshots

    def _maybe_snapshot(self) -> None:
        last_block = self._blocks.height() - 1
        if last_block - self._last_snap_block < self._opt.snapshot_interval_blocks:
            return
        if self._applied <= self._storage.snapshot().meta.index:
            return
        data = raft_pb2.OrdererSnapshotData(
            last_block_number=last_block, last_block_hash=self._blocks.last_hash()
        ).SerializeToString()
        # The snapshot lets the WAL drop the entries holding these blocks: the block files
        # must be durable first (they are written without fsync; see sync_block_files).
        sync_block_files(self._blocks.directory)
        self._storage.create_snapshot(self._applied, self._conf_state, data)
        self._last_snap_block = last_block
        _log.info(
            "event=snapshot_created orderer=%d index=%d block=%d", self._id, self._applied, last_block
        )

    def _install_snapshot(self, snap: Snapshot) -> None:
        data = raft_pb2.OrdererSnapshotData.FromString(snap.data)
        _log.info(
            "event=snapshot_installed orderer=%d index=%d block=%d: installs snapshot and catches up",
            self._id, snap.meta.index, data.last_block_number,
        )
        self._catch_up_to_snapshot(data)
        self._applied = snap.meta.index
        self._conf_state = snap.meta.conf_state
        self._last_snap_block = data.last_block_number
        self._conf_state_changed()

    def _catch_up_to_snapshot(self, data: raft_pb2.OrdererSnapshotData) -> None:
        if self._blocks.height() <= data.last_block_number:
            self._catch_up(data.last_block_number)
        if self._blocks.height() <= data.last_block_number:
            return  # stopping
        # the blocks just fetched were written without fsync: make them durable before the
        # snapshot they complete is relied on (the next local snapshot would sync them, but a
        # power loss before it could leave a hole below blocks appended since)
        sync_block_files(self._blocks.directory)
        stored = block_header_hash(self._blocks.get(data.last_block_number).header)
        if stored != data.last_block_hash:
            raise RaftError(
                "snapshot_mismatch",
                f"block {data.last_block_number} in the store differs from the snapshot's",
            )

    def _catch_up(self, target: int, target_hash: bytes = b"") -> None:
        """Pull blocks up to ``target`` (inclusive) from other orderers; retries until done
        or the chain stops. ``target_hash``: the header hash block ``target`` must have (the
        committed entry's block): another block of that number is refused before it is stored,
        and fetched again (from the next orderer)."""
        while self._blocks.height() <= target and not self._stop.is_set():
            start = self._blocks.height()
            try:
                for block in self._fetcher.fetch(start, target):
                    self._append_fetched(block, target_hash if block.header.number == target else b"")
            except Exception as exc:  # any transport/peer failure: retry (re-raised: a refusal)
                if isinstance(exc, RxError) and exc.reason == PROTOCOL_UNSUPPORTED:
                    # the block raising the version is stored: a refusal to go on, never a
                    # fetch failure to retry (the blocks after it follow rules we lack)
                    raise
                _log.warning(
                    "event=catch_up_failed orderer=%d from_block=%d error=%r: retried", self._id,
                    start, str(exc),
                )
                self._stop.wait(self._opt.catch_up_retry_s)
        if self._blocks.height() > target:
            _log.info("event=caught_up orderer=%d block=%d", self._id, target)

    def _append_fetched(self, block: block_pb2.Block, expected_hash: bytes = b"") -> None:
        """Append a block fetched from another orderer, signed by us, or -- while our signature
        is not in force -- as it comes, if it carries a valid signature of an orderer of the
        config in force (the peers' rule: a copy only its fetcher or a stranger signed would be
        refused by every peer delivering from us). Raises (the fetch is retried) otherwise, or
        when its header hash is not ``expected_hash`` (if given): nothing stored."""
        number = block.header.number
        if block.header.data_hash != block_data_hash(list(block.data.envelopes)):
            raise RaftError("bad_fetched_block", f"block {number}: data hash")
        header_hash = block_header_hash(block.header)
        if expected_hash and header_hash != expected_hash:
            raise RaftError(
                "bad_fetched_block",
                f"block {number}: header hash {header_hash.hex()[:16]}, the committed block's is "
                f"{expected_hash.hex()[:16]}",
            )
        if self._signer_in_force():
            sign_block(block, header_hash, self._signer)
        elif not self._signed_in_force(block, header_hash):
            raise RaftError(
                "bad_fetched_block",
                f"block {number}: no valid signature of an orderer of the config in force "
                f"(block {self._tracker.current.block_number})",
            )
        self._append_with_config(block)  # the store checks number and previous hash
        self._metrics.height.set(self._blocks.height())

    def _signed_in_force(self, block: block_pb2.Block, header_hash: bytes) -> bool:
        """Whether ``block`` carries a valid signature of an orderer of the config in force."""
        return signed_in_force(self._verifier, block, header_hash, self._tracker.current.msp)

    def _append_with_config(self, block: block_pb2.Block) -> None:
        """Append ``block``; adopt the config it carries, if it is a valid config block."""
        adopted = append_with_config(self._blocks, self._tracker, block)
        self._metrics.blocks.inc()
        if adopted is not None:
            self._on_config(adopted)

    def _on_config(self, cfg: OrdererConfig) -> None:
        self._cutter.set_params(BatchParams.from_config(cfg.config.batch))
        # the entries of one append within half the bound in force (node.msgbound): a lowering
        # reaches each orderer's server at its restart, and one restarted refused, as a whole,
        # an append sized by the bound this node started with (a follower behind, catching up
        # on blocks each within the lowered bound, never got them); a raise is not taken up
        # before this node restarts (the others' servers may not have yet)
        bound = cfg.config.limits.max_message_bytes
        self._node.raft.max_msg_size = (
            self._opt.max_size_per_msg if not bound else max(1, min(self._opt.max_size_per_msg, bound // 2)))
        _log.info(
            "event=config_adopted orderer=%d sequence=%d block=%d orderers=%s",
            self._id, cfg.config.sequence, cfg.block_number, ",".join(map(str, cfg.orderer_ids())),
        )
        # the block is stored; what follows it is judged by rules this release may lack
        require_supported(cfg.config, f"orderer {self._id}")

    def _maybe_reconfigure(self, now: float) -> None:
        """Leader: propose the ConfChange that makes Raft's voters match the orderer set of
        the config in force (one member at a time; retried while it does not match).

        A new orderer joins as a LEARNER and is promoted to voter only once it has caught
        up (:meth:`_caught_up`): adding it as a voter at once would raise the quorum before
        it can vote, so a cluster with one orderer down (or an orderer being replaced: the
        config already cuts the old one off the transport) would stop ordering until the
        new one is running and has fetched the whole chain. Order of the steps: add missing
        orderers as learners, promote caught-up learners, remove voters, remove learners
        the config no longer names."""
        if not self._lead_ready() or now - self._last_conf_change_at < 1.0:
            return
        current = self._tracker.current
        match = self._members_match
        if match is not None and match[0] is current and match[1] == self._conf_state:
            return  # checked since the last config or membership change (every loop otherwise)
        want = set(current.orderer_ids())
        voters, learners = set(self._conf_state.voters), set(self._conf_state.learners)
        if want == voters and not learners:
            self._members_match = (current, self._conf_state)
            return
        self._last_conf_change_at = now
        add = sorted(want - voters - learners)
        promote = [rid for rid in sorted(want & learners) if self._caught_up(rid)]
        remove = sorted(voters - want)
        drop = sorted(learners - want)
        if add:
            cc = ConfChange(ConfChangeType.ADD_LEARNER_NODE, add[0])
        elif promote:
            cc = ConfChange(ConfChangeType.ADD_NODE, promote[0])
        elif remove and voters - {remove[0]}:
            cc = ConfChange(ConfChangeType.REMOVE_NODE, remove[0])
        elif drop:
            cc = ConfChange(ConfChangeType.REMOVE_NODE, drop[0])
        else:
            return  # a learner is still catching up (checked again in a second)
        try:
            self._node.propose_conf_change(cc)
            _log.info("event=conf_change_proposed orderer=%d change=%r", self._id, str(cc))
        except ProposalDropped as err:
            _log.info("event=conf_change_deferred orderer=%d change=%r detail=%r: not proposed yet",
                      self._id, str(cc), err.detail)

    def _caught_up(self, learner: int) -> bool:
        """Leader: has ``learner`` caught up enough to be promoted to voter? It must be
        replicating (not probed, not being sent a snapshot), recently active, and hold the
        log to within ``PROMOTE_MAX_LAG`` entries of the leader's last index."""
        status = self._node.status()
        pr = status.progress.get(learner)
        return (
            pr is not None
            and pr.state == ProgressState.REPLICATE
            and pr.recent_active
            and status.last_index - pr.match <= PROMOTE_MAX_LAG
        )

    # ------------------------------------------------------------------ status

    def _refresh_status(self) -> None:
        """Rebuild the status (and its gauges) only when one of its values changed: most
        Readys (acks, heartbeats) change none of them."""
        hs = self._node.hard_state
        key = (hs.term, hs.commit, self._leader, int(self._role), self._applied, self._blocks.height(),
               int(self._node.withholds_votes))
        if key != self._status_key:
            self._status = self._make_status()

    def _make_status(self) -> ChainStatus:
        hs = self._node.hard_state
        self._status_key = (hs.term, hs.commit, self._leader, int(self._role), self._applied,
                            self._blocks.height(), int(self._node.withholds_votes))
        self._metrics.term.set(hs.term)
        self._metrics.commit_index.set(hs.commit)
        self._metrics.applied_index.set(self._applied)
        return ChainStatus(
            raft_id=self._id,
            term=hs.term,
            leader=self._leader,
            role=self._role,
            commit=hs.commit,
            applied=self._applied,
            height=self._blocks.height(),
            last_hash=self._blocks.last_hash(),
            conf_state=self._conf_state,  # changes only with _applied, which is in the key
            state_unconfirmed=self._node.withholds_votes,
            # hs.commit and hs.term are in the key: the term of the entry at the commit index
            # changes only with them
            commit_term=self._node.raft.log.term_or_zero(hs.commit),
        )


def _payload_bytes(msg: Message) -> int:
    """The entry and snapshot bytes a Raft message carries."""
    size = sum(len(e.data) for e in msg.entries)
    if msg.snapshot is not None:
        size += len(msg.snapshot.data)
    return size


def sign_block(block: block_pb2.Block, header_hash: bytes, signer: Signer) -> None:
    """Add ``signer``'s signature over ``header_hash`` to ``block``'s orderer signatures."""
    sig = block.metadata.orderer_signatures.add()
    sig.signer.CopyFrom(signer.identity)
    sig.signature = signer.sign(Purpose.BLOCK, header_hash)


def append_with_config(blocks: BlockStore, tracker: ConfigTracker, block: block_pb2.Block) -> OrdererConfig | None:
    """Append ``block`` (its ``last_config_block`` set: itself if it carries a config the
    orderers' rules admit, else the config in force) and adopt that config; returns it, or None
    (the caller logs it and checks its protocol version)."""
    new_config = tracker.block_config(block)
    number = block.header.number
    block.metadata.last_config_block = number if new_config is not None else tracker.current.block_number
    blocks.append(block)
    return tracker.adopt(new_config, number) if new_config is not None else None


def signs_in_force(config: config_pb2.ConsortiumConfig, raft_id: int, cert_der: bytes) -> bool:
    """Whether ``config`` names orderer ``raft_id`` with certificate ``cert_der``: only then does
    its signature over a block ordered under ``config`` count for peers (see
    :meth:`Chain._signer_in_force`)."""
    in_force = [o.cert_der for o in config.orderers if o.raft_id == raft_id]
    return bool(in_force) and in_force[0] == cert_der


def signed_in_force(verifier: Verifier, block: block_pb2.Block, header_hash: bytes, msp: MSP) -> bool:
    """Whether ``block`` (header hash ``header_hash``) carries a valid signature of an orderer of
    the config in force before it, whose MSP is ``msp`` (the peers' rule: from protocol version 2
    by a certificate valid at the block's time, ``MSP.block_signers``)."""
    certs = msp.block_signers(block.header.timestamp_ms)
    return block_signers(verifier, header_hash, block.metadata.orderer_signatures, certs) > 0


def sync_block_files(directory: str) -> None:
    """fsync the block store's files and directory.

    The orderer's block store is written without an fsync per block: every block is in
    the fsynced Raft WAL until a snapshot covers it, and a block lost from the page cache
    in a crash is re-applied from the WAL on restart (the block store truncates a torn
    tail). This is called before each snapshot and on shutdown, so a snapshot never
    covers a block that is not durable, and it keeps one fsync per Ready (the WAL's) on
    the ordering path.
    """
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _limits_of_config_block(block: block_pb2.Block) -> config_pb2.Limits | None:
    """The limits of the config a config block carries (None: none, or unreadable)."""
    try:
        config = config_of_block(block)
    except DecodeError:
        return None
    return None if config is None else config.limits


def heartbeat_ticks(options: ChainOptions) -> int:
    """The heartbeat interval in ticks: ``options.heartbeat_tick``, at most a quarter of the
    election timeout (at least 1), so followers always hear several heartbeats per timeout."""
    return max(1, min(options.heartbeat_tick, options.election_tick // 4))


def state_lost_error(raft_id: int, detail: str, *, first_start_hint: bool = False) -> RxError:
    """RAFT_STATE_LOST for orderer ``raft_id``: ``detail`` says what shows it, the rest how to
    recover (README: Recovery); ``first_start_hint``: the others' answers alone decided it (an
    orderer that never ran looks the same)."""
    hint = (" (A founding orderer that never ran, first started after the others ordered "
            "blocks, is refused the same way: its operator starts it with --first-start.)"
            if first_start_hint else "")
    return RxError(
        RAFT_STATE_LOST,
        f"orderer raft id {raft_id}: {detail}. For an orderer: remove it from the "
        "consortium's orderer set with a config update, empty its data directory "
        "(blocks/ and raft/), add it back with another config update (its old entry: the "
        "same raft id, certificate and address) and start it; it rejoins as a learner, "
        "catches up from the others and votes once caught up (README: Recovery). Never "
        "start it with an emptied data directory while it is still in the orderer set." + hint,
    )


def bootstrap_conf_state(raft_ids: Sequence[int]) -> ConfState:
    """The initial membership of a fresh ordering service (all configured orderers vote)."""
    return ConfState(tuple(sorted(raft_ids)), ())


