"""A peer started from genesis catches up across a config update raising ``max_message_bytes``.

A peer dialled the orderers with the bound of the config in force when it started: a new peer
(or one whose data directory was emptied) with the genesis config's, so the first block made
after a raise and larger than that bound failed every orderer's Deliver stream with
RESOURCE_EXHAUSTED, for good. Each channel now takes the bound in force as it is dialled, and
the Deliver client dials again once a committed block changed it (node.peer.deliver_client).
"""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

import pytest
from rxchain.v1 import services_pb2_grpc, transaction_pb2

from node.crypto import signing
from node.crypto.canonical import compute_tx_id
from node.crypto.signing import Purpose
from node.genesis import config_from_genesis, read_genesis
from tests.fault.test_cert_rotation import _broadcast_config, _height, _next, _wait_height
from tests.harness.consortium import LIMITS, Consortium
from tests.harness.network import start_network
from tests.harness.procs import ProcessManager
from tests.harness.rpc import channel

NEW_PEER = "peer.h02"


def _large_envelope(cons: Consortium, size: int) -> transaction_pb2.Envelope:
    """An envelope of a consortium member, well formed for the orderers, of about ``size`` bytes
    (its invocation is no contract call: the peers record it invalid, in a block like any)."""
    d = cons.net.user_dir("h01", "dr-test")
    signer = signing.load_signer(d / "cert.pem", d / "key.pem", "h01")
    nonce = secrets.token_bytes(24)
    header = transaction_pb2.TxHeader(
        tx_id=compute_tx_id(nonce, signer.identity), type=transaction_pb2.INVOKE,
        creator=signer.identity, nonce=nonce, timestamp_ms=time.time_ns() // 1_000_000,
        consortium_id=cons.net.config.consortium_id)
    payload = transaction_pb2.Transaction(header=header.SerializeToString(),
                                          invocation=b"x" * size).SerializeToString()
    return transaction_pb2.Envelope(payload=payload, signature=signer.sign(Purpose.ENVELOPE, payload))


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_new_peer_catches_up_across_a_raised_message_bound(tmp_path: Path, procs: ProcessManager) -> None:
    net = start_network(tmp_path / "net", procs, orderers=1, deploy=False)
    cons = net.cons
    orderer = cons.orderer_names()[0]
    try:
        procs.kill9(NEW_PEER)  # it starts again from an empty data directory: from genesis
        shutil.rmtree(cons.data_dir(NEW_PEER))
        genesis = config_from_genesis(read_genesis(cons.net.genesis_path))
        assert genesis.limits.max_message_bytes == LIMITS["max_message_bytes"] == 4 << 20
        new = _next(genesis)
        new.limits.max_message_bytes = 16 << 20
        new.limits.max_envelope_bytes = 6 << 20
        _broadcast_config(cons, orderer, new)
        # every node tells its server's bound is the old one until it restarts
        notice = "message_bound=16777216 server_bound=4194304"
        for name in (orderer, "peer.h01"):
            deadline = time.monotonic() + 20
            while notice not in cons.log_path(name).read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "event=message_bound_changed" in cons.log_path(name).read_text(), name
            assert notice in cons.log_path(name).read_text(), name
        # the orderer reads the raised bound as it starts (README: restart after changing it)
        procs.kill9(orderer)
        cons.start_and_wait(procs, [orderer])
        big = _large_envelope(cons, 5 << 20)  # a block over the genesis bound
        with channel(cons.target(orderer), cons.user_creds("h01", "dr-test")) as ch:
            [answer] = list(services_pb2_grpc.AtomicBroadcastStub(ch).Broadcast(iter([big]), timeout=60))
        assert answer.accepted, (answer.reason, answer.message)
        goal = _height(cons.target(orderer), cons.node_creds(orderer))
        assert goal > 0
        cons.start_and_wait(procs, [NEW_PEER])
        reached = _wait_height(cons.target(NEW_PEER), cons.node_creds(NEW_PEER), goal, 30)
        log = cons.log_path(NEW_PEER).read_text()
        assert reached, log[-3000:]
        assert "RESOURCE_EXHAUSTED" not in log
        # caught up, the new peer's server still has the genesis config's bound: it says so
        assert notice in log
    finally:
        net.close()
