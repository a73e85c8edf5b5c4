"""Endorsement and governance policy language.

Grammar (whitespace ignored, keywords case-sensitive)::

    policy    := "AND" "(" policy ("," policy)* ")"
               | "OR" "(" policy ("," policy)* ")"
               | "OutOf" "(" INT "," policy ("," policy)* ")"
               | "MAJORITY" "(" ROLE ")"          -- more than half of all orgs' ROLE
               | principal
    principal := ORG "." ROLE | "'" ORG "." ROLE "'"   -- ROLE "member" matches any role

A policy is evaluated against a set of signers, each an (org, role) pair, and every
signer may satisfy at most one principal (two endorsements by the same peer never
count twice). Evaluation is exact: it searches assignments of signers to principals,
which is cheap for the handful of signers a transaction carries. A policy that is one
``OutOf``/``AND``/``OR``/``MAJORITY`` of principals (the usual shape) is decided by a
bipartite matching; enumerating signer subsets for it cost up to C(signers, n).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from node.errors import RxError

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+)"
    r"|(?P<word>'[A-Za-z0-9_\-]+\.[A-Za-z_]+'|[A-Za-z0-9_\-]+(?:\.[A-Za-z_]+)?)"
    r"|(?P<punct>[(),]))"
)
MAX_SIGNERS = 20
# Nesting of AND/OR/OutOf/MAJORITY; deeper text is refused BAD_POLICY, so that parsing,
# evaluation and printing (all recursive) stay far below Python's recursion limit.
MAX_POLICY_DEPTH = 32
MAX_COUNT_DIGITS = 6  # an OutOf count beyond any policy's number of rules
# Possible signers over which :meth:`Policy.min_signers` searches a nested policy exactly
# (C(12, 6) = 924 subsets at most at one level).
MAX_NESTED_CHECK = 12


@dataclass(frozen=True)
class Principal:
    """Matches a signer of organisation ``org`` with role ``role`` ("member" = any)."""

    org: str
    role: str

    def matches(self, signer: tuple[str, str]) -> bool:
        return signer[0] == self.org and (self.role == "member" or signer[1] == self.role)

    def __str__(self) -> str:
        return f"{self.org}.{self.role}"


@dataclass(frozen=True)
class OutOf:
    """Satisfied when at least ``n`` of ``rules`` are satisfied by disjoint signers."""

    n: int
    rules: tuple[Rule, ...]

    def __str__(self) -> str:
        return f"OutOf({self.n}, {', '.join(str(r) for r in self.rules)})"


Rule = Principal | OutOf


class Policy:
    """A parsed policy; :meth:`evaluate` decides whether a set of signers satisfies it."""

    def __init__(self, rule: Rule, text: str):
        self.rule = rule
        self.text = text
        # OutOf(n, principals...) at the top (MAJORITY(role), "n of these peers"): decided by
        # a bipartite matching instead of enumerating every n-subset of the signers.
        self._flat: OutOf | None = None
        if isinstance(rule, OutOf) and all(isinstance(r, Principal) for r in rule.rules):
            self._flat = rule

    def __repr__(self) -> str:
        return f"Policy({self.text!r})"

    def evaluate(self, signers: Iterable[tuple[str, str]]) -> bool:
        """True if distinct ``signers`` (org, role) satisfy the policy."""
        unique = sorted(set(signers))
        if len(unique) > MAX_SIGNERS:
            return False
        if self._flat is not None:
            return _matches_at_least(self._flat, unique)
        return bool(_masks(self.rule, unique))

    def min_signers(self, eligible: Iterable[tuple[str, str]]) -> int | None:
        """The fewest distinct signers among ``eligible`` that satisfy the policy, or None
        when no set of them does.

        Unlike :meth:`evaluate` it is not capped at ``MAX_SIGNERS``: a config update asks
        whether a policy can ever be satisfied by the consortium's members, and how many
        signers that takes (more than ``MAX_SIGNERS`` can never be presented). A flat policy
        is decided by the matching; a nested one by the exact search, over the eligible
        signers of the organisations it names, which must be at most ``MAX_NESTED_CHECK``
        (BAD_POLICY otherwise: the search grows with C(signers, n)).
        """
        named = {p.org for p in self.principals()}
        unique = sorted({s for s in eligible if s[0] in named})
        if self._flat is not None:
            return self._flat.n if _matches_at_least(self._flat, unique) else None
        if len(unique) > MAX_NESTED_CHECK:
            raise RxError(
                "BAD_POLICY",
                f"{self.text!r} nests rules over {len(unique)} possible signers; write it as one "
                f"OutOf/AND/OR/MAJORITY of principals or name at most {MAX_NESTED_CHECK}",
            )
        masks = _masks(self.rule, unique)
        return min(bin(m).count("1") for m in masks) if masks else None

    def principals(self) -> list[Principal]:
        """Every principal named, in order of appearance."""
        out: list[Principal] = []

        def walk(rule: Rule) -> None:
            if isinstance(rule, Principal):
                out.append(rule)
            else:
                for r in rule.rules:
                    walk(r)

        walk(self.rule)
        return out


def _matches_at_least(rule: OutOf, signers: Sequence[tuple[str, str]]) -> bool:
    """For an OutOf whose rules are all principals: can ``rule.n`` of them each get a signer
    of their own? (A maximum bipartite matching, grown by augmenting paths; the same answer
    as ``bool(_masks(rule, signers))`` at a cost of principals x signers^2 at most, where
    the subset enumeration costs up to C(signers, n): 14 ms for MAJORITY(peer) over 16
    signing organisations, 0.3 s for 10 of 20.)"""
    owner: list[int] = [-1] * len(signers)  # signer -> principal it is assigned to
    candidates = [
        [j for j, s in enumerate(signers) if p.matches(s)] for p in rule.rules if isinstance(p, Principal)
    ]

    def assign(i: int, visited: list[bool]) -> bool:
        for j in candidates[i]:
            if not visited[j]:
                visited[j] = True
                if owner[j] < 0 or assign(owner[j], visited):
                    owner[j] = i
                    return True
        return False

    matched = 0
    for i in range(len(candidates)):
        if candidates[i] and assign(i, [False] * len(signers)):
            matched += 1
            if matched >= rule.n:
                return True
    return False


def _masks(rule: Rule, signers: Sequence[tuple[str, str]]) -> set[int]:
    """Minimal sets (bitmasks over ``signers``) of signers that satisfy ``rule``."""
    if isinstance(rule, Principal):
        return {1 << i for i, s in enumerate(signers) if rule.matches(s)}
    # DP over children: states[k] = masks using disjoint signers satisfying k children.
    states: list[set[int]] = [{0}] + [set() for _ in range(rule.n)]
    for child in rule.rules:
        child_masks = _masks(child, signers)
        if not child_masks:
            continue
        for k in range(rule.n - 1, -1, -1):
            for used in states[k]:
                for cm in child_masks:
                    if used & cm == 0:
                        states[k + 1].add(used | cm)
    return _minimal(states[rule.n])


def _minimal(masks: set[int]) -> set[int]:
    ordered = sorted(masks, key=lambda m: (bin(m).count("1"), m))
    kept: list[int] = []
    for m in ordered:
        if not any(k & m == k for k in kept):
            kept.append(m)
        if len(kept) >= 64:  # bound the search space; enough alternatives for any real policy
            break
    return set(kept)


class _Parser:
    def __init__(self, text: str, org_ids: Sequence[str]):
        self.text = text
        self.org_ids = list(org_ids)
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                raise RxError("BAD_POLICY", f"unexpected character {text[pos:pos+1]!r} at position {pos} in {text!r}")
            kind = m.lastgroup or ""
            value = m.group(kind)
            start = m.start(kind)
            self.tokens.append((kind, value, start))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def fail(self, what: str) -> RxError:
        pos = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        return RxError("BAD_POLICY", f"{what} at position {pos} in {self.text!r}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expect(self, value: str) -> None:
        tok = self.peek()
        if tok is None or tok[1] != value:
            raise self.fail(f"expected {value!r}")
        self.i += 1

    def parse(self) -> Rule:
        rule = self.rule()
        if self.peek() is not None:
            raise self.fail("unexpected trailing input")
        return rule

    def rule(self) -> Rule:
        tok = self.peek()
        if tok is None:
            raise self.fail("expected a policy")
        kind, value, _ = tok
        if kind != "word":
            raise self.fail(f"expected a policy, got {value!r}")
        self.i += 1
        if value in ("AND", "OR", "OutOf", "MAJORITY"):
            if self.depth >= MAX_POLICY_DEPTH:
                raise self.fail(f"policy nested deeper than {MAX_POLICY_DEPTH} levels")
            self.depth += 1
            try:
                return self.combination(value)
            finally:
                self.depth -= 1
        word = value.strip("'")
        if "." not in word:
            raise self.fail(f"expected ORG.ROLE, got {word!r}")
        org, role = word.split(".", 1)
        if self.org_ids and org not in self.org_ids:
            raise self.fail(f"unknown organisation {org!r}")
        return Principal(org, role)

    def combination(self, value: str) -> Rule:
        """The rest of ``AND(`` / ``OR(`` / ``OutOf(`` / ``MAJORITY(`` after its keyword."""
        self.expect("(")
        if value == "MAJORITY":
            role_tok = self.peek()
            if role_tok is None or role_tok[0] != "word" or "." in role_tok[1]:
                raise self.fail("MAJORITY expects a role name")
            self.i += 1
            self.expect(")")
            if not self.org_ids:
                raise self.fail("MAJORITY needs the consortium's organisations")
            majority = len(self.org_ids) // 2 + 1
            return OutOf(majority, tuple(Principal(o, role_tok[1]) for o in self.org_ids))
        n: int | None = None
        if value == "OutOf":
            num = self.peek()
            if num is None or num[0] != "num":
                raise self.fail("OutOf expects a count")
            if len(num[1]) > MAX_COUNT_DIGITS:  # int() refuses > 4300 digits with a ValueError
                raise self.fail(f"OutOf count longer than {MAX_COUNT_DIGITS} digits")
            n = int(num[1])
            self.i += 1
            self.expect(",")
        rules = [self.rule()]
        while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
            self.i += 1
            rules.append(self.rule())
        self.expect(")")
        if value == "AND":
            n = len(rules)
        elif value == "OR":
            n = 1
        assert n is not None
        if not 1 <= n <= len(rules):
            raise RxError(
                "BAD_POLICY", f"OutOf({n}, ...) with {len(rules)} rules can never be satisfied in {self.text!r}"
            )
        return OutOf(n, tuple(rules))


def parse_policy(text: str, org_ids: Sequence[str] = ()) -> Policy:
    """Parse ``text``; ``org_ids`` (the consortium's orgs) resolves MAJORITY and checks names.

    Raises ``RxError("BAD_POLICY", ...)`` naming the position of the first problem.
    """
    if not isinstance(text, str) or not text.strip():
        raise RxError("BAD_POLICY", "empty policy")
    return Policy(_Parser(text, org_ids).parse(), text)
