"""Contract definitions as the lifecycle stores them, and the access rules they carry.

A definition is stored as canonical JSON (sorted keys, no floats) so that "the approvals
for exactly that definition" is a byte comparison. Access rules map a function name (or
``*`` for every function not listed) to the callers allowed:

* ``"doctor"``          any organisation's member with role ``doctor``
* ``"hospital.doctor"`` a doctor of a hospital (organisation kind ``hospital``, ``pharmacy``,
  ``insurer`` or ``regulator``)
* ``"h01.admin"``       the admin of organisation ``h01``
* ``"*"``               any valid member

A function that matches no rule is refused (deny by default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.crypto.canonical import canonical_json
from node.errors import RxError
from node.identity.msp import Principal

LIFECYCLE_NS = "_lifecycle"
ORG_KINDS = ("hospital", "pharmacy", "insurer", "regulator")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9._+-]{1,32}$")
_FUNC = re.compile(r"^(\*|[A-Za-z_][A-Za-z0-9_]{0,63})$")
_RULE = re.compile(r"^(\*|[a-z0-9-]+|[a-z0-9-]+\.[a-z]+)$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_RULES = 64


def check_contract_name(name: Any) -> str:
    """A user contract name: lower-case, starts with a letter (``_`` names are system)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RxError("BAD_ARGUMENTS", f"contract name {name!r} must match {_NAME.pattern}")
    return name


def check_version(version: Any) -> str:
    """A contract version as definitions carry it (install refuses any other: such a
    package could never be approved)."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise RxError("BAD_ARGUMENTS", f"version {version!r} must match {_VERSION.pattern}")
    return version


def check_sequence(seq: Any) -> int:
    """A definition sequence: an integer in 1 .. 2**63 - 1 (bool refused)."""
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**63:
        raise RxError("BAD_ARGUMENTS", f"sequence {seq!r} must be a positive integer below 2**63")
    return seq


def check_code_hash(code_hash: Any) -> str:
    """A package's code hash: 64 lower-case hex digits."""
    if not isinstance(code_hash, str) or not _HASH.match(code_hash):
        raise RxError("BAD_ARGUMENTS", "code_hash must be 64 lower-case hex digits")
    return code_hash


@dataclass(frozen=True)
class ContractDefinition:
    """An approved or committed contract definition."""

    name: str
    version: str
    sequence: int
    endorsement_policy: str
    access: Mapping[str, tuple[str, ...]]
    code_hash: str

    def to_json(self) -> bytes:
        """Canonical JSON (what approvals compare byte for byte)."""
        return canonical_json(
            {
                "name": self.name,
                "version": self.version,
                "sequence": self.sequence,
                "endorsement_policy": self.endorsement_policy,
                "access": {k: list(v) for k, v in sorted(self.access.items())},
                "code_hash": self.code_hash,
            }
        )

    @staticmethod
    def from_args(args: Mapping[str, Any]) -> ContractDefinition:
        """Build and check a definition from call arguments (raises BAD_ARGUMENTS)."""
        name = check_contract_name(args.get("name"))
        version = check_version(args.get("version"))
        seq = check_sequence(args.get("sequence"))
        policy = args.get("endorsement_policy")
        if not isinstance(policy, str) or not policy.strip() or len(policy) > 4096:
            raise RxError("BAD_ARGUMENTS", "endorsement_policy must be a non-empty policy text")
        code_hash = check_code_hash(args.get("code_hash"))
        raw_access = args.get("access")
        if not isinstance(raw_access, dict) or len(raw_access) > MAX_RULES:
            raise RxError("BAD_ARGUMENTS", "access must be an object {function: [rules]}")
        access: dict[str, tuple[str, ...]] = {}
        for func, rules in raw_access.items():
            if not _FUNC.match(func):
                raise RxError("BAD_ARGUMENTS", f"access: bad function name {func!r}")
            if not isinstance(rules, list) or not rules or len(rules) > MAX_RULES:
                raise RxError("BAD_ARGUMENTS", f"access[{func}] must be a non-empty list")
            for rule in rules:
                if not isinstance(rule, str) or not _RULE.match(rule):
                    raise RxError("BAD_ARGUMENTS", f"access[{func}]: bad rule {rule!r}")
            access[func] = tuple(sorted(set(rules)))
        return ContractDefinition(name, version, seq, policy, access, code_hash)

    @staticmethod
    def from_json(data: bytes) -> ContractDefinition:
        """Parse a stored definition."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RxError("INTERNAL", f"stored definition does not parse: {exc}") from exc
        if not isinstance(raw, dict):
            raise RxError("INTERNAL", "stored definition is not an object")
        return ContractDefinition.from_args(raw)

    def allows(self, function: str, caller: Principal) -> bool:
        """True if ``caller`` may invoke ``function`` under the access rules."""
        rules = self.access.get(function)
        if rules is None:
            rules = self.access.get("*", ())
        return any(rule_matches(rule, caller) for rule in rules)


def rule_matches(rule: str, caller: Principal) -> bool:
    """Does one access rule admit ``caller``?"""
    if rule == "*":
        return True
    if "." not in rule:
        return caller.role == rule
    scope, role = rule.split(".", 1)
    if role not in (caller.role, "member"):
        return False
    if scope in ORG_KINDS:
        return caller.org_kind == scope
    return caller.org == scope
