"""The consortium file: parsing and validation with errors that name what is wrong."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rxchain.v1 import config_pb2

from node.errors import RxError
from node.identity.policy import parse_policy
from node.identity.roles import ROLES_BY_KIND

KINDS = {
    "hospital": config_pb2.HOSPITAL,
    "pharmacy": config_pb2.PHARMACY,
    "insurer": config_pb2.INSURER,
    "regulator": config_pb2.REGULATOR,
}
LEVELS = ("tertiary", "community")
_ID_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class UserSpec:
    """A member identity to issue."""

    name: str
    role: str
    attrs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OrgSpec:
    """An organisation of the consortium file."""

    id: str
    name: str
    kind: str
    level: str
    peer: bool
    orderer: bool
    users: tuple[UserSpec, ...]


@dataclass(frozen=True)
class ConsortiumSpec:
    """The validated consortium file."""

    consortium_id: str
    base_port: int
    batch: Mapping[str, int]
    limits: Mapping[str, int]
    policies: Mapping[str, str]
    orgs: tuple[OrgSpec, ...]
    host: str = "127.0.0.1"
    protocol_version: int = 0  # 0: the genesis leaves it unset (version 1, node.protocol)


def _bad(msg: str) -> RxError:
    return RxError("BAD_CONFIG", f"consortium file: {msg}")


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or not set(value) <= _ID_OK:
        raise _bad(f"{what} {value!r} must be lower-case letters, digits or '-'")
    return value


def _int_map(raw: Any, what: str, keys: tuple[str, ...]) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise _bad(f"{what} must be a mapping")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise _bad(f"{what}: unknown keys {unknown}")
    out: dict[str, int] = {}
    for k in keys:
        if k not in raw:
            raise _bad(f"{what}: missing {k}")
        v = raw[k]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise _bad(f"{what}.{k} must be a positive integer, got {v!r}")
        out[k] = v
    return out


BATCH_KEYS = ("max_tx_count", "max_bytes", "timeout_ms")
LIMIT_KEYS = (
    "max_message_bytes", "max_envelope_bytes", "gas_limit", "max_write_set_keys",
    "max_value_bytes", "max_clock_skew_ms",
)


def parse_spec(raw: Any) -> ConsortiumSpec:
    """Validate a parsed consortium document."""
    if not isinstance(raw, dict):
        raise _bad("top level must be a mapping")
    cid = _check_id(raw.get("consortium_id"), "consortium_id")
    base_port = raw.get("base_port", 7050)
    if not isinstance(base_port, int) or not 1024 <= base_port <= 60000:
        raise _bad(f"base_port {base_port!r} must be an integer in 1024..60000")
    batch = _int_map(raw.get("batch"), "batch", BATCH_KEYS)
    limits = _int_map(raw.get("limits"), "limits", LIMIT_KEYS)
    if limits["max_envelope_bytes"] > limits["max_message_bytes"]:
        raise _bad("limits.max_envelope_bytes exceeds limits.max_message_bytes")
    raw_orgs = raw.get("organizations")
    if not isinstance(raw_orgs, list) or not raw_orgs:
        raise _bad("organizations must be a non-empty list")
    orgs: list[OrgSpec] = []
    seen: set[str] = set()
    for i, o in enumerate(raw_orgs):
        if not isinstance(o, dict):
            raise _bad(f"organizations[{i}] must be a mapping")
        oid = _check_id(o.get("id"), f"organizations[{i}].id")
        if oid in seen:
            raise _bad(f"duplicate organisation id {oid!r}")
        seen.add(oid)
        kind = o.get("kind")
        if kind not in KINDS:
            raise _bad(f"organisation {oid}: unknown kind {kind!r} (one of {sorted(KINDS)})")
        level = str(o.get("level", ""))
        if kind == "hospital" and level not in LEVELS:
            raise _bad(f"organisation {oid}: hospital level must be one of {LEVELS}, got {level!r}")
        if kind != "hospital" and level:
            raise _bad(f"organisation {oid}: only hospitals have a level")
        orderer = bool(o.get("orderer", False))
        if orderer and kind != "insurer":
            raise _bad(f"organisation {oid}: only insurers run orderers")
        users: list[UserSpec] = []
        names: set[str] = set()
        for j, u in enumerate(o.get("users") or []):
            if not isinstance(u, dict):
                raise _bad(f"organisation {oid}: users[{j}] must be a mapping")
            uname = _check_id(u.get("name"), f"organisation {oid}: user name")
            if uname in names or uname == "admin":
                raise _bad(f"organisation {oid}: duplicate user {uname!r}")
            names.add(uname)
            role = u.get("role")
            if role not in ROLES_BY_KIND[KINDS[kind]]:
                raise _bad(f"organisation {oid}: user {uname}: role {role!r} not allowed for a {kind}")
            attrs = u.get("attrs") or {}
            if not isinstance(attrs, dict):
                raise _bad(f"organisation {oid}: user {uname}: attrs must be a mapping")
            users.append(UserSpec(uname, str(role), {str(k): str(v) for k, v in attrs.items()}))
        orgs.append(OrgSpec(oid, str(o.get("name", oid)), str(kind), level,
                            bool(o.get("peer", False)), orderer, tuple(users)))
    if not any(o.orderer for o in orgs):
        raise _bad("at least one insurer must run an orderer")
    policies = raw.get("policies") or {}
    if not isinstance(policies, dict) or "config_update" not in policies:
        raise _bad("policies must be a mapping with at least config_update")
    org_ids = [o.id for o in orgs]
    for name, text in policies.items():
        try:
            parse_policy(str(text), org_ids)
        except RxError as exc:
            raise _bad(f"policy {name}: {exc.message}") from exc
    protocol = raw.get("protocol_version", 0)
    if not isinstance(protocol, int) or isinstance(protocol, bool) or not 0 <= protocol < 1 << 32:
        raise _bad(f"protocol_version {protocol!r} must be an integer in 0..4294967295 (0: unset, version 1)")
    return ConsortiumSpec(cid, base_port, batch, limits,
                          {str(k): str(v) for k, v in policies.items()}, tuple(orgs),
                          str(raw.get("host", "127.0.0.1")), protocol)


def load_spec(path: str | Path) -> ConsortiumSpec:
    """Read and validate a consortium YAML file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _bad(f"{path}: {exc}") from exc
    return parse_spec(raw)
