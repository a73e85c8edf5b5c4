"""The validator's PolicyProvider: active contract definitions from ``_lifecycle`` state.

User contracts: the committed ``definition/<name>`` record (its endorsement policy parsed
against the organisations of the config in force; from protocol version 2 on
(node.protocol.MEMBERSHIP_VERSION) a principal naming an organisation a config update has
removed since the definition was committed matches nobody -- the rest of the policy still
applies -- instead of making the definition unreadable: a contract whose policy names every
organisation running a peer, as ``client.bootstrap`` defines them, was UNKNOWN_CONTRACT for
every tx from the block removing any of them, as it stays under version 1). A definition
whose policy is over the bound on choices that version 2 puts on new definitions (committed
under version 1) keeps version 1's evaluation (node.identity.policy). The
``_lifecycle`` namespace itself is
endorsed by a majority of the organisations running peers (see
:func:`node.peer.lifecycle.lifecycle_endorsement_policy`), with version "" and sequence 0.
Parsed definitions are cached by the versions (block, tx) of the config and definition
records: any rewrite changes the version, so a change is seen immediately, and a lookup
costs two LevelDB reads and no parsing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from rxchain.v1 import config_pb2

from node.identity.policy import parse_policy
from node.ledger.statedb import StateReader, Version
from node.ledger.txwrites import CONFIG_KEY, SYSTEM_NS
from node.peer.definitions import LIFECYCLE_NS
from node.peer.definitions import ContractDefinition as StoredDefinition
from node.peer.lifecycle import definition_key, lifecycle_endorsement_policy
from node.peer.validator import ContractDefinition
from node.protocol import MEMBERSHIP_VERSION, protocol_version

_CACHE = 256


class LifecyclePolicies:
    """Implements ``node.peer.validator.PolicyProvider`` over committed state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, Version, Version | None], ContractDefinition | None] = (
            OrderedDict()
        )

    def contract(self, name: str, state: StateReader) -> ContractDefinition | None:
        """The active definition of ``name`` in ``state`` or None."""
        cfg_vv = state.get(SYSTEM_NS, CONFIG_KEY)
        if cfg_vv is None:
            return None
        stored = b""
        def_version: Version | None = None
        if name != LIFECYCLE_NS:
            vv = state.get(LIFECYCLE_NS, definition_key(name)) if name[:1].isalpha() else None
            if vv is None:
                return None
            stored, def_version = vv.value, vv.version
        key = (name, cfg_vv.version, def_version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        config = config_pb2.ConsortiumConfig.FromString(cfg_vv.value)
        result = self._build(name, config, stored)
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return result

    @staticmethod
    def _build(
        name: str, config: config_pb2.ConsortiumConfig, stored: bytes
    ) -> ContractDefinition | None:
        if name == LIFECYCLE_NS:
            return ContractDefinition(LIFECYCLE_NS, "", 0, lifecycle_endorsement_policy(config))
        d = StoredDefinition.from_json(stored)
        version = protocol_version(config)
        # from MEMBERSHIP_VERSION on, a principal of an organisation removed since matches nobody
        policy = parse_policy(d.endorsement_policy, [o.id for o in config.organizations], version,
                              former_orgs=version >= MEMBERSHIP_VERSION)
        return ContractDefinition(d.name, d.version, d.sequence, policy)

    def definition(self, name: str, state: StateReader) -> StoredDefinition | None:
        """The full committed definition (access rules, code hash) of a user contract."""
        vv = state.get(LIFECYCLE_NS, definition_key(name))
        return None if vv is None else StoredDefinition.from_json(vv.value)
