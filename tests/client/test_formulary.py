"""The local drug catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.errors import RxClientError
from client.formulary import Formulary, write_catalogue

AMLO = "XC08CAA001A001010100001"


def test_catalogue_round_trip_and_resolution(tmp_path: Path):
    write_catalogue(tmp_path, [{"code": AMLO, "short_name": "amlodipine", "insurer": "ins01",
                                "generic_name": "Amlodipine besylate tablets", "price_fen": 2000}])
    cat = Formulary.load(tmp_path)
    assert cat.resolve("amlodipine").code == AMLO
    assert cat.resolve(AMLO).generic_name == "Amlodipine besylate tablets"
    assert cat.resolve("XN02AAM001B002010100004").short_name == ""  # unknown code: ledger decides
    with pytest.raises(RxClientError) as e:
        cat.resolve("aspirin")
    assert e.value.reason == "UNKNOWN_DRUG"
    assert "price_fen" not in (tmp_path / "formulary.yaml").read_text()


def test_missing_catalogue_is_empty(tmp_path: Path):
    with pytest.raises(RxClientError):
        Formulary.load(tmp_path).resolve("amlodipine")
