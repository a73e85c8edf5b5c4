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


def _is_const(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant)


Shape = tuple[Any, ...] | str | None


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


class _Instrumenter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.tmp = 0

    def _temp(self) -> str:
        self.tmp += 1
        return f"__rx_t{self.tmp}__"

    # -- module level -----------------------------------------------------------------
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
        self.generic_visit(node)
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None:
                arg.annotation = None
        node.returns = None
        node.body = [
            ast.Expr(_call("__rx_enter__")),
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
        if all(s is None for s in shapes):
            return node
        # ``a, *rest = value``: CPython builds ``rest`` in C; unpack through the meter so the
        # elements are charged and the list is bounded like any other
        if len(node.targets) == 1:
            node.value = _call("__rx_unpack__", node.value, _const(shapes[0]))
            return node
        tmp = self._temp()
        first = ast.Assign(targets=[ast.Name(id=tmp, ctx=ast.Store())], value=node.value)
        rest = [
            ast.Assign(targets=[t], value=_name(tmp) if s is None else _call(
                "__rx_unpack__", _name(tmp), _const(s)))
            for t, s in zip(node.targets, shapes, strict=True)
        ]
        return [ast.copy_location(a, node) for a in (first, *rest)]

    def visit_For(self, node: ast.For) -> Any:
        self.generic_visit(node)
        shape = _shape(node.target)
        if shape is not None:
            node.iter = _call("__rx_unpacks__", node.iter, _const(shape))
        node.body.insert(0, ast.Expr(_call("__rx_gas__")))
        return node

    def visit_While(self, node: ast.While) -> Any:
        self.generic_visit(node)
        node.body.insert(0, ast.Expr(_call("__rx_gas__")))
        return node

    def visit_comprehension(self, node: ast.comprehension) -> Any:
        self.generic_visit(node)
        node.iter = _call("__rx_it__", node.iter)
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
            return node
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
        if isinstance(node, ast.Constant) and type(node.value) in (str, int, bool):
            return node
        return _call("__rx_elem__", node)

    def _key(self, node: ast.expr) -> ast.expr:
        """A dict key: checked to be hashable in a deterministic way."""
        if isinstance(node, ast.Constant) and type(node.value) in (str, int, bool, type(None)):
            return node
        return _call("__rx_key__", node)

    def visit_SetComp(self, node: ast.SetComp) -> Any:
        self.generic_visit(node)
        node.elt = self._elem(node.elt)
        return node

    def visit_DictComp(self, node: ast.DictComp) -> Any:
        self.generic_visit(node)
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
    tree = instrument(checked)
    try:
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
