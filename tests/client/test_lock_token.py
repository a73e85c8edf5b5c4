"""``RxOperations.dispense`` releases, after a refused dispense, only the lock it took itself
(its token, ``lock_id``): two calls of the same pharmacy (two pharmacists, a FHIR gateway
retry beside a new call) interleave, and the refused one must never drop the lock the other
one holds. Run over the real prescription contract in the sandbox of tests/contracts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from client.errors import EndorsementError, RxClientError
from client.gateway import SubmitResult
from client.rxops import RxOperations
from tests.client.contractgw import ContractGateway
from tests.contracts.chain import DAY_MS, Who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import COURIER, WANG, approved, dispense, lock_and_dispense
from tests.contracts.rxclient import Prepared, World, trace_key
from tests.contracts.test_lifecycle import LI, register_li

REPEAT: dict[str, Any] = {"max_fills": 2, "fill_interval_days": 28, "long_rx": True, "days": 28,
                          "chronic_reason": "stable hypertension",
                          "stability_assessment": "stable 6 months", "patient_confirmed": True}


def _ops(w: World, caller: Who, prep: Prepared, before: dict[str, Callable[[], None]] | None = None,
         ) -> tuple[RxOperations, ContractGateway]:
    gw = ContractGateway(w, caller, before)
    peers = [SimpleNamespace(org=o) for o in ("h01", "p01")]
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=gw, identity=SimpleNamespace(org=caller.org, user=caller.name, role=caller.role),
        net=SimpleNamespace(peers=peers), trace_key=trace_key()))
    ops._get_key = lambda rx_id: SimpleNamespace(body=prep.content, salt=prep.salt)  # type: ignore[method-assign,assignment,return-value]
    return ops, gw


def _lock(w: World, rx: str) -> Any:
    return w.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["lock"]


def _repeat_locked(w: World) -> tuple[Prepared, str, RxOperations, str]:
    """A repeat prescription (2 fills, 28 days apart) whose fill 1 pharm-wang's call locked:
    (prepared, rx id, that call's operations, its lock's token); pharm-li registered."""
    register_li(w)
    prep = approved(w, **REPEAT)
    rx = prep.args["rx_id"]
    ops, _ = _ops(w, WANG, prep)
    return prep, rx, ops, ops.lock(rx)["lock_id"]


def _relocked(w: World) -> tuple[Prepared, str, RxOperations, ContractGateway, str, str]:
    """A prescription pharm-li's call locked (token ``first``), released, and locked again
    (``second``): (prepared, rx id, that call's operations and gateway, first, second)."""
    register_li(w)
    prep = approved(w)
    rx = prep.args["rx_id"]
    ops, gw = _ops(w, LI, prep)
    first = ops.lock(rx)["lock_id"]
    ops.release(rx, first)
    return prep, rx, ops, gw, first, ops.lock(rx)["lock_id"]


def _fill_goes_out(w: World, prep: Prepared, token: str, codes: list[str]) -> None:
    """Pharm-wang dispenses the next fill under lock ``token``, p01's courier hands it over;
    the fill interval passes."""
    dispense(w, prep, WANG, codes, lock_id=token).unwrap()
    w.chain.submit("prescription", "deliver", COURIER, rx_id=prep.args["rx_id"]).unwrap()
    w.chain.advance(28 * DAY_MS)


def test_a_refused_dispense_never_drops_the_lock_another_call_took_since(world: World) -> None:  # noqa: F811
    """Call A (pharm-wang) locks; before its dispense the lock is freed (an operator's release
    without token) and call B (pharm-li, same pharmacy) locks. A's dispense runs under B's lock
    and is refused (its box was used already); A's best-effort release must not drop B's lock:
    B then dispenses. (It did: B's dispense answered NOT_LOCKED.)"""
    register_li(world)
    used = approved(world)
    lock_and_dispense(world, used, trace_codes=["81234560000000000091"]).unwrap()
    prep = approved(world)
    rx = prep.args["rx_id"]
    ops_b, gw_b = _ops(world, LI, prep)
    taken: dict[str, Any] = {}

    def operator_then_b() -> None:
        ops_b.release(rx)  # no token: whatever lock p01 holds (A's)
        taken.update(ops_b.lock(rx))

    ops_a, gw_a = _ops(world, WANG, prep, {"dispense": operator_then_b})
    with pytest.raises(RxClientError) as refused:
        ops_a.dispense(rx, ["81234560000000000091"])
    # A names its own lock: refused before its boxes are looked at (B's lock is not A's)
    assert refused.value.reason == "ALREADY_LOCKED" and "another lock" in refused.value.message
    a_lock = gw_a.calls[0]
    assert a_lock[0] == "lock" and a_lock[2] == "OK"
    assert gw_a.calls[1][0] == "dispense" and gw_a.calls[1][1]["lock_id"] == gw_a.calls[-1][1]["lock_id"]
    assert gw_a.calls[-1][0] == "release" and gw_a.calls[-1][2] == "ALREADY_LOCKED", gw_a.calls
    assert gw_a.calls[-1][1]["lock_id"] != taken["lock_id"]
    held = _lock(world, rx)
    assert held is not None and held["tx_id"] == taken["lock_id"] and held["by"] == "pharm-li"
    out = ops_b.dispense(rx, ["81234560000000000092"])
    assert out["fill"] == 1 and "lock_block" not in out  # dispensed under its own lock
    assert [c[0] for c in gw_b.calls] == ["release", "lock", "lock", "dispense"]


def test_a_call_that_dispensed_under_a_lock_keeps_the_next_fills_lock(world: World) -> None:  # noqa: F811
    """A repeat prescription. Call A locks fill 1 and stalls; call B of the same pharmacy
    finds the lock its pharmacy's and dispenses fill 1 under it, and 28 days on locks fill 2.
    A's dispense -- fresh boxes, nothing reused -- names A's lock and is refused
    ALREADY_LOCKED (it used to dispense fill 2 under B's lock); its release must leave B's
    lock of fill 2."""
    register_li(world)
    prep = approved(world, **REPEAT)
    rx = prep.args["rx_id"]
    ops_b, gw_b = _ops(world, LI, prep)
    taken: dict[str, Any] = {}

    def b_dispenses_and_locks_again() -> None:
        assert ops_b.dispense(rx, ["81234560000000000093"])["fill"] == 1  # under A's lock
        world.chain.submit("prescription", "deliver", COURIER, rx_id=rx).unwrap()
        world.chain.advance(28 * DAY_MS)
        taken.update(ops_b.lock(rx))

    ops_a, gw_a = _ops(world, WANG, prep, {"dispense": b_dispenses_and_locks_again})
    with pytest.raises(RxClientError) as refused:
        ops_a.dispense(rx, ["81234560000000000090"])
    assert refused.value.reason == "ALREADY_LOCKED"
    assert gw_a.calls[-1][0] == "release" and gw_a.calls[-1][2] == "ALREADY_LOCKED", gw_a.calls
    held = _lock(world, rx)
    assert held is not None and held["tx_id"] == taken["lock_id"]
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 1
    # B dispensed fill 1 under A's lock naming it (the token it found held)
    steps = world.chain.query("prescription", "trace", WANG, rx_id=rx).unwrap()["steps"]
    a_token = next(st["tx_id"] for st in steps if st["step"] == "lock")
    assert gw_b.calls[1][0] == "dispense" and gw_b.calls[1][1]["lock_id"] == a_token
    assert ops_b.dispense(rx, ["81234560000000000094"])["fill"] == 2
    assert [c[0] for c in gw_b.calls] == ["lock", "dispense", "lock", "lock", "dispense"]


def test_a_call_whose_borrowed_lock_was_released_locks_and_dispenses(world: World) -> None:  # noqa: F811
    """The interleaving the other way round: call A locks; call B finds its pharmacy holding
    the lock and dispenses under it; A's dispense is refused first and A releases its own lock
    (rightly: it took it). B's dispense is refused NOT_LOCKED -- nothing written -- so B takes
    a lock of its own and dispenses (it used to answer NOT_LOCKED: the FHIR gateway's 409)."""
    register_li(world)
    used = approved(world)
    lock_and_dispense(world, used, trace_codes=["81234560000000000096"]).unwrap()
    prep = approved(world)
    rx = prep.args["rx_id"]
    ops_a, _ = _ops(world, WANG, prep)
    refused: list[str] = []

    def a_is_refused() -> None:
        with pytest.raises(RxClientError) as exc:
            ops_a.dispense(rx, ["81234560000000000096"], auto_lock=False)
        refused.append(exc.value.reason)
        ops_a.release(rx, a_lock["lock_id"])

    a_lock = ops_a.lock(rx)
    ops_b, gw_b = _ops(world, LI, prep, {"dispense": a_is_refused})
    out = ops_b.dispense(rx, ["81234560000000000097"])
    assert refused == ["TRACE_CODE_REUSED"] and out["fill"] == 1 and "lock_block" in out
    assert [(c[0], c[2]) for c in gw_b.calls] == [("lock", "ALREADY_LOCKED"), ("dispense", "NOT_LOCKED"),
                                                  ("lock", "OK"), ("dispense", "OK")]
    assert _lock(world, rx) is None
    # without auto_lock nothing is taken: the refusal stands
    again = approved(world)
    ops_c, gw_c = _ops(world, LI, again)
    with pytest.raises(RxClientError) as exc:
        ops_c.dispense(again.args["rx_id"], [], auto_lock=False)
    assert exc.value.reason == "NOT_LOCKED" and [c[0] for c in gw_c.calls] == ["dispense"]


def test_the_dispense_once_more_is_bounded_and_its_last_refusal_stands(world: World) -> None:  # noqa: F811
    """Call B borrows the pharmacy's lock twice over and each time finds it released before
    its dispense: the second NOT_LOCKED is the answer (two dispenses, no third), B releases
    nothing it did not take, and nothing was dispensed."""
    register_li(world)
    prep = approved(world)
    rx = prep.args["rx_id"]
    ops_c, _ = _ops(world, WANG, prep)
    held: dict[str, Any] = dict(ops_c.lock(rx))

    def c_releases() -> None:
        ops_c.release(rx, held["lock_id"])

    def c_releases_then_relocks_before_bs_next_lock() -> None:
        c_releases()
        gw_b.before["lock"] = c_relocks

    def c_relocks() -> None:
        held.update(ops_c.lock(rx))
        gw_b.before["dispense"] = c_releases

    ops_b, gw_b = _ops(world, LI, prep, {"dispense": c_releases_then_relocks_before_bs_next_lock})
    with pytest.raises(RxClientError) as refused:
        ops_b.dispense(rx, ["81234560000000000098"])
    assert refused.value.reason == "NOT_LOCKED"
    assert [(c[0], c[2]) for c in gw_b.calls] == [("lock", "ALREADY_LOCKED"), ("dispense", "NOT_LOCKED"),
                                                  ("lock", "ALREADY_LOCKED"), ("dispense", "NOT_LOCKED")]
    assert _lock(world, rx) is None
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 0


def test_a_call_whose_own_lock_was_freed_is_refused_not_locked_again(world: World) -> None:  # noqa: F811
    """The once-more is for a borrowed lock only: a call whose own lock an operator freed
    (release without token) meanwhile answers NOT_LOCKED -- it neither locks again nor
    dispenses, and its token release changes nothing."""
    register_li(world)
    prep = approved(world)
    rx = prep.args["rx_id"]
    ops_c, _ = _ops(world, WANG, prep)

    def operator_frees_it() -> None:
        ops_c.release(rx)  # no token: whatever lock p01 holds (B's)

    ops_b, gw_b = _ops(world, LI, prep, {"dispense": operator_frees_it})
    with pytest.raises(RxClientError) as refused:
        ops_b.dispense(rx, ["81234560000000000099"])
    assert refused.value.reason == "NOT_LOCKED"
    assert [(c[0], c[2]) for c in gw_b.calls] == [("lock", "OK"), ("dispense", "NOT_LOCKED"),
                                                  ("release", "NOT_LOCKED")]
    assert _lock(world, rx) is None
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 0


def test_a_refused_dispense_still_releases_its_own_lock(world: World) -> None:  # noqa: F811
    """Nobody interleaves: the lock the call took is released with its token, as before."""
    used = approved(world)
    lock_and_dispense(world, used, trace_codes=["81234560000000000095"]).unwrap()
    prep = approved(world)
    rx = prep.args["rx_id"]
    ops, gw = _ops(world, WANG, prep)
    with pytest.raises(RxClientError) as refused:
        ops.dispense(rx, ["81234560000000000095"])
    assert refused.value.reason == "TRACE_CODE_REUSED"
    lock_tx = gw.calls[0]
    assert [c[0] for c in gw.calls] == ["lock", "dispense", "release"]
    assert gw.calls[-1][2] == "OK" and len(gw.calls[-1][1]["lock_id"]) == 64
    assert _lock(world, rx) is None and lock_tx[2] == "OK"
    # a lock it did not take (the pharmacy's, e.g. taken with ``rx lock``) is never released
    taken = ops.lock(rx)
    with pytest.raises(RxClientError):
        ops.dispense(rx, ["81234560000000000095"])
    assert [c[0] for c in gw.calls[-3:]] == ["lock", "lock", "dispense"]
    assert _lock(world, rx)["tx_id"] == taken["lock_id"]
    # the operator's release names no token: it frees that lock
    ops.release(rx)
    assert _lock(world, rx) is None


@pytest.mark.parametrize(("result", "sent"), [
    ({"rx_id": "RX1", "status": "LOCKED", "fill": 1, "lock_id": "ab" * 32}, {"rx_id": "RX1", "lock_id": "ab" * 32}),
    # a contract from before lock tokens returns none (and would refuse an unknown argument)
    ({"rx_id": "RX1", "status": "LOCKED", "fill": 1}, {"rx_id": "RX1"}),
])
def test_the_release_names_the_token_the_lock_returned(result: dict[str, Any], sent: dict[str, Any]) -> None:
    calls: list[tuple[str, Any]] = []

    class Gw:
        def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
            return {"pharmacy": "p01", "hospital": "h01", "lock": None}

        def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
                   endorsing_orgs: Any = None) -> SubmitResult:
            calls.append((fn, args))
            if fn == "dispense":
                raise EndorsementError("TRACE_CODE_REUSED", "trace code #1 was already used")
            return SubmitResult("cd" * 32, "VALID", 3, result if fn == "lock" else {"rx_id": "RX1"})

    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=Gw(), identity=SimpleNamespace(org="p01", role="pharmacist"),
        net=SimpleNamespace(peers=[SimpleNamespace(org="p01")]), trace_key=trace_key()))
    ops._get_key = lambda rx_id: SimpleNamespace(body={}, salt="00")  # type: ignore[method-assign,assignment,return-value]
    with pytest.raises(RxClientError):
        ops.dispense("RX1", ["TC-1"])
    assert calls[-1] == ("release", sent)
    calls.clear()
    ops.release("RX1")
    ops.release("RX1", "ef" * 32)
    assert calls == [("release", {"rx_id": "RX1"}), ("release", {"rx_id": "RX1", "lock_id": "ef" * 32})]


def test_cli_release_passes_the_lock_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rx release RX --lock-id ID`` releases only that lock; a malformed id is a usage
    error (exit 2) before anything is sent; without it, any lock of the pharmacy."""
    import io

    from client import cli

    sent: list[tuple[str, str | None]] = []

    class Ops:
        s = SimpleNamespace(close=lambda: None)

        def release(self, rx_id: str, lock_id: str | None = None) -> dict[str, Any]:
            sent.append((rx_id, lock_id))
            return {"rx_id": rx_id, "status": "APPROVED", "tx_id": "cd" * 32, "block": 3}

    monkeypatch.setattr(cli, "_ops", lambda a: Ops())
    out, err = io.StringIO(), io.StringIO()
    assert cli.main(["--json", "--as", "p01:pharm-wang", "rx", "release", "RX1", "--lock-id", "ab" * 32],
                    out=out, err=err) == 0
    assert cli.main(["--json", "--as", "p01:pharm-wang", "rx", "release", "RX1"], out=out, err=err) == 0
    for bad in ("AB" * 32, "ab" * 31, "x" * 64):
        assert cli.main(["--json", "--as", "p01:pharm-wang", "rx", "release", "RX1", "--lock-id", bad],
                        out=out, err=err) == 2
    assert sent == [("RX1", "ab" * 32), ("RX1", None)]


def test_a_borrowed_lock_that_changed_hands_is_not_dispensed_under(world: World) -> None:  # noqa: F811
    """Call B finds its pharmacy holding call A's lock and means to dispense under it; before
    its dispense A's lock is freed and call C locks. B names A's lock: refused ALREADY_LOCKED,
    nothing dispensed, C's lock untouched (B took none, so releases none). It used to
    dispense under C's lock."""
    register_li(world)
    prep = approved(world)
    rx = prep.args["rx_id"]
    ops_a, _ = _ops(world, WANG, prep)
    a_token = ops_a.lock(rx)["lock_id"]
    taken: dict[str, Any] = {}

    def a_freed_then_c_locks() -> None:
        ops_a.release(rx, a_token)
        taken.update(ops_a.lock(rx))

    ops_b, gw_b = _ops(world, LI, prep, {"dispense": a_freed_then_c_locks})
    with pytest.raises(RxClientError) as refused:
        ops_b.dispense(rx, ["81234560000000000104"])
    assert refused.value.reason == "ALREADY_LOCKED" and "not lock " + a_token in refused.value.message
    assert [(c[0], c[2]) for c in gw_b.calls] == [("lock", "ALREADY_LOCKED"), ("dispense", "ALREADY_LOCKED")]
    assert gw_b.calls[1][1]["lock_id"] == a_token
    assert _lock(world, rx)["tx_id"] == taken["lock_id"]
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 0


def test_without_auto_lock_the_dispense_names_the_lock_given(world: World) -> None:  # noqa: F811
    _, rx, ops, gw, first, second = _relocked(world)
    with pytest.raises(RxClientError) as refused:
        ops.dispense(rx, ["81234560000000000105"], auto_lock=False, lock_id=first)
    assert refused.value.reason == "ALREADY_LOCKED"
    # a refusal without auto_lock releases nothing: the lock was not this call's
    assert [c[0] for c in gw.calls[-1:]] == ["dispense"] and _lock(world, rx)["tx_id"] == second
    out = ops.dispense(rx, ["81234560000000000105"], auto_lock=False, lock_id=second)
    assert out["fill"] == 1 and gw.calls[-1][1]["lock_id"] == second


def test_cli_dispense_passes_the_lock_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rx dispense RX --lock-id ID`` dispenses under that lock and takes none; without it
    the command locks (or borrows) as before; a malformed id is a usage error (exit 2)."""
    import io

    from client import cli

    sent: list[tuple[str, list[str], bool, str | None]] = []

    class Ops:
        s = SimpleNamespace(close=lambda: None)

        def dispense(self, rx_id: str, trace_codes: list[str], auto_lock: bool = True,
                     lock_id: str | None = None) -> dict[str, Any]:
            sent.append((rx_id, list(trace_codes), auto_lock, lock_id))
            return {"rx_id": rx_id, "status": "DISPENSED", "fill": 1, "tx_id": "cd" * 32, "block": 3}

    monkeypatch.setattr(cli, "_ops", lambda a: Ops())
    out, err = io.StringIO(), io.StringIO()
    base = ["--json", "--as", "p01:pharm-wang", "rx", "dispense", "RX1", "--trace-code", "TC1"]
    assert cli.main([*base, "--lock-id", "ab" * 32], out=out, err=err) == 0
    assert cli.main(base, out=out, err=err) == 0
    for bad in ("AB" * 32, "ab" * 31, "x" * 64):
        assert cli.main([*base, "--lock-id", bad], out=out, err=err) == 2
    assert sent == [("RX1", ["TC1"], False, "ab" * 32), ("RX1", ["TC1"], True, None)]


def _before_dispense_tokens(w: World) -> None:
    """The chain runs the previous release's prescription contract: ``dispense(rx_id)``."""
    ch = w.chain
    src = ch._sources["prescription"]
    new_sig = 'def dispense(ctx: Context, rx_id: str, lock_id: str = "") -> dict:'
    assert new_sig in src
    old = src.replace(new_sig, 'def dispense(ctx: Context, rx_id: str) -> dict:\n    lock_id = ""')
    ch._sources["prescription"] = old
    ch._hashes["prescription"] = hashlib.sha256(old.encode()).hexdigest()


def test_a_contract_before_dispense_tokens_gets_the_dispense_without_one(world: World) -> None:  # noqa: F811
    """Clients are upgraded before the consortium approves the new contract: the previous
    release's ``dispense(rx_id)`` refuses ``lock_id`` as an unknown argument when endorsed
    (nothing submitted), so the call dispenses once more without it. Any other refusal
    stands as the answer, never sent twice."""
    _before_dispense_tokens(world)
    prep = approved(world)
    rx = prep.args["rx_id"]
    ops, gw = _ops(world, WANG, prep)
    out = ops.dispense(rx, ["81234560000000000106"])
    assert out["fill"] == 1
    assert [(c[0], c[2]) for c in gw.calls] == [("lock", "OK"), ("dispense", "BAD_ARGUMENTS"), ("dispense", "OK")]
    assert "lock_id" in gw.calls[1][1] and "lock_id" not in gw.calls[2][1]
    # the resent dispense's refusal is the answer (and the lock this call took is released)
    again = approved(world)
    ops2, gw2 = _ops(world, WANG, again)
    with pytest.raises(RxClientError) as refused:
        ops2.dispense(again.args["rx_id"], ["bad code!"])
    assert refused.value.reason == "BAD_TRANSIENT"
    assert [(c[0], c[2]) for c in gw2.calls] == [("lock", "OK"), ("dispense", "BAD_ARGUMENTS"),
                                                 ("dispense", "BAD_TRANSIENT"), ("release", "OK")]


@pytest.mark.parametrize("message", ["dispense: argument 'lock_id' must be str, not int",
                                     "lock_id must be the 64 lower-case hex token lock returned, or empty"])
def test_only_an_unknown_lock_id_argument_sends_the_dispense_again(message: str) -> None:
    calls: list[str] = []

    class Gw:
        def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
            return {"pharmacy": "p01", "hospital": "h01", "lock": None}

        def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
                   endorsing_orgs: Any = None) -> SubmitResult:
            calls.append(fn)
            if fn == "dispense":
                raise EndorsementError("BAD_ARGUMENTS", message)
            return SubmitResult("cd" * 32, "VALID", 3, {"rx_id": "RX1", "lock_id": "ab" * 32})

    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=Gw(), identity=SimpleNamespace(org="p01", role="pharmacist"),
        net=SimpleNamespace(peers=[SimpleNamespace(org="p01")]), trace_key=trace_key()))
    ops._get_key = lambda rx_id: SimpleNamespace(body={}, salt="00")  # type: ignore[method-assign,assignment,return-value]
    with pytest.raises(RxClientError) as refused:
        ops.dispense("RX1", ["TC-1"])
    assert refused.value.reason == "BAD_ARGUMENTS"
    assert calls == ["lock", "dispense", "release"]


# ---------------------------------------------------------------- review of the dispense tokens (125f407)


def test_a_stalled_call_never_locks_again_for_the_fill_after_the_one_it_was_for(world: World) -> None:  # noqa: F811
    """A repeat prescription. Call B finds call A's lock of fill 1 held and stalls; A
    dispenses fill 1 under it; 28 days on, nobody has locked fill 2 yet. B's dispense naming
    A's lock is refused NOT_LOCKED, and B's once-more used to lock fill 2 and dispense it --
    a second fill out of a call meant for the first. B's new lock is fill 2's, not the fill
    it was for: released again, ALREADY_DISPENSED, fill 2 is left to the next call."""
    prep, rx, _, a_token = _repeat_locked(world)
    ops_b, gw_b = _ops(world, LI, prep, {
        "dispense": lambda: _fill_goes_out(world, prep, a_token, ["81234560000000000111"])})
    with pytest.raises(RxClientError) as refused:
        ops_b.dispense(rx, ["81234560000000000112"])
    assert refused.value.reason == "ALREADY_DISPENSED" and "fill 1 " in refused.value.message, refused.value
    assert [(c[0], c[2]) for c in gw_b.calls] == [("lock", "ALREADY_LOCKED"), ("dispense", "NOT_LOCKED"),
                                                  ("lock", "OK"), ("release", "OK")]
    steps = world.chain.query("prescription", "trace", WANG, rx_id=rx).unwrap()["steps"]
    assert gw_b.calls[3][1]["lock_id"] == [st["tx_id"] for st in steps if st["step"] == "lock"][-1]
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 1
    assert _lock(world, rx) is None
    # fill 2 is there for the next call
    assert ops_b.dispense(rx, ["81234560000000000112"])["fill"] == 2


def test_a_stalled_call_finding_the_next_fills_lock_held_does_not_dispense_under_it(world: World) -> None:  # noqa: F811
    """As above, but by B's once-more call C has locked fill 2: B would borrow C's lock (fill
    2) -- refused ALREADY_DISPENSED with nothing released: C's lock stays, C dispenses."""
    prep, rx, ops_a, a_token = _repeat_locked(world)
    taken: dict[str, Any] = {}

    def a_dispenses_then_c_locks_fill_2_before_bs_lock() -> None:
        _fill_goes_out(world, prep, a_token, ["81234560000000000113"])
        gw_b.before["lock"] = lambda: taken.update(ops_a.lock(rx))

    ops_b, gw_b = _ops(world, LI, prep, {"dispense": a_dispenses_then_c_locks_fill_2_before_bs_lock})
    with pytest.raises(RxClientError) as refused:
        ops_b.dispense(rx, ["81234560000000000114"])
    assert refused.value.reason == "ALREADY_DISPENSED"
    assert [(c[0], c[2]) for c in gw_b.calls] == [("lock", "ALREADY_LOCKED"), ("dispense", "NOT_LOCKED"),
                                                  ("lock", "ALREADY_LOCKED")]
    assert taken["fill"] == 2 and _lock(world, rx)["tx_id"] == taken["lock_id"]
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 1


def test_a_lock_id_given_is_the_only_lock_dispensed_under_whatever_auto_lock_says(world: World) -> None:  # noqa: F811
    """``dispense(rx, codes, lock_id=...)`` with auto_lock left at its default used to drop
    the token: it borrowed whatever lock the pharmacy held by then (or took a new one) and
    dispensed under it -- the very lock the caller named its own to exclude."""
    _, rx, ops, gw, first, second = _relocked(world)
    with pytest.raises(RxClientError) as refused:
        ops.dispense(rx, ["81234560000000000115"], lock_id=first)
    assert refused.value.reason == "ALREADY_LOCKED"
    assert [(c[0], c[1].get("lock_id"), c[2]) for c in gw.calls[3:]] == [("dispense", first, "ALREADY_LOCKED")]
    assert _lock(world, rx)["tx_id"] == second
    ops.release(rx, second)  # nothing held: the named lock is gone, nothing is taken for it
    with pytest.raises(RxClientError) as gone:
        ops.dispense(rx, ["81234560000000000115"], lock_id=second)
    assert gone.value.reason == "NOT_LOCKED" and [c[0] for c in gw.calls[5:]] == ["dispense"]
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 0


def test_a_lock_id_the_caller_named_is_not_dropped_for_a_contract_before_dispense_tokens(world: World) -> None:  # noqa: F811
    """``rx dispense --lock-id`` promises that lock only. A contract from before dispense
    tokens cannot keep that promise: the call used to send the dispense again without the
    token -- under whichever lock the pharmacy held (here another call's, taken after the
    named one was freed). It is refused BAD_ARGUMENTS saying why, nothing dispensed; the
    tokens of locks the call took or found held are still resent without (that test above)."""
    _, rx, ops, gw, first, second = _relocked(world)
    _before_dispense_tokens(world)
    with pytest.raises(RxClientError) as refused:
        ops.dispense(rx, ["81234560000000000116"], auto_lock=False, lock_id=first)
    assert refused.value.reason == "BAD_ARGUMENTS" and "predates dispense tokens" in refused.value.message
    assert [(c[0], c[2]) for c in gw.calls[3:]] == [("dispense", "BAD_ARGUMENTS")]
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 0
    assert _lock(world, rx)["tx_id"] == second


# ---------------------------------------------------------------- the FHIR gateway over the same chain


def _fhir(w: World, caller: Who, prep: Prepared, before: dict[str, Callable[[], None]] | None = None,
          ) -> tuple[Callable[[list[str]], Any], ContractGateway]:
    """POST /fhir/MedicationDispense of ``prep``'s prescription as ``caller`` (FhirApp over
    RxOperations over the contract chain): a function of the trace codes giving the Reply,
    or raising the refusal (its HTTP answer: ``error_reply``)."""
    from client.fhir.server import FhirApp
    from tests.client.test_fhir_retry import _dispense as medication_dispense

    ops, gw = _ops(w, caller, prep, before)
    opened = SimpleNamespace(body=prep.content, salt=prep.salt, kind="content", party=caller.org,
                             record_key=b"\0" * 32)
    ops._get_key = lambda rx_id: opened  # type: ignore[method-assign,assignment,return-value]
    app = FhirApp(SimpleNamespace(ops_for=lambda der: ops))  # type: ignore[arg-type]
    line = prep.content["drugs"][0]

    def post(codes: list[str]) -> Any:
        body = medication_dispense(codes=tuple(codes), code=line["code"], qty=line["qty"])
        body["authorizingPrescription"] = [{"reference": f"MedicationRequest/{prep.args['rx_id']}"}]
        return app.handle("POST", "/fhir/MedicationDispense", body, b"cert")

    return post, gw


def _status(exc: RxClientError) -> tuple[int, str]:
    from pathlib import Path

    from client.fhir.server import error_reply

    return error_reply(exc, Path("/nonexistent")).status, exc.reason


def test_fhir_a_retry_whose_first_attempt_dispensed_under_its_lock_is_200(world: World) -> None:  # noqa: F811
    """A MedicationDispense's first attempt locked fill 1 of a repeat prescription and its
    answer was lost; the retry (same boxes) finds that lock held and stalls; the first
    attempt dispenses under it, and 28 days on the counter locks fill 2. The retry's dispense
    names the first attempt's lock: ALREADY_LOCKED. It used to be answered 422 ALREADY_LOCKED
    ("fix the request") though its fill is on the ledger; it is the fill the request describes
    (same pharmacy, same boxes): 200 with fill 1, nothing dispensed again, fill 2's lock kept.
    (Before dispense tokens the retry ran under fill 2's lock, TRACE_CODE_REUSED, and 200.)"""
    prep, rx, ops_o, first = _repeat_locked(world)
    codes = ["81234560000000000121"]
    counter: dict[str, Any] = {}

    def first_attempt_lands_then_the_counter_locks_fill_2() -> None:
        _fill_goes_out(world, prep, first, codes)
        counter.update(ops_o.lock(rx))

    post, gw = _fhir(world, WANG, prep, {"dispense": first_attempt_lands_then_the_counter_locks_fill_2})
    reply = post(codes)
    assert reply.status == 200, reply
    assert [(c[0], c[2]) for c in gw.calls] == [("lock", "ALREADY_LOCKED"), ("dispense", "ALREADY_LOCKED")]
    values = {i["value"] for e in reply.resource["entry"] for i in e["resource"]["identifier"]}
    assert f"{rx}/1" in values, values
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 1
    assert _lock(world, rx)["tx_id"] == counter["lock_id"]


def _refused_post(w: World, prep: Prepared, before_dispense: Callable[[], None], code: str) -> tuple[int, str]:
    """(HTTP status, reason) of pharm-li's MedicationDispense POST (box ``code``), which must
    be refused, with ``before_dispense`` committing just before its dispense."""
    post, _ = _fhir(w, LI, prep, {"dispense": before_dispense})
    with pytest.raises(RxClientError) as refused:
        post([code])
    return _status(refused.value)


def test_fhir_a_lock_that_changed_hands_without_a_fill_keeps_the_refusal(world: World) -> None:  # noqa: F811
    """The comparison is for a fill committed meanwhile only: the lock the POST found held
    is freed and taken again by another call before its dispense, nothing dispensed -- the
    refusal stands (ALREADY_LOCKED), and a POST with other boxes than a fill committed
    meanwhile is 409 ALREADY_DISPENSED, never 200."""
    prep, rx, ops_o, held = _repeat_locked(world)

    def freed_and_taken_again() -> None:
        ops_o.release(rx, held)
        ops_o.lock(rx)

    assert _refused_post(world, prep, freed_and_taken_again, "81234560000000000122") == (422, "ALREADY_LOCKED")
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 0
    # another call dispenses fill 1 under the lock the POST found held, and locks fill 2
    taken = _lock(world, rx)["tx_id"]

    def another_fill_lands_then_fill_2_locked() -> None:
        _fill_goes_out(world, prep, taken, ["81234560000000000123"])
        ops_o.lock(rx)

    assert _refused_post(world, prep, another_fill_lands_then_fill_2_locked,
                         "81234560000000000124") == (409, "ALREADY_DISPENSED")
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 1


def test_fhir_a_stalled_post_is_not_answered_with_the_next_fill(world: World) -> None:  # noqa: F811
    """The gateway side of the once-more above: a POST that found another call's lock of
    fill 1 held, stalled while that call dispensed fill 1 (other boxes) and the interval
    passed, used to get 201 for fill 2. It is 409 ALREADY_DISPENSED, fill 2 not dispensed."""
    prep, rx, _, held = _repeat_locked(world)
    assert _refused_post(world, prep, lambda: _fill_goes_out(world, prep, held, ["81234560000000000125"]),
                         "81234560000000000126") == (409, "ALREADY_DISPENSED")
    assert world.chain.query("prescription", "show", WANG, rx_id=rx).unwrap()["fills"] == 1
    assert _lock(world, rx) is None
