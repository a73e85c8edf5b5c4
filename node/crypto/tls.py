"""Mutual-TLS credentials for every gRPC connection in rxchain.

Servers require a client certificate chaining to one of the consortium's CAs (the CA
bundle, and the CAs of the configuration in force: :func:`server_credentials`); clients
present their own certificate and check the server's against the same bundle.
:func:`peer_identity` reads the caller's certificate inside a servicer.

Server authentication. By default a client accepts any certificate that chains to *any*
consortium CA and names ``localhost`` (:data:`TLS_SERVER_NAME`) -- i.e. every node of every
organisation. A client that knows which node it means (a member talking to its own
organisation's peer, carrying plaintext transient inputs) passes ``server_name`` (the node's
name, a SAN of every node certificate) and ``root_certificates`` (that organisation's CA
only), so no other organisation's node key can stand in for it. Nodes dial each other
through :class:`NodeChannels`, which pins every target that is a node of the configuration.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from rxchain.v1 import config_pb2, identity_pb2

from node.crypto.x509 import cert_info_der, pem_to_der

_log = logging.getLogger(__name__)

# Name every certificate carries in its SANs so one override works for all node certs.
TLS_SERVER_NAME = "localhost"


def _subject_alt_names(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The subject alternative names of ``cert`` as ``DNS:name`` / ``IP:address`` (DNS names
    first, then IP addresses, each in the certificate's order; empty without the extension)."""
    sans = _subject_alt_names(cert)
    if sans is None:
        return []
    return ([f"DNS:{n}" for n in sans.get_values_for_type(x509.DNSName)]
            + [f"IP:{a}" for a in sans.get_values_for_type(x509.IPAddress)])


def certificate_names_host(cert: x509.Certificate, name: str) -> bool:
    """Whether a TLS client checking ``cert`` for ``name`` (what gRPC's
    ``ssl_target_name_override`` makes it check) finds it among the subject alternative names:
    an IP literal against the IP SANs, a DNS name against the DNS SANs, case-insensitively, a
    ``*`` standing for exactly the whole left-most label above at least two more (as gRPC:
    ``*.h01.example`` names ``peer.h01.example``, ``*.h01`` names nothing). The subject's
    common name is not consulted (gRPC falls back to it only for a certificate without any SAN,
    which RFC 6125 deprecates)."""
    sans = _subject_alt_names(cert)
    if sans is None:
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if address is not None:
        return address in sans.get_values_for_type(x509.IPAddress)
    wanted = name.lower().rstrip(".")
    for dns in sans.get_values_for_type(x509.DNSName):
        pattern = dns.lower().rstrip(".")
        if pattern == wanted:
            return True
        head, _, rest = pattern.partition(".")
        label, _, parent = wanted.partition(".")
        if head == "*" and "." in rest and label and parent == rest:
            return True
    return False


def server_credentials(
    cert_path: str | Path, key_path: str | Path, ca_bundle_path: str | Path,
    config: Callable[[], config_pb2.ConsortiumConfig] | None = None,
) -> grpc.ServerCredentials:
    """Server credentials that require and verify a client certificate: one issued by a CA of
    the node's bundle or, given ``config`` (the configuration in force), by the CA of one of
    its organisations, read again before every new connection's handshake. An organisation a
    config update adds (a 13th hospital), or a CA an update rotates, so reaches every running
    node at that block: with the bundle read once at start, none of its members, peers or
    orderers could connect to any node until every node had been given a new bundle and
    restarted. (Which members may do what is the MSP's business, checked per request: a
    removed organisation's CA left in the bundle passes the handshake and nothing more.)"""
    key_cert = [(Path(key_path).read_bytes(), Path(cert_path).read_bytes())]
    bundle = Path(ca_bundle_path).read_bytes()
    if config is None:
        return grpc.ssl_server_credentials(key_cert, root_certificates=bundle, require_client_auth=True)
    in_bundle = {der for _, der in _labelled_cas(bundle)}
    lock = threading.Lock()
    served: list[frozenset[bytes]] = [frozenset()]  # the config CAs the roots in use add

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # called by gRPC before each handshake: an exception here would fail the handshake
        try:
            cas = frozenset(o.ca_cert_der for o in config().organizations if o.ca_cert_der) - in_bundle
            with lock:
                if cas == served[0]:
                    return None
                served[0] = cas
            extra = b"".join(_pem(der) for der in sorted(cas))
            return grpc.ssl_server_certificate_configuration(key_cert, root_certificates=_joined(bundle, extra))
        except Exception:  # noqa: BLE001 - keep the roots in use (a config being written, a CA not parsing)
            _log.exception("event=server_roots_unchanged: the configuration's CAs could not be read")
            return None

    initial = fetch() or grpc.ssl_server_certificate_configuration(key_cert, root_certificates=bundle)
    # None means "no change" (grpc's documentation); its type stubs leave None out
    fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
    return grpc.dynamic_ssl_server_credentials(initial, fetcher, require_client_authentication=True)


def _joined(bundle: bytes, extra: bytes) -> bytes:
    if not extra:
        return bundle
    return bundle + (b"" if bundle.endswith(b"\n") else b"\n") + extra


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


# What a node may send in one gRPC message: the largest ``limits.max_message_bytes`` a config
# may set (node.orderer.configrules). A node's own bound in force limits what it receives, not
# what it sends: blocks and Raft entries made under an earlier, larger bound are still served
# after a config update lowered it (an orderer or peer restarted since then could not send a
# catching-up node those blocks), and a node never sends more than a receiver may accept
# under the config the message was made under.
NODE_SEND_BOUND = 1 << 30


def server_bound_notice(node: str, server_bound: int) -> Callable[[int], None]:
    """A callable to tell the message bound in force (after each block, or config adopted):
    it logs each change against ``server_bound``, the bound the node's gRPC server was made
    with, which a changed ``max_message_bytes`` reaches only at the node's restart."""
    told = [server_bound]

    def notice(bound: int) -> None:
        if bound == told[0]:
            return
        told[0] = bound
        if bound == server_bound:
            _log.info("event=message_bound_changed node=%s message_bound=%d server_bound=%d: the "
                      "server's bound is the one in force again", node, bound, server_bound)
            return
        _log.warning("event=message_bound_changed node=%s message_bound=%d server_bound=%d: this "
                     "node's server receives up to %d bytes per message until the node restarts",
                     node, bound, server_bound, server_bound)

    return notice


def channel_options(
    max_message_bytes: int, server_name: str = TLS_SERVER_NAME, *, max_send_bytes: int = 0
) -> list[tuple[str, int | str]]:
    """Channel options: message size limits (``max_send_bytes``, if given, for what this end
    sends; else ``max_message_bytes`` both ways), keepalive and the TLS name the server's
    certificate must carry (``server_name``)."""
    if not server_name:
        raise ValueError("a TLS server name is required")
    return [
        ("grpc.max_send_message_length", max_send_bytes or max_message_bytes),
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


class NodeChannels:
    """Channels from one node to the other nodes of the consortium, each pinned to the node
    its target belongs to in the configuration in force: the server must present a
    certificate of that node's organisation CA naming that node (``server_name``), not just
    any consortium certificate. Endorsement requests carry plaintext transient inputs
    (prescription content, claim lines), so another organisation's node key at the right
    address must not be able to answer them.

    ``options`` are the channel options without a server name (it is per target), or a
    callable giving them as each channel is made;
    ``config`` returns the consortium configuration in force (orderers, peers,
    organisations' CA certificates). Besides the organisation's CA in that configuration,
    the pin trusts the CAs of the node's own CA bundle whose subject names that organisation
    (and that the configuration does not give to another one): a node still catching up from
    an older configuration reaches an organisation that has since rotated its CA once its
    operator has added the new CA to the bundle. ``names`` (the node.yaml endpoints,
    ``host:port`` -> node name) pin a target the configuration lists under another address
    (a DNS name in node.yaml, an IP in the configuration, or the reverse) to that node by its
    name, so an address spelt differently does not silently lose the pin. A target that is
    no node of that configuration by address or by name (a node.yaml endpoint not yet in the
    genesis or a config update) gets the unpinned behaviour, logged once: any consortium CA
    and :data:`TLS_SERVER_NAME`. ``former`` (orderers) names nodes that configuration no longer
    does but that are still dialled, pinned the same way (their organisation's CA in it): an
    orderer taken out of the orderer set, until Raft has removed it.
    """

    def __init__(self, cert_path: str | Path, key_path: str | Path, ca_bundle_path: str | Path,
                 options: list[tuple[str, int | str]] | Callable[[], list[tuple[str, int | str]]],
                 config: Callable[[], config_pb2.ConsortiumConfig],
                 names: Mapping[str, str] | None = None,
                 former: Callable[[], Iterable[config_pb2.OrdererNode]] | None = None) -> None:
        self._former = former
        self._names = dict(names or {})
        self._cert = Path(cert_path).read_bytes()
        self._key = Path(key_path).read_bytes()
        self._bundle = Path(ca_bundle_path).read_bytes()
        self._bundle_cas = _labelled_cas(self._bundle)
        self._unpinned: set[str] = set()
        self._options = options
        self._config = config
        self._creds: dict[bytes, grpc.ChannelCredentials] = {}  # by root PEM (one per org)
        self._lock = threading.Lock()

    def pin(self, target: str) -> tuple[str, bytes] | None:
        """(node name, its organisation's CAs as PEM) of the node at ``target`` (host:port)
        -- by its address in the configuration in force, else by the name ``names`` gives
        the target -- or None if neither finds a node of that configuration."""
        host, _, port = target.rpartition(":")
        cfg = self._config()
        nodes = [(n.host, n.port, n.name, n.org) for n in cfg.orderers]
        nodes += [(n.host, n.port, n.name, n.org) for n in cfg.peers]
        if self._former is not None:  # after the configuration's own: those win an address
            nodes += [(n.host, n.port, n.name, n.org) for n in self._former()]
        named = self._names.get(target)
        by_name = None
        for n_host, n_port, name, org_id in nodes:
            if n_host == host and str(n_port) == port:
                return self._roots(cfg, name, org_id)
            if name == named and by_name is None:
                by_name = (name, org_id)
        return None if by_name is None else self._roots(cfg, *by_name)

    def _roots(self, cfg: config_pb2.ConsortiumConfig, name: str, org_id: str) -> tuple[str, bytes] | None:
        own = [o.ca_cert_der for o in cfg.organizations if o.id == org_id and o.ca_cert_der]
        if not own:
            return None
        others = {o.ca_cert_der for o in cfg.organizations if o.id != org_id}
        roots = own + [der for label, der in self._bundle_cas
                       if label == org_id and der not in others and der not in own]
        return name, b"".join(_pem(der) for der in roots)

    def __call__(self, target: str) -> grpc.Channel:
        pin = self.pin(target)
        if pin is None and target not in self._unpinned:
            self._unpinned.add(target)
            _log.warning("event=unpinned_channel target=%s: no node of the configuration in force "
                         "listens there; any consortium CA is trusted", target)
        name, roots = pin if pin is not None else (TLS_SERVER_NAME, self._bundle)
        with self._lock:
            creds = self._creds.get(roots)
            if creds is None:
                creds = self._creds[roots] = grpc.ssl_channel_credentials(
                    root_certificates=roots, private_key=self._key, certificate_chain=self._cert)
        options = self._options() if callable(self._options) else self._options
        options = [o for o in options if o[0] != "grpc.ssl_target_name_override"]
        return grpc.secure_channel(target, creds,
                                   options=[*options, ("grpc.ssl_target_name_override", name)])


def _pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _labelled_cas(bundle: bytes) -> list[tuple[str, bytes]]:
    """(organisation named in the subject, DER) of every CA certificate in a PEM bundle."""
    out: list[tuple[str, bytes]] = []
    for cert in x509.load_pem_x509_certificates(bundle):
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if len(orgs) == 1 and isinstance(orgs[0].value, str):
            out.append((orgs[0].value, cert.public_bytes(serialization.Encoding.DER)))
    return out
