"""Scanning a local network's files for identifying plaintext (patient data, drug names).

Raw bytes are not enough for LevelDB: plyvel's tables are snappy-compressed, so a string
can be split by back-references and missed by a grep. ``leveldb_items`` copies a (possibly
live, locked) LevelDB directory and iterates every key and value of the copy through
plyvel; ``scan_raw`` covers the uncompressed block segments, raft files and logs. Used by
``make demo``'s privacy check and by the end-to-end privacy test.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plyvel


@dataclass(frozen=True)
class Hit:
    """A term found in a place."""

    term: str
    where: str


def find_terms(data: bytes, terms: Iterable[str], where: str) -> list[Hit]:
    """Case-insensitive occurrences of ``terms`` in ``data`` (one hit per term)."""
    low = data.lower()
    return [Hit(t, where) for t in terms if t.lower().encode() in low]


def copy_leveldb(src: Path, dest: Path, attempts: int = 5, sleep: float = 0.2) -> Path:
    """Copy a LevelDB directory (maybe open in a running node) without its LOCK file.

    A compaction can delete a file between listing and copying: retry, bounded.
    """
    last: Exception | None = None
    for _ in range(attempts):
        shutil.rmtree(dest, ignore_errors=True)
        try:
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("LOCK"))
            return dest
        except (OSError, shutil.Error) as exc:
            last = exc
            time.sleep(sleep)
    raise OSError(f"could not copy {src}: {last}")


def _open_copy(state_dir: Path, dest: Path, attempts: int = 5) -> Any:
    """A plyvel handle on a fresh copy; a copy caught mid-compaction (MANIFEST naming a table
    that was not copied) fails to open: copy again, bounded."""
    last: Exception | None = None
    for _ in range(attempts):
        copy = copy_leveldb(state_dir, dest)
        try:
            return plyvel.DB(str(copy), create_if_missing=False)
        except plyvel.Error as exc:
            last = exc
            time.sleep(0.2)
    raise OSError(f"could not open a copy of {state_dir}: {last}")


def leveldb_items(state_dir: Path) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of the LevelDB at ``state_dir``, read from a private copy."""
    with tempfile.TemporaryDirectory(prefix="rx-scan-") as tmp:
        db = _open_copy(Path(state_dir), Path(tmp) / "db")
        try:
            yield from db.iterator()
        finally:
            db.close()


def scan_leveldb(state_dir: Path, terms: list[str], where: str) -> tuple[int, list[Hit]]:
    """(number of entries read, hits) over every key and value of a LevelDB."""
    count, hits = 0, []
    for key, value in leveldb_items(state_dir):
        count += 1
        hits += find_terms(key + b"\0" + value, terms, f"{where} key {key[:80]!r}")
    return count, hits


def raw_files(home: Path) -> list[Path]:
    """Every file the nodes of ``home`` wrote: data (blocks, state, raft) and logs; no keys/configs."""
    home = Path(home)
    files = [p for p in sorted((home / "nodes").rglob("*")) if p.is_file()
             and p.suffix not in (".pem", ".yaml")]
    return files + [p for p in sorted((home / "logs").rglob("*")) if p.is_file()]


def scan_raw(files: Iterable[Path], terms: list[str]) -> list[Hit]:
    """Hits in the raw bytes of ``files``."""
    hits: list[Hit] = []
    for f in files:
        try:
            data = f.read_bytes()
        except FileNotFoundError:  # a LevelDB file removed by a compaction meanwhile
            continue
        hits += find_terms(data, terms, str(f))
    return hits


def peer_state_dir(home: Path, peer: str) -> Path:
    """The world-state LevelDB of a peer node (``peer.<org>``)."""
    return Path(home) / "nodes" / peer / "data" / "ledger" / "state"
