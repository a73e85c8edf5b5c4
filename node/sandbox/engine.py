"""Executes one invocation of compiled contract code against a state host.

Used inside the worker process (worker.py) and, for tests and benchmarks, in-process
(inprocess.py).  Not thread-safe: one Engine runs one invocation at a time.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
from collections import OrderedDict
from functools import partial
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import Any

from node.sandbox import canonical
from node.sandbox import types as t
from node.sandbox.api import Context, ContractError, StateHost, valid_reason
from node.sandbox.checker import ALLOWED_BUILTINS, FunctionSig
from node.sandbox.errors import Abort, BadValue, ContractRejected, OutOfGas
from node.sandbox.hashguard import HashLedger
from node.sandbox.instrument import CompiledContract, api_globals, compile_contract
from node.sandbox.meter import LAZY_TYPES, Meter, TypeProxy

MAX_MESSAGE = 1024
CACHE_SIZE = 64

_KIND_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict}


def _builtins(meter: Meter) -> dict[str, Any]:
    b: dict[str, Any] = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}
    for typ in (str, int, bool, list, dict, set, frozenset, tuple, *LAZY_TYPES):
        b[typ.__name__] = TypeProxy(meter, typ)
    b["sorted"] = meter.sorted
    b["sum"] = meter.sum
    b["pow"] = meter.pow
    b["round"] = meter.round

    # plain closures, not functools.partial (whose .func/.args would expose the originals)
    def repr_(value: Any) -> str:
        return meter.text(value, True)

    def min_(*args: Any, **kw: Any) -> Any:
        return meter.consume(min, *args, **kw)

    def max_(*args: Any, **kw: Any) -> Any:
        return meter.consume(max, *args, **kw)

    def any_(iterable: Any) -> bool:
        return any(meter.it(iterable))

    def isinstance_(obj: Any, classinfo: Any, /) -> bool:
        # a tuple of types is walked in C, each entry a call of TypeProxy.__instancecheck__:
        # ``isinstance(1, (list,) * 1_000_000)`` ran 77 ms for 1 gas
        if type(classinfo) is tuple:
            meter.left -= 1 + len(classinfo)
            if meter.left < 0:
                raise meter.fail(OutOfGas(f"gas limit {meter.limit} exhausted"))
            if tuple in map(type, classinfo):
                meter.hash_cost(classinfo)  # nested tuples: every entry walked, depth bounded
        return isinstance(obj, classinfo)

    def all_(iterable: Any) -> bool:
        return all(meter.it(iterable))

    def divmod_(a: Any, b: Any, /) -> Any:
        meter.division(a, b)
        return divmod(a, b)

    b.update(repr=repr_, min=min_, max=max_, any=any_, all=all_, isinstance=isinstance_,
             divmod=divmod_)
    return b


def _helpers(meter: Meter) -> dict[str, Any]:
    return {
        "__rx_gas__": meter.gas,
        "__rx_enter__": meter.enter,
        "__rx_leave__": meter.leave,
        "__rx_it__": meter.it,
        "__rx_itw__": meter.itw,
        "__rx_itt__": meter.itt,
        "__rx_scan__": meter.scan,
        "__rx_targets__": meter.targets,
        "__rx_step__": meter.step,
        "__rx_cmpv__": meter.compared,
        "__rx_sized__": meter.sized,
        "__rx_unpack__": meter.unpack,
        "__rx_unpacks__": meter.unpacks,
        "__rx_reraise__": meter.reraise,
        "__rx_add__": meter.add,
        "__rx_iadd__": meter.iadd,
        "__rx_mul__": meter.mul,
        "__rx_imul__": meter.imul,
        "__rx_pow__": meter.pow,
        "__rx_lshift__": meter.lshift,
        "__rx_mod__": meter.mod,
        "__rx_other__": meter.other,
        "__rx_contains__": meter.contains,
        "__rx_compare__": meter.compare,
        "__rx_slice__": meter.slice,
        "__rx_meth__": meter.meth,
        "__rx_attr__": meter.attr,
        "__rx_fmt__": meter.fmt,
        "__rx_key__": meter.key,
        "__rx_hashed__": meter.hashed,
        "__rx_delitem__": meter.delitem,
        "__rx_elem__": meter.elem,
        "__rx_elems__": meter.keys,
    }


# Reasons only the runtime may report: they say the outcome depends on the machine (and a
# worker that reports MEMORY_LIMIT is replaced), so a contract may not claim them.
RESERVED_REASONS = frozenset({t.TIMEOUT, t.MEMORY_LIMIT, t.WORKER_CRASHED})


def _truncate(text: str) -> str:
    """At most MAX_MESSAGE characters of valid text: lone surrogates (``ctx.fail("X",
    "\\ud800")``, an exception about one) are escaped as ``\\ud800`` -- the result
    message is a protobuf string, and serializing one killed the worker (WORKER_CRASHED
    and a restart per call, where the in-process runner answered normally)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def describe(value: Any, limits: t.SandboxLimits, quote: bool = False) -> str:
    """Deterministic text of a value for error messages (never raises)."""
    try:
        return Meter(1 << 40, limits).text(value, quote)
    except (Abort, Exception):  # noqa: BLE001 - formatting must never fail
        return f"<{type(value).__name__}>"


def check_args(sig: FunctionSig, args_json: bytes, limits: t.SandboxLimits) -> dict[str, Any]:
    """Decode and type-check keyword arguments; raises Abort(reason=BAD_ARGUMENTS)."""
    if len(args_json) > limits.max_args_bytes:
        raise Abort(f"arguments larger than {limits.max_args_bytes} bytes", t.BAD_ARGUMENTS)
    try:
        args = canonical.decode(args_json, "arguments") if args_json else {}
    except BadValue as exc:
        raise Abort(exc.message, t.BAD_ARGUMENTS) from None
    if type(args) is not dict:
        raise Abort("arguments must be a JSON object", t.BAD_ARGUMENTS)
    names = {p.name for p in sig.params}
    unknown = sorted(set(args) - names)
    if unknown:
        raise Abort(f"{sig.name}: unknown argument(s) {', '.join(unknown)}", t.BAD_ARGUMENTS)
    for p in sig.params:
        if p.name not in args:
            if p.required:
                raise Abort(f"{sig.name}: missing argument {p.name!r}", t.BAD_ARGUMENTS)
            continue
        v = args[p.name]
        if v is None:
            if p.nullable or not p.types:
                continue
            raise Abort(f"{sig.name}: argument {p.name!r} may not be null", t.BAD_ARGUMENTS)
        if p.types and not any(type(v) is _KIND_TYPES[k] for k in p.types):
            want = "|".join(sorted(p.types))
            raise Abort(
                f"{sig.name}: argument {p.name!r} must be {want}, not {type(v).__name__}",
                t.BAD_ARGUMENTS,
            )
    return args


def invalid_invocation(inv: t.Invocation) -> str | None:
    """Why an Invocation is malformed (wrong types or out-of-range numbers), or None."""
    for name, v in (("contract", inv.contract), ("code_hash", inv.code_hash),
                    ("function", inv.function)):
        if type(v) is not str or not v or len(v) > 256:
            return f"{name} must be a non-empty string of at most 256 characters"
    if type(inv.source) is not str or type(inv.tx_id) is not str:
        return "source and tx_id must be strings"
    if type(inv.args_json) is not bytes:
        return "args_json must be bytes"
    if type(inv.timestamp_ms) is not int or not -(1 << 63) <= inv.timestamp_ms < 1 << 63:
        return "timestamp_ms must be a 64-bit integer"
    if type(inv.gas_limit) is not int or not 0 <= inv.gas_limit < 1 << 63:
        return "gas_limit must be a non-negative 64-bit integer"
    c = inv.caller
    if not isinstance(c, t.CallerInfo) or not (
        type(c.org) is str and type(c.role) is str and type(c.name) is str
        and type(c.org_kind) is str and type(c.hospital_level) is str
    ):
        return "caller must be a CallerInfo of strings"
    for k, v in c.attrs.items():
        if type(k) is not str or type(v) is not str:
            return "caller attributes must map strings to strings"
    for name, data in inv.transient.items():
        if type(name) is not str or type(data) is not bytes:
            return "transient must map names to JSON bytes"
    lim = inv.limits
    if not isinstance(lim, t.SandboxLimits):
        return "limits must be SandboxLimits"
    wall = lim.wall_timeout_s
    if type(wall) not in (int, float) or not 0 < wall < 86400:
        return "limits.wall_timeout_s must be positive"
    for name, bound in _LIMIT_BOUNDS:
        n = getattr(lim, name)
        if type(n) is not int or not 0 <= n < bound:
            return f"limits.{name} is out of range"
    return None


_U32_LIMITS = frozenset({"max_recursion_depth", "max_int_bits", "max_key_len", "max_events",
                         "max_range_items", "max_history_items", "cpu_seconds"})
# (field, exclusive upper bound) of every integer limit
_LIMIT_BOUNDS: tuple[tuple[str, int], ...] = tuple(
    (f.name, 1 << 32 if f.name in _U32_LIMITS else 1 << 63)
    for f in dataclasses.fields(t.SandboxLimits) if f.name != "wall_timeout_s"
)


def bad_invocation(message: str) -> t.InvocationResult:
    return t.InvocationResult(False, t.BAD_ARGUMENTS, f"invalid invocation: {message}", b"", (), 0)


_ATOMIC: frozenset[type] = frozenset({int, str, bool, type(None), range, type, TypeProxy})
_CONTAINERS: frozenset[type] = frozenset({list, dict, set, tuple, frozenset})


SHARE_DEPTH = 32  # deepest container nesting a cached module value may have


def shareable(value: Any, budget: int = 100_000) -> bool:
    """True if ``value`` is built only from JSON-like containers and immutable objects
    (functions, builtins, type proxies), so a deep copy of its containers is a faithful
    fresh start.  Iterators, generators, views, exceptions... are not, and neither is a
    ``set``: a copied set may iterate in another order than the one the module body built,
    so modules holding sets are never cached.  Nor is a value nested deeper than
    :data:`SHARE_DEPTH`: :func:`needs_copy` and :func:`fresh_copy` recurse, and such a
    module simply takes the fresh path (the reference behaviour)."""
    stack = [(value, 0)]
    while stack:
        budget -= 1
        if budget < 0:
            return False
        v, depth = stack.pop()
        tv = type(v)
        if tv in _ATOMIC:
            continue
        if tv is BuiltinFunctionType or tv is MethodType:
            # builtins and the meter's wrappers (sorted, sum...); never a container's method
            if type(v.__self__) in _CONTAINERS or (tv is MethodType and type(v.__self__)
                                                   is not Meter):
                return False
            continue
        if tv is FunctionType:
            if v.__closure__ is not None:
                return False  # a closure cell could hold state from an earlier call
            continue
        if tv is partial:
            # e.g. ``APPEND = ITEMS.append``: bound to the module's own (pristine) list
            if v.keywords or any(not shareable(a) or needs_copy(a) for a in v.args):
                return False
            continue
        if tv not in _CONTAINERS or tv is set or depth >= SHARE_DEPTH:
            return False
        depth += 1
        if tv is dict:
            stack.extend((k, depth) for k in v)
            stack.extend((x, depth) for x in v.values())
        else:
            stack.extend((x, depth) for x in v)
    return True


def needs_copy(value: Any) -> bool:
    tv = type(value)
    if tv is list or tv is dict or tv is set:
        return True
    if tv is tuple or tv is frozenset:
        return any(needs_copy(x) for x in value)
    return False


def fresh_copy(values: dict[str, Any]) -> dict[str, Any]:
    """Copies of the module's mutable values (aliasing between them preserved)."""
    memo: dict[int, Any] = {}

    def cp(v: Any) -> Any:
        tv = type(v)
        if tv not in _CONTAINERS:
            return v
        done = memo.get(id(v))
        if done is not None:
            return done
        out: Any
        if tv is list:
            out = []
            memo[id(v)] = out
            out.extend(cp(x) for x in v)
        elif tv is dict:
            out = {}
            memo[id(v)] = out
            for k, x in v.items():
                out[cp(k)] = cp(x)
        elif tv is set:
            out = set()
            memo[id(v)] = out
            out.update(cp(x) for x in v)
        elif needs_copy(v):
            out = tv(cp(x) for x in v)
            memo[id(v)] = out
        else:
            out = v
        return out

    return {name: cp(v) for name, v in values.items()}


@dataclasses.dataclass
class _Module:
    """A contract module executed once: its namespace (functions bound to it), the
    pristine mutable values to copy for each call, and the gas its body costs."""

    ns: dict[str, Any]
    pristine: dict[str, Any]
    init_gas: int
    flat: bool = False  # every pristine value is a distinct list/dict/set of immutables
    # the tuple/frozenset keys the body recorded: a call's lookups in the module's dicts
    # pay for their collisions (hashguard); never written after the body ran
    hashes: HashLedger | None = None

    def fresh(self) -> dict[str, Any]:
        """Fresh copies of the pristine values (same result as ``fresh_copy``)."""
        if self.flat:
            return {name: type(v)(v) for name, v in self.pristine.items()}
        return fresh_copy(self.pristine)


def is_flat(values: dict[str, Any]) -> bool:
    """True if every value is a list/dict/set whose items need no copy and no two values
    are the same object (so shallow copies are exactly ``fresh_copy``'s result)."""
    seen: set[int] = set()
    for v in values.values():
        tv = type(v)
        if tv is dict:
            items: Any = list(v.values())
        elif tv is list or tv is set:
            items = v
        else:
            return False
        if id(v) in seen or any(needs_copy(x) for x in items):
            return False
        seen.add(id(v))
    return True


class Engine:
    """Compile cache plus the invocation loop of one worker (or in-process runner)."""

    def __init__(
        self, *, cache_size: int = CACHE_SIZE, skip_checks: bool = False, module_cache: bool = True
    ) -> None:
        """``module_cache=False`` runs the module body afresh for every call (the reference
        behaviour the cached path must match; used by tests)."""
        self._module_cache = module_cache and not skip_checks
        self.meter = Meter(0, t.SandboxLimits())
        self._template: dict[str, Any] = {
            "__builtins__": _builtins(self.meter),
            "__name__": "contract",
            **api_globals(),
            **_helpers(self.meter),
        }
        self._cache: OrderedDict[str, CompiledContract] = OrderedDict()
        self._modules: dict[
            int, tuple[CompiledContract, t.SandboxLimits, _Module | None, int]
        ] = {}
        self._cache_size = cache_size
        self._skip_checks = skip_checks

    def cached(self, code_hash: str) -> CompiledContract | None:
        c = self._cache.get(code_hash)
        if c is not None:
            self._cache.move_to_end(code_hash)
        return c

    def forget(self, code_hash: str) -> None:
        c = self._cache.pop(code_hash, None)
        if c is not None:
            self._modules.pop(id(c), None)

    def _module(
        self, compiled: CompiledContract, limits: t.SandboxLimits, gas_limit: int
    ) -> _Module | None:
        """The executed module of ``compiled`` for ``limits``, or None when the module body
        must run afresh for this call (it failed, ran out of ``gas_limit``, or holds values
        that cannot be copied faithfully)."""
        entry = self._modules.get(id(compiled))
        if (
            entry is not None
            and entry[0] is compiled
            and entry[1] == limits
            and (entry[2] is not None or gas_limit <= entry[3])
        ):
            return entry[2]
        meter = self.meter
        meter.reset(gas_limit, limits)  # bounded like the call itself
        ns = dict(self._template)
        module: _Module | None = None
        retry_above = 1 << 63  # failures other than running out of gas are final
        try:
            exec(compiled.code, ns)  # noqa: S102 - checked and instrumented contract code
            ran = True
        except OutOfGas:
            ran, retry_above = False, gas_limit
        except (Abort, Exception):  # noqa: BLE001 - such modules take the fresh path
            ran = False
        if ran and meter.aborted is None and meter.depth == 0:
            pristine: dict[str, Any] = {}
            safe = True
            for name, v in ns.items():
                if name in self._template:
                    continue
                if not shareable(v):
                    safe = False
                    break
                if needs_copy(v):
                    pristine[name] = v
            if safe:
                module = _Module(ns, pristine, meter.used(), is_flat(pristine), meter.hashes)
        if len(self._modules) >= self._cache_size:
            self._modules.pop(next(iter(self._modules)))
        self._modules[id(compiled)] = (compiled, limits, module, retry_above)
        return module

    def load(self, code_hash: str, source: str) -> CompiledContract:
        """Compile (check + instrument) and cache; raises ContractRejected."""
        c = compile_raw(source, code_hash) if self._skip_checks else compile_contract(
            source, code_hash
        )
        self._cache[code_hash] = c
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return c

    def run(
        self,
        compiled: CompiledContract,
        *,
        contract: str,
        function: str,
        args_json: bytes,
        tx_id: str,
        timestamp_ms: int,
        caller: t.CallerInfo,
        transient: dict[str, bytes],
        gas_limit: int,
        limits: t.SandboxLimits,
        host: StateHost,
    ) -> t.InvocationResult:
        meter = self.meter
        module = None
        ctx: Context | None = None
        try:
            if self._module_cache and compiled.functions.get(function) is not None:
                module = self._module(compiled, limits, gas_limit)  # once, before this call's meter
            meter.reset(gas_limit, limits, module.hashes if module is not None else None)
            sig = compiled.functions.get(function)
            if sig is None:
                raise Abort(f"no public function {function!r}", t.UNKNOWN_FUNCTION)
            kwargs = check_args(sig, args_json, limits)
            meter.gas(len(args_json) // 32)
            ctx = Context(
                meter=meter,
                host=host,
                contract=contract,
                tx_id=tx_id,
                timestamp_ms=timestamp_ms,
                caller=caller,
                transient=transient,
                limits=limits,
            )
            if module is not None:
                # the module body was run once for these limits: charge what it cost and
                # give this call fresh copies of the module's mutable values
                meter.gas(module.init_gas)
                ns = module.ns
                if module.pristine:
                    ns.update(module.fresh())
            else:
                ns = dict(self._template)
                if self._skip_checks:
                    ns["__builtins__"] = builtins
                exec(compiled.code, ns)  # noqa: S102 - checked and instrumented contract code
            try:
                value = ns[function](ctx, **kwargs)
            finally:
                if module is not None and module.pristine:
                    # drop this call's copies: nothing it built outlives it in the cache
                    ns.update(module.pristine)
            result, nodes = canonical.encode(value, "result", limits.max_value_bytes)
            meter.gas(nodes + len(result) // 32)
            if meter.aborted is not None:
                raise meter.aborted
            return t.InvocationResult(True, "", "", result, tuple(ctx._events), meter.used())
        except ContractError as exc:
            if meter.aborted is not None:
                return self._fail(meter.aborted.reason, meter.aborted.message)
            if not valid_reason(exc.reason):
                return self._fail(
                    t.CONTRACT_EXCEPTION, f"invalid ContractError reason {describe(exc.reason, limits, True)}"
                )
            if exc.reason in RESERVED_REASONS:
                return self._fail(t.CONTRACT_EXCEPTION, f"ContractError reason {exc.reason} is reserved "
                                  "for the runtime")
            msg = exc.message if type(exc.message) is str else describe(exc.message, limits)
            return self._fail(exc.reason, msg)
        except Abort as exc:
            first = meter.aborted or exc
            return self._fail(first.reason, first.message)
        except MemoryError:
            raise  # the worker reports MEMORY_LIMIT and is replaced
        except RecursionError:
            return self._fail(t.RECURSION_LIMIT, "interpreter recursion limit reached")
        except Exception as exc:  # noqa: BLE001 - contract exceptions are arbitrary
            if meter.aborted is not None:
                return self._fail(meter.aborted.reason, meter.aborted.message)
            return self._fail(
                t.CONTRACT_EXCEPTION, f"{type(exc).__name__}: {describe(exc, limits)}"
            )

    def _fail(self, reason: str, message: str) -> t.InvocationResult:
        return t.InvocationResult(False, reason, _truncate(message), b"", (), self.meter.used())


def compile_raw(source: str, code_hash: str) -> CompiledContract:
    """TEST-ONLY: compile without static checks or metering, with the real builtins.

    Only workers started with ``allow_unchecked`` accept it; it exists to prove that the
    process isolation (seccomp, rlimits) holds even if the checker were bypassed.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ContractRejected(exc.lineno or 0, exc.msg) from None
    functions = {
        s.name: FunctionSig(s.name, ()) for s in tree.body if isinstance(s, ast.FunctionDef)
    }
    return CompiledContract(compile(tree, f"<raw {code_hash[:16]}>", "exec"), functions)


def rejected_result(exc: ContractRejected) -> t.InvocationResult:
    return t.InvocationResult(False, t.CONTRACT_REJECTED, _truncate(str(exc)), b"", (), 0)
