"""Property tests of settlement over random prescriptions, prices and policies, through the
real contracts in the sandbox, against an independent reference (fractions, floor(x + 1/2)).

Invariants: medfee = fund + patient; patient = account + cash; every amount >= 0; the
deductible and cap counters never exceed their limits and the balance never goes negative;
the contract's numbers equal the reference; a reversal restores counters and balance
exactly (also for several claims reversed in any order).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contracts import sandbox_adapter
from tests.contracts.chain import Chain, admin
from tests.contracts.flows import CLERK, HE, JIANG, WANG, ZHOU, lock_and_dispense, settle
from tests.contracts.rxclient import World

CLASSES = ("A", "B", "OFF_LIST")


def rhu(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def reference(lines: list[dict[str, Any]], pol: dict[str, Any], level: str,
              ded_used: int, cap_used: int, balance: int) -> dict[str, int]:
    medfee = sum(ln["price"] * ln["qty"] for ln in lines)
    fulamt = sum(ln["price"] * ln["qty"] for ln in lines if ln["cls"] == "OFF_LIST")
    overlmt = sum(max(0, ln["price"] - ln["std"]) * ln["qty"] for ln in lines
                  if ln["cls"] != "OFF_LIST")
    preself = sum(rhu(Fraction(min(ln["price"], ln["std"]) * ln["qty"] * pol["b_share_bp"], 10000))
                  for ln in lines if ln["cls"] == "B")
    inscp = medfee - fulamt - overlmt - preself
    dedc = min(inscp, max(0, pol["deductible_fen"] - ded_used))
    fund = min(rhu(Fraction((inscp - dedc) * pol["ratio_bp"][level], 10000)),
               max(0, pol["cap_fen"] - cap_used))
    patient = medfee - fund
    account = min(patient - fulamt - overlmt, balance)
    return {"medfee_fen": medfee, "fulamt_fen": fulamt, "overlmt_fen": overlmt,
            "preself_fen": preself, "inscp_fen": inscp, "deductible_fen": dedc,
            "fund_fen": fund, "patient_fen": patient, "account_fen": account,
            "cash_fen": patient - account}


policies = st.fixed_dictionaries({
    "insurer": st.just("ins01"),
    "deductible_fen": st.integers(0, 60000),
    "ratio_bp": st.fixed_dictionaries({"community": st.integers(0, 10000),
                                       "tertiary": st.integers(0, 10000)}),
    "cap_fen": st.integers(0, 400000),
    "cap_by_disease": st.just({}),
    "b_share_bp": st.integers(0, 10000),
})
drug_lines = st.lists(
    st.fixed_dictionaries({
        "price": st.integers(1, 90000),
        "std": st.integers(0, 90000),
        "cls": st.sampled_from(CLASSES),
        "qty": st.integers(1, 12),
    }),
    min_size=1, max_size=5,
)


def setup(runner: sandbox_adapter.Runner, pol: dict[str, Any], lines: list[dict[str, Any]],
          ded_frac: int, cap_frac: int, balance: int) -> tuple[World, str, int, int]:
    chain = Chain(runner=runner)
    world = World(chain)
    world.load()
    chain.advance(1)
    world.set_policy(pol, 0).unwrap()
    for i, ln in enumerate(lines):
        code = f"XP{i:021d}"
        chain.submit("registry", "set_drug", admin("ins01"), code=code,
                     spec="s", cls=ln["cls"], standard_fen=ln["std"],
                     price_fen=ln["price"], controlled="NONE").unwrap()
        world.codes[f"prop-{i}"] = code
    ded_used = pol["deductible_fen"] * ded_frac // 100
    cap_used = pol["cap_fen"] * cap_frac // 100
    pt = dict(world.patients["patient-zhang"])
    pt.update(name="patient-prop", id_number="500103199001010000",
              deductible_used_fen=ded_used, cap_used_by_disease={"I10": cap_used},
              account_balance_fen=balance)
    world.patients["patient-prop"] = pt
    world.admit(pt)
    return world, "patient-prop", ded_used, cap_used


def status(world: World) -> dict[str, Any]:
    out: dict[str, Any] = world.chain.query(
        "settlement", "patient_status", CLERK, pseudonym=world.pid("patient-prop"), year=0
    ).unwrap()
    return out


def dispensed(world: World, lines: list[dict[str, Any]], tertiary: bool) -> Any:
    rx_id = world.new_rx_id()
    drugs = [(f"prop-{i}", ln["qty"]) for i, ln in enumerate(lines)]
    doctor = JIANG if tertiary else ZHOU
    content = world.content(rx_id, patient="patient-prop", drugs=drugs)
    prep = world.prepare(content, hospital=doctor.org, pharmacy="p01")
    world.issue(prep, doctor).unwrap()
    world.chain.submit("prescription", "review", HE if tertiary else WANG,
                       rx_id=rx_id, approve=True, reason="").unwrap()
    lock_and_dispense(world, prep).unwrap()
    return prep


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pol=policies, lines=drug_lines, ded_frac=st.integers(0, 100),
       cap_frac=st.integers(0, 100), balance=st.integers(0, 300000), tertiary=st.booleans())
def test_single_claim_invariants_and_reversal(
    runner: sandbox_adapter.Runner, pol: dict[str, Any], lines: list[dict[str, Any]],
    ded_frac: int, cap_frac: int, balance: int, tertiary: bool,
) -> None:
    world, _name, ded_used, cap_used = setup(runner, pol, lines, ded_frac, cap_frac, balance)
    before = status(world)
    prep = dispensed(world, lines, tertiary)
    claim = settle(world, prep).unwrap()
    level = "tertiary" if tertiary else "community"
    expected = reference(lines, pol, level, ded_used, cap_used, balance)
    assert {k: claim[k] for k in expected} == expected
    assert claim["medfee_fen"] == claim["fund_fen"] + claim["patient_fen"]
    assert claim["patient_fen"] == claim["account_fen"] + claim["cash_fen"]
    assert all(claim[k] >= 0 for k in expected)
    after = status(world)
    assert after["deductible_used_fen"] == ded_used + claim["deductible_fen"]
    assert after["deductible_used_fen"] <= pol["deductible_fen"]
    assert after["cap_used_fen"] == cap_used + claim["fund_fen"] <= pol["cap_fen"]
    assert after["account_balance_fen"] == balance - claim["account_fen"] >= 0
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                       reason="OTHER").unwrap()
    assert status(world) == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pol=policies, baskets=st.lists(drug_lines, min_size=2, max_size=4),
       balance=st.integers(0, 300000), order=st.randoms(use_true_random=False))
def test_many_claims_counters_bounded_and_reversals_restore(
    runner: sandbox_adapter.Runner, pol: dict[str, Any], baskets: list[list[dict[str, Any]]],
    balance: int, order: Any,
) -> None:
    widest = max(baskets, key=len)
    lines_all = [dict(ln) for ln in widest]
    world, _name, _d, _c = setup(runner, pol, lines_all, 0, 0, balance)
    before = status(world)
    claims = []
    for basket in baskets:
        lines = [{**lines_all[i], "qty": ln["qty"]} for i, ln in enumerate(basket)]
        prep = dispensed(world, lines, tertiary=False)
        claim = settle(world, prep).unwrap()
        claims.append(claim)
        now = status(world)
        assert now["deductible_used_fen"] <= pol["deductible_fen"]
        assert now["cap_used_fen"] <= pol["cap_fen"]
        assert now["account_balance_fen"] >= 0
        assert claim["medfee_fen"] == claim["fund_fen"] + claim["account_fen"] + claim["cash_fen"]
    total = status(world)
    assert total["cap_used_fen"] == sum(c["fund_fen"] for c in claims)
    assert total["deductible_used_fen"] == sum(c["deductible_fen"] for c in claims)
    assert before["account_balance_fen"] - total["account_balance_fen"] == sum(
        c["account_fen"] for c in claims)
    order.shuffle(claims)
    for claim in claims:
        world.chain.submit("settlement", "reverse", CLERK, claim_id=claim["claim_id"],
                           reason="BILLING_ERROR").unwrap()
    assert status(world) == before


drug_kinds = st.lists(
    st.fixed_dictionaries({
        "price": st.integers(1, 90000),
        "std": st.integers(0, 90000),
        "cls": st.sampled_from(("B", "A", "OFF_LIST")),  # B first: the class rounding concerns
    }),
    min_size=1, max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pol=policies, kinds=drug_kinds, data=st.data(), balance=st.integers(0, 300000))
def test_claims_listing_a_drug_on_several_lines_round_per_line(
    runner: sandbox_adapter.Runner, pol: dict[str, Any], kinds: list[dict[str, Any]],
    data: st.DataObject, balance: int,
) -> None:
    """Prescriptions listing the same drug on several lines, claimed whole or in part and split
    into lines another way (DOMAIN.md section 3: the B share is rounded per line of the claim):
    the contract equals the reference over the claim's own lines, the balance equations hold
    and nothing is negative; ``lines_commitment`` is the client's over the same lines."""
    from client.rxops import ClaimLine, claim_lines_commitment_of

    rx_lines = data.draw(st.lists(st.tuples(st.integers(0, len(kinds) - 1), st.integers(1, 12)),
                                  min_size=1, max_size=5), label="prescription lines")
    world, _name, ded_used, cap_used = setup(runner, pol, kinds, 0, 0, balance)
    rx_id = world.new_rx_id()
    content = world.content(rx_id, patient="patient-prop", drugs=[(f"prop-{k}", q) for k, q in rx_lines])
    prep = world.prepare(content, hospital=ZHOU.org, pharmacy="p01")
    world.issue(prep, ZHOU).unwrap()
    world.chain.submit("prescription", "review", WANG, rx_id=rx_id, approve=True, reason="").unwrap()
    lock_and_dispense(world, prep).unwrap()
    claimed: list[tuple[int, int]] = list(rx_lines)  # everything dispensed, as listed
    transient = None
    if data.draw(st.booleans(), label="claim other lines"):
        dispensed_qty: dict[int, int] = {}
        for k, q in rx_lines:
            dispensed_qty[k] = dispensed_qty.get(k, 0) + q
        claimed = []
        for k, total in sorted(dispensed_qty.items()):
            left = data.draw(st.integers(0, total), label=f"boxes of drug {k} claimed")
            while left > 0 and len(claimed) < 5:
                part = data.draw(st.integers(1, left), label="boxes on this line")
                claimed.append((k, part))
                left -= part
        if not claimed:
            claimed = [(rx_lines[0][0], 1)]
        claimed = data.draw(st.permutations(claimed), label="line order")
        transient = [{"code": world.codes[f"prop-{k}"], "qty": q} for k, q in claimed]
    claim = settle(world, prep, lines=transient).unwrap()
    expected = reference([{**kinds[k], "qty": q} for k, q in claimed], pol, "community",
                         ded_used, cap_used, balance)
    assert {k: claim[k] for k in expected} == expected
    assert claim["medfee_fen"] == claim["fund_fen"] + claim["patient_fen"]
    assert claim["patient_fen"] == claim["account_fen"] + claim["cash_fen"]
    assert all(claim[k] >= 0 for k in expected)
    lines = [ClaimLine(world.codes[f"prop-{k}"], q) for k, q in claimed]
    assert claim["lines_commitment"] == claim_lines_commitment_of(prep.claim_salt, lines)
