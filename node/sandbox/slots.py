"""Allocated slots of dicts and sets, derived from ``sys.getsizeof`` (CPython 3.11, 64-bit).

Iterating a dict walks its entry array up to the last entry ever used, deleted entries
included (CPython compacts it only when the dict grows again); iterating a set walks its
hash table, empty and deleted slots included.  Contract code that deletes most keys of a
big dict, or places a set's elements at the end of a big table, makes every iteration start
scan those slots before it reaches a live entry (``for k in d: break``).  The meter charges
that scan as *slack*: allocated slots minus live entries, one gas per :data:`SLACK_PER_GAS`
slots (a slot scan costs ~0.3-0.6 ns, so ~0.1-0.15 us per gas, less than an average gas).
A dict or set whose slack is under :data:`SLACK_PER_GAS` -- every dict of up to 341 keys
and set of up to 76 elements built without deletions -- pays nothing.

Formulas (sizes include the 16-byte GC header):

* dict: ``getsizeof(d) = 64 + keys`` where, unless the keys object is the shared empty one
  (``getsizeof == 64``), ``keys = 32 + 2**ib + usable * es``: table size ``2**L`` (L >= 3),
  ``usable = (2 << L) // 3`` entries, ``es`` 16 bytes for all-str keys else 24, index bytes
  ``ib = L`` (L < 8), ``L + 1`` (L < 16), ``L + 2`` (L < 32), ``L + 3``.  The slots are
  ``usable`` (an entry array's capacity: a bound of the entries an iteration may walk).
* set / frozenset: ``getsizeof(s) = 216`` with the 8-slot small table, else
  ``216 + 16 * (mask + 1)``: the slots are ``mask + 1``.
* dict views (keys/values/items): the slots of their dict (``gc.get_referents``).

Both are deterministic: the same operations give the same sizes on every peer running the
same Python build.  A size outside these formulas (another build) counts conservatively as
one slot per 16 bytes.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

SLACK_PER_GAS = 256

_DICT_BASE = sys.getsizeof({})  # PyDictObject + GC header; empty/shared keys not counted
_SET_BASE = sys.getsizeof(set())  # PySetObject with its 8-slot small table + GC header
_SET_SMALL = 8
_KEYS_HEADER = 32
_VIEWS: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))
SCANNED: frozenset[type] = frozenset({dict, set, frozenset, *_VIEWS})


def _index_log2(log2_size: int) -> int:
    if log2_size < 8:
        return log2_size
    if log2_size < 16:
        return log2_size + 1
    if log2_size < 32:
        return log2_size + 2
    return log2_size + 3


def _dict_table() -> dict[int, int]:
    """Keys-object size -> usable entries, for every table size a dict may have."""
    table: dict[int, int] = {}
    for log2_size in range(3, 40):
        usable = (2 << log2_size) // 3
        for entry_size in (16, 24):
            size = _KEYS_HEADER + (1 << _index_log2(log2_size)) + usable * entry_size
            assert size not in table, "dict size formula is ambiguous"
            table[size] = usable
    return table


_DICT_USABLE = _dict_table()

# ``__sizeof__`` (getsizeof without the GC header) below which a dict / set cannot have
# SLACK_PER_GAS slots of slack: the meter's fast path for ordinary containers
_GC_HEADER = _DICT_BASE - {}.__sizeof__()
DICT_FREE_SIZEOF = _DICT_BASE - _GC_HEADER + min(
    size for size, usable in _DICT_USABLE.items() if usable >= SLACK_PER_GAS)
SET_FREE_SIZEOF = _SET_BASE - _GC_HEADER + 16 * SLACK_PER_GAS
VIEWS = _VIEWS


def dict_slots(d: dict[Any, Any]) -> int:
    """Entries allocated in ``d``'s entry array (0 for an empty dict with shared keys)."""
    keys = sys.getsizeof(d) - _DICT_BASE
    if keys <= 0:
        return 0
    usable = _DICT_USABLE.get(keys)
    return usable if usable is not None else keys // 16


def set_slots(s: set[Any] | frozenset[Any]) -> int:
    """Slots of ``s``'s hash table (8 for the small table)."""
    size = sys.getsizeof(s)
    return _SET_SMALL if size <= _SET_BASE else (size - _SET_BASE) // 16


def slack(v: Any) -> int:
    """Allocated slots minus live entries of a dict, set, frozenset or dict view (else 0)."""
    tv = type(v)
    if tv is dict:
        return max(0, dict_slots(v) - len(v))
    if tv is set or tv is frozenset:
        return max(0, set_slots(v) - len(v))
    if tv in _VIEWS:
        d = gc.get_referents(v)[0]
        return max(0, dict_slots(d) - len(d))
    return 0


def slack_gas(v: Any) -> int:
    """Gas of one scan of ``v``'s slack: one per :data:`SLACK_PER_GAS` slots (0 for dense ones)."""
    return slack(v) // SLACK_PER_GAS
