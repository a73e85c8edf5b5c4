"""AST instrumentation: turns a checked contract into metered code.

Inserted names all start with ``__rx_`` (contract code cannot spell double-underscore
names, so it cannot reach or rebind them).  See meter.py for what each helper charges.
"""

from __future__ import annotations

import ast
import operator
import warnings
from dataclasses import dataclass
from types import CodeType
from typing import Any

from node.sandbox.api import EXPORTS
from node.sandbox.checker import CheckedContract, FunctionSig, check_source
from node.sandbox.errors import ContractRejected
from node.sandbox.hashguard import int_hashes_apart
from node.sandbox.meter import BUILTIN_METHODS

# Binary ops whose result is bounded by the operands when one side is a small int literal.
_CHEAP_WITH_INT = (ast.Add, ast.Sub, ast.FloorDiv, ast.BitAnd, ast.BitOr, ast.BitXor, ast.RShift)
_SMALL = 1 << 31

_OTHER_OPS: dict[type[ast.operator], str] = {
    ast.Sub: "sub",
    ast.FloorDiv: "floordiv",
    ast.BitAnd: "and_",
    ast.BitOr: "or_",
    ast.BitXor: "xor",
    ast.RShift: "rshift",
}
_OTHER_IOPS: dict[type[ast.operator], str] = {
    ast.Sub: "isub",
    ast.FloorDiv: "ifloordiv",
    ast.BitAnd: "iand",
    ast.BitOr: "ior",
    ast.BitXor: "ixor",
    ast.RShift: "irshift",
}
_COMPARE_OPS: dict[type[ast.cmpop], str] = {
    ast.Eq: "eq",
    ast.NotEq: "ne",
    ast.Lt: "lt",
    ast.LtE: "le",
    ast.Gt: "gt",
    ast.GtE: "ge",
}
OPERATORS: dict[str, Any] = {
    f"__rx_op_{name}__": getattr(operator, name)
    for name in [*_OTHER_OPS.values(), *_OTHER_IOPS.values(), *_COMPARE_OPS.values()]
}


def _name(id_: str) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Load())


def _call(fn: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_name(fn), args=list(args), keywords=[])


def _const(v: Any) -> ast.Constant:
    return ast.Constant(value=v)


def _small_int(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and type(node.value) is int
        and -_SMALL < node.value < _SMALL
    )


def _hashes_apart(node: ast.Constant) -> bool:
    """A literal key/element needing no run-time check: not an integer whose hash it shares
    with a smaller one (``Meter.key`` refuses those, :mod:`hashguard`)."""
    return type(node.value) is not int or int_hashes_apart(node.value)


def _is_const(node: ast.expr) -> bool:
    """A literal whose comparison with anything is cheap: not a long string (a comparison
    with a 500 KB literal is a 500 KB memcmp, charged like any other operand)."""
    return isinstance(node, ast.Constant) and not (type(node.value) is str and len(node.value) > 256)


Shape = tuple[Any, ...] | str | None

# Straight-line code is charged by its size where it is large: a function body (and the
# module body), one loop iteration and one comprehension element cost, besides CALL / 1
# gas, one gas per WEIGHT_PER_GAS units of static weight beyond a free weight (weight: one
# per syntax node, plus DISPLAY_ELEMENT_WEIGHT per element of a dict or set display, which
# is hashed and inserted).  Ordinary code stays under the free weights and pays what it
# always paid (the largest story function weighs ~1,900, the largest loop body ~440);
# without this a loop whose body held a 40,000-entry dict display ran 6 ms per gas.
FREE_WEIGHT_CALL = 2048
FREE_WEIGHT_STEP = 512
WEIGHT_PER_GAS = 32
DISPLAY_ELEMENT_WEIGHT = 32
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


def weight(nodes: list[Any]) -> int:
    """Static weight of the code in ``nodes`` that runs once per pass: nested function
    bodies, loop bodies (and a while's test) and comprehension elements are charged where
    they run, so they are left out (a def's defaults, a for's iterable and a
    comprehension's first iterable are counted: they run here)."""
    total = 0
    stack: list[ast.AST] = list(nodes)
    while stack:
        n = stack.pop()
        total += 1
        if isinstance(n, ast.FunctionDef):
            stack.extend(n.args.defaults)
            stack.extend(d for d in n.args.kw_defaults if d is not None)
        elif isinstance(n, ast.For):
            stack.append(n.iter)
            stack.extend(n.orelse)
        elif isinstance(n, ast.While):
            stack.extend(n.orelse)
        elif isinstance(n, _COMPREHENSIONS):
            stack.append(n.generators[0].iter)
        else:
            if isinstance(n, ast.Dict):
                total += DISPLAY_ELEMENT_WEIGHT * len(n.keys)
            elif isinstance(n, ast.Set):
                total += DISPLAY_ELEMENT_WEIGHT * len(n.elts)
            stack.extend(ast.iter_child_nodes(n))
    return total


def extra_gas(nodes: list[Any], free: int) -> int:
    """Gas charged for ``nodes`` besides the CALL / per-iteration gas (0 for ordinary code:
    ``free`` is FREE_WEIGHT_CALL for bodies, FREE_WEIGHT_STEP for iterations)."""
    return max(0, weight(nodes) - free) // WEIGHT_PER_GAS


def _element_nodes(node: ast.expr) -> list[Any]:
    """What a comprehension evaluates per element: the element(s), the conditions, the
    targets and the iterables of the inner generators."""
    assert isinstance(node, _COMPREHENSIONS)
    out: list[Any] = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    for i, g in enumerate(node.generators):
        out.append(g.target)
        out.extend(g.ifs)
        if i:
            out.append(g.iter)
    return out


def _shape(target: ast.expr) -> Shape:
    """The unpacking shape of an assignment target, or None when it unpacks nothing with a
    star: a tuple per list/tuple target (children's shapes), ``"*"`` for ``*name``, and a
    ``("**", inner)`` pair for a starred list/tuple (``a, *(b, c) = ...``; no child shape is
    the string ``"**"``, so a target whose first child is ``*name`` -- shape ``("*", ...)`` --
    is never mistaken for it)."""
    if isinstance(target, ast.Starred):
        inner = _shape(target.value)
        return "*" if inner is None else ("**", inner)
    if isinstance(target, ast.Tuple | ast.List):
        parts = tuple(_shape(e) for e in target.elts)
        if any(p is not None for p in parts):  # a star somewhere below
            return parts
    return None


def _tshape(target: ast.expr) -> Shape:
    """The target shape :meth:`Meter.targets` checks, or None when ``target`` unpacks
    nothing (a name, subscript or attribute): ``()`` for a tuple/list target holding only
    names (and starred names), else a tuple per element -- None for a name, ``"*"`` for a
    starred name, the element's own shape for a nested target, ``("**", shape)`` for a
    starred nested one (no element's shape is the string ``"**"``)."""
    if not isinstance(target, ast.Tuple | ast.List):
        return None
    parts: list[Any] = []
    for e in target.elts:
        if isinstance(e, ast.Starred):
            inner = _tshape(e.value)
            parts.append("*" if inner is None else ("**", inner))
        else:
            parts.append(_tshape(e))
    if all(p is None or p == "*" for p in parts):
        return ()
    return tuple(parts)


def _yields_pairs(node: ast.expr) -> bool:
    """``x.items()`` (after instrumentation: ``__rx_meth__(x, "items")``): its elements are
    (key, value) tuples, so a flat target unpacks them without iterating anything."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__rx_scan__":
        node = node.args[0]
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__rx_meth__"
            and len(node.args) == 2 and not node.keywords and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "items")


class _Instrumenter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.tmp = 0

    def _temp(self) -> str:
        self.tmp += 1
        return f"__rx_t{self.tmp}__"

    # -- module level -----------------------------------------------------------------
    def visit_Module(self, node: ast.Module) -> Any:
        extra = extra_gas(node.body, FREE_WEIGHT_CALL)
        self.generic_visit(node)
        if extra:
            node.body.insert(0, ast.Expr(_call("__rx_gas__", _const(extra))))
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        return [
            ast.Assign(
                targets=[ast.Name(id=a.asname or a.name, ctx=ast.Store())],
                value=_name(f"__rx_api_{a.name}__"),
                lineno=node.lineno,
            )
            for a in node.names
        ]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        self.generic_visit(node)
        if node.value is None:
            return None
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)

    # -- functions and loops ------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        extra = extra_gas(node.body, FREE_WEIGHT_CALL)
        self.generic_visit(node)
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                arg.annotation = None
        node.returns = None
        node.body = [
            ast.Expr(_call("__rx_enter__", *([_const(extra)] if extra else []))),
            ast.Try(
                body=node.body,
                handlers=[],
                orelse=[],
                finalbody=[ast.Expr(_call("__rx_leave__"))],
            ),
        ]
        return node

    def visit_Assign(self, node: ast.Assign) -> Any:
        self.generic_visit(node)
        shapes = [_shape(t) for t in node.targets]
        tshapes = [_tshape(t) for t in node.targets]
        if all(s is None for s in tshapes):
            return node

        def wrapped(value: ast.expr, shape: Shape, tshape: Shape) -> ast.expr:
            # ``a, *rest = value``: CPython builds ``rest`` in C; unpack through the meter so
            # the elements are charged and the list is bounded like any other
            if shape is not None:
                value = _call("__rx_unpack__", value, _const(shape))
            # ``a, b = d``: CPython iterates ``d`` to unpack it, slack included
            if tshape is not None:
                value = _call("__rx_targets__", value, _const(tshape))
            return value

        if len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if tshapes[0] == () and isinstance(value, ast.Tuple | ast.List) and isinstance(
                    target, ast.Tuple | ast.List) and len(value.elts) == len(target.elts) and not any(
                    isinstance(e, ast.Starred) for e in (*value.elts, *target.elts)):
                return node  # ``a, b = b, a``: nothing is iterated
            node.value = wrapped(value, shapes[0], tshapes[0])
            return node
        tmp = self._temp()
        first = ast.Assign(targets=[ast.Name(id=tmp, ctx=ast.Store())], value=node.value)
        rest = [
            ast.Assign(targets=[t], value=wrapped(_name(tmp), s, ts))
            for t, s, ts in zip(node.targets, shapes, tshapes, strict=True)
        ]
        return [ast.copy_location(a, node) for a in (first, *rest)]

    def visit_For(self, node: ast.For) -> Any:
        """The iterable pays its slack when iteration starts (``__rx_scan__``: a dict with
        most keys deleted, a sparse set); each iteration its gas.  A tuple/list target is
        assigned from a temporary by ``__rx_step__``, which also charges each element
        CPython iterates to unpack it (``for a, b in dicts``)."""
        extra = extra_gas([node.target, *node.body], FREE_WEIGHT_STEP)
        self.generic_visit(node)
        node.iter = _call("__rx_scan__", node.iter)
        shape = _shape(node.target)
        if shape is not None:
            node.iter = _call("__rx_unpacks__", node.iter, _const(shape))
        tshape = _tshape(node.target)
        gas = [_const(1 + extra)] if extra else []
        if tshape is None or (tshape == () and _yields_pairs(node.iter)):
            node.body.insert(0, ast.Expr(_call("__rx_gas__", *gas)))
            return node
        tmp = self._temp()
        target = node.target
        node.target = ast.Name(id=tmp, ctx=ast.Store())
        step = ast.Assign(targets=[target], value=_call("__rx_step__", _name(tmp), _const(tshape), *gas))
        node.body.insert(0, ast.copy_location(step, target))
        return node

    def visit_While(self, node: ast.While) -> Any:
        extra = extra_gas([node.test, *node.body], FREE_WEIGHT_STEP)
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_call("__rx_gas__", *([_const(1 + extra)] if extra else []))))
        return node

    def _comprehension(self, node: ast.expr) -> Any:
        extra = extra_gas(_element_nodes(node), FREE_WEIGHT_STEP)
        self.generic_visit(node)
        if extra:
            for g in node.generators:  # type: ignore[attr-defined]
                g.iter = _call("__rx_itw__", g.iter, _const(extra))
        return node

    def visit_ListComp(self, node: ast.ListComp) -> Any:
        return self._comprehension(node)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> Any:
        return self._comprehension(node)

    def visit_comprehension(self, node: ast.comprehension) -> Any:
        self.generic_visit(node)
        tshape = _tshape(node.target)
        node.iter = _call("__rx_it__", node.iter) if tshape is None else _call(
            "__rx_itt__", node.iter, _const(tshape))
        shape = _shape(node.target)
        if shape is not None:
            node.iter = _call("__rx_unpacks__", node.iter, _const(shape))
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> Any:
        self.generic_visit(node)
        if node.name is None:
            node.name = "__rx_exc__"
        node.body.insert(0, ast.Expr(_call("__rx_reraise__", _name(node.name))))
        return node

    # -- operators ----------------------------------------------------------------------
    def _binop(self, op: ast.operator, left: ast.expr, right: ast.expr, inplace: bool) -> ast.expr:
        if isinstance(op, ast.Add):
            return _call("__rx_iadd__" if inplace else "__rx_add__", left, right)
        if isinstance(op, ast.Mult):
            return _call("__rx_imul__" if inplace else "__rx_mul__", left, right)
        if isinstance(op, ast.Pow):
            return _call("__rx_pow__", left, right)
        if isinstance(op, ast.LShift):
            return _call("__rx_lshift__", left, right)
        if isinstance(op, ast.Mod):
            return _call("__rx_mod__", left, right)
        table = _OTHER_IOPS if inplace else _OTHER_OPS
        return _call("__rx_other__", _name(f"__rx_op_{table[type(op)]}__"), left, right)

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        self.generic_visit(node)
        if isinstance(node.op, _CHEAP_WITH_INT) and (
            _small_int(node.left) or _small_int(node.right)
        ):
            return node
        return ast.copy_location(self._binop(node.op, node.left, node.right, False), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        self.generic_visit(node)
        if isinstance(node.op, _CHEAP_WITH_INT) and _small_int(node.value):
            return node
        target = node.target
        if isinstance(target, ast.Name):
            value = self._binop(node.op, _name(target.id), node.value, True)
            return ast.copy_location(
                ast.Assign(targets=[ast.Name(id=target.id, ctx=ast.Store())], value=value), node
            )
        if isinstance(target, ast.Subscript):
            obj, key = self._temp(), self._temp()
            first = ast.Assign(targets=[ast.Name(id=obj, ctx=ast.Store())], value=target.value)
            second = ast.Assign(targets=[ast.Name(id=key, ctx=ast.Store())], value=target.slice)
            current = ast.Subscript(value=_name(obj), slice=_name(key), ctx=ast.Load())
            store = ast.Subscript(value=_name(obj), slice=_name(key), ctx=ast.Store())
            third = ast.Assign(
                targets=[store], value=self._binop(node.op, current, node.value, True)
            )
            return [ast.copy_location(s, node) for s in (first, second, third)]
        raise AssertionError("checker admits only name and subscript augmented targets")

    def visit_Compare(self, node: ast.Compare) -> Any:
        self.generic_visit(node)
        if len(node.ops) != 1:
            return self._chain(node)
        op, right = node.ops[0], node.comparators[0]
        if isinstance(op, ast.In):
            return ast.copy_location(_call("__rx_contains__", node.left, right), node)
        if isinstance(op, ast.NotIn):
            inner = _call("__rx_contains__", node.left, right)
            return ast.copy_location(ast.UnaryOp(op=ast.Not(), operand=inner), node)
        fn = _COMPARE_OPS.get(type(op))
        if fn is not None and not (_is_const(node.left) or _is_const(right)):
            # comparing two big sequences costs time proportional to their length
            return ast.copy_location(
                _call("__rx_compare__", _name(f"__rx_op_{fn}__"), node.left, right), node
            )
        return node

    def _chain(self, node: ast.Compare) -> Any:
        """``a < b < c`` (no ``in``: the checker refuses it in chains).  A comparison walks
        at most its smaller operand, so charging one operand of each comparison bounds it:
        comparisons with a literal (bounded by the source) and identity tests are free; for
        the others the right-hand operand is charged, as it is evaluated, its nested size
        (``Meter.compared``) times the comparisons it covers -- also the next one, when that
        needs a charge -- and the left operand of a charged comparison, once, when nothing else
        charges it (its slack: a sparse dict's table is walked whatever the other's size).
        ``lo <= x <= hi`` thus charges ``x`` once for two comparisons and ``lo`` once,
        ``0 <= i < n`` ``i`` and ``n`` once (ints: no gas).  The
        chain stays a chain: Python's short-circuit and single evaluation of each operand
        (it used to run unmetered: two 40**4-element lists compared for 1,000 gas)."""
        operands = [node.left, *node.comparators]

        def charged(i: int) -> bool:  # does comparison i (operands i, i+1) need a charge?
            return i < len(node.ops) and not isinstance(node.ops[i], ast.Is | ast.IsNot) and not (
                _is_const(operands[i]) or _is_const(operands[i + 1]))

        walks = [0] * len(operands)
        i = 0
        while i < len(node.ops):
            if charged(i):
                walks[i + 1] = 2 if charged(i + 1) else 1
                i += walks[i + 1]
            else:
                i += 1
        # the left operand of a charged comparison pays too: dict == dict walks the left
        # one's table, deleted entries included, whatever the right one's size (0 gas for
        # ints and short strings: ``lo <= x <= hi`` costs what it did)
        for i in range(len(node.ops)):
            if charged(i) and walks[i] == 0:
                walks[i] = 1
        wrapped = [
            x if n == 0 else _call("__rx_cmpv__", x, _const(n))
            for x, n in zip(operands, walks, strict=True)
        ]
        node.left, node.comparators = wrapped[0], wrapped[1:]
        return node

    def visit_Delete(self, node: ast.Delete) -> Any:
        """``del x[k]`` goes through the meter (``del lst[0]`` moves the whole list: it ran
        unmetered, 0.1 ms per gas on a 1 M-element list); other targets stay, in order."""
        out: list[ast.stmt] = []
        targets = list(node.targets)
        while targets:
            target = targets.pop(0)
            if isinstance(target, ast.Tuple | ast.List):  # ``del (a[0], b[1])``: in order
                targets[:0] = target.elts
                continue
            if isinstance(target, ast.Subscript) and not isinstance(target.slice, ast.Slice):
                call = _call("__rx_delitem__", self.visit(target.value), self.visit(target.slice))
                out.append(ast.Expr(call))
            else:
                out.append(ast.Delete(targets=[self.visit(target)]))
        return [ast.copy_location(s, node) for s in out]

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Store) and not isinstance(node.slice, ast.Slice | ast.Constant):
            node.slice = _call("__rx_key__", node.slice)  # d[k] = v: k must hash stably
            return node
        if not isinstance(node.slice, ast.Slice | ast.Constant):
            # d[k] / d[a, b] (load or delete): a tuple key is hashed, charge it like a key
            node.slice = _call("__rx_hashed__", node.slice)
            return node
        if isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Slice):
            s = node.slice
            return ast.copy_location(
                _call(
                    "__rx_slice__",
                    node.value,
                    s.lower or _const(None),
                    s.upper or _const(None),
                    s.step or _const(None),
                ),
                node,
            )
        return node

    # -- calls, attributes, unpacking, formatting ------------------------------------------
    def visit_Call(self, node: ast.Call) -> Any:
        func = node.func
        node.args = [self.visit(a) for a in node.args]
        node.keywords = [self.visit(k) for k in node.keywords]
        node.args = [self._unpack(a) for a in node.args]
        for k in node.keywords:
            if k.arg is None:
                k.value = _call("__rx_sized__", k.value)
        if isinstance(func, ast.Attribute) and func.attr in BUILTIN_METHODS:
            obj = self.visit(func.value)
            return ast.copy_location(
                ast.Call(
                    func=_name("__rx_meth__"),
                    args=[obj, _const(func.attr), *node.args],
                    keywords=node.keywords,
                ),
                node,
            )
        node.func = self.visit(func)
        return node

    def _unpack(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Starred):
            node.value = _call("__rx_sized__", node.value)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load) and node.attr in BUILTIN_METHODS:
            return ast.copy_location(_call("__rx_attr__", node.value, _const(node.attr)), node)
        return node

    def visit_List(self, node: ast.List) -> Any:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            node.elts = [self._unpack(e) for e in node.elts]
        return node

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            node.elts = [self._unpack(e) for e in node.elts]
        return node

    def visit_Set(self, node: ast.Set) -> Any:
        self.generic_visit(node)
        node.elts = [self._elem(e) for e in node.elts]
        return node

    def _elem(self, node: ast.expr) -> ast.expr:
        """A set element: its hash (which orders the set) must be the same on every peer."""
        if isinstance(node, ast.Starred):
            node.value = _call("__rx_elems__", node.value)
            return node
        if isinstance(node, ast.Constant) and type(node.value) in (str, int, bool) and _hashes_apart(node):
            return node
        return _call("__rx_elem__", node)

    def _key(self, node: ast.expr) -> ast.expr:
        """A dict key: checked to be hashable in a deterministic way."""
        if isinstance(node, ast.Constant) and type(node.value) in (str, int, bool, type(None)) and (
                _hashes_apart(node)):
            return node
        return _call("__rx_key__", node)

    def visit_SetComp(self, node: ast.SetComp) -> Any:
        self._comprehension(node)
        node.elt = self._elem(node.elt)
        return node

    def visit_DictComp(self, node: ast.DictComp) -> Any:
        self._comprehension(node)
        node.key = self._key(node.key)
        return node

    def visit_Dict(self, node: ast.Dict) -> Any:
        self.generic_visit(node)
        node.keys = [None if k is None else self._key(k) for k in node.keys]
        node.values = [
            _call("__rx_sized__", v) if k is None else v
            for k, v in zip(node.keys, node.values, strict=True)
        ]
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> Any:
        self.generic_visit(node)
        spec: ast.expr = node.format_spec if node.format_spec is not None else _const("")
        node.value = _call("__rx_fmt__", node.value, _const(node.conversion), spec)
        node.conversion = -1
        node.format_spec = None
        return node


@dataclass(frozen=True)
class CompiledContract:
    """Instrumented module code plus the public function signatures."""

    code: CodeType
    functions: dict[str, FunctionSig]


def instrument(checked: CheckedContract) -> ast.Module:
    tree = _Instrumenter().visit(checked.tree)
    assert isinstance(tree, ast.Module)
    ast.fix_missing_locations(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if line is not None:
            end = getattr(node, "end_lineno", None)
            if end is None or end < line:
                setattr(node, "end_lineno", line)  # noqa: B010 - generic AST node
                setattr(node, "end_col_offset", getattr(node, "col_offset", 0))  # noqa: B010
    return tree


def compile_contract(source: str, code_hash: str = "") -> CompiledContract:
    """check_source + instrument + compile (raises ContractRejected).

    Some errors only the compiler sees (its symbol table and code generator run after the
    parser the checker uses): ``break`` outside a loop, a duplicate parameter name, a
    starred assignment target, a repeated keyword argument... They are CONTRACT_REJECTED
    too, naming the line (an escaping SyntaxError used to kill the worker: WORKER_CRASHED
    on every call). The outcome is the same on every peer running the same Python.
    """
    checked = check_source(source)
    try:
        tree = instrument(checked)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = compile(tree, f"<contract {code_hash[:16]}>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ContractRejected(exc.lineno or 0, f"syntax error: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise ContractRejected(0, f"uncompilable source: {type(exc).__name__}") from None
    return CompiledContract(code, checked.functions)


def api_globals() -> dict[str, Any]:
    """Names the instrumented code reads besides the meter helpers."""
    g: dict[str, Any] = {f"__rx_api_{k}__": v for k, v in EXPORTS.items()}
    g.update(OPERATORS)
    return g
