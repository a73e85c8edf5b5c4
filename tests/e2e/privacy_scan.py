"""The privacy scan of the e2e tests: client.privacy_scan plus the sample data's sensitive terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from client.privacy_scan import Hit, find_terms, leveldb_items, raw_files, scan_leveldb, scan_raw

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = ROOT / "network-config" / "sample-data.yaml"

__all__ = ["Hit", "find_terms", "leveldb_items", "raw_files", "scan_leveldb", "scan_raw",
           "sensitive_terms"]


def sensitive_terms(sample_data: Path = SAMPLE_DATA) -> list[str]:
    """Patients' names, CLI handles, ID numbers and birth dates; drugs' short and generic names."""
    raw: dict[str, Any] = yaml.safe_load(sample_data.read_text())
    terms: list[str] = []
    for p in raw["patients"]:
        birth = str(p["birth_date"])
        terms += [str(p["display_name"]), str(p["name"]), str(p["id_number"]), birth,
                  birth.replace("-", "")]
    for d in raw["formulary"]:
        terms += [str(d["short_name"]), str(d["generic_name"])]
    return terms
