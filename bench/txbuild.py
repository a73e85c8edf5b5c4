"""Build really signed transactions and blocks (validator tests and the commit benchmark).

Everything here signs with real keys from a netgen-generated consortium; nothing is faked.
The nonce source is injected (a seeded ``random.Random``) so runs are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rxchain.v1 import block_pb2, config_pb2, identity_pb2, transaction_pb2

from node.crypto.canonical import (
    block_data_hash,
    block_header_hash,
    compute_tx_id,
    proposal_hash,
)
from node.crypto.signing import Purpose, Signer, load_signer

SMALL_CONSORTIUM = {
    "consortium_id": "test-rx",
    "base_port": 17050,
    "batch": {"max_tx_count": 500, "max_bytes": 4194304, "timeout_ms": 50},
    "limits": {
        "max_message_bytes": 8388608,
        "max_envelope_bytes": 1048576,
        "gas_limit": 5000000,
        "max_write_set_keys": 1000,
        "max_value_bytes": 262144,
        "max_clock_skew_ms": 600000,
    },
    "policies": {"config_update": "MAJORITY(admin)", "lifecycle": "MAJORITY(admin)"},
    "organizations": [
        {"id": "h01", "name": "Hospital 1", "kind": "hospital", "level": "tertiary",
         "peer": True, "users": [{"name": "dr-a", "role": "doctor"}]},
        {"id": "p01", "name": "Pharmacy 1", "kind": "pharmacy", "peer": True,
         "users": [{"name": "ph-a", "role": "pharmacist"}]},
        {"id": "ins01", "name": "Insurer 1", "kind": "insurer", "peer": True, "orderer": True,
         "users": [{"name": "clerk-a", "role": "clerk"}]},
        {"id": "ins02", "name": "Insurer 2", "kind": "insurer", "orderer": True},
    ],
}


def user_signer(home: Path, org: str, user: str) -> Signer:
    """A user's signer from a generated home."""
    d = home / "orgs" / org / "users" / user
    return load_signer(d / "cert.pem", d / "key.pem", org)


def node_signer(home: Path, name: str, org: str) -> Signer:
    """A node's signer (peer or orderer) from a generated home."""
    d = home / "nodes" / name
    return load_signer(d / "cert.pem", d / "key.pem", org)


@dataclass
class RwSpec:
    """A read/write set for one namespace, as plain Python values."""

    ns: str
    reads: Sequence[tuple[str, tuple[int, int] | None]] = ()
    writes: Sequence[tuple[str, bytes | None]] = ()  # None = delete
    ranges: Sequence[tuple[str, str, bool, Sequence[tuple[str, tuple[int, int]]]]] = ()

    def to_proto(self) -> transaction_pb2.NsRwSet:
        """The NsRwSet."""
        ns = transaction_pb2.NsRwSet(namespace=self.ns)
        for key, ver in self.reads:
            r = ns.reads.add(key=key)
            if ver is not None:
                r.version.block, r.version.tx = ver
        for start, end, exhausted, reads in self.ranges:
            rq = ns.range_queries.add(start_key=start, end_key=end, exhausted=exhausted)
            for key, ver in reads:
                rr = rq.reads.add(key=key)
                rr.version.block, rr.version.tx = ver
        for key, value in self.writes:
            if value is None:
                ns.writes.add(key=key, is_delete=True)
            else:
                ns.writes.add(key=key, value=value)
        return ns


@dataclass
class TxKit:
    """Signs transactions and blocks for one consortium."""

    consortium_id: str
    rng: random.Random
    clock_ms: int = 1_800_000_000_000
    contract_version: str = "1.0"
    contract_sequence: int = 1
    _counter: int = field(default=0)

    def header(self, creator: Signer, tx_type: int = transaction_pb2.INVOKE) -> bytes:
        """A fresh serialized TxHeader."""
        nonce = self.rng.randbytes(24)
        self._counter += 1
        return transaction_pb2.TxHeader(
            tx_id=compute_tx_id(nonce, creator.identity),
            type=tx_type,  # type: ignore[arg-type]
            creator=creator.identity,
            nonce=nonce,
            timestamp_ms=self.clock_ms + self._counter,
            consortium_id=self.consortium_id,
        ).SerializeToString()

    def invoke(
        self,
        creator: Signer,
        endorsers: Sequence[Signer],
        rwsets: Sequence[RwSpec],
        contract: str = "rx",
        function: str = "f",
        header: bytes | None = None,
    ) -> bytes:
        """A signed, endorsed INVOKE envelope (serialized)."""
        hdr = header if header is not None else self.header(creator)
        inv = transaction_pb2.ContractInvocation(
            contract=contract, function=function, args_json=b"{}"
        ).SerializeToString()
        rw = transaction_pb2.TxRwSet(ns_rwsets=[r.to_proto() for r in rwsets])
        prp = transaction_pb2.ProposalResponsePayload(
            proposal_hash=proposal_hash(hdr, inv),
            results=rw.SerializeToString(),
            response=transaction_pb2.Response(status=200, payload=b"{}"),
            contract_version=self.contract_version,
            contract_sequence=self.contract_sequence,
        ).SerializeToString()
        tx = transaction_pb2.Transaction(header=hdr, invocation=inv, response_payload=prp)
        for e in endorsers:
            tx.endorsements.add(endorser=e.identity, signature=e.sign(Purpose.ENDORSEMENT, prp))
        return self.seal(creator, tx)

    def seal(self, creator: Signer, tx: transaction_pb2.Transaction) -> bytes:
        """Envelope with the creator's signature over the serialized tx."""
        payload = tx.SerializeToString()
        return transaction_pb2.Envelope(
            payload=payload, signature=creator.sign(Purpose.ENVELOPE, payload)
        ).SerializeToString()

    def config_tx(
        self,
        creator: Signer,
        new_config: config_pb2.ConsortiumConfig,
        admins: Sequence[Signer],
    ) -> bytes:
        """A CONFIG envelope signed by ``admins``."""
        cfg = new_config.SerializeToString()
        update = config_pb2.ConfigUpdate(config=cfg)
        for a in admins:
            update.signatures.add(signer=a.identity_bytes, signature=a.sign(Purpose.CONFIG, cfg))
        tx = transaction_pb2.Transaction(
            header=self.header(creator, transaction_pb2.CONFIG),
            config_update=update.SerializeToString(),
        )
        return self.seal(creator, tx)


def make_block(
    number: int,
    previous_hash: bytes,
    envelopes: Sequence[bytes],
    orderers: Sequence[Signer],
    timestamp_ms: int = 0,
) -> block_pb2.Block:
    """A block signed by ``orderers`` over its header hash (``timestamp_ms`` 0: none)."""
    b = block_pb2.Block()
    b.header.number = number
    b.header.previous_hash = previous_hash
    b.header.data_hash = block_data_hash(envelopes)
    b.header.timestamp_ms = timestamp_ms
    b.data.envelopes.extend(envelopes)
    h = block_header_hash(b.header)
    for o in orderers:
        b.metadata.orderer_signatures.add(
            signer=identity_pb2.Identity(org=o.identity.org, cert_der=o.identity.cert_der),
            signature=o.sign(Purpose.BLOCK, h),
        )
    return b
