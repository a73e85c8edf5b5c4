"""Multi-step helpers shared by the contract tests (each step is a real transaction)."""

from __future__ import annotations

from typing import Any

from tests.contracts.chain import Outcome, Who, who
from tests.contracts.rxclient import Prepared, World, trace_key

JIANG = who("h01:dr-jiang:doctor")
ZHOU = who("h02:dr-zhou:doctor")
NEW = who("h01:dr-new:doctor")
HE = who("h01:pharm-he:pharmacist")
WANG = who("p01:pharm-wang:pharmacist")
CHEN = who("p02:pharm-chen:pharmacist")
COURIER = who("p01:courier-liu:courier")
COURIER2 = who("p02:courier-ma:courier")
NURSE = who("h01:nurse-xu:nurse")
CLERK = who("ins01:clerk-qian:clerk")
CLERK2 = who("ins02:clerk-lu:clerk")
AUDITOR = who("reg01:auditor-fang:auditor")


def issue(
    world: World,
    doctor: Who = JIANG,
    pharmacy: str = "p01",
    hospital: str | None = None,
    patient: str = "patient-zhang",
    drugs: list[tuple[str, int]] | None = None,
    **fields: Any,
) -> tuple[Prepared, Outcome]:
    rx_id = world.new_rx_id()
    content = world.content(rx_id, patient=patient, drugs=drugs, **fields)
    prep = world.prepare(content, hospital=hospital or doctor.org, pharmacy=pharmacy)
    return prep, world.issue(prep, doctor)


def approved(world: World, **kw: Any) -> Prepared:
    prep, out = issue(world, **kw)
    out.unwrap()
    reviewer = HE if kw.get("doctor", JIANG).org == "h01" else WANG
    world.chain.submit("prescription", "review", reviewer, rx_id=prep.args["rx_id"],
                       approve=True, reason="").unwrap()
    return prep


def content_transient(prep: Prepared) -> dict[str, Any]:
    return {"content": prep.content, "salt": prep.salt}


def dispense(world: World, prep: Prepared, pharmacist: Who = WANG,
             trace_codes: list[str] | None = None, key: str | None = None, **args: Any) -> Outcome:
    """``args``: further arguments of the call (e.g. ``lock_id``)."""
    transient = content_transient(prep)
    if trace_codes:
        transient.update(trace_codes=trace_codes, trace_key=key or trace_key())
    return world.chain.submit("prescription", "dispense", pharmacist, transient=transient,
                              rx_id=prep.args["rx_id"], **args)


def lock_and_dispense(world: World, prep: Prepared, pharmacist: Who = WANG,
                      trace_codes: list[str] | None = None) -> Outcome:
    world.chain.submit("prescription", "lock", pharmacist, rx_id=prep.args["rx_id"]).unwrap()
    return dispense(world, prep, pharmacist, trace_codes)


def claim_transient(prep: Prepared, lines: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"claim": prep.claim, "claim_salt": prep.claim_salt}
    if lines is not None:
        t["lines"] = lines
    return t


def settle(world: World, prep: Prepared, clerk: Who = CLERK, fill: int = 0,
           lines: list[dict[str, Any]] | None = None) -> Outcome:
    return world.chain.submit("settlement", "settle", clerk,
                              transient=claim_transient(prep, lines),
                              rx_id=prep.args["rx_id"], fill=fill)
