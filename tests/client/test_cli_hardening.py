"""CLI against careless operators: out-of-range numbers and unusable files give a reason code
and an exit status, never a traceback (no network needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from client.cli import main


def _run(*argv: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--json", *argv], out=out, err=err)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, out.getvalue()
    assert "Traceback" not in err.getvalue()
    return rc, json.loads(lines[0]), err.getvalue()


@pytest.mark.parametrize("argv", [
    ("network", "down", "--grace", "nan"),     # nan: every node would be SIGKILLed at once
    ("network", "down", "--grace", "-1"),
    # (a missing consortium file: a regression can never launch nodes from this test)
    ("network", "up", "--timeout", "inf", "--consortium", "/nonexistent.yaml"),  # an unbounded wait
    ("network", "up", "--base-port", "70000", "--consortium", "/nonexistent.yaml"),
    ("netgen", "--base-port", "0", "--consortium", "/nonexistent.yaml"),
    ("fhir", "serve", "--port", "99999"),      # was an OverflowError traceback from bind()
    ("events", "--start", "-5", "--as", "h01:dr-jiang"),  # was a protobuf ValueError traceback
    ("events", "--limit", "0", "--as", "h01:dr-jiang"),
    ("rx", "list", "--limit", "-3", "--as", "h01:dr-jiang"),
    ("claim", "settle", "RX1", "--fill", "-1", "--as", "ins01:clerk-zhao"),
    ("patient", "show", "p", "--year", "-1", "--as", "ins01:clerk-zhao"),
])
def test_out_of_range_numbers_are_usage_errors(tmp_path: Path, argv: tuple[str, ...]) -> None:
    rc, body, _ = _run("--home", str(tmp_path), *argv)
    assert (rc, body["error"]) == (2, "BAD_ARGUMENTS")


def test_unusable_checkpoint_file_is_a_reason_not_a_traceback(tmp_path: Path, net_home: Any) -> None:
    """--checkpoint naming a directory used to end in an IsADirectoryError traceback."""
    cp = tmp_path / "cp"
    cp.mkdir()
    rc, body, _ = _run("--home", str(net_home.home), "--as", "h01:dr-jiang", "events", "--checkpoint", str(cp))
    assert rc == 1 and body["error"] in ("BAD_CHECKPOINT", "IO_ERROR") and body["message"]


def test_human_output_never_interprets_control_characters_from_the_ledger() -> None:
    """A note or event payload written by another party may carry terminal escapes (OSC 52
    writes the clipboard), bidi overrides or newlines faking further output lines."""
    from client.cli import _human

    out = io.StringIO()
    hostile = "ok\x1b]52;c;ZWNobyBwd25lZA==\x07\u202e\nstatus: DISPENSED"
    _human({"note": hostile, "steps": [{"reason": hostile}], "list": [hostile]}, out)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert text.count("\n") == 5 and "status: DISPENSED" not in text.splitlines()


def test_human_output_shows_chinese_spacing_as_is() -> None:
    """U+3000 (ideographic space) and U+00A0 are common in Chinese notes: not control text."""
    from client.cli import _human

    out = io.StringIO()
    _human({"note": "高血压\u3000稳定\u00a0", "list": ["甲\u3000乙"]}, out)
    assert out.getvalue() == "note: 高血压\u3000稳定\u00a0\nlist:\n  - 甲\u3000乙\n"
