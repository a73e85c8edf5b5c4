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
