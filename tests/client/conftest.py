"""Fixtures: a small generated consortium (material only, no processes)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from netgen import GeneratedNetwork, generate

FIXED_NOW = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)


def client_consortium(base_port: int = 23050) -> dict[str, Any]:
    """Two hospitals, two pharmacies, an insurer with orderer and peer, a regulator."""
    return {
        "consortium_id": "client-test",
        "base_port": base_port,
        "batch": {"max_tx_count": 50, "max_bytes": 1 << 20, "timeout_ms": 20},
        "limits": {
            "max_message_bytes": 4 << 20, "max_envelope_bytes": 1 << 20, "gas_limit": 5000000,
            "max_write_set_keys": 1000, "max_value_bytes": 262144, "max_clock_skew_ms": 600000,
        },
        "policies": {"config_update": "MAJORITY(admin)", "lifecycle": "MAJORITY(admin)"},
        "organizations": [
            {"id": "h01", "name": "Tertiary", "kind": "hospital", "level": "tertiary", "peer": True,
             "users": [{"name": "dr-jiang", "role": "doctor",
                        "attrs": {"dr_code": "D500103000001", "practice_years": "10"}},
                       {"name": "nurse-liu", "role": "nurse"},
                       {"name": "pharm-he", "role": "pharmacist"},
                       {"name": "patient-zhang", "role": "patient"}]},
            {"id": "h02", "name": "Community", "kind": "hospital", "level": "community",
             "peer": True, "users": [{"name": "patient-sun", "role": "patient"}]},
            {"id": "p01", "name": "Pharmacy 1", "kind": "pharmacy", "peer": True,
             "users": [{"name": "pharm-wang", "role": "pharmacist"},
                       {"name": "courier-liu", "role": "courier"}]},
            {"id": "p02", "name": "Pharmacy 2", "kind": "pharmacy", "peer": True,
             "users": [{"name": "pharm-chen", "role": "pharmacist"}]},
            {"id": "ins01", "name": "Fund", "kind": "insurer", "peer": True, "orderer": True,
             "users": [{"name": "clerk-zhao", "role": "clerk"}]},
            {"id": "reg01", "name": "Regulator", "kind": "regulator", "peer": True,
             "users": [{"name": "auditor-1", "role": "auditor"}]},
        ],
    }


@pytest.fixture(scope="session")
def net_home(tmp_path_factory: pytest.TempPathFactory) -> GeneratedNetwork:
    """Generated material (shared, read-only by convention)."""
    home: Path = tmp_path_factory.mktemp("client-net")
    return generate(client_consortium(), home, clock=lambda: FIXED_NOW)
