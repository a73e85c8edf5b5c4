"""Moving a patient's account to another insurer: who may ask and accept, the refusal while a
claim is outstanding, and the money across the move to the fen; each insurer's own formulary
prices for its own claims."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import DAY_MS, Who, admin, who
from tests.contracts.flows import CLERK, CLERK2, HE, JIANG, WANG, ZHOU, claim_transient, lock_and_dispense, settle
from tests.contracts.rxclient import Prepared, World

EXAMPLE = [("amlodipine", 2), ("benidipine", 2), ("calcium-supplement", 1)]
INS02_POLICY = {"insurer": "ins02", "deductible_fen": 30000,
                "ratio_bp": {"community": 9000, "tertiary": 6000}, "cap_fen": 150000,
                "cap_by_disease": {}, "b_share_bp": 2000}
PATIENT = "patient-zhang"


def zhang(world: World) -> Who:
    return world.patient_who(PATIENT)


def call(world: World, fn: str, caller: Who, **args: Any) -> Any:
    out = world.chain.submit("settlement", fn, caller, pseudonym=world.pid(PATIENT), **args)
    return out.value if out.ok else out.reason


def issued(world: World, insurer: str = "ins01", doctor: Who = ZHOU, **fields: Any) -> Prepared:
    rx_id = world.new_rx_id()
    drugs = fields.pop("drugs", EXAMPLE)
    content = world.content(rx_id, patient=PATIENT, drugs=drugs, **fields)
    prep = world.prepare(content, hospital=doctor.org, pharmacy="p01", insurer=insurer)
    world.issue(prep, doctor).unwrap()
    reviewer = HE if doctor.org == "h01" else WANG
    world.chain.submit("prescription", "review", reviewer, rx_id=rx_id, approve=True,
                       reason="").unwrap()
    return prep


def dispensed(world: World, insurer: str = "ins01", **fields: Any) -> Prepared:
    prep = issued(world, insurer, **fields)
    lock_and_dispense(world, prep).unwrap()
    return prep


def status(world: World, caller: Who = CLERK) -> dict[str, Any]:
    st: dict[str, Any] = world.chain.query("settlement", "patient_status", caller,
                                           pseudonym=world.pid(PATIENT), year=0).unwrap()
    return st


def with_ins02(world: World) -> World:
    world.set_policy(INS02_POLICY, 0).unwrap()
    world.chain.advance(1)
    return world


def test_who_may_ask_and_who_accepts(world: World) -> None:
    with_ins02(world)
    for caller in (WANG, JIANG, admin("h01"), who("reg01:auditor-fang:auditor")):
        assert call(world, "request_transfer", caller, to_insurer="ins02") == "WRONG_ROLE"
    # another insurer cannot ask for her; the patient needs her binding
    assert call(world, "request_transfer", CLERK2, to_insurer="ins02") == "ACCESS_DENIED"
    bare = Who("h01", "patient-zhang", "patient")
    assert call(world, "request_transfer", bare, to_insurer="ins02") == "ACCESS_DENIED"
    assert call(world, "request_transfer", zhang(world), to_insurer="ins01") == "BAD_ARGUMENTS"
    assert call(world, "request_transfer", zhang(world), to_insurer="ins09") == "NO_POLICY"
    assert call(world, "accept_transfer", CLERK2) == "NOT_FOUND"  # nothing asked
    req = call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert (req["from"], req["to"], req["requested_by"], req["by"]) == (
        "ins01", "ins02", "patient", "")  # never her certificate's name
    # nothing moved yet; the addressed insurer reads her balance (not her claims) to decide
    assert world.chain.query("settlement", "get_account", JIANG,
                             pseudonym=world.pid(PATIENT)).unwrap()["insurer"] == "ins01"
    assert status(world, CLERK2)["account_balance_fen"] == 50000
    assert world.chain.query("settlement", "patient_status", who("ins03:clerk-x:clerk"),
                             pseudonym=world.pid(PATIENT), year=0).reason == "ACCESS_DENIED"
    assert call(world, "accept_transfer", who("ins03:clerk-x:clerk")) == "NOT_FOUND"
    assert call(world, "accept_transfer", CLERK) == "NOT_FOUND"  # not addressed to ins01
    for caller in (admin("h01"), zhang(world)):
        assert call(world, "accept_transfer", caller) == "WRONG_ROLE"
    acct = call(world, "accept_transfer", CLERK2)
    assert acct["insurer"] == "ins02" and len(acct["transfers"]) == 1
    assert acct["transfers"][0]["from"] == "ins01"
    assert call(world, "accept_transfer", CLERK2) == "NOT_FOUND"  # the request is used up
    assert world.chain.query("settlement", "get_account", JIANG,
                             pseudonym=world.pid(PATIENT)).unwrap()["insurer"] == "ins02"
    # the old insurer no longer reads her, the new one does (registry too)
    assert world.chain.query("settlement", "patient_status", CLERK, pseudonym=world.pid(PATIENT),
                             year=0).reason == "ACCESS_DENIED"
    assert world.chain.query("registry", "get_patient", CLERK2,
                             pseudonym=world.pid(PATIENT)).ok
    assert world.chain.query("registry", "get_patient", CLERK,
                             pseudonym=world.pid(PATIENT)).reason == "ACCESS_DENIED"


def test_both_insurers_move_her_and_requests_can_be_withdrawn(world: World) -> None:
    with_ins02(world)
    assert call(world, "cancel_transfer", zhang(world)) == "NOT_FOUND"
    assert call(world, "request_transfer", CLERK, to_insurer="ins02")["requested_by"] == "ins01"
    assert call(world, "cancel_transfer", who("ins03:clerk-x:clerk")) == "ACCESS_DENIED"
    assert call(world, "cancel_transfer", CLERK2)["to"] == "ins02"  # declined
    assert call(world, "accept_transfer", CLERK2) == "NOT_FOUND"
    call(world, "request_transfer", CLERK, to_insurer="ins02")
    assert call(world, "cancel_transfer", zhang(world))["requested_by"] == "ins01"  # she withdraws
    call(world, "request_transfer", admin("ins01"), to_insurer="ins02")
    assert call(world, "accept_transfer", admin("ins02"))["insurer"] == "ins02"


def test_refused_while_a_claim_is_outstanding(world: World) -> None:
    with_ins02(world)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    open_rx = dispensed(world)  # dispensed, unclaimed
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"
    claim = settle(world, open_rx).unwrap()
    # a reversed claim reopens the fill
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                       reason="BILLING_ERROR").unwrap()
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"
    settle(world, open_rx).unwrap()
    # a repeat prescription with fills left, its dispensed fill settled: nothing outstanding --
    # a fill not yet dispensed has no claim (its insurer of record is hers at its dispense:
    # settle6, test_settle_residuals6); it held the move up until it expired
    repeat = dispensed(world, max_fills=2, fill_interval_days=28, long_rx=True, days=28,
                       chronic_reason="stable hypertension",
                       stability_assessment="stable 6 months", patient_confirmed=True)
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"  # its fill 1 to settle
    settle(world, repeat).unwrap()
    issued(world)  # approved, not dispensed: no claim either
    acct = call(world, "accept_transfer", CLERK2)
    assert acct["insurer"] == "ins02", acct


def test_a_reversal_racing_the_move_invalidates_the_move(world: World) -> None:
    """The move reads every claim guard of hers: a reversal committed between its endorsement
    and its commit (the fill reopened) makes it an MVCC conflict, never a move over an open
    claim."""
    with_ins02(world)
    claim = settle(world, dispensed(world)).unwrap()
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    endorsed, sim, ts = world.chain.simulate("settlement", "accept_transfer", CLERK2,
                                             pseudonym=world.pid(PATIENT))
    assert endorsed.ok
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                       reason="BILLING_ERROR").unwrap()
    assert world.chain.commit_validated(endorsed, sim, ts) == "MVCC_READ_CONFLICT"
    assert call(world, "accept_transfer", CLERK2) == "OPEN_CLAIMS"


def test_the_money_moves_unchanged_and_no_claim_is_paid_twice(world: World) -> None:
    with_ins02(world)
    before_claims = [settle(world, dispensed(world)).unwrap() for _ in range(2)]
    st0 = status(world)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    moved = call(world, "accept_transfer", CLERK2)
    assert moved["insurer"] == "ins02"
    st1 = status(world, CLERK2)
    assert st1 == st0  # balance, deductible and per-disease cap usage to the fen
    # the old insurer: its claims stay its own, read but never reversed (nobody could re-settle)
    old = before_claims[0]["claim_id"]
    assert world.chain.query("settlement", "get_claim", CLERK, claim_id=old).ok
    assert world.chain.submit("settlement", "reverse", CLERK, claim_id=old,
                              reason="BILLING_ERROR").reason == "ACCOUNT_TRANSFERRED"
    assert world.chain.submit("settlement", "reverse", CLERK2, claim_id=old,
                              reason="BILLING_ERROR").reason == "CLAIM_NOT_FOUND"
    # a new prescription: its claim key is ins02's; ins01 cannot settle it, ins02 does
    prep = dispensed(world, insurer="ins02")
    assert settle(world, prep, clerk=CLERK).reason == "ACCESS_DENIED"
    after = settle(world, prep, clerk=CLERK2).unwrap()
    assert after["insurer"] == "ins02" and after["ratio_bp"] == 9000  # ins02's policy, community
    assert after["medfee_fen"] == 10000 and after["preself_fen"] == 1000  # b share 20%
    # deductible 300.00 under ins02, 200.00 already used this year: 100.00 more to meet
    assert after["deductible_fen"] == 8000  # inscp 80.00, all of it into the deductible
    assert after["fund_fen"] == 0
    claims = [*before_claims, after]
    for c in claims:
        assert c["medfee_fen"] == c["fund_fen"] + c["patient_fen"]
        assert c["patient_fen"] == c["account_fen"] + c["cash_fen"]
    st2 = status(world, CLERK2)
    assert st2["account_balance_fen"] == 50000 - sum(c["account_fen"] for c in claims)
    assert st2["deductible_used_fen"] == 20000 + sum(c["deductible_fen"] for c in claims)
    assert st2["cap_used_fen"] == sum(c["fund_fen"] for c in claims)
    # ins02 reverses its own claim: exactly back to the state after the move
    world.chain.submit("settlement", "reverse", CLERK2, claim_id=after["claim_id"],
                       reason="RETURNED_GOODS").unwrap()
    assert status(world, CLERK2) == st1


def test_two_insurers_passing_her_around_never_keep_her(world: World) -> None:
    """Each move takes only both insurers: 16 of them between ins01 and ins02 (each requesting,
    the other accepting) used to exhaust a cap of 16 moves, and her own request was refused
    LIMIT_EXCEEDED for good (review4). The record keeps the latest 16 moves."""
    with_ins02(world)
    clerks = {"ins01": CLERK, "ins02": CLERK2}
    here = "ins01"
    for _ in range(16):
        there = "ins02" if here == "ins01" else "ins01"
        call(world, "request_transfer", clerks[here], to_insurer=there)
        assert call(world, "accept_transfer", clerks[there])["insurer"] == there
        here = there
    assert here == "ins01"
    req = call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert isinstance(req, dict) and req["to"] == "ins02", req
    acct = call(world, "accept_transfer", CLERK2)
    assert acct["insurer"] == "ins02" and len(acct["transfers"]) == 16
    assert acct["transfers"][-1]["requested_by"] == "patient"
    assert acct["transfers"][0]["from"] == "ins02"  # the first move (from ins01) dropped
    assert status(world, CLERK2)["account_balance_fen"] == 50000


# ---------------------------------------------------------------- formulary prices per insurer


def test_each_insurer_prices_its_own_claims(world: World) -> None:
    """The first insurer to create a code set its prices for every insurer's claims; another
    insurer now publishes its own (class, price, standard) for its claims, as of the dispense."""
    with_ins02(world)
    amlodipine = world.codes["amlodipine"]
    # zhang moves to ins02 with her deductible met under its policy (300.00)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    call(world, "accept_transfer", CLERK2)
    met = dispensed(world, insurer="ins02", drugs=[("amlodipine", 5)])
    settle(world, met, clerk=CLERK2).unwrap()  # 100.00 into the deductible
    before = dispensed(world, insurer="ins02", drugs=[("amlodipine", 2)])
    # ins02 publishes its own price: 15.00, B class, standard 12.00
    world.chain.advance(1)
    out = world.chain.submit("registry", "set_drug", admin("ins02"), code=amlodipine,
                             spec="5 mg x 28 tablets", cls="B", standard_fen=1200,
                             price_fen=1500, controlled="NONE").unwrap()
    assert out["insurer"] == "ins02"
    # a price version timestamped before its latest one (a skewed clock) is refused
    skewed = world.chain.submit("registry", "set_drug", admin("ins02"), at_ms=world.chain.now - 1,
                                code=amlodipine, spec="5 mg x 28 tablets", cls="A",
                                standard_fen=1, price_fen=1, controlled="NONE")
    assert skewed.reason == "POLICY_RETROACTIVE"
    # its controlled class is never its to change
    assert world.chain.submit("registry", "set_drug", admin("ins02"), code=amlodipine,
                              spec="x", cls="A", standard_fen=1, price_fen=1,
                              controlled="NARCOTIC").reason == "ACCESS_DENIED"
    world.chain.advance(1)
    after = dispensed(world, insurer="ins02", drugs=[("amlodipine", 2)])
    # dispensed before ins02's price: the entry's (A, 20.00); ratio 90% at community h02
    c1 = settle(world, before, clerk=CLERK2).unwrap()
    assert (c1["medfee_fen"], c1["overlmt_fen"], c1["preself_fen"], c1["fund_fen"]) == (
        4000, 0, 0, 3600)
    # after: its own -- over standard 2 x 3.00, B share 20% of 2 x 12.00 = 4.80
    c2 = settle(world, after, clerk=CLERK2).unwrap()
    assert (c2["medfee_fen"], c2["overlmt_fen"], c2["preself_fen"], c2["inscp_fen"]) == (
        3000, 600, 480, 1920)
    assert c2["fund_fen"] == 1728 and c2["patient_fen"] == 1272
    assert c2["account_fen"] + c2["cash_fen"] == c2["patient_fen"] and c2["cash_fen"] == 600
    # the entry -- and every other insurer's claims -- unchanged
    entry = world.chain.query("registry", "get_drug", WANG, code=amlodipine).unwrap()
    assert (entry["insurer"], entry["cls"], entry["price_fen"]) == ("ins01", "A", 2000)
    own = world.chain.query("registry", "get_drug", WANG, code=amlodipine,
                            insurer="ins02").unwrap()
    assert (own["cls"], own["price_fen"], own["controlled"]) == ("B", 1500, "NONE")
    # a regulator's reclassification shows on the insurer's view too
    world.chain.submit("registry", "set_controlled", admin("reg01"), code=amlodipine,
                       controlled="SPECIAL_STORAGE").unwrap()
    own = world.chain.query("registry", "get_drug", WANG, code=amlodipine,
                            insurer="ins02").unwrap()
    assert own["controlled"] == "SPECIAL_STORAGE"


def test_a_claim_reads_the_insurers_price_mark_once_and_conflicts_with_its_first_own_price(
        world: World) -> None:
    """settle looks for the insurer's own price versions line by line only when the registry's
    ``priced/{insurer}`` mark exists (one point read per claim instead of a range read per line);
    the mark is in the claim's read set, so an insurer's first own price committed between a
    claim's endorsement and its commit makes the claim an MVCC conflict -- never a claim priced
    by the entry after the insurer's own price took effect."""
    with_ins02(world)
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    call(world, "accept_transfer", CLERK2)
    prep = dispensed(world, insurer="ins02", drugs=[("amlodipine", 2)])
    world.chain.advance(1)
    endorsed, sim, ts = world.chain.simulate("settlement", "settle", CLERK2,
                                             transient=claim_transient(prep, None),
                                             rx_id=prep.args["rx_id"], fill=0)
    assert endorsed.ok and endorsed.value["medfee_fen"] == 4000  # the entry's price
    assert ("registry", "priced/ins02") in sim.reads
    assert not any(k.startswith("pricever/") for ns, k in sim.reads if ns == "registry")
    world.chain.submit("registry", "set_drug", admin("ins02"),
                       code=world.codes["amlodipine"], spec="5 mg x 28 tablets", cls="B",
                       standard_fen=1200, price_fen=1500, controlled="NONE").unwrap()
    assert world.chain.commit_validated(endorsed, sim, ts) == "MVCC_READ_CONFLICT"


def test_a_request_expires_and_only_her_own_shows_her_account(world: World) -> None:
    """A pending request was accepted whenever the receiving insurer chose (consent given once,
    used months later), and one her insurer made without her let the receiving insurer read her
    balance and per-disease counters (they tell her diagnoses). Now a request is accepted within
    30 days (TRANSFER_EXPIRED after: asked again, or withdrawn), and only her own request shows
    her account to the insurer asked."""
    with_ins02(world)
    assert call(world, "request_transfer", CLERK, to_insurer="ins02")["requested_by"] == "ins01"
    assert world.chain.query("settlement", "patient_status", CLERK2, pseudonym=world.pid(PATIENT),
                             year=0).reason == "ACCESS_DENIED"
    call(world, "request_transfer", zhang(world), to_insurer="ins02")  # hers replaces it
    assert status(world, CLERK2)["account_balance_fen"] == 50000
    world.chain.advance(30 * DAY_MS + 1)
    assert world.chain.query("settlement", "patient_status", CLERK2, pseudonym=world.pid(PATIENT),
                             year=0).reason == "ACCESS_DENIED"
    assert call(world, "accept_transfer", CLERK2) == "TRANSFER_EXPIRED"
    assert world.chain.query("settlement", "get_account", JIANG,
                             pseudonym=world.pid(PATIENT)).unwrap()["insurer"] == "ins01"
    call(world, "request_transfer", zhang(world), to_insurer="ins02")  # asked again
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"


def test_a_fill_is_claimed_at_most_128_times_and_then_holds_no_move_up(world: World) -> None:
    """Nothing capped the claims of one fill, and every trace page reads them all: an insurer
    settling and reversing one fill ~15,000 times made the trail unreadable (OUT_OF_GAS) for
    auditors (review5). A fill is claimed at most 128 times (LIMIT_EXCEEDED after, nothing
    written); such a fill is no longer outstanding -- else the insurer could keep her by
    reversing -- and the trace still reads."""
    with_ins02(world)
    prep = dispensed(world)
    for _ in range(128):
        claim = settle(world, prep).unwrap()
        world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                           reason="BILLING_ERROR").unwrap()
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    before = world.chain.raw_state_bytes()
    assert settle(world, prep).reason == "LIMIT_EXCEEDED"
    assert world.chain.raw_state_bytes() == before
    reversals, start = 0, ""
    for _ in range(64):  # (pages)
        page = world.chain.query("prescription", "trace", CLERK, rx_id=prep.args["rx_id"],
                                 start=start).unwrap()
        reversals += sum(1 for st in page["steps"] if st["step"] == "reverse")
        start = page["next"]
        if start == "":
            break
    assert reversals == 128 and start == ""
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"
