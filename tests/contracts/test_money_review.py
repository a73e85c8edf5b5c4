"""Money review: the settlement amounts and annual counters against an independent reading of
DOMAIN.md section 3, through the real contracts in the sandbox.

* A ledger model (per China-local year: the deductible used; per year and disease: the cap
  used; the account balance) replays a random history of one patient -- two diseases with
  their own caps, community and tertiary prescriptions, whole and partial claims, policy
  versions, reversals and claims resubmitted after them, dispenses on either side of a New
  Year -- and every claim, every year's counters and the balance must equal it to the fen.
* Monotonic: a dearer drug never lowers the total, the fund's share, the patient's share,
  the account's or the cash part of the same claim in the same state.
* A bool never reaches a year or time parameter (``False == 0`` would read as "this year" /
  "now"): the sandbox refuses it by the parameter's annotation.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contracts import sandbox_adapter
from tests.contracts.chain import DAY_MS, Chain, admin
from tests.contracts.flows import CLERK, HE, JIANG, WANG, ZHOU, lock_and_dispense, settle
from tests.contracts.rxclient import Prepared, World
from tests.contracts.test_settlement_properties import reference

HOUR_MS = 3_600_000
TZ_MS = 8 * HOUR_MS
DISEASES = ("I10", "E11")


def china_year(ms: int) -> int:
    """Calendar year (UTC+8) by plain day counting from 1970, independent of the contract's."""
    days = (ms + TZ_MS) // DAY_MS
    year = 1970
    while True:
        length = 366 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 365
        if days < length:
            return year
        days -= length
        year += 1


def expected_claim(lines: list[dict[str, Any]], pol: dict[str, Any], level: str, dx: str,
                   ded_used: int, cap_used: int, balance: int) -> dict[str, int]:
    """DOMAIN.md section 3 (``reference``: B share rounded half up per line, fund once) under
    the disease's cap, else the general one."""
    capped = {**pol, "cap_fen": pol["cap_by_disease"].get(dx, pol["cap_fen"])}
    return reference(lines, capped, level, ded_used, cap_used, balance)


policies = st.fixed_dictionaries({
    "insurer": st.just("ins01"),
    "deductible_fen": st.integers(0, 40000),
    "ratio_bp": st.fixed_dictionaries({"community": st.integers(0, 10000),
                                       "tertiary": st.integers(0, 10000)}),
    "cap_fen": st.integers(0, 60000),
    "cap_by_disease": st.dictionaries(st.sampled_from(DISEASES), st.integers(0, 60000), max_size=2),
    "b_share_bp": st.integers(0, 10000),
})
drugs = st.lists(
    st.fixed_dictionaries({"price": st.integers(1, 30000), "std": st.integers(0, 30000),
                           "cls": st.sampled_from(("A", "B", "OFF_LIST"))}),
    min_size=1, max_size=3,
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.sampled_from(DISEASES), st.booleans(),
                  st.lists(st.tuples(st.integers(0, 2), st.integers(1, 9)), min_size=1, max_size=4),
                  st.booleans()),
        st.tuples(st.just("reverse"), st.integers(0, 99)),
        st.tuples(st.just("resettle"), st.integers(0, 99)),
        st.tuples(st.just("wait"), st.sampled_from((HOUR_MS, 5 * HOUR_MS, 20 * DAY_MS))),
        st.tuples(st.just("policy"), policies),
    ),
    min_size=1, max_size=8,
)


class Model:
    """The patient's money as DOMAIN.md keeps it."""

    def __init__(self, balance: int, ded_seed: int, cap_seed: dict[str, int], year: int) -> None:
        self.balance = balance
        self.ded: dict[int, int] = {year: ded_seed}
        self.cap: dict[tuple[int, str], int] = {(year, dx): fen for dx, fen in cap_seed.items()}

    def settle(self, lines: list[dict[str, Any]], pol: dict[str, Any], level: str, dx: str,
               year: int) -> dict[str, int]:
        r = expected_claim(lines, pol, level, dx, self.ded.get(year, 0),
                           self.cap.get((year, dx), 0), self.balance)
        self.ded[year] = self.ded.get(year, 0) + r["deductible_fen"]
        self.cap[(year, dx)] = self.cap.get((year, dx), 0) + r["fund_fen"]
        self.balance -= r["account_fen"]
        return r

    def reverse(self, r: dict[str, int], dx: str, year: int) -> None:
        self.ded[year] -= r["deductible_fen"]
        self.cap[(year, dx)] -= r["fund_fen"]
        self.balance += r["account_fen"]


def new_world(runner: sandbox_adapter.Runner, kinds: list[dict[str, Any]]) -> World:
    world = World(Chain(runner=runner))
    world.load()
    world.chain.advance(1)
    for i, d in enumerate(kinds):
        code = f"XM{i:021d}"
        world.chain.submit("registry", "set_drug", admin("ins01"), code=code, spec="s",
                           cls=d["cls"], standard_fen=d["std"], price_fen=d["price"],
                           controlled="NONE").unwrap()
        world.codes[f"money-{i}"] = code
    return world


def add_patient(world: World, name: str, balance: int, ded_used: int, cap_used: dict[str, int]) -> None:
    pt = dict(world.patients["patient-zhang"])
    pt.update(name=name, id_number=f"50010319800101{len(world.patients):04d}",
              user={"org": "h01", "name": name}, account_balance_fen=balance,
              deductible_used_fen=ded_used, cap_used_by_disease=cap_used,
              diagnoses=[{"icd10": dx, "date": "2024-01-08", "hospital": "h01", "physical": True}
                         for dx in DISEASES])
    world.patients[name] = pt
    world.admit(pt)


def dispense(world: World, patient: str, dx: str, tertiary: bool,
             lines: list[tuple[int, int]]) -> Prepared:
    rx_id = world.new_rx_id()
    doctor, reviewer = (JIANG, HE) if tertiary else (ZHOU, WANG)
    content = world.content(rx_id, patient=patient, diagnosis=dx,
                            drugs=[(f"money-{k}", q) for k, q in lines])
    prep = world.prepare(content, hospital=doctor.org, pharmacy="p01")
    world.issue(prep, doctor).unwrap()
    world.chain.submit("prescription", "review", reviewer, rx_id=rx_id, approve=True, reason="").unwrap()
    lock_and_dispense(world, prep).unwrap()
    return prep


def status(world: World, patient: str, year: int) -> dict[str, Any]:
    out: dict[str, Any] = world.chain.query("settlement", "patient_status", CLERK,
                                            pseudonym=world.pid(patient), year=year).unwrap()
    return out


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(first=policies, kinds=drugs, history=steps, balance=st.integers(0, 100000),
       ded_seed=st.integers(0, 40000), cap_seed=st.integers(0, 60000),
       near_new_year=st.booleans(), data=st.data())
def test_a_patients_history_equals_the_ledger_model(
    runner: sandbox_adapter.Runner, first: dict[str, Any], kinds: list[dict[str, Any]],
    history: list[Any], balance: int, ded_seed: int, cap_seed: int, near_new_year: bool,
    data: st.DataObject,
) -> None:
    world = new_world(runner, kinds)
    if near_new_year:
        world.chain.advance(36 * DAY_MS + 11 * HOUR_MS)  # 2026-12-31 21:00 China time
    pol_now = first
    world.set_policy(first, 0).unwrap()
    world.chain.advance(1)
    add_patient(world, "patient-money", balance, ded_seed, {"I10": cap_seed})
    model = Model(balance, ded_seed, {"I10": cap_seed}, china_year(world.chain.now))
    years = {china_year(world.chain.now)}
    # each dispense: (prep, dx, level, claimed lines, policy, year); each claim: (its dispense,
    # the contract's answer, the model's amounts)
    fills: list[tuple[Prepared, str, str, list[tuple[int, int]], dict[str, Any], int]] = []
    claims: list[tuple[int, dict[str, Any], dict[str, int]]] = []
    tag_of: dict[str, str] = {}  # disease -> its counter's keyed tag, as claims name it
    for step in history:
        if step[0] == "wait":
            world.chain.advance(step[1])
        elif step[0] == "policy":
            world.set_policy(step[1], 0).unwrap()
            pol_now = step[1]
            world.chain.advance(1)
        elif step[0] == "claim":
            _tag, dx, tertiary, rx_lines, partial = step
            rx_lines = [(k % len(kinds), q) for k, q in rx_lines]
            prep = dispense(world, "patient-money", dx, tertiary, rx_lines)
            year = china_year(world.chain.now)
            years.add(year)
            claimed = rx_lines
            transient = None
            if partial:  # claim some boxes, one line per drug
                totals: dict[int, int] = {}
                for k, q in rx_lines:
                    totals[k] = totals.get(k, 0) + q
                claimed = [(k, data.draw(st.integers(1, n), label="boxes claimed"))
                           for k, n in sorted(totals.items())]
                transient = [{"code": world.codes[f"money-{k}"], "qty": q} for k, q in claimed]
            priced = [{**kinds[k], "qty": q} for k, q in claimed]
            level = "tertiary" if tertiary else "community"
            fills.append((prep, dx, level, claimed, pol_now, year))
            world.chain.advance(data.draw(st.sampled_from((1, 2 * HOUR_MS))))  # settle later
            got = settle(world, prep, lines=transient).unwrap()
            want = model.settle(priced, pol_now, level, dx, year)
            assert {k: got[k] for k in want} == want
            assert got["year"] == year
            assert tag_of.setdefault(dx, got["dx_tag"]) == got["dx_tag"]
            claims.append((len(fills) - 1, got, want))
        elif step[0] == "reverse" and claims:
            idx, got, want = claims[step[1] % len(claims)]
            out = world.chain.submit("settlement", "reverse", CLERK, claim_id=got["claim_id"],
                                     reason="BILLING_ERROR")
            if got["status"] == "REVERSED":
                assert out.reason == "ALREADY_REVERSED"
            else:
                out.unwrap()
                got["status"] = "REVERSED"
                model.reverse(want, fills[idx][1], fills[idx][5])
        elif step[0] == "resettle" and claims:
            idx, got, _want = claims[step[1] % len(claims)]
            prep, dx, level, claimed, pol, year = fills[idx]
            out = settle(world, prep, fill=1, lines=[{"code": world.codes[f"money-{k}"], "qty": q}
                                                     for k, q in claimed])
            priced = [{**kinds[k], "qty": q} for k, q in claimed]
            active = any(i == idx and c["status"] == "SETTLED" for i, c, _w in claims)
            if active:
                assert out.reason == "DUPLICATE_CLAIM"
            else:  # a claim resubmitted after its reversal: priced as of the same dispense
                got2 = out.unwrap()
                want2 = model.settle(priced, pol, level, dx, year)
                assert {k: got2[k] for k in want2} == want2
                claims.append((idx, got2, want2))
        for y in sorted(years):
            st_y = status(world, "patient-money", y)
            assert st_y["deductible_used_fen"] == model.ded.get(y, 0)
            assert st_y["account_balance_fen"] == model.balance >= 0
            by_disease = sorted(v for v in st_y["cap_used_by_disease"].values() if v != 0)
            assert by_disease == sorted(v for (yy, _dx), v in model.cap.items() if yy == y and v != 0)
            for dx, tag in tag_of.items():
                assert st_y["cap_used_by_disease"].get(tag, 0) == model.cap.get((y, dx), 0)
    for _idx, got, _want in claims:
        assert got["medfee_fen"] == got["fund_fen"] + got["patient_fen"]
        assert got["patient_fen"] == got["account_fen"] + got["cash_fen"]
        assert all(got[k] >= 0 for k in _want)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(pol=policies, kinds=drugs, qty=st.lists(st.integers(1, 9), min_size=3, max_size=3),
       rise=st.integers(1, 20000), balance=st.integers(0, 100000),
       ded_used=st.integers(0, 40000), cap_used=st.integers(0, 60000), tertiary=st.booleans())
def test_a_dearer_drug_never_lowers_an_amount(
    runner: sandbox_adapter.Runner, pol: dict[str, Any], kinds: list[dict[str, Any]],
    qty: list[int], rise: int, balance: int, ded_used: int, cap_used: int, tertiary: bool,
) -> None:
    """Two patients in the same state claim the same basket, the second after the first drug's
    price rose: no amount of the second claim is lower than the first's."""
    world = new_world(runner, kinds)
    world.set_policy(pol, 0).unwrap()
    world.chain.advance(1)
    add_patient(world, "patient-cheap", balance, ded_used, {"I10": cap_used})
    add_patient(world, "patient-dear", balance, ded_used, {"I10": cap_used})
    lines = [(k, qty[k]) for k in range(len(kinds))]
    cheap = settle(world, dispense(world, "patient-cheap", "I10", tertiary, lines)).unwrap()
    world.chain.advance(1)
    d = kinds[0]
    world.chain.submit("registry", "set_drug", admin("ins01"), code=world.codes["money-0"], spec="s",
                       cls=d["cls"], standard_fen=d["std"], price_fen=d["price"] + rise,
                       controlled="NONE").unwrap()
    world.chain.advance(1)
    dear = settle(world, dispense(world, "patient-dear", "I10", tertiary, lines)).unwrap()
    assert dear["medfee_fen"] == cheap["medfee_fen"] + rise * qty[0]
    for k in ("fund_fen", "patient_fen", "account_fen", "cash_fen", "inscp_fen"):
        assert dear[k] >= cheap[k], k


def test_a_bool_is_no_year_or_time(world: World) -> None:
    """``False == 0`` in Python, and open_account, patient_status, set_policy and get_policy
    read a year or time of 0 as "this year" / "now": a False must never get that far. The
    sandbox refuses a bool for an ``int`` parameter (BAD_ARGUMENTS) and nothing changes."""
    pt = dict(world.patients["patient-zhang"])
    pt.update(name="patient-bool", id_number="500103198001019999",
              user={"org": "h01", "name": "patient-bool"})
    world.patients["patient-bool"] = pt
    world.enrol(pt).unwrap()
    out = world.open_account(pt, year=False)
    assert out.reason == "BAD_ARGUMENTS"
    assert world.chain.query("settlement", "get_account", JIANG,
                             pseudonym=world.pid("patient-bool")).reason == "NO_ACCOUNT"
    world.open_account(pt).unwrap()
    for year in (False, True):
        out = world.chain.query("settlement", "patient_status", CLERK,
                                pseudonym=world.pid("patient-bool"), year=year)
        assert out.reason == "BAD_ARGUMENTS"
    pol = dict(world.sample["policies"][0])
    before = world.chain.query("registry", "get_policy", CLERK, insurer="ins01", at_ms=0).unwrap()
    world.chain.advance(1)
    assert world.set_policy({**pol, "deductible_fen": 1}, False).reason == "BAD_ARGUMENTS"
    assert world.chain.query("registry", "get_policy", CLERK, insurer="ins01", at_ms=0).unwrap() == before
    out = world.chain.query("registry", "get_policy", CLERK, insurer="ins01", at_ms=False)
    assert out.reason == "BAD_ARGUMENTS"


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(pol=policies, kinds=drugs, qty=st.lists(st.integers(1, 9), min_size=3, max_size=3),
       interval=st.integers(1, 3), start_hours=st.integers(0, 96), new_price=st.none() | st.integers(1, 30000),
       balance=st.integers(0, 100000), ded_used=st.integers(0, 40000), later_first=st.booleans())
def test_repeat_fills_each_count_in_their_own_year_at_their_own_prices(
    runner: sandbox_adapter.Runner, pol: dict[str, Any], kinds: list[dict[str, Any]],
    qty: list[int], interval: int, start_hours: int, new_price: int | None, balance: int,
    ded_used: int, later_first: bool,
) -> None:
    """A prescription of two fills, the first from up to four days before a New Year, a
    formulary price maybe changed between them; the fills settled in either order: each is
    priced as of its own dispense and counts in the China-local year of its own dispense."""
    world = new_world(runner, kinds)
    world.set_policy(pol, 0).unwrap()
    world.chain.advance(1)
    add_patient(world, "patient-fills", balance, ded_used, {})
    model = Model(balance, ded_used, {}, china_year(world.chain.now))
    world.chain.advance(34 * DAY_MS + 14 * HOUR_MS + start_hours * HOUR_MS)  # from 12-30 00:00
    lines = [(k, qty[k]) for k in range(len(kinds))]
    rx_id = world.new_rx_id()
    content = world.content(rx_id, patient="patient-fills", drugs=[(f"money-{k}", q) for k, q in lines],
                            days=3, max_fills=2, fill_interval_days=interval)
    prep = world.prepare(content, hospital=ZHOU.org, pharmacy="p01")
    world.issue(prep, ZHOU).unwrap()
    world.chain.submit("prescription", "review", WANG, rx_id=rx_id, approve=True, reason="").unwrap()
    lock_and_dispense(world, prep).unwrap()
    priced = [[{**kinds[k], "qty": q} for k, q in lines]]
    years = [china_year(world.chain.now)]
    world.chain.advance(interval * DAY_MS)
    if new_price is not None:
        d = kinds[0]
        world.chain.submit("registry", "set_drug", admin("ins01"), code=world.codes["money-0"], spec="s",
                           cls=d["cls"], standard_fen=d["std"], price_fen=new_price,
                           controlled="NONE").unwrap()
        world.chain.advance(1)
    lock_and_dispense(world, prep).unwrap()
    second = [{**kinds[k], "qty": q} for k, q in lines]
    if new_price is not None:
        second[0] = {**second[0], "price": new_price}
    priced.append(second)
    years.append(china_year(world.chain.now))
    order = [2, 1] if later_first else [1, 2]
    for fill in order:
        got = settle(world, prep, fill=fill if fill == 1 or not later_first else 0).unwrap()
        want = model.settle(priced[fill - 1], pol, "community", "I10", years[fill - 1])
        assert got["fill"] == fill and got["year"] == years[fill - 1]
        assert {k: got[k] for k in want} == want
    for y in sorted(set(years)):
        st_y = status(world, "patient-fills", y)
        assert st_y["deductible_used_fen"] == model.ded.get(y, 0)
        assert st_y["cap_used_fen"] == model.cap.get((y, "I10"), 0)
        assert st_y["account_balance_fen"] == model.balance
