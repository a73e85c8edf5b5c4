"""What the FHIR gateway and the CLI tell a caller whose transaction may have committed, and how
a retried issue finds the first prescription instead of issuing a second one.

The FHIR tests run the real HTTPS gateway (mutual TLS, generated certificates) with the
ledger replaced by an in-memory one that refuses a second issue under one rx id the way the
prescription contract does (DUPLICATE_RX). The CLI tests run ``client.cli.main`` over a home
with the sample data, the gateway's ``submit``/``evaluate`` replaced (no peer runs).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import http.client
import io
import json
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from client.errors import CommitUnknown, EndorsementError, NoKeyGrant, RxClientError
from client.fhir import mapping
from client.fhir.server import make_server
from client.gateway import Gateway
from client.rxops import IssueRequest
from tests.client.offline import offline_home
from tests.client.test_fhir import _bundle, _client, _mr
from tests.harness.servers import serving

PROJECT = Path(__file__).resolve().parents[2]
TX = "ab" * 32


# ---------------------------------------------------------------- an in-memory ledger


@dataclass
class Ledger:
    """Prescriptions by rx id; ``lose`` makes the next issues commit but lose their answer,
    ``fail`` makes them fail with that reason before anything is written."""

    rx: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)  # rx id of every issue proposed
    lose: int = 0
    fail: str = ""
    unreadable: int = 0  # the next ``show`` calls fail with TIMEOUT


class FakeOps:
    """The part of RxOperations the FHIR gateway uses, over a :class:`Ledger`."""

    def __init__(self, ledger: Ledger, org: str) -> None:
        self.ledger = ledger
        self.s = SimpleNamespace(identity=SimpleNamespace(org=org, user="dr-jiang"))

    def patient(self, ref: str) -> tuple[None, str]:
        return None, "ps-" + ref

    def issue(self, req: IssueRequest, rx_id: str | None = None) -> dict[str, Any]:
        led = self.ledger
        rx_id = rx_id or f"RX20261126-{self.s.identity.org}-{len(led.attempts):010x}"
        led.attempts.append(rx_id)
        if led.fail:
            raise RxClientError(led.fail, "call failed: ipv4:10.1.2.3:7051 reset")
        if rx_id in led.rx:
            from client.errors import DuplicateRx
            raise DuplicateRx(rx_id, f"prescription {rx_id} already exists")
        led.rx[rx_id] = {
            "rx_id": rx_id, "status": "ISSUED", "hospital": self.s.identity.org, "patient": "ps-" + req.patient,
            "content": {"rx_id": rx_id, "patient": "ps-" + req.patient, "diagnosis": req.diagnosis,
                        "days": req.days, "drugs": [{"code": d.drug if len(d.drug) == 23 else "X" * 23,
                                                     "short_name": d.drug, "qty": d.qty, "days": req.days}
                                                    for d in req.drugs],
                        # as RxOperations.issue seals them (the chronic reason only when given)
                        "long_rx": req.long_rx, "max_fills": req.max_fills,
                        "fill_interval_days": req.fill_interval_days, "valid_days": req.valid_days,
                        **({"chronic_reason": req.chronic_reason} if req.chronic_reason else {})}}
        if led.lose:
            led.lose -= 1
            raise CommitUnknown(TX, f"prescription {rx_id} may have been issued: submit failed with TIMEOUT",
                                rx_id=rx_id)
        return {"rx_id": rx_id, "tx_id": TX, "block": 3}

    def show(self, rx_id: str) -> dict[str, Any]:
        if self.ledger.unreadable:
            self.ledger.unreadable -= 1
            raise RxClientError("TIMEOUT", "deadline exceeded")
        if rx_id not in self.ledger.rx:
            raise RxClientError("NOT_FOUND", f"no prescription {rx_id}")
        meta = copy.deepcopy(self.ledger.rx[rx_id])
        if meta["hospital"] != self.s.identity.org:
            raise NoKeyGrant()
        return meta


class FakeIdentities:
    def __init__(self, home: Path, ledger: Ledger) -> None:
        self.home = home
        self.ledger = ledger

    def ops_for(self, cert_der: bytes) -> FakeOps:
        from cryptography import x509

        from node.crypto.x509 import cert_info

        return FakeOps(self.ledger, cert_info(x509.load_der_x509_certificate(cert_der)).org)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _gateway(net_home: Any, ledger: Ledger, identities: Any = None) -> Iterator[int]:
    """The real HTTPS gateway over ``identities`` (default: :class:`FakeOps` over ``ledger``)."""
    server, ids = make_server(net_home.home, "127.0.0.1", 0, handshake_timeout_s=3.0)
    server.app.ids = identities or FakeIdentities(net_home.home, ledger)  # type: ignore[assignment]
    try:
        with serving(server) as port:
            yield port
    finally:
        ids.close()


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def code(self) -> str:
        return str(self.body["issue"][0]["details"]["coding"][0]["code"])


def _post(port: int, net_home: Any, body: dict[str, Any], path: str = "/fhir/MedicationRequest",
          who: tuple[str, str] = ("h01", "dr-jiang"), **headers: str) -> Answer:
    conn = http.client.HTTPSConnection("localhost", port, context=_client(net_home, net_home.user_dir(*who)),
                                       timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/fhir+json",
                              **{k.replace("_", "-"): v for k, v in headers.items()}})
        resp = conn.getresponse()
        return Answer(resp.status, json.loads(resp.read()), dict(resp.getheaders()))
    finally:
        conn.close()


def _with_id(value: str, system: str = "urn:oid:1.2.156.112.1.his") -> dict[str, Any]:
    return _mr(identifier=[{"system": system, "value": value}])


def _rx_of(ans: Answer) -> str:
    return ans.headers["Location"].rsplit("/", 1)[1]


# ---------------------------------------------------------------- FHIR: status codes


@pytest.mark.parametrize(("reason", "status"), [("TIMEOUT", 504), ("INTERNAL", 502), ("RPC_FAILED", 502)])
def test_a_failed_ledger_call_is_a_gateway_error_never_a_4xx(net_home: Any, reason: str, status: int) -> None:
    """A 4xx reads "fix the request and send it again"; a 503 + Retry-After reads "send it
    again": both invite a second prescription when the first may have been issued."""
    ledger = Ledger(fail=reason)
    with _gateway(net_home, ledger) as port:
        ans = _post(port, net_home, _mr())
    assert (ans.status, ans.code) == (status, reason)
    assert "Retry-After" not in ans.headers
    text = ans.body["issue"][0]["details"]["text"]
    assert "10.1.2.3" not in text and "may have been carried out" in text


def test_an_unknown_issue_is_504_naming_the_prescription_that_may_exist(net_home: Any) -> None:
    ledger = Ledger(lose=1)
    with _gateway(net_home, ledger) as port:
        ans = _post(port, net_home, _mr())
    rx_id = ledger.attempts[0]
    assert (ans.status, ans.code) == (504, "COMMIT_UNKNOWN")
    assert ans.headers["Location"] == f"/fhir/MedicationRequest/{rx_id}"
    diagnostics = ans.body["issue"][0]["diagnostics"]
    assert f"rx_id={rx_id}" in diagnostics and f"tx_id={TX}" in diagnostics
    mapping.validate_resource(ans.body)


def test_a_retry_after_an_unknown_outcome_answers_the_first_prescription(net_home: Any) -> None:
    """The HIS POSTs, the answer is lost (504), it POSTs the same resource again: the
    prescription issued by the first POST comes back (200), no second one is issued."""
    ledger = Ledger(lose=1)
    with _gateway(net_home, ledger) as port:
        first = _post(port, net_home, _with_id("HIS-2026-000123"))
        again = _post(port, net_home, _with_id("HIS-2026-000123"))
    assert first.status == 504 and again.status == 200, again.body
    assert len(ledger.rx) == 1 and ledger.attempts[0] == ledger.attempts[1]
    assert again.headers["Location"] == first.headers["Location"]
    assert again.body["identifier"]["value"] == _rx_of(first)


def test_a_post_carrying_an_identifier_issues_once(net_home: Any) -> None:
    ledger = Ledger()
    with _gateway(net_home, ledger) as port:
        created = _post(port, net_home, _with_id("HIS-1"))
        repeated = _post(port, net_home, _with_id("HIS-1"))
        other = _post(port, net_home, _with_id("HIS-2"))
        plain = [_post(port, net_home, _mr()) for _ in range(2)]
    assert (created.status, repeated.status, other.status) == (201, 200, 201)
    assert created.headers["Location"] == repeated.headers["Location"] != other.headers["Location"]
    assert [a.status for a in plain] == [201, 201]  # no identifier: every POST is a new prescription
    assert len(ledger.rx) == 4


def test_conditional_create_with_if_none_exist(net_home: Any) -> None:
    """FHIR conditional create: ``If-None-Exist: identifier=system|value`` (URL-encoded or not)."""
    ledger = Ledger()
    search = "identifier=" + urllib.parse.quote("urn:oid:1.2.156.his|RX-77", safe="")
    with _gateway(net_home, ledger) as port:
        created = _post(port, net_home, _mr(), If_None_Exist=search)
        found = _post(port, net_home, _mr(), If_None_Exist="identifier=urn:oid:1.2.156.his|RX-77")
        differs = _post(port, net_home, _mr(qty=5), If_None_Exist=search)
        other_org = _post(port, net_home, _mr(), who=("h02", "patient-sun"), If_None_Exist=search)
    assert (created.status, found.status) == (201, 200)
    assert created.headers["Location"] == found.headers["Location"]
    # the identifier names a prescription that is not the one described: refused, never issued again
    assert (differs.status, differs.code) == (409, "DUPLICATE_RX")
    assert f"rx_id={_rx_of(created)}" in differs.body["issue"][0]["diagnostics"]
    # another organisation's identical identifier names another prescription
    assert other_org.status == 201 and other_org.headers["Location"] != created.headers["Location"]
    assert len(ledger.rx) == 2


def _terms(**dispense: Any) -> dict[str, Any]:
    res = _with_id("HIS-REP-1")
    res["dispenseRequest"].update(dispense)
    return res


@pytest.mark.parametrize("other", [
    _terms(numberOfRepeatsAllowed=2, dispenseInterval={"value": 28, "unit": "d"}),  # 3 fills, not 1
    _terms(validityPeriod={"start": "2026-11-25", "end": "2026-11-25"}),  # valid 1 day, not 3
    {**_with_id("HIS-REP-1"), "note": [{"text": "another chronic reason"}]},
    {k: v for k, v in _with_id("HIS-REP-1").items() if k not in ("courseOfTherapyType", "note")},  # acute
], ids=["repeats", "validity", "chronic-reason", "acute"])
def test_an_identifier_reused_for_other_fills_validity_or_course_is_409(net_home: Any, other: dict[str, Any]) -> None:
    """Patient, diagnosis, days and drugs alike are not enough: the identifier's prescription
    allows one fill (valid 3 days, long-term for its reason), a request for three fills (or
    another validity or course) is another prescription -- answered 200 it would tell the HIS
    its repeats were issued when the ledger allows one fill."""
    ledger = Ledger()
    with _gateway(net_home, ledger) as port:
        created = _post(port, net_home, _with_id("HIS-REP-1"))
        again = _post(port, net_home, _with_id("HIS-REP-1"))
        differs = _post(port, net_home, other)
    assert (created.status, again.status) == (201, 200)
    assert (differs.status, differs.code) == (409, "DUPLICATE_RX")
    assert f"rx_id={_rx_of(created)}" in differs.body["issue"][0]["diagnostics"]
    assert len(ledger.rx) == 1


def test_the_consortium_prescription_number_is_used_as_the_rx_id(net_home: Any) -> None:
    ledger = Ledger()
    with _gateway(net_home, ledger) as port:
        ans = _post(port, net_home, _with_id("RX20261126-h01-his42", mapping.RX_SYSTEM))
        bad = _post(port, net_home, _with_id("RX_1.x", mapping.RX_SYSTEM))
        stolen = _post(port, net_home, _with_id("RX20261126-h01-his42", mapping.RX_SYSTEM),
                       who=("h02", "patient-sun"))
    assert ans.status == 201 and _rx_of(ans) == "RX20261126-h01-his42"
    assert (bad.status, bad.code) == (400, "FHIR_INVALID")
    # an id another hospital issued: a conflict, and nothing of it is shown
    assert (stolen.status, stolen.code) == (409, "DUPLICATE_RX") and "entry" not in stolen.body
    assert list(ledger.rx) == ["RX20261126-h01-his42"]


def test_a_prescription_issued_but_not_read_back_is_still_201(net_home: Any) -> None:
    """Issued, then ``show`` fails: an error answer would make the HIS POST again."""
    ledger = Ledger(unreadable=1)
    with _gateway(net_home, ledger) as port:
        ans = _post(port, net_home, _mr())
    assert ans.status == 201 and ans.body["resourceType"] == "OperationOutcome"
    assert ans.body["issue"][0]["severity"] == "warning"
    assert ans.headers["Location"] == f"/fhir/MedicationRequest/{ledger.attempts[0]}"


@pytest.mark.parametrize("header", [
    "patient=123", "identifier=nosystem", "identifier=|v", "identifier=s|", "identifier=a|1&identifier=b|2",
    "identifier=a|1&_id=2", "",
])
def test_unsupported_conditional_searches_are_refused(net_home: Any, header: str) -> None:
    ledger = Ledger()
    with _gateway(net_home, ledger) as port:
        ans = _post(port, net_home, _mr(), If_None_Exist=header)
    assert (ans.status, ans.code) == (400, "FHIR_INVALID") and not ledger.attempts


def test_if_none_exist_elsewhere_is_refused(net_home: Any) -> None:
    ledger = Ledger()
    dispense = {"resourceType": "MedicationDispense", "status": "completed",
                "medication": {"concept": {"coding": [{"code": "amlodipine"}]}},
                "subject": {"identifier": {"value": "x"}},
                "authorizingPrescription": [{"reference": "MedicationRequest/RX-1"}]}
    with _gateway(net_home, ledger) as port:
        ans = _post(port, net_home, dispense, path="/fhir/MedicationDispense", If_None_Exist="identifier=a|1")
    assert (ans.status, ans.code) == (400, "FHIR_INVALID")


# ---------------------------------------------------------------- FHIR: which identifier


def test_the_identifier_rule() -> None:
    from client.fhir import idempotency as idem
    from client.rxid import is_rx_id

    group = {"system": "urn:his", "value": "G1"}
    assert str(idem.from_resource(_mr(groupIdentifier=group, identifier=[{"system": "urn:x", "value": "L"}]))) \
        == "urn:his|G1"
    assert str(idem.from_resource(_mr(identifier=[{"system": "urn:x", "value": "L"}]))) == "urn:x|L"
    assert idem.from_resource(_mr()) is None
    assert str(idem.from_resource({**_bundle(_mr(), _mr()), "identifier": group})) == "urn:his|G1"
    assert str(idem.from_resource(_bundle(_mr(groupIdentifier=group), _mr()))) == "urn:his|G1"
    with pytest.raises(RxClientError) as e:
        idem.from_resource(_bundle(_mr(groupIdentifier=group), _mr(groupIdentifier={**group, "value": "G2"})))
    assert e.value.reason == "FHIR_INVALID"
    with pytest.raises(RxClientError):
        idem.from_resource(_mr(identifier=[{"value": "no-system"}]))
    derived = idem.rx_id_for("h01", idem.BusinessId("urn:his", "G1"))
    assert derived == idem.rx_id_for("h01", idem.BusinessId("urn:his", "G1"))
    assert derived != idem.rx_id_for("h02", idem.BusinessId("urn:his", "G1"))
    assert derived != idem.rx_id_for("h01", idem.BusinessId("urn:his", "G2"))
    assert derived != idem.rx_id_for("h01", idem.BusinessId("urn:hi", "sG1"))  # length-prefixed
    assert is_rx_id(derived) and idem.FHIR_RX_ID.fullmatch(derived) and "G1" not in derived


def test_the_client_checks_rx_ids_as_the_contract_does() -> None:
    """client.rxid repeats the contract's rule: read the rule out of the contract's source."""
    from client.rxid import RX_ID_CHARS, RX_ID_MAX

    tree = ast.parse((PROJECT / "contracts" / "prescription.py").read_text())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    id_chars = consts["ID_CHARS"]
    assert isinstance(id_chars, str) and frozenset(id_chars) == RX_ID_CHARS
    issue = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "issue")
    checks = [ast.unparse(c) for c in ast.walk(issue) if isinstance(c, ast.Call) and ast.unparse(c.func) == "_is_id"]
    assert checks[0] == f"_is_id(rx_id, {RX_ID_MAX})"


# ---------------------------------------------------------------- CLI


@dataclass
class Chain:
    """What the replaced gateway saw and does: issued rx ids; the next issue's answer is lost."""

    issued: list[str] = field(default_factory=list)
    proposed: list[str] = field(default_factory=list)
    lose_next: bool = True


def _home(net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Chain]:
    chain = Chain()

    def issue(rx_id: str) -> None:
        chain.proposed.append(rx_id)
        if rx_id in chain.issued:  # what the contract answers at endorsement
            raise EndorsementError("DUPLICATE_RX", f"prescription {rx_id} already exists")
        chain.issued.append(rx_id)
        if chain.lose_next:
            chain.lose_next = False
            raise CommitUnknown(TX, f"transaction {TX} may have been ordered: submit failed with TIMEOUT")

    return offline_home(net_home, tmp_path, monkeypatch, issue), chain


def _cli(home: Path, *extra: str) -> tuple[int, str, str]:
    from client.cli import main

    out, err = io.StringIO(), io.StringIO()
    rc = main(["--home", str(home), "rx", "issue", "--as", "h01:dr-jiang", "--patient", "patient-zhang",
               "--diagnosis", "I10", "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01", *extra],
              out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_unknown_outcome_has_its_own_status_and_prints_both_ids(
        net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, chain = _home(net_home, tmp_path, monkeypatch)
    rc, out, err = _cli(home)
    assert rc == 3 and out == ""
    assert err.startswith("error: COMMIT_UNKNOWN:")
    assert f"\ntx_id: {TX}\n" in err and f"\nrx_id: {chain.issued[0]}\n" in err


def test_cli_rerun_with_rx_id_is_safe(net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script issues under its own rx id, the answer is lost (3), it runs the same command
    again: the contract refuses the second copy (4, naming the prescription), never a new one."""
    home, chain = _home(net_home, tmp_path, monkeypatch)
    rc, out, _ = _cli(home, "--json", "--rx-id", "RX-script-0001")
    assert rc == 3 and json.loads(out)["detail"] == {"outcome": "unknown", "tx_id": TX, "rx_id": "RX-script-0001"}
    rc, out, _ = _cli(home, "--json", "--rx-id", "RX-script-0001")
    body = json.loads(out)
    assert rc == 4 and body["error"] == "DUPLICATE_RX"
    assert body["detail"] == {"outcome": "exists", "rx_id": "RX-script-0001"}
    rc, _, err = _cli(home, "--rx-id", "RX-script-0001")
    assert rc == 4 and "\nrx_id: RX-script-0001\n" in err
    assert chain.issued == ["RX-script-0001"] and chain.proposed == ["RX-script-0001"] * 3
    rc, out, _ = _cli(home, "--json", "--rx-id", "RX-script-0002")
    assert rc == 0 and json.loads(out)["rx_id"] == "RX-script-0002"


@pytest.mark.parametrize("rx_id", ["", "a" * 65, "RX/1", "RX 1", "RX\u00c41", "RX:1", "RX;1"])
def test_cli_rx_id_is_checked_like_the_contract_before_anything_is_signed(
        net_home: Any, rx_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    proposed: list[Any] = []
    monkeypatch.setattr(Gateway, "submit", lambda *a, **k: proposed.append(a))
    rc, out, _ = _cli(net_home.home, "--json", f"--rx-id={rx_id}")
    body = json.loads(out)
    assert rc == 2 and body["error"] == "BAD_ARGUMENTS" and not proposed
    assert "--rx-id" in body["message"] and "[A-Za-z0-9-_.]" in body["message"]  # the contract's rule


def test_rxops_issue_reports_duplicate_rx_with_the_id(net_home: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from client.errors import DuplicateRx
    from client.rxops import DrugLine, RxOperations
    from client.session import Session

    home, chain = _home(net_home, tmp_path, monkeypatch)
    chain.issued.append("RX.1_a-B")
    ops = RxOperations(Session(home, "h01:dr-jiang"))
    make: Callable[[], IssueRequest] = lambda: IssueRequest(  # noqa: E731
        patient="patient-zhang", diagnosis="I10", drugs=[DrugLine("amlodipine", 1)], days=7, pharmacy="p01")
    try:
        with pytest.raises(DuplicateRx) as e:
            ops.issue(make(), rx_id="RX.1_a-B")
        with pytest.raises(RxClientError) as bad:
            ops.issue(make(), rx_id="RX#1")
    finally:
        ops.s.close()
    assert (e.value.reason, e.value.rx_id, e.value.detail) == (
        "DUPLICATE_RX", "RX.1_a-B", {"outcome": "exists", "rx_id": "RX.1_a-B"})
    assert isinstance(e.value, EndorsementError)  # callers catching refusals still catch it
    assert bad.value.reason == "BAD_ARGUMENTS" and chain.proposed == ["RX.1_a-B"]


@pytest.mark.parametrize("taken", [1, 3])
def test_rxops_issue_under_a_number_it_made_up_that_is_taken_issues_under_a_fresh_one(
        net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    """Without rx_id the SDK makes the number up (40 random bits per organisation and day):
    one another prescription holds already is refused DUPLICATE_RX, but it is not this call's
    -- nothing was submitted under it before -- so the issue goes on under a fresh number.
    It raised DuplicateRx ("that prescription exists", CLI exit 4, FHIR Location): the caller
    was told another doctor's prescription was the one it issued. A random source that keeps
    colliding ends in a plain refusal, never DuplicateRx."""
    import os

    from client.errors import DuplicateRx
    from client.rxops import DrugLine, RxOperations
    from client.session import Session

    proposed: list[str] = []

    def on_issue(rx_id: str) -> None:
        proposed.append(rx_id)
        if rx_id.endswith("-01010101" + "01"):  # another doctor's prescription of the day
            raise EndorsementError("DUPLICATE_RX", f"prescription {rx_id} already exists")

    home = offline_home(net_home, tmp_path, monkeypatch, on_issue)
    numbers = iter([b"\x01" * 5] * taken + [b"\x02" * 5])
    ops = RxOperations(Session(home, "h01:dr-jiang"), rand=lambda n: next(numbers) if n == 5 else os.urandom(n))
    req = IssueRequest(patient="patient-zhang", diagnosis="I10", drugs=[DrugLine("amlodipine", 1)], days=7,
                       pharmacy="p01")
    try:
        if taken == 1:
            res = ops.issue(req)
        else:
            with pytest.raises(RxClientError) as e:
                ops.issue(req)
    finally:
        ops.s.close()
    if taken == 1:
        assert res["rx_id"].endswith("-h01-0202020202") and proposed == [proposed[0], res["rx_id"]]
        assert proposed[0].endswith("-h01-0101010101")
    else:
        assert e.value.reason == "DUPLICATE_RX" and not isinstance(e.value, DuplicateRx)
        assert len(proposed) == 3 and all(p.endswith("-h01-0101010101") for p in proposed)
