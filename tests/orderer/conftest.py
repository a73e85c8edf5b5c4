"""Fixtures shared by the orderer tests."""

from __future__ import annotations

import pytest

from node import protocol


@pytest.fixture
def newer(monkeypatch: pytest.MonkeyPatch) -> int:
    """This release implements NEWER too (as the next release would)."""
    from tests.orderer.test_peer_releases import NEWER

    monkeypatch.setattr(protocol, "SUPPORTED_VERSIONS", frozenset({*protocol.SUPPORTED_VERSIONS, NEWER}))
    return NEWER
