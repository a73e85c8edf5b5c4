"""The repository tracks no symbolic links and none of the per-checkout build products (the
virtualenv, generated code): a committed ``.venv`` link to one checkout's virtualenv makes a
fresh clone (CI's) install into, and point the ``rxchain-project.pth`` of, that other
checkout's environment -- or fail to create its own where the target does not exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PER_CHECKOUT = (".venv", "gen", ".rxchain")


def _tracked() -> list[tuple[str, str]]:
    """(mode, path) of every file git tracks in this checkout."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-s", "-z"],
        capture_output=True, check=True, timeout=60,
    ).stdout.decode()
    rows = []
    for entry in filter(None, out.split("\0")):
        meta, path = entry.split("\t", 1)
        rows.append((meta.split()[0], path))
    return rows


def test_no_symlink_is_tracked() -> None:
    rows = _tracked()
    assert rows, "git lists no tracked file: not a checkout?"
    links = [path for mode, path in rows if mode == "120000"]
    assert links == [], f"symbolic links committed: {links}"


def test_no_per_checkout_product_is_tracked() -> None:
    hits = [p for _, p in _tracked() if p.split("/", 1)[0] in PER_CHECKOUT]
    assert hits == [], f"per-checkout files committed: {hits[:10]}"
