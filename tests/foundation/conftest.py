"""Fixtures: a small throwaway consortium generated into a temporary directory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from netgen import GeneratedNetwork, generate

FIXED_NOW = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)


def small_consortium(base_port: int = 21050) -> dict[str, Any]:
    """Two hospitals, a pharmacy, an insurer with an orderer and a regulator."""
    return {
        "consortium_id": "test-rx",
        "base_port": base_port,
        "batch": {"max_tx_count": 10, "max_bytes": 1 << 20, "timeout_ms": 20},
        "limits": {
            "max_message_bytes": 4 << 20, "max_envelope_bytes": 1 << 20, "gas_limit": 100000,
            "max_write_set_keys": 100, "max_value_bytes": 65536, "max_clock_skew_ms": 60000,
        },
        "policies": {"config_update": "MAJORITY(admin)", "lifecycle": "MAJORITY(admin)"},
        "organizations": [
            {"id": "h01", "name": "Tertiary", "kind": "hospital", "level": "tertiary", "peer": True,
             "users": [{"name": "dr-jiang", "role": "doctor", "attrs": {"practice_years": "10"}},
                       {"name": "nurse-liu", "role": "nurse"}]},
            {"id": "h02", "name": "Community", "kind": "hospital", "level": "community", "peer": True},
            {"id": "p01", "name": "Pharmacy", "kind": "pharmacy", "peer": True,
             "users": [{"name": "pharm-wang", "role": "pharmacist"}]},
            {"id": "ins01", "name": "Fund", "kind": "insurer", "peer": True, "orderer": True,
             "users": [{"name": "clerk-zhao", "role": "clerk"}]},
            {"id": "reg01", "name": "Regulator", "kind": "regulator",
             "users": [{"name": "auditor-1", "role": "auditor"}]},
        ],
    }


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> GeneratedNetwork:
    home: Path = tmp_path_factory.mktemp("net")
    return generate(small_consortium(), home, clock=lambda: FIXED_NOW)
