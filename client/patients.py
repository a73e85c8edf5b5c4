"""The client-side patient directory (the HIS's own data: never on the ledger).

A hospital's HIS knows its patients' names, ID numbers and birth dates; the ledger knows
only pseudonyms. ``rxchain network up`` writes ``HOME/patients.yaml`` from the sample data
so the CLI can resolve handles such as ``patient-zhang``; an 18-digit resident ID number is
accepted anywhere a patient is expected (its birth date is read from digits 7-14).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from client.errors import RxClientError
from client.records import normalise_id_number, pseudonym
from node.fsutil import replace_file

# ASCII digits only (re.ASCII): other scripts' digits are no ID number (normalise_id_number
# folds full-width ones first)
ID_NUMBER = re.compile(r"^\d{17}[\dX]$", re.ASCII)
_DIGIT_RUN = re.compile(r"\d{6}")  # what may be (part of) an ID number: never echoed in errors
DIRECTORY_FILE = "patients.yaml"


@dataclass(frozen=True)
class Patient:
    """One patient as the HIS knows her."""

    handle: str
    id_number: str
    birth_date: str
    display_name: str = ""
    enrolled_by: str = ""
    insurer: str = ""
    user_org: str = ""
    user_name: str = ""
    diagnoses: tuple[Mapping[str, Any], ...] = ()
    account_balance_fen: int = 0
    deductible_used_fen: int = 0
    cap_used_by_disease: Mapping[str, int] = field(default_factory=dict)

    def pseudonym(self, secret: bytes) -> str:
        """The on-ledger identifier."""
        return pseudonym(secret, self.id_number)


def patient_from_yaml(raw: Mapping[str, Any]) -> Patient:
    """One entry of sample-data.yaml's ``patients`` list."""
    try:
        user = raw.get("user") or {}
        return Patient(
            handle=str(raw["name"]), id_number=str(raw["id_number"]),
            birth_date=str(raw["birth_date"]), display_name=str(raw.get("display_name", "")),
            enrolled_by=str(raw.get("enrolled_by", "")), insurer=str(raw.get("insurer", "")),
            user_org=str(user.get("org", "")), user_name=str(user.get("name", "")),
            diagnoses=tuple(dict(d) for d in raw.get("diagnoses") or ()),
            account_balance_fen=int(raw.get("account_balance_fen", 0)),
            deductible_used_fen=int(raw.get("deductible_used_fen", 0)),
            cap_used_by_disease={str(k): int(v) for k, v in
                                 (raw.get("cap_used_by_disease") or {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # name the entry by its handle only: never echo ID numbers, names or birth dates
        # into an error message (it reaches terminals, logs and FHIR OperationOutcomes)
        handle = raw.get("name") if isinstance(raw, Mapping) else None
        raise RxClientError(
            "BAD_CONFIG", f"bad patient entry {str(handle)[:64]!r}: {type(exc).__name__} {_field(exc)}"
        ) from exc


def _field(exc: Exception) -> str:
    """The missing field of a KeyError (a field name, not a value), else nothing."""
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0][:64]
    return ""


def birth_date_from_id(id_number: str) -> str:
    """YYYY-MM-DD from an 18-digit resident ID number."""
    return f"{id_number[6:10]}-{id_number[10:12]}-{id_number[12:14]}"


class PatientDirectory:
    """Resolves patient handles or ID numbers."""

    def __init__(self, patients: list[Patient]):
        self._by_handle = {p.handle: p for p in patients}

    @staticmethod
    def load(home: Path) -> PatientDirectory:
        """Load ``HOME/patients.yaml`` (empty directory if absent); BAD_CONFIG naming the file
        if it is not UTF-8 YAML holding a ``patients`` list, or names one handle twice (the
        last entry would silently win: a prescription for the wrong patient)."""
        path = Path(home) / DIRECTORY_FILE
        if not path.exists():
            return PatientDirectory([])
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:  # the position only: never the bytes around it
            raise RxClientError("BAD_CONFIG", f"{path}: not UTF-8 text (offset {exc.start})") from exc
        except yaml.YAMLError as exc:
            # the position only: PyYAML's message quotes the offending line (an ID number, a
            # name) and its problem text may quote the characters found there
            marks = [m for m in (getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)) if m]
            where = "; ".join(dict.fromkeys(f"line {m.line + 1}, column {m.column + 1}" for m in marks))
            raise RxClientError("BAD_CONFIG", f"{path}: not valid YAML" + (f" ({where})" if where else "")) from exc
        except OSError as exc:
            raise RxClientError("BAD_CONFIG", f"{path}: {exc}") from exc
        entries = (raw.get("patients") or []) if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise RxClientError("BAD_CONFIG", f"{path}: must be a mapping with a list of patients")
        patients: list[Patient] = []
        seen: set[str] = set()
        for entry in entries:
            try:
                patient = patient_from_yaml(entry)
            except RxClientError as exc:
                raise RxClientError(exc.reason, f"{path}: {exc.message}") from exc
            if patient.handle in seen:
                raise RxClientError("BAD_CONFIG", f"{path}: patient {patient.handle[:64]!r} is listed twice")
            seen.add(patient.handle)
            patients.append(patient)
        return PatientDirectory(patients)

    def all(self) -> list[Patient]:
        """Every known patient."""
        return list(self._by_handle.values())

    def by_pseudonym(self, secret: bytes, pseud: str) -> Patient | None:
        """The patient whose on-ledger pseudonym is ``pseud`` (a prescription's ``patient``),
        None when the directory holds none."""
        for p in self._by_handle.values():
            if p.pseudonym(secret) == pseud:
                return p
        return None

    def resolve(self, ref: str) -> Patient:
        """A patient by handle, or a bare ID number."""
        if ref in self._by_handle:
            return self._by_handle[ref]
        ref_u = normalise_id_number(ref)
        for p in self._by_handle.values():
            if normalise_id_number(p.id_number) == ref_u:
                return p
        if ID_NUMBER.match(ref_u):
            return Patient(handle=ref_u, id_number=ref_u, birth_date=birth_date_from_id(ref_u))
        shown = "(a number)" if _DIGIT_RUN.search(ref) else repr(ref[:64])
        raise RxClientError("UNKNOWN_PATIENT", f"no patient {shown} in the local directory")


def write_directory(home: Path, patients: list[Mapping[str, Any]]) -> Path:
    """Write ``HOME/patients.yaml`` (private to the HIS: mode 0600).

    The data goes to a temporary file created with mode 0600 (never readable by others, not
    even for a moment or after a crash) and is renamed over the old file
    (:func:`node.fsutil.replace_file`)."""
    path = Path(home) / DIRECTORY_FILE
    replace_file(path, yaml.safe_dump({"patients": [dict(p) for p in patients]}, sort_keys=True).encode())
    return path
