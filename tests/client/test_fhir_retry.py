"""A dispense or a claim POSTed again after a lost answer: the step already on the ledger is
answered (200, the same Bundle, Location) when it is the one described, a conflicting one
stays refused (409 with the reason), and nothing is dispensed or settled twice.

The real HTTPS gateway (mutual TLS, generated certificates) runs over an in-memory ledger
that refuses as the prescription and settlement contracts do (ALREADY_DISPENSED,
FILLS_EXHAUSTED, TOO_EARLY, NOT_ROUTED, DUPLICATE_CLAIM ...) and answers the views a GET reads
(``trace``, ``trail``, ``get_claim``) in the contracts' shapes; the reads and the claim-line
commitment are ``RxOperations``' own code over it.
"""

from __future__ import annotations

import copy
import http.client
import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from client.errors import CommitError, CommitUnknown, EndorsementError, NoKeyGrant, RxClientError
from client.fhir import mapping
from client.records import commitment, trace_code_hash
from client.rxops import ClaimLine, RxOperations, claim_lines_commitment_of
from tests.client.test_fhir import AMLO, _client
from tests.client.test_unknown_outcome_surfaces import Answer, FakeIdentities, Ledger, _gateway, _post

RX = "RX-R1"
BENI = "XC08CAB002A001010100002"
PRICES = {AMLO: 1550, BENI: 2000}  # fen per box
SALT = "5a" * 16
PHARMACY = ("p01", "pharm-wang")
CLERK = ("ins01", "clerk-zhao")
# the prescription's content and its claim subset (what the grants decrypt to)
CONTENT: dict[str, Any] = {"rx_id": RX, "patient": "ps-zhang", "diagnosis": "I10", "days": 28,
           "drugs": [{"code": AMLO, "short_name": "amlodipine", "name": "Amlodipine", "qty": 2, "days": 28},
                     {"code": BENI, "short_name": "benidipine", "name": "Benidipine", "qty": 1, "days": 28}]}
TRACE_KEY = "5a" * 32
CLAIM: dict[str, Any] = {"diagnosis": "I10", "rx_id": RX, "lines": [{"code": AMLO, "qty": 2}, {"code": BENI, "qty": 1}]}


# ---------------------------------------------------------------- an in-memory ledger


@dataclass
class Chain:
    """One prescription (AMLO x2, BENI x1) of h01 routed to p01, insured by ins01."""

    max_fills: int = 1
    parties: set[str] = field(default_factory=lambda: {"h01", "p01", "ins01"})
    fills: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)  # trace steps, contract shape
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    guard: dict[int, dict[str, Any]] = field(default_factory=dict)  # claimed/{rx}/{fill}
    submitted: list[str] = field(default_factory=list)  # every dispense/settle that reached the ledger
    lose_dispense: int = 0  # commit, and lose the answer
    hold_dispense: int = 0  # lose the answer; the tx commits when the next dispense arrives
    lose_settle: int = 0
    pending: list[Any] = field(default_factory=list)
    txs: int = 0
    code_fills: dict[str, int] = field(default_factory=dict)  # trace/{hash} -> fill (this rx)
    interval_passed: bool = False  # a repeat prescription's next fill is due
    settle_fills: list[int] = field(default_factory=list)  # the fill argument of every settle

    def tx(self) -> str:
        self.txs += 1
        return f"{self.txs:064x}"


def _refuse(reason: str, message: str = "refused") -> EndorsementError:
    return EndorsementError(reason, message)


class FakeGateway:
    """``evaluate`` of the views the gateway reads, with the contracts' role checks."""

    def __init__(self, chain: Chain, org: str) -> None:
        self.chain, self.org = chain, org

    def evaluate(self, contract: str, fn: str, args: dict[str, Any], transient: Any = None) -> Any:
        c = self.chain
        if (contract, fn) == ("prescription", "trace"):
            if self.org not in c.parties:
                raise _refuse("NOT_FOUND", "no prescription " + args["rx_id"])  # a non-party: as missing
            issue = {"step": "issue", "actor": "dr-jiang", "org": "h01", "role": "doctor", "time_ms": 1,
                     "time": "", "tx_id": "0" * 64, "block": 2, "detail": {"pharmacy": "p01"}}
            return {"rx_id": RX, "status": "x", "steps": [issue, *copy.deepcopy(c.steps)], "next": "",
                    "left": 0, "unreadable": 0, "truncated": False}
        if (contract, fn) == ("prescription", "trace_fills"):
            if self.org not in c.parties:
                raise _refuse("NOT_FOUND", "no prescription " + args["rx_id"])  # a non-party: as missing
            return {"rx_id": RX, "fills": [c.code_fills.get(h, 0) for h in args["hashes"]]}
        if (contract, fn) == ("settlement", "trail"):
            if self.org not in c.parties:
                raise _refuse("NOT_FOUND", "no prescription " + args["rx_id"])  # a non-party: as missing
            steps = [{"step": "settle", "actor": r["events"][0]["actor"], "org": r["insurer"], "role": "clerk",
                      "time_ms": r["events"][0]["time_ms"], "tx_id": r["events"][0]["tx_id"], "block": 9,
                      "detail": {"claim_id": r["claim_id"], "fill": r["fill"]}} for r in c.claims.values()]
            return {"rx_id": RX, "steps": steps, "next": "", "truncated": False}
        if (contract, fn) == ("settlement", "get_claim"):  # existence told to its readers only
            if self.org.startswith("p"):  # pharmacy staff read no claims: refused before looking
                raise _refuse("ACCESS_DENIED", "claims are read by the patient, her hospital, her insurer "
                              "and auditors")
            rec = c.claims.get(args["claim_id"])
            if rec is None or self.org not in ("ins01", "h01"):
                raise _refuse("CLAIM_NOT_FOUND", "no claim " + args["claim_id"] + " that you may read")
            return copy.deepcopy(rec)
        raise AssertionError(f"unexpected view {contract}.{fn}")


class RetryOps:
    """The ``RxOperations`` surface the gateway uses: ``show``, ``dispense`` and ``settle``
    modelled here, the reads and the claim-line commitment are RxOperations' own."""

    dispenses = RxOperations.dispenses
    claim_steps = RxOperations.claim_steps
    claim = RxOperations.claim
    claim_lines_commitment = RxOperations.claim_lines_commitment
    _all_pages = RxOperations._all_pages
    trace_fills = RxOperations.trace_fills

    def __init__(self, chain: Chain, org: str, user: str, role: str) -> None:
        self.chain = chain
        self.s = SimpleNamespace(identity=SimpleNamespace(org=org, user=user, role=role),
                                 gateway=FakeGateway(chain, org), trace_key=TRACE_KEY)

    @property
    def org(self) -> str:
        return str(self.s.identity.org)

    def _claim_grant(self, rx_id: str) -> Any:
        if self.org != "ins01":
            raise RxClientError("WRONG_ROLE", "the caller holds no insurer claim grant")
        return SimpleNamespace(body=copy.deepcopy(CLAIM), salt=SALT)

    def show(self, rx_id: str) -> dict[str, Any]:
        c = self.chain
        if rx_id != RX:
            raise RxClientError("NOT_FOUND", f"no prescription {rx_id}")
        if self.org not in c.parties:  # get_key's audited denial (DOMAIN.md section 4)
            raise NoKeyGrant()
        meta: dict[str, Any] = {"rx_id": RX, "status": "DISPENSED" if c.fills else "APPROVED", "hospital": "h01",
                                "pharmacy": "p01", "insurer": "ins01", "patient": "ps-zhang", "fills": c.fills,
                                "max_fills": c.max_fills, "content": None}
        if self.org == "ins01":
            meta["claim"] = copy.deepcopy(CLAIM)
        else:
            meta["content"] = copy.deepcopy(CONTENT)
        return meta

    # ------------------------------------------------------------ dispense (lock + dispense)
    def dispense(self, rx_id: str, trace_codes: Any = ()) -> dict[str, Any]:
        c = self.chain
        if c.pending:  # the first attempt's transaction commits first: this one loses the race
            c.pending.pop()()
            raise CommitError("MVCC_READ_CONFLICT", "read conflict", "f" * 64, 7)
        if c.fills >= c.max_fills:
            raise _refuse("ALREADY_DISPENSED" if c.max_fills == 1 else "FILLS_EXHAUSTED", "the fills are done")
        if c.fills and not c.interval_passed:
            raise _refuse("TOO_EARLY", "the next fill is allowed from 2026-12-24")
        if self.org != "p01":
            raise _refuse("NOT_ROUTED", "the prescription is routed to another pharmacy")
        if any(trace_code_hash(TRACE_KEY, code) in c.code_fills for code in trace_codes):
            raise _refuse("TRACE_CODE_REUSED", "a trace code was already used")
        tx, codes = c.tx(), list(trace_codes)

        def commit() -> None:
            c.fills += 1
            c.code_fills.update((trace_code_hash(TRACE_KEY, code), c.fills) for code in codes)
            c.submitted.append("dispense")
            c.steps.append({"step": "dispense", "actor": self.s.identity.user, "org": self.org, "role": "pharmacist",
                            "time_ms": 100 + c.fills, "time": "", "tx_id": tx, "block": 5 + c.fills,
                            "detail": {"fill": c.fills, "boxes": 3, "trace_codes": len(codes)}})

        if c.hold_dispense:
            c.hold_dispense -= 1
            c.pending.append(commit)
            raise CommitUnknown(tx, "submit failed with TIMEOUT")
        commit()
        if c.lose_dispense:
            c.lose_dispense -= 1
            raise CommitUnknown(tx, "submit failed with TIMEOUT")
        return {"rx_id": rx_id, "status": "DISPENSED", "fill": c.fills, "fills_left": c.max_fills - c.fills,
                "tx_id": tx, "block": 5 + c.fills}

    # ------------------------------------------------------------ settle
    def settle(self, rx_id: str, fill: int = 0, lines: list[ClaimLine] | None = None,
               expect_medfee_fen: int | None = None) -> dict[str, Any]:
        c = self.chain
        if self.s.identity.role != "clerk":
            raise _refuse("WRONG_ROLE", "only an insurer clerk settles claims")
        c.settle_fills.append(fill)
        fill = fill or c.fills
        if fill == 0 or fill > c.fills:
            raise _refuse("NOT_DISPENSED", "that fill was not dispensed")
        guard = c.guard.get(fill)
        if guard is not None and guard["active"]:
            raise _refuse("DUPLICATE_CLAIM", f"fill {fill} already claimed: {guard['active']}")
        wanted: list[dict[str, Any]] = CLAIM["lines"] if lines is None else [{"code": ln.code, "qty": ln.qty} for ln in lines]
        claimed: dict[str, int] = {}
        for ln in wanted:  # the contract's _claimed_lines (its lines_commitment: claim_lines_commitment_of)
            claimed[ln["code"]] = claimed.get(ln["code"], 0) + ln["qty"]
            if ln["code"] not in PRICES:
                raise _refuse("ITEM_NOT_DISPENSED", f"claimed item {ln['code']} was not dispensed")
        medfee = sum(PRICES[code] * qty for code, qty in claimed.items())
        if expect_medfee_fen is not None and expect_medfee_fen != medfee:
            raise RxClientError("AMOUNT_MISMATCH", "nothing was settled")
        count = guard["count"] if guard else 0
        claim_id, tx = f"CLM-{rx_id}-{fill}-{count + 1}", c.tx()
        rec = {"claim_id": claim_id, "rx_id": rx_id, "fill": fill, "patient": "ps-zhang", "insurer": self.org,
               "status": "SETTLED", "medfee_fen": medfee, "fund_fen": medfee * 7 // 10, "deductible_fen": 0,
               "account_fen": medfee - medfee * 7 // 10, "cash_fen": 0,
               "lines_commitment": claim_lines_commitment_of(
                   SALT, [ClaimLine(ln["code"], ln["qty"]) for ln in wanted]),
               "events": [{"step": "settle", "actor": self.s.identity.user, "org": self.org, "role": "clerk",
                           "time_ms": 1_764_000_000_000 + c.txs, "tx_id": tx}]}
        c.claims[claim_id] = rec
        c.guard[fill] = {"active": claim_id, "count": count + 1}
        c.submitted.append("settle")
        if c.lose_settle:
            c.lose_settle -= 1
            raise CommitUnknown(tx, "submit failed with TIMEOUT")
        return {**copy.deepcopy(rec), "tx_id": tx, "block": 9}


class RetryIdentities(FakeIdentities):
    def __init__(self, home: Path, chain: Chain) -> None:
        super().__init__(home, Ledger())
        self.chain = chain

    def ops_for(self, cert_der: bytes) -> RetryOps:  # type: ignore[override]
        from cryptography import x509

        from node.crypto.x509 import cert_info

        info = cert_info(x509.load_der_x509_certificate(cert_der))
        return RetryOps(self.chain, info.org, info.name, info.role)


def _serve(net_home: Any, chain: Chain) -> Any:
    return _gateway(net_home, Ledger(), RetryIdentities(net_home.home, chain))


def _dispense(codes: tuple[str, ...] = ("TC-1", "TC-2", "TC-3"), code: str = "amlodipine", qty: int | None = 2,
              fill: int | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "MedicationDispense", "status": "completed",
        "medication": {"concept": {"coding": [{"system": mapping.DRUG_SYSTEM, "code": code}]}},
        "subject": {"identifier": {"system": mapping.PATIENT_SYSTEM, "value": "patient-zhang"}},
        "authorizingPrescription": [{"reference": f"MedicationRequest/{RX}"}],
        "extension": [{"url": mapping.TRACE_SYSTEM, "valueString": c} for c in codes]}
    if qty is not None:
        res["quantity"] = {"value": qty, "unit": "box"}
    if fill is not None:
        res["identifier"] = [{"system": mapping.DISPENSE_SYSTEM, "value": f"{RX}/{fill}"}]
    return res


def _dispense_info(fill: int, how: str = "reference") -> dict[str, Any]:
    """A Claim.supportingInfo naming fill ``fill``'s MedicationDispense (``how``: its
    ``reference``, its identifier inside the reference, or a ``valueIdentifier``)."""
    info: dict[str, Any] = {"sequence": 1, "category": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/claiminformationcategory", "code": "info"}]}}
    ident = {"system": mapping.DISPENSE_SYSTEM, "value": f"{RX}/{fill}"}
    if how == "reference":
        info["valueReference"] = {"reference": f"MedicationDispense/{RX}-fill{fill}-1"}
    elif how == "identifier":
        info["valueReference"] = {"type": "MedicationDispense", "identifier": ident}
    else:
        info["valueIdentifier"] = ident
    return info


def _claim(items: list[tuple[str, int]] | None = None, total: str | None = None,
           fill: int | None = None) -> dict[str, Any]:
    """A Claim of RX (``fill``: names that fill by a supportingInfo referring to its dispense)."""
    res: dict[str, Any] = {
        "resourceType": "Claim", "status": "active", "use": "claim", "created": "2026-11-26",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]},
        "patient": {"identifier": {"system": mapping.PATIENT_SYSTEM, "value": "patient-zhang"}},
        "prescription": {"identifier": {"system": mapping.RX_SYSTEM, "value": RX}}}
    if items is not None:
        res["item"] = [{"sequence": i + 1, "productOrService": {"coding": [{"system": mapping.DRUG_SYSTEM,
                                                                            "code": code}]},
                        "quantity": {"value": qty}} for i, (code, qty) in enumerate(items)]
    if total is not None:
        res["total"] = {"value": float(total), "currency": "CNY"}
    if fill is not None:
        res["supportingInfo"] = [_dispense_info(fill)]
    return res


def _disp(port: int, net_home: Any, body: dict[str, Any], who: tuple[str, str] = PHARMACY, **headers: str) -> Answer:
    return _post(port, net_home, body, path="/fhir/MedicationDispense", who=who, **headers)


def _settle(port: int, net_home: Any, body: dict[str, Any], who: tuple[str, str] = CLERK, **headers: str) -> Answer:
    return _post(port, net_home, body, path="/fhir/Claim", who=who, **headers)


def _diagnostics(ans: Answer) -> str:
    return str(ans.body["issue"][0].get("diagnostics", ""))


# ---------------------------------------------------------------- dispense


def test_a_retried_dispense_answers_the_fill_already_dispensed(net_home: Any) -> None:
    """The ERP POSTs the dispense, POSTs it again: the second answer is 200 with the very Bundle
    of the first (same fill, tx id, pharmacist, trace codes) and nothing is dispensed again."""
    chain = Chain()
    with _serve(net_home, chain) as port:
        first = _disp(port, net_home, _dispense())
        again = _disp(port, net_home, _dispense())
    assert first.status == 201, first.body
    assert again.status == 200, again.body
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"] == f"/fhir/MedicationRequest/{RX}"
    lines = [e["resource"] for e in again.body["entry"]]
    assert [r["quantity"]["value"] for r in lines] == [2, 1]
    assert {"system": mapping.DISPENSE_SYSTEM, "value": f"{RX}/1"} in lines[0]["identifier"]
    assert lines[0]["identifier"][0]["value"] == chain.steps[0]["tx_id"]
    assert chain.submitted == ["dispense"]


def test_a_conflicting_second_dispense_is_409_with_the_reason(net_home: Any) -> None:
    """Same pharmacy, other boxes (another number of trace codes): not the dispense on the
    ledger -- 409 ALREADY_DISPENSED naming the fill; a drug or quantity that is not prescribed
    is 422 before anything is submitted."""
    chain = Chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        other_boxes = _disp(port, net_home, _dispense(codes=("TC-9",)))
        not_prescribed = _disp(port, net_home, _dispense(qty=5))
        other_drug = _disp(port, net_home, _dispense(code="nifedipine", qty=None))
    assert (other_boxes.status, other_boxes.code) == (409, "ALREADY_DISPENSED"), other_boxes.body
    assert "with 3 trace codes, this request carries 1" in other_boxes.body["issue"][0]["details"]["text"]
    assert f"rx_id={RX}" in _diagnostics(other_boxes) and "fill=1" in _diagnostics(other_boxes)
    assert (not_prescribed.status, not_prescribed.code) == (422, "ITEM_NOT_PRESCRIBED")
    assert (other_drug.status, other_drug.code) == (422, "ITEM_NOT_PRESCRIBED")
    assert chain.submitted == ["dispense"]


def test_other_boxes_as_many_as_the_first_are_not_a_retry(net_home: Any) -> None:
    """Same pharmacy, same number of trace codes, other boxes: the codes' keyed hashes
    (``prescription.trace_fills``) were not recorded in that fill -- 409, not the first fill's
    Bundle. On a repeat prescription a next fill sent too early with new boxes stays TOO_EARLY
    (it used to be answered 200 as a retry of fill 1: the pharmacy would have handed out
    boxes the ledger never recorded)."""
    chain = Chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        swapped = _disp(port, net_home, _dispense(codes=("TC-1", "TC-2", "TC-7")))
        same = _disp(port, net_home, _dispense(codes=("TC-3", "TC-1", "TC-2")))  # order does not matter
    assert (swapped.status, swapped.code) == (409, "ALREADY_DISPENSED"), swapped.body
    assert "1 of this request's 3 trace codes were not (the first, #3, was recorded in no fill" in \
        swapped.body["issue"][0]["details"]["text"]
    assert same.status == 200, same.body
    repeat = Chain(max_fills=2)
    with _serve(net_home, repeat) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        early = _disp(port, net_home, _dispense(codes=("TC-4", "TC-5", "TC-6")))
        retry = _disp(port, net_home, _dispense())
    assert (early.status, early.code) == (422, "TOO_EARLY"), early.body
    assert retry.status == 200, retry.body
    assert chain.submitted == repeat.submitted == ["dispense"]


@pytest.mark.parametrize("party", [False, True])
def test_a_dispense_by_another_pharmacy_is_refused(net_home: Any, party: bool) -> None:
    """p01 dispensed; p02 POSTs the same dispense. Whether p02 may read the prescription (an
    earlier routing left it a grant) or not, it gets 409 ALREADY_DISPENSED and no Bundle of
    p01's fill."""
    chain = Chain()
    if party:
        chain.parties.add("p02")
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        other = _disp(port, net_home, _dispense(), who=("p02", "pharm-chen"))
    assert (other.status, other.code) == (409, "ALREADY_DISPENSED"), other.body
    assert other.body["resourceType"] == "OperationOutcome" and "entry" not in other.body
    if party:
        assert "another pharmacy" in other.body["issue"][0]["details"]["text"]
    assert chain.submitted == ["dispense"]


def test_a_retry_after_an_unknown_dispense_outcome(net_home: Any) -> None:
    """504 naming the prescription and the tx; the POST sent again finds the fill (200)."""
    chain = Chain(lose_dispense=1)
    with _serve(net_home, chain) as port:
        lost = _disp(port, net_home, _dispense())
        again = _disp(port, net_home, _dispense())
    assert (lost.status, lost.code) == (504, "COMMIT_UNKNOWN")
    assert lost.headers["Location"] == f"/fhir/MedicationRequest/{RX}"
    assert f"rx_id={RX}" in _diagnostics(lost) and f"tx_id={chain.steps[0]['tx_id']}" in _diagnostics(lost)
    assert again.status == 200, again.body
    assert again.body["entry"][0]["resource"]["identifier"][0]["value"] == chain.steps[0]["tx_id"]
    assert chain.submitted == ["dispense"]


def test_a_retry_racing_a_first_attempt_still_in_flight(net_home: Any) -> None:
    """The first attempt's answer is lost before it commits; the retry's own transaction then
    loses to it (MVCC_READ_CONFLICT): that is the first attempt's fill, answered 200 -- never
    a refusal of a dispense that did happen."""
    chain = Chain(hold_dispense=1)
    with _serve(net_home, chain) as port:
        lost = _disp(port, net_home, _dispense())
        assert chain.submitted == []  # not committed yet
        again = _disp(port, net_home, _dispense())
    assert lost.status == 504 and again.status == 200, again.body
    assert chain.fills == 1 and chain.submitted == ["dispense"]


def test_conditional_dispense_names_the_fill(net_home: Any) -> None:
    """``If-None-Exist: identifier=urn:rxchain:dispense|RX/FILL``: dispense that fill unless it
    exists. A fill already dispensed is answered without asking the ledger to dispense; a fill
    beyond the next, another system or another prescription is refused."""
    chain = Chain(max_fills=3)
    fill1 = "identifier=" + urllib.parse.quote(f"{mapping.DISPENSE_SYSTEM}|{RX}/1", safe="")
    with _serve(net_home, chain) as port:
        created = _disp(port, net_home, _dispense(), If_None_Exist=fill1)
        found = _disp(port, net_home, _dispense(), If_None_Exist=fill1)
        in_body = _disp(port, net_home, _dispense(fill=1))
        unnamed = _disp(port, net_home, _dispense())  # a new fill: too early
        skipped = _disp(port, net_home, _dispense(fill=3))
        foreign = _disp(port, net_home, _dispense(), If_None_Exist="identifier=urn:erp|D-1")
        other_rx = _disp(port, net_home, _dispense(), If_None_Exist=f"identifier={mapping.DISPENSE_SYSTEM}|RX-9/1")
    assert (created.status, found.status, in_body.status) == (201, 200, 200), (found.body, in_body.body)
    assert found.body == created.body == in_body.body
    # unnamed on a repeat prescription: the latest fill is this one, so it is a retry of it
    assert unnamed.status == 200
    assert (skipped.status, skipped.code) == (422, "FILL_OUT_OF_ORDER")
    assert (foreign.status, foreign.code) == (400, "FHIR_INVALID")
    assert (other_rx.status, other_rx.code) == (400, "FHIR_INVALID")
    assert chain.submitted == ["dispense"]


# ---------------------------------------------------------------- claim


def _get(port: int, net_home: Any, path: str, who: tuple[str, str]) -> Answer:
    conn = http.client.HTTPSConnection("localhost", port, context=_client(net_home, net_home.user_dir(*who)),
                                       timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return Answer(resp.status, json.loads(resp.read()), dict(resp.getheaders()))
    finally:
        conn.close()


def test_a_retried_claim_answers_the_settled_claim(net_home: Any) -> None:
    """The insurer POSTs the Claim, POSTs it again: 200 with the same Bundle and Location
    (``GET`` reads that Claim); a pharmacist POSTing it is refused and sees no claim."""
    chain = Chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        first = _settle(port, net_home, _claim())
        again = _settle(port, net_home, _claim())
        read = _get(port, net_home, first.headers["Location"], CLERK)
        stranger = _settle(port, net_home, _claim(), who=PHARMACY)
    assert first.status == 201 and again.status == 200, again.body
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"] == f"/fhir/Claim/CLM-{RX}-1-1"
    assert read.status == 200 and read.body == first.body["entry"][0]["resource"]
    assert stranger.status == 403 and "entry" not in stranger.body
    assert chain.submitted == ["dispense", "settle"]


def test_a_claim_for_other_lines_or_amounts_is_409(net_home: Any) -> None:
    """Lines and amounts are compared with the settled claim (its lines through their
    commitment, its medical fee): a retry claiming other boxes, the same boxes split into other
    lines (the B share is rounded per line: another split is another settlement) or another
    total is refused DUPLICATE_CLAIM naming the claim; the same lines and total are the claim
    (200). A first POST whose total is not what the contract computes is refused before it is
    submitted."""
    chain = Chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        wrong_total = _settle(port, net_home, _claim(total="99.00"))
        assert chain.submitted == ["dispense"]
        first = _settle(port, net_home, _claim([(AMLO, 1), (AMLO, 1)], total="31.00"))
        same = _settle(port, net_home, _claim([(AMLO, 1), (AMLO, 1)], total="31.00"))
        resplit = _settle(port, net_home, _claim([(AMLO, 2)], total="31.00"))
        fewer = _settle(port, net_home, _claim([(AMLO, 1)]))
        everything = _settle(port, net_home, _claim())
        other_total = _settle(port, net_home, _claim([(AMLO, 1), (AMLO, 1)], total="30.00"))
    assert (wrong_total.status, wrong_total.code) == (422, "AMOUNT_MISMATCH")
    assert first.status == 201, first.body
    assert same.status == 200 and same.body == first.body, same.body
    for ans in (resplit, fewer, everything, other_total):
        assert (ans.status, ans.code) == (409, "DUPLICATE_CLAIM"), ans.body
        assert f"claim_id=CLM-{RX}-1-1" in _diagnostics(ans)
    assert chain.submitted == ["dispense", "settle"]


def test_a_retry_after_an_unknown_claim_outcome(net_home: Any) -> None:
    chain = Chain(lose_settle=1)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        lost = _settle(port, net_home, _claim())
        again = _settle(port, net_home, _claim())
    assert (lost.status, lost.code) == (504, "COMMIT_UNKNOWN")
    assert f"rx_id={RX}" in _diagnostics(lost) and "tx_id=" in _diagnostics(lost)
    assert again.status == 200, again.body
    assert again.headers["Location"] == f"/fhir/Claim/CLM-{RX}-1-1"
    assert chain.submitted == ["dispense", "settle"]


def test_conditional_claim_names_the_claim(net_home: Any) -> None:
    """``If-None-Exist: identifier=urn:rxchain:claim|CLM-RX-FILL-N``: settle unless claim N of
    the fill exists; N must be the fill's next claim (after a reversal: the next number)."""
    chain = Chain()
    first_id, second_id = f"CLM-{RX}-1-1", f"CLM-{RX}-1-2"
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        created = _settle(port, net_home, _claim(), If_None_Exist=f"identifier={mapping.CLAIM_SYSTEM}|{first_id}")
        found = _settle(port, net_home, _claim(), If_None_Exist=f"identifier={mapping.CLAIM_SYSTEM}|{first_id}")
        early = _settle(port, net_home, _claim(), If_None_Exist=f"identifier={mapping.CLAIM_SYSTEM}|{second_id}")
        foreign = _settle(port, net_home, _claim(), If_None_Exist="identifier=urn:ins|C-1")
        other_rx = _settle(port, net_home, _claim(), If_None_Exist=f"identifier={mapping.CLAIM_SYSTEM}|CLM-RX-9-1-1")
        chain.claims[first_id]["status"] = "REVERSED"  # the insurer reverses it: the fill may be claimed again
        chain.guard[1]["active"] = ""
        reversed_one = _settle(port, net_home, _claim(), If_None_Exist=f"identifier={mapping.CLAIM_SYSTEM}|{first_id}")
        second = _settle(port, net_home, _claim(), If_None_Exist=f"identifier={mapping.CLAIM_SYSTEM}|{second_id}")
        missing = _get(port, net_home, f"/fhir/Claim/CLM-{RX}-1-9", CLERK)
        bad = _get(port, net_home, "/fhir/Claim/a%20b", CLERK)
    assert (created.status, found.status) == (201, 200) and found.body == created.body
    assert (early.status, early.code) == (422, "CLAIM_OUT_OF_ORDER")
    assert (foreign.status, foreign.code) == (400, "FHIR_INVALID")
    assert (other_rx.status, other_rx.code) == (400, "FHIR_INVALID")
    # the named claim exists but was reversed: not a settled claim, never settled under its name again
    assert (reversed_one.status, reversed_one.code) == (409, "DUPLICATE_CLAIM")
    assert second.status == 201 and second.headers["Location"] == f"/fhir/Claim/{second_id}"
    assert (missing.status, missing.code) == (404, "CLAIM_NOT_FOUND")
    assert (bad.status, bad.code) == (400, "FHIR_INVALID")
    assert chain.submitted == ["dispense", "settle", "settle"]


# ---------------------------------------------------------------- RxOperations under the gateway


def test_rxops_settle_claims_the_lines_and_checks_the_fee_before_submitting() -> None:
    """``settle(lines=...)`` hands the contract its transient ``lines``; ``expect_medfee_fen``
    evaluates first and submits nothing when the fee differs; the lines commitment is the
    contract's (one entry per code, in order of first appearance, with the code's line
    quantities when it is on several lines: the B share is rounded per line)."""
    from client.gateway import SubmitResult

    calls: list[tuple[str, str, Any]] = []

    class Gw:
        def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
            calls.append(("evaluate", fn, transient))
            return {"pharmacy": "p01", "hospital": "h01"} if fn == "show" else {"medfee_fen": 3100}

        def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
                   endorsing_orgs: Any = None) -> SubmitResult:
            calls.append(("submit", fn, transient))
            return SubmitResult("ab" * 32, "VALID", 4, {"claim_id": f"CLM-{RX}-1-1"})

    peers = [SimpleNamespace(org=o) for o in ("h01", "p01", "ins01")]
    ops = RxOperations(SimpleNamespace(gateway=Gw(), identity=SimpleNamespace(org="ins01"),  # type: ignore[arg-type]
                                       net=SimpleNamespace(peers=peers)))
    ops._claim_grant = lambda rx_id: SimpleNamespace(body=CLAIM, salt=SALT)  # type: ignore[method-assign,return-value,assignment]
    with pytest.raises(RxClientError) as refused:
        ops.settle(RX, 1, [ClaimLine(AMLO, 2)], expect_medfee_fen=3000)
    assert refused.value.reason == "AMOUNT_MISMATCH" and [c[0] for c in calls] == ["evaluate", "evaluate"]
    out = ops.settle(RX, 1, [ClaimLine(AMLO, 2)], expect_medfee_fen=3100)
    assert out["claim_id"] == f"CLM-{RX}-1-1"
    assert calls[-1] == ("submit", "settle", {"claim": CLAIM, "claim_salt": SALT, "lines": [{"code": AMLO, "qty": 2}]})
    assert calls[-2] == ("evaluate", "settle", calls[-1][2])  # the same claim, evaluated first
    split = [ClaimLine(AMLO, 1), ClaimLine(BENI, 1), ClaimLine(AMLO, 2)]
    assert ops.claim_lines_commitment(RX, split) == commitment(
        SALT, [{"code": AMLO, "qty": 3, "lines": [1, 2]}, {"code": BENI, "qty": 1}])
    assert ops.claim_lines_commitment(RX, split[::-1]) == commitment(  # code order as before
        SALT, [{"code": AMLO, "qty": 3, "lines": [1, 2]}, {"code": BENI, "qty": 1}]) != ops.claim_lines_commitment(
        RX, [ClaimLine(AMLO, 3), ClaimLine(BENI, 1)])
    assert ops.claim_lines_commitment(RX) == commitment(SALT, CLAIM["lines"])


@pytest.mark.parametrize(("failure", "released"), [
    (EndorsementError("TRACE_CODE_REUSED", "trace code #1 was already used"), True),
    (CommitError("MVCC_READ_CONFLICT", "read conflict", "ab" * 32, 9), True),
    (CommitUnknown("ab" * 32, "submit failed with TIMEOUT"), False),  # may have dispensed
])
def test_a_refused_dispense_releases_the_lock_it_took(failure: RxClientError, released: bool) -> None:
    """RxOperations.dispense locks first; a dispense refused after that (nothing dispensed)
    used to leave the prescription locked by this pharmacy against every other one. The lock
    it took is released; never after an unknown outcome, never a lock it did not take."""
    from client.gateway import SubmitResult

    calls: list[str] = []

    class Gw:
        def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
            return {"pharmacy": "p01", "hospital": "h01", "lock": {"org": "p01"}}

        def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
                   endorsing_orgs: Any = None) -> SubmitResult:
            calls.append(fn)
            if fn == "lock" and "held" in calls:
                raise EndorsementError("ALREADY_LOCKED", "locked by p01")
            if fn == "dispense":
                raise failure
            return SubmitResult("cd" * 32, "VALID", 3, {"rx_id": RX})

    peers = [SimpleNamespace(org=o) for o in ("h01", "p01")]
    ops = RxOperations(SimpleNamespace(gateway=Gw(), identity=SimpleNamespace(org="p01", role="pharmacist"),  # type: ignore[arg-type]
                                       net=SimpleNamespace(peers=peers), trace_key=TRACE_KEY))
    ops._get_key = lambda rx_id: SimpleNamespace(body=CONTENT, salt=SALT)  # type: ignore[method-assign,assignment,return-value]
    with pytest.raises(RxClientError) as exc:
        ops.dispense(RX, ["TC-1"])
    assert exc.value is failure
    assert calls == (["lock", "dispense", "release"] if released else ["lock", "dispense"])
    calls[:] = ["held"]  # a lock this pharmacy already held (an earlier call): kept
    with pytest.raises(RxClientError):
        ops.dispense(RX, ["TC-1"])
    assert calls == ["held", "lock", "dispense"]


def test_an_unnamed_resend_after_the_fill_interval_finds_its_fill_by_its_boxes(net_home: Any) -> None:
    """Repeat prescription, next fill due: the ERP re-sends fill 1's dispense without naming
    the fill. The contract refuses TRACE_CODE_REUSED (its boxes went out); every code was
    recorded in fill 1 (trace_fills), so it is fill 1's retry: 200 with its Bundle (it used to
    be 422). Boxes of fill 1 mixed with new ones stay refused; new boxes dispense fill 2."""
    chain = Chain(max_fills=2, interval_passed=True)
    with _serve(net_home, chain) as port:
        first = _disp(port, net_home, _dispense())
        again = _disp(port, net_home, _dispense())
        mixed = _disp(port, net_home, _dispense(codes=("TC-1", "TC-8", "TC-9")))
        second = _disp(port, net_home, _dispense(codes=("TC-4", "TC-5", "TC-6")))
    assert first.status == 201 and again.status == 200, again.body
    assert again.body == first.body
    assert (mixed.status, mixed.code) == (422, "TRACE_CODE_REUSED"), mixed.body
    assert second.status == 201, second.body
    assert chain.fills == 2 and chain.submitted == ["dispense", "dispense"]


# ---------------------------------------------------------------- unnamed claims of a repeat prescription


def test_an_unnamed_claim_resent_after_the_next_fill_is_not_settled_as_that_fill(net_home: Any) -> None:
    """Repeat prescription: fill 1 dispensed and claimed by a Claim naming no fill, whose
    answer is lost; fill 2 is dispensed; the insurer re-sends the very same Claim. It used to
    be settled as fill 2 (the latest, unclaimed): the fill-1 claim's retry paid fill 2, and
    fill 2's own claim was then refused DUPLICATE_CLAIM. Now an unnamed Claim is refused
    FILL_NOT_NAMED once a second fill exists, nothing settled; naming the fill through the
    MedicationDispense the gateway answered (any of the three forms) makes it exact: fill 1's
    retry is 200 with its claim, fill 2 is settled 201, and re-sent is 200."""
    chain = Chain(max_fills=2, interval_passed=True, lose_settle=1)
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        lost = _settle(port, net_home, _claim())
        assert _disp(port, net_home, _dispense(codes=("TC-4", "TC-5", "TC-6"))).status == 201
        resent = _settle(port, net_home, _claim())
        resent_total = _settle(port, net_home, _claim(total="51.00"))
        unrelated = _settle(port, net_home, _claim() | {"supportingInfo": [
            _dispense_info(1) | {"valueReference": {"reference": "Patient/1"}}]})
        assert chain.submitted == ["dispense", "settle", "dispense"]
        retries = [_settle(port, net_home, _claim() | {"supportingInfo": [_dispense_info(1, how)]})
                   for how in ("reference", "identifier", "value")]
        second = _settle(port, net_home, _claim(fill=2))
        second_again = _settle(port, net_home, _claim(fill=2))
        after = _settle(port, net_home, _claim())
        pharmacy = _settle(port, net_home, _claim(), who=PHARMACY)
    assert (pharmacy.status, pharmacy.code) == (403, "WRONG_ROLE")  # its role first, not "name the fill"
    assert (lost.status, lost.code) == (504, "COMMIT_UNKNOWN")
    assert "fill=1" in _diagnostics(lost)  # the fill to name when sending it again
    for ans in (resent, resent_total, unrelated, after):
        assert (ans.status, ans.code) == (422, "FILL_NOT_NAMED"), ans.body
        assert f"MedicationDispense/{RX}-fillN-1" in ans.body["issue"][0]["details"]["text"]
    for ans in retries:
        assert ans.status == 200 and ans.headers["Location"] == f"/fhir/Claim/CLM-{RX}-1-1", ans.body
    assert second.status == 201 and second.headers["Location"] == f"/fhir/Claim/CLM-{RX}-2-1", second.body
    assert second_again.status == 200 and second_again.body == second.body
    assert sorted(chain.claims) == [f"CLM-{RX}-1-1", f"CLM-{RX}-2-1"]
    assert chain.submitted == ["dispense", "settle", "dispense", "settle"]


def test_an_unnamed_first_claim_settles_the_only_fill(net_home: Any) -> None:
    """The ordinary case: a Claim naming no fill while one fill is dispensed settles that fill
    (submitted as fill 1, not "the latest": a fill dispensed meanwhile is not taken instead),
    and re-sent it is 200; with no fill yet it is the contract's NOT_DISPENSED."""
    chain = Chain(max_fills=2, interval_passed=True)
    with _serve(net_home, chain) as port:
        early = _settle(port, net_home, _claim())
        assert _disp(port, net_home, _dispense()).status == 201
        first = _settle(port, net_home, _claim(total="51.00"))
        again = _settle(port, net_home, _claim())
    assert (early.status, early.code) == (422, "NOT_DISPENSED")
    assert first.status == 201 and first.headers["Location"] == f"/fhir/Claim/CLM-{RX}-1-1", first.body
    assert again.status == 200 and again.body == first.body
    assert chain.settle_fills == [1, 1, 1]  # never 0: the contract's "latest fill"
    assert chain.submitted == ["dispense", "settle"]


def test_a_claim_names_its_fill_consistently(net_home: Any) -> None:
    """Malformed fill names are 400 and submit nothing: a dispense of another prescription, two
    fills, a claim id and a dispense of other fills, a MedicationDispense id not of this
    gateway's shape, and a MedicationDispense given as the prescription (its id is no rx id).
    A named fill not dispensed is the contract's NOT_DISPENSED."""
    chain = Chain(max_fills=2, interval_passed=True)
    bad = [
        _claim() | {"supportingInfo": [_dispense_info(1) | {"valueReference": {
            "reference": "MedicationDispense/RX-OTHER-fill1-1"}}]},
        _claim() | {"supportingInfo": [_dispense_info(1) | {"valueIdentifier": {
            "system": mapping.DISPENSE_SYSTEM, "value": "RX-OTHER/1"}}]},
        _claim() | {"supportingInfo": [_dispense_info(1), _dispense_info(2, "value") | {"sequence": 2}]},
        _claim(fill=2) | {"identifier": [{"system": mapping.CLAIM_SYSTEM, "value": f"CLM-{RX}-1-1"}]},
        _claim() | {"supportingInfo": [_dispense_info(1) | {"valueReference": {
            "reference": f"MedicationDispense/{RX}"}}]},
        _claim() | {"supportingInfo": [_dispense_info(1) | {"valueIdentifier": {
            "system": mapping.DISPENSE_SYSTEM, "value": f"{RX}/0"}}]},
        _claim() | {"prescription": {"reference": f"MedicationDispense/{RX}-fill1-1"}},
    ]
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        answers = [_settle(port, net_home, body) for body in bad]
        undispensed = _settle(port, net_home, _claim(fill=2))
        absolute = _settle(port, net_home, _claim() | {"supportingInfo": [_dispense_info(1) | {"valueReference": {
            "reference": f"https://gw.example/fhir/MedicationDispense/{RX}-fill1-2/_history/1"}}]})
    for ans in answers:
        assert (ans.status, ans.code) == (400, "FHIR_INVALID"), ans.body
    assert (undispensed.status, undispensed.code) == (422, "NOT_DISPENSED")
    assert absolute.status == 201 and absolute.headers["Location"] == f"/fhir/Claim/CLM-{RX}-1-1"
    assert chain.submitted == ["dispense", "settle"]


def test_reading_a_claim_tells_existence_to_its_readers_only(net_home: Any) -> None:
    """``GET /fhir/Claim/{id}``: the contract answers a claim its caller may not read as a
    missing one (CLAIM_NOT_FOUND: 404) and a role that reads no claims ACCESS_DENIED before
    looking (403): the answers for an existing and a missing id are the same."""
    chain = Chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        assert _settle(port, net_home, _claim()).status == 201
        real, missing = f"/fhir/Claim/CLM-{RX}-1-1", f"/fhir/Claim/CLM-{RX}-2-1"
        seen = {who: [_get(port, net_home, path, who) for path in (real, missing)]
                for who in (PHARMACY, ("h02", "patient-sun"), CLERK)}
    for who, status in ((PHARMACY, 403), (("h02", "patient-sun"), 404)):
        a, b = seen[who]
        assert a.status == b.status == status
        assert json.dumps(a.body).replace("-1-1", "-N-1") == json.dumps(b.body).replace("-2-1", "-N-1")
    assert seen[CLERK][0].status == 200 and seen[CLERK][1].status == 404


@pytest.mark.parametrize("reference", [
    f"MedicationDispense/{RX}-fill2-1?_format=json",
    f"MedicationDispense/{RX}-fill2-1#line",
    f"https://gw.example/fhir/MedicationDispense/{RX}-fill2-1/_history/1?x=1",
    f"MedicationDispense?identifier={mapping.DISPENSE_SYSTEM}|{RX}/2",
    "#dispense-2",
])
def test_a_dispense_reference_the_gateway_cannot_read_is_400(net_home: Any, reference: str) -> None:
    """A supportingInfo referring to a MedicationDispense in a form that names no fill here (a
    query, a fragment, a search, a contained resource) is refused, not passed over: passed over,
    the Claim named no fill and was settled as fill 1, the only fill this peer had seen, while
    it claimed fill 2 (dispensed, on a peer behind)."""
    chain = Chain(max_fills=2, interval_passed=True)
    info = _dispense_info(2) | {"valueReference": {"type": "MedicationDispense", "reference": reference}}
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        ans = _settle(port, net_home, _claim() | {"supportingInfo": [info]})
    assert (ans.status, ans.code) == (400, "FHIR_INVALID"), ans.body
    assert "supportingInfo[0]" in ans.body["issue"][0]["details"]["text"]
    assert chain.submitted == ["dispense"]


def test_a_claim_identifier_of_a_dispense_is_400(net_home: Any) -> None:
    """``Claim.identifier`` ``urn:rxchain:dispense|RX/2`` (the dispense's identifier put on the
    Claim, as a MedicationDispense names its fill) names no fill here: it was passed over, so
    the Claim was settled as fill 1, the only fill this peer had seen. It is refused, pointing
    at supportingInfo."""
    chain = Chain(max_fills=2, interval_passed=True)
    body = _claim() | {"identifier": [{"system": mapping.DISPENSE_SYSTEM, "value": f"{RX}/2"}]}
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        ans = _settle(port, net_home, body)
    assert (ans.status, ans.code) == (400, "FHIR_INVALID"), ans.body
    assert "supportingInfo" in ans.body["issue"][0]["details"]["text"]
    assert chain.submitted == ["dispense"]


def test_a_prescription_id_no_fhir_id_can_hold_is_still_answered(net_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contracts take rx ids with ``_`` (``rx issue --rx-id RX_R1``), which a FHIR ``id``
    cannot hold: the MedicationDispense and Claim ids made of it failed validation, so a claim
    that settled (the fund share paid) was answered 400 FHIR_INVALID, "refused, fix the
    request", and so was every retry of it and the dispense's retry. The resources now leave
    out an ``id`` that is no FHIR id; their identifiers name them."""
    monkeypatch.setattr(__import__(__name__, fromlist=["RX"]), "RX", "RX_R1")
    chain = Chain()
    with _serve(net_home, chain) as port:
        dispensed = _disp(port, net_home, _dispense())
        again = _disp(port, net_home, _dispense())
        settled = _settle(port, net_home, _claim())
        retried = _settle(port, net_home, _claim())
        read = _get(port, net_home, "/fhir/Claim/CLM-RX_R1-1-1", CLERK)
        shown = _get(port, net_home, "/fhir/MedicationRequest/RX_R1", PHARMACY)
    assert (dispensed.status, again.status) == (201, 200), again.body
    disp = dispensed.body["entry"][0]["resource"]
    assert "id" not in disp and {"system": mapping.DISPENSE_SYSTEM, "value": "RX_R1/1"} in disp["identifier"]
    assert (settled.status, retried.status, read.status, shown.status) == (201, 200, 200, 200), settled.body
    assert chain.submitted == ["dispense", "settle"]
    claim, response = (e["resource"] for e in settled.body["entry"])
    assert "id" not in claim and claim["identifier"] == [{"system": mapping.CLAIM_SYSTEM, "value": "CLM-RX_R1-1-1"}]
    assert response["request"]["identifier"]["value"] == "CLM-RX_R1-1-1"
    assert settled.headers["Location"] == "/fhir/Claim/CLM-RX_R1-1-1"
    assert shown.body["identifier"]["value"] == "RX_R1" and "id" not in shown.body["entry"][0]["resource"]


def test_a_settled_claim_whose_answer_cannot_be_built_is_still_201(net_home: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim that settled is never answered an error: a warning OperationOutcome names it."""
    def broken(rec: Any, insurer: str) -> Any:
        raise KeyError("medfee_fen")

    chain = Chain()
    with _serve(net_home, chain) as port:
        assert _disp(port, net_home, _dispense()).status == 201
        monkeypatch.setattr(mapping, "claim_and_response", broken)
        ans = _settle(port, net_home, _claim())
    assert (ans.status, ans.body["issue"][0]["severity"]) == (201, "warning"), ans.body
    assert f"claim_id=CLM-{RX}-1-1" in _diagnostics(ans) and ans.headers["Location"] == f"/fhir/Claim/CLM-{RX}-1-1"
    assert chain.submitted == ["dispense", "settle"]
