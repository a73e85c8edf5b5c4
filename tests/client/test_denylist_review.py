"""review14: the denylist of rotated-away CAs (configtool.CA_DENYLIST, rotated-cas.json) against
two processes of one home, and a session reading it.

The chain: genesis (h01's CA A), block 1 rotating h01 to B, block 2 rotating it back to A -- a
legitimate return to a CA (A reinstated, B denied)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from rxchain.v1 import block_pb2, config_pb2, transaction_pb2

from bench.txbuild import TxKit, make_block, node_signer, user_signer
from client import configtool
from client.errors import RxClientError
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.genesis import config_from_genesis, read_genesis
from tests.client.test_session_ca import Rotated, _session, rotated  # noqa: F401


def _config_block(home: Path, previous: block_pb2.Block, base: config_pb2.ConsortiumConfig,
                  h01_ca: bytes) -> tuple[block_pb2.Block, config_pb2.ConsortiumConfig]:
    """The block after ``previous`` installing ``base`` with h01's CA ``h01_ca`` (sequence + 1),
    signed by 4 of the 6 admins and orderer.ins01, as a peer serves it -- and that config."""
    new = config_pb2.ConsortiumConfig()
    new.CopyFrom(base)
    new.sequence = base.sequence + 1
    next(o for o in new.organizations if o.id == "h01").ca_cert_der = h01_ca
    now_ms = time.time_ns() // 1_000_000
    kit = TxKit(base.consortium_id, random.Random(7), clock_ms=now_ms)
    admins = [user_signer(home, org, "admin") for org in ("h02", "p01", "p02", "ins01")]
    env = kit.config_tx(admins[0], new, admins)
    number = previous.header.number + 1
    block = make_block(number, block_header_hash(previous.header), [env], [node_signer(home, "orderer.ins01", "ins01")],
                       timestamp_ms=now_ms)
    block.metadata.last_config_block = number
    block.metadata.validation_codes.append(transaction_pb2.VALID)
    return block, new


def _there_and_back(rot: Rotated) -> tuple[block_pb2.Block, block_pb2.Block, block_pb2.Block, str, str]:
    """(genesis, block 1: A to B, block 2: B back to A, A's fingerprint, B's), the home's state
    saved at height 2 (B in force; the denylist names A)."""
    state = rot.home / configtool.CHAIN_STATE
    state.unlink()
    genesis = read_genesis(rot.home / "genesis.block")
    base = config_from_genesis(genesis)
    a = next(o for o in base.organizations if o.id == "h01").ca_cert_der
    one, config1 = _config_block(rot.home, genesis, base, rot.ca_der)
    two, _ = _config_block(rot.home, one, config1, a)
    chain = configtool.ChainConfig(genesis, Verifier(), state)
    chain.feed(genesis)
    chain.feed(one)
    chain.in_force()
    return genesis, one, two, configtool.ca_fingerprint(a), configtool.ca_fingerprint(rot.ca_der)


def _denied(rot: Rotated, genesis: block_pb2.Block) -> dict[str, str]:
    return configtool.read_denylist(rot.home / configtool.CA_DENYLIST, block_header_hash(genesis.header))


def test_a_stale_resume_does_not_deny_a_ca_another_process_reinstated(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Process X reads config-chain.json at height 2 (B in force); process Y then saves height 3 (A
    back in force: A dropped from the denylist, B added); X, resuming, wrote the CAs its stale state
    rotated away from -- A -- back into the denylist, without the state's lock. Nothing ever took
    A out again (only a config block putting it back in force does): every session of h01 refused
    CA_ROTATED_AWAY for good, on the chain the consortium rotated back. A resume now writes the
    denylist only under the state's lock, while the state is still the one it read."""
    genesis, _, two, a, b = _there_and_back(rotated)
    state = rotated.home / configtool.CHAIN_STATE
    assert set(_denied(rotated, genesis)) == {a}
    y = configtool.ChainConfig(genesis, Verifier(), state)
    y.feed(two)
    real = configtool.rotated_away
    raced: list[bool] = []

    def between(old: Any, new: Any) -> dict[str, str]:
        if not raced:  # (X read the state at height 2: Y saves height 3 now)
            raced.append(True)
            y.in_force()
        return real(old, new)

    monkeypatch.setattr(configtool, "rotated_away", between)
    x = configtool.ChainConfig(genesis, Verifier(), state)
    monkeypatch.undo()
    assert raced and x.height == 2 and configtool.saved_height(state, block_header_hash(genesis.header)) == 3
    assert _denied(rotated, genesis) == {b: "h01"}, (a, b)


def test_a_resume_still_writes_the_denylist_of_a_state_saved_without_it(rotated: Rotated) -> None:  # noqa: F811
    """(the resume's write kept) a state saved before the denylist was kept: its genesis CAs out of
    force are denied on the first read."""
    genesis, *_, a, _ = _there_and_back(rotated)
    (rotated.home / configtool.CA_DENYLIST).unlink()
    configtool.ChainConfig(genesis, Verifier(), rotated.home / configtool.CHAIN_STATE)
    assert set(_denied(rotated, genesis)) == {a}


def test_a_denylist_a_session_cannot_stat_fails_closed(rotated: Rotated) -> None:  # noqa: F811
    """rotated-cas.json there but not readable (a symlink loop: ELOOP) -- the follow refuses IO_ERROR,
    but the session took a stat failing for no file and sent on a pin the file may deny. Now
    IO_ERROR there too, nothing sent."""
    _there_and_back(rotated)
    path = rotated.home / configtool.CA_DENYLIST
    path.unlink()
    os.symlink(path.name, path)  # (a link to itself)
    s = _session(rotated.home, rotated.port)
    try:
        with pytest.raises(RxClientError) as e:
            s.gateway.health(timeout=5)
        assert e.value.reason == "IO_ERROR", e.value
    finally:
        s.close()
