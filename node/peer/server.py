"""Composition of a peer process: ``serve(config) -> PeerNode`` (running).

Wiring, in order: ledger (recovers, commits genesis on first start) -> committer with the
lifecycle PolicyProvider -> notifier and metrics as commit listeners -> sandbox worker
pool -> endorser -> gateway (remote endorsers + broadcast client) -> gRPC server with
mTLS (Endorser, Gateway, PeerDeliver, Admin) -> deliver client pulling from the orderers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from rxchain.v1 import audit_pb2_grpc, block_pb2, services_pb2_grpc, transaction_pb2

from node.clock import wall_ms
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
from node.errors import RxError
from node.genesis import read_genesis
from node.identity.caller import NO_BLOCK_ROLES, CallerCheck, node_certificates
from node.identity.release import sign_statement
from node.ledger.ledger import Ledger, env_crash_hook
from node.peer.admin_service import PeerAdminService
from node.peer.audit import (
    DEFAULT_MAX_RECORDS,
    DEFAULT_REFUSAL_BURST,
    DEFAULT_REFUSALS_PER_MINUTE,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_UNAUTHENTICATED_BURST,
    DEFAULT_UNAUTHENTICATED_PER_MINUTE,
    AccessLog,
    Auditor,
    RefusalLimiter,
)
from node.peer.audit_service import AccessAuditService
from node.peer.broadcast_client import BroadcastClient
from node.peer.committer import CommittedBlock, Committer
from node.peer.config_view import ConfigView
from node.peer.deliver_client import DeliverClient, DeliverSettings
from node.peer.deliver_service import PeerDeliverService
from node.peer.endorser import Endorser, EndorserService
from node.peer.gateway.deps import GatewayDeps
from node.peer.gateway.service import CLOSE_WAIT_S as GATEWAY_CLOSE_WAIT_S
from node.peer.gateway.service import GatewayService
from node.peer.lifecycle import Lifecycle
from node.peer.metrics import PeerMetrics
from node.peer.notifier import CommitNotifier
from node.peer.peer_clients import RemoteEndorsers
from node.peer.policy_provider import LifecyclePolicies
from node.protocol import require_supported
from node.rpc_parse import ParseGuard
from node.sandbox.runtime import ContractRejected, Sandbox, SandboxError
from node.sandbox.types import SandboxLimits
from node.stream_caps import StreamCaps

_log = logging.getLogger(__name__)
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SANDBOX_WORKERS = 4  # default of extra.sandbox_workers (see where the Sandbox is made)


@dataclass
class PeerNode:
    """A running peer; :meth:`stop` shuts it down gracefully."""

    config: NodeConfig
    ledger: Ledger
    committer: Committer
    notifier: CommitNotifier
    deliver: DeliverClient
    broadcast: BroadcastClient
    gateway: GatewayService
    server: grpc.Server
    metrics: PeerMetrics
    sandbox: Sandbox
    endorser_service: EndorserService
    stopping: threading.Event = field(default_factory=threading.Event)
    failed: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None
    streams: StreamCaps | None = None  # its caps on long-lived calls (their sweeper stops with it)
    access_log: AccessLog | None = None  # its access-audit log (closed after the endorsers stopped)

    def fail(self, cause: BaseException) -> None:
        """A commit failed in a way that leaves the ledger in doubt: ask the owner to restart."""
        self.failure = cause
        self.failed.set()

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop pulling blocks, drain RPCs for ``grace_s``, then close everything."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.deliver.stop()
        self.notifier.close()
        self.endorser_service.close()  # end open endorse streams so they do not hold the stop
        self.server.stop(grace_s).wait(grace_s + 1)
        if self.streams is not None:
            self.streams.close()  # (the sweeper thread ran on, checking slots of calls cancelled)
        if not self.gateway.close():
            _log.warning("event=peer_stopping node=%s wait_s=%.1f: gateway work still running after the wait",
                         self.config.name, GATEWAY_CLOSE_WAIT_S)
        self.endorser_service.close(wait=True)  # no endorsement still reading the ledger
        self.broadcast.close()
        self.sandbox.close()
        self.metrics.close()
        if self.access_log is not None:
            self.access_log.close()
        # closed even then: an in-process restart (after a failed commit) reopens it
        with self.committer_lock():
            self.ledger.close()
        _log.info("event=peer_stopped node=%s", self.config.name)

    def committer_lock(self) -> Any:
        """The committer's lock (no commit runs while the ledger closes)."""
        return self.committer._lock


def _open_ledger(config: NodeConfig, genesis: block_pb2.Block) -> Ledger:
    ledger = Ledger(Path(config.data_dir) / "ledger", fsync=config.fsync,
                    crash_hook=env_crash_hook(os.environ))
    if ledger.height() == 0:
        ledger.commit_genesis(genesis)
    elif block_header_hash(ledger.block(0).header) != block_header_hash(genesis.header):
        ledger.close()
        raise RxError("BAD_CONFIG", f"{config.data_dir}: the ledger belongs to another network")
    return ledger


def serve(config: NodeConfig) -> PeerNode:
    """Start a peer for ``config`` and return it running (RxError BAD_CONFIG if it cannot)."""
    if config.kind != "peer":
        raise RxError("BAD_CONFIG", f"{config.name} is a {config.kind}, not a peer")
    genesis = read_genesis(config.genesis_path)
    try:
        signer = load_signer(config.cert_path, config.key_path, config.org)
    except (OSError, ValueError) as exc:  # OSError: e.g. a key file the node may not read
        raise RxError("BAD_CONFIG", f"{config.name}: cannot load certificate/key: {exc}") from exc
    check_can_listen(config)  # before the ledger is created in data_dir
    ledger = _open_ledger(config, genesis)
    closers: list[Any] = [ledger.close]
    try:
        return _compose(config, signer, ledger, closers)
    except BaseException:
        for close in reversed(closers):
            close()
        raise


def node_verifier(signer: Signer) -> Verifier:
    """The peer's one Verifier (committer, configuration, MSP), remembering what ``signer``
    signs: the peer then validates its own endorsements without an ECDSA verification."""
    verifier = Verifier()
    verifier.trust_own(signer)
    return verifier


def _compose(config: NodeConfig, signer: Signer, ledger: Ledger, closers: list[Any]) -> PeerNode:
    extra = config.extra
    verifier = node_verifier(signer)
    policies = LifecyclePolicies()
    committer = Committer(ledger, verifier, policies,
                          orderer_quorum=int(extra.get("orderer_quorum", 1)))
    configs = ConfigView(ledger.state, verifier)
    consortium = configs.current().config
    require_supported(consortium, config.name)
    max_msg = consortium.limits.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES

    def message_bound() -> int:
        # what one message received may hold: the config in force (blocks made after a config
        # update raising it are larger than the earlier bound; a new peer starts from genesis)
        return configs.current().config.limits.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES

    def batch_bound() -> int:
        # what one coalesced message sent to another node may be sized by: the bound in force,
        # or this node's start bound if smaller (a raise reaches each server at its restart:
        # the others may not have restarted yet; a lowering is in force at once)
        return min(message_bound(), max_msg)

    network = block_header_hash(ledger.block(0).header)  # what the peer's release statements name
    notifier = CommitNotifier(ledger.height())
    metrics = PeerMetrics(config.name)
    metrics.height.set(ledger.height())
    metrics.cert_expiry.set(cert_info_der(signer.cert_der).not_after_ms / 1000)
    committer.add_listener(notifier.on_commit)

    # each worker serves one contract code: the default keeps one warm per contract of the
    # consortium (prescription, settlement, registry) and one more for concurrent calls; a
    # smaller pool replaces a worker (~0.1 s) whenever the contract changes
    sandbox = Sandbox(int(extra.get("sandbox_workers", SANDBOX_WORKERS)), SandboxLimits())
    metrics.watch_sandbox(sandbox.stats)
    closers.append(sandbox.close)
    # who got (or was refused) a prescription's key from this peer (node.peer.audit)
    access_log = AccessLog(Path(config.data_dir) / "audit", wall_ms,
                           retention_days=int(extra.get("audit_retention_days", DEFAULT_RETENTION_DAYS)),
                           max_records=int(extra.get("audit_max_records", DEFAULT_MAX_RECORDS)),
                           sync=config.fsync)
    closers.append(access_log.close)
    # refusals recorded one by one per certificate; over that counted, one summary a minute
    limiter = RefusalLimiter(
        wall_ms, per_minute=int(extra.get("audit_refusals_per_minute", DEFAULT_REFUSALS_PER_MINUTE)),
        burst=int(extra.get("audit_refusal_burst", DEFAULT_REFUSAL_BURST)),
        unauth_per_minute=int(extra.get("audit_unauthenticated_per_minute", DEFAULT_UNAUTHENTICATED_PER_MINUTE)),
        unauth_burst=int(extra.get("audit_unauthenticated_burst", DEFAULT_UNAUTHENTICATED_BURST)))
    endorser = Endorser(ledger, configs, signer, sandbox, Lifecycle(), wall_ms,
                        on_endorse=metrics.endorsements.inc,
                        audit=Auditor(access_log, lambda result: metrics.access_audit.labels(result=result).inc(),
                                      limiter))
    def options() -> list[tuple[str, int | str]]:
        # each channel takes the bound in force as it is dialled; it sends up to NODE_SEND_BOUND
        return [*channel_options(message_bound(), max_send_bytes=NODE_SEND_BOUND),
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.use_local_subchannel_pool", 1)]

    # every other node is dialled pinned to its name and its organisation's CA
    channel = NodeChannels(config.cert_path, config.key_path, config.ca_bundle_path, options,
                           lambda: configs.current().config,
                           names={e.target: e.name for e in (*config.orderers, *config.peers)})

    def raft_targets() -> dict[int, str]:
        # Raft id -> endpoint of the committed configuration, so broadcasts follow the leader.
        return {o.raft_id: f"{o.host}:{o.port}" for o in configs.current().config.orderers}

    broadcast = BroadcastClient(config.orderers, channel, raft_targets=raft_targets, message_bound=batch_bound)
    grpc_workers = config.grpc_workers
    # Long-lived calls (Events, PeerDeliver.Deliver, CommitStatus waits) share these caps, the
    # other peers' beyond the clients'; the rest of the pool stays free for unary and
    # endorsement calls. An open one's caller is checked again, at once when a config block
    # commits (node.stream_caps).
    check_caller = CallerCheck(lambda: configs.current().msp, wall_ms)
    streams = config.stream_caps(node_certificates(lambda: configs.current().msp, wall_ms), check_caller.check)
    committer.add_listener(lambda c: streams.recheck_now() if c.validated.new_config is not None else None)
    gateway = GatewayService(GatewayDeps(
        org=config.org, endorser=endorser, ledger=ledger, configs=configs, policies=policies,
        notifier=notifier, remotes=RemoteEndorsers(config.peers, channel, message_bound=batch_bound),
        broadcast=broadcast,
        on_submit=metrics.submitted.inc,
    ), streams=streams)

    bound_notice = server_bound_notice(config.name, max_msg)

    def commit(block: block_pb2.Block) -> CommittedBlock:
        started = time.perf_counter()
        committed = committer.commit_block(block)
        metrics.on_commit(committed, time.perf_counter() - started)
        bound_notice(message_bound())
        codes = committed.validated.codes
        valid = sum(1 for c in codes if c == transaction_pb2.VALID)
        _log.info("event=block_committed node=%s block=%d txs=%d valid=%d state_hash=%s",
                  config.name, committed.result.number, len(codes), valid,
                  committed.result.state_hash.hex()[:16])
        return committed

    node_ref: list[PeerNode] = []
    watchdog = DeliverSettings.from_extra(extra)
    deliver = DeliverClient(config.orderers, channel, ledger.height, commit,
                            on_error=lambda _o, r: metrics.deliver_failovers.labels(reason=r).inc(),
                            on_fatal=lambda exc: node_ref[0].fail(exc) if node_ref else None,
                            stall_s=watchdog.stall_s, probe_timeout_s=watchdog.probe_timeout_s,
                            unresponsive_s=watchdog.unresponsive_s,
                            sign_release=lambda version: sign_statement(signer, config.name, version, wall_ms(),
                                                                        network),
                            message_bound=message_bound)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=grpc_workers),
        # the bound in force at start limits what it receives; it serves the blocks made
        # under an earlier, larger one too (node.crypto.tls.NODE_SEND_BOUND)
        options=[("grpc.max_send_message_length", NODE_SEND_BOUND),
                 ("grpc.max_receive_message_length", max_msg),
                 ("grpc.so_reuseport", 0)],  # a taken port is an error, never shared
        interceptors=[ParseGuard()],  # unparseable requests: BAD_REQUEST, not a bare INTERNAL
    )
    endorser_service = EndorserService(endorser, message_bound=batch_bound, streams=streams,
                                       check_caller=check_caller)
    services_pb2_grpc.add_EndorserServicer_to_server(endorser_service, server)
    services_pb2_grpc.add_GatewayServicer_to_server(gateway, server)
    services_pb2_grpc.add_PeerDeliverServicer_to_server(
        PeerDeliverService(ledger, notifier, CallerCheck(lambda: configs.current().msp, wall_ms, NO_BLOCK_ROLES),
                           streams), server)
    audit_pb2_grpc.add_AccessAuditServicer_to_server(AccessAuditService(config.org, access_log, check_caller),
                                                     server)
    services_pb2_grpc.add_AdminServicer_to_server(
        PeerAdminService(config.name, ledger, lambda: bool(node_ref) and node_ref[0].stopping.is_set(),
                         check_caller),
        server,
    )
    try:
        bound = server.add_secure_port(config.listen, server_credentials(
            config.cert_path, config.key_path, config.ca_bundle_path, lambda: configs.current().config))
    except RuntimeError as exc:
        bound = 0
        _log.error("event=bind_failed listen=%s error=%r", config.listen, str(exc))
    if not bound:
        raise RxError("BAD_CONFIG", f"{config.name}: cannot listen on {config.listen}")
    closers.append(lambda: server.stop(0))
    node = PeerNode(config, ledger, committer, notifier, deliver, broadcast, gateway, server,
                    metrics, sandbox, endorser_service, streams=streams, access_log=access_log)
    node_ref.append(node)
    server.start()
    try:
        metrics.serve(config.metrics_port, config.host)
    except OSError as exc:
        raise RxError("BAD_CONFIG", f"{config.name}: metrics port {config.metrics_port}: {exc}") from exc
    deliver.start()
    threading.Thread(target=_warm_contracts, args=(config.name, endorser, sandbox),
                     name="sandbox-warm", daemon=True).start()
    _log.info("event=peer_started node=%s listen=%s height=%d", config.name, config.listen,
              ledger.height())
    return node


def _warm_contracts(name: str, endorser: Endorser, sandbox: Sandbox) -> None:
    """Compile the committed contracts in idle workers, one each, keeping one worker free:
    their first calls after a start do not pay the compile, nor replace a worker that the
    first burst of another contract's calls took (warm never replaces a worker). One that
    fails (a source this release's checker rejects, a worker that died compiling it) is
    logged and skipped: the contracts after it in name order are still warmed."""
    try:
        sources = endorser.committed_sources(sandbox.size - 1)
    except (RxError, OSError) as exc:  # calls compile them all
        _log.warning("event=sandbox_warm_failed node=%s error=%r", name, str(exc))
        return
    for contract, code_hash, source in sources:
        try:
            sandbox.warm(code_hash, source, contract)
        except (RxError, SandboxError, ContractRejected, OSError) as exc:  # its calls compile it
            _log.warning("event=sandbox_warm_failed node=%s contract=%s error=%r", name, contract, str(exc))
