"""After a fault run: did the ledger lose, invent, duplicate or fork anything?

Inputs are neutral: each peer's committed blocks (read from its data directory with a
read-only block store, or streamed from PeerDeliver), the transactions clients were told
committed (:class:`Ack`), every tx id clients submitted, the faults injected
(:class:`FaultEvent`) and each peer's ``verify_ledger`` outcome. :func:`check` answers with
a :class:`CheckReport` whose :attr:`~CheckReport.ok` is the verdict and whose
:meth:`~CheckReport.table` is the printed summary.

Rules (one list per rule in the report):

* every acknowledged tx is on every peer exactly once (occurrences coded DUPLICATE_TXID,
  i.e. a client's resubmission caught by the validator, do not count), with the code the
  client was told, at the same block on every peer;              -> lost, wrong_code
* no tx id occurs with a non-DUPLICATE code more than once on a peer; -> duplicated
* no tx appears that no client submitted (genesis and ``allowed`` ids excepted); -> unknown
* every peer has the same height, and at every height the same header hash, validation
  codes and state hash; peers outside the largest agreeing group are divergent;
                                                                   -> divergent_peers, lagging
* no prescription fill was dispensed by two transactions, and no prescription was dispensed
  more often than its ``max_fills``;                                -> double_dispense
* every settlement claim record satisfies medfee = fund + patient and
  patient = account + cash, with non-negative integer fen;          -> settlement_violations
* every peer's ``verify_ledger`` passed.                            -> verify_failures
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from rxchain.v1 import block_pb2, transaction_pb2

from node.crypto.canonical import block_header_hash
from node.genesis import GENESIS_TX_ID, read_genesis
from node.ledger.blockstore import BlockStore
from node.ledger.verify import resolve_ledger_dir, verify_ledger

PRESCRIPTION_NS = "prescription"
SETTLEMENT_NS = "settlement"
DUPLICATE = transaction_pb2.DUPLICATE_TXID
VALID = transaction_pb2.VALID


@dataclass(frozen=True)
class Ack:
    """A transaction a client was told committed, with what it was told."""

    tx_id: str
    code: int = VALID
    block: int | None = None


@dataclass
class FaultEvent:
    """One injected fault: when, what, and how long the system took to recover."""

    kind: str
    target: str
    at_s: float
    healed_at_s: float | None = None
    recovered_s: float | None = None  # heal -> first acknowledged commit afterwards
    during_s: float | None = None  # fault -> first acknowledged commit of a tx submitted after it
    note: str = ""  # e.g. "restarted: stuck after the disk was drained"
    full_disk_effective: bool | None = None  # disk_full: the peer really stopped committing


@dataclass
class PeerView:
    """One peer's committed chain and its verify outcome."""

    name: str
    blocks: list[block_pb2.Block]
    verify_ok: bool = True
    verify_summary: str = ""


@dataclass
class CheckReport:
    """The verdict of :func:`check`."""

    peers: list[str]
    heights: dict[str, int]
    acknowledged: int
    submitted: int
    found: int
    lost: list[str] = field(default_factory=list)
    wrong_code: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    divergent_peers: list[str] = field(default_factory=list)
    divergence: list[str] = field(default_factory=list)
    lagging: list[str] = field(default_factory=list)
    double_dispense: list[str] = field(default_factory=list)
    settlement_violations: list[str] = field(default_factory=list)
    verify_failures: dict[str, str] = field(default_factory=dict)
    resubmissions: int = 0
    txs_in_ledger: int = 0
    faults: list[FaultEvent] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no rule was broken."""
        return not (self.lost or self.wrong_code or self.duplicated or self.unknown or self.divergent_peers
                    or self.lagging or self.double_dispense or self.settlement_violations
                    or self.verify_failures)

    def problems(self) -> list[str]:
        """Every broken rule, one line each (first few examples)."""
        out: list[str] = []
        for name in ("lost", "wrong_code", "duplicated", "unknown", "divergent_peers", "divergence",
                     "lagging", "double_dispense", "settlement_violations"):
            items = getattr(self, name)
            if items:
                out.append(f"{name} ({len(items)}): {', '.join(str(i) for i in items[:5])}")
        out.extend(f"verify {p}: {msg}" for p, msg in self.verify_failures.items())
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = asdict(self)
        d["ok"] = self.ok
        d["faults_by_kind"] = dict(Counter(f.kind for f in self.faults))
        return d

    def table(self) -> str:
        """The run summary, as printed at the end of a chaos run."""
        kinds = Counter(f.kind for f in self.faults)
        rows = [
            ("faults injected", ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "none"),
            ("txs submitted", str(self.submitted)),
            ("txs acknowledged", str(self.acknowledged)),
            ("acknowledged txs found", str(self.found)),
            ("txs in ledger (all codes)", str(self.txs_in_ledger)),
            ("resubmissions caught (DUPLICATE_TXID)", str(self.resubmissions)),
            ("lost", str(len(self.lost))),
            ("wrong validation code", str(len(self.wrong_code))),
            ("duplicated", str(len(self.duplicated))),
            ("unknown txs", str(len(self.unknown))),
            ("divergent peers", str(len(self.divergent_peers))),
            ("lagging peers", str(len(self.lagging))),
            ("double dispenses", str(len(self.double_dispense))),
            ("settlement invariant violations", str(len(self.settlement_violations))),
            ("ledger verify failures", str(len(self.verify_failures))),
            ("peer heights", ", ".join(f"{p}={h}" for p, h in sorted(self.heights.items()))),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        if self.faults:
            lines.append("")
            lines.append(f"{'t(s)':>7}  {'fault':<16} {'target':<22} {'healed(s)':>9} {'1st commit after fault(s)':>26} {'after heal(s)':>14}"
                         "  note")
            for f in self.faults:
                healed = "" if f.healed_at_s is None else f"{f.healed_at_s:.1f}"
                rec = "n/a" if f.recovered_s is None else f"{f.recovered_s:.2f}"
                during = "n/a" if f.during_s is None else f"{f.during_s:.2f}"
                lines.append(f"{f.at_s:7.1f}  {f.kind:<16} {f.target:<22} {healed:>9} {during:>26} {rec:>14}  {f.note}")
        lines.append("")
        lines.append("VERDICT: " + ("OK" if self.ok else "FAILED"))
        lines.extend("  " + p for p in self.problems())
        return "\n".join(lines)


# ---------------------------------------------------------------------- reading a chain


@dataclass(frozen=True)
class _Tx:
    block: int
    index: int
    tx_id: str | None  # None: the envelope did not parse
    code: int
    contract: str
    writes: list[tuple[str, str, bytes, bool]]  # (ns, key, value, is_delete) of the rwset


def _txs(block: block_pb2.Block) -> list[_Tx]:
    out: list[_Tx] = []
    codes = list(block.metadata.validation_codes)
    for i, env_bytes in enumerate(block.data.envelopes):
        code = codes[i] if i < len(codes) else 0
        tx_id: str | None = None
        contract = ""
        writes: list[tuple[str, str, bytes, bool]] = []
        try:
            env = transaction_pb2.Envelope.FromString(env_bytes)
            tx = transaction_pb2.Transaction.FromString(env.payload)
            header = transaction_pb2.TxHeader.FromString(tx.header)
            tx_id = header.tx_id or None
            if header.type == transaction_pb2.INVOKE:
                inv = transaction_pb2.ContractInvocation.FromString(tx.invocation)
                contract = inv.contract
                prp = transaction_pb2.ProposalResponsePayload.FromString(tx.response_payload)
                rwset = transaction_pb2.TxRwSet.FromString(prp.results)
                for ns in rwset.ns_rwsets:
                    writes.extend((ns.namespace, w.key, w.value, w.is_delete) for w in ns.writes)
        except DecodeError:
            pass
        out.append(_Tx(block.header.number, i, tx_id, code, contract, writes))
    return out


def tx_ids_of(block: block_pb2.Block) -> list[str]:
    """The tx id of every envelope of a block ('' for one that does not parse)."""
    return [t.tx_id or "" for t in _txs(block)]


def read_peer_blocks(data_dir: Path) -> list[block_pb2.Block]:
    """Every block of a node data dir, through a read-only block store (safe while it runs)."""
    store = BlockStore(Path(resolve_ledger_dir(data_dir)) / "blocks", readonly=True)
    try:
        return list(store.iter_blocks(0))
    finally:
        store.close()


def orderer_view(name: str, data_dir: Path) -> PeerView:
    """An orderer's chain (``<data_dir>/blocks``), read-only."""
    store = BlockStore(Path(data_dir) / "blocks", readonly=True)
    try:
        return PeerView(name, list(store.iter_blocks(0)))
    finally:
        store.close()


def peer_view(name: str, data_dir: Path, genesis_path: Path | None = None) -> PeerView:
    """A peer's blocks, plus ``verify_ledger`` when the genesis block is given."""
    view = PeerView(name, read_peer_blocks(data_dir))
    if genesis_path is not None:
        report = verify_ledger(data_dir, read_genesis(genesis_path))
        view.verify_ok = report.ok
        view.verify_summary = report.summary()
    return view


# ---------------------------------------------------------------------- the rules


def _json(value: bytes) -> Any:
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None


def _check_domain(txs: Iterable[_Tx], report: CheckReport, rx_ns: str, claim_ns: str) -> None:
    dispensers: dict[tuple[str, str], set[str]] = defaultdict(set)
    fills_by_rx: dict[str, set[str]] = defaultdict(set)
    max_fills: dict[str, int] = {}
    for t in txs:
        if t.code != VALID or t.tx_id is None:
            continue
        for ns, key, value, is_delete in t.writes:
            if is_delete:
                continue
            if ns == rx_ns and key.startswith("rx/"):
                doc = _json(value)
                if isinstance(doc, dict) and isinstance(doc.get("max_fills"), int):
                    max_fills[key[3:]] = doc["max_fills"]
            elif ns == rx_ns and key.startswith("disp/"):
                doc = _json(value)
                # A dispense creates disp/<rx>/<fill> carrying its own tx id; a delivery
                # rewrites it keeping the dispensing tx id.
                if isinstance(doc, dict) and doc.get("tx_id") == t.tx_id:
                    rx_id, _, fill = key[5:].rpartition("/")
                    dispensers[(rx_id, fill)].add(t.tx_id)
                    fills_by_rx[rx_id].add(t.tx_id)
            elif ns == claim_ns and key.startswith("claim/"):
                doc = _json(value)
                problem = settlement_problem(doc)
                if problem:
                    report.settlement_violations.append(f"{key} (tx {t.tx_id[:12]}): {problem}")
    for (rx_id, fill), tx_ids in sorted(dispensers.items()):
        if len(tx_ids) > 1:
            report.double_dispense.append(f"{rx_id} fill {fill} dispensed by {len(tx_ids)} txs")
    for rx_id, tx_ids in sorted(fills_by_rx.items()):
        if rx_id in max_fills and len(tx_ids) > max_fills[rx_id]:
            report.double_dispense.append(f"{rx_id}: {len(tx_ids)} dispenses > max_fills {max_fills[rx_id]}")


def settlement_problem(doc: Any) -> str:
    """'' if a claim record satisfies the settlement invariants, else what is wrong."""
    if not isinstance(doc, dict):
        return "claim record is not a JSON object"
    names = ("medfee_fen", "fund_fen", "patient_fen", "account_fen", "cash_fen")
    vals = {n: doc.get(n) for n in names}
    bad = [n for n, v in vals.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        return f"not non-negative integer fen: {', '.join(bad)}"
    v: dict[str, int] = {n: int(x) for n, x in vals.items() if isinstance(x, int)}
    if v["medfee_fen"] != v["fund_fen"] + v["patient_fen"]:
        return f"medfee {v['medfee_fen']} != fund {v['fund_fen']} + patient {v['patient_fen']}"
    if v["patient_fen"] != v["account_fen"] + v["cash_fen"]:
        return f"patient {v['patient_fen']} != account {v['account_fen']} + cash {v['cash_fen']}"
    return ""


def _block_key(b: block_pb2.Block) -> tuple[bytes, tuple[int, ...], bytes]:
    return block_header_hash(b.header), tuple(b.metadata.validation_codes), bytes(b.metadata.state_hash)


def check(peers: Sequence[PeerView], acked: Mapping[str, Ack] | Iterable[Ack], submitted: Iterable[str],
          *, faults: Sequence[FaultEvent] = (), allowed: Iterable[str] = (),
          orderers: Sequence[PeerView] = (),
          prescription_ns: str = PRESCRIPTION_NS, settlement_ns: str = SETTLEMENT_NS) -> CheckReport:
    """Apply every rule (see the module docstring); the domain rules read prescriptions
    (``rx/``, ``disp/``) from ``prescription_ns`` and claims (``claim/``) from ``settlement_ns``.
    ``orderers``: the orderers' chains; their header hashes must match the peers' at every
    height they share (orderer copies carry no validation codes or state hash)."""
    acks = dict(acked) if isinstance(acked, Mapping) else {a.tx_id: a for a in acked}
    submitted_set = set(submitted) | set(acks)
    allowed_set = set(allowed) | {GENESIS_TX_ID}
    report = CheckReport(
        peers=[p.name for p in peers], heights={p.name: len(p.blocks) for p in peers},
        acknowledged=len(acks), submitted=len(submitted_set), found=0, faults=list(faults),
    )
    if not peers:
        report.lagging.append("no peers to check")
        return report

    # ---- fork / lag detection, height by height
    max_h = max(len(p.blocks) for p in peers)
    report.lagging = sorted(f"{p.name} at height {len(p.blocks)} < {max_h}" for p in peers if len(p.blocks) < max_h)
    divergent: set[str] = set()
    for h in range(max_h):
        groups: dict[tuple[bytes, tuple[int, ...], bytes], list[str]] = defaultdict(list)
        for p in peers:
            if h < len(p.blocks):
                groups[_block_key(p.blocks[h])].append(p.name)
        if len(groups) > 1:
            majority = max(groups.values(), key=len)
            for key, names in groups.items():
                if names is majority:
                    continue
                divergent.update(names)
                ref = next(iter(k for k, n in groups.items() if n is majority))
                what = [w for w, a, b in (("block hash", key[0], ref[0]), ("validation codes", key[1], ref[1]),
                                          ("state hash", key[2], ref[2])) if a != b]
                report.divergence.append(f"height {h}: {','.join(names)} differ in {' and '.join(what)}")
    ref_chain = max(peers, key=lambda p: len(p.blocks)).blocks
    for o in orderers:
        for h, b in enumerate(o.blocks[: len(ref_chain)]):
            if block_header_hash(b.header) != block_header_hash(ref_chain[h].header):
                divergent.add(o.name)
                report.divergence.append(f"height {h}: orderer {o.name} block hash differs from the peers'")
                break
    report.divergent_peers = sorted(divergent)

    # ---- per-peer tx accounting
    all_txs: list[_Tx] = []
    found_everywhere = set(acks)
    for p in peers:
        txs = [t for b in p.blocks for t in _txs(b)]
        if p is peers[0]:
            all_txs = txs
            report.txs_in_ledger = len(txs)
            report.resubmissions = sum(1 for t in txs if t.code == DUPLICATE)
        occurrences: dict[str, list[_Tx]] = defaultdict(list)
        for t in txs:
            if t.tx_id is None:
                report.unknown.append(f"{p.name}: unparseable tx at block {t.block} index {t.index}")
                continue
            if t.code != DUPLICATE:
                occurrences[t.tx_id].append(t)
            if t.tx_id not in submitted_set and t.tx_id not in allowed_set:
                report.unknown.append(f"{p.name}: {t.tx_id[:16]} (block {t.block})")
        for tx_id, occ in occurrences.items():
            if len(occ) > 1:
                report.duplicated.append(f"{p.name}: {tx_id[:16]} in blocks {[o.block for o in occ]}")
        for tx_id, ack in acks.items():
            occ = occurrences.get(tx_id, [])
            if not occ:
                found_everywhere.discard(tx_id)
                report.lost.append(f"{p.name}: {tx_id[:16]}")
                continue
            if occ[0].code != ack.code or (ack.block is not None and occ[0].block != ack.block):
                report.wrong_code.append(
                    f"{p.name}: {tx_id[:16]} told code {ack.code} block {ack.block}, "
                    f"ledger has code {occ[0].code} block {occ[0].block}")
        if not p.verify_ok:
            report.verify_failures[p.name] = p.verify_summary
    report.found = len(found_everywhere)
    _check_domain(all_txs, report, prescription_ns, settlement_ns)
    return report
