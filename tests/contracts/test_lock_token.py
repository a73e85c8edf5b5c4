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


def _repeat(world: World) -> Any:
    """An approved repeat prescription (2 fills, 28 days apart); pharm-li registered."""
    register_li(world)
    return approved(world, max_fills=2, fill_interval_days=28, long_rx=True, days=28,
                    chronic_reason="stable hypertension", stability_assessment="stable 6 months",
                    patient_confirmed=True)


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
    prep = _repeat(world)
    rx = prep.args["rx_id"]
    a = _lock(world, WANG, rx)
    assert dispense(world, prep, pharmacist=LI).unwrap()["fill"] == 1
    assert _held(world, rx) is None
    assert _release(world, WANG, rx, lock_id=a)[0] == "NOT_LOCKED"
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
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


# ---------------------------------------------------------------- dispense under a named lock


def _dispense(world: World, prep: Any, pharmacist: Any = WANG, codes: list[str] | None = None,
              **args: Any) -> tuple[str, str]:
    out = dispense(world, prep, pharmacist, codes, **args)
    return ("OK" if out.ok else out.reason), out.message


def test_a_dispense_with_its_token_runs_under_that_lock_and_the_trace_names_it(world: World) -> None:
    register_li(world)
    prep = approved(world)
    rx = prep.args["rx_id"]
    token = _lock(world, WANG, rx)
    # any pharmacist of the holding pharmacy, naming the lock
    out = dispense(world, prep, LI, lock_id=token).unwrap()
    assert out["fill"] == 1 and _held(world, rx) is None
    steps = world.chain.query("prescription", "trace", WANG, rx_id=rx).unwrap()["steps"]
    assert [s["detail"].get("lock_id") for s in steps if s["step"] == "dispense"] == [token]
    # without a token the dispense names whatever lock it ran under, too
    other = approved(world)
    held = _lock(world, LI, other.args["rx_id"])
    dispense(world, other).unwrap()
    steps = world.chain.query("prescription", "trace", WANG, rx_id=other.args["rx_id"]).unwrap()["steps"]
    assert [s["detail"]["lock_id"] for s in steps if s["step"] == "dispense"] == [held]


def test_a_stalled_call_never_dispenses_the_next_fill_under_another_calls_lock(world: World) -> None:
    """The residual lock tokens left: call A locks fill 1 and stalls; call B of the same
    pharmacy dispenses fill 1 under A's lock and, 28 days on, locks fill 2. A's dispense --
    fresh boxes, nothing reused -- used to dispense fill 2 under B's lock; naming its lock it
    is refused ALREADY_LOCKED, writes nothing, and B dispenses fill 2."""
    prep = _repeat(world)
    rx = prep.args["rx_id"]
    a = _lock(world, WANG, rx)
    assert dispense(world, prep, LI, ["81234560000000000101"], lock_id=a).unwrap()["fill"] == 1
    world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
    world.chain.advance(28 * DAY_MS)
    b = _lock(world, LI, rx)
    before = dict(world.chain.state.values)
    reason, message = _dispense(world, prep, WANG, ["81234560000000000102"], lock_id=a)
    assert reason == "ALREADY_LOCKED" and "not lock " + a in message, message
    assert world.chain.state.values == before
    assert _held(world, rx)["tx_id"] == b
    assert dispense(world, prep, LI, ["81234560000000000103"], lock_id=b).unwrap()["fill"] == 2


def test_a_dispense_token_is_checked_after_the_lock_holder_and_before_the_content(world: World) -> None:
    """Rule order: token shape (BAD_ARGUMENTS) first; another pharmacy's lock answers as
    before (ALREADY_LOCKED "locked by"); NOT_LOCKED without a lock; a lock from before tokens
    is named by no token; then the content (a wrong salt is not reached)."""
    register_li(world)
    prep = approved(world)
    rx = prep.args["rx_id"]
    for bad in ("AB" * 32, "ab" * 31, "x" * 64, 7, None):
        assert _dispense(world, prep, lock_id=bad)[0] == "BAD_ARGUMENTS", bad
    assert _dispense(world, prep, lock_id="ab" * 32)[0] == "NOT_LOCKED"
    token = _lock(world, WANG, rx)
    reason, message = _dispense(world, prep, CHEN, lock_id=token)
    assert reason == "ALREADY_LOCKED" and "locked by p01" in message, message
    # a token of another prescription's lock
    other = approved(world)
    other_token = _lock(world, WANG, other.args["rx_id"])
    assert _dispense(world, prep, lock_id=other_token)[0] == "ALREADY_LOCKED"
    # a lock written by the previous release (no tx_id): no token names it
    nk = ("prescription", "rx/" + rx)
    rec = canonical.decode(world.chain.state.values[nk], "rx")
    del rec["lock"]["tx_id"]
    world.chain.state.values[nk] = canonical.dumps(rec)
    before = dict(world.chain.state.values)
    reason, message = _dispense(world, prep, lock_id=token)
    assert reason == "ALREADY_LOCKED" and "dispense it without lock_id" in message, message
    assert world.chain.state.values == before
    out = dispense(world, prep).unwrap()  # without a token, as before
    assert out["fill"] == 1
    steps = world.chain.query("prescription", "trace", WANG, rx_id=rx).unwrap()["steps"]
    assert [s["detail"]["lock_id"] for s in steps if s["step"] == "dispense"] == [""]
