"""A pharmacy's inbox (``client.inbox.pharmacy_inbox``, ``rxchain rx inbox``): the
prescriptions it serves, found from the prescription contract's events and read with
``show`` as its pharmacist -- run over the real contracts in the sandbox of tests/contracts."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from rxchain.v1 import config_pb2, transaction_pb2

from client.errors import RxClientError
from client.inbox import RxReader, action, pharmacy_inbox
from tests.client.ledgerevents import EventLedger, failing_at
from tests.contracts.chain import DAY_MS, T0_MS, Who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import CHEN, CLERK, COURIER, COURIER2, HE, JIANG, WANG, approved, dispense, issue
from tests.contracts.rxclient import World

REPEAT: dict[str, Any] = {"max_fills": 2, "fill_interval_days": 28, "long_rx": True, "days": 28,
                          "chronic_reason": "stable hypertension",
                          "stability_assessment": "stable 6 months", "patient_confirmed": True}


def _filled_repeat(w: World, code: str) -> tuple[Any, str]:
    """A repeat prescription (2 fills) whose fill 1 p01 locked and dispensed (box ``code``)."""
    prep = approved(w, **REPEAT)
    rx = prep.args["rx_id"]
    w.chain.submit("prescription", "lock", WANG, rx_id=rx).unwrap()
    dispense(w, prep, WANG, [code]).unwrap()
    return prep, rx


def _show(w: World, caller: Who) -> RxReader:
    def read(rx_id: str) -> dict[str, Any] | None:
        out = w.chain.query("prescription", "show", caller, rx_id=rx_id)
        if out.reason in ("ACCESS_DENIED", "NOT_FOUND"):
            return None
        return dict(out.unwrap())
    return read


def _inbox(w: World, ledger: EventLedger, caller: Who, start: int = 0, **kw: Any) -> dict[str, Any]:
    return pharmacy_inbox(ledger.events, _show(w, caller), caller.org, start, w.chain.now, **kw)


def _actions(inbox: dict[str, Any]) -> dict[str, str]:
    return {p["rx_id"]: p["action"] for p in inbox["prescriptions"]}


def test_the_inbox_holds_what_the_pharmacy_serves_and_what_to_do(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    to_review = issue(world, pharmacy="p01")[0].args["rx_id"]
    to_dispense = approved(world).args["rx_id"]
    elsewhere = approved(world, pharmacy="p02").args["rx_id"]
    revoked = issue(world, pharmacy="p01")[0].args["rx_id"]
    world.chain.submit("prescription", "revoke", JIANG, rx_id=revoked, reason="CLINICAL_CHANGE").unwrap()
    done = approved(world)
    world.chain.submit("prescription", "lock", WANG, rx_id=done.args["rx_id"]).unwrap()
    dispense(world, done, WANG, ["81234560000000000401"]).unwrap()
    inbox = _inbox(world, ledger, WANG)
    assert inbox["next_block"] == ledger.height and inbox["org"] == "p01"
    assert _actions(inbox) == {to_review: "review", to_dispense: "dispense", revoked: "none",
                               done.args["rx_id"]: "deliver"}
    assert elsewhere not in {c["rx_id"] for c in inbox["changes"]}
    steps = [(c["rx_id"], c["step"], c["status"], c["by"]) for c in inbox["changes"]]
    assert (revoked, "revoke", "REVOKED", "h01") in steps
    assert [s[1] for s in steps if s[0] == done.args["rx_id"]] == ["issue", "review", "lock", "dispense"]
    # key fetches are no change of the prescription
    world.chain.submit("prescription", "get_key", WANG, rx_id=to_dispense).unwrap()
    fetched = _inbox(world, ledger, WANG, inbox["next_block"])
    assert (fetched["changes"], fetched["prescriptions"]) == ([], []) and fetched["next_block"] == ledger.height
    # delivered: nothing left to do
    world.chain.submit("prescription", "deliver", COURIER, rx_id=done.args["rx_id"]).unwrap()
    later = _inbox(world, ledger, WANG, inbox["next_block"])
    assert _actions(later) == {done.args["rx_id"]: "none"}
    assert [c["step"] for c in later["changes"]] == ["deliver"]
    # the other pharmacy sees its own only
    assert set(_actions(_inbox(world, ledger, CHEN))) == {elsewhere}


def test_a_repeat_prescription_waits_for_its_next_fill(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    prep = approved(world, **REPEAT)
    rx = prep.args["rx_id"]
    world.chain.submit("prescription", "lock", WANG, rx_id=rx).unwrap()
    assert _actions(_inbox(world, ledger, WANG)) == {rx: "dispense"}  # locked by this pharmacy
    dispense(world, prep, WANG, ["81234560000000000402"]).unwrap()
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    inbox = _inbox(world, ledger, WANG)
    (only,) = inbox["prescriptions"]
    assert (only["action"], only["fills"], only["max_fills"]) == ("wait", 1, 2)
    # dispensed 2026-11-25 10:00 China time: the next fill from midnight 28 days on (2026-12-23)
    assert only["next_fill_ms"] == T0_MS + 14 * 3_600_000 + 27 * DAY_MS
    world.chain.advance(28 * DAY_MS)
    assert _actions(_inbox(world, ledger, WANG)) == {rx: "dispense"}


def test_the_hospital_pharmacy_serves_unrouted_prescriptions(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    unrouted = issue(world, pharmacy="")[0].args["rx_id"]
    routed = issue(world, pharmacy="p01")[0].args["rx_id"]
    inbox = _inbox(world, ledger, HE)
    assert _actions(inbox) == {unrouted: "review"}
    assert routed in {c["rx_id"] for c in _inbox(world, ledger, WANG)["changes"]}


def test_ranges_are_contiguous(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    first = approved(world).args["rx_id"]
    cut = ledger.height
    second = approved(world).args["rx_id"]
    a = _inbox(world, ledger, WANG, 0, max_blocks=cut)
    b = _inbox(world, ledger, WANG, a["next_block"])
    assert a["next_block"] == cut and b["next_block"] == ledger.height
    assert set(_actions(a)) == {first} and set(_actions(b)) == {second}
    assert len(a["changes"]) + len(b["changes"]) == len(_inbox(world, ledger, WANG)["changes"])
    with pytest.raises(RxClientError):
        _inbox(world, ledger, WANG, 0, max_blocks=0)


def test_a_failure_reading_the_block_past_the_limit_fails_nothing(world: World) -> None:  # noqa: F811
    """A read asks for the block past its limit to tell whether more follows (``more``): that
    block's stream failing failed the whole read, which had finished (and the caller read it
    all again). Now the answer is what was read, with ``more`` True (unknown: go on from
    ``next_block``); a failure reading a block within the limit still fails the read."""
    ledger = EventLedger(world.chain)
    first = approved(world).args["rx_id"]
    cut = ledger.height
    approved(world)
    whole = _inbox(world, ledger, WANG, 0, max_blocks=cut)
    assert whole["more"] is True and whole["next_block"] == cut
    peek_failed = pharmacy_inbox(failing_at(ledger.events, cut), _show(world, WANG), "p01", 0, world.chain.now,
                                 max_blocks=cut)
    assert peek_failed == whole and set(_actions(peek_failed)) == {first}
    # the range reaching the height (nothing follows) is read whole with the stream failing after it
    all_blocks = _inbox(world, ledger, WANG, 0, max_blocks=ledger.height)
    assert all_blocks["more"] is False
    unknown = pharmacy_inbox(failing_at(ledger.events, ledger.height), _show(world, WANG), "p01", 0,
                             world.chain.now, max_blocks=ledger.height)
    assert unknown == {**all_blocks, "more": True}
    for within in (0, cut - 1):  # the first block of the range, the last one
        with pytest.raises(RxClientError) as failed:
            pharmacy_inbox(failing_at(ledger.events, within), _show(world, WANG), "p01", 0, world.chain.now,
                           max_blocks=cut)
        assert failed.value.reason == "TIMEOUT"


LIVE = {"valid_end_ms": 30 * DAY_MS}  # the (first) fill's validity not passed at day 27


def test_a_read_reads_a_bounded_number_of_prescriptions(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    ids = [approved(world).args["rx_id"] for _ in range(3)]
    whole = _inbox(world, ledger, WANG)
    assert not whole["reads_capped"]
    reads: list[str] = []

    def counted(rx_id: str) -> dict[str, Any] | None:
        reads.append(rx_id)
        return _show(world, WANG)(rx_id)

    start, parts = 0, []
    while start < ledger.height:
        del reads[:]
        part = pharmacy_inbox(ledger.events, counted, "p01", start, world.chain.now, max_reads=1)
        assert len(reads) == 1 and part["next_block"] > start
        parts.append(part)
        start = part["next_block"]
    assert [set(_actions(p)) for p in parts] == [{rx} for rx in ids]  # one prescription a read
    assert [p["reads_capped"] for p in parts] == [True, True, False]
    assert [c for p in parts for c in p["changes"]] == whole["changes"]
    # a block is never split: the first block of a read is read whatever it names
    ledger.extra[0] = [transaction_pb2.ContractEvent(
        contract="prescription", name="rx.review", tx_id=f"{n:02d}" * 32,
        payload=json.dumps({"rx_id": rx, "status": "APPROVED", "org": "p01"}).encode()) for n, rx in enumerate(ids)]
    first = pharmacy_inbox(ledger.events, _show(world, WANG), "p01", 0, world.chain.now, max_reads=1)
    assert set(_actions(first)) == set(ids) and first["next_block"] == 1 and first["reads_capped"]
    with pytest.raises(RxClientError):
        pharmacy_inbox(ledger.events, counted, "p01", 0, world.chain.now, max_reads=0)


@pytest.mark.parametrize(("meta", "want"), [
    ({"status": "ISSUED", **LIVE}, "review"),
    ({"status": "APPROVED", **LIVE}, "dispense"),
    ({"status": "LOCKED", "lock": {"org": "p01"}, **LIVE}, "dispense"),
    ({"status": "LOCKED", "lock": {"org": "p02"}, **LIVE}, "none"),
    ({"status": "DISPENSED", "fills": 1, "max_fills": 1, "delivered_fills": 0}, "deliver"),
    ({"status": "DISPENSED", "fills": 1, "max_fills": 2, "delivered_fills": 1, "last_fill_ms": 0,
      "fill_interval_days": 28, **LIVE}, "wait"),
    ({"status": "DISPENSED", "fills": 1, "max_fills": 2, "delivered_fills": 1, "last_fill_ms": 0,
      "fill_interval_days": 1, **LIVE}, "dispense"),
    # the interval counts China-local days, as the contract does: a fill at 08:00:00.001 (China)
    # on day 0 lets the next one come from midnight of day 27, before 08:00
    ({"status": "DISPENSED", "fills": 1, "max_fills": 2, "delivered_fills": 1, "last_fill_ms": 1,
      "fill_interval_days": 27, **LIVE}, "dispense"),
    ({"status": "DELIVERED", "fills": 1, "max_fills": 1, "delivered_fills": 1}, "none"),
    ({"status": "REVOKED", **LIVE}, "none"), ({"status": "EXPIRED", **LIVE}, "none"),
    ({"status": "ERASED", **LIVE}, "none"), ({"status": "REJECTED", **LIVE}, "none"),
    # the validity passed, no expire transaction sent: the contract refuses review, lock and
    # dispense (EXPIRED)
    ({"status": "ISSUED", "max_fills": 1, "valid_end_ms": DAY_MS}, "none"),
    ({"status": "APPROVED", "max_fills": 1, "valid_end_ms": DAY_MS}, "none"),
    ({"status": "LOCKED", "lock": {"org": "p01"}, "max_fills": 1, "valid_end_ms": DAY_MS}, "none"),
    ({"status": "DISPENSED", "fills": 1, "max_fills": 2, "delivered_fills": 1, "last_fill_ms": 0,
      "fill_interval_days": 1, "valid_end_ms": DAY_MS}, "none"),  # fill 2 valid until day 2
    # a fill dispensed before the prescription expired is still handed over (not once erased)
    ({"status": "EXPIRED", "fills": 1, "max_fills": 2, "delivered_fills": 0}, "deliver"),
    ({"status": "ERASED", "fills": 1, "max_fills": 2, "delivered_fills": 0}, "none"),
])
def test_action_of_each_state(meta: dict[str, Any], want: str) -> None:
    assert action({"pharmacy": "p01", **meta}, "p01", 27 * DAY_MS) == want


DUE = {"status": "DISPENSED", "fills": 2, "max_fills": 3, "last_fill_ms": 0, "fill_interval_days": 1, **LIVE}


@pytest.mark.parametrize(("meta", "owed", "want"), [
    # a due fill comes first: no fill waits for another's hand-over (the contract's NOT_DELIVERED
    # is gone), the hand-over is listed beside it (deliver_fills)
    ({**DUE, "pharmacy": "p01", "delivered_fills": 0}, {1: "p01", 2: "p01"}, "dispense"),
    ({**DUE, "pharmacy": "p01", "delivered_fills": 1}, {1: "p02"}, "dispense"),  # another's owed
    ({**DUE, "pharmacy": "p01", "delivered_fills": 1, "fill_interval_days": 28}, {1: "p01"}, "deliver"),
    ({**DUE, "pharmacy": "p01", "delivered_fills": 1, "fill_interval_days": 28}, {1: "p02"}, "wait"),
    # routed away: the fill it owes (any, not only the latest) is its to deliver, nothing else
    ({**DUE, "pharmacy": "p02", "delivered_fills": 1}, {1: "p01"}, "deliver"),
    ({**DUE, "pharmacy": "p02", "delivered_fills": 1}, {2: "p02"}, "none"),
    ({**DUE, "pharmacy": "p02", "delivered_fills": 2}, {}, "none"),
    ({**DUE, "status": "ERASED", "pharmacy": "p01", "delivered_fills": 1}, {1: "p01"}, "none"),
])
def test_action_with_fills_owed(meta: dict[str, Any], owed: dict[int, str], want: str) -> None:
    assert action(meta, "p01", 27 * DAY_MS, owed) == want


def test_the_fills_owed_from_the_trail() -> None:
    """Fills handed over in any order: a trail's dispense steps less the fills its deliver
    steps name (the previous release's deliver named the latest fill: the same shape)."""
    from client.inbox import owed_of_trail

    def st(step: str, org: str, fill: Any) -> dict[str, Any]:
        return {"step": step, "org": org, "detail": {"fill": fill}}

    trail = [st("issue", "h01", None) | {"detail": {}}, st("dispense", "p01", 1), st("route", "h01", 0),
             st("dispense", "p02", 2), st("deliver", "p02", 2), st("dispense", "p02", 3)]
    assert owed_of_trail(trail) == {1: "p01", 3: "p02"}
    assert owed_of_trail([*trail, st("deliver", "p01", 1), st("deliver", "p02", 3)]) == {}
    assert owed_of_trail([*trail, st("deliver", "p01", "1")]) is None  # malformed: unknown


def test_a_prescription_whose_validity_passed_is_not_to_review_or_dispense(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    to_review = issue(world, pharmacy="p01")[0].args["rx_id"]
    to_dispense = approved(world).args["rx_id"]
    repeat, _ = _filled_repeat(world, "81234560000000000404")
    world.chain.submit("prescription", "deliver", COURIER, rx_id=repeat.args["rx_id"]).unwrap()
    world.chain.advance(29 * DAY_MS)  # past the first fills' day and fill 2's 28 days after it
    inbox = _inbox(world, ledger, WANG)
    assert _actions(inbox) == {to_review: "none", to_dispense: "none", repeat.args["rx_id"]: "none"}
    assert all(p["expired"] for p in inbox["prescriptions"])
    assert {p["status"] for p in inbox["prescriptions"]} == {"ISSUED", "APPROVED", "DISPENSED"}  # no expire tx
    # what the contract says to the pharmacist who tries
    review = world.chain.submit("prescription", "review", WANG, rx_id=to_review, approve=True, reason="")
    assert review.reason == "EXPIRED"
    for rx in (to_dispense, repeat.args["rx_id"]):
        assert world.chain.submit("prescription", "lock", WANG, rx_id=rx).reason == "EXPIRED"
    # the FHIR Task: cancelled, not on hold
    tasks = {e["resource"]["identifier"][0]["value"]: e["resource"]["status"]
             for e in _fhir_app(world, ledger, WANG).handle("GET", "/fhir/Task", None, b"cert").resource["entry"]}
    assert set(tasks.values()) == {"cancelled"}


def test_a_fill_dispensed_before_the_prescription_expired_is_still_delivered(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    _, rx = _filled_repeat(world, "81234560000000000405")
    world.chain.advance(30 * DAY_MS)
    world.chain.submit("prescription", "expire", CLERK, rx_id=rx).unwrap()
    (only,) = _inbox(world, ledger, WANG)["prescriptions"]
    assert (only["status"], only["action"]) == ("EXPIRED", "deliver")
    assert (only["expired"], only["fill_deadline_ms"]) == (True, None)
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()["fill"] == 1


def test_the_pharmacy_a_prescription_leaves_learns_it_was_routed_elsewhere(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    rx = approved(world).args["rx_id"]
    unrouted = issue(world, pharmacy="")[0].args["rx_id"]
    first = _inbox(world, ledger, WANG)
    assert _actions(first) == {rx: "dispense"} and first["routed_elsewhere"] == []
    assert _actions(_inbox(world, ledger, HE)) == {unrouted: "review"}
    for moved in (rx, unrouted):
        world.chain.submit("prescription", "route", JIANG, rx_id=moved, pharmacy="p02",
                           wrapped_key=world.wrap_for(moved, "p02")).unwrap()
    # p01 may no longer read it: the id from the route event tells its queue to drop it
    later = _inbox(world, ledger, WANG, first["next_block"])
    assert (later["prescriptions"], later["changes"]) == ([], [])
    assert later["routed_elsewhere"] == [rx, unrouted]
    # the hospital pharmacy likewise for the one it held unrouted; p02 has both to serve
    assert _inbox(world, ledger, HE, first["next_block"])["routed_elsewhere"] == [rx, unrouted]
    p02 = _inbox(world, ledger, CHEN, first["next_block"])
    assert _actions(p02) == {rx: "dispense", unrouted: "review"} and p02["routed_elsewhere"] == []


def _rxops(w: World, ledger: EventLedger, caller: Who) -> Any:
    """RxOperations as ``caller`` over the contract chain (its organisation's kind by its id)."""
    from client.rxops import RxOperations
    from tests.client.contractgw import ContractGateway

    kind = config_pb2.PHARMACY if caller.org.startswith("p") else config_pb2.HOSPITAL
    gw = ContractGateway(w, caller)
    return RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=SimpleNamespace(events=ledger.events, evaluate=gw.evaluate),
        identity=SimpleNamespace(org=caller.org, role=caller.role), clock=lambda: w.chain.now,
        net=SimpleNamespace(org=lambda o: SimpleNamespace(kind=kind))))


def test_a_fill_not_handed_over_at_a_re_route_is_the_dispensing_pharmacys_to_deliver(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    _, rx = _filled_repeat(world, "81234560000000000406")
    (mine,) = _rxops(world, ledger, WANG).inbox(0)["prescriptions"]
    assert mine["action"] == "deliver"
    # the patient moves her next fill to p02 before p01's courier handed fill 1 over
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    (theirs,) = _rxops(world, ledger, CHEN).inbox(0)["prescriptions"]
    assert theirs["action"] == "wait"  # fill 2, in 28 days: fill 1 is not p02's to deliver
    assert (mine["deliver_by"], theirs["deliver_by"]) == ("p01", "p01")
    assert world.chain.submit("prescription", "deliver", COURIER2, rx_id=rx).reason == "ACCESS_DENIED"
    # p01 still has fill 1 to hand over: listed to deliver, not routed elsewhere (it was only
    # in routed_elsewhere, and a queue acting on that dropped a delivery its courier owes)
    p01 = _rxops(world, ledger, WANG).inbox(0)
    assert [(p["rx_id"], p["action"], p["deliver_by"]) for p in p01["prescriptions"]] == [(rx, "deliver", "p01")]
    assert p01["routed_elsewhere"] == []
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    (after,) = _rxops(world, ledger, CHEN).inbox(0)["prescriptions"]
    assert (after["action"], after["deliver_by"]) == ("wait", None)
    world.chain.advance(28 * DAY_MS)  # fill 2 due: p02's to dispense
    assert _actions(_rxops(world, ledger, CHEN).inbox(0)) == {rx: "dispense"}
    done = _rxops(world, ledger, WANG).inbox(0)  # handed over: no longer p01's at all
    assert (done["prescriptions"], done["routed_elsewhere"]) == ([], [rx])


def test_the_next_fill_does_not_wait_for_the_last_ones_hand_over_by_another_pharmacy(world: World) -> None:  # noqa: F811
    """Re-routed while p01's courier still owed fill 1: when fill 2 is due p02 is told to
    dispense it (it was told to wait: the contract refused its lock NOT_DELIVERED for as long
    as p01 was active, as deliver confirmed the latest fill only). p02 is then told to deliver
    fill 2; p01 reads nothing past the fill it owes (routed_elsewhere), and its courier's
    ``rx deliver`` (its pharmacy's latest fill) still hands fill 1 over."""
    ledger = EventLedger(world.chain)
    prep, rx = _filled_repeat(world, "81234560000000000408")
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    world.chain.advance(28 * DAY_MS)
    (theirs,) = _rxops(world, ledger, CHEN).inbox(0)["prescriptions"]
    assert (theirs["action"], theirs["deliver_by"], theirs["deliver_fills"]) == ("dispense", "p01", [1])
    world.chain.submit("prescription", "lock", CHEN, rx_id=rx).unwrap()
    dispense(world, prep, CHEN, ["81234560000000000418"]).unwrap()
    (theirs,) = _rxops(world, ledger, CHEN).inbox(0)["prescriptions"]
    assert (theirs["action"], theirs["deliver_by"], theirs["deliver_fills"]) == ("deliver", "p02", [2])
    gone = _rxops(world, ledger, WANG).inbox(0)  # no party past the fill it owes
    assert (gone["prescriptions"], gone["routed_elsewhere"]) == ([], [rx])
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()["fill"] == 1
    assert world.chain.submit("prescription", "deliver", COURIER2, rx_id=rx).unwrap()["status"] == "DELIVERED"
    (theirs,) = _rxops(world, ledger, CHEN).inbox(0)["prescriptions"]
    assert (theirs["action"], theirs["deliver_by"], theirs["delivered_fills"]) == ("none", None, 2)


def test_an_erased_prescription_names_nobody_to_deliver(world: World) -> None:  # noqa: F811
    """Erased while p01's courier still owed fill 1 (re-routed since): ``deliver`` refuses an
    erased prescription, so its summary names no courier and no fill to hand over -- it named
    p01 and ``deliver_fills`` [1], a ``rx deliver --fill 1`` the contract refuses ERASED."""
    from tests.contracts.chain import admin

    ledger = EventLedger(world.chain)
    _, rx = _filled_repeat(world, "81234560000000000410")
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    world.chain.advance(366 * DAY_MS)
    world.chain.submit("prescription", "erase", admin("h01"), rx_id=rx, retention_days=365).unwrap()
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=rx, fill=1).reason == "ERASED"
    for caller in (WANG, CHEN):  # p01 still reads it (it owes fill 1), p02 serves it
        (p,) = _rxops(world, ledger, caller).inbox(0)["prescriptions"]
        assert (p["status"], p["action"], p["deliver_by"], p["deliver_fills"]) == ("ERASED", "none", None, []), caller


def test_a_consent_grant_reads_a_prescription_but_does_not_serve_it(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    rx = approved(world).args["rx_id"]
    zhang = world.patient_who("patient-zhang")
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    assert _show(world, CHEN)(rx) is not None  # p02 may read it (the patient's consent) ...
    inbox = _inbox(world, ledger, CHEN)  # ... but it is p01's to dispense
    assert (inbox["prescriptions"], inbox["changes"], inbox["routed_elsewhere"]) == ([], [], [])
    assert [c["step"] for c in _inbox(world, ledger, WANG)["changes"]] == ["issue", "review", "consent"]


@pytest.mark.parametrize("bad_id", ["", "x" * 65, "../rx", "rx 1", 7])
def test_an_event_naming_no_prescription_id_is_skipped(world: World, bad_id: object) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    rx = approved(world).args["rx_id"]
    ledger.extra[0] = [transaction_pb2.ContractEvent(
        contract="prescription", name="rx.issue", tx_id="ab" * 32,
        payload=json.dumps({"rx_id": bad_id, "status": "ISSUED", "org": "h01"}).encode())]
    inbox = _inbox(world, ledger, WANG)
    assert _actions(inbox) == {rx: "dispense"} and inbox["next_block"] == ledger.height


def test_rxops_inbox_is_for_pharmacies_and_hospitals(world: World) -> None:  # noqa: F811
    from client.rxops import RxOperations
    from tests.client.contractgw import ContractGateway

    ledger = EventLedger(world.chain)
    rx = approved(world).args["rx_id"]
    kinds = {"p01": config_pb2.PHARMACY, "h01": config_pb2.HOSPITAL, "ins01": config_pb2.INSURER}

    def ops(caller: Who) -> RxOperations:
        gw = ContractGateway(world, caller)
        return RxOperations(SimpleNamespace(  # type: ignore[arg-type]
            gateway=SimpleNamespace(events=ledger.events, evaluate=gw.evaluate),
            identity=SimpleNamespace(org=caller.org, role=caller.role), clock=lambda: world.chain.now,
            net=SimpleNamespace(org=lambda o: SimpleNamespace(kind=kinds[o]))))

    assert _actions(ops(WANG).inbox(0)) == {rx: "dispense"}
    assert _actions(ops(HE).inbox(0)) == {}  # routed to p01: not the hospital pharmacy's
    assert _actions(ops(COURIER).inbox(0)) == {rx: "dispense"}
    # an insurer, and a patient (her certificate is her hospital's): no pharmacy's work
    for caller in (CLERK, world.patient_who("patient-zhang")):
        with pytest.raises(RxClientError) as refused:
            ops(caller).inbox(0)
        assert refused.value.reason == "WRONG_ROLE"


def test_cli_inbox_reads_from_its_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import io

    from client import cli

    calls: list[tuple[int, int]] = []

    class Ops:
        s = SimpleNamespace(close=lambda: None)

        def inbox(self, start: int, max_blocks: int) -> dict[str, Any]:
            calls.append((start, max_blocks))
            return {"from_block": start, "next_block": start + 3, "org": "p01", "changes": [], "prescriptions": []}

    monkeypatch.setattr(cli, "_ops", lambda a: Ops())
    cp = tmp_path / "inbox.checkpoint"
    out, err = io.StringIO(), io.StringIO()
    base = ["--json", "--as", "p01:pharm-wang", "rx", "inbox"]
    assert cli.main([*base, "--checkpoint", str(cp)], out=out, err=err) == 0
    assert cli.main([*base, "--checkpoint", str(cp), "--limit", "9"], out=out, err=err) == 0
    assert cli.main([*base, "--start", "1", "--checkpoint", str(cp)], out=io.StringIO(), err=err) == 2
    assert cli.main([*base, "--start", "40"], out=out, err=err) == 0
    assert calls == [(0, 10_000), (3, 9), (40, 10_000)] and cp.read_text() == "6\n"
    assert json.loads(out.getvalue().splitlines()[-1])["next_block"] == 43


def test_cli_inbox_human_output_leads_with_what_to_do(world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import io

    from client import cli

    ledger = EventLedger(world.chain)
    rx = approved(world).args["rx_id"]
    ops = _rxops(world, ledger, WANG)
    ops.s.close = lambda: None
    monkeypatch.setattr(cli, "_ops", lambda a: ops)
    out = io.StringIO()
    assert cli.main(["--as", "p01:pharm-wang", "rx", "inbox"], out=out, err=io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    row = lines[lines.index("prescriptions:") + 1]
    assert row.startswith(f"  - rx_id={rx}, action=dispense, status=APPROVED, "), row


# ---------------------------------------------------------------- GET /fhir/Task (the FHIR gateway)


def _fhir_app(w: World, ledger: EventLedger, caller: Who) -> Any:
    from client.fhir.server import FhirApp
    from client.rxops import RxOperations
    from tests.client.contractgw import ContractGateway

    gw = ContractGateway(w, caller)
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=SimpleNamespace(events=ledger.events, evaluate=gw.evaluate),
        identity=SimpleNamespace(org=caller.org, role=caller.role), clock=lambda: w.chain.now,
        net=SimpleNamespace(org=lambda o: SimpleNamespace(kind=config_pb2.PHARMACY))))
    return FhirApp(SimpleNamespace(ops_for=lambda der: ops))  # type: ignore[arg-type]


def test_fhir_task_search_lists_the_pharmacys_work_items(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    to_dispense = approved(world).args["rx_id"]
    revoked = issue(world, pharmacy="p01")[0].args["rx_id"]
    world.chain.submit("prescription", "revoke", JIANG, rx_id=revoked, reason="CLINICAL_CHANGE").unwrap()
    approved(world, pharmacy="p02")
    repeat, _ = _filled_repeat(world, "81234560000000000403")
    world.chain.submit("prescription", "deliver", COURIER, rx_id=repeat.args["rx_id"]).unwrap()
    app = _fhir_app(world, ledger, WANG)
    reply = app.handle("GET", "/fhir/Task", None, b"cert")
    assert reply.status == 200 and reply.headers["X-Rxchain-Next-Block"] == str(ledger.height)
    bundle = reply.resource
    assert bundle["type"] == "searchset" and [link["relation"] for link in bundle["link"]] == ["self"]
    tasks = {e["resource"]["identifier"][0]["value"]: e["resource"] for e in bundle["entry"]}
    assert {rx: (t["status"], t["businessStatus"]["coding"][0]["code"]) for rx, t in tasks.items()} == {
        to_dispense: ("ready", "dispense"), revoked: ("cancelled", "none"),
        repeat.args["rx_id"]: ("on-hold", "wait")}
    assert tasks[repeat.args["rx_id"]]["restriction"]["period"]["start"].startswith("2026-12-")
    assert tasks[to_dispense]["owner"]["identifier"]["value"] == "p01"
    # the next poll from the header: nothing new
    again = app.handle("GET", f"/fhir/Task?from-block={ledger.height}", None, b"cert")
    assert again.resource["entry"] == [] and again.headers["X-Rxchain-Next-Block"] == str(ledger.height)
    # a limit that cuts the range short gives a next link to go on with
    cut = app.handle("GET", "/fhir/Task?from-block=0&limit-blocks=2", None, b"cert")
    assert cut.headers["X-Rxchain-Next-Block"] == "2"
    assert [link["url"] for link in cut.resource["link"] if link["relation"] == "next"] == [
        "/fhir/Task?from-block=2&limit-blocks=2"]
    # a limit reaching exactly the height: nothing follows, no next link
    rest = ledger.height - 2
    end = app.handle("GET", f"/fhir/Task?from-block=2&limit-blocks={rest}", None, b"cert")
    assert end.headers["X-Rxchain-Next-Block"] == str(ledger.height)
    assert [link["relation"] for link in end.resource["link"]] == ["self"]


def test_fhir_task_is_completed_with_the_last_fill_handed_over_while_another_owes_one(world: World) -> None:  # noqa: F811
    """p02 dispensed and handed over the last fill after a re-route while p01's courier still
    owes fill 1: the prescription is DELIVERED (the last fill's hand-over) and p02's Task
    completed -- it stayed DISPENSED, the Task on-hold (a next fill not due) with nothing to
    wait for, for good if p01 never confirmed; p01's hand-over is still recorded after it."""
    ledger = EventLedger(world.chain)
    prep, rx = _filled_repeat(world, "81234560000000000411")
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    world.chain.advance(28 * DAY_MS)
    world.chain.submit("prescription", "lock", CHEN, rx_id=rx).unwrap()
    dispense(world, prep, CHEN, ["81234560000000000412"]).unwrap()

    def task(caller: Who) -> tuple[str, str, str]:
        (entry,) = _fhir_app(world, ledger, caller).handle("GET", "/fhir/Task", None, b"cert").resource["entry"]
        t = entry["resource"]
        return t["status"], t["businessStatus"]["coding"][0]["code"], t["businessStatus"]["text"]

    assert task(CHEN) == ("in-progress", "deliver", "DISPENSED")
    assert world.chain.submit("prescription", "deliver", COURIER2, rx_id=rx).unwrap()["status"] == "DELIVERED"
    assert task(CHEN) == ("completed", "none", "DELIVERED")
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()["fill"] == 1
    assert task(CHEN) == ("completed", "none", "DELIVERED")


def test_fhir_task_search_goes_on_where_the_read_cap_stopped(world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import functools

    from client import rxops

    ledger = EventLedger(world.chain)
    first = approved(world).args["rx_id"]
    approved(world)
    monkeypatch.setattr(rxops, "pharmacy_inbox", functools.partial(pharmacy_inbox, max_reads=1))
    reply = _fhir_app(world, ledger, WANG).handle("GET", "/fhir/Task", None, b"cert")
    nxt = reply.headers["X-Rxchain-Next-Block"]
    assert [e["resource"]["identifier"][0]["value"] for e in reply.resource["entry"]] == [first]
    assert int(nxt) < ledger.height
    assert [link["url"] for link in reply.resource["link"] if link["relation"] == "next"] == [
        f"/fhir/Task?from-block={nxt}&limit-blocks=1000"]


def test_fhir_task_search_gives_a_next_link_when_the_block_past_the_limit_failed_to_be_read(
        world: World) -> None:  # noqa: F811
    """The Task search failed when the stream broke on the block past limit-blocks; now it
    answers what it read with a next link (whether a block follows is unknown)."""
    ledger = EventLedger(world.chain)
    approved(world)
    assert ledger.height > 2
    healthy = _fhir_app(world, ledger, WANG).handle("GET", "/fhir/Task?limit-blocks=2", None, b"cert")

    def broken(block: int) -> Any:
        return _fhir_app(world, SimpleNamespace(events=failing_at(ledger.events, block)), WANG)  # type: ignore[arg-type]

    reply = broken(2).handle("GET", "/fhir/Task?limit-blocks=2", None, b"cert")
    assert reply.status == 200 and reply.headers["X-Rxchain-Next-Block"] == "2"
    assert reply.resource == healthy.resource
    assert [link["url"] for link in reply.resource["link"] if link["relation"] == "next"] == [
        "/fhir/Task?from-block=2&limit-blocks=2"]
    with pytest.raises(RxClientError) as failed:  # a block within the limit: failed as before
        broken(1).handle("GET", "/fhir/Task?limit-blocks=2", None, b"cert")
    assert failed.value.reason == "TIMEOUT"


def test_fhir_task_search_cancels_the_task_of_a_prescription_routed_elsewhere(world: World) -> None:  # noqa: F811
    """The Task search left out what ``rx inbox`` names in ``routed_elsewhere``: a pharmacy ERP
    kept the Task of a prescription routed away from it (``ready``) until it read it again and
    might dispense it. Each is a ``cancelled`` Task, ``businessStatus`` routed_elsewhere, with
    the prescription id only -- the pharmacy it left may no longer read it (``show``), so no
    status, fills, patient, hospital or new pharmacy; the pharmacy it went to has it to do."""
    ledger = EventLedger(world.chain)
    rx = approved(world).args["rx_id"]
    kept = approved(world).args["rx_id"]
    first = _fhir_app(world, ledger, WANG).handle("GET", "/fhir/Task", None, b"cert")
    assert {e["resource"]["identifier"][0]["value"]: e["resource"]["status"]
            for e in first.resource["entry"]} == {rx: "ready", kept: "ready"}
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    assert _show(world, WANG)(rx) is None  # p01 may no longer read it
    nxt = first.headers["X-Rxchain-Next-Block"]
    later = _fhir_app(world, ledger, WANG).handle("GET", f"/fhir/Task?from-block={nxt}", None, b"cert").resource
    from client.fhir import mapping

    (entry,) = later["entry"]
    assert later["total"] == 1 and entry["search"] == {"mode": "match"}
    assert entry["resource"] == {
        "resourceType": "Task", "identifier": [{"system": "urn:rxchain:hiRxno", "value": rx}],
        "status": "cancelled", "intent": "order", "statusReason": {"concept": {"text": mapping.ROUTED_REASON}},
        "businessStatus": {"coding": [{"system": "urn:rxchain:inboxAction", "code": "routed_elsewhere"}]},
        "focus": {"type": "MedicationRequest", "identifier": {"system": "urn:rxchain:hiRxno", "value": rx}}}
    assert json.loads(mapping.dumps(later))["entry"][0]["resource"]["status"] == "cancelled"  # valid FHIR
    # from the start: the one still p01's is a ready Task, the routed one cancelled, once each
    both = _fhir_app(world, ledger, WANG).handle("GET", "/fhir/Task", None, b"cert").resource
    assert [(e["resource"]["identifier"][0]["value"], e["resource"]["status"]) for e in both["entry"]] == [
        (kept, "ready"), (rx, "cancelled")]
    theirs = _fhir_app(world, ledger, CHEN).handle("GET", f"/fhir/Task?from-block={nxt}", None, b"cert").resource
    assert [(e["resource"]["identifier"][0]["value"], e["resource"]["status"],
             e["resource"]["owner"]["identifier"]["value"]) for e in theirs["entry"]] == [(rx, "ready", "p02")]


def test_fhir_task_of_a_fill_owed_after_a_re_route_stays_in_progress(world: World) -> None:  # noqa: F811
    """A prescription routed away while the pharmacy's courier still owes its fill: an
    in-progress Task to deliver, not a cancelled one an ERP would drop with the delivery."""
    ledger = EventLedger(world.chain)
    _, rx = _filled_repeat(world, "81234560000000000407")
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    tasks = _fhir_app(world, ledger, WANG).handle("GET", "/fhir/Task", None, b"cert").resource
    assert [(e["resource"]["identifier"][0]["value"], e["resource"]["status"],
             e["resource"]["businessStatus"]["coding"][0]["code"]) for e in tasks["entry"]] == [
        (rx, "in-progress", "deliver")]


@pytest.mark.parametrize("query", ["from-block=-1", "from-block=x", "from-block=", "from-block",
                                   "limit-blocks=0", "limit-blocks=10001", "from-block=1&from-block=2",
                                   "status=ready", "from-block=１"])
def test_fhir_task_search_refuses_bad_parameters(world: World, query: str) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    app = _fhir_app(world, ledger, WANG)
    with pytest.raises(RxClientError) as bad:
        app.handle("GET", "/fhir/Task?" + query, None, b"cert")
    assert bad.value.reason == "FHIR_INVALID"


def test_a_start_beyond_the_peers_height_is_refused(world: World) -> None:  # noqa: F811
    """As the claim report: an empty stream from a block the peer does not have is no "nothing
    new" -- a checkpoint of another ledger would wait there, then skip the blocks below it."""
    ledger = EventLedger(world.chain)
    approved(world)
    assert _inbox(world, ledger, WANG, ledger.height)["next_block"] == ledger.height  # at the height: empty
    with pytest.raises(RxClientError) as beyond:
        _inbox(world, ledger, WANG, ledger.height + 5)
    assert beyond.value.reason == "START_BEYOND_HEIGHT"


def test_a_delivery_owed_after_a_re_route_leaves_the_inbox_read_on_from_a_checkpoint(world: World) -> None:  # noqa: F811
    """The pharmacy routed away from lists the fill its courier owes (``deliver``); once the
    courier hands it over the pharmacy may read the prescription no more, and an inbox read
    going on from where the last one stopped -- whose blocks hold the hand-over, not the
    re-route -- must still tell a queue to drop it. It listed it nowhere: the ERP kept a
    delivery Task in progress for good."""
    ledger = EventLedger(world.chain)
    _, rx = _filled_repeat(world, "81234560000000000408")
    world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    first = _rxops(world, ledger, WANG).inbox(0)
    assert [(p["rx_id"], p["action"]) for p in first["prescriptions"]] == [(rx, "deliver")]
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    later = _rxops(world, ledger, WANG).inbox(first["next_block"])
    assert (later["prescriptions"], later["changes"], later["routed_elsewhere"]) == ([], [], [rx])
    # the FHIR poll from there: the in-progress delivery Task is answered cancelled
    tasks = _fhir_app(world, ledger, WANG).handle("GET", f"/fhir/Task?from-block={first['next_block']}",
                                                  None, b"cert").resource
    assert [(e["resource"]["identifier"][0]["value"], e["resource"]["status"],
             e["resource"]["businessStatus"]["coding"][0]["code"]) for e in tasks["entry"]] == [
        (rx, "cancelled", "routed_elsewhere")]
    # another pharmacy's hand-over of a prescription p01 never served tells p01 nothing
    other = approved(world, pharmacy="p02")
    world.chain.submit("prescription", "lock", CHEN, rx_id=other.args["rx_id"]).unwrap()
    dispense(world, other, CHEN, ["81234560000000000409"]).unwrap()
    world.chain.submit("prescription", "deliver", COURIER2, rx_id=other.args["rx_id"]).unwrap()
    assert _rxops(world, ledger, WANG).inbox(later["next_block"])["routed_elsewhere"] == []
