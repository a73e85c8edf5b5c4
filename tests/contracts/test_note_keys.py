"""Note keys (contracts/README.md "Note keys"): a withdrawal of consent or a re-route may carry
a fresh note key wrapped for exactly the readers left; every later note must be under it
(NOTE_KEY_STALE); a consent or a pharmacy granted afterwards gets every note key made so far.
The client side (sealing, reading, the withdrawn party or the pharmacy routed away locked out)
is tests/client/test_note_keys.py."""

from __future__ import annotations

from typing import Any

import pytest

from node.crypto import aead
from node.sandbox import canonical
from tests.contracts.chain import Who
from tests.contracts.flows import AUDITOR, CHEN, CLERK, HE, JIANG, WANG, ZHOU, issue
from tests.contracts.rxclient import World
from tests.contracts.test_lifecycle import register_li

NOTE_CT = "QUJD" * 12  # base64 of the right shape (the contract sees no plaintext)


def _issued(world: World) -> tuple[str, Who]:
    prep, out = issue(world)  # routed to p01, ISSUED
    out.unwrap()
    return str(prep.args["rx_id"]), world.patient_who("patient-zhang")


def _wrap(world: World, rx: str, party: str, epoch: int, key: bytes | None = None) -> str:
    return world.keyring.wrap(party if party != "patient" else "patient:" + world.pid("patient-zhang"),
                              key or aead.new_record_key(), f"rxchain/rx/{rx}/{party}/note/{epoch}")


def _consented(world: World) -> tuple[str, Who]:
    rx, zhang = _issued(world)
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                       wrapped_key=world.wrap_for(rx, "h02")).unwrap()
    return rx, zhang


def _withdraw(world: World, rx: str, zhang: Who, org: str = "h02", epoch: int = 1) -> Any:
    keys = {p: _wrap(world, rx, p, epoch) for p in ("patient", "h01", "p01")}
    return world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org=org,
                              note_keys=keys).unwrap()


def _state(world: World, key: str) -> Any:
    raw = world.chain.state.values.get(("prescription", key))
    return None if raw is None else canonical.decode(raw, key)


def test_get_key_names_the_readers_to_the_patient_and_the_hospital_only(world: World) -> None:
    """The patient (withdrawing, routing) and the issuing hospital's doctor and pharmacist
    (routing) wrap new note keys: they are told the readers and the routed pharmacy."""
    rx, zhang = _consented(world)
    for caller in (zhang, JIANG, HE):
        mine = world.chain.submit("prescription", "get_key", caller, rx_id=rx).unwrap()
        assert mine["readers"] == ["h01", "h02", "p01", "patient"]  # never the insurer (claim key)
        assert mine["pharmacy"] == "p01"
        assert (mine["note_epoch"], mine["note_keys"]) == (0, {})
    for caller in (WANG, ZHOU, CLERK):
        got = world.chain.submit("prescription", "get_key", caller, rx_id=rx).unwrap()
        assert "readers" not in got and "pharmacy" not in got


@pytest.mark.parametrize("keys", [
    {"patient": "w", "h01": "w"},  # p01 left out: it could not read the later notes
    {"patient": "w", "h01": "w", "p01": "w", "h02": "w"},  # the withdrawn org
    {"patient": "w", "h01": "w", "p01": "w", "ins01": "w"},  # the insurer reads no notes
    {"patient": "w", "h01": "w", "p01": "not base64!"},
    {"patient": "w", "h01": "w", "p01": "A" * 513},
    {"patient": "w", "h01": "w", "p01": 7},
    {},
])
def test_a_new_note_key_must_reach_exactly_the_readers_left(world: World, keys: dict[str, Any]) -> None:
    rx, zhang = _consented(world)
    keys = {p: (_wrap(world, rx, p, 1) if v == "w" else v) for p, v in keys.items()}
    before = world.chain.raw_state_bytes()
    out = world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02", note_keys=keys)
    assert out.reason == "BAD_ARGUMENTS", out
    assert world.chain.raw_state_bytes() == before


def test_a_withdrawal_with_a_note_key_makes_it_the_key_of_every_later_note(world: World) -> None:
    rx, zhang = _consented(world)
    out = world.chain.submit("prescription", "revoke_consent", JIANG, rx_id=rx, org="h02",
                             note_keys={"h01": _wrap(world, rx, "h01", 1)})
    assert out.reason == "ACCESS_DENIED"  # the patient's call only, with or without keys
    _withdraw(world, rx, zhang)
    assert _state(world, "rx/" + rx)["note_epoch"] == 1
    assert _state(world, f"grant/{rx}/h02") is None
    for p in ("patient", "h01", "p01"):
        assert _state(world, f"grant/{rx}/{p}")["note_keys"].keys() == {"1"}
    assert "note_keys" not in _state(world, f"grant/{rx}/ins01")
    got = world.chain.submit("prescription", "get_key", HE, rx_id=rx).unwrap()
    assert got["note_epoch"] == 1 and got["note_keys"] == _state(world, f"grant/{rx}/h01")["note_keys"]
    events = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx).unwrap()["events"]
    made = [(e["event"], e["party"], e["outcome"]) for e in events if e["outcome"] in ("note_key", "REVOKED")]
    assert sorted(made) == [("GRANT", "h01", "note_key"), ("GRANT", "p01", "note_key"),
                            ("GRANT", "patient", "note_key"), ("REVOKE_GRANT", "h02", "REVOKED")]
    step = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"][-1]
    assert (step["step"], step["detail"]) == ("consent_revoked", {"org": "h02", "note_epoch": 1})
    # a note under the record key (the previous release's client: no note_epoch) or another
    # key is refused and writes nothing
    before = world.chain.raw_state_bytes()
    epochs: list[dict[str, Any]] = [{}, {"note_epoch": 0}, {"note_epoch": 2}]
    for epoch in epochs:
        out = world.chain.submit("prescription", "review", WANG, rx_id=rx, approve=False,
                                 reason="DOSE", note_ct=NOTE_CT, **epoch)
        assert out.reason == "NOTE_KEY_STALE", out
        out = world.chain.submit("prescription", "revoke", JIANG, rx_id=rx, reason="OTHER",
                                 note_ct=NOTE_CT, **epoch)
        assert out.reason == "NOTE_KEY_STALE", out
    for bad in (-1, 65):
        out = world.chain.submit("prescription", "review", WANG, rx_id=rx, approve=True, reason="",
                                 note_ct=NOTE_CT, note_epoch=bad)
        assert out.reason == "BAD_ARGUMENTS", out
    assert world.chain.raw_state_bytes() == before
    # without a note nothing is sealed: no key to name
    world.chain.submit("prescription", "review", WANG, rx_id=rx, approve=True, reason="").unwrap()
    assert _state(world, "rx/" + rx)["review"]["note_ct"] == ""
    assert "note_epoch" not in _state(world, "rx/" + rx)["review"]
    world.chain.submit("prescription", "revoke", JIANG, rx_id=rx, reason="OTHER", note_ct=NOTE_CT,
                       note_epoch=1).unwrap()
    rec = _state(world, "rx/" + rx)["revocation"]
    assert (rec["note_ct"], rec["note_epoch"]) == (NOTE_CT, 1)
    step = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"][-1]
    assert step["detail"] == {"reason": "OTHER", "note_ct": NOTE_CT, "note_epoch": 1}


def test_a_withdrawal_without_note_keys_withdraws_as_the_previous_release(world: World) -> None:
    """The previous release's client sends no note keys: the consent is withdrawn, no note key
    is made and notes stay under the record key (its own review with a note goes in)."""
    rx, zhang = _consented(world)
    world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02").unwrap()
    assert _state(world, f"grant/{rx}/h02") is None
    assert "note_epoch" not in _state(world, "rx/" + rx)
    world.chain.submit("prescription", "review", WANG, rx_id=rx, approve=True, reason="",
                       note_ct=NOTE_CT).unwrap()
    assert _state(world, "rx/" + rx)["review"]["note_ct"] == NOTE_CT


def test_a_consent_or_a_pharmacy_granted_later_gets_every_note_key(world: World) -> None:
    register_li(world)
    rx, zhang = _consented(world)
    _withdraw(world, rx, zhang)
    grant: dict[str, Any] = {"rx_id": rx, "org": "h02", "wrapped_key": world.wrap_for(rx, "h02")}
    for keys in (None, {}, {"1": _wrap(world, rx, "h02", 1), "2": _wrap(world, rx, "h02", 2)},
                 {"2": _wrap(world, rx, "h02", 2)}):
        args = dict(grant) if keys is None else {**grant, "note_keys": keys}
        assert world.chain.submit("prescription", "grant_consent", zhang, **args).reason == "BAD_ARGUMENTS"
    one = _wrap(world, rx, "h02", 1)
    world.chain.submit("prescription", "grant_consent", zhang, note_keys={"1": one}, **grant).unwrap()
    assert world.chain.submit("prescription", "get_key", ZHOU, rx_id=rx).unwrap()["note_keys"] == {"1": one}
    route: dict[str, Any] = {"rx_id": rx, "pharmacy": "p02", "wrapped_key": world.wrap_for(rx, "p02")}
    assert world.chain.submit("prescription", "route", JIANG, **route).reason == "BAD_ARGUMENTS"
    world.chain.submit("prescription", "route", JIANG, note_keys={"1": _wrap(world, rx, "p02", 1)},
                       **route).unwrap()
    assert _state(world, f"grant/{rx}/p02")["note_keys"].keys() == {"1"}
    assert _state(world, f"grant/{rx}/p01") is None
    # a second withdrawal: key 2 for the readers then (p02 now, not p01)
    keys = {p: _wrap(world, rx, p, 2) for p in ("patient", "h01", "p02")}
    world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02", note_keys=keys).unwrap()
    assert _state(world, f"grant/{rx}/p02")["note_keys"].keys() == {"1", "2"}
    assert _state(world, "rx/" + rx)["note_epoch"] == 2


def test_note_keys_are_shredded_with_the_grants(world: World) -> None:
    rx, zhang = _consented(world)
    _withdraw(world, rx, zhang)
    world.chain.advance(366 * 86_400_000)
    out = world.chain.submit("prescription", "erase", Who("h01", "admin", "admin"), rx_id=rx, retention_days=365)
    assert out.unwrap()["grants_destroyed"] == 4  # patient, h01, p01 (with their note keys), ins01
    assert world.chain.state.values.keys().isdisjoint({("prescription", f"grant/{rx}/{p}")
                                                      for p in ("patient", "h01", "p01", "ins01")})


def test_note_keys_are_bounded(world: World) -> None:
    rx, zhang = _issued(world)
    for epoch in range(1, 66):
        world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="h02",
                           wrapped_key=world.wrap_for(rx, "h02"),
                           note_keys={str(e): "QUJD" for e in range(1, epoch)}).unwrap()
        keys = dict.fromkeys(("patient", "h01", "p01"), "QUJD")
        out = world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02", note_keys=keys)
        if epoch <= 64:
            out.unwrap()
    assert out.reason == "BAD_ARGUMENTS" and "64" in out.message
    # the withdrawal itself still goes in, without a new key
    world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02").unwrap()
    assert _state(world, "rx/" + rx)["note_epoch"] == 64


# ---------------------------------------------------------------- re-routing


def _rerouted_keys(world: World, rx: str, epoch: int = 1) -> dict[str, str]:
    """Note key ``epoch`` wrapped for the readers after routing p01 -> p02 with h02's consent."""
    return {p: _wrap(world, rx, p, epoch) for p in ("patient", "h01", "h02", "p02")}


def _route(world: World, rx: str, caller: Who, pharmacy: str = "p02", **args: Any) -> Any:
    return world.chain.submit("prescription", "route", caller, rx_id=rx, pharmacy=pharmacy,
                              wrapped_key=world.wrap_for(rx, pharmacy), **args)


@pytest.mark.parametrize("keys", [
    {"patient": "w", "h01": "w", "h02": "w"},  # the new pharmacy left out: it could not read them
    {"patient": "w", "h01": "w", "p02": "w"},  # h02's consent left out
    {"patient": "w", "h01": "w", "h02": "w", "p02": "w", "p01": "w"},  # the pharmacy routed away
    {"patient": "w", "h01": "w", "h02": "w", "p02": "w", "ins01": "w"},  # the insurer reads no notes
    {"h01": "w", "h02": "w", "p02": "w"},  # the patient left out
    {"patient": "w", "h01": "w", "h02": "w", "p02": "not base64!"},
    {"patient": "w", "h01": "w", "h02": "w", "p02": "A" * 513},
    {"patient": "w", "h01": "w", "h02": "w", "p02": 7},
    {},  # what a first route sends
])
def test_a_re_route_with_a_new_note_key_must_reach_exactly_the_readers_left(world: World, keys: dict[str, Any]) -> None:
    rx, _ = _consented(world)
    keys = {p: (_wrap(world, rx, p, 1) if v == "w" else v) for p, v in keys.items()}
    before = world.chain.raw_state_bytes()
    out = _route(world, rx, JIANG, new_note_keys=keys)
    assert out.reason == "BAD_ARGUMENTS", out
    assert world.chain.raw_state_bytes() == before


@pytest.mark.parametrize("router", ["patient", "doctor", "pharmacist"])
def test_a_re_route_with_a_new_note_key_makes_it_the_key_of_every_later_note(world: World, router: str) -> None:
    """p01 is routed away: note key 1 goes to the patient, the hospital, h02 (consent) and
    p02, never to p01 (its grant is dropped) or the insurer; each copy is audited, the route
    step names the key, and a later note must be under it."""
    rx, zhang = _consented(world)
    caller = {"patient": zhang, "doctor": JIANG, "pharmacist": HE}[router]
    keys = _rerouted_keys(world, rx)
    for nobody in (WANG, ZHOU, CLERK, Who("h01", "nurse-xu", "nurse")):  # no router: refused as before
        assert _route(world, rx, nobody, new_note_keys=keys).reason == "ACCESS_DENIED"
    out = _route(world, rx, caller, new_note_keys=keys)
    assert out.unwrap() == {"rx_id": rx, "pharmacy": "p02", "previous": "p01"}
    assert _state(world, "rx/" + rx)["note_epoch"] == 1
    assert _state(world, f"grant/{rx}/p01") is None
    for p in ("patient", "h01", "h02", "p02"):
        assert _state(world, f"grant/{rx}/{p}")["note_keys"] == {"1": keys[p]}, p
    assert _state(world, f"grant/{rx}/p02")["kind"] == "pharmacy"
    assert "note_keys" not in _state(world, f"grant/{rx}/ins01")
    events = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx).unwrap()["events"]
    routed = sorted((e["event"], e["party"], e["outcome"]) for e in events if e["tx_id"] == out.tx_id)
    assert routed == [("GRANT", "h01", "note_key"), ("GRANT", "h02", "note_key"), ("GRANT", "p02", "note_key"),
                      ("GRANT", "p02", "pharmacy"), ("GRANT", "patient", "note_key"),
                      ("REVOKE_GRANT", "p01", "REVOKED")]
    step = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"][-1]
    assert (step["step"], step["detail"]) == ("route", {"pharmacy": "p02", "previous": "p01", "note_epoch": 1})
    before = world.chain.raw_state_bytes()
    epochs: list[dict[str, Any]] = [{}, {"note_epoch": 0}, {"note_epoch": 2}]
    for epoch in epochs:  # under the record key or another key
        out = world.chain.submit("prescription", "review", CHEN, rx_id=rx, approve=True, reason="",
                                 note_ct=NOTE_CT, **epoch)
        assert out.reason == "NOTE_KEY_STALE", out
    assert world.chain.raw_state_bytes() == before
    world.chain.submit("prescription", "review", CHEN, rx_id=rx, approve=True, reason="", note_ct=NOTE_CT,
                       note_epoch=1).unwrap()
    assert _state(world, "rx/" + rx)["review"]["note_epoch"] == 1


def test_a_first_route_makes_no_note_key(world: World) -> None:
    """Nobody is routed away: the route goes in as before (no key, no note_epoch), with
    new_note_keys omitted or {}; a key on a first route is refused, nothing written."""
    sends: list[dict[str, Any] | None] = [None, {}]
    for sent in sends:
        prep, out = issue(world, pharmacy="")
        out.unwrap()
        rx = str(prep.args["rx_id"])
        before = world.chain.raw_state_bytes()
        out = _route(world, rx, JIANG, "p01", new_note_keys={p: _wrap(world, rx, p, 1) for p in ("patient", "h01", "p01")})
        assert out.reason == "BAD_ARGUMENTS" and "new_note_keys" in out.message, out
        assert world.chain.raw_state_bytes() == before
        args = {} if sent is None else {"new_note_keys": sent}
        out = _route(world, rx, JIANG, "p01", **args)
        assert out.unwrap()["previous"] == ""
        assert "note_epoch" not in _state(world, "rx/" + rx)
        assert all("note_keys" not in _state(world, f"grant/{rx}/{p}") for p in ("patient", "h01", "p01"))
        step = world.chain.query("prescription", "trace", AUDITOR, rx_id=rx).unwrap()["steps"][-1]
        assert step["detail"] == {"pharmacy": "p01", "previous": ""}
        events = world.chain.query("prescription", "audit_trail", AUDITOR, rx_id=rx).unwrap()["events"]
        assert [(e["event"], e["party"], e["outcome"]) for e in events if e["tx_id"] == out.tx_id] == [
            ("GRANT", "p01", "pharmacy")]


def test_a_re_route_without_new_note_keys_routes_as_the_previous_release(world: World) -> None:
    """The previous release's client (or one that could not reach a reader) sends none: p01's
    grant is dropped, p02 granted, no note key made, notes stay under the record key."""
    rx, _ = _consented(world)
    _route(world, rx, JIANG).unwrap()
    assert "note_epoch" not in _state(world, "rx/" + rx) and _state(world, f"grant/{rx}/p01") is None
    assert "note_keys" not in _state(world, f"grant/{rx}/p02")
    world.chain.submit("prescription", "review", CHEN, rx_id=rx, approve=True, reason="", note_ct=NOTE_CT).unwrap()


def test_a_re_route_after_a_withdrawal_carries_the_old_keys_and_makes_the_next(world: World) -> None:
    """Key 1 from a withdrawal: the re-route wraps it for p02 (note_keys, exactly "1") and
    makes key 2 for the readers left; a stale view of the keys (none, or a number off) is
    BAD_ARGUMENTS, nothing written."""
    rx, zhang = _consented(world)
    _withdraw(world, rx, zhang)  # h02 out, key 1 for patient, h01, p01
    new = {p: _wrap(world, rx, p, 2) for p in ("patient", "h01", "p02")}
    before = world.chain.raw_state_bytes()
    stale: list[dict[str, Any]] = [{}, {"note_keys": {"2": _wrap(world, rx, "p02", 2)}}]
    for old in stale:
        out = _route(world, rx, JIANG, new_note_keys=new, **old)
        assert out.reason == "BAD_ARGUMENTS" and "note_keys must map exactly [1]" in out.message, out
    assert world.chain.raw_state_bytes() == before
    one = _wrap(world, rx, "p02", 1)
    _route(world, rx, JIANG, note_keys={"1": one}, new_note_keys=new).unwrap()
    assert _state(world, f"grant/{rx}/p02")["note_keys"] == {"1": one, "2": new["p02"]}
    assert _state(world, f"grant/{rx}/h01")["note_keys"].keys() == {"1", "2"}
    assert _state(world, "rx/" + rx)["note_epoch"] == 2


def test_a_re_route_to_a_consent_holder_gives_it_the_key_once(world: World) -> None:
    """p02 held a consent: routed to, its grant becomes the pharmacy's, and it is one reader."""
    rx, zhang = _issued(world)
    world.chain.submit("prescription", "grant_consent", zhang, rx_id=rx, org="p02",
                       wrapped_key=world.wrap_for(rx, "p02")).unwrap()
    keys = {p: _wrap(world, rx, p, 1) for p in ("patient", "h01", "p02")}
    _route(world, rx, zhang, new_note_keys=keys).unwrap()
    assert _state(world, f"grant/{rx}/p02")["kind"] == "pharmacy"
    assert _state(world, f"grant/{rx}/p02")["note_keys"] == {"1": keys["p02"]}


def test_a_withdrawal_naming_a_stale_key_number_is_refused(world: World) -> None:
    """The patient's client names the number it wrapped the new key under: a re-route that made
    a key meanwhile (A -> B -> A leaves the readers as they were) is NOTE_KEY_STALE, nothing
    written -- the copies would be wrapped under the wrong number, opening for nobody."""
    rx, zhang = _consented(world)
    keys = {p: _wrap(world, rx, p, 1) for p in ("patient", "h01", "p01")}
    _route(world, rx, JIANG, new_note_keys=_rerouted_keys(world, rx)).unwrap()  # key 1
    back = {p: _wrap(world, rx, p, 2) for p in ("patient", "h01", "h02", "p01")}
    _route(world, rx, JIANG, "p01", note_keys={"1": _wrap(world, rx, "p01", 1)}, new_note_keys=back).unwrap()
    before = world.chain.raw_state_bytes()
    out = world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02", note_keys=keys,
                             note_epoch=1)
    assert out.reason == "NOTE_KEY_STALE" and "3" in out.message, out
    for bad in (-1, 65, "3", True):
        out = world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02", note_keys=keys,
                                 note_epoch=bad)
        assert out.reason == "BAD_ARGUMENTS", out
    out = world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02", note_epoch=3)
    assert out.reason == "BAD_ARGUMENTS", out  # a number without the key it names
    assert world.chain.raw_state_bytes() == before
    keys = {p: _wrap(world, rx, p, 3) for p in ("patient", "h01", "p01")}
    world.chain.submit("prescription", "revoke_consent", zhang, rx_id=rx, org="h02", note_keys=keys,
                       note_epoch=3).unwrap()
    assert _state(world, "rx/" + rx)["note_epoch"] == 3


def test_re_route_keys_are_bounded(world: World) -> None:
    """Re-routed back and forth: the 65th key is BAD_ARGUMENTS naming the bound, nothing
    written; the re-route without a new key still goes in (README "Note keys": at the bound)."""
    rx, zhang = _issued(world)
    here, there = "p01", "p02"
    for epoch in range(1, 66):
        old = {str(e): "QUJD" for e in range(1, epoch)}
        keys = dict.fromkeys(("patient", "h01", there), "QUJD")
        before = world.chain.raw_state_bytes()
        out = _route(world, rx, zhang, there, note_keys=old, new_note_keys=keys)
        if epoch <= 64:
            out.unwrap()
            here, there = there, here
    assert out.reason == "BAD_ARGUMENTS" and "64" in out.message, out
    assert world.chain.raw_state_bytes() == before
    _route(world, rx, zhang, there, note_keys={str(e): "QUJD" for e in range(1, 65)}).unwrap()
    assert _state(world, "rx/" + rx)["note_epoch"] == 64
    assert "65" not in _state(world, f"grant/{rx}/{there}")["note_keys"]
