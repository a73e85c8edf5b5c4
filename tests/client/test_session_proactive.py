"""trust7: a session follows the config chain proactively (Session(follow_every_s=)), not only when
its peer presents a CA the pin lacks.

The story: h01's CA was rotated from A (genesis) to B by a config block this home never verified
(no config command ran since), and someone holding A's key took h01's peer over. The impersonator
presents exactly the CA the stale pin holds, so no reactive follow is ever set off: a long-lived
session (the FHIR gateway's) trusted it for ever. A proactive follow now verifies the rotation from
the other nodes, re-pins, and A -- denied -- is refused CA_ROTATED_AWAY, nothing sent to it.

The timing is shared by the home's clients (``run/chain-followed``, ``run/chain-follow-retry``) and
driven here by injected clocks (the wall-clock ms of the files, the monotonic one of the per-session
interval): no sleeps."""

from __future__ import annotations

import ast
import dataclasses
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rxchain.v1 import block_pb2, services_pb2

from client import configtool
from client import follow as follow_mod
from client import session as session_mod
from client.errors import RxClientError
from client.follow import FOLLOW_BUDGET_S
from client.network import load_network
from client.session import (
    FOLLOW_RETRY_FILE,
    FOLLOWED_FILE,
    Session,
    read_chain_followed,
    read_follow_retry,
    verified_network,
)
from client.wallet import load_identity
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.errors import RxError
from node.genesis import config_from_genesis, read_genesis
from node.logs import event_fields
from tests.client.test_session_ca import (  # noqa: F401
    Rotated,
    _as_ordered,
    _health,
    _local,
    _Orderer,
    _ordering,
    _Peer,
    _plain_block,
    _rotation_block,
    _serving,
    rotated,
)
from tests.foundation.test_log_events import log_calls, problems

T0_MS = 1_800_000_000_000  # (2027: any wall-clock ms will do, the files hold what the session's clock says)


def _now(job: Callable[[], None]) -> None:
    """A session's ``spawn`` running its proactive follow at once, on the calling thread: before
    the call goes on, as trust7 did (a test then needs no thread, nor any wait)."""
    job()


class _Time:
    """The session's two clocks, moved only when told: its wall clock (ms, the run files') and its
    monotonic one (s, the per-session interval)."""

    def __init__(self) -> None:
        self.ms = T0_MS
        self.mono = 1000.0

    def wall(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)
        self.mono += seconds


class _Impersonator(_Peer):
    """peer.h01 as someone holding h01's genesis CA key serves it (the generated genesis material):
    counts the calls it was sent."""

    NODE = "peer.h01"

    def __init__(self, blocks: list[block_pb2.Block]) -> None:
        super().__init__(blocks)
        self.served = 0

    def Health(self, request: services_pb2.HealthRequest,
               context: grpc.ServicerContext) -> services_pb2.HealthResponse:
        self.served += 1
        return super().Health(request, context)


@dataclasses.dataclass
class _World:
    """The nodes of the story: the impersonator at h01's peer, h02's peer and orderer.ins01 serving
    the chain (``publish`` sets it); their ports."""

    rot: Rotated
    genesis: block_pb2.Block
    impersonator: _Impersonator
    h02: _Peer
    orderer: _Orderer
    ports: dict[str, int]

    def publish(self, chain: list[block_pb2.Block]) -> None:
        self.h02.blocks = chain
        self.orderer.blocks = _as_ordered(chain)

    def rotation(self) -> list[block_pb2.Block]:
        """The chain with h01's rotation to B committed (block 1)."""
        return [self.genesis, _rotation_block(self.rot.home, self.genesis, self.rot.ca_der)]

    def session(self, t: _Time, every: float = 300.0, peer_port: int | None = None, as_: str = "h01:dr-jiang",
                orderer_port: int | None = None, **kwargs: Any) -> Session:
        net = _local(load_network(self.rot.home), {"h01": peer_port or self.ports["h01"], "h02": self.ports["h02"]})
        net = dataclasses.replace(net, orderers=tuple(
            dataclasses.replace(o, host="127.0.0.1", port=orderer_port or self.ports["orderer"]) for o in net.orderers))
        kwargs.setdefault("spawn", _now)
        return Session(self.rot.home, as_, network=net, clock=t.wall, monotonic=t.monotonic,
                       follow_every_s=every, **kwargs)


def _closed_port() -> int:
    """A local port nothing listens on (bound, then closed: connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _no_run_files(home: Path) -> None:
    """The home as no client of it has followed (the generated home the fixture copies is shared
    by the suite: its sessions leave their timing there)."""
    for rel in (FOLLOWED_FILE, FOLLOW_RETRY_FILE):
        (home / rel).unlink(missing_ok=True)


@pytest.fixture
def world(rotated: Rotated) -> Iterator[_World]:  # noqa: F811
    """The home verified nothing past genesis (config-chain.json removed: h01 pinned to A); the
    network has committed nothing yet (published: the genesis block only)."""
    (rotated.home / configtool.CHAIN_STATE).unlink()
    _no_run_files(rotated.home)
    genesis = read_genesis(rotated.home / "genesis.block")
    impersonator, h02, orderer = _Impersonator([genesis]), _Peer([genesis]), _Orderer(_as_ordered([genesis]))
    with _serving(rotated.home, "peer.h01", [], impersonator) as p_h01, \
            _serving(rotated.home, "peer.h02", [], h02) as p_h02, _ordering(rotated.home, orderer) as p_ord:
        yield _World(rotated, genesis, impersonator, h02, orderer, {"h01": p_h01, "h02": p_h02, "orderer": p_ord})


def _genesis_ca_fp(home: Path) -> str:
    base = config_from_genesis(read_genesis(home / "genesis.block"))
    return configtool.ca_fingerprint(next(o for o in base.organizations if o.id == "h01").ca_cert_der)


def _denied(home: Path) -> dict[str, str]:
    genesis = read_genesis(home / "genesis.block")
    return configtool.read_denylist(home / configtool.CA_DENYLIST, block_header_hash(genesis.header))


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    found = [event_fields(r.msg, r.args) for r in caplog.records if r.name == "client.session"]
    return [f for f in found if f.get("event") == name]


# ---------------------------------------------------------------- the story, on a real chain

def test_without_a_proactive_follow_the_impersonator_keeps_the_stale_pin(world: _World) -> None:
    """follow_every_s=0 (disabled; the only behaviour before): the rotation committed, the
    impersonator presenting A -- the CA of the stale pin -- is served, and nobody is asked."""
    world.publish(world.rotation())
    t = _Time()
    s = world.session(t, every=0)
    try:
        assert _health(s) == "OK"
        t.advance(3600)
        assert _health(s) == "OK"
    finally:
        s.close()
    assert world.impersonator.served == 2
    assert (world.h02.asked, world.orderer.asked) == (0, 0)
    assert not (world.rot.home / FOLLOWED_FILE).exists()


def test_a_proactive_follow_refuses_the_impersonator_ca_rotated_away(
        world: _World, caplog: pytest.LogCaptureFixture) -> None:
    """The first call follows the chain (the home never followed: due), verifies the rotation from
    h02 (confirmed by the orderer), saves it and re-pins to B; A, rotated away from, is denied, and
    the impersonator presenting it is refused CA_ROTATED_AWAY -- nothing sent to it. (trust8: the
    orderers asked, not h02: the orderer reports a chain past the home's, the follow takes its
    blocks.)"""
    caplog.set_level(logging.INFO, logger="client.session")
    world.publish(world.rotation())
    t = _Time()
    s = world.session(t)
    try:
        assert _health(s) == configtool.CA_ROTATED_AWAY
        assert _health(s) == configtool.CA_ROTATED_AWAY  # (again within the interval: no follow again)
    finally:
        s.close()
    assert world.impersonator.served == 0
    assert (world.h02.asked, world.orderer.asked) == (0, 2)  # (the orderer's height, then its blocks)
    home = world.rot.home
    assert verified_network(home, load_network(home)).config.sequence == 1
    assert _genesis_ca_fp(home) in _denied(home)
    assert read_chain_followed(home) == T0_MS
    (repin,) = _events(caplog, "session_proactive_repin")
    assert (repin["peer"], repin["org"], repin["height"], repin["was_height"]) == ("peer.h01", "h01", 2, 0)
    assert (repin["ca_sha256"], repin["was_ca_sha256"]) == (configtool.ca_fingerprint(world.rot.ca_der),
                                                            _genesis_ca_fp(home))
    # a new session of the home (a gateway restarted) pins B from the saved chain: refused alike
    s2 = world.session(t)
    try:
        assert _health(s2) == configtool.CA_ROTATED_AWAY
    finally:
        s2.close()
    assert world.impersonator.served == 0


def test_the_genuine_peer_re_issued_by_the_new_ca_is_reached(world: _World) -> None:
    """After the same proactive follow, h01's genuine peer (its certificate of B) is served: the
    session pinned B before its first call went out."""
    world.publish(world.rotation())
    t = _Time()
    s = world.session(t, peer_port=world.rot.port)
    try:
        assert _health(s) == "OK"
    finally:
        s.close()
    assert world.orderer.asked == 2


def test_a_long_lived_session_repins_once_the_period_passed(world: _World, caplog: pytest.LogCaptureFixture) -> None:
    """A gateway's session follows at its first call (nothing new), serves the impersonator while
    the chain holds no rotation; the rotation is committed; within the period nothing is asked; once
    it passed the session follows again, re-pins and refuses the impersonator."""
    caplog.set_level(logging.INFO, logger="client.session")
    t = _Time()
    s = world.session(t)
    try:
        assert _health(s) == "OK"
        assert world.orderer.asked == 2 and read_chain_followed(world.rot.home) == T0_MS
        assert _events(caplog, "session_proactive_repin") == []  # (the genesis block only: no CA moved)
        world.publish(world.rotation())
        t.advance(299)
        assert _health(s) == "OK"  # not due: the stale pin stands (the window, at most a period)
        assert world.orderer.asked == 2
        t.advance(1)
        assert _health(s) == configtool.CA_ROTATED_AWAY
    finally:
        s.close()
    assert (world.h02.asked, world.orderer.asked) == (0, 4)
    assert world.impersonator.served == 2
    assert read_chain_followed(world.rot.home) == T0_MS + 300_000
    assert [e["height"] for e in _events(caplog, "session_proactive_repin")] == [2]


def test_two_sessions_share_the_time_of_the_last_follow(world: _World) -> None:
    """The FHIR gateway keeps one session per wallet, and a home may run several gateway workers:
    the last follow of any of them (run/chain-followed) counts for all."""
    t = _Time()
    s1 = world.session(t)
    s2 = world.session(t, as_="h01:nurse-liu")
    try:
        assert _health(s1) == "OK"
        t.advance(10)
        assert _health(s2) == "OK"
        assert world.orderer.asked == 2  # (s2 did not follow: s1 did 10 s ago -- the orderer's height, its blocks)
        t.advance(291)
        assert _health(s2) == "OK"  # (due: 301 s since s1's follow)
        assert world.orderer.asked == 3  # (its height, the home's: nothing new)
        t.advance(1)
        assert _health(s1) == "OK"  # (s2 followed 1 s ago)
    finally:
        s1.close()
        s2.close()
    assert (world.h02.asked, world.orderer.asked) == (0, 3)
    assert read_chain_followed(world.rot.home) == T0_MS + 301_000


def test_a_failed_follow_does_not_fail_the_call(world: _World, caplog: pytest.LogCaptureFixture) -> None:
    """Fail-open: no orderer can be reached (its port closed) -- the call goes on pinned to the CA
    in force, the failure is logged and the home backs off (run/chain-follow-retry)."""
    caplog.set_level(logging.INFO, logger="client.session")
    t = _Time()
    s = world.session(t, orderer_port=_closed_port())
    try:
        assert _health(s) == "OK"
    finally:
        s.close()
    assert world.impersonator.served == 1 and world.h02.asked == 0
    (failed,) = _events(caplog, "session_proactive_follow_failed")
    assert (failed["peer"], failed["reason"], failed["retry_s"]) == ("peer.h01", "SERVICE_UNAVAILABLE", 10.0)
    assert "0 of the 1 orderers needed" in failed["detail"] and "orderer.ins01" in failed["detail"]
    assert read_follow_retry(world.rot.home) == (T0_MS + 10_000, 10_000)
    assert read_chain_followed(world.rot.home) is None


# ---------------------------------------------------------------- timing, with follow_chain stood in for

class _Follows:
    """Stands in for follow_current (the proactive follow) in client.session: each call recorded (its keyword arguments);
    fails SERVICE_UNAVAILABLE while ``fail``, else answers the chain the home saved (nothing new)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.calls: list[dict[str, Any]] = []
        self.fail = False
        self.takes: tuple[_Time, float] | None = None  # (the clock it moves, by how long a follow takes)

    def __call__(self, home: Path, net: Any, identity: Any, **kwargs: Any) -> configtool.ChainConfig:
        self.calls.append(kwargs)
        if self.takes is not None:
            self.takes[0].advance(self.takes[1])
        if self.fail:
            raise RxClientError("SERVICE_UNAVAILABLE", "no peer or orderer extended the verified config chain")
        genesis = read_genesis(self.home / "genesis.block")
        return configtool.ChainConfig(genesis, Verifier(), self.home / configtool.CHAIN_STATE)


@pytest.fixture
def follows(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> _Follows:  # noqa: F811
    _no_run_files(rotated.home)
    spy = _Follows(rotated.home)
    monkeypatch.setattr(session_mod, "follow_current", spy)
    return spy


def _plain_session(rot: Rotated, t: _Time, every: float = 300.0, as_: str = "h01:dr-jiang",
                   spawn: Callable[[Callable[[], None]], None] | None = None) -> Session:
    """A session of h01's doctor whose peer is h01's genuine (rotated) one, pinned to B by the
    chain the home verified."""
    return Session(rot.home, as_, network=_local(load_network(rot.home), {"h01": rot.port}),
                   clock=t.wall, monotonic=t.monotonic, follow_every_s=every, spawn=spawn or _now)


def _one_call(rot: Rotated) -> None:
    """One call of a session of h01's doctor (:func:`_plain_session`), answered OK, then closed."""
    s = _plain_session(rot, _Time())
    try:
        assert _health(s) == "OK"
    finally:
        s.close()


def _write_retry_file(rot: Rotated, text: str) -> None:
    path = rot.home / FOLLOW_RETRY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_follow_is_bounded_and_stopped_by_close(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    t = _Time()
    s = _plain_session(rotated, t)
    try:
        assert _health(s) == "OK"
        (call,) = follows.calls
        assert call["clock"]() == t.mono  # (the session's monotonic clock ...)
    finally:
        s.close()
    assert call["clock"]() == math.inf  # (... run out once it is closed: a follow under way asks no node more)
    assert {k: v for k, v in call.items() if k != "clock"} == {"budget_s": FOLLOW_BUDGET_S}


def test_a_failed_follow_backs_off_doubling_up_to_the_period(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    """10 s, doubled after each failure, at most follow_every_s; a success ends the backoff."""
    follows.fail = True
    t = _Time()
    s = _plain_session(rotated, t, every=60)
    retries: list[tuple[int, int]] = []
    try:
        for _ in range(120):  # (a call a second for two minutes)
            assert _health(s) == "OK"
            t.advance(1)
            retry = read_follow_retry(rotated.home)
            assert retry is not None
            if not retries or retries[-1] != retry:
                retries.append(retry)
        assert [r[1] for r in retries] == [10_000, 20_000, 40_000, 60_000]
        assert [c - T0_MS for c in (r[0] - r[1] for r in retries)] == [0, 10_000, 30_000, 70_000]
        assert len(follows.calls) == 4
        follows.fail = False
        t.advance(60)
        assert _health(s) == "OK"
    finally:
        s.close()
    assert len(follows.calls) == 5
    assert not (rotated.home / FOLLOW_RETRY_FILE).exists()
    assert read_chain_followed(rotated.home) == t.ms


def test_the_retry_file_holds_back_the_other_sessions(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    follows.fail = True
    t = _Time()
    s1, s2 = _plain_session(rotated, t), _plain_session(rotated, t, as_="h01:nurse-liu")
    try:
        assert _health(s1) == "OK"
        t.advance(5)
        assert _health(s2) == "OK"
        assert len(follows.calls) == 1  # (s1 failed 5 s ago: the home backs off 10 s)
        t.advance(5)
        assert _health(s2) == "OK"
    finally:
        s1.close()
        s2.close()
    assert len(follows.calls) == 2
    assert read_follow_retry(rotated.home) == (T0_MS + 10_000 + 20_000, 20_000)  # (s2 doubled s1's backoff)


def test_the_per_session_interval_holds_a_short_period(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    """A period under FOLLOW_INTERVAL_S (10 s) does not make a session follow more often."""
    t = _Time()
    s = _plain_session(rotated, t, every=2)
    try:
        for _ in range(10):
            assert _health(s) == "OK"
            t.advance(1)
        assert len(follows.calls) == 1
        assert _health(s) == "OK"
    finally:
        s.close()
    assert len(follows.calls) == 2


@pytest.mark.parametrize("case", ["garbage", "negative", "empty", "directory", "fifo", "future"])
def test_a_corrupt_or_unreadable_followed_file_makes_the_follow_due(
        rotated: Rotated, follows: _Follows, case: str) -> None:  # noqa: F811
    """run/chain-followed holding no time, one that cannot be read (a directory there), or a time
    past the clock (a clock stepped back) holds nothing back: the follow is due, the call goes
    through, nothing raises. Where the file cannot be written the session keeps its own timing."""
    path = rotated.home / FOLLOWED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)  # (read blocking, it held the call for ever)
    else:
        text = {"garbage": "soon\n", "negative": "-5\n", "empty": "", "future": f"{T0_MS + 3_600_000}\n"}[case]
        path.write_text(text)
    (rotated.home / FOLLOW_RETRY_FILE).write_text("\x00\xff garbage")  # (ignored too)
    t = _Time()
    s = _plain_session(rotated, t)
    try:
        assert _health(s) == "OK"
        assert len(follows.calls) == 1
        t.advance(60)
        assert _health(s) == "OK"
    finally:
        s.close()
    assert len(follows.calls) == 1  # (followed a minute ago: the file, or the session's own memory)
    if case != "directory":  # (a FIFO is replaced by the rename, as any file)
        assert read_chain_followed(rotated.home) == T0_MS


def test_a_retry_file_further_off_than_a_period_holds_nothing_back(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    _write_retry_file(rotated, f"{T0_MS + 10 * 86_400_000} 10000\n")
    _one_call(rotated)
    assert len(follows.calls) == 1


def test_the_backoff_runs_from_the_end_of_a_failed_follow(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    """A follow that failed after its whole 45 s bound: its 10 s backoff counted from its start was
    over when it ended, and the next call followed again at once."""
    follows.fail = True
    t = _Time()
    follows.takes = (t, FOLLOW_BUDGET_S)
    s = _plain_session(rotated, t)
    try:
        assert _health(s) == "OK"
        t.advance(5)
        assert _health(s) == "OK"
    finally:
        s.close()
    assert len(follows.calls) == 1
    assert read_follow_retry(rotated.home) == (T0_MS + 45_000 + 10_000, 10_000)


def test_a_retry_from_long_ago_starts_the_backoff_again(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    """A retry file left by a failure streak that ended (its retry came due more than a period ago)
    does not double: the backoff starts again at 10 s."""
    follows.fail = True
    _write_retry_file(rotated, f"{T0_MS - 301_000} 300000\n")
    _one_call(rotated)
    assert len(follows.calls) == 1
    assert read_follow_retry(rotated.home) == (T0_MS + 10_000, 10_000)


def test_another_client_following_now_holds_the_session_off(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    """The home's follow lock (run/.chain-followed.lock) held by another client: the session does
    not wait for it nor follow too; its call goes on."""
    (rotated.home / "run").mkdir(exist_ok=True)
    started: list[Callable[[], None]] = []

    def spawn(job: Callable[[], None]) -> None:
        started.append(job)
        job()

    t = _Time()
    s = _plain_session(rotated, t, spawn=spawn)
    try:
        with configtool.locked(rotated.home / FOLLOWED_FILE, wait_s=0):
            assert _health(s) == "OK"
            t.advance(5)
            # (the other client still following: the session looks again only after 10 s -- a
            # gateway's sessions started a thread per request while it lasted)
            assert _health(s) == "OK"
            assert len(started) == 1
        assert follows.calls == []
        t.advance(5)
        assert _health(s) == "OK"  # (the other client's follow ended without a trace: due)
    finally:
        s.close()
    assert len(started) == 2 and len(follows.calls) == 1


def test_a_session_never_follows_twice_at_once(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A follow under way (its follow lock held) and a second call of the same session: the second
    neither waits for it nor starts another."""
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []
    genesis = read_genesis(rotated.home / "genesis.block")

    def slow(home: Path, net: Any, identity: Any, **kwargs: Any) -> configtool.ChainConfig:
        calls.append(1)
        entered.set()
        release.wait(10)
        return configtool.ChainConfig(genesis, Verifier(), rotated.home / configtool.CHAIN_STATE)

    monkeypatch.setattr(session_mod, "follow_current", slow)
    s = _plain_session(rotated, _Time())
    first: list[str] = []
    thread = threading.Thread(target=lambda: first.append(_health(s)))
    thread.start()
    try:
        assert entered.wait(10)
        assert _health(s) == "OK"  # (the second call, while the first's follow runs)
        assert calls == [1]
    finally:
        release.set()
        thread.join(10)
        s.close()
    assert first == ["OK"] and calls == [1]


def test_a_patient_session_never_follows(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    """Peers and orderers stream a patient's certificate no blocks: her session would only fail,
    and back the home's other clients off."""
    s = _plain_session(rotated, _Time(), as_="h01:patient-zhang")
    try:
        s._server_ca()  # (what every call asks first)
    finally:
        s.close()
    assert follows.calls == []


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_a_bad_period_is_refused(rotated: Rotated, bad: float) -> None:  # noqa: F811
    with pytest.raises(RxClientError) as e:
        _plain_session(rotated, _Time(), every=bad)
    assert e.value.reason == "BAD_ARGUMENTS"


# ---------------------------------------------------------------- the gateway's option, the log events

def test_the_fhir_gateway_option_reaches_its_sessions(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from client import cli
    from client.fhir import server
    from client.fhir.server import Identities

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(server, "serve_forever", lambda *args, **kwargs: seen.append(kwargs))
    parser = cli.build_parser()
    for argv, want in ((["fhir", "serve", "--follow-every", "60"], 60.0), (["fhir", "serve"], None)):
        a = parser.parse_args(["--home", str(rotated.home), *argv])
        cli.cmd_fhir_serve(a)
        assert seen[-1].get("follow_every_s") == want
    with pytest.raises(cli.UsageError):
        parser.parse_args(["--home", str(rotated.home), "fhir", "serve", "--follow-every", "-5"])
    ids = Identities(rotated.home, follow_every_s=7)
    try:
        cert = x509.load_pem_x509_certificate(
            (rotated.home / "orgs" / "h01" / "users" / "dr-jiang" / "cert.pem").read_bytes())
        ops = ids.ops_for(cert.public_bytes(serialization.Encoding.DER))
        assert ops.s._follow_every_ms == 7000
    finally:
        ids.close()


def test_the_session_log_events_are_well_formed_and_listed() -> None:
    source = Path(session_mod.__file__).read_text()
    calls = log_calls(source)
    assert len(calls) >= 2
    assert {str(c.args[0].value).split()[0] for c in calls if isinstance(c.args[0], ast.Constant)} >= {
        "event=session_proactive_follow_failed", "event=session_proactive_repin"}
    assert [p for c in calls for p in problems(c)] == []
    readme = (Path(session_mod.__file__).parent / "README.md").read_text()
    for event in ("session_proactive_follow_failed", "session_proactive_repin"):
        assert f"`{event}`" in readme


def test_the_run_files_are_documented() -> None:
    readme = (Path(session_mod.__file__).parent / "README.md").read_text()
    assert f"HOME/{FOLLOWED_FILE}" in readme and f"HOME/{FOLLOW_RETRY_FILE}" in readme
    assert "--follow-every" in readme


# ---------------------------------------------------------------- trust8: what the red team found

@pytest.mark.parametrize("error", [ValueError("not a block"), RxError("LEDGER_INVALID", "node-side")])
def test_an_error_no_follow_reports_does_not_fail_the_call(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,  # noqa: F811
        error: Exception) -> None:
    """Fail-open took only RxClientError: anything else out of the follow (a protobuf error, a
    node-side RxError, a bug) failed the user's call, which the pin in force serves. It is now a
    failed follow like any: logged INTERNAL, backed off."""
    caplog.set_level(logging.INFO, logger="client.session")
    _no_run_files(rotated.home)

    def broken(*args: Any, **kwargs: Any) -> configtool.ChainConfig:
        raise error

    monkeypatch.setattr(session_mod, "follow_current", broken)
    _one_call(rotated)
    (failed,) = _events(caplog, "session_proactive_follow_failed")
    assert failed["reason"] == "INTERNAL" and type(error).__name__ in failed["detail"]
    assert read_follow_retry(rotated.home) == (T0_MS + 10_000, 10_000)


def test_a_clock_stepped_back_does_not_hold_the_follow_off(rotated: Rotated, follows: _Follows) -> None:  # noqa: F811
    """The session remembered its next follow as due a period after its last (wall-clock ms): the
    clock stepped back a day, it followed again only a day and a period later -- the window the
    proactive follow bounds held open that long. A due time further off than a period is now
    taken for a clock that went back, as a run file's time past the clock is: nothing held."""
    t = _Time()
    s = _plain_session(rotated, t)
    try:
        assert _health(s) == "OK"
        assert len(follows.calls) == 1
        t.ms -= 86_400_000  # (NTP stepped the wall clock back a day; the monotonic one went on)
        t.mono += 20
        assert _health(s) == "OK"  # (run/chain-followed is past the clock: due)
        assert len(follows.calls) == 2
        assert read_chain_followed(rotated.home) == t.ms
        t.advance(299)
        assert _health(s) == "OK"
        assert len(follows.calls) == 2  # (not due yet: a period from the follow at the new time)
        t.advance(1)
        assert _health(s) == "OK"
    finally:
        s.close()
    assert len(follows.calls) == 3


def test_the_run_files_follow_no_symlink_another_account_put_in_run(
        rotated: Rotated, follows: _Follows, tmp_path: Path) -> None:  # noqa: F811
    """``run`` may be shared by the home's accounts. The temporary files of the run files were named
    by pid and thread id and opened as any file: another account's symlink at that name had the
    session overwrite the file it named (here a file of the session's account). They are now
    created (never opened) under an unguessable name."""
    victim = tmp_path / "precious"
    victim.write_text("keep me\n")
    run = rotated.home / "run"
    run.mkdir(exist_ok=True)
    ident = f"{os.getpid()}.{threading.get_ident()}"
    for name in (f".chain-follow-retry.{ident}.tmp", f".chain-followed.{ident}.tmp", f"last-block.{ident}.tmp"):
        (run / name).symlink_to(victim)
    follows.fail = True
    s = _plain_session(rotated, _Time())
    try:
        assert _health(s) == "OK"  # (the follow fails: the retry file is written)
    finally:
        s.close()
    session_mod.record_last_block(rotated.home, 10**6)
    assert victim.read_text() == "keep me\n"
    assert read_follow_retry(rotated.home) == (T0_MS + 10_000, 10_000)
    assert session_mod.read_last_block(rotated.home) == 10**6


# ---------------------------------------------------------------- trust8: the follow off the call's path

def test_a_due_follow_runs_off_the_calls_path(world: _World) -> None:
    """The follow ran in the call's path: with the orderers blackholed one call a backoff period
    waited up to the 45 s budget. It is now handed to the session's ``spawn`` (a daemon thread by
    default; here held, to be run when the test says) and the call goes on at once on the pin in
    force -- the same fail-open window as a failed follow. One at a time: a call while it has
    not ended starts no other. Once it ran, the next call is re-pinned."""
    world.publish(world.rotation())
    t = _Time()
    held: list[Callable[[], None]] = []
    s = world.session(t, spawn=held.append)
    try:
        assert _health(s) == "OK"  # (the stale pin: the impersonator served, nobody asked yet)
        assert (len(held), world.h02.asked, world.impersonator.served) == (1, 0, 1)
        t.advance(30)
        assert _health(s) == "OK"
        assert len(held) == 1  # (the first has not ended: none started)
        held[0]()
        assert _health(s) == configtool.CA_ROTATED_AWAY
        t.advance(301)
        assert _health(s) == configtool.CA_ROTATED_AWAY
        assert len(held) == 2  # (the first ended: the next period's starts)
    finally:
        s.close()
    # (the orderer: the follow run -- its height, its blocks; h02: the reactive follow of the last
    # call -- its peer presenting A, a CA the pin lacks, and no proactive follow within the interval)
    assert world.impersonator.served == 2 and (world.h02.asked, world.orderer.asked) == (1, 2)


def test_a_follow_on_its_thread_does_not_hold_the_call_and_close_stops_it(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """The default ``spawn``: a daemon thread. A follow that does not end (every node blackholed)
    does not hold the call; close() tells it to stop -- its clock runs out -- and joins it: no
    failure logged, no backoff written for the home (the nodes did not fail: the session closed)."""
    caplog.set_level(logging.INFO, logger="client.session")
    _no_run_files(rotated.home)
    started, stopped = threading.Event(), threading.Event()

    def blackholed(home: Path, net: Any, identity: Any, **kwargs: Any) -> configtool.ChainConfig:
        started.set()
        clock = kwargs["clock"]
        for _ in range(1000):  # (bounded: 10 s at most)
            if clock() == math.inf:
                stopped.set()
                raise RxClientError("SERVICE_UNAVAILABLE", "the follow ran out of its time")
            threading.Event().wait(0.01)
        raise RxClientError("SERVICE_UNAVAILABLE", "never stopped")

    monkeypatch.setattr(session_mod, "follow_current", blackholed)
    monkeypatch.setattr(session_mod, "CLOSE_GRACE_S", 0.0)
    t = _Time()
    s = Session(rotated.home, "h01:dr-jiang", network=_local(load_network(rotated.home), {"h01": rotated.port}),
                clock=t.wall, monotonic=t.monotonic)
    try:
        assert _health(s) == "OK"
        assert started.wait(10)
        thread = s._follow_thread
        assert thread is not None and thread.daemon and thread.is_alive() and not stopped.is_set()
        assert _health(s) == "OK"  # (a second call, the follow still under way)
    finally:
        s.close()
    assert stopped.is_set() and not thread.is_alive()
    assert _events(caplog, "session_proactive_follow_failed") == []
    assert read_follow_retry(rotated.home) is None and read_chain_followed(rotated.home) is None


def test_a_call_under_way_when_the_follow_re_pins_is_retried_on_the_new_pin(world: _World) -> None:
    """A call went out on the stale pin A; the follow -- on its thread -- re-pinned to B meanwhile
    (h01's genuine peer, re-issued by B, presents B: the handshake fails). The call's reactive
    follow waited for that follow, found the certificate issued by the pin now held and let the
    call fail SERVICE_UNAVAILABLE. A pin that moved since the attempt went out now retries it
    at once on the new pin."""
    world.publish(world.rotation())
    t = _Time()
    held: list[Callable[[], None]] = []
    s = world.session(t, peer_port=world.rot.port, spawn=held.append)
    real = s.gateway._server_ca
    assert real is not None

    def under_way() -> tuple[int, bytes]:
        answer = real()  # (the pin the call goes out on ...)
        while held:
            held.pop()()  # (... then the follow re-pins, before the attempt fails)
        return answer

    s.gateway._server_ca = under_way
    try:
        first = _health(s)
        version = s.gateway._pin_version
    finally:
        s.close()
    assert (first, version) == ("OK", 1)
    assert (world.h02.asked, world.orderer.asked) == (0, 2)  # (the follow's: the call's own reactive one did not follow)


# ---------------------------------------------------------------- trust8: "nothing new" is the orderers' majority's word

def test_a_peer_at_the_homes_height_does_not_hide_a_rotation(world: _World) -> None:
    """The home verified the genesis block; h02 lags there (or withholds the rest); the orderer
    holds h01's rotation. The follow asked h02 first, took its "nothing new" for done, and the
    impersonator was served until the next period (and again while h02 lagged). The orderers'
    majority now decides: the orderer reports a longer chain, the follow takes its blocks."""
    genesis = world.genesis
    chain = configtool.ChainConfig(genesis, Verifier(), world.rot.home / configtool.CHAIN_STATE)
    chain.feed(genesis)
    chain.save()
    world.h02.blocks = [genesis]
    world.orderer.blocks = _as_ordered(world.rotation())
    t = _Time()
    s = world.session(t)
    try:
        assert _health(s) == configtool.CA_ROTATED_AWAY
    finally:
        s.close()
    assert world.impersonator.served == 0 and world.h02.asked == 0
    assert verified_network(world.rot.home, load_network(world.rot.home)).config.sequence == 1


class _Heights:
    """Stands in for the orderers a follow dials (follow_current's ``make``): each name's height,
    or an error; every name asked, the deadline each was given."""

    def __init__(self, heights: dict[str, int | RxClientError]) -> None:
        self.heights = heights
        self.asked: list[str] = []
        self.deadlines: list[float] = []

    def __call__(self, identity: Any, endpoint: Any, ca: bytes, deadline: float, clock: Any,
                 orderer: bool) -> Any:
        assert orderer
        self.deadlines.append(deadline)
        heights, asked, name = self.heights, self.asked, endpoint.name

        class _Node:
            def height(self) -> int:
                asked.append(name)
                found = heights[name]
                if isinstance(found, RxClientError):
                    raise found
                return found

            def close(self) -> None:
                pass

        return _Node()


def _three_orderers(rot: Rotated) -> Any:
    """h01's home, verified nothing (the genesis configuration in force), with a configuration of
    three orderers of ins01 -- a majority is two -- and the network description's orderer.ins01,
    plus a node the configuration does not list (orderer.rogue: never counted)."""
    (rot.home / configtool.CHAIN_STATE).unlink(missing_ok=True)
    net = load_network(rot.home)
    config = type(net.config)()
    config.CopyFrom(net.config)
    for i, name in enumerate(("orderer2.ins01", "orderer3.ins01"), start=2):
        node = config.orderers.add()
        node.CopyFrom(config.orderers[0])
        node.name, node.raft_id, node.host, node.port = name, 100 + i, "127.0.0.1", 1
        node.cert_der = b"certificate of " + name.encode()  # (one orderer each: client.follow counts certificates)
    rogue = dataclasses.replace(net.orderers[0], name="orderer.rogue", host="127.0.0.1", port=2)
    return dataclasses.replace(net, config=config, orderers=(*net.orderers, rogue))


def _unavailable() -> RxClientError:
    return RxClientError("SERVICE_UNAVAILABLE", "blackholed")


def test_a_majority_of_the_orderers_at_the_homes_height_is_current(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two of three orderers report the home's height: current, nothing followed -- one orderer
    claiming a longer chain (lying, or a block just cut) does not make every follow fail."""
    net = _three_orderers(rotated)
    identity = load_identity(rotated.home, "h01", "dr-jiang")
    followed: list[dict[str, Any]] = []
    monkeypatch.setattr(follow_mod, "follow_chain", lambda *a, **kw: followed.append(kw))
    genesis = read_genesis(rotated.home / "genesis.block")
    height = configtool.ChainConfig(genesis, Verifier(), rotated.home / configtool.CHAIN_STATE).height
    make = _Heights({"orderer.ins01": height, "orderer2.ins01": height + 5, "orderer3.ins01": height,
                     "orderer.rogue": height})
    clock = _Time()
    chain = follow_mod.follow_current(rotated.home, net, identity, budget_s=45, clock=clock.monotonic, make=make)
    assert chain.height == height and followed == []
    assert make.asked == ["orderer.ins01", "orderer2.ins01", "orderer3.ins01"]
    assert make.deadlines == [clock.mono + 45] * 3


@pytest.mark.parametrize("case", ["one current, two unreachable", "one current, one past it", "a rogue agrees"])
def test_no_majority_at_the_homes_height_follows_from_the_orderers_and_must_grow(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch, case: str) -> None:  # noqa: F811
    """Fewer than a majority report the home's height (the others unreachable, or past it; a node
    the configuration does not list is no orderer): the chain is followed from the orderers, peers
    not asked, on the budget left -- and a follow that brings nothing is no success."""
    net = _three_orderers(rotated)
    identity = load_identity(rotated.home, "h01", "dr-jiang")
    genesis = read_genesis(rotated.home / "genesis.block")
    verified = configtool.ChainConfig(genesis, Verifier(), rotated.home / configtool.CHAIN_STATE)
    h = verified.height
    cases: dict[str, dict[str, int | RxClientError]] = {
        "one current, two unreachable": {"orderer.ins01": h, "orderer2.ins01": _unavailable(),
                                         "orderer3.ins01": _unavailable()},
        "one current, one past it": {"orderer.ins01": h, "orderer2.ins01": h + 1, "orderer3.ins01": _unavailable()},
        "a rogue agrees": {"orderer.ins01": h, "orderer2.ins01": _unavailable(), "orderer3.ins01": _unavailable()},
    }
    heights = {**cases[case], "orderer.rogue": h}
    calls: list[dict[str, Any]] = []

    def from_orderers(home: Path, net_: Any, identity_: Any, **kwargs: Any) -> configtool.ChainConfig:
        calls.append(kwargs)
        return verified  # (nothing past it)

    monkeypatch.setattr(follow_mod, "follow_chain", from_orderers)
    clock = _Time()
    with pytest.raises(RxClientError) as e:
        follow_mod.follow_current(rotated.home, net, identity, budget_s=45, clock=clock.monotonic,
                                  make=_Heights(heights))
    assert e.value.reason == "SERVICE_UNAVAILABLE"
    assert "1 of the 2 orderers needed" in e.value.message and "not known to be current" in e.value.message
    (call,) = calls
    assert call["from_peers"] is False and call["budget_s"] == 45

    grown = configtool.ChainConfig(genesis, Verifier())
    grown.feed(genesis)
    assert grown.height > h  # (the follow from the orderers brought the genesis block: taken)
    monkeypatch.setattr(follow_mod, "follow_chain", lambda *a, **kw: grown)
    assert follow_mod.follow_current(rotated.home, net, identity, budget_s=45, clock=clock.monotonic,
                                     make=_Heights(heights)) is grown


def test_a_proactive_follow_the_orderers_failed_leaves_the_reactive_follow_to_the_peers(
        rotated: Rotated) -> None:  # noqa: F811
    """The network was started again from the genesis block (h01's peer presents its genesis CA,
    h02 serves the new chain) and no orderer can be reached. The proactive follow asks the
    orderers only and fails; within the interval its failure stood for the reactive follow too,
    and the call said CA_ROTATED_AWAY -- the peers, which show the restart, never asked. A
    proactive follow that failed (other than CHAIN_RESTARTED) no longer stands in for the
    reactive one: h02 is asked, and the call says CHAIN_RESTARTED with the remedy."""
    _no_run_files(rotated.home)
    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    genesis = read_genesis(rotated.home / "genesis.block")
    one = _plain_block(rotated.home, 1, genesis)
    new_chain = [genesis, one, _plain_block(rotated.home, 2, one)]
    h02 = _Peer(new_chain)
    with _serving(rotated.home, "peer.h01", new_chain) as p_h01, _serving(rotated.home, "peer.h02", [], h02) as p_h02:
        net = _local(load_network(rotated.home), {"h01": p_h01, "h02": p_h02})
        net = dataclasses.replace(net, orderers=tuple(
            dataclasses.replace(o, host="127.0.0.1", port=_closed_port()) for o in net.orderers))
        t = _Time()
        s = Session(rotated.home, "h01:dr-jiang", network=net, clock=t.wall, monotonic=t.monotonic, spawn=_now)
        try:
            assert _health(s) == configtool.CHAIN_RESTARTED
        finally:
            s.close()
    assert h02.asked == 1
    assert read_follow_retry(rotated.home) is not None  # (the proactive follow did fail)
    assert state.read_bytes() == saved


@pytest.mark.parametrize("where", ["spawn", "job"])
def test_a_follow_that_cannot_start_is_a_failed_follow(
        rotated: Rotated, follows: _Follows, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        where: str) -> None:
    """No thread can be started (RuntimeError: the process at its limit), or the job fails before
    the follow (the home's lock raising an error of its own): the call goes on, the failure is
    logged INTERNAL and the home backs off -- it was logged each call, with no backoff."""
    caplog.set_level(logging.INFO, logger="client.session")

    def no_thread(job: Callable[[], None]) -> None:
        raise RuntimeError("can't start new thread")

    def broken_lock(*args: Any, **kwargs: Any) -> Any:
        raise OSError(5, "Input/output error")

    if where == "job":
        monkeypatch.setattr(configtool, "locked", broken_lock)
    t = _Time()
    s = _plain_session(rotated, t, spawn=no_thread if where == "spawn" else None)
    try:
        assert _health(s) == "OK"
        t.advance(5)
        assert _health(s) == "OK"  # (backing off: not tried, nor logged, again)
    finally:
        s.close()
    (failed,) = _events(caplog, "session_proactive_follow_failed")
    assert failed["reason"] == "INTERNAL"
    assert ("RuntimeError" if where == "spawn" else "OSError") in failed["detail"]
    assert read_follow_retry(rotated.home) == (T0_MS + 10_000, 10_000)
    assert follows.calls == []


def test_one_orderer_under_two_names_is_one_voice_that_the_home_is_current(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The configuration lists orderer.ins01 a second time, as orderer2.ins01 (its certificate, a
    raft id of its own): one orderer, and orderer3.ins01 -- two orderers, a majority of two.
    orderer.ins01 reporting the home's height under both names is one orderer's word: not
    current (the follow from the orderers runs; before, two names made the majority and a
    compromised orderer hid a rotation for good)."""
    net = _three_orderers(rotated)
    net.config.orderers[1].cert_der = net.config.orderers[0].cert_der
    assert follow_mod.orderers_needed(net) == 2
    identity = load_identity(rotated.home, "h01", "dr-jiang")
    genesis = read_genesis(rotated.home / "genesis.block")
    verified = configtool.ChainConfig(genesis, Verifier(), rotated.home / configtool.CHAIN_STATE)
    h = verified.height
    calls: list[dict[str, Any]] = []

    def from_orderers(home: Path, net_: Any, identity_: Any, **kwargs: Any) -> configtool.ChainConfig:
        calls.append(kwargs)
        return verified  # (nothing past it)

    monkeypatch.setattr(follow_mod, "follow_chain", from_orderers)
    make = _Heights({"orderer.ins01": h, "orderer2.ins01": h, "orderer3.ins01": h + 1, "orderer.rogue": h})
    with pytest.raises(RxClientError) as e:
        follow_mod.follow_current(rotated.home, net, identity, budget_s=45, clock=_Time().monotonic, make=make)
    assert "1 of the 2 orderers needed" in e.value.message, e.value.message
    assert "orderer2.ins01" not in make.asked and "orderer3.ins01" in make.asked
    assert len(calls) == 1
