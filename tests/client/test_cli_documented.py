"""The `rxchain` commands the documentation tells an operator to run exist as written: every
command of client/README.md's command table with exactly the options its row names (and every
command of the CLI has a row), and every `rxchain ...` line of a code block in README.md and
client/README.md (the recovery procedures, the audit examples, the story) parses. An option
renamed, added or dropped in client/cli.py without its documentation fails here."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from client.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "README.md", ROOT / "client" / "README.md")
GLOBAL = {"--help", "--json", "--home", "--as", "--peer"}  # accepted by every command ("Global options")
GROUPS = ("netgen", "network", "rx", "claim", "patient", "registry", "ledger", "audit", "config", "wallet",
          "events", "fhir")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Every command of the tree (``"rx issue"``) and the options it takes beside the global ones."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out: dict[str, set[str]] = {}
            for name, sub in action.choices.items():
                out.update(_commands(sub, (*prefix, name)))
            return out
    options = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    return {" ".join(prefix): options - GLOBAL}


def _table() -> dict[str, set[str]]:
    """client/README.md's command table: each command its first column names and the options
    named with it (one row may name two commands: `rx lock RX_ID` / `rx release ...`)."""
    rows = [line.split(" | ")[0] for line in (ROOT / "client" / "README.md").read_text().splitlines()
            if line.startswith("| `")]
    out: dict[str, set[str]] = {}
    for cell in rows:
        for m in re.finditer(r"`(?:rxchain )?([a-z][a-z-]*(?: [a-z][a-z-]*)?)((?: [^`]*)?)`", cell):
            name, rest = m.group(1), m.group(2)
            if name.split()[0] in GROUPS:
                out.setdefault(name, set()).update(set(re.findall(r"--[a-z][a-z0-9-]*", rest)) - GLOBAL)
    return out


def test_the_command_table_names_every_command_and_exactly_its_options() -> None:
    code, table = _commands(build_parser()), _table()
    assert len(code) > 30
    assert sorted(set(code) - set(table)) == []  # a command without a row
    assert sorted(set(table) - set(code)) == []  # a row naming no command
    differ = {name: {"only in cli.py": sorted(code[name] - table[name]),
                     "only in client/README.md": sorted(table[name] - code[name])}
              for name in code if code[name] != table[name]}
    assert differ == {}


def _documented_lines() -> list[str]:
    """Every line of a code block in the docs that runs `rxchain`, continuation lines joined."""
    lines = []
    for doc in DOCS:
        for block in re.findall(r"```[a-z]*\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip().startswith("rxchain "):
                    lines.append(line.split("#")[0].split(">")[0].strip())
    return lines


# the placeholders the documentation writes, as values the parser takes
PLACEHOLDERS = {"ORG:admin": "h01:admin", "RX...": "RX-1", "RX_ID": "RX-1", "ID:SHA256HEX": "1:" + "ab" * 32,
                "ID": "1", "MS": "1", "N": "1", "S": "1"}


def _argv(line: str) -> list[str]:
    words = shlex.split(re.sub(r"\[([^]]*)\]", r"\1", line))[1:]  # optional parts given
    if "..." in words:  # `--trace-code ...`: more of the same
        cut = words.index("...")
        del words[cut - 1:cut + 1]
    return [PLACEHOLDERS.get(w, w) for w in words]


@pytest.mark.parametrize("line", _documented_lines())
def test_every_documented_command_line_parses(line: str) -> None:
    args = build_parser().parse_args(_argv(line))
    assert callable(args.handler), line


def test_the_documented_command_lines_are_found() -> None:
    lines = _documented_lines()
    assert any("network down --node peer.p02" in x for x in lines)  # README "Recovery"
    assert any("config propose --from-json" in x for x in lines)
    assert any(x.startswith("rxchain audit verify") for x in lines)  # README "Access-audit log"
    assert any("rx issue" in x for x in lines)  # client/README.md's story
