"""Gateway.Events by caller, in process: the organisations' staff and nodes are served every
transaction and contract event of a block; a patient's certificate only the transactions it
created (and their events) -- never another patient's tx ids, prescription ids or statuses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509 as cx509
from rxchain.v1 import identity_pb2, services_pb2, transaction_pb2

from node.crypto import signing
from node.crypto import x509 as rx509
from node.errors import RxError
from node.identity.caller import FULL_EVENTS_ROLES, NO_BLOCK_ROLES
from node.identity.roles import ROLES
from node.peer.gateway.events import block_events, events
from node.peer.gateway.service import GatewayService
from tests.peer.conftest import FIXED_NOW, Cluster
from tests.peer.kit import envelope
from tests.peer.test_gateway import LocalRemotes, deps_for

NOTES_SOURCE = '''from rxchain_contract import Context


def note(ctx: Context, key: str) -> dict:
    ctx.put("n/" + key, 1)
    ctx.emit("noted", {"key": key, "org": ctx.caller.org})
    return {"ok": True}
'''
POLICY = "OutOf(2, h01.peer, p01.peer, ins01.peer)"


def _patient(cluster: Cluster, name: str) -> signing.Signer:
    """A patient certificate of h01's CA (the role a hospital enrols its patients in)."""
    ca_dir = cluster.net.home / "orgs" / "h01"
    ca = cx509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = signing.generate_key()
    cert = rx509.issue_cert(ca, signing.load_private_key((ca_dir / "ca.key").read_bytes()), key.public_key(),
                            org="h01", role="patient", name=name, now=FIXED_NOW - dt.timedelta(days=1))
    return signing.Signer(key, identity_pb2.Identity(org="h01", cert_der=rx509.cert_to_der(cert)))


class _Context:
    """A servicer context carrying a TLS client certificate."""

    def __init__(self, cert_der: bytes) -> None:
        self._pem = rx509.cert_to_pem(cx509.load_der_x509_certificate(cert_der))

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def is_active(self) -> bool:
        return True

    def add_callback(self, _callback: Any) -> bool:
        return True

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


@pytest.fixture
def notes(deployed: Cluster) -> dict[str, Any]:
    """The notes contract (any member may note; every note emits an event) and one block with
    a doctor's note, patient A's, patient B's and a replayed copy of A's (DUPLICATE_TXID),
    then a block with B's note alone."""
    d = deployed.deploy("notes", NOTES_SOURCE, POLICY, {"note": ["*"]})
    _, code = deployed.transact(deployed.net.admins["ins01"], "_lifecycle", "commit", d)
    assert code == transaction_pb2.VALID
    a, b = _patient(deployed, "pt-a"), _patient(deployed, "pt-b")
    start = deployed.peers[0].ledger.height()

    def env(creator: signing.Signer, key: str) -> tuple[bytes, str]:
        signed = deployed.kit.proposal(creator, "notes", "note", {"key": key}, timestamp_ms=deployed.now())
        raw = envelope(creator, signed, deployed.endorse_all(signed, deployed.peers[:2]))
        prop = transaction_pb2.Proposal.FromString(signed.proposal_bytes)
        return raw, transaction_pb2.TxHeader.FromString(prop.header).tx_id

    (e_dr, t_dr), (e_a, t_a), (e_b, t_b) = env(deployed.net.doctor, "dr"), env(a, "pa"), env(b, "pb")
    deployed.commit([e_dr, e_a, e_b, e_a])
    e_b2, t_b2 = env(b, "pb2")
    deployed.commit([e_b2])
    return {"a": a, "b": b, "start": start, "tx": {"dr": t_dr, "a": t_a, "b": t_b, "b2": t_b2}}


def _feed(cluster: Cluster, cert_der: bytes, start: int, contract: str = "") -> list[services_pb2.EventsResponse]:
    deps, notifier = deps_for(cluster, LocalRemotes({}))
    service = GatewayService(deps)
    try:
        req = services_pb2.EventsRequest(start_block=start, contract=contract, follow=False)
        return list(service.Events(req, _Context(cert_der)))  # type: ignore[arg-type]
    finally:
        service.close(wait_s=1)
        notifier.close()


def _keys(msg: services_pb2.EventsResponse) -> list[str]:
    import json

    return [json.loads(e.payload)["key"] for e in msg.events]


def test_a_patient_is_served_only_her_own_transactions(deployed: Cluster, notes: dict[str, Any]) -> None:
    """Before, every certificate -- a patient's too -- was served the doctor's and the other
    patient's tx ids and events (prescription ids, statuses, acting organisations in the real
    contracts). Now patient A gets her note and the status of its replayed copy, B his two
    notes; each block still comes, in order, the one with nothing of hers empty."""
    start, tx = notes["start"], notes["tx"]
    got_a = _feed(deployed, notes["a"].cert_der, start)
    assert [m.block_number for m in got_a] == [start, start + 1]
    assert [(t.tx_id, t.code, t.contract, t.function) for t in got_a[0].txs] == [
        (tx["a"], transaction_pb2.VALID, "notes", "note"), (tx["a"], transaction_pb2.DUPLICATE_TXID, "notes", "note")]
    assert _keys(got_a[0]) == ["pa"]
    assert (list(got_a[1].txs), list(got_a[1].events)) == ([], [])
    assert all(m.caller_txs_only for m in got_a)
    got_b = _feed(deployed, notes["b"].cert_der, start, contract="notes")
    assert [[t.tx_id for t in m.txs] for m in got_b] == [[tx["b"]], [tx["b2"]]]
    assert [_keys(m) for m in got_b] == [["pb"], ["pb2"]]
    # from the genesis block on: nothing of the set-up (lifecycle txs of the admins)
    everything = _feed(deployed, notes["a"].cert_der, 0)
    assert [t.tx_id for m in everything for t in m.txs] == [tx["a"], tx["a"]]
    assert [k for m in everything for k in _keys(m)] == ["pa"]


def test_the_organisations_feed_is_unchanged(deployed: Cluster, notes: dict[str, Any]) -> None:
    """Staff and node certificates get every tx and every VALID tx's events, as before."""
    start, tx = notes["start"], notes["tx"]
    ledger = deployed.peers[0].ledger
    net = deployed.net
    for who in (net.doctor, net.nurse, net.pharmacist, net.clerk, net.admins["h01"], net.peers["p01"], net.orderer):
        got = _feed(deployed, who.cert_der, start)
        assert got == [block_events(ledger.block(n)) for n in (start, start + 1)]
        assert not any(m.caller_txs_only for m in got)
        assert [t.tx_id for t in got[0].txs] == [tx["dr"], tx["a"], tx["b"], tx["a"]]
        assert [t.code for t in got[0].txs][-1] == transaction_pb2.DUPLICATE_TXID
        assert [_keys(m) for m in got] == [["dr", "pa", "pb"], ["pb2"]]


def test_the_filter_is_by_certificate_not_by_name_or_org(deployed: Cluster, notes: dict[str, Any]) -> None:
    """Another certificate of the same organisation and name (a second patient certificate
    minted as ``pt-a``) is not the creator: it is served none of A's transactions; an empty
    certificate matches nothing (not the txs of an envelope naming no creator)."""
    start = notes["start"]
    twin = _patient(deployed, "pt-a")
    assert [list(m.txs) for m in _feed(deployed, twin.cert_der, start)] == [[], []]
    block = deployed.peers[0].ledger.block(start)
    assert list(block_events(block, creator_der=b"").txs) == []
    # an envelope that does not decode: the full feed reports its code, a caller's feed not
    block.data.envelopes.append(b"\xff not an envelope")
    block.metadata.validation_codes.append(transaction_pb2.BAD_PAYLOAD)
    assert block_events(block).txs[-1].code == transaction_pb2.BAD_PAYLOAD
    assert [t.tx_id for t in block_events(block, creator_der=notes["a"].cert_der).txs] == [notes["tx"]["a"]] * 2


def test_refusals_still_carry_their_reason(deployed: Cluster, notes: dict[str, Any]) -> None:
    """A patient's request is checked as anyone's: a contract name too long is BAD_REQUEST."""
    deps, notifier = deps_for(deployed, LocalRemotes({}))
    try:
        with pytest.raises(RxError) as err:
            list(events(deps, services_pb2.EventsRequest(contract="x" * 65), lambda: True, notes["a"].cert_der))
        assert err.value.reason == "BAD_REQUEST"
    finally:
        notifier.close()


def test_every_role_that_may_stream_blocks_gets_the_full_feed_and_no_other() -> None:
    """A role is served the full feed exactly when it may stream whole blocks (Deliver): a
    role a later release adds gets the caller's feed until it is listed."""
    assert set(ROLES) - FULL_EVENTS_ROLES == set(NO_BLOCK_ROLES) == {"patient"}
    assert set(ROLES) >= FULL_EVENTS_ROLES
