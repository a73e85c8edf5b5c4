"""Exact evaluation of nested policies (protocol version 2, node.identity.policy): the same
answers as a brute-force search over assignments of signers to principals, where version 1
kept 64 minimal signer sets per level and refused some signer sets satisfying the policy."""

from __future__ import annotations

import random
from itertools import combinations

import pytest

from node.errors import RxError
from node.identity.policy import (
    EXACT_POLICY_VERSION,
    MAX_POLICY_CHOICES,
    MAX_SIGNERS,
    OutOf,
    Principal,
    Rule,
    parse_policy,
)

TWELVE = [f"o{i:02d}" for i in range(12)]
# the validator review's example: four of the twelve peers beside seven named ones
REVIEW = ("AND(OutOf(4, " + ", ".join(f"{o}.peer" for o in TWELVE) + "), "
          "o04.peer, o02.peer, o01.peer, o06.peer, o09.peer, o08.peer, o10.peer)")


def _peers(orgs: list[str]) -> list[tuple[str, str]]:
    return [(o, "peer") for o in orgs]


def _leaves(rule: Rule) -> list[Principal]:
    if isinstance(rule, Principal):
        return [rule]
    return [p for r in rule.rules for p in _leaves(r)]


def _holds(rule: Rule, chosen: set[int], ids: dict[int, int]) -> bool:
    """Is ``rule`` satisfied when exactly the leaves ``chosen`` (by index) are?"""
    if isinstance(rule, Principal):
        return ids[id(rule)] in chosen
    assert isinstance(rule, OutOf)
    return sum(_holds(r, chosen, ids) for r in rule.rules) >= rule.n


def _matchable(leaves: list[Principal], signers: list[tuple[str, str]]) -> bool:
    """Can every leaf get a signer of its own? (plain backtracking)"""

    def place(i: int, used: frozenset[int]) -> bool:
        if i == len(leaves):
            return True
        return any(place(i + 1, used | {j}) for j, s in enumerate(signers)
                   if j not in used and leaves[i].matches(s))

    return place(0, frozenset())


def brute(rule: Rule, signers: list[tuple[str, str]]) -> bool:
    """The reference: some set of principals satisfying the rule gets distinct signers."""
    leaves = _leaves(rule)
    ids = {id(p): i for i, p in enumerate(leaves)}
    for k in range(min(len(leaves), len(signers)) + 1):
        for chosen in combinations(range(len(leaves)), k):
            if _holds(rule, set(chosen), ids) and _matchable([leaves[i] for i in chosen], signers):
                return True
    return False


def brute_fewest(rule: Rule, signers: list[tuple[str, str]]) -> int | None:
    for k in range(len(signers) + 1):
        if any(brute(rule, list(sub)) for sub in combinations(signers, k)):
            return k
    return None


def _random_rule(rng: random.Random, orgs: list[str], roles: list[str], depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return f"{rng.choice(orgs)}.{rng.choice(roles)}"
    m = rng.randint(1, 4)
    kids = [_random_rule(rng, orgs, roles, depth - 1) for _ in range(m)]
    return f"OutOf({rng.randint(1, m)}, {', '.join(kids)})"


def test_the_review_example_is_refused_by_version_1_and_satisfied_exactly_by_version_2() -> None:
    v1 = parse_policy(REVIEW, TWELVE)
    v2 = parse_policy(REVIEW, TWELVE, version=EXACT_POLICY_VERSION)
    for left_out in TWELVE:
        signers = _peers([o for o in TWELVE if o != left_out])
        # leaving out a named one fails; any other leaves 4 for the OutOf beside the 7
        expected = left_out not in ("o04", "o02", "o01", "o06", "o09", "o08", "o10")
        assert v2.evaluate(signers) is expected
        if left_out != "o11":  # version 1 kept only the 64 lowest 4-sets of the OutOf
            assert v1.evaluate(signers) is False
    assert v1.evaluate(_peers(TWELVE)) is True
    assert v2.evaluate(_peers(TWELVE)) is True
    # the fewest: 7 named ones plus 4 others
    assert v2.min_signers(_peers(TWELVE)) == 11
    assert v2.evaluate(_peers(TWELVE)[:10]) is False


def test_a_flat_policy_gets_the_same_answer_in_both_versions() -> None:
    """One OutOf of principals was already decided exactly by the matching."""
    text = "OutOf(3, " + ", ".join(f"{o}.peer" for o in TWELVE) + ")"
    rng = random.Random(11)
    for _ in range(50):
        signers = _peers(rng.sample(TWELVE, rng.randint(0, 6)))
        assert (parse_policy(text, TWELVE).evaluate(signers)
                is parse_policy(text, TWELVE, version=2).evaluate(signers) is (len(signers) >= 3))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exact_evaluation_agrees_with_brute_force(seed: int) -> None:
    """Random nested policies (any roles and ``member``, repeated principals) over random
    signer sets: version 2 answers as the brute force does, and version 1 never accepts what
    the brute force refuses (it only lost alternatives)."""
    rng = random.Random(seed)
    orgs, roles = ["a", "b", "c", "d"], ["peer", "admin", "member"]
    signer_pool = [(o, r) for o in orgs for r in ("peer", "admin")]
    checked = accepted = fewest = 0
    for _ in range(250):
        text = _random_rule(rng, orgs, roles, 3)
        signers = sorted(set(rng.sample(signer_pool, rng.randint(0, 6))))
        exact = parse_policy(text, orgs, version=2)
        expected = brute(exact.rule, signers)
        assert exact.evaluate(signers) is expected, (text, signers)
        # the same signers presented in another order and with repeats: the same answer
        shuffled = signers * 2
        rng.shuffle(shuffled)
        assert exact.evaluate(shuffled) is expected, (text, shuffled)
        if parse_policy(text, orgs).evaluate(signers):
            assert expected, (text, signers)
        checked += 1
        accepted += expected
        if len(signers) <= 4:
            assert exact.search(signers).fewest() == brute_fewest(exact.rule, signers), (text, signers)
            fewest += 1
    assert accepted > 40 and checked - accepted > 40 and fewest > 60  # both answers are exercised


def test_exact_evaluation_agrees_with_brute_force_on_contested_peers() -> None:
    """Larger signer sets, peers only (the shape of endorsement policies): many principals
    named twice or more, so rules compete for the same signers."""
    rng = random.Random(20261127)
    orgs = [f"o{i}" for i in range(8)]
    for _ in range(150):
        text = _random_rule(rng, orgs, ["peer"], 3)
        signers = _peers(sorted(rng.sample(orgs, rng.randint(2, 8))))
        assert parse_policy(text, orgs, version=2).evaluate(signers) is brute(parse_policy(text, orgs).rule, signers), (
            text, signers)


@pytest.mark.parametrize(
    ("text", "signers", "expected"),
    [
        # the flow moves h01.member from the admin it took first to the peer
        ("OR(AND(h01.member, h01.admin), p01.peer)", [("h01", "admin"), ("h01", "peer")], True),
        ("OR(AND(h01.member, h01.admin), p01.peer)", [("h01", "admin")], False),
        # an OutOf gives its unit to another rule for the AND beside it
        ("OR(AND(OutOf(1, h01.admin, h02.admin), h01.admin, h02.peer), p01.peer)",
         [("h01", "admin"), ("h02", "admin"), ("h02", "peer")], True),
        ("OR(AND(OutOf(1, h01.admin, h02.admin), h01.admin, h02.peer), p01.peer)",
         [("h01", "admin"), ("h02", "peer")], False),
        # one signer never counts twice, across levels either
        ("OutOf(2, AND(h01.peer, h02.peer), OR(h01.peer, p01.peer), ins01.peer)",
         [("h01", "peer"), ("h02", "peer")], False),
        ("OutOf(2, AND(h01.peer, h02.peer), OR(h01.peer, p01.peer), ins01.peer)",
         [("h01", "peer"), ("h02", "peer"), ("p01", "peer")], True),
    ],
)
def test_exact_cases(text: str, signers: list[tuple[str, str]], expected: bool) -> None:
    orgs = ["h01", "h02", "p01", "ins01"]
    policy = parse_policy(text, orgs, version=2)
    assert policy._flat is None  # decided by the search, not the one-level matching
    assert brute(policy.rule, signers) is expected
    assert policy.evaluate(signers) is expected


def test_more_signers_than_counted_are_still_refused() -> None:
    orgs = [f"o{i:02d}" for i in range(MAX_SIGNERS + 1)]
    text = "AND(o00.peer, OutOf(2, " + ", ".join(f"{o}.peer" for o in orgs[1:]) + "))"
    policy = parse_policy(text, orgs, version=2)
    assert policy.evaluate(_peers(orgs[:MAX_SIGNERS])) is True
    assert policy.evaluate(_peers(orgs)) is False  # as version 1: more than MAX_SIGNERS


# --------------------------------------------------------------------- bounded work

TWENTY = [f"o{i:02d}" for i in range(20)]
ALL20 = ", ".join(f"{o}.peer" for o in TWENTY)


_CLUSTER_RNG = random.Random(3)
CLUSTER = [_CLUSTER_RNG.sample(TWENTY[:7], 3) for _ in range(45)]


def _hostile_signer_lists() -> list[list[tuple[str, str]]]:
    rng = random.Random(5)
    lists = [_peers(TWENTY), _peers(TWENTY[1:]), _peers(TWENTY[:-1]), _peers(TWENTY[::2])]
    lists += [_peers(sorted(rng.sample(TWENTY, rng.randint(10, 20)))) for _ in range(40)]
    return lists


@pytest.mark.parametrize(
    ("text", "ceiling"),
    [
        # version 1 took 1.7 s of CPU (and refused it): 184,756 minimal sets of each OutOf
        (f"AND(OutOf(10, {ALL20}), OutOf(10, {ALL20}))", 2_000),
        ("AND(MAJORITY(peer), o00.peer, o01.peer)", 2_000),
        # rules that the flow cannot decide alone: the search chooses which to satisfy
        ("OutOf(3, " + ", ".join(f"AND({TWENTY[i]}.peer, {TWENTY[(i + 1) % 20]}.peer, "
                                 f"{TWENTY[(i + 2) % 20]}.peer)" for i in range(20)) + ")", 5_000),
        # a packing problem (NP-hard in general): 6 disjoint triples out of 40
        ("OutOf(6, " + ", ".join(f"AND({TWENTY[i % 20]}.peer, {TWENTY[(i * 7 + 1) % 20]}.peer, "
                                 f"{TWENTY[(i * 3 + 2) % 20]}.peer)" for i in range(40)) + ")", 100_000),
        # 2 of 3 peers of a cluster of 7, four times (never: 8 of 7), or 14 others together, one
        # of them in the cluster: the worst list (19 peers) costs 280,339 steps, 0.13 s of CPU
        # (163,185 choices: version 2 puts it in force nowhere, test_the_bound_counts_...)
        ("OutOf(4, " + ", ".join(f"OutOf(2, {a}.peer, {b}.peer, {c}.peer)" for a, b, c in CLUSTER)
         + ", AND(" + ", ".join(f"{o}.peer" for o in [*TWENTY[7:], TWENTY[0]]) + "))", 400_000),
        # nested choices over contested peers, 5 levels deep
        ("OutOf(2, " + ", ".join(
            f"OutOf(2, AND({a}.peer, {b}.peer), OR({b}.peer, {c}.peer), OutOf(2, {a}.peer, {c}.peer, {d}.peer))"
            for a, b, c, d in zip(TWENTY, TWENTY[5:] + TWENTY[:5], TWENTY[10:] + TWENTY[:10],
                                  TWENTY[15:] + TWENTY[:15], strict=True)) + ")", 5_000),
    ],
)
def test_hostile_policies_and_endorsement_lists_stay_within_a_step_ceiling(text: str, ceiling: int) -> None:
    """The work (steps: flow nodes visited, search nodes, options tried) for any of the
    signer lists a transaction may present stays under a ceiling set by the policy: the
    choices enumerated depend on the policy alone, the signers only prune them."""
    policy = parse_policy(text, TWENTY, version=2)
    worst = 0
    for signers in _hostile_signer_lists():
        search = policy.search(sorted(set(signers)))
        got = search.satisfied()
        assert got is policy.evaluate(signers)
        worst = max(worst, search.steps)
    assert worst <= ceiling, worst


def test_choices_count_the_policy_not_the_signers() -> None:
    assert parse_policy(REVIEW, TWELVE, version=2).choices() == 1  # one flow decides it
    assert parse_policy(f"AND(OutOf(10, {ALL20}), OutOf(10, {ALL20}))", TWENTY, version=2).choices() == 1
    three = "OutOf(2, AND(o00.peer, o01.peer), AND(o02.peer, o03.peer), AND(o04.peer, o05.peer))"
    assert parse_policy(three, TWENTY, version=2).choices() == 3
    nested = f"OutOf(2, {three}, AND(o06.peer, o07.peer), o08.peer)"
    assert parse_policy(nested, TWENTY, version=2).choices() == 3 + 3 + 1


def test_the_deepest_search_stays_below_the_recursion_limit() -> None:
    """Twenty rules (one signer each) at the bottom of choices nested as deep as the parser
    allows: the search recurses once per option taken, about 20 x 32 frames -- a RecursionError
    would depend on the caller's own stack depth (the orderers' and peers' differ)."""
    import sys

    from node.identity.policy import MAX_POLICY_DEPTH

    def chain(org: str, depth: int) -> str:
        # OutOf(1, <deeper>, AND(zz.peer, zz.admin)): one of two rules, the second never met
        return org if depth == 0 else f"OutOf(1, {chain(org, depth - 1)}, AND(zz.peer, zz.admin))"

    text = "AND(" + ", ".join(chain(f"{o}.peer", MAX_POLICY_DEPTH - 2) for o in TWENTY) + ")"
    policy = parse_policy(text, [*TWENTY, "zz"], version=2)
    assert sys.getrecursionlimit() <= 1000 + 100  # the default, give or take what the runner adds
    assert policy.evaluate(_peers(TWENTY)) is True
    assert policy.evaluate(_peers(TWENTY[1:])) is False
    assert policy.search(_peers(TWENTY)).fewest() == 20


# --------------------------------------------------------------------- the bound on choices

# the hostile policy above: 163,185 choices, 280,339 steps for one endorsement list
CLUSTER_POLICY = ("OutOf(4, " + ", ".join(f"OutOf(2, {a}.peer, {b}.peer, {c}.peer)" for a, b, c in CLUSTER)
                  + ", AND(" + ", ".join(f"{o}.peer" for o in [*TWENTY[7:], TWENTY[0]]) + "))")
FIFTY = [f"o{i:02d}" for i in range(50)]


def _pairs(k: int, n: int) -> str:
    """k of n "AND(hospital, its pharmacy)" pairs (disjoint up to 25)."""
    return f"OutOf({k}, " + ", ".join(f"AND({FIFTY[i % 50]}.peer, {FIFTY[(i + 25) % 50]}.peer)" for i in range(n)) + ")"


def _cluster(k: int, m: int, pool: int) -> str:
    """k of m "2 of 3 peers of a cluster of ``pool``" rules and one AND of the others: the
    costliest shape per choice found (the test above at 163,185 choices)."""
    rng = random.Random(3)
    return (f"OutOf({k}, " + ", ".join(
        f"OutOf(2, {a}.peer, {b}.peer, {c}.peer)" for a, b, c in (rng.sample(TWENTY[:pool], 3) for _ in range(m)))
        + ", AND(" + ", ".join(f"{o}.peer" for o in [*TWENTY[pool:], TWENTY[0]]) + "))")


@pytest.mark.parametrize("text", [
    "MAJORITY(peer)",  # one flow
    "AND(MAJORITY(peer), OR(o00.peer, o01.peer), OutOf(2, o02.peer, o03.peer, o04.peer))",
    REVIEW,
    *(_pairs(k, 12) for k in range(1, 13)),  # any k of 12 pairs: at most C(12, 6) = 924
    _pairs(2, 25),  # 300
    "OR(" + ", ".join(f"AND({FIFTY[i]}.peer, {FIFTY[(i + 1) % 50]}.peer)" for i in range(50)) + ")",
    "OutOf(2, OutOf(2, o00.peer, o01.peer, o02.peer), OutOf(1, o10.peer, o11.peer), AND(o20.peer, o21.peer), "
    "OutOf(1, o30.peer, o31.peer))",
])
def test_realistic_policies_are_within_the_bound(text: str) -> None:
    """What a consortium of up to 50 organisations writes: MAJORITY over all of them, k of 12
    hospitals each with its pharmacy (any k), 2 of 25 pairs, one of 50 pairs."""
    policy = parse_policy(text, FIFTY, version=EXACT_POLICY_VERSION)
    assert policy.bounded()
    assert policy.choices() <= MAX_POLICY_CHOICES
    policy.require_bounded()


def test_the_bound_counts_choices_exactly_up_to_it_whatever_the_policy_size() -> None:
    rng = random.Random(8)
    for _ in range(400):
        text = _random_rule(rng, TWENTY, ["peer"], 4)
        policy = parse_policy(text, TWENTY, version=EXACT_POLICY_VERSION)
        assert policy.bounded() is (policy.choices() <= MAX_POLICY_CHOICES), text
    assert parse_policy(_pairs(6, 13), FIFTY).choices() == 1716  # C(13, 6)
    assert not parse_policy(_pairs(6, 13), FIFTY).bounded()
    assert parse_policy(_pairs(2, 45), FIFTY).bounded()  # 990
    assert not parse_policy(_pairs(2, 46), FIFTY).bounded()  # 1,035
    hostile = parse_policy(CLUSTER_POLICY, TWENTY, version=EXACT_POLICY_VERSION)
    assert hostile.choices() == 163_185 and not hostile.bounded()
    with pytest.raises(RxError) as exc:
        hostile.require_bounded()
    assert exc.value.reason == "POLICY_TOO_COMPLEX"
    assert f"more than {MAX_POLICY_CHOICES} choices" in exc.value.message
    # counted up to the bound only: C(5000, 2500) has 1,504 digits
    huge = parse_policy(f"OutOf(2500, {', '.join(['AND(o00.peer, o01.peer)'] * 5000)})", TWENTY, version=2)
    assert not huge.bounded()


@pytest.mark.parametrize(("k", "m", "pool"), [(6, 11, 9), (5, 11, 7), (4, 12, 5), (4, 12, 7), (3, 18, 5)])
def test_the_costliest_policies_within_the_bound_stay_within_a_step_ceiling(k: int, m: int, pool: int) -> None:
    """The shape that cost 280,339 steps at 163,185 choices, cut to fit the bound (715 to 969
    choices): its worst endorsement list -- the hostile lists, then a deterministic climb
    towards costlier ones -- stays under 10 steps per choice allowed (~8,600 found at most:
    about 4 ms of CPU on a loaded two-core machine). Steps, not wall time, are asserted."""
    policy = parse_policy(_cluster(k, m, pool), TWENTY, version=EXACT_POLICY_VERSION)
    assert policy.bounded()
    worst, worst_list = 0, _peers(TWENTY)
    for signers in _hostile_signer_lists():
        search = policy.search(sorted(set(signers)))
        search.satisfied()
        if search.steps > worst:
            worst, worst_list = search.steps, sorted(set(signers))
    rng = random.Random(7)
    for _ in range(150):  # flip one peer at a time, keep any list at least as costly
        flipped = sorted(set(worst_list) ^ {(rng.choice(TWENTY), "peer")})
        search = policy.search(flipped)
        search.satisfied()
        if search.steps >= worst:
            worst, worst_list = search.steps, flipped
    assert worst <= 10 * MAX_POLICY_CHOICES, worst


def test_a_policy_over_the_bound_is_evaluated_by_version_1_rules_under_every_version() -> None:
    """A policy in force before the bound (a contract defined under version 1) keeps version
    1's answers after the upgrade: deterministic, at version 1's cost, never the exact search's
    (280,339 steps for one list of the hostile policy). Here the review's example beside the
    hostile policy over other organisations: the exact search accepts every peer but o00's,
    version 1 refuses them, and so does version 2 for this policy."""
    others = [f"c{i:02d}" for i in range(20)]
    beside = CLUSTER_POLICY.replace("o", "c")
    text = f"OR({REVIEW}, {beside})"
    orgs = [*TWELVE, *others]
    v1 = parse_policy(text, orgs)
    v2 = parse_policy(text, orgs, version=EXACT_POLICY_VERSION)
    assert not v2.bounded()
    signers = _peers(TWELVE[1:])
    assert v2.search(signers).satisfied() is True  # what the exact search would answer
    assert v1.evaluate(signers) is False
    assert v2.evaluate(signers) is False
    assert v2.min_signers(_peers(TWELVE)) == v1.min_signers(_peers(TWELVE))
    rng = random.Random(9)
    for _ in range(40):
        chosen = _peers(sorted(rng.sample(orgs, rng.randint(8, 20))))
        assert v2.evaluate(chosen) is v1.evaluate(chosen), chosen


def test_a_refused_policy_is_quoted_in_its_error_only_so_far() -> None:
    """A policy in a lifecycle call or a config update may be as long as an envelope (1 MiB in the
    sample consortium): its refusals (POLICY_TOO_COMPLEX, BAD_POLICY) quoted the whole text, which
    travels back in one gRPC status (trailers overflow, the reason lost) and into logs. They quote
    its start and its length."""
    pairs = ", ".join("AND(a.peer, b.peer)" if i % 2 else "AND(c.peer, d.peer)" for i in range(3000))
    over = f"OutOf(2, {pairs})"
    policy = parse_policy(over, ["a", "b", "c", "d"], version=EXACT_POLICY_VERSION)
    with pytest.raises(RxError) as exc:
        policy.require_bounded()
    assert exc.value.reason == "POLICY_TOO_COMPLEX"
    assert len(exc.value.message) < 1024 and f"({len(over)} characters)" in exc.value.message, exc.value.message
    for text in (over + ")", over.replace("d.peer)", "d.peer;", 1), f"OutOf(6000, {'a.peer, ' * 5000}b.peer)"):
        with pytest.raises(RxError) as exc:
            parse_policy(text, ["a", "b", "c", "d"])
        assert exc.value.reason == "BAD_POLICY"
        assert len(exc.value.message) < 1024 and f"({len(text)} characters)" in exc.value.message, exc.value.message
