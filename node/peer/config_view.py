"""The consortium configuration in force on this peer, with its MSP, rebuilt on change."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rxchain.v1 import config_pb2

from node.crypto.signing import Verifier
from node.errors import RxError
from node.identity.msp import MSP
from node.ledger.statedb import StateReader, Version
from node.ledger.txwrites import CONFIG_KEY, SYSTEM_NS


@dataclass(frozen=True)
class ConfigSnapshot:
    """One configuration and the MSP built from it."""

    raw: bytes
    version: Version
    config: config_pb2.ConsortiumConfig
    msp: MSP


class ConfigView:
    """Reads ``_system/config`` from committed state; caches the parsed form by its bytes."""

    def __init__(self, state: StateReader, verifier: Verifier) -> None:
        self._state = state
        self._verifier = verifier
        self._lock = threading.Lock()
        self._current: ConfigSnapshot | None = None

    def current(self) -> ConfigSnapshot:
        """The configuration committed in state (RxError SERVICE_UNAVAILABLE before genesis)."""
        vv = self._state.get(SYSTEM_NS, CONFIG_KEY)
        if vv is None:
            raise RxError("SERVICE_UNAVAILABLE", "the peer has not committed the genesis block")
        with self._lock:
            cur = self._current
            if cur is not None and cur.version == vv.version and cur.raw == vv.value:
                return cur
        config = config_pb2.ConsortiumConfig.FromString(vv.value)
        snap = ConfigSnapshot(vv.value, vv.version, config, MSP(config, self._verifier))
        with self._lock:
            self._current = snap
        return snap
