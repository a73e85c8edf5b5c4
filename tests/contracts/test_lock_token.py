"""Lock tokens: ``lock`` records its transaction as the lock's token (``lock_id``), and
``release(lock_id=...)`` drops that lock only -- never a lock the same pharmacy took again
since (another call's); ``release`` without a token keeps freeing whatever lock the
pharmacy holds (operators), and a lock written before tokens existed is freed that way only."""

from __future__ import annotations

from typing import Any

from node.sandbox import canonical
from tests.contracts.chain import DAY_MS, who
from tests.contracts.flows import CHEN, COURIER, WANG, approved, dispense
from tests.contracts.rxclient import World
from tests.contracts.test_lifecycle import LI, register_li


def _lock(world: World, pharmacist: Any, rx: str) -> str:
    out = world.chain.submit("prescription", "lock", pharmacist, rx_id=rx).unwrap()
    assert isinstance(out["lock_id"], str) and len(out["lock_id"]) == 64
    return str(out["lock_id"])


def _release(world: World, pharmacist: Any, rx: str, **args: Any) -> tuple[str, str]:
    out = world.chain.submit("prescription", "release", pharmacist, rx_id=rx, **args)
    return ("OK" if out.ok else out.reason), out.message


def _held(world: World, rx: str) -> Any:
    return world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["lock"]


def test_lock_returns_its_transaction_as_token_and_release_with_it_works(world: World) -> None:
    rx = approved(world).args["rx_id"]
    out = world.chain.submit("prescription", "lock", WANG, rx_id=rx)
    lock_id = out.unwrap()["lock_id"]
    assert lock_id == out.tx_id
    assert _held(world, rx) == {"org": "p01", "by": "pharm-wang", "time_ms": world.chain.now, "tx_id": out.tx_id}
    register_li(world)
    # any pharmacist of the holding pharmacy may release it with its token (not only the taker)
    assert _release(world, LI, rx, lock_id=lock_id)[0] == "OK"
    rec = world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()
    assert (rec["lock"], rec["status"]) == (None, "APPROVED")
    assert _release(world, WANG, rx, lock_id=lock_id)[0] == "NOT_LOCKED"


def test_the_trace_names_the_lock_each_release_dropped(world: World) -> None:
    """Which lock a release dropped (a call's own by token, or an operator's release of
    whatever lock the pharmacy held) is in the trace, next to the lock step that took it."""
    register_li(world)
    rx = approved(world).args["rx_id"]
    first = _lock(world, WANG, rx)
    assert _release(world, WANG, rx, lock_id=first)[0] == "OK"
    second = _lock(world, LI, rx)
    assert _release(world, WANG, rx)[0] == "OK"  # no token: an operator freeing it
    steps = world.chain.query("prescription", "trace", WANG, rx_id=rx).unwrap()["steps"]
    locks = [(s["tx_id"], s["detail"]) for s in steps if s["step"] in ("lock", "release")]
    assert [(tx, d.get("lock_id")) for tx, d in locks] == [(first, None), (locks[1][0], first), (second, None),
                                                          (locks[3][0], second)]


def test_a_stale_token_never_drops_the_lock_taken_since(world: World) -> None:
    """Call A locks; its lock is released and the same pharmacy locks again (call B): A's
    token is refused and B's lock stays, untouched (no write at all)."""
    register_li(world)
    rx = approved(world).args["rx_id"]
    first = _lock(world, WANG, rx)
    assert _release(world, WANG, rx)[0] == "OK"
    second = _lock(world, LI, rx)
    assert second != first
    before = world.chain.state.versions[("prescription", "rx/" + rx)][-1]
    reason, message = _release(world, WANG, rx, lock_id=first)
    assert reason == "ALREADY_LOCKED" and "another lock" in message, message
    assert world.chain.state.versions[("prescription", "rx/" + rx)][-1] == before
    assert _held(world, rx)["tx_id"] == second
    assert _release(world, LI, rx, lock_id=second)[0] == "OK"
    assert _held(world, rx) is None


def test_a_token_of_another_prescription_or_another_pharmacy_is_refused(world: World) -> None:
    rx1 = approved(world).args["rx_id"]
    rx2 = approved(world).args["rx_id"]
    one = _lock(world, WANG, rx1)
    two = _lock(world, WANG, rx2)
    assert _release(world, WANG, rx1, lock_id=two)[0] == "ALREADY_LOCKED"
    assert _release(world, WANG, rx2, lock_id=one)[0] == "ALREADY_LOCKED"
    # the token is no key for another organisation: the lock holder's org is checked first
    assert _release(world, CHEN, rx1, lock_id=one)[0] == "ALREADY_LOCKED"
    assert _release(world, COURIER, rx1, lock_id=one)[0] == "WRONG_ROLE"
    assert _release(world, who("p01:pharm-x:pharmacist"), rx1, lock_id=one)[0] == "UNAUTHORIZED"
    assert _held(world, rx1)["tx_id"] == one and _held(world, rx2)["tx_id"] == two
    assert _release(world, WANG, rx1, lock_id=one)[0] == "OK"
    assert _release(world, WANG, rx2, lock_id=two)[0] == "OK"


def test_without_a_token_the_pharmacy_frees_whatever_lock_it_holds(world: World) -> None:
    register_li(world)
    rx = approved(world).args["rx_id"]
    _lock(world, WANG, rx)
    assert _release(world, CHEN, rx)[0] == "ALREADY_LOCKED"
    assert _release(world, LI, rx)[0] == "OK"
    assert _release(world, LI, rx, lock_id="")[0] == "NOT_LOCKED"  # "" = no token
    _lock(world, WANG, rx)
    assert _release(world, LI, rx, lock_id="")[0] == "OK"


def test_malformed_tokens_are_bad_arguments_and_change_nothing(world: World) -> None:
    rx = approved(world).args["rx_id"]
    lock_id = _lock(world, WANG, rx)
    before = dict(world.chain.state.values)
    for bad in (lock_id.upper(), lock_id[:-1], lock_id + "0", "x" * 64, " " + lock_id[1:], "0"):
        assert _release(world, WANG, rx, lock_id=bad)[0] == "BAD_ARGUMENTS", bad
    for wrong_type in (None, 7, True, [lock_id], {"tx_id": lock_id}):
        assert _release(world, WANG, rx, lock_id=wrong_type)[0] == "BAD_ARGUMENTS", wrong_type
    assert world.chain.submit("prescription", "release", WANG, rx_id=rx, lock_id=lock_id,
                              lock="x").reason == "BAD_ARGUMENTS"
    assert world.chain.state.values == before
    assert _release(world, WANG, rx, lock_id=lock_id)[0] == "OK"


def test_a_lock_taken_before_tokens_is_released_only_without_one(world: World) -> None:
    """State written by the previous release: ``rx.lock`` without ``tx_id``. No token can
    name it (not even the transaction that took it); a release without one frees it."""
    register_li(world)
    rx = approved(world).args["rx_id"]
    taken = _lock(world, WANG, rx)
    nk = ("prescription", "rx/" + rx)
    rec = canonical.decode(world.chain.state.values[nk], "rx")
    del rec["lock"]["tx_id"]
    world.chain.state.values[nk] = canonical.dumps(rec)
    assert "tx_id" not in _held(world, rx)
    reason, message = _release(world, WANG, rx, lock_id=taken)
    assert reason == "ALREADY_LOCKED" and "without lock_id" in message, message
    assert _held(world, rx) == rec["lock"]
    # a release without a token frees it, as before
    assert _release(world, LI, rx)[0] == "OK"
    assert _held(world, rx) is None


def test_the_dispense_clears_the_token_so_it_never_releases_the_next_fill(world: World) -> None:
    """A repeat prescription: fill 1 dispensed under call A's lock, fill 2 locked by call B:
    A's token (its lock is gone with fill 1) is refused and B's lock stays."""
    register_li(world)
    prep = approved(world, max_fills=2, fill_interval_days=28, long_rx=True, days=28,
                    chronic_reason="stable hypertension", stability_assessment="stable 6 months",
                    patient_confirmed=True)
    rx = prep.args["rx_id"]
    a = _lock(world, WANG, rx)
    assert dispense(world, prep, pharmacist=LI).unwrap()["fill"] == 1
    assert _held(world, rx) is None
    assert _release(world, WANG, rx, lock_id=a)[0] == "NOT_LOCKED"
    world.chain.advance(28 * DAY_MS)
    b = _lock(world, LI, rx)
    assert _release(world, WANG, rx, lock_id=a)[0] == "ALREADY_LOCKED"
    assert _held(world, rx)["tx_id"] == b
    assert dispense(world, prep, pharmacist=LI).unwrap()["fill"] == 2


def test_a_release_endorsed_before_the_lock_changed_hands_does_not_commit(world: World) -> None:
    """The token is checked on the endorsement's snapshot: call A's release (its own lock,
    right token) endorsed, then the lock changes hands (an operator's release, call B's lock)
    before it commits. The release read and writes ``rx/{rx_id}``, so MVCC refuses it and
    B's lock stays."""
    register_li(world)
    rx = approved(world).args["rx_id"]
    chain = world.chain
    a = _lock(world, WANG, rx)
    outcome, sim, ts = chain.simulate("prescription", "release", WANG, rx_id=rx, lock_id=a)
    assert outcome.ok
    assert _release(world, LI, rx)[0] == "OK"
    b = _lock(world, LI, rx)
    assert chain.commit_validated(outcome, sim, ts) == "MVCC_READ_CONFLICT"
    assert _held(world, rx)["tx_id"] == b
