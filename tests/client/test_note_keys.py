"""Note keys (contracts/README.md "Note keys"): a note written after the patient withdrew a
consent, or after the prescription was re-routed away from a pharmacy, is under a fresh key
wrapped only for the readers left, so the withdrawn organisation or the pharmacy routed away
-- which keep every key they fetched -- cannot open it, while the patient, the hospital and the
(new) pharmacy still read it; notes of the previous release (under the record key) still read.
Run through ``RxOperations`` over the real prescription contract in the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from client.errors import NoKeyGrant, RxClientError
from client.gateway import SubmitResult
from client.notes import REVIEW, open_note, seal_note
from client.patients import PatientDirectory, patient_from_yaml
from client.rxops import RxOperations
from node.sandbox import canonical
from tests.client.contractgw import ContractGateway
from tests.contracts.chain import Who, who
from tests.contracts.conftest import chain, runner, world  # noqa: F401 - the contract sandbox fixtures
from tests.contracts.flows import CHEN, HE, JIANG, WANG, ZHOU, issue
from tests.contracts.rxclient import CONSORTIUM_SECRET, World, trace_key

NOTE = "halve amlodipine to 2.5 mg: ankle oedema"  # what h02 must not read once withdrawn


def _ops(w: World, caller: Who, key_party: str,
         before: dict[str, Callable[[], None]] | None = None) -> tuple[RxOperations, ContractGateway]:
    """Operations as ``caller`` whose wallet holds the keyring's key of ``key_party``; its
    patient directory (the HIS's) knows patient-zhang and her wallet certificate."""
    gw = ContractGateway(w, caller, before)
    key = w.keyring.of(key_party)

    def user_public_key(org: str, user: str, role: str | None = "patient") -> Any:
        return w.keyring.of("patient:" + w.pid(user)).public_key()  # the sample's handle = user name

    session = SimpleNamespace(
        gateway=gw, net=SimpleNamespace(peers=[], secret=CONSORTIUM_SECRET), trace_key=trace_key(),
        identity=SimpleNamespace(org=caller.org, user=caller.name, role=caller.role, private_key=key),
        decryption_keys=lambda: [key], records_public_key=lambda org: w.keyring.of(org).public_key(),
        directory=PatientDirectory([patient_from_yaml(w.patients["patient-zhang"])]),
        user_public_key=user_public_key)
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
            for k in ("note_epoch", "note_keys", "readers", "pharmacy"):
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


# ---------------------------------------------------------------- re-routing

ROUTE_NOTE = "patient reports dizziness: check blood pressure before handing over"


def _readers_read(w: World, rx: str, note: str, readers: list[tuple[Who, str]]) -> None:
    for caller, party in readers:
        ops = _ops(w, caller, party)[0]
        assert ops.show(rx)["review"]["note"] == note, caller
        steps = [s for s in ops.trace(rx)["steps"] if s["step"] == "review"]
        assert steps[-1]["note"] == note, caller


@pytest.mark.parametrize("router", ["doctor", "patient"])
@pytest.mark.parametrize("withdrawn_before", [False, True])
def test_a_pharmacy_routed_away_reads_no_note_written_after_the_re_route(
        world: World, router: str, withdrawn_before: bool) -> None:  # noqa: F811
    """p01 fetched the record key (and, after a withdrawal, note key 1); the prescription is
    re-routed to p02 by the hospital's doctor or by the patient through the SDK; p02's
    pharmacist rejects with a note. With every key p01 ever held the note stays sealed; the
    patient, the hospital's doctor and pharmacist, and p02 read it. (It opened on the old code:
    a re-route made no key, the note was under the record key, or the key p01 held.)"""
    rx = _issued(world)
    patient = _patient(world)
    if withdrawn_before:
        patient.grant_consent(rx, "h02")
        patient.revoke_consent(rx, "h02")
    kept = _ops(world, WANG, "p01")[0]._get_key(rx)
    assert kept.note_epoch == int(withdrawn_before)
    ops = patient if router == "patient" else _ops(world, JIANG, "h01")[0]
    out = ops.route(rx, "p02")
    assert (out["previous"], out.get("note_key_skipped")) == ("p01", None)
    with pytest.raises(NoKeyGrant):
        _ops(world, WANG, "p01")[0].show(rx)
    _ops(world, CHEN, "p02")[0].review(rx, approve=False, reason="DOSE", note=ROUTE_NOTE)

    review = _state(world, "rx/" + rx)["review"]
    held = [kept.record_key, *kept.note_keys.values()]
    assert [open_note(k, rx, REVIEW, review["note_ct"]) for k in held] == [None] * len(held)
    assert review["note_epoch"] == kept.note_epoch + 1
    _readers_read(world, rx, ROUTE_NOTE, [
        (world.patient_who("patient-zhang"), "patient:" + world.pid("patient-zhang")),
        (JIANG, "h01"), (HE, "h01"), (CHEN, "p02")])


def test_a_re_route_whose_patient_key_is_not_at_hand_goes_in_without_a_new_key(world: World) -> None:  # noqa: F811
    """The hospital's directory does not know the patient (or a reader's records certificate
    is revoked): no key can reach her, so the re-route goes in without a new key -- as a
    withdrawal then does -- and the answer says so in note_key_skipped."""
    rx = _issued(world)
    jiang, gw = _ops(world, JIANG, "h01")
    jiang.s.directory = PatientDirectory([])  # type: ignore[misc]
    out = jiang.route(rx, "p02")
    assert out["previous"] == "p01" and out["note_key_skipped"].startswith("UNKNOWN_PATIENT"), out
    assert [(c[0], sorted(c[1])) for c in gw.calls] == [
        ("get_key", ["rx_id"]), ("route", ["pharmacy", "rx_id", "wrapped_key"])]
    assert "note_epoch" not in _state(world, "rx/" + rx)
    assert _ops(world, CHEN, "p02")[0].show(rx)["content"]["rx_id"] == rx

    rx = _issued(world)
    patient = _patient(world)
    usable = patient.s.records_public_key

    def records_public_key(org: str) -> Any:
        if org == "h01":
            raise RxClientError("CERT_REVOKED", "records certificate of h01 is revoked")
        return usable(org)

    patient.s.records_public_key = records_public_key  # type: ignore[method-assign]
    out = patient.route(rx, "p02")
    assert out["note_key_skipped"].startswith("CERT_REVOKED") and "note_epoch" not in _state(world, "rx/" + rx)


def test_a_first_route_makes_no_note_key_and_a_route_meanwhile_is_wrapped_for(world: World) -> None:  # noqa: F811
    """Unrouted: the route names nobody routed away ({}) and makes no key. When the hospital
    routed it to p01 between this client's key fetch and its route, the {} is refused (nothing
    written) and the route is sent again as the re-route it now is: p01 never gets the key."""
    prep, out = issue(world, pharmacy="")
    out.unwrap()
    rx = str(prep.args["rx_id"])
    jiang, gw = _ops(world, JIANG, "h01")
    assert jiang.route(rx, "p01")["previous"] == ""
    assert gw.calls[-1][1]["new_note_keys"] == {}
    assert "note_epoch" not in _state(world, "rx/" + rx)
    assert "note_keys" not in _state(world, f"grant/{rx}/p01")

    prep, out = issue(world, pharmacy="")
    out.unwrap()
    rx = str(prep.args["rx_id"])

    def routed_meanwhile() -> None:
        world.chain.submit("prescription", "route", HE, rx_id=rx, pharmacy="p01",
                           wrapped_key=world.wrap_for(rx, "p01")).unwrap()

    patient = _patient(world)
    gw = ContractGateway(world, world.patient_who("patient-zhang"), {"route": routed_meanwhile})
    patient.s.gateway = gw  # type: ignore[assignment]
    assert patient.route(rx, "p02")["previous"] == "p01"
    assert [(c[0], c[2]) for c in gw.calls] == [("get_key", "OK"), ("route", "BAD_ARGUMENTS"),
                                                ("get_key", "OK"), ("route", "OK")]
    assert sorted(gw.calls[3][1]["new_note_keys"]) == ["h01", "p02", "patient"]
    assert _state(world, "rx/" + rx)["note_epoch"] == 1


def test_a_route_under_a_contract_without_re_route_keys_routes_as_before(world: World) -> None:  # noqa: F811
    """A contract whose get_key names no routed pharmacy takes no new_note_keys: not sent."""
    rx = _issued(world)
    jiang = _ops(world, JIANG, "h01")[0]
    old = OldKeyAnswers(world, JIANG)
    jiang.s.gateway = old  # type: ignore[assignment]
    jiang.route(rx, "p02")
    assert [(c[0], sorted(c[1]), c[2]) for c in old.calls] == [
        ("get_key", ["rx_id"], "OK"), ("route", ["pharmacy", "rx_id", "wrapped_key"], "OK")]


def test_a_withdrawal_whose_key_number_moved_meanwhile_is_wrapped_again(world: World) -> None:  # noqa: F811
    """Between the patient's key fetch and her withdrawal the hospital re-routed p01 -> p02 ->
    p01 (two keys; the readers are as she listed them): her copies, wrapped as key 1, are
    refused NOTE_KEY_STALE, wrapped again as key 3 -- which every reader then opens."""
    rx = _issued(world)
    patient = _patient(world)
    patient.grant_consent(rx, "h02")
    jiang = _ops(world, JIANG, "h01")[0]

    def there_and_back() -> None:
        jiang.route(rx, "p02")
        jiang.route(rx, "p01")

    gw = ContractGateway(world, world.patient_who("patient-zhang"), {"revoke_consent": there_and_back})
    patient.s.gateway = gw  # type: ignore[assignment]
    assert "note_key_skipped" not in patient.revoke_consent(rx, "h02")
    assert [(c[0], c[2]) for c in gw.calls] == [("get_key", "OK"), ("revoke_consent", "NOTE_KEY_STALE"),
                                                ("get_key", "OK"), ("revoke_consent", "OK")]
    assert _state(world, "rx/" + rx)["note_epoch"] == 3
    _ops(world, WANG, "p01")[0].review(rx, approve=False, reason="DOSE", note=ROUTE_NOTE)
    _readers_read(world, rx, ROUTE_NOTE, [
        (world.patient_who("patient-zhang"), "patient:" + world.pid("patient-zhang")), (HE, "h01"), (WANG, "p01")])


def test_no_key_is_made_past_the_bound(world: World) -> None:  # noqa: F811
    """A prescription holding MAX_NOTE_KEYS note keys: the client wraps no 65th (the contract
    would refuse it) and says why; the route or withdrawal then goes in without one."""
    rx = _issued(world)
    jiang = _ops(world, JIANG, "h01")[0]
    opened = jiang._get_key(rx)
    keys, why = jiang._new_note_key(replace(opened, note_epoch=64), ["patient", "h01", "p02"])
    assert keys is None and why.startswith("NOTE_KEYS_EXHAUSTED")
    keys, why = jiang._new_note_key(replace(opened, note_epoch=63), ["patient", "h01", "p02"])
    assert keys is not None and sorted(keys) == ["h01", "p02", "patient"] and why == ""


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


def test_a_hospital_admin_route_is_refused_before_anything_is_sent(world: World) -> None:  # noqa: F811
    """The contract lets the issuing hospital's admin route, but gives it no key grant, so its
    client cannot wrap the record key for the new pharmacy: refused WRONG_ROLE with nothing
    submitted (it submitted a key fetch, committing an audited denial, and failed NO_KEY_GRANT)."""
    rx = _issued(world)
    admin, gw = _ops(world, who("h01:admin:admin"), "h01")
    with pytest.raises(RxClientError) as e:
        admin.route(rx, "p02")
    assert e.value.reason == "WRONG_ROLE" and "doctor or pharmacist" in e.value.message
    assert gw.calls == []
    assert _ops(world, JIANG, "h01")[0].show(rx)["pharmacy"] == "p01"
