"""Red-team review of the read paths (contract queries reached by Gateway.Evaluate).

Each test here failed on the contracts before its fix (checked by putting the contract of the
parent commit back with ``git show``)."""

from __future__ import annotations

from tests.contracts.chain import who
from tests.contracts.flows import AUDITOR, approved, lock_and_dispense, settle
from tests.contracts.rxclient import World

# certificates of the prescription's own organisations (hospital h01, pharmacy p01, insurer
# ins01) whose role is no staff role: nodes and client applications (node/identity/roles.py)
NODE_AND_CLIENT_CERTS = [
    who("h01:peer0:peer"), who("h01:app:client"),
    who("p01:peer0:peer"), who("p01:erp:client"),
    who("ins01:peer0:peer"), who("ins01:orderer0:orderer"), who("ins01:erp:client"),
]


def test_settlement_trail_has_the_parties_of_the_trace(world: World) -> None:
    """settlement.trail's parties are prescription.trace's (contracts/README.md), but it did
    not check the role: a peer's, an orderer's or a client application's certificate of the
    hospital, the pharmacy or the insurer read every settle and reverse step (claim ids, acting
    clerks, tx ids, blocks) of a prescription whose trace answers it as a missing id. Now both
    answer it NOT_FOUND with the message of an id never issued."""
    prep = approved(world)
    lock_and_dispense(world, prep).unwrap()
    settle(world, prep).unwrap()
    rx = prep.args["rx_id"]
    missing = rx + "9"
    for caller in NODE_AND_CLIENT_CERTS:
        for fn in ("trace", "trail"):
            contract = "prescription" if fn == "trace" else "settlement"
            got = world.chain.query(contract, fn, caller, rx_id=rx)
            never = world.chain.query(contract, fn, caller, rx_id=missing)
            assert (got.ok, got.reason) == (False, "NOT_FOUND"), (caller, fn, got.value)
            assert got.message.replace(rx, "ID") == never.message.replace(missing, "ID")
    # the parties still read it
    steps = world.chain.query("settlement", "trail", AUDITOR, rx_id=rx).unwrap()["steps"]
    assert [s["step"] for s in steps] == ["settle"]


def test_patient_prescriptions_takes_only_a_cursor_a_page_hands_back(world: World) -> None:
    """patient_prescriptions took any string as ``start``: one holding a NUL (or a lone
    surrogate) reached ctx.range and failed the call CONTRACT_EXCEPTION (a ValueError from the
    sandbox, no reason code), a 300-character one was read as a key. It is checked as every
    other listing's cursor now: BAD_ARGUMENTS; a cursor a page handed back still pages on."""
    ids = [approved(world).args["rx_id"] for _ in range(3)]
    zhang = world.patient_who("patient-zhang")
    pid = world.pid("patient-zhang")
    for bad in ("\x00", ids[1] + "\x00", "a" * 300, "~", "rx id"):
        out = world.chain.query("prescription", "patient_prescriptions", zhang, patient=pid,
                                start=bad, limit=2)
        assert (out.ok, out.reason) == (False, "BAD_ARGUMENTS"), (bad, out.reason, out.message)
    first = world.chain.query("prescription", "patient_prescriptions", zhang, patient=pid,
                              start="", limit=2).unwrap()
    rest = world.chain.query("prescription", "patient_prescriptions", zhang, patient=pid,
                             start=first["next"], limit=2).unwrap()
    listed = [p["rx_id"] for p in first["prescriptions"] + rest["prescriptions"]]
    assert listed == ids and rest["next"] == ""
