"""Note keys (contracts/README.md "Note keys"): a withdrawal of consent may carry a fresh note
key wrapped for exactly the readers left; every later note must be under it (NOTE_KEY_STALE);
a consent or a pharmacy granted afterwards gets every note key made so far. The client side
(sealing, reading, the withdrawn party locked out) is tests/client/test_note_keys.py."""

from __future__ import annotations

from typing import Any

import pytest

from node.crypto import aead
from node.sandbox import canonical
from tests.contracts.chain import Who
from tests.contracts.flows import AUDITOR, CLERK, HE, JIANG, WANG, ZHOU, issue
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


def test_get_key_names_the_readers_to_the_patient_only(world: World) -> None:
    rx, zhang = _consented(world)
    mine = world.chain.submit("prescription", "get_key", zhang, rx_id=rx).unwrap()
    assert mine["readers"] == ["h01", "h02", "p01", "patient"]  # never the insurer (claim key)
    assert (mine["note_epoch"], mine["note_keys"]) == (0, {})
    for caller in (JIANG, WANG, ZHOU, CLERK):
        assert "readers" not in world.chain.submit("prescription", "get_key", caller, rx_id=rx).unwrap()


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
