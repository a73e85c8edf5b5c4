"""Red-team review of the retry-safe dispense and Claim of the FHIR gateway (client/fhir/retry.py,
the ``_dispense*``/``_claim*`` paths of client/fhir/server.py, RxOperations.settle/claim/...).

Each test is an attack by a careless or hostile integrator, pharmacy or insurer. Tests named
``test_finding_*`` failed on the code as it landed (1a6b5ea, b5dbcbe) and pass with the fix;
``test_holds_*`` confirm behaviour that was already right (regressions guards).

The in-memory ledger and the HTTPS gateway are those of tests/client/test_fhir_retry.py,
extended here only with what an attack needs (a transaction losing an MVCC race to an
unrelated write, a view that times out); where the real contracts matter the contract test
chain (tests/contracts) runs under RxOperations.
"""

from __future__ import annotations

import json
import urllib.parse
from types import SimpleNamespace
from typing import Any

import pytest

from client.errors import CommitError, RxClientError
from client.fhir import mapping, retry
from client.gateway import SubmitResult
from client.rxops import ClaimLine, RxOperations
from tests.client.contractgw import ContractGateway
from tests.client.test_fhir import AMLO
from tests.client.test_fhir_retry import (
    BENI,
    CLAIM,
    CLERK,
    PHARMACY,
    RX,
    SALT,
    Chain,
    FakeGateway,
    RetryIdentities,
    RetryOps,
    _claim,
    _diagnostics,
    _disp,
    _dispense,
    _get,
    _settle,
)
from tests.client.test_unknown_outcome_surfaces import Ledger, _gateway
from tests.contracts import sandbox_adapter
from tests.contracts.chain import DAY_MS, admin
from tests.contracts.chain import Chain as ContractChain
from tests.contracts.flows import CLERK as CONTRACT_CLERK
from tests.contracts.flows import COURIER, ZHOU, approved, lock_and_dispense
from tests.contracts.rxclient import World

# ---------------------------------------------------------------- what the attacks add to the fakes


class RedGateway(FakeGateway):
    """The fake's views, some of which fail with TIMEOUT (``chain.fail_views``: view -> calls)."""

    def evaluate(self, contract: str, fn: str, args: dict[str, Any], transient: Any = None) -> Any:
        left = getattr(self.chain, "fail_views", {}).get(fn, 0)
        if left:
            self.chain.fail_views[fn] = left - 1  # type: ignore[attr-defined]
            raise RxClientError("TIMEOUT", "deadline exceeded")
        return super().evaluate(contract, fn, args, transient)


class RedOps(RetryOps):
    """RetryOps whose settle can lose an MVCC race to an unrelated write (``chain.mvcc_settle``:
    another claim of the same patient moved her counters): nothing is settled."""

    def __init__(self, chain: Chain, org: str, user: str, role: str) -> None:
        super().__init__(chain, org, user, role)
        self.s.gateway = RedGateway(chain, org)

    def settle(self, rx_id: str, fill: int = 0, lines: list[ClaimLine] | None = None,
               expect_medfee_fen: int | None = None) -> dict[str, Any]:
        if getattr(self.chain, "mvcc_settle", 0):
            self.chain.mvcc_settle -= 1  # type: ignore[attr-defined]
            raise CommitError("MVCC_READ_CONFLICT", "read conflict", "e" * 64, 8)
        return super().settle(rx_id, fill, lines, expect_medfee_fen)


    def dispense(self, rx_id: str, trace_codes: Any = ()) -> dict[str, Any]:
        c = self.chain
        if not getattr(c, "due", False) or c.pending or not 0 < c.fills < c.max_fills:
            return super().dispense(rx_id, trace_codes)
        # the fill interval has passed (``chain.due``): the next fill is dispensed (the fake's
        # contract knows no interval and says TOO_EARLY to any fill after the first)
        c.fills += 1
        tx, codes = c.tx(), list(trace_codes)
        c.code_fills.update((retry_hash(code), c.fills) for code in codes)
        c.submitted.append("dispense")
        c.steps.append({"step": "dispense", "actor": self.s.identity.user, "org": self.org, "role": "pharmacist",
                        "time_ms": 100 + c.fills, "time": "", "tx_id": tx, "block": 5 + c.fills,
                        "detail": {"fill": c.fills, "boxes": 3, "trace_codes": len(codes)}})
        return {"rx_id": rx_id, "status": "DISPENSED", "fill": c.fills, "fills_left": c.max_fills - c.fills,
                "tx_id": tx, "block": 5 + c.fills}


class RedIdentities(RetryIdentities):
    def ops_for(self, cert_der: bytes) -> RedOps:  # type: ignore[override]
        from cryptography import x509

        from node.crypto.x509 import cert_info

        info = cert_info(x509.load_der_x509_certificate(cert_der))
        return RedOps(self.chain, info.org, info.name, info.role)


def _serve(net_home: Any, chain: Chain) -> Any:
    return _gateway(net_home, Ledger(), RedIdentities(net_home.home, chain))


def _red_chain(**kw: Any) -> Chain:
    chain = Chain(**kw)
    chain.fail_views = {}  # type: ignore[attr-defined]
    chain.mvcc_settle = 0  # type: ignore[attr-defined]
    return chain


def _land_next_fill(chain: Chain, org: str = "p01", codes: int = 0) -> None:
    """Another fill is dispensed (by ``org``, with ``codes`` trace codes) outside the gateway."""
    chain.fills += 1
    chain.steps.append({"step": "dispense", "actor": "pharm-x", "org": org, "role": "pharmacist",
                        "time_ms": 100 + chain.fills, "time": "", "tx_id": chain.tx(), "block": 5 + chain.fills,
                        "detail": {"fill": chain.fills, "boxes": 3, "trace_codes": codes}})


def _text(ans: Any) -> str:
    return str(ans.body["issue"][0]["details"]["text"])


def _header(system: str, value: str) -> str:
    return "identifier=" + urllib.parse.quote(f"{system}|{value}", safe="")


# ---------------------------------------------------------------- findings: dispense


def test_finding_a_new_fill_losing_an_unrelated_race_is_not_answered_as_the_last_fill(net_home: Any) -> None:
    """A repeat prescription: fill 1 dispensed (no trace codes), the interval passed; the
    pharmacy dispenses fill 2, and its transaction loses an MVCC race to an unrelated write
    (the courier confirming fill 1's delivery in the same block). Nothing was dispensed: the
    refusal must stand. It used to be answered 200 with fill 1's Bundle (same pharmacy, same
    count of codes: 0) -- the pharmacy hands out fill 2's boxes, which the ledger never recorded."""
    chain = _red_chain(max_fills=2)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense(codes=())).status == 201
        chain.pending.append(lambda: None)  # the next dispense loses to a write that is not a dispense
        lost = _disp(port, net_home, _dispense(codes=()))
    assert chain.fills == 1 and chain.submitted == ["dispense"]
    assert lost.status != 200 and lost.status >= 400, lost.body
    assert "entry" not in lost.body
    assert (lost.status, lost.code) == (409, "MVCC_READ_CONFLICT"), lost.body


def test_holds_a_retry_losing_the_race_to_its_own_first_attempt_is_200(net_home: Any) -> None:
    """The fix above keeps the race the feature is for: the first attempt of fill 2 (answer
    lost, not yet committed), its retry losing to it, is answered 200 with fill 2."""
    chain = _red_chain(max_fills=2)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense(codes=())).status == 201
        chain.fills, chain.steps = 0, []  # (a fresh prescription: its first fill is the one in flight)
        chain.hold_dispense = 1
        lost = _disp(port, net_home, _dispense(codes=()))
        again = _disp(port, net_home, _dispense(codes=()))
    assert lost.status == 504 and again.status == 200, again.body
    assert chain.fills == 1


def test_finding_repeated_trace_codes_are_refused_before_anything(net_home: Any) -> None:
    """Fill 1 recorded boxes TC-1, TC-2, TC-3. A retry scanning TC-1 twice and missing TC-3
    carries three codes, each recorded in fill 1: it used to be answered 200 with a Bundle
    listing TC-1 twice -- boxes the ledger does not hold as this fill's. A first POST with a
    repeated code used to lock the prescription before the contract refused the code
    (TRACE_CODE_REUSED). Repeated or malformed codes are now 400 before anything is sent."""
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        dup = _disp(port, net_home, _dispense(codes=("TC-1", "TC-1", "TC-2")))
        odd = _disp(port, net_home, _dispense(codes=("TC-1", "TC-2", "TC ３")))
    assert (dup.status, dup.code) == (400, "FHIR_INVALID"), dup.body
    assert (odd.status, odd.code) == (400, "FHIR_INVALID"), odd.body
    fresh = _red_chain()
    with _serve(net_home, fresh) as port:
        first = _disp(port, net_home, _dispense(codes=("TC-1", "TC-1", "TC-2")))
    assert (first.status, first.code) == (400, "FHIR_INVALID") and fresh.submitted == []


def test_finding_an_unknown_dispense_names_its_fill(net_home: Any) -> None:
    """A repeat prescription (no trace codes): the dispense's answer is lost (504), and the
    ERP's queue re-sends it "as it was" (as the 504 advised) once the fill interval has passed:
    that dispenses fill 2 -- recorded on the ledger, never handed out, lost to the patient.
    The 504 named only the prescription and the tx; it now names the fill this request
    dispenses, and the re-sent POST naming it (If-None-Exist) is exact: 200, no second fill."""
    chain = _red_chain(max_fills=2, lose_dispense=1)
    with _serve(net_home, chain) as port:
        lost = _disp(port, net_home, _dispense(codes=()))
        chain.due = True  # type: ignore[attr-defined]  # 28 days later
        fill = dict(kv.split("=", 1) for kv in _diagnostics(lost).split("; "))["fill"]
        named = _disp(port, net_home, _dispense(codes=()), If_None_Exist=_header(mapping.DISPENSE_SYSTEM, f"{RX}/{fill}"))
    assert (lost.status, lost.code) == (504, "COMMIT_UNKNOWN") and "urn:rxchain:dispense" in _text(lost)
    assert fill == "1"
    assert named.status == 200 and named.body["entry"][0]["resource"]["id"].endswith("fill1-1"), named.body
    assert chain.fills == 1 and chain.submitted == ["dispense"]


@pytest.mark.parametrize("view", ["trace_fills", "trace"])
def test_finding_a_failed_comparison_read_is_not_a_definite_refusal(net_home: Any, view: str) -> None:
    """The dispense's answer was lost (504); the retry is refused ALREADY_DISPENSED and the
    read that compares it with the ledger times out. The gateway cannot tell whether the fill
    is the caller's: it used to answer 409 ALREADY_DISPENSED ("the ledger holds that fill and
    it is not the one described") -- the pharmacy turns the patient away although its own
    dispense committed. Now the read's failure: 504 naming the prescription and fill."""
    chain = _red_chain(lose_dispense=1)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 504
        chain.fail_views[view] = 1  # type: ignore[attr-defined]
        unknown = _disp(port, net_home, _dispense())
        again = _disp(port, net_home, _dispense())
    assert (unknown.status, unknown.code) == (504, "TIMEOUT"), unknown.body
    assert f"rx_id={RX}" in _diagnostics(unknown)
    assert again.status == 200, again.body
    assert chain.submitted == ["dispense"]


def test_finding_a_failed_comparison_read_of_a_claim_is_not_a_definite_refusal(net_home: Any) -> None:
    """Same for a Claim: DUPLICATE_CLAIM on the retry, the trail read times out: 504 (it used
    to be 409 DUPLICATE_CLAIM: an insurer told its own settled claim is someone else's)."""
    chain = _red_chain(lose_settle=1)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        assert _settle(port, net_home, _claim()).status == 504
        chain.fail_views["trail"] = 1  # type: ignore[attr-defined]
        unknown = _settle(port, net_home, _claim())
        again = _settle(port, net_home, _claim())
    assert (unknown.status, unknown.code) == (504, "TIMEOUT"), unknown.body
    assert f"rx_id={RX}" in _diagnostics(unknown)
    assert again.status == 200, again.body
    assert chain.submitted == ["dispense", "settle"]


def test_holds_a_refused_comparison_read_keeps_the_refusal(net_home: Any) -> None:
    """A read refused for authorisation (not a peer failure) keeps the contract's refusal:
    a pharmacy that may not read the prescription learns nothing from the comparison."""
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        other = _disp(port, net_home, _dispense(), who=("p02", "pharm-chen"))
    assert (other.status, other.code) == (409, "ALREADY_DISPENSED")
    assert "entry" not in other.body and "fill=" not in _diagnostics(other)


# ---------------------------------------------------------------- findings: claim


def test_finding_a_claim_losing_an_unrelated_race_is_not_answered_with_an_older_fills_claim(
        net_home: Any) -> None:
    """A repeat prescription: fill 1 claimed (CLM-1-1), fill 2 dispensed. The insurer POSTs the
    Claim of fill 2 (named through its MedicationDispense: unnamed is FILL_NOT_NAMED once a
    second fill exists); its settle loses an MVCC race to another claim of the same patient
    (both move her counters and balance). Nothing was settled: the refusal must stand. It used
    to be answered 200 with CLM-RX-1-1 (the highest fill claimed, same lines): the insurer
    books fill 2 as settled, and it is never paid."""
    chain = _red_chain(max_fills=2)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        assert _settle(port, net_home, _claim()).status == 201
        _land_next_fill(chain, codes=3)
        chain.mvcc_settle = 1  # type: ignore[attr-defined]
        lost = _settle(port, net_home, _claim(fill=2))
        paid = _settle(port, net_home, _claim(fill=2))
    assert lost.status >= 400 and "entry" not in lost.body, lost.body
    assert (lost.status, lost.code) == (409, "MVCC_READ_CONFLICT")
    assert paid.status == 201 and paid.headers["Location"] == f"/fhir/Claim/CLM-{RX}-2-1", paid.body
    assert sorted(chain.claims) == [f"CLM-{RX}-1-1", f"CLM-{RX}-2-1"]


def test_finding_the_previewed_fill_is_the_fill_settled() -> None:
    """``settle(fill=0, expect_medfee_fen=...)`` evaluates the latest fill and then submits.
    It submitted ``fill: 0`` again: a fill dispensed between the two is settled instead,
    at its own fee, without the check (the 201 then shows a fee the insurer never agreed).
    The submit now names the fill the preview priced."""
    calls: list[tuple[str, str, Any]] = []

    class Gw:
        def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
            calls.append(("evaluate", fn, dict(args)))
            return {"pharmacy": "p01", "hospital": "h01"} if fn == "show" else {"medfee_fen": 3100, "fill": 1}

        def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
                   endorsing_orgs: Any = None) -> SubmitResult:
            calls.append(("submit", fn, dict(args)))
            return SubmitResult("ab" * 32, "VALID", 4, {"claim_id": f"CLM-{RX}-{args['fill'] or 2}-1"})

    peers = [SimpleNamespace(org=o) for o in ("h01", "p01", "ins01")]
    ops = RxOperations(SimpleNamespace(gateway=Gw(), identity=SimpleNamespace(org="ins01"),  # type: ignore[arg-type]
                                       net=SimpleNamespace(peers=peers)))
    ops._claim_grant = lambda rx_id: SimpleNamespace(body=CLAIM, salt=SALT)  # type: ignore[method-assign,return-value,assignment]
    out = ops.settle(RX, 0, None, expect_medfee_fen=3100)
    assert calls[-1] == ("submit", "settle", {"rx_id": RX, "fill": 1}), calls
    assert out["claim_id"] == f"CLM-{RX}-1-1"
    calls.clear()
    ops.settle(RX, 0)  # no preview: the contract's own "latest fill"
    assert calls[-1] == ("submit", "settle", {"rx_id": RX, "fill": 0})


@pytest.fixture(scope="module")
def contract_runner() -> sandbox_adapter.Runner:
    return sandbox_adapter.make_runner()


def test_finding_the_previewed_fee_holds_on_the_real_contracts(contract_runner: sandbox_adapter.Runner) -> None:
    """The real prescription and settlement contracts: a repeat prescription, fill 1 dispensed,
    the drug's price raised, fill 2 dispensed (28 days on) between the insurer's preview of
    "the latest fill" at fill 1's fee and its submit. The claim settled must be fill 1 at the
    fee previewed (it used to be fill 2 at the new price: the AMOUNT_MISMATCH check bypassed)."""
    world = World(ContractChain(runner=contract_runner))
    world.load()
    prep = approved(world, doctor=ZHOU, max_fills=2, fill_interval_days=28, long_rx=True,
                    chronic_reason="stable hypertension", days=28, stability_assessment="stable 6 months",
                    patient_confirmed=True)
    rx_id = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx_id).unwrap()
    world.chain.advance(DAY_MS)  # the price changes after fill 1 was dispensed
    code = prep.content["drugs"][0]["code"]
    drug = world.chain.query("registry", "get_drug", CONTRACT_CLERK, code=code).unwrap()
    fee1 = world.chain.query("settlement", "settle", CONTRACT_CLERK, transient={
        "claim": prep.claim, "claim_salt": prep.claim_salt}, rx_id=rx_id, fill=1).unwrap()["medfee_fen"]
    world.chain.submit("registry", "set_drug", admin("ins01"), code=code, spec=drug["spec"],
                       cls=drug["cls"], standard_fen=drug["standard_fen"], price_fen=drug["price_fen"] * 3,
                       controlled=drug.get("controlled", "NONE")).unwrap()
    world.chain.advance(27 * DAY_MS)

    def fill_two() -> None:
        lock_and_dispense(world, prep).unwrap()

    peers = [SimpleNamespace(org=o) for o in ("h02", "p01", "ins01")]
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=ContractGateway(world, CONTRACT_CLERK, {"settle": fill_two}), identity=SimpleNamespace(org="ins01"),
        net=SimpleNamespace(peers=peers)))
    ops._claim_grant = lambda rx: SimpleNamespace(body=prep.claim, salt=prep.claim_salt)  # type: ignore[method-assign,return-value,assignment]
    rec = ops.settle(rx_id, 0, None, expect_medfee_fen=fee1)
    assert world.chain.query("prescription", "show", CONTRACT_CLERK, rx_id=rx_id).unwrap()["fills"] == 2
    assert (rec["fill"], rec["medfee_fen"]) == (1, fee1), rec
    fee2 = world.chain.query("settlement", "settle", CONTRACT_CLERK, transient={
        "claim": prep.claim, "claim_salt": prep.claim_salt}, rx_id=rx_id, fill=2).unwrap()["medfee_fen"]
    assert fee2 != fee1  # (the attack needs fills priced differently)


def test_finding_get_of_a_reversed_claim_reads_cancelled(net_home: Any) -> None:
    """``GET /fhir/Claim/{id}`` of a reversed claim answered ``status: active`` with its full
    medical fee: a hospital or patient reading it takes it for a payable claim. Now
    ``cancelled``; a settled claim stays ``active``."""
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        created = _settle(port, net_home, _claim())
        settled = _get(port, net_home, created.headers["Location"], CLERK)
        chain.claims[f"CLM-{RX}-1-1"]["status"] = "REVERSED"
        chain.guard[1]["active"] = ""
        reversed_ = _get(port, net_home, created.headers["Location"], CLERK)
    assert settled.body["status"] == "active"
    assert reversed_.status == 200 and reversed_.body["status"] == "cancelled", reversed_.body


def test_finding_more_claim_items_than_the_contract_takes_are_refused_first(net_home: Any) -> None:
    """The contract takes 1-5 claim lines (BAD_TRANSIENT otherwise). A retry with 6 items
    adding up to the settled lines used to be answered 200 although no such claim could ever
    have been settled; a first POST reached the ledger (the claim-key read is an audited
    transaction). Now 400 before anything is sent."""
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        assert _settle(port, net_home, _claim([(AMLO, 2), (BENI, 1)])).status == 201
        six = _settle(port, net_home, _claim([(AMLO, 1), (AMLO, 1), (BENI, 1), (AMLO, 1), (BENI, 1), (AMLO, 1)]))
    assert (six.status, six.code) == (422, "TOO_MANY_ITEMS"), six.body
    assert chain.submitted == ["dispense", "settle"]


# ---------------------------------------------------------------- holds: money


@pytest.mark.parametrize(("raw", "fen"), [
    ("31", 3100), ("31.0", 3100), ("3.1e1", 3100), ("3100E-2", 3100), ("0.01", 1), ("19.99", 1999),
    ("-0", 0), ("-0.0", 0), ('"31.00"', 3100),
])
def test_holds_claim_total_is_exact_fen(raw: str, fen: int) -> None:
    body = json.loads(json.dumps(_claim())[:-1] + ', "total": {"value": ' + raw + ', "currency": "CNY"}}')
    assert retry.claim_total(mapping.validate_resource(body)) == fen


@pytest.mark.parametrize("raw", ["31.001", "-0.01", "0.30000000000000004", "1e400", "true", "null",
                                 '"\uff13\uff11"', '"\u0663\u0661"', '" 31"', '"0x1F"', '"NaN"', '"1_000"'])
def test_holds_claim_total_refuses_what_is_not_whole_fen(raw: str) -> None:
    body = json.loads(json.dumps(_claim())[:-1] + ', "total": {"value": ' + raw + ', "currency": "CNY"}}')
    try:
        total = retry.claim_total(mapping.validate_resource(body))
    except mapping.FhirError as exc:
        assert exc.reason == "FHIR_INVALID"
    else:
        assert raw == "null" and total is None  # no value: no total stated


@pytest.mark.parametrize("qty", ["\uff12", "\u0662", "2.5", "0", "-1", "2147483648"])
def test_holds_claim_item_quantities_are_ascii_whole_boxes(qty: str) -> None:
    body = _claim([(AMLO, 1)])
    body["item"][0]["quantity"]["value"] = qty
    with pytest.raises(mapping.FhirError) as refused:
        retry.claim_lines(mapping.validate_resource(body))
    assert refused.value.reason == "FHIR_INVALID"


@pytest.mark.parametrize("currency", ["USD", "cny", "", "CNY "])
def test_holds_claim_total_is_cny_only(currency: str) -> None:
    body = _claim()
    body["total"] = {"value": 31, "currency": currency}
    with pytest.raises(mapping.FhirError):
        retry.claim_total(mapping.validate_resource(body))


def test_holds_amounts_in_any_notation_and_huge_ones(net_home: Any) -> None:
    """The fee in exponent notation is the fee (201, then 200 on retry); a huge or a wrong
    fee is AMOUNT_MISMATCH before anything is settled, and on a retry DUPLICATE_CLAIM."""
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        for value in ("1e20", "123456789012345678901234567890.12", "0"):
            body = json.loads(json.dumps(_claim())[:-1] + ', "total": {"value": ' + value + ', "currency": "CNY"}}')
            ans = _settle(port, net_home, body)
            assert (ans.status, ans.code) == (422, "AMOUNT_MISMATCH"), (value, ans.body)
        assert chain.submitted == ["dispense"]
        exp = json.loads(json.dumps(_claim())[:-1] + ', "total": {"value": 5.1e1, "currency": "CNY"}}')
        first = _settle(port, net_home, exp)
        again = _settle(port, net_home, _claim(total="51.00"))
        other = _settle(port, net_home, _claim(total="51.01"))
    assert first.status == 201 and again.status == 200 and again.body == first.body, again.body
    assert (other.status, other.code) == (409, "DUPLICATE_CLAIM")
    assert chain.submitted == ["dispense", "settle"]


def test_holds_claim_lines_duplicates_zero_and_undispensed(net_home: Any) -> None:
    """Duplicate codes commit their split as the contract does: re-sent as it was it is the
    same claim, the same boxes split into other lines another (409: the B share is rounded per
    line); a zero or fractional quantity is 400; a code not dispensed is refused (422 first,
    409 on a retry)."""
    chain = _red_chain()
    other_code = "X" * 23
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        zero = _settle(port, net_home, _claim([(AMLO, 0)]))
        half = _settle(port, net_home, _claim([(AMLO, 2)]) | {"item": [
            {"sequence": 1, "productOrService": {"coding": [{"code": AMLO}]}, "quantity": {"value": 1.5}}]})
        undispensed = _settle(port, net_home, _claim([(other_code, 1)]))
        first = _settle(port, net_home, _claim([(BENI, 1), (AMLO, 1), (AMLO, 1)]))
        again = _settle(port, net_home, _claim([(BENI, 1), (AMLO, 1), (AMLO, 1)]))
        split = _settle(port, net_home, _claim([(BENI, 1), (AMLO, 2)]))
        undispensed_retry = _settle(port, net_home, _claim([(other_code, 1)]))
    assert (zero.status, zero.code) == (400, "FHIR_INVALID")
    assert (half.status, half.code) == (400, "FHIR_INVALID")
    assert (undispensed.status, undispensed.code) == (422, "ITEM_NOT_DISPENSED")
    assert first.status == 201 and again.status == 200, again.body
    assert (split.status, split.code) == (409, "DUPLICATE_CLAIM"), split.body
    assert (undispensed_retry.status, undispensed_retry.code) == (409, "DUPLICATE_CLAIM")
    assert chain.submitted == ["dispense", "settle"]


def test_holds_a_claim_retry_after_a_reversal_settles_the_fill_again(net_home: Any) -> None:
    """CLM-1-1 settled (answer lost) and then reversed by the insurer: the unnamed retry finds
    no active claim and settles the fill again (CLM-1-2, 201): one active claim, never two."""
    chain = _red_chain(lose_settle=1)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        assert _settle(port, net_home, _claim()).status == 504
        chain.claims[f"CLM-{RX}-1-1"]["status"] = "REVERSED"
        chain.guard[1]["active"] = ""
        again = _settle(port, net_home, _claim())
        twice = _settle(port, net_home, _claim())
    assert again.status == 201 and again.headers["Location"] == f"/fhir/Claim/CLM-{RX}-1-2"
    assert twice.status == 200 and twice.body == again.body
    assert [c["status"] for c in chain.claims.values()] == ["REVERSED", "SETTLED"]


# ---------------------------------------------------------------- holds: authorisation


def test_holds_claims_are_not_told_to_those_who_may_not_read_them(net_home: Any) -> None:
    """A pharmacy naming the settled claim (body or If-None-Exist) or reading it gets 403 with
    neither the claim nor its amounts; the patient's hospital, which may read the claim,
    cannot settle or learn more by POSTing it (WRONG_ROLE)."""
    chain = _red_chain()
    claim_id = f"CLM-{RX}-1-1"
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        assert _settle(port, net_home, _claim(total="51.00")).status == 201
        named = _settle(port, net_home, _claim(), who=PHARMACY,
                        If_None_Exist=_header(mapping.CLAIM_SYSTEM, claim_id))
        read = _get(port, net_home, f"/fhir/Claim/{claim_id}", PHARMACY)
        hospital = _settle(port, net_home, _claim(total="9.99"), who=("h01", "dr-jiang"),
                           If_None_Exist=_header(mapping.CLAIM_SYSTEM, claim_id))
        unnamed = _settle(port, net_home, _claim(), who=("h01", "dr-jiang"))
    for ans in (named, read, hospital, unnamed):
        assert ans.status == 403, ans.body
        text = json.dumps(ans.body)
        assert "5100" not in text and "51.0" not in text and "entry" not in ans.body
    assert chain.submitted == ["dispense", "settle"]


def test_holds_a_patient_or_a_nurse_cannot_get_a_dispense_bundle(net_home: Any) -> None:
    """Staff or patients of a party who are not pharmacists: naming the fill answers the
    refusal of a comparison (409 naming only what the trace shows them) or 403, never the
    Bundle with the trace codes."""
    chain = _red_chain()
    fill1 = _header(mapping.DISPENSE_SYSTEM, f"{RX}/1")
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        nurse = _disp(port, net_home, _dispense(), who=("h01", "nurse-liu"), If_None_Exist=fill1)
        patient = _disp(port, net_home, _dispense(), who=("h01", "patient-zhang"), If_None_Exist=fill1)
    for ans in (nurse, patient):
        assert ans.status in (403, 409), ans.body
        assert "entry" not in ans.body and "TC-1" not in json.dumps(ans.body)
    assert chain.submitted == ["dispense"]


# ---------------------------------------------------------------- holds: named fills, input robustness


def test_holds_fills_named_below_and_beyond(net_home: Any) -> None:
    """Fill 1 and 2 dispensed: naming fill 1 with fill 1's boxes is fill 1 (200); naming fill 1
    with fill 2's boxes is 409 (recorded in fill 2); fill 4 is out of order; fill 3 is the
    next fill (here refused TOO_EARLY and nothing else happens)."""
    chain = _red_chain(max_fills=3)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        _land_next_fill(chain, codes=3)
        chain.code_fills.update({retry_hash(c): 2 for c in ("TC-4", "TC-5", "TC-6")})
        one = _disp(port, net_home, _dispense(fill=1))
        mixed = _disp(port, net_home, _dispense(codes=("TC-4", "TC-5", "TC-6"), fill=1))
        four = _disp(port, net_home, _dispense(fill=4))
        three = _disp(port, net_home, _dispense(codes=("TC-7", "TC-8", "TC-9"), fill=3))
    assert one.status == 200 and one.body["entry"][0]["resource"]["id"].endswith("fill1-1")
    assert (mixed.status, mixed.code) == (409, "ALREADY_DISPENSED") and "recorded in fill 2" in _text(mixed)
    assert (four.status, four.code) == (422, "FILL_OUT_OF_ORDER")
    assert (three.status, three.code) == (422, "TOO_EARLY")
    assert chain.submitted == ["dispense"]


def retry_hash(code: str) -> str:
    from client.records import trace_code_hash
    from tests.client.test_fhir_retry import TRACE_KEY

    return trace_code_hash(TRACE_KEY, code)


@pytest.mark.parametrize("value", [
    f"{RX}/\u0661", f"{RX}/\uff11", f"{RX}/0", f"{RX}/100", f"{RX}/1 ", f"{RX}/+1", f"{RX}/-1", f"{RX}/",
    f"{RX}", "../1", f"{RX}/../1", f"./{RX}/1", f"{RX}/1/1", f"{RX}.x/1", "",
])
def test_holds_malformed_fill_identifiers_are_400(net_home: Any, value: str) -> None:
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        header = _disp(port, net_home, _dispense(), If_None_Exist=_header(mapping.DISPENSE_SYSTEM, value))
        body = _dispense()
        body["identifier"] = [{"system": mapping.DISPENSE_SYSTEM, "value": value}]
        in_body = _disp(port, net_home, body)
    assert (header.status, header.code) == (400, "FHIR_INVALID"), header.body
    if value:  # (an empty identifier value is refused by FHIR itself)
        assert (in_body.status, in_body.code) == (400, "FHIR_INVALID"), in_body.body
    assert chain.submitted == []


@pytest.mark.parametrize("value", [
    f"CLM-{RX}-\u0661-1", f"CLM-{RX}-1-\uff11", f"CLM-{RX}-0-1", f"CLM-{RX}-1-0", f"CLM-{RX}-100-1",
    f"CLM-{RX}-1-1000", f"CLM-{RX}-1", "CLM-RX-R2-1-1", f"clm-{RX}-1-1", "CLM-..-1-1", f"CLM-{RX}-1-1\n",
])
def test_holds_malformed_claim_identifiers_are_400(net_home: Any, value: str) -> None:
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        ans = _settle(port, net_home, _claim(), If_None_Exist=_header(mapping.CLAIM_SYSTEM, value))
    assert (ans.status, ans.code) == (400, "FHIR_INVALID"), ans.body
    assert chain.submitted == ["dispense"]


@pytest.mark.parametrize("header", [
    "identifier=urn:rxchain:dispense", "identifier=|RX-R1/1", "identifier=urn:rxchain:dispense|",
    "identifier=urn:rxchain:dispense|RX-R1/1&identifier=urn:rxchain:dispense|RX-R1/2",
    "_id=RX-R1", "identifier=urn:rxchain:claim|CLM-RX-R1-1-1", "identifier=URN:RXCHAIN:DISPENSE|RX-R1/1",
    "x" * 3000,
])
def test_holds_if_none_exist_edge_cases(net_home: Any, header: str) -> None:
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        ans = _disp(port, net_home, _dispense(), If_None_Exist=header)
    assert (ans.status, ans.code) == (400, "FHIR_INVALID"), ans.body
    assert chain.submitted == []


def test_holds_a_body_identifier_agreeing_with_if_none_exist(net_home: Any) -> None:
    """The same fill in the body and the header is one name; two different ones are 400."""
    chain = _red_chain(max_fills=2)
    with _serve(net_home, chain) as port:
        same = _disp(port, net_home, _dispense(fill=1), If_None_Exist=_header(mapping.DISPENSE_SYSTEM, f"{RX}/1"))
        two = _disp(port, net_home, _dispense(fill=1), If_None_Exist=_header(mapping.DISPENSE_SYSTEM, f"{RX}/2"))
    assert same.status == 201 and (two.status, two.code) == (400, "FHIR_INVALID")
    assert chain.submitted == ["dispense"]


@pytest.mark.parametrize("path", ["/fhir/Claim/..", "/fhir/Claim/.", "/fhir/Claim/%2E%2E", "/fhir/Claim/" + "C" * 129,
                                  "/fhir/Claim/CLM-%0A", "/fhir/MedicationRequest/.."])
def test_holds_dot_and_odd_ids_in_paths(net_home: Any, path: str) -> None:
    chain = _red_chain()
    with _serve(net_home, chain) as port:
        ans = _get(port, net_home, path, CLERK)
    assert (ans.status, ans.code) in ((400, "FHIR_INVALID"), (404, "NOT_FOUND")), ans.body


def test_holds_the_real_view_bounds_a_retry_comparison(contract_runner: sandbox_adapter.Runner) -> None:
    """``trace_fills`` through RxOperations on the real contract: a party learns, for its own
    codes, only the fills of this prescription (0 for another prescription's boxes), and a
    non-party (another pharmacy's pharmacist) is refused as for a missing id."""
    from tests.contracts.flows import CHEN, WANG
    from tests.contracts.rxclient import trace_key

    world = World(ContractChain(runner=contract_runner))
    world.load()
    a, b = approved(world, drugs=[("amlodipine", 2)]), approved(world, drugs=[("amlodipine", 2)])
    codes_a, codes_b = ["81234560000000000071", "81234560000000000072"], ["81234560000000000073"]
    assert lock_and_dispense(world, a, trace_codes=codes_a).ok
    assert lock_and_dispense(world, b, trace_codes=codes_b).ok

    def ops_as(who: Any) -> RxOperations:
        gw = ContractGateway(world, who)
        return RxOperations(SimpleNamespace(gateway=gw, trace_key=trace_key()))  # type: ignore[arg-type]

    assert ops_as(WANG).trace_fills(a.args["rx_id"], [*codes_b, *codes_a]) == [0, 1, 1]
    assert ops_as(WANG).trace_fills(b.args["rx_id"], codes_a) == [0, 0]
    with pytest.raises(RxClientError) as denied:
        ops_as(CHEN).trace_fills(a.args["rx_id"], codes_a)
    assert (denied.value.reason, denied.value.message) == ("NOT_FOUND", "no prescription " + a.args["rx_id"])



def test_a_non_partys_read_is_an_audited_key_denial(contract_runner: sandbox_adapter.Runner,
                                                    tmp_path: Any) -> None:
    """``RxOperations.show`` and ``GET /fhir/MedicationRequest/{id}`` on the real contracts: a
    caller who is no party of the prescription (another pharmacy, another hospital's doctor,
    another insurer's clerk) asks for the key first and gets the committed, audited denial
    (DOMAIN.md section 4: NO_KEY_GRANT, 403) -- the contract's show answers it as a missing id,
    which must not turn the denial into a 404; an id never issued is NOT_FOUND, 404. A party
    without a key grant (a nurse of the issuing hospital) still reads the metadata."""
    from client.fhir.server import FhirApp, error_reply
    from tests.contracts.flows import CHEN, CLERK2, NURSE

    world = World(ContractChain(runner=contract_runner))
    world.load()
    rx = approved(world).args["rx_id"]
    missing = rx[:-1] + ("0" if rx[-1] != "0" else "1")

    def ops_as(who: Any) -> tuple[RxOperations, ContractGateway]:
        gw = ContractGateway(world, who)
        session = SimpleNamespace(gateway=gw, identity=SimpleNamespace(org=who.org, user=who.name, role=who.role),
                                  decryption_keys=list)
        return RxOperations(session), gw  # type: ignore[arg-type]

    for who in (CHEN, ZHOU, CLERK2):
        ops, gw = ops_as(who)
        app = FhirApp(SimpleNamespace(ops_for=lambda _cert, ops=ops: ops))  # type: ignore[arg-type]
        seen = []
        for rx_id in (rx, missing):
            with pytest.raises(RxClientError) as refused:
                ops.show(rx_id)
            with pytest.raises(RxClientError) as fhir_refused:
                app.handle("GET", f"/fhir/MedicationRequest/{rx_id}", None, b"")
            reply = error_reply(fhir_refused.value, tmp_path)
            seen.append((refused.value.reason, refused.value.message.replace(rx_id, "ID"),
                         reply.status, json.dumps(reply.resource).replace(rx_id, "ID"), reply.headers))
        assert seen[0][0::2][:2] == ("NO_KEY_GRANT", 403), (who, seen)
        assert seen[1][:3] == ("NOT_FOUND", "no prescription ID", 404), (who, seen)
        # the denial committed (audited) twice, by show and by the GET; the missing id refused
        assert [c[2] for c in gw.calls] == ["OK", "OK", "NOT_FOUND", "NOT_FOUND"], gw.calls
    nurse, _ = ops_as(NURSE)
    meta = nurse.show(rx)
    assert (meta["rx_id"], meta["content"], meta["denied"]) == (rx, None, "NO_KEY_GRANT")


def test_a_trace_read_by_a_party_whose_consent_is_withdrawn_meanwhile_keeps_its_notes_sealed(
        contract_runner: sandbox_adapter.Runner) -> None:
    """``RxOperations.trace`` reads the trail, then fetches the key for its notes. A consent
    withdrawn in between makes the caller no party: the key fetch gets the audited denial
    (NO_KEY_GRANT; a NOT_FOUND, as a contract answering non-parties as missing ids would give,
    is taken the same way), and the trail read stands with its note sealed (``note`` None), as for a
    party without a grant -- not a NOT_FOUND for a trail the caller was allowed to read."""
    from tests.contracts.flows import JIANG

    world = World(ContractChain(runner=contract_runner))
    world.load()
    rx = approved(world).args["rx_id"]
    zhang = world.patient_who("patient-zhang")
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                       wrapped_key=world.wrap_for(rx, "h02")).unwrap()
    world.chain.submit("prescription", "revoke", JIANG, rx_id=rx, reason="OTHER",
                       note_ct="QUJD" * 12).unwrap()

    def withdraw() -> None:
        world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02").unwrap()

    gw = ContractGateway(world, ZHOU, {"get_key": withdraw})
    session = SimpleNamespace(gateway=gw, identity=SimpleNamespace(org="h02", user="dr-zhou", role="doctor"),
                              decryption_keys=list)
    out = RxOperations(session).trace(rx)  # type: ignore[arg-type]
    revoked = [st for st in out["steps"] if st["step"] == "revoke"]
    assert len(revoked) == 1 and revoked[0]["reason"] == "OTHER" and revoked[0]["note"] is None
    assert gw.calls == [("get_key", {"rx_id": rx}, "OK")]  # the committed, audited denial
