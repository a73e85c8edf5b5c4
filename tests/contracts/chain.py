"""A tiny single-node "chain" for contract tests: real contract sources, real sandbox.

Every ``submit`` simulates one invocation against committed state (through the sandbox's
runner when ``node.sandbox`` provides one, otherwise the stand-in ``shim``) and, if the
contract succeeded, commits the write set as a new fake block, so ``ctx.history`` and the
trace see real block numbers. ``query`` simulates without committing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.sandbox import canonical
from node.sandbox.types import CallerInfo, ContractEvent, Invocation, InvocationResult
from tests.contracts import sandbox_adapter
from tests.contracts.state import MemoryState, Simulation

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ("registry", "prescription", "settlement")
# 2026-11-25 10:00:00 China time (UTC+8), a fixed test clock start.
T0_MS = 1_795_572_000_000
DAY_MS = 86_400_000


def org_kind(org: str) -> str:
    if org.startswith("h"):
        return "hospital"
    if org.startswith("p"):
        return "pharmacy"
    if org.startswith("ins"):
        return "insurer"
    if org.startswith("reg"):
        return "regulator"
    raise ValueError(f"unknown org {org}")


def hospital_level(org: str) -> str:
    if org == "h01":
        return "tertiary"
    return "community" if org_kind(org) == "hospital" else ""


@dataclass(frozen=True)
class Who:
    org: str
    name: str
    role: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    # A patient's client sends her binding (transient ``patient_binding``) with every call.
    binding: str = ""

    def info(self) -> CallerInfo:
        return CallerInfo(
            org=self.org,
            role=self.role,
            name=self.name,
            attrs=dict(self.attrs),
            org_kind=org_kind(self.org),
            hospital_level=hospital_level(self.org),
        )


def who(spec: str) -> Who:
    """``"h01:dr-jiang:doctor"`` -> Who."""
    org, name, role = spec.split(":")
    return Who(org, name, role)


def admin(org: str) -> Who:
    return Who(org, "admin", "admin")


@dataclass
class Outcome:
    ok: bool
    reason: str
    message: str
    value: Any
    tx_id: str
    block: int | None
    events: tuple[ContractEvent, ...]
    gas: int

    def unwrap(self) -> Any:
        assert self.ok, f"expected success, got {self.reason}: {self.message}"
        return self.value


class Chain:
    def __init__(self, t0_ms: int = T0_MS, runner: sandbox_adapter.Runner | None = None) -> None:
        self.state = MemoryState()
        self.now = t0_ms
        self._seq = 0
        self.events: list[ContractEvent] = []
        self.block_args: list[bytes] = []
        self._sources = {
            name: (ROOT / "contracts" / f"{name}.py").read_text(encoding="utf-8")
            for name in CONTRACTS
        }
        self._hashes = {
            name: hashlib.sha256(src.encode()).hexdigest() for name, src in self._sources.items()
        }
        self._runner = runner or sandbox_adapter.make_runner()
        self.gas_limit = 10_000_000  # of every invocation (the test networks have 1,000,000)

    def advance(self, ms: int) -> None:
        self.now += ms

    def _invoke(
        self,
        contract: str,
        fn: str,
        caller: Who,
        args: Mapping[str, Any],
        transient: Mapping[str, Any] | None,
        at_ms: int | None,
    ) -> tuple[InvocationResult, Simulation, str, int]:
        self._seq += 1
        tx_id = hashlib.sha256(f"tx-{self._seq}".encode()).hexdigest()
        ts = self.now if at_ms is None else at_ms
        if caller.binding:
            transient = {"patient_binding": caller.binding, **(transient or {})}
        inv = Invocation(
            contract=contract,
            code_hash=self._hashes[contract],
            source=self._sources[contract],
            function=fn,
            args_json=canonical.dumps(dict(args)),
            tx_id=tx_id,
            timestamp_ms=ts,
            caller=caller.info(),
            transient={k: canonical.dumps(v) for k, v in (transient or {}).items()},
            gas_limit=self.gas_limit,
        )
        sim = Simulation(self.state)
        return self._runner(inv, sim), sim, tx_id, ts

    def submit(
        self,
        contract: str,
        fn: str,
        caller: Who,
        transient: Mapping[str, Any] | None = None,
        at_ms: int | None = None,
        **args: Any,
    ) -> Outcome:
        res, sim, tx_id, ts = self._invoke(contract, fn, caller, args, transient, at_ms)
        block = self.state.commit(sim, tx_id, ts) if res.ok else None
        if res.ok:
            self.events.extend(res.events)
            # what a block carries in clear: the arguments (never the transient inputs)
            self.block_args.append(canonical.dumps(dict(args)))
        return self._outcome(res, tx_id, block)

    def simulate(self, contract: str, fn: str, caller: Who,
                 transient: Mapping[str, Any] | None = None, **args: Any) -> tuple[
        Outcome, Simulation, int
    ]:
        """Endorse only: the outcome, its read/write set and its timestamp."""
        res, sim, tx_id, ts = self._invoke(contract, fn, caller, args, transient, None)
        return self._outcome(res, tx_id, None), sim, ts

    def commit_validated(self, outcome: Outcome, sim: Simulation, ts: int) -> str:
        """Commit an endorsed simulation unless a key it read changed since (MVCC)."""
        if self.state.stale_reads(sim):
            return "MVCC_READ_CONFLICT"
        self.state.commit(sim, outcome.tx_id, ts)
        return "VALID"

    def query(
        self,
        contract: str,
        fn: str,
        caller: Who,
        transient: Mapping[str, Any] | None = None,
        **args: Any,
    ) -> Outcome:
        res, _sim, tx_id, _ts = self._invoke(contract, fn, caller, args, transient, None)
        return self._outcome(res, tx_id, None)

    @staticmethod
    def _outcome(res: InvocationResult, tx_id: str, block: int | None) -> Outcome:
        value = json.loads(res.result_json) if res.ok and res.result_json else None
        return Outcome(res.ok, res.reason, res.message, value, tx_id, block, res.events, res.gas_used)

    def raw_state_bytes(self) -> bytes:
        """Every committed key, value and historical value, concatenated (for leak scans)."""
        parts: list[bytes] = []
        for (ns, key), versions in self.state.versions.items():
            parts.append(f"{ns}/{key}".encode())
            parts.extend(v.value for v in versions if v.value is not None)
        return b"\n".join(parts)
