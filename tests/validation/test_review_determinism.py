"""Review regressions: a block's validation codes depend on the block and the ledger alone.

Each test failed before its fix (see the validator's comments).
"""

from __future__ import annotations

import plyvel
import pytest
from rxchain.v1 import transaction_pb2 as tx_pb

from bench.txbuild import RwSpec, make_block
from node.crypto.signing import Verifier
from node.ledger.errors import LedgerError
from node.ledger.statedb import VersionedValue, corrupt_state
from node.peer.committer import Committer
from node.peer.definitions import LIFECYCLE_NS
from node.peer.policy_provider import LifecyclePolicies
from tests.validation.conftest import Net, Peer


def test_damaged_state_under_a_contract_definition_stops_the_commit_instead_of_a_code(
    peer: Peer, net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer whose LevelDB block holding ``definition/rx`` fails its checksum cannot tell
    whether ``rx`` is defined: it must commit nothing (as for an MVCC read), not record
    UNKNOWN_CONTRACT while the other peers record VALID (diverging state hashes)."""
    committer = Committer(peer.ledger, Verifier(), LifecyclePolicies())
    state = peer.ledger.state
    real_get = state.get

    def damaged_get(ns: str, key: str) -> VersionedValue | None:
        if ns == LIFECYCLE_NS:
            raise corrupt_state(plyvel.CorruptionError("block checksum mismatch"))
        return real_get(ns, key)

    monkeypatch.setattr(state, "get", damaged_get)
    env = peer.kit.invoke(net.doctor, [net.peer_h01, net.peer_p01], [RwSpec("rx", writes=[("k", b"v")])])
    block = make_block(1, peer.ledger.blocks.last_hash(), [env], [net.orderer1])
    with pytest.raises(LedgerError) as e:
        committer.commit_block(block)
    assert e.value.reason == "LEDGER_CORRUPT"
    assert peer.ledger.height() == 1
    monkeypatch.setattr(state, "get", real_get)  # repaired: the same block gets its real code
    assert list(committer.commit_block(block).validated.codes) == [tx_pb.UNKNOWN_CONTRACT]
