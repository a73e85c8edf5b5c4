"""`audit list`'s options for a merged view (--peer more than once)."""

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


def test_a_merged_views_deadline_is_an_option() -> None:
    assert build_parser().parse_args(["audit", "list"]).deadline_s == 120
    assert build_parser().parse_args(["audit", "list", "--deadline-s", "30"]).deadline_s == 30
    for bad in ("0", "-1", "x"):
        with pytest.raises(cli.UsageError):
            build_parser().parse_args(["audit", "list", "--deadline-s", bad])


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
