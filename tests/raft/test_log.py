"""RaftLog / Unstable: conflicts, commit rules, slicing across storage and unstable."""

from __future__ import annotations

import pytest

from node.raft.errors import Compacted, RaftError
from node.raft.log import RaftLog, Unstable
from node.raft.storage import MemoryStorage
from node.raft.types import ConfState, Entry, EntryType, Snapshot, SnapshotMeta


def E(term: int, index: int, data: bytes = b"") -> Entry:
    return Entry(term, index, EntryType.NORMAL, data)


def log_with(*terms: int) -> RaftLog:
    """A log whose stable entries have the given terms at indexes 1..n."""
    s = MemoryStorage()
    s.append([E(t, i + 1) for i, t in enumerate(terms)])
    return RaftLog(s)


def test_find_conflict() -> None:
    log = log_with(1, 2, 3)
    assert log.find_conflict([]) == 0
    assert log.find_conflict([E(1, 1), E(2, 2), E(3, 3)]) == 0
    assert log.find_conflict([E(2, 2), E(3, 3), E(4, 4)]) == 4  # new entries
    assert log.find_conflict([E(4, 2), E(4, 3)]) == 2  # conflict


def test_maybe_append_truncates_only_after_conflict() -> None:
    log = log_with(1, 2, 3)
    # mismatch on (index, term)
    assert log.maybe_append(3, 2, 3, (E(4, 4),)) is None
    # matching prefix, conflicting suffix is replaced
    assert log.maybe_append(1, 1, 2, (E(4, 2), E(4, 3), E(4, 4))) == 4
    assert [e.term for e in log.all_entries()] == [1, 4, 4, 4]
    assert log.committed == 2
    # a stale, shorter append does not truncate newer entries
    assert log.maybe_append(1, 1, 2, (E(4, 2),)) == 2
    assert log.last_index() == 4


def test_maybe_append_never_overwrites_committed() -> None:
    log = log_with(1, 1, 1)
    log.commit_to(3)
    with pytest.raises(RaftError) as err:
        log.maybe_append(1, 1, 3, (E(2, 2),))
    assert err.value.reason == "committed_entry_conflict"
    assert [e.term for e in log.all_entries()] == [1, 1, 1] and log.committed == 3


def test_the_committed_entry_check_holds_under_python_O() -> None:
    """It was an assert: ``python -O`` (or PYTHONOPTIMIZE) dropped it and a conflicting
    append truncated committed entries."""
    import subprocess
    import sys

    code = ("from node.raft.errors import RaftError\n"
            "from tests.raft.test_log import E, log_with\n"
            "log = log_with(1, 1, 1)\nlog.commit_to(3)\n"
            "try:\n    log.maybe_append(1, 1, 3, (E(2, 2),))\n"
            "except RaftError as e:\n    print(e.reason)\n"
            "print([e.term for e in log.all_entries()])\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["committed_entry_conflict", "[1,", "1,", "1]"], out.stderr


def test_commit_caps_at_last_new_entry() -> None:
    log = log_with(1)
    assert log.maybe_append(1, 1, 100, (E(1, 2),)) == 2
    assert log.committed == 2


def test_find_conflict_by_term() -> None:
    log = log_with(1, 1, 2, 2, 5, 5)
    assert log.find_conflict_by_term(6, 5) == (6, 5)
    assert log.find_conflict_by_term(6, 4) == (4, 2)
    assert log.find_conflict_by_term(6, 1) == (2, 1)
    assert log.find_conflict_by_term(6, 0) == (0, 0)


def test_only_current_term_commits() -> None:
    log = log_with(1, 2)
    assert not log.maybe_commit(2, 3)  # entry 2 is from term 2, leader is in term 3
    assert log.committed == 0
    assert log.maybe_commit(2, 2)
    assert log.committed == 2
    assert not log.maybe_commit(1, 2)  # never backwards


def test_is_up_to_date() -> None:
    log = log_with(1, 2, 2)
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(1, 3)
    assert not log.is_up_to_date(2, 2)
    assert not log.is_up_to_date(9, 1)


def test_slice_across_stable_and_unstable_with_size_limit() -> None:
    log = log_with(1, 1)
    log.append([E(2, 3, b"a" * 50), E(2, 4, b"b" * 50)])
    assert [e.index for e in log.slice(1, 5)] == [1, 2, 3, 4]
    size = E(1, 1).size() * 2 + E(2, 3, b"a" * 50).size()
    assert [e.index for e in log.slice(1, 5, size)] == [1, 2, 3]
    assert [e.index for e in log.next_committed_ents()] == []
    log.commit_to(3)
    assert [e.index for e in log.next_committed_ents()] == [1, 2, 3]
    log.applied_to(3)
    assert not log.has_next_committed_ents()


def test_compacted_slice_raises() -> None:
    s = MemoryStorage()
    s.append([E(1, i) for i in range(1, 6)])
    s.create_snapshot(3, ConfState(), b"")
    s.compact(3)
    log = RaftLog(s)
    assert log.first_index() == 4
    with pytest.raises(Compacted):
        log.slice(2, 5)
    assert log.term(3) == 1
    assert log.term_or_zero(2) == 0


def test_unstable_stable_to_ignores_overwritten_entries() -> None:
    u = Unstable(5)
    u.truncate_and_append([E(1, 5), E(1, 6), E(1, 7)])
    u.truncate_and_append([E(2, 6)])  # overwrite 6, drop 7
    u.stable_to(7, 1)  # stale acknowledgement of the old entry 7: nothing happens
    assert [(e.term, e.index) for e in u.entries] == [(1, 5), (2, 6)]
    u.stable_to(6, 1)  # term mismatch: still unstable
    assert u.offset == 5
    u.stable_to(6, 2)
    assert u.entries == [] and u.offset == 7


def test_restore_snapshot() -> None:
    log = log_with(1, 1, 1)
    snap = Snapshot(SnapshotMeta(10, 3, ConfState(voters=(1,))), b"")
    log.restore(snap)
    assert log.committed == 10
    assert log.first_index() == 11
    assert log.last_index() == 10
    assert log.last_term() == 3
    assert log.snapshot() == snap
    log.stable_snap_to(10)
    assert log.unstable.snapshot is None
