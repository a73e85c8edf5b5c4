"""``GET /fhir/PaymentReconciliation``: an insurer's claims report (``client.reconcile``) as a
FHIR PaymentReconciliation -- over the real settlement contract in the sandbox of
tests/contracts, through ``FhirApp`` and the HTTP layer's own serialisation."""

from __future__ import annotations

import json
from decimal import Decimal
from types import SimpleNamespace

import pytest

from client.errors import RxClientError
from client.fhir import mapping
from client.fhir.server import FhirApp
from client.rxops import RxOperations
from tests.client.contractgw import ContractGateway
from tests.client.ledgerevents import EventLedger, failing_at, settled_claims
from tests.contracts.chain import Who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import AUDITOR, CLERK, WANG
from tests.contracts.rxclient import World


def _app(w: World, ledger: EventLedger, caller: Who) -> FhirApp:
    gw = ContractGateway(w, caller)
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=SimpleNamespace(events=ledger.events, evaluate=gw.evaluate),
        identity=SimpleNamespace(org=caller.org, role=caller.role), clock=lambda: w.chain.now,
        net=SimpleNamespace(insurers=lambda: ["ins01", "ins02"])))
    return FhirApp(SimpleNamespace(ops_for=lambda der: ops))  # type: ignore[arg-type]


def test_the_reconciliation_pays_the_net_fund_share_claim_by_claim(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 2)
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claims[0]["claim_id"], reason="OTHER").unwrap()
    reply = _app(world, ledger, CLERK).handle("GET", "/fhir/PaymentReconciliation", None, b"cert")
    assert reply.status == 200 and reply.headers["X-Rxchain-Next-Block"] == str(ledger.height)
    res = json.loads(mapping.dumps(reply.resource), parse_float=Decimal)
    assert res["resourceType"] == "PaymentReconciliation"
    assert res["paymentIssuer"]["identifier"]["value"] == "ins01"
    assert res["identifier"][0]["value"] == f"0..{ledger.height}"
    assert Decimal(str(res["amount"]["value"])) == Decimal(claims[1]["fund_fen"]) / 100
    allocs = [(a["target"]["identifier"]["value"], a["type"]["coding"][0]["code"], Decimal(str(a["amount"]["value"])))
              for a in res["allocation"]]
    assert allocs == [(claims[0]["claim_id"], "payment", Decimal(claims[0]["fund_fen"]) / 100),
                      (claims[1]["claim_id"], "payment", Decimal(claims[1]["fund_fen"]) / 100),
                      (claims[0]["claim_id"], "adjustment", -Decimal(claims[0]["fund_fen"]) / 100)]
    assert sum(a[2] for a in allocs) == Decimal(str(res["amount"]["value"]))
    assert "processNote" not in res
    # the next one starts where this one ended: empty, amount 0
    nxt = _app(world, ledger, CLERK).handle(
        "GET", f"/fhir/PaymentReconciliation?from-block={ledger.height}", None, b"cert")
    assert nxt.resource["allocation"] == [] and nxt.resource["amount"]["value"] == 0


def test_an_auditor_sees_every_insurer_and_unreadable_claims_are_noted(world: World) -> None:  # noqa: F811
    from rxchain.v1 import transaction_pb2

    ledger = EventLedger(world.chain)
    settled_claims(world, 1)
    foreign = json.dumps({"claim_id": "CLM-RX9-1-1", "rx_id": "RX9", "insurer": "ins02"}).encode()
    ledger.extra[ledger.height - 1] = [transaction_pb2.ContractEvent(
        contract="settlement", name="claim.settled", payload=foreign, tx_id="ef" * 32)]
    res = _app(world, ledger, AUDITOR).handle("GET", "/fhir/PaymentReconciliation", None, b"cert").resource
    assert "paymentIssuer" not in res and len(res["allocation"]) == 1
    assert [n["text"] for n in res["processNote"]] == ["unreadable claim CLM-RX9-1-1: not counted"]


def test_a_role_that_reads_no_claims_and_bad_parameters_are_refused(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    settled_claims(world, 1)
    with pytest.raises(RxClientError) as denied:
        _app(world, ledger, WANG).handle("GET", "/fhir/PaymentReconciliation", None, b"cert")
    assert denied.value.reason == "ACCESS_DENIED"
    for query in ("from-block=a", "insurer=ins01", "limit-blocks=0"):
        with pytest.raises(RxClientError) as bad:
            _app(world, ledger, CLERK).handle("GET", "/fhir/PaymentReconciliation?" + query, None, b"cert")
        assert bad.value.reason == "FHIR_INVALID", query


def test_malformed_events_are_noted(world: World) -> None:  # noqa: F811
    from rxchain.v1 import transaction_pb2

    ledger = EventLedger(world.chain)
    settled_claims(world, 1)
    ledger.extra[ledger.height - 1] = [transaction_pb2.ContractEvent(
        contract="settlement", name="claim.reversed", payload=b'{"claim_id": "bad id"}', tx_id="ef" * 32)]
    res = _app(world, ledger, CLERK).handle("GET", "/fhir/PaymentReconciliation", None, b"cert").resource
    assert [n["text"] for n in res["processNote"]] == [
        f"malformed reversed event in block {ledger.height - 1} (tx {'ef' * 32}): names no claim, not counted"]
    assert len(res["allocation"]) == 1


def test_a_reconciliation_cut_at_the_read_cap_says_so_and_the_next_goes_on(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The claims report reads at most ``MAX_READS`` claims (whole blocks): the header names
    the block it stopped before, ``outcome`` is partial with a ``disposition`` saying why, and
    the reconciliations of the range add up to the whole one's amount."""
    import functools

    from client import rxops
    from client.reconcile import claim_report

    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 2)
    whole = _app(world, ledger, CLERK).handle("GET", "/fhir/PaymentReconciliation", None, b"cert").resource
    assert whole["outcome"] == "complete" and "disposition" not in whole
    monkeypatch.setattr(rxops, "claim_report", functools.partial(claim_report, max_reads=1))
    first = _app(world, ledger, CLERK).handle("GET", "/fhir/PaymentReconciliation", None, b"cert")
    nxt = int(first.headers["X-Rxchain-Next-Block"])
    assert 0 < nxt < ledger.height and first.resource["outcome"] == "partial"
    assert first.resource["identifier"][0]["value"] == f"0..{nxt}"
    assert first.resource["disposition"] == (f"blocks 0..{nxt - 1} only (the cap of claims one report reads): "
                                             f"the next report goes on from block {nxt} (X-Rxchain-Next-Block) at once")
    assert [a["target"]["identifier"]["value"] for a in first.resource["allocation"]] == [claims[0]["claim_id"]]
    second = _app(world, ledger, CLERK).handle("GET", f"/fhir/PaymentReconciliation?from-block={nxt}", None, b"cert")
    assert second.headers["X-Rxchain-Next-Block"] == str(ledger.height) and second.resource["outcome"] == "complete"
    assert first.resource["amount"]["value"] + second.resource["amount"]["value"] == whole["amount"]["value"]
    # the block limit cuts it short too, as the Task search's next link
    cut = _app(world, ledger, CLERK).handle("GET", "/fhir/PaymentReconciliation?limit-blocks=1", None, b"cert")
    assert cut.resource["outcome"] == "partial" and "(limit-blocks)" in cut.resource["disposition"]
    # exactly the blocks left to the height: nothing follows, complete (it said partial)
    rest = ledger.height - nxt
    last = _app(world, ledger, CLERK).handle(
        "GET", f"/fhir/PaymentReconciliation?from-block={nxt}&limit-blocks={rest}", None, b"cert")
    assert last.headers["X-Rxchain-Next-Block"] == str(ledger.height)
    assert last.resource["outcome"] == "complete" and "disposition" not in last.resource


def test_an_inconsistent_claim_is_noted_and_not_paid(world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """An inconsistent claim's fund share was in ``amount`` and its allocations: it is noted
    (with the inconsistent claims' fund share), out of ``amount`` and of the allocations, which
    add up to ``amount``; a claim with an amount not integer fen no longer fails the request."""
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 3)
    app = _app(world, ledger, CLERK)
    ops = app.ids.ops_for(b"cert")
    real = ops.claim

    def tampered(claim_id: str, **kw: bool) -> dict[str, object]:
        rec = real(claim_id, **kw)
        if claim_id == claims[1]["claim_id"]:
            rec["fund_fen"] += 1
        if claim_id == claims[2]["claim_id"]:
            rec["cash_fen"] = 1.5
        return rec

    monkeypatch.setattr(ops, "claim", tampered)
    reply = app.handle("GET", "/fhir/PaymentReconciliation", None, b"cert")
    res = json.loads(mapping.dumps(reply.resource), parse_float=Decimal)
    assert Decimal(str(res["amount"]["value"])) == Decimal(claims[0]["fund_fen"]) / 100
    assert [a["target"]["identifier"]["value"] for a in res["allocation"]] == [claims[0]["claim_id"]]
    odd = "amounts break medfee = fund + patient = fund + account + cash (or are negative or not integer fen), not counted"
    assert [n["text"] for n in res["processNote"]] == [
        f"inconsistent claim {claims[1]['claim_id']}: {odd}", f"inconsistent claim {claims[2]['claim_id']}: {odd}",
        "inconsistent claims' fund share, settled minus reversed, not counted: "
        f"{Decimal(claims[1]['fund_fen'] + 1 + claims[2]['fund_fen']) / 100:.2f} CNY"]


def test_a_reconciliation_whose_block_past_the_limit_failed_to_be_read_is_partial(world: World) -> None:  # noqa: F811
    """The stream failing on the block past limit-blocks failed the request; now the range read
    is the answer, partial (whether a block follows is unknown: the next goes on at once)."""
    ledger = EventLedger(world.chain)
    settled_claims(world, 1)
    limit = ledger.height - 1
    healthy = _app(world, ledger, CLERK).handle("GET", f"/fhir/PaymentReconciliation?limit-blocks={limit}", None,
                                                b"cert")

    def broken(block: int) -> FhirApp:
        return _app(world, SimpleNamespace(events=failing_at(ledger.events, block)), CLERK)  # type: ignore[arg-type]

    reply = broken(limit).handle("GET", f"/fhir/PaymentReconciliation?limit-blocks={limit}", None, b"cert")
    assert reply.status == 200 and reply.headers["X-Rxchain-Next-Block"] == str(limit)
    assert reply.resource["outcome"] == "partial" and reply.resource == healthy.resource
    with pytest.raises(RxClientError) as failed:  # a block within the limit: failed as before
        broken(limit - 1).handle("GET", f"/fhir/PaymentReconciliation?limit-blocks={limit}", None, b"cert")
    assert failed.value.reason == "TIMEOUT"
