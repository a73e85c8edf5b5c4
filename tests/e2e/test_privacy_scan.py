"""The privacy scanner itself: it must see inside snappy-compressed LevelDB tables."""

from __future__ import annotations

from pathlib import Path

import plyvel

from tests.e2e.privacy_scan import find_terms, scan_leveldb, scan_raw, sensitive_terms


def test_plyvel_scan_finds_what_a_raw_grep_misses_in_a_locked_db(tmp_path: Path):
    path = tmp_path / "state"
    db = plyvel.DB(str(path), create_if_missing=True)  # stays open: the LOCK is held
    try:
        for i in range(3000):
            db.put(b"k%06d" % i, b'{"drug":"amlodipinX","n":%d,"other":"xamlodipine"}' % i)
        db.put(b"rx/1", b'{"drug":"amlodipine"}')
        db.compact_range()  # into a snappy-compressed table file
        files = [p for p in path.iterdir() if p.is_file()]
        assert any(p.suffix == ".ldb" for p in files)
        assert scan_raw(files, ["amlodipine"]) == []  # compression hides it from a grep
        count, hits = scan_leveldb(path, ["amlodipine", "benidipine"], "test")
    finally:
        db.close()
    assert count == 3001
    assert {h.term for h in hits} == {"amlodipine"} and len(hits) == 3001
    assert any("rx/1" in h.where for h in hits)


def test_terms_come_from_the_sample_data_and_match_case_insensitively():
    terms = sensitive_terms()
    for t in ("Zhang Guilan", "500103195803124428", "1958-03-12", "19580312", "patient-sun",
              "amlodipine", "Benidipine hydrochloride tablets", "morphine"):
        assert t in terms
    assert [h.term for h in find_terms(b"..AMLODIPINE..", terms, "x")] == ["amlodipine"]
    assert find_terms(b"XC08CAA001A001010100001", terms, "x") == []


def test_encoded_plaintext_is_found_too(tmp_path: Path):
    """A leak rarely stays plain UTF-8: json.dumps escapes non-ASCII, logs print bytes reprs
    or protobuf octal escapes, a careless client base64-encodes clear text instead of
    encrypting it. Each is found at every byte alignment; random base64/hex is not a hit."""
    import base64
    import json
    import os

    name = "张桂兰"
    assert [h.term for h in find_terms(json.dumps({"n": name}).encode(), [name], "x")] == [name]
    assert find_terms(repr(name.encode()).encode(), [name], "x")
    assert find_terms("".join(f"\\{b:03o}" for b in name.encode()).encode(), [name], "x")
    for prefix in (b"", b"{", b'{"'):
        blob = base64.b64encode(prefix + b'"patient_info":{"name":"Zhang Guilan"}')
        hits = find_terms(b"note_ct=" + blob, sensitive_terms(), "log")
        assert [(h.term, h.where) for h in hits] == [("Zhang Guilan", "log (base64)")]
        assert find_terms(base64.urlsafe_b64encode(prefix + b"amlodipine>>?"), ["amlodipine"], "x")
    assert find_terms("patient-sun".encode("utf-16-le"), ["patient-sun"], "x")
    assert find_terms(b"id=" + b"500103195803124428".hex().encode(), ["500103195803124428"], "x")
    # a two-character name (the most common Chinese names: 6 UTF-8 bytes) is long enough too
    for short in ("张伟", "李娜"):
        for prefix in (b"", b"{", b'{"'):
            blob = base64.b64encode(prefix + json.dumps({"name": short}, ensure_ascii=False).encode())
            assert [h.where for h in find_terms(b"note_ct=" + blob, [short], "x")] == ["x (base64)"]
        assert [h.where for h in find_terms(short.encode().hex().encode(), [short], "x")] == ["x (hex)"]
    noise = base64.b64encode(os.urandom(1 << 16)) + os.urandom(1 << 16).hex().encode()
    assert find_terms(noise, [*sensitive_terms(), "张伟", "李娜"], "x") == []
    f = tmp_path / "node.log"
    f.write_bytes(b"args=" + base64.b64encode(b"...benidipine..."))
    assert [h.term for h in scan_raw([f], ["benidipine", "amlodipine"])] == ["benidipine"]
