"""The demo story and the abuse cases against a real local network, via the CLI and the SDK."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rxchain.v1 import config_pb2

from client.errors import CommitError, EndorsementError, NoKeyGrant
from client.events import EventListener, MemoryCheckpoint
from client.gateway import SubmitResult
from client.notes import REVIEW, open_note
from client.rxops import DrugLine, IssueRequest, RxOperations
from client.session import Session
from node.protocol import MAX_PROTOCOL_VERSION, SUPPORTED_VERSIONS
from tests.e2e.conftest import Net
from tests.e2e.privacy_scan import raw_files, scan_leveldb, scan_raw, sensitive_terms

pytestmark = pytest.mark.integration

DOCTOR, WANG, CHEN, CLERK = "h01:dr-jiang", "p01:pharm-wang", "p02:pharm-chen", "ins01:clerk-zhao"


def _codes(net: Net, n: int) -> list[str]:
    """Fresh trace codes, remembered for the privacy scan (no raw trace code may reach a file)."""
    tag = os.urandom(4).hex().upper()
    codes = [f"TC{tag}{i:03d}" for i in range(n)]
    net.trace_codes.extend(codes)
    return codes


def _ops(net: Net, who: str) -> RxOperations:
    return RxOperations(Session(net.home, who))


# Prescriptions in these tests are valid for 2 days (the doctor may extend the day of issue
# to 3), so a run that crosses China-local midnight (16:00 UTC) cannot see EXPIRED.
VALID = ("--valid-days", "2")


def _issue_cli(net: Net, *extra: str, who: str = DOCTOR,
               patient: str = "patient-zhang") -> dict[str, Any]:
    return net.cli("--as", who, "rx", "issue", "--patient", patient, "--diagnosis", "I10", *VALID,
                   *extra)


def test_network_status_all_serving(net: Net):
    out = net.cli("network", "status")
    assert out["total"] == 9 and out["serving"] == 9
    kinds = sorted(r["kind"] for r in out["nodes"])
    assert kinds == ["orderer"] * 3 + ["peer"] * 6
    # what an operator checks on every node before raising the protocol version
    assert {(tuple(r["protocol_versions"]), r["protocol_version"]) for r in out["nodes"]} == {
        (tuple(sorted(SUPPORTED_VERSIONS)), MAX_PROTOCOL_VERSION)}
    # and every orderer knows each peer's release (told in its Deliver requests, relayed
    # between the orderers): the leader refuses a raise while a peer lacks the version
    peers = {r["node"] for r in out["nodes"] if r["kind"] == "peer"}
    expected = [dict.fromkeys(peers, max(SUPPORTED_VERSIONS))] * 3
    deadline = time.monotonic() + 20  # a peer's first Deliver request may still be on its way
    while True:
        told = [r["peer_protocol_versions"] for r in out["nodes"] if r["kind"] == "orderer"]
        if told == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
        out = net.cli("network", "status")
    assert told == expected, told
    # in statements the peers signed: an unsigned word (an older release) would not admit a raise
    assert [r["peers_unsigned"] for r in out["nodes"] if r["kind"] == "orderer"] == [[]] * 3
    # every orderer of the running network was confirmed new at its blank first start
    assert [r["raft_state_unconfirmed"] for r in out["nodes"] if r["kind"] == "orderer"] == [False] * 3


def test_a_peer_answers_its_configuration_in_force(net: Net):
    """Admin.Status with include_config answers the consortium configuration in force (what
    a session wraps record keys under); without it the status stays small."""
    with Session(net.home, DOCTOR) as s:
        plain = s.gateway.status()
        full = s.gateway.status(include_config=True)
        current = s.current_network().config
    assert plain.config == b"" and plain.height > 0
    assert full.config and current == config_pb2.ConsortiumConfig.FromString(full.config)
    assert current.consortium_id == s.net.config.consortium_id and current.sequence >= s.net.config.sequence
    assert {o.id for o in current.organizations} == {o.id for o in s.net.config.organizations}


def test_demo_story_through_the_cli(net: Net):
    """The story; the issue, the settlement and a refusal run as real `rxchain` processes."""
    before = net.cli("--as", CLERK, "patient", "show", "patient-zhang")
    issued = net.cli_proc("--as", DOCTOR, "rx", "issue", "--patient", "patient-zhang",
                          "--diagnosis", "I10", "--drug", "amlodipine:2",
                          "--drug", "XC08CAB037A001020180517:2", "--days", "28", "--long",
                          "--chronic-reason", "stable hypertension", "--pharmacy", "p01",
                          *VALID)
    rx = issued["rx_id"]
    assert isinstance(issued["block"], int) and len(issued["tx_id"]) == 64
    review = net.cli("--as", WANG, "rx", "review", rx, "--approve")
    assert review["status"] == "APPROVED" and review["block"] > issued["block"]
    codes = _codes(net, 4)
    disp = net.cli("--as", WANG, "rx", "dispense", rx, *[a for c in codes for a in ("--trace-code", c)])
    assert disp["status"] == "DISPENSED" and disp["fill"] == 1
    claim = net.cli_proc("--as", CLERK, "claim", "settle", rx)
    # h01 is the tertiary hospital: 2 x 20.00 (A) + 2 x 25.00 (B), deductible already met:
    # preself 5.00, inscp 85.00, fund 85.00 x 70% = 59.50, patient 30.50 all from the account.
    assert (claim["medfee_fen"], claim["fund_fen"], claim["account_fen"], claim["cash_fen"],
            claim["deductible_fen"]) == (9000, 5950, 3050, 0, 0)
    assert claim["claim_id"] == f"CLM-{rx}-1-1"
    after = net.cli("--as", CLERK, "patient", "show", "patient-zhang")
    assert after["account_balance_fen"] == before["account_balance_fen"] - 3050
    assert after["cap_used_fen"] == before["cap_used_fen"] + 5950
    assert after["deductible_used_fen"] == before["deductible_used_fen"] == 20000
    deliver = net.cli("--as", "p01:courier-1", "rx", "deliver", rx)
    assert deliver["status"] == "DELIVERED"
    mine = net.cli("--as", "h01:patient-zhang", "rx", "show", rx)
    assert [d["short_name"] for d in mine["content"]["drugs"]] == ["amlodipine", "benidipine"]
    assert mine["content"]["patient_info"]["name"] == "Zhang Guilan"
    trace = net.cli("--as", DOCTOR, "rx", "trace", rx)
    steps = trace["steps"]
    assert [s["step"] for s in steps] == ["issue", "review", "lock", "dispense", "settle", "deliver"]
    assert [s["org"] for s in steps] == ["h01", "p01", "p01", "p01", "ins01", "p01"]
    assert [s["role"] for s in steps] == ["doctor", "pharmacist", "pharmacist", "pharmacist",
                                          "clerk", "courier"]
    blocks = [s["block"] for s in steps]
    assert blocks == sorted(blocks) and all(isinstance(b, int) for b in blocks)
    assert steps[0]["tx_id"] == issued["tx_id"] and steps[-1]["block"] == deliver["block"]
    # the abuse cases on this prescription
    assert net.cli_proc_error("--as", CHEN, "rx", "show", rx)["error"] == "NO_KEY_GRANT"
    assert net.cli_proc_error("--as", CLERK, "claim", "settle", rx)["error"] == "DUPLICATE_CLAIM"
    assert net.cli_error("--as", DOCTOR, "rx", "revoke", rx, "--reason",
                         "too late")["error"] == "REVOKE_NOT_ALLOWED"
    auditor = net.cli("--as", "reg01:auditor-1", "rx", "show", rx)
    assert auditor["status"] == "DELIVERED" and auditor["content"] is None
    assert auditor["denied"] == "NO_KEY_GRANT"


def test_community_hospital_worked_example_via_sdk(net: Net):
    """DOMAIN.md §3, community: fund 72.25, account 17.75, cash 10.00."""
    doctor = _ops(net, "h02:dr-zhou")
    res = doctor.issue(IssueRequest(
        patient="patient-zhang", diagnosis="I10", pharmacy="p01", days=7, valid_days=2,
        drugs=[DrugLine("amlodipine", 2), DrugLine("benidipine", 2),
               DrugLine("calcium-supplement", 1)]))
    _ops(net, WANG).review(res["rx_id"], True)
    _ops(net, WANG).dispense(res["rx_id"], _codes(net, 5))
    claim = _ops(net, CLERK).settle(res["rx_id"])
    assert (claim["medfee_fen"], claim["fulamt_fen"], claim["preself_fen"], claim["inscp_fen"],
            claim["fund_fen"], claim["patient_fen"], claim["account_fen"], claim["cash_fen"]) == (
        10000, 1000, 500, 8500, 7225, 2775, 1775, 1000)
    assert claim["ratio_bp"] == 8500
    reversed_ = _ops(net, CLERK).reverse(claim["claim_id"], f"entered twice for benidipine, {REVERSAL_NOTE}")
    assert reversed_["status"] == "REVERSED" and reversed_["reversal_reason"] == "OTHER"
    assert reversed_["reversal_note"] == f"entered twice for benidipine, {REVERSAL_NOTE}"
    trail = _ops(net, CLERK).trace(res["rx_id"])["steps"]
    rev = [s for s in trail if s["step"] == "reverse"]
    assert rev and rev[0]["reason"] == "OTHER" and rev[0]["note"].endswith(REVERSAL_NOTE)
    again = _ops(net, CLERK).settle(res["rx_id"])
    assert again["claim_id"].endswith("-1-2") and again["fund_fen"] == 7225


def test_first_claim_of_the_year_goes_to_the_deductible(net: Net):
    """patient-sun: 200.00 deductible remaining, account 12.00."""
    res = _ops(net, "h02:dr-zhou").issue(IssueRequest(
        patient="patient-sun", diagnosis="I10", pharmacy="p01", days=7, valid_days=2,
        drugs=[DrugLine("amlodipine", 2), DrugLine("benidipine", 2)]))
    _ops(net, WANG).review(res["rx_id"], True)
    _ops(net, WANG).dispense(res["rx_id"], _codes(net, 1))
    claim = _ops(net, CLERK).settle(res["rx_id"])
    assert (claim["medfee_fen"], claim["deductible_fen"], claim["fund_fen"], claim["account_fen"],
            claim["cash_fen"]) == (9000, 8500, 0, 1200, 7800)
    status = net.cli("--as", CLERK, "patient", "show", "patient-sun")
    assert status["deductible_used_fen"] == 8500
    assert status["account_balance_fen"] == 0


@pytest.mark.parametrize(("who", "args", "reason"), [
    ("h01:nurse-liu", ("--drug", "amlodipine:1", "--days", "7"), "UNAUTHORIZED_PRESCRIBER"),
    ("h01:dr-new", ("--drug", "amlodipine:1", "--days", "7"), "PRESCRIBER_NOT_ELIGIBLE"),
    (DOCTOR, ("--drug", "morphine:1", "--days", "3"), "FORBIDDEN_DRUG_CLASS"),
    (DOCTOR, ("--drug", "alprazolam:1", "--days", "3"), "FORBIDDEN_DRUG_CLASS"),
    (DOCTOR, ("--drug", "amoxicillin:1", "--days", "14", "--long", "--chronic-reason", "x"),
     "LONGRX_EXCLUDED_CLASS"),
    (DOCTOR, ("--drug", "amlodipine:1", "--days", "8"), "QUANTITY_LIMIT"),
    (DOCTOR, ("--drug", "amlodipine:1", "--days", "7", "--valid-days", "4"), "VALIDITY_LIMIT"),
    (DOCTOR, ("--drug", "amlodipine:1", "--days", "7", "--first-visit"), "NOT_FOLLOW_UP"),
    (DOCTOR, ("--drug", "no-such-drug:1", "--days", "7"), "UNKNOWN_DRUG"),
])
def test_issue_refusals(net: Net, who, args, reason):
    out = net.cli_error("--as", who, "rx", "issue", "--patient", "patient-zhang",
                        "--diagnosis", "I10", *VALID, *args)
    assert out["error"] == reason


def test_routing_review_and_trace_code_refusals(net: Net):
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    assert net.cli_error("--as", WANG, "rx", "dispense", rx)["error"] == "NOT_REVIEWED"
    assert net.cli_error("--as", DOCTOR, "rx", "review", rx, "--approve")["error"] == "SOD_VIOLATION"
    net.cli("--as", WANG, "rx", "review", rx, "--approve")
    assert net.cli_error("--as", CHEN, "rx", "dispense", rx)["error"] == "NOT_ROUTED"
    assert net.cli_error("--as", CHEN, "rx", "lock", rx)["error"] == "NOT_ROUTED"
    codes = _codes(net, 1)
    net.cli("--as", WANG, "rx", "dispense", rx, "--trace-code", codes[0])
    assert net.cli_error("--as", WANG, "rx", "dispense", rx)["error"] == "ALREADY_DISPENSED"
    rx2 = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    net.cli("--as", WANG, "rx", "review", rx2, "--approve")
    out = net.cli_error("--as", WANG, "rx", "dispense", rx2, "--trace-code", codes[0])
    assert out["error"] == "TRACE_CODE_REUSED"
    # the lock the refused dispense took was released again: no other pharmacy is kept out
    shown = net.cli("--as", WANG, "rx", "show", rx2)
    assert (shown["status"], shown["lock"]) == ("APPROVED", None), shown
    assert net.cli_error("--as", WANG, "rx", "release", rx2)["error"] == "NOT_LOCKED"
    revoked = net.cli("--as", DOCTOR, "rx", "revoke", rx2, "--reason", "changed plan")
    assert revoked["status"] == "REVOKED"
    assert net.cli_error("--as", WANG, "rx", "lock", rx2)["error"] == "REVOKED"


REROUTE_NOTE = "check blood pressure before handing over"


def test_reroute_grants_the_new_pharmacy_and_revokes_the_old(net: Net):
    """Re-routed by the doctor (p01 -> p02), then by the patient (p02 -> p01): each re-route
    makes a fresh note key for the readers left (real certificates: the doctor's client finds
    the patient's through the HIS directory), so neither pharmacy opens, with any key it held
    when routed away, the note written after -- the patient, the doctor and p01 now read it."""
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    assert net.cli("--as", WANG, "rx", "show", rx)["content"]["rx_id"] == rx
    kept = [_ops(net, WANG)._get_key(rx)]  # all p01 holds once routed away
    routed = net.cli("--as", DOCTOR, "rx", "route", rx, "--pharmacy", "p02")
    assert routed["pharmacy"] == "p02" and routed["previous"] == "p01"
    assert "note_key_skipped" not in routed, routed
    assert net.cli("--as", CHEN, "rx", "show", rx)["content"]["rx_id"] == rx
    with pytest.raises(NoKeyGrant):
        _ops(net, WANG).show(rx)
    kept.append(_ops(net, CHEN)._get_key(rx))  # p02: the record key and note key 1
    routed = net.cli("--as", "h01:patient-zhang", "rx", "route", rx, "--pharmacy", "p01")
    assert routed["previous"] == "p02" and "note_key_skipped" not in routed, routed
    net.cli("--as", WANG, "rx", "review", rx, "--reject", "dose", "--note", REROUTE_NOTE)
    for reader in ("h01:patient-zhang", DOCTOR, WANG):
        assert net.cli("--as", reader, "rx", "show", rx)["review"]["note"] == REROUTE_NOTE, reader
    review = _ops(net, DOCTOR).s.gateway.evaluate("prescription", "show", {"rx_id": rx})["review"]
    assert review["note_epoch"] == 2
    held = [k for o in kept for k in (o.record_key, *o.note_keys.values())]
    assert len(held) == 3 and all(open_note(k, rx, REVIEW, review["note_ct"]) is None for k in held)


def test_concurrent_locks_resolve_to_one_winner_through_mvcc(net: Net):
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    net.cli("--as", WANG, "rx", "review", rx, "--approve")
    a, b = _ops(net, WANG).s.gateway, _ops(net, WANG).s.gateway
    built = [g.builder.proposal("prescription", "lock", {"rx_id": rx}) for g in (a, b)]
    endorsed = [g.endorse(p) for g, p in zip((a, b), built, strict=True)]
    envelopes = [g.builder.envelope(p, e.prepared_transaction)
                 for g, p, e in zip((a, b), built, endorsed, strict=True)]
    outcomes: list[object] = [None, None]

    def submit(i: int) -> None:
        g = (a, b)[i]
        try:
            outcomes[i] = g.submit_envelope(built[i].tx_id, envelopes[i])
        except CommitError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = [o for o in outcomes if isinstance(o, CommitError)]
    wins = [o for o in outcomes if o is not None and not isinstance(o, CommitError)]
    assert len(wins) == 1 and len(errors) == 1, outcomes
    assert errors[0].reason == "MVCC_READ_CONFLICT"
    assert errors[0].block >= 1


def test_unknown_identity_and_bad_arguments(net: Net):
    assert net.cli_error("--as", "h01:nobody", "rx", "show", "RX-1")["error"] == "NO_WALLET"
    with pytest.raises(EndorsementError) as e:
        _ops(net, DOCTOR).s.gateway.evaluate("prescription", "show", {"rx_id": "RX-NOPE"})
    assert e.value.reason == "NOT_FOUND"


def test_events_resume_from_checkpoint(net: Net):
    gw = _ops(net, DOCTOR).s.gateway
    cp = MemoryCheckpoint(0)
    listener = EventListener(gw.events, cp)
    first = list(listener.blocks(follow=False))
    assert [b.block for b in first] == list(range(len(first)))
    assert cp.load() == len(first)
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7")
    more = list(listener.blocks(follow=False))
    assert more and more[0].block == len(first)
    assert any(tx_id == rx["tx_id"] and code == "VALID" for b in more for tx_id, code in b.txs)


def test_ledger_verify_and_height_on_every_peer(net: Net):
    out = net.cli("ledger", "verify")
    assert out["ok"] and out["agree"] and len(out["peers"]) == 6
    assert all(p["ok"] and not p["errors"] for p in out["peers"])
    one = net.cli("ledger", "height", "--peer", "p01")
    assert one["height"] >= out["peers"][0]["height"]


CONSENT_NOTE = "half dose from tomorrow"


def test_patient_consent_shares_with_another_hospital_and_is_audited(net: Net):
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    assert net.cli_error("--as", "h02:dr-zhou", "rx", "show", rx)["error"] == "NO_KEY_GRANT"
    granted = net.cli("--as", "h01:patient-zhang", "rx", "consent", rx, "--org", "h02")
    assert granted["granted"] is True
    shown = net.cli("--as", "h02:dr-zhou", "rx", "show", rx)
    assert shown["content"]["rx_id"] == rx and shown["grant"] == "h02"
    withdrawn = net.cli("--as", "h01:patient-zhang", "rx", "withdraw", rx, "--org", "h02")
    assert "note_key_skipped" not in withdrawn
    assert net.cli_error("--as", "h02:dr-zhou", "rx", "show", rx)["error"] == "NO_KEY_GRANT"
    # a note after the withdrawal: under the fresh note key the patient's client wrapped for
    # the readers left (real certificates), which they open and h02 never received
    net.cli("--as", WANG, "rx", "review", rx, "--reject", "dose", "--note", CONSENT_NOTE)
    for reader in ("h01:patient-zhang", DOCTOR, WANG):
        assert net.cli("--as", reader, "rx", "show", rx)["review"]["note"] == CONSENT_NOTE, reader
    assert net.cli("--as", "reg01:auditor-1", "rx", "show", rx)["review"]["note"] is None
    trail = net.cli("--as", "reg01:auditor-1", "rx", "audit", rx)["events"]
    fetches = [(e["org"], e["outcome"]) for e in trail if e["event"] == "KEY_FETCH"]
    assert ("h02", "DENIED") in fetches and ("h02", "GRANTED") in fetches
    assert fetches.count(("h02", "DENIED")) == 2
    assert {e["event"] for e in trail} >= {"GRANT", "REVOKE_GRANT", "KEY_FETCH"}
    assert net.cli_error("--as", CHEN, "rx", "audit", rx)["error"] == "ACCESS_DENIED"


def test_events_command_is_resumable(net: Net, tmp_path: Path):
    cp = tmp_path / "cp"
    first = net.cli("--as", "reg01:auditor-1", "events", "--checkpoint", str(cp))
    assert first["blocks"][0]["block"] == 0 and first["next_block"] == len(first["blocks"])
    issued = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7")
    second = net.cli("--as", "reg01:auditor-1", "events", "--checkpoint", str(cp),
                     "--contract", "prescription")
    assert second["blocks"][0]["block"] == first["next_block"]
    events = [e for b in second["blocks"] for e in b["events"]]
    assert any(e["tx_id"] == issued["tx_id"] and e["contract"] == "prescription" for e in events)


def test_local_ledger_verify_recomputes_the_state(net: Net):
    out = net.cli("ledger", "verify", "--local", "--peer", "p01")
    assert out["ok"] and out["peers"][0]["height"] > 10 and out["peers"][0]["state_hash"]


def test_repeat_fills_respect_the_interval(net: Net):
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "3", "--max-fills", "2",
                    "--fill-interval-days", "3", "--pharmacy", "p01")["rx_id"]
    net.cli("--as", WANG, "rx", "review", rx, "--approve")
    first = net.cli("--as", WANG, "rx", "dispense", rx)
    assert (first["fill"], first["fills_left"]) == (1, 1)
    assert net.cli_error("--as", WANG, "rx", "dispense", rx)["error"] == "TOO_EARLY"
    shown = net.cli("--as", WANG, "rx", "show", rx)
    assert shown["status"] == "DISPENSED" and shown["fills"] == 1 and shown["lock"] is None
    assert net.cli_error("--as", "p01:pharm-wang", "claim", "settle", rx)["error"] == "WRONG_ROLE"


def test_pipelined_submissions_on_one_transact_stream(net: Net):
    from client.pipeline import Call, submit_many

    tag = os.urandom(3).hex()
    calls = [Call("registry", "register_practitioner", {
        "name": f"dr-pipe-{tag}-{i}", "role": "doctor", "code": f"D5001{tag}{i:02d}",
        "licence_active": True, "practice_years": 5 + i, "internet_practice": True})
        for i in range(5)]
    calls.insert(2, Call("registry", "register_practitioner", {
        "name": f"bad-{tag}", "role": "wizard", "code": "X1", "licence_active": True,
        "practice_years": 1, "internet_practice": False}))
    with Session(net.home, "h01:admin") as s:
        out = submit_many(s.gateway, calls)
        assert len(out) == 6
        bad = out.pop(2)
        assert isinstance(bad, EndorsementError) and bad.reason == "BAD_ARGUMENTS"
        assert all(isinstance(r, SubmitResult) and r.code == "VALID" for r in out), out
        assert all(isinstance(r, SubmitResult) and r.result["name"].startswith("dr-pipe")
                   for r in out)
        got = s.gateway.evaluate("registry", "get_practitioner",
                                 {"org": "h01", "name": f"dr-pipe-{tag}-4"})
        assert got["practice_years"] == 9


def test_altered_content_is_hash_mismatch(net: Net):
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    wang = _ops(net, WANG)
    wang.review(rx, True)
    wang.lock(rx)
    opened = wang._get_key(rx)
    forged = dict(opened.body, drugs=[dict(opened.body["drugs"][0], qty=9)])
    with pytest.raises(EndorsementError) as e:
        wang.s.gateway.submit("prescription", "dispense", {"rx_id": rx},
                              {"content": forged, "salt": opened.salt}, endorsing_orgs=["p01", "h01"])
    assert e.value.reason == "HASH_MISMATCH"
    done = wang.dispense(rx, _codes(net, 1))
    assert done["status"] == "DISPENSED"


def test_listing_prescriptions(net: Net):
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7")["rx_id"]
    mine = net.cli("--as", "h01:patient-zhang", "rx", "list", "--patient", "patient-zhang",
                   "--limit", "200")
    assert rx in [p["rx_id"] for p in mine["prescriptions"]]
    everything = net.cli("--as", "reg01:auditor-1", "rx", "list", "--limit", "200")
    assert rx in [p["rx_id"] for p in everything["prescriptions"]]
    assert all("ciphertext" not in p for p in everything["prescriptions"])
    assert net.cli_error("--as", WANG, "rx", "list")["error"] == "ACCESS_DENIED"


def test_demo_privacy_check_finds_nothing(net: Net):
    from client.demo import Story

    lines: list[str] = []
    story = Story(net.home, say=lines.append)
    try:
        story.privacy_check("h01:dr-jiang", ("amlodipine", "benidipine"))
    finally:
        story.close()
    assert story.results == {"privacy_name": False, "privacy_ID number": False,
                             "privacy_birth date": False, "privacy_drug names": False}, lines
    assert lines[0].startswith("  scanned ") and "peer.ins01" in lines[0]
    assert lines[-1] == "  drug names (amlodipine, benidipine): not found"


# Free text of reasons (issue 6): only codes reach the ledger; these phrases must appear in
# no node file (checked by the last test), while grant holders read them back decrypted.
REVOKE_NOTE = "switch to Amlodipine 10 mg for ankle oedema"
REJECT_NOTE = "interaction with benidipine and grapefruit juice"
REVERSAL_NOTE = "pharmacy keyed the wrong batch"
FREE_TEXT = ("ankle oedema", "grapefruit juice", "keyed the wrong batch")


def test_free_text_reasons_become_codes_and_encrypted_notes(net: Net):
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    net.cli("--as", WANG, "rx", "review", rx, "--approve")
    assert net.cli_error("--as", DOCTOR, "rx", "revoke", rx, "--reason", "")["error"] == "REASON_REQUIRED"
    revoked = net.cli("--as", DOCTOR, "rx", "revoke", rx, "--reason", REVOKE_NOTE)
    assert revoked["status"] == "REVOKED"
    mine = net.cli("--as", DOCTOR, "rx", "show", rx)
    assert mine["revocation"]["reason"] == "OTHER" and mine["revocation"]["note"] == REVOKE_NOTE
    assert "note_ct" not in mine["revocation"]
    pharmacy = net.cli("--as", WANG, "rx", "show", rx)  # the routed pharmacy holds a grant too
    assert pharmacy["revocation"]["note"] == REVOKE_NOTE
    auditor = net.cli("--as", "reg01:auditor-1", "rx", "show", rx)
    assert auditor["revocation"]["reason"] == "OTHER" and auditor["revocation"]["note"] is None
    steps = net.cli("--as", DOCTOR, "rx", "trace", rx)["steps"]
    assert steps[-1]["step"] == "revoke" and steps[-1]["reason"] == "OTHER"
    assert steps[-1]["note"] == REVOKE_NOTE
    # a listed code is used as is, with an optional note
    rx2 = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    rejected = net.cli("--as", WANG, "rx", "review", rx2, "--reject", "interaction", "--note", REJECT_NOTE)
    assert rejected["status"] == "REJECTED"
    shown = net.cli("--as", DOCTOR, "rx", "show", rx2)
    assert shown["review"]["reason"] == "INTERACTION" and shown["review"]["note"] == REJECT_NOTE


def test_key_releases_are_on_the_access_audit_log_of_the_peer_that_answered(net: Net):
    """A key fetched (submitted: KEY_FETCH on the ledger) and one only evaluated (no trace on the
    ledger) are both on the access-audit log of p01's peer, which answered them, with the
    caller, the outcome and the path; its admin and the regulator read it, others are refused."""
    rx = _issue_cli(net, "--drug", "amlodipine:1", "--days", "7", "--pharmacy", "p01")["rx_id"]
    shown = net.cli("--as", WANG, "rx", "show", rx, "--peer", "p01")
    assert shown["content"] is not None
    with Session(net.home, WANG, peer_org="p01") as s:
        grant = s.gateway.evaluate("prescription", "get_key", {"rx_id": rx})  # a query: nothing ordered
    assert grant["party"] == "p01" and grant["wrapped_key"]
    with Session(net.home, CHEN, peer_org="p01") as s:
        denied = s.gateway.evaluate("prescription", "get_key", {"rx_id": rx})
    assert denied["error"] == "NO_KEY_GRANT"
    page = net.cli("--as", "p01:admin", "audit", "list", "--rx", rx)
    rows = [(r["org"], r["role"], r["function"], r["outcome"], r["path"]) for r in page["records"]]
    assert ("p01", "pharmacist", "get_key", "GRANTED", "endorse") in rows
    assert rows[-2:] == [("p01", "pharmacist", "get_key", "GRANTED", "evaluate"),
                         ("p02", "pharmacist", "get_key", "NO_KEY_GRANT", "evaluate")]
    assert all(r["record_id"] == rx and r["authenticated"] for r in page["records"])
    regulator = net.cli("--as", "reg01:auditor-1", "audit", "verify", "--peer", "p01")
    assert regulator["ok"] and regulator["checked"] >= len(rows)
    assert net.cli_error("--as", WANG, "audit", "list", "--peer", "p01")["error"] == "AUDIT_ACCESS_DENIED"
    assert net.cli_error("--as", "h01:admin", "audit", "list", "--peer", "p01")["error"] == "AUDIT_ACCESS_DENIED"


# Keep this test LAST in the file: it scans what every earlier test (and test_fhir_gateway)
# wrote. NATIONAL_CODE is on the ledger in the formulary: the positive control of the scan.
NATIONAL_CODE = "XC08CAA001A001010100001"
SCANNED_PEERS = ("h01", "p01", "ins01")


def test_no_patient_identifiers_in_blocks_state_or_logs(net: Net):
    """Names, ID numbers, birth dates, drug names, the diagnosis note and raw trace codes
    are nowhere in the nodes' files: every key and value of the peers' state (read through
    plyvel, LevelDB tables are snappy-compressed), and the raw blocks, raft files and logs."""
    terms = [*sensitive_terms(), "stable hypertension", *FREE_TEXT, *net.trace_codes]
    hits = []
    for org in SCANNED_PEERS:
        state = net.home / "nodes" / f"peer.{org}" / "data" / "ledger" / "state"
        count, found = scan_leveldb(state, [*terms, NATIONAL_CODE], f"peer.{org} state")
        assert count > 100, f"peer.{org}: only {count} state entries"
        assert NATIONAL_CODE in {h.term for h in found}, f"peer.{org}: the scan saw no formulary"
        hits += [h for h in found if h.term != NATIONAL_CODE]
        blocks = sorted((state.parent / "blocks").glob("seg-*.blk"))
        assert blocks and scan_raw(blocks, [NATIONAL_CODE]), f"peer.{org}: no blocks seen"
    files = raw_files(net.home)
    logs = {p.name for p in files if p.parent.name == "logs"}
    assert {f"peer.{org}.log" for org in SCANNED_PEERS} <= logs, logs
    hits += scan_raw(files, terms)
    assert not hits, hits[:20]
