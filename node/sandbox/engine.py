"""Executes one invocation of compiled contract code against a state host.

Used inside the worker process (worker.py) and, for tests and benchmarks, in-process
(inprocess.py).  Not thread-safe: one Engine runs one invocation at a time.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
from collections import OrderedDict
from typing import Any

from node.sandbox import canonical
from node.sandbox import types as t
from node.sandbox.api import Context, ContractError, StateHost, valid_reason
from node.sandbox.checker import ALLOWED_BUILTINS, FunctionSig
from node.sandbox.errors import Abort, BadValue, ContractRejected
from node.sandbox.instrument import CompiledContract, api_globals, compile_contract
from node.sandbox.meter import Meter, TypeProxy

MAX_MESSAGE = 1024
CACHE_SIZE = 64

_KIND_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict}


def _builtins(meter: Meter) -> dict[str, Any]:
    b: dict[str, Any] = {name: getattr(builtins, name) for name in ALLOWED_BUILTINS}
    for typ in (str, int, bool, list, dict, set, frozenset, tuple):
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

    def all_(iterable: Any) -> bool:
        return all(meter.it(iterable))

    b.update(repr=repr_, min=min_, max=max_, any=any_, all=all_)
    return b


def _helpers(meter: Meter) -> dict[str, Any]:
    return {
        "__rx_gas__": meter.gas,
        "__rx_enter__": meter.enter,
        "__rx_leave__": meter.leave,
        "__rx_it__": meter.it,
        "__rx_sized__": meter.sized,
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
        "__rx_elem__": meter.elem,
        "__rx_elems__": meter.keys,
    }


def _truncate(text: str) -> str:
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
    for name in ("contract", "code_hash", "function"):
        v = getattr(inv, name)
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
    if not isinstance(c, t.CallerInfo) or not all(
        type(getattr(c, f)) is str for f in ("org", "role", "name", "org_kind", "hospital_level")
    ):
        return "caller must be a CallerInfo of strings"
    if not all(type(k) is str and type(v) is str for k, v in c.attrs.items()):
        return "caller attributes must map strings to strings"
    if not all(type(k) is str and type(v) is bytes for k, v in inv.transient.items()):
        return "transient must map names to JSON bytes"
    lim = inv.limits
    if not isinstance(lim, t.SandboxLimits):
        return "limits must be SandboxLimits"
    for f in dataclasses.fields(lim):
        v = getattr(lim, f.name)
        if f.name == "wall_timeout_s":
            if type(v) not in (int, float) or not 0 < v < 86400:
                return "limits.wall_timeout_s must be positive"
        elif type(v) is not int or not 0 <= v < (1 << 32 if f.name in _U32_LIMITS else 1 << 63):
            return f"limits.{f.name} is out of range"
    return None


_U32_LIMITS = frozenset({"max_recursion_depth", "max_int_bits", "max_key_len", "max_events",
                         "max_range_items", "max_history_items", "cpu_seconds"})


def bad_invocation(message: str) -> t.InvocationResult:
    return t.InvocationResult(False, t.BAD_ARGUMENTS, f"invalid invocation: {message}", b"", (), 0)


class Engine:
    """Compile cache plus the invocation loop of one worker (or in-process runner)."""

    def __init__(self, *, cache_size: int = CACHE_SIZE, skip_checks: bool = False) -> None:
        self.meter = Meter(0, t.SandboxLimits())
        self._template: dict[str, Any] = {
            "__builtins__": _builtins(self.meter),
            "__name__": "contract",
            **api_globals(),
            **_helpers(self.meter),
        }
        self._cache: OrderedDict[str, CompiledContract] = OrderedDict()
        self._cache_size = cache_size
        self._skip_checks = skip_checks

    def cached(self, code_hash: str) -> CompiledContract | None:
        c = self._cache.get(code_hash)
        if c is not None:
            self._cache.move_to_end(code_hash)
        return c

    def forget(self, code_hash: str) -> None:
        self._cache.pop(code_hash, None)

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
        meter.reset(gas_limit, limits)
        ctx: Context | None = None
        try:
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
            ns = dict(self._template)
            if self._skip_checks:
                ns["__builtins__"] = builtins
            exec(compiled.code, ns)  # noqa: S102 - checked and instrumented contract code
            value = ns[function](ctx, **kwargs)
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
