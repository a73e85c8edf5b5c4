"""Second review of the red-team fixes (client): one pseudonym per ID number whatever the
input method typed, and the trace/audit page reader's answer to a malformed page."""

from __future__ import annotations

import os
from typing import Any, cast

import pytest

from client.errors import RxClientError
from client.patients import PatientDirectory, patient_from_yaml
from client.records import normalise_id_number, pseudonym
from client.rxops import RxOperations

ZHANG = {"name": "patient-zhang", "id_number": "500103195803124428", "birth_date": "1958-03-12"}
FULL_WIDTH = "".join(chr(ord(c) + 0xFEE0) for c in ZHANG["id_number"])  # what a CJK IME types


def test_full_width_id_number_is_the_same_patient() -> None:
    """A Chinese input method types full-width digits (and ``ｘ``): ``\\d`` matched them, so
    the directory made a second patient with a second pseudonym (deductible, cap) of them."""
    secret = os.urandom(32)
    directory = PatientDirectory([patient_from_yaml(ZHANG)])
    for ref in (FULL_WIDTH, FULL_WIDTH[:9] + ZHANG["id_number"][9:], f"\u3000{FULL_WIDTH} "):
        found = directory.resolve(ref)
        assert found.handle == "patient-zhang", ref
        assert pseudonym(secret, ref) == pseudonym(secret, ZHANG["id_number"])
    other = "50010319621108001x"
    wide = "".join(chr(ord(c) + 0xFEE0) for c in other)
    bare = directory.resolve(wide)
    assert (bare.id_number, bare.birth_date) == ("50010319621108001X", "1962-11-08")
    assert normalise_id_number(wide) == normalise_id_number(other) == "50010319621108001X"


def test_digits_of_other_scripts_are_no_id_number() -> None:
    arabic_indic = "".join(chr(0x0660 + int(c)) for c in ZHANG["id_number"])
    with pytest.raises(RxClientError) as err:
        PatientDirectory([patient_from_yaml(ZHANG)]).resolve(arabic_indic)
    assert err.value.reason == "UNKNOWN_PATIENT" and ZHANG["id_number"] not in str(err.value)


class _Gateway:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages

    def evaluate(self, contract: str, fn: str, args: dict[str, Any]) -> Any:
        return self.pages.pop(0)


def _ops(pages: list[dict[str, Any]]) -> RxOperations:
    ops = RxOperations.__new__(RxOperations)
    ops.s = cast(Any, type("S", (), {"gateway": _Gateway(pages)})())
    return ops


@pytest.mark.parametrize("missing_on", [0, 1])
def test_a_page_without_its_list_is_bad_payload(missing_on: int) -> None:
    """A first page without ``events`` used to pass, and the second page then crashed the
    reader with a KeyError instead of BAD_PAYLOAD."""
    pages: list[dict[str, Any]] = [{"rx_id": "RX-1", "events": [{"n": 1}], "next": "k2"},
                                   {"rx_id": "RX-1", "events": [{"n": 2}], "next": ""}]
    del pages[missing_on]["events"]
    with pytest.raises(RxClientError) as err:
        _ops(pages).audit("RX-1")
    assert err.value.reason == "BAD_PAYLOAD"


class _GrowingTrail:
    """A trace that gains a step with an early timestamp (a skewed client clock) between the
    first and the second page: the contract's position cursor then repeats a step."""

    def __init__(self) -> None:
        self.trail = [{"step": s, "actor": "a", "tx_id": f"{i:064x}", "block": i, "time_ms": 10 * i}
                      for i, s in enumerate(["issue", "review", "lock", "dispense", "deliver"])]
        self.calls = 0

    def evaluate(self, contract: str, fn: str, args: dict[str, Any]) -> dict[str, Any]:
        if self.calls == 1:  # a settle timestamped before "deliver" commits meanwhile
            self.trail.insert(2, {"step": "settle", "actor": "c", "tx_id": "f" * 64, "block": 9,
                                  "time_ms": 15})
        self.calls += 1
        first = int(args["start"] or 0)
        page = self.trail[first:first + 3]
        after = first + len(page)
        return {"rx_id": args["rx_id"], "status": "DELIVERED", "steps": page,
                "next": str(after) if after < len(self.trail) else "", "unreadable": 0}


def test_trace_pages_never_repeat_a_step() -> None:
    ops = RxOperations.__new__(RxOperations)
    ops.s = cast(Any, type("S", (), {"gateway": _GrowingTrail()})())
    steps = [s["step"] for s in ops.trace("RX-1")["steps"]]
    assert steps == ["issue", "review", "lock", "dispense", "deliver"]  # settle: next reading
