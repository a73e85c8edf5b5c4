"""The contract sources pass the sandbox's deploy-time checks and expose exactly the
documented public functions (everything else is private), with typed parameters."""

from __future__ import annotations

import pytest
import yaml

from node.sandbox.checker import check_source
from tests.contracts.chain import ROOT

PUBLIC = {
    "registry": {
        "register_practitioner", "register_pharmacy", "authorize_practice_site", "get_practitioner", "get_pharmacy",
        "set_drug", "set_controlled", "get_drug", "list_drugs", "set_policy", "get_policy", "enrol_patient",
        "add_diagnosis", "get_patient", "reindex", "revoke_registration",
        "reinstate_registration",
    },
    "prescription": {
        "issue", "review", "route", "lock", "release", "dispense", "deliver", "revoke",
        "expire", "erase", "get_key", "grant_consent", "grant_claim_key", "revoke_consent", "show", "verify",
        "trace", "trace_fills", "audit_trail", "audit_log", "patient_prescriptions", "list_prescriptions",
    },
    "settlement": {"settle", "reverse", "get_claim", "patient_status", "trail", "open_account",
                   "get_account", "request_transfer", "accept_transfer", "cancel_transfer"},
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_contract_passes_static_checks(name: str) -> None:
    source = (ROOT / "contracts" / f"{name}.py").read_text(encoding="utf-8")
    checked = check_source(source)
    assert set(checked.functions) == PUBLIC[name]
    for sig in checked.functions.values():
        assert all(p.types for p in sig.params), f"{sig.name}: untyped parameter"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_function_is_documented(name: str) -> None:
    readme = (ROOT / "contracts" / "README.md").read_text(encoding="utf-8")
    for fn in PUBLIC[name]:
        assert f"`{name}.{fn}(" in readme, f"{name}.{fn} missing from contracts/README.md"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_contract_package_fits_the_smallest_value_limit(name: str) -> None:
    """The lifecycle's install stores the package record (canonical JSON of name, version and
    source) as one state value: over the consortium's ``max_value_bytes`` the install is
    refused SIZE_LIMIT. The sample consortium and the test networks that deploy the real
    contracts (tests/harness/consortium.py) allow 256 KiB: the prescription contract's record
    is past 64 KiB since note keys."""
    from client.bootstrap import VERSION
    from node.crypto.canonical import canonical_json
    from tests.harness.consortium import LIMITS

    source = (ROOT / "contracts" / f"{name}.py").read_text(encoding="utf-8")
    record = canonical_json({"name": name, "version": VERSION, "source": source})
    assert len(record) <= LIMITS["max_value_bytes"], (name, len(record))
    sample = yaml.safe_load((ROOT / "network-config" / "consortium.yaml").read_text(encoding="utf-8"))
    assert len(record) <= sample["limits"]["max_value_bytes"], (name, len(record))
