"""The demo's closing lines name the home the network runs in."""

from __future__ import annotations

from pathlib import Path

from client.demo import closing_hints
from client.launcher import DEFAULT_HOME


def test_closing_hints_name_a_non_default_home(tmp_path: Path):
    lines = closing_hints(tmp_path / "demo", "RX-1")
    assert len(lines) == 3 and all(f"RXCHAIN_HOME={tmp_path / 'demo'} " in ln for ln in lines)
    assert lines[-1].startswith(f"Stop it with:  RXCHAIN_HOME={tmp_path / 'demo'} make network-down")
    assert "rx show RX-1" in lines[0]


def test_closing_hints_for_the_default_home_are_plain():
    lines = closing_hints(DEFAULT_HOME, "RX-2")
    assert not any("RXCHAIN_HOME" in ln for ln in lines)
    assert lines[-1] == "Stop it with:  make network-down   (or: .venv/bin/rxchain network down)"
