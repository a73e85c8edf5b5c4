"""Where `audit list` takes its --peer options: after the sub-command, once or more (one page of
one peer, or a merged view). A --peer before the sub-command names one peer, as for every
command; given twice there, or with others after the sub-command, audit list would read only the
last given (the others silently not read): refused BAD_ARGUMENTS, nothing read."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from client import cli
from client.cli import build_parser, main


def _run(tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    buf = io.StringIO()
    code = main([*argv, "--home", str(tmp_path / "home"), "--json"], out=buf, err=io.StringIO())
    return code, json.loads(buf.getvalue())


@pytest.mark.parametrize("argv", [
    ["--peer", "h01", "--peer", "ins01", "audit", "list"],  # (read ins01 alone)
    ["--peer", "h01", "audit", "list", "--peer", "ins01"],  # (read ins01 alone)
    ["--peer", "h01", "audit", "list", "--peer", "ins01", "--peer", "reg01"],  # (merged without h01)
    ["--peer", "h01", "--peer", "h01", "audit", "list"],
], ids=["two-before", "one-before-one-after", "one-before-two-after", "same-twice-before"])
def test_peers_named_before_audit_list_with_others_are_refused(tmp_path: Path, argv: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def no_read(*_: object) -> object:
        raise AssertionError("a peer was read")

    monkeypatch.setattr(cli, "_ledger_identity", no_read)
    code, out = _run(tmp_path, *argv, "--as", "reg01:aud-a")
    assert (code, out["error"]) == (1, "BAD_ARGUMENTS")
    assert "audit list --peer A --peer B" in out["message"] and "AFTER the sub-command" in out["message"]


@pytest.mark.parametrize(("argv", "peer"), [
    (["--peer", "h01", "audit", "list"], "h01"),  # one before: that peer, as for every command
    (["audit", "list", "--peer", "h01"], ["h01"]),
    (["audit", "list", "--peer", "h01", "--peer", "ins01"], ["h01", "ins01"]),
    (["audit", "list"], None),
])
def test_the_peers_audit_list_reads_as_meant_are_accepted(argv: list[str], peer: object) -> None:
    a = build_parser().parse_args([*argv, "--as", "reg01:aud-a"])
    cli._audit_list_peers(a)  # (no error)
    assert getattr(a, "peer", None) == peer


def test_other_commands_keep_their_peer_options() -> None:
    for argv in (["--peer", "h01", "--peer", "ins01", "ledger", "height"],
                 ["--peer", "h01", "ledger", "height", "--peer", "ins01"],
                 ["--peer", "h01", "--peer", "ins01", "audit", "verify"]):
        assert build_parser().parse_args(argv).peer == "ins01"  # the last given, as before


def test_a_merged_views_deadline_is_an_option() -> None:
    assert build_parser().parse_args(["audit", "list"]).deadline_s == 120
    assert build_parser().parse_args(["audit", "list", "--deadline-s", "30"]).deadline_s == 30
    for bad in ("0", "-1", "x"):
        with pytest.raises(cli.UsageError):
            build_parser().parse_args(["audit", "list", "--deadline-s", bad])
    assert build_parser().parse_args(["audit", "verify"]).deadline_s == 120  # (verify: every page)
    assert build_parser().parse_args(["audit", "verify", "--deadline-s", "30"]).deadline_s == 30


class _Peer:
    def __init__(self, org: str) -> None:
        self.name, self.target = f"peer.{org}", f"127.0.0.1:{len(org)}"


class _Net:
    def peer_of(self, org: str) -> _Peer:
        return _Peer(org)


class _Client:
    def __init__(self, *_: object) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_deadline_given_is_the_merged_views(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from client import audit

    seen: dict[str, Any] = {}

    def fake_merged(clients: list[tuple[str, _Client]], **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs, peers=[name for name, _ in clients])
        return {"records": [], "peers": [], "more": False, "next_ms": 0}

    monkeypatch.setattr(cli, "_ledger_identity", lambda a: (None, _Net(), None))
    monkeypatch.setattr(audit, "AuditClient", _Client)
    monkeypatch.setattr(audit, "merged", fake_merged)
    code, _ = _run(tmp_path, "audit", "list", "--as", "reg01:aud-a", "--peer", "h01", "--peer", "ins01",
                   "--deadline-s", "7")
    assert code == 0 and (seen["deadline_s"], seen["peers"]) == (7, ["peer.h01", "peer.ins01"])
    code, _ = _run(tmp_path, "audit", "list", "--as", "reg01:aud-a", "--peer", "h01", "--peer", "ins01")
    assert code == 0 and seen["deadline_s"] == 120
