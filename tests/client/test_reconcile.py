"""Claims reconciliation (``client.reconcile.claim_report``, ``rxchain claim report``): the
settle and reverse events of a block range, each claim read as its reader may, added up in
fen -- run over the real settlement contract in the sandbox of tests/contracts, with the
events a peer would send for the blocks the contract chain committed."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rxchain.v1 import services_pb2, transaction_pb2

from client.errors import RxClientError
from client.reconcile import AMOUNTS, ClaimReader, claim_report
from tests.client.ledgerevents import EventLedger, failing_at, settled_claims
from tests.contracts.chain import Who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import AUDITOR, CLERK, WANG, approved, lock_and_dispense, settle
from tests.contracts.rxclient import World


def _reader(w: World, caller: Who) -> ClaimReader:
    def read(claim_id: str) -> dict[str, Any] | None:
        out = w.chain.query("settlement", "get_claim", caller, claim_id=claim_id)
        if out.reason == "CLAIM_NOT_FOUND":
            return None
        return dict(out.unwrap())
    return read


def test_the_report_adds_up_what_was_settled_and_reversed(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 3)
    rev = world.chain.submit("settlement", "reverse", CLERK, claim_id=claims[1]["claim_id"], reason="OTHER")
    assert rev.ok
    rep = claim_report(ledger.events, _reader(world, CLERK), 0, insurer="ins01")
    assert rep["next_block"] == ledger.height and rep["unreadable"] == [] and rep["inconsistent"] == []
    rows = rep["claims"]
    assert [(r["event"], r["claim_id"]) for r in rows] == [
        ("settled", claims[0]["claim_id"]), ("settled", claims[1]["claim_id"]),
        ("settled", claims[2]["claim_id"]), ("reversed", claims[1]["claim_id"])]
    assert rows[3]["block"] == rev.block and rows[3]["tx_id"] == rev.tx_id
    assert [r["status_now"] for r in rows] == ["SETTLED", "REVERSED", "SETTLED", "REVERSED"]
    for r, c in zip(rows, [*claims, claims[1]], strict=True):
        assert {k: r[k] for k in AMOUNTS} == {k: c[k] for k in AMOUNTS}
        assert (r["rx_id"], r["fill"]) == (c["rx_id"], c["fill"])
    assert rows[0]["time_ms"] == claims[0]["events"][0]["time_ms"]
    totals = rep["totals"]
    for k in AMOUNTS:
        assert totals["settled"][k] == sum(c[k] for c in claims)
        assert totals["reversed"][k] == claims[1][k]
        assert totals["net"][k] == claims[0][k] + claims[2][k]
    assert (totals["settled"]["count"], totals["reversed"]["count"]) == (3, 1)
    assert totals["net"]["medfee_fen"] == totals["net"]["fund_fen"] + totals["net"]["patient_fen"] > 0


def test_ranges_are_contiguous_and_a_later_report_goes_on(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 3)
    cut = claims[1]["events"][0]["tx_id"]
    cut_block = next(o.block for _, o in ledger.committed if o.tx_id == cut)
    assert cut_block is not None
    first = claim_report(ledger.events, _reader(world, CLERK), 0, max_blocks=cut_block + 1)
    assert first["next_block"] == cut_block + 1
    second = claim_report(ledger.events, _reader(world, CLERK), first["next_block"])
    assert second["next_block"] == ledger.height
    ids = [r["claim_id"] for r in first["claims"] + second["claims"]]
    assert ids == [c["claim_id"] for c in claims]
    # nothing new: an empty report that stays where it was
    empty = claim_report(ledger.events, _reader(world, CLERK), ledger.height)
    assert (empty["claims"], empty["next_block"], empty["totals"]["net"]["fund_fen"]) == ([], ledger.height, 0)


def test_a_failure_reading_the_block_past_the_limit_fails_nothing(world: World) -> None:  # noqa: F811
    """The report reads the block past its limit to tell whether more follows (``more``): its
    stream failing there failed a report that had finished. Now the report is what was read,
    with ``more`` True (unknown: go on from ``next_block``); a failure reading a block within
    the limit still fails it."""
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 2)
    first = next(o.block for _, o in ledger.committed if o.tx_id == claims[0]["events"][0]["tx_id"])
    assert first is not None
    cut = first + 1
    assert cut < ledger.height
    whole = claim_report(ledger.events, _reader(world, CLERK), 0, max_blocks=cut)
    assert whole["more"] is True and whole["next_block"] == cut
    assert [r["claim_id"] for r in whole["claims"]] == [claims[0]["claim_id"]]
    peek_failed = claim_report(failing_at(ledger.events, cut), _reader(world, CLERK), 0, max_blocks=cut)
    assert peek_failed == whole
    # up to the height: nothing follows; the stream failing after it gives more (unknown)
    complete = claim_report(ledger.events, _reader(world, CLERK), cut, max_blocks=ledger.height - cut)
    assert complete["more"] is False and complete["next_block"] == ledger.height
    unknown = claim_report(failing_at(ledger.events, ledger.height), _reader(world, CLERK), cut,
                           max_blocks=ledger.height - cut)
    assert unknown == {**complete, "more": True}
    for within in (0, cut - 1):
        with pytest.raises(RxClientError) as failed:
            claim_report(failing_at(ledger.events, within), _reader(world, CLERK), 0, max_blocks=cut)
        assert failed.value.reason == "TIMEOUT"


def test_other_insurers_claims_are_left_out_or_counted_unreadable(world: World) -> None:  # noqa: F811
    """An event naming another insurer's claim: left out for ``insurer="ins01"``; with every
    insurer asked for, the clerk may not read it -- ``unreadable``, never guessed. An auditor
    reads every claim."""
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 1)
    foreign = json.dumps({"claim_id": "CLM-RX9-1-1", "rx_id": "RX9", "insurer": "ins02"}).encode()
    ledger.extra[ledger.height - 1] = [transaction_pb2.ContractEvent(
        contract="settlement", name="claim.settled", payload=foreign, tx_id="ef" * 32)]
    mine = claim_report(ledger.events, _reader(world, CLERK), 0, insurer="ins01")
    assert [r["claim_id"] for r in mine["claims"]] == [claims[0]["claim_id"]] and mine["unreadable"] == []
    every = claim_report(ledger.events, _reader(world, CLERK), 0, insurer=None)
    assert every["unreadable"] == ["CLM-RX9-1-1"] and len(every["claims"]) == 1
    audited = claim_report(ledger.events, _reader(world, AUDITOR), 0, insurer=None)
    assert [r["claim_id"] for r in audited["claims"]] == [claims[0]["claim_id"]]
    assert audited["unreadable"] == ["CLM-RX9-1-1"]  # no such claim on the ledger at all


def test_amounts_that_break_the_settlement_identities_are_listed_but_not_counted(world: World) -> None:  # noqa: F811
    """A claim whose amounts break medfee = fund + patient or patient = account + cash was
    flagged but still added to the totals: the net then was not what the settlement rules
    paid. Its rows stay listed (``inconsistent``: true) and their own sum, settled minus
    reversed, is ``totals.inconsistent``; settled, reversed and net count the consistent
    claims only."""
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 3)
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claims[2]["claim_id"], reason="OTHER").unwrap()
    read = _reader(world, CLERK)
    odd = {claims[1]["claim_id"], claims[2]["claim_id"]}

    def tampered(claim_id: str) -> dict[str, Any] | None:
        rec = read(claim_id)
        if rec is not None and claim_id in odd:
            rec["fund_fen"] += 1
        return rec

    rep = claim_report(ledger.events, tampered, 0)
    assert rep["inconsistent"] == [claims[1]["claim_id"], claims[2]["claim_id"]]
    assert [(r["claim_id"], r["inconsistent"]) for r in rep["claims"]] == [
        (claims[0]["claim_id"], False), (claims[1]["claim_id"], True), (claims[2]["claim_id"], True),
        (claims[2]["claim_id"], True)]
    totals = rep["totals"]
    assert (totals["settled"]["count"], totals["reversed"]["count"], totals["inconsistent"]["count"]) == (1, 0, 3)
    for k in AMOUNTS:
        assert totals["settled"][k] == totals["net"][k] == claims[0][k] and totals["reversed"][k] == 0
        # claim 2 settled and reversed: only claim 1's amounts are left outstanding
        assert totals["inconsistent"][k] == claims[1][k] + (k == "fund_fen")
    assert totals["net"]["medfee_fen"] == totals["net"]["fund_fen"] + totals["net"]["patient_fen"]

    def negative(claim_id: str) -> dict[str, Any] | None:
        """The identities hold, but the fund share is negative: no settlement makes that."""
        rec = read(claim_id)
        if rec is not None and claim_id == claims[0]["claim_id"]:
            shift = rec["fund_fen"] + 100
            rec["fund_fen"] -= shift
            rec["patient_fen"] += shift
            rec["account_fen"] += shift
        return rec

    rep = claim_report(ledger.events, negative, 0)
    assert rep["inconsistent"] == [claims[0]["claim_id"]] and rep["claims"][0]["fund_fen"] == -100
    assert rep["totals"]["inconsistent"]["fund_fen"] == -100
    assert rep["totals"]["net"]["fund_fen"] == claims[1]["fund_fen"]


@pytest.mark.parametrize("bad", [12.5, "1250", None, True, 10**30 + 0.5])
def test_an_amount_that_is_not_integer_fen_is_an_inconsistent_row_not_a_failed_report(
        world: World, bad: object) -> None:  # noqa: F811
    """A claim with a non-integer amount failed the whole report (BAD_PAYLOAD) until the
    ledger was fixed -- every other claim of the range unreported, a daily run stuck. Now it
    is an ``inconsistent`` row, that amount null (never guessed), out of the totals; the
    inconsistent sum of that amount is unknown (null), the others still added up."""
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 2)
    read = _reader(world, CLERK)

    def not_fen(claim_id: str) -> dict[str, Any] | None:
        rec = read(claim_id)
        assert rec is not None
        if claim_id == claims[1]["claim_id"]:
            rec["cash_fen"] = bad
        return rec

    rep = claim_report(ledger.events, not_fen, 0)
    assert rep["next_block"] == ledger.height and rep["inconsistent"] == [claims[1]["claim_id"]]
    row = rep["claims"][1]
    assert (row["claim_id"], row["inconsistent"], row["cash_fen"], row["fund_fen"]) == (
        claims[1]["claim_id"], True, None, claims[1]["fund_fen"])
    totals = rep["totals"]
    assert totals["settled"]["count"] == 1 and totals["inconsistent"]["count"] == 1
    for k in AMOUNTS:
        assert totals["net"][k] == claims[0][k]
        assert totals["inconsistent"][k] == (None if k == "cash_fen" else claims[1][k])
    json.dumps(rep)  # (JSON-ready: the CLI prints it)


def test_a_report_reads_a_bounded_number_of_claims(world: World) -> None:  # noqa: F811
    """The report read one claim per event with no bound: ``max_reads`` claims at most, whole
    blocks (the first whatever it names), ``reads_capped`` and ``next_block`` where the next
    report goes on; the reports of a range add up to one report over it."""
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 3)
    world.chain.submit("settlement", "reverse", CLERK, claim_id=claims[0]["claim_id"], reason="OTHER").unwrap()
    whole = claim_report(ledger.events, _reader(world, CLERK), 0)
    assert not whole["reads_capped"] and len(whole["claims"]) == 4
    reads: list[str] = []

    def counted(claim_id: str) -> dict[str, Any] | None:
        reads.append(claim_id)
        return _reader(world, CLERK)(claim_id)

    start, parts = 0, []
    while start < ledger.height:
        del reads[:]
        part = claim_report(ledger.events, counted, start, max_reads=1)
        assert len(reads) <= 1 and part["next_block"] > start
        parts.append(part)
        start = part["next_block"]
    assert [[r["claim_id"] for r in p["claims"]] for p in parts] == [
        [claims[0]["claim_id"]], [claims[1]["claim_id"]], [claims[2]["claim_id"]], [claims[0]["claim_id"]]]
    assert [p["reads_capped"] for p in parts] == [True, True, True, False]
    assert [r for p in parts for r in p["claims"]] == whole["claims"]
    for side in ("settled", "reversed", "net"):
        for k in ("count", *AMOUNTS) if side != "net" else AMOUNTS:
            assert sum(p["totals"][side][k] for p in parts) == whole["totals"][side][k], (side, k)
    # a claim settled and reversed within one report is read once
    del reads[:]
    claim_report(ledger.events, counted, 0, max_reads=3)
    assert sorted(reads) == sorted(c["claim_id"] for c in claims)
    # a block is never split: the first block of a report is read whatever it names
    ledger.extra[0] = [transaction_pb2.ContractEvent(
        contract="settlement", name="claim.settled", tx_id=f"{n:02d}" * 32,
        payload=json.dumps({"claim_id": c["claim_id"], "insurer": "ins01"}).encode()) for n, c in enumerate(claims)]
    first = claim_report(ledger.events, _reader(world, CLERK), 0, max_reads=1)
    assert len(first["claims"]) == 3 and first["next_block"] == 1 and first["reads_capped"]
    with pytest.raises(RxClientError) as bad:
        claim_report(ledger.events, counted, 0, max_reads=0)
    assert bad.value.reason == "BAD_ARGUMENTS"
    with pytest.raises(RxClientError):
        claim_report(ledger.events, counted, 0, max_reads=2_001)


def test_a_report_cut_at_its_read_cap_moves_the_checkpoint_to_what_it_read(
        world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """``rxchain claim report --checkpoint``: a report stopped by its cap of claims read saves
    the block it stopped before, never the peer's height -- the next run reads the rest."""
    import functools

    from client import cli, rxops
    from client.rxops import RxOperations
    from tests.client.contractgw import ContractGateway

    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 2)
    gw = ContractGateway(world, CLERK)
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=SimpleNamespace(events=ledger.events, evaluate=gw.evaluate), close=lambda: None,
        identity=SimpleNamespace(org=CLERK.org, role=CLERK.role),
        net=SimpleNamespace(insurers=lambda: ["ins01", "ins02"])))
    monkeypatch.setattr(rxops, "claim_report", functools.partial(claim_report, max_reads=1))
    monkeypatch.setattr(cli, "_ops", lambda a: ops)
    cp = tmp_path / "claims.checkpoint"
    seen = []
    for _ in range(2):
        out = io.StringIO()
        assert cli.main(["--json", "--as", "ins01:clerk-zhao", "claim", "report", "--checkpoint", str(cp)],
                        out=out, err=io.StringIO()) == 0
        rep = json.loads(out.getvalue())
        assert cp.read_text() == f"{rep['next_block']}\n"
        seen.append((rep["reads_capped"], [r["claim_id"] for r in rep["claims"]]))
    assert seen == [(True, [claims[0]["claim_id"]]), (False, [claims[1]["claim_id"]])]
    assert cp.read_text() == f"{ledger.height}\n"


def test_a_role_that_reads_no_claims_is_refused(world: World) -> None:  # noqa: F811
    ledger = EventLedger(world.chain)
    settled_claims(world, 1)

    def read(claim_id: str) -> dict[str, Any] | None:
        out = world.chain.query("settlement", "get_claim", WANG, claim_id=claim_id)
        raise RxClientError(out.reason, out.message)

    with pytest.raises(RxClientError) as refused:
        claim_report(ledger.events, read, 0)
    assert refused.value.reason == "ACCESS_DENIED"
    with pytest.raises(RxClientError):
        claim_report(ledger.events, read, 0, max_blocks=0)


# ---------------------------------------------------------------- the CLI


class _Ops:
    s = SimpleNamespace(close=lambda: None)

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, int, str | None]] = []
        self.fail = fail

    def claim_report(self, start: int, max_blocks: int, insurer: str | None) -> dict[str, Any]:
        self.calls.append((start, max_blocks, insurer))
        if self.fail:
            raise RxClientError("SERVICE_UNAVAILABLE", "the peer went away")
        return {"from_block": start, "next_block": start + 7, "claims": [], "totals": {}, "unreadable": [],
                "inconsistent": [], "insurer": insurer}


def _cli(monkeypatch: pytest.MonkeyPatch, ops: _Ops, *args: str) -> tuple[int, dict[str, Any] | str]:
    from client import cli

    monkeypatch.setattr(cli, "_ops", lambda a: ops)
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--json", "--as", "ins01:clerk-zhao", "claim", "report", *args], out=out, err=err)
    return code, (json.loads(out.getvalue()) if code == 0 else err.getvalue())


def test_cli_report_moves_its_checkpoint_only_when_complete(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cp = tmp_path / "claims.checkpoint"
    ok = _Ops()
    code, rep = _cli(monkeypatch, ok, "--checkpoint", str(cp))
    assert code == 0 and isinstance(rep, dict) and rep["next_block"] == 7
    assert cp.read_text() == "7\n"
    code, rep = _cli(monkeypatch, ok, "--checkpoint", str(cp), "--limit", "50")
    assert code == 0 and isinstance(rep, dict) and rep["from_block"] == 7 and cp.read_text() == "14\n"
    failing = _Ops(fail=True)
    code, _ = _cli(monkeypatch, failing, "--checkpoint", str(cp))
    assert code != 0 and failing.calls == [(14, 10_000, "")] and cp.read_text() == "14\n"
    assert ok.calls == [(0, 10_000, ""), (7, 50, "")]


def test_cli_report_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ops = _Ops()
    assert _cli(monkeypatch, ops, "--start", "5", "--insurer", "all")[0] == 0
    assert _cli(monkeypatch, ops, "--insurer", "ins02")[0] == 0
    assert ops.calls == [(5, 10_000, None), (0, 10_000, "ins02")]
    for bad in (["--start", "1", "--checkpoint", str(tmp_path / "c")], ["--insurer", "ins 01"],
                ["--insurer", "x" * 33], ["--limit", "0"], ["--start", "-1"]):
        assert _cli(monkeypatch, ops, *bad)[0] == 2, bad
    assert len(ops.calls) == 2


def test_rxops_reports_the_callers_own_insurer_by_default(world: World) -> None:  # noqa: F811
    """``RxOperations.claim_report``: a clerk of an insurer gets that insurer's claims; an
    auditor (no insurer) every insurer's; CLAIM_NOT_FOUND from the gateway is ``unreadable``."""
    from client.rxops import RxOperations
    from tests.client.contractgw import ContractGateway

    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 1)
    foreign = json.dumps({"claim_id": "CLM-RX9-1-1", "rx_id": "RX9", "insurer": "ins02"}).encode()
    ledger.extra[0] = [transaction_pb2.ContractEvent(contract="settlement", name="claim.settled",
                                                     payload=foreign, tx_id="ef" * 32)]

    def ops(caller: Who) -> RxOperations:
        gw = ContractGateway(world, caller)
        return RxOperations(SimpleNamespace(  # type: ignore[arg-type]
            gateway=SimpleNamespace(events=ledger.events, evaluate=gw.evaluate),
            identity=SimpleNamespace(org=caller.org, role=caller.role),
            net=SimpleNamespace(insurers=lambda: ["ins01", "ins02"])))

    mine = ops(CLERK).claim_report(0)
    assert mine["insurer"] == "ins01" and mine["unreadable"] == []
    assert [r["claim_id"] for r in mine["claims"]] == [claims[0]["claim_id"]]
    every = ops(AUDITOR).claim_report(0)
    assert every["insurer"] is None and every["unreadable"] == ["CLM-RX9-1-1"]
    with pytest.raises(RxClientError) as other:
        ops(CLERK).claim_report(0, insurer="ins02")
    assert other.value.reason == "ACCESS_DENIED"
    assert [r["claim_id"] for r in ops(AUDITOR).claim_report(0, insurer="ins01")["claims"]] == [
        claims[0]["claim_id"]]
    with pytest.raises(RxClientError) as refused:
        ops(WANG).claim_report(0)
    assert refused.value.reason == "ACCESS_DENIED"


# ---------------------------------------------------------------- review (rrec)


@pytest.mark.parametrize("payload", [
    b"not json",  # decoded as hex text, not an object
    b"",  # no payload at all
    json.dumps({"rx_id": "RX9", "insurer": "ins01"}).encode(),  # no claim id
    json.dumps({"claim_id": 7, "rx_id": "RX9", "insurer": "ins01"}).encode(),
    json.dumps({"claim_id": "CLM RX9/1", "rx_id": "RX9", "insurer": "ins01"}).encode(),  # get_claim: BAD_ARGUMENTS
    json.dumps({"claim_id": "C" * 129, "rx_id": "RX9", "insurer": "ins01"}).encode(),
    json.dumps({"claim_id": "CLM-RX9-1-1", "rx_id": "RX9"}).encode(),  # whose claim?
])
def test_a_malformed_settle_or_reverse_event_is_listed_never_dropped_nor_fatal(
        world: World, payload: bytes) -> None:  # noqa: F811
    """An event of the settlement contract whose payload names no claim the contract could
    have written: listed under ``malformed`` (block, tx id, event) for every reader and
    every insurer filter -- not silently left out of the totals (a settle nobody sees), not
    a failed report (a daily run stuck on that block for good, BAD_ARGUMENTS from get_claim)."""
    ledger = EventLedger(world.chain)
    claims = settled_claims(world, 1)
    ledger.extra[ledger.height - 1] = [transaction_pb2.ContractEvent(
        contract="settlement", name="claim.reversed", payload=payload, tx_id="ef" * 32)]
    for insurer in ("ins01", None):
        rep = claim_report(ledger.events, _reader(world, CLERK), 0, insurer=insurer)
        assert [r["claim_id"] for r in rep["claims"]] == [claims[0]["claim_id"]]
        assert rep["malformed"] == [{"block": ledger.height - 1, "tx_id": "ef" * 32, "event": "reversed"}]
        assert rep["unreadable"] == [] and rep["next_block"] == ledger.height
        assert rep["totals"]["reversed"]["count"] == 0


def test_a_start_beyond_the_peers_height_is_refused_not_an_empty_report(world: World) -> None:  # noqa: F811
    """A checkpoint (or --start) past the peer's height -- a checkpoint file of another
    ledger, a peer behind -- was an empty report that stayed where it was: day after day
    nothing, then the blocks up to it skipped. Refused START_BEYOND_HEIGHT; at the height
    itself (nothing new yet) still an empty report."""
    ledger = EventLedger(world.chain)
    settled_claims(world, 1)
    for start in (ledger.height + 1, ledger.height + 1000):
        with pytest.raises(RxClientError) as ahead:
            claim_report(ledger.events, _reader(world, CLERK), start)
        assert ahead.value.reason == "START_BEYOND_HEIGHT" and f"block {start} " in ahead.value.message
    empty = claim_report(ledger.events, _reader(world, CLERK), ledger.height)
    assert (empty["claims"], empty["next_block"]) == ([], ledger.height)
    assert claim_report(ledger.events, _reader(world, CLERK), 0, max_blocks=1)["next_block"] == 1


class _Full(io.StringIO):
    """Standard output on a full disk (or a closed pipe)."""

    def write(self, s: str) -> int:
        raise OSError(28, "No space left on device")


def test_cli_report_not_written_out_leaves_its_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The checkpoint moved before the report was printed: a report lost on the way out
    (full disk, closed pipe) was never seen and its blocks never reported again."""
    from client import cli

    cp = tmp_path / "claims.checkpoint"
    cp.write_text("3\n")
    ops = _Ops()
    monkeypatch.setattr(cli, "_ops", lambda a: ops)
    for as_json in (["--json"], []):
        with pytest.raises(OSError):
            cli.main([*as_json, "--as", "ins01:clerk-zhao", "claim", "report", "--checkpoint", str(cp)],
                     out=_Full(), err=io.StringIO())
        assert cp.read_text() == "3\n"
    assert ops.calls == [(3, 10_000, ""), (3, 10_000, "")]
    code, rep = _cli(monkeypatch, ops, "--checkpoint", str(cp))
    assert code == 0 and isinstance(rep, dict) and cp.read_text() == "10\n"


class _ClosedPipe(io.StringIO):
    """Standard output whose reader went away (`rxchain claim report ... | head`)."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_cli_report_to_a_closed_pipe_leaves_its_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI drops output nobody reads (no traceback), but a report nobody read must not move
    the checkpoint: the next run reports the same blocks again."""
    from client import cli

    cp = tmp_path / "claims.checkpoint"
    cp.write_text("3\n")
    ops = _Ops()
    monkeypatch.setattr(cli, "_ops", lambda a: ops)
    for as_json in (["--json"], []):
        code = cli.main([*as_json, "--as", "ins01:clerk-zhao", "claim", "report", "--checkpoint", str(cp)],
                        out=_ClosedPipe(), err=io.StringIO())
        assert code == 0 and cp.read_text() == "3\n"


def test_cli_report_a_checkpoint_not_saved_fails_after_the_report(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The report is out, its checkpoint cannot be written: the command fails (a daily run
    notices; the next run covers the same blocks again, whole)."""
    from client import cli

    cp = tmp_path / "gone" / "claims.checkpoint"  # a directory that is not there
    monkeypatch.setattr(cli, "_ops", lambda a: _Ops())
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--json", "--as", "ins01:clerk-zhao", "claim", "report", "--checkpoint", str(cp)],
                    out=out, err=err)
    assert code == cli.EXIT_REFUSED and json.loads(out.getvalue())["next_block"] == 7
    assert f"BAD_CHECKPOINT: cannot write {cp}" in err.getvalue() and not cp.exists()


def test_rxops_an_insurer_asking_for_another_insurers_claims_is_refused(world: World) -> None:  # noqa: F811
    """A clerk of ins01 asking for ins02's report got every claim unreadable and a net of 0
    fen (exit 0: "ins02 owes nothing"); refused ACCESS_DENIED before anything is read."""
    from client.rxops import RxOperations

    ledger = EventLedger(world.chain)
    settled_claims(world, 1)
    read: list[str] = []
    ops = RxOperations(SimpleNamespace(  # type: ignore[arg-type]
        gateway=SimpleNamespace(events=ledger.events, evaluate=lambda *a, **k: read.append("x")),
        identity=SimpleNamespace(org="ins01", role="clerk"),
        net=SimpleNamespace(insurers=lambda: ["ins01", "ins02"])))
    with pytest.raises(RxClientError) as refused:
        ops.claim_report(0, insurer="ins02")
    assert refused.value.reason == "ACCESS_DENIED" and "ins02" in refused.value.message and read == []


def test_cli_report_names_every_insurer_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report of every insurer's claims said ``insurer: None`` (JSON null): ``all``, as
    ``--insurer`` names it; one insurer's report names it."""
    from client import cli

    monkeypatch.setattr(cli, "_ops", lambda a: _Ops())
    out = io.StringIO()
    assert cli.main(["--as", "moh:auditor-li", "claim", "report", "--insurer", "all"], out=out, err=io.StringIO()) == 0
    assert "insurer: all\n" in out.getvalue() and "None" not in out.getvalue()
    code, rep = _cli(monkeypatch, _Ops(), "--insurer", "all")
    assert code == 0 and isinstance(rep, dict) and rep["insurer"] == "all"
    code, rep = _cli(monkeypatch, _Ops(), "--insurer", "ins01")
    assert code == 0 and isinstance(rep, dict) and rep["insurer"] == "ins01"


def test_settled_reversed_settled_again_across_ranges_and_a_lost_stream(world: World) -> None:  # noqa: F811
    """A claim settled, reversed in a later range and the fill settled again (a new claim
    id): each event one row, in the range of its block, the ranges adding up to the second
    claim; a stream lost mid-range (SERVICE_UNAVAILABLE) is re-opened where it stopped,
    every block and claim once."""
    ledger = EventLedger(world.chain)
    prep = approved(world)
    lock_and_dispense(world, prep, trace_codes=["81234560000000009"]).unwrap()
    first = settle(world, prep).unwrap()
    cut = ledger.height
    world.chain.submit("settlement", "reverse", CLERK, claim_id=first["claim_id"], reason="DUPLICATE").unwrap()
    again = settle(world, prep).unwrap()
    assert again["claim_id"] != first["claim_id"]
    opened: list[int] = []

    def flaky(start: int, contract: str, follow: bool) -> Iterator[services_pb2.EventsResponse]:
        opened.append(start)
        for msg in ledger.events(start, contract, follow):
            if len(opened) == 1 and msg.block_number == ledger.height - 2:
                raise RxClientError("SERVICE_UNAVAILABLE", "the peer went away")
            yield msg

    one = claim_report(ledger.events, _reader(world, CLERK), 0, max_blocks=cut)
    two = claim_report(flaky, _reader(world, CLERK), one["next_block"])
    assert opened == [cut - 1, ledger.height - 2] and two["next_block"] == ledger.height
    assert [(r["event"], r["claim_id"]) for r in one["claims"]] == [("settled", first["claim_id"])]
    assert [(r["event"], r["claim_id"], r["status_now"]) for r in two["claims"]] == [
        ("reversed", first["claim_id"], "REVERSED"), ("settled", again["claim_id"], "SETTLED")]
    for k in AMOUNTS:
        assert one["totals"]["net"][k] + two["totals"]["net"][k] == again[k]
        assert two["totals"]["net"][k] == again[k] - first[k] == 0
