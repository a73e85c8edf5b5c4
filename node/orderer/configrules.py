"""What a config update may put in force: the rules on the content of the NEW configuration.

:func:`node.orderer.configtx.validate_update` checks who signed an update and how the orderer
set changes; :func:`check_new_config` checks that the configuration it carries can govern the
consortium afterwards. Both run on every orderer (broadcast, cut and apply) and every peer
(validator), so a refusal is BAD_CONFIG_UPDATE everywhere, with the same message.

Protocol version: these rules decide which updates are valid, so they are part of the
protocol (node/protocol.py). A change that makes an update valid that they refused, or the
reverse, applies only from the protocol version that introduces it (branch on
``protocol_version(old)``, the version in force before the update), or a node of a newer
release replaying an old ledger would judge its updates differently from the nodes that
committed them. Version 2 decides how few signers a nested named policy needs exactly
(node.identity.policy); version 1 by the minimal signer sets it kept, 64 per level.

Rules (each refusal names the rule and the offending item):

* **Organisations**: ids non-empty and unique (a duplicate id silently replaced the first
  organisation's CA in the MSP); a known kind (an unspecified kind may hold no role, so its
  members could sign nothing); a CA certificate that parses (public key included) and is a
  CA (BasicConstraints ca=true). From protocol version 2 (the update raising it included) an
  organisation the update adds has an id of at most 56 lower-case letters, digits or '-',
  starting and ending with a letter or digit (netgen's rule for the genesis), and not
  ``patient``: ids are parts of contract keys and HMAC inputs joined with '/', '|' and ':',
  and the prescription contract keeps a patient's key grant under the party ``patient`` --
  staff of an organisation of that id would hold every patient's grant. Ids already in force
  are kept whatever they are. From protocol version 2 (node.protocol.MEMBERSHIP_VERSION; the
  update raising it included) an organisation id is retired for good once an update removes
  its organisation: the update lists it in ``retired_org_ids`` (``rxchain config propose``
  does), no later update drops an id from that list, adds an organisation of a listed id, or
  lists an organisation it keeps (:func:`check_retired_org_ids`). Contracts grant record keys, registrations and policy
  principals to an organisation by its id, and audit trails attribute history to it: an
  organisation re-added under a removed one's id, with another CA, would hand whoever holds
  that CA the old organisation's ledger identity. Version 1 took such an update (kept); ids
  removed while it was in force are listed by hand, e.g. in the update raising the version.
  These two rules judge the update raising the version as they judge the ones after it (it is
  the first decision under version 2: a raise removing an organisation without retiring its id,
  or adding one called ``patient``, left the hole the rules close); no ledger holds such a raise
  (version 2 is new in the release that brought them).
  When the new config runs version 2 or later (node.protocol.MEMBERSHIP_VERSION), a CA
  certificate the update adds or changes must be within its validity period at the update's
  time and, when it carries KeyUsage, include keyCertSign: version 2 counts no member of a CA
  that is not (node.identity.msp), and an update made its only CA would lock its organisation
  out. The update raising the version checks every organisation's CA so, and every orderer's
  certificate for its validity at the update's time (from version 2 a block counts only the
  signatures of orderer certificates valid at its time): raised over a CA or an orderer
  certificate already expired, the consortium could lose every admin's signature or every
  block. Updates of version 1 that do not raise it are judged as before; no ledger holds one
  raising it (version 2 is new in the release introducing this rule, and the orderers refuse
  a raise until every orderer and peer runs a release implementing it), so no replay changes.
* **Nodes**: every orderer and peer belongs to an organisation of the new config, whose kind
  may hold the node's role (only insurers run orderers): an orderer whose organisation (and so
  CA) is gone cannot be reached over TLS nor checked. An orderer kept with its certificate while
  its organisation's CA changes must still validate, with the orderer role, against the new CA,
  as must the certificate of an orderer added or rotated in place (by the MSP rules of the
  version in force before the update: from version 2 its CA must be valid at the update's time
  too). From protocol version 2 on
  (node.protocol.MEMBERSHIP_VERSION, in force after the update) an orderer kept with its
  certificate may not have it revoked by the update: Raft admits a member by the certificate
  the config lists and peers take its block signatures, so the revocation would cut off
  nothing while the orderer still counted towards the quorum (and revoking several at once
  would bypass the one-orderer-per-update rule); remove the orderer or rotate its certificate
  in place, then revoke the old one. The update raising the version is judged so too: version
  1 took such a revocation, and raised over it, every later update keeping that orderer would
  be refused (over two of them, no update could remove or rotate one: each keeps the other).
  A consortium that runs peers keeps at least one (no peer: no endorsement, no lifecycle, no
  ledger for clients).
* **Named policies**: only the names below, each at most once (the lifecycle read the first
  of two entries, the validator the last); each parses against the NEW organisations (so it
  names none that is gone) and:

  ====================== ========== ================ =========================================
  policy                 required   may name role    must be satisfiable by
  ====================== ========== ================ =========================================
  config_update          yes        admin            the admins of the new config's orgs
  lifecycle              no [1]_    admin            the admins of the new config's orgs
  lifecycle_endorsement  no [2]_    peer             the orgs that run peers in the new config
  ====================== ========== ================ =========================================

  .. [1] absent: ``MAJORITY(admin)`` (:data:`DEFAULT_LIFECYCLE_POLICY`).
  .. [2] absent: a majority of the organisations running peers.

  An absent optional policy is checked as its default (:func:`default_policy_text`): the
  default must be satisfiable by the new config too.

  From protocol version 2 -- in force before the update, or put in force by it -- every named
  policy of the new config is bounded (:func:`_check_policy_choices`): its exact evaluation
  enumerates at most ``MAX_POLICY_CHOICES`` choices of nested rules
  (node.identity.policy.Policy.bounded): the costliest policies found within it take a few
  milliseconds for the worst signature or endorsement set. Version 1 takes any (its evaluation kept 64 signer sets per
  level); an update raising the version must bring its named policies within the bound, so
  every named policy in force under version 2 is evaluated exactly. No ledger holds such an
  update: version 2 is new in the release that brought the bound.

  "Satisfiable" means: by at most ``MAX_SIGNERS`` distinct signers (the most any policy
  check counts), and -- when two or more organisations are eligible -- never by one
  organisation alone. A governance policy a client role can sign (``h01.member``,
  ``MAJORITY(doctor)``), or that one organisation meets on its own (``ins01.admin``, or a
  lifecycle endorsement by ``h01.peer``, whose peer could then write any lifecycle approval or
  definition), would hand the admins' vote to someone else; one nobody can meet
  (``AND(h01.admin, h01.admin)``, an org without peers) would lock the consortium out of every
  later update (config_update) or contract change (lifecycle, lifecycle_endorsement).
* **Limits**: every batch parameter and limit is set (0 meant "default" in some components
  and "no bound" in others: ``max_clock_skew_ms`` 0 turned TX_TIMESTAMP_SKEW and the
  orderers' clock checks off) and within the bounds of ``LIMIT_BOUNDS``; a block of
  ``max(batch.max_bytes, max_envelope_bytes)`` envelope bytes fits in half a message (the rest
  for a validation code per tx, orderer signatures and framing), and the envelope carrying
  this update fits in half of the new ``max_envelope_bytes`` (room for the next update to
  grow; an update that no longer fits could never be submitted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cryptography import x509
from rxchain.v1 import config_pb2, identity_pb2

from node.crypto.tls import NODE_SEND_BOUND
from node.crypto.x509 import cert_info_der
from node.errors import RxError
from node.identity.msp import MSP, canonical_serial
from node.identity.policy import EXACT_POLICY_VERSION, MAX_SIGNERS, parse_policy, shown
from node.identity.roles import KIND_NAMES, ROLES_BY_KIND
from node.msgbound import MIN_MESSAGE_BYTES
from node.protocol import MEMBERSHIP_VERSION, protocol_version

BAD_CONFIG_UPDATE = "BAD_CONFIG_UPDATE"
ID_SHAPE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")  # ids and names netgen writes (DNS labels)

# name -> (required, the only role its principals may name)
NAMED_POLICIES: dict[str, tuple[bool, str]] = {
    "config_update": (True, "admin"),
    "lifecycle": (False, "admin"),
    "lifecycle_endorsement": (False, "peer"),
}

DEFAULT_LIFECYCLE_POLICY = "MAJORITY(admin)"


def default_policy_text(name: str, config: config_pb2.ConsortiumConfig) -> str:
    """The rule in force for the optional policy ``name`` when ``config`` has no entry for it:
    ``lifecycle`` MAJORITY(admin); ``lifecycle_endorsement`` a majority of the organisations
    running peers ("" when none does)."""
    if name == "lifecycle":
        return DEFAULT_LIFECYCLE_POLICY
    if name == "lifecycle_endorsement":
        peer_orgs = sorted({p.org for p in config.peers})
        if not peer_orgs:
            return ""
        return f"OutOf({len(peer_orgs) // 2 + 1}, {', '.join(f'{o}.peer' for o in peer_orgs)})"
    raise ValueError(f"policy {name!r} has no default")

# (group, field) -> inclusive bounds; 0 is refused everywhere (module docstring).
# max_message_bytes stays below gRPC's C-int option limit (2 GiB: a node could not even start
# its server); the rest are bounds no sane consortium reaches (a day of clock skew, a minute
# of batch timeout).
LIMIT_BOUNDS: dict[tuple[str, str], tuple[int, int]] = {
    ("batch", "max_tx_count"): (1, 100_000),
    ("batch", "max_bytes"): (1, 1 << 30),
    ("batch", "timeout_ms"): (1, 60_000),
    ("limits", "max_message_bytes"): (MIN_MESSAGE_BYTES, NODE_SEND_BOUND),
    ("limits", "max_envelope_bytes"): (1, 1 << 30),
    ("limits", "gas_limit"): (1, 1 << 40),
    ("limits", "max_write_set_keys"): (1, 1_000_000),
    ("limits", "max_value_bytes"): (1, 1 << 30),
    ("limits", "max_clock_skew_ms"): (1, 86_400_000),
}


def _bad(message: str) -> RxError:
    return RxError(BAD_CONFIG_UPDATE, message)


def check_new_config(
    old: config_pb2.ConsortiumConfig,
    new: config_pb2.ConsortiumConfig,
    envelope_bytes: int,
    new_msp: MSP,
    at_ms: int,
) -> None:
    """Raise RxError(BAD_CONFIG_UPDATE) unless ``new`` may replace ``old`` (module docstring).

    ``envelope_bytes`` is the size of the envelope carrying the update; ``new_msp`` the MSP
    of ``new`` (built by the caller once the organisations' CA certificates are checked here
    first: call :func:`check_organizations` before building it)."""
    # the update raising the version too (module docstring)
    if protocol_version(new) >= 2:
        _check_added_org_ids(old, new)
    if protocol_version(new) >= MEMBERSHIP_VERSION:
        check_retired_org_ids(old, new)
    if protocol_version(new) >= MEMBERSHIP_VERSION:
        _check_certificates_in_time(old, new, new_msp, at_ms)
    _check_nodes(old, new, new_msp, at_ms)
    _check_policy_choices(new, max(protocol_version(old), protocol_version(new)))
    _check_policies(new, protocol_version(old))
    _check_limits(new, envelope_bytes)


def check_genesis_content(config: config_pb2.ConsortiumConfig) -> None:
    """The rules a genesis configuration must meet as well (BAD_CONFIG_UPDATE): nodes of
    organisation kinds allowed their role, the named policies, the limits. The generator
    checks them before it writes anything (its CA certificates are its own)."""
    _check_node_kinds(config)
    _check_policy_choices(config, protocol_version(config))
    _check_policies(config, protocol_version(config))
    _check_limits(config, 0)


def check_organizations(new: config_pb2.ConsortiumConfig) -> None:
    """Organisation ids, kinds and CA certificates of ``new`` (BAD_CONFIG_UPDATE)."""
    seen: set[str] = set()
    for org in new.organizations:
        if not org.id:
            raise _bad("an organisation has an empty id")
        if org.id in seen:
            raise _bad(f"organisation id {org.id!r} appears twice")
        seen.add(org.id)
        if org.kind not in ROLES_BY_KIND:
            raise _bad(f"organisation {org.id}: unknown kind {int(org.kind)}")
        why = _ca_problem(org.ca_cert_der)
        if why:
            raise _bad(f"organisation {org.id}: CA certificate {why}")


ORG_ID_MAX = 56  # "orderer." / "records." + 56 = 64, the longest common name (netgen's rule too)
RESERVED_ORG_IDS = frozenset({"patient"})  # a party name of the contracts' key grants


def _check_added_org_ids(old: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig) -> None:
    """Protocol version 2: the ids of organisations ``new`` adds (module docstring)."""
    kept = {o.id for o in old.organizations}
    for org in new.organizations:
        if org.id in kept:
            continue
        if org.id in RESERVED_ORG_IDS:
            raise _bad(f"organisation id {org.id!r} is reserved (a party name of the contracts)")
        if len(org.id) > ORG_ID_MAX or not ID_SHAPE.fullmatch(org.id):
            raise _bad(f"organisation id {org.id[:64]!r} must be 1 to {ORG_ID_MAX} lower-case letters, "
                       "digits or '-', starting and ending with a letter or digit")


def check_retired_org_ids(old: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig) -> None:
    """Protocol version 2 (:data:`node.protocol.MEMBERSHIP_VERSION`): an organisation id is
    retired for good once an update removes its organisation (module docstring), else
    BAD_CONFIG_UPDATE naming the id. Ids ``old`` lists with an organisation of its own (only a
    version 1 update could put them so) are not judged until that organisation is removed: a
    refusal of every later update would lock the consortium out of its configuration."""
    new_ids = {o.id for o in new.organizations}
    old_ids = {o.id for o in old.organizations}
    was_retired = set(old.retired_org_ids)
    retired = set(new.retired_org_ids)
    for org in new.organizations:
        if org.id not in old_ids and org.id in was_retired:
            raise _bad(f"organisation id {org.id!r} is retired (retired_org_ids lists it: an update removed "
                       "its organisation): an id is never given to another organisation -- whoever holds its "
                       "CA would inherit the old one's key grants, registrations, policy principals and "
                       "history; choose another id")
    for org_id in old.retired_org_ids:
        if org_id not in retired:
            raise _bad(f"retired_org_ids drops {org_id[:64]!r}: a retired id stays listed for good")
    for org in old.organizations:
        if org.id not in new_ids and org.id not in retired:
            raise _bad(f"organisation {org.id[:64]!r} is removed: list its id in retired_org_ids (the id of a "
                       "removed organisation is retired for good; rxchain config propose adds it)")
    for org_id in new.retired_org_ids:
        if org_id in new_ids and org_id not in was_retired:
            raise _bad(f"retired_org_ids lists {org_id[:64]!r}, an organisation of the new config: an id is "
                       "retired by the update removing its organisation")


def _check_certificates_in_time(
    old: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig, new_msp: MSP, at_ms: int
) -> None:
    """Protocol version 2 in force after the update: the CA certificates it adds or changes
    (all of them, and every orderer's certificate, in the update raising the version) are
    usable at the update's time (module docstring)."""
    raising = protocol_version(old) < MEMBERSHIP_VERSION
    old_cas = {o.id: o.ca_cert_der for o in old.organizations}
    for org in new.organizations:
        if raising or old_cas.get(org.id) != org.ca_cert_der:
            _check_ca_in_time(new_msp, org.id, at_ms, " (rotate it first)")
    if raising:
        _check_orderers_in_time(new, at_ms, " (rotate it first)")


def _check_ca_in_time(msp: MSP, org_id: str, at_ms: int, fix: str) -> None:
    why = msp.ca_problem(org_id, at_ms)
    if why:
        raise _bad(f"organisation {org_id}: CA certificate {why}: from protocol version "
                   f"{MEMBERSHIP_VERSION} none of its members could sign{fix}")


def _check_orderers_in_time(new: config_pb2.ConsortiumConfig, at_ms: int, fix: str) -> None:
    for node in new.orderers:
        try:
            info = cert_info_der(node.cert_der)
        except ValueError:
            continue  # judged by the node rules
        if not info.not_before_ms <= at_ms <= info.not_after_ms:
            raise _bad(f"orderer {node.raft_id}: its certificate is not valid at {at_ms}: from protocol "
                       f"version {MEMBERSHIP_VERSION} its block signatures would not count{fix}")


def check_genesis_certificates(config: config_pb2.ConsortiumConfig, msp: MSP, at_ms: int) -> None:
    """The certificates of a genesis configuration at protocol version 2 or later
    (node.protocol.MEMBERSHIP_VERSION), at its time ``at_ms`` (BAD_CONFIG_UPDATE), as the update
    raising the version checks them: every organisation's CA certificate usable (within its
    validity period, keyCertSign when it carries KeyUsage) and every orderer's certificate within
    its validity period -- a genesis at version 2 over an expired CA counts none of its members,
    over expired orderer certificates no block. ``msp``: the MSP of ``config``. The generator
    checks them before it writes the genesis (it keeps certificates a home already holds);
    version 1 ignores both, as before."""
    if protocol_version(config) < MEMBERSHIP_VERSION:
        return
    for org in config.organizations:
        _check_ca_in_time(msp, org.id, at_ms, "")
    _check_orderers_in_time(config, at_ms, "")


def _ca_problem(der: bytes) -> str:
    if not der:
        return "is missing"
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.public_key()  # parsing is lazy: a mangled key raises on first use
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "is not a CA certificate (no BasicConstraints)"
    except Exception as exc:  # noqa: BLE001 - ValueError, InvalidVersion, a deprecation warning...
        return f"does not parse: {exc}"
    if not constraints.ca:
        return "is not a CA certificate (BasicConstraints ca=false)"
    return ""


def _check_node_kinds(new: config_pb2.ConsortiumConfig) -> None:
    kinds = {o.id: o.kind for o in new.organizations}
    nodes = [(o.name, o.org, "orderer") for o in new.orderers] + [(p.name, p.org, "peer") for p in new.peers]
    for name, org, role in nodes:
        if org not in kinds:
            raise _bad(f"{role} {name!r} belongs to {org!r}, not an organisation of the new config")
        if role not in ROLES_BY_KIND.get(kinds[org], ()):
            raise _bad(f"{role} {name!r}: a {KIND_NAMES.get(kinds[org], 'unknown')} organisation "
                       f"({org}) may not run {role}s")


def _check_nodes(
    old: config_pb2.ConsortiumConfig, new: config_pb2.ConsortiumConfig, new_msp: MSP, at_ms: int
) -> None:
    _check_node_kinds(new)
    if old.peers and not new.peers:
        raise _bad("the update removes every peer of the consortium")
    old_cas = {o.id: o.ca_cert_der for o in old.organizations}
    old_certs = {o.raft_id: o.cert_der for o in old.orderers}
    for node in new.orderers:
        org_ca = next(o.ca_cert_der for o in new.organizations if o.id == node.org)
        if old_certs.get(node.raft_id) != node.cert_der:  # added, or rotated in place
            _check_orderer_cert(new_msp, node, at_ms, "new certificate")
        elif old_cas.get(node.org) != org_ca:
            _check_orderer_cert(new_msp, node, at_ms, "certificate", f" under the new CA of {node.org}")
        elif protocol_version(new) >= MEMBERSHIP_VERSION:  # the update raising it too
            _check_not_revoked(new, node, raising=protocol_version(old) < MEMBERSHIP_VERSION)


def _check_orderer_cert(
    msp: MSP, node: config_pb2.OrdererNode, at_ms: int, label: str, context: str = ""
) -> None:
    """``node``'s certificate validates under ``msp`` (the NEW config's) with the orderer role,
    else BAD_CONFIG_UPDATE "orderer <id>: <label> invalid<context>: ..." (or "... has role
    ..."): an orderer that could not sign a block nor be reached over TLS would still count
    towards the quorum."""
    try:
        principal = msp.validate(identity_pb2.Identity(org=node.org, cert_der=node.cert_der), at_ms)
    except (RxError, ValueError) as exc:
        raise _bad(f"orderer {node.raft_id}: {label} invalid{context}: {exc}") from exc
    if principal.role != "orderer":
        raise _bad(f"orderer {node.raft_id}: {label}{context} has role {principal.role!r}, not orderer")


def _check_not_revoked(
    new: config_pb2.ConsortiumConfig, node: config_pb2.OrdererNode, raising: bool = False
) -> None:
    """BAD_CONFIG_UPDATE if ``new`` lists the serial of ``node``'s certificate, an orderer kept
    with it, among its organisation's revoked serials (module docstring): decided on the
    serial alone, whatever else holds of the certificate at the update's time. ``raising``: the
    update raises the protocol version (the message says what to do under version 1 first)."""
    org = next(o for o in new.organizations if o.id == node.org)
    revoked = {c for c in map(canonical_serial, org.revoked_serials) if c}
    try:
        serial = cert_info_der(node.cert_der).serial_hex
    except ValueError:
        return  # not judged here: the MSP refuses the certificate wherever it is used
    if serial in revoked:
        before = (f" (from protocol version {MEMBERSHIP_VERSION} no orderer kept in the set may be revoked: "
                  "remove or rotate each one so before raising it)") if raising else ""
        raise _bad(f"orderer {node.raft_id}: its certificate is revoked: remove the orderer or rotate "
                   "its certificate first (kept in the set it would still count towards the Raft "
                   f"quorum and sign blocks){before}")


def _check_policies(new: config_pb2.ConsortiumConfig, version: int) -> None:
    """The named policies of ``new``, judged by the rules of protocol ``version``."""
    org_ids = [o.id for o in new.organizations]
    rules: dict[str, str] = {}
    for entry in new.policies:
        if entry.name not in NAMED_POLICIES:
            raise _bad(f"unknown policy name {entry.name!r} (known: {sorted(NAMED_POLICIES)})")
        if entry.name in rules:
            raise _bad(f"policy {entry.name!r} appears twice")
        rules[entry.name] = entry.rule
    peer_orgs = {p.org for p in new.peers}
    for name, (required, role) in NAMED_POLICIES.items():
        if name not in rules:
            if required:
                raise _bad(f"the new config lacks the {name} policy")
            # the default rule is in force: it must be satisfiable too (MAJORITY(admin) of 41
            # organisations needs 21 signers, more than any check counts)
            default = default_policy_text(name, new)
            if default:
                try:
                    _check_policy(name, default, org_ids, role, version, *_eligible(new, role, peer_orgs))
                except RxError as exc:
                    raise _bad(f"{exc.message} (the default, as the new config sets no {name} "
                               "policy: set one)") from exc
            continue
        _check_policy(name, rules[name], org_ids, role, version, *_eligible(new, role, peer_orgs))


def _check_policy_choices(new: config_pb2.ConsortiumConfig, version: int) -> None:
    """From protocol ``version`` 2 (EXACT_POLICY_VERSION): every named policy of ``new`` is
    bounded (module docstring). One that does not parse, or an unknown name, is left to
    :func:`_check_policies`."""
    if version < EXACT_POLICY_VERSION:
        return
    org_ids = [o.id for o in new.organizations]
    for entry in new.policies:
        if entry.name not in NAMED_POLICIES:
            continue
        try:
            policy = parse_policy(entry.rule, org_ids, version)
        except RxError:
            continue
        try:
            policy.require_bounded()
        except RxError as exc:
            raise _bad(f"policy {entry.name}: {exc.message}") from exc


def _eligible(new: config_pb2.ConsortiumConfig, role: str, peer_orgs: set[str]) -> tuple[list[str], str]:
    """The organisations whose ``role`` may sign a policy naming it, and how to call them."""
    if role == "peer":
        return sorted(peer_orgs), "organisations running peers"
    return [o.id for o in new.organizations if role in ROLES_BY_KIND[o.kind]], "organisations"


def _check_policy(name: str, text: str, org_ids: Iterable[str], role: str, version: int, eligible: list[str],
                  who: str) -> None:
    try:
        policy = parse_policy(text, list(org_ids), version)
    except RxError as exc:
        raise _bad(f"policy {name}: {exc.message}") from exc
    for p in policy.principals():
        if p.role != role:
            raise _bad(f"policy {name} names {p}: it may name {role}s only (e.g. {p.org}.{role})")
    signers = [(org, role) for org in eligible]
    try:
        needed = policy.min_signers(signers)
    except RxError as exc:
        raise _bad(f"policy {name}: {exc.message}") from exc
    if needed is None:
        raise _bad(f"policy {name} {shown(text)} can never be satisfied by the {role}s of the new "
                   f"config's {who} {eligible}")
    if needed > MAX_SIGNERS:
        raise _bad(f"policy {name} {shown(text)} needs {needed} signers; at most {MAX_SIGNERS} are ever counted")
    if needed < 2 and len(eligible) >= 2:
        raise _bad(f"policy {name} {shown(text)} is satisfied by one organisation alone "
                   f"(the consortium has {len(eligible)} eligible {who})")


def _check_limits(new: config_pb2.ConsortiumConfig, envelope_bytes: int) -> None:
    for (group, field), (low, high) in LIMIT_BOUNDS.items():
        value = int(getattr(getattr(new, group), field))
        if not low <= value <= high:
            raise _bad(f"{group}.{field} = {value}, must be in {low}..{high}")
    lim = new.limits
    if lim.max_envelope_bytes > lim.max_message_bytes:
        raise _bad(f"limits.max_envelope_bytes {lim.max_envelope_bytes} exceeds "
                   f"limits.max_message_bytes {lim.max_message_bytes}")
    block = max(new.batch.max_bytes, lim.max_envelope_bytes)
    if 2 * block > lim.max_message_bytes:
        raise _bad(f"a block of up to {block} envelope bytes (max of batch.max_bytes and "
                   f"limits.max_envelope_bytes) must fit in half of limits.max_message_bytes "
                   f"{lim.max_message_bytes}")
    if 2 * envelope_bytes > lim.max_envelope_bytes:
        raise _bad(f"this update's envelope ({envelope_bytes} bytes) must fit in half of "
                   f"limits.max_envelope_bytes {lim.max_envelope_bytes}, or later updates could "
                   "not be submitted")
