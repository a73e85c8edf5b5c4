"""Scanning a local network's files for identifying plaintext (patient data, drug names).

Raw bytes are not enough for LevelDB: plyvel's tables are snappy-compressed, so a string
can be split by back-references and missed by a grep. ``leveldb_items`` copies a (possibly
live, locked) LevelDB directory and iterates every key and value of the copy through
plyvel; ``scan_raw`` covers the uncompressed block segments, raft files and logs. Used by
``make demo``'s privacy check and by the end-to-end privacy test. A term is found as text
(any case) and in the encodings a leak usually takes (JSON escapes, byte escapes, UTF-16,
hex, base64): :func:`compile_terms`.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plyvel


@dataclass(frozen=True)
class Hit:
    """A term found in a place."""

    term: str
    where: str


# An encoded form is searched only when it is long enough not to turn up by chance in
# random base64 / hex (ciphertexts, hashes): 7 base64 characters = 42 bits, 12 hex = 48 bits
# (one chance in ~10^12 per byte scanned). It must not be longer: the most common Chinese names
# have two characters, 6 UTF-8 bytes = 7-8 base64 characters at each alignment and 12 hex
# digits, which the old bounds (10 and 16) never searched.
_MIN_B64 = 7
_MIN_HEX = 12


@dataclass(frozen=True)
class Needle:
    """One byte pattern standing for a term: ``folded`` patterns are matched against the
    lower-cased data (case-insensitive), the others (base64) against the data as is."""

    term: str
    encoding: str
    pattern: bytes
    folded: bool


def _b64_fragments(data: bytes) -> list[bytes]:
    """The base64 characters fixed by ``data`` alone at each of the 3 byte alignments."""
    out = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data)
        frag = enc[-(-8 * k // 6): 8 * (k + len(data)) // 6]
        if len(frag) >= _MIN_B64:
            out.append(frag)
    return out


def compile_terms(terms: Iterable[str]) -> list[Needle]:
    """The patterns :func:`find_terms` looks for: each term as UTF-8 text, and as it appears
    when a program encodes it -- JSON ``\\u`` escapes, Python/protobuf byte escapes (non-ASCII
    terms), UTF-16, hex, and standard or URL-safe base64 (a client that base64-encodes clear
    text instead of encrypting it)."""
    needles: list[Needle] = []
    for t in terms:
        low = t.lower()
        raw = low.encode()
        forms: list[tuple[str, bytes, bool]] = [("text", raw, True)]
        if not t.isascii():
            forms += [
                ("json-escaped", json.dumps(low)[1:-1].encode(), True),
                ("byte-escaped", "".join(f"\\x{b:02x}" for b in raw).encode(), True),
                ("octal-escaped", "".join(f"\\{b:03o}" for b in raw).encode(), True),
            ]
        forms.append(("utf-16", low.encode("utf-16-le"), True))
        if len(raw) * 2 >= _MIN_HEX:
            forms.append(("hex", raw.hex().encode(), True))
        for variant in dict.fromkeys((t, low)):
            for frag in _b64_fragments(variant.encode()):
                forms.append(("base64", frag, False))
                url = frag.replace(b"+", b"-").replace(b"/", b"_")
                if url != frag:
                    forms.append(("base64url", url, False))
        seen: set[tuple[bytes, bool]] = set()
        for encoding, pattern, folded in forms:
            if (pattern, folded) not in seen:
                seen.add((pattern, folded))
                needles.append(Needle(t, encoding, pattern, folded))
    return needles


def find_terms(data: bytes, terms: Iterable[str] | Sequence[Needle], where: str) -> list[Hit]:
    """Case-insensitive occurrences of ``terms`` in ``data``, plain or encoded (see
    :func:`compile_terms`; pass its result to scan many pieces of data): one hit per term."""
    items = list(terms)
    needles = [n for n in items if isinstance(n, Needle)] or compile_terms(str(t) for t in items)
    low = data.lower()
    hits: dict[str, Hit] = {}
    for n in needles:
        if n.term not in hits and n.pattern in (low if n.folded else data):
            hits[n.term] = Hit(n.term, where if n.encoding == "text" else f"{where} ({n.encoding})")
    return list(hits.values())


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
    needles = compile_terms(terms)
    for key, value in leveldb_items(state_dir):
        count += 1
        hits += find_terms(key + b"\0" + value, needles, f"{where} key {key[:80]!r}")
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
    needles = compile_terms(terms)
    for f in files:
        try:
            data = f.read_bytes()
        except FileNotFoundError:  # a LevelDB file removed by a compaction meanwhile
            continue
        hits += find_terms(data, needles, str(f))
    return hits


def peer_state_dir(home: Path, peer: str) -> Path:
    """The world-state LevelDB of a peer node (``peer.<org>``)."""
    return Path(home) / "nodes" / peer / "data" / "ledger" / "state"
