"""CPU cost of one sandboxed invocation of the REAL contracts, per story function.

``python -m bench.contract_bench [--stories N] [--rounds R] [--baseline GITREF]`` writes
``bench/results/contract.json``.

The workload is the e2e story (bench/e2e_load.py) on the real contract sources: the
sample data (network-config/sample-data.yaml) is loaded through the registry/settlement
contracts, then each story runs issue (doctor h01/h02), review, lock, get_key (pharmacy),
dispense (transient trace codes), get_key (insurer) and settle, every call through
``node.sandbox.runtime.Sandbox`` (one worker, seccomp on) against the peer's own
``node.peer.simulator.TxSimulator`` over an in-memory versioned state; a successful
call's write set is committed as the next block, as on a peer.

Per invocation the bench measures the CPU time of the calling (host) thread
(``time.thread_time_ns``, covering the host half of the protocol and the simulator) plus
the worker process's CPU time from ``/proc/<pid>/schedstat`` (nanosecond run time), and
counts the host<->worker frames in a separate pass (hooks on ``protocol.write_frame`` and
``FrameReader.read``). There is no GIL contention here: a busy peer pays extra hand-offs
per frame on top of these figures.

The state backend has a non-recording ``peek`` (``node.sandbox.prefetch.PeekingBackend``),
so the sandbox prefetches the reads it predicts; ``--no-peek`` also measures the current
tree with a plain simulator (what a peer whose simulator has no ``peek`` gets).

With ``--baseline REF`` the same bench also runs ``node/sandbox`` and ``contracts`` as of git
``REF`` (the rest of the tree is the current one) in alternating child processes (baseline, current,
baseline, ...) so all variants see the same machine load, and reports
``current / baseline`` ratios per function.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = hashlib.sha256(b"rxchain contract bench consortium secret").digest()
T0_MS = 1_795_572_000_000
STEPS = ("issue", "review", "lock", "get_key_pharmacy", "dispense", "get_key_insurer", "settle")


# ---------------------------------------------------------------------------- state


@dataclass
class _Versioned:
    value: bytes
    block: int
    tx: int


@dataclass
class MemoryState:
    """Versioned world state (``node.ledger.statedb.StateReader``) plus a history index."""

    values: dict[tuple[str, str], _Versioned] = field(default_factory=dict)
    sorted_keys: dict[str, list[str]] = field(default_factory=dict)
    history_index: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    height: int = 0

    def get(self, ns: str, key: str) -> Any:
        from node.ledger.statedb import Version, VersionedValue

        v = self.values.get((ns, key))
        return None if v is None else VersionedValue(v.value, Version(v.block, v.tx))

    def range(self, ns: str, start: str, end: str, limit: int = 0,
              max_bytes: int = 0) -> list[tuple[str, Any]]:
        keys = self.sorted_keys.get(ns, [])
        i = bisect.bisect_left(keys, start)
        out: list[tuple[str, Any]] = []
        total = 0
        while i < len(keys) and (not end or keys[i] < end):
            vv = self.get(ns, keys[i])
            total += len(vv.value) if vv is not None else 0
            if max_bytes and total > max_bytes:
                from node.ledger.statedb import RangeTooLarge

                raise RangeTooLarge(f"range of {ns} exceeds {max_bytes} bytes")
            out.append((keys[i], vv))
            if limit and len(out) >= limit:
                break
            i += 1
        return out

    def history(self, namespace: str, key: str, limit: int, start: int | None = None, values: bool = True,
                gas_left: int | None = None) -> list[Any]:
        rows = list(self.history_index.get((namespace, key), []))[start or 0:][:limit]
        return rows if values else [dataclasses.replace(h, value=None) for h in rows]

    def commit(self, rwset_bytes: bytes, tx_id: str, timestamp_ms: int) -> None:
        """Apply a simulation's canonical write set as the next block."""
        from rxchain.v1 import transaction_pb2

        from node.sandbox.types import HistoryEntry

        self.height += 1
        rw = transaction_pb2.TxRwSet.FromString(rwset_bytes)
        for ns in rw.ns_rwsets:
            keys = self.sorted_keys.setdefault(ns.namespace, [])
            for w in ns.writes:
                nk = (ns.namespace, w.key)
                if w.is_delete:
                    if self.values.pop(nk, None) is not None:
                        keys.remove(w.key)
                else:
                    if nk not in self.values:
                        bisect.insort(keys, w.key)
                    self.values[nk] = _Versioned(w.value, self.height, 0)
                self.history_index.setdefault(nk, []).append(HistoryEntry(
                    tx_id, self.height, timestamp_ms, w.is_delete, None if w.is_delete else w.value))


# ---------------------------------------------------------------------------- identities


def _callers() -> dict[str, Any]:
    import yaml

    from node.sandbox.types import CallerInfo

    doc = yaml.safe_load((ROOT / "network-config" / "consortium.yaml").read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for org in doc["organizations"]:
        level = str(org.get("level", "")) if org["kind"] == "hospital" else ""
        out[f"{org['id']}:admin"] = CallerInfo(org["id"], "admin", "admin", {}, org["kind"], level)
        for u in org.get("users") or []:
            attrs = {str(k): str(v) for k, v in (u.get("attrs") or {}).items()}
            out[f"{org['id']}:{u['name']}"] = CallerInfo(org["id"], u["role"], u["name"], attrs,
                                                         org["kind"], level)
    return out


# ---------------------------------------------------------------------------- the story


@dataclass
class Call:
    """One contract call of the workload."""

    step: str
    contract: str
    function: str
    caller: str
    args: dict[str, Any]
    transient: dict[str, Any] | None = None


class Workload:
    """Runs calls through a sandbox against committed in-memory state."""

    def __init__(self, sandbox: Any, peek: bool = True) -> None:
        from node.sandbox.package import ContractPackage

        self.sandbox = sandbox
        self.peek = peek
        self.state = MemoryState()
        self.callers = _callers()
        where = Path(os.environ.get("RXCHAIN_BENCH_CONTRACTS", "") or ROOT / "contracts")
        self.sources = {n: (where / f"{n}.py").read_text(encoding="utf-8")
                        for n in ("registry", "prescription", "settlement")}
        self.hashes = {n: ContractPackage(n, "1.0", s).code_hash for n, s in self.sources.items()}
        self.now = T0_MS
        self.seq = 0
        self.failures: dict[str, int] = {}
        for name, src in self.sources.items():
            sandbox.warm(self.hashes[name], src, name)

    def invocation(self, call: Call) -> Any:
        from node.sandbox import canonical
        from node.sandbox.types import Invocation, SandboxLimits

        self.seq += 1
        self.now += 5
        return Invocation(
            contract=call.contract, code_hash=self.hashes[call.contract],
            source=self.sources[call.contract], function=call.function,
            args_json=canonical.dumps(call.args), tx_id=hashlib.sha256(b"tx%d" % self.seq).hexdigest(),
            timestamp_ms=self.now, caller=self.callers[call.caller],
            transient={k: canonical.dumps(v) for k, v in (call.transient or {}).items()},
            gas_limit=5_000_000, limits=SandboxLimits(max_value_bytes=262144, max_write_keys=1000),
        )

    def run(self, call: Call, measure: Callable[[Callable[[], Any]], Any] | None = None) -> Any:
        from node.peer.simulator import SimulationLimits, TxSimulator

        inv = self.invocation(call)
        sim = TxSimulator(self.state, call.contract, SimulationLimits(), self.state.history)
        backend: Any = sim
        if self.peek:
            try:
                from node.sandbox.prefetch import PeekingBackend
            except ImportError:  # a baseline without prefetching
                pass
            else:
                backend = PeekingBackend(sim, self.peek_value)

        def once() -> Any:
            return self.sandbox.invoke(inv, backend)

        result = measure(once) if measure is not None else once()
        if result.ok:
            self.state.commit(sim.rwset().SerializeToString(), inv.tx_id, inv.timestamp_ms)
        else:
            k = f"{call.step}:{result.reason}"
            self.failures[k] = self.failures.get(k, 0) + 1
        return result

    def peek_value(self, ns: str, key: str) -> bytes | None:
        """The committed value (what a peer's snapshot gives), recording nothing."""
        v = self.state.values.get((ns, key))
        return None if v is None else v.value

    # -- sample data ------------------------------------------------------------------
    def load_sample_data(self) -> list[Any]:
        import yaml

        from client.patients import patient_from_yaml
        from client.records import dx_key, patient_binding

        data = yaml.safe_load((ROOT / "network-config" / "sample-data.yaml").read_text(encoding="utf-8"))
        calls: list[Call] = []
        for p in data["practitioners"]:
            calls.append(Call("setup", "registry", "register_practitioner", f"{p['org']}:admin",
                              {k: p[k] for k in ("name", "role", "code", "licence_active",
                                                 "practice_years", "internet_practice")}))
        for p in data["pharmacies"]:
            calls.append(Call("setup", "registry", "register_pharmacy", f"{p['org']}:admin",
                              {"licence_no": p["licence_no"], "active": p["active"]}))
        for d in data["formulary"]:
            calls.append(Call("setup", "registry", "set_drug", f"{d['insurer']}:admin",
                              {k: d[k] for k in ("code", "spec", "cls", "standard_fen", "price_fen",
                                                 "controlled")}))
        for p in data["policies"]:
            calls.append(Call("setup", "registry", "set_policy", f"{p['insurer']}:admin", {
                "effective_ms": 0, "deductible_fen": p["deductible_fen"], "ratio_bp": p["ratio_bp"],
                "cap_fen": p["cap_fen"], "cap_by_disease": p["cap_by_disease"],
                "b_share_bp": p["b_share_bp"]}))
        patients = [patient_from_yaml(raw) for raw in data["patients"]]
        key = dx_key(SECRET)
        for pat in patients:
            calls.append(Call("setup", "registry", "enrol_patient", f"{pat.enrolled_by}:admin",
                              {"pseudonym": pat.pseudonym(SECRET)}, {
                                  "dx_key": key, "diagnoses": [dict(d) for d in pat.diagnoses],
                                  "patient_binding": patient_binding(SECRET, pat.user_org, pat.user_name),
                                  "patient_user": {"org": pat.user_org, "name": pat.user_name}}))
            # she asks her insurer to open her account (open_account takes her own request)
            calls.append(Call("setup", "settlement", "request_transfer", f"{pat.user_org}:{pat.user_name}",
                              {"pseudonym": pat.pseudonym(SECRET), "to_insurer": pat.insurer},
                              {"patient_binding": patient_binding(SECRET, pat.user_org, pat.user_name)}))
            calls.append(Call("setup", "settlement", "open_account", f"{pat.insurer}:admin", {
                "pseudonym": pat.pseudonym(SECRET), "year": 0,
                "balance_fen": pat.account_balance_fen, "deductible_used_fen": pat.deductible_used_fen,
            }, {"dx_key": key, "cap_used_by_disease": dict(pat.cap_used_by_disease)}))
        for c in calls:
            r = self.run(c)
            if not r.ok and c.function != "request_transfer":  # (a settlement before reg6: NO_ACCOUNT)
                raise SystemExit(f"sample data: {c.function} failed: {r.reason} {r.message}")
        self.now += 1000
        return patients


class StoryMaker:
    """The e2e story's calls (bench/e2e_load.py), with real encryption and key wrapping."""

    def __init__(self, patients: list[Any]) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        from client.records import dx_key, trace_key

        self.patients = [p for p in patients if p.handle in ("patient-zhang", "patient-sun")]
        self.dx_key = dx_key(SECRET)
        self.trace_key = trace_key(SECRET)
        self.pub = {o: ec.generate_private_key(ec.SECP256R1()).public_key()
                    for o in ("h01", "h02", "p01", "ins01", "patient")}
        self.drug_lines = [
            {"code": "XC08CAA001A001010100001", "name": "Amlodipine besylate tablets",
             "short_name": "amlodipine", "spec": "5 mg x 28 tablets", "qty": 1, "days": 28,
             "price_fen": 2000},
            {"code": "XC08CAB037A001020180517", "name": "Benidipine hydrochloride tablets",
             "short_name": "benidipine", "spec": "4 mg x 14 tablets", "qty": 1, "days": 28,
             "price_fen": 2500},
        ]

    def story(self, n: int, tag: str) -> Iterator[Call]:
        from client.records import claim_subset, seal_prescription

        pat = self.patients[n % len(self.patients)]
        hospital = pat.enrolled_by
        doctor = {"h01": "h01:dr-jiang", "h02": "h02:dr-zhou"}[hospital]
        rx = f"RXB-{tag}-{n:06d}"
        content = {
            "rx_id": rx, "patient": pat.pseudonym(SECRET), "diagnosis": "I10",
            "first_visit": False, "drugs": self.drug_lines, "days": 28, "long_rx": True,
            "max_fills": 1, "fill_interval_days": 0, "valid_days": 1,
            "chronic_reason": "stable essential hypertension, video follow-up",
            "patient_info": {"birth_date": pat.birth_date, "name": "bench patient"},
            "prescriber": {"org": hospital, "name": doctor.split(":")[1], "dr_code": ""},
            "visit": {"type": "internet-follow-up", "id": rx},
        }
        recipients = {hospital: self.pub[hospital], "patient": self.pub["patient"], "p01": self.pub["p01"]}
        sealed = seal_prescription(rx, content, recipients, "ins01", self.pub["ins01"], "p01", self.dx_key)
        yield Call("issue", "prescription", "issue", doctor, sealed.args, sealed.transient)
        yield Call("review", "prescription", "review", "p01:pharm-wang",
                   {"rx_id": rx, "approve": True, "reason": ""})
        yield Call("lock", "prescription", "lock", "p01:pharm-wang", {"rx_id": rx})
        yield Call("get_key_pharmacy", "prescription", "get_key", "p01:pharm-wang", {"rx_id": rx})
        codes = [f"TB{tag}{n:06d}{i}" for i in range(2)]
        yield Call("dispense", "prescription", "dispense", "p01:pharm-wang", {"rx_id": rx},
                   {"content": content, "salt": sealed.transient["salt"], "trace_codes": codes,
                    "trace_key": self.trace_key})
        yield Call("get_key_insurer", "prescription", "get_key", "ins01:clerk-zhao", {"rx_id": rx})
        yield Call("settle", "settlement", "settle", "ins01:clerk-zhao", {"rx_id": rx, "fill": 0},
                   {"claim": claim_subset(rx, content), "claim_salt": sealed.transient["claim_salt"]})


# ---------------------------------------------------------------------------- measuring


def _sched_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat", "rb") as f:
        return int(f.read().split()[0])


class FrameCounter:
    """Counts, on the host side, frames received and ``write`` calls to the worker (each
    write wakes the worker once: one round trip) by hooking the protocol module."""

    def __init__(self) -> None:
        from node.sandbox import protocol

        self.protocol = protocol
        self.writes = 0
        self.received = 0
        self._write = protocol.write_frame
        self._writes = getattr(protocol, "write_frames", None)
        self._read = protocol.FrameReader.read

    def __enter__(self) -> FrameCounter:
        write, writes, read = self._write, self._writes, self._read

        def counted_write(*a: Any, **kw: Any) -> Any:
            self.writes += 1
            return write(*a, **kw)

        def counted_writes(*a: Any, **kw: Any) -> Any:
            self.writes += 1
            assert writes is not None
            return writes(*a, **kw)

        def counted_read(reader: Any, *a: Any, **kw: Any) -> Any:
            self.received += 1
            return read(reader, *a, **kw)

        setattr(self.protocol, "write_frame", counted_write)  # noqa: B010 - a test hook
        if writes is not None:
            setattr(self.protocol, "write_frames", counted_writes)  # noqa: B010
        setattr(self.protocol.FrameReader, "read", counted_read)  # noqa: B010
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.protocol, "write_frame", self._write)  # noqa: B010
        if self._writes is not None:
            setattr(self.protocol, "write_frames", self._writes)  # noqa: B010
        setattr(self.protocol.FrameReader, "read", self._read)  # noqa: B010


def child(stories: int, warmup: int, frame_stories: int, peek: bool = True) -> dict[str, Any]:
    """One measurement round in this process: per-step CPU samples and frame counts."""
    from node.sandbox.runtime import Sandbox

    samples: dict[str, list[tuple[int, int]]] = {s: [] for s in STEPS}
    gas: dict[str, list[int]] = {s: [] for s in STEPS}
    frames: dict[str, list[int]] = {s: [] for s in STEPS}
    tag = os.urandom(3).hex().upper()
    # a worker per contract (each worker serves one contract code); calls run one at a
    # time, so the workers' CPU summed is the CPU of the call
    with Sandbox(workers=3) as sandbox:
        work = Workload(sandbox, peek)
        maker = StoryMaker(work.load_sample_data())
        for n in range(warmup):
            for call in maker.story(n, tag):
                work.run(call)
        pids = sandbox.worker_pids()
        work.failures.clear()
        thread_ns = time.thread_time_ns
        for n in range(warmup, warmup + stories):
            for call in maker.story(n, tag):
                box: list[tuple[int, int]] = []

                def measure(fn: Callable[[], Any], box: list[tuple[int, int]] = box) -> Any:
                    w0 = sum(map(_sched_ns, pids))
                    h0 = thread_ns()
                    r = fn()
                    h1 = thread_ns()
                    w1 = sum(map(_sched_ns, pids))
                    box.append((h1 - h0, w1 - w0))
                    return r

                r = work.run(call, measure)
                samples[call.step].append(box[0])
                gas[call.step].append(r.gas_used)
            if sandbox.worker_pids() != pids:
                raise SystemExit("the worker was replaced during the bench")
        failures = dict(work.failures)
        counter = FrameCounter()
        for n in range(warmup + stories, warmup + stories + frame_stories):
            for call in maker.story(n, tag):
                before = counter.writes
                with counter:
                    work.run(call)
                frames[call.step].append(counter.writes - before)
    return {"samples": samples, "gas": gas, "frames": frames, "failures": failures}


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    all_host: list[int] = []
    all_worker: list[int] = []
    for step in STEPS:
        host = [h for r in rounds for h, _ in r["samples"][step]]
        worker = [w for r in rounds for _, w in r["samples"][step]]
        total = [h + w for h, w in zip(host, worker, strict=True)]
        all_host += host
        all_worker += worker
        frames = [f for r in rounds for f in r["frames"][step]]
        gas = [g for r in rounds for g in r["gas"][step]]
        out[step] = {
            "cpu_us_mean": round(statistics.fmean(total) / 1000, 1),
            "cpu_us_median": round(statistics.median(total) / 1000, 1),
            "host_us_mean": round(statistics.fmean(host) / 1000, 1),
            "worker_us_mean": round(statistics.fmean(worker) / 1000, 1),
            "round_trips_per_invocation": round(statistics.fmean(frames), 2) if frames else None,
            "gas_median": int(statistics.median(gas)),
            "invocations": len(total),
        }
    n = len(all_host)
    out["overall"] = {
        "cpu_us_mean": round((sum(all_host) + sum(all_worker)) / n / 1000, 1),
        "host_us_mean": round(sum(all_host) / n / 1000, 1),
        "worker_us_mean": round(sum(all_worker) / n / 1000, 1),
        "round_trips_per_invocation": round(statistics.fmean(
            [f for r in rounds for s in STEPS for f in r["frames"][s]]), 2),
        "invocations": n,
    }
    fails: dict[str, int] = {}
    for r in rounds:
        for k, v in r["failures"].items():
            fails[k] = fails.get(k, 0) + v
    out["failures"] = fails
    return out


# ---------------------------------------------------------------------------- driver


def _baseline_tree(ref: str, into: Path) -> Path:
    """A tree whose ``node`` is the current one except ``node/sandbox`` as of ``ref``, and
    ``contracts`` as of ``ref`` (a contract may use a ctx method the old sandbox lacks)."""
    node = into / "node"
    node.mkdir()
    for entry in (ROOT / "node").iterdir():
        if entry.name != "sandbox":
            (node / entry.name).symlink_to(entry)
    archive = subprocess.run(["git", "archive", ref, "node/sandbox", "contracts"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "gen").symlink_to(ROOT / "gen")
    return into


def _run_child(tree: Path | None, stories: int, warmup: int, frame_stories: int,
               peek: bool = True) -> dict[str, Any]:
    path = "" if tree is None else str(tree)
    code = (f"import sys, json; sys.path.insert(0, {path!r}) if {path!r} else None; "
            "from bench.contract_bench import child; "
            f"print(json.dumps(child({stories}, {warmup}, {frame_stories}, {peek})))")
    env = dict(os.environ)
    env["RXCHAIN_BENCH_CONTRACTS"] = "" if tree is None else str(tree / "contracts")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=1800, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stories", type=int, default=60, help="measured stories per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (per variant)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--frame-stories", type=int, default=5)
    ap.add_argument("--baseline", default="", help="git ref of node/sandbox to compare with")
    ap.add_argument("--no-peek", action="store_true",
                    help="also run the current tree with a backend without peek (no prefetch)")
    ap.add_argument("--name", default="contract")
    args = ap.parse_args(argv)
    from bench.common import write_result

    current: list[dict[str, Any]] = []
    no_peek: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rx-contract-bench-") as tmp:
        tree = _baseline_tree(args.baseline, Path(tmp)) if args.baseline else None
        for i in range(args.rounds):
            if tree is not None:
                base.append(_run_child(tree, args.stories, args.warmup, args.frame_stories))
                print(f"round {i + 1}: baseline done", flush=True)
            if args.no_peek:
                no_peek.append(_run_child(None, args.stories, args.warmup, args.frame_stories,
                                          peek=False))
                print(f"round {i + 1}: current without peek done", flush=True)
            current.append(_run_child(None, args.stories, args.warmup, args.frame_stories))
            print(f"round {i + 1}: current done", flush=True)
    result: dict[str, Any] = {
        "stories_per_round": args.stories, "rounds": args.rounds,
        "current": _summary(current),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if no_peek:
        result["current_without_peek"] = _summary(no_peek)
    if base:
        b = _summary(base)
        result["baseline_ref"] = args.baseline
        result["baseline"] = b
        for label, variant in (("current", result["current"]),
                               ("current_without_peek", result.get("current_without_peek"))):
            if variant is not None:
                result[f"ratio_cpu_{label}_over_baseline"] = {
                    step: round(variant[step]["cpu_us_mean"] / b[step]["cpu_us_mean"], 3)
                    for step in (*STEPS, "overall")
                }
                result[f"gas_identical_{label}"] = all(
                    variant[s]["gas_median"] == b[s]["gas_median"] for s in STEPS)
    path = write_result(args.name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
