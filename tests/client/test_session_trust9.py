"""trust9: the residuals trust8 left in a session's trust in the config chain.

(a) a call whose peer presents a CA the pin lacks waits for a follow of the session under way
    (another call's, the proactive one) FOLLOW_WAIT_S at most, then fails FOLLOW_IN_PROGRESS -- it
    waited for as long as that follow took (its 45 s budget);
(b) close() waits for a proactive follow whatever ran it (a caller's ``spawn``), not only the
    default thread;
(c) config-chain.json (and rotated-cas.json) rewritten in place with the same size and modification
    time -- restored (``cp -p``), or within one tick of a coarse file system -- is read again;
(d) the denylist (rotated-cas.json) is capped: a save past it is DENYLIST_FULL, nothing written."""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from client import configtool
from client import session as session_mod
from client.errors import RxClientError
from client.fhir import server as fhir_server
from client.network import load_network
from client.session import FOLLOW_IN_PROGRESS, Session
from node.crypto.canonical import block_header_hash
from node.crypto.signing import Verifier
from node.genesis import config_from_genesis, read_genesis
from tests.client.test_session_ca import Rotated, _health, _local, _rotation_block, rotated  # noqa: F401
from tests.client.test_session_proactive import _no_run_files, _plain_session, _Time
from tests.foundation.test_log_events import log_calls, problems

# ---------------------------------------------------------------- (a) a follow under way holds a call FOLLOW_WAIT_S at most


def test_a_call_waits_for_a_follow_under_way_only_so_long(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The home verified nothing (h01 pinned to its genesis CA A); h01's peer presents B -- a CA
    the pin lacks -- so the call's reactive follow runs. Another follow of the session holds the
    follow lock (the proactive one: up to 45 s with the orderers blackholed). The call waited for
    it on its own path, however long; it now fails FOLLOW_IN_PROGRESS after FOLLOW_WAIT_S."""
    (rotated.home / configtool.CHAIN_STATE).unlink()
    monkeypatch.setattr(session_mod, "FOLLOW_WAIT_S", 0.2)
    s = Session(rotated.home, "h01:dr-jiang", network=_local(load_network(rotated.home), {"h01": rotated.port}),
                follow_every_s=0)
    found: list[str] = []
    caller = threading.Thread(target=lambda: found.append(_health(s)), daemon=True)
    s._follow_lock.acquire()  # (the follow under way, for as long as the test holds it)
    try:
        caller.start()
        caller.join(30)  # (bounded: a call still waiting then is the failure)
        ended_while_held = not caller.is_alive()
    finally:
        s._follow_lock.release()
        caller.join(30)
        s.close()
    assert ended_while_held and found == [FOLLOW_IN_PROGRESS]


def test_the_wait_ends_at_once_when_the_follow_moved_the_pin(rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The follow under way re-pinned (here: the chain it verified saved, config-chain.json back)
    while the call waited: the call is retried on the new pin and served, no FOLLOW_IN_PROGRESS."""
    state = rotated.home / configtool.CHAIN_STATE
    saved = state.read_bytes()
    state.unlink()
    monkeypatch.setattr(session_mod, "FOLLOW_WAIT_S", 0.2)
    s = Session(rotated.home, "h01:dr-jiang", network=_local(load_network(rotated.home), {"h01": rotated.port}),
                follow_every_s=0)

    class _Busy:
        """The follow lock, held by a follow that saves the chain while the call waits for it."""

        waited: ClassVar[list[float]] = []

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            self.waited.append(timeout)
            state.write_bytes(saved)  # (what the follow under way saved)
            return False

        def locked(self) -> bool:
            return True

    s._follow_lock = _Busy()  # type: ignore[assignment]
    try:
        found = _health(s)
    finally:
        s.close()
    assert found == "OK" and _Busy.waited == [0.2]


# ---------------------------------------------------------------- (b) close() waits for a job any spawn runs


def test_close_waits_for_a_follow_a_custom_spawn_runs(rotated: Rotated, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Session(spawn=) runs the proactive follow on the caller's executor (a thread of its own
    here). close() joined only the default thread: it closed the gateway with the follow still
    running. It now tells it to stop and waits for it to end, whatever ran it."""
    caplog.set_level(logging.INFO, logger="client.session")
    _no_run_files(rotated.home)
    order: list[str] = []
    started = threading.Event()

    def blackholed(home: Path, net: Any, identity: Any, **kwargs: Any) -> configtool.ChainConfig:
        started.set()
        clock = kwargs["clock"]
        for _ in range(1000):  # (bounded: 10 s at most)
            if clock() == math.inf:
                order.append("follow ended")
                raise RxClientError("SERVICE_UNAVAILABLE", "the follow ran out of its time")
            threading.Event().wait(0.01)
        raise RxClientError("SERVICE_UNAVAILABLE", "never stopped")

    threads: list[threading.Thread] = []

    def executor(job: Any) -> None:
        thread = threading.Thread(target=job, daemon=True)
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(session_mod, "follow_current", blackholed)
    monkeypatch.setattr(session_mod, "CLOSE_GRACE_S", 0.0)
    s = _plain_session(rotated, _Time(), spawn=executor)
    gateway_close = s.gateway.close

    def closing() -> None:
        order.append("gateway closed")
        gateway_close()

    monkeypatch.setattr(s.gateway, "close", closing)
    try:
        assert _health(s) == "OK"
        assert started.wait(10)
    finally:
        s.close()
        for thread in threads:
            thread.join(10)
    assert order == ["follow ended", "gateway closed"]
    assert [r for r in caplog.records if "session_proactive_follow_failed" in r.getMessage()] == []


def test_a_job_a_spawn_has_not_started_is_not_waited_for_and_then_follows_nothing(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A spawn that queued the job (an executor busy): close() does not wait for it; run after,
    the job finds the session closed and follows nothing."""
    _no_run_files(rotated.home)
    followed: list[object] = []
    monkeypatch.setattr(session_mod, "follow_current", lambda *a, **kw: followed.append(kw))
    held: list[Any] = []
    s = _plain_session(rotated, _Time(), spawn=held.append)
    try:
        assert _health(s) == "OK"
    finally:
        s.close()
    (job,) = held
    job()
    assert followed == []


# ---------------------------------------------------------------- (c) a same-size rewrite in place


def _spoil_in_place(path: Path) -> None:
    """Rewrite ``path`` in place (its inode kept) with one hex digit of the genesis block's hash it
    names changed -- the same size, another network's chain now -- and its access and modification
    times put back."""
    st = path.stat()
    raw = bytearray(path.read_bytes())
    doc = json.loads(raw)
    at = raw.index(doc["genesis"].encode())
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, bytes(raw))
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def _session(rot: Rotated) -> Session:
    return Session(rot.home, "h01:dr-jiang", network=_local(load_network(rot.home), {"h01": rot.port}),
                   follow_every_s=0)


def test_a_same_size_rewrite_with_its_mtime_restored_is_read_again(rotated: Rotated) -> None:  # noqa: F811
    """config-chain.json rewritten in place with its size and modification time restored (``cp
    -p``, ``rsync -t``, ``touch -r``): (size, mtime, inode) was the same, and the session kept the
    chain -- and the pin -- of the file it replaced. The status-change time, which nothing sets
    back, is now part of the stamp: the file, verifying nothing now, is read again (the
    session holds what a new one would)."""
    s = _session(rotated)
    try:
        before = s._verified_config()
        assert before is not None and before.sequence == 1
        _spoil_in_place(rotated.home / configtool.CHAIN_STATE)
        assert s._verified_config() is None
    finally:
        s.close()


@pytest.mark.parametrize("fs_behind_s", [0, 3600], ids=["fs-clock-in-step", "fs-clock-an-hour-behind"])
def test_a_same_size_rewrite_within_one_tick_is_read_again(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch, fs_behind_s: int) -> None:  # noqa: F811
    """A file system of coarse timestamps (1 s, 2 s on FAT) gives two writes within one tick the
    same times, ctime too: played here by stamps whose times stay at one instant. Such a stamp is
    racy -- the content's digest is compared as well -- until the clock is RACY_S past it; then
    the digest is dropped and the file is no longer read. Also when the file system's clock is
    behind this host's by more than RACY_S (an NFS server's): its file times looked old at once,
    the stamp was never racy, and a same-size rewrite within its tick kept the old chain -- and
    pin -- for good (review19); a stamp is racy for RACY_S after the session first saw it."""
    tick = 1_800_000_000 * 10**9
    clock = {"fs": tick + fs_behind_s * 10**9, "seen": tick + fs_behind_s * 10**9}
    monkeypatch.setattr(session_mod, "_fs_clock_ns", lambda: clock["fs"])
    monkeypatch.setattr(session_mod, "_seen_clock_ns", lambda: clock["seen"])
    real_stamp = session_mod._file_stamp

    def coarse(path: Path) -> Any:
        found = real_stamp(path)
        return None if found is None else (found[0], tick, found[2], tick)

    monkeypatch.setattr(session_mod, "_file_stamp", coarse)
    s = _session(rotated)
    try:
        before = s._verified_config()
        assert before is not None and before.sequence == 1
        _spoil_in_place(rotated.home / configtool.CHAIN_STATE)
        assert s._verified_config() is None
        # the stamp no longer racy: compared once more, then never read for it
        for which in clock:
            clock[which] += round((session_mod.RACY_S + 1) * 1e9)
        reads: list[Path] = []
        real_digest = session_mod._content_digest

        def counted(p: Path) -> bytes:
            reads.append(p)
            return real_digest(p)

        monkeypatch.setattr(session_mod, "_content_digest", counted)
        assert s._verified_config() is None and len(reads) == 1
        assert s._verified_config() is None and len(reads) == 1
    finally:
        s.close()


def test_a_denylist_rewritten_in_place_within_one_tick_is_read_again(
        rotated: Rotated, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """rotated-cas.json likewise: a denylist naming B (the CA h01's peer is pinned to) rewritten in
    place, the same size and times, to name another CA -- B no longer refused."""
    now = 1_800_000_000 * 10**9
    monkeypatch.setattr(session_mod, "_fs_clock_ns", lambda: now)
    real_stamp = session_mod._file_stamp
    monkeypatch.setattr(session_mod, "_file_stamp",
                        lambda p: None if (f := real_stamp(p)) is None else (f[0], now, f[2], now))
    monkeypatch.setattr(session_mod, "_stamp_of", lambda st: (st.st_size, now, st.st_ino, now))
    genesis = read_genesis(rotated.home / "genesis.block")
    path = rotated.home / configtool.CA_DENYLIST
    b = configtool.ca_fingerprint(rotated.ca_der)
    s = _session(rotated)
    try:
        assert _health(s) == "OK"
        path.unlink(missing_ok=True)
        configtool.add_to_denylist(path, block_header_hash(genesis.header), {b: "h01"})
        assert _health(s) == configtool.CA_ROTATED_AWAY
        raw, st = path.read_bytes(), path.stat()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, raw.replace(b.encode(), ("f" * 64).encode()))
        finally:
            os.close(fd)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert _health(s) == "OK"
    finally:
        s.close()


# ---------------------------------------------------------------- (d) the denylist is capped


def _fps(n: int, start: int = 0) -> dict[str, str]:
    return {f"{i:064x}": "h01" for i in range(start, start + n)}


def test_the_denylist_is_capped_and_full_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that would name more than MAX_DENYLIST_ENTRIES CAs is DENYLIST_FULL, the file as it
    was; what it holds already, or fewer, is saved as before. (Uncapped, it grew until it passed
    the size it is read to, and every session and follow of the home failed BAD_CONFIG.)"""
    monkeypatch.setattr(configtool, "MAX_DENYLIST_ENTRIES", 3)
    path, genesis = tmp_path / configtool.CA_DENYLIST, b"\x01" * 32
    configtool.add_to_denylist(path, genesis, _fps(3))
    raw = path.read_bytes()
    with pytest.raises(RxClientError) as e:
        configtool.add_to_denylist(path, genesis, _fps(1, start=3))
    assert e.value.reason == configtool.DENYLIST_FULL and "4 CAs" in e.value.message
    assert path.read_bytes() == raw
    configtool.add_to_denylist(path, genesis, _fps(2))  # (held already: nothing to write)
    configtool.add_to_denylist(path, genesis, _fps(1, start=3), reinstated=frozenset(_fps(1)))  # (one out, one in)
    assert set(configtool.read_denylist(path, genesis)) == set(_fps(3, start=1))


def test_the_denylist_is_never_written_past_the_size_it_is_read_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configtool, "MAX_DENYLIST_BYTES", 600)
    path, genesis = tmp_path / configtool.CA_DENYLIST, b"\x01" * 32
    configtool.add_to_denylist(path, genesis, _fps(2))
    with pytest.raises(RxClientError) as e:
        configtool.add_to_denylist(path, genesis, _fps(5, start=2))
    assert e.value.reason == configtool.DENYLIST_FULL
    assert set(configtool.read_denylist(path, genesis)) == set(_fps(2))


def test_a_full_denylist_still_saves_the_chain_and_says_so(rotated: Rotated, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A full denylist adds nothing, but the chain is saved all the same (review19): left unsaved,
    config-chain.json stayed at the genesis config and every session of the home started after
    pinned h01's peer to the CA the chain rotated away from -- a peer presenting a certificate of
    that CA (its key leaked) was trusted again until the session's own follow, if any. The save logs
    ca_denylist_full DENYLIST_FULL."""
    caplog.set_level(logging.WARNING, logger="client.configtool")
    monkeypatch.setattr(configtool, "MAX_DENYLIST_ENTRIES", 0)
    state = rotated.home / configtool.CHAIN_STATE
    genesis = read_genesis(rotated.home / "genesis.block")
    state.unlink()
    (rotated.home / configtool.CA_DENYLIST).unlink(missing_ok=True)
    old_fp = configtool.ca_fingerprint(next(o for o in config_from_genesis(genesis).organizations
                                            if o.id == "h01").ca_cert_der)
    chain = configtool.ChainConfig(genesis, Verifier(), state)
    chain.feed(genesis)
    chain.feed(_rotation_block(rotated.home, genesis, rotated.ca_der))
    assert old_fp in chain.rotated_away
    chain.save()
    assert configtool.saved_height(state, block_header_hash(genesis.header)) == 2
    assert not (rotated.home / configtool.CA_DENYLIST).exists()
    s = _session(rotated)
    try:
        assert s._pin_fp == configtool.ca_fingerprint(rotated.ca_der) != old_fp
        assert _health(s) == "OK"
    finally:
        s.close()
    (record,) = [r for r in caplog.records if "event=ca_denylist_full" in r.msg]
    assert isinstance(record.args, tuple) and record.args[0] == configtool.DENYLIST_FULL


def test_a_full_denylist_still_drops_a_ca_put_back_in_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save both putting a denied CA back in force and adding more than the cap allows: the CA put
    back was kept denied with the rest (nothing written), so the CA in force stayed refused
    CA_ROTATED_AWAY by every session of the home for good. It is dropped; the others are not added
    (DENYLIST_FULL)."""
    monkeypatch.setattr(configtool, "MAX_DENYLIST_ENTRIES", 2)
    path, genesis = tmp_path / configtool.CA_DENYLIST, b"\x01" * 32
    configtool.add_to_denylist(path, genesis, _fps(2))
    back = next(iter(_fps(1)))
    with pytest.raises(RxClientError) as e:
        configtool.add_to_denylist(path, genesis, _fps(2, start=2), reinstated=frozenset({back}))
    assert e.value.reason == configtool.DENYLIST_FULL
    assert set(configtool.read_denylist(path, genesis)) == set(_fps(1, start=1))


def test_the_new_event_and_reason_codes_are_well_formed_and_documented() -> None:
    """ca_denylist_full is an event (the project's shape) listed in client/README.md; the
    FHIR gateway answers FOLLOW_IN_PROGRESS 503 (retry), as the README's table says."""
    calls = log_calls(Path(configtool.__file__).read_text())
    assert [p for c in calls for p in problems(c)] == []
    assert any("event=ca_denylist_full" in str(c.args[0].value) for c in calls
               if isinstance(c.args[0], ast.Constant))
    readme = (Path(configtool.__file__).parent / "README.md").read_text()
    assert "`ca_denylist_full`" in readme
    assert "| 503 | `FOLLOW_IN_PROGRESS` |" in readme and f"`{configtool.DENYLIST_FULL}`" in readme
    assert fhir_server._STATUS[FOLLOW_IN_PROGRESS] == 503
