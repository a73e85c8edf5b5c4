"""Small gRPC helpers for tests: mTLS channels with a chosen identity, Admin probes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from rxchain.v1 import services_pb2, services_pb2_grpc

from node.crypto.tls import secure_channel


@dataclass(frozen=True)
class Creds:
    """Certificate, key and CA bundle a test client presents."""

    cert: Path
    key: Path
    ca_bundle: Path

    @classmethod
    def of_dir(cls, directory: Path, ca_bundle: Path | None = None) -> Creds:
        """``cert.pem``/``key.pem`` of a node or wallet directory (bundle beside it or given)."""
        return cls(directory / "cert.pem", directory / "key.pem", ca_bundle or directory / "ca-bundle.pem")


def channel(target: str, creds: Creds, max_message_bytes: int = 16 * 1024 * 1024) -> grpc.Channel:
    """An mTLS channel to ``target``."""
    return secure_channel(target, creds.cert, creds.key, creds.ca_bundle, max_message_bytes)


def admin_status(target: str, creds: Creds, timeout_s: float = 2.0) -> services_pb2.StatusResponse:
    """Admin.Status of a node (raises grpc.RpcError when unreachable)."""
    with channel(target, creds) as ch:
        return services_pb2_grpc.AdminStub(ch).Status(services_pb2.StatusRequest(), timeout=timeout_s)


def admin_healthy(target: str, creds: Creds, timeout_s: float = 1.0) -> bool:
    """True if Admin.Health answers ``serving``; False on any error."""
    try:
        with channel(target, creds) as ch:
            resp = services_pb2_grpc.AdminStub(ch).Health(services_pb2.HealthRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return False
    return bool(resp.serving)
