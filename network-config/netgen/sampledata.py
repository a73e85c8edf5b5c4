"""The sample registry data file (``network-config/sample-data.yaml``): strict reading and a
structural check of every entry before anything is submitted.

``client.bootstrap`` loads the file section by section through ordinary transactions, so an
entry it cannot use (a missing field, a typo such as ``licence_activ``, a ``true`` given as
``"yes"``) found half-way used to leave the earlier sections on the ledger, and a misspelt
section (``practitioner:``) loaded nothing without a word. :func:`read_sample_data` reads the
file with :mod:`node.yamlfile` (no duplicate keys, no aliases, UTF-8, bounded size) and checks
:data:`SCHEMA`: known sections and fields only, each required field present with its type.
Values (codes, ranges, classes) are the contracts' to judge; entries of organisations the
consortium lacks are skipped by the loader (a smaller test consortium loads the same file).
RxError BAD_CONFIG names the file, the entry and the field, never a value (patients' names
and ID numbers must not reach terminals or logs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.errors import RxError
from node.yamlfile import YamlFileError, load_yaml_file

# field -> (type, required); a dict type means a nested mapping of those fields, a
# ("map", type) a mapping of free keys (levels, ICD-10 codes) to that type, ("list", fields)
# a list of mappings of those fields.
Field = tuple[Any, bool]
_DIAGNOSIS: dict[str, Field] = {"icd10": (str, True), "date": (str, True), "hospital": (str, True),
                                "physical": (bool, True)}
SCHEMA: dict[str, dict[str, Field]] = {
    "practitioners": {"org": (str, True), "name": (str, True), "role": (str, True), "code": (str, True),
                      "licence_active": (bool, True), "practice_years": (int, True),
                      "internet_practice": (bool, True)},
    "pharmacies": {"org": (str, True), "licence_no": (str, True), "active": (bool, True)},
    "formulary": {"insurer": (str, True), "code": (str, True), "short_name": (str, False),
                  "generic_name": (str, False), "spec": (str, True), "cls": (str, True),
                  "standard_fen": (int, True), "price_fen": (int, True), "controlled": (str, True)},
    "policies": {"insurer": (str, True), "effective_ms": (int, False), "deductible_fen": (int, True),
                 "ratio_bp": (("map", int), True), "cap_fen": (int, True),
                 "cap_by_disease": (("map", int), True), "b_share_bp": (int, True)},
    "patients": {"name": (str, True), "display_name": (str, False), "id_number": (str, True),
                 "birth_date": (str, True), "enrolled_by": (str, True), "insurer": (str, True),
                 "user": ({"org": (str, True), "name": (str, True)}, True),
                 "diagnoses": (("list", _DIAGNOSIS), False), "account_balance_fen": (int, False),
                 "deductible_used_fen": (int, False), "cap_used_by_disease": (("map", int), False)},
}
VERSION = 1


def _bad(path: Path, msg: str) -> RxError:
    return RxError("BAD_CONFIG", f"sample data {path}: {msg}")


def _type_name(kind: Any) -> str:
    if isinstance(kind, dict):
        return "a mapping"
    if isinstance(kind, tuple):
        return "a mapping" if kind[0] == "map" else "a list of mappings"
    return {str: "a string", int: "an integer", bool: "true or false"}[kind]


def _check_value(path: Path, where: str, value: Any, kind: Any) -> None:
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise _bad(path, f"{where} must be a mapping")
        _check_fields(path, where, value, kind)
    elif isinstance(kind, tuple) and kind[0] == "map":
        if not isinstance(value, dict):
            raise _bad(path, f"{where} must be a mapping")
        for key, item in value.items():
            if not isinstance(key, str):
                raise _bad(path, f"{where}: keys must be strings")
            _check_value(path, f"{where}.{key}", item, kind[1])
    elif isinstance(kind, tuple):
        if not isinstance(value, list):
            raise _bad(path, f"{where} must be a list")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise _bad(path, f"{where}[{i}] must be a mapping")
            _check_fields(path, f"{where}[{i}]", item, kind[1])
    elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(path, f"{where} must be {_type_name(kind)}")


def _check_fields(path: Path, where: str, entry: dict[Any, Any], fields: dict[str, Field]) -> None:
    unknown = sorted(str(k) for k in entry if k not in fields)
    if unknown:
        raise _bad(path, f"{where}: unknown fields {unknown} (known: {sorted(fields)})")
    for name, (kind, required) in fields.items():
        if name in entry:
            _check_value(path, f"{where}.{name}", entry[name], kind)
        elif required:
            raise _bad(path, f"{where}: missing {name}")


def check_sample_data(doc: Any, path: Path) -> dict[str, Any]:
    """``doc`` (the parsed file) if it matches :data:`SCHEMA`; RxError BAD_CONFIG otherwise."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise _bad(path, "top level must be a mapping")
    unknown = sorted(str(k) for k in doc if k not in SCHEMA and k != "version")
    if unknown:
        raise _bad(path, f"unknown sections {unknown} (known: {sorted(SCHEMA)})")
    version = doc.get("version", VERSION)
    if version != VERSION or isinstance(version, bool):
        raise _bad(path, f"version must be {VERSION}")
    for section, fields in SCHEMA.items():
        entries = doc.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise _bad(path, f"{section} must be a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise _bad(path, f"{section}[{i}] must be a mapping")
            _check_fields(path, f"{section}[{i}]", entry, fields)
    # a patient handle names one patient: HOME/patients.yaml resolves it (and refuses one listed
    # twice), bootstrap binds it to her wallet -- twice, the first would get the last's binding
    seen: set[str] = set()
    for i, entry in enumerate(doc.get("patients") or []):
        if entry["name"] in seen:
            raise _bad(path, f"patients[{i}].name: patient {entry['name'][:64]!r} is listed twice")
        seen.add(entry["name"])
    return doc


def read_sample_data(path: str | Path) -> dict[str, Any]:
    """The checked document of a sample data file (module docstring)."""
    path = Path(path)
    try:
        doc = load_yaml_file(path)
    except (OSError, YamlFileError) as exc:
        raise _bad(path, str(exc)) from None
    return check_sample_data(doc, path)
