"""The SDK's connection to an organisation's own peer (Gateway service over mutual TLS).

``submit`` runs the whole write path and returns once the transaction is committed:
Endorse (peer collects endorsements as the contract's policy needs) -> sign the prepared
Transaction into an Envelope -> Submit (to the ordering service) -> CommitStatus. A
transaction committed as invalid raises :class:`CommitError` with the validation code
name. Calls failing with UNAVAILABLE are retried with exponential backoff, a bounded
number of times (Submit is safe to retry: the tx id is fixed and duplicates are refused).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from rxchain.v1 import services_pb2, services_pb2_grpc, transaction_pb2

from client.errors import CommitError, CommitUnknown, EndorsementError, RxClientError
from client.events import validation_code_name
from client.tx import BuiltProposal, Clock, NonceSource, TxBuilder, wall_clock_ms
from client.wallet import WalletIdentity
from node.crypto.tls import TLS_SERVER_NAME, secure_channel
from node.errors import ENVELOPE_REFUSALS, reason_from_rpc_error

T = TypeVar("T")

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
# Submit failures after which the envelope may still have been ordered: the gateway could not
# reach the ordering service in time, or the call itself broke after the envelope was sent.
OUTCOME_UNKNOWN_REASONS = frozenset({"SERVICE_UNAVAILABLE", "TIMEOUT", "RPC_FAILED", "INTERNAL",
                                     "COMMIT_UNKNOWN"})
# Refusals decided by the envelope's bytes alone: an earlier attempt that may have reached the
# ordering service was refused the same way, so they stay definite after a lost attempt (the
# orderers' set, plus a request the gateway could not parse).
DETERMINISTIC_REFUSALS = ENVELOPE_REFUSALS | {"BAD_REQUEST"}
# A block events stream that does not follow (it ends at the peer's height, which sends the
# blocks as fast as it reads them) fails TIMEOUT when the peer sends no block for this long
# while one is awaited (Gateway.events_idle_s).
EVENTS_IDLE_S = 5.0
# A proposal carrying transient inputs that names no endorsing organisations (Gateway.endorse).
ENDORSERS_REQUIRED = "ENDORSERS_REQUIRED"


def carries_transient(built: BuiltProposal) -> bool:
    """Whether ``built`` carries transient inputs (plaintext for its endorsers only)."""
    try:
        return bool(transaction_pb2.Proposal.FromString(built.signed.proposal_bytes).transient)
    except DecodeError:
        return True  # (never for a proposal TxBuilder made) whatever it holds, it goes nowhere unnamed


def check_endorsers(built: BuiltProposal, endorsing_orgs: Sequence[str] | None) -> None:
    """EndorsementError ENDORSERS_REQUIRED when ``built`` carries transient inputs and
    ``endorsing_orgs`` names nobody: a gateway left to choose may send the proposal -- the
    plaintext in it -- to the peer of any organisation the endorsement policy takes (a gateway
    of this release endorses such a proposal alone or refuses it; one of an earlier release
    picks), so the SDK never lets it choose. Nothing is sent."""
    if not endorsing_orgs and carries_transient(built):
        raise EndorsementError(ENDORSERS_REQUIRED, "the call carries transient inputs (plaintext for its endorsers) "
                               "and names no endorsing organisations: name the organisations entitled to them "
                               "(endorsing_orgs, e.g. the record's parties); the gateway never chooses for them")


class _IdleWatch:
    """Cancels a call (``cancel``) once a message awaited (:meth:`arm` .. :meth:`disarm`) has
    not come for ``idle_s``; :attr:`fired` tells it did. Only the time spent waiting for the
    peer counts: a consumer that takes long over a message does not."""

    def __init__(self, idle_s: float, cancel: Callable[[], object]) -> None:
        self._idle_s = idle_s
        self._cancel = cancel
        self._cond = threading.Condition()
        self._deadline: float | None = None  # armed: a message is awaited until then
        self._stopped = False
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="events-idle", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        """A message is awaited from now on."""
        with self._cond:
            self._deadline = time.monotonic() + self._idle_s
            self._cond.notify()

    def disarm(self) -> None:
        """The message came (or the wait ended otherwise)."""
        with self._cond:
            self._deadline = None

    def stop(self) -> None:
        """End the watch (the call ended)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.fired = self._stopped = True
        if self.fired:
            self._cancel()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for UNAVAILABLE."""

    attempts: int = 6
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    factor: float = 2.0

    def delays(self) -> list[float]:
        """Delays before attempts 2..N."""
        out, d = [], self.base_delay_s
        for _ in range(self.attempts - 1):
            out.append(min(d, self.max_delay_s))
            d *= self.factor
        return out


@dataclass(frozen=True)
class SubmitResult:
    """A committed transaction."""

    tx_id: str
    code: str
    block: int
    result: Any


def decode_payload(payload: bytes) -> Any:
    """A contract result (canonical JSON) as Python values; empty -> None."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise RxClientError("BAD_PAYLOAD", "contract result is not JSON") from exc


def check_response(resp: transaction_pb2.Response) -> Any:
    """The decoded payload of a successful response; raise EndorsementError otherwise."""
    if resp.status != 200:
        reason = resp.reason or ("CONTRACT_REJECTED" if resp.status == 400 else "CONTRACT_FAILED")
        raise EndorsementError(reason, resp.message)
    return decode_payload(resp.payload)


def _retryable(exc: grpc.RpcError) -> bool:
    """An RPC failure retried with backoff (UNAVAILABLE: the peer cannot be reached now)."""
    return callable(getattr(exc, "code", None)) and exc.code() in _RETRYABLE


def rpc_error(exc: grpc.RpcError, cls: type[RxClientError] = RxClientError) -> RxClientError:
    """An RxClientError (of ``cls``) from a failed RPC, keeping the peer's reason code."""
    reason = reason_from_rpc_error(exc)
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    message = str(details or "")
    prefix = reason + ": "
    if message.startswith(prefix):
        message = message[len(prefix):]
    return cls(reason, message)


class Gateway:
    """A client of one peer's Gateway service, signing as one wallet identity."""

    _server_ca: Callable[[], tuple[int, bytes]] | None = None  # (see __init__)
    _on_unreachable: Callable[[], bool] | None = None
    _pin_version = 0  # (see __init__; a Gateway made without it, e.g. by a test, has never re-pinned)

    def __init__(self, identity: WalletIdentity, target: str, consortium_id: str, *,
                 clock: Clock = wall_clock_ms, nonce_source: NonceSource | None = None,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                 commit_timeout_ms: int = 30_000, channel: grpc.Channel | None = None,
                 min_block: Callable[[], int] | None = None,
                 on_commit: Callable[[int], None] | None = None,
                 catch_up_timeout_s: float = 15.0,
                 server_name: str = TLS_SERVER_NAME, server_ca_pem: bytes | None = None,
                 events_idle_s: float | None = EVENTS_IDLE_S,
                 server_ca: Callable[[], tuple[int, bytes]] | None = None,
                 on_unreachable: Callable[[], bool] | None = None):
        self.identity = identity
        self.target = target
        # server_name / server_ca_pem pin the peer (node name, its organisation's CA): see
        # node.crypto.tls. Without them any consortium node certificate is accepted.
        # ``server_ca`` (with server_ca_pem, version 0): (version, the CA to pin), asked before
        # every call -- one of a higher version than the pin held (a session's home verified a CA
        # rotation) re-pins the calls from then on, on a new channel (calls under way finish on
        # the old one, closed by :meth:`close`); a lower one (read before another call re-pinned)
        # is ignored: the pin never goes back to an older one.
        # ``on_unreachable``: asked once per call when the peer cannot be reached; True (it
        # re-pinned: the peer presents a certificate of a CA the pin did not hold) retries now.
        self._server_name = server_name
        self._pin = server_ca_pem
        self._pin_version = 0  # (of ``server_ca``'s answer the pin was taken from)
        self._server_ca = server_ca if channel is None and server_ca_pem is not None else None
        self._on_unreachable = on_unreachable
        self._pin_lock = threading.Lock()
        self._old_channels: list[grpc.Channel] = []
        self._closed = False  # (no re-pin after close: its channel would never be closed)
        self._channel = channel or secure_channel(
            target, identity.cert_path, identity.key_path, identity.ca_bundle_path,
            server_name=server_name, root_certificates=server_ca_pem,
        )
        self._stub = services_pb2_grpc.GatewayStub(self._channel)
        self._admin = services_pb2_grpc.AdminStub(self._channel)
        self._deliver = services_pb2_grpc.PeerDeliverStub(self._channel)
        if nonce_source is None:
            self.builder = TxBuilder(identity.signer, consortium_id, clock)
        else:
            self.builder = TxBuilder(identity.signer, consortium_id, clock, nonce_source)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._commit_timeout_ms = commit_timeout_ms
        # Read-your-writes across peers: before a call, wait (bounded) until our peer has
        # committed the last block this client -- or any client sharing ``min_block`` -- saw.
        self.last_block = -1
        self._min_block = min_block
        self._peer_height = 0
        self._on_commit = on_commit
        self._catch_up_timeout_s = catch_up_timeout_s
        self.events_idle_s = events_idle_s
        # Transient inputs added to every proposal that stays on this peer (evaluate) or names its
        # endorsing organisations (e.g. a patient's certificate binding): see :meth:`propose`.
        self.default_transient: dict[str, Any] = {}

    # ------------------------------------------------------------ plumbing
    @property
    def events_idle_s(self) -> float | None:
        """How long a block events stream that does not follow may send nothing while a block
        is awaited (:meth:`events`); None: no bound. BAD_ARGUMENTS unless None or a finite
        number of seconds above 0 (0 failed every read at once, NaN none ever)."""
        return self._events_idle_s

    @events_idle_s.setter
    def events_idle_s(self, value: float | None) -> None:
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise RxClientError("BAD_ARGUMENTS", f"events_idle_s {value!r} is not a number of seconds above 0")
        self._events_idle_s = value

    @property
    def stub(self) -> services_pb2_grpc.GatewayStub:
        """The raw Gateway stub (used by client.pipeline), after the read-your-writes wait;
        a peer that cannot be reached raises grpc.RpcError (UNAVAILABLE) as a call on the stub
        would."""
        self._check_pin()
        self._catch_up()
        return self._stub

    def note_commit(self, block: int) -> None:
        """Record a block seen committed (read-your-writes bookkeeping)."""
        self._peer_height = max(self._peer_height, block + 1)
        if block > self.last_block:
            self.last_block = block
            if self._on_commit is not None:
                self._on_commit(block)

    def close(self) -> None:
        """Close the channel (and those of earlier pins)."""
        with self._pin_lock:
            self._closed = True
            for channel in [*self._old_channels, self._channel]:
                channel.close()
            self._old_channels.clear()

    def _check_pin(self) -> None:
        """Re-pin to the CA ``server_ca`` names when its version is higher than the pin's: the
        calls from now on go over a new channel (those under way finish on the old one, closed by
        :meth:`close`). Under the pin lock, and only forward: two calls that read the pin at once
        (one before a change, one after) leave the newer pin whichever switches last (the one
        that read first, switching last, put the older pin back for its call). A channel that
        cannot be opened (IO_ERROR) takes no version: the next call tries again."""
        if self._server_ca is None:
            return
        version, ca = self._server_ca()
        if version <= self._pin_version:
            return
        with self._pin_lock:
            if version <= self._pin_version or self._closed:
                return  # (closed: the call fails on the closed channel, as any call after close)
            if ca == self._pin:
                self._pin_version = version
                return
            try:
                channel = secure_channel(self.target, self.identity.cert_path, self.identity.key_path,
                                         self.identity.ca_bundle_path, server_name=self._server_name,
                                         root_certificates=ca)
            except OSError as exc:
                # (the wallet's files, read for it: EMFILE under load) -- the version is not taken,
                # so the next call tries again: never a call on the pin it replaces
                raise RxClientError("IO_ERROR", f"cannot open a channel to {self.target} pinned to the CA "
                                    f"in force: {exc.strerror or exc}; this call was not sent") from exc
            self._pin_version = version
            self._old_channels.append(self._channel)
            self._channel, self._pin = channel, ca
            self._stub = services_pb2_grpc.GatewayStub(channel)
            self._admin = services_pb2_grpc.AdminStub(channel)
            self._deliver = services_pb2_grpc.PeerDeliverStub(channel)

    def _follow(self, exc: grpc.RpcError, used: int) -> bool:
        """Whether the peer could not be reached and the pin moved (retry now): ``server_ca``
        names a newer pin than ``used`` -- the version the failed attempt went out on: a follow
        (a proactive one, off the call's path) re-pinned while it was under way, and the peer
        presents a certificate of the new CA -- or while ``on_unreachable`` waited for that
        follow to end; else ``on_unreachable`` re-pinned it."""
        if not _retryable(exc) or self._on_unreachable is None:
            return False
        moved = self._server_ca is not None and self._server_ca()[0] > used
        return moved or self._on_unreachable() or (self._server_ca is not None and self._server_ca()[0] > used)

    def _once(self, fn: Callable[[], T]) -> T:
        """``fn``, once more if the peer could not be reached and that re-pinned it."""
        self._check_pin()
        used = self._pin_version
        try:
            return fn()
        except grpc.RpcError as exc:
            if not self._follow(exc, used):
                raise rpc_error(exc) from exc
        self._check_pin()
        try:
            return fn()
        except grpc.RpcError as exc:
            raise rpc_error(exc) from exc

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_for_block(self, block: int, timeout_s: float, *, unreachable_raises: bool = False) -> bool:
        """Wait (bounded) until the peer has committed ``block``; False on timeout.

        The bound is elapsed time, the Status calls included: counting only the pauses between
        them let a peer that answers each call slowly (up to its 3 s timeout) stretch the 15 s
        catch-up of every call to 300 calls, a quarter of an hour. With ``unreachable_raises``
        a peer that cannot be reached (UNAVAILABLE) ends the wait at once with that error
        instead of being asked again until the timeout: the read-your-writes wait before a
        call leaves a down peer to the call's own retries."""
        self._check_pin()
        waited = 0.0
        deadline = time.monotonic() + timeout_s
        while True:
            if self._peer_height > block:
                return True
            left = deadline - time.monotonic()
            try:
                height = self._admin.Status(services_pb2.StatusRequest(),
                                            timeout=min(3.0, max(0.05, left))).height
            except grpc.RpcError as exc:
                if unreachable_raises and _retryable(exc):
                    raise
                height = 0
            self._peer_height = max(self._peer_height, int(height))
            if height > block:
                return True
            if waited >= timeout_s or time.monotonic() >= deadline:
                return False
            self._sleep(0.05)
            waited += 0.05

    def _catch_up(self) -> None:
        """Read-your-writes: wait (bounded) for the peer to reach the last block seen. A peer
        that cannot be reached raises the Status call's UNAVAILABLE at once (retried by the
        caller like the call itself): waiting out the whole catch-up for it made every call to
        a down peer take ~18 s to answer SERVICE_UNAVAILABLE."""
        target = max(self.last_block, self._min_block() if self._min_block else -1)
        if target >= 0:
            self.wait_for_block(target, self._catch_up_timeout_s, unreachable_raises=True)

    def _call(self, fn: Callable[[], T], cls: type[RxClientError] = RxClientError) -> T:
        delays = self._retry.delays()
        attempt = 0
        caught_up = False  # the wait ran to its end (reached, or its bound): never again in this call
        followed = False  # on_unreachable asked (once per call)
        while True:
            self._check_pin()
            used = self._pin_version
            try:
                if not caught_up:  # a peer unreachable at the last attempt must still catch up
                    self._catch_up()
                    caught_up = True
                return fn()
            except grpc.RpcError as exc:
                if not followed and _retryable(exc):
                    followed = True
                    if self._follow(exc, used):
                        continue
                if _retryable(exc) and attempt < len(delays):
                    self._sleep(delays[attempt])
                    attempt += 1
                    continue
                raise rpc_error(exc, cls) from exc

    # ------------------------------------------------------------ reads
    def _transient(self, transient: Mapping[str, Any] | None, defaults: bool) -> dict[str, Any] | None:
        if not self.default_transient or not defaults:
            return dict(transient) if transient else None
        return {**self.default_transient, **(transient or {})}

    def propose(self, contract: str, function: str, args: Mapping[str, Any] | None = None,
                transient: Mapping[str, Any] | None = None, *, defaults: bool = True) -> BuiltProposal:
        """A signed proposal, with the :attr:`default_transient` inputs unless ``defaults`` is
        False (a submit naming no endorsing organisations: they would reach peers nobody named;
        the caller's own ``transient`` then refuses it, :func:`check_endorsers`)."""
        return self.builder.proposal(contract, function, args or {}, self._transient(transient, defaults))

    def evaluate(self, contract: str, function: str, args: Mapping[str, Any] | None = None,
                 transient: Mapping[str, Any] | None = None) -> Any:
        """Run a query on the peer; returns the decoded contract result."""
        built = self.propose(contract, function, args, transient)
        req = services_pb2.EvaluateRequest(proposal=built.signed)
        resp = self._call(lambda: self._stub.Evaluate(req, timeout=30), EndorsementError)
        return check_response(resp.result)

    # ------------------------------------------------------------ writes
    def endorse(self, built: BuiltProposal,
                endorsing_orgs: Sequence[str] | None = None) -> services_pb2.EndorseResponse:
        """Collect endorsements for a built proposal from this peer and the peers of
        ``endorsing_orgs`` (none: those the gateway picks for the policy). A proposal carrying
        transient inputs must name them: EndorsementError ENDORSERS_REQUIRED otherwise, nothing
        sent (:func:`check_endorsers`)."""
        check_endorsers(built, endorsing_orgs)
        req = services_pb2.EndorseRequest(proposal=built.signed, endorsing_orgs=list(endorsing_orgs or ()))
        attempt = 0
        while True:
            try:
                resp = self._call(lambda: self._stub.Endorse(req, timeout=60), EndorsementError)
                break
            except EndorsementError as exc:
                # Another endorser has not committed the latest block yet: give it a moment.
                if exc.reason != "ENDORSEMENT_MISMATCH" or attempt >= 4:
                    raise
                attempt += 1
                self._sleep(0.2 * attempt)
        check_response(resp.result)
        if resp.tx_id and resp.tx_id != built.tx_id:
            raise EndorsementError("BAD_PAYLOAD", "gateway answered for another transaction")
        return resp

    def submit_envelope(self, tx_id: str, envelope: transaction_pb2.Envelope, *,
                        first: bool = False) -> SubmitResult:
        """Submit a signed envelope and wait for its commit status.

        Raises CommitError when it committed invalid, CommitUnknown when it may have been
        ordered but no answer says how it ended (the gateway, the ordering service or the
        wait for its commit failed after the envelope left this client: ask CommitStatus
        for ``tx_id``, or submit the same envelope again -- its tx id makes a second copy
        a DUPLICATE_TXID -- but never propose the call again as a new transaction), and
        RxClientError when it was refused before ordering (a definite no).

        A peer that cannot be reached before anything is sent is a definite no only with
        ``first`` (the caller built the envelope for this call: it was never submitted, as in
        :meth:`submit`); else it is CommitUnknown -- the envelope may be one submitted before
        whose outcome was unknown (CommitUnknown's ``envelope``, submitted again), and a plain
        SERVICE_UNAVAILABLE would read as "not ordered, propose it again"."""
        try:
            self._submit(tx_id, services_pb2.SubmitRequest(envelope=envelope), first)
            return self.outcome(tx_id)
        except CommitUnknown as exc:
            exc.envelope = envelope  # the caller may submit this same envelope again
            raise

    def outcome(self, tx_id: str, timeout_ms: int | None = None) -> SubmitResult:
        """How a submitted transaction ended -- what to ask after CommitUnknown instead of
        proposing the call again: a SubmitResult (``result`` None) when it committed VALID,
        CommitError with the validation code when it committed invalid, CommitUnknown when
        the peer cannot tell within ``timeout_ms`` (default: the commit timeout; the tx is not
        on its ledger yet, or was never ordered: ask again later, or submit the same envelope
        again)."""
        try:
            status = self._commit_status(tx_id, timeout_ms)
        except CommitUnknown:
            raise
        except RxClientError as exc:
            raise CommitUnknown(tx_id, f"transaction {tx_id} was submitted; its commit status "
                                f"is unknown ({exc.reason}: {exc.message})") from exc
        if status.tx_id and status.tx_id != tx_id:  # another transaction's status says nothing of this one
            raise CommitUnknown(tx_id, f"transaction {tx_id} was submitted; its commit status is unknown "
                                f"(the peer answered the status of transaction {status.tx_id})")
        name = validation_code_name(status.code)  # UNKNOWN_<n>: a later release's, never VALID
        self.note_commit(int(status.block_number))
        if status.code != transaction_pb2.VALID:
            raise CommitError(name, f"transaction {tx_id} committed as invalid",
                              tx_id, status.block_number)
        return SubmitResult(tx_id, name, status.block_number, None)

    def _submit(self, tx_id: str, sreq: services_pb2.SubmitRequest, first: bool) -> None:
        """Gateway.Submit, retrying UNAVAILABLE (bounded); returns once the envelope was
        accepted for ordering or found on the ledger (DUPLICATE_TXID: its commit status reports
        the original outcome). An attempt that failed in transit may have been ordered, so a
        later refusal that could have gone the other way for it (CLOCK_SKEW as the tx ages,
        UNKNOWN_CREATOR as a certificate expires, BAD_CONFIG_UPDATE once the update is in
        force ...) is CommitUnknown, not a definite no; so is a peer unreachable before the first
        attempt unless ``first`` (see :meth:`submit_envelope`)."""
        delays = self._retry.delays()
        lost = ""  # why an earlier attempt may have reached the ordering service
        attempt = 0
        caught_up = False  # as in _call: the wait runs once to its end, not once per retry
        followed = False  # on_unreachable asked (once per submission)
        while True:
            try:
                self._check_pin()
            except RxClientError as exc:  # (IO_ERROR: not sent this time -- an earlier attempt may have been)
                if lost or not first:
                    raise CommitUnknown(tx_id, f"transaction {tx_id} may have been ordered: "
                                        + (f"an attempt failed with {lost}, then " if lost else
                                           "a submission of this envelope before it may have been; ")
                                        + f"this one was not sent: {exc.reason}: {exc.message}") from exc
                raise
            used = self._pin_version
            try:
                if not caught_up:
                    self._catch_up()
                    caught_up = True
            except grpc.RpcError as exc:  # the peer is unreachable: nothing was sent this time
                # (on_unreachable may raise: only while no attempt, of this call or an earlier
                # one, may have been ordered -- else the caller must hear CommitUnknown)
                if not followed and first and not lost and _retryable(exc):
                    followed = True
                    if self._follow(exc, used):
                        continue
                if _retryable(exc) and attempt < len(delays):
                    self._sleep(delays[attempt])
                    attempt += 1
                    continue
                err = rpc_error(exc)
                if lost:
                    raise CommitUnknown(tx_id, f"transaction {tx_id} may have been ordered: an attempt "
                                        f"failed with {lost}, then the peer could not be reached: "
                                        f"{err.reason}: {err.message}") from exc
                if not first:
                    raise CommitUnknown(tx_id, f"transaction {tx_id} was not sent this time (the peer could "
                                        f"not be reached: {err.reason}: {err.message}); a submission of this "
                                        "envelope before it may have been ordered") from exc
                raise err from exc
            try:
                self._stub.Submit(sreq, timeout=30)
                return
            except grpc.RpcError as exc:
                err = rpc_error(exc)
                if err.reason == "DUPLICATE_TXID":
                    return
                if _retryable(exc) and attempt < len(delays):
                    lost = f"{err.reason}: {err.message}"
                    self._sleep(delays[attempt])
                    attempt += 1
                    continue
                if err.reason in OUTCOME_UNKNOWN_REASONS:
                    raise CommitUnknown(tx_id, f"transaction {tx_id} may have been ordered: submit "
                                        f"failed with {err.reason}: {err.message}") from exc
                if lost and err.reason not in DETERMINISTIC_REFUSALS:
                    raise CommitUnknown(tx_id, f"transaction {tx_id} may have been ordered: an attempt "
                                        f"failed with {lost}, then a retry was refused with "
                                        f"{err.reason}: {err.message}") from exc
                raise err from exc

    def _commit_status(self, tx_id: str, timeout_ms: int | None = None) -> services_pb2.CommitStatusResponse:
        """Wait for a submitted transaction's commit status. A peer that holds as many
        waits as it allows (TOO_MANY_STREAMS) is asked again after a backoff -- a committed
        tx is answered at once, without a wait; if it still refuses, the outcome is
        unknown (CommitUnknown): the tx was accepted and may commit, so it must not be
        proposed again."""
        wait_ms = self._commit_timeout_ms if timeout_ms is None else timeout_ms
        creq = services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=wait_ms)
        delays = self._retry.delays()
        attempt = 0
        while True:
            try:
                return self._call(lambda: self._stub.CommitStatus(creq, timeout=wait_ms / 1000 + 5))
            except RxClientError as exc:
                if exc.reason != "TOO_MANY_STREAMS":
                    raise
                if attempt >= len(delays):
                    raise CommitUnknown(tx_id, f"transaction {tx_id} was submitted; the peer refused "
                                        f"to wait for its commit: {exc}") from exc
                self._sleep(delays[attempt])
                attempt += 1

    def submit(self, contract: str, function: str, args: Mapping[str, Any] | None = None,
               transient: Mapping[str, Any] | None = None,
               endorsing_orgs: Sequence[str] | None = None) -> SubmitResult:
        """Endorse, sign, order and wait for commit; returns tx id, code, block, result.

        ``endorsing_orgs``: the organisations whose peers endorse it besides this one (none: the
        gateway picks them for the policy). ``transient`` inputs (plaintext: prescription
        content, claim lines, medical data) go only to peers of organisations named here: a call
        carrying them without ``endorsing_orgs`` is refused ENDORSERS_REQUIRED, nothing sent;
        the session's :attr:`default_transient` inputs (a patient's binding) are left out of a
        call naming none."""
        built = self.propose(contract, function, args, transient, defaults=bool(endorsing_orgs))
        endorsed = self.endorse(built, endorsing_orgs)
        envelope = self.builder.envelope(built, endorsed.prepared_transaction, endorsed.result)
        committed = self.submit_envelope(built.tx_id, envelope, first=True)
        return SubmitResult(committed.tx_id, committed.code, committed.block,
                            decode_payload(endorsed.result.payload))

    def tx_block(self, tx_id: str, timeout_ms: int = 2_000) -> int | None:
        """The block a committed transaction landed in (None if unknown)."""
        req = services_pb2.CommitStatusRequest(tx_id=tx_id, timeout_ms=timeout_ms)
        self._check_pin()
        try:
            status = self._stub.CommitStatus(req, timeout=timeout_ms / 1000 + 3)
        except grpc.RpcError:
            return None
        return int(status.block_number)

    # ------------------------------------------------------------ events, blocks, admin
    def events(self, start_block: int = 0, contract: str = "",
               follow: bool = True, timeout: float | None = None
               ) -> Iterator[services_pb2.EventsResponse]:
        """Block events from ``start_block`` on (a raw stream; see client.events for resuming).

        A stream that does not follow ends at the peer's height, and the peer sends its blocks
        as it reads them: one it sends no block on for :attr:`events_idle_s` while this client
        waits for one (a half-open connection, a stopped or stuck peer) fails TIMEOUT, rather
        than leave a bounded read (inbox, claim report) waiting for ever -- a gRPC deadline
        cannot tell a stalled stream from a long one, and the channel has no keepalive. The
        time the consumer takes over a block does not count. A stream that follows waits for
        blocks to be committed, hours maybe: it has no such bound (``timeout``, the whole
        call's deadline, applies to both)."""
        req = services_pb2.EventsRequest(start_block=start_block, contract=contract, follow=follow)
        idle_s = None if follow else self.events_idle_s
        self._check_pin()
        try:
            call: Any = self._stub.Events(req, timeout=timeout)  # an iterator and a grpc.Call
        except grpc.RpcError as exc:
            raise rpc_error(exc) from exc
        watch = None if idle_s is None else _IdleWatch(idle_s, call.cancel)
        last = None  # the last block received
        try:
            while True:
                if watch is not None:
                    watch.arm()
                try:
                    msg: services_pb2.EventsResponse = next(call)
                except StopIteration:
                    return
                finally:
                    if watch is not None:
                        watch.disarm()
                last = msg.block_number
                yield msg
        except grpc.RpcError as exc:
            if watch is not None and watch.fired:
                after = f"block {start_block} was asked for" if last is None else f"block {last}"
                raise RxClientError("TIMEOUT", f"the peer sent no block for {idle_s:g} s after {after} "
                                    "(reading block events up to its height): it stalls; read again, "
                                    "or on another peer") from exc
            raise rpc_error(exc) from exc
        finally:
            if watch is not None:
                watch.stop()
            call.cancel()  # a stream left before its end (a bounded read took what it needs)

    def health(self, timeout: float = 3.0) -> services_pb2.HealthResponse:
        """The peer's Admin.Health."""
        return self._once(lambda: self._admin.Health(services_pb2.HealthRequest(), timeout=timeout))

    def status(self, timeout: float = 5.0, include_config: bool = False) -> services_pb2.StatusResponse:
        """The peer's Admin.Status (with the configuration in force if ``include_config``)."""
        return self._once(lambda: self._admin.Status(services_pb2.StatusRequest(include_config=include_config),
                                                     timeout=timeout))
