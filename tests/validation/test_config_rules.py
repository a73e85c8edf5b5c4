"""What a config update may put in force (node.orderer.configrules), on orderers and peers alike.

Every refusal below was adopted before the rules, by the orderers (ConfigTracker) and the peers
(validator), unless marked "already refused" (kept as regressions). Each case is checked on
the three paths that judge an update: the leader's check before cutting
(``ConfigTracker.validate_now``, the broadcast rules at the tx's timestamp), the orderers'
apply path (``ConfigTracker.block_config``) and the peer's validator (code BAD_CONFIG_UPDATE,
config unchanged).

The consortium (bench.txbuild.SMALL_CONSORTIUM): h01, p01, ins01 run peers; ins01 and ins02
run orderers (raft ids 1 and 2); config_update and lifecycle are MAJORITY(admin) (3 of 4).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

import pytest
from rxchain.v1 import config_pb2, identity_pb2
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import TxKit
from client import configtool
from client.errors import RxClientError
from node.crypto import signing
from node.crypto import x509 as rx509
from node.crypto.signing import Verifier
from node.crypto.x509 import cert_info_der
from node.errors import RxError
from node.identity.msp import MSP
from node.identity.policy import MAX_NESTED_CHECK, MAX_SIGNERS, parse_policy
from node.orderer.configrules import check_genesis_content, check_new_config
from node.orderer.configtx import OrdererConfig, validate_update
from node.protocol import MEMBERSHIP_VERSION
from tests.validation.conftest import Net, Peer, config_block, config_tracker, next_config

Edit = Callable[[config_pb2.ConsortiumConfig], None]


def _policy(name: str, rule: str) -> Edit:
    def edit(c: config_pb2.ConsortiumConfig) -> None:
        entry = next((p for p in c.policies if p.name == name), None)
        if entry is None:
            entry = c.policies.add(name=name)
        entry.rule = rule
    return edit


def _drop_policy(name: str) -> Edit:
    def edit(c: config_pb2.ConsortiumConfig) -> None:
        kept = [p for p in c.policies if p.name != name]
        del c.policies[:]
        c.policies.extend(kept)
    return edit


def _org(c: config_pb2.ConsortiumConfig, org_id: str) -> config_pb2.Organization:
    return next(o for o in c.organizations if o.id == org_id)


def _drop_org(org_id: str) -> Edit:
    def edit(c: config_pb2.ConsortiumConfig) -> None:
        kept = [o for o in c.organizations if o.id != org_id]
        del c.organizations[:]
        c.organizations.extend(kept)
    return edit


def _new_ca_der(org: str) -> bytes:
    key = signing.generate_key()
    return rx509.cert_to_der(rx509.make_ca(org, key, dt.datetime.now(dt.UTC)))


def _set(group: str, field: str, value: int) -> Edit:
    def edit(c: config_pb2.ConsortiumConfig) -> None:
        setattr(getattr(c, group), field, value)
    return edit


def _both(*edits: Edit) -> Edit:
    def edit(c: config_pb2.ConsortiumConfig) -> None:
        for e in edits:
            e(c)
    return edit


def _drop_peers_of(c: config_pb2.ConsortiumConfig, org: str) -> None:
    kept = [p for p in c.peers if p.org != org]
    del c.peers[:]
    c.peers.extend(kept)


def _policy_twice(c: config_pb2.ConsortiumConfig) -> None:
    c.policies.add(name="lifecycle", rule="OutOf(2, h01.admin, p01.admin)")


def _no_peers(c: config_pb2.ConsortiumConfig) -> None:
    del c.peers[:]


def _duplicate_org(c: config_pb2.ConsortiumConfig) -> None:
    copy = c.organizations.add()
    copy.CopyFrom(_org(c, "h01"))
    copy.name = "an impostor"
    copy.ca_cert_der = _new_ca_der("h01")


def _peer_of_unknown_org(c: config_pb2.ConsortiumConfig) -> None:
    c.peers[0].org = "zz01"


def _ca_rotated_under_kept_orderer(c: config_pb2.ConsortiumConfig) -> None:
    _org(c, "ins02").ca_cert_der = _new_ca_der("ins02")


def _kept_orderer_revoked(c: config_pb2.ConsortiumConfig) -> None:
    """ins02's orderer stays in the set with its certificate revoked: Raft admits it by its
    certificate and peers take its block signatures (both by the bytes the config lists), so
    the revocation cut off nothing, and revoking two of three orderers at once bypassed the
    one-change-per-update rule."""
    cert = next(o.cert_der for o in c.orderers if o.org == "ins02")
    _org(c, "ins02").revoked_serials.append(cert_info_der(cert).serial_hex.upper())  # any hex form


def _end_entity_as_ca(c: config_pb2.ConsortiumConfig) -> None:
    _org(c, "p01").ca_cert_der = next(p.cert_der for p in c.peers if p.org == "p01")


def _orderer_added_in_a_hospital(c: config_pb2.ConsortiumConfig) -> None:
    c.orderers.add(raft_id=3, org="h01", name="orderer.h01", host="127.0.0.1", port=1,
                   cert_der=next(p.cert_der for p in c.peers if p.org == "h01"))


def _orderer_added_with_a_peer_cert(c: config_pb2.ConsortiumConfig) -> None:
    c.orderers.add(raft_id=3, org="ins01", name="orderer2.ins01", host="127.0.0.1", port=1,
                   cert_der=next(p.cert_der for p in c.peers if p.org == "ins01"))


REFUSED: list[tuple[str, Edit, str]] = [
    # --- named policies: roles
    ("lifecycle_endorsement names a client role", _policy("lifecycle_endorsement", "OutOf(2, h01.doctor, p01.peer, ins01.peer)"),
     "may name peers only"),
    ("lifecycle_endorsement names members", _policy("lifecycle_endorsement", "MAJORITY(member)"), "may name peers only"),
    ("lifecycle names members", _policy("lifecycle", "MAJORITY(member)"), "may name admins only"),
    ("lifecycle names peers", _policy("lifecycle", "OutOf(2, h01.peer, p01.peer, ins01.peer)"), "may name admins only"),
    ("config_update names a client role", _policy("config_update", "MAJORITY(doctor)"), "may name admins only"),
    # --- named policies: one organisation alone
    ("lifecycle_endorsement by one org", _policy("lifecycle_endorsement", "h01.peer"), "one organisation alone"),
    ("lifecycle_endorsement by any one peer org", _policy("lifecycle_endorsement", "OR(h01.peer, p01.peer)"),
     "one organisation alone"),
    ("lifecycle by one org", _policy("lifecycle", "ins01.admin"), "one organisation alone"),
    ("config_update by any one org", _policy("config_update", "OutOf(1, h01.admin, ins02.admin)"),
     "one organisation alone"),
    # --- named policies: nobody could ever satisfy them (lock-out)
    ("config_update needs one admin twice", _policy("config_update", "AND(h01.admin, h01.admin)"), "never be satisfied"),
    ("lifecycle_endorsement by an org without peers", _policy("lifecycle_endorsement", "AND(h01.peer, ins02.peer)"),
     "never be satisfied"),
    ("lifecycle needs an admin twice", _policy("lifecycle", "OutOf(2, h01.admin, AND(h01.admin, p01.admin))"),
     "never be satisfied"),
    # --- named policies: names, parse, organisations
    ("a policy names an unknown organisation", _policy("lifecycle", "AND(h01.admin, zz01.admin)"),
     "unknown organisation 'zz01'"),
    ("a policy names an organisation the update removes",
     _both(_policy("lifecycle_endorsement", "OutOf(2, h01.peer, p01.peer, ins01.peer)"), _drop_org("p01"),
           lambda c: _drop_peers_of(c, "p01")),
     "unknown organisation 'p01'"),
    ("a policy does not parse", _policy("lifecycle", "MAJORITY("), "policy lifecycle"),
    ("a misspelt policy name", _policy("lifecycle_endorsment", "MAJORITY(peer)"), "unknown policy name"),
    ("a policy twice", _policy_twice, "appears twice"),
    ("config_update removed (already refused)", _drop_policy("config_update"), "config_update policy"),
    # --- organisations and nodes
    ("every peer removed", _no_peers, "removes every peer"),
    ("the org of a remaining orderer removed", _drop_org("ins02"), "not an organisation of the new config"),
    ("a peer of an unknown org", _peer_of_unknown_org, "not an organisation of the new config"),
    ("an orderer added in a hospital", _orderer_added_in_a_hospital, "may not run orderers"),
    ("an orderer added with a peer's certificate", _orderer_added_with_a_peer_cert, "has role 'peer', not orderer"),
    ("the CA of a kept orderer replaced", _ca_rotated_under_kept_orderer, "invalid under the new CA of ins02"),
    ("a duplicate organisation id", _duplicate_org, "organisation id 'h01' appears twice"),
    ("an organisation of no kind", lambda c: setattr(_org(c, "p01"), "kind", config_pb2.ORG_KIND_UNSPECIFIED),
     "unknown kind"),
    ("an organisation without a CA (already refused)", lambda c: setattr(_org(c, "p01"), "ca_cert_der", b""),
     "CA certificate is missing"),
    ("a CA certificate that does not parse (already refused)",
     lambda c: setattr(_org(c, "p01"), "ca_cert_der", b"\x30\x03\x02\x01\x00"), "CA certificate does not parse"),
    ("an end-entity certificate as CA", _end_entity_as_ca, "not a CA certificate"),
    ("another consortium id (already refused)", lambda c: setattr(c, "consortium_id", "other"), "consortium id"),
    # --- limits
    ("batch.max_tx_count 0", _set("batch", "max_tx_count", 0), "batch.max_tx_count = 0"),
    ("batch.timeout_ms 0", _set("batch", "timeout_ms", 0), "batch.timeout_ms = 0"),
    ("max_clock_skew_ms 0 (no bound)", _set("limits", "max_clock_skew_ms", 0), "limits.max_clock_skew_ms = 0"),
    ("max_clock_skew_ms three weeks", _set("limits", "max_clock_skew_ms", 21 * 86_400_000), "max_clock_skew_ms"),
    ("gas_limit 0", _set("limits", "gas_limit", 0), "limits.gas_limit = 0"),
    ("max_message_bytes beyond gRPC", _set("limits", "max_message_bytes", (1 << 32) - 1), "limits.max_message_bytes"),
    ("max_message_bytes below max_envelope_bytes", _set("limits", "max_message_bytes", 512 << 10),
     "exceeds limits.max_message_bytes"),
    ("blocks larger than half a message", _set("batch", "max_bytes", 6 << 20), "half of limits.max_message_bytes"),
    ("an envelope limit the next update cannot fit", _set("limits", "max_envelope_bytes", 4096),
     "later updates could not be submitted"),
]



@pytest.mark.parametrize(("edit", "fragment"), [pytest.param(e, f, id=name) for name, e, f in REFUSED])
def test_update_is_refused_by_orderers_and_peers_alike(peer: Peer, net: Net, edit: Edit, fragment: str) -> None:
    new = next_config(peer)
    edit(new)
    env, block = config_block(peer, net, new)
    tracker = config_tracker(peer)
    with pytest.raises(RxError) as exc:
        tracker.validate_now(env)
    assert exc.value.reason == "BAD_CONFIG_UPDATE"
    assert fragment in exc.value.message, exc.value.message
    assert tracker.block_config(block) is None
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.BAD_CONFIG_UPDATE]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 0
    assert peer.committer.validator.config.config.sequence == 0


def test_an_update_revoking_a_kept_orderers_certificate_is_refused_from_protocol_version_2(
    peer: Peer, net: Net
) -> None:
    """Under version 1 (blocks before the raise keep its answer on replay) the update is
    adopted; once version 2 is in force it is refused on the three paths alike."""
    v1 = next_config(peer)
    _kept_orderer_revoked(v1)
    env, block = config_block(peer, net, v1)
    assert config_tracker(peer).block_config(block) is not None
    raised = next_config(peer, MEMBERSHIP_VERSION)
    _, raise_block = config_block(peer, net, raised)
    assert list(peer.committer.commit_block(raise_block).validated.codes) == [tx_pb.VALID]
    new = next_config(peer)
    _kept_orderer_revoked(new)
    env, block = config_block(peer, net, new)
    tracker = config_tracker(peer)
    with pytest.raises(RxError) as exc:
        tracker.validate_now(env)
    assert exc.value.reason == "BAD_CONFIG_UPDATE"
    assert "certificate is revoked: remove the orderer or rotate" in exc.value.message, exc.value.message
    assert tracker.block_config(block) is None
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.BAD_CONFIG_UPDATE]
    assert peer.committer.validator.config.config.sequence == 1



def test_the_update_raising_the_version_is_refused_while_a_kept_orderer_is_revoked(peer: Peer, net: Net) -> None:
    """Version 1 adopts an update revoking a kept orderer's certificate (blocks before the raise keep
    that answer). Raised over it, version 2 refused every later update keeping that orderer ("remove
    the orderer or rotate its certificate first"; with two such orderers no update could do either:
    each keeps the other): the raise itself is refused so, on the three paths alike, and goes in
    once the revoked orderer leaves the set (here in the raising update itself)."""
    revoking = next_config(peer)
    _kept_orderer_revoked(revoking)
    _, block = config_block(peer, net, revoking)
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]  # version 1
    raised = next_config(peer, MEMBERSHIP_VERSION)
    env, block = config_block(peer, net, raised)
    tracker = config_tracker(peer)
    with pytest.raises(RxError) as exc:
        tracker.validate_now(env)
    assert exc.value.reason == "BAD_CONFIG_UPDATE"
    assert "orderer 2: its certificate is revoked" in exc.value.message, exc.value.message
    assert "before raising it" in exc.value.message, exc.value.message
    assert tracker.block_config(block) is None
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.BAD_CONFIG_UPDATE]
    assert peer.committer.validator.config.config.sequence == 1  # still the revoking update, version 1
    # the revoked orderer removed by the raise: nothing kept is revoked, the raise goes in
    raised = next_config(peer, MEMBERSHIP_VERSION)
    kept = [o for o in raised.orderers if o.org != "ins02"]
    del raised.orderers[:]
    raised.orderers.extend(kept)
    env, block = config_block(peer, net, raised)
    config_tracker(peer).validate_now(env)
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]
    later = next_config(peer)
    later.batch.timeout_ms += 1
    _, block = config_block(peer, net, later)
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]

ALLOWED: list[tuple[str, Edit]] = [
    ("nothing changed", lambda c: None),
    ("lifecycle_endorsement: two of the peer orgs",
     _policy("lifecycle_endorsement", "OutOf(2, h01.peer, p01.peer, ins01.peer)")),
    ("lifecycle_endorsement: a majority of peers", _policy("lifecycle_endorsement", "MAJORITY(peer)")),
    ("lifecycle: three named admins", _policy("lifecycle", "OutOf(3, h01.admin, p01.admin, ins01.admin, ins02.admin)")),
    ("lifecycle removed (default MAJORITY(admin))", _drop_policy("lifecycle")),
    ("config_update: a nested admin policy",
     _policy("config_update", "AND(OR(ins01.admin, ins02.admin), OutOf(2, h01.admin, p01.admin, ins01.admin))")),
    ("a peer org removed with its peer", _both(_drop_org("p01"), lambda c: _drop_peers_of(c, "p01"))),
    ("a tighter clock skew", _set("limits", "max_clock_skew_ms", 1_000)),
    ("a tiny value limit", _set("limits", "max_value_bytes", 10)),
    ("the CA of a peer org replaced", lambda c: setattr(_org(c, "p01"), "ca_cert_der", _new_ca_der("p01"))),
]


@pytest.mark.parametrize("edit", [pytest.param(e, id=name) for name, e in ALLOWED])
def test_updates_within_the_rules_are_adopted_by_orderers_and_peers(peer: Peer, net: Net, edit: Edit) -> None:
    new = next_config(peer)
    edit(new)
    env, block = config_block(peer, net, new)
    tracker = config_tracker(peer)
    assert tracker.validate_now(env) == new
    assert tracker.block_config(block) == new
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]
    cur = peer.ledger.current_config()
    assert cur is not None and cur.sequence == 1


def test_a_consortium_without_peers_may_still_update() -> None:
    # The orderer tests run consortia with no peer at all: "keep at least one peer" binds
    # only a consortium that has some. (Unit check of the rule on the configs alone.)
    base = config_pb2.ConsortiumConfig(consortium_id="x")
    base.batch.max_tx_count, base.batch.max_bytes, base.batch.timeout_ms = 10, 1 << 20, 50
    lim = base.limits
    lim.max_message_bytes, lim.max_envelope_bytes, lim.gas_limit = 4 << 20, 1 << 20, 1000
    lim.max_write_set_keys, lim.max_value_bytes, lim.max_clock_skew_ms = 10, 1000, 60_000
    base.policies.add(name="config_update", rule="MAJORITY(admin)")
    for org in ("a", "b", "c"):
        base.organizations.add(id=org, kind=config_pb2.INSURER, ca_cert_der=_new_ca_der(org))
    check_new_config(base, base, 1000, MSP(base, Verifier()), 0)
    with_peer = config_pb2.ConsortiumConfig()
    with_peer.CopyFrom(base)
    with_peer.peers.add(org="a", name="peer.a")
    with pytest.raises(RxError, match="removes every peer"):
        check_new_config(with_peer, base, 1000, MSP(base, Verifier()), 0)


def test_min_signers_counts_the_fewest_distinct_signers() -> None:
    orgs = [f"o{i:02d}" for i in range(41)]
    admins = [(o, "admin") for o in orgs]
    majority = parse_policy("MAJORITY(admin)", orgs)
    assert majority.min_signers(admins) == 21 > MAX_SIGNERS  # evaluate() could never pass it
    assert not majority.evaluate(admins[:21])
    assert parse_policy("AND(o00.admin, o00.admin)", orgs).min_signers(admins) is None
    assert parse_policy("OR(o00.admin, AND(o01.admin, o02.admin))", orgs).min_signers(admins) == 1
    assert parse_policy("AND(o00.admin, OR(o01.admin, o02.admin))", orgs).min_signers(admins) == 2
    assert parse_policy("AND(o00.admin, OR(o01.admin, o02.admin))", orgs).min_signers(admins[:1]) is None
    nested = "OR(o00.admin, OutOf(2, " + ", ".join(f"{o}.admin" for o in orgs[: MAX_NESTED_CHECK + 1]) + "))"
    with pytest.raises(RxError, match="nests rules over"):
        parse_policy(nested, orgs).min_signers(admins)


def _wide_consortium(n_orgs: int) -> config_pb2.ConsortiumConfig:
    """``n_orgs`` insurers, each running a peer; config_update needs 11 admins."""
    c = config_pb2.ConsortiumConfig(consortium_id="wide")
    c.batch.max_tx_count, c.batch.max_bytes, c.batch.timeout_ms = 10, 1 << 20, 50
    lim = c.limits
    lim.max_message_bytes, lim.max_envelope_bytes, lim.gas_limit = 4 << 20, 1 << 20, 1000
    lim.max_write_set_keys, lim.max_value_bytes, lim.max_clock_skew_ms = 10, 1000, 60_000
    orgs = [f"o{i:02d}" for i in range(n_orgs)]
    for org in orgs:
        c.organizations.add(id=org, kind=config_pb2.INSURER, ca_cert_der=_new_ca_der(org))
        c.peers.add(org=org, name=f"peer.{org}")
    c.policies.add(name="config_update", rule="OutOf(11, " + ", ".join(f"{o}.admin" for o in orgs) + ")")
    return c


def test_an_absent_policy_is_checked_as_its_default() -> None:
    """Without a ``lifecycle`` entry MAJORITY(admin) is in force; over 41 organisations it
    needs 21 signers, more than any policy check counts, so no contract could ever be approved
    again. Likewise the default lifecycle endorsement (a majority of the 41 peer orgs). Both
    are refused, naming the default; explicit satisfiable policies are accepted."""
    orgs = [f"o{i:02d}" for i in range(41)]
    within = "OutOf(11, " + ", ".join(f"{o}.{{role}}" for o in orgs) + ")"
    base = _wide_consortium(39)  # 39 orgs: both defaults need 20 signers, within the bound
    check_new_config(base, base, 1000, MSP(base, Verifier()), 0)
    wide = _wide_consortium(41)
    msp = MSP(wide, Verifier())
    with pytest.raises(RxError, match=r"lifecycle 'MAJORITY\(admin\)' needs 21 signers.*the default") as exc:
        check_new_config(base, wide, 1000, msp, 0)
    assert exc.value.reason == "BAD_CONFIG_UPDATE"
    wide.policies.add(name="lifecycle", rule=within.format(role="admin"))
    with pytest.raises(RxError, match=r"lifecycle_endorsement 'OutOf\(21, .* needs 21 signers.*the default"):
        check_new_config(base, wide, 1000, msp, 0)
    wide.policies.add(name="lifecycle_endorsement", rule=within.format(role="peer"))
    check_new_config(base, wide, 1000, msp, 0)


def _add_org(org_id: str) -> Edit:
    def edit(c: config_pb2.ConsortiumConfig) -> None:
        c.organizations.add(id=org_id, name="a new member", kind=config_pb2.HOSPITAL,
                            hospital_level="community", ca_cert_der=_new_ca_der("newcomer"))
    return edit


@pytest.mark.parametrize(("org_id", "fragment"), [
    ("patient", "'patient' is reserved"),
    ("h13|x", "must be 1 to 56 lower-case"),
    ("h13/x", "must be 1 to 56 lower-case"),
    ("H13", "must be 1 to 56 lower-case"),
    ("h13-", "must be 1 to 56 lower-case"),
    ("h" * 57, "must be 1 to 56 lower-case"),
])
def test_from_version_2_an_added_organisation_has_an_id_of_netgens_shape_and_not_patient(
        peer: Peer, net: Net, org_id: str, fragment: str) -> None:
    """An organisation called ``patient`` would hold every patient's key grant in the
    prescription contract (party ``patient``), and ids with '/', '|' or ':' run into the
    contracts' key and HMAC separators. Version 1 took any id (kept: the replay of an old ledger
    must judge its updates as the nodes that committed them did); version 2 refuses them on the
    orderers' three paths and in the peers' validator alike, and still adds a well-formed one."""
    under_v1 = next_config(peer)
    _add_org(org_id)(under_v1)
    env, _ = config_block(peer, net, under_v1)
    assert config_tracker(peer).validate_now(env) == under_v1  # version 1: adopted
    _commit(peer, net, next_config(peer, 2))
    _refused_everywhere(peer, net, _updated(peer, _add_org(org_id)), fragment)
    fine = _updated(peer, _add_org("h13"))
    env, _ = config_block(peer, net, fine)
    assert config_tracker(peer).validate_now(env) == fine
    _commit(peer, net, fine)


def _tx_ms(env: bytes) -> int:
    return tx_pb.TxHeader.FromString(
        tx_pb.Transaction.FromString(tx_pb.Envelope.FromString(env).payload).header).timestamp_ms


def test_an_update_signed_by_more_organisations_than_a_policy_check_counts_says_so() -> None:
    """25 organisations; config_update needs 11 admins. An update all 21 of the first admins
    signed is refused (a policy check counts at most MAX_SIGNERS distinct signers), and the
    refusal says why instead of "admin signatures do not satisfy config_update" (which sent
    the admins looking for a signature missing); 11 of the same signatures pass the signature
    check (the update is then refused for its content: the test consortium runs no orderer)."""
    now = dt.datetime.now(dt.UTC)
    old = _wide_consortium(25)
    old.sequence = 1
    admins = []
    for org in old.organizations:
        ca_key = signing.generate_key()
        ca = rx509.make_ca(org.id, ca_key, now)
        org.ca_cert_der = rx509.cert_to_der(ca)
        key = signing.generate_key()
        cert = rx509.issue_cert(ca, ca_key, key.public_key(), org=org.id, role="admin", name="admin", now=now)
        admins.append(signing.Signer(key, identity_pb2.Identity(org=org.id, cert_der=rx509.cert_to_der(cert))))
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(old)
    new.sequence, new.batch.timeout_ms = 2, 60
    verifier = Verifier()
    current = OrdererConfig(old, MSP(old, verifier), 0)
    kit = TxKit("wide", random.Random(5), clock_ms=int(now.timestamp() * 1000))
    too_many = kit.config_tx(admins[0], new, admins[: MAX_SIGNERS + 1])
    with pytest.raises(RxError) as exc:
        validate_update(current, too_many, verifier)
    assert exc.value.reason == "BAD_CONFIG_UPDATE"
    assert f"{MAX_SIGNERS + 1} distinct signers" in exc.value.message
    with pytest.raises(RxError) as later:  # the signatures hold; this config runs no orderer
        validate_update(current, kit.config_tx(admins[0], new, admins[:11]), verifier)
    assert "lacks config_update policy or orderers" in later.value.message


def _commit(peer: Peer, net: Net, new: config_pb2.ConsortiumConfig) -> None:
    """Put ``new`` in force on ``peer`` (its block must be VALID)."""
    _, block = config_block(peer, net, new)
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]


def _updated(peer: Peer, *edits: Edit) -> config_pb2.ConsortiumConfig:
    new = next_config(peer)
    _both(*edits)(new)
    return new


def _retire(*org_ids: str) -> Edit:
    def edit(c: config_pb2.ConsortiumConfig) -> None:
        c.retired_org_ids.extend(org_ids)
    return edit


# 2 of 46 alternating pairs of admins: C(46, 2) = 1,035 choices for the exact search, one more
# than the bound allows; satisfiable by the 4 admins, never by one organisation alone
_OVER_THE_BOUND = "OutOf(2, " + ", ".join(
    "AND(h01.admin, p01.admin)" if i % 2 else "AND(ins01.admin, ins02.admin)" for i in range(46)) + ")"
_WITHIN_THE_BOUND = "OutOf(2, " + ", ".join(
    "AND(h01.admin, p01.admin)" if i % 2 else "AND(ins01.admin, ins02.admin)" for i in range(45)) + ")"


def _refused_everywhere(peer: Peer, net: Net, new: config_pb2.ConsortiumConfig, fragment: str) -> None:
    """``new`` is BAD_CONFIG_UPDATE (``fragment`` in the message) on the orderers' three paths
    and in the peer's validator, and the config in force stays."""
    env, block = config_block(peer, net, new)
    tracker = config_tracker(peer)
    for check in (lambda: tracker.validate_now(env), lambda: tracker.check_broadcast(env, _tx_ms(env))):
        with pytest.raises(RxError) as exc:
            check()
        assert exc.value.reason == "BAD_CONFIG_UPDATE"
        assert fragment in exc.value.message, exc.value.message
    assert tracker.block_config(block) is None
    sequence = peer.committer.validator.config.config.sequence
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.BAD_CONFIG_UPDATE]
    assert peer.committer.validator.config.config.sequence == sequence


def test_from_version_2_a_removed_organisations_id_is_never_given_to_another_organisation(
        peer: Peer, net: Net) -> None:
    """An organisation removed and added again under its id with another CA: its holders would
    inherit the old organisation's record key grants, registrations, policy principals and
    history. Version 1 adopts it (kept: blocks before the raise keep its answer on replay);
    from version 2 the removal retires the id and adding it again is refused on the orderers'
    three paths and by the peer's validator, with or without the id dropped from the list."""
    _commit(peer, net, _updated(peer, _add_org("h13")))
    _commit(peer, net, _updated(peer, _drop_org("h13")))
    again = _updated(peer, _add_org("h13"))  # another CA
    env, _ = config_block(peer, net, again)
    assert config_tracker(peer).validate_now(env) == again  # version 1: adopted
    _commit(peer, net, again)
    _commit(peer, net, next_config(peer, MEMBERSHIP_VERSION))
    _commit(peer, net, _updated(peer, _drop_org("h13"), _retire("h13")))
    assert list(peer.committer.validator.config.config.retired_org_ids) == ["h13"]
    _refused_everywhere(peer, net, _updated(peer, _add_org("h13")), "organisation id 'h13' is retired")
    _refused_everywhere(peer, net, _updated(peer, _add_org("h13"), lambda c: c.ClearField("retired_org_ids")),
                        "organisation id 'h13' is retired")
    _commit(peer, net, _updated(peer, _add_org("h14")))  # another id is welcome


@pytest.mark.parametrize(("edit", "fragment"), [
    pytest.param(_drop_org("h13"), "organisation 'h13' is removed: list its id in retired_org_ids",
                 id="a removal not listed"),
    pytest.param(_both(_drop_org("h13"), _retire("h13"), lambda c: c.retired_org_ids.remove("h12")),
                 "retired_org_ids drops 'h12'", id="the list shrinks"),
    pytest.param(_retire("p01"), "retired_org_ids lists 'p01', an organisation of the new config",
                 id="a kept organisation listed"),
])
def test_from_version_2_an_update_keeps_the_retired_ids_and_lists_those_it_removes(
        peer: Peer, net: Net, edit: Edit, fragment: str) -> None:
    """Refused from version 2; the same update is adopted under version 1."""
    _commit(peer, net, _updated(peer, _add_org("h13"), _retire("h12")))
    under_v1 = _updated(peer, edit)
    env, _ = config_block(peer, net, under_v1)
    assert config_tracker(peer).validate_now(env) == under_v1  # version 1: adopted
    _commit(peer, net, next_config(peer, MEMBERSHIP_VERSION))
    _refused_everywhere(peer, net, _updated(peer, edit), fragment)



@pytest.mark.parametrize(("edit", "fragment"), [
    pytest.param(_drop_org("h13"), "organisation 'h13' is removed: list its id in retired_org_ids",
                 id="a removal not listed"),
    pytest.param(_both(_drop_org("h13"), _retire("h13"), lambda c: c.retired_org_ids.remove("h12")),
                 "retired_org_ids drops 'h12'", id="the list shrinks"),
    pytest.param(_add_org("patient"), "'patient' is reserved", id="an organisation called patient"),
    pytest.param(_add_org("h14|x"), "must be 1 to 56 lower-case", id="an id with a separator"),
])
def test_the_update_raising_the_version_is_judged_by_the_id_rules_of_version_2(
        peer: Peer, net: Net, edit: Edit, fragment: str) -> None:
    """The update raising the version is the first decision under version 2: one removing an
    organisation without retiring its id left that id free for a later update to give another
    organisation (with another CA: the old one's key grants, registrations and history), one
    adding ``patient`` put in force the organisation version 2 refuses. Both were adopted; they
    are refused on the orderers' paths and in the peers' validator, and the raise goes in once
    the update meets them."""
    _commit(peer, net, _updated(peer, _add_org("h13"), _retire("h12")))
    raising = next_config(peer, MEMBERSHIP_VERSION)
    edit(raising)
    _refused_everywhere(peer, net, raising, fragment)
    raising = next_config(peer, MEMBERSHIP_VERSION)
    _drop_org("h13")(raising)
    _retire("h13")(raising)
    _commit(peer, net, raising)
    assert list(peer.committer.validator.config.config.retired_org_ids) == ["h12", "h13"]
    _refused_everywhere(peer, net, _updated(peer, _add_org("h13")), "organisation id 'h13' is retired")

def test_an_id_listed_with_its_organisation_under_version_1_locks_no_later_update(peer: Peer, net: Net) -> None:
    """A version 1 update could list an organisation it kept. From version 2 that is not judged
    until the organisation is removed (refusing every update would lock the consortium out of
    its configuration); it is then removed listed, as any other, and never added again."""
    _commit(peer, net, _updated(peer, _add_org("h13"), _retire("h13")))
    _commit(peer, net, next_config(peer, MEMBERSHIP_VERSION))
    _commit(peer, net, _updated(peer, _set("batch", "timeout_ms", 60)))
    _refused_everywhere(peer, net, _updated(peer, _drop_org("h13"), lambda c: c.ClearField("retired_org_ids")),
                        "retired_org_ids drops 'h13'")
    _commit(peer, net, _updated(peer, _drop_org("h13")))
    _refused_everywhere(peer, net, _updated(peer, _add_org("h13")), "organisation id 'h13' is retired")


def test_config_propose_retires_the_ids_of_the_organisations_it_removes(peer: Peer, net: Net) -> None:
    """The admin tool lists the removed id itself (an edit only cuts the organisation out), puts
    back a retired id an edit dropped, and refuses to add an organisation under a retired id
    (BAD_CONFIG_UPDATE before any admin signs); what it proposes is adopted under version 2."""
    _commit(peer, net, _updated(peer, _add_org("h13")))
    _commit(peer, net, next_config(peer, MEMBERSHIP_VERSION))
    current = peer.committer.validator.config.config
    proposed = config_pb2.ConsortiumConfig.FromString(configtool.propose(current, _drop_org("h13")).config)
    assert list(proposed.retired_org_ids) == ["h13"]
    assert "retired_org_ids: null -> [\"h13\"]" in configtool.changes(current, proposed)
    _commit(peer, net, proposed)
    current = peer.committer.validator.config.config
    dropped = config_pb2.ConsortiumConfig.FromString(
        configtool.propose(current, _both(_set("batch", "timeout_ms", 60),
                                          lambda c: c.ClearField("retired_org_ids"))).config)
    assert list(dropped.retired_org_ids) == ["h13"]
    _commit(peer, net, dropped)
    with pytest.raises(RxClientError) as exc:
        configtool.propose(peer.committer.validator.config.config, _add_org("h13"))
    assert exc.value.reason == "BAD_CONFIG_UPDATE"
    assert "organisation id 'h13' is retired" in exc.value.message


def test_from_version_2_a_named_policy_with_too_many_choices_is_refused(peer: Peer, net: Net) -> None:
    """A named policy whose exact evaluation may enumerate more than MAX_POLICY_CHOICES choices
    of nested rules: version 1 adopts it (as before: the replay of an old ledger judges its
    updates as the nodes that committed them did); an update raising the version must not
    carry it (every named policy in force under version 2 is bounded), and under version 2 an
    update putting it in force is refused on the orderers' paths and in the peers' validator
    alike, while one within the bound is adopted."""
    assert parse_policy(_OVER_THE_BOUND, ["h01", "p01", "ins01", "ins02"], 2).choices() == 1035
    under_v1 = next_config(peer)
    _policy("lifecycle", _OVER_THE_BOUND)(under_v1)
    env, block = config_block(peer, net, under_v1)
    assert config_tracker(peer).validate_now(env) == under_v1  # version 1: adopted
    assert config_tracker(peer).block_config(block) == under_v1
    raising = next_config(peer, 2)
    _policy("lifecycle", _OVER_THE_BOUND)(raising)
    _refused_everywhere(peer, net, raising, "policy lifecycle: '" + _OVER_THE_BOUND[:20])
    _, raise_block = config_block(peer, net, next_config(peer, 2))
    assert list(peer.committer.commit_block(raise_block).validated.codes) == [tx_pb.VALID]
    new = next_config(peer)
    _policy("lifecycle", _OVER_THE_BOUND)(new)
    _refused_everywhere(peer, net, new, "leaves more than 1000 choices")
    fine = next_config(peer)
    _policy("lifecycle", _WITHIN_THE_BOUND)(fine)
    env, block = config_block(peer, net, fine)
    assert config_tracker(peer).validate_now(env) == fine
    assert list(peer.committer.commit_block(block).validated.codes) == [tx_pb.VALID]


def test_a_version_2_genesis_and_realistic_named_policies_are_judged_by_the_bound() -> None:
    """The generator checks a genesis at version 2 by the same rule; the nested policies a
    consortium of 12 writes (at most 12 organisations: a nested named policy over more is
    refused as before) are within it, up to any k of 12 pairs of admins."""
    base = _wide_consortium(12)
    base.protocol_version = 2
    orgs = [o.id for o in base.organizations]
    pairs = ", ".join(f"AND({orgs[i]}.admin, {orgs[(i + 6) % 12]}.admin)" for i in range(12))
    for rule in (f"OutOf(3, {pairs})", f"OutOf(6, {pairs})", "AND(MAJORITY(admin), OR(o00.admin, o01.admin))"):
        new = config_pb2.ConsortiumConfig()
        new.CopyFrom(base)
        _policy("lifecycle", rule)(new)
        check_genesis_content(new)
        check_new_config(base, new, 1000, MSP(new, Verifier()), 0)
    over = "OutOf(2, " + ", ".join(f"AND({orgs[i % 12]}.admin, {orgs[(i + 6) % 12]}.admin)" for i in range(46)) + ")"
    _policy("lifecycle", over)(base)
    with pytest.raises(RxError, match=r"policy lifecycle: .* leaves more than 1000 choices") as exc:
        check_genesis_content(base)
    assert exc.value.reason == "BAD_CONFIG_UPDATE"
    base.protocol_version = 1
    check_genesis_content(base)  # version 1: as before


def test_a_foreign_consortium_id_is_quoted_in_the_refusal_only_so_far(peer: Peer, net: Net) -> None:
    """The consortium id of an update is compared before its signatures are: a 1 MB id was
    echoed whole into the refusal (every orderer's log and the submitter's answer)."""
    new = next_config(peer)
    new.consortium_id = "x" * 1_000_000
    env, _ = config_block(peer, net, new)
    with pytest.raises(RxError) as exc:
        config_tracker(peer).validate_now(env)
    assert exc.value.reason == "BAD_CONFIG_UPDATE" and "differs" in exc.value.message
    assert len(exc.value.message) < 200, len(exc.value.message)
