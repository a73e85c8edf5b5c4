"""Contract packages: canonical encoding and code hash."""

from __future__ import annotations

import hashlib
import struct

import pytest

from node.sandbox.errors import ContractRejected
from node.sandbox.package import ContractPackage, PackageError, code_hash

SRC = "from rxchain_contract import Context\n\ndef f(ctx: Context) -> int:\n    return 1\n"


def test_code_hash_is_sha256_of_the_documented_layout() -> None:
    expected = hashlib.sha256(
        b"rxchain.contract-package.v1\x00"
        + struct.pack(">I", 12) + b"prescription"
        + struct.pack(">I", 5) + b"1.0.0"
        + struct.pack(">I", len(SRC.encode())) + SRC.encode()
    ).hexdigest()
    pkg = ContractPackage("prescription", "1.0.0", SRC)
    assert pkg.code_hash == expected == code_hash("prescription", "1.0.0", SRC)


def test_every_field_changes_the_hash() -> None:
    base = ContractPackage("rx", "1", SRC).code_hash
    others = {
        ContractPackage("rx2", "1", SRC).code_hash,
        ContractPackage("rx", "2", SRC).code_hash,
        ContractPackage("rx", "1", SRC + "\n").code_hash,
        ContractPackage("rx", "1", SRC.replace("\n", "\r\n")).code_hash,
    }
    assert base not in others and len(others) == 4
    # field boundaries cannot be shifted
    assert ContractPackage("ab", "1c", SRC).code_hash != ContractPackage("a", "b1c", SRC).code_hash


@pytest.mark.parametrize(
    ("name", "version", "source"),
    [("", "1", SRC), ("Bad", "1", SRC), ("x" * 65, "1", SRC), ("rx", "", SRC),
     ("rx", "1 0", SRC), ("rx", "1", "x" * (512 * 1024 + 1)), ("rx", "1", "\udc80")],
)
def test_bad_packages(name: str, version: str, source: str) -> None:
    with pytest.raises(PackageError) as info:
        ContractPackage(name, version, source)
    assert info.value.reason == "BAD_PACKAGE"


def test_check_runs_the_static_checker() -> None:
    ContractPackage("rx", "1", SRC).check()
    with pytest.raises(ContractRejected):
        ContractPackage("rx", "1", "import os\n").check()
