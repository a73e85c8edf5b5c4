"""The FHIR R5 HTTP gateway: how a hospital HIS or a pharmacy ERP talks to rxchain.

HTTPS with mandatory client certificates (``ssl``, CA bundle of the consortium). The caller's
certificate *is* its identity: the gateway finds the wallet in HOME whose ``cert.pem`` is
byte-identical to the presented certificate and signs transactions with that wallet's key.
A certificate without a wallet here is refused (403). Endpoints (JSON, ``application/fhir+json``):

* ``GET  /fhir/metadata``                      CapabilityStatement
* ``POST /fhir/MedicationRequest``             issue (a MedicationRequest or a Bundle of them)
* ``GET  /fhir/MedicationRequest/{rx_id}``     the prescription (decrypted if granted)
* ``POST /fhir/MedicationDispense``            dispense (authorizingPrescription -> rx id,
  trace codes as ``extension`` ``urn:rxchain:rxTraceCode``) -> Bundle of MedicationDispense
* ``POST /fhir/Claim``                         settle (``prescription`` -> rx id) ->
  Bundle(Claim, ClaimResponse)

Errors are OperationOutcome resources whose ``details.coding[0].code`` is the reason code.

The TLS handshake runs in the connection's worker thread with a timeout, never in the accept
loop, so an idle or slow client cannot stall the gateway; reads have a timeout too. A POST
body needs one ``Content-Length`` of decimal digits (at most ``MAX_BODY``).
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from client.errors import RxClientError
from client.fhir import mapping
from client.network import load_network
from client.rxops import RxOperations
from client.session import Session
from node.crypto.x509 import cert_info
from node.errors import RxError

MAX_BODY = 1 << 20
HANDSHAKE_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
_DIGITS = re.compile(r"[0-9]{1,10}")
FHIR_JSON = "application/fhir+json"

_STATUS = {
    "FHIR_INVALID": 400, "BAD_ARGUMENTS": 400, "BAD_DIAGNOSIS": 400, "BAD_REQUEST": 400,
    "UNKNOWN_DRUG": 422, "NO_KEY_GRANT": 403, "ACCESS_DENIED": 403, "WRONG_ROLE": 403,
    "UNAUTHENTICATED": 401, "NO_WALLET": 403, "NOT_FOUND": 404, "SERVICE_UNAVAILABLE": 503,
    "TOO_LARGE": 413, "BAD_CONTENT_LENGTH": 400,
}


def _http_status(reason: str) -> int:
    if reason in _STATUS:
        return _STATUS[reason]
    if reason.startswith("UNAUTHORIZED"):
        return 403
    return 422  # a business rule refused the request


class Identities:
    """Maps presented client certificates to wallet sessions (cached, thread-safe)."""

    def __init__(self, home: Path):
        self.home = Path(home)
        self.net = load_network(self.home)
        self._lock = threading.Lock()
        self._sessions: dict[bytes, RxOperations] = {}

    def ops_for(self, cert_der: bytes) -> RxOperations:
        """The operations object acting as the wallet whose certificate is ``cert_der``."""
        with self._lock:
            if cert_der in self._sessions:
                return self._sessions[cert_der]
            try:
                info = cert_info(x509.load_der_x509_certificate(cert_der))
            except ValueError as exc:
                raise RxClientError("UNAUTHENTICATED", "not a member certificate") from exc
            user = self._wallet_of(info.org, cert_der)
            if user is None:
                raise RxClientError("NO_WALLET", f"no wallet here holds the presented {info.org} certificate")
            ops = RxOperations(Session(self.home, f"{info.org}:{user}", network=self.net))
            self._sessions[cert_der] = ops
            return ops

    def _wallet_of(self, org: str, cert_der: bytes) -> str | None:
        """The wallet (user directory) of ``org`` whose certificate is exactly ``cert_der``.

        Searched by content, not by the certificate's name: patients' certificates carry a
        pseudonymous common name that differs from their wallet handle.
        """
        users = self.home / "orgs" / org / "users"
        for cert_path in sorted(users.glob("*/cert.pem")):
            try:
                der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
                    serialization.Encoding.DER)
            except (OSError, ValueError):
                continue
            if der == cert_der:
                return cert_path.parent.name
        return None

    def close(self) -> None:
        """Close every session."""
        with self._lock:
            for ops in self._sessions.values():
                ops.s.close()
            self._sessions.clear()


class FhirApp:
    """Request routing, independent of the HTTP plumbing (tests call it directly)."""

    def __init__(self, identities: Identities):
        self.ids = identities

    def handle(self, method: str, path: str, body: Any, cert_der: bytes) -> tuple[int, Any]:
        """(HTTP status, resource) for one request."""
        parts = [p for p in path.split("?", maxsplit=1)[0].split("/") if p]
        if not parts or parts[0] != "fhir":
            raise RxClientError("NOT_FOUND", f"no route {path}")
        parts = parts[1:]
        if method == "GET" and parts == ["metadata"]:
            return 200, capability_statement()
        ops = self.ids.ops_for(cert_der)
        if method == "POST" and parts == ["MedicationRequest"]:
            req = mapping.issue_request_from_fhir(body)
            res = ops.issue(req)
            meta = ops.show(res["rx_id"])
            return 201, mapping.medication_requests(meta)
        if method == "GET" and len(parts) == 2 and parts[0] == "MedicationRequest":
            return 200, mapping.medication_requests(ops.show(parts[1]))
        if method == "POST" and parts == ["MedicationDispense"]:
            model = mapping.validate_resource(body)
            if model.get_resource_type() != "MedicationDispense":
                raise mapping.FhirError("FHIR_INVALID", "expected a MedicationDispense")
            rx_id = _rx_ref(model.authorizingPrescription, "authorizingPrescription")
            codes = [str(e.valueString) for e in (model.extension or [])
                     if e.url == mapping.TRACE_SYSTEM and e.valueString]
            result = ops.dispense(rx_id, codes)
            meta = ops.show(rx_id)
            content = meta.get("content") or {}
            me = ops.s.identity
            return 201, mapping.medication_dispense(meta, content, result, codes, me.org, me.user)
        if method == "POST" and parts == ["Claim"]:
            model = mapping.validate_resource(body)
            if model.get_resource_type() != "Claim":
                raise mapping.FhirError("FHIR_INVALID", "expected a Claim")
            rx_id = _rx_ref([model.prescription] if model.prescription else [], "prescription")
            rec = ops.settle(rx_id)
            return 201, mapping.claim_and_response(rec, ops.s.identity.org)
        raise RxClientError("NOT_FOUND", f"no route {method} {path}")


def _rx_ref(refs: Any, what: str) -> str:
    for ref in refs or []:
        if ref.identifier is not None and ref.identifier.value:
            return str(ref.identifier.value)
        if ref.reference and "/" in ref.reference:
            return str(ref.reference.split("/", 1)[1])
    raise mapping.FhirError("FHIR_INVALID", f"{what} must name the prescription (hiRxno)")


def capability_statement() -> dict[str, Any]:
    """What this gateway supports."""
    def res(rtype: str, interactions: list[str]) -> dict[str, Any]:
        return {"type": rtype, "interaction": [{"code": i} for i in interactions]}
    return {
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "date": "2026-11-25", "fhirVersion": "5.0.0", "format": ["json"],
        "rest": [{"mode": "server", "resource": [
            res("MedicationRequest", ["create", "read"]),
            res("MedicationDispense", ["create"]),
            res("Claim", ["create"]),
        ]}],
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT_S  # applied to the connection by StreamRequestHandler.setup

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.address_string()} {format % args}")

    def _reply(self, status: int, resource: Any) -> None:
        if isinstance(resource, dict) and resource.get("resourceType") not in (
                None, "CapabilityStatement", "OperationOutcome"):
            data = mapping.dumps(resource)
        else:
            data = json.dumps(resource, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        try:
            cert = self.connection.getpeercert(binary_form=True)
            if not cert:
                raise RxClientError("UNAUTHENTICATED", "a client certificate is required")
            body: Any = None
            if method == "POST":
                length = self._content_length()
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise mapping.FhirError("FHIR_INVALID", "body is not JSON") from exc
            status, resource = self.server.app.handle(method, self.path, body, cert)
            self._reply(status, resource)
        except (RxClientError, RxError) as exc:
            if exc.reason in ("BAD_CONTENT_LENGTH", "TOO_LARGE"):
                self.close_connection = True  # the unread body must not be parsed as a request
            self._reply(_http_status(exc.reason), mapping.operation_outcome(exc.reason, exc.message))
        except Exception as exc:  # noqa: BLE001 - answer every request with an OperationOutcome
            self.server.log(f"internal error: {type(exc).__name__}: {exc}")
            self._reply(500, mapping.operation_outcome("INTERNAL", f"{type(exc).__name__}"))

    def _content_length(self) -> int:
        """The declared body length: one header of decimal digits, at most MAX_BODY."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return 0
        if len(values) > 1:
            raise RxClientError("BAD_CONTENT_LENGTH", "more than one Content-Length header")
        text = values[0].strip()
        if not _DIGITS.fullmatch(text):
            raise RxClientError("BAD_CONTENT_LENGTH", f"Content-Length must be a non-negative integer, "
                                f"got {text[:20]!r}")
        length = int(text)
        if length > MAX_BODY:
            raise RxClientError("TOO_LARGE", f"body exceeds {MAX_BODY} bytes")
        return length

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], app: FhirApp, log: Callable[[str], None],
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S):
        super().__init__(addr, _Handler)
        self.app = app
        self.log = log
        self.handshake_timeout_s = handshake_timeout_s

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's worker thread: the TLS handshake (bounded), then the request."""
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(self.handshake_timeout_s)
            try:
                request.do_handshake()
            except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
                self.log(f"{client_address[0]}:{client_address[1]} TLS handshake failed: "
                         f"{type(exc).__name__}: {exc}")
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


def tls_context(cert_path: Path, key_path: Path, ca_bundle: Path) -> ssl.SSLContext:
    """Server TLS context requiring a client certificate from a consortium CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.load_verify_locations(str(ca_bundle))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_server(home: Path, host: str = "127.0.0.1", port: int = 8443,
                server_node: str | None = None,
                log: Callable[[str], None] = lambda _: None,
                handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S) -> tuple[_Server, Identities]:
    """A bound (not yet serving) gateway; its TLS certificate is a peer node's certificate."""
    home = Path(home)
    ids = Identities(home)
    node = server_node or ids.net.peers[0].name
    ndir = home / "nodes" / node
    server = _Server((host, port), FhirApp(ids), log, handshake_timeout_s)
    ctx = tls_context(ndir / "cert.pem", ndir / "key.pem", home / "ca-bundle.pem")
    # No handshake in accept(): finish_request does it in the worker thread, with a timeout.
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server, ids


def serve_forever(home: Path, host: str, port: int,
                  progress: Callable[[str], None] = print) -> None:
    """Run the gateway until interrupted."""
    server, ids = make_server(home, host, port, log=progress)
    progress(f"FHIR gateway on https://{host}:{server.server_address[1]}/fhir (mutual TLS)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        ids.close()
