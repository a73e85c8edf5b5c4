"""The client-side drug catalogue: formulary short names and display names -> national codes.

The ledger's formulary holds only national codes, classes and prices (no drug names), so
a client maps what a doctor types (``amlodipine``) to the 23-character NHSA code itself.
``rxchain network up`` writes ``HOME/formulary.yaml`` from the sample data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from client.errors import RxClientError

NATIONAL_CODE = re.compile(r"^[A-Z0-9]{23}$")
CATALOGUE_FILE = "formulary.yaml"


@dataclass(frozen=True)
class DrugName:
    """A catalogue entry."""

    code: str
    short_name: str
    generic_name: str = ""
    spec: str = ""


class Formulary:
    """Resolves a drug given by national code or short name."""

    def __init__(self, entries: list[DrugName]):
        self._by_code = {e.code: e for e in entries}
        self._by_name = {e.short_name: e for e in entries}

    @staticmethod
    def load(home: Path) -> Formulary:
        """Load ``HOME/formulary.yaml`` (empty catalogue if absent)."""
        path = Path(home) / CATALOGUE_FILE
        if not path.exists():
            return Formulary([])
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RxClientError("BAD_CONFIG", f"{path}: {exc}") from exc
        return Formulary([entry_from_yaml(d) for d in raw.get("formulary") or []])

    def resolve(self, ref: str) -> DrugName:
        """The entry for a national code (known or not) or a short name."""
        if ref in self._by_name:
            return self._by_name[ref]
        if ref in self._by_code:
            return self._by_code[ref]
        if NATIONAL_CODE.match(ref):
            return DrugName(ref, "")
        raise RxClientError("UNKNOWN_DRUG", f"{ref!r} is neither a national code nor a known name")


def entry_from_yaml(raw: Mapping[str, Any]) -> DrugName:
    """One ``formulary`` entry of sample-data.yaml."""
    try:
        return DrugName(str(raw["code"]), str(raw.get("short_name", "")),
                        str(raw.get("generic_name", "")), str(raw.get("spec", "")))
    except (KeyError, TypeError) as exc:
        raise RxClientError("BAD_CONFIG", f"bad formulary entry {raw!r}") from exc


def write_catalogue(home: Path, entries: list[Mapping[str, Any]]) -> Path:
    """Write ``HOME/formulary.yaml``."""
    path = Path(home) / CATALOGUE_FILE
    keep = ("code", "short_name", "generic_name", "spec")
    path.write_text(yaml.safe_dump(
        {"formulary": [{k: e[k] for k in keep if k in e} for e in entries]}, sort_keys=True))
    return path
