"""Golden scenario tests: every tests/raft/testdata/*.txt script must reproduce its output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.raft.golden import Driver, parse, run_file

DATA = Path(__file__).parent / "testdata"
FILES = sorted(DATA.glob("*.txt"))


def test_there_are_enough_scenarios() -> None:
    assert len(FILES) >= 5


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    rewrite = os.environ.get("RXCHAIN_GOLDEN_REWRITE") == "1"
    mismatches = run_file(path, rewrite)
    if mismatches:
        c, actual = mismatches[0]
        pytest.fail(
            f"{path.name}:{c.line}: {c.command}\n--- expected\n{c.expected}\n--- actual\n{actual}"
            f"\n({len(mismatches)} mismatching commands; rewrite with RXCHAIN_GOLDEN_REWRITE=1)"
        )


def test_driver_reports_a_wrong_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("cluster ids=1,2,3\n----\nnot the real status\n")
    mismatches = run_file(bad, rewrite=False)
    assert len(mismatches) == 1
    assert "FOLLOWER" in mismatches[0][1]


def test_parser_requires_separator() -> None:
    with pytest.raises(ValueError, match="expected '----'"):
        parse("campaign 1\nstabilize\n")
    assert Driver().run("cluster ids=1").startswith("1: ")
