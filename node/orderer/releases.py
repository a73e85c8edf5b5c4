"""Which consortium protocol versions the other orderers' releases implement.

Every Raft message carries the highest protocol version its sender's release implements
(``ConsensusRequest.max_protocol_version``; 0 from releases that do not tell). The leader
admits a config update raising ``ConsortiumConfig.protocol_version`` only when every voter has
told it implements the new version (node.orderer.chain): raised while some orderers still run
an older release, those would stop at that block (PROTOCOL_UNSUPPORTED, node.protocol) and,
were they a quorum, ordering with them. Peers do not take part in Raft: operators check them
with Admin.Status (``protocol_versions``) before raising the version.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping


class ReleaseWatch:
    """The latest highest protocol version each other orderer told (thread-safe: gRPC threads
    observe, the Raft driver reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._told: dict[int, int] = {}

    def observe(self, node_id: int, max_protocol_version: int) -> None:
        """Node ``node_id`` told it implements versions up to ``max_protocol_version``."""
        with self._lock:
            self._told[node_id] = max_protocol_version

    def told(self) -> dict[int, int]:
        """Node -> the highest version it last told (nodes never heard from are absent)."""
        with self._lock:
            return dict(self._told)


def lacking(voters: Collection[int], own_id: int, version: int, told: Mapping[int, int]) -> list[int]:
    """The voters other than ``own_id`` not known to implement ``version`` (sorted)."""
    return sorted(v for v in voters if v != own_id and told.get(v, 0) < version)


__all__ = ["ReleaseWatch", "lacking"]
