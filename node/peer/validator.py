"""Block validation: orderer signatures, hash chain, and a validation code for every tx.

Nothing is trusted but the block and the ledger: incoming metadata (validation codes,
state hash) is ignored and recomputed. A block that fails the block-level checks (number,
previous hash, data hash, orderer signature quorum) is refused as a whole with an
:class:`~node.errors.RxError` and nothing is written. Otherwise every tx gets a code:

=========================  ===============================================================
check (in this order)      code on failure
=========================  ===============================================================
Envelope/Transaction parse BAD_PAYLOAD
TxHeader parse and fields  BAD_HEADER (type, creator, nonce, tx id, timestamp, consortium)
creator certificate        UNKNOWN_CREATOR / EXPIRED_CREATOR_CERT / REVOKED_CREATOR_CERT
creator signature          BAD_CREATOR_SIGNATURE (over ``Envelope.payload``)
tx id                      BAD_TXID (must equal compute_tx_id(nonce, creator))
tx timestamp               TX_TIMESTAMP_SKEW (further than ``max_clock_skew_ms`` from the
                           block's orderer-signed ``timestamp_ms``; none if 0), but
                           DUPLICATE_TXID when the id is taken (a late copy is never indexed)
duplicate tx id            DUPLICATE_TXID (on the ledger or earlier in the block; "earlier in
                           the block" counts only txs whose id is indexed, as on the ledger;
                           a CONFIG tx only if its update is refused too: orderers adopt
                           updates without a tx-id index)
-- INVOKE --
invocation / response      BAD_PAYLOAD (parse; proposal_hash must bind header+invocation;
                           response status 200; every event names this contract and tx)
contract definition        UNKNOWN_CONTRACT / CONTRACT_VERSION_MISMATCH
endorsements               BAD_ENDORSEMENT (cert or signature over response_payload; a
                           peer certificate must name a peer of the config in force)
policy                     ENDORSEMENT_POLICY_FAILURE (distinct (org, role) signers)
read/write set             BAD_RWSET (parse, namespaces, limits, writes only to own ns; each
                           namespace once and each key written once, as simulated)
MVCC                       MVCC_READ_CONFLICT (read version changed, or key written by an
                           earlier valid tx of this block)
phantoms                   PHANTOM_READ_CONFLICT (range re-executed differs, or an earlier
                           valid tx of this block wrote into the range)
-- CONFIG --
config update              BAD_CONFIG_UPDATE unless the tx is the only one of its block and
                           ``node.orderer.configtx.validate_update`` accepts it (parse,
                           sequence = current + 1, same consortium, admin signatures satisfy
                           the current ``config_update`` policy, usable new config, orderer
                           set changes by at most one member, content rules of
                           ``node.orderer.configrules``: orgs, nodes, policies, limits)
=========================  ===============================================================

A config update is valid on a peer exactly when the orderers adopt it -- the same rules
(one function) and the same shape (a block holding that tx alone; the orderers cut config
updates into blocks of their own and adopt nothing else) -- otherwise peers and orderers
could end up with different configs in force (e.g. a compromised leader putting an update
in a mixed block, or an update with a policy the peers cannot parse) and every later
update would be refused on one side. A valid config tx replaces the config (MSP, policies,
limits) for later blocks; the block's own orderer signatures are checked against the
config in force before the block. From protocol version 2 (node.protocol.MEMBERSHIP_VERSION)
a signature counts only if the orderer's certificate (and its CA's) is within its validity
period at the block header's ``timestamp_ms`` (``MSP.block_signers``): a block signed only by
expired orderer certificates is refused BAD_ORDERER_SIGNATURE like an unsigned one.

Contract definitions come from a pluggable :class:`PolicyProvider` (the lifecycle), which
reads the COMMITTED state as of the previous block, so a definition change takes effect
from the next block on.

Signature checks run sequentially on purpose. Measured (cryptography 50, 2 vCPU): ECDSA
P-256 ``verify`` does NOT release the GIL -- two threads verify no faster than one -- so a
thread pool would only add overhead; processes would need the parsed txs shipped across.
With parsed keys cached by the Verifier, principals cached per config and policy results
memoised, the per-tx overhead beyond the three verifies is small (bench/commit_bench.py
reports the ratio, ~0.73-0.76 of the crypto bound).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, config_pb2, identity_pb2, transaction_pb2

from node.crypto.canonical import (
    block_data_hash,
    block_header_hash,
    proposal_hash,
)
from node.crypto.signing import Purpose, Verifier, block_signers
from node.crypto.x509 import cert_info_der
from node.errors import RxError
from node.identity.envelope import EnvelopeReject, check_creator, check_header, check_timestamp, parse_envelope
from node.identity.msp import MSP
from node.identity.policy import Policy, parse_policy
from node.ledger.errors import LedgerError
from node.ledger.statedb import KeyWrite, StateReader, TxOutcome, Version
from node.ledger.txwrites import SYSTEM_NS, config_writes, indexed_tx_id, rwset_writes
from node.orderer.configtx import OrdererConfig, validate_update
from node.protocol import MEMBERSHIP_VERSION, protocol_version

Code: TypeAlias = transaction_pb2.TxValidationCode.ValueType

POLICY_CACHE_SIZE = 4096
MAX_ENDORSEMENTS = 32  # more is an attempt to burn validation CPU


@dataclass(frozen=True)
class ContractDefinition:
    """An active contract as the lifecycle defines it."""

    name: str
    version: str
    sequence: int
    policy: Policy


class PolicyProvider(Protocol):
    """Where the validator gets contract definitions (supplied by the lifecycle)."""

    def contract(self, name: str, state: StateReader) -> ContractDefinition | None:
        """The active definition of ``name`` in ``state`` (committed state), or None."""
        ...


class VersionReader(Protocol):
    """What MVCC needs from the committed state."""

    def get_version(self, ns: str, key: str) -> Version | None:
        """Version of a committed key or None."""
        ...

    def has_tx(self, tx_id: str) -> bool:
        """True if the tx id is on the ledger."""
        ...


class CommittedState(StateReader, VersionReader, Protocol):
    """The committed state the validator reads (a StateDB)."""


class ConfigState:
    """A consortium config with everything derived from it (MSP, policies, caches).

    :meth:`principal` memoises MSP validation per (org, certificate) together with the
    certificate's validity window (from protocol version 2 narrowed to its CA's:
    node.identity.msp), so a cached answer is only reused for timestamps inside that window
    (anything else goes through the MSP again and gets its exact error). The cache lives and
    dies with the config, so revocations in a new config always apply.

    :meth:`endorser` is :meth:`principal` for an endorsement: from protocol version 2 on
    (node.protocol.MEMBERSHIP_VERSION; version 1 counts any valid certificate), a certificate
    with the peer role counts only if it names a peer the config lists in its organisation (``PeerNode.org`` and
    ``name``, which netgen's peer certificates carry as their common name) or is the
    certificate the config lists for one (``PeerNode.cert_der``). A peer removed from the config by an
    update stops counting at that block, on every peer alike, even while its organisation's
    CA still vouches for its certificate (nobody revoked it); txs it endorsed before the
    update and committed after it are BAD_ENDORSEMENT, as for a revoked certificate. A peer
    whose certificate is renewed under the same name endorses before the update recording
    the new certificate (restart first, then the update: tests/fault/test_cert_rotation.py);
    one whose certificate names it only in its alternative names does once the config lists
    that certificate.
    """

    def __init__(
        self, config: config_pb2.ConsortiumConfig, verifier: Verifier, cache_size: int = 4096
    ) -> None:
        self.config = config
        self.msp = MSP(config, verifier)
        org_ids = [o.id for o in config.organizations]
        version = protocol_version(config)
        # A config update whose named policies do not parse is refused on orderers and peers
        # alike (node.orderer.configrules); nodes do not check a genesis block by those rules
        # (the generator does, but a genesis may be made by other means), so a policy that
        # does not parse is left out here rather than making this config unusable on peers
        # alone.
        self.policies: dict[str, Policy] = {}
        for p in config.policies:
            try:
                self.policies[p.name] = parse_policy(p.rule, org_ids, version)
            except RxError:
                continue
        self.peer_names = frozenset((p.org, p.name) for p in config.peers)
        self.peer_certs = frozenset((p.org, p.cert_der) for p in config.peers)
        self.listed_peers_only = protocol_version(config) >= MEMBERSHIP_VERSION
        # (org, cert) -> ((org, role), not_before_ms, not_after_ms, names a listed peer)
        self._principals: dict[tuple[str, bytes], tuple[tuple[str, str], int, int, bool]] = {}
        self._cache_size = cache_size

    def principal(self, identity: identity_pb2.Identity, at_ms: int) -> tuple[str, str]:
        """(org, role) of a valid identity at ``at_ms``; raises the MSP's RxError."""
        return self._checked(identity, at_ms)[0]

    def endorser(self, identity: identity_pb2.Identity, at_ms: int) -> tuple[str, str]:
        """(org, role) of a valid endorser at ``at_ms``: :meth:`principal`, and RxError
        UNKNOWN_PEER for a peer certificate naming no peer of this config (class docstring)."""
        (org, role), listed = self._checked(identity, at_ms)
        if role == "peer" and not listed and self.listed_peers_only:
            raise RxError("UNKNOWN_PEER", f"{org}: the certificate names no peer of the configuration")
        return (org, role)

    def _checked(self, identity: identity_pb2.Identity, at_ms: int) -> tuple[tuple[str, str], bool]:
        key = (identity.org, identity.cert_der)
        hit = self._principals.get(key)
        if hit is not None and hit[1] <= at_ms <= hit[2]:
            return hit[0], hit[3]
        p = self.msp.validate(identity, at_ms)
        info = cert_info_der(identity.cert_der)
        if len(self._principals) >= self._cache_size:
            self._principals.clear()
        listed = (p.org, p.name) in self.peer_names or (p.org, identity.cert_der) in self.peer_certs
        low, high = self.msp.validity_window(p.org, info)  # the CA's too, from version 2
        self._principals[key] = ((p.org, p.role), low, high, listed)
        return (p.org, p.role), listed


class WrittenKeys:
    """The keys of one namespace written by the earlier valid txs of a block.

    ``key in w`` is a set lookup; :meth:`any_in` (is a written key inside a range?) bisects a
    sorted run and scans a short unsorted tail, which it first merges into the run when the
    tail has outgrown the square root of the run, so a block whose txs carry many range
    queries costs about (queries x sqrt(keys written)), not (queries x keys written),
    comparisons, and a block without range queries only fills a set and a list. The answers
    do not depend on this layout: validation stays deterministic.
    """

    __slots__ = ("_all", "_run", "_tail")

    def __init__(self) -> None:
        self._all: set[str] = set()
        self._run: list[str] = []  # sorted
        self._tail: list[str] = []  # unsorted, added since the last merge

    def add(self, key: str) -> None:
        """Record a written key."""
        if key not in self._all:
            self._all.add(key)
            self._tail.append(key)

    def __contains__(self, key: object) -> bool:
        return key in self._all

    def any_in(self, start: str, end: str | None, *, inclusive_end: bool) -> bool:
        """True if a written key k has start <= k < end (k <= end if ``inclusive_end``;
        no upper bound if ``end`` is None). Keys compare as code points, like the state."""

        def below_end(k: str) -> bool:
            return end is None or k < end or (inclusive_end and k == end)

        tail = self._tail
        if len(tail) > _TAIL_MIN and len(tail) ** 2 > len(self._run):
            tail.sort()
            self._run = sorted(self._run + tail)  # two sorted runs: a linear merge
            self._tail = tail = []
        i = bisect_left(self._run, start)
        if i < len(self._run) and below_end(self._run[i]):
            return True
        return any(k >= start and below_end(k) for k in tail)


_TAIL_MIN = 32


@dataclass
class ValidatedBlock:
    """A block copy with fresh validation codes, plus what to apply."""

    block: block_pb2.Block
    outcomes: list[TxOutcome]
    codes: list[Code]
    new_config: ConfigState | None = None
    events: list[list[transaction_pb2.ContractEvent]] = field(default_factory=list)


_Reject = EnvelopeReject  # a tx refused with its validation code


class Validator:
    """Validates blocks against the committed state and the config in force."""

    def __init__(
        self,
        state: CommittedState,
        config: config_pb2.ConsortiumConfig,
        verifier: Verifier,
        policies: PolicyProvider,
        *,
        orderer_quorum: int = 1,
    ) -> None:
        if orderer_quorum < 1:
            raise RxError("BAD_CONFIG", "orderer_quorum must be at least 1")
        self._state = state
        self._verifier = verifier
        self._policies = policies
        self._quorum = orderer_quorum
        self.config = ConfigState(config, verifier)
        self._policy_cache: dict[tuple[Policy, frozenset[tuple[str, str]]], bool] = {}

    def adopt(self, new_config: ConfigState) -> None:
        """Switch to a config adopted by a committed block."""
        self.config = new_config

    # ------------------------------------------------------------------ block level

    def check_block(
        self, block: block_pb2.Block, expected_number: int, previous_hash: bytes
    ) -> None:
        """Block-level checks; raises RxError (BAD_BLOCK / BAD_ORDERER_SIGNATURE)."""
        h = block.header
        if h.number != expected_number:
            raise RxError(
                "BAD_BLOCK", f"block number {h.number}, expected {expected_number}"
            )
        if h.previous_hash != previous_hash:
            raise RxError("BAD_BLOCK", f"block {h.number}: previous hash breaks the chain")
        if h.data_hash != block_data_hash(block.data.envelopes):
            raise RxError("BAD_BLOCK", f"block {h.number}: data hash does not match its data")
        # from protocol version 2 only orderer certificates valid at the block's time count
        signed = block_signers(self._verifier, block_header_hash(h), block.metadata.orderer_signatures,
                               self.config.msp.block_signers(h.timestamp_ms), self._quorum)
        if signed < self._quorum:
            raise RxError(
                "BAD_ORDERER_SIGNATURE",
                f"block {h.number}: {signed} valid orderer signature(s), "
                f"{self._quorum} required"
                + (f" (of orderer certificates valid at the block's time {h.timestamp_ms})"
                   if self.config.msp.version >= MEMBERSHIP_VERSION else ""),
            )

    # ------------------------------------------------------------------ tx level

    def validate(
        self, block: block_pb2.Block, expected_number: int, previous_hash: bytes
    ) -> ValidatedBlock:
        """Check the block and compute a code and the writes of every tx.

        On success ``block``'s metadata validation codes are REPLACED by the computed ones
        (and its state hash cleared; the ledger sets it): the result holds the same object.
        """
        self.check_block(block, expected_number, previous_hash)
        cfg = self.config
        new_config: ConfigState | None = None
        seen_ids: set[str] = set()
        written: dict[str, WrittenKeys] = {}
        contracts: dict[str, ContractDefinition | None] = {}
        outcomes: list[TxOutcome] = []
        codes: list[Code] = []
        events: list[list[transaction_pb2.ContractEvent]] = []
        alone = len(block.data.envelopes) == 1
        block_ts, max_skew = block.header.timestamp_ms, cfg.config.limits.max_clock_skew_ms
        for i, env_bytes in enumerate(block.data.envelopes):
            tx_id, ts = "", 0
            writes: Sequence[KeyWrite] = ()
            tx_events: list[transaction_pb2.ContractEvent] = []
            try:
                env, tx, header = parse_envelope(env_bytes)
                tx_id, ts = header.tx_id, header.timestamp_ms
                self._check_header(cfg, header)
                self._check_creator(cfg, header, env)
                duplicate = tx_id in seen_ids or self._state.has_tx(tx_id)
                try:
                    check_timestamp(header, block_ts, max_skew)
                except _Reject:
                    # A late copy of a tx already on the ledger (a resubmission ordered again,
                    # a replay) must not be indexed: as TX_TIMESTAMP_SKEW it would replace the
                    # first copy's tx-id entry and wake its waiters, so CommitStatus would
                    # report a VALID tx as refused. Nobody adopts or applies it either way.
                    if duplicate:
                        raise _Reject(transaction_pb2.DUPLICATE_TXID) from None
                    raise
                if header.type == transaction_pb2.CONFIG:
                    # The orderers adopt a config update without a tx-id index: a valid one is
                    # adopted here too whatever its id (see _check_config_or_duplicate).
                    adopted, config_bytes = self._check_config_or_duplicate(
                        cfg, tx, env_bytes, alone, duplicate
                    )
                    writes = config_writes(config_bytes)
                    cfg = new_config = adopted
                else:
                    if duplicate:
                        raise _Reject(transaction_pb2.DUPLICATE_TXID)
                    writes, tx_events = self._check_invoke(cfg, tx, header, written, contracts)
                code: Code = transaction_pb2.VALID
            except _Reject as rej:
                code = rej.code
                writes = ()
                tx_events = []
            if code == transaction_pb2.VALID:
                for w in writes:
                    keys = written.get(w.ns)
                    if keys is None:
                        keys = written[w.ns] = WrittenKeys()
                    keys.add(w.key)
            # An id blocks later txs of this block exactly when it enters the tx-id index
            # (txwrites.UNINDEXED_CODES), as it blocks later blocks. A creator signature alone
            # does not prove the envelope is the creator's transaction: an envelope built from
            # bytes the creator signed for something else must not turn the real tx into a
            # duplicate. Signatures are tagged with their purpose (node.crypto.signing), so a
            # SignedProposal's signature no longer verifies over the same bytes taken as an
            # Envelope payload (Proposal and Transaction share field numbers); the rule stays
            # for any envelope that passes the signature check and fails a later one.
            indexed = indexed_tx_id(code, tx_id)
            if indexed:
                seen_ids.add(indexed)
            codes.append(code)
            events.append(tx_events)
            outcomes.append(TxOutcome(i, indexed, code, ts, writes))
        # The block is reused (copying 500 envelopes costs more than validating the
        # metadata): incoming codes and state hash are discarded and replaced.
        meta = block.metadata
        del meta.validation_codes[:]
        meta.validation_codes.extend(codes)
        meta.state_hash = b""
        return ValidatedBlock(block, outcomes, codes, new_config, events)

    def _check_header(self, cfg: ConfigState, header: transaction_pb2.TxHeader) -> None:
        check_header(header, cfg.config.consortium_id)

    def _check_creator(
        self,
        cfg: ConfigState,
        header: transaction_pb2.TxHeader,
        env: transaction_pb2.Envelope,
    ) -> None:
        check_creator(header, env, cfg.principal, self._verifier.verify)

    def _check_invoke(
        self,
        cfg: ConfigState,
        tx: transaction_pb2.Transaction,
        header: transaction_pb2.TxHeader,
        written: dict[str, WrittenKeys],
        contracts: dict[str, ContractDefinition | None],
    ) -> tuple[list[KeyWrite], list[transaction_pb2.ContractEvent]]:
        header_ts = header.timestamp_ms
        try:
            inv = transaction_pb2.ContractInvocation.FromString(tx.invocation)
            prp = transaction_pb2.ProposalResponsePayload.FromString(tx.response_payload)
        except DecodeError:
            raise _Reject(transaction_pb2.BAD_PAYLOAD) from None
        if (
            prp.proposal_hash != proposal_hash(tx.header, tx.invocation)
            or prp.response.status != 200
            or not inv.contract
        ):
            raise _Reject(transaction_pb2.BAD_PAYLOAD)
        name = inv.contract
        # Events travel to listeners with the contract and tx id they carry: one naming another
        # contract (or tx) would let the endorsers of this contract speak for that one.
        for ev in prp.events:
            if ev.contract != name or ev.tx_id != header.tx_id:
                raise _Reject(transaction_pb2.BAD_PAYLOAD)
        if name not in contracts:
            try:
                contracts[name] = self._policies.contract(name, self._state)
            except LedgerError:
                # This peer could not read its own state (LEDGER_CORRUPT, a damaged LevelDB
                # block): no code, as for the MVCC reads -- recording UNKNOWN_CONTRACT would
                # commit an outcome the other peers do not reach.
                raise
            except (RxError, ValueError, RecursionError):
                # A definition that cannot be read (bad stored policy, JSON nested too deep
                # for the decoder...) is not active; the outcome must stay deterministic and
                # the block committable (an escaping exception stops every peer on it).
                contracts[name] = None
        definition = contracts[name]
        if definition is None:
            raise _Reject(transaction_pb2.UNKNOWN_CONTRACT)
        if (
            prp.contract_version != definition.version
            or prp.contract_sequence != definition.sequence
        ):
            raise _Reject(transaction_pb2.CONTRACT_VERSION_MISMATCH)
        # Endorsements: every one must be valid (a bad one is an attack or a bug).
        signers: list[tuple[str, str]] = []
        payload = tx.response_payload
        verify = self._verifier.verify
        principal = cfg.endorser
        if len(tx.endorsements) > MAX_ENDORSEMENTS:
            raise _Reject(transaction_pb2.BAD_ENDORSEMENT)
        for e in tx.endorsements:
            try:
                signer = principal(e.endorser, header_ts)
            except RxError:
                raise _Reject(transaction_pb2.BAD_ENDORSEMENT) from None
            if not verify(e.endorser.cert_der, e.signature, Purpose.ENDORSEMENT, payload):
                raise _Reject(transaction_pb2.BAD_ENDORSEMENT)
            signers.append(signer)
        if not signers or not self._satisfies(definition.policy, signers):
            raise _Reject(transaction_pb2.ENDORSEMENT_POLICY_FAILURE)
        try:
            rwset = transaction_pb2.TxRwSet.FromString(prp.results)
        except DecodeError:
            raise _Reject(transaction_pb2.BAD_RWSET) from None
        self._check_rwset(cfg, name, rwset)
        self._check_mvcc(rwset, written)
        return rwset_writes(rwset), list(prp.events)

    def _satisfies(self, policy: Policy, signers: list[tuple[str, str]]) -> bool:
        """policy.evaluate, memoised per (policy, distinct signers): policies are pure."""
        key = (policy, frozenset(signers))
        hit = self._policy_cache.get(key)
        if hit is None:
            hit = policy.evaluate(signers)
            if len(self._policy_cache) >= POLICY_CACHE_SIZE:
                self._policy_cache.clear()
            self._policy_cache[key] = hit
        return hit

    def _check_rwset(self, cfg: ConfigState, contract: str, rwset: transaction_pb2.TxRwSet) -> None:
        limits = cfg.config.limits
        n_writes = 0
        names: set[str] = set()
        for ns in rwset.ns_rwsets:
            name = ns.namespace
            if not name or "\0" in name or name == SYSTEM_NS or name in names:
                raise _Reject(transaction_pb2.BAD_RWSET)
            names.add(name)
            if ns.writes and name != contract:
                raise _Reject(transaction_pb2.BAD_RWSET)
            # The simulator writes each key once (last write wins); a set writing a key twice
            # would leave the state (last write) and the key's history (read back from the
            # rwset) disagreeing about the value.
            if len({w.key for w in ns.writes}) != len(ns.writes):
                raise _Reject(transaction_pb2.BAD_RWSET)
            n_writes += len(ns.writes)
            if limits.max_value_bytes:
                for w in ns.writes:
                    if len(w.value) > limits.max_value_bytes:
                        raise _Reject(transaction_pb2.BAD_RWSET)
        if limits.max_write_set_keys and n_writes > limits.max_write_set_keys:
            raise _Reject(transaction_pb2.BAD_RWSET)

    def _check_mvcc(self, rwset: transaction_pb2.TxRwSet, written: dict[str, WrittenKeys]) -> None:
        get_version = self._state.get_version
        for ns in rwset.ns_rwsets:
            name = ns.namespace
            in_block = written.get(name)  # None: no earlier tx of the block wrote here
            for r in ns.reads:
                if in_block is not None and r.key in in_block:
                    raise _Reject(transaction_pb2.MVCC_READ_CONFLICT)
                seen = Version(r.version.block, r.version.tx) if r.HasField("version") else None
                if get_version(name, r.key) != seen:
                    raise _Reject(transaction_pb2.MVCC_READ_CONFLICT)
            for rq in ns.range_queries:
                self._check_range(name, rq, in_block)

    def _check_range(
        self, ns: str, rq: transaction_pb2.RangeQueryInfo, in_block: WrittenKeys | None
    ) -> None:
        start, end = rq.start_key, rq.end_key
        if rq.exhausted:
            if in_block is not None and in_block.any_in(start, end or None, inclusive_end=False):
                raise _Reject(transaction_pb2.PHANTOM_READ_CONFLICT)
            # one key more than was read is enough to see a phantom: never scan the rest
            now = self._state.range(ns, start, end, limit=len(rq.reads) + 1)
        else:
            # Stopped at a limit: only [start, last key returned] was observed.
            if not rq.reads:
                raise _Reject(transaction_pb2.BAD_RWSET)
            if in_block is not None and in_block.any_in(start, rq.reads[-1].key, inclusive_end=True):
                raise _Reject(transaction_pb2.PHANTOM_READ_CONFLICT)
            now = self._state.range(ns, start, end, limit=len(rq.reads))
        if len(now) != len(rq.reads):
            raise _Reject(transaction_pb2.PHANTOM_READ_CONFLICT)
        for (key, vv), r in zip(now, rq.reads, strict=True):
            if key != r.key or not r.HasField("version") or (
                vv.version.block != r.version.block or vv.version.tx != r.version.tx
            ):
                raise _Reject(transaction_pb2.PHANTOM_READ_CONFLICT)

    def _check_config_or_duplicate(
        self,
        cfg: ConfigState,
        tx: transaction_pb2.Transaction,
        env_bytes: bytes,
        alone: bool,
        duplicate: bool,
    ) -> tuple[ConfigState, bytes]:
        """:meth:`_check_config`, with DUPLICATE_TXID for a refused update whose id is taken.

        The orderers decide on a config update without a tx-id index (they have none), so a
        peer must not let a taken id refuse an update they adopt: a member holding an
        admin-signed update could otherwise wrap it in an envelope reusing the nonce of one
        of its own earlier (indexed) txs and split the peers from the orderers. An update the
        orderers adopt is VALID here whatever its id; its index entry then replaces the
        earlier tx's (same creator and nonce, so only that creator's own tx), as on replay. A
        resubmitted copy of an adopted update is out of sequence, so it stays DUPLICATE_TXID
        (unindexed) and never replaces the entry of the copy that was adopted."""
        try:
            return self._check_config(cfg, tx, env_bytes, alone)
        except _Reject:
            if duplicate:
                raise _Reject(transaction_pb2.DUPLICATE_TXID) from None
            raise

    def _check_config(
        self,
        cfg: ConfigState,
        tx: transaction_pb2.Transaction,
        env_bytes: bytes,
        alone: bool,
    ) -> tuple[ConfigState, bytes]:
        """A config update is valid exactly when the orderers adopt it (module docstring)."""
        if not alone:
            raise _Reject(transaction_pb2.BAD_CONFIG_UPDATE)
        try:
            new = validate_update(OrdererConfig(cfg.config, cfg.msp, 0), env_bytes, self._verifier)
            adopted = ConfigState(new, self._verifier)
        except (RxError, ValueError):
            raise _Reject(transaction_pb2.BAD_CONFIG_UPDATE) from None
        # validate_update parsed it: the bytes the admins signed are what the state stores
        return adopted, config_pb2.ConfigUpdate.FromString(tx.config_update).config

