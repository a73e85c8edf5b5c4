"""Findings left open by the red-team review of the contracts: inactive pharmacies at lock and
dispense, drugs reclassified after issue, whitespace-only free text, impossible calendar
dates, and query views that used to truncate silently (audit trail, trace, trail)."""

from __future__ import annotations

from typing import Any

import pytest

from node.sandbox import canonical
from node.sandbox.types import HistoryEntry
from tests.contracts.chain import Chain, Who, admin
from tests.contracts.flows import (
    AUDITOR,
    CHEN,
    CLERK,
    COURIER,
    HE,
    JIANG,
    WANG,
    approved,
    dispense,
    issue,
    lock_and_dispense,
    settle,
)
from tests.contracts.rxclient import Prepared, World

LONG = {"long_rx": True, "chronic_reason": "stable hypertension, BP controlled", "days": 28}
ASSESSED = {"stability_assessment": "BP < 140/90 for 6 months", "patient_confirmed": True}
CHILD = {"name": "child", "birth_date": "2021-11-26"}  # five at T0 (2026-11-25)


def call(world: World, fn: str, caller: Who, rx_id: str, **args: Any) -> str:
    out = world.chain.submit("prescription", fn, caller, rx_id=rx_id, **args)
    return "OK" if out.ok else out.reason


def issue_reason(world: World, **fields: Any) -> str:
    _prep, out = issue(world, **fields)
    return "OK" if out.ok else out.reason


def set_pharmacy_active(world: World, org: str, active: bool) -> None:
    entry = next(p for p in world.sample["pharmacies"] if p["org"] == org)
    world.chain.submit("registry", "register_pharmacy", admin(org), licence_no=entry["licence_no"],
                       active=active).unwrap()


def reclassify(world: World, short_name: str, controlled: str) -> None:
    """The regulator sets a formulary entry's controlled class (its insurer may not)."""
    world.chain.submit("registry", "set_controlled", admin("reg01"), code=world.codes[short_name],
                       controlled=controlled).unwrap()


# ---------------------------------------------------------------- 1. inactive pharmacy


def test_inactive_pharmacy_can_neither_lock_nor_dispense(world: World) -> None:
    prep = approved(world)  # routed to p01
    rx = prep.args["rx_id"]
    set_pharmacy_active(world, "p01", False)
    assert call(world, "lock", WANG, rx) == "UNKNOWN_PHARMACY"
    set_pharmacy_active(world, "p01", True)
    assert call(world, "lock", WANG, rx) == "OK"
    # deactivated while holding the lock: no dispense, but it may still release the lock
    set_pharmacy_active(world, "p01", False)
    assert dispense(world, prep).reason == "UNKNOWN_PHARMACY"
    assert call(world, "release", WANG, rx) == "OK"
    set_pharmacy_active(world, "p01", True)
    assert lock_and_dispense(world, prep).unwrap()["fill"] == 1


def test_lock_of_a_deactivated_pharmacy_does_not_block_rerouting(world: World) -> None:
    prep = approved(world)  # routed to p01
    rx = prep.args["rx_id"]
    assert call(world, "lock", WANG, rx) == "OK"
    reroute = {"pharmacy": "p02", "wrapped_key": world.wrap_for(rx, "p02")}
    assert call(world, "route", JIANG, rx, **reroute) == "ALREADY_LOCKED"  # active holder
    set_pharmacy_active(world, "p01", False)
    assert call(world, "route", JIANG, rx, **reroute) == "OK"
    rec = world.chain.query("prescription", "show", JIANG, rx_id=rx).unwrap()
    assert (rec["lock"], rec["status"], rec["pharmacy"]) == (None, "APPROVED", "p02")
    assert rec["step"]["detail"]["dropped_lock"] == "p01"
    assert call(world, "lock", WANG, rx) == "NOT_ROUTED"
    assert lock_and_dispense(world, prep, pharmacist=CHEN).unwrap()["fill"] == 1


def test_hospital_pharmacy_needs_no_pharmacy_registration(world: World) -> None:
    prep = approved(world, pharmacy="")
    assert lock_and_dispense(world, prep, pharmacist=HE).ok


# ---------------------------------------------------------------- 2. reclassified drug


@pytest.mark.parametrize("controlled", ["NARCOTIC", "PSYCHOTROPIC_I", "TOXIC"])
def test_dispense_refuses_a_drug_reclassified_as_forbidden_after_issue(world: World,
                                                                       controlled: str) -> None:
    prep = approved(world, drugs=[("amlodipine", 1), ("benidipine", 1)])
    rx = prep.args["rx_id"]
    assert call(world, "lock", WANG, rx) == "OK"
    world.chain.advance(60_000)
    reclassify(world, "benidipine", controlled)
    out = dispense(world, prep)
    assert (out.reason, out.ok) == ("FORBIDDEN_DRUG_CLASS", False)
    assert controlled in out.message
    # classified back (as of the dispense's time): dispensing goes ahead
    world.chain.advance(60_000)
    reclassify(world, "benidipine", "NONE")
    assert dispense(world, prep).unwrap()["fill"] == 1


def test_reclassification_to_a_non_forbidden_class_does_not_block(world: World) -> None:
    prep = approved(world)
    world.chain.submit("prescription", "lock", WANG, rx_id=prep.args["rx_id"]).unwrap()
    reclassify(world, "amlodipine", "SPECIAL_STORAGE")  # not forbidden on a 7-day prescription
    assert dispense(world, prep).ok


# ---------------------------------------------------------------- 3. whitespace-only text


# whitespace, and invisible format characters str.strip keeps (zero-width space, BOM, joiners)
BLANKS = [" ", "   ", "\t\n", "\u3000", " \u00a0 ", "\u200b", "\ufeff", " \u200b\u3000", "\u200d\u2060"]


@pytest.mark.parametrize("blank", BLANKS)
def test_whitespace_only_free_text_is_refused_like_empty(world: World, blank: str) -> None:
    assert issue_reason(world, **{**LONG, "chronic_reason": blank}) == "QUANTITY_LIMIT"
    assert issue_reason(world, **{**LONG, **ASSESSED, "days": 56,
                                  "stability_assessment": blank}) == "QUANTITY_LIMIT"
    assert issue_reason(world, patient_info={**CHILD, "guardian": blank}) == "GUARDIAN_REQUIRED"


@pytest.mark.parametrize("blank", ["", *BLANKS])
def test_blank_reason_codes_are_reason_required(world: World, blank: str) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    assert call(world, "revoke", JIANG, rx, reason=blank) == "REASON_REQUIRED"
    lock_and_dispense(world, prep).unwrap()
    claim = settle(world, prep).unwrap()
    out = world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"], reason=blank)
    assert out.reason == "REASON_REQUIRED"
    prep2, out2 = issue(world)
    out2.unwrap()
    assert call(world, "review", WANG, prep2.args["rx_id"], approve=False, reason=blank) == "REASON_REQUIRED"


def test_free_text_with_content_still_passes(world: World) -> None:
    assert issue_reason(world, **{**LONG, "chronic_reason": " stable "}) == "OK"
    assert issue_reason(world, **{**LONG, **ASSESSED, "days": 56}) == "OK"
    assert issue_reason(world, patient_info={**CHILD, "guardian": " mother "}) == "OK"


# ---------------------------------------------------------------- 4. calendar dates


@pytest.mark.parametrize(
    "date",
    ["2020-13-01", "2020-00-10", "2020-01-00", "2020-01-32", "2020-02-30", "2021-02-29",
     "1900-02-29", "2019-04-31", "2019-06-31", "2019-09-31", "2019-11-31", "0000-01-01",
     "2020-1-011", "2020/01/01"],
)
def test_birth_date_must_be_a_real_calendar_date(world: World, date: str) -> None:
    assert issue_reason(world, patient_info={"name": "x", "birth_date": date}) == "BAD_CONTENT"


@pytest.mark.parametrize("date", ["2020-02-29", "2000-02-29", "1960-12-31", "1999-01-01"])
def test_real_dates_including_leap_days_pass(world: World, date: str) -> None:
    info = {"name": "x", "birth_date": date, "guardian": "mother"}
    assert issue_reason(world, patient_info=info) == "OK"


def test_birth_date_after_the_issue_date_is_refused(world: World) -> None:
    assert issue_reason(world, patient_info={**CHILD, "birth_date": "2026-11-26",
                                             "guardian": "mother"}) == "BAD_CONTENT"
    assert issue_reason(world, patient_info={**CHILD, "birth_date": "2026-11-25",
                                             "guardian": "mother"}) == "OK"


@pytest.mark.parametrize("date,expected", [("2025-02-29", "BAD_TRANSIENT"), ("2024-02-30", "BAD_TRANSIENT"),
                                           ("2024-13-01", "BAD_TRANSIENT"), ("2024-02-29", "OK")])
def test_imported_diagnosis_date_must_be_a_real_date(world: World, date: str, expected: str) -> None:
    pt = world.patients["patient-zhang"]
    dx = [{"icd10": "I10", "date": date, "hospital": "h01", "physical": True}]
    out = world.enrol(pt, diagnoses=dx)
    assert ("OK" if out.ok else out.reason) == expected


# ---------------------------------------------------------------- 5. paging of query views


def _pages(chain: Chain, contract: str, fn: str, caller: Who, key: str, **args: Any) -> list[Any]:
    """Every page of a paged view, following ``next`` (bounded)."""
    pages: list[Any] = []
    start = ""
    for _ in range(100):
        page = chain.query(contract, fn, caller, start=start, **args).unwrap()
        pages.append(page)
        assert page["truncated"] == (page["next"] != "")
        if page["next"] == "":
            return pages
        assert len(page[key]) > 0
        start = page["next"]
    raise AssertionError("paging did not end")


def test_audit_trail_pages(world: World) -> None:
    prep = approved(world)
    rx = prep.args["rx_id"]
    for _ in range(3):
        world.chain.submit("prescription", "get_key", WANG, rx_id=rx).unwrap()
    whole = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx).unwrap()
    assert (whole["next"], whole["truncated"]) == ("", False)
    assert len(whole["events"]) == 7  # 4 grants at issue + 3 key fetches
    pages = _pages(world.chain, "prescription", "audit_trail", AUDITOR, "events", rx_id=rx, limit=3)
    assert [len(p["events"]) for p in pages] == [3, 3, 1]
    assert [e for p in pages for e in p["events"]] == whole["events"]
    for bad in ({"limit": 1001}, {"limit": -1}, {"start": "a b"}, {"start": "~"}, {"start": "x" * 300}):
        args: dict[str, Any] = {"start": "", "limit": 0, **bad}
        out = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx, **args)
        assert out.reason == "BAD_ARGUMENTS", bad


def test_audit_trail_beyond_a_thousand_events(world: World) -> None:
    """The old view stopped at 1000 events without saying so."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    for i in range(1100):  # seeded straight into state: 1,100 key fetches of one day
        key = f"audit/{rx}/{chain.now + 1 + i:013d}/{i:064x}/0"
        rec = {"rx_id": rx, "event": "KEY_FETCH", "party": "p01", "outcome": "GRANTED",
               "actor": "pharm-wang", "org": "p01", "role": "pharmacist",
               "time_ms": chain.now + 1 + i, "tx_id": f"{i:064x}"}
        chain.state.values[("prescription", key)] = canonical.dumps(rec)
    first = chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx).unwrap()
    assert first["truncated"] is True and first["next"] != ""
    pages = _pages(chain, "prescription", "audit_trail", AUDITOR, "events", rx_id=rx)
    events = [e for p in pages for e in p["events"]]
    assert len(events) == 1104
    assert len({(e["tx_id"], e["event"], e["party"]) for e in events}) == 1104


def _settled(world: World) -> tuple[Prepared, dict[str, Any]]:
    """An approved prescription locked and dispensed a minute on and settled a minute after:
    (the prescription, the claim)."""
    prep = approved(world)
    world.chain.advance(60_000)
    lock_and_dispense(world, prep).unwrap()
    world.chain.advance(60_000)
    return prep, settle(world, prep).unwrap()


def _full_story(world: World) -> tuple[str, dict[str, Any]]:
    prep, claim = _settled(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    chain.advance(60_000)
    chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"], reason="OTHER").unwrap()
    chain.advance(60_000)
    settle(world, prep).unwrap()
    chain.advance(60_000)
    assert call(world, "deliver", COURIER, rx) == "OK"
    return rx, claim


def test_trace_pages(world: World) -> None:
    rx, _claim = _full_story(world)
    chain = world.chain
    whole = chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()
    assert [s["step"] for s in whole["steps"]] == [
        "issue", "review", "lock", "dispense", "settle", "reverse", "settle", "deliver"]
    assert (whole["next"], whole["truncated"], whole["left"], whole["unreadable"]) == ("", False, 0, 0)
    pages = _pages(chain, "prescription", "trace", AUDITOR, "steps", rx_id=rx, limit=3)
    assert [len(p["steps"]) for p in pages] == [3, 3, 2]
    assert [p["left"] for p in pages] == [5, 2, 0]
    assert [s for p in pages for s in p["steps"]] == whole["steps"]
    # a cursor is "{version}.{claim event}" (a page's next) or a step position 0-9999
    assert chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=pages[1]["next"]).unwrap()["steps"] == (
        whole["steps"][6:])
    assert chain.query("prescription", "trace", AUDITOR, rx_id=rx, start="6").unwrap()["steps"] == whole["steps"][6:]
    # "{version}/{events of fill 1}.{of fill 2}...", trailing fills with none left off; the
    # "{version}.{claim event}" cursors of the release before (events in time order) still taken
    assert pages[1]["next"] == "4/2"
    for same in ("4/2", "4/2.0.0", "4.2"):
        assert chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=same).unwrap()["steps"] == (
            whole["steps"][6:])
    for bad in ({"limit": 1001}, {"start": "x"}, {"start": "-1"}, {"start": "1" * 12}, {"start": "9"},
                {"start": "12345"}, {"start": "1.4"}, {"start": "7.0"}, {"start": "1..2"}, {"start": ".1"},
                {"start": "4294967296.0"}, {"start": "1.2.3"}, {"start": "1/"}, {"start": "/1"},
                {"start": "1/1."}, {"start": "1/1/1"}, {"start": "1.1/1"}, {"start": "1/12345"},
                {"start": "1/4"}, {"start": "1/0.1"}, {"start": "6/" + ".".join(["0"] * 100)},
                {"start": "4294967296/0"}):
        args: dict[str, Any] = {"start": "", "limit": 0, **bad}
        assert chain.query("prescription", "trace", AUDITOR, rx_id=rx, **args).reason == "BAD_ARGUMENTS"


def test_trace_reads_the_versions_past_the_oldest_1000(world: World) -> None:
    """One ctx.history read answers at most 1000 versions of a key: the trace ordered the
    oldest 1000 and said how many later steps it could not show (``unreadable`` 5 here); it
    now pages on by version position, so every step is shown."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    nk = ("prescription", "rx/" + rx)
    versions = chain.state.versions[nk]
    latest = canonical.decode(chain.state.values[nk], "rx")
    base = len(versions)
    for i in range(1005 - base):  # seeded consent toggles: 1,005 versions in all
        rec = {**latest, "step_count": base + i + 1,
               "step": {**latest["step"], "step": "consent", "detail": {"org": "h02"}}}
        data = canonical.dumps(rec)
        versions.append(HistoryEntry(f"{i:064x}", 1000 + i, chain.now + i, False, data))
        chain.state.values[nk] = data
    steps: list[Any] = []
    start = ""
    for _ in range(100):  # pages of at most TRACE_PAGE_BYTES of steps
        out = chain.query("prescription", "trace", AUDITOR, rx_id=rx, start=start).unwrap()
        assert out["steps"] and out["unreadable"] == 0 and out["truncated"] == (out["next"] != "")
        steps.extend(out["steps"])
        if out["next"] == "":
            break
        start = out["next"]
    assert len(steps) == 1005 and [s["tx_id"] for s in steps[-3:]] == [f"{i:064x}" for i in range(1000, 1003)]
    assert out["next"] == ""


def test_settlement_trail_pages(world: World) -> None:
    rx, claim = _full_story(world)
    chain = world.chain
    whole = chain.query("settlement", "trail", AUDITOR, rx_id=rx).unwrap()
    assert [s["step"] for s in whole["steps"]] == ["settle", "reverse", "settle"]
    assert (whole["next"], whole["truncated"]) == ("", False)
    pages = _pages(chain, "settlement", "trail", AUDITOR, "steps", rx_id=rx, limit=1)
    assert [[s["step"] for s in p["steps"]] for p in pages] == [["settle", "reverse"], ["settle"]]
    assert pages[0]["steps"][0]["detail"]["claim_id"] == claim["claim_id"]
    for bad in ({"limit": 65}, {"limit": -2}, {"start": "a b"}):
        args: dict[str, Any] = {"start": "", "limit": 0, **bad}
        assert chain.query("settlement", "trail", AUDITOR, rx_id=rx, **args).reason == "BAD_ARGUMENTS"


def test_trace_and_trail_beyond_sixty_four_claims(world: World) -> None:
    """The old views read at most 64 claims of a prescription without saying so."""
    prep = approved(world)
    rx = prep.args["rx_id"]
    chain = world.chain
    lock_and_dispense(world, prep).unwrap()
    for _ in range(65):  # 65 claims settled and reversed, then a 66th settled
        chain.advance(1000)
        c = settle(world, prep).unwrap()
        chain.advance(1000)
        chain.submit("settlement", "reverse", CLERK, claim_id=c["claim_id"], reason="OTHER").unwrap()
    chain.advance(1000)
    settle(world, prep).unwrap()  # claim 66
    trace = chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()
    money = [s for s in trace["steps"] if s["step"] in ("settle", "reverse")]
    assert len(money) == 131 and trace["truncated"] is False
    pages = _pages(chain, "settlement", "trail", AUDITOR, "steps", rx_id=rx)
    steps = [s for p in pages for s in p["steps"]]
    assert len(steps) == 131 and len(pages) == 2
    assert [s["tx_id"] for s in steps] == [s["tx_id"] for s in money]


def test_old_callers_without_paging_arguments_still_work(world: World) -> None:
    rx, _claim = _full_story(world)
    chain = world.chain
    for contract, fn, key in (("prescription", "trace", "steps"),
                              ("prescription", "audit_trail", "events"),
                              ("settlement", "trail", "steps")):
        out = chain.query(contract, fn, JIANG if fn != "audit_trail" else AUDITOR, rx_id=rx).unwrap()
        assert out["rx_id"] == rx and len(out[key]) > 0 and out["next"] == ""
