"""The contract calls client/README.md shows as SDK examples name only arguments the contract
function takes (a wrong name is BAD_ARGUMENTS "unknown argument(s)" from the contract)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _params(contract: str, function: str) -> list[str]:
    tree = ast.parse((ROOT / "contracts" / f"{contract}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return [a.arg for a in node.args.args[1:]]  # after ctx
    raise AssertionError(f"{contract}.{function} does not exist")


def test_readme_sdk_calls_name_the_contract_functions_arguments() -> None:
    text = (ROOT / "client" / "README.md").read_text()
    calls = re.findall(r'\.(?:evaluate|submit)\("(\w+)", "(\w+)", \{([^}]*)\}', text)
    assert len(calls) >= 2
    for contract, function, args in calls:
        names = re.findall(r'"(\w+)":', args)
        assert names and set(names) <= set(_params(contract, function)), (contract, function, names)
