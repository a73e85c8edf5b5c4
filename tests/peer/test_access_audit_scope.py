"""Which calls the access-audit log records is pinned in the peer's code (node.peer.audit.AUDITED),
not declared by a contract or a config: README "Access-audit log" says why. These tests pin the
list, that nothing a contract definition, the consortium config or node.yaml carries reaches it,
and which contract functions touch a wrapped key -- a new one fails here, so whoever adds it has
to decide whether its answer releases key material (and then add it to AUDITED, a peer release).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from node.peer.audit import AUDITED, Auditor

ROOT = Path(__file__).resolve().parents[2]
KEY_FIELDS = ("wrapped_key", "claim_wrapped_key")  # a grant's wrapped record key, claim key
# the contract functions naming those fields, and what they do with them
TOUCHING = {
    "prescription": {
        "_grant": "stores a grant (the key wrapped by its issuer, in the transaction's arguments)",
        "get_key": "ANSWERS the caller's wrapped key: audited",
        "grant_claim_key": "checks that the caller holds a claim key (answers none)",
    },
    "registry": {},
    "settlement": {},
}


def test_the_audited_functions_are_pinned() -> None:
    assert frozenset({("prescription", "get_key")}) == AUDITED
    assert isinstance(AUDITED, frozenset)  # (not a set a caller could add to or empty)
    assert Auditor.audited("prescription", "get_key")
    for other in (("prescription", "Get_Key"), ("prescription", "show"), ("settlement", "get_key")):
        assert not Auditor.audited(*other)


def test_nothing_configured_reaches_the_audited_list() -> None:
    """The Auditor the peer builds takes no list; ``audited`` reads the module's constant only."""
    assert list(inspect.signature(Auditor).parameters) == ["log", "on_record", "limiter", "save_every_ms"]
    assert isinstance(inspect.getattr_static(Auditor, "audited"), staticmethod)
    server = (ROOT / "node" / "peer" / "server.py").read_text()
    assert "AUDITED" not in server and "audited" not in server.replace("audit_", "")


def test_only_get_key_answers_a_wrapped_key_of_the_consortiums_contracts() -> None:
    found: dict[str, dict[str, str]] = {}
    for name, known in TOUCHING.items():
        tree = ast.parse((ROOT / "contracts" / f"{name}.py").read_text())
        found[name] = {}
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef) and any(
                    isinstance(n, ast.Constant) and n.value in KEY_FIELDS for n in ast.walk(fn)):
                found[name][fn.name] = known.get(fn.name, "NEW: does its answer release key material?")
    assert found == TOUCHING
    answering = {(c, f) for c, fns in TOUCHING.items() for f, what in fns.items() if what.startswith("ANSWERS")}
    assert answering == AUDITED
