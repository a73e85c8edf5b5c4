"""Mutual-TLS credentials for every gRPC connection in rxchain.

Servers require a client certificate chaining to one of the consortium's CAs (the CA
bundle); clients present their own certificate and check the server's against the
same bundle. :func:`peer_identity` reads the caller's certificate inside a servicer.

Server authentication. By default a client accepts any certificate that chains to *any*
consortium CA and names ``localhost`` (:data:`TLS_SERVER_NAME`) -- i.e. every node of every
organisation. A client that knows which node it means (a member talking to its own
organisation's peer, carrying plaintext transient inputs) passes ``server_name`` (the node's
name, a SAN of every node certificate) and ``root_certificates`` (that organisation's CA
only), so no other organisation's node key can stand in for it.
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
    cert_path: str | Path, key_path: str | Path, ca_bundle_path: str | Path,
    root_certificates: bytes | None = None,
) -> grpc.ChannelCredentials:
    """Client credentials presenting our certificate and trusting the consortium CAs
    (or only ``root_certificates``, PEM, when given)."""
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates or Path(ca_bundle_path).read_bytes(),
        private_key=Path(key_path).read_bytes(),
        certificate_chain=Path(cert_path).read_bytes(),
    )


def channel_options(
    max_message_bytes: int, server_name: str = TLS_SERVER_NAME
) -> list[tuple[str, int | str]]:
    """Channel options: message size limits, keepalive and the TLS name the server's
    certificate must carry (``server_name``)."""
    if not server_name:
        raise ValueError("a TLS server name is required")
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.ssl_target_name_override", server_name),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
    ]


def secure_channel(
    target: str,
    cert_path: str | Path,
    key_path: str | Path,
    ca_bundle_path: str | Path,
    max_message_bytes: int = 16 * 1024 * 1024,
    *,
    server_name: str = TLS_SERVER_NAME,
    root_certificates: bytes | None = None,
) -> grpc.Channel:
    """An mTLS channel to ``target`` (``host:port``); see the module docstring for
    ``server_name`` and ``root_certificates`` (pinning the server to one node)."""
    return grpc.secure_channel(
        target,
        channel_credentials(cert_path, key_path, ca_bundle_path, root_certificates),
        options=channel_options(max_message_bytes, server_name),
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
