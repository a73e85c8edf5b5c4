"""Endorsement-policy language: parsing, nested OutOf, distinct signers, errors."""

from __future__ import annotations

from typing import SupportsIndex

import pytest

from node.errors import RxError
from node.identity.policy import parse_policy

ORGS = ["h01", "h02", "p01", "ins01", "reg01"]


@pytest.mark.parametrize(
    ("text", "signers", "expected"),
    [
        ("h01.peer", [("h01", "peer")], True),
        ("h01.peer", [("h02", "peer")], False),
        ("h01.member", [("h01", "doctor")], True),
        ("AND(h01.peer, ins01.peer)", [("h01", "peer"), ("ins01", "peer")], True),
        ("AND(h01.peer, ins01.peer)", [("h01", "peer")], False),
        ("OR(h01.peer, ins01.peer)", [("ins01", "peer")], True),
        ("OutOf(2, h01.peer, h02.peer, p01.peer)", [("p01", "peer"), ("h02", "peer")], True),
        ("OutOf(2, h01.peer, h02.peer, p01.peer)", [("p01", "peer")], False),
        # nested: insurer must endorse, plus any one of the others
        ("AND(ins01.peer, OutOf(1, h01.peer, h02.peer, p01.peer))",
         [("ins01", "peer"), ("h02", "peer")], True),
        ("AND(ins01.peer, OutOf(1, h01.peer, h02.peer, p01.peer))", [("ins01", "peer")], False),
        ("OutOf(2, AND(h01.peer, h01.admin), OR(p01.peer, h02.peer), ins01.admin)",
         [("h01", "peer"), ("h01", "admin"), ("ins01", "admin")], True),
        ("OutOf(2, AND(h01.peer, h01.admin), OR(p01.peer, h02.peer), ins01.admin)",
         [("h01", "peer"), ("ins01", "admin")], False),
        # one signer cannot satisfy two principals
        ("OutOf(2, h01.member, h01.peer)", [("h01", "peer")], False),
        ("OutOf(2, h01.member, h01.peer)", [("h01", "peer"), ("h01", "admin")], True),
        ("MAJORITY(admin)", [("h01", "admin"), ("h02", "admin"), ("p01", "admin")], True),
        ("MAJORITY(admin)", [("h01", "admin"), ("h02", "admin")], False),
        ("MAJORITY(admin)", [("h01", "admin"), ("h01", "admin"), ("h02", "admin")], False),
        ("'h01.peer'", [("h01", "peer")], True),
    ],
)
def test_evaluate(text: str, signers: list[tuple[str, str]], expected: bool) -> None:
    assert parse_policy(text, ORGS).evaluate(signers) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("AND(h01.peer,", "expected a policy"),
        ("AND(h01.peer h02.peer)", "expected ')'"),
        ("OutOf(4, h01.peer, h02.peer)", "never be satisfied"),
        ("OutOf(x, h01.peer)", "expects a count"),
        ("h01", "expected ORG.ROLE"),
        ("zz01.peer", "unknown organisation"),
        ("AND(h01.peer) trailing", "trailing"),
        ("h01.peer & h02.peer", "unexpected character"),
        ("MAJORITY(h01.admin)", "expects a role"),
    ],
)
def test_bad_policies_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(RxError) as e:
        parse_policy(text, ORGS)
    assert e.value.reason == "BAD_POLICY"
    assert fragment in e.value.message


def test_principals_listed() -> None:
    p = parse_policy("AND(ins01.peer, OR(h01.peer, p01.peer))", ORGS)
    assert [str(x) for x in p.principals()] == ["ins01.peer", "h01.peer", "p01.peer"]


def test_nesting_depth_is_bounded() -> None:
    """A policy nested past MAX_POLICY_DEPTH is BAD_POLICY (not a RecursionError), however
    deep: parsing, evaluation and printing are recursive."""
    from node.identity.policy import MAX_POLICY_DEPTH

    def nested(depth: int, keyword: str = "AND(") -> str:
        return keyword * depth + "h01.peer" + ")" * depth

    ok = parse_policy(nested(MAX_POLICY_DEPTH), ORGS)
    assert ok.evaluate([("h01", "peer")]) and str(ok.rule).count("OutOf") == MAX_POLICY_DEPTH
    for depth, keyword in ((MAX_POLICY_DEPTH + 1, "AND("), (1000, "OR("), (200_000, "AND(")):
        with pytest.raises(RxError) as e:
            parse_policy(nested(depth, keyword), ORGS)
        assert e.value.reason == "BAD_POLICY"
        assert f"deeper than {MAX_POLICY_DEPTH}" in e.value.message
    # siblings do not add depth: a wide policy at the limit still parses
    wide = "OR(" + ", ".join([nested(MAX_POLICY_DEPTH - 1)] * 50) + ")"
    assert parse_policy(wide, ORGS).evaluate([("h01", "peer")])


class _SliceCountingText(str):
    """A policy text that counts the characters every slice of it copies."""

    copied = 0

    def __getitem__(self, key: SupportsIndex | slice) -> str:
        part = str.__getitem__(self, key)
        type(self).copied += len(part)
        return part


def test_tokenizing_copies_the_text_a_bounded_number_of_times() -> None:
    # The tokenizer asked "is the rest only whitespace?" by copying the rest of the text at
    # every token: quadratic in the text (a 1.4 MB policy took seconds of an orderer's CPU).
    text = _SliceCountingText("OR(" + ", ".join(f"{ORGS[i % 4]}.peer" for i in range(5000)) + ")  \n")
    _SliceCountingText.copied = 0
    policy = parse_policy(text, ORGS)
    assert policy.evaluate([("h02", "peer")])
    assert _SliceCountingText.copied <= 2 * len(text)
    with pytest.raises(RxError, match="unexpected character '!'"):
        parse_policy(_SliceCountingText(text.rstrip() + " !"), ORGS)
