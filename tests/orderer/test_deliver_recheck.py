"""An orderer's Deliver stream checks its caller again with the MSP in force before every
block. Old code: once, as the stream opened -- a follow stream lasts for as long as the client
keeps it, so a doctor's certificate that a config update revoked (a lost laptop), or that
expired, went on being served every later block (every patient's pseudonym, ciphertexts and
wrapped keys) until it chose to reconnect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from rxchain.v1 import config_pb2, services_pb2

from node.crypto.signing import Verifier
from node.crypto.x509 import cert_info_der, pem_to_der
from node.genesis import config_from_genesis, read_genesis
from node.identity.msp import MSP
from node.orderer.deliver import DeliverService
from tests.orderer.cluster import make_network
from tests.orderer.toyblocks import append_toy_blocks, toy_block_store


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_network(tmp_path_factory.mktemp("recheck") / "net")


class _Aborted(Exception):
    pass


class _Context:
    """A servicer context carrying a TLS client certificate; records an abort."""

    def __init__(self, cert_pem: bytes) -> None:
        self._pem = cert_pem
        self.trailers: dict[str, str] = {}
        self.code: grpc.StatusCode | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def is_active(self) -> bool:
        return True

    def add_callback(self, _callback: Any) -> bool:
        return True

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = {k: v for k, v in metadata if isinstance(v, str)}

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise _Aborted(details)


def _numbers(frames: list[bytes]) -> list[int]:
    out = []
    for frame in frames:
        resp = services_pb2.DeliverResponse.FromString(frame)
        if resp.HasField("block"):
            out.append(resp.block.header.number)
    return out


@pytest.mark.parametrize("cut_off", ["revoked", "expired"])
def test_a_follow_stream_ends_once_its_certificate_is_revoked_or_expired(
    net: Any, tmp_path: Path, cut_off: str,
) -> None:
    store = toy_block_store(tmp_path / "blocks", 3)
    consortium = config_from_genesis(read_genesis(net.genesis_path))
    verifier = Verifier()
    in_force = [MSP(consortium, verifier)]
    now_ms = [int(time.time() * 1000)]
    svc = DeliverService(store, lambda: in_force[-1], lambda: now_ms[0], poll_s=0.01)
    pem = (net.user_dir("h01", "dr") / "cert.pem").read_bytes()
    info = cert_info_der(pem_to_der(pem))
    ctx = _Context(pem)
    stream = svc.deliver_bytes(services_pb2.DeliverRequest(start_block=0, follow=True), ctx)  # type: ignore[arg-type]
    got = [next(stream) for _ in range(3)]
    assert _numbers(got) == [0, 1, 2]  # admitted
    if cut_off == "revoked":  # a config update revokes the doctor's certificate
        updated = config_pb2.ConsortiumConfig()
        updated.CopyFrom(consortium)
        updated.sequence += 1
        org = next(o for o in updated.organizations if o.id == "h01")
        org.revoked_serials.append(info.serial_hex)
        in_force.append(MSP(updated, verifier))
        reason = "REVOKED_CERT"
    else:
        now_ms[0] = info.not_after_ms + 1
        reason = "EXPIRED_CERT"
    append_toy_blocks(store, 1, 3, store.last_hash())
    with pytest.raises(_Aborted):
        got.append(next(stream))  # old code: block 3, and every later one
    assert ctx.code == grpc.StatusCode.PERMISSION_DENIED and ctx.trailers.get("rxchain-reason") == reason
    store.close()
