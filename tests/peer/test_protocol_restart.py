"""A peer whose commit loop stops on PROTOCOL_UNSUPPORTED (it committed the config block
raising the protocol version beyond its release) exits 2 with the reason after one
in-process restart attempt -- the restart's start-up check refuses -- never cycling
through the 60 restarts meant for transient commit failures (node.peer.__main__)."""

from __future__ import annotations

import signal
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import node.peer.__main__ as peer_main
import node.peer.server as peer_server
from node.errors import RxError
from node.protocol import PROTOCOL_UNSUPPORTED

WHY = "peer.h01: the consortium runs protocol version 2; this release implements [1]"


class _FailedNode:
    """A running peer whose deliver loop reported a fatal commit error."""

    def __init__(self, cause: BaseException) -> None:
        self.failed = threading.Event()
        self.failed.set()
        self.failure: BaseException | None = cause
        self.stopped = False

    def stop(self, grace_s: float = 2.0) -> None:
        self.stopped = True


@pytest.fixture
def quiet_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() without touching this process's signal handlers or logging, no pause."""
    monkeypatch.setattr(signal, "signal", lambda *_: None)
    monkeypatch.setattr(peer_main, "configure_json_logging", lambda *_: None)
    monkeypatch.setattr(peer_main, "load_node_config",
                        lambda _path: SimpleNamespace(kind="peer", log_level="INFO", name="peer.h01"))
    monkeypatch.setattr(peer_main, "RESTART_PAUSE_S", 0.0)


def test_protocol_unsupported_after_a_commit_exits_2(quiet_main: None, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The refused restart is a log event too (peer_restart_refused, critical): the peer ran,
    its JSON log is what an alert reads, and the plain stderr line alone was missed there."""
    calls: list[int] = []
    first = _FailedNode(RxError(PROTOCOL_UNSUPPORTED, f"block 7: {WHY}"))

    def serve(config: Any) -> _FailedNode:
        calls.append(1)
        if len(calls) == 1:
            return first
        raise RxError(PROTOCOL_UNSUPPORTED, WHY)  # the start-up check of the restart

    monkeypatch.setattr(peer_server, "serve", serve)
    with caplog.at_level("INFO", logger="node.peer.__main__"):
        assert peer_main.main(["--config", "unused.yaml"]) == 2
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"event=peer_restart reason='{PROTOCOL_UNSUPPORTED}: block 7: {WHY}'"),
        ("CRITICAL", f"event=peer_restart_refused attempt=1 reason={PROTOCOL_UNSUPPORTED} detail='{WHY}'"),
    ]
    assert len(calls) == 2 and first.stopped
    err = capsys.readouterr().err
    assert f"{PROTOCOL_UNSUPPORTED}: {WHY}" in err


def test_restarts_that_fail_are_logged_events_until_the_peer_gives_up(
        quiet_main: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A restart whose start-up fails (retryable) and the peer giving up were on stderr as free
    text or not at all: each is an event a log alert selects on."""
    calls: list[int] = []

    def serve(config: Any) -> _FailedNode:
        calls.append(1)
        if len(calls) == 1:
            return _FailedNode(RxError("IO_ERROR", "disk went away"))
        raise RxError("IO_ERROR", "still gone")

    monkeypatch.setattr(peer_server, "serve", serve)
    monkeypatch.setattr(peer_main, "MAX_RESTARTS", 2)
    with caplog.at_level("INFO", logger="node.peer.__main__"):
        assert peer_main.main(["--config", "unused.yaml"]) == 74
    assert [r.getMessage() for r in caplog.records] == [
        "event=peer_restart reason='IO_ERROR: disk went away'",
        "event=peer_restart_failed attempt=1 reason=IO_ERROR detail='still gone'",
        "event=peer_restart_failed attempt=2 reason=IO_ERROR detail='still gone'",
        "event=peer_gave_up restarts=2",
    ]
    assert "giving up after 2 in-process restarts" in capsys.readouterr().err
