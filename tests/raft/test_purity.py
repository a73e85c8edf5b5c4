"""The core modules stay pure: no I/O, clocks, threads or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import node.raft

RAFT_DIR = Path(node.raft.__file__).parent
PURE = ["types", "errors", "core", "node", "log", "quorum", "tracker", "storage", "bootstrap"]
FORBIDDEN = {
    "socket", "time", "threading", "os", "asyncio", "subprocess", "uuid", "datetime",
    "random", "io", "pathlib", "select", "selectors", "multiprocessing", "secrets", "grpc",
    "pickle", "logging", "signal",
}
ALLOWED_TOP = {"__future__", "collections", "dataclasses", "enum", "struct", "typing", "node"}


@pytest.mark.parametrize("name", PURE)
def test_core_module_imports_are_pure(name: str) -> None:
    tree = ast.parse((RAFT_DIR / f"{name}.py").read_text())
    imported: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            imported.update(a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module:
            imported.add(n.module.split(".")[0])
            if n.module.startswith("node.") and not n.module.startswith("node.raft"):
                pytest.fail(f"{name}.py imports {n.module}: the core depends only on itself")
    assert not imported & FORBIDDEN, imported & FORBIDDEN
    assert imported <= ALLOWED_TOP, imported - ALLOWED_TOP


def test_config_only_uses_random_as_a_type() -> None:
    text = (RAFT_DIR / "config.py").read_text()
    tree = ast.parse(text)
    calls = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
        and n.value.id == "random" and n.attr != "Random"
    ]
    assert not calls
