"""Review, routing, lock race, dispensing, trace codes, delivery, revocation, repeat fills,
expiry and the trace: DOMAIN.md section 2."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from tests.contracts.chain import DAY_MS, T0_MS, Who, admin, who
from tests.contracts.flows import (
    AUDITOR,
    CHEN,
    CLERK,
    COURIER,
    COURIER2,
    HE,
    JIANG,
    NEW,
    WANG,
    ZHOU,
    approved,
    content_transient,
    dispense,
    issue,
    lock_and_dispense,
    settle,
)
from tests.contracts.rxclient import World, trace_key

LI = who("p01:pharm-li:pharmacist")
LONG = {"long_rx": True, "chronic_reason": "stable hypertension", "days": 28}


def register_li(world: World) -> None:
    world.chain.submit("registry", "register_practitioner", admin("p01"), name="pharm-li",
                       role="pharmacist", code="P500105000009", licence_active=True,
                       practice_years=4, internet_practice=False).unwrap()


def call(world: World, fn: str, caller: Who, rx_id: str, **args: Any) -> str:
    out = world.chain.submit("prescription", fn, caller, rx_id=rx_id, **args)
    return "OK" if out.ok else out.reason


def test_separation_of_duties_and_review_rules(world: World) -> None:
    prep, out = issue(world)
    out.unwrap()
    rx = prep.args["rx_id"]
    assert call(world, "review", JIANG, rx, approve=True, reason="") == "SOD_VIOLATION"
    # the prescriber holding a second (pharmacist) certificate is still the prescriber
    jiang_as_pharmacist = Who("h01", "dr-jiang", "pharmacist")
    assert call(world, "review", jiang_as_pharmacist, rx, approve=True, reason="") == "SOD_VIOLATION"
    assert call(world, "review", NEW, rx, approve=True, reason="") == "WRONG_ROLE"
    assert call(world, "review", who("h01:pharm-x:pharmacist"), rx, approve=True,
                reason="") == "UNAUTHORIZED"
    assert call(world, "review", CHEN, rx, approve=True, reason="") == "NOT_ROUTED"
    assert call(world, "lock", WANG, rx) == "NOT_REVIEWED"
    assert call(world, "review", WANG, rx, approve=False, reason="") == "REASON_REQUIRED"
    assert call(world, "review", WANG, rx, approve=True, reason="") == "OK"
    assert call(world, "review", HE, rx, approve=True, reason="") == "ALREADY_REVIEWED"


def test_rejected_prescription_cannot_be_dispensed(world: World) -> None:
    prep, out = issue(world)
    out.unwrap()
    rx = prep.args["rx_id"]
    assert call(world, "review", HE, rx, approve=False, reason="DOSE") == "OK"
    assert call(world, "lock", WANG, rx) == "REJECTED"
    assert dispense(world, prep).reason == "REJECTED"


def test_lock_race_exactly_one_winner(world: World) -> None:
    register_li(world)
    prep = approved(world)
    rx = prep.args["rx_id"]
    # two pharmacists of the routed pharmacy simulate lock against the same snapshot:
    # both endorse, and both read and write the same key, so MVCC lets only one commit
    chain = world.chain
    first, sim1, ts1 = chain.simulate("prescription", "lock", WANG, rx_id=rx)
    second, sim2, ts2 = chain.simulate("prescription", "lock", LI, rx_id=rx)
    assert first.ok and second.ok
    key = ("prescription", "rx/" + rx)
    assert key in sim1.reads and key in sim2.reads and key in sim1.writes and key in sim2.writes
    assert chain.commit_validated(first, sim1, ts1) == "VALID"
    assert chain.commit_validated(second, sim2, ts2) == "MVCC_READ_CONFLICT"
    locked = chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["lock"]
    assert locked["by"] == "pharm-wang"
    # re-executed after the winner committed, the loser is refused by the contract itself
    assert call(world, "release", WANG, rx) == "OK"
    assert call(world, "lock", WANG, rx) == "OK"
    assert call(world, "lock", LI, rx) == "ALREADY_LOCKED"
    assert call(world, "lock", CHEN, rx) == "ALREADY_LOCKED"
    assert call(world, "lock", HE, rx) == "ALREADY_LOCKED"
    assert dispense(world, prep, pharmacist=CHEN).reason == "ALREADY_LOCKED"
    # only the lock holder releases; then the other pharmacy is simply not routed
    assert call(world, "release", CHEN, rx) == "ALREADY_LOCKED"
    assert call(world, "release", LI, rx) == "OK"
    assert call(world, "release", WANG, rx) == "NOT_LOCKED"
    assert call(world, "lock", CHEN, rx) == "NOT_ROUTED"
    assert dispense(world, prep, pharmacist=CHEN).reason == "NOT_ROUTED"
    assert dispense(world, prep, pharmacist=WANG).reason == "NOT_LOCKED"
    assert lock_and_dispense(world, prep, pharmacist=LI).unwrap()["fill"] == 1
    assert call(world, "lock", WANG, rx) == "ALREADY_DISPENSED"
    assert dispense(world, prep, pharmacist=WANG).reason == "ALREADY_DISPENSED"


def test_unrouted_prescription_stays_with_the_hospital_pharmacy(world: World) -> None:
    prep = approved(world, pharmacy="")
    rx = prep.args["rx_id"]
    assert call(world, "lock", WANG, rx) == "NOT_ROUTED"
    assert lock_and_dispense(world, prep, pharmacist=HE).ok


def test_reroute_grants_new_pharmacy_and_revokes_old(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    assert world.chain.submit("prescription", "get_key", WANG, rx_id=rx).unwrap()["party"] == "p01"
    assert call(world, "route", WANG, rx, pharmacy="p02",
                wrapped_key=world.wrap_for(rx, "p02")) == "ACCESS_DENIED"
    assert call(world, "route", JIANG, rx, pharmacy="p07",
                wrapped_key=world.wrap_for(rx, "p07")) == "UNKNOWN_PHARMACY"
    assert call(world, "lock", WANG, rx) == "OK"
    assert call(world, "route", JIANG, rx, pharmacy="p02",
                wrapped_key=world.wrap_for(rx, "p02")) == "ALREADY_LOCKED"
    assert call(world, "release", WANG, rx) == "OK"
    # the patient chooses another pharmacy
    out = world.chain.submit("prescription", "route", world.patient_who("patient-zhang"),
                             rx_id=rx, pharmacy="p02", wrapped_key=world.wrap_for(rx, "p02"))
    assert out.unwrap() == {"rx_id": rx, "pharmacy": "p02", "previous": "p01"}
    # p01 is no party any more: its views answer it as a missing id, its key request is an
    # audited denial (DOMAIN.md section 4)
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).reason == "NOT_FOUND"
    denied = world.chain.submit("prescription", "get_key", WANG, rx_id=rx).unwrap()
    assert denied["error"] == "NO_KEY_GRANT"
    assert world.chain.submit("prescription", "get_key", CHEN, rx_id=rx).unwrap()["party"] == "p02"
    assert call(world, "lock", WANG, rx) == "NOT_ROUTED"
    assert lock_and_dispense(world, prep, pharmacist=CHEN).ok
    trail = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx).unwrap()["events"]
    kinds = [(e["event"], e["party"], e["outcome"]) for e in trail]
    assert ("REVOKE_GRANT", "p01", "REVOKED") in kinds
    assert ("GRANT", "p02", "pharmacy") in kinds
    assert ("KEY_FETCH", "p01", "DENIED") in kinds


def test_trace_codes_are_single_use_across_the_ledger(world: World) -> None:
    a = approved(world, drugs=[("amlodipine", 2)])
    b = approved(world, drugs=[("amlodipine", 2)])
    world.chain.submit("prescription", "lock", WANG, rx_id=a.args["rx_id"]).unwrap()
    assert dispense(world, a, trace_codes=["T1", "T2", "T3"]).reason == "BAD_TRANSIENT"
    assert dispense(world, a, trace_codes=["T1", "T1"]).reason == "TRACE_CODE_REUSED"
    assert dispense(world, a, trace_codes=["81234560000000000001", "81234560000000000002"]).ok
    world.chain.submit("prescription", "lock", WANG, rx_id=b.args["rx_id"]).unwrap()
    out = dispense(world, b, trace_codes=["81234560000000000002"])
    assert out.reason == "TRACE_CODE_REUSED"
    assert dispense(world, b, trace_codes=["81234560000000000003"]).ok
    # trace codes are stored hashed only
    assert b"81234560000000000002" not in world.chain.raw_state_bytes()


def test_trace_codes_are_transient_and_keyed(world: World) -> None:
    """No raw trace code in the arguments (block) or state; a pharmacy cannot dodge the
    reuse check with a key of its own, nor pass codes as a plain argument."""
    a = approved(world, drugs=[("amlodipine", 2)])
    b = approved(world, drugs=[("amlodipine", 2)])
    world.chain.submit("prescription", "lock", WANG, rx_id=a.args["rx_id"]).unwrap()
    out = world.chain.submit("prescription", "dispense", WANG, transient=content_transient(a),
                             rx_id=a.args["rx_id"], trace_codes=["81234560000000000051"])
    assert out.reason == "BAD_ARGUMENTS"  # the old plaintext argument no longer exists
    assert dispense(world, a, trace_codes=["81234560000000000051"]).ok
    world.chain.submit("prescription", "lock", WANG, rx_id=b.args["rx_id"]).unwrap()
    assert dispense(world, b, trace_codes=["81234560000000000051"],
                    key="77" * 32).reason == "BAD_TRANSIENT"
    assert dispense(world, b, trace_codes=["81234560000000000051"]).reason == "TRACE_CODE_REUSED"
    raw = world.chain.raw_state_bytes()
    assert b"81234560000000000051" not in raw
    plain = hashlib.sha256(b"trace|81234560000000000051").hexdigest()
    assert plain.encode() not in raw  # keyed, not a guessable bare hash
    keyed = hmac.new(bytes.fromhex(trace_key()), b"trace|81234560000000000051",
                     hashlib.sha256).hexdigest()
    assert keyed.encode() in raw


def test_trace_fills_tells_which_fill_recorded_each_box(world: World) -> None:
    """``trace_fills`` answers, for keyed trace-code hashes, the fill of this prescription
    that recorded each (0: not on it, whether on another prescription or nowhere); parties
    only; bad hashes are BAD_ARGUMENTS."""
    a = approved(world, drugs=[("amlodipine", 2)])
    b = approved(world, drugs=[("amlodipine", 2)])
    rx_a, rx_b = a.args["rx_id"], b.args["rx_id"]
    world.chain.submit("prescription", "lock", WANG, rx_id=rx_a).unwrap()
    assert dispense(world, a, trace_codes=["81234560000000000061", "81234560000000000062"]).ok
    world.chain.submit("prescription", "lock", WANG, rx_id=rx_b).unwrap()
    assert dispense(world, b, trace_codes=["81234560000000000063"]).ok

    def h(code: str) -> str:
        return hmac.new(bytes.fromhex(trace_key()), ("trace|" + code).encode(), hashlib.sha256).hexdigest()

    codes = ["81234560000000000062", "81234560000000000063", "81234560000000000099", "81234560000000000061"]
    out = world.chain.query("prescription", "trace_fills", WANG, rx_id=rx_a, hashes=[h(c) for c in codes])
    assert out.unwrap() == {"rx_id": rx_a, "fills": [1, 0, 0, 1]}
    assert world.chain.query("prescription", "trace_fills", AUDITOR, rx_id=rx_b,
                             hashes=[h(c) for c in codes]).unwrap()["fills"] == [0, 1, 0, 0]
    assert world.chain.query("prescription", "trace_fills", COURIER2, rx_id=rx_a,
                             hashes=[h(codes[0])]).reason == "NOT_FOUND"  # a non-party: as a missing id
    for bad in ([], ["AB" * 32], ["ab" * 31], "ab" * 32, ["ab" * 32] * 5001):
        assert world.chain.query("prescription", "trace_fills", WANG, rx_id=rx_a,
                                 hashes=bad).reason == "BAD_ARGUMENTS", bad
    assert world.chain.query("prescription", "trace_fills", WANG, rx_id="RX-NONE",
                             hashes=[h(codes[0])]).reason == "NOT_FOUND"


def test_dispense_checks_the_commitment(world: World) -> None:
    prep = approved(world)
    world.chain.submit("prescription", "lock", WANG, rx_id=prep.args["rx_id"]).unwrap()
    tampered = dict(prep.content)
    tampered["drugs"] = [{"code": world.codes["amlodipine"], "qty": 9}]
    out = world.chain.submit("prescription", "dispense", WANG,
                             transient={"content": tampered, "salt": prep.salt},
                             rx_id=prep.args["rx_id"])
    assert out.reason == "HASH_MISMATCH"
    out = world.chain.submit("prescription", "dispense", WANG,
                             transient={"content": prep.content, "salt": "0" * 32},
                             rx_id=prep.args["rx_id"])
    assert out.reason == "HASH_MISMATCH"
    assert dispense(world, prep).ok


def test_expiry(world: World) -> None:
    prep = approved(world, valid_days=2)
    rx = prep.args["rx_id"]
    assert call(world, "expire", JIANG, rx) == "NOT_EXPIRED"
    world.chain.advance(2 * DAY_MS)  # 2026-11-27 10:00 China time: past the 2-day validity
    assert call(world, "lock", WANG, rx) == "EXPIRED"
    assert call(world, "expire", JIANG, rx) == "OK"
    assert call(world, "lock", WANG, rx) == "EXPIRED"
    unreviewed, out = issue(world)
    out.unwrap()
    world.chain.advance(DAY_MS)
    assert call(world, "review", HE, unreviewed.args["rx_id"], approve=True,
                reason="") == "EXPIRED"


def test_revocation(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    assert call(world, "revoke", ZHOU, rx, reason="PRESCRIBING_ERROR") == "ACCESS_DENIED"
    assert call(world, "revoke", WANG, rx, reason="PRESCRIBING_ERROR") == "ACCESS_DENIED"
    assert call(world, "revoke", JIANG, rx, reason="") == "REASON_REQUIRED"
    assert call(world, "lock", WANG, rx) == "OK"
    assert call(world, "revoke", JIANG, rx, reason="ADVERSE_REACTION") == "OK"
    assert call(world, "lock", WANG, rx) == "REVOKED"
    assert dispense(world, prep).reason == "REVOKED"
    assert call(world, "revoke", JIANG, rx, reason="OTHER") == "REVOKED"
    # the hospital's pharmacy department may revoke too, but never after dispensing
    other = approved(world)
    assert call(world, "revoke", HE, other.args["rx_id"], reason="DUPLICATE") == "OK"
    done = approved(world)
    lock_and_dispense(world, done).unwrap()
    assert call(world, "revoke", JIANG, done.args["rx_id"], reason="OTHER") == "REVOKE_NOT_ALLOWED"


def test_final_states_are_never_rewritten(world: World) -> None:
    """REJECTED, EXPIRED and ERASED are final: a later revoke, delivery or review answers
    with that status and changes nothing (revoke used to turn them into REVOKED, delivery an
    erased tombstone into DELIVERED, and review answered ALREADY_REVIEWED)."""
    rejected, out = issue(world)
    out.unwrap()
    assert call(world, "review", HE, rejected.args["rx_id"], approve=False, reason="DOSE") == "OK"
    expired, out = issue(world)
    out.unwrap()
    erased = approved(world)
    lock_and_dispense(world, erased).unwrap()
    unreviewed, out = issue(world)
    out.unwrap()
    world.chain.advance(2 * DAY_MS)
    assert call(world, "expire", JIANG, expired.args["rx_id"]) == "OK"
    assert call(world, "review", HE, expired.args["rx_id"], approve=True, reason="") == "EXPIRED"
    world.chain.advance(365 * DAY_MS)
    for prep in (erased, unreviewed):
        assert call(world, "erase", admin("h01"), prep.args["rx_id"], retention_days=365) == "OK"
    before = dict(world.chain.state.values)
    for prep, status in ((rejected, "REJECTED"), (expired, "EXPIRED"), (unreviewed, "ERASED")):
        assert call(world, "revoke", JIANG, prep.args["rx_id"], reason="OTHER") == status
        assert call(world, "revoke", HE, prep.args["rx_id"], reason="OTHER") == status
    assert call(world, "deliver", COURIER, erased.args["rx_id"]) == "ERASED"
    assert call(world, "review", HE, unreviewed.args["rx_id"], approve=True, reason="") == "ERASED"
    assert call(world, "review", HE, rejected.args["rx_id"], approve=True, reason="") == "REJECTED"
    assert world.chain.state.values == before
    for prep, status in ((rejected, "REJECTED"), (expired, "EXPIRED"), (erased, "ERASED")):
        shown = world.chain.query("prescription", "show", AUDITOR, rx_id=prep.args["rx_id"])
        assert shown.unwrap()["status"] == status


def test_pharmacy_department_revocation_needs_an_active_licence(world: World) -> None:
    """Like review and lock, a revocation by the hospital's pharmacy department needs a
    pharmacist registered with an active licence (any pharmacist certificate used to do)."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    assert call(world, "revoke", who("h01:pharm-x:pharmacist"), rx, reason="OTHER") == "ACCESS_DENIED"
    world.chain.submit("registry", "register_practitioner", admin("h01"), name="pharm-he",
                       role="pharmacist", code="P500103000001", licence_active=False,
                       practice_years=12, internet_practice=False).unwrap()
    assert call(world, "revoke", HE, rx, reason="OTHER") == "ACCESS_DENIED"
    world.chain.submit("registry", "register_practitioner", admin("h01"), name="pharm-he",
                       role="pharmacist", code="P500103000001", licence_active=True,
                       practice_years=12, internet_practice=False).unwrap()
    assert call(world, "revoke", HE, rx, reason="OTHER") == "OK"


def test_repeat_fills(world: World) -> None:
    prep = approved(world, max_fills=3, fill_interval_days=28,
                    stability_assessment="stable 6 months", patient_confirmed=True, **LONG)
    rx = prep.args["rx_id"]
    assert lock_and_dispense(world, prep).unwrap()["fills_left"] == 2
    assert call(world, "lock", WANG, rx) == "TOO_EARLY"
    world.chain.advance(27 * DAY_MS)
    assert call(world, "lock", WANG, rx) == "TOO_EARLY"
    world.chain.advance(DAY_MS)
    # fill 1 not handed over yet: the next fill does not wait for it (deliver names any fill)
    assert lock_and_dispense(world, prep).unwrap()["fill"] == 2
    assert settle(world, prep, fill=2).ok
    assert settle(world, prep, fill=2).reason == "DUPLICATE_CLAIM"
    assert settle(world, prep, fill=1).ok
    world.chain.advance(28 * DAY_MS)
    assert lock_and_dispense(world, prep).unwrap()["fills_left"] == 0
    world.chain.advance(28 * DAY_MS)
    assert call(world, "lock", WANG, rx) == "FILLS_EXHAUSTED"
    assert call(world, "revoke", JIANG, rx, reason="OTHER") == "REVOKE_NOT_ALLOWED"


def test_repeat_fill_window_expires(world: World) -> None:
    prep = approved(world, max_fills=2, fill_interval_days=28, **LONG,
                    stability_assessment="stable", patient_confirmed=True)
    lock_and_dispense(world, prep).unwrap()
    world.chain.advance(30 * DAY_MS)  # window of fill 2: day 28 .. day 28 + validity
    assert call(world, "lock", WANG, prep.args["rx_id"]) == "EXPIRED"


def test_repeat_fill_interval_counts_china_calendar_days(world: World) -> None:
    """``fill_interval_days`` are China-local calendar days, as the fill's deadline is: fill 1
    at 23:00 on the last day of validity, fill 2 may come from midnight 28 days on. The
    interval used to count from the fill's millisecond, so fill 2 was TOO_EARLY until 23:00 of
    the one day its validity left it (EXPIRED at midnight): a one-hour window."""
    hour = 3_600_000
    prep = approved(world, max_fills=2, fill_interval_days=28, **LONG,
                    stability_assessment="stable", patient_confirmed=True)
    rx = prep.args["rx_id"]
    world.chain.now = T0_MS + 13 * hour  # 2026-11-25 23:00 China time (issued 10:00, 1-day validity)
    lock_and_dispense(world, prep).unwrap()
    midnight = T0_MS + 14 * hour + 27 * DAY_MS  # 2026-12-23 00:00 China time, 28 days on
    assert call(world, "lock", WANG, rx, at_ms=midnight - 1) == "TOO_EARLY"
    world.chain.now = midnight
    assert call(world, "lock", WANG, rx) == "OK"
    assert dispense(world, prep).unwrap()["fill"] == 2


def _shown(world: World, rx: str) -> dict[str, Any]:
    return dict(world.chain.query("prescription", "show", AUDITOR, rx_id=rx).unwrap())


def _disp(world: World, rx: str, fill: int) -> dict[str, Any]:
    return dict(json.loads(world.chain.state.values[("prescription", f"disp/{rx}/{fill:03}")]))


def test_any_fill_is_handed_over_whatever_was_dispensed_after_it(world: World) -> None:
    """``deliver`` confirmed the latest fill only, so fill N+1 waited NOT_DELIVERED for fill
    N's hand-over: an active pharmacy whose courier never confirmed held every remaining fill
    (and a late confirmation could let fill N+1's validity pass). Now fill N+1 goes out at
    once, and ``deliver(fill=N)`` records fill N's hand-over afterwards; without ``fill`` the
    latest fill of the courier's pharmacy (a re-run: ALREADY_DELIVERED). Refusals change nothing."""
    prep = approved(world, max_fills=3, fill_interval_days=28,
                    stability_assessment="stable 6 months", patient_confirmed=True, **LONG)
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    world.chain.advance(28 * DAY_MS)
    assert lock_and_dispense(world, prep).unwrap()["fill"] == 2  # fill 1 not handed over: was NOT_DELIVERED
    assert (_shown(world, rx)["fills"], _shown(world, rx)["delivered_fills"]) == (2, 0)
    before = world.chain.raw_state_bytes()
    for caller, args, reason in (
        (COURIER, {"fill": 3}, "BAD_ARGUMENTS"),  # not dispensed (yet)
        (COURIER, {"fill": -1}, "BAD_ARGUMENTS"),
        (COURIER, {"fill": True}, "BAD_ARGUMENTS"),
        (COURIER, {"fill": "1"}, "BAD_ARGUMENTS"),
        (COURIER2, {"fill": 1}, "ACCESS_DENIED"),  # p01's fill
        (COURIER2, {}, "ACCESS_DENIED"),  # p02 owes nothing: the latest fill, p01's
        (WANG, {"fill": 1}, "WRONG_ROLE"),
    ):
        out = world.chain.submit("prescription", "deliver", caller, rx_id=rx, **args)
        assert (out.ok, out.reason) == (False, reason), (caller, args, out.message)
    assert world.chain.raw_state_bytes() == before
    # the default: the latest fill of the courier's pharmacy; run again, the same fill
    out = world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    assert (out["fill"], out["status"]) == (2, "DISPENSED")
    assert call(world, "deliver", COURIER, rx) == "ALREADY_DELIVERED"  # never fill 1 by default
    assert call(world, "deliver", COURIER, rx, fill=2) == "ALREADY_DELIVERED"
    assert (_disp(world, rx, 1)["delivered"], _disp(world, rx, 2)["courier"]) == (False, "courier-liu")
    # fill 1's courier confirms it afterwards, naming it
    world.chain.advance(60_000)
    out = world.chain.submit("prescription", "deliver", COURIER, rx_id=rx, fill=1).unwrap()
    assert out["fill"] == 1
    first = _disp(world, rx, 1)
    assert (first["delivered"], first["delivered_ms"], first["courier"]) == (True, world.chain.now, "courier-liu")
    assert _shown(world, rx)["delivered_fills"] == 2
    before = world.chain.raw_state_bytes()
    assert call(world, "deliver", COURIER, rx, fill=1) == "ALREADY_DELIVERED"
    assert call(world, "deliver", COURIER, rx) == "ALREADY_DELIVERED"  # nothing owed: the latest fill
    assert world.chain.raw_state_bytes() == before
    steps = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"]
    assert [(s["step"], s["detail"]["fill"]) for s in steps if s["step"] == "deliver"] == [
        ("deliver", 2), ("deliver", 1)]
    # fill 3 by p02 after a re-route: DELIVERED only once every fill is handed over
    assert call(world, "route", JIANG, rx, pharmacy="p02", wrapped_key=world.wrap_for(rx, "p02")) == "OK"
    world.chain.advance(28 * DAY_MS)
    assert lock_and_dispense(world, prep, pharmacist=CHEN).unwrap()["fills_left"] == 0
    assert call(world, "deliver", COURIER, rx) == "ALREADY_DELIVERED"  # p01's latest: fill 2
    assert call(world, "deliver", COURIER, rx, fill=3) == "ACCESS_DENIED"  # fill 3 is p02's
    out = world.chain.submit("prescription", "deliver", COURIER2, rx_id=rx).unwrap()
    assert (out["fill"], out["status"]) == (3, "DELIVERED")
    assert (_shown(world, rx)["status"], _shown(world, rx)["delivered_fills"]) == ("DELIVERED", 3)


def test_delivered_once_the_last_fill_is_handed_over(world: World) -> None:
    """Fills are handed over in any order now. DELIVERED is the last fill's hand-over, as
    before: an earlier fill's courier that never confirms must not keep the prescription
    DISPENSED for good (nothing could move it on: expire refuses a dispensed one); the
    earlier fill's hand-over is still recorded afterwards and counted."""
    prep = approved(world, max_fills=2, fill_interval_days=14, long_rx=True, chronic_reason="stable", days=14)
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    world.chain.advance(14 * DAY_MS)
    lock_and_dispense(world, prep).unwrap()
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=rx, fill=1).unwrap()["status"] == "DISPENSED"
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=rx, fill=2).unwrap()["status"] == "DELIVERED"
    other = approved(world, max_fills=2, fill_interval_days=14, long_rx=True, chronic_reason="stable", days=14)
    orx = other.args["rx_id"]
    lock_and_dispense(world, other).unwrap()
    world.chain.advance(14 * DAY_MS)
    lock_and_dispense(world, other).unwrap()
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=orx).unwrap() == {
        "rx_id": orx, "status": "DELIVERED", "fill": 2}
    assert (_shown(world, orx)["status"], _shown(world, orx)["delivered_fills"]) == ("DELIVERED", 1)
    assert world.chain.submit("prescription", "deliver", COURIER, rx_id=orx, fill=1).unwrap() == {
        "rx_id": orx, "status": "DELIVERED", "fill": 1}
    assert _shown(world, orx)["delivered_fills"] == 2


def test_a_record_of_the_latest_fill_only_deliver_reads_on(world: World) -> None:
    """The previous release set ``delivered_fills`` to ``fills`` when the latest fill was
    handed over -- also over an earlier fill it let go unrecorded (the pharmacy owing it
    inactive). That fill's courier may hand it over now; ``delivered_fills`` is recounted
    from the dispense records (the count of fills handed over), never past ``fills``."""
    from tests.contracts.test_open_findings import set_pharmacy_active

    prep = approved(world, max_fills=2, fill_interval_days=14, long_rx=True, chronic_reason="stable", days=14)
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep).unwrap()
    world.chain.advance(14 * DAY_MS)
    set_pharmacy_active(world, "p01", False)
    assert call(world, "route", JIANG, rx, pharmacy="p02", wrapped_key=world.wrap_for(rx, "p02")) == "OK"
    lock_and_dispense(world, prep, pharmacist=CHEN).unwrap()
    assert call(world, "deliver", COURIER2, rx) == "OK"
    # as the previous release left it: fill 2 handed over, delivered_fills = fills, DELIVERED
    key = ("prescription", f"rx/{rx}")
    rec = json.loads(world.chain.state.values[key])
    assert (rec["status"], rec["delivered_fills"]) == ("DELIVERED", 1)  # (this release's count)
    rec.update(status="DELIVERED", delivered_fills=2)
    world.chain.state.values[key] = json.dumps(rec).encode()
    assert _shown(world, rx)["delivered_fills"] == 2
    out = world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()  # p01 inactive: still its courier
    assert (out["fill"], out["status"]) == (1, "DELIVERED")
    assert _shown(world, rx)["delivered_fills"] == 2


def test_delivery(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    assert call(world, "deliver", COURIER, rx) == "NOT_DISPENSED"
    lock_and_dispense(world, prep).unwrap()
    assert call(world, "deliver", WANG, rx) == "WRONG_ROLE"
    assert call(world, "deliver", COURIER2, rx) == "ACCESS_DENIED"
    assert call(world, "deliver", COURIER, rx) == "OK"
    assert call(world, "deliver", COURIER, rx) == "ALREADY_DELIVERED"


def test_a_hospital_pharmacy_hands_its_fill_over_at_the_counter(world: World) -> None:
    """Hospitals hold no couriers: a fill the hospital's own pharmacy dispensed could never be
    delivered (the prescription never DELIVERED, its inbox saying deliver for ever). Its
    pharmacist confirms the hand-over at the counter; nobody else's fill, and no other role."""
    prep = approved(world, pharmacy="")
    rx = prep.args["rx_id"]
    lock_and_dispense(world, prep, pharmacist=HE).unwrap()
    assert call(world, "deliver", JIANG, rx) == "WRONG_ROLE"  # a doctor of the hospital
    assert call(world, "deliver", COURIER, rx) == "ACCESS_DENIED"  # p01's courier: not its fill
    assert call(world, "deliver", WANG, rx) == "WRONG_ROLE"  # a pharmacy's pharmacist: its courier delivers
    before = world.chain.raw_state_bytes()
    assert call(world, "deliver", who("h01:pharm-x:pharmacist"), rx) == "UNAUTHORIZED"  # no licence registered
    assert world.chain.raw_state_bytes() == before
    assert call(world, "deliver", HE, rx) == "OK"
    rec = world.chain.query("prescription", "show", HE, rx_id=rx).unwrap()
    assert (rec["status"], rec["delivered_fills"]) == ("DELIVERED", 1)
    step = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"][-1]
    assert (step["step"], step["org"], step["role"]) == ("deliver", "h01", "pharmacist")
    # a fill a pharmacy dispensed stays its courier's, not the hospital pharmacist's
    routed = approved(world)
    lock_and_dispense(world, routed).unwrap()
    assert call(world, "deliver", HE, routed.args["rx_id"]) == "ACCESS_DENIED"
    assert call(world, "deliver", COURIER, routed.args["rx_id"]) == "OK"


def test_full_trail(world: World) -> None:
    prep = approved(world, doctor=JIANG)
    rx = prep.args["rx_id"]
    chain = world.chain
    chain.advance(60_000)
    lock_and_dispense(world, prep, trace_codes=["81234560000000000010"]).unwrap()
    chain.advance(60_000)
    settled = settle(world, prep)
    claim = settled.unwrap()
    chain.advance(60_000)
    assert call(world, "deliver", COURIER, rx) == "OK"
    trace = chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()
    steps = [s["step"] for s in trace["steps"]]
    assert steps == ["issue", "review", "lock", "dispense", "settle", "deliver"]
    first = trace["steps"][0]
    assert (first["actor"], first["org"], first["role"]) == ("dr-jiang", "h01", "doctor")
    assert first["time"] == "2026-11-25T02:00:00Z"
    settle_step = trace["steps"][4]
    assert (settle_step["org"], settle_step["role"]) == ("ins01", "clerk")
    assert settle_step["detail"]["claim_id"] == claim["claim_id"]
    blocks = [s["block"] for s in trace["steps"] if s["step"] != "settle"]
    assert blocks == sorted(blocks) and len(set(blocks)) == 5
    assert all(len(s["tx_id"]) == 64 for s in trace["steps"])
    # parties may read the trail; to an unrelated pharmacy or hospital it does not exist
    for reader in (JIANG, WANG, CLERK, world.patient_who("patient-zhang")):
        assert chain.query("prescription", "trace", reader, rx_id=rx).ok
    assert chain.query("prescription", "trace", CHEN, rx_id=rx).reason == "NOT_FOUND"
    assert chain.query("prescription", "trace", ZHOU, rx_id=rx).reason == "NOT_FOUND"
    # the settlement contract's own trail carries the settle block
    chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"], reason="OTHER").unwrap()
    money = chain.query("settlement", "trail", world.patient_who("patient-zhang"), rx_id=rx)
    steps2 = money.unwrap()["steps"]
    assert (steps2[0]["step"], steps2[0]["block"]) == ("settle", settled.block)
    assert [s["step"] for s in steps2] == ["settle", "reverse"]
    assert steps2[0]["tx_id"] == settle_step["tx_id"]
    assert chain.query("settlement", "trail", CHEN, rx_id=rx).reason == "NOT_FOUND"
    assert chain.query("settlement", "trail", AUDITOR, rx_id=rx).ok


def test_verify_query(world: World) -> None:
    prep = approved(world)
    ok = world.chain.query("prescription", "verify", WANG, transient=content_transient(prep),
                           rx_id=prep.args["rx_id"])
    assert ok.unwrap() == {"rx_id": prep.args["rx_id"], "ok": True}


def test_routing_edge_cases_and_unknown_ids(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    assert call(world, "route", JIANG, rx, pharmacy="p01",
                wrapped_key=world.wrap_for(rx, "p01")) == "ALREADY_ROUTED"
    assert call(world, "revoke", JIANG, rx, reason="CLINICAL_CHANGE") == "OK"
    assert call(world, "route", JIANG, rx, pharmacy="p02",
                wrapped_key=world.wrap_for(rx, "p02")) == "REVOKED"
    assert call(world, "expire", JIANG, rx) == "REVOKED"
    assert call(world, "lock", WANG, "RX-NOPE") == "NOT_FOUND"
    assert call(world, "lock", WANG, "../etc") == "BAD_ARGUMENTS"
    assert world.chain.submit("prescription", "get_key", WANG, rx_id="RX-NOPE").reason == "NOT_FOUND"
