"""Contracts run sandboxed and cannot import each other, so a few small helpers are copied
between them on purpose (date arithmetic, text and id checks). A copy edited on one side
only would make two contracts disagree on the same rule (a date valid for the registry and
impossible for prescriptions): every helper defined in more than one contract must be the
same function, docstring aside, unless listed here as different on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"

# same name, different job (each checked below to still exist in every file named)
DIFFERENT_ON_PURPOSE = {
    "_civil": {"prescription.py", "registry.py"},  # same rule; registry spells the constants
    "_drug": {"prescription.py", "settlement.py"},  # a drug entry vs. its priced version
    "_is_hex": {"prescription.py", "registry.py", "settlement.py"},  # (lo, hi) vs. exact length
    "_is_patient": {"prescription.py", "registry.py", "settlement.py"},  # records differ
}


def _bodies() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for path in sorted(CONTRACTS.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring may say where the other copy lives
            node.body = body or [ast.Pass()]
            out.setdefault(node.name, {})[path.name] = ast.unparse(node)
    return out


def test_helpers_copied_between_contracts_are_the_same_function() -> None:
    shared = {name: by_file for name, by_file in _bodies().items() if len(by_file) > 1}
    # the known copies (_may_ask: the roles that may ask for a patient or claim at all, before
    # any lookup -- registry.get_patient and settlement's views refuse the others alike)
    assert {"_days_in_month", "_is_blank", "_only", "_is_int", "_may_ask"} <= set(shared)
    for name, by_file in shared.items():
        if name in DIFFERENT_ON_PURPOSE:
            assert set(by_file) == DIFFERENT_ON_PURPOSE[name], (name, sorted(by_file))
            continue
        assert len(set(by_file.values())) == 1, f"{name} differs between {sorted(by_file)}"
