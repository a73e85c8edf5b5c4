"""Open-loop prescription-story load over pipelined ``Gateway.TransactBatch`` streams.

A story is the prescription's life: the doctor issues it (content encrypted client-side,
record keys wrapped for the patient, the hospital, the pharmacy and the insurer), the
pharmacist reviews and locks it, fetches its key (an audited ``get_key`` transaction),
decrypts it and dispenses with box trace codes, and the insurer's clerk fetches the claim
key, decrypts the claim subset and settles. That is 7 transactions, each depending on the
one before. Stories *arrive* open-loop at a fixed rate; each transaction's latency runs
from building its proposal to the client receiving its commit status.

Every client identity holds one or more TransactBatch streams to its own organisation's
peer (several connections = several client applications); a stream carries many endorse
and submit requests in flight at once, so no transaction needs its own unary call, and
requests (answers) ready at the same moment share one stream message -- e.g. the commit
statuses of one block. Fewer streams per identity therefore mean fuller messages
(``bench.transact_bench``: one stream costs less CPU per tx than four at the same load).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from rxchain.v1 import identity_pb2, services_pb2, services_pb2_grpc, transaction_pb2

from bench.e2e_net import BenchNetwork, BenchPatient
from client import records
from client.batching import RequestQueue, batch_requests, is_unimplemented, single_requests
from client.records import claim_subset, commitment, dx_key, open_grant, seal_prescription
from client.tx import BuiltProposal, TxBuilder
from client.wallet import WalletIdentity, load_identity
from node.crypto.tls import secure_channel

RETRY_CODES = frozenset({"MVCC_READ_CONFLICT", "PHANTOM_READ_CONFLICT", "ENDORSEMENT_MISMATCH"})
# The next actor's peer may not have committed the previous step's block yet (each peer
# commits a block a few ms apart): retry after a short pause, as the SDK's catch-up does.
CATCH_UP_CODES = frozenset({"NOT_FOUND", "NOT_DISPENSED", "NOT_APPROVED", "NOT_LOCKED",
                            "ENDORSEMENT_POLICY_FAILURE"})
CATCH_UP_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
MAX_RETRIES = 3
STEPS = ("issue", "review", "lock", "get_key_pharmacy", "dispense", "get_key_insurer", "settle")

Answer = Callable[[services_pb2.TransactResponse], None]


class TransactStream:
    """One client connection: a TransactBatch stream with correlation ids and callbacks.

    Requests queued together go out in one message (``client.batching``: never waits to
    fill one) and the gateway coalesces its answers the same way. ``batched=False`` (or a
    gateway answering UNIMPLEMENTED before anything else) uses Transact, one request per
    message; the unanswered requests are then sent again on the new stream.
    """

    def __init__(self, ident: WalletIdentity, target: str, batched: bool = True):
        self._channel = secure_channel(target, ident.cert_path, ident.key_path, ident.ca_bundle_path)
        self._stub = services_pb2_grpc.GatewayStub(self._channel)
        self._q: RequestQueue = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[services_pb2.TransactRequest, Answer]] = {}
        self._lock = threading.Lock()
        self.batched = batched
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True, name="transact-read")
        self._reader.start()

    def _answers(self) -> Iterator[services_pb2.TransactResponse]:
        if self.batched:
            for msg in self._stub.TransactBatch(batch_requests(self._q)):
                yield from msg.responses
        else:
            yield from self._stub.Transact(single_requests(self._q))

    def _fall_back(self) -> None:
        """Reopen as Transact and resend what is unanswered (nothing was processed)."""
        with self._lock:
            self._q.put(None)
            self._q = queue.SimpleQueue()
            self.batched = False
            for cid in sorted(self._pending):
                self._q.put(self._pending[cid][0])
            if self._closed:
                self._q.put(None)

    def _read(self) -> None:
        answered = False
        while True:
            try:
                for resp in self._answers():
                    answered = True
                    with self._lock:
                        entry = self._pending.pop(resp.correlation_id, None)
                    if entry is not None:
                        entry[1](resp)
            except grpc.RpcError as exc:
                if self.batched and not answered and is_unimplemented(exc):
                    self._fall_back()
                    continue
            break
        with self._lock:
            left = [cb for _, cb in self._pending.values()]
            self._pending.clear()
        for cb in left:
            cb(services_pb2.TransactResponse(error=identity_pb2.ErrorDetail(reason="STREAM_CLOSED")))

    def send(self, req: services_pb2.TransactRequest, cb: Answer) -> None:
        """Send a request; ``cb`` gets its answer (on the reader thread)."""
        cid = next(self._ids)
        req.correlation_id = cid
        with self._lock:
            self._pending[cid] = (req, cb)
            self._q.put(req)  # under the lock: a fallback resends exactly the unanswered

    def close(self, timeout_s: float = 5.0) -> None:
        """Half-close, wait for the reader, close the channel."""
        with self._lock:
            self._closed = True
            self._q.put(None)
        self._reader.join(timeout_s)
        self._channel.close()


@dataclass
class TxResult:
    """One transaction as the client saw it."""

    step: str
    start: float
    end: float
    code: str  # VALID, a validation code, or an error reason
    block: int = -1
    submitted: bool = False  # the envelope went to the ordering service


@dataclass
class Recorder:
    """Everything the clients saw (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    txs: list[TxResult] = field(default_factory=list)
    stories_started: int = 0
    stories_done: int = 0
    stories_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    catch_up_retries: int = 0

    def add(self, r: TxResult) -> None:
        """Record a finished transaction."""
        with self.lock:
            self.txs.append(r)


class Client:
    """One identity with its builder and streams."""

    def __init__(self, ident: WalletIdentity, target: str, consortium_id: str, streams: int):
        self.ident = ident
        self.builder = TxBuilder(ident.signer, consortium_id)
        self.streams = [TransactStream(ident, target) for _ in range(streams)]
        self._rr = itertools.count()

    def stream(self) -> TransactStream:
        """Round-robin over the streams."""
        return self.streams[next(self._rr) % len(self.streams)]

    def keys(self) -> list[Any]:
        """Keys that may unwrap record keys (own, then the org's records key)."""
        out: list[Any] = [self.ident.private_key]
        if self.ident.records_key is not None:
            out.append(self.ident.records_key)
        return out

    def close(self) -> None:
        """Close every stream."""
        for s in self.streams:
            s.close()


def run_tx(client: Client, rec: Recorder, step: str, contract: str, fn: str, args: dict[str, Any],
           transient: dict[str, Any] | None, done: Callable[[str, Any], None],
           clock: Callable[[], float] = time.monotonic, scheduled: float | None = None,
           endorsers: Sequence[str] = ()) -> None:
    """Endorse, sign and submit one transaction over a stream; ``done(code, result)``.
    ``endorsers``: the endorsing organisations a call carrying transient inputs names (the
    gateway endorses one naming none alone, or refuses it: ENDORSERS_REQUIRED).

    Its latency runs from ``scheduled`` when given (the open loop's arrival time of a story's
    first transaction: a sender that fell behind the schedule adds its delay, no coordinated
    omission), else from now."""
    start = clock() if scheduled is None else scheduled
    built: BuiltProposal = client.builder.proposal(contract, fn, args, transient)
    stream = client.stream()
    result: list[Any] = [None]

    def finish(code: str, block: int = -1, submitted: bool = False) -> None:
        rec.add(TxResult(step, start, clock(), code, block, submitted))
        done(code, result[0])

    def on_commit(resp: services_pb2.TransactResponse) -> None:
        kind = resp.WhichOneof("kind")
        if kind == "committed":
            finish(transaction_pb2.TxValidationCode.Name(resp.committed.code), int(resp.committed.block_number),
                   True)
        else:
            finish(resp.error.reason or "NO_ANSWER", -1, True)

    def on_endorsed(resp: services_pb2.TransactResponse) -> None:
        if resp.WhichOneof("kind") != "endorsed":
            finish(resp.error.reason or "NO_ANSWER")
            return
        r = resp.endorsed.result
        if r.status != 200:
            finish(r.reason or f"STATUS_{r.status}")
            return
        try:
            result[0] = json.loads(r.payload) if r.payload else None
            env = client.builder.envelope(built, resp.endorsed.prepared_transaction)
        except Exception as exc:
            finish(f"CLIENT_{type(exc).__name__}")
            return
        stream.send(services_pb2.TransactRequest(submit=env), on_commit)

    stream.send(services_pb2.TransactRequest(
        endorse=services_pb2.EndorseRequest(proposal=built.signed, endorsing_orgs=list(endorsers))), on_endorsed)


class Story:
    """One prescription's seven transactions, each started when the previous commits."""

    def __init__(self, n: int, world: StoryWorld, patient: BenchPatient):
        self.n = n
        self.w = world
        # the recorder of the level the story arrived in: a story still running when that
        # level's drain gave up reports to it, not to the next level's
        self.rec = world.rec
        self.patient = patient
        self.rx_id = f"RXB-{world.tag}-{n:06d}"
        self.doctor = world.clients["doctor-" + patient.hospital]
        self.pharm = world.clients["pharmacist"]
        self.clerk = world.clients["clerk"]
        self.content: dict[str, Any] = {}
        self.opened_body: dict[str, Any] = {}
        self.opened_salt = ""
        self.step = 0
        self.retries = 0
        self.waits = 0

    # ------------------------------------------------------------ steps
    def start(self, scheduled: float | None = None) -> None:
        """Begin with the issue transaction, due at ``scheduled`` (monotonic; now if None)."""
        with self.rec.lock:
            self.rec.stories_started += 1
        self._run(scheduled)

    def _run(self, scheduled: float | None = None) -> None:
        try:
            client, contract, fn, args, transient = self._build()
        except Exception as exc:
            self._fail(f"CLIENT_{type(exc).__name__}")
            return
        run_tx(client, self.rec, STEPS[self.step], contract, fn, args, transient, self._done,
               scheduled=scheduled, endorsers=self._endorsers() if transient else ())

    def _endorsers(self) -> list[str]:
        """The parties a step carrying plaintext names as its endorsers (as the SDK's RxOperations
        does): issue and dispense the hospital and the pharmacy, settle the insurer and the pharmacy."""
        if self.step == 6:
            return ["ins01", "p01"]
        return [self.patient.hospital, "p01"]

    def _build(self) -> tuple[Client, str, str, dict[str, Any], dict[str, Any] | None]:
        s, rx = self.step, self.rx_id
        if s == 0:
            return self._issue()
        if s == 1:
            return self.pharm, "prescription", "review", {"rx_id": rx, "approve": True, "reason": ""}, None
        if s == 2:
            return self.pharm, "prescription", "lock", {"rx_id": rx}, None
        if s in (3, 5):
            who = self.pharm if s == 3 else self.clerk
            return who, "prescription", "get_key", {"rx_id": rx}, None
        if s == 4:
            codes = [f"TB{self.w.tag}{self.n:06d}{i}" for i in range(2)]
            transient: dict[str, Any] = {"content": self.opened_body, "salt": self.opened_salt}
            if self.w.trace_key is None:  # trace codes as arguments (contracts before trace keys)
                return self.pharm, "prescription", "dispense", {"rx_id": rx, "trace_codes": codes}, transient
            transient.update(trace_codes=codes, trace_key=self.w.trace_key)
            return self.pharm, "prescription", "dispense", {"rx_id": rx}, transient
        return (self.clerk, "settlement", "settle", {"rx_id": rx, "fill": 0},
                {"claim": self.opened_body, "claim_salt": self.opened_salt})

    def _issue(self) -> tuple[Client, str, str, dict[str, Any], dict[str, Any] | None]:
        w, doc = self.w, self.doctor
        me = doc.ident
        content = {
            "rx_id": self.rx_id, "patient": self.patient.pseudonym, "diagnosis": "I10",
            "first_visit": False, "drugs": w.drug_lines, "days": 28, "long_rx": True,
            "max_fills": 1, "fill_interval_days": 0, "valid_days": 1,
            "chronic_reason": "stable essential hypertension, video follow-up",
            "patient_info": {"birth_date": self.patient.birth_date, "name": "bench patient"},
            "prescriber": {"org": me.org, "name": me.user, "dr_code": me.attrs.get("dr_code", "")},
            "visit": {"type": "internet-follow-up", "id": self.rx_id},
        }
        recipients = {me.org: w.records_pub[me.org], "patient": w.patient_pub[self.patient.hospital],
                      "p01": w.records_pub["p01"]}
        sealed = seal_prescription(self.rx_id, content, recipients, "ins01", w.records_pub["ins01"],
                                   "p01", w.dx_key)
        self.content = content
        return doc, "prescription", "issue", sealed.args, sealed.transient

    def _done(self, code: str, result: Any) -> None:
        if code != "VALID":
            if code in RETRY_CODES and self.retries < MAX_RETRIES:
                self.retries += 1
                self._run()
                return
            if code in CATCH_UP_CODES and self.waits < len(CATCH_UP_DELAYS_S):
                delay = CATCH_UP_DELAYS_S[self.waits]
                self.waits += 1
                with self.rec.lock:
                    self.rec.catch_up_retries += 1
                timer = threading.Timer(delay, self._run)
                timer.daemon = True
                timer.start()
                return
            self._fail(code)
            return
        if self.step in (3, 5):
            try:
                opened = open_grant(result, (self.pharm if self.step == 3 else self.clerk).keys())
                if self.step == 3 and opened.body != self.content:
                    raise ValueError("decrypted content differs")
                if self.step == 5 and commitment(opened.salt, opened.body) != commitment(
                        opened.salt, claim_subset(self.rx_id, self.content)):
                    raise ValueError("decrypted claim differs")
            except Exception as exc:
                self._fail(f"CLIENT_{type(exc).__name__}")
                return
            self.opened_body, self.opened_salt = opened.body, opened.salt
        self.step += 1
        self.retries = self.waits = 0
        if self.step == len(STEPS):
            with self.rec.lock:
                self.rec.stories_done += 1
            return
        self._run()

    def _fail(self, code: str) -> None:
        with self.rec.lock:
            self.rec.stories_failed += 1
            self.rec.failures[f"{STEPS[self.step]}:{code}"] = self.rec.failures.get(
                f"{STEPS[self.step]}:{code}", 0) + 1


class StoryWorld:
    """Clients, keys and patients shared by all stories of a run."""

    def __init__(self, bnet: BenchNetwork, streams_per_client: int = 4):
        net = bnet.net
        self.bnet = bnet
        self.tag = os.urandom(3).hex().upper()
        self.dx_key = dx_key(net.secret)
        # keyed trace-code hashes (transient trace codes) where the client library has them
        make_trace_key = getattr(records, "trace_key", None)
        self.trace_key: str | None = make_trace_key(net.secret) if make_trace_key else None
        self.rec = Recorder()
        idents = {
            "doctor-h01": load_identity(bnet.home, "h01", "dr-jiang"),
            "doctor-h02": load_identity(bnet.home, "h02", "dr-zhou"),
            "pharmacist": load_identity(bnet.home, "p01", "pharm-wang"),
            "clerk": load_identity(bnet.home, "ins01", "clerk-zhao"),
        }
        self.clients = {name: Client(i, net.peer_of(i.org).target, net.consortium_id, streams_per_client)
                        for name, i in idents.items()}
        self.records_pub = {o: net.records_public_key(o) for o in ("h01", "h02", "p01", "ins01")}
        from client.session import Session  # only for the patients' certificate keys
        s = Session(bnet.home, "h01:admin", network=net)
        try:
            self.patient_pub = {"h01": s.user_public_key("h01", "patient-zhang"),
                                "h02": s.user_public_key("h02", "patient-sun")}
        finally:
            s.close()
        self.drug_lines = [
            {"code": "XC08CAA001A001010100001", "name": "Amlodipine besylate tablets",
             "short_name": "amlodipine", "spec": "5 mg x 28 tablets", "qty": 1, "days": 28, "price_fen": 2000},
            {"code": "XC08CAB037A001020180517", "name": "Benidipine hydrochloride tablets",
             "short_name": "benidipine", "spec": "4 mg x 14 tablets", "qty": 1, "days": 28, "price_fen": 2500},
        ]
        self.patients = bnet.patients
        self._n = itertools.count()

    def new_story(self) -> Story:
        """The next story (patients round-robin)."""
        n = next(self._n)
        return Story(n, self, self.patients[n % len(self.patients)])

    def reset(self) -> Recorder:
        """Start a fresh recorder; returns the old one."""
        old, self.rec = self.rec, Recorder()
        return old

    def close(self) -> None:
        """Close every client."""
        for c in self.clients.values():
            c.close()


def open_loop(world: StoryWorld, stories_per_s: float, duration_s: float,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> tuple[float, float]:
    """Start stories at a fixed rate for ``duration_s``; returns (t_start, t_end).

    Arrival times are fixed in advance, whatever the completions; a story started late (this
    thread seals and signs each issue, and may fall behind) is timed from when it was due."""
    t0 = clock()
    i = 0
    while True:
        due = t0 + i / stories_per_s
        if due >= t0 + duration_s:
            break
        now = clock()
        if due > now:
            sleep(due - now)
        world.new_story().start(due)
        i += 1
    return t0, t0 + duration_s


def drain(world: StoryWorld, timeout_s: float, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> bool:
    """Wait (bounded) until every started story has finished or failed."""
    deadline = clock() + timeout_s
    while clock() < deadline:
        r = world.rec
        with r.lock:
            if r.stories_done + r.stories_failed >= r.stories_started:
                return True
        sleep(0.05)
    return False
