"""Red-team review of three commits: ``prescription.trace_fills`` (b5dbcbe), the lock a
refused ``RxOperations.dispense`` releases (891a658), the FHIR gateway's unnamed re-send
found by its boxes (891a658) and MVCC/PHANTOM conflicts answered 409 (5a84a5c).

Each test is one attack; the fakes are those of the FHIR retry tests and of the SDK
outcome tests, the contract runs in the sandbox of tests/contracts."""

from __future__ import annotations

import hashlib
import hmac
from types import SimpleNamespace
from typing import Any

import pytest
from rxchain.v1 import transaction_pb2

from client.errors import CommitError, CommitUnknown, EndorsementError, RxClientError
from client.gateway import Gateway, SubmitResult
from client.records import trace_code_hash
from client.rxops import RxOperations
from tests.client.test_fhir_retry import CONTENT, RX, SALT, TRACE_KEY, Chain, _disp, _dispense, _serve
from tests.client.test_redteam_outcomes import Script, fake  # noqa: F401 - the SDK's scripted peer
from tests.contracts.chain import DAY_MS, admin
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import AUDITOR, COURIER2, JIANG, WANG, approved, lock_and_dispense
from tests.contracts.rxclient import World, trace_key

GAS_LIMIT = 10_000_000  # node.sandbox.types.Invocation's default, the endorser's fallback


def _h(code: str) -> str:
    return hmac.new(bytes.fromhex(trace_key()), ("trace|" + code).encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- (1) prescription.trace_fills


def test_trace_fills_reveals_nothing_to_non_parties_and_its_gas_is_bounded(world: World) -> None:  # noqa: F811
    """A non-party learns nothing: NOT_FOUND "no prescription ID" for an existing id as for an
    unknown one, as every view answers -- never whether its arguments are well formed (no
    oracle before the access check); the largest request (5,000 hashes, as many as a fill can
    carry boxes) runs well inside the invocation's gas."""
    a = approved(world, drugs=[("amlodipine", 2)])
    rx = a.args["rx_id"]
    lock_and_dispense(world, a, trace_codes=["81234560000000000071", "81234560000000000072"]).unwrap()
    for fn in ("show", "trace", "trace_fills"):
        args: dict[str, Any] = {"hashes": [_h("81234560000000000071")]} if fn == "trace_fills" else {}
        seen = [world.chain.query("prescription", fn, COURIER2, rx_id=i, **args) for i in (rx, "RX-NONE")]
        assert [(o.reason, o.message) for o in seen] == [("NOT_FOUND", "no prescription " + rx),
                                                         ("NOT_FOUND", "no prescription RX-NONE")], fn
    for bad in ([], ["AB" * 32], ["ab" * 32] * 5001):  # (a non-list is refused by the signature check)
        assert world.chain.query("prescription", "trace_fills", COURIER2, rx_id=rx,
                                 hashes=bad).reason == "NOT_FOUND", bad
    biggest = [_h("81234560000000000072")] + [_h(f"9123456{i:013d}") for i in range(4999)]
    out = world.chain.query("prescription", "trace_fills", WANG, rx_id=rx, hashes=biggest)
    assert out.ok and out.value["fills"][0] == 1 and set(out.value["fills"][1:]) == {0}
    assert 0 < out.gas < GAS_LIMIT // 2, out.gas


def test_trace_fills_after_erase_revocation_and_expiry(world: World) -> None:  # noqa: F811
    """Erased (crypto-shredded): the keyed hashes stay (they keep every box single-use), so
    the parties still trace a box to its fill -- as ``trace`` still lists the fill -- and no
    one else does; nothing decryptable is involved. Revoked before any fill: nothing recorded.
    Expired after a fill: that fill still answers."""
    codes = ["81234560000000000081", "81234560000000000082"]
    done = approved(world, drugs=[("amlodipine", 2)])
    lock_and_dispense(world, done, trace_codes=codes).unwrap()
    revoked = approved(world, drugs=[("amlodipine", 2)])
    assert world.chain.submit("prescription", "revoke", JIANG, rx_id=revoked.args["rx_id"],
                              reason="OTHER").ok
    repeat = approved(world, drugs=[("amlodipine", 1)], max_fills=2, fill_interval_days=28,
                      long_rx=True, chronic_reason="stable hypertension", days=28,
                      stability_assessment="stable", patient_confirmed=True)
    lock_and_dispense(world, repeat, trace_codes=["81234560000000000083"]).unwrap()
    hashes = [_h(c) for c in [*codes, "81234560000000000083"]]
    world.chain.advance(400 * DAY_MS)
    assert world.chain.submit("prescription", "expire", JIANG, rx_id=repeat.args["rx_id"]).ok
    assert world.chain.submit("prescription", "erase", admin("h01"), rx_id=done.args["rx_id"],
                              retention_days=365).ok
    for who in (WANG, AUDITOR, JIANG):
        got = world.chain.query("prescription", "trace_fills", who, rx_id=done.args["rx_id"], hashes=hashes)
        assert got.unwrap()["fills"] == [1, 1, 0], who
    assert world.chain.query("prescription", "trace_fills", COURIER2, rx_id=done.args["rx_id"],
                             hashes=hashes).reason == "NOT_FOUND"
    assert world.chain.query("prescription", "trace_fills", AUDITOR, rx_id=revoked.args["rx_id"],
                             hashes=hashes).unwrap()["fills"] == [0, 0, 0]
    assert world.chain.query("prescription", "trace_fills", AUDITOR, rx_id=repeat.args["rx_id"],
                             hashes=hashes).unwrap()["fills"] == [0, 0, 1]


# ---------------------------------------------------------------- (2) RxOperations.dispense releasing its lock


class ScriptedPeer:
    """``evaluate`` answers the prescription (locked by p01); ``submit`` runs the real SDK
    write path (Endorse, Submit with its retries, CommitStatus) against the scripted peer of
    tests/client/test_redteam_outcomes, one script per contract function."""

    def __init__(self, script: Script, gw: Gateway, plan: dict[str, tuple[list[str], int, str]]) -> None:
        self.script, self.gw, self.plan = script, gw, plan
        self.fns: list[str] = []

    def evaluate(self, contract: str, fn: str, args: Any = None, transient: Any = None) -> Any:
        return {"rx_id": RX, "pharmacy": "p01", "hospital": "h01", "lock": {"org": "p01"}}

    def submit(self, contract: str, fn: str, args: Any = None, transient: Any = None,
               endorsing_orgs: Any = None) -> SubmitResult:
        submits, code, reason = self.plan.get(fn, ([], transaction_pb2.VALID, ""))
        self.script.submits, self.script.status_code, self.script.status_reason = list(submits), code, reason
        self.fns.append(fn)
        return self.gw.submit(contract, fn, args, transient, endorsing_orgs)


def _ops(gateway: Any) -> RxOperations:
    peers = [SimpleNamespace(org=o) for o in ("h01", "p01")]
    ops = RxOperations(SimpleNamespace(gateway=gateway, identity=SimpleNamespace(org="p01", role="pharmacist"),  # type: ignore[arg-type]
                                       net=SimpleNamespace(peers=peers), trace_key=TRACE_KEY))
    ops._get_key = lambda rx_id: SimpleNamespace(body=CONTENT, salt=SALT)  # type: ignore[method-assign,assignment,return-value]
    return ops


MVCC = transaction_pb2.MVCC_READ_CONFLICT


@pytest.mark.parametrize(("dispense", "raised", "released"), [
    # the first Submit broke in transit (it may have been ordered), the retry was refused for a
    # reason that could have gone the other way for the first copy: unknown, the lock stays
    ((["UNAVAILABLE", "CLOCK_SKEW"], transaction_pb2.VALID, ""), CommitUnknown, False),
    # ... the retry found the first copy on the ledger: the first copy's outcome, dispensed
    ((["UNAVAILABLE", "DUPLICATE_TXID"], transaction_pb2.VALID, ""), None, False),
    # ... and the first copy committed invalid: a refusal of this very transaction
    ((["UNAVAILABLE", "DUPLICATE_TXID"], MVCC, ""), CommitError, True),
    # the commit status could not be read: unknown
    (([], transaction_pb2.VALID, "TIMEOUT"), CommitUnknown, False),
    (([], transaction_pb2.VALID, "TOO_MANY_STREAMS"), CommitUnknown, False),
    # a refusal of the envelope's bytes, whichever copy: definite, nothing dispensed
    ((["UNAVAILABLE", "BAD_SIGNATURE"], transaction_pb2.VALID, ""), RxClientError, True),
])
def test_a_dispense_that_may_have_committed_never_releases(
        fake: Any, dispense: tuple[list[str], int, str], raised: type[Exception] | None,  # noqa: F811
        released: bool) -> None:
    """Attack: make the SDK report a refusal for a dispense that committed (a lost first
    attempt, a refused retry, DUPLICATE_TXID, an unreadable commit status), so that the
    refused-dispense path releases the lock of a fill handed out. Every such outcome is
    CommitUnknown (kept) or the committed copy's own code; only a definite no releases."""
    script, gw = fake
    peer = ScriptedPeer(script, gw, {"dispense": dispense})
    ops = _ops(peer)
    if raised is None:
        assert ops.dispense(RX, ["TC-1"])["block"] == 9
    else:
        with pytest.raises(raised) as exc:
            ops.dispense(RX, ["TC-1"])
        assert isinstance(exc.value, CommitUnknown) == (raised is CommitUnknown)
    assert peer.fns == (["lock", "dispense", "release"] if released else ["lock", "dispense"])


@pytest.mark.parametrize("failure", [
    EndorsementError("NOT_LOCKED", "the prescription is not locked"),
    CommitUnknown("ab" * 32, "submit failed with TIMEOUT"),
    ValueError("Cannot invoke RPC on closed channel!"),  # what grpc raises on a closed channel
    TimeoutError("the peer did not answer"),
])
def test_a_failing_release_never_replaces_the_refusal(failure: Exception) -> None:
    """Attack: the best-effort release fails. The caller (CLI ``rx dispense``, the FHIR
    gateway) must still see the contract's refusal -- a definite no, nothing dispensed. A
    failure other than RxClientError (a closed gRPC channel raises ValueError) used to replace
    it: the FHIR gateway then answered 500 INTERNAL "may have been carried out"."""
    refusal = EndorsementError("TRACE_CODE_REUSED", "trace code #1 was already used")
    calls: list[str] = []

    class Gw:
        def evaluate(self, contract: str, fn: str, args: Any = None, transient: Any = None) -> Any:
            return {"pharmacy": "p01", "hospital": "h01", "lock": None}

        def submit(self, contract: str, fn: str, args: Any = None, transient: Any = None,
                   endorsing_orgs: Any = None) -> SubmitResult:
            calls.append(fn)
            if fn == "dispense":
                raise refusal
            if fn == "release":
                raise failure
            return SubmitResult("cd" * 32, "VALID", 3, {"rx_id": RX})

    with pytest.raises(RxClientError) as exc:
        _ops(Gw()).dispense(RX, ["TC-1"])
    assert exc.value is refusal
    assert calls == ["lock", "dispense", "release"]


# ---------------------------------------------------------------- (3) FHIR: an unnamed re-send found by its boxes


def _step(fill: int, org: str, codes: int) -> dict[str, Any]:
    return {"step": "dispense", "actor": f"pharm-{org}", "org": org, "role": "pharmacist", "time_ms": 100 + fill,
            "time": "", "tx_id": f"{fill:064x}", "block": 5 + fill,
            "detail": {"fill": fill, "boxes": 3, "trace_codes": codes}}


def _recorded(ledger: Chain, fills: dict[str, int]) -> None:
    ledger.code_fills.update({trace_code_hash(TRACE_KEY, code): fill for code, fill in fills.items()})


def test_boxes_of_another_pharmacys_fill_are_no_retry(net_home: Any) -> None:
    """Repeat prescription re-routed to p01 after p02 dispensed fill 1 with TC-1..3; fill 2 is
    due. p01 POSTs those boxes without naming a fill: the contract refuses TRACE_CODE_REUSED,
    trace_fills names fill 1 -- p02's. Not a 200 with p02's fill: the refusal stands."""
    rerouted = Chain(max_fills=2, fills=1, interval_passed=True, steps=[_step(1, "p02", 3)])
    _recorded(rerouted, {"TC-1": 1, "TC-2": 1, "TC-3": 1})
    with _serve(net_home, rerouted) as port:
        ans = _disp(port, net_home, _dispense())
    assert (ans.status, ans.code) == (422, "TRACE_CODE_REUSED"), ans.body
    assert "another pharmacy" in ans.body["issue"][0]["details"]["text"] and "entry" not in ans.body
    assert rerouted.fills == 1 and rerouted.submitted == []


def test_boxes_of_another_prescription_or_of_two_fills_are_no_retry(net_home: Any) -> None:
    """Boxes recorded on another prescription (trace_fills answers 0 for them on this one)
    or spread over two fills of this one: no fill recorded them all, the 422 stands."""
    elsewhere = Chain(max_fills=2, fills=1, interval_passed=True, steps=[_step(1, "p01", 3)])
    _recorded(elsewhere, {"TC-1": 0, "TC-2": 0, "TC-3": 0})  # trace/{hash} of another rx
    two = Chain(max_fills=3, fills=2, interval_passed=True, steps=[_step(1, "p01", 3), _step(2, "p01", 3)])
    _recorded(two, {"TC-1": 1, "TC-2": 2, "TC-3": 2, "TC-4": 1, "TC-5": 1, "TC-6": 2})
    for ledger in (elsewhere, two):
        with _serve(net_home, ledger) as port:
            ans = _disp(port, net_home, _dispense())
        assert (ans.status, ans.code) == (422, "TRACE_CODE_REUSED"), ans.body
        assert "entry" not in ans.body and ledger.submitted == []


def test_a_dispense_by_a_pharmacy_no_party_of_a_locked_prescription_keeps_the_locks_refusal(world: World) -> None:  # noqa: F811
    """``RxOperations.dispense`` whose lock is refused ALREADY_LOCKED reads the prescription to
    see whether its own pharmacy holds the lock. A pharmacy that is no party may not read it:
    the lock's refusal stands (ALREADY_LOCKED, 409 at the FHIR gateway). The read's own
    refusal replaced it -- NOT_FOUND "no prescription ID", once views answered non-parties so,
    for a prescription the lock had just called locked (a FHIR dispense 404, "no such id";
    ACCESS_DENIED before that)."""
    from tests.client.contractgw import ContractGateway
    from tests.contracts.flows import CHEN

    prep = approved(world)
    rx = prep.args["rx_id"]
    world.chain.submit("prescription", "lock", WANG, rx_id=rx).unwrap()
    gw = ContractGateway(world, CHEN)
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=gw, identity=SimpleNamespace(org=CHEN.org, user=CHEN.name, role=CHEN.role),
        decryption_keys=list, trace_key=trace_key()))
    with pytest.raises(RxClientError) as refused:
        ops.dispense(rx, ["81234560000000000091"])
    assert (refused.value.reason, refused.value.message) == ("ALREADY_LOCKED", "locked by p01")
    assert [c[0::2] for c in gw.calls] == [("lock", "ALREADY_LOCKED")]  # nothing else submitted
