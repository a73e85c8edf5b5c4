"""Composition of an orderer process: :func:`serve` wires storage, Raft, transport and
services, and returns an :class:`OrdererServer` whose ``stop()`` shuts down gracefully.

Optional tuning in the node YAML's ``extra`` mapping (all integers):
``snapshot_interval_blocks``, ``tick_ms``, ``election_tick``, ``commit_timeout_ms``,
``grpc_workers``, ``max_streams``, ``max_streams_per_caller``, ``max_node_streams``,
``max_streams_per_node`` (caps on Deliver and Broadcast streams, with slots only the consortium's
nodes may take), ``max_cluster_streams``, ``max_cluster_streams_per_orderer`` (caps on the other
orderers' Cluster streams; see :mod:`node.stream_caps`), ``onboard_wait_ms`` and
``onboard_answer_ms`` (the bounds of onboarding, :mod:`node.orderer.onboard`); and
``forward_rpc``: ``batch`` (default, Cluster.ForwardBatch with prompt re-dispatch when the leader
moves) or ``legacy`` (OrdererCluster.ForwardBatch of
``transport.Forwarder``, kept for comparison in benchmarks). ``clock_offset_ms`` shifts every
wall-clock reading of the node (block stamps, certificate validity, the broadcast skew check,
the clock told to the other orderers) by that many ms: fault injection for tests of a machine
whose clock is wrong, never set in production.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, services_pb2

from node.clock import wall_ms as system_wall_ms
from node.config import NodeConfig, check_can_listen
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Signer, Verifier, load_signer
from node.crypto.tls import (
    NODE_SEND_BOUND,
    NodeChannels,
    channel_options,
    server_bound_notice,
    server_credentials,
)
from node.crypto.x509 import cert_info_der
from node.errors import RxError, abort_with
from node.fsutil import make_dirs_durable
from node.genesis import config_from_genesis, read_genesis
from node.identity.caller import CallerCheck, node_certificates
from node.identity.msp import MSP
from node.ledger.blockstore import BlockStore
from node.ledger.errors import LedgerError
from node.msgbound import accept_budget, budget_reader
from node.orderer.broadcast import (
    BroadcastHandler,
    BroadcastOptions,
    EnvelopeValidator,
    broadcast_batch_method_handler,
    broadcast_method_handler,
)
from node.orderer.chain import Chain, ChainOptions, bootstrap_conf_state, state_lost_error, sync_block_files
from node.orderer.clockwatch import ClockWatch
from node.orderer.configtx import ConfigTracker, OrdererConfig, config_of_block
from node.orderer.deliver import DeliverFetcher, DeliverService
from node.orderer.forward import ForwardBatchService, LeaderForwarder
from node.orderer.heard import HeardRecord
from node.orderer.metrics import OrdererMetrics
from node.orderer.onboard import Onboarding, OnboardOptions
from node.orderer.recent import RecentTxIndex
from node.orderer.refusals import NonMemberRefusals
from node.orderer.releases import ReleaseWatch, config_follower, peer_release, peer_release_intake
from node.orderer.statecheck import StateCheck, Verdict, is_blank, judge
from node.orderer.transport import ClusterService, Forwarder, Membership, RaftTransport, cluster_recheck
from node.protocol import SUPPORTED_VERSIONS, protocol_version, require_supported
from node.raft.durable import DurableStorage
from node.raft.errors import RaftStateLost
from node.raft.storage import Storage
from node.raft.types import ConfState, StateRole
from node.rpc_parse import ParseGuard
from node.stream_caps import StreamCaps, reserve_need, reserve_short

_log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class OrdererServer:
    """A running orderer."""

    config: NodeConfig
    grpc_server: grpc.Server
    chain: Chain
    storage: DurableStorage
    blocks: BlockStore
    transport: RaftTransport
    forwarder: LeaderForwarder | Forwarder
    broadcast: BroadcastHandler
    deliver: DeliverService
    metrics: OrdererMetrics
    state_check: StateCheck | None = None  # a blank start the others have not yet judged
    streams: StreamCaps | None = None  # its caps on long-lived calls (their sweeper stops with it)
    # its gRPC worker pool: grpc.server never shuts down the executor it is given (stop does)
    executor: ThreadPoolExecutor | None = None

    def stop(self, grace_s: float = 2.0) -> None:
        """Graceful shutdown: refuse new envelopes, let streams finish, stop Raft, close
        storage (everything acknowledged is already durable)."""
        _log.info("event=orderer_stopping node=%s", self.config.name)
        if self.state_check is not None:
            self.state_check.close()
        self.broadcast.stop_accepting()
        self.chain.hand_over_leadership()
        self.deliver.close()
        self.grpc_server.stop(grace_s).wait(grace_s + 1)
        if self.executor is not None:
            # its idle workers stayed, two or three per stopped orderer, each blocked on the pool's
            # queue for the process's life; a handler still running ends on its own (no wait)
            self.executor.shutdown(wait=False)
        if self.streams is not None:
            self.streams.close()  # (the sweeper thread ran on, checking slots of calls cancelled)
        self.chain.stop()
        self.transport.close()
        self.forwarder.close()
        self.storage.close()
        self.blocks.close()
        self.metrics.close()

    def wait(self) -> None:
        """Block until the gRPC server terminates."""
        self.grpc_server.wait_for_termination()

    def failure(self) -> BaseException | None:
        """Why the ordering chain stopped on its own (None while it runs): the process
        must then exit, or it would keep answering while ordering nothing."""
        return self.chain.failure if self.chain.failed.is_set() else None


def _admin_handler(
    config: NodeConfig, chain: Chain, check_caller: Callable[[grpc.ServicerContext], object],
    in_force: Callable[[], OrdererConfig], releases: ReleaseWatch | None = None,
    heard: HeardRecord | None = None,
) -> grpc.GenericRpcHandler[object, object]:
    """Health (open to any caller the mTLS layer admits, e.g. probes) and Status (chain
    height, hashes, Raft state, protocol versions, and what each peer of the config in force
    told of its release (``releases``): the caller's certificate is checked with the MSP first)."""

    def health(
        request: services_pb2.HealthRequest, context: grpc.ServicerContext
    ) -> services_pb2.HealthResponse:
        st = chain.status()
        serving = st.leader != 0
        return services_pb2.HealthResponse(
            serving=serving, node=config.name, role="orderer",
            detail="" if serving else "no Raft leader known",
        )

    def status(
        request: services_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> services_pb2.StatusResponse:
        try:
            check_caller(context)
        except RxError as err:
            abort_with(context, err)
        st = chain.status()
        consortium = in_force().config
        told = releases.peers() if releases is not None else {}
        return services_pb2.StatusResponse(
            node=config.name, role="orderer", height=st.height, last_block_hash=st.last_hash,
            raft_term=st.term, raft_leader=st.leader, raft_commit=st.commit,
            raft_voters=st.conf_state.voters, raft_learners=st.conf_state.learners,
            raft_applied=st.applied, raft_state_unconfirmed=st.state_unconfirmed, raft_id=config.raft_id,
            raft_commit_term=st.commit_term,
            raft_heard_from=sorted(heard.ids()) if heard is not None else [],
            raft_heard_tracked=heard is not None and heard.tracked,
            protocol_versions=sorted(SUPPORTED_VERSIONS),
            protocol_version=protocol_version(consortium),
            peer_releases=[peer_release(p.name, told.get(p.name)) for p in consortium.peers],
        )

    return grpc.method_handlers_generic_handler(
        "rxchain.v1.Admin",
        {
            "Health": grpc.unary_unary_rpc_method_handler(
                health,
                request_deserializer=services_pb2.HealthRequest.FromString,
                response_serializer=services_pb2.HealthResponse.SerializeToString,
            ),
            "Status": grpc.unary_unary_rpc_method_handler(
                status,
                request_deserializer=services_pb2.StatusRequest.FromString,
                response_serializer=services_pb2.StatusResponse.SerializeToString,
            ),
        },
    )


def _broadcast_handler(
    broadcast: BroadcastHandler, deliver: DeliverService, streams: StreamCaps, check_caller: CallerCheck
) -> grpc.GenericRpcHandler[object, object]:
    return grpc.method_handlers_generic_handler(
        "rxchain.v1.AtomicBroadcast",
        {
            # Broadcast streams hold a gRPC worker each, as Deliver's do: under the same caps,
            # for certificates the config in force admits
            "Broadcast": broadcast_method_handler(broadcast, streams, check_caller),
            "BroadcastBatch": broadcast_batch_method_handler(broadcast, streams, check_caller),
            # the framed block bytes are shared by every following stream: no re-serialization
            "Deliver": grpc.unary_stream_rpc_method_handler(
                deliver.deliver_bytes,
                request_deserializer=services_pb2.DeliverRequest.FromString,
                response_serializer=None,
            ),
        },
    )


def _members(cfg: OrdererConfig) -> list[tuple[int, bytes, str]]:
    return [_entry(o) for o in cfg.config.orderers]


def _admits(cfg: OrdererConfig, wall_ms: Callable[[], int]) -> Callable[[bytes], bool]:
    """Whether ``cfg`` still admits the certificate of an orderer it no longer names (issued
    by its organisation's CA there, not revoked, not expired): only then does an orderer taken
    out of the set keep its Raft messages until Raft removes it (transport.Membership)."""

    def admits(cert_der: bytes) -> bool:
        try:
            org = cert_info_der(cert_der).org
            cfg.msp.validate(identity_pb2.Identity(org=org, cert_der=cert_der), wall_ms())
        except (RxError, ValueError):
            return False
        return True

    return admits


def _entry(o: config_pb2.OrdererNode) -> tuple[int, bytes, str]:
    return o.raft_id, o.cert_der, f"{o.host}:{o.port}"


def _earlier_configs(blocks: BlockStore, in_force: OrdererConfig) -> Iterator[config_pb2.ConsortiumConfig]:
    """The configs before the one in force, latest first: the config blocks walked back from
    it (block 0, the genesis block, included; each config block's predecessor is the
    ``last_config_block`` of the block before it)."""
    number = in_force.block_number
    while number > 0:
        previous = blocks.get(number - 1).metadata.last_config_block
        if previous >= number:
            break  # never in a store this orderer wrote; stop rather than loop
        cfg = config_of_block(blocks.get(previous))
        if cfg is not None:
            yield cfg
        number = previous


def _former_orderers(blocks: BlockStore, in_force: OrdererConfig) -> list[config_pb2.OrdererNode]:
    """The orderers the earlier configs named and the one in force does not, each as the
    latest of them named it. An orderer restarted after the config block taking one out but
    before Raft removed it must still reach it (transport.Membership)."""
    current = {o.raft_id for o in in_force.config.orderers}
    found: dict[int, config_pb2.OrdererNode] = {}
    for cfg in _earlier_configs(blocks, in_force):
        for o in cfg.orderers:
            if o.raft_id not in current and o.raft_id not in found:
                found[o.raft_id] = o
    return [found[rid] for rid in sorted(found)]


def _every_orderer(blocks: BlockStore, in_force: OrdererConfig, own_id: int) -> dict[int, str]:
    """Raft id -> latest address of every other orderer any config up to the one in force
    named, for a --first-start check. RxError FIRST_START_REFUSED when a raft id was held by
    orderers of different organisations or names: asked by raft id, the former holder -- which
    may be the one that heard from this orderer -- would never be. (One orderer moved by
    removing it and adding it back elsewhere keeps both, and is asked at its latest address.)"""
    names: dict[int, set[str]] = {}
    latest: dict[int, str] = {}
    for cfg in (in_force.config, *_earlier_configs(blocks, in_force)):  # latest first
        for o in cfg.orderers:
            if o.raft_id == own_id:
                continue
            names.setdefault(o.raft_id, set()).add(f"{o.org}/{o.name}")  # the TLS pin: its CA and name
            latest.setdefault(o.raft_id, f"{o.host}:{o.port}")
    reused = {rid: sorted(n) for rid, n in sorted(names.items()) if len(n) > 1}
    if reused:
        held = "; ".join(f"raft id {rid}: {', '.join(n)}" for rid, n in reused.items())
        raise RxError(FIRST_START_REFUSED, f"a raft id was held by more than one orderer ({held}): "
                      "--first-start cannot ask every orderer that may have heard from this one; "
                      "join by the README Recovery procedure (remove it from the orderer set, add it "
                      "back)")
    return latest


def _config_in_force(
    blocks: BlockStore, genesis: config_pb2.ConsortiumConfig, verifier: Verifier
) -> OrdererConfig:
    """The config named by the last block's ``last_config_block`` (genesis if none)."""
    if blocks.height() > 1:
        number = blocks.get(blocks.height() - 1).metadata.last_config_block
        if number > 0:
            cfg = config_of_block(blocks.get(number))
            if cfg is not None:
                return OrdererConfig(cfg, MSP(cfg, verifier), number)
    return OrdererConfig(genesis, MSP(genesis, verifier), 0)


def open_block_store(data: Path, genesis: block_pb2.Block, *, sync_dirs: bool = True) -> BlockStore:
    """The orderer's block store, ``data``/blocks, holding at least the genesis block.

    No fsync per block: the fsynced Raft WAL holds every block until a snapshot, and the
    chain syncs the block files before each snapshot (see chain.sync_block_files). The
    directories it creates are made durable all the same (``sync_dirs``): ``data`` vanishing
    from its parent in a power loss takes raft/ with it, and an orderer without its WAL and
    without blocks past the genesis block starts as a blank voter (see open_raft_storage)."""
    try:
        make_dirs_durable(os.fspath(data / "blocks"), sync=sync_dirs)
    except OSError as exc:  # a failed fsync too: the directories exist, but may not survive
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        raise LedgerError(
            "IO_ERROR", f"cannot create block store directory {data / 'blocks'}: {name}: {exc.strerror or exc}"
        ) from exc
    blocks = BlockStore(data / "blocks", fsync=False)
    if blocks.height() == 0:
        blocks.append(genesis)
    return blocks


def open_raft_storage(
    directory: Path,
    blocks: BlockStore,
    raft_ids: Sequence[int],
    raft_id: int,
    *,
    fsync: bool = True,
    fsync_observer: Callable[[float], None] | None = None,
) -> DurableStorage:
    """The orderer's Raft storage. A node whose WAL is gone while its snapshot files or its
    block store (past the genesis block) show that it took part in the log would restart
    as a blank voter (term 0, no vote, empty log) and could help lose a committed block:
    refused with RxError RAFT_STATE_LOST naming the recovery procedure. A brand-new orderer
    (nothing but the genesis block) starts; whether it is one or an emptied voter only the
    other orderers can tell (check_blank_state)."""
    height = blocks.height()
    history = (
        f"the block store {blocks.directory} holds blocks up to {height - 1}"
        if height > 1 else None
    )
    try:
        return DurableStorage(
            directory,
            bootstrap_conf_state=bootstrap_conf_state(raft_ids),
            fsync=fsync,
            fsync_observer=fsync_observer,
            prior_history=history,
        )
    except RaftStateLost as err:
        raise state_lost_error(raft_id, err.detail) from err


def check_blank_state(
    check: StateCheck, storage: Storage, *, first_start: bool = False, first_start_wait_s: float = 60.0,
    every_orderer: Callable[[], tuple[Mapping[int, str], int]] | None = None,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Before Raft starts: if ``storage`` is blank (or a blank start was never confirmed), ask
    the other orderers once (node.orderer.statecheck). RxError RAFT_STATE_LOST when they say
    this orderer is a voter that lost its state; True when nobody could tell (Raft then starts
    unconfirmed and ``check`` keeps asking), False when the start is confirmed or not blank.

    ``first_start`` (``--first-start``): the operator's word that this orderer never ran -- a
    founding orderer first started after the others ordered blocks without it, which its own
    storage cannot tell from a voter that lost its state. Its Raft storage must be blank
    (BAD_CONFIG otherwise: the flag left on a command line does nothing once it ran); it asks,
    before its Raft starts (so it sends nothing meanwhile), until every orderer any config since
    the genesis named has told the raft ids it ever received a Raft message from
    (``statecheck.judge_first_start``): RAFT_STATE_LOST if one heard from it, confirmed if none
    did; FIRST_START_UNANSWERED after ``first_start_wait_s`` without every answer.
    ``every_orderer`` (required with ``first_start``) is called before each round: it brings
    the block store up to date (onboarding again) and returns (raft id -> address of every
    other such orderer, the height); an answer above that height sends it to catch up again, and
    the round is inconclusive while the store still lacks blocks an answer had (an orderer
    added and removed in them would not be asked)."""
    if first_start:
        if every_orderer is None:
            raise ValueError("--first-start needs every_orderer")
        return _attested_first_start(check, storage, every_orderer, first_start_wait_s, clock, sleep)
    if not check.needed(storage):
        return False
    verdict, why = check.round(storage.initial_state()[0].commit)
    if verdict == Verdict.LOST:
        _log.critical("event=raft_state_lost orderer=%d detail=%r", check.raft_id, why)
        raise state_lost_error(check.raft_id, why, first_start_hint=True)
    if verdict == Verdict.NEW:
        check.confirmed()
        _log.info("event=raft_state_confirmed orderer=%d detail=%r", check.raft_id, why)
        return False
    check.mark_unconfirmed()
    _log.warning("event=raft_state_unconfirmed orderer=%d detail=%r: blank Raft storage; no vote "
                 "and no campaign until another orderer tells this one is new", check.raft_id, why)
    return True


def _attested_first_start(check: StateCheck, storage: Storage,
                          every_orderer: Callable[[], tuple[Mapping[int, str], int]], wait_s: float,
                          clock: Callable[[], float], sleep: Callable[[float], None]) -> bool:
    if not is_blank(storage):
        raise RxError("BAD_CONFIG", f"orderer raft id {check.raft_id}: --first-start is for an "
                      "orderer that never ran, and this one's Raft storage holds state: start it "
                      "without the flag")
    deadline = clock() + wait_s
    while True:
        known, height = every_orderer()
        if not known:  # nobody could have heard from it -- or its store shows nobody yet
            raise RxError(FIRST_START_REFUSED, f"orderer raft id {check.raft_id}: no other orderer in "
                          "the configs its block store holds (onboarding reached nobody?): "
                          "--first-start is for a founding orderer of a network whose other orderers "
                          "ordered blocks; start it without the flag")
        answers = check.answers(sorted(known.values()))
        if max((a.height for a in answers), default=0) > height:
            # the others ordered on while it asked (a network under load): catch up again; the
            # answers stand once its store holds the blocks they had (an orderer a config among
            # them names is then required, and unanswered if it was not asked)
            known, height = every_orderer()
        verdict, why = judge(check.raft_id, answers, 0, first_start=True, required=frozenset(known),
                             own_height=height)
        if verdict == Verdict.NEW:
            check.confirmed()
            _log.warning("event=raft_first_start_attested orderer=%d detail=%r: started with "
                         "--first-start; it votes and campaigns", check.raft_id, why)
            return False
        if verdict == Verdict.LOST:
            _log.critical("event=raft_state_lost orderer=%d detail=%r", check.raft_id, why)
            raise state_lost_error(check.raft_id, why)
        if clock() >= deadline:
            raise RxError(FIRST_START_UNANSWERED, f"orderer raft id {check.raft_id}: {why}, for "
                          f"{wait_s:.0f} s; --first-start needs the answer of every orderer any config "
                          "named: start it again once they all run, or, if one is gone for good (or "
                          "another founding orderer never ran either), join by the README Recovery "
                          "procedure (remove it from the orderer set, add it back)")
        _log.info("event=raft_first_start_waiting orderer=%d detail=%r", check.raft_id, why)
        sleep(FIRST_START_RETRY_S)


def _onboard(
    config: NodeConfig, blocks: BlockStore, tracker: ConfigTracker, signer: Signer, verifier: Verifier,
    channels: Callable[[str], grpc.Channel], *, wait: bool,
) -> None:
    """Catch the block store up to the chain of the orderers it can reach (node.orderer.onboard)
    before Raft starts, so that the config in force, the transport's membership and the
    addresses it dials are the current ones: a new orderer knows only the genesis block, one
    that was down may know only orderers replaced meanwhile. ``wait``: a new orderer the
    genesis config does not name (it must find the chain, bounded by ``extra.onboard_wait_ms``,
    else ONBOARDING_FAILED); any other asks each orderer once."""
    extra = config.extra
    defaults = OnboardOptions()
    options = OnboardOptions(
        wait_s=int(extra.get("onboard_wait_ms", defaults.wait_s * 1000)) / 1000.0,
        answer_timeout_s=int(extra.get("onboard_answer_ms", defaults.answer_timeout_s * 1000)) / 1000.0,
    )
    own = {f"{config.host}:{config.port}", config.listen}
    own.update(e.target for e in config.orderers if e.name == config.name)
    done = Onboarding(
        config.raft_id, blocks, tracker, signer, channels, [e.target for e in config.orderers],
        verifier=verifier, options=options, own_targets=sorted(own),
    ).run(wait)
    if config.fsync and done.height > done.start_height:
        # no WAL holds these blocks (they came from Deliver, not Raft): durable before Raft
        # starts on them
        sync_block_files(blocks.directory)


def _node_clock(offset_ms: int) -> Callable[[], int]:
    """The node's wall clock: the system's, shifted by ``extra.clock_offset_ms`` (tests)."""
    if not offset_ms:
        return system_wall_ms
    _log.warning("event=clock_offset offset_ms=%d: this orderer's clock is shifted (fault "
                 "injection)", offset_ms)
    return lambda: system_wall_ms() + offset_ms


FIRST_START_UNANSWERED = "FIRST_START_UNANSWERED"
FIRST_START_REFUSED = "FIRST_START_REFUSED"
FIRST_START_RETRY_S = 0.5  # between the rounds of a --first-start check


def serve(config: NodeConfig, *, first_start: bool = False) -> OrdererServer:
    """Start an orderer for ``config`` and return it running; ``first_start``: see
    :func:`check_blank_state`."""
    extra = config.extra
    wall_ms = _node_clock(int(extra.get("clock_offset_ms", 0)))
    forward_rpc = str(extra.get("forward_rpc", "batch"))
    if forward_rpc not in ("batch", "legacy"):
        raise RxError("BAD_CONFIG", f"extra.forward_rpc must be 'batch' or 'legacy', not {forward_rpc!r}")
    genesis = read_genesis(config.genesis_path)
    consortium = config_from_genesis(genesis)
    verifier = Verifier()
    try:
        signer = load_signer(config.cert_path, config.key_path, config.org)
    except (OSError, ValueError) as exc:  # OSError: e.g. a key file the node may not read
        raise RxError("BAD_CONFIG", f"{config.name}: cannot load certificate/key: {exc}") from exc
    check_can_listen(config)  # before anything is written into data_dir
    metrics = OrdererMetrics(config.name)
    metrics.cert_expiry.set(cert_info_der(signer.cert_der).not_after_ms / 1000)
    data = Path(config.data_dir)
    blocks = open_block_store(data, genesis, sync_dirs=config.fsync)
    tracker = ConfigTracker(_config_in_force(blocks, consortium, verifier), verifier)
    try:
        require_supported(tracker.current.config, config.name)
    except RxError:
        blocks.close()
        raise
    # Genesis voters for everyone: a later-added orderer replays the same log (or gets a
    # snapshot carrying the membership), so it reaches the same ConfState. Opened before
    # onboarding fills the block store: a crash in between must not look like a lost WAL.
    raft_ids = [o.raft_id for o in consortium.orderers]
    try:
        storage = open_raft_storage(
            data / "raft", blocks, raft_ids, config.raft_id,
            fsync=config.fsync, fsync_observer=metrics.fsync_seconds.observe,
        )
    except BaseException:
        blocks.close()
        raise
    try:  # tracked when started with the storage: it then covers everything ever received
        heard = HeardRecord.open(data / "raft", blank=is_blank(storage), fsync=config.fsync)
    except BaseException:
        storage.close()
        blocks.close()
        raise
    # the orderers earlier configs named, as the last one named each (dialled while in Raft);
    # filled in once onboarding has brought the block store up to date
    former: list[dict[int, config_pb2.OrdererNode]] = [{}]
    # gRPC's bound on what one message received may hold: the config in force. The server's
    # is fixed when it is made, once onboarding brought the block store up to date (a raised
    # max_message_bytes takes effect on it at each node's restart, as on peers). Read before
    # onboarding, it would be the genesis config's for a new or emptied orderer: its server
    # would refuse the blocks and Raft messages the others send under a raised bound. Each
    # channel takes the bound in force as it is dialled (the blocks onboarding stored may have
    # raised it). What it sends is bounded by NODE_SEND_BOUND only (node.crypto.tls).
    def message_bound() -> int:
        return tracker.current.config.limits.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES

    def options() -> list[tuple[str, int | str]]:
        return [
            *channel_options(message_bound(), max_send_bytes=NODE_SEND_BOUND),
            # Orderers come back after a crash: retry connections quickly, and keep the
            # backoff state per channel (the global subchannel pool would carry it over).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.use_local_subchannel_pool", 1),
        ]

    # the other orderers are dialled pinned to their names and their organisations' CAs
    channel = NodeChannels(config.cert_path, config.key_path, config.ca_bundle_path, options,
                           lambda: tracker.current.config,
                           names={e.target: e.name for e in (*config.orderers, *config.peers)},
                           former=lambda: list(former[0].values()))
    try:
        _onboard(config, blocks, tracker, signer, verifier, channel,
                 wait=is_blank(storage) and config.raft_id not in raft_ids)
    except BaseException:
        storage.close()
        blocks.close()
        raise
    former[0] = {o.raft_id: o for o in _former_orderers(blocks, tracker.current)}
    admitted = _admits(tracker.current, wall_ms)
    membership = Membership(_members(tracker.current),
                            [_entry(o) for o in former[0].values() if admitted(o.cert_der)])
    seen = [tracker.current]  # the config adopt_members saw last

    # the other orderers' and the peers' releases; peers' statements refused are counted
    releases = ReleaseWatch(wall_ms, verifier=verifier,
                            on_refused=lambda reason: metrics.release_statements_refused.labels(reason=reason).inc(),
                            network=block_header_hash(blocks.get(0).header))
    # what a peer told is its certificate's word: renames, rotations (node.orderer.releases)
    follow_peers = config_follower(releases, lambda n: blocks.get(n).header.timestamp_ms)
    follow_peers(tracker.current)
    tracker.subscribe(follow_peers)
    transport = RaftTransport(config.raft_id, membership, channel, wall_ms=wall_ms, releases=releases)

    def adopt_members(cfg: OrdererConfig) -> None:
        kept = {o.raft_id for o in cfg.config.orderers}
        was = {**former[0], **{o.raft_id: o for o in seen[0].config.orderers}}
        former[0] = {rid: o for rid, o in was.items() if rid not in kept}  # replaced: read by dialling threads
        seen[0] = cfg
        membership.update(_members(cfg), keep=_admits(cfg, wall_ms))
        transport.drop_departed()

    tracker.subscribe(adopt_members)
    clock_watch = ClockWatch(wall_ms)
    fetcher = DeliverFetcher(
        lambda: [t for rid, t in sorted(membership.targets().items()) if rid != config.raft_id],
        channel,
    )
    def every_orderer() -> tuple[dict[int, str], int]:
        # --first-start: onboard again (its block store may be behind), then every orderer any
        # config named, the former ones pinned for the channels
        _onboard(config, blocks, tracker, signer, verifier, channel, wait=False)
        former[0] = {o.raft_id: o for o in _former_orderers(blocks, tracker.current)}
        return _every_orderer(blocks, tracker.current, config.raft_id), blocks.height()

    state_check = StateCheck(
        config.raft_id, data / "raft",
        lambda: [t for rid, t in sorted(membership.targets().items()) if rid != config.raft_id],
        channel, fsync=config.fsync,
    )
    try:
        unconfirmed = check_blank_state(
            state_check, storage, first_start=first_start,
            first_start_wait_s=int(extra.get("first_start_wait_ms", 60_000)) / 1000.0,
            every_orderer=every_orderer)
    except BaseException:
        for close in (transport.close, storage.close, blocks.close):
            close()
        raise
    # a --first-start check onboards again: the bound in force may have moved since
    max_msg = message_bound()
    bound_notice = server_bound_notice(config.name, max_msg)
    tracker.subscribe(lambda cfg: bound_notice(cfg.config.limits.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES))
    tick_s = int(extra.get("tick_ms", 50)) / 1000.0
    chain = Chain(
        config.raft_id, storage, blocks, signer, transport, fetcher,
        tracker, metrics,
        rng=random.Random(int.from_bytes(os.urandom(8), "big")),  # noqa: S311 -- election jitter
        wall_ms=wall_ms,
        options=ChainOptions(
            tick_s=tick_s,
            election_tick=int(extra.get("election_tick", 10)),
            snapshot_interval_blocks=int(extra.get("snapshot_interval_blocks", 100)),
            # the entries of one append, with its framing, within the others' message bound
            # (a block is at most half of it: node.orderer.configrules)
            max_size_per_msg=max(1, min(ChainOptions.max_size_per_msg, max_msg // 2)),
        ),
        clock_watch=clock_watch,
        releases=releases,
        state_unconfirmed=unconfirmed,
        heard=heard,
    )
    transport.bind(chain)

    def follow_raft(conf_state: ConfState) -> None:
        membership.set_in_raft((*conf_state.voters, *conf_state.learners))
        transport.drop_departed()

    chain.add_conf_state_listener(follow_raft)
    # told it lost acknowledged entries: the Raft core's ban is durable (its hard state) and
    # the marker keeps it unconfirmed after a restart too, until the others confirm it; the
    # marker goes once it caught up, else a restart finding the others' commit index ahead
    # (they ran on meanwhile) would withhold its vote again
    def state_lost(lost: bool) -> None:
        if lost:
            state_check.mark_unconfirmed()
            heard.untrack()  # its record started with the data directory it lost
        else:
            state_check.confirmed()

    chain.add_state_lost_listener(state_lost)
    commit_timeout_s = int(extra.get("commit_timeout_ms", 5000)) / 1000.0
    validator = EnvelopeValidator(
        tracker.msp, consortium.consortium_id,
        # the bound in force, per envelope (it was the genesis config's: a raised or lowered
        # max_envelope_bytes never took effect on the orderers)
        lambda: min(tracker.current.config.limits.max_envelope_bytes or max_msg, max_msg), wall_ms,
        config_check=tracker.check_broadcast,
        max_skew_ms=lambda: tracker.current.config.limits.max_clock_skew_ms,
    )
    # envelope bytes of one batch message received, client's or forwarded (node.msgbound: all
    # that fits the bound, at least what a sender under the same bound puts in one; it was the
    # bound less 64 KiB, nothing at all under the smallest bound a config allows: every batch
    # was refused TOO_LARGE)
    batch_bytes = accept_budget(max_msg, BroadcastOptions.max_batch_bytes)

    def send_bound() -> int:
        # what the forwarded batches and the answers of batch streams are sized by: the
        # receiver's bound (forwarded batches were 4 MiB whatever max_msg: over a smaller bound
        # the leader refused the message and every envelope in it was answered
        # SERVICE_UNAVAILABLE, outcome unknown), which is the bound in force once it restarted
        # (or dialled) after a lowering, and at most this node's own until then after a raise
        return min(message_bound(), max_msg)

    forward_bytes = budget_reader(send_bound, BroadcastOptions.max_batch_bytes)
    forwarder: LeaderForwarder | Forwarder
    if forward_rpc == "batch":
        forwarder = LeaderForwarder(membership, channel, chain.leader_id, max_batch_bytes=forward_bytes)
        chain.add_leader_listener(forwarder.leader_changed)
    else:
        forwarder = Forwarder(membership, channel, max_batch_bytes=forward_bytes)
    broadcast = BroadcastHandler(
        validator, chain, forwarder, metrics,
        # a batch over the limit gets TOO_LARGE answers only if it still fits a gRPC message
        BroadcastOptions(commit_timeout_s=commit_timeout_s, max_batch_bytes=batch_bytes),
        recent=RecentTxIndex(blocks, chain.leader_id), message_bound=send_bound,
    )
    grpc_workers = config.grpc_workers
    check_caller = CallerCheck(tracker.msp, wall_ms)
    # on Deliver and Broadcast streams, the peers' and orderers' beyond the clients'; an open
    # one's caller is checked again, at once when a config is adopted (node.stream_caps)
    streams = config.stream_caps(node_certificates(tracker.msp, wall_ms), check_caller.check)
    tracker.subscribe(lambda _cfg: streams.recheck_now())
    # the reserve against what the config in force's nodes hold at worst, at start and when a
    # config adds nodes (a warning: node.stream_caps.reserve_short)
    told_short = [reserve_short(streams, len(tracker.current.config.peers),
                                len(tracker.current.config.orderers), config.name)]

    def reserve_again(_cfg: object) -> None:
        cfg = tracker.current.config
        short = reserve_need(len(cfg.peers), len(cfg.orderers)) - streams.nodes
        if short > told_short[0]:
            told_short[0] = reserve_short(streams, len(cfg.peers), len(cfg.orderers), config.name)

    tracker.subscribe(reserve_again)
    deliver = DeliverService(blocks, tracker.msp, wall_ms, streams=streams,
                             release_told=peer_release_intake(lambda: tracker.current.config, releases))
    # one count of each non-member caller's refusals, whichever Cluster stream it opens
    refusals = NonMemberRefusals(metrics)
    cluster_streams = config.cluster_caps()  # and one cap on their streams, per orderer and in total
    # an open one's orderer checked again too: removed, revoked or expired, its streams end
    # (under protocol version 1, a Step stream of an orderer kept in the set whatever its
    # certificate: version 1 lets an update revoke a kept orderer's, still a voter)
    cluster_streams.watch_with(streams, cluster_recheck(membership, check_caller.check,
                                                        lambda: protocol_version(tracker.current.config)))
    cluster = ClusterService(
        config.raft_id, membership, chain, broadcast, metrics, commit_timeout_s,
        clock_watch=clock_watch, releases=releases, refusals=refusals, streams=cluster_streams,
    )
    forward_batch = ForwardBatchService(membership, broadcast, metrics, commit_timeout_s, refusals=refusals,
                                        streams=cluster_streams)
    executor = ThreadPoolExecutor(max_workers=grpc_workers, thread_name_prefix=f"grpc-{config.name}")
    server = grpc.server(
        executor,
        options=[
            # the bound in force limits what it receives; it sends the blocks made under an
            # earlier, larger one too (node.crypto.tls.NODE_SEND_BOUND)
            ("grpc.max_send_message_length", NODE_SEND_BOUND),
            ("grpc.max_receive_message_length", max_msg),
            ("grpc.so_reuseport", 0),  # a taken port is an error, never shared
        ],
        interceptors=[ParseGuard()],  # unparseable requests: BAD_REQUEST, not a bare INTERNAL
    )
    server.add_generic_rpc_handlers(
        [
            _broadcast_handler(broadcast, deliver, streams, check_caller), cluster.handler(), cluster.batch_handler(),
            forward_batch.handler(),
            _admin_handler(config, chain, check_caller, lambda: tracker.current,
                           releases, heard),
        ]
    )
    server_creds = server_credentials(config.cert_path, config.key_path, config.ca_bundle_path,
                                      lambda: tracker.current.config)
    try:
        bound = server.add_secure_port(config.listen, server_creds)
    except RuntimeError as exc:
        bound = 0
        _log.error("event=bind_failed listen=%s error=%r", config.listen, str(exc))
    if not bound:
        for close in (transport.close, forwarder.close, storage.close, blocks.close):
            close()
        executor.shutdown(wait=False)
        raise RxError("BAD_CONFIG", f"{config.name}: cannot listen on {config.listen}")
    server.start()
    chain.start()
    if unconfirmed:
        state_check.start(chain.confirm_state, chain.state_lost, lambda: chain.status().commit)
    try:
        metrics.serve(config.metrics_port, config.host)
    except OSError as exc:
        OrdererServer(config, server, chain, storage, blocks, transport, forwarder, broadcast,
                      deliver, metrics, state_check, streams, executor).stop(0)
        raise RxError("BAD_CONFIG", f"{config.name}: metrics port {config.metrics_port}: {exc}") from exc
    _log.info(
        "event=orderer_started node=%s raft_id=%d listen=%s height=%d",
        config.name, config.raft_id, config.listen, blocks.height(),
    )
    return OrdererServer(
        config, server, chain, storage, blocks, transport, forwarder, broadcast, deliver,
        metrics, state_check, streams, executor,
    )


__all__ = ["OrdererServer", "StateRole", "open_block_store", "open_raft_storage", "serve"]
