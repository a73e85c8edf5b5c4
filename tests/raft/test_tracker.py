"""Progress, Inflights and the membership tracker."""

from __future__ import annotations

import pytest

from node.raft.tracker import Inflights, Progress, ProgressState, ProgressTracker
from node.raft.types import ConfState


def test_inflights_window() -> None:
    f = Inflights(3)
    for i in (5, 7, 9):
        f.add(i)
    assert f.full()
    with pytest.raises(AssertionError):
        f.add(11)
    f.free_le(7)
    assert f.count() == 1 and not f.full()
    f.free_first_one()
    assert f.count() == 0
    with pytest.raises(ValueError):
        Inflights(0)


def test_probe_pauses_after_sending_entries_until_ack() -> None:
    pr = Progress(next_index=5, max_inflight=4)
    assert not pr.is_paused()
    pr.sent_entries(2, 6)
    assert pr.is_paused()
    assert pr.maybe_update(6)
    assert not pr.is_paused()
    assert pr.next == 7


def test_maybe_decr_to_ignores_stale_rejections() -> None:
    pr = Progress(next_index=10, max_inflight=4)
    assert not pr.maybe_decr_to(5, 4)  # rejects an append at 5, but we probed at 9
    assert pr.next == 10
    assert pr.maybe_decr_to(9, 3)  # hint says the follower's log matches up to 3
    assert pr.next == 4
    pr.match = 4
    pr.become_replicate()
    pr.sent_entries(3, 7)
    assert pr.next == 8
    assert not pr.maybe_decr_to(4, 0)  # at or below match: stale
    assert pr.maybe_decr_to(7, 0)
    assert pr.next == pr.match + 1


def test_snapshot_state_resumes_after_snapshot_index() -> None:
    pr = Progress(next_index=3, max_inflight=4)
    pr.become_snapshot(50)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.state == ProgressState.PROBE and pr.next == 51


def test_tracker_membership_and_commit() -> None:
    t = ProgressTracker(max_inflight=8)
    t.restore(ConfState(voters=(1, 2, 3), learners=(4,)), next_index=1)
    for nid, m in ((1, 9), (2, 7), (3, 2), (4, 100)):
        t.progress[nid].match = m
    assert t.committed() == 7  # the learner's 100 does not count
    t.add_voter(4, 1)  # promote
    assert t.conf_state() == ConfState(voters=(1, 2, 3, 4))
    assert t.committed() == 7  # matches (100, 9, 7, 2): a quorum of 3 holds 7
    t.remove(1)
    assert t.committed() == 7  # (100, 7, 2) -> 7
    t.add_learner(2, 1)  # voters are never demoted by add_learner
    assert 2 in t.voters and 2 not in t.learners
    t.record_vote(2, True)
    t.record_vote(2, False)  # duplicate answer ignored
    t.record_vote(3, True)
    assert t.tally_votes()[0] == 2


def test_quorum_active_counts_only_voters() -> None:
    t = ProgressTracker(max_inflight=8)
    t.restore(ConfState(voters=(1, 2, 3), learners=(4,)), next_index=1)
    t.progress[1].recent_active = True
    t.progress[4].recent_active = True
    assert not t.quorum_active()
    t.progress[2].recent_active = True
    assert t.quorum_active()
