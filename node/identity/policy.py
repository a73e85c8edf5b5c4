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
count twice). A policy that is one ``OutOf``/``AND``/``OR``/``MAJORITY`` of principals (the
usual shape) is decided by a bipartite matching; enumerating signer subsets for it cost up
to C(signers, n).

A nested policy is decided according to the consortium protocol version the policy was
parsed for (``parse_policy(..., version=)``, the version of the config in force: the answer
decides which transactions are valid, node/protocol.py):

* version 1 (:func:`_masks`): the minimal signer sets of every rule, of which only the first
  64 (fewest signers, then lowest bitmask) are kept at each level -- so some signer sets that
  satisfy a nested policy are refused (``AND(OutOf(4, o00.peer, ..., o11.peer), o04.peer,
  o02.peer, o01.peer, o06.peer, o09.peer, o08.peer, o10.peer)`` with every peer but o00's);
* version 2 and later (:class:`_ExactSearch`): exact. Rules that a flow network decides on
  its own (a principal; an OutOf of such rules that each need one signer; an AND of such
  rules) are "gadgets"; the other OutOfs choose which of their rules to satisfy, and each
  choice of gadgets is checked by a maximum flow (source -> gadget -> ... -> principal ->
  signer -> sink), kept across the choices of one search. The choices enumerated depend on
  the policy alone (at most :meth:`Policy.choices` complete ones): the signers presented
  only prune them and cost a polynomial flow each, so a transaction cannot make the search
  longer than its policy allows.

From version 2 a policy is put in force (a contract definition's endorsement policy at
lifecycle approve and commit, node.peer.lifecycle; a named policy of a config update,
node.orderer.configrules) only if its exact search has at most :data:`MAX_POLICY_CHOICES`
complete choices (:meth:`Policy.bounded`; POLICY_TOO_COMPLEX, BAD_CONFIG_UPDATE): the costliest
policies found within it take ~8,600 steps (a few milliseconds) for their worst endorsement
list (tests/foundation/test_policy_exact.py), where a 4-of-45 choice of "2 of 3 peers of a
cluster of 7" beside a 14-peer AND (163,185 choices) took 280,339 steps (0.13 s) for one. A
policy over the bound that is in force all the same -- a contract definition approved and
committed under version 1 (or whose commit, endorsed before the raise, lands in a block after
it) -- is evaluated by version 1's rules (:func:`_masks`) under every version: its answers
stay the ones it had when it was committed, deterministic, at version 1's cost (a few
milliseconds for the policy above); defining the contract again with a bounded policy gives
it the exact evaluation.
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
# The first consortium protocol version (node/protocol.py) that evaluates nested policies
# exactly (module docstring); versions below keep the 64 minimal signer sets per level.
EXACT_POLICY_VERSION = 2
# The most complete choices (Policy.choices) of a policy put in force from EXACT_POLICY_VERSION
# on, and evaluated exactly (module docstring). Above any policy a consortium writes: MAJORITY
# over 50 organisations is 1 (one flow), k of 12 "AND(hospital, its pharmacy)" pairs at most
# C(12, 6) = 924, 2 of 45 pairs 990; the costliest policies found within it take ~8,600 steps
# over hostile endorsement lists (each step ~0.5 us).
MAX_POLICY_CHOICES = 1_000
POLICY_TOO_COMPLEX = "POLICY_TOO_COMPLEX"
SHOWN_TEXT_CHARS = 200  # of a policy's text quoted in an error (the text may be a whole envelope)


def shown(text: str) -> str:
    """``text`` quoted for an error message: its first SHOWN_TEXT_CHARS characters, and how long
    it is when longer (a policy in a lifecycle call or a config update may be as long as an
    envelope; the refusal travels back in one gRPC status and is logged)."""
    if len(text) <= SHOWN_TEXT_CHARS:
        return repr(text)
    return f"{text[:SHOWN_TEXT_CHARS]!r}... ({len(text)} characters)"


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

    def __init__(self, rule: Rule, text: str, version: int = 1):
        self.rule = rule
        self.text = text
        # the protocol version whose rules evaluate it (module docstring)
        self.version = version
        self._plan: _Item | None = None  # the exact search's compiled rules, on first use
        self._bounded: bool | None = None  # choices() <= MAX_POLICY_CHOICES, on first use
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
        if self._exact():
            return self.search(unique).satisfied()
        return bool(_masks(self.rule, unique))

    def _exact(self) -> bool:
        """Is a nested policy evaluated by the exact search? From EXACT_POLICY_VERSION on when
        it is bounded; otherwise (version 1, or a policy over the bound put in force under it)
        by version 1's minimal signer sets (module docstring)."""
        return self.version >= EXACT_POLICY_VERSION and self.bounded()

    def search(self, signers: Sequence[tuple[str, str]]) -> _ExactSearch:
        """The exact search (version 2 on) of this policy over distinct ``signers``; its
        ``steps`` count the work done (tests bound it)."""
        if self._plan is None:
            self._plan = _compile(self.rule)
        return _ExactSearch(self._plan, signers)

    def choices(self) -> int:
        """How many complete choices the exact search may enumerate at most (a property of
        the policy alone: 1 for a policy that is one gadget, module docstring)."""
        if self._plan is None:
            self._plan = _compile(self.rule)
        return _choices(self._plan)

    def bounded(self) -> bool:
        """Has the exact search at most :data:`MAX_POLICY_CHOICES` complete choices? (Counted
        up to the bound only: cheap whatever the policy's size.)"""
        if self._bounded is None:
            if self._plan is None:
                self._plan = _compile(self.rule)
            self._bounded = _choices(self._plan, MAX_POLICY_CHOICES) <= MAX_POLICY_CHOICES
        return self._bounded

    def require_bounded(self) -> None:
        """RxError POLICY_TOO_COMPLEX unless :meth:`bounded` -- where a policy is put in force
        from EXACT_POLICY_VERSION on (module docstring)."""
        if not self.bounded():
            raise RxError(
                POLICY_TOO_COMPLEX,
                f"{shown(self.text)} leaves more than {MAX_POLICY_CHOICES} choices of which nested rules "
                "to satisfy (one endorsement list could cost every peer that many flows): give its "
                "OutOf/OR of nested rules fewer alternatives, or write it as one "
                "OutOf/AND/OR/MAJORITY of principals",
            )

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
                f"{shown(self.text)} nests rules over {len(unique)} possible signers; write it as one "
                f"OutOf/AND/OR/MAJORITY of principals or name at most {MAX_NESTED_CHECK}",
            )
        if self._exact():
            return self.search(unique).fewest()
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


# ---------------------------------------------------------------- exact search (version 2)


@dataclass(frozen=True)
class _Gadget:
    """A rule a flow decides on its own: satisfied exactly when ``cap`` units of flow pass
    through it. A principal (cap 1, an edge to each signer it matches); an OutOf(n, ...) of
    cap-1 gadgets (cap n: n of them get one unit each); an AND of gadgets (cap the sum: each
    gets its whole cap)."""

    cap: int
    kids: tuple[_Gadget, ...]
    principal: Principal | None


@dataclass(frozen=True)
class _Choose:
    """An OutOf the flow cannot decide: ``n`` of ``options`` are chosen and satisfied."""

    n: int
    options: tuple[_Item, ...]
    least: int  # the fewest signers any choice needs (pruning)
    floor: tuple[int, ...]  # [i]: the fewest signers any one of options[i:] needs (pruning)


_Item = _Gadget | _Choose


# an entry of the exact search: a gadget to add, or (OutOf, i, k): k more of its options
# from the i-th on
_Pending = _Gadget | tuple[_Choose, int, int]


def _least(item: _Item) -> int:
    return item.cap if isinstance(item, _Gadget) else item.least


def _still(entry: _Pending) -> int:
    """The fewest signers ``entry`` still needs (pruning)."""
    if isinstance(entry, _Gadget):
        return entry.cap
    choose, i, k = entry
    return k * choose.floor[i] if k else 0


def _compile(rule: Rule) -> _Item:
    if isinstance(rule, Principal):
        return _Gadget(1, (), rule)
    kids = [_compile(r) for r in rule.rules]
    gadgets = [k for k in kids if isinstance(k, _Gadget)]
    if len(gadgets) == len(kids):
        if all(g.cap == 1 for g in gadgets):
            return _Gadget(rule.n, tuple(gadgets), None)
        if rule.n == len(gadgets):
            return _Gadget(sum(g.cap for g in gadgets), tuple(gadgets), None)
    floor = [len(kids) + 1 << 20] * (len(kids) + 1)  # beyond any count of signers
    for i in range(len(kids) - 1, -1, -1):
        floor[i] = min(floor[i + 1], _least(kids[i]))
    return _Choose(rule.n, tuple(kids), sum(sorted(_least(k) for k in kids)[: rule.n]), tuple(floor))


def _choices(item: _Item, cap: int | None = None) -> int:
    """Complete choices of gadgets under ``item``: e_n of its options' counts (exact integers).

    With ``cap``, any count above it is ``cap + 1`` (exact up to the cap), at a cost linear in
    the policy's size: every option has at least one choice, so e_n >= C(options, n), and an
    OutOf whose C(options, n) is within the cap takes few options or leaves few out."""
    if isinstance(item, _Gadget):
        return 1
    n, m = item.n, len(item.options)
    if cap is not None and _comb_over(m, n, cap):
        return cap + 1
    # elementary symmetric polynomial e_n over the options' counts; after option j only
    # e[k] for k >= n - (options left) can still reach e_n
    e = [1] + [0] * n
    for j, opt in enumerate(item.options):
        c = _choices(opt, cap)
        for k in range(min(n, j + 1), max(0, n - (m - j)), -1):
            e[k] += e[k - 1] * c
            if cap is not None and e[k] > cap:
                e[k] = cap + 1
    return e[n]


def _comb_over(m: int, n: int, cap: int) -> bool:
    """C(m, n) > cap, computed only as far as needed."""
    r = min(n, m - n)
    c = 1
    for i in range(1, r + 1):
        c = c * (m - r + i) // i  # C(m - r + i, i), an integer at each step
        if c > cap:
            return True
    return False


class _ExactSearch:
    """Whether (or with how few signers) distinct signers satisfy a compiled policy, exactly.

    Choices are enumerated depth first (an OutOf's options taken in order); each gadget
    chosen is added to a maximum flow from a source through the gadgets' trees to the
    principals, each principal to one signer it matches and each signer to the sink (every
    signer used once, every principal once). The chosen gadgets are satisfied together exactly
    when the flow saturates them all; a gadget that does not fit ends that branch, and a branch
    whose choices need more signers than its rules and the flow can reach is not entered (the
    pruning only skips what cannot succeed). Nothing depends on set or dict order: the answer
    is exact, the ``steps`` (work done: flow nodes visited, search calls, options tried)
    deterministic.
    """

    def __init__(self, plan: _Item, signers: Sequence[tuple[str, str]]) -> None:
        self.steps = 0
        self._signers = list(signers)
        # gadget nodes numbered depth first; parent -1 is the source (a gadget chosen)
        self._cap: list[int] = []
        self._parent: list[int] = []
        self._kids: list[list[int]] = []
        self._match: list[list[int]] = []  # principal node -> signers it matches, in order
        self._ids: dict[int, int] = {}  # id(gadget object) -> its root node
        self._plan = plan
        self._number(plan)
        used = {j for m in self._match for j in m}
        self._usable = len(used)
        self._flow = [0] * len(self._cap)  # flow into each node from its parent (or the source)
        self._leaf_to = [-1] * len(self._cap)  # principal node -> signer it uses
        self._owner = [-1] * len(self._signers)  # signer -> principal node using it
        self._total = 0
        # A gadget is "forced" when the signers it uses are the same in every flow: an AND
        # all the way down whose principals each match one signer. While every gadget in the
        # flow is forced, the signers used stand for the gadgets chosen, and a failed search
        # from (pending entries, signers used) is remembered (the search over used-signer
        # masks of version 1, without its truncation).
        self._forced = [False] * len(self._cap)
        for v in range(len(self._cap) - 1, -1, -1):  # children are numbered after parents
            kids = self._kids[v]
            if kids:
                self._forced[v] = self._cap[v] == sum(self._cap[c] for c in kids) and all(
                    self._forced[c] for c in kids)
            else:
                self._forced[v] = len(self._match[v]) == 1
        # the signers a gadget's principals match: fewer than its cap, it can never be satisfied
        self._reach = [0] * len(self._cap)
        for v in range(len(self._cap) - 1, -1, -1):
            for j in self._match[v]:
                self._reach[v] |= 1 << j
            for c in self._kids[v]:
                self._reach[v] |= self._reach[c]
        # per OutOf the search chooses in: [j] = the signers options[j:] may use (the options
        # that can be satisfied at all); a choice needing more signers than its entries and
        # the flow may use is not entered
        self._suffix: dict[int, list[int]] = {}
        self._reach_of(plan)
        self._flow_reach = 0
        # a forced gadget's signers (-1: it cannot be satisfied, two principals share one)
        self._needs = [-1] * len(self._cap)
        for v in range(len(self._cap) - 1, -1, -1):
            if not self._forced[v]:
                continue
            kids = self._kids[v]
            mask = 1 << self._match[v][0] if not kids else 0
            for c in kids:
                mask = -1 if mask < 0 or self._needs[c] < 0 or mask & self._needs[c] else mask | self._needs[c]
            self._needs[v] = mask
        self._all_forced = True
        self._failed: set[tuple[tuple[object, ...], int]] = set()
        self._first = True  # satisfied(): stop at the first choice that fits

    def _number(self, item: _Item) -> None:
        stack: list[tuple[_Item, int]] = [(item, -1)]
        while stack:
            it, parent = stack.pop()
            if isinstance(it, _Choose):
                stack.extend((o, -1) for o in reversed(it.options))
                continue
            node = len(self._cap)
            if parent < 0:
                self._ids[id(it)] = node
            self._cap.append(it.cap)
            self._parent.append(parent)
            self._kids.append([])
            if parent >= 0:
                self._kids[parent].append(node)
            p = it.principal
            self._match.append([] if p is None else [j for j, s in enumerate(self._signers) if p.matches(s)])
            self.steps += 1
            stack.extend((k, node) for k in reversed(it.kids))

    # ------------------------------------------------------------------ the flow

    def _augment(self, root: int) -> bool:
        """One augmenting path from the source into gadget ``root`` (breadth first); True if
        one was found and applied."""
        n_nodes = len(self._cap)
        sink = n_nodes + len(self._signers)
        prev: dict[int, int] = {root: -1}
        queue = [root]
        found = -1
        head = 0
        while head < len(queue) and found < 0:
            v = queue[head]
            head += 1
            self.steps += 1
            if v >= n_nodes:  # a signer: to the sink if free, else back to its principal
                s = v - n_nodes
                owner = self._owner[s]
                if owner < 0:
                    prev[sink] = v
                    found = sink
                elif owner not in prev:
                    prev[owner] = v
                    queue.append(owner)
                continue
            for j in self._match[v]:  # a principal: to any other signer it matches
                w = n_nodes + j
                if self._leaf_to[v] != j and w not in prev:
                    prev[w] = v
                    queue.append(w)
            for c in self._kids[v]:  # a gadget: more flow into a child with room
                if self._flow[c] < self._cap[c] and c not in prev:
                    prev[c] = v
                    queue.append(c)
            p = self._parent[v]  # or give back a unit it received from its parent
            if p >= 0 and self._flow[v] > 0 and p not in prev:
                prev[p] = v
                queue.append(p)
        if found < 0:
            return False
        # apply from the sink back (each step undoes only what the later ones left in place)
        v = sink
        while True:
            u = prev[v]
            if u < 0:
                self._flow[v] += 1  # source -> root
                break
            if v == sink:
                pass
            elif u >= n_nodes:  # signer u back to principal v: v no longer uses u
                s = u - n_nodes
                if self._leaf_to[v] == s:
                    self._leaf_to[v] = -1
                if self._owner[s] == v:
                    self._owner[s] = -1
            elif v >= n_nodes:  # principal u now uses signer v
                self._leaf_to[u] = v - n_nodes
                self._owner[v - n_nodes] = u
            elif self._parent[v] == u:  # one more unit into child v
                self._flow[v] += 1
            else:  # u is v's child: it gives a unit back
                self._flow[u] -= 1
            v = u
        return True

    def _add(self, gadget: _Gadget) -> bool:
        root = self._ids[id(gadget)]
        while self._flow[root] < self._cap[root]:
            if not self._augment(root):
                return False
        self._total += self._cap[root]
        self._all_forced = self._all_forced and self._forced[root]
        self._flow_reach |= self._reach[root]
        return True

    def _save(self) -> tuple[list[int], list[int], list[int], int, bool, int]:
        return self._flow[:], self._leaf_to[:], self._owner[:], self._total, self._all_forced, self._flow_reach

    def _restore(self, saved: tuple[list[int], list[int], list[int], int, bool, int]) -> None:
        self._flow, self._leaf_to, self._owner = saved[0][:], saved[1][:], saved[2][:]
        self._total, self._all_forced, self._flow_reach = saved[3], saved[4], saved[5]

    # ------------------------------------------------------------------ the choices

    def _solve(self, pending: tuple[_Pending, ...], best: int | None) -> int | None:
        """The fewest signers (below ``best``, None for any) that satisfy every ``pending``
        entry beside the gadgets already in the flow; None when no choice does.

        An entry is a gadget, or (OutOf, i, k): k more of its options from the i-th on. The
        options are taken in order (a loop: a recursion per option skipped could go as deep as
        an OutOf has options), so choices sharing a prefix share its flow, and a prefix that
        does not fit is never extended. One frame per call: along a path every call adds a
        gadget (each needs a signer of its own, at most ``MAX_SIGNERS``) or takes an option one
        level down the rules towards the next gadget (``MAX_POLICY_DEPTH``), so the recursion
        stays within MAX_SIGNERS x (MAX_POLICY_DEPTH + 1) = 660 frames, below Python's limit
        whoever calls (a RecursionError would depend on the caller's stack: not deterministic).

        A None found while every gadget in the flow is forced is remembered by (entries,
        signers used): ``best`` only decreases during a search (it is the best found so far),
        so nothing below it is found there later either."""
        self.steps += 1
        need = self._total + sum(_still(e) for e in pending)
        if need > self._usable or (best is not None and need >= best):
            return None
        if not pending:
            return self._total
        reach = self._flow_reach
        for e in pending:
            reach |= self._entry_reach(e)
        if need > bin(reach).count("1"):
            return None
        key: tuple[tuple[object, ...], int] | None = None
        used = 0
        if self._all_forced:
            used = self._used()
            key = (tuple(id(e) if isinstance(e, _Gadget) else (id(e[0]), e[1], e[2]) for e in pending), used)
            if key in self._failed:
                return None
        entry, rest = pending[0], pending[1:]
        found: int | None = None
        if isinstance(entry, _Gadget):
            saved = self._save()
            found = self._solve(rest, best) if self._add(entry) else None
            self._restore(saved)
        else:
            choose, i, k = entry  # k >= 1: an OutOf with nothing left to take is not pending
            after = self._total + sum(_still(e) for e in rest)
            for j in range(i, len(choose.options) - k + 1):
                self.steps += 1
                if after + k * choose.floor[j] > self._usable:
                    break  # floor only grows with j
                option = choose.options[j]
                if isinstance(option, _Gadget):
                    node = self._ids[id(option)]
                    if bin(self._reach[node]).count("1") < self._cap[node]:
                        continue  # too few signers match its principals, whatever else is chosen
                    if key is not None and self._forced[node] and (self._needs[node] < 0 or self._needs[node] & used):
                        continue  # its signers are taken for good (no flow can move them)
                first: _Pending = option if isinstance(option, _Gadget) else (option, 0, option.n)
                more = (first, (choose, j + 1, k - 1), *rest) if k > 1 else (first, *rest)
                got = self._solve(more, best if found is None else found)
                if got is not None:
                    found = got
                    if self._first:
                        break
        if found is None and key is not None:
            self._failed.add(key)
        return found

    def _reach_of(self, item: _Item) -> int:
        """The signers ``item`` may use (0 when it can never be satisfied); fills _suffix."""
        if isinstance(item, _Gadget):
            return self._reach_of_gadget(item)
        suffix = [0] * (len(item.options) + 1)
        for j in range(len(item.options) - 1, -1, -1):
            suffix[j] = suffix[j + 1] | self._reach_of(item.options[j])
        self._suffix[id(item)] = suffix
        return suffix[0]

    def _entry_reach(self, entry: _Pending) -> int:
        if isinstance(entry, _Gadget):
            return self._reach_of_gadget(entry)
        return self._suffix[id(entry[0])][entry[1]]

    def _reach_of_gadget(self, gadget: _Gadget) -> int:
        node = self._ids[id(gadget)]
        reach = self._reach[node]
        return reach if bin(reach).count("1") >= self._cap[node] else 0

    def _used(self) -> int:
        """The signers the flow uses, as a bitmask."""
        used = 0
        for j, owner in enumerate(self._owner):
            if owner >= 0:
                used |= 1 << j
        return used

    def satisfied(self) -> bool:
        """Do the signers satisfy the policy?"""
        self._first = True
        return self._solve((self._start(),), None) is not None

    def fewest(self) -> int | None:
        """The fewest of the signers that satisfy the policy, or None when they cannot."""
        self._first = False
        return self._solve((self._start(),), None)

    def _start(self) -> _Pending:
        plan = self._plan
        return plan if isinstance(plan, _Gadget) else (plan, 0, plan.n)


class _Parser:
    def __init__(self, text: str, org_ids: Sequence[str], former_orgs: bool = False):
        self.text = text
        self.org_ids = list(org_ids)
        self.former_orgs = former_orgs
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        end = len(text.rstrip())  # trailing whitespace is no token (one scan, not one per token)
        while pos < end:
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                while text[pos].isspace():  # name the character, not the blanks before it
                    pos += 1
                raise RxError("BAD_POLICY",
                              f"unexpected character {text[pos:pos+1]!r} at position {pos} in {shown(text)}")
            kind = m.lastgroup or ""
            value = m.group(kind)
            start = m.start(kind)
            self.tokens.append((kind, value, start))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def fail(self, what: str) -> RxError:
        pos = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        return RxError("BAD_POLICY", f"{what} at position {pos} in {shown(self.text)}")

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
        if self.org_ids and org not in self.org_ids and not self.former_orgs:
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
                "BAD_POLICY", f"OutOf({n}, ...) with {len(rules)} rules can never be satisfied in {shown(self.text)}"
            )
        return OutOf(n, tuple(rules))


def parse_policy(
    text: str, org_ids: Sequence[str] = (), version: int = 1, *, former_orgs: bool = False
) -> Policy:
    """Parse ``text``; ``org_ids`` (the consortium's orgs) resolves MAJORITY and checks names;
    ``version`` is the protocol version of the config in force (node.protocol.protocol_version),
    whose rules evaluate the policy (module docstring).

    ``former_orgs``: a principal naming an organisation outside ``org_ids`` is kept rather
    than refused -- for a policy written while that organisation was a member (a committed
    contract definition read after a config update removed it). No signer matches it: every
    signer is validated against the organisations in force first.

    Raises ``RxError("BAD_POLICY", ...)`` naming the position of the first problem.
    """
    if not isinstance(text, str) or not text.strip():
        raise RxError("BAD_POLICY", "empty policy")
    return Policy(_Parser(text, org_ids, former_orgs).parse(), text, version)
