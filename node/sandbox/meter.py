"""Run-time half of metering: the gas meter and the helpers instrumented code calls.

The instrumenter (instrument.py) rewrites contract code so that every loop iteration,
function call, comprehension element, allocation-heavy operation and method call on a
builtin value goes through a ``Meter``.  All charges depend only on the values involved
(never on time or memory addresses), so every peer runs out of gas at the same point.

Gas schedule (documented in api.py for contract authors):

* contract function call: ``CALL`` (10); loop iteration / element consumed: 1
* arithmetic on big values, concatenation, repetition, slicing, ``in`` on sequences,
  method calls on str/list/dict/set: 1 + size/32 (size = elements or characters involved)
* ``==`` of two dicts of one length: 1 more per key; of two lists/tuples 1 more per 8
  elements; a string searched in a list/tuple: 1 more per 8 elements beyond 64
* sorted / list.sort: 1 + n*log2(n), plus (1 + log2(n)) times the nested size of the
  values compared when they are containers (min/max: the nested size once)
* context calls: see ``api.Context``
* starting to iterate, copy or compare a dict, set, frozenset or dict view: one gas per 256
  slots its table holds beyond its live entries (``slots.py``; 0 unless the container is
  sparse -- most of a big dict deleted -- or larger than 341 keys / 76 set elements)
* dict keys / set elements: integers only below 2**61 - 1 in magnitude (alone or nested);
  a tuple/frozenset whose hash other recorded keys share pays 1 + walked/16 per such key
  when inserted, looked up or walked by a set operation (``hashguard.py``; 0 otherwise)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from gc import get_referents
from itertools import chain
from typing import Any

from node.sandbox import types as t
from node.sandbox.errors import (
    Abort,
    ContractError,
    MemoryLimit,
    OutOfGas,
    RecursionLimit,
    SizeLimit,
)
from node.sandbox.hashguard import HashLedger, big_int_error, probe_hash, stable_hash
from node.sandbox.slots import DICT_FREE_SIZEOF, SCANNED, SET_FREE_SIZEOF, VIEWS, slack_gas

CALL = 10
MAX_KEY_DEPTH = 64  # tuples nested deeper cannot be dict keys, set elements or looked up
INT_KEY_BOUND = 2**61 - 1  # hashguard.INT_HASH_MODULUS: |int| keys/elements stay below it
FREE_SEARCH = 64  # elements of a list/tuple a string is searched in before the per-8 charge
COLLISION_ELEMENTS = 16  # a colliding value's comparison costs one unit per 16 elements walked
_RECORDED_TYPES = frozenset({tuple, frozenset})  # values whose hash collisions the ledger tracks
_SIZED = (str, list, tuple, dict, set, frozenset)
_SEQ = (str, list, tuple)
_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
_SIZED_OR_VIEW: frozenset[type] = frozenset(_SIZED + _VIEWS)
_HASHED = (dict, set, frozenset)
_NESTING = frozenset({list, tuple, dict})  # containers compared element by element
_SET_LIKE: frozenset[type] = frozenset({set, frozenset, *_VIEWS})  # operations hash elements
_SET_VIEWS: frozenset[type] = frozenset({type({}.keys()), type({}.items())})  # set operators build sets of them
_ITEMS_VIEW: type = type({}.items())
# elements whose comparison is more than O(1): keys/items views compare like sets (an
# items view also compares each value), ``[d.keys()] == [e.keys()]`` walks both dicts
_DEEP = _NESTING | {set, frozenset} | _SET_VIEWS
_COMPARED = _DEEP | {str}  # values whose comparison walks them (strings: memcmp)
MAX_COMPARE_DEPTH = 100
_SPEC_DIGITS = re.compile(r"\d{5,}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{8,}")  # 64-bit addresses, not 0x110000

# Method names of builtin types that contract code may call (format/encode/translate & co
# are excluded: attribute traversal, bytes, unbounded expansion).
BUILTIN_METHODS: frozenset[str] = frozenset(
    name
    for typ in (str, list, dict, set, frozenset, tuple, int)
    for name in dir(typ)
    if not name.startswith("_")
) - {
    "format",
    "format_map",
    "encode",
    "maketrans",
    "translate",
    "expandtabs",
    "from_bytes",
    "to_bytes",
}

# Methods whose cost does not depend on the receiver's size.
_CONSTANT_TIME = frozenset(
    {
        "append",
        "get",
        "setdefault",
        "add",
        "discard",
        "keys",
        "values",
        "items",
        "popitem",
        "bit_length",
        "bit_count",
        "conjugate",
        "as_integer_ratio",
    }
)


def alloc_cost(n: int, is_str: bool) -> int:
    """Gas for building a string of n characters (1 per 32) or a collection of n
    references (1 per 4): about one gas per 32 bytes allocated."""
    return 1 + (n >> 5 if is_str else n >> 2)


def _log2(n: int) -> int:
    return max(1, n.bit_length())


class TypeProxy:
    """Stands for a builtin type (``list``, ``str`` ...) in contract code.

    Calling it converts with metering; ``isinstance(x, list)`` still works; ``str.lower``
    is routed through the meter like a method call.
    """

    __slots__ = ("_meter", "_type")

    def __init__(self, meter: Meter, typ: type) -> None:
        self._meter = meter
        self._type = typ

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._meter.construct(self._type, args, kw)

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self._type)

    def __repr__(self) -> str:
        return f"<class '{self._type.__name__}'>"


class Meter:
    """Gas counter and limit checks of one invocation."""

    __slots__ = ("_text_len", "aborted", "depth", "hashes", "left", "limit", "limits", "max_coll",
                 "max_int_bits", "max_str")

    def __init__(self, gas_limit: int, limits: t.SandboxLimits) -> None:
        self.reset(gas_limit, limits)

    def reset(self, gas_limit: int, limits: t.SandboxLimits, hashes: HashLedger | None = None) -> None:
        """Start a new invocation (a worker reuses one meter); ``hashes``: the hash ledger of
        the module body whose values this call uses (:mod:`hashguard`)."""
        self.hashes = HashLedger(hashes)
        self.limit = gas_limit
        self.left = gas_limit
        self.limits = limits
        self.depth = 0
        self.max_str = limits.max_str_len
        self.max_coll = limits.max_collection_len
        self.max_int_bits = limits.max_int_bits
        self.aborted: Abort | None = None
        self._text_len = 0

    # -- core -------------------------------------------------------------------------
    def used(self) -> int:
        return min(self.limit, self.limit - self.left)

    def fail(self, exc: Abort) -> Abort:
        """Remember the first abort (so it is reported even if something swallowed it)."""
        if self.aborted is None:
            self.aborted = exc
        return exc

    def gas(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))

    def enter(self, extra: int = 0) -> None:
        """A contract function is called (``extra``: the gas of a large body's static weight)."""
        self.left -= CALL + extra
        if self.left < 0:
            raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
        self.depth += 1
        if self.depth > self.limits.max_recursion_depth:
            raise self.fail(
                RecursionLimit(f"call depth exceeds {self.limits.max_recursion_depth}")
            )

    def leave(self) -> None:
        self.depth -= 1

    def size_error(self, what: str, size: int, limit: int) -> Abort:
        return self.fail(SizeLimit(f"{what} of size {size} exceeds the limit of {limit}"))

    def check_len(self, n: int, is_str: bool) -> None:
        limit = self.max_str if is_str else self.max_coll
        if n > limit:
            raise self.size_error("string" if is_str else "collection", n, limit)

    def check_int(self, v: int) -> int:
        if v.bit_length() > self.max_int_bits:
            raise self.size_error("integer (bits)", v.bit_length(), self.max_int_bits)
        return v

    def reraise(self, exc: BaseException) -> None:
        """Called first in every except handler: interpreter limits are not catchable."""
        if isinstance(exc, MemoryError):
            raise self.fail(MemoryLimit("memory limit reached"))
        if isinstance(exc, RecursionError):
            raise self.fail(RecursionLimit("interpreter recursion limit reached"))

    # -- hashing ------------------------------------------------------------------------
    def key(self, k: Any) -> Any:
        """Admit a dict key only if it is hashable in a deterministic way.

        Functions, contexts, exceptions, iterators... hash by memory address; a frozenset
        key iterates in hash order, so its elements follow the set-element rule.  Integers
        must be below 2**61 - 1 in magnitude (:mod:`hashguard`: larger ones share hashes
        with smaller ones); a tuple or frozenset pays for the recorded keys sharing its
        hash (:meth:`_collided`; nothing unless hashes collide).
        """
        tk = type(k)
        if tk is str or tk is bool or k is None:
            return k
        if tk is int:
            if -INT_KEY_BOUND < k < INT_KEY_BOUND:
                return k
            raise big_int_error(k)
        if tk is tuple or tk is frozenset:
            walked, has_none = self._admit_nested(k, True)
            n = self.hashes.admit(k, stable_hash(k, True) if has_none else hash(k))
            if n:
                self._collided(n, walked)
            return k
        raise TypeError(
            f"{tk.__name__} cannot be a set element or dict key in a contract "
            "(only str, int, bool, None and tuples of them)"
        )

    def elem(self, k: Any) -> Any:
        """Admit a set element: sets iterate in hash order, so the hash itself must be the
        same on every peer -- str/int/bool and tuples/frozensets of them (not None, whose
        hash is its address in Python 3.11); integers and tuples as for :meth:`key`."""
        tk = type(k)
        if tk is str or tk is bool:
            return k
        if tk is int:
            if -INT_KEY_BOUND < k < INT_KEY_BOUND:
                return k
            raise big_int_error(k)
        if tk is tuple or tk is frozenset:
            walked = self._admit_nested(k, False)[0]
            n = self.hashes.admit(k, hash(k))
            if n:
                self._collided(n, walked)
            return k
        raise TypeError(
            f"{tk.__name__} cannot be a set element or dict key in a contract "
            "(set elements: str, int, bool and tuples of them)"
        )

    def _admit_nested(self, k: tuple[Any, ...] | frozenset[Any], none_ok: bool) -> tuple[int, bool]:
        """The key/element rules inside a tuple (``none_ok``: a dict key's tuple may hold
        None), charging one gas per element walked (:meth:`hash_cost`: hashing walks the same
        elements, once per reference, so tuples sharing sub-tuples cost what they are) and
        refusing nesting deeper than :data:`MAX_KEY_DEPTH` (CPython hashes a tuple
        recursively in C, without a recursion guard).  A frozenset is not walked again:
        every way of building one checked its elements.  The first offending element (in
        order) names the error, with the rule's own message.  Returns the elements walked
        and whether a None was met (for :meth:`_collided`)."""
        if type(k) is tuple:  # fast path: a flat tuple of admissible leaves (most keys)
            has_none = False
            for v in k:
                tv = type(v)
                if tv is str or tv is bool or (tv is int and -INT_KEY_BOUND < v < INT_KEY_BOUND):
                    continue
                if none_ok and v is None:
                    has_none = True
                    continue
                break
            else:
                walked = 1 + len(k)  # what hash_cost charges for it
                self.left -= walked
                if self.left < 0:
                    raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
                return walked, has_none
        walked = self.hash_cost(k)
        if type(k) is frozenset:
            return walked, False
        has_none = False
        stack: list[Any] = [k]
        while stack:
            v = stack.pop()
            tv = type(v)
            if tv is int:
                if not -INT_KEY_BOUND < v < INT_KEY_BOUND:
                    raise big_int_error(v)
                continue
            if tv is str or tv is bool or tv is frozenset:
                continue
            if none_ok and v is None:
                has_none = True
                continue
            if tv is tuple:
                stack.extend(reversed(v))
            elif none_ok:
                raise TypeError(
                    f"{tv.__name__} cannot be a set element or dict key in a contract "
                    "(only str, int, bool, None and tuples of them)"
                )
            else:
                raise TypeError(
                    f"{tv.__name__} cannot be a set element or dict key in a contract "
                    "(set elements: str, int, bool and tuples of them)"
                )
        return walked, has_none

    def _collided(self, n: int, walked: int) -> None:
        """A key or element was recorded in the hash ledger (:mod:`hashguard`) where ``n``
        other recorded values share its hash: CPython compares it with each of them (a
        chain of colliding keys), one unit each of ``1 + walked // COLLISION_ELEMENTS``."""
        self.left -= n * (1 + walked // COLLISION_ELEMENTS)
        if self.left < 0:
            raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))

    def probe(self, v: Any, walked: int = 0) -> None:
        """A lookup of ``v`` (subscript, ``in``, ``get``, ``pop``, ``discard``, a set
        operation's element...): once two recorded keys share a hash, a tuple/frozenset
        whose hash is shared pays like :meth:`_collided` (nothing before: a lookup without
        colliding keys compares at most one entry)."""
        if not self.hashes.hot or (type(v) is not tuple and type(v) is not frozenset):
            return
        h = probe_hash(v)
        if h is None:
            return
        n = self.hashes.probe(h)
        if n:
            self.left -= n * (1 + (walked or len(v)) // COLLISION_ELEMENTS)
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))

    def rehash(self, v: Any) -> Any:
        """``v``, a dict/set/frozenset or keys/items view about to be copied, merged or
        compared entry by entry.  Once hashes collided (nothing before): 1 gas per 32
        entries for counting its tuples/frozensets (a scan in C), then 2 gas for each of
        them plus its chain (:meth:`probe`)."""
        if self.hashes.hot:
            tv = type(v)
            if tv is dict or tv is set or tv is frozenset or tv in _SET_VIEWS:
                self.gas(1 + len(v) // 32)
                recorded = sum(map(_RECORDED_TYPES.__contains__, map(type, v)))
                if recorded:
                    self.gas(2 * recorded)
                    for x in v:
                        tx = type(x)
                        if tx is tuple:
                            # finding its hash walks every element (each reference of a
                            # shared sub-tuple: ``t = (t, t)`` 20 times is 2**20 of them),
                            # in CPython's tuplehash and in probe_hash, on every rehash --
                            # not only when the key was admitted (an items view's values
                            # were never charged at all)
                            self.probe(x, self.hash_cost(x))
                        elif tx is frozenset:
                            self.probe(x)  # its hash is cached, its elements were admitted
        return v

    def hashed(self, v: Any) -> Any:
        """A subscript (``d[k]``, ``d[a, b]``, load or delete): a tuple is charged like
        hashing it (and refused beyond :data:`MAX_KEY_DEPTH`) and like a lookup
        (:meth:`probe`); returned unchanged."""
        tv = type(v)
        if tv is tuple:
            walked = self.hash_cost(v)
            if self.hashes.hot:
                self.probe(v, walked)
        elif tv is frozenset and self.hashes.hot:
            self.probe(v)
        return v

    def scan(self, v: Any, times: int = 1) -> Any:
        """``v``, after charging ``times`` scans of its slack when it is a dict, set,
        frozenset or dict view: the deleted entries or empty slots an iteration walks
        before and between its live ones (:func:`slots.slack_gas`; 0 for dense ones)."""
        tv = type(v)
        if tv is dict:
            if v.__sizeof__() < DICT_FREE_SIZEOF:  # fewer slots than one gas's worth
                return v
        elif tv is set or tv is frozenset:
            if v.__sizeof__() < SET_FREE_SIZEOF:
                return v
        elif tv in VIEWS:
            if get_referents(v)[0].__sizeof__() < DICT_FREE_SIZEOF:  # the view's dict
                return v
        else:
            return v
        cost = slack_gas(v)
        if cost:
            self.left -= cost * times
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
        return v

    def targets(self, value: Any, shape: Any) -> Any:
        """The value of an unpacking assignment without a star where the target is a
        tuple/list (``a, b = value``, ``for k, (a, b) in ...``), charged :meth:`scan` at every
        level where CPython will iterate it to unpack it (a dict holding two keys among
        300,000 deleted ones was unpacked for free).  ``shape`` (from the instrumenter) is
        ``()`` for a target holding only names, else a tuple per element: None (a name),
        ``"*"`` (a starred name), a shape (a nested target) or ``("**", shape)`` (a starred
        nested target).  A value that is not a tuple or list where a nested target needs its
        elements is materialized first (charged per element); where the lengths do not fit,
        the value is returned and Python raises its usual ValueError."""
        tv = type(value)
        if tv in SCANNED:
            self.scan(value)
        if not shape:
            return value
        if (tv is tuple or tv is list) and _plain_unpack(value, shape):
            return value  # nothing to scan or materialize (``for k, (a, b) in pairs``)
        if tv is not tuple and tv is not list:
            value = self.materialize(value)
        n = len(shape)
        star = next((i for i, c in enumerate(shape) if c == "*" or (type(c) is tuple and c[:1] == ("**",))), -1)
        if len(value) != n if star < 0 else len(value) < n - 1:
            return value
        out = value
        for i, c in enumerate(shape):
            if c is None or c == "*":
                continue
            if i == star:  # ``*(b, c)``: the starred values are unpacked again
                end = len(value) - (n - 1 - star)
                part = list(value[star:end])
                new = self.targets(part, c[1])
                if new is not part:
                    out = list(out)
                    out[star:end] = new
                continue
            j = i if star < 0 or i < star else len(value) - (n - i)
            x = value[j]
            new = self.targets(x, c)
            if new is not x:
                if out is value:
                    out = list(value)
                out[j] = new
        return out

    def step(self, value: Any, shape: Any, n: int = 1) -> Any:
        """One iteration of a ``for`` loop whose target is a tuple/list: its gas (``n``,
        like ``__rx_gas__``) and :meth:`targets` of the element in one call."""
        self.left -= n
        if self.left < 0:
            raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
        if shape:
            return self.targets(value, shape)
        if type(value) in SCANNED:
            self.scan(value)
        return value

    def delitem(self, obj: Any, key: Any) -> None:
        """``del obj[key]``: a list moves the items after ``key`` (1 + moved/32: ``del lst[0]``
        pays like ``lst.pop(0)``, ``del lst[-1]`` 1), a tuple key is charged like hashing it."""
        if type(obj) is list:
            n = len(obj)
            moved = n - 1 - (key if key >= 0 else n + key) if type(key) is int and -n <= key < n else 0
            self.left -= 1 + moved // 32
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
        else:
            self.hashed(key)
        del obj[key]

    def hash_elements(self, *operands: Any, inserting: bool = False) -> None:
        """Before a set operation or comparison with a set or dict view: every element of
        the sized operands that will be hashed -- tuples, e.g. a dict's items -- charged
        like :meth:`hash_cost` (one gas per element besides).  Elements that CPython may
        put into a new set are first refused or recorded like set elements (big integers
        refused, tuples/frozensets recorded and charged their chains, :meth:`_collided`):
        a view's (``d.items() - x`` builds a set of the items) and, when ``inserting``
        (``|``, ``^``), a list's or tuple's.  Then, once hashes collided, every other
        tuple/frozenset element pays its chain (:meth:`probe`)."""
        looked_up: list[tuple[Any, int]] = []
        for v in operands:
            tv = type(v)
            if tv in _SIZED_OR_VIEW and tv is not str and tv is not dict:
                self.gas(1 + len(v))
                self.scan(v)
                if tv is _ITEMS_VIEW:
                    self._item_values(v)
                foreign = tv in _SET_VIEWS or (inserting and (tv is list or tv is tuple))
                for x in v:
                    tx = type(x)
                    if tx is tuple or tx is frozenset:
                        walked = self.hash_cost(x) if tx is tuple else len(x)
                        if not foreign:
                            looked_up.append((x, walked))
                            continue
                        h = probe_hash(x)
                        if h is not None:
                            n = self.hashes.admit(x, h)
                            if n:
                                self.gas(n * (1 + walked // COLLISION_ELEMENTS))
                    elif foreign and tx is int and not -INT_KEY_BOUND < x < INT_KEY_BOUND:
                        raise big_int_error(x)
        if self.hashes.hot:
            for x, walked in looked_up:
                self.probe(x, walked)

    def _item_values(self, view: Any) -> None:
        """An items view compared or searched as a set: each item found in the other operand
        has its value compared (``{1: big_list}.items() == e.items()`` compares the lists,
        in C): charged like comparing its dict (:meth:`nested_cost`; flat values: only their
        strings' lengths)."""
        d = get_referents(view)[0]
        if not _DEEP.isdisjoint(map(type, d.values())) or any(type(x) is str for x in d.values()):
            self.nested_cost(d)

    def hash_cost(self, v: Any) -> int:
        """Charge the work of hashing ``v`` (tuples and frozensets walked: one gas per
        element) and refuse tuples nested deeper than :data:`MAX_KEY_DEPTH`; returns the
        gas charged (elements walked)."""
        walked = 0
        stack = [(v, 0)]
        while stack:
            x, depth = stack.pop()
            tx = type(x)
            if tx is not tuple and tx is not frozenset:
                continue
            if depth >= MAX_KEY_DEPTH:
                raise self.fail(RecursionLimit(f"tuple nested deeper than {MAX_KEY_DEPTH} hashed"))
            cost = 1 + len(x) + (slack_gas(x) if tx is frozenset else 0)
            walked += cost
            self.left -= cost
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            if tx is tuple:
                stack.extend((y, depth + 1) for y in x if type(y) is tuple or type(y) is frozenset)
        return walked

    def keys(self, items: Iterable[Any]) -> list[Any]:
        """Materialize ``*x`` inside a set display, checking every element."""
        out = self.materialize(items)
        for x in out:
            self.elem(x)
        return out

    def _pair_keys(self, pairs: list[Any]) -> None:
        """Check the keys of ``dict(pairs)`` / ``d.update(pairs)``.  A pair that is not a
        tuple or list (an iterator such as ``reversed([v, k])``, a string, a set...) is
        materialized in place first -- dict() would take its first item as the key
        unchecked (a function, hashed by its address, became a key)."""
        for i, p in enumerate(pairs):
            tp = type(p)
            if tp is not tuple and tp is not list:
                if tp is str or tp is dict:
                    continue  # a key of a str pair is a str; a dict pair's keys were checked
                p = pairs[i] = tuple(self.materialize(p))
            if len(p) == 2:
                self.key(p[0])

    # -- iteration ----------------------------------------------------------------------
    def it(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Iterate, charging one gas per element (comprehensions, unpacking, consumers) and,
        first, the slack of a dict, set or view (:meth:`scan`)."""
        if type(iterable) in SCANNED:
            self.scan(iterable)
        for x in iterable:
            self.left -= 1
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            yield x

    def itt(self, iterable: Iterable[Any], shape: Any) -> Iterator[Any]:
        """:meth:`it` for a comprehension whose target is a tuple/list: each element is
        checked like :meth:`targets` before it is unpacked."""
        if type(iterable) in SCANNED:
            self.scan(iterable)
        for x in iterable:
            self.left -= 1
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            if shape:
                yield self.targets(x, shape)
            else:
                if type(x) in SCANNED:
                    self.scan(x)
                yield x

    def itw(self, iterable: Iterable[Any], n: int) -> Iterator[Any]:
        """Charge ``n`` more gas per element of a comprehension whose element code is large
        (the instrumenter's static weight; :meth:`it` charges the element itself)."""
        for x in iterable:
            self.left -= n
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            yield x

    def materialize(self, iterable: Iterable[Any]) -> list[Any]:
        """List of an iterable, charging per element and bounded in length (and the slack
        of a dict, set or view, :meth:`scan`)."""
        if type(iterable) in SCANNED:
            self.scan(iterable)
        if type(iterable) in _SIZED:
            n = len(iterable)  # type: ignore[arg-type]
            self.check_len(n, False)
            self.gas(1 + n)
            return list(iterable)
        out: list[Any] = []
        limit = self.max_coll
        for x in iterable:
            self.left -= 1
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            out.append(x)
            if len(out) > limit:
                raise self.size_error("collection", len(out), limit)
        return out

    def unpack(self, value: Any, shape: Any) -> Any:
        """The value of a starred assignment (``a, *rest = value``), as a list charged per
        element and bounded in length, nested parts unpacked the same way (``shape`` from
        the instrumenter: a tuple per list/tuple target, ``"*"`` or ``("**", inner)`` for the
        starred one, None for a plain name).  Where the lengths do not fit, the value is
        returned as is and Python raises its usual ValueError."""
        if shape is None:
            return value
        items = self.materialize(value)
        n = len(shape)
        star = next((i for i, s in enumerate(shape) if s == "*" or (type(s) is tuple and s[0] == "**")), -1)
        if len(items) != n if star < 0 else len(items) < n - 1:
            return items
        for i, s in enumerate(shape):
            if s is not None and i != star:
                j = i if star < 0 or i < star else len(items) - (n - i)
                items[j] = self.unpack(items[j], s)
        if star >= 0 and shape[star] != "*":  # ``*(b, c)``: the starred values unpack again
            end = len(items) - (n - 1 - star)
            items[star:end] = self.unpack(items[star:end], shape[star][1])
        return items

    def unpacks(self, iterable: Iterable[Any], shape: Any) -> Iterator[Any]:
        """Elements of a ``for`` / comprehension whose target has a star, each unpacked
        like :meth:`unpack` (the loop itself is charged as usual)."""
        for x in iterable:
            yield self.unpack(x, shape)

    def sized(self, value: Any) -> Any:
        """Argument of ``*x`` / ``**x`` unpacking: charge its size (and slack)."""
        if type(value) in _SIZED:
            self.scan(value)
            self.gas(1 + len(value))
            if self.hashes.hot and type(value) is dict:
                self.rehash(value)  # ``{**d, **e}`` inserts d's keys again
            return value
        return self.materialize(value)

    # -- operators ----------------------------------------------------------------------
    def add(self, a: Any, b: Any) -> Any:
        ta = type(a)
        if ta is int and type(b) is int:
            r = a + b
            if r.bit_length() > self.max_int_bits:
                raise self.size_error("integer (bits)", r.bit_length(), self.max_int_bits)
            return r
        if ta is str and type(b) is str:
            n = len(a) + len(b)
            if n > self.max_str:
                raise self.size_error("string", n, self.max_str)
            self.left -= 1 + (n >> 5)
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            return a + b
        if ta in _SEQ and type(b) is ta:
            n = len(a) + len(b)
            self.check_len(n, ta is str)
            self.gas(alloc_cost(n, ta is str))
        return a + b

    def mul(self, a: Any, b: Any) -> Any:
        ta, tb = type(a), type(b)
        if ta in (int, bool) and tb in (int, bool):
            bits = a.bit_length() + b.bit_length()
            if bits > self.max_int_bits + 1:
                raise self.size_error("integer (bits)", bits, self.max_int_bits)
            self.gas(1 + bits // 256)
            return self.check_int(a * b)
        if ta in _SEQ and tb in (int, bool):
            seq, count = a, b
        elif tb in _SEQ and ta in (int, bool):
            seq, count = b, a
        else:
            return a * b
        n = len(seq) * max(0, count)
        self.check_len(n, type(seq) is str)
        self.gas(alloc_cost(n, type(seq) is str))
        return a * b

    def pow(self, a: Any, b: Any, mod: Any = None) -> Any:
        if type(a) in (int, bool) and type(b) in (int, bool):
            if b < 0:
                raise ValueError("negative exponent: floats are not allowed in contracts")
            if mod is not None:
                if type(mod) not in (int, bool) or mod == 0:
                    raise ValueError("pow() modulus must be a non-zero integer")
                # square-and-multiply: ~bits(b) products of bits(mod)-bit numbers, each
                # quadratic in its size (4096-bit operands: ~0.13-0.16 s, 786,433 gas)
                m = max(1, mod.bit_length())
                # plus a per-step term: with a small modulus the steps themselves dominate
                nb = b.bit_length()
                self.gas(1 + nb * m // 64 + nb * m * m // 131072)
                return pow(a, b, mod)
            bits = (abs(a).bit_length() - 1) * b if abs(a) > 1 else 1
            if bits > self.max_int_bits:
                raise self.size_error("integer (bits)", bits, self.max_int_bits)
            self.gas(1 + bits // 64)
            return self.check_int(a**b)
        if mod is not None:
            return pow(a, b, mod)
        return a**b

    def lshift(self, a: Any, b: Any) -> Any:
        if type(a) in (int, bool) and type(b) in (int, bool) and b > 0:
            bits = a.bit_length() + b
            if a and bits > self.max_int_bits:
                raise self.size_error("integer (bits)", bits, self.max_int_bits)
        return a << b

    def mod(self, a: Any, b: Any) -> Any:
        if type(a) is str:
            return self.percent_format(a, b)
        self.division(a, b)
        return a % b

    def division(self, a: Any, b: Any) -> None:
        """Charge ``a // b``, ``a % b`` or ``divmod(a, b)`` of big integers: schoolbook long
        division, (bits(a) - bits(b) + 1) * bits(b) / 2**15 (a 4096-bit number divided by a
        2048-bit one: ~12 us for 128 gas; it was free, 5-18 us of CPU per gas of a loop of
        them).  Nothing below 2**90 or so: the amounts and counters of ordinary code pay as
        before (a division by a small literal is not metered at all: it is linear)."""
        if type(a) is int and type(b) is int:
            nb = b.bit_length()
            cost = (a.bit_length() - nb + 1) * nb >> 15
            if cost > 0:
                self.gas(cost)

    def other(self, op: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
        """Sub, FloorDiv, RShift, BitAnd/Or/Xor: results are bounded by the operands (dict
        and set operands pay their slack: the operation walks their tables)."""
        if op is operator.floordiv or op is operator.ifloordiv:
            self.division(a, b)
        if type(a) in SCANNED or type(b) in SCANNED:
            self.scan(a)
            self.scan(b)
        if op is operator.ior and type(a) is dict and type(b) is not dict:
            b = self.materialize(b)
            self._pair_keys(b)
        if self.hashes.hot and (type(a) is dict or type(b) is dict):
            self.rehash(a)  # ``d | e`` copies d and inserts e's keys
            self.rehash(b)
        if type(a) in _SET_LIKE or type(b) in _SET_LIKE:  # elements get hashed
            if type(b) not in _SIZED_OR_VIEW:
                b = self.materialize(b)
            self.hash_elements(a, b, inserting=op in _INSERTING)
        r = op(a, b)
        tr = type(r)
        if tr in _SIZED:
            self.gas(alloc_cost(len(r), tr is str))
            if (tr is set or tr is frozenset) and not (
                type(a) in (set, frozenset) and type(b) in (set, frozenset)
            ):
                # e.g. dict.keys() | [something]: r may hold what a set element may not --
                # None, or an item whose value is None or a function -- hashed by address,
                # so r's order differs between workers: refuse before charging any element
                # (the gas and the message named must not depend on that order)
                refusals = [e for e in map(_elem_refusal, r) if e is not None]
                if refusals:
                    raise min(refusals, key=lambda e: (type(e).__name__, str(e)))
                for x in r:
                    self.elem(x)
        elif tr is int:
            self.check_int(r)
        return r

    _INPLACE: dict[str, Callable[[Any, Any], Any]] = {  # noqa: RUF012 - read-only table
        "add": operator.iadd,
        "mul": operator.imul,
    }

    def iadd(self, a: Any, b: Any) -> Any:
        """``a += b`` (in place for lists, like Python)."""
        if type(a) is list:
            b = self.materialize(b)
            n = len(a) + len(b)
            self.check_len(n, False)
            self.gas(alloc_cost(n, False))
            a += b
            return a
        return self.add(a, b)

    def imul(self, a: Any, b: Any) -> Any:
        if type(a) is list:
            self.mul(a, b)  # checks and charges the size
            a *= b
            return a
        return self.mul(a, b)

    def contains(self, item: Any, container: Any) -> bool:
        """``item in container`` with a cost linear in the work done.

        Sequences are charged by length, hashed containers by the item, a range by nothing more
        than a call when the item is an int; anything else (iterators, map, enumerate, ...) is
        walked through :meth:`it`, one gas per element, so an unmetered C loop cannot hide in ``in``.
        """
        tc = type(container)
        if tc in _SEQ:
            self.left -= 1 + len(container) // 32
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            if type(item) in _COMPARED and tc is not str:
                self.nested_cost(container)  # each element is compared with the container
                if type(item) is str:
                    self._searched(container)
            return item in container
        if tc in _HASHED:
            self.left -= 1 + (len(item) // 32 if type(item) is str else 0)
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
            self.hashed(item)
            return item in container
        if tc is range and type(item) is int:
            self.gas(1)
            return item in container
        self.gas(1)
        if type(item) in _COMPARED:
            for x in self.it(container):
                if x is item:
                    return True
                if type(x) in _COMPARED:
                    self.nested_cost((x,))
                if x == item:
                    return True
            return False
        return any(x is item or x == item for x in self.it(container))

    def compare(self, op: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
        """Comparison of two non-literal operands: charge the sizes compared (nested
        containers element by element, see :meth:`nested_cost`)."""
        if type(a) in _SIZED:
            self.gas(len(a) // 32)
            if type(b) in _NESTING:
                self.nested_cost(a)
            if type(a) is dict and type(b) is dict and len(a) == len(b):
                # ``d == e`` looks every key of d up in e and compares the values (random
                # memory access: ~0.1-0.3 us per key; at len/32 it was 2.7-7 us per gas):
                # one gas per key, as a dict nested in a compared value pays
                self.gas(len(a))
            elif (type(a) is list or type(a) is tuple) and type(b) is type(a) and (
                    len(a) == len(b) or (op is not operator.eq and op is not operator.ne)):
                # element by element until one differs (distinct equal objects: ~40-80 ns
                # each; at len/32 it was 1.3-2.5 us per gas)
                self.gas(min(len(a), len(b)) // 8)
        if type(a) in _SET_LIKE or type(b) in _SET_LIKE:
            self.hash_elements(a, b)
        elif self.hashes.hot and type(a) is dict:
            self.rehash(a)  # each key of a is looked up in b
        return op(a, b)

    def compared(self, v: Any, walks: int) -> Any:
        """An operand of a chained comparison (``a < b < c``), taking part in ``walks``
        comparisons: charged what comparing it may walk (a comparison walks at most the
        smaller operand), like :meth:`compare` charges a single comparison; returned as is."""
        tv = type(v)
        if tv in _COMPARED and tv not in _SET_VIEWS:
            self.nested_cost((v,), walks)
        elif tv in _SET_LIKE:
            for _ in range(walks):
                self.hash_elements(v)
        if tv is dict and self.hashes.hot:
            for _ in range(walks):
                self.rehash(v)
        return v

    def _searched(self, seq: list[Any] | tuple[Any, ...]) -> None:
        """A string searched for in a list/tuple (``in``, ``index``, ``count``, ``remove``) is
        compared with each element: strings of its length by memcmp, ~40-80 ns each for
        distinct objects (at len/32, 2.4 us per gas): one more gas per 8 elements beyond
        the first :data:`FREE_SEARCH` (a few microseconds; the story's lookups in short
        tables pay as before)."""
        n = (len(seq) - FREE_SEARCH) >> 3
        if n > 0:
            self.left -= n
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))

    def nested_cost(self, v: Any, factor: int = 1) -> None:
        """Charge one gas per element of every container nested in ``v`` -- lists, tuples,
        dicts (keys and values), and the length of nested sets and strings (1 per 32
        characters) -- each reference walked again, as a comparison walks it (lists sharing
        sub-lists cost what they are), times ``factor`` (how often each may be compared);
        nesting deeper than :data:`MAX_COMPARE_DEPTH` is
        RECURSION_LIMIT (where CPython's own comparison would stop).  A container holding
        no container costs only its strings (its length is charged by the caller)."""
        tv = type(v)
        if tv not in _NESTING:
            return
        if tv is dict:
            # the type checks below (2), the walk of keys and values (2) and the comparison
            # itself each scan the table
            self.scan(v, 5 * factor)
            if _DEEP.isdisjoint(map(type, v.values())) and _DEEP.isdisjoint(map(type, v)):
                self._chars(chain(v, v.values()), factor)
                return
        elif _DEEP.isdisjoint(map(type, v)):
            self._chars(v, factor)
            return
        stack: list[tuple[Any, int]] = [(v, 0)]
        while stack:
            x, depth = stack.pop()
            if depth >= MAX_COMPARE_DEPTH:
                raise self.fail(RecursionLimit(f"values nested deeper than {MAX_COMPARE_DEPTH} compared"))
            cost = len(x)
            if type(x) is dict and depth:  # (the top one was charged above) this walk (keys,
                cost += 3 * slack_gas(x)  # values) and the comparison scan its table
            for y in (chain(x, x.values()) if type(x) is dict else x):
                ty = type(y)
                if ty in _NESTING:
                    stack.append((y, depth + 1))
                elif ty is str:
                    cost += len(y) >> 5
                elif ty is set or ty is frozenset:
                    cost += len(y) + slack_gas(y)
                elif ty is _ITEMS_VIEW:  # each item's key looked up, its value compared
                    stack.append((get_referents(y)[0], depth + 1))
                elif ty in _SET_VIEWS:
                    cost += len(y) + slack_gas(y)
            self.left -= cost * factor
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))

    def _chars(self, values: Iterable[Any], factor: int) -> None:
        """Charge the strings among ``values`` (1 per 32 characters, a comparison's memcmp)
        times ``factor``."""
        cost = sum(len(x) >> 5 for x in values if type(x) is str)
        if cost:
            self.left -= cost * factor
            if self.left < 0:
                raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))

    def slice(self, obj: Any, lower: Any, upper: Any, step: Any) -> Any:
        r = obj[lower:upper:step]
        if type(r) in _SIZED:
            self.gas(alloc_cost(len(r), type(r) is str))
        return r

    # -- text -------------------------------------------------------------------------------
    def text(self, v: Any, quote: bool = False, depth: int = 0) -> str:
        """Deterministic str()/repr() (no memory addresses); bounded in size."""
        if depth == 0:
            self._text_len = 0
        tv = type(v)
        if tv is str:
            out = repr(v) if quote else v
        elif tv is int or tv is bool or v is None:
            out = str(v)
        elif depth > 32:
            raise self.fail(RecursionLimit("value nested too deeply to format"))
        elif tv is list or tv is tuple or tv in (set, frozenset):
            self.gas(1 + len(v))
            self.scan(v)
            seq = sorted(v, key=_order) if tv in (set, frozenset) else v
            inner = self._joined([self._item(x, depth) for x in seq])
            if tv is list:
                out = f"[{inner}]"
            elif tv is tuple:
                out = f"({inner},)" if len(v) == 1 else f"({inner})"
            else:
                out = f"{{{inner}}}" if v else f"{tv.__name__}()"
        elif tv is dict:
            self.gas(1 + len(v))
            self.scan(v)
            inner = self._joined(
                [f"{self._item(k, depth)}: {self._item(x, depth)}" for k, x in v.items()]
            )
            out = f"{{{inner}}}"
        elif tv is ContractError:
            out = self.text(v.reason, False, depth + 1)
            if v.message:
                out += ": " + self.text(v.message, False, depth + 1)
        elif isinstance(v, Exception):
            args = v.args
            if len(args) == 1:
                out = self.text(args[0], quote=tv is KeyError, depth=depth + 1)
            else:
                out = self.text(args, quote, depth + 1) if args else ""
            # interpreter messages may embed reprs with memory addresses
            out = _ADDRESS.sub("0x?", out)
        else:
            out = f"<{tv.__name__}>"
        n = len(out)
        if n > self.max_str:
            raise self.size_error("string", n, self.max_str)
        if n > 64:
            self.gas(n // 32)
        return out

    def _item(self, v: Any, depth: int) -> str:
        """Text of one element, keeping a running total so shared sub-structures cannot
        blow up the output before the size check."""
        out = self.text(v, True, depth + 1)
        self._text_len += len(out)
        if self._text_len > self.max_str:
            raise self.size_error("string", self._text_len, self.max_str)
        return out

    def _joined(self, items: list[str]) -> str:
        return ", ".join(items)

    def fmt(self, value: Any, conversion: int, spec: str) -> str:
        """One ``{value!c:spec}`` field of an f-string."""
        if conversion in (114, 97):  # !r, !a
            value = self.text(value, quote=True)
        if spec:
            if _SPEC_DIGITS.search(spec):
                raise self.size_error("format width", len(spec), 4)
            if type(value) not in (str, int, bool):
                value = self.text(value)
            out = format(value, spec)
            self.gas(1 + len(out) // 32)
            return out
        if type(value) is str:
            n = len(value)
            if n > self.max_str:
                raise self.size_error("string", n, self.max_str)
            if n > 64:
                self.gas(n // 32)
            return value
        return self.text(value)

    def percent_format(self, fmt: str, args: Any) -> str:
        if "*" in fmt or _SPEC_DIGITS.search(fmt):
            raise self.size_error("format width", len(fmt), 4)
        if type(args) is tuple:
            values: Any = tuple(self._plain(a) for a in args)
        elif type(args) is dict:
            self.scan(args)
            values = {k: self._plain(a) for k, a in args.items()}
        else:
            values = self._plain(args)
        self.gas(1 + 4 * fmt.count("%"))  # the bound's parse and the conversions (~1 us each)
        bound = _percent_bound(fmt, values)
        if bound > self.max_str:  # refused before the string is built
            raise self.size_error("formatted string (upper bound)", bound, self.max_str)
        out: str = fmt % values
        self.check_len(len(out), True)
        self.gas(1 + len(out) // 32)
        return out

    def _plain(self, v: Any) -> Any:
        if type(v) in (str, int, bool) or v is None:
            return v
        return self.text(v)

    # -- builtins ---------------------------------------------------------------------------
    def construct(self, typ: type, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if typ is str:
            if kw or len(args) > 1:
                raise TypeError("str() takes one argument in contracts")
            return self.text(args[0]) if args else ""
        if typ is int:
            if args and type(args[0]) is str:
                self.gas(1 + len(args[0]) // 32)
            return self.check_int(int(*args, **kw))
        if typ is bool:
            return bool(*args)
        if typ in _LAZY:
            # enumerate/zip/map/filter/reversed over a dict, set or view: the iterator they
            # build walks its table when consumed (by whatever consumes it), charged here
            for a in args:
                self.scan(a)
            for a in kw.values():
                self.scan(a)
            return typ(*args, **kw)
        if typ is dict:
            if len(args) > 1:
                raise TypeError("dict() takes at most one positional argument")
            self.gas(len(kw))
            if not args:
                return dict(**kw)
            src = args[0]
            if type(src) is dict:
                self.scan(src)
                self.rehash(src)
            else:
                src = self.materialize(src)
                self._pair_keys(src)
            self.gas(1 + len(src))
            return dict(src, **kw)
        if kw or len(args) > 1:
            raise TypeError(f"{typ.__name__}() takes at most one argument")
        if not args:
            return typ()
        items = self.materialize(args[0])
        if typ is set or typ is frozenset:
            for x in items:
                self.elem(x)
        return typ(items)

    def sorted(self, iterable: Iterable[Any], /, *, key: Any = None, reverse: bool = False) -> Any:
        items = self.materialize(iterable)
        self.sort_list(items, key, reverse)
        return items

    def sort_list(self, items: list[Any], key: Any, reverse: Any) -> None:
        """Sort ``items`` in place like ``list.sort``, charged before any comparison runs:
        ``1 + n*log2(n)`` comparisons, and when the values compared (the keys, if ``key``
        is given) are containers, their nested size times ``1 + log2(n)`` -- a merge
        compares a value with others at most until it is placed, and a comparison of two
        values walks at most the smaller, so each value's size is paid once per merge level.
        Strings pay 1 per 32 characters the same way.  Tuples whose first items are
        distinct strings or integers (``sorted(d.items())``) are decided by their first
        items and pay nothing more.  With ``key`` the keys are
        computed first, one call per item in order, as ``list.sort`` does -- and, as there,
        the list is empty while they are (a key function sees ``[]``; one that adds to the
        list gets ``ValueError: list modified during sort``, the list keeps its own items,
        sorted, rather than looping over the items it appends)."""
        n = len(items)
        self.gas(1 + n * _log2(n))
        if key is None:
            self._sort_cost(items, n)
            items.sort(reverse=reverse)
            return
        [].sort(reverse=reverse)  # list.sort's TypeError for a bad ``reverse``, before any key call
        saved = items[:]
        items.clear()
        try:
            keys = [key(x) for x in saved]
            self._sort_cost(keys, n)
            # list.sort itself, fed the keys already computed (it asks for them once per item,
            # in order): the same comparisons, order, stability and, when a comparison raises,
            # the same partly sorted list as an unmetered ``items.sort(key=key)``
            next_key = iter(keys).__next__
            saved.sort(key=lambda _item: next_key(), reverse=reverse)
        finally:
            modified = bool(items)
            items[:] = saved
        if modified:
            raise ValueError("list modified during sort")

    def _sort_cost(self, values: list[Any], n: int) -> None:
        heads = _distinct_heads(values)
        if heads is None:
            self.nested_cost(values, 1 + _log2(n))
        else:
            self._chars(heads, 1 + _log2(n))

    def _compared(self, v: Any) -> Any:
        """``v``, after charging what comparing it with another value may walk."""
        tv = type(v)
        if tv is str:
            # what nested_cost charges a string (1 per 32 characters), without its walk: that
            # walk, for the 0 gas of a short string, made min/max over many short strings
            # cost ~0.5-0.7 us of CPU per gas
            cost = len(v) >> 5
            if cost:
                self.left -= cost
                if self.left < 0:
                    raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
        elif tv in _COMPARED:
            self.nested_cost((v,))
        return v

    def consume(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """min/max over a metered iterable or over several arguments: one gas per value, and
        the nested size of every value (or key) that is a container -- compared once with the
        best so far, a value walks at most its own size."""
        key = kw.get("key")
        if key is not None:
            compared = self._compared

            def charged(v: Any) -> Any:
                return compared(key(v))

            kw["key"] = charged
        if len(args) == 1:
            values: Iterable[Any] = self.it(args[0])
            if key is None:
                values = map(self._compared, values)
            return fn(values, **kw)
        self.gas(len(args))
        if key is None:
            self.nested_cost(args)
        return fn(*args, **kw)

    def round(self, number: Any, ndigits: Any = None) -> Any:
        if type(ndigits) is int and abs(ndigits) > 4096:
            raise self.size_error("round() digits", abs(ndigits), 4096)
        if type(number) is int and type(ndigits) is int and ndigits < 0:
            # CPython computes 10**-ndigits and divides by it: ``round(a, -4096)`` of a 4096-bit
            # ``a`` took ~31 us and was free -- charged like that power (~bits**2 / 2**20) and
            # the division (:meth:`division`); 0 for ordinary roundings
            kbits = -ndigits * 3322 // 1000 + 1  # bits of 10**-ndigits
            nb = number.bit_length()
            cost = (kbits * kbits >> 20) + (max(0, nb - kbits + 1) * kbits >> 15)
            if cost:
                self.gas(cost)
        return round(number, ndigits)

    def sum(self, iterable: Iterable[Any], start: int = 0) -> int:
        if type(start) not in (int, bool):
            raise TypeError("sum() start must be an integer in contracts")
        total = start
        for x in self.it(iterable):
            if type(x) not in (int, bool):
                raise TypeError("sum() adds integers only in contracts")
            total += x
        return self.check_int(total)

    # -- methods ----------------------------------------------------------------------------
    def meth(self, obj: Any, name: str, /, *args: Any, **kw: Any) -> Any:
        """``obj.name(*args, **kw)`` where ``name`` is a builtin method name."""
        tobj = type(obj)
        if tobj in _SIZED_OR_VIEW:
            special = _SPECIAL.get(name)
            if special is not None:
                return special(self, obj, args, kw)
            if name in _CONSTANT_TIME:
                cost = 1
            elif name in _ALLOCATING:
                cost = alloc_cost(len(obj), False)
            else:
                cost = 1 + len(obj) // 32
        elif tobj is TypeProxy:
            return self._type_meth(obj, name, args, kw)
        elif obj is range and name in _SEARCHING:  # ``range.count(r, x)``: as ``r.count(x)``
            return self._range_meth(name, *args, **kw)
        elif tobj is range and name in _SEARCHING and args and type(args[0]) is not int and (
                type(args[0]) is not bool):
            # ``range.count(x)`` / ``index(x)`` answer an int in O(1) but compare anything else
            # with every int of the range in C (~20 ns each): ``range(10**7).count("x")`` ran
            # 0.2 s for 13 gas, ``range(10**18)`` until TIMEOUT -- one gas per 8 elements, like
            # a string searched in a list
            cost = 1 + _range_len(obj) // 8
        else:
            # context / caller (which meter themselves), ints, ranges, iterators
            cost = 1
        self.left -= cost
        if self.left < 0:
            raise self.fail(OutOfGas(f"gas limit {self.limit} exhausted"))
        if tobj in _HASHED and (name == "copy" or (name == "pop" and tobj is not dict)):
            self.scan(obj)  # a copy walks the table, set.pop from its finger (wrapping around)
            if name == "copy":
                self.rehash(obj)  # a table with deleted entries is copied key by key
        if args and tobj in _HASHED:
            self.hashed(args[0])  # d.get(t), s.discard(t)... hash the tuple
        elif name in _SEARCHING and args and type(args[0]) in _COMPARED and (tobj is list or tobj is tuple):
            self.nested_cost(obj)  # x is compared with each element
            if type(args[0]) is str:
                self._searched(obj)
        if tobj is list and name == "index" and args and not kw and type(args[0]) not in _SHORT_REPR:
            return self._list_index(obj, args)
        return getattr(obj, name)(*args, **kw)

    def _list_index(self, lst: list[Any], args: tuple[Any, ...]) -> int:
        """``lst.index(x[, start[, stop]])`` for an ``x`` whose repr may be long: CPython's
        ValueError is ``"%R is not in list"``, the repr of ``x`` built in C, unmetered
        (``[].index([[ "a" * 1000] * 1000] * 100)``: 10**8 characters, 0.18 s for 321 gas;
        10x more nesting: MEMORY_LIMIT).  The same search without that repr, failing with
        the message of ``tuple.index`` and ``list.remove`` (constant, catchable as before)."""
        x, bounds = args[0], args[1:]
        if len(bounds) > 2 or any(type(b) is not int and type(b) is not bool for b in bounds):
            return lst.index(*args)  # list.index's own TypeError, raised before any search
        start = 0
        seq = lst
        if bounds:
            start, stop, _ = slice(bounds[0], bounds[1] if len(bounds) > 1 else None).indices(len(lst))
            seq = lst[start:stop]
        try:
            return start + operator.indexOf(seq, x)
        except ValueError:
            raise ValueError("list.index(x): x not in list") from None

    def _type_meth(self, proxy: TypeProxy, name: str, args: tuple[Any, ...],
                   kw: dict[str, Any]) -> Any:
        typ = proxy._type
        if name == "fromkeys" and typ is dict:
            return _m_fromkeys(self, {}, args, kw)
        if not args or not isinstance(args[0], typ):
            raise TypeError(f"{typ.__name__}.{name}() needs a {typ.__name__} as first argument")
        return self.meth(args[0], name, *args[1:], **kw)

    def attr(self, obj: Any, name: str) -> Any:
        """``obj.name`` not directly called, where ``name`` is a builtin method name."""
        tobj = type(obj)
        if tobj is TypeProxy or tobj in _SIZED_OR_VIEW or tobj in (int, bool, range):
            # dict views and ranges too: a bound method taken from them was the raw one, called
            # unmetered (``f = d.keys().isdisjoint; f(range(10**7))``, ``f = r.count; f("x")``)
            value = getattr(obj._type if tobj is TypeProxy else obj, name)
            if callable(value):
                return partial(self.meth, obj, name)
            return value
        if obj is range:
            # the unbound ``range.count`` / ``range.index`` (the raw builtin type): called with
            # a range, metered like the bound method
            value = getattr(range, name)
            if callable(value):
                return partial(self._range_meth, name)
            return value
        return getattr(obj, name)

    def _range_meth(self, name: str, /, *args: Any, **kw: Any) -> Any:
        """``range.name(r, ...)`` through :meth:`meth` (a TypeError unless ``r`` is a range)."""
        if not args or type(args[0]) is not range:
            raise TypeError(f"range.{name}() needs a range as first argument")
        return self.meth(args[0], name, *args[1:], **kw)


# Values whose repr CPython builds in O(1) or in proportion to a size already charged.
_SHORT_REPR = frozenset({int, bool, str, type(None)})

# Set operators that insert the other operand's elements into a new set.
_INSERTING = frozenset({operator.or_, operator.ior, operator.xor, operator.ixor})

# Builtins that wrap an iterable in a lazy iterator (TypeProxy-constructed, see construct).
LAZY_TYPES: tuple[type, ...] = (enumerate, zip, map, filter, reversed)
_LAZY: frozenset[type] = frozenset(LAZY_TYPES)

# List and tuple methods that compare their argument with each element.
_SEARCHING = frozenset({"index", "count", "remove"})
_HEADS = frozenset({str, int})


def _range_len(r: range) -> int:
    """``len(r)`` without its OverflowError beyond ``sys.maxsize`` elements."""
    step = r.step
    return max(0, (r.stop - r.start + step + (-1 if step > 0 else 1)) // step)


def _distinct_heads(values: list[Any]) -> list[Any] | None:
    """The first items of ``values`` if these are non-empty tuples whose first items are
    distinct strings or integers (comparing two of them then never looks further), else None."""
    if not all(type(v) is tuple and v for v in values):
        return None
    heads = [v[0] for v in values]
    if _HEADS.issuperset(map(type, heads)) and len(set(heads)) == len(heads):
        return heads
    return None


# Methods that allocate an object per element of the receiver (charged like a collection).
_ALLOCATING = frozenset({"copy", "split", "rsplit", "splitlines"})


# One %-conversion: optional (key) without nested parentheses, flags, width, precision,
# length modifier, conversion character.
_PCT_SPEC = re.compile(r"%(?:\(([^()]*)\))?[#0\- +]*(\d*)(?:\.(\d*))?[hlL]?(.)", re.DOTALL)


_PCT_CONVERSIONS = frozenset("diouxXeEfFgGcrsa%")


def _conv_len(v: Any, conv: str) -> int:
    """At most how many characters converting ``v`` (str/int/bool/None) with ``conv`` gives."""
    if conv == "c":
        return 1
    if conv in "eEfFgG":  # digits, point, 6 decimals, exponent
        return (v.bit_length() // 3 if type(v) is int else 1) + 16
    if type(v) is str:
        return 10 * len(v) + 2 if conv in "ra" else len(v)  # repr: up to \U0010ffff each
    if type(v) is int:
        return v.bit_length() // 3 + 3  # decimal, octal or hex digits and a sign
    return 5  # True / False / None


def _percent_bound(fmt: str, values: Any) -> int:
    """An upper bound of ``len(fmt % values)`` computed without building it: the literal
    text plus, per conversion, its width or precision plus the converted value's length
    (checked :meth:`Meter.percent_format` values: str, int, bool, None; widths have at most
    4 digits).  A format this parse does not account for (a key holding parentheses) is
    bounded by the widest conversion for every ``%``."""
    total, n = len(fmt), 0
    specs = list(_PCT_SPEC.finditer(fmt))
    whole: dict[str, int] = {}  # len(repr/ascii(values)) of a mapping, computed once
    if len(specs) != fmt.count("%") - 2 * fmt.count("%%") + sum(m.group(4) == "%" for m in specs) or any(
            m.group(4) not in _PCT_CONVERSIONS for m in specs):
        every = values.values() if type(values) is dict else (
            values if type(values) is tuple else (values,))
        widest = max((max(_conv_len(v, "r"), _conv_len(v, "f") if type(v) is not str else 0)
                      for v in every), default=0)
        if type(values) is dict:  # an unkeyed conversion takes the whole mapping
            widest = max(widest, len(ascii(values)))
        return total + fmt.count("%") * (9999 + widest)
    for m in specs:
        key, width, prec, conv = m.groups()
        if conv == "%":
            continue
        if type(values) is dict:
            if key is None:  # the whole mapping is converted
                kind = "a" if conv == "a" else "r"
                if kind not in whole:
                    whole[kind] = len(ascii(values) if kind == "a" else repr(values))
                total += max(int(width or 0), int(prec or 0)) + whole[kind]
                continue
            v = values.get(key, "")
        elif type(values) is tuple:
            v = values[n] if n < len(values) else ""
            n += 1
        else:
            v = values
        total += max(int(width or 0), int(prec or 0)) + _conv_len(v, conv)
    return total


def _plain_unpack(value: tuple[Any, ...] | list[Any], shape: tuple[Any, ...]) -> bool:
    """True if ``value`` unpacks into the star-free target ``shape`` (see
    :meth:`Meter.targets`) with nothing to charge: lengths fit, nested targets get tuples or
    lists, names-only targets get no dict, set or view.  The common case, checked without
    the general walk (which cost ~1 us per element: 0.9-1.9 us of CPU per gas of a
    ``for k, (a, b) in pairs`` loop, now ~0.3-0.5)."""
    if len(value) != len(shape):
        return False
    for x, c in zip(value, shape):  # noqa: B905 - lengths checked above (strict= is slower)
        if c is None:
            continue
        if type(c) is not tuple or (c and c[0] == "**"):
            return False  # a starred target
        tx = type(x)
        if not c:
            if tx in SCANNED:
                return False
        elif (tx is not tuple and tx is not list) or not _plain_unpack(x, c):
            return False
    return True


def _elem_refusal(x: Any) -> Exception | None:
    """The error :meth:`Meter.elem` raises for ``x`` (None if ``x`` may be a set element),
    without charging or recording anything; ``x`` is hashable and its tuples are at most
    :data:`MAX_KEY_DEPTH` deep (it is in a set whose elements :meth:`Meter.hash_elements`
    walked)."""
    stack = [x]
    while stack:
        v = stack.pop()
        tv = type(v)
        if tv is str or tv is bool or tv is frozenset:
            continue
        if tv is int:
            if not -INT_KEY_BOUND < v < INT_KEY_BOUND:
                return big_int_error(v)
            continue
        if tv is tuple:
            stack.extend(reversed(v))
            continue
        return TypeError(
            f"{tv.__name__} cannot be a set element or dict key in a contract "
            "(set elements: str, int, bool and tuples of them)"
        )
    return None


def _order(v: Any) -> tuple[str, Any]:
    """Sort key giving sets a deterministic print order."""
    return (type(v).__name__, v if type(v) in (int, bool, str) else repr(v))


def _m_width(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any], name: str) -> Any:
    width = args[0] if args else kw.get("width", 0)
    if type(width) is int:
        m.check_len(width, True)
        m.gas(1 + max(width, len(obj)) // 32)
    return getattr(obj, name)(*args, **kw)


def _m_replace(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    if type(obj) is str and len(args) == 2 and not kw and type(args[0]) is str and (
        type(args[1]) is str
    ) and args[0] and args[0] not in obj:
        # nothing to replace (the common case): same charge as below with hits == 0
        n = len(obj)
        if n > m.max_str:
            raise m.size_error("string", n, m.max_str)
        m.left -= 1 + (n + n) // 32
        if m.left < 0:
            raise m.fail(OutOfGas(f"gas limit {m.limit} exhausted"))
        return obj
    if type(obj) is str and len(args) >= 2 and type(args[0]) is str and type(args[1]) is str:
        old, new = args[0], args[1]
        hits = obj.count(old) if old else len(obj) + 1
        if len(args) > 2 and type(args[2]) is int and args[2] >= 0:
            hits = min(hits, args[2])
        n = len(obj) + hits * (len(new) - len(old))
        m.check_len(n, True)
        m.gas(1 + (len(obj) + n) // 32)
    return obj.replace(*args, **kw)


# A search string or strip set of at most this many characters costs what it did (1 +
# len/32); beyond it, :func:`_m_rsearch` and :func:`_m_strip` charge the C loops' worst case.
FREE_PATTERN = 32
# Character comparisons per gas of those worst cases (~0.12 ns each for a reverse search,
# ~0.26 for a strip set of UCS-4 text: ~120-130 ns of CPU per gas)
RSEARCH_PER_GAS = 1024
STRIP_PER_GAS = 512


def _m_rsearch(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any], name: str) -> Any:
    """rfind/rindex/rsplit/rpartition: CPython searches backwards without the two-way
    algorithm of a forward search, O(len * len(sub)) for a long ``sub`` that almost matches
    (``("a"*10**6).rfind("a"*10**5 + "b" + "a"*10**5)``: 18 s for ~100,000 gas): a ``sub``
    longer than :data:`FREE_PATTERN` pays ``(len - len(sub) + 1) * len(sub) /
    RSEARCH_PER_GAS`` more (besides what it paid before: rsplit allocates)."""
    cost = alloc_cost(len(obj), False) if name in _ALLOCATING else 1 + len(obj) // 32
    sub = args[0] if args else kw.get("sep")
    if type(obj) is str and type(sub) is str and len(sub) > FREE_PATTERN:
        cost += max(0, len(obj) - len(sub) + 1) * len(sub) // RSEARCH_PER_GAS
    m.gas(cost)
    return getattr(obj, name)(*args, **kw)


def _m_strip(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any], name: str) -> Any:
    """strip/lstrip/rstrip(chars): each stripped character is looked for in ``chars`` by a
    linear scan (``chr(0x1F600)*10**5`` stripped of ``chr(0x1F601)*10**5 + chr(0x1F600)``:
    2.3 s for 12,500 gas): ``chars`` longer than :data:`FREE_PATTERN` pays
    ``len * (len(chars) - FREE_PATTERN) / STRIP_PER_GAS`` more."""
    cost = 1 + len(obj) // 32
    chars = args[0] if args else None
    if type(obj) is str and type(chars) is str and len(chars) > FREE_PATTERN:
        cost += len(obj) * (len(chars) - FREE_PATTERN) // STRIP_PER_GAS
    m.gas(cost)
    return getattr(obj, name)(*args, **kw)


def _m_affix(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any], name: str) -> Any:
    """startswith/endswith of a tuple: each entry is compared with the string's start or end
    (a memcmp of up to its length): one gas per entry and 1 per 32 characters compared, as a
    string comparison pays (``s.startswith((p,) * 100_000)`` of 100,000-character ``s`` and
    ``p`` ran 0.18 s for ~28,000 gas)."""
    cost = 1 + len(obj) // 32
    affixes = args[0] if args else None
    if type(obj) is str and type(affixes) is tuple:
        n = len(obj)
        cost += len(affixes) + sum(min(len(a), n) for a in affixes if type(a) is str) // 32
    m.gas(cost)
    return getattr(obj, name)(*args, **kw)


def _m_join(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    if type(obj) is not str or len(args) != 1 or kw:
        return obj.join(*args, **kw)
    parts = m.materialize(args[0])
    n = len(obj) * max(0, len(parts) - 1)
    for p in parts:
        if type(p) is str:
            n += len(p)
    m.check_len(n, True)
    m.gas(1 + n // 32)
    return obj.join(parts)


def _m_grow(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any], name: str) -> Any:
    """extend/update/union & co: materialize the iterables, bound the result."""
    hashed = type(obj) in (set, frozenset, dict)
    if type(obj) is not dict:
        m.scan(obj)  # set operations (and a view's isdisjoint) may walk the receiver's table
        m.rehash(obj)  # ... and copy or look up its elements
        if type(obj) is _ITEMS_VIEW:
            m._item_values(obj)  # ``isdisjoint`` compares the values of the items it finds
    mats: list[Any] = []
    total = len(obj)
    for a in args:
        if type(a) is dict and type(obj) is dict:
            m.scan(a)
            m.rehash(a)
            mats.append(a)
            total += len(a)
            m.gas(1 + len(a))
        else:
            ma = m.materialize(a)
            if hashed:
                if type(obj) is dict:
                    m._pair_keys(ma)
                else:
                    for x in ma:
                        m.elem(x)
            mats.append(ma)
            total += len(ma)
    total += len(kw)
    m.check_len(total, False)
    m.gas(alloc_cost(total, False))
    return getattr(obj, name)(*mats, **kw)


def _m_fromkeys(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    if not args or kw:
        raise TypeError("fromkeys(keys[, value])")
    keys = m.materialize(args[0])
    for k in keys:
        m.key(k)
    m.gas(alloc_cost(len(keys), False))
    return dict.fromkeys(keys, *args[1:])


def _m_add(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    if args:
        m.elem(args[0])
    m.gas(1)
    return obj.add(*args, **kw)


def _m_setdefault(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    if args:
        m.key(args[0])
    m.gas(1)
    return obj.setdefault(*args, **kw)


def _m_sort(m: Meter, obj: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    if type(obj) is not list or args or not set(kw) <= {"key", "reverse"}:
        return obj.sort(*args, **kw)  # the TypeError list.sort gives
    m.sort_list(obj, kw.get("key"), kw.get("reverse", False))
    return None


_Special = Callable[[Meter, Any, tuple[Any, ...], dict[str, Any]], Any]
_SPECIAL: dict[str, _Special] = {
    "ljust": partial(_m_width, name="ljust"),
    "rjust": partial(_m_width, name="rjust"),
    "center": partial(_m_width, name="center"),
    "zfill": partial(_m_width, name="zfill"),
    "replace": _m_replace,
    "rfind": partial(_m_rsearch, name="rfind"),
    "rindex": partial(_m_rsearch, name="rindex"),
    "rsplit": partial(_m_rsearch, name="rsplit"),
    "rpartition": partial(_m_rsearch, name="rpartition"),
    "strip": partial(_m_strip, name="strip"),
    "startswith": partial(_m_affix, name="startswith"),
    "endswith": partial(_m_affix, name="endswith"),
    "lstrip": partial(_m_strip, name="lstrip"),
    "rstrip": partial(_m_strip, name="rstrip"),
    "join": _m_join,
    "sort": _m_sort,
    "fromkeys": _m_fromkeys,
    "add": _m_add,
    "setdefault": _m_setdefault,
    "extend": partial(_m_grow, name="extend"),
    "update": partial(_m_grow, name="update"),
    "union": partial(_m_grow, name="union"),
    "intersection": partial(_m_grow, name="intersection"),
    "difference": partial(_m_grow, name="difference"),
    "symmetric_difference": partial(_m_grow, name="symmetric_difference"),
    "intersection_update": partial(_m_grow, name="intersection_update"),
    "difference_update": partial(_m_grow, name="difference_update"),
    "symmetric_difference_update": partial(_m_grow, name="symmetric_difference_update"),
    "issubset": partial(_m_grow, name="issubset"),
    "issuperset": partial(_m_grow, name="issuperset"),
    "isdisjoint": partial(_m_grow, name="isdisjoint"),
}
