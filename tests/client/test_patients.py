"""The HIS patient directory: private file, no identifying data in error messages."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from client.errors import RxClientError
from client.patients import DIRECTORY_FILE, PatientDirectory, patient_from_yaml, write_directory

ZHANG = {"name": "patient-zhang", "display_name": "Zhang Guilan", "id_number": "500103195803124428",
         "birth_date": "1958-03-12", "insurer": "ins01"}


def test_directory_is_never_readable_by_others_even_if_the_writer_dies(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    old_umask = os.umask(0o022)
    try:
        path = write_directory(tmp_path, [ZHANG])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert PatientDirectory.load(tmp_path).resolve("patient-zhang").display_name == "Zhang Guilan"
        path.chmod(0o644)  # an old, too open file is replaced by a private one
        write_directory(tmp_path, [ZHANG])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.unlink()

        seen: dict[str, int] = {}

        def dies(*_: object, **__: object) -> None:
            # the process dies once the data is written: what is on disk at that moment holds
            # ID numbers and must already be owner-only (the writer cleans up afterwards)
            seen.update({f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.iterdir()})
            raise KeyboardInterrupt

        monkeypatch.setattr(Path, "chmod", dies)
        monkeypatch.setattr(os, "replace", dies)
        with pytest.raises(KeyboardInterrupt):
            write_directory(tmp_path, [ZHANG])
    finally:
        os.umask(old_umask)
    assert seen and all(mode & 0o077 == 0 for mode in seen.values()), seen


def test_errors_never_echo_id_numbers_names_or_birth_dates():
    broken = {k: v for k, v in ZHANG.items() if k != "birth_date"}
    with pytest.raises(RxClientError) as e:
        patient_from_yaml(broken)
    assert e.value.reason == "BAD_CONFIG" and "patient-zhang" in e.value.message
    assert "birth_date" in e.value.message
    for secret in ("500103195803124428", "Zhang Guilan", "1958-03-12"):
        assert secret not in str(e.value)
    directory = PatientDirectory([patient_from_yaml(ZHANG)])
    with pytest.raises(RxClientError) as e:
        directory.resolve("50010319580312442")  # a mistyped (17-digit) ID number
    assert e.value.reason == "UNKNOWN_PATIENT" and "5001031958" not in str(e.value)
    with pytest.raises(RxClientError) as e:
        directory.resolve("patient-nobody")
    assert "patient-nobody" in str(e.value)


def test_an_id_number_resolves_whatever_its_case_or_spacing():
    x = dict(ZHANG, name="patient-x", id_number="11010119900307001x")
    directory = PatientDirectory([patient_from_yaml(x)])
    assert directory.resolve(" 11010119900307001X ").handle == "patient-x"


@pytest.mark.parametrize("data", [
    b"patients:\n  - name: p\xff\n",  # not UTF-8
    b"- name: p\n",  # a list, no mapping
    b"patients: {name: p}\n",  # patients no list
    b"patients:\n  - {name: p, id_number: '110101199003077777', birth_date: '1990-03-07'}\n"
    b"  - {name: p, id_number: '110101199003071111', birth_date: '1990-03-07'}\n",  # one handle twice
])
def test_a_directory_that_is_no_list_of_distinct_patients_is_bad_config(tmp_path: Path, data: bytes) -> None:
    (tmp_path / DIRECTORY_FILE).write_bytes(data)
    with pytest.raises(RxClientError) as bad:
        PatientDirectory.load(tmp_path)
    assert bad.value.reason == "BAD_CONFIG" and str(tmp_path / DIRECTORY_FILE) in bad.value.message
    assert "110101" not in bad.value.message


@pytest.mark.parametrize(("data", "where"), [
    # a quoted ID number never closed
    ("patients:\n  - name: patient-zhang\n    id_number: \"500103195803124428\n    display_name: Zhang Guilan\n",
     "(line 5, column 1; line 3, column 16)"),  # where it stopped; where the quote began
    # a line indented one space too far
    ("patients:\n  - name: patient-zhang\n    id_number: '500103195803124428'\n"
     "     display_name: Zhang Guilan\n", "line 4"),
    # a tab where YAML takes none, on a line holding a birth date
    ("patients:\n  - name: patient-zhang\n    birth_date:\t\t1958-03-12 @Zhang Guilan\n", "line 3"),
])
def test_a_directory_that_is_no_yaml_is_bad_config_naming_the_position_only(
        tmp_path: Path, data: str, where: str) -> None:
    """PyYAML's error message quotes the line it stopped at (an ID number, a name, a birth
    date) and that message was the BAD_CONFIG message every command and the FHIR gateway's
    OperationOutcome showed: now the file and the position only."""
    (tmp_path / DIRECTORY_FILE).write_text(data, encoding="utf-8")
    with pytest.raises(RxClientError) as bad:
        PatientDirectory.load(tmp_path)
    assert bad.value.reason == "BAD_CONFIG" and str(tmp_path / DIRECTORY_FILE) in bad.value.message
    for secret in ("500103", "Zhang", "Guilan", "1958-03-12"):
        assert secret not in str(bad.value)
    assert where in bad.value.message
