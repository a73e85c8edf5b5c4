"""A session: one wallet identity, the network description and a gateway to its own peer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from client.errors import RxClientError, WalletError
from client.formulary import Formulary
from client.gateway import Gateway, RetryPolicy
from client.network import NetworkInfo, load_network
from client.patients import PatientDirectory
from client.records import dx_key, patient_binding, trace_key
from client.tx import Clock, wall_clock_ms
from client.wallet import WalletIdentity, load_identity, parse_as, wallet_dir

LAST_BLOCK_FILE = "run/last-block"


def read_last_block(home: Path) -> int:
    """The last block any client of this home saw committed (-1 if none)."""
    try:
        return int((Path(home) / LAST_BLOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return -1


def record_last_block(home: Path, block: int) -> None:
    """Remember a committed block so the next client waits for its own peer to reach it."""
    path = Path(home) / LAST_BLOCK_FILE
    if block <= read_last_block(home):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"last-block.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(f"{block}\n")
    os.replace(tmp, path)


class Session:
    """Everything one CLI invocation (or SDK user) needs to act as ``org:user``."""

    def __init__(self, home: Path, as_: str, *, peer_org: str | None = None,
                 clock: Clock = wall_clock_ms, retry: RetryPolicy | None = None,
                 network: NetworkInfo | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.home = Path(home)
        org, user = parse_as(as_)
        self.net = network or load_network(self.home)
        self.identity: WalletIdentity = load_identity(self.home, org, user)
        endpoint = self.net.peer_of(peer_org or self._default_peer_org(org))
        self.clock = clock
        self.gateway = Gateway(self.identity, endpoint.target, self.net.consortium_id,
                               clock=clock, retry=retry, sleep=sleep,
                               min_block=lambda: read_last_block(self.home),
                               on_commit=lambda b: record_last_block(self.home, b))
        if self.identity.role == "patient":
            self.gateway.default_transient["patient_binding"] = patient_binding(
                self.net.secret, self.identity.org, self.identity.cert_name)
        self._directory: PatientDirectory | None = None
        self._formulary: Formulary | None = None

    def _default_peer_org(self, org: str) -> str:
        if any(p.org == org for p in self.net.peers):
            return org
        # Organisations without a peer (e.g. a second insurer) use the first insurer's peer.
        for ins in self.net.insurers():
            if any(p.org == ins for p in self.net.peers):
                return ins
        raise RxClientError("NO_PEER", f"organisation {org} runs no peer; pass --peer ORG")

    def close(self) -> None:
        """Close the gateway connection."""
        self.gateway.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def directory(self) -> PatientDirectory:
        """The local patient directory."""
        if self._directory is None:
            self._directory = PatientDirectory.load(self.home)
        return self._directory

    @property
    def formulary(self) -> Formulary:
        """The local drug catalogue (names -> national codes)."""
        if self._formulary is None:
            self._formulary = Formulary.load(self.home)
        return self._formulary

    @property
    def trace_key(self) -> str:
        """Key of the on-ledger trace-code hashes (transient input)."""
        return trace_key(self.net.secret)

    @property
    def dx_key(self) -> str:
        """Diagnosis-tag key (transient input)."""
        return dx_key(self.net.secret)

    def user_public_key(self, org: str, user: str) -> ec.EllipticCurvePublicKey:
        """The public key of a member's certificate (patients receive their key this way)."""
        path = wallet_dir(self.home, org, user) / "cert.pem"
        try:
            pub = x509.load_pem_x509_certificate(path.read_bytes()).public_key()
        except (OSError, ValueError) as exc:
            raise WalletError("NO_WALLET", f"no certificate for {org}:{user} at {path}") from exc
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise WalletError("BAD_WALLET", f"{path}: not an EC key")
        return pub

    def decryption_keys(self) -> list[ec.EllipticCurvePrivateKey]:
        """Keys the caller may unwrap record keys with: its own, then its org's records key."""
        keys = [self.identity.private_key]
        if self.identity.records_key is not None:
            keys.append(self.identity.records_key)
        return keys
