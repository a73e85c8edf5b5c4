"""Endorser: check a signed proposal, simulate it on a state snapshot, sign the result.

Checks, in order (each refusal is an RxError with a reason code, nothing is written):

1. size (``limits.max_envelope_bytes``) and parse -> TOO_LARGE / BAD_PAYLOAD
2. header: INVOKE, this consortium, nonce, creator -> BAD_HEADER; timestamp within
   ``limits.max_clock_skew_ms`` of the peer's clock -> CLOCK_SKEW
3. creator certificate and signature over ``proposal_bytes`` (``MSP.verify``) ->
   UNKNOWN_CREATOR / EXPIRED_CERT / REVOKED_CERT / BAD_SIGNATURE / ...; the certificate
   must be valid both at the header's timestamp and at the peer's clock
4. tx id = compute_tx_id(nonce, creator) -> BAD_TXID; not already on the ledger ->
   DUPLICATE_TXID
5. contract defined and active -> UNKNOWN_CONTRACT; caller allowed by the access rules ->
   ACCESS_DENIED; the stored source hashes to the committed code hash ->
   CODE_HASH_MISMATCH; arguments a JSON object -> BAD_ARGUMENTS

Then the contract runs (``_lifecycle`` natively, others in the sandbox) against a
:class:`TxSimulator` over one LevelDB snapshot. A contract-level refusal (status 400/500
with the contract's reason) is answered WITHOUT an endorsement. Otherwise the peer signs
the ProposalResponsePayload (proposal hash over header + invocation: transient data never
enters it) -- unless, from protocol version 2 on, the config in force no longer lists this
peer (its organisation and the name its certificate carries, or the certificate): validators
refuse such an endorsement (BAD_ENDORSEMENT, node.peer.validator), so a peer removed by a
config update but still running answers UNKNOWN_PEER and a gateway that still dials it asks
another organisation's peer instead.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from rxchain.v1 import audit_pb2, identity_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from node.crypto.canonical import compute_tx_id, proposal_hash
from node.crypto.signing import Purpose, Signer
from node.crypto.tls import peer_identity
from node.crypto.x509 import cert_info_der
from node.errors import RxError, abort_with, guarded_unary
from node.identity.msp import Principal
from node.ledger.statedb import StateSnapshot, TxLocation
from node.msgbound import budget_reader
from node.peer.audit import GRANTED, Auditor, Caller, outcome_of
from node.peer.config_view import ConfigView
from node.peer.definitions import LIFECYCLE_NS, ContractDefinition
from node.peer.history import HistoryLedger, LedgerHistory, ValueCache
from node.peer.lifecycle import (
    Lifecycle,
    definition_key,
    load_definition,
    load_package,
    package_hash,
    package_key,
)
from node.peer.simulator import SimulationLimits, TxSimulator
from node.protocol import MEMBERSHIP_VERSION, protocol_version
from node.sandbox.types import (
    BAD_ARGUMENTS,
    UNKNOWN_FUNCTION,
    CallerInfo,
    Invocation,
    InvocationResult,
    SandboxLimits,
    StateBackend,
)
from node.stream_caps import StreamCaps

MIN_NONCE_BYTES = 16
# Runtime reasons that are the caller's fault (400); other runtime reasons are 500.
_CALLER_REASONS = frozenset({BAD_ARGUMENTS, UNKNOWN_FUNCTION})
_RUNTIME_500 = frozenset(
    {"OUT_OF_GAS", "RECURSION_LIMIT", "SIZE_LIMIT", "WRITE_SET_LIMIT", "MEMORY_LIMIT",
     "TIMEOUT", "WORKER_CRASHED", "CONTRACT_EXCEPTION", "BAD_VALUE", "STATE_ERROR"}
)

Clock = Callable[[], int]


class ContractRunner(Protocol):
    """The sandbox interface (``node.sandbox.Sandbox``)."""

    def invoke(self, invocation: Invocation, backend: StateBackend) -> InvocationResult:
        """Run one contract call against ``backend``."""
        ...


class Ledgerish(HistoryLedger, Protocol):
    """What the endorser needs from the ledger."""

    def snapshot(self) -> StateSnapshot:
        """A consistent state snapshot."""
        ...

    def tx_location(self, tx_id: str) -> TxLocation | None:
        """Where a tx id was committed, or None."""
        ...

    def height(self) -> int:
        """Blocks committed."""
        ...


@dataclass(frozen=True)
class ParsedProposal:
    """A checked proposal."""

    signed: transaction_pb2.SignedProposal
    proposal: transaction_pb2.Proposal
    header: transaction_pb2.TxHeader
    invocation: transaction_pb2.ContractInvocation
    args: Mapping[str, Any]
    creator: Principal


@dataclass
class _Seen:
    """What :meth:`Endorser.check` parsed and verified of one proposal, for its audit record."""

    header: transaction_pb2.TxHeader | None = None
    invocation: transaction_pb2.ContractInvocation | None = None
    creator: Principal | None = None  # set once the signature and certificate verified
    height: int = -1  # the ledger height the call was simulated at

    def caller(self) -> Caller:
        if self.creator is not None:
            c = self.creator
            return Caller(c.org, c.role, c.name, c.cert_der, True)
        ident = self.header.creator if self.header is not None else identity_pb2.Identity()
        role = name = ""
        try:
            info = cert_info_der(ident.cert_der)
            role, name = info.role, info.name
        except Exception:  # noqa: BLE001, S110 - any bytes: the record keeps the fingerprint
            pass
        return Caller(ident.org[:64], role[:64], name[:128], ident.cert_der, False)


def _args_of(inv: transaction_pb2.ContractInvocation) -> Mapping[str, Any]:
    """The call's arguments for its audit record ({} when they do not parse)."""
    try:
        args = json.loads(inv.args_json.decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return args if isinstance(args, dict) else {}


@dataclass(frozen=True)
class Simulation:
    """The outcome of simulating a proposal (unsigned)."""

    parsed: ParsedProposal
    response: transaction_pb2.Response
    payload: transaction_pb2.ProposalResponsePayload | None  # None when not endorsable


class Endorser:
    """Checks, simulates and endorses proposals (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledgerish,
        configs: ConfigView,
        signer: Signer,
        sandbox: ContractRunner,
        lifecycle: Lifecycle,
        clock: Clock,
        on_endorse: Callable[[], None] | None = None,
        audit: Auditor | None = None,
    ) -> None:
        self._ledger = ledger
        self._configs = configs
        self._signer = signer
        self._sandbox = sandbox
        self._lifecycle = lifecycle
        self._clock = clock
        self._on_endorse = on_endorse
        self._audit = audit  # the access-audit log (None: nothing is recorded, e.g. unit tests)
        self._name = cert_info_der(signer.cert_der).name  # what validators look up in config.peers
        self._sources: OrderedDict[str, tuple[bytes, tuple[str, str], str]] = OrderedDict()
        self._lock = threading.Lock()
        self.history_values = ValueCache()  # ctx.history's values, shared by every simulation

    # ------------------------------------------------------------------ checks

    def check(self, signed: transaction_pb2.SignedProposal, seen: _Seen | None = None) -> ParsedProposal:
        """Steps 1-4 of the module docstring; returns the parsed proposal. ``seen`` is told what
        was parsed and who was verified before a refusal (the access audit records it)."""
        cfg = self._configs.current()
        limits = cfg.config.limits
        max_bytes = limits.max_envelope_bytes or limits.max_message_bytes
        if max_bytes and signed.ByteSize() > max_bytes:
            raise RxError("TOO_LARGE", f"proposal of {signed.ByteSize()} bytes exceeds {max_bytes}")
        if not signed.proposal_bytes or not signed.signature:
            raise RxError("BAD_PAYLOAD", "proposal bytes and signature are required")
        try:
            proposal = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
            header = transaction_pb2.TxHeader.FromString(proposal.header)
            invocation = transaction_pb2.ContractInvocation.FromString(proposal.invocation)
        except DecodeError as exc:
            raise RxError("BAD_PAYLOAD", f"proposal does not parse: {exc}") from exc
        if seen is not None:
            seen.header, seen.invocation = header, invocation
        if header.type != transaction_pb2.INVOKE:
            raise RxError("BAD_HEADER", "only INVOKE proposals are endorsed")
        if header.consortium_id != cfg.config.consortium_id:
            raise RxError("BAD_HEADER", f"consortium {header.consortium_id!r} is not this one")
        if len(header.nonce) < MIN_NONCE_BYTES or not header.HasField("creator"):
            raise RxError("BAD_HEADER", f"nonce of >= {MIN_NONCE_BYTES} bytes and creator required")
        skew = limits.max_clock_skew_ms
        now = self._clock()
        if skew and abs(now - header.timestamp_ms) > skew:
            raise RxError(
                "CLOCK_SKEW",
                f"proposal timestamp {header.timestamp_ms} is more than {skew} ms from {now}",
            )
        creator = cfg.msp.verify(
            header.creator, signed.signature, Purpose.PROPOSAL, signed.proposal_bytes, header.timestamp_ms
        )
        if seen is not None:
            seen.creator = creator
        if now != header.timestamp_ms:
            # Validation can only check the certificate at the tx's own timestamp, which the
            # client picks within the skew: checked at this peer's clock too, a certificate
            # that expired (or is not valid yet) gets no endorsement by backdating its tx.
            cfg.msp.validate(header.creator, now)
        if header.tx_id != compute_tx_id(header.nonce, header.creator):
            raise RxError("BAD_TXID", "tx id is not derived from the nonce and the creator")
        if not invocation.contract or not invocation.function:
            raise RxError("BAD_PAYLOAD", "invocation needs a contract and a function")
        try:
            args = json.loads(invocation.args_json.decode("utf-8") or "{}", parse_float=_no_float)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RxError("BAD_ARGUMENTS", f"arguments are not a JSON object: {exc}") from exc
        except RecursionError:  # e.g. "[" * 200000: the decoder recurses per nesting level
            raise RxError("BAD_ARGUMENTS", "arguments are nested too deeply") from None
        if not isinstance(args, dict):
            raise RxError("BAD_ARGUMENTS", "arguments must be a JSON object")
        return ParsedProposal(signed, proposal, header, invocation, args, creator)

    # ------------------------------------------------------------------ simulate

    def simulate(self, signed: transaction_pb2.SignedProposal, *, endorse: bool) -> Simulation:
        """Check and simulate; ``endorse`` also refuses tx ids already on the ledger.

        A call of a function that releases decryption material (node.peer.audit.AUDITED) is
        recorded in the access-audit log, granted or refused, before it is answered; a granted
        one whose record cannot be written is refused (AUDIT_WRITE_FAILED / AUDIT_FULL). A refusal
        over its certificate's limit is counted, not recorded, and answered AUDIT_RATE_LIMITED
        (RESOURCE_EXHAUSTED) instead; grants are never limited."""
        if self._audit is None:
            return self._simulate(signed, endorse, None)
        seen = _Seen()
        path = audit_pb2.ACCESS_ENDORSE if endorse else audit_pb2.ACCESS_EVALUATE
        try:
            sim = self._simulate(signed, endorse, seen)
        except Exception as exc:  # any refusal (a bug too: answered INTERNAL) is recorded
            inv = seen.invocation
            if inv is not None and self._audit.audited(inv.contract, inv.function):
                reason = exc.reason if isinstance(exc, RxError) else "INTERNAL"
                try:
                    self._audit.refused(seen.caller(), inv.contract, inv.function, _args_of(inv), reason,
                                        seen.height if seen.height >= 0 else self._ledger.height(),
                                        seen.header.tx_id if seen.header is not None else "", path)
                except RxError as limited:  # AUDIT_RATE_LIMITED: answered instead
                    raise limited from exc
            raise
        inv = sim.parsed.invocation
        if self._audit.audited(inv.contract, inv.function):
            r = sim.response
            outcome = outcome_of(r.status, r.reason, r.payload)
            if outcome != GRANTED:  # the contract's refusal (e.g. NO_KEY_GRANT): limited as any
                self._audit.refused(seen.caller(), inv.contract, inv.function, sim.parsed.args, outcome,
                                    seen.height, sim.parsed.header.tx_id, path, strict=True)
                return sim
            self._audit.granted(seen.caller(), inv.contract, inv.function, sim.parsed.args, outcome,
                                seen.height, sim.parsed.header.tx_id, path)
        return sim

    def _simulate(self, signed: transaction_pb2.SignedProposal, endorse: bool, seen: _Seen | None) -> Simulation:
        parsed = self.check(signed, seen)
        if endorse and self._ledger.tx_location(parsed.header.tx_id) is not None:
            raise RxError("DUPLICATE_TXID", f"tx {parsed.header.tx_id} is already on the ledger")
        cfg = self._configs.current().config
        limits = cfg.limits
        sim_limits = SimulationLimits(
            max_write_set_keys=limits.max_write_set_keys or 1000,
            max_value_bytes=limits.max_value_bytes or 262144,
        )
        name = parsed.invocation.contract
        function = parsed.invocation.function
        with self._ledger.snapshot() as snap:
            height_block = -1 if snap.savepoint is None else snap.savepoint.block
            if seen is not None:
                seen.height = height_block + 1
            sim = TxSimulator(snap, name, sim_limits, LedgerHistory(self._ledger, height_block, self.history_values))
            if name == LIFECYCLE_NS:
                if not self._lifecycle.allows(function, parsed.creator):
                    raise RxError("ACCESS_DENIED", f"{parsed.creator.role} may not call {function}")
                native = self._lifecycle.invoke(sim, function, parsed.args, parsed.creator, cfg)
                response = transaction_pb2.Response(
                    status=native.status, reason=native.reason, message=native.message,
                    payload=native.payload,
                )
                version, sequence, gas, events = "", 0, 0, []
            else:
                definition = load_definition(snap, name) if name[:1].isalpha() else None
                if definition is None:
                    raise RxError("UNKNOWN_CONTRACT", f"contract {name!r} is not defined")
                if not definition.allows(function, parsed.creator):
                    raise RxError(
                        "ACCESS_DENIED",
                        f"{parsed.creator.org}.{parsed.creator.role} may not call {name}.{function}",
                    )
                source = self._verified_source(snap, name, definition.version,
                                               definition.code_hash)
                result = self._run(
                    Invocation(
                        contract=name,
                        code_hash=definition.code_hash,
                        source=source,
                        function=function,
                        args_json=parsed.invocation.args_json or b"{}",
                        tx_id=parsed.header.tx_id,
                        timestamp_ms=parsed.header.timestamp_ms,
                        caller=_caller_info(parsed.creator),
                        transient=dict(parsed.proposal.transient),
                        gas_limit=limits.gas_limit or 10_000_000,
                        limits=SandboxLimits(
                            max_value_bytes=sim_limits.max_value_bytes,
                            max_write_keys=sim_limits.max_write_set_keys,
                        ),
                    ),
                    sim,
                )
                response = _response(result)
                version, sequence, gas = definition.version, definition.sequence, result.gas_used
                events = [
                    transaction_pb2.ContractEvent(
                        contract=name, name=e.name, payload=e.payload_json,
                        tx_id=parsed.header.tx_id,
                    )
                    for e in result.events
                ]
        if response.status != 200:
            return Simulation(parsed, response, None)
        payload = transaction_pb2.ProposalResponsePayload(
            proposal_hash=proposal_hash(parsed.proposal.header, parsed.proposal.invocation),
            results=sim.rwset().SerializeToString(),
            events=events,
            response=response,
            contract_version=version,
            contract_sequence=sequence,
            gas_used=gas,
        )
        return Simulation(parsed, response, payload)

    def _run(self, inv: Invocation, sim: TxSimulator) -> InvocationResult:
        try:
            return self._sandbox.invoke(inv, sim)
        except RxError:
            raise
        except Exception as exc:
            raise RxError("SERVICE_UNAVAILABLE", f"contract runtime failed: {exc}") from exc

    def _verified_source(self, snap: StateSnapshot, name: str, version: str, code_hash: str) -> str:
        """The stored source, checked against the committed hash.

        Verified sources are cached by the exact stored record, so the (large) record is
        parsed and hashed once, and a record changed on disk is verified again.
        """
        record = snap.get(LIFECYCLE_NS, package_key(code_hash))
        if record is None:
            raise RxError("UNKNOWN_CONTRACT", f"package {code_hash} of {name!r} is not installed")
        with self._lock:
            hit = self._sources.get(code_hash)
        if hit is not None and hit[0] == record.value and hit[1] == (name, version):
            return hit[2]
        package = load_package(snap, code_hash)
        if package is None or not (
            package.name == name
            and package.version == version
            and package_hash(package.name, package.version, package.source) == code_hash
        ):
            raise RxError(
                "CODE_HASH_MISMATCH",
                f"the stored source of {name!r} does not hash to the committed {code_hash}",
            )
        with self._lock:
            self._sources[code_hash] = (record.value, (name, version), package.source)
            if len(self._sources) > 64:
                self._sources.popitem(last=False)
        return package.source

    def committed_sources(self, limit: int) -> list[tuple[str, str, str]]:
        """(name, code hash, verified source) of up to ``limit`` committed contracts, in name
        order, to compile them before their first call; one whose stored source does not
        verify is left out (its calls fail as they would have) and the next one taken. None
        for a ``limit`` below 1 (a range's limit 0 is no limit: a pool of one worker had it
        taken for the first contract, the one worker to keep free)."""
        out: list[tuple[str, str, str]] = []
        if limit < 1:
            return out
        prefix = definition_key("")
        end = prefix[:-1] + "0"
        with self._ledger.snapshot() as snap:
            page = snap.range(LIFECYCLE_NS, prefix, end, limit)
            while page:
                for _key, record in page:
                    try:
                        d = ContractDefinition.from_json(record.value)
                        out.append((d.name, d.code_hash,
                                    self._verified_source(snap, d.name, d.version, d.code_hash)))
                    except (RxError, ValueError, KeyError, TypeError):
                        continue
                    if len(out) == limit:
                        return out
                # the next definitions after the last read ("\0" sorts below any name character)
                page = snap.range(LIFECYCLE_NS, page[-1][0] + "\0", end, limit)
        return out

    # ------------------------------------------------------------------ endorse

    def endorse(self, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        """ProcessProposal: a signed endorsement, or an unsigned contract-level refusal."""
        org, cert = self._signer.identity.org, self._signer.cert_der
        config = self._configs.current().config
        if protocol_version(config) >= MEMBERSHIP_VERSION and not any(
                p.org == org and (p.name == self._name or p.cert_der == cert) for p in config.peers):
            raise RxError("UNKNOWN_PEER", f"{self._name} ({org}) is not a peer of the configuration "
                                          "in force: its endorsements no longer count")
        sim = self.simulate(signed, endorse=True)
        if sim.payload is None:
            return transaction_pb2.ProposalResponse(response=sim.response)
        payload_bytes = sim.payload.SerializeToString()
        endorsement = transaction_pb2.Endorsement(
            endorser=self._signer.identity, signature=self._signer.sign(Purpose.ENDORSEMENT, payload_bytes)
        )
        if self._on_endorse is not None:
            self._on_endorse()
        return transaction_pb2.ProposalResponse(
            response=sim.response, payload=payload_bytes, endorsement=endorsement
        )


def _no_float(text: str) -> Any:
    raise ValueError(f"floating point number {text!r} is not allowed (money is integer fen)")


def _caller_info(p: Principal) -> CallerInfo:
    return CallerInfo(
        org=p.org, role=p.role, name=p.name, attrs=dict(p.attrs), org_kind=p.org_kind,
        hospital_level=p.hospital_level,
    )


def _response(result: InvocationResult) -> transaction_pb2.Response:
    if result.ok:
        return transaction_pb2.Response(status=200, payload=result.result_json)
    status = 500 if result.reason in _RUNTIME_500 else 400
    if result.reason in _CALLER_REASONS:
        status = 400
    return transaction_pb2.Response(status=status, reason=result.reason, message=result.message)


# ProcessProposals bounds: items per request batch (more -> every item refused TOO_LARGE),
# answers coalesced per response message, and proposals in flight per stream (the reader
# stops pulling batches -- HTTP/2 flow control pushes back -- until answers drain).
MAX_BATCH_ITEMS = 256
MAX_ANSWER_ITEMS = 256
MAX_ANSWER_BYTES = 1 << 20  # at most half the bound (node.msgbound); a larger answer goes alone
MAX_STREAM_IN_FLIGHT = 1024
STREAM_WORKERS = 16
CLOSE_WAIT_S = 30.0  # close(wait=True) waits this long at most for running endorsements
_POLL_S = 0.25


class EndorserService(services_pb2_grpc.EndorserServicer):
    """gRPC Endorser: ProcessProposal (unary) and ProcessProposals (batched bidi stream).

    Both run the same :meth:`Endorser.endorse` (same checks, same reason codes); the stream
    answers a refusal as a per-item ``ErrorDetail`` instead of a failed call, and keeps
    serving. The stream's handler thread endorses a proposal itself when it is idle (no
    hand-off); ``pool`` runs the others concurrently (the sandbox has several workers).
    Answers go back in completion order, several per message when ready together.
    """

    def __init__(self, endorser: Endorser, pool: Executor | None = None,
                 workers: int = STREAM_WORKERS, message_bound: Callable[[], int] | None = None,
                 streams: StreamCaps | None = None,
                 check_caller: Callable[[grpc.ServicerContext], Principal] | None = None) -> None:
        """``message_bound``: the gRPC message bound the gateways' channels receive with (none:
        answer messages carry up to :data:`MAX_ANSWER_BYTES`). ``streams``: the node's caps on
        long-lived calls; a ProcessProposals stream holds a gRPC worker and a reader thread
        while it is open, so it is counted there per TLS client certificate (a stream past a
        cap is refused TOO_MANY_STREAMS; a gateway then asks this peer by unary calls).
        ``check_caller`` (the MSP's check of the TLS certificate) refuses a stream to a
        certificate the configuration in force does not admit (revoked, expired, of a removed
        organisation) before it takes a slot; the proposals it carries are checked one by one."""
        self._streams_cap = streams
        self._check_caller = check_caller
        self._endorser = endorser
        self._answer_bytes = budget_reader(message_bound, MAX_ANSWER_BYTES)
        self._own_pool = pool is None
        self._pool: Executor = pool or ThreadPoolExecutor(workers, thread_name_prefix="endorse-stream")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # endorsements running now (unary calls, stream handlers, pool)
        self._streams: set[_ProposalStream] = set()
        self._closed = False

    def close(self, wait: bool = False) -> None:
        """End every open stream now (call before ``server.stop(grace)``: a gateway's stream
        would otherwise hold the stop for the whole grace period) and stop the workers;
        ``wait`` also waits for endorsements already running (call that before the ledger
        closes; bounded by ``CLOSE_WAIT_S``). Later proposals are refused
        SERVICE_UNAVAILABLE. A stream ends after the answer its handler thread is computing
        itself; proposals still in the pool are not answered (the callers see the stream end
        and retry). Idempotent."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for st in streams:
            st.end()
        if self._own_pool:
            self._pool.shutdown(wait=wait, cancel_futures=True)
        if wait:
            with self._idle:
                self._idle.wait_for(lambda: self._busy == 0, timeout=CLOSE_WAIT_S)

    def _endorse(self, signed: transaction_pb2.SignedProposal) -> transaction_pb2.ProposalResponse:
        """:meth:`Endorser.endorse`, counted so that :meth:`close` can wait for it."""
        with self._lock:
            if self._closed:
                raise RxError("SERVICE_UNAVAILABLE", "the peer is shutting down")
            self._busy += 1
        try:
            return self._endorser.endorse(signed)
        finally:
            with self._lock:
                self._busy -= 1
                if not self._busy:
                    self._idle.notify_all()

    @guarded_unary
    def ProcessProposal(
        self, request: transaction_pb2.SignedProposal, context: grpc.ServicerContext
    ) -> transaction_pb2.ProposalResponse:
        return self._endorse(request)

    def ProcessProposals(
        self,
        request_iterator: Iterator[services_pb2.ProposalBatch],
        context: grpc.ServicerContext,
    ) -> Iterator[services_pb2.ProposalResponseBatch]:
        slot = None
        if self._streams_cap is not None:
            ident = peer_identity(context)
            try:
                if ident is not None and self._check_caller is not None:
                    self._check_caller(context)
                slot = self._streams_cap.admit(context, ident.cert_der if ident is not None else b"",
                                               "Endorser.ProcessProposals", ends_itself=True)
            except RxError as err:
                abort_with(context, err)
        stream = _ProposalStream(self._endorse, self._pool, context.is_active, self._answer_bytes)
        if slot is not None:  # the caps' sweeper refused the caller: the answers stop, the call
            slot.on_refused(stream.end)  # ends PERMISSION_DENIED with the reason (below)
        with self._lock:
            if self._closed:
                if slot is not None:
                    slot.release()
                abort_with(context, RxError("SERVICE_UNAVAILABLE", "the peer is shutting down"))
            self._streams.add(stream)
        try:
            threading.Thread(target=stream.read, args=(request_iterator,), name="endorse-stream-reader",
                             daemon=True).start()
            yield from stream.answers()
            if slot is not None and slot.refused is not None:
                abort_with(context, slot.refused)
        finally:
            with self._lock:
                self._streams.discard(stream)
            if slot is not None:
                slot.release()


_Out = services_pb2.CorrelatedProposal | services_pb2.CorrelatedProposalResponse | None


class _ProposalStream:
    """One ProcessProposals call: a reader thread takes the requests, the handler sends answers.

    Each proposal goes to the handler thread itself when it is idle (waiting for answers:
    it endorses the proposal and sends the answer with no hand-off), otherwise to the pool,
    whose answers the handler sends -- coalesced -- as they complete.
    """

    def __init__(self, endorse: Callable[[transaction_pb2.SignedProposal], transaction_pb2.ProposalResponse],
                 pool: Executor, is_active: Callable[[], bool],
                 answer_bytes: Callable[[], int] = lambda: MAX_ANSWER_BYTES) -> None:
        self._endorse_fn = endorse
        self._answer_bytes = answer_bytes
        self._pool = pool
        self._is_active = is_active
        # answers from the pool, proposals handed to the handler, None = no more answers
        self._out: queue.SimpleQueue[_Out] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(MAX_STREAM_IN_FLIGHT)
        self._lock = threading.Lock()
        self._outstanding = 0
        self._input_done = False
        self._ended = False
        self._handler_idle = False

    def end(self) -> None:
        """Stop answering: the handler returns after the message it is building."""
        self._ended = True
        self._out.put(None)

    # -- reader side ------------------------------------------------------------------
    def read(self, requests: Iterator[services_pb2.ProposalBatch]) -> None:
        try:
            for batch in requests:
                if len(batch.items) > MAX_BATCH_ITEMS:
                    err = RxError("TOO_LARGE", f"batch of {len(batch.items)} proposals exceeds "
                                               f"{MAX_BATCH_ITEMS}")
                    for item in batch.items:
                        if not self._admit():
                            return
                        self._answer(_error_item(item.correlation_id, err))
                    continue
                for item in batch.items:
                    if not self._admit():
                        return
                    with self._lock:
                        to_handler = self._handler_idle
                        self._handler_idle = False
                    if to_handler:
                        self._out.put(item)
                        continue
                    try:
                        self._pool.submit(self._endorse_one, item)
                    except RuntimeError:  # pool shut down: the peer is stopping
                        self._answer(_error_item(item.correlation_id, RxError(
                            "SERVICE_UNAVAILABLE", "the peer is shutting down")))
        except Exception:  # noqa: BLE001, S110 - the caller went away: stop reading
            pass
        finally:
            with self._lock:
                self._input_done = True
                end = self._outstanding == 0
            if end:
                self._out.put(None)

    def _admit(self) -> bool:
        while not self._slots.acquire(timeout=_POLL_S):
            if self._ended or not self._is_active():
                return False
        with self._lock:
            self._outstanding += 1
        return True

    def _endorse(self, item: services_pb2.CorrelatedProposal) -> services_pb2.CorrelatedProposalResponse:
        cid = item.correlation_id
        try:
            if not item.HasField("proposal"):
                raise RxError("BAD_REQUEST", "item carries no proposal")
            resp = self._endorse_fn(item.proposal)
            return services_pb2.CorrelatedProposalResponse(correlation_id=cid, response=resp)
        except RxError as err:
            return _error_item(cid, err)
        except Exception as exc:  # noqa: BLE001 - one proposal's bug must not kill the stream
            return _error_item(cid, RxError("INTERNAL", f"{type(exc).__name__}: {exc}"))

    def _endorse_one(self, item: services_pb2.CorrelatedProposal) -> None:
        if self._ended or not self._is_active():
            self._slots.release()  # no answer will be sent for it
            self._finish()
            return
        self._answer(self._endorse(item))

    def _answer(self, answer: services_pb2.CorrelatedProposalResponse) -> None:
        self._out.put(answer)
        self._finish()

    def _finish(self) -> None:
        """One admitted proposal is answered (its slot is freed once the answer is sent:
        a caller that stops reading stops this stream's reader, see :meth:`answers`)."""
        with self._lock:
            self._outstanding -= 1
            end = self._input_done and self._outstanding == 0
        if end:
            self._out.put(None)

    # -- handler side -----------------------------------------------------------------
    def _resolve(self, got: services_pb2.CorrelatedProposal | services_pb2.CorrelatedProposalResponse
                 ) -> services_pb2.CorrelatedProposalResponse:
        if isinstance(got, services_pb2.CorrelatedProposalResponse):
            return got
        answer = self._endorse(got)  # handed to this thread by the reader
        self._finish()
        return answer

    def answers(self) -> Iterator[services_pb2.ProposalResponseBatch]:
        """Answers in completion order; whatever is ready at once goes in one message (at most
        :data:`MAX_ANSWER_ITEMS` answers and ``answer_bytes()`` bytes; a larger answer alone)."""
        out = self._out
        carry: services_pb2.CorrelatedProposalResponse | None = None
        while True:
            if carry is not None:
                first, carry = carry, None
            else:
                with self._lock:
                    self._handler_idle = True
                try:
                    got = out.get(timeout=_POLL_S)
                except queue.Empty:
                    if not self._is_active():
                        return
                    continue
                with self._lock:
                    self._handler_idle = False
                if got is None or self._ended:
                    return
                first = self._resolve(got)
            items = [first]
            size = first.ByteSize()
            budget = self._answer_bytes()
            last = False
            while len(items) < MAX_ANSWER_ITEMS:
                try:
                    nxt = out.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    last = True
                    break
                answer = self._resolve(nxt)
                n = answer.ByteSize()
                if size + n > budget:  # the next message's first
                    carry = answer
                    break
                items.append(answer)
                size += n
            yield services_pb2.ProposalResponseBatch(items=items)
            for _ in items:  # handed to gRPC: their slots are free
                self._slots.release()
            if last or self._ended:
                return


def _error_item(cid: int, err: RxError) -> services_pb2.CorrelatedProposalResponse:
    return services_pb2.CorrelatedProposalResponse(
        correlation_id=cid, error=identity_pb2.ErrorDetail(reason=err.reason, message=err.message)
    )
