"""Contract packages and their code hash.

Canonical encoding (version 1) hashed with SHA-256, hex digest = ``code_hash``::

    b"rxchain.contract-package.v1\\x00"
    u32be(len(name))    name    (UTF-8)
    u32be(len(version)) version (UTF-8)
    u32be(len(source))  source  (UTF-8, exactly as deployed; no newline normalisation)

Lengths are byte lengths.  ``name`` matches ``[a-z][a-z0-9_.-]{0,63}``; ``version`` is 1-64
printable ASCII characters without spaces; ``source`` is at most ``MAX_SOURCE_BYTES``.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from node.sandbox.checker import MAX_SOURCE_BYTES, check_source

PACKAGE_MAGIC = b"rxchain.contract-package.v1\x00"
_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^[!-~]{1,64}$")


class PackageError(ValueError):
    """Malformed package (reason code BAD_PACKAGE)."""

    reason = "BAD_PACKAGE"


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True)
class ContractPackage:
    """A deployable contract: name, version and source; ``code_hash`` identifies it."""

    name: str
    version: str
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise PackageError(f"bad contract name {self.name!r}")
        if not isinstance(self.version, str) or not _VERSION.match(self.version):
            raise PackageError(f"bad contract version {self.version!r}")
        if not isinstance(self.source, str):
            raise PackageError("source must be text")
        try:
            size = len(self.source.encode("utf-8"))
        except UnicodeEncodeError:
            raise PackageError("source is not valid UTF-8 text") from None
        if size > MAX_SOURCE_BYTES:
            raise PackageError(f"source larger than {MAX_SOURCE_BYTES} bytes")

    def canonical_bytes(self) -> bytes:
        return (
            PACKAGE_MAGIC
            + _field(self.name.encode("utf-8"))
            + _field(self.version.encode("utf-8"))
            + _field(self.source.encode("utf-8"))
        )

    @property
    def code_hash(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def check(self) -> None:
        """Static checks of the source (raises ContractRejected naming the line)."""
        check_source(self.source)


def code_hash(name: str, version: str, source: str) -> str:
    """``ContractPackage(name, version, source).code_hash``."""
    return ContractPackage(name, version, source).code_hash
