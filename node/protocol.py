"""The consortium's protocol version: which validation and wire rules every node applies.

A change to what makes a block or a transaction valid (or how it is signed or hashed) must
reach every node at once, or nodes would disagree about the ledger. So such rules are tied
to ``ConsortiumConfig.protocol_version``, and an upgrade goes in two steps: operators
install, node by node and in any order, a release that implements the new version (and still
the old one); then the admins raise the version with a config update, and from that block on
every node applies the new rules together. A node whose release does not implement the
version in force does not guess: it stops with PROTOCOL_UNSUPPORTED (at start-up, or right
after committing the config block that raised it) and is upgraded and started again with its
data directory kept. Orderers refuse, at broadcast, a config update raising the version
beyond what they implement, and the leader one raising it before every voting orderer (in its
Raft messages) and every peer of the config (in its Deliver requests, relayed between the
orderers) has told that its release implements the new version (node.orderer.releases: the
refusal names the orderers and peers lacking it); no config update may lower it
(BAD_CONFIG_UPDATE, on every node).

Version 1: purpose-tagged signatures, the ordering leader's clock in the block header hash,
TX_TIMESTAMP_SKEW against it, and the rules on what a config update may put in force
(node/orderer/configrules.py: named policies, organisations, nodes, limits), which decide
whether an update is valid and so must not change within a version.

Version 2 (this release implements both): a nested policy (endorsement, lifecycle, config
update) is evaluated exactly (node.identity.policy). Version 1 kept 64 minimal signer sets per
level of a nested policy, so some endorsement and signature sets satisfying it were refused
(ENDORSEMENT_POLICY_FAILURE, BAD_CONFIG_UPDATE, LIFECYCLE_POLICY_FAILURE); from the block after
the config update raising the version, every node accepts them, and the named policies of a
config update are checked with the exact fewest signers (configrules). Blocks before that
block keep version 1's answers on replay: every policy is parsed with the version of the
config in force where it is evaluated (``parse_policy(..., version=)``). A policy is put in
force under version 2 only if its exact evaluation enumerates at most
``MAX_POLICY_CHOICES`` (1,000) choices of nested rules (``Policy.bounded``): a contract
definition's endorsement policy at lifecycle approve and commit (POLICY_TOO_COMPLEX,
node.peer.lifecycle), the named policies of a config update, including the update raising the
version (BAD_CONFIG_UPDATE, node.orderer.configrules); version 1 takes any. A definition
committed under version 1 with a policy over the bound keeps version 1's evaluation after the
raise (its answers unchanged, deterministic; defining it again with a bounded policy gives it
the exact one). An organisation a config update adds has
netgen's id shape and is not ``patient`` (node/orderer/configrules.py); version 1 took any id.

Version 2 also puts in force the membership rules (:data:`MEMBERSHIP_VERSION`): an
endorsement by a peer certificate counts only if it names a peer the config lists, or is the
certificate listed for one (a peer removed from ``config.peers`` stopped counting only once
its certificate was revoked; node.peer.validator), a contract's endorsement policy naming an
organisation an update has removed is met by the others (it no longer parsed: the contract
was UNKNOWN_CONTRACT; node.peer.policy_provider), an update may not revoke the
certificate of an orderer it keeps (node.orderer.configrules), and a lifecycle commit approved
by more than 20 organisations goes in when some of them satisfy the ``lifecycle`` policy
(version 1 evaluates every approver at once and refuses more than 20 distinct signers:
LIFECYCLE_POLICY_FAILURE; node.peer.lifecycle.approvals_satisfy), and an organisation id is
retired for good once an update removes its organisation: the update lists it in
``ConsortiumConfig.retired_org_ids``, which no later update shrinks, and no update adds an
organisation of a listed id (version 1 took a removed id back with another CA, whose holders
then inherited the old organisation's key grants, registrations, policy principals and history;
node.orderer.configrules.check_retired_org_ids).
With them, certificates are
judged with their issuers and at the time the blocks carry (node.identity.msp): a member
certificate counts only while its organisation's CA certificate is within its validity period
at the tx's timestamp and only if that CA may sign certificates (KeyUsage keyCertSign), and a
block's orderer signature only while the orderer's certificate is valid at the block header's
``timestamp_ms`` (an unstamped block: never; ``MSP.block_signers``). Version 1 ignored the
CA's validity and key usage and the orderer certificates' validity. The MSP of the config a
config update carries applies the rules of the version in force before the update, like the
rest of configrules; the update raising the version is refused while a CA certificate or an
orderer certificate of the new config is not usable at its time, or an orderer it keeps has its
certificate revoked (version 1 took that revocation), and from version 2 an update may not
install such a CA (node.orderer.configrules); netgen refuses a genesis at version 2 over such
certificates (configrules.check_genesis_certificates).
"""

from __future__ import annotations

from rxchain.v1 import config_pb2

from node.errors import RxError

PROTOCOL_UNSUPPORTED = "PROTOCOL_UNSUPPORTED"
SUPPORTED_VERSIONS = frozenset({1, 2})
MAX_PROTOCOL_VERSION = max(SUPPORTED_VERSIONS)  # what this release tells the orderers
MEMBERSHIP_VERSION = 2  # the first version with the membership rules (module docstring)


def protocol_version(config: config_pb2.ConsortiumConfig) -> int:
    """The protocol version a configuration puts in force (unset: 1)."""
    return config.protocol_version or 1


def unsupported(config: config_pb2.ConsortiumConfig) -> str | None:
    """Why this release cannot run ``config``'s protocol version, or None when it can."""
    version = protocol_version(config)
    if version in SUPPORTED_VERSIONS:
        return None
    return (f"the consortium runs protocol version {version}; this release implements "
            f"{sorted(SUPPORTED_VERSIONS)}: install a release implementing it and start the "
            "node again (keep its data directory)")


def require_supported(config: config_pb2.ConsortiumConfig, where: str) -> None:
    """RxError PROTOCOL_UNSUPPORTED unless this release implements ``config``'s version
    (``where``, e.g. the node's name or the block raising it, prefixes the message)."""
    why = unsupported(config)
    if why is not None:
        raise RxError(PROTOCOL_UNSUPPORTED, f"{where}: {why}")


__all__ = ["MAX_PROTOCOL_VERSION", "MEMBERSHIP_VERSION", "PROTOCOL_UNSUPPORTED", "SUPPORTED_VERSIONS",
           "protocol_version", "require_supported", "unsupported"]
