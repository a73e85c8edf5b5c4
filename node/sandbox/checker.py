"""Static checks of contract source at deploy time (and again when a worker compiles it).

``check_source(source)`` raises ``ContractRejected(line, message)`` for the first construct
outside the contract subset (see api.py for the rules) and otherwise returns the parsed
module plus the signatures of the public functions.
"""

from __future__ import annotations

import ast
import builtins
import warnings
from dataclasses import dataclass

from node.sandbox.api import API_ATTRS, EXPORTS
from node.sandbox.errors import ContractRejected
from node.sandbox.meter import BUILTIN_METHODS

API_MODULE = "rxchain_contract"
MAX_SOURCE_BYTES = 512 * 1024
MAX_NODES = 200_000
MAX_DEPTH = 80
# Integer literals are bounded like the integers arithmetic builds (SandboxLimits.max_int_bits
# by default): hexadecimal literals escape Python's 4,300-digit rule, and a 1,000,000-bit
# literal divided by another runs for seconds inside one uncharged ``//``.
MAX_INT_LITERAL_BITS = 4096

ALLOWED_EXCEPTIONS = frozenset(
    {
        "Exception",
        "ValueError",
        "KeyError",
        "IndexError",
        "TypeError",
        "ZeroDivisionError",
        "ArithmeticError",
        "LookupError",
        "AssertionError",
        "OverflowError",
    }
)

# The only builtins visible to contracts (several are metered wrappers, see meter.py).
ALLOWED_BUILTINS = (
    frozenset(
        {
            "abs",
            "all",
            "any",
            "bin",
            "bool",
            "chr",
            "dict",
            "divmod",
            "enumerate",
            "filter",
            "frozenset",
            "hex",
            "int",
            "isinstance",
            "len",
            "list",
            "map",
            "max",
            "min",
            "oct",
            "ord",
            "pow",
            "range",
            "repr",
            "reversed",
            "round",
            "set",
            "sorted",
            "str",
            "sum",
            "tuple",
            "zip",
        }
    )
    | ALLOWED_EXCEPTIONS
)

# Every other builtin name (open, eval, exec, getattr, type, print, __import__, ...).
FORBIDDEN_NAMES = frozenset(dir(builtins)) - ALLOWED_BUILTINS

ALLOWED_ATTRS = (API_ATTRS | BUILTIN_METHODS) - {"mro"}

ANNOTATION_TYPES = {"str": "str", "int": "int", "bool": "bool", "list": "list",
                    "dict": "dict", "Any": "any"}

_FORBIDDEN_NODES: dict[type[ast.AST], str] = {
    ast.AsyncFunctionDef: "async functions are not allowed",
    ast.AsyncFor: "async for is not allowed",
    ast.AsyncWith: "async with is not allowed",
    ast.Await: "await is not allowed",
    ast.ClassDef: "class definitions are not allowed",
    ast.Lambda: "lambda is not allowed (use a def)",
    ast.Global: "global is not allowed",
    ast.Nonlocal: "nonlocal is not allowed",
    ast.Yield: "generators (yield) are not allowed",
    ast.YieldFrom: "generators (yield from) are not allowed",
    ast.With: "with is not allowed",
    ast.Match: "match is not allowed",
    ast.TryStar: "except* is not allowed",
    ast.Import: f"imports are not allowed (only 'from {API_MODULE} import ...')",
}


@dataclass(frozen=True)
class Param:
    """One parameter of a public function: accepted JSON types (empty = any)."""

    name: str
    types: frozenset[str]
    nullable: bool
    required: bool


@dataclass(frozen=True)
class FunctionSig:
    name: str
    params: tuple[Param, ...]


@dataclass(frozen=True)
class CheckedContract:
    tree: ast.Module
    functions: dict[str, FunctionSig]
    imports: dict[str, str]  # local alias -> exported API name


def _reject(node: ast.AST | None, message: str) -> ContractRejected:
    return ContractRejected(getattr(node, "lineno", 0) or 0, message)


def _literal(node: ast.expr) -> bool:
    """A constant, a negated number, or a tuple of those."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.Tuple):
        return all(_literal(e) for e in node.elts)
    return False


def _too_deep(node: ast.AST, limit: int) -> ast.AST | None:
    """A node nested more than ``limit`` levels below ``node`` (``node`` itself at level 1),
    found without recursion, or None."""
    stack = [(node, 1)]
    while stack:
        n, depth = stack.pop()
        if depth > limit:
            return n
        stack.extend((c, depth + 1) for c in ast.iter_child_nodes(n))
    return None


def _check_annotation(node: ast.expr | None) -> None:
    """Annotations are not evaluated, but the instrumenter and the signature reader walk
    them recursively: one nested deeper than the code may be is refused (a 500-level
    annotation raised RecursionError out of the compiler -- a worker crash on every call)."""
    if node is not None and _too_deep(node, MAX_DEPTH) is not None:
        raise _reject(node, f"annotation nested deeper than {MAX_DEPTH}")


def _is_private(name: str) -> bool:
    return name.startswith("__")


def _annotation(
    node: ast.expr | None, fname: str, pname: str, where: ast.AST | None = None
) -> tuple[frozenset[str], bool]:
    """Accepted JSON kinds of a parameter (empty set = any value) and whether null is ok."""
    if node is None:
        raise _reject(where, f"parameter {pname!r} of public function {fname!r} needs a type")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        lt, ln = _annotation(node.left, fname, pname)
        rt, rn = _annotation(node.right, fname, pname)
        any_value = (not lt and not ln) or (not rt and not rn)
        return (frozenset() if any_value else lt | rt), ln or rn
    if isinstance(node, ast.Constant) and node.value is None:
        return frozenset(), True
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name) and node.id in ANNOTATION_TYPES:
        kind = ANNOTATION_TYPES[node.id]
        return (frozenset() if kind == "any" else frozenset({kind})), False
    raise _reject(
        node,
        f"parameter {pname!r} of {fname!r}: type must be str, int, bool, list, dict or Any",
    )


def _signature(fn: ast.FunctionDef) -> FunctionSig:
    a = fn.args
    if a.posonlyargs or a.vararg or a.kwarg:
        raise _reject(fn, f"public function {fn.name!r}: no *args, **kwargs or '/'")
    if not a.args:
        raise _reject(fn, f"public function {fn.name!r} must take the context first")
    params: list[Param] = []
    positional = a.args[1:]
    n_defaults = len(a.defaults)
    first_default = len(a.args) - n_defaults
    for arg in [*a.args, *a.kwonlyargs]:
        _check_annotation(arg.annotation)
    for i, arg in enumerate(positional, start=1):
        types, nullable = _annotation(arg.annotation, fn.name, arg.arg, arg)
        params.append(Param(arg.arg, types, nullable, i < first_default))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        types, nullable = _annotation(arg.annotation, fn.name, arg.arg, arg)
        params.append(Param(arg.arg, types, nullable, default is None))
    return FunctionSig(fn.name, tuple(params))


class _Checker(ast.NodeVisitor):
    def __init__(self, imported: dict[str, str]) -> None:
        self.imported = imported
        self.nodes = 0
        self.depth = 0

    def generic_visit(self, node: ast.AST) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _reject(node, f"contract has more than {MAX_NODES} syntax nodes")
        msg = _FORBIDDEN_NODES.get(type(node))
        if msg is not None:
            raise _reject(node, msg)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _reject(node, f"nesting deeper than {MAX_DEPTH}")
        super().generic_visit(node)
        self.depth -= 1

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        raise _reject(node, f"import only at module level, from {API_MODULE}")

    def visit_Name(self, node: ast.Name) -> None:
        if _is_private(node.id):
            raise _reject(node, f"name {node.id!r} is not allowed (double underscore)")
        if node.id in FORBIDDEN_NAMES:
            raise _reject(node, f"builtin {node.id!r} is not allowed")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        if node.attr.startswith("_"):
            raise _reject(node, f"attribute {node.attr!r} is not allowed (underscore)")
        if node.attr not in ALLOWED_ATTRS:
            raise _reject(node, f"attribute {node.attr!r} is not allowed")
        if not isinstance(node.ctx, ast.Load):
            raise _reject(node, f"assigning or deleting attribute {node.attr!r} is not allowed")

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Slice):
            raise _reject(node, "slice assignment/deletion is not allowed")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, float | complex):
            raise _reject(node, "float literals are not allowed (use integer fen)")
        if isinstance(node.value, bytes):
            raise _reject(node, "bytes literals are not allowed")
        if type(node.value) is int and node.value.bit_length() > MAX_INT_LITERAL_BITS:
            raise _reject(node, f"integer literal of {node.value.bit_length()} bits (at most "
                                f"{MAX_INT_LITERAL_BITS})")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Div):
            raise _reject(node, "'/' gives floats; use '//' or divmod")
        if isinstance(node.op, ast.MatMult):
            raise _reject(node, "'@' is not allowed")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.op, ast.Div):
            raise _reject(node, "'/=' gives floats; use '//='")
        if isinstance(node.op, ast.MatMult):
            raise _reject(node, "'@=' is not allowed")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if len(node.ops) > 1 and any(isinstance(o, ast.In | ast.NotIn) for o in node.ops):
            raise _reject(node, "chained comparison with 'in' is not allowed")
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if _is_private(node.name):
            raise _reject(node, f"function name {node.name!r} is not allowed")
        if node.decorator_list:
            raise _reject(node.decorator_list[0], "decorators are not allowed")
        a = node.args
        for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
            if arg is not None and (_is_private(arg.arg) or arg.arg in FORBIDDEN_NAMES):
                raise _reject(node, f"parameter name {arg.arg!r} is not allowed")
        for default in [*a.defaults, *a.kw_defaults]:
            if default is not None and not _literal(default):
                # a shared mutable default would carry state from one invocation to the next
                raise _reject(default, "default values must be literal constants")
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        if node.finalbody:
            raise _reject(node, "try/finally is not allowed")
        for h in node.handlers:
            self._check_handler(h)
        self.generic_visit(node)

    def _check_handler(self, h: ast.ExceptHandler) -> None:
        if h.type is None:
            raise _reject(h, "bare 'except:' is not allowed; name the exception")
        types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        for ty in types:
            if not isinstance(ty, ast.Name) or (
                ty.id not in ALLOWED_EXCEPTIONS and self.imported.get(ty.id) != "ContractError"
            ):
                raise _reject(h, "except may only name Exception, ContractError or a builtin error")
        if h.name is not None and _is_private(h.name):
            raise _reject(h, f"name {h.name!r} is not allowed")

    def visit_arg(self, node: ast.arg) -> None:
        # annotations are checked for public functions; other annotations are not evaluated
        # (the instrumenter drops them), but they are walked: bounded in depth
        _check_annotation(node.annotation)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None and _is_private(node.arg):
            raise _reject(node, f"keyword {node.arg!r} is not allowed")
        self.generic_visit(node)


def check_source(source: str) -> CheckedContract:
    """Parse and check a contract; raises ContractRejected naming the line."""
    if not isinstance(source, str):
        raise ContractRejected(0, "source must be text")
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise ContractRejected(0, f"source larger than {MAX_SOURCE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            # acceptance must not depend on the process's warning filters (-W error)
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename="<contract>", mode="exec")
    except SyntaxError as exc:
        raise ContractRejected(exc.lineno or 0, f"syntax error: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ContractRejected(0, f"unparsable source: {type(exc).__name__}") from None
    imported: dict[str, str] = {}
    functions: dict[str, FunctionSig] = {}
    seen_def: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom):
            if stmt.module != API_MODULE or stmt.level:
                raise _reject(stmt, f"only 'from {API_MODULE} import ...' is allowed")
            for alias in stmt.names:
                if alias.name not in EXPORTS:
                    raise _reject(stmt, f"{API_MODULE} has no {alias.name!r}")
                local = alias.asname or alias.name
                if _is_private(local) or local in FORBIDDEN_NAMES:
                    raise _reject(stmt, f"import name {local!r} is not allowed")
                imported[local] = alias.name
        elif isinstance(stmt, ast.FunctionDef):
            if stmt.name in seen_def:
                raise _reject(stmt, f"function {stmt.name!r} defined twice")
            seen_def.add(stmt.name)
            if not stmt.name.startswith("_"):
                functions[stmt.name] = _signature(stmt)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if stmt.value is None or not all(isinstance(x, ast.Name) for x in targets):
                raise _reject(stmt, "module level: only 'NAME = value' assignments")
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(
            stmt.value.value, str
        ):
            continue  # docstring
        else:
            raise _reject(
                stmt,
                _FORBIDDEN_NODES.get(
                    type(stmt),
                    "module level may only hold imports, constants and function definitions",
                ),
            )
    checker = _Checker(imported)
    for stmt in tree.body:
        if isinstance(stmt, ast.AnnAssign):
            _check_annotation(stmt.annotation)
            checker.visit(stmt.target)
            if stmt.value is not None:
                checker.visit(stmt.value)
        elif not isinstance(stmt, ast.ImportFrom):
            checker.visit(stmt)
    return CheckedContract(tree, functions, imported)
