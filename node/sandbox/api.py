"""The contract API: what contract code sees as the virtual module ``rxchain_contract``.

Writing a contract
==================
A contract is ONE Python source file in a restricted subset of Python 3.11::

    from rxchain_contract import Context, ContractError   # the only import allowed

    MAX_DAYS = 30                                          # module constants are fine

    def issue(ctx: Context, rx_id: str, days: int, drugs: list) -> dict:
        if days > MAX_DAYS:
            raise ContractError("VALIDITY_TOO_LONG", f"{days} > {MAX_DAYS}")
        if ctx.get("rx/" + rx_id) is not None:
            ctx.fail("DUPLICATE", rx_id)
        ctx.put("rx/" + rx_id, {"days": days, "drugs": drugs, "by": ctx.caller.name})
        ctx.emit("issued", {"rx_id": rx_id})
        return {"rx_id": rx_id, "expires_ms": ctx.timestamp_ms + days * 86_400_000}

    def _helper(x: int) -> int:                            # leading "_" = private
        return x * 2

* Public functions are the module-level ``def``s whose name does not start with ``_``.  The
  first parameter is the ``Context``; every other parameter must be annotated with one of
  ``str``, ``int``, ``bool``, ``list``, ``dict`` (``list[str]`` etc. check the outer type
  only; ``X | None`` allows null; ``Any`` allows any JSON value).  Parameters with defaults
  are optional.  An invocation passes the arguments as one JSON object; unknown, missing or
  mistyped arguments give BAD_ARGUMENTS, an unknown/private function UNKNOWN_FUNCTION.
* The return value must be JSON: dict (str keys) / list / tuple / str / int / bool / None.
  It is returned as canonical JSON bytes
  (``json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
* There are no floats anywhere: float literals and ``/`` are rejected at deploy time, JSON
  with a fraction or exponent is refused (money is integer fen; use ``//`` and ``divmod``).
* ``raise ContractError(reason, message)`` or ``ctx.fail(reason, message)`` ends the call
  with status error and that reason code (upper-case, e.g. ``NOT_FOLLOW_UP``); the writes
  and events of a failed call are discarded by the peer.  Any other exception that escapes
  gives CONTRACT_EXCEPTION with ``"KeyError: 'x'"``-style message.
* Forbidden (rejected at deploy with the line number, reason CONTRACT_REJECTED): any other
  import, names starting with ``__`` and attributes starting with ``_`` (``x._y``,
  ``().__class__``, ``f.__globals__``...), integer literals over 4,096 bits,
  ``eval``/``exec``/``open``/``getattr``/``type``/``print``... (allowed builtins are listed
  in ``checker.ALLOWED_BUILTINS``), classes, lambda, ``global``/``nonlocal``, generators
  (``yield``), ``async``, ``with``, ``try/finally``, bare ``except:``, ``match``, module-level
  statements other than imports, constants and ``def``, attribute assignment, slice
  assignment, ``str.format`` (use f-strings), bytes, ``/`` (use ``//``).  Attributes are
  limited to the context API, ``ContractError.reason/.message`` and the public methods of
  str/list/dict/set/tuple/int (except format, format_map, encode, translate, maketrans,
  expandtabs, to_bytes, from_bytes).  The builtins are listed in
  ``checker.ALLOWED_BUILTINS`` (len, range, sorted, min, max, sum, any, all, enumerate, zip,
  map, filter, reversed, isinstance, abs, divmod, pow, round, str, int, bool, list, dict,
  set, frozenset, tuple, repr, chr, ord, hex, bin, oct and the common exception classes).
* Every invocation starts from the module's initial values: nothing persists between
  calls except what is written with ``ctx.put`` (the runtime runs the module body once and
  gives each call fresh copies of module-level lists/dicts/sets; the gas of the module
  body is charged to every call).  Default parameter values must be literal constants.
* Determinism: dict keys must be str / int / bool / None or tuples of them; set elements
  str / int / bool or tuples / frozensets of them -- not None, whose hash is its memory
  address in Python 3.11 (anything else hashes by address too; TypeError otherwise).
  Integers used as keys or elements, alone or inside a tuple/frozenset, must be below
  2**61 - 1 in magnitude (ValueError otherwise: integers equal modulo 2**61 - 1 share one
  hash; amounts in fen, counts and timestamps are far below it).  Lookups (``d[x]``,
  ``x in s``, ``get``) of any integer still answer.
  ``str()``/``repr()``/f-strings never show memory addresses (functions print as
  ``<function>``, the context as ``<Context>``) and sets print in sorted order.  Exception
  texts have addresses replaced by ``0x?``.  ``str.format`` is not available (f-strings
  and ``%`` are; format widths are limited to 4 digits).  Reasons ``TIMEOUT``, ``MEMORY_LIMIT``
  and ``WORKER_CRASHED`` are the runtime's: a contract raising them gets CONTRACT_EXCEPTION.
* Limits (from the consortium config, reason code in brackets): gas [OUT_OF_GAS], call depth
  [RECURSION_LIMIT], size of any string / collection / integer built [SIZE_LIMIT], size of a
  stored value, the result or an event [SIZE_LIMIT], number/bytes of keys written
  [WRITE_SET_LIMIT], worker memory [MEMORY_LIMIT] and time [TIMEOUT].

Gas schedule (deterministic; the same on every peer)
-----------------------------------------------------
call of a contract function 10; each loop iteration / comprehension element / element
consumed by ``list()``, ``sum()``, ``sorted()``, ... 1; building a string 1 + chars/32,
building a list/tuple/set/dict (concatenation, repetition, slicing, copy, split, extend)
1 + elements/4; scanning (``in``, ``==``/``<`` of non-literals, other str/list methods)
1 + size/32 (``==`` of two dicts of one length: 1 more per key; of two lists or tuples
1 more per 8 elements; a string searched in a list/tuple 1 more per 8 elements beyond
64; keys/items views compared like sets); sorting n*log2(n), plus (1 + log2(n)) times the nested size of the values
(or keys) compared when they are containers, unless they are tuples with distinct str/int
first items such as ``sorted(d.items())``; ``min``/``max``/``index``/``count``/``remove``
of containers their nested size once; ``range.count``/``index`` of a non-int 1 + len/8;
``//``, ``%``, ``divmod`` of integers (bits(a) - bits(b) + 1) * bits(b) / 2**15;
``rfind``/``rindex``/``rsplit``/``rpartition`` of a pattern of m > 32 characters
(len - m + 1) * m / 1024 more, ``strip``/``lstrip``/``rstrip`` of m > 32 characters len * (m - 32) / 512 more;
``startswith``/``endswith`` of a tuple 1 per entry + characters compared/32 more;
``isinstance`` with a tuple 1 + entries; a function body
over weight 2,048 or a loop iteration / comprehension element over weight 512 (one per syntax
node, 32 per dict/set display element) 1 per 32 beyond; big-int arithmetic ~bits/64; context calls as listed on
``Context``; the returned value 1 per JSON value + bytes/32.  Starting to iterate, copy,
compare, unpack or encode a dict, set, frozenset or dict view also pays 1 per 256 slots its
table holds beyond its live entries (deleted entries stay in a dict until it grows again;
a set iterates its whole table): nothing for dicts up to 341 keys and sets up to 76
elements built without mass deletions, up to ~3 % of a full loop over bigger ones, and
(allocated slots)/256 per ``for k in d: break`` once most of a big dict is deleted --
rebuild it (``d = dict(d.items())``) after deleting most of it; ``set.pop`` pays it on
every call.  Tuples and frozensets whose hashes collide (different values, one hash: they
can be computed for pairs of small integers) pay 1 + elements/16 per other such key or
element of the invocation each time one is inserted, looked up, or walked by a set
operation, copy or comparison; keys whose hashes differ pay nothing more.  The figures
are part of the consensus rules: every peer must run the same rxchain and Python (3.11)
versions.

Context
-------
See the ``Context`` class below: ``tx_id``, ``timestamp_ms`` (the transaction's time, the
only clock), ``contract`` (own namespace), ``caller`` (``.org``, ``.role``, ``.name``,
``.attrs``, ``.org_kind``, ``.hospital_level``), ``get``, ``put``, ``delete``, ``range``,
``history``, ``get_from``, ``range_from``, ``transient``, ``emit``, ``fail``,
``sha256_hex``, ``hmac_sha256_hex``, ``canonical_json``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from typing import Any, Protocol

from node.sandbox import canonical
from node.sandbox import types as t
from node.sandbox.errors import Abort, ContractError, SizeLimit, StateError, WriteSetLimit
from node.sandbox.meter import Meter

# Gas of context calls: base + bytes // per.  Reads cost a round trip to the host
# (~50-100 us, i.e. several hundred loop iterations); writes are buffered in the worker.
GAS_GET = 500
GAS_RANGE = 500
GAS_RANGE_ITEM = 20
GAS_HISTORY = 1000
GAS_HISTORY_ENTRY = 20  # per version answered (an index entry walked, decoded and sent)
GAS_HISTORY_SKIP = 1  # per version ``start`` steps over (the index walk: ~0.12 us each)
# A version's value is read from the block that wrote it, and a block is read whole: pread,
# checksum, parse (~1.2 ms of the peer for a full 4 MiB block, ~4 bytes per ns; 10 us for a
# small one). Each run of versions with values in one block pays one block read.
GAS_HISTORY_BLOCK = 100
GAS_HISTORY_BLOCK_BYTES_PER_UNIT = 512
# A page (``start`` given) ends before the version that would take its gas past this (or half
# the gas left), or its values past MAX_HISTORY_PAGE_BYTES (~120 full blocks, or 16 MiB of
# values, per page).
HISTORY_PAGE_GAS = 1_000_000
MAX_HISTORY_PAGE_BYTES = 16 * 1024 * 1024
MAX_HISTORY_START = (1 << 32) - 1
GAS_PUT = 200
GAS_DELETE = 100
GAS_EMIT = 100
GAS_TRANSIENT = 20
GAS_HASH = 20
GAS_BYTES_PER_UNIT = 32

_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


def valid_reason(reason: Any) -> bool:
    return type(reason) is str and _REASON.match(reason) is not None


def _utf8(text: str) -> bool:
    """``text`` has a UTF-8 form (no lone surrogate): names sent to the host or in results
    are protobuf strings."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


MAX_NAMESPACE_LEN = 255  # ctx.get_from/range_from/history_from namespaces (contract names)


def history_entry_gas(entry: t.HistoryEntry, values: bool, last_block: int) -> int:
    """The gas of one version of a history answer (``last_block``: the block the previous
    version with a value was read from, -1 for none): GAS_HISTORY_ENTRY, and with values,
    unless it is a delete, its value's bytes/32 and -- when it starts a run of versions of
    another block -- a block read, GAS_HISTORY_BLOCK + the block's bytes/512 (the bytes of
    its transactions: the same on every peer; whether the peer had the value cached does
    not matter).  The peer (node.peer.history) adds it up as it reads and the Context
    charges it: the same figures for the same ledger."""
    gas = GAS_HISTORY_ENTRY
    if values and not entry.is_delete:
        gas += len(entry.value or b"") // GAS_BYTES_PER_UNIT
        if entry.block != last_block:
            gas += GAS_HISTORY_BLOCK + entry.block_bytes // GAS_HISTORY_BLOCK_BYTES_PER_UNIT
    return gas


def history_gas(entries: list[t.HistoryEntry], values: bool) -> int:
    """The gas of a history answer beyond its base (:func:`history_entry_gas` of each)."""
    gas, last = 0, -1
    for e in entries:
        gas += history_entry_gas(e, values, last)
        if values and not e.is_delete:
            last = e.block
    return gas


# A history read failing after it read versions (SIZE_LIMIT past 16 MiB of values) carries
# their gas as ``history_gas`` on its exception (node.peer.history.HistoryReadError); the host
# hands it to the Context with the failure, which charges it before the call ends.
MAX_FAILED_READ_GAS = 1 << 62


def failed_read_gas(exc: BaseException) -> int:
    """The gas a failed state request spent before failing (``history_gas`` of the
    exception: an int 0 .. MAX_FAILED_READ_GAS), 0 for any other failure."""
    gas = getattr(exc, "history_gas", 0)
    if type(gas) is not int or not 0 <= gas <= MAX_FAILED_READ_GAS:
        return 0
    return gas


class StateHost(Protocol):
    """How a Context reaches state: the worker's pipe client or, in-process, the backend."""

    def get(self, namespace: str, key: str) -> bytes | None: ...

    def range(self, namespace: str, start: str, end: str, limit: int) -> list[tuple[str, bytes]]: ...

    def history(self, namespace: str, key: str, limit: int, start: int | None = None,
                values: bool = True, gas_left: int | None = None) -> list[t.HistoryEntry]: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


class Caller:
    """The transaction creator: organisation, role, certificate name and attributes."""

    __slots__ = ("attrs", "hospital_level", "name", "org", "org_kind", "role")

    def __init__(self, info: t.CallerInfo) -> None:
        self.org = info.org
        self.role = info.role
        self.name = info.name
        # sorted: protobuf maps do not keep order, and iteration order must not vary
        self.attrs: dict[str, str] = dict(sorted(info.attrs.items()))
        self.org_kind = info.org_kind
        self.hospital_level = info.hospital_level

    def __repr__(self) -> str:
        return "<Caller>"


class Context:
    """What a contract function receives as its first argument.

    ``get(key)`` -> JSON value or None (gas 500 + bytes/32; range 500 + 20 per row)
    ``put(key, value)`` stores a JSON value (gas 200 + bytes/32); ``delete(key)`` (gas 100)
    ``range(start, end, limit=100)`` -> sorted ``[(key, value)]`` with start <= key < end
    ``history(key, limit=100, start=None, values=True)`` ->
    ``[{"tx_id","block","timestamp_ms","is_delete","value"}]``, the committed versions of
    ``key`` oldest first, at most ``limit`` (1-1000):

    * ``start`` None: the oldest versions; SIZE_LIMIT if their values exceed 16 MiB.
    * ``start`` an integer (0 = the oldest version): a page from the ``start``-th version
      on.  It ends early before a version that would take its values past 16 MiB or its gas
      (below) past 1,000,000 or half the gas left, but it always holds the ``start``-th
      version when there is one (a version whose value alone exceeds 16 MiB: SIZE_LIMIT).
      Read on with ``start + len(page)`` until a page comes back empty.
    * ``values`` False: no values (every ``"value"`` is None) and no block read: the
      versions' metadata only, e.g. to count or order them before reading a page of values.

    Gas: 1000 + 1 per version ``start`` steps over, before the read; then 20 per version
    answered, and with values its bytes/32 and one block read per run of versions written
    in one block, 100 + the block's transaction bytes/512 (a full 4 MiB block: 8,292).  A
    read the gas left cannot pay is OUT_OF_GAS (the peer reads at most one block more).  A
    read failing SIZE_LIMIT pays the same for the versions it read, the failing one
    included (at most the gas left: the call ends SIZE_LIMIT).
    ``get_from(ns, key)`` / ``range_from(ns, start, end, limit)`` read another
    contract's state (read-only); ``transient(name)`` -> private JSON input or None (never
    stored); ``emit(name, payload)`` records an event; ``fail(reason, message)`` raises
    ContractError; ``sha256_hex(text)`` / ``hmac_sha256_hex(key_hex, text)`` hash UTF-8 text;
    ``canonical_json(value)`` -> the canonical JSON text ("" if the value has none).
    Keys are non-empty strings of at most ``max_key_len`` UTF-8 bytes without NUL.
    """

    __slots__ = (
        "_events",
        "_host",
        "_limits",
        "_meter",
        "_transient",
        "_write_bytes",
        "_written",
        "caller",
        "contract",
        "timestamp_ms",
        "tx_id",
    )

    def __init__(
        self,
        *,
        meter: Meter,
        host: StateHost,
        contract: str,
        tx_id: str,
        timestamp_ms: int,
        caller: t.CallerInfo,
        transient: dict[str, bytes],
        limits: t.SandboxLimits,
    ) -> None:
        self._meter = meter
        self._host = host
        self._limits = limits
        self._transient = transient
        self._events: list[t.ContractEvent] = []
        self._written: set[str] = set()
        self._write_bytes = 0
        self.contract = contract
        self.tx_id = tx_id
        self.timestamp_ms = timestamp_ms
        self.caller = Caller(caller)

    def __repr__(self) -> str:
        return "<Context>"

    # -- helpers ----------------------------------------------------------------------
    def _key(self, key: Any) -> str:
        if type(key) is not str or not key or "\x00" in key:
            raise ValueError("state key must be a non-empty string without NUL")
        if len(key) > self._limits.max_key_len or len(key.encode()) > self._limits.max_key_len:
            raise self._meter.fail(SizeLimit(f"state key longer than {self._limits.max_key_len}"))
        return key

    def _bound(self, key: Any) -> str:
        if type(key) is not str or "\x00" in key or len(key) > self._limits.max_key_len or not _utf8(key):
            raise ValueError("range bound must be a string without NUL or lone surrogate")
        return key

    def _ns(self, namespace: Any) -> str:
        if type(namespace) is not str or not namespace or "\x00" in namespace or not _utf8(namespace):
            raise ValueError("namespace must be a non-empty string without NUL or lone surrogate")
        if len(namespace) > MAX_NAMESPACE_LEN:  # contract names have at most 64 characters
            raise ValueError(f"namespace longer than {MAX_NAMESPACE_LEN} characters")
        return namespace

    def _limit(self, limit: Any, cap: int) -> int:
        if type(limit) is not int or limit < 1:
            raise ValueError("limit must be a positive integer")
        return min(limit, cap)

    def _decode(self, data: bytes, what: str) -> Any:
        self._meter.gas(len(data) // GAS_BYTES_PER_UNIT)
        return canonical.decode(data, what)

    def _encode(self, value: Any, what: str) -> bytes:
        try:
            data, nodes = canonical.encode(value, what, self._limits.max_value_bytes)
        except Abort as exc:
            raise self._meter.fail(exc) from None
        self._meter.gas(nodes + len(data) // GAS_BYTES_PER_UNIT)
        return data

    def _record_write(self, key: str, nbytes: int) -> None:
        if key not in self._written:
            if len(self._written) >= self._limits.max_write_keys:
                raise self._meter.fail(
                    WriteSetLimit(f"more than {self._limits.max_write_keys} keys written")
                )
            self._written.add(key)
        self._write_bytes += len(key) + nbytes
        if self._write_bytes > self._limits.max_write_bytes:
            raise self._meter.fail(
                WriteSetLimit(f"more than {self._limits.max_write_bytes} bytes written")
            )

    # -- state ------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        key = self._key(key)
        self._meter.gas(GAS_GET)
        data = self._host.get(self.contract, key)
        return None if data is None else self._decode(data, f"state {key!r}")

    def get_from(self, namespace: str, key: str) -> Any:
        namespace, key = self._ns(namespace), self._key(key)
        self._meter.gas(GAS_GET)
        data = self._host.get(namespace, key)
        return None if data is None else self._decode(data, f"state {namespace}/{key!r}")

    def range(self, start: str, end: str, limit: int = 100) -> list[tuple[str, Any]]:
        return self.range_from(self.contract, start, end, limit)

    def range_from(self, namespace: str, start: str, end: str, limit: int = 100) -> list[
        tuple[str, Any]
    ]:
        namespace = self._ns(namespace)
        start, end = self._bound(start), self._bound(end)
        n = self._limit(limit, self._limits.max_range_items)
        self._meter.gas(GAS_RANGE)
        rows = self._host.range(namespace, start, end, n)
        self._meter.gas(GAS_RANGE_ITEM * len(rows))
        return [(k, self._decode(v, f"state {k!r}")) for k, v in rows[:n]]

    def history(self, key: str, limit: int = 100, start: int | None = None,
                values: bool = True) -> list[dict[str, Any]]:
        key = self._key(key)
        n = self._limit(limit, self._limits.max_history_items)
        if start is not None and (type(start) is not int or not 0 <= start <= MAX_HISTORY_START):
            raise ValueError(f"start must be None or an integer 0-{MAX_HISTORY_START}")
        if type(values) is not bool:
            raise ValueError("values must be True or False")
        self._meter.gas(GAS_HISTORY + GAS_HISTORY_SKIP * (start or 0))
        try:
            entries = self._host.history(self.contract, key, n, start=start, values=values,
                                         gas_left=self._meter.left)[:n]
        except StateError as exc:
            # a read refused after reading versions (SIZE_LIMIT) pays for what it read, at
            # most the gas left: the call ends with the read's reason, charged alike everywhere
            self._meter.gas(min(exc.gas, max(0, self._meter.left)))
            raise
        # the peer stopped reading past the gas left: charged here, it ends the call
        self._meter.gas(history_gas(entries, values))
        return [
            {
                "tx_id": e.tx_id,
                "block": e.block,
                "timestamp_ms": e.timestamp_ms,
                "is_delete": e.is_delete,
                "value": None if e.value is None or not values
                else canonical.decode(e.value, "history value"),
            }
            for e in entries
        ]

    def put(self, key: str, value: Any) -> None:
        key = self._key(key)
        data = self._encode(value, f"value of {key!r}")
        self._meter.gas(GAS_PUT)
        self._record_write(key, len(data))
        self._host.put(key, data)

    def delete(self, key: str) -> None:
        key = self._key(key)
        self._meter.gas(GAS_DELETE)
        self._record_write(key, 0)
        self._host.delete(key)

    # -- the rest -----------------------------------------------------------------------
    def transient(self, name: str) -> Any:
        if type(name) is not str:
            raise ValueError("transient name must be a string")
        self._meter.gas(GAS_TRANSIENT)
        data = self._transient.get(name)
        return None if data is None else self._decode(data, f"transient {name!r}")

    def emit(self, name: str, payload: dict[str, Any]) -> None:
        if type(name) is not str or not name or len(name) > 128 or not _utf8(name):
            raise ValueError("event name must be a non-empty string of at most 128 chars (no lone surrogate)")
        if type(payload) is not dict:
            raise ValueError("event payload must be a dict")
        if len(self._events) >= self._limits.max_events:
            raise self._meter.fail(SizeLimit(f"more than {self._limits.max_events} events"))
        self._meter.gas(GAS_EMIT)
        data = self._encode(payload, f"event {name!r}")
        self._events.append(t.ContractEvent(name, data))

    def fail(self, reason: str, message: str = "") -> None:
        raise ContractError(reason, message)

    def sha256_hex(self, data: str) -> str:
        if type(data) is not str:
            raise ValueError("sha256_hex takes a string")
        raw = data.encode("utf-8")
        self._meter.gas(GAS_HASH + len(raw) // GAS_BYTES_PER_UNIT)
        return hashlib.sha256(raw).hexdigest()

    def canonical_json(self, value: Any) -> str:
        """The rxchain canonical JSON text of ``value`` (keys sorted, separators "," and
        ":", no ASCII escaping; tuples as lists), or "" if it has none (floats, sets,
        non-string keys, lone surrogates, nesting deeper than 64).  Gas 20 + 1 per JSON
        value + bytes/32; larger than ``max_value_bytes``: SIZE_LIMIT."""
        max_bytes = self._limits.max_value_bytes
        try:
            nodes, valid = canonical.measure(value, max_bytes)  # a value takes >= 1 byte
        except SizeLimit as exc:
            raise self._meter.fail(SizeLimit(f"canonical_json: {exc}")) from None
        # the walk is charged whatever its outcome, before any encoding work
        self._meter.gas(GAS_HASH + nodes)
        if not valid:
            return ""
        least = canonical.min_chars(value, max_bytes)
        if least > max_bytes:
            # refused before the encoder builds it (``[s] * 300`` of a 1 MB string: 300 MB);
            # the text would have cost at least this much gas, and been refused
            self._meter.gas(least // GAS_BYTES_PER_UNIT)
            raise self._meter.fail(SizeLimit(
                f"canonical_json: more than {max_bytes} bytes (at least {least} characters)"))
        text = canonical.encode_text(value)
        self._meter.gas(len(text) // GAS_BYTES_PER_UNIT)  # encoding work, before the UTF-8 step
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no canonical form
            return ""
        if len(data) > max_bytes:
            raise self._meter.fail(SizeLimit(
                f"canonical_json: {len(data)} bytes exceeds the limit of {max_bytes}"))
        # total: GAS_HASH + nodes + len(data) // GAS_BYTES_PER_UNIT, as documented
        self._meter.gas(len(data) // GAS_BYTES_PER_UNIT - len(text) // GAS_BYTES_PER_UNIT)
        return text

    def hmac_sha256_hex(self, key_hex: str, data: str) -> str:
        if type(data) is not str or type(key_hex) is not str:
            raise ValueError("hmac_sha256_hex takes a hex key and a string")
        key = bytes.fromhex(key_hex)
        raw = data.encode("utf-8")
        self._meter.gas(GAS_HASH + (len(raw) + len(key)) // GAS_BYTES_PER_UNIT)
        return hmac.new(key, raw, hashlib.sha256).hexdigest()


# Names a contract may import from the virtual module ``rxchain_contract``.
EXPORTS: dict[str, Callable[..., Any] | type] = {
    "Context": Context,
    "ContractError": ContractError,
    "Caller": Caller,
}

# Attribute names of API objects (allowed in contract code in addition to builtin methods).
API_ATTRS = frozenset(
    {
        "tx_id",
        "timestamp_ms",
        "contract",
        "caller",
        "get",
        "put",
        "delete",
        "range",
        "history",
        "get_from",
        "range_from",
        "transient",
        "emit",
        "fail",
        "sha256_hex",
        "hmac_sha256_hex",
        "canonical_json",
        "org",
        "role",
        "name",
        "attrs",
        "org_kind",
        "hospital_level",
        "reason",
        "message",
    }
)

__all__ = ["API_ATTRS", "EXPORTS", "Abort", "Caller", "Context", "ContractError", "StateHost"]
