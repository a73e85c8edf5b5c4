"""Prescription-like load for fault runs, and the small contract it drives.

The ``rxload`` contract is a miniature of the prescription and settlement contracts with
the same invariants the checker tests: a doctor issues ``rx/<id>`` (``max_fills``), a
pharmacist dispenses one fill (``disp/<id>/<fill3>`` carrying the dispensing tx id; a
second dispense of an exhausted prescription is refused, and a concurrent one fails MVCC),
an insurer clerk settles ``claim/<id>`` with medfee = fund + patient and
patient = account + cash. It is deployed through the ordinary ``_lifecycle``
(install, a majority of admins approve, commit).

:class:`LoadGenerator` runs worker threads through the SDK's :class:`client.gateway.Gateway`
and records every tx id it submitted and every commit status a client was told
(:class:`~tests.harness.checker.Ack`), with timestamps for recovery measurements. Racer
workers try to dispense prescriptions other workers are dispensing, so double-dispense
races really happen.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rxchain.v1 import transaction_pb2

from client.errors import CommitError, RxClientError
from client.gateway import Gateway, RetryPolicy
from client.wallet import load_identity_dir
from tests.harness.checker import Ack
from tests.harness.consortium import Consortium

CONTRACT = "rxload"
LIFECYCLE = "_lifecycle"

RXLOAD_SOURCE = '''"""Miniature prescription + settlement contract used by the fault suite."""

from rxchain_contract import Context


def issue(ctx: Context, rx_id: str, max_fills: int, medfee_fen: int) -> dict:
    if ctx.caller.role != "doctor":
        ctx.fail("WRONG_ROLE", "only a doctor issues prescriptions")
    if ctx.get("rx/" + rx_id) is not None:
        ctx.fail("DUPLICATE_RX", rx_id)
    rx = {"rx_id": rx_id, "max_fills": max_fills, "fills": 0, "status": "ISSUED",
          "medfee_fen": medfee_fen, "hospital": ctx.caller.org, "tx_id": ctx.tx_id}
    ctx.put("rx/" + rx_id, rx)
    return rx


def dispense(ctx: Context, rx_id: str) -> dict:
    if ctx.caller.role != "pharmacist":
        ctx.fail("WRONG_ROLE", "only a pharmacist dispenses")
    rx = ctx.get("rx/" + rx_id)
    if rx is None:
        ctx.fail("NOT_FOUND", rx_id)
    if rx["fills"] >= rx["max_fills"]:
        ctx.fail("ALREADY_DISPENSED", rx_id)
    fill = rx["fills"] + 1
    ctx.put("disp/" + rx_id + "/" + str(fill).zfill(3),
            {"rx_id": rx_id, "fill": fill, "tx_id": ctx.tx_id, "pharmacy": ctx.caller.org})
    rx["fills"] = fill
    rx["status"] = "DISPENSED"
    ctx.put("rx/" + rx_id, rx)
    return {"rx_id": rx_id, "fill": fill}


def settle(ctx: Context, rx_id: str, ratio_bp: int, balance_fen: int) -> dict:
    if ctx.caller.role != "clerk":
        ctx.fail("WRONG_ROLE", "only an insurer clerk settles")
    rx = ctx.get("rx/" + rx_id)
    if rx is None or rx["fills"] == 0:
        ctx.fail("NOT_DISPENSED", rx_id)
    if ctx.get("claim/" + rx_id) is not None:
        ctx.fail("ALREADY_SETTLED", rx_id)
    medfee = rx["medfee_fen"]
    fund = (2 * medfee * ratio_bp + 10000) // 20000
    patient = medfee - fund
    account = min(patient, balance_fen)
    claim = {"rx_id": rx_id, "medfee_fen": medfee, "fund_fen": fund, "patient_fen": patient,
             "account_fen": account, "cash_fen": patient - account, "tx_id": ctx.tx_id}
    ctx.put("claim/" + rx_id, claim)
    return claim


def get(ctx: Context, key: str) -> dict:
    v = ctx.get(key)
    return {"key": key, "value": v}
'''

_CODE = transaction_pb2.TxValidationCode


def _gateway(cons: Consortium, org: str, user: str, peer: str, commit_timeout_ms: int = 15_000) -> Gateway:
    ident = load_identity_dir(cons.net.user_dir(org, user), cons.net.ca_bundle_path, org, user)
    return Gateway(ident, cons.target(peer), cons.net.config.consortium_id,
                   retry=RetryPolicy(attempts=4, base_delay_s=0.2, max_delay_s=1.0),
                   commit_timeout_ms=commit_timeout_ms, catch_up_timeout_s=5.0)


def _all_reach(gws: dict[str, Gateway], block: int, deadline: float) -> None:
    for org, gw in gws.items():
        if not gw.wait_for_block(block, max(0.1, deadline - time.monotonic())):
            raise RuntimeError(f"the peer of {org} did not commit block {block} in time")


def deploy_rxload(cons: Consortium, timeout_s: float = 60.0) -> list[str]:
    """Install, approve (a majority of admins, each through its own peer) and commit ``rxload``,
    and wait until the approvers' peers have the definition; returns the lifecycle tx ids."""
    peers = {cons.node(p).org: p for p in cons.peer_names()}
    n_orgs = len(cons.net.config.organizations)
    approvers = list(peers)[: n_orgs // 2 + 1]
    if len(approvers) < n_orgs // 2 + 1:
        raise RuntimeError("too few organisations with peers to approve a contract")
    gws = {org: _gateway(cons, org, "admin", peers[org]) for org in approvers}
    deadline = time.monotonic() + timeout_s
    try:
        lead = gws[approvers[0]]
        installed = lead.submit(LIFECYCLE, "install", {"name": CONTRACT, "version": "1", "source": RXLOAD_SOURCE})
        code_hash = str(installed.result["code_hash"])
        _all_reach(gws, installed.block, deadline)
        peer_orgs = sorted(peers)
        definition = {
            "name": CONTRACT, "version": "1", "sequence": 1, "code_hash": code_hash,
            "endorsement_policy": f"OutOf(2, {', '.join(f'{o}.peer' for o in peer_orgs)})",
            "access": {"*": ["*"]},
        }
        with ThreadPoolExecutor(len(approvers)) as pool:
            approved = list(pool.map(lambda org: gws[org].submit(LIFECYCLE, "approve", definition), approvers))
        _all_reach(gws, max(a.block for a in approved), deadline)
        committed = lead.submit(LIFECYCLE, "commit", definition)
        _all_reach(gws, committed.block, deadline)
        return [installed.tx_id, *(a.tx_id for a in approved), committed.tx_id]
    finally:
        for gw in gws.values():
            gw.close()


@dataclass
class LoadRecord:
    """What the clients did and were told (thread-safe through ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: set[str] = field(default_factory=set)
    acks: dict[str, Ack] = field(default_factory=dict)
    ack_times: list[tuple[float, float]] = field(default_factory=list)  # (submit start, acked)
    errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    def first_ack_after(self, t: float) -> float | None:
        """Completion time of the first acknowledged tx submitted at or after ``t``."""
        with self.lock:
            later = [done for start, done in self.ack_times if start >= t]
        return min(later) if later else None

    def acks_since(self, t: float) -> int:
        """How many txs were acknowledged after ``t``."""
        with self.lock:
            return sum(1 for _, done in self.ack_times if done >= t)


class _Client:
    """One identity talking to one peer, recording everything."""

    def __init__(self, gw: Gateway, rec: LoadRecord, clock: Callable[[], float]) -> None:
        self.gw = gw
        self.rec = rec
        self.clock = clock

    def submit(self, function: str, args: dict[str, Any]) -> str:
        """Run one transaction; returns the outcome name (VALID, a code, or an error reason)."""
        try:
            built = self.gw.builder.proposal(CONTRACT, function, args, None)
            endorsed = self.gw.endorse(built)
            envelope = self.gw.builder.envelope(built, endorsed.prepared_transaction)
        except RxClientError as exc:
            return self._count(f"endorse:{exc.reason}")
        start = self.clock()
        with self.rec.lock:
            self.rec.submitted.add(built.tx_id)
        try:
            res = self.gw.submit_envelope(built.tx_id, envelope, first=True)  # (built just above)
        except CommitError as exc:
            self._ack(Ack(built.tx_id, _CODE.Value(exc.reason), exc.block), start)
            return self._count(exc.reason)
        except RxClientError as exc:
            return self._count(f"submit:{exc.reason}")
        self._ack(Ack(built.tx_id, _CODE.Value(res.code), res.block), start)
        return self._count(res.code)

    def _ack(self, ack: Ack, start: float) -> None:
        with self.rec.lock:
            self.rec.acks[ack.tx_id] = ack
            self.rec.ack_times.append((start, self.clock()))

    def _count(self, outcome: str) -> str:
        with self.rec.lock:
            self.rec.outcomes[outcome] += 1
        return outcome


@dataclass(frozen=True)
class Role:
    """Who a worker acts as and through which peer."""

    org: str
    user: str
    peer: str


class LoadGenerator:
    """Worker threads issuing, dispensing (with racing dispensers) and settling prescriptions."""

    def __init__(self, cons: Consortium, doctors: list[Role], pharmacists: list[Role], clerk: Role,
                 seed: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.cons = cons
        self.rec = LoadRecord()
        self._clock = clock
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._gateways: list[Gateway] = []
        self._issued: list[str] = []  # recently issued rx ids (for racers)
        self._issued_lock = threading.Lock()
        self._doctors = [self._client(r) for r in doctors]
        self._pharmacists = [self._client(r) for r in pharmacists]
        self._clerk = self._client(clerk)
        self._seq = 0

    def _client(self, role: Role) -> _Client:
        gw = _gateway(self.cons, role.org, role.user, role.peer)
        self._gateways.append(gw)
        return _Client(gw, self.rec, self._clock)

    def _next_rx(self, worker: int) -> str:
        with self._issued_lock:
            self._seq += 1
            return f"RX-{worker}-{self._seq}"

    def _flow_worker(self, worker: int) -> None:
        rng = random.Random(self._rng.random() + worker)
        doctor = self._doctors[worker % len(self._doctors)]
        pharm = self._pharmacists[worker % len(self._pharmacists)]
        while not self._stop.is_set():
            rx_id = self._next_rx(worker)
            out = doctor.submit("issue", {"rx_id": rx_id, "max_fills": 1, "medfee_fen": rng.randrange(100, 100_000)})
            if out != "VALID":
                self._stop.wait(0.2)
                continue
            with self._issued_lock:
                self._issued.append(rx_id)
                del self._issued[:-20]
            if pharm.submit("dispense", {"rx_id": rx_id}) == "VALID":
                self._clerk.submit("settle", {"rx_id": rx_id, "ratio_bp": rng.choice([7000, 8500]),
                                              "balance_fen": rng.randrange(0, 50_000)})

    def _racer(self, worker: int) -> None:
        pharm = self._pharmacists[(worker + 1) % len(self._pharmacists)]
        while not self._stop.is_set():
            with self._issued_lock:
                rx_id = self._issued[-1] if self._issued else None
            if rx_id is None:
                self._stop.wait(0.1)
                continue
            pharm.submit("dispense", {"rx_id": rx_id})
            self._stop.wait(0.05)

    def start(self, flow_workers: int = 3, racers: int = 1) -> None:
        """Start the worker threads."""
        for i in range(flow_workers):
            self._threads.append(threading.Thread(target=self._flow_worker, args=(i,), daemon=True, name=f"flow{i}"))
        for i in range(racers):
            self._threads.append(threading.Thread(target=self._racer, args=(i,), daemon=True, name=f"racer{i}"))
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 90.0) -> None:
        """Stop the workers (each finishes its current call, which is bounded) and close channels."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        for gw in self._gateways:
            gw.close()
        if alive:
            raise RuntimeError(f"load workers still running after {timeout_s}s: {alive}")
