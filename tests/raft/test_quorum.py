"""Quorum arithmetic."""

from __future__ import annotations

import pytest

from node.raft.quorum import NO_LIMIT, VoteResult, committed_index, has_quorum, majority, vote_result


@pytest.mark.parametrize(("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(n: int, q: int) -> None:
    assert majority(n) == q


@pytest.mark.parametrize(
    ("voters", "acked", "want"),
    [
        ((1,), {1: 5}, 5),
        ((1, 2, 3), {1: 5, 2: 3, 3: 1}, 3),
        ((1, 2, 3), {1: 5}, 0),
        ((1, 2, 3), {1: 5, 2: 5}, 5),
        ((1, 2, 3, 4), {1: 9, 2: 8, 3: 2, 4: 1}, 2),
        ((1, 2, 3, 4, 5), {1: 10, 2: 10, 3: 7, 4: 1, 5: 1}, 7),
        ((1, 2, 3), {1: 5, 2: 5, 9: 100}, 5),  # non-voters do not count
    ],
)
def test_committed_index(voters: tuple[int, ...], acked: dict[int, int], want: int) -> None:
    assert committed_index(voters, acked) == want


def test_empty_config_does_not_limit() -> None:
    assert committed_index((), {}) == NO_LIMIT
    assert vote_result((), {}) == VoteResult.WON


@pytest.mark.parametrize(
    ("voters", "votes", "want"),
    [
        ((1,), {1: True}, VoteResult.WON),
        ((1, 2, 3), {1: True}, VoteResult.PENDING),
        ((1, 2, 3), {1: True, 2: True}, VoteResult.WON),
        ((1, 2, 3), {1: True, 2: False}, VoteResult.PENDING),
        ((1, 2, 3), {1: True, 2: False, 3: False}, VoteResult.LOST),
        ((1, 2, 3, 4), {1: True, 2: True}, VoteResult.PENDING),
        ((1, 2, 3, 4), {1: True, 2: False, 3: False}, VoteResult.LOST),
        ((1, 2, 3), {1: True, 7: True}, VoteResult.PENDING),  # non-voter votes ignored
    ],
)
def test_vote_result(voters: tuple[int, ...], votes: dict[int, bool], want: VoteResult) -> None:
    assert vote_result(voters, votes) == want


def test_has_quorum() -> None:
    assert has_quorum((1, 2, 3), {1, 2})
    assert not has_quorum((1, 2, 3), {1, 9})
    assert has_quorum((), set())
