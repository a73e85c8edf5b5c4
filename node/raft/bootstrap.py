"""Bootstrapping a new cluster: the initial membership as committed log entries.

Every founding member starts with the same first entries, one ``ADD_NODE`` ConfChange per
voter at term 1 (indexes 1..n), committed, and an empty ConfState. The first Ready hands them
out as committed entries and the application applies them like any conf change. Because the
membership history is in the log from index 1, a node added later can rebuild the
configuration by replaying the log (or from a snapshot).
"""

from __future__ import annotations

from collections.abc import Sequence

from node.raft.errors import ConfigError
from node.raft.types import ConfChange, ConfChangeType, Entry, EntryType, HardState

BOOTSTRAP_TERM = 1


def bootstrap_entries(voters: Sequence[int]) -> tuple[list[Entry], HardState]:
    """Entries and hard state every founding member persists before its first start."""
    ids = list(voters)
    if not ids or len(set(ids)) != len(ids) or any(v <= 0 for v in ids):
        raise ConfigError(f"bad founding voters {ids}")
    ents = [
        Entry(
            BOOTSTRAP_TERM,
            i + 1,
            EntryType.CONF_CHANGE,
            ConfChange(ConfChangeType.ADD_NODE, v).encode(),
        )
        for i, v in enumerate(ids)
    ]
    return ents, HardState(term=BOOTSTRAP_TERM, vote=0, commit=len(ents))
