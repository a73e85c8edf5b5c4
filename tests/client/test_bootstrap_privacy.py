"""Sample-data loading sends a patient's medical data only to the organisations concerned."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from client.bootstrap import Bootstrapper
from client.errors import RxClientError
from client.gateway import Gateway, SubmitResult


def test_enrolment_and_accounts_name_their_endorsers(net_home, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    """Diagnosis history (enrol_patient) and per-disease usage (open_account) go to the
    enrolling hospital's and the patient's insurer's peers only, never to a peer the gateway
    would pick by rotation; calls without medical data leave the choice to the gateway."""
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    calls: list[tuple[str, str, dict[str, Any], list[str] | None]] = []

    def submit(self: Gateway, contract: str, function: str, args: Any = None, transient: Any = None,
               endorsing_orgs: list[str] | None = None) -> SubmitResult:
        calls.append((self.identity.org, function, dict(transient or {}), endorsing_orgs))
        return SubmitResult("tx", "VALID", len(calls), {})

    monkeypatch.setattr(Gateway, "submit", submit)
    boot = Bootstrapper(home)
    try:
        counts = boot.load_sample_data()
    finally:
        boot.close()
    assert counts["patients"] == 2 and counts["accounts"] == 2
    medical = [c for c in calls if c[1] in ("enrol_patient", "open_account")]
    assert all(t.get("diagnoses") or "cap_used_by_disease" in t for _, _, t, _ in medical)
    assert sorted((org, fn, tuple(e or ())) for org, fn, _, e in medical) == [
        ("h01", "enrol_patient", ("h01", "ins01")),
        ("h02", "enrol_patient", ("h02", "ins01")),
        ("ins01", "open_account", ("ins01", "h01")),
        ("ins01", "open_account", ("ins01", "h02")),
    ]
    # each patient asks her insurer to open her account (reg6): as herself, her binding going
    # to her insurer's and her hospital's peers only
    asks = [c for c in calls if c[1] == "request_transfer"]
    assert sorted((org, tuple(e or ())) for org, _, _, e in asks) == [
        ("h01", ("ins01", "h01")), ("h02", ("ins01", "h02"))]
    assert counts["requests"] == 2
    assert all(e is None for _, fn, _, e in calls
               if fn not in ("enrol_patient", "open_account", "request_transfer"))


@pytest.mark.parametrize(("text", "why"), [
    ("practitioner: []\n", "unknown sections"),  # a misspelt section used to load nothing, silently
    ("pharmacies: []\npharmacies: []\n", "duplicate key"),
    ("pharmacies:\n- org: p01\n  licence_no: X\n  active: 'yes'\n", "true or false"),
])
def test_a_bad_sample_data_file_is_refused_before_anything_is_submitted(
        net_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, why: str):
    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)
    calls: list[str] = []

    def submit(self: Gateway, contract: str, function: str, *args: Any, **kwargs: Any) -> SubmitResult:
        calls.append(function)
        return SubmitResult("tx", "VALID", len(calls), {})

    monkeypatch.setattr(Gateway, "submit", submit)
    bad = tmp_path / "sample.yaml"
    bad.write_text(text)
    boot = Bootstrapper(home)
    try:
        with pytest.raises(RxClientError) as exc:
            boot.load_sample_data(bad)
    finally:
        boot.close()
    assert exc.value.reason == "BAD_CONFIG" and why in exc.value.message, exc.value.message
    assert calls == []
