"""Config transactions as the ordering service sees them.

A CONFIG envelope carries a ConfigUpdate: a new serialized ConsortiumConfig plus admin
signatures over those bytes. The orderer checks it at broadcast (against its current
config, wall-clock time) and again when the block holding it is applied (against the
config in force before that block, at the transaction's own timestamp, so every orderer
decides identically). Rules (reason BAD_CONFIG_UPDATE):

* the update and the new config parse; same consortium id; ``sequence`` = current + 1;
* the admin signatures satisfy the current ``config_update`` policy;
* the new config is usable (CA certificates parse, ``config_update`` policy present, at
  least one orderer, unique raft ids) and may govern the consortium: organisations, nodes,
  named policies (which roles each may name, satisfiable by the members of the new config,
  never by one organisation alone) and limits, see :mod:`node.orderer.configrules`;
* the orderer set changes by at most ONE member (single-server membership changes); an
  orderer kept in the set keeps its raft id, name, organisation, host and port, and may change
  only its certificate (in-place rotation), which counts as that update's one change and
  must validate against the organisation's CA of the NEW config with the orderer role, as
  must the certificate of an orderer added (a member that could not sign a block nor be
  reached over TLS would count towards the quorum it weakens).

From the block carrying a rotation on, the Cluster transport of every orderer accepts
only the new certificate for that raft id (the transport's Membership follows adopted
configs); the rotated orderer, still running on its old certificate, stops its chain (it
could only sign blocks with a certificate no longer in force) until the operator restarts
it with the new certificate and key.

A leader cuts a config envelope into a block of its own. Once a config block is applied,
the orderer adopts it (MSP, transport membership, batch parameters) and the Raft leader
then proposes the matching ConfChange (add or remove one voter).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, transaction_pb2

from node.crypto.signing import Purpose, Verifier
from node.errors import RxError
from node.identity.envelope import EnvelopeReject, check_creator, check_header, check_timestamp, parse_envelope
from node.identity.msp import MSP
from node.identity.policy import MAX_SIGNERS, parse_policy
from node.orderer.configrules import BAD_CONFIG_UPDATE, check_new_config, check_organizations
from node.protocol import SUPPORTED_VERSIONS, protocol_version, unsupported

CONFIG_UPDATE_POLICY = "config_update"
MAX_CONFIG_SIGNATURES = 64


@dataclass(frozen=True)
class OrdererConfig:
    """A consortium configuration in force, with its MSP and the block that carried it."""

    config: config_pb2.ConsortiumConfig
    msp: MSP
    block_number: int

    def orderer_ids(self) -> list[int]:
        """Raft ids of the orderer set."""
        return sorted(o.raft_id for o in self.config.orderers)


def _tx_header(raw: bytes) -> transaction_pb2.TxHeader | None:
    try:
        env = transaction_pb2.Envelope.FromString(raw)
        tx = transaction_pb2.Transaction.FromString(env.payload)
        return transaction_pb2.TxHeader.FromString(tx.header)
    except DecodeError:
        return None


def tx_type(raw: bytes) -> int | None:
    """The TxType of an envelope, or None if it does not parse."""
    header = _tx_header(raw)
    return None if header is None else int(header.type)


def tx_timestamp_ms(raw: bytes) -> int | None:
    """The header timestamp of an envelope, or None if it does not parse."""
    header = _tx_header(raw)
    return None if header is None else int(header.timestamp_ms)


def validate_update(
    current: OrdererConfig, raw: bytes, verifier: Verifier, at_ms: int | None = None
) -> config_pb2.ConsortiumConfig:
    """The new config carried by CONFIG envelope ``raw``, or RxError(BAD_CONFIG_UPDATE).

    ``at_ms`` None means "at the transaction's timestamp" (the deterministic apply path).
    """
    try:
        env = transaction_pb2.Envelope.FromString(raw)
        tx = transaction_pb2.Transaction.FromString(env.payload)
        header = transaction_pb2.TxHeader.FromString(tx.header)
        update = config_pb2.ConfigUpdate.FromString(tx.config_update)
        new = config_pb2.ConsortiumConfig.FromString(update.config)
    except DecodeError as exc:
        raise RxError(BAD_CONFIG_UPDATE, f"config update does not parse: {exc}") from exc
    when = header.timestamp_ms if at_ms is None else at_ms
    old = current.config
    if header.type != transaction_pb2.CONFIG:
        raise RxError(BAD_CONFIG_UPDATE, "not a CONFIG transaction")
    if new.consortium_id != old.consortium_id:
        raise RxError(BAD_CONFIG_UPDATE, f"consortium id {new.consortium_id[:64]!r} differs")
    if new.sequence != old.sequence + 1:
        raise RxError(
            BAD_CONFIG_UPDATE, f"sequence {new.sequence}, expected {old.sequence + 1}"
        )
    if protocol_version(new) < protocol_version(old):
        raise RxError(BAD_CONFIG_UPDATE, f"protocol version {protocol_version(new)} is below "
                                         f"{protocol_version(old)} (it is never lowered)")
    rules = {p.name: p.rule for p in old.policies}
    if CONFIG_UPDATE_POLICY not in rules:
        raise RxError(BAD_CONFIG_UPDATE, "current config has no config_update policy")
    # evaluated by the rules of the version in force before the update (node.protocol)
    policy = parse_policy(rules[CONFIG_UPDATE_POLICY], [o.id for o in old.organizations], protocol_version(old))
    if len(update.signatures) > MAX_CONFIG_SIGNATURES:
        raise RxError(BAD_CONFIG_UPDATE, f"{len(update.signatures)} signatures")
    signers: list[tuple[str, str]] = []
    for sig in update.signatures:
        try:
            ident = identity_pb2.Identity.FromString(sig.signer)
            principal = current.msp.verify(ident, sig.signature, Purpose.CONFIG, update.config, when)
        except (DecodeError, RxError) as exc:
            raise RxError(BAD_CONFIG_UPDATE, f"bad admin signature: {exc}") from exc
        signers.append((principal.org, principal.role))
    if len(set(signers)) > MAX_SIGNERS:
        # evaluate() refuses any set this large; say why rather than "do not satisfy"
        raise RxError(BAD_CONFIG_UPDATE, f"{len(set(signers))} distinct signers: a policy check counts at "
                                         f"most {MAX_SIGNERS}")
    if not policy.evaluate(signers):
        raise RxError(BAD_CONFIG_UPDATE, "admin signatures do not satisfy config_update")
    if CONFIG_UPDATE_POLICY not in {p.name for p in new.policies} or not new.orderers:
        raise RxError(BAD_CONFIG_UPDATE, "new config lacks config_update policy or orderers")
    ids = [o.raft_id for o in new.orderers]
    if len(set(ids)) != len(ids) or 0 in ids:
        raise RxError(BAD_CONFIG_UPDATE, "orderer raft ids must be unique and positive")
    old_by_id = {o.raft_id: o for o in old.orderers}
    new_by_id = {o.raft_id: o for o in new.orderers}
    changed = set(old_by_id) ^ set(new_by_id)
    rotated = []
    for rid in sorted(set(old_by_id) & set(new_by_id)):
        before, after = old_by_id[rid], new_by_id[rid]
        if (before.org, before.host, before.port) != (after.org, after.host, after.port):
            raise RxError(BAD_CONFIG_UPDATE, f"orderer {rid} changed its organisation or address")
        if before.name != after.name:
            # Nodes dial an orderer pinned to the name the config gives it (tls.NodeChannels),
            # which its TLS certificate carries: a renamed orderer would be unreachable from
            # every node that (re)connects, and renaming them all in one update would leave
            # no quorum to order the update that undoes it.
            raise RxError(BAD_CONFIG_UPDATE, f"orderer {rid} changed its name")
        if before.cert_der != after.cert_der:
            rotated.append(after)
    if len(changed) + len(rotated) > 1:
        raise RxError(
            BAD_CONFIG_UPDATE,
            "only one orderer may be added, removed or have its certificate rotated at a time",
        )
    check_organizations(new)
    try:
        # the new config's members, judged by the rules of the version in force before the update
        new_msp = MSP(new, verifier, version=protocol_version(old))
    except (RxError, ValueError) as exc:
        raise RxError(BAD_CONFIG_UPDATE, f"new config unusable: {exc}") from exc
    check_new_config(old, new, len(raw), new_msp, when)  # incl. the added or rotated certificate
    return new


def _admissible(new: config_pb2.ConsortiumConfig) -> config_pb2.ConsortiumConfig:
    """``new``, unless it puts in force a protocol version this orderer does not implement
    (BAD_CONFIG_UPDATE at admission only: on the apply path every release must agree, so
    there a node that cannot run the version stops instead; see node.protocol)."""
    if unsupported(new) is None:
        return new
    # (not unsupported()'s text, which is for a node whose consortium already runs the version:
    # here nothing changed, and the admins raise it once every node's release implements it)
    raise RxError(BAD_CONFIG_UPDATE, f"protocol version {protocol_version(new)}: this orderer's release implements "
                  f"{sorted(SUPPORTED_VERSIONS)}; install a release implementing it on every orderer and peer "
                  "before raising it (nothing changed)")


def config_of_block(block: block_pb2.Block) -> config_pb2.ConsortiumConfig | None:
    """The config carried by a block's single CONFIG envelope (genesis or update)."""
    if len(block.data.envelopes) != 1:
        return None
    raw = block.data.envelopes[0]
    if tx_type(raw) != transaction_pb2.CONFIG:
        return None
    env = transaction_pb2.Envelope.FromString(raw)
    tx = transaction_pb2.Transaction.FromString(env.payload)
    update = config_pb2.ConfigUpdate.FromString(tx.config_update)
    return config_pb2.ConsortiumConfig.FromString(update.config)


class ConfigTracker:
    """The config in force; listeners are told when a new one is adopted."""

    def __init__(self, initial: OrdererConfig, verifier: Verifier) -> None:
        self._current = initial
        self._verifier = verifier
        self._listeners: list[Callable[[OrdererConfig], None]] = []
        self._lock = threading.Lock()

    @property
    def current(self) -> OrdererConfig:
        """The config in force."""
        return self._current

    def msp(self) -> MSP:
        """The MSP of the config in force."""
        return self._current.msp

    def subscribe(self, listener: Callable[[OrdererConfig], None]) -> None:
        """Call ``listener`` on every adoption."""
        self._listeners.append(listener)

    def check_broadcast(self, raw: bytes, at_ms: int) -> None:
        """Broadcast-time check of a CONFIG envelope (raises RxError)."""
        with self._lock:
            _admissible(validate_update(self._current, raw, self._verifier, at_ms))

    def validate_now(self, raw: bytes) -> config_pb2.ConsortiumConfig:
        """Check a CONFIG envelope against the config in force, at its own timestamp
        (the leader's check before cutting; raises RxError)."""
        with self._lock:
            return _admissible(validate_update(self._current, raw, self._verifier))

    def block_config(self, block: block_pb2.Block) -> config_pb2.ConsortiumConfig | None:
        """The valid new config a block carries (apply path, deterministic), else None.

        Valid exactly when peers record the tx VALID: the envelope checks every peer runs
        (header, creator certificate at the tx timestamp, creator signature, tx id), then
        :func:`validate_update` -- a leader cannot make the orderers adopt an update the
        peers refuse (e.g. admin-signed content in a forged envelope). Orderers keep no tx-id
        index: peers adopt a valid update whatever its id (``node.peer.validator``)."""
        return self.judge_block(block)[0]

    def judge_block(self, block: block_pb2.Block) -> tuple[config_pb2.ConsortiumConfig | None, str]:
        """(the valid new config a block carries, "") as :meth:`block_config` decides it, or
        (None, why it is refused) for a block holding one CONFIG transaction that is refused,
        (None, "") for any other block."""
        if len(block.data.envelopes) != 1:
            return None, ""
        raw = block.data.envelopes[0]
        if tx_type(raw) != transaction_pb2.CONFIG:
            return None, ""
        try:
            with self._lock:
                current = self._current
                env, _, header = parse_envelope(raw)
                check_header(header, current.config.consortium_id)
                check_creator(header, env, current.msp.validate, self._verifier.verify)
                check_timestamp(header, block.header.timestamp_ms, current.config.limits.max_clock_skew_ms)
                return validate_update(current, raw, self._verifier), ""
        except RxError as err:
            return None, str(err)
        except EnvelopeReject as rej:
            return None, transaction_pb2.TxValidationCode.Name(rej.code)

    def adopt(self, config: config_pb2.ConsortiumConfig, block_number: int) -> OrdererConfig:
        """Make ``config`` (carried by ``block_number``) the config in force."""
        new = OrdererConfig(config, MSP(config, self._verifier), block_number)
        with self._lock:
            self._current = new
        for listener in self._listeners:
            listener(new)
        return new
