"""Hash flooding: dict keys and set elements whose hashes collide.

A dict or set finds a key by walking the entries that share its hash, comparing each with
the key, so N distinct keys of one hash make every insertion or lookup of them cost O(N)
comparisons -- in C, out of the meter's sight.  CPython's hashes of contract values are
computable offline (the workers' string seed is ``Sandbox(hash_seed=...)``, 0 on every peer
today; integer and tuple hashes use no seed):

* integers: ``hash(x) == hash(x + k * (2**61 - 1))``.  Keys and set elements are refused
  beyond :data:`INT_HASH_MODULUS` (directly or nested), so distinct admitted integers have
  distinct hashes (except -1 and -2: a chain of two);
* tuples and frozensets mix their elements' hashes with invertible steps: for any first
  element a second one of the wanted hash can be solved for (a quarter of them are small
  integers), so 4,000 pairs of small integers sharing one hash are a minute's work.  The
  meter records, per invocation, the hash of every tuple/frozenset admitted as a key or
  element (:class:`HashLedger`); a value hashed where other recorded values share its hash
  pays one unit per such value (what the chain walk compares), nothing otherwise;
* strings: partial collisions (equal low bits) only lengthen the first few probes (the
  probe sequence mixes in all 64 bits); full 64-bit collisions cost ~2**32 hash evaluations
  per pair even with a known seed, so their chains stay a handful long.

Every decision uses values and hashes that are the same on every peer: None (hashed by its
address in Python 3.11, different in every process) is replaced by a fixed stand-in when a
recorded tuple holds it.
"""

from __future__ import annotations

import sys
from typing import Any

INT_HASH_MODULUS: int = sys.hash_info.modulus  # 2**61 - 1: ints equal modulo it hash alike


def int_hashes_apart(v: int) -> bool:
    """True if ``v`` hashes unlike every other admissible integer (|v| < 2**61 - 1)."""
    return -INT_HASH_MODULUS < v < INT_HASH_MODULUS


def big_int_error(v: int) -> ValueError:
    return ValueError(
        f"an integer of {v.bit_length()} bits cannot be a dict key or set element in a contract "
        f"(|x| must be below 2**61 - 1: integers equal modulo 2**61 - 1 share one hash)"
    )


class _NoneStandIn:
    """Stands for None inside a tuple whose hash the ledger records (same on every peer)."""

    __slots__ = ()

    def __hash__(self) -> int:
        return 0x6E6F6E65  # "none"

    def __eq__(self, other: object) -> bool:
        return other is self


_STAND_IN = _NoneStandIn()
_LEAVES = frozenset({str, int, bool, frozenset})


def _without_none(v: Any, memo: dict[int, Any]) -> Any:
    """``v`` with every None inside its tuples replaced by the stand-in (shared sub-tuples
    rebuilt once; depth already bounded by the caller's :meth:`Meter.hash_cost`)."""
    if v is None:
        return _STAND_IN
    if type(v) is not tuple:
        return v
    done = memo.get(id(v))
    if done is None:
        done = memo[id(v)] = tuple(_without_none(x, memo) for x in v)
    return done


def stable_hash(v: Any, has_none: bool) -> int:
    """The hash of an admitted key/element (str/int/bool/None/tuple/frozenset), the same on
    every peer (``has_none``: a tuple of ``v`` holds None)."""
    return hash(_without_none(v, {})) if has_none else hash(v)


def probe_hash(v: Any) -> int | None:
    """:func:`stable_hash` of a looked-up value, or None when ``v`` is not something a key
    or element may be (a list: unhashable; a function: hashed by address) -- no recorded
    value can equal it.  Walks ``v`` (called only once a collision was recorded)."""
    tv = type(v)
    if tv is frozenset:
        return hash(v)  # its elements were admitted when it was built
    if tv is tuple:  # fast path: a flat tuple of str/int/bool
        for x in v:
            tx = type(x)
            if tx is not str and tx is not int and tx is not bool:
                break
        else:
            return hash(v)
    has_none = False
    stack = [v]
    while stack:
        x = stack.pop()
        tx = type(x)
        if tx is tuple:
            stack.extend(x)
        elif x is None:
            has_none = True
        elif tx not in _LEAVES:
            return None
    return stable_hash(v, has_none)


class HashLedger:
    """Hashes of the tuples and frozensets admitted as keys or elements in one invocation
    (``base``: the ledger of the module body the call's module values come from; read
    only).  ``hot`` once two distinct recorded values share a hash: only then do lookups
    need to consult it."""

    __slots__ = ("_base", "_first", "_more", "hot")

    def __init__(self, base: HashLedger | None = None) -> None:
        self._base = base
        self._first: dict[int, Any] = {}
        self._more: dict[int, list[Any]] = {}
        self.hot: bool = base is not None and base.hot

    def known(self, h: int) -> list[Any]:
        """Distinct recorded values of hash ``h`` (the module's first)."""
        out = self._base.known(h) if self._base is not None else []
        first = self._first.get(h, _STAND_IN)
        if first is not _STAND_IN:
            out.append(first)
            out.extend(self._more.get(h, ()))
        return out

    def count(self, h: int) -> int:
        """How many distinct values of hash ``h`` are recorded."""
        n = self._base.count(h) if self._base is not None else 0
        if h in self._first:
            n += 1 + len(self._more.get(h, ()))
        return n

    def admit(self, v: Any, h: int) -> int:
        """Record ``v`` (hash ``h``) as a key/element; returns how many other recorded values
        share its hash (0 unless hashes collide): what inserting it may compare."""
        first = self._first.get(h, _STAND_IN)
        if first is _STAND_IN:  # a hash this invocation has not recorded
            base = self._base
            if base is None or h not in base._first:
                self._first[h] = v
                return 0
            # the module body recorded it: an equal value is not recorded again (as when the
            # body ran in this call's own ledger: a cached module charges what a fresh one does)
            known = base.known(h)
            if v in known:
                return len(known) - 1
            self._first[h] = v
            self.hot = True
            return len(known)
        if first is v and not self.hot:
            return 0  # the same object again
        known = self.known(h)
        if v in known:  # identity first, then ==, in C
            return len(known) - 1
        self._more.setdefault(h, []).append(v)  # ``first`` is another value of this hash
        self.hot = True
        return len(known)

    def probe(self, h: int) -> int:
        """What looking up a value of hash ``h`` may compare beyond its own entry: the
        number of recorded values of that hash minus one (0 without collisions)."""
        if not self.hot:
            return 0
        return max(0, self.count(h) - 1)
