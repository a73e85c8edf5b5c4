"""A merged view (client.audit.read_verified) against a hostile peer: its reading is bounded
whatever the peer answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from client.audit import AuditClient, Page, read_verified
from client.errors import RxClientError

_HEAD = {"first_id": 1, "first_prev_hash": "00" * 32, "last_id": 5, "last_hash": "ab" * 32, "pruned": 0}
_BOUND = 1_000  # pages the fake answers before the test calls the read unbounded


class _EndlessEmpty:
    """A peer answering every page empty, saying more follow (a healthy peer's page by id that says
    more always holds ``limit`` records)."""

    def __init__(self) -> None:
        self.served = 0

    def pages(self, **_: Any) -> Iterator[Page]:
        while True:
            self.served += 1
            if self.served > _BOUND:
                raise AssertionError(f"read on past {_BOUND} empty pages")
            yield Page([], True, 1, 0, dict(_HEAD))


def test_a_peer_answering_empty_pages_that_say_more_is_refused_at_once() -> None:
    peer = _EndlessEmpty()
    with pytest.raises(RxClientError) as err:
        read_verified(cast(AuditClient, peer))
    assert err.value.reason == "AUDIT_CHAIN_BROKEN"
    assert "no record" in err.value.message
    assert peer.served == 1
