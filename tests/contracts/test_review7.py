"""review7: residuals of the registry's site withdrawal, the settlement's unsettled-fill moves
and the trace cursors (contract tests on the in-memory ledger)."""

from __future__ import annotations

import json

from node.sandbox import canonical
from tests.contracts.chain import admin
from tests.contracts.flows import issue
from tests.contracts.rxclient import World, dx_key
from tests.contracts.test_registry_decisions import JIANG_CODE, add_dx, diagnoses, practitioner
from tests.contracts.test_registry_residuals import REGULATOR, _tag, with_site, withdraw


def _versions(world: World, key: str) -> int:
    return len(world.chain.state.versions.get(("registry", key), []))


def _fill_room(world: World) -> None:
    """The shared diagnosis room filled to 16 entries each by h02, h03 and h04, h02's first two
    its H0200 (the only one of its code) and its E11."""
    assert add_dx(world, admin("h02"), "H0200") == "OK"
    assert add_dx(world, admin("h02"), "E11") == "OK"
    for org in ("h02", "h03", "h04"):
        for i in range(1 if org == "h02" else 0, 15 if org == "h02" else 16):
            assert add_dx(world, admin(org), f"{org.upper()}{i:02d}") == "OK", (org, i)


def _h05_records_in_person(world: World, icd10: str) -> str:
    """h05 records ``icd10`` for patient-zhang in person (the room full): the hospital whose
    entry gave way."""
    out = world.chain.submit("registry", "add_diagnosis", admin("h05"),
                             transient={"dx_key": dx_key(), "icd10": icd10},
                             pseudonym=world.pid("patient-zhang"), physical=True).unwrap()
    evicted: str = out["evicted"]
    return evicted


def test_withdrawing_a_site_never_authorised_writes_nothing(world: World) -> None:
    """A withdrawal naming an organisation the code's entry does not list (never authorised,
    or withdrawn already) rewrote the entry and emitted ``registry.practice_site`` -- an
    audit event saying the regulator (or a lapsed holder) withdrew a site that never was one.
    It answers the entry as it is now, and writes and emits nothing."""
    with_site(world)
    assert practitioner(world, "h01", "dr-jiang", JIANG_CODE, active=False, years=10) == "OK"
    key = "praccode/" + JIANG_CODE
    for caller in (REGULATOR, admin("h01")):
        before = (_versions(world, key), len(world.chain.events))
        out = world.chain.submit("registry", "authorize_practice_site", caller, code=JIANG_CODE,
                                 site="h03", allowed=False)
        assert out.ok, (out.reason, out.message)
        assert out.value["sites"] == {"h02": "dr-jiang"}
        assert out.events == () and (_versions(world, key), len(world.chain.events)) == before
    # a real withdrawal still writes, and a second one of the same site writes nothing more
    assert withdraw(world, REGULATOR, "h02") == "OK"
    after = (_versions(world, key), len(world.chain.events))
    assert withdraw(world, admin("h01"), "h02") == "OK"
    assert (_versions(world, key), len(world.chain.events)) == after


def test_making_room_keeps_the_only_physical_diagnosis_of_a_disease(world: World) -> None:
    """The shared diagnosis room full, a further hospital's entry took the place of the oldest
    entry of the fullest hospital -- whatever it was. An online follow-up needs an earlier
    physical diagnosis of the same code on record (prescription._check_follow_up): dropping
    h02's physical E11, the only one, refused every later E11 follow-up NOT_FOLLOW_UP, and h02
    (15 against 16) could not record it again. The oldest entry whose loss loses no such
    diagnosis gives way first (a visit not in person, or a diagnosis on record twice)."""
    assert add_dx(world, admin("h02"), "E11", physical=True) == "OK"
    for i in range(15):
        assert add_dx(world, admin("h02"), f"N{i:02d}", physical=False) == "OK"
    for org in ("h03", "h04"):
        for i in range(16):
            assert add_dx(world, admin(org), f"{org.upper()}{i:02d}") == "OK", (org, i)
    pid = world.pid("patient-zhang")
    assert _h05_records_in_person(world, "X00") == "h02"
    physical = [d for d in diagnoses(world) if d["by"] == "h02" and d["physical"]]
    assert [d["tag"] for d in physical] == [_tag(pid, "E11")]
    world.chain.advance(1)
    _prep, res = issue(world, diagnosis="E11")
    assert res.ok, (res.reason, res.message)
    # entries that are all sole physical diagnoses: the oldest gives way (the room is shared)
    assert _h05_records_in_person(world, "X01") == "h03"
    assert _tag(pid, "H0300") not in {d["tag"] for d in diagnoses(world)}


def test_making_room_drops_a_physical_diagnosis_the_new_entry_repeats(world: World) -> None:
    """The entry taking the place counts: h05 recording E11 in person makes h02's physical E11
    one that gives way without loss, before h02's older H0200 (the only one of its code)."""
    _fill_room(world)
    pid = world.pid("patient-zhang")
    assert _h05_records_in_person(world, "E11") == "h02"
    rec = diagnoses(world)
    assert [d["by"] for d in rec if d["tag"] == _tag(pid, "E11")] == ["h05"]
    assert _tag(pid, "H0200") in {d["tag"] for d in rec}


def test_an_entry_from_before_recorded_ms_is_no_physical_diagnosis_on_record(world: World) -> None:
    """An entry written before ``recorded_ms`` was kept makes no visit a follow-up
    (prescription._check_follow_up): h02's physical E11 beside such an entry is still the only
    one an E11 internet visit can rest on, and is kept."""
    _fill_room(world)
    pid = world.pid("patient-zhang")
    nk = ("registry", "patient/" + pid)
    rec = json.loads(world.chain.state.values[nk])
    e11 = next(d for d in rec["diagnoses"] if d["tag"] == _tag(pid, "E11"))
    legacy = {k: v for k, v in e11.items() if k not in ("recorded_ms", "by")}
    rec["diagnoses"] = [{**legacy, "hospital": "h01"}] + rec["diagnoses"]  # the enroller's, as written before
    world.chain.state.values[nk] = canonical.dumps(rec)
    assert _h05_records_in_person(world, "X00") == "h02"
    tags = [d["tag"] for d in diagnoses(world) if d.get("by") == "h02"]
    assert _tag(pid, "E11") in tags and _tag(pid, "H0200") not in tags
    world.chain.advance(1)
    _prep, res = issue(world, diagnosis="E11")
    assert res.ok, (res.reason, res.message)
