"""The consortium file: parsing and validation with errors that name what is wrong."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rxchain.v1 import config_pb2

from node.errors import RxError
from node.identity.policy import parse_policy
from node.identity.roles import ROLES_BY_KIND
from node.orderer.configrules import ID_SHAPE, LIMIT_BOUNDS, ORG_ID_MAX, RESERVED_ORG_IDS
from node.yamlfile import YamlFileError, load_yaml_file

KINDS = {
    "hospital": config_pb2.HOSPITAL,
    "pharmacy": config_pb2.PHARMACY,
    "insurer": config_pb2.INSURER,
    "regulator": config_pb2.REGULATOR,
}
LEVELS = ("tertiary", "community")
# An id is a DNS label (lower case): organisation ids end up in node names and TLS subject
# alternative names (``peer.<org>``), user names in certificate common names (at most 64
# characters, "records.<org>" and "orderer.<org>" included) and in CLI arguments (a leading
# '-' would read as an option).
NAME_MAX = 64
DISPLAY_NAME_MAX = 256
# attrs go into the member's certificate, which travels in every envelope she signs: unbounded,
# one long value would make each of her transactions exceed limits.max_envelope_bytes
ATTRS_MAX = 32
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
TOP_KEYS = frozenset({"consortium_id", "base_port", "batch", "limits", "policies", "organizations",
                      "host", "protocol_version"})
ORG_KEYS = frozenset({"id", "name", "kind", "level", "peer", "orderer", "users"})
USER_KEYS = frozenset({"name", "role", "attrs"})


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


def _check_id(value: Any, what: str, max_len: int = NAME_MAX) -> str:
    if not isinstance(value, str) or not ID_SHAPE.fullmatch(value) or len(value) > max_len:
        raise _bad(f"{what} {_show(value)} must be 1 to {max_len} lower-case letters, digits or '-', "
                   f"starting and ending with a letter or digit")
    return value


def _show(value: Any) -> str:
    """``value`` for an error message, cut short (a pasted blob must not flood the terminal);
    a list or mapping only by its type (a document read without :func:`read_consortium_file`
    may share one through YAML aliases into billions of elements: never walked)."""
    if isinstance(value, (list, dict, set, tuple)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_keys(raw: dict[Any, Any], known: frozenset[str], what: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise _bad(f"{what}: unknown keys {unknown} (known: {sorted(known)})")


def _check_str(value: Any, what: str, max_len: int = DISPLAY_NAME_MAX) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _bad(f"{what} must be a non-empty string of at most {max_len} characters, got {_show(value)}")
    return value


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{what} must be true or false, got {_show(value)}")
    return value


def _check_host(value: Any) -> str:
    """The address nodes listen on and are dialled at: an IP address (not a wildcard) or a
    DNS host name (it goes into every node certificate's subject alternative names)."""
    if not isinstance(value, str):
        raise _bad(f"host {_show(value)} must be an IP address or a DNS host name")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        labels = value.split(".")
        # a numeric last label would read as a (malformed) IPv4 address
        if len(value) > 253 or not all(_HOSTNAME_LABEL.fullmatch(x) for x in labels) or labels[-1].isdigit():
            raise _bad(f"host {_show(value)} must be an IP address or a DNS host name") from None
        return value
    if address.is_unspecified or address.is_multicast:
        raise _bad(f"host {value}: nodes are dialled at this address, it cannot be a wildcard or multicast")
    if address.version == 6:  # node targets are written host:port, without brackets
        raise _bad(f"host {value}: IPv6 literals are not supported; give a DNS host name resolving to it")
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
        low, high = LIMIT_BOUNDS[(what, k)]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise _bad(f"{what}.{k} must be a positive integer, got {_show(v)}")
        if not low <= v <= high:
            raise _bad(f"{what}.{k} must be an integer in {low}..{high}, got {v}")
        out[k] = v
    return out


BATCH_KEYS = ("max_tx_count", "max_bytes", "timeout_ms")
LIMIT_KEYS = (
    "max_message_bytes", "max_envelope_bytes", "gas_limit", "max_write_set_keys",
    "max_value_bytes", "max_clock_skew_ms",
)


BASE_PORT_MIN, BASE_PORT_MAX = 1024, 60000  # room above for every node and metrics port


def parse_spec(raw: Any) -> ConsortiumSpec:
    """Validate a parsed consortium document."""
    if not isinstance(raw, dict):
        raise _bad("top level must be a mapping")
    _check_keys(raw, TOP_KEYS, "top level")
    cid = _check_id(raw.get("consortium_id"), "consortium_id")
    base_port = raw.get("base_port", 7050)
    if (not isinstance(base_port, int) or isinstance(base_port, bool)
            or not BASE_PORT_MIN <= base_port <= BASE_PORT_MAX):
        raise _bad(f"base_port {_show(base_port)} must be an integer in {BASE_PORT_MIN}..{BASE_PORT_MAX}")
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
        oid = _check_id(o.get("id"), f"organizations[{i}].id", ORG_ID_MAX)
        if oid in seen:
            raise _bad(f"duplicate organisation id {oid!r}")
        if oid in RESERVED_ORG_IDS:  # the contracts' party name of a patient's key grant
            raise _bad(f"organizations[{i}].id {oid!r} is reserved")
        seen.add(oid)
        _check_keys(o, ORG_KEYS, f"organisation {oid}")
        kind = o.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise _bad(f"organisation {oid}: unknown kind {_show(kind)} (one of {sorted(KINDS)})")
        level = o.get("level", "")
        if not isinstance(level, str):
            raise _bad(f"organisation {oid}: level must be a string, got {_show(level)}")
        if kind == "hospital" and level not in LEVELS:
            raise _bad(f"organisation {oid}: hospital level must be one of {LEVELS}, got {level!r}")
        if kind != "hospital" and level:
            raise _bad(f"organisation {oid}: only hospitals have a level")
        orderer = _check_bool(o.get("orderer", False), f"organisation {oid}: orderer")
        peer = _check_bool(o.get("peer", False), f"organisation {oid}: peer")
        if orderer and kind != "insurer":
            raise _bad(f"organisation {oid}: only insurers run orderers")
        raw_users = o.get("users") or []
        if not isinstance(raw_users, list):
            raise _bad(f"organisation {oid}: users must be a list, got {_show(raw_users)}")
        users: list[UserSpec] = []
        names: set[str] = set()
        for j, u in enumerate(raw_users):
            if not isinstance(u, dict):
                raise _bad(f"organisation {oid}: users[{j}] must be a mapping")
            uname = _check_id(u.get("name"), f"organisation {oid}: user name")
            if uname in names or uname == "admin":
                raise _bad(f"organisation {oid}: duplicate user {uname!r}")
            names.add(uname)
            _check_keys(u, USER_KEYS, f"organisation {oid}: user {uname}")
            role = u.get("role")
            if not isinstance(role, str) or role not in ROLES_BY_KIND[KINDS[kind]]:
                raise _bad(f"organisation {oid}: user {uname}: role {_show(role)} not allowed for a {kind}")
            attrs = u.get("attrs") or {}
            if not isinstance(attrs, dict):
                raise _bad(f"organisation {oid}: user {uname}: attrs must be a mapping")
            if len(attrs) > ATTRS_MAX:
                raise _bad(f"organisation {oid}: user {uname}: at most {ATTRS_MAX} attrs, got {len(attrs)}")
            for k, v in attrs.items():
                if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (str, int)):
                    raise _bad(f"organisation {oid}: user {uname}: attrs {_show(k)}: names are strings, "
                               f"values strings or integers, got {_show(v)}")
                if not 0 < len(k) <= NAME_MAX or len(str(v)) > DISPLAY_NAME_MAX:
                    raise _bad(f"organisation {oid}: user {uname}: attrs {_show(k)}: names are 1 to {NAME_MAX} "
                               f"characters, values at most {DISPLAY_NAME_MAX}")
            users.append(UserSpec(uname, role, {k: str(v) for k, v in attrs.items()}))
        name = _check_str(o.get("name", oid), f"organisation {oid}: name")
        orgs.append(OrgSpec(oid, name, kind, level, peer, orderer, tuple(users)))
    if not any(o.orderer for o in orgs):
        raise _bad("at least one insurer must run an orderer")
    policies = raw.get("policies") or {}
    if not isinstance(policies, dict) or "config_update" not in policies:
        raise _bad("policies must be a mapping with at least config_update")
    org_ids = [o.id for o in orgs]
    for name, text in policies.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise _bad(f"policies: {_show(name)}: names and rules are strings, got {_show(text)}")
        try:
            parse_policy(text, org_ids)
        except RxError as exc:
            raise _bad(f"policy {name}: {exc.message}") from exc
    protocol = raw.get("protocol_version", 0)
    if not isinstance(protocol, int) or isinstance(protocol, bool) or not 0 <= protocol < 1 << 32:
        raise _bad(f"protocol_version {_show(protocol)} must be an integer in 0..4294967295 (0: unset, version 1)")
    return ConsortiumSpec(cid, base_port, batch, limits, dict(policies), tuple(orgs),
                          _check_host(raw.get("host", "127.0.0.1")), protocol)


def load_spec(path: str | Path) -> ConsortiumSpec:
    """Read and validate a consortium YAML file (errors name it)."""
    raw = read_consortium_file(path)
    try:
        return parse_spec(raw)
    except RxError as exc:
        raise naming_file(exc, path) from None


def naming_file(exc: RxError, path: str | Path) -> RxError:
    """``exc`` naming the consortium file ``path`` when it is about that file's content (a
    ``consortium file: ...`` refusal of :func:`parse_spec` or ``netgen.generate.check_content``),
    else ``exc`` itself: an operator with several consortium files sees which one is wrong."""
    prefix = "consortium file: "
    if exc.message.startswith(prefix):
        return RxError(exc.reason, f"consortium file {path}: {exc.message[len(prefix):]}")
    return exc


def read_consortium_file(path: str | Path) -> Any:
    """The parsed document of a consortium YAML file, read strictly (:mod:`node.yamlfile`:
    size bound, UTF-8, no duplicate keys, no aliases, safe tags only); RxError BAD_CONFIG
    naming the file otherwise. Callers that edit the document (e.g. ``base_port``) before
    :func:`parse_spec` read it with this."""
    try:
        return load_yaml_file(Path(path))
    except (OSError, YamlFileError) as exc:
        raise _bad(f"{path}: {exc}") from None
