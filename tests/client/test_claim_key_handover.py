"""A later fill of a repeat prescription dispensed after the patient's account moved is the new
insurer's (contracts/README.md "Moving an account"): the insurer holding the claim key hands it
over with ``RxOperations.grant_claim_key``, and the new insurer settles the fill through
``RxOperations.settle`` -- which opened no claim subset for it before (NO_KEY_GRANT). Run over
the real contracts in the sandbox."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from client.errors import NoKeyGrant, RxClientError
from client.rxops import RxOperations
from tests.client.contractgw import ContractGateway
from tests.contracts.chain import DAY_MS, Who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import CLERK, CLERK2, lock_and_dispense, settle
from tests.contracts.rxclient import CONSORTIUM_SECRET, Prepared, World, trace_key
from tests.contracts.test_account_transfer import call, dispensed, with_ins02, zhang
from tests.contracts.test_settle_residuals6 import REPEAT


def _ops(w: World, caller: Who) -> RxOperations:
    """Operations as an insurer clerk whose wallet holds the keyring's key of its insurer."""
    key = w.keyring.of(caller.org)
    session = SimpleNamespace(
        gateway=ContractGateway(w, caller), net=SimpleNamespace(peers=[], secret=CONSORTIUM_SECRET),
        trace_key=trace_key(), peer_org=caller.org,
        identity=SimpleNamespace(org=caller.org, user=caller.name, role=caller.role, private_key=key),
        decryption_keys=lambda: [key], records_public_key=lambda org: w.keyring.of(org).public_key())
    return RxOperations(session)  # type: ignore[arg-type]


def _moved_to_ins02_before_fill_two(world: World, prep: Prepared) -> None:  # noqa: F811
    """Fill 1 of ``prep`` settled by ins01, the patient's account moved to ins02, and fill 2
    dispensed 28 days on (its claim ins02's to settle, with a claim key it does not hold yet)."""
    settle(world, prep).unwrap()
    call(world, "request_transfer", zhang(world), to_insurer="ins02")
    assert call(world, "accept_transfer", CLERK2)["insurer"] == "ins02"
    world.chain.advance(28 * DAY_MS)
    lock_and_dispense(world, prep).unwrap()


def test_the_new_insurer_settles_a_later_fill_with_the_claim_key_handed_over(world: World) -> None:  # noqa: F811
    with_ins02(world)
    repeat = dispensed(world, **REPEAT)
    rx_id = repeat.args["rx_id"]
    _moved_to_ins02_before_fill_two(world, repeat)
    ins01, ins02 = _ops(world, CLERK), _ops(world, CLERK2)
    with pytest.raises(NoKeyGrant):
        ins02.settle(rx_id, 2)
    with pytest.raises(RxClientError) as err:
        ins01.settle(rx_id, 2)
    assert err.value.reason == "NOT_INSURER_OF_FILL"
    assert ins01.grant_claim_key(rx_id, "ins02")["granted"] is True
    claim = ins02.settle(rx_id, 2)
    assert (claim["insurer"], claim["fill"]) == ("ins02", 2)
    assert claim["medfee_fen"] == claim["fund_fen"] + claim["patient_fen"]


def test_the_issuing_hospitals_doctor_hands_the_key_over_with_rx_grant_claim_key(
        world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    """ins01 never hands the claim key over: a doctor of h01 runs ``rxchain rx grant-claim-key
    RX --to ins02``, which hands over the copy the SDK's issue kept (``seal_prescription``
    wraps one for the issuing hospital), and ins02 settles the later fill."""
    import json

    from client import cli
    from client.records import claim_wrap_context, seal_prescription, unb64
    from node.crypto import aead
    from tests.contracts.flows import HE, JIANG
    from tests.contracts.test_settle_residuals7 import _issued_with_copy

    sealed = seal_prescription("RX-S", {"patient": "p", "drugs": [], "diagnosis": "I10"}, {}, "ins01",
                               world.keyring.of("ins01").public_key(), "", "00" * 32,
                               hospital=("h01", world.keyring.of("h01").public_key()))
    assert aead.unwrap_key(world.keyring.of("h01"), unb64(sealed.args["claim_keys"]["h01"]),
                           claim_wrap_context("RX-S", "h01")) == sealed.claim_key
    with_ins02(world)
    prep = _issued_with_copy(world)
    rx_id = prep.args["rx_id"]
    _moved_to_ins02_before_fill_two(world, prep)
    ins02 = _ops(world, CLERK2)
    with pytest.raises(NoKeyGrant):
        ins02.settle(rx_id, 2)
    with pytest.raises(RxClientError) as err:  # the hospital pharmacist holds the record key, no claim key copy
        _ops(world, HE).grant_claim_key(rx_id, "ins02")
    assert err.value.reason == "WRONG_ROLE"
    doctor = _ops(world, JIANG)
    monkeypatch.setattr(cli, "_ops", lambda a: SimpleNamespace(
        grant_claim_key=doctor.grant_claim_key, s=SimpleNamespace(close=lambda: None)))
    rc = cli.main(["--json", "--as", "h01:dr-jiang", "rx", "grant-claim-key", rx_id, "--to", "ins02"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and (out["org"], out["granted"]) == ("ins02", True), out
    claim = ins02.settle(rx_id, 2)
    assert (claim["insurer"], claim["fill"]) == ("ins02", 2)


def test_the_issuing_doctor_holding_the_claim_key_opens_no_reversal_note_of_the_insurer(
        world: World) -> None:  # noqa: F811
    """The doctor's copy of the claim key (to hand it to a later insurer) opened the insurer's
    reversal notes, sealed under that key; ``RxOperations.reverse`` now seals them for the
    insurer's records key alone. A note an earlier client sealed under the claim key still reads
    for the insurer."""
    from client.notes import REVERSE, open_note, seal_note
    from client.records import claim_wrap_context, unb64
    from node.crypto import aead
    from tests.contracts.flows import AUDITOR, HE, JIANG
    from tests.contracts.test_settle_residuals7 import _issued_with_copy

    note = "entered twice for Amlodipine"
    prep = _issued_with_copy(world)
    rx_id = prep.args["rx_id"]
    claim = settle(world, prep).unwrap()
    doctor = _ops(world, JIANG)
    gateway = doctor.s.gateway
    assert isinstance(gateway, ContractGateway)
    with pytest.raises(RxClientError) as err:  # a note for the insurer's key is a clerk's to seal
        doctor.reverse(claim["claim_id"], "OTHER", note)
    assert err.value.reason == "WRONG_ROLE" and gateway.calls == []
    insurer = _ops(world, CLERK)
    rec = insurer.reverse(claim["claim_id"], "OTHER", note)
    assert (rec["status"], rec["reversal_reason"], rec["reversal_note"]) == ("REVERSED", "OTHER", note)
    grant = world.chain.submit("prescription", "get_key", JIANG, rx_id=rx_id).unwrap()
    claim_key = aead.unwrap_key(world.keyring.of("h01"), unb64(grant["claim_wrapped_key"]),
                                claim_wrap_context(rx_id, "h01"))
    steps = world.chain.query("prescription", "trace", JIANG, rx_id=rx_id).unwrap()["steps"]
    (note_ct,) = [s["detail"]["note_ct"] for s in steps if s["step"] == "reverse"]
    assert open_note(claim_key, rx_id, REVERSE, note_ct) is None
    reversal = [s for s in insurer.trace(rx_id)["steps"] if s["step"] == "reverse"]
    assert [s["note"] for s in reversal] == [note]
    for reader in (JIANG, HE, AUDITOR):
        reversal = [s for s in _ops(world, reader).trace(rx_id)["steps"] if s["step"] == "reverse"]
        assert [s["note"] for s in reversal] == [None], reader
    # a claim reversed by an earlier client, its note under the claim key: still read
    again = settle(world, prep).unwrap()
    old_ct = seal_note(claim_key, rx_id, REVERSE, "an earlier client's note")
    world.chain.submit("settlement", "reverse", CLERK, claim_id=again["claim_id"], reason="OTHER",
                       note_ct=old_ct).unwrap()
    reversal = [s for s in insurer.trace(rx_id)["steps"] if s["step"] == "reverse"]
    assert [s["note"] for s in reversal] == [note, "an earlier client's note"]
    # the claim record opens its note for the insurer alone (the old one through its claim grant)
    assert insurer.claim(claim["claim_id"])["reversal_note"] == note
    assert insurer.claim(again["claim_id"])["reversal_note"] == "an earlier client's note"
    for reader in (JIANG, AUDITOR):
        rec = _ops(world, reader).claim(claim["claim_id"])
        assert rec["reversal_note"] is None and rec["reversal_note_ct"], reader
    plain = insurer.claim(again["claim_id"], open_note=False)  # (the claims report's read)
    assert "reversal_note" not in plain and plain["reversal_note_ct"] == old_ct
