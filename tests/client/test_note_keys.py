"""Note keys (contracts/README.md "Note keys"): a note written after the patient withdrew a
consent is under a fresh key wrapped only for the readers left, so the withdrawn organisation
-- which keeps every key it fetched -- cannot open it, while the patient, the hospital and the
pharmacy still read it; notes of the previous release (under the record key) still read.
Run through ``RxOperations`` over the real prescription contract in the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from client.errors import NoKeyGrant, RxClientError
from client.gateway import SubmitResult
from client.notes import REVIEW, open_note, seal_note
from client.rxops import RxOperations
from node.sandbox import canonical
from tests.client.contractgw import ContractGateway
from tests.contracts.chain import Who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import HE, JIANG, WANG, ZHOU, issue
from tests.contracts.rxclient import World, trace_key

NOTE = "halve amlodipine to 2.5 mg: ankle oedema"  # what h02 must not read once withdrawn


def _ops(w: World, caller: Who, key_party: str,
         before: dict[str, Callable[[], None]] | None = None) -> tuple[RxOperations, ContractGateway]:
    """Operations as ``caller`` whose wallet holds the keyring's key of ``key_party``."""
    gw = ContractGateway(w, caller, before)
    key = w.keyring.of(key_party)
    session = SimpleNamespace(
        gateway=gw, net=SimpleNamespace(peers=[]), trace_key=trace_key(),
        identity=SimpleNamespace(org=caller.org, user=caller.name, role=caller.role, private_key=key),
        decryption_keys=lambda: [key], records_public_key=lambda org: w.keyring.of(org).public_key())
    return RxOperations(session), gw  # type: ignore[arg-type]


def _patient(w: World, **kw: Any) -> RxOperations:
    return _ops(w, w.patient_who("patient-zhang"), "patient:" + w.pid("patient-zhang"), **kw)[0]


def _state(w: World, key: str) -> Any:
    raw = w.chain.state.values.get(("prescription", key))
    return None if raw is None else canonical.decode(raw, key)


def _issued(w: World) -> str:
    prep, out = issue(w)  # routed to p01, not reviewed yet
    out.unwrap()
    return str(prep.args["rx_id"])


class OldKeyAnswers(ContractGateway):
    """``get_key`` answered as the previous release's contract did: no note keys, no readers."""

    def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
               endorsing_orgs: Any = None) -> SubmitResult:
        res = super().submit(contract, fn, args, transient, endorsing_orgs)
        if fn == "get_key" and isinstance(res.result, dict):
            for k in ("note_epoch", "note_keys", "readers"):
                res.result.pop(k, None)
        return res


def test_a_withdrawn_consent_reads_no_note_written_after_the_withdrawal(world: World) -> None:  # noqa: F811
    """h02 held a consent and fetched the record key (and every note key it had); the patient
    withdraws; p01's pharmacist rejects with a note. With everything h02 ever fetched the note
    stays sealed; the patient, the hospital's doctor and pharmacist and the pharmacy read it.
    (It did open: every note was under the one record key h02 kept.)"""
    rx = _issued(world)
    patient = _patient(world)
    zhou = _ops(world, ZHOU, "h02")[0]
    patient.grant_consent(rx, "h02")
    kept = zhou._get_key(rx)  # all h02 ever holds: the record key and the note keys of its grant
    assert zhou.show(rx)["content"]["rx_id"] == rx
    patient.revoke_consent(rx, "h02")
    with pytest.raises(NoKeyGrant):
        zhou.show(rx)
    _ops(world, WANG, "p01")[0].review(rx, approve=False, reason="DOSE", note=NOTE)

    review = _state(world, "rx/" + rx)["review"]
    assert review["note_epoch"] == 1 and review["note_ct"]
    held = [kept.record_key, *kept.note_keys.values()]
    assert all(open_note(k, rx, REVIEW, review["note_ct"]) is None for k in held)
    for caller, party in ((world.patient_who("patient-zhang"), "patient:" + world.pid("patient-zhang")),
                          (JIANG, "h01"), (HE, "h01"), (WANG, "p01")):
        ops = _ops(world, caller, party)[0]
        assert ops.show(rx)["review"]["note"] == NOTE, caller
        steps = [s for s in ops.trace(rx)["steps"] if s["step"] == "review"]
        assert steps[0]["note"] == NOTE and "note_epoch" not in steps[0], caller


def test_a_record_of_the_previous_release_still_reads_beside_later_notes(world: World) -> None:  # noqa: F811
    """A note the previous release wrote -- under the record key, no ``note_epoch``, grants
    without note keys, a ``get_key`` answer without them -- reads as before; after a
    withdrawal the trail holds it beside a note under note key 1, and the readers open both."""
    rx = _issued(world)
    record_key = world.record_keys[rx]
    # the previous release's client: the note under the record key, no note_epoch argument
    world.chain.submit("prescription", "review", WANG, rx_id=rx, approve=True, reason="",
                       note_ct=seal_note(record_key, rx, REVIEW, "old note")).unwrap()
    assert "note_epoch" not in _state(world, "rx/" + rx)["review"]
    assert "note_epoch" not in _state(world, "rx/" + rx)
    assert all("note_keys" not in _state(world, f"grant/{rx}/{p}") for p in ("patient", "h01", "p01"))
    for caller, party in ((JIANG, "h01"), (WANG, "p01")):
        old = RxOperations(_ops(world, caller, party)[0].s)
        old.s.gateway = OldKeyAnswers(world, caller)  # type: ignore[assignment]
        assert old.show(rx)["review"]["note"] == "old note"
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    patient.revoke_consent(rx, "h02")
    _ops(world, JIANG, "h01")[0].revoke(rx, "OTHER", note="new note")
    for caller, party in ((world.patient_who("patient-zhang"), "patient:" + world.pid("patient-zhang")),
                          (JIANG, "h01"), (WANG, "p01")):
        ops = _ops(world, caller, party)[0]
        shown = ops.show(rx)
        assert (shown["review"]["note"], shown["revocation"]["note"]) == ("old note", "new note"), caller
        notes = {s["step"]: s.get("note") for s in ops.trace(rx)["steps"]}
        assert (notes["review"], notes["revoke"]) == ("old note", "new note"), caller


def test_a_withdrawal_made_between_key_fetch_and_note_is_answered_by_sealing_again(world: World) -> None:  # noqa: F811
    """The pharmacist's client fetched the key in force, then the patient withdrew h02's
    consent before the review was submitted: the contract refuses the note under the older
    key (NOTE_KEY_STALE, nothing written) and the client seals it again under the new one."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    kept = _ops(world, ZHOU, "h02")[0]._get_key(rx)

    def withdraw() -> None:  # committed between the pharmacist's key fetch and its review
        patient.revoke_consent(rx, "h02")

    wang, gw = _ops(world, WANG, "p01", before={"review": withdraw})
    wang.review(rx, approve=False, reason="DOSE", note=NOTE)
    assert [(c[0], c[2]) for c in gw.calls if c[0] == "review"] == [("review", "NOTE_KEY_STALE"), ("review", "OK")]
    review = _state(world, "rx/" + rx)["review"]
    assert review["note_epoch"] == 1
    assert open_note(kept.record_key, rx, REVIEW, review["note_ct"]) is None
    assert _ops(world, HE, "h01")[0].show(rx)["review"]["note"] == NOTE


def test_consents_and_routes_after_a_withdrawal_carry_the_note_keys(world: World) -> None:  # noqa: F811
    """A consent granted (again) or a pharmacy routed after a withdrawal gets every note key
    made so far: it reads the notes written before it, as with the one record key."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    patient.revoke_consent(rx, "h02")
    _ops(world, JIANG, "h01")[0].revoke(rx, "OTHER", note=NOTE)
    patient.grant_consent(rx, "h02")  # consent again: h02 reads the record and its notes again
    assert _ops(world, ZHOU, "h02")[0].show(rx)["revocation"]["note"] == NOTE
    assert _state(world, f"grant/{rx}/h02")["note_keys"].keys() == {"1"}


def test_a_withdrawal_under_a_contract_before_note_keys_only_withdraws(world: World) -> None:  # noqa: F811
    """Clients are upgraded before the contract: the previous release's ``get_key`` names no
    readers, so the withdrawal is sent as before (no ``note_keys``, which it would refuse)."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    old = OldKeyAnswers(world, world.patient_who("patient-zhang"))
    patient.s.gateway = old  # type: ignore[assignment]
    patient.revoke_consent(rx, "h02")
    assert [(c[0], sorted(c[1]), c[2]) for c in old.calls] == [
        ("get_key", ["rx_id"], "OK"), ("revoke_consent", ["org", "rx_id"], "OK")]
    assert _state(world, f"grant/{rx}/h02") is None


def test_revoke_note_of_a_caller_without_the_note_key_is_refused_before_anything_is_sent(world: World) -> None:  # noqa: F811
    """A writer whose grant lacks the note key in force (a bad wrap by the withdrawing client)
    gets NoKeyGrant from its client: its note is never sealed under an older key."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    patient.revoke_consent(rx, "h02")
    grant = _state(world, f"grant/{rx}/h01")
    grant["note_keys"]["1"] = world.keyring.wrap("h02", b"k" * 32, f"rxchain/rx/{rx}/h01/note/1")
    world.chain.state.values[("prescription", f"grant/{rx}/h01")] = canonical.dumps(grant)
    jiang, gw = _ops(world, JIANG, "h01")
    with pytest.raises(NoKeyGrant):
        jiang.revoke(rx, "OTHER", note=NOTE)
    assert [c[0] for c in gw.calls] == ["get_key"]
    assert jiang.show(rx)["status"] == "ISSUED"  # a note key that does not open: no crash
    assert _state(world, "rx/" + rx)["revocation"] is None


def test_a_reader_without_a_usable_certificate_does_not_stop_the_withdrawal(world: World) -> None:  # noqa: F811
    """No note key can reach a reader whose records certificate is revoked: the consent is
    withdrawn all the same (without a note key), and the answer says so."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    usable = patient.s.records_public_key

    def records_public_key(org: str) -> Any:
        if org == "p01":
            raise RxClientError("CERT_REVOKED", "records certificate of p01 is revoked")
        return usable(org)

    patient.s.records_public_key = records_public_key  # type: ignore[method-assign]
    out = patient.revoke_consent(rx, "h02")
    assert out["granted"] is False and out["note_key_skipped"].startswith("CERT_REVOKED")
    assert _state(world, f"grant/{rx}/h02") is None
    assert "note_epoch" not in _state(world, "rx/" + rx)


def test_a_route_between_the_key_fetch_and_the_withdrawal_is_answered_by_wrapping_again(world: World) -> None:  # noqa: F811
    """The hospital re-routes to p02 after the patient's client listed the readers (p01 among
    them): the withdrawal naming p01 is refused (nothing written) and sent again for the
    readers now -- p02 gets the note key, p01 (routed away) does not."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")

    def reroute() -> None:
        world.chain.submit("prescription", "route", JIANG, rx_id=rx, pharmacy="p02",
                           wrapped_key=world.wrap_for(rx, "p02")).unwrap()

    gw = ContractGateway(world, world.patient_who("patient-zhang"), {"revoke_consent": reroute})
    patient.s.gateway = gw  # type: ignore[assignment]
    patient.revoke_consent(rx, "h02")
    assert [(c[0], c[2]) for c in gw.calls] == [("get_key", "OK"), ("revoke_consent", "BAD_ARGUMENTS"),
                                                ("get_key", "OK"), ("revoke_consent", "OK")]
    assert sorted(gw.calls[3][1]["note_keys"]) == ["h01", "p02", "patient"]
    assert _state(world, f"grant/{rx}/p02")["note_keys"].keys() == {"1"}


def test_a_withdrawal_past_the_last_note_key_still_withdraws(world: World) -> None:  # noqa: F811
    """After 64 withdrawals that made a note key the contract makes no more (BAD_ARGUMENTS
    naming the 64, nothing written): the client sent one all the same, so the patient could
    withdraw no consent of that prescription again -- h02 kept its grant and every later key
    fetch. It now withdraws without a note key and says so in the answer."""
    rx = _issued(world)
    zhang = world.patient_who("patient-zhang")
    for epoch in range(1, 65):  # (the contract's own bound test: tests/contracts/test_note_keys.py)
        world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                           wrapped_key=world.wrap_for(rx, "h02"),
                           note_keys={str(e): "QUJD" for e in range(1, epoch)}).unwrap()
        world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02",
                           note_keys=dict.fromkeys(("patient", "h01", "p01"), "QUJD")).unwrap()
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                       wrapped_key=world.wrap_for(rx, "h02"),
                       note_keys={str(e): "QUJD" for e in range(1, 65)}).unwrap()
    out = _patient(world).revoke_consent(rx, "h02")
    assert out["granted"] is False and out["note_key_skipped"].startswith("NOTE_KEYS_EXHAUSTED")
    assert _state(world, f"grant/{rx}/h02") is None
    assert _state(world, "rx/" + rx)["note_epoch"] == 64
