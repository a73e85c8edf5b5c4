"""Contract lifecycle: the ``_lifecycle`` system namespace, executed natively by the peer.

Functions (called through ordinary proposals with ``contract = "_lifecycle"``):

* ``install(name, version, source)`` -- an organisation admin stores a contract package on
  the ledger (so every peer has the source): ``package/<code_hash>``. Returns the hash.
* ``approve(name, version, sequence, endorsement_policy, access, code_hash)`` -- an admin
  approves a definition for its own organisation: ``approval/<name>/<seq>/<org>``.
* ``commit(<same arguments>)`` -- makes the definition active (``definition/<name>``) when the
  approvals for exactly that definition satisfy the consortium's ``lifecycle`` policy
  (``MAJORITY(admin)`` by default) and ``sequence`` is the current sequence + 1.
* queries: ``definition(name)``, ``approvals(name, sequence)``, ``package(code_hash)``.

Install refuses a package the sandbox would refuse to compile (the same check, instrument
and compile a worker runs: CONTRACT_REJECTED naming the line). Approve and commit refuse an
endorsement policy (:func:`check_endorsement_policy`, against the config in force) that
names anyone but peers (``h01.member``, ``h01.doctor``, ``MAJORITY(admin)``: the validator
counts every valid member's signature as an endorsement, so such a policy would let one
client endorse its own writes) -> BAD_POLICY, or that the consortium's peers cannot satisfy
-> UNSATISFIABLE_POLICY (the contract could never run), or -- from protocol version 2
(node.identity.policy.EXACT_POLICY_VERSION) -- whose exact evaluation may enumerate more than
``MAX_POLICY_CHOICES`` choices of nested rules -> POLICY_TOO_COMPLEX (every peer would pay
them for each tx a client presents; a definition committed before, under version 1, keeps
version 1's evaluation: node.identity.policy).

Every state access goes through the :class:`TxSimulator`, so lifecycle writes travel in
the normal read/write set, are endorsed, ordered and MVCC-validated like any other tx,
and all peers agree. Native functions are deterministic: no clock, no randomness.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rxchain.v1 import config_pb2

from node.crypto.canonical import canonical_json
from node.errors import RxError
from node.identity.msp import Principal
from node.identity.policy import EXACT_POLICY_VERSION, MAX_SIGNERS, Policy, parse_policy, shown
from node.orderer.configrules import default_policy_text
from node.peer.definitions import (
    LIFECYCLE_NS,
    ContractDefinition,
    check_code_hash,
    check_contract_name,
    check_sequence,
    check_version,
)
from node.peer.simulator import TxSimulator
from node.protocol import MEMBERSHIP_VERSION, protocol_version
from node.sandbox.instrument import compile_contract
from node.sandbox.package import ContractPackage, code_hash

MAX_SOURCE_BYTES = 256 * 1024
SourceChecker = Callable[[str, str, str], None]

ADMIN_FUNCTIONS = frozenset({"install", "approve", "commit"})
QUERY_FUNCTIONS = frozenset({"definition", "approvals", "package"})


def package_hash(name: str, version: str, source: str) -> str:
    """The code hash of a package (``node.sandbox.package``'s canonical encoding)."""
    return code_hash(name, version, source)


ENDORSER_ROLE = "peer"  # endorsements are signed by peers


def default_source_check(name: str, version: str, source: str) -> None:
    """Package well-formedness, then what a sandbox worker does on first use -- static
    checks, instrumentation and compilation -- so that a package installs exactly when it
    can run (raise with ``.reason``). Costs ~0.1 s per 50 KB of source, once per install."""
    package = ContractPackage(name, version, source)
    compile_contract(package.source, package.code_hash)


def check_endorsement_policy(text: str, config: config_pb2.ConsortiumConfig) -> Policy:
    """The endorsement policy of a definition, checked against ``config``.

    BAD_POLICY: it does not parse, or names a principal whose role is not ``peer`` (the
    validator accepts any valid member's signature as an endorsement, so ``h01.member`` or
    ``h01.doctor`` would let a client endorse its own writes). UNSATISFIABLE_POLICY: all
    the consortium's peers together cannot satisfy it (an org without a peer, the same
    principal required twice...), when the orgs it names that run peers are few enough
    for one tx to carry (``MAX_SIGNERS``). POLICY_TOO_COMPLEX: from protocol version 2, more
    than ``MAX_POLICY_CHOICES`` choices for its exact evaluation (:meth:`Policy.bounded`).
    """
    org_ids = [o.id for o in config.organizations]
    try:
        policy = parse_policy(text, org_ids, protocol_version(config))
    except RxError as exc:
        raise ContractFailure(exc.reason, exc.message) from None
    for p in policy.principals():
        if p.role != ENDORSER_ROLE:
            raise ContractFailure(
                "BAD_POLICY",
                f"endorsement policy names {p}: endorsements are signed by peers, "
                f"use {p.org}.{ENDORSER_ROLE}",
            )
    if policy.version >= EXACT_POLICY_VERSION:
        try:
            policy.require_bounded()
        except RxError as exc:
            raise ContractFailure(exc.reason, f"endorsement policy {exc.message}") from None
    with_peer = {p.org for p in config.peers}
    signers = sorted({(p.org, ENDORSER_ROLE) for p in policy.principals() if p.org in with_peer})
    if len(signers) <= MAX_SIGNERS and not policy.evaluate(signers):
        raise ContractFailure(
            "UNSATISFIABLE_POLICY",
            f"endorsement policy {shown(text)} cannot be satisfied by the consortium's peers "
            f"(organisations running peers: {sorted(with_peer)})",
        )
    return policy


def package_key(code_hash: str) -> str:
    """State key of a stored package."""
    return f"package/{code_hash}"


def definition_key(name: str) -> str:
    """State key of a committed definition."""
    return f"definition/{name}"


def approval_prefix(name: str, sequence: int) -> str:
    """State key prefix of the approvals of (name, sequence)."""
    return f"approval/{name}/{sequence:020d}/"


@dataclass(frozen=True)
class NativeResult:
    """Outcome of a native call: status 200 with payload, or 400 with a reason."""

    status: int
    reason: str
    message: str
    payload: bytes


class ContractFailure(Exception):
    """A lifecycle call refused for a reason the caller can fix (status 400)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def lifecycle_policy(config: config_pb2.ConsortiumConfig) -> Policy:
    """The governance policy approving definitions (config policy ``lifecycle``)."""
    text = next((p.rule for p in config.policies if p.name == "lifecycle"), "")
    return parse_policy(text or default_policy_text("lifecycle", config), [o.id for o in config.organizations],
                        protocol_version(config))


def approvals_satisfy(policy: Policy, approvers: Sequence[str], version: int) -> bool:
    """Whether the admins of ``approvers`` (organisation ids, each once) satisfy ``policy``,
    by the rules of protocol ``version`` (the config in force: the answer decides which
    definitions are committed, node/protocol.py).

    :meth:`Policy.evaluate` refuses any set of more than ``MAX_SIGNERS`` distinct signers (what
    one tx may carry), but approvals are records in state, not signatures on a tx: in a
    consortium of more organisations, every organisation approving an upgrade made its commit
    LIFECYCLE_POLICY_FAILURE for good. From protocol version 2 on
    (node.protocol.MEMBERSHIP_VERSION), with more approvers than that, the question is whether
    some of them satisfy it (:meth:`Policy.min_signers`; a ``lifecycle`` policy in force never
    needs more than ``MAX_SIGNERS``, node.orderer.configrules); version 1 keeps refusing them
    (peers of the previous release endorse so, and their commits are on the ledger)."""
    signers = [(org, "admin") for org in approvers]
    if len(signers) <= MAX_SIGNERS or version < MEMBERSHIP_VERSION:
        return policy.evaluate(signers)
    try:
        needed = policy.min_signers(signers)
    except RxError:  # nested over too many approvers: configrules refuses such a policy in force
        return False
    return needed is not None and needed <= MAX_SIGNERS


def lifecycle_endorsement_policy(config: config_pb2.ConsortiumConfig) -> Policy:
    """Who must endorse ``_lifecycle`` txs: a majority of the organisations running peers.

    A consortium may override it with a policy named ``lifecycle_endorsement``.
    """
    org_ids = [o.id for o in config.organizations]
    text = next((p.rule for p in config.policies if p.name == "lifecycle_endorsement"), "")
    if not text:
        text = default_policy_text("lifecycle_endorsement", config)
        if not text:
            raise RxError("BAD_CONFIG", "the consortium has no peers")
    return parse_policy(text, org_ids, protocol_version(config))


class Lifecycle:
    """Native implementation of the ``_lifecycle`` functions."""

    def __init__(self, check_source: SourceChecker = default_source_check) -> None:
        self._check_source = check_source

    def allows(self, function: str, caller: Principal) -> bool:
        """Access rule of the system namespace: admins change, every member queries."""
        if function in ADMIN_FUNCTIONS:
            return caller.role == "admin"
        return function in QUERY_FUNCTIONS

    def invoke(
        self,
        sim: TxSimulator,
        function: str,
        args: Mapping[str, Any],
        caller: Principal,
        config: config_pb2.ConsortiumConfig,
    ) -> NativeResult:
        """Run one lifecycle function against ``sim``; refusals become status 400."""
        try:
            if function == "install":
                payload = self._install(sim, args)
            elif function == "approve":
                payload = self._approve(sim, args, caller, config)
            elif function == "commit":
                payload = self._commit(sim, args, config)
            elif function == "definition":
                payload = self._definition(sim, args)
            elif function == "approvals":
                payload = self._approvals(sim, args)
            elif function == "package":
                payload = self._package(sim, args)
            else:
                raise ContractFailure("UNKNOWN_FUNCTION", f"_lifecycle has no function {function!r}")
        except ContractFailure as exc:
            return NativeResult(400, exc.reason, exc.message, b"")
        except RxError as exc:
            return NativeResult(400, exc.reason, exc.message, b"")
        return NativeResult(200, "", "", canonical_json(payload))

    # ---------------------------------------------------------------- functions

    def _install(self, sim: TxSimulator, args: Mapping[str, Any]) -> dict[str, Any]:
        name = check_contract_name(args.get("name"))
        version = check_version(args.get("version"))
        source = args.get("source")
        if not isinstance(source, str) or not source:
            raise ContractFailure("BAD_ARGUMENTS", "source must be a non-empty string")
        try:
            size = len(source.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" is valid JSON)
            raise ContractFailure("BAD_ARGUMENTS", "source is not valid UTF-8 text") from None
        if size > MAX_SOURCE_BYTES:
            raise ContractFailure("SIZE_LIMIT", f"source exceeds {MAX_SOURCE_BYTES} bytes")
        digest = package_hash(name, version, source)
        key = package_key(digest)
        record = canonical_json({"name": name, "version": version, "source": source})
        # Installing a stored package again writes nothing: a rewrite would give the record
        # a new version and fail (MVCC) every approve/commit in flight that read it. Packages
        # are never deleted, so the unrecorded peek is safe.
        if sim.peek(LIFECYCLE_NS, key) != record:
            # The write before the check: a record over the state's value limit is refused
            # (SIZE_LIMIT) before the source is compiled (up to ~2.5 s of CPU for 256 KiB);
            # a refusal below discards it with the rest of the simulation.
            sim.put(LIFECYCLE_NS, key, record)
        try:
            self._check_source(name, version, source)
        except Exception as exc:
            reason = getattr(exc, "reason", "CONTRACT_REJECTED")
            raise ContractFailure(str(reason), str(exc)) from exc
        return {"code_hash": digest, "name": name, "version": version}

    def _approve(
        self,
        sim: TxSimulator,
        args: Mapping[str, Any],
        caller: Principal,
        config: config_pb2.ConsortiumConfig,
    ) -> dict[str, Any]:
        definition = ContractDefinition.from_args(args)
        check_endorsement_policy(definition.endorsement_policy, config)
        package = load_package(sim, definition.code_hash)
        if package is None:
            raise ContractFailure("UNKNOWN_PACKAGE", f"no package {definition.code_hash} installed")
        if package.name != definition.name or package.version != definition.version:
            raise ContractFailure(
                "PACKAGE_MISMATCH",
                f"package {definition.code_hash} is {package.name} {package.version}",
            )
        current = load_definition(sim, definition.name)
        current_seq = 0 if current is None else current.sequence
        if definition.sequence != current_seq + 1:
            raise ContractFailure(
                "BAD_SEQUENCE",
                f"{definition.name}: sequence must be {current_seq + 1}, got {definition.sequence}",
            )
        key = approval_prefix(definition.name, definition.sequence) + caller.org
        sim.put(LIFECYCLE_NS, key, definition.to_json())
        return {"approved": definition.name, "sequence": definition.sequence, "org": caller.org}

    def _commit(
        self, sim: TxSimulator, args: Mapping[str, Any], config: config_pb2.ConsortiumConfig
    ) -> dict[str, Any]:
        definition = ContractDefinition.from_args(args)
        current = load_definition(sim, definition.name)
        current_seq = 0 if current is None else current.sequence
        if definition.sequence != current_seq + 1:
            raise ContractFailure(
                "BAD_SEQUENCE",
                f"{definition.name}: sequence must be {current_seq + 1}, got {definition.sequence}",
            )
        if load_package(sim, definition.code_hash) is None:
            raise ContractFailure("UNKNOWN_PACKAGE", f"no package {definition.code_hash} installed")
        # Again under the config in force now: it may have changed since the approvals.
        check_endorsement_policy(definition.endorsement_policy, config)
        wanted = definition.to_json()
        prefix = approval_prefix(definition.name, definition.sequence)
        approvers = [
            key[len(prefix):]
            for key, value in sim.range(LIFECYCLE_NS, prefix, prefix + "\x7f", 0)
            if value == wanted
        ]
        policy = lifecycle_policy(config)
        if not approvals_satisfy(policy, approvers, protocol_version(config)):
            raise ContractFailure(
                "LIFECYCLE_POLICY_FAILURE",
                f"{definition.name} seq {definition.sequence}: approvals by {approvers} "
                f"do not satisfy {policy.text}",
            )
        sim.put(LIFECYCLE_NS, definition_key(definition.name), wanted)
        return {"committed": definition.name, "sequence": definition.sequence,
                "approvals": sorted(approvers)}

    def _definition(self, sim: TxSimulator, args: Mapping[str, Any]) -> dict[str, Any]:
        name = check_contract_name(args.get("name"))
        current = load_definition(sim, name)
        if current is None:
            raise ContractFailure("UNKNOWN_CONTRACT", f"no contract {name!r} is committed")
        raw: dict[str, Any] = json.loads(current.to_json())
        return raw

    def _approvals(self, sim: TxSimulator, args: Mapping[str, Any]) -> dict[str, Any]:
        name = check_contract_name(args.get("name"))
        seq = check_sequence(args.get("sequence"))
        prefix = approval_prefix(name, seq)
        rows = sim.range(LIFECYCLE_NS, prefix, prefix + "\x7f", 0)
        return {"approvals": {key[len(prefix):]: json.loads(value) for key, value in rows}}

    def _package(self, sim: TxSimulator, args: Mapping[str, Any]) -> dict[str, Any]:
        code_hash = check_code_hash(args.get("code_hash"))
        pkg = load_package(sim, code_hash)
        if pkg is None:
            raise ContractFailure("UNKNOWN_PACKAGE", f"no package {code_hash}")
        return {"name": pkg.name, "version": pkg.version, "code_hash": code_hash,
                "source": pkg.source}


@dataclass(frozen=True)
class Package:
    """A stored contract package."""

    name: str
    version: str
    source: str


def _raw(reader: Any, key: str) -> bytes | None:
    value = reader.get(LIFECYCLE_NS, key)
    if value is None or isinstance(value, bytes):
        return value
    raw: bytes = value.value  # a VersionedValue from a StateReader
    return raw


def load_package(reader: Any, code_hash: str) -> Package | None:
    """The package stored under ``code_hash`` (simulator or state reader)."""
    raw = _raw(reader, package_key(code_hash))
    if raw is None:
        return None
    doc = json.loads(raw)
    return Package(str(doc["name"]), str(doc["version"]), str(doc["source"]))


def load_definition(reader: Any, name: str) -> ContractDefinition | None:
    """The committed definition of ``name`` (simulator or state reader)."""
    raw = _raw(reader, definition_key(name))
    return None if raw is None else ContractDefinition.from_json(raw)
