"""Mutual-TLS credentials for every gRPC connection in rxchain.

Servers require a client certificate chaining to one of the consortium's CAs (the CA
bundle); clients present their own certificate and check the server's against the
same bundle. :func:`peer_identity` reads the caller's certificate inside a servicer.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from rxchain.v1 import identity_pb2

from node.crypto.x509 import cert_info_der, pem_to_der

# Name every certificate carries in its SANs so one override works for all node certs.
TLS_SERVER_NAME = "localhost"


def server_credentials(
    cert_path: str | Path, key_path: str | Path, ca_bundle_path: str | Path
) -> grpc.ServerCredentials:
    """Server credentials that require and verify a client certificate."""
    return grpc.ssl_server_credentials(
        [(Path(key_path).read_bytes(), Path(cert_path).read_bytes())],
        root_certificates=Path(ca_bundle_path).read_bytes(),
        require_client_auth=True,
    )


def channel_credentials(
    cert_path: str | Path, key_path: str | Path, ca_bundle_path: str | Path
) -> grpc.ChannelCredentials:
    """Client credentials presenting our certificate and trusting the consortium CAs."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_bundle_path).read_bytes(),
        private_key=Path(key_path).read_bytes(),
        certificate_chain=Path(cert_path).read_bytes(),
    )


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    """Channel options: message size limits, keepalive and the TLS name override."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.ssl_target_name_override", TLS_SERVER_NAME),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]


def secure_channel(
    target: str,
    cert_path: str | Path,
    key_path: str | Path,
    ca_bundle_path: str | Path,
    max_message_bytes: int = 16 * 1024 * 1024,
) -> grpc.Channel:
    """An mTLS channel to ``target`` (``host:port``)."""
    return grpc.secure_channel(
        target,
        channel_credentials(cert_path, key_path, ca_bundle_path),
        options=channel_options(max_message_bytes),
    )


def peer_identity(context: grpc.ServicerContext) -> identity_pb2.Identity | None:
    """The caller's TLS client certificate as an Identity (org from the cert subject)."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert")
    if not pems or not isinstance(pems, list) or not isinstance(pems[0], bytes):
        return None
    der = pem_to_der(pems[0])
    try:
        org = cert_info_der(der).org
    except ValueError:
        return None
    return identity_pb2.Identity(org=org, cert_der=der)
