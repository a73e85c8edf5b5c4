"""Prescription-story load on the REAL contracts (prescription, settlement, registry),
through the SDK's high-level operations (``client.rxops.RxOperations``).

Each worker plays the story: a doctor issues an encrypted prescription routed to p01, the
pharmacist reviews and dispenses it with box trace codes (while a racer -- the same
pharmacy's pharmacist on another peer -- tries to dispense the same prescription), and the
insurer's clerk settles it. Every tx id is recorded before it is submitted and every commit
status a client was told is recorded as an :class:`~tests.harness.checker.Ack`, through a
:class:`RecordingGateway` put in each session.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rxchain.v1 import transaction_pb2

from client.errors import CommitError, RxClientError
from client.gateway import Gateway, RetryPolicy, SubmitResult
from client.rxops import DrugLine, IssueRequest, RxOperations
from client.session import Session
from tests.harness.checker import Ack
from tests.harness.load import LoadRecord

_CODE = transaction_pb2.TxValidationCode


class RecordingGateway(Gateway):
    """A Gateway that records each submitted tx id and the commit status it was told."""

    def __init__(self, rec: LoadRecord, clock: Callable[[], float], *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._rec = rec
        self._clock2 = clock

    def submit_envelope(self, tx_id: str, envelope: transaction_pb2.Envelope, *,
                        first: bool = False) -> SubmitResult:
        start = self._clock2()
        with self._rec.lock:
            self._rec.submitted.add(tx_id)
        try:
            res = super().submit_envelope(tx_id, envelope, first=first)
        except CommitError as exc:
            self._ack(Ack(exc.tx_id, _CODE.Value(exc.reason), exc.block), start)
            raise
        self._ack(Ack(tx_id, _CODE.Value(res.code), res.block), start)
        return res

    def _ack(self, ack: Ack, start: float) -> None:
        with self._rec.lock:
            self._rec.acks[ack.tx_id] = ack
            self._rec.ack_times.append((start, self._clock2()))


def recording_session(home: Path, as_: str, rec: LoadRecord, clock: Callable[[], float],
                      peer_org: str | None = None) -> Session:
    """A Session whose gateway records (replaces the one the Session opened)."""
    s = Session(home, as_, peer_org=peer_org)
    target, cid = s.gateway.target, s.net.consortium_id
    s.gateway.close()
    s.gateway = RecordingGateway(rec, clock, s.identity, target, cid,
                                 retry=RetryPolicy(attempts=4, base_delay_s=0.2, max_delay_s=1.0),
                                 commit_timeout_ms=15_000, catch_up_timeout_s=5.0)
    return s


def _issue_into(doctor: RxOperations, req: IssueRequest, out: dict[str, str]) -> None:
    out.update(doctor.issue(req))


STORIES = (("h01:dr-jiang", "patient-zhang"), ("h02:dr-zhou", "patient-sun"))


class StoryLoad:
    """Worker threads running prescription stories on the real contracts."""

    def __init__(self, home: Path, seed: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rec = LoadRecord()
        self._home = home
        self._clock = clock
        self._seed = seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sessions: list[Session] = []
        self._lock = threading.Lock()
        self._dispensing: list[str] = []  # rx ids a racer may try
        self.stories_done = 0

    def _session(self, as_: str, peer_org: str | None = None) -> RxOperations:
        s = recording_session(self._home, as_, self.rec, self._clock, peer_org)
        with self._lock:
            self._sessions.append(s)
        return RxOperations(s)

    def _count(self, outcome: str) -> None:
        with self.rec.lock:
            self.rec.outcomes[outcome] += 1

    def _step(self, what: str, fn: Callable[..., object], *args: object) -> bool:
        try:
            fn(*args)
        except RxClientError as exc:
            self._count(f"{what}:{exc.reason}")
            return False
        self._count(f"{what}:ok")
        return True

    def _worker(self, i: int) -> None:
        rng = random.Random(self._seed * 1000 + i)
        doctor_as, patient = STORIES[i % len(STORIES)]
        doctor = self._session(doctor_as)
        pharm = self._session("p01:pharm-wang")
        clerk = self._session("ins01:clerk-zhao")
        while not self._stop.is_set():
            rx: dict[str, str] = {}
            req = IssueRequest(patient=patient, diagnosis="I10", drugs=[DrugLine("amlodipine", 1)],
                               days=7, valid_days=2, pharmacy="p01")
            if not self._step("issue", _issue_into, doctor, req, rx):
                self._stop.wait(0.3)
                continue
            rx_id = rx["rx_id"]
            if not self._step("review", pharm.review, rx_id, True):
                continue
            with self._lock:
                self._dispensing.append(rx_id)
                del self._dispensing[:-10]
            codes = [f"TC{os.urandom(4).hex().upper()}{k}" for k in range(rng.randrange(0, 2))]
            if self._step("dispense", pharm.dispense, rx_id, codes):
                self._step("settle", clerk.settle, rx_id)
                with self._lock:
                    self.stories_done += 1

    def _racer(self) -> None:
        racer = self._session("p01:pharm-wang", peer_org="ins01")
        while not self._stop.is_set():
            with self._lock:
                rx_id = self._dispensing[-1] if self._dispensing else None
            if rx_id is not None:
                self._step("race-dispense", racer.dispense, rx_id)
            self._stop.wait(0.2)

    def start(self, workers: int = 2, racers: int = 1) -> None:
        """Start the story workers and the racers."""
        for i in range(workers):
            self._threads.append(threading.Thread(target=self._worker, args=(i,), daemon=True, name=f"story{i}"))
        for i in range(racers):
            self._threads.append(threading.Thread(target=self._racer, daemon=True, name=f"racer{i}"))
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 90.0) -> None:
        """Stop the workers (bounded) and close the sessions."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        for s in self._sessions:
            s.close()
        if alive:
            raise RuntimeError(f"story workers still running after {timeout_s}s: {alive}")
