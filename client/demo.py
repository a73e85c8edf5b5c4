"""``make demo``: the Chongqing e-prescription story on a real local network.

From a clean clone: generate the sample consortium, start every node (``network up``),
deploy the contracts and load the sample data once, then play the story -- patient Zhang's
video follow-up at h01, Dr Jiang's 28-day long prescription routed to pharmacy p01,
pharmacist Wang's review and dispense with box trace codes, the insurer's settlement, the
courier's delivery -- then what the chain prevents, the trace, the settlement split and
``ledger verify`` on several peers. The network is left running.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.bootstrap import Bootstrapper
from client.errors import CommitUnknown, RxClientError
from client.launcher import DEFAULT_HOME, Launcher, default_home, generate_material
from client.network import load_network
from client.privacy_scan import Hit, peer_state_dir, raw_files, scan_leveldb, scan_raw
from client.rxops import DrugLine, IssueRequest, RxOperations
from client.session import Session
from client.verify import verify_peer

WHO = {
    "h01:dr-jiang": "Dr Jiang (h01, doctor)",
    "h01:nurse-liu": "Nurse Liu (h01, nurse)",
    "h01:patient-zhang": "Patient Zhang (h01, patient)",
    "p01:pharm-wang": "Pharmacist Wang (p01, pharmacist)",
    "p01:courier-1": "Courier (p01)",
    "p02:pharm-chen": "Pharmacist Chen (p02, another pharmacy)",
    "ins01:clerk-zhao": "Clerk Zhao (ins01, insurer)",
    "reg01:auditor-1": "Auditor (reg01, regulator)",
}


def yuan(fen: int) -> str:
    """Fen as yuan with two decimals."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


class Story:
    """Plays the demo; ``say`` prints one line per step."""

    def __init__(self, home: Path, say: Callable[[str], None] = print):
        self.home = home
        self.say = say
        self.net = load_network(home)
        self._ops: dict[str, RxOperations] = {}
        self.results: dict[str, Any] = {}

    def ops(self, who: str) -> RxOperations:
        """Operations acting as ``org:user``."""
        if who not in self._ops:
            self._ops[who] = RxOperations(Session(self.home, who, network=self.net))
        return self._ops[who]

    def close(self) -> None:
        """Close every session."""
        for o in self._ops.values():
            o.s.close()

    def step(self, who: str, what: str, res: dict[str, Any]) -> dict[str, Any]:
        """Print one committed step."""
        self.say(f"  [block {res.get('block'):>3}] {WHO.get(who, who)}: {what}")
        return res

    def refused(self, who: str, what: str, fn: Callable[[], Any]) -> str:
        """Run something the chain must refuse; print and return the reason code."""
        try:
            fn()
        except CommitUnknown:
            raise  # not a refusal: it may have committed (the demo stops and says so)
        except RxClientError as exc:
            self.say(f"  refused  {WHO.get(who, who)}: {what} -> {exc.reason}")
            return exc.reason
        self.say(f"  !! NOT refused: {WHO.get(who, who)}: {what}")
        return "ACCEPTED"

    # ------------------------------------------------------------ the story
    def run(self) -> dict[str, Any]:
        """The whole story; returns what happened (for tests and the summary)."""
        tag = os.urandom(3).hex().upper()
        doctor, wang, clerk = "h01:dr-jiang", "p01:pharm-wang", "ins01:clerk-zhao"
        zhang = self.ops(clerk).patient_status("patient-zhang")
        self.say("\n== The story: patient Zhang's video follow-up at h01 ==")
        self.say(f"  Patient Zhang: hypertension (I10) diagnosed at h01 on a physical visit; "
                 f"deductible used {yuan(zhang['deductible_used_fen'])}, "
                 f"account balance {yuan(zhang['account_balance_fen'])} yuan")
        req = IssueRequest(
            patient="patient-zhang", diagnosis="I10",
            drugs=[DrugLine("amlodipine", 2), DrugLine("benidipine", 2)], days=28, long_rx=True,
            chronic_reason="stable essential hypertension, follow-up by video", pharmacy="p01",
        )
        issued = self.step(doctor, "issued a 28-day long prescription (amlodipine 5 mg x2, "
                           "benidipine 4 mg x2), encrypted, routed to p01",
                           self.ops(doctor).issue(req))
        rx_id = issued["rx_id"]
        self.say(f"           prescription {rx_id}; on the ledger only ciphertext, a salted "
                 f"commitment and the patient's pseudonym")
        self.step(wang, "reviewed and approved it", self.ops(wang).review(rx_id, True))
        inbox = self.ops(wang).inbox(int(issued["block"]))
        todo = [p for p in inbox["prescriptions"] if p["rx_id"] == rx_id]
        self.say(f"           p01's inbox (rx inbox, from the prescription events): {rx_id} "
                 f"{todo[0]['status'] if todo else 'missing'}, to {todo[0]['action'] if todo else '?'}")
        codes = [f"TC{tag}{i:04d}" for i in range(1, 5)]
        disp = self.ops(wang).dispense(rx_id, codes)
        self.step(wang, f"locked it (block {disp.get('lock_block')}), decrypted, checked the "
                  f"commitment and dispensed 4 boxes with trace codes {codes[0]}..{codes[-1]}",
                  disp)
        rec = self.ops(clerk).settle(rx_id)
        self.step(clerk, f"settled claim {rec['claim_id']}", rec)
        self.say(f"           medfee {yuan(rec['medfee_fen'])} = fund {yuan(rec['fund_fen'])}"
                 f" + personal account {yuan(rec['account_fen'])} + cash {yuan(rec['cash_fen'])}"
                 f" yuan (deductible {yuan(rec['deductible_fen'])}, ratio "
                 f"{rec['ratio_bp'] / 100:g}% at a tertiary hospital)")
        self.step("p01:courier-1", "confirmed delivery to the patient",
                  self.ops("p01:courier-1").deliver(rx_id))
        mine = self.ops("h01:patient-zhang").show(rx_id)
        drugs = ", ".join(f"{d['short_name']} x{d['qty']}" for d in mine["content"]["drugs"])
        self.say(f"  Patient Zhang decrypted her own prescription with her key: {drugs}")
        self.results.update(rx_id=rx_id, settlement=rec, trace_codes=codes)

        self.say("\n== What the chain prevents ==")
        other = self.ops(doctor).issue(IssueRequest(
            patient="patient-zhang", diagnosis="I10", drugs=[DrugLine("amlodipine", 1)], days=7,
            pharmacy="p01"))
        self.ops(wang).review(other["rx_id"], True)
        refusals = {
            "second_pharmacy": self.refused(
                "p02:pharm-chen", f"dispense {other['rx_id']} routed to p01",
                lambda: self.ops("p02:pharm-chen").dispense(other["rx_id"], [f"TCX{tag}"])),
            "nurse_forgery": self.refused(
                "h01:nurse-liu", "issue a prescription",
                lambda: self.ops("h01:nurse-liu").issue(IssueRequest(
                    patient="patient-zhang", diagnosis="I10", drugs=[DrugLine("amlodipine", 1)],
                    days=7, pharmacy="p01"))),
            "narcotic_online": self.refused(
                doctor, "prescribe morphine online",
                lambda: self.ops(doctor).issue(IssueRequest(
                    patient="patient-zhang", diagnosis="I10", drugs=[DrugLine("morphine", 1)],
                    days=3, pharmacy="p01"))),
            "unauthorised_read": self.refused(
                "p02:pharm-chen", f"read {rx_id}",
                lambda: self.ops("p02:pharm-chen").show(rx_id)),
            "trace_code_reuse": self.refused(
                wang, f"dispense {other['rx_id']} reusing box code {codes[0]}",
                lambda: self.ops(wang).dispense(other["rx_id"], [codes[0]])),
            "duplicate_claim": self.refused(
                clerk, f"settle {rx_id} a second time",
                lambda: self.ops(clerk).settle(rx_id)),
        }
        revoked = self.ops(doctor).revoke(other["rx_id"], "CLINICAL_CHANGE",
                                          note="patient switched to another plan")
        self.step(doctor, f"revoked {other['rx_id']} before dispensing (reason CLINICAL_CHANGE, "
                          "note encrypted under the record key)", revoked)
        audit = self.ops("reg01:auditor-1").show(rx_id)
        self.say(f"  The regulator sees status {audit['status']} and metadata; content: "
                 f"{audit.get('denied') or 'granted'}")
        self.results["refusals"] = refusals

        self.say(f"\n== Trace of {rx_id} ==")
        trace = self.ops(doctor).trace(rx_id)
        for st in trace["steps"]:
            self.say(f"  {st['time']}  {st['step']:<9} {st['actor']:<11} {st['org']:<6} "
                     f"{st['role']:<10} block {st['block']}  tx {str(st['tx_id'])[:12]}")
        self.results["trace"] = trace

        self.say("\n== Ledger verification ==")
        verified = []
        admin = self.ops(clerk).s.identity
        for org in ("h01", "p01", "ins01", "reg01"):
            peer = self.net.peer_of(org)
            r = verify_peer(admin, peer.name, peer.target, self.home / "genesis.block",
                            self.net.config)
            self.say(f"  {peer.name:<10} {'OK ' if r.ok else 'BAD'} {r.height} blocks, "
                     f"{r.txs} txs, last {r.last_hash[:16]}  {'; '.join(r.errors[:2])}")
            verified.append(r)
        self.results["verified"] = [(r.peer, r.ok, r.height) for r in verified]

        self.say("\n== Privacy check ==")
        self.privacy_check(doctor, ("amlodipine", "benidipine"))
        return self.results


    def privacy_check(self, who: str, drugs: tuple[str, ...],
                      peers: tuple[str, ...] = ("peer.h01", "peer.p01", "peer.ins01")) -> None:
        """Look for the patient's identifiers and the drug names in what the nodes wrote.

        Every key and value of the peers' world state (read through LevelDB: its tables are
        compressed, a byte grep could miss a string), and the raw blocks, raft files and logs
        of every node.
        """
        session = self.ops(who).s
        patient = session.directory.resolve("patient-zhang")
        names = [n for d in drugs for e in [session.formulary.resolve(d)]
                 for n in (e.short_name, e.generic_name) if n]
        checks = {"name": [patient.display_name], "ID number": [patient.id_number],
                  "birth date": [patient.birth_date], "drug names": names}
        terms = [t for ts in checks.values() for t in ts if t]
        hits: list[Hit] = []
        entries = 0
        for peer in peers:
            n, found = scan_leveldb(peer_state_dir(self.home, peer), terms, f"{peer} state")
            entries += n
            hits += found
        files = raw_files(self.home)
        hits += scan_raw(files, terms)
        size = sum(_size(f) for f in files)
        self.say(f"  scanned {entries} state entries of {', '.join(peers)} through LevelDB, and "
                 f"{len(files)} block, raft and log files of every node ({size // 1024} KiB)")
        for label, needles in checks.items():
            where = sorted({h.where for h in hits if h.term in needles})
            shown = "not found"
            if where:
                shown = f"FOUND in {where[0]}" + (f" and {len(where) - 1} more" if len(where) > 1 else "")
            what = f"drug names ({', '.join(drugs)})" if label == "drug names" else f"patient's {label}"
            self.say(f"  {what}: {shown}")
            self.results[f"privacy_{label}"] = bool(where)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a LevelDB file removed by a compaction meanwhile
        return 0


def closing_hints(home: Path, rx_id: str) -> list[str]:
    """The closing lines: what to try and how to stop this network (naming a non-default home)."""
    env = "" if Path(home).resolve() == DEFAULT_HOME.resolve() else f"RXCHAIN_HOME={home} "
    return [
        f"Try: {env}.venv/bin/rxchain --as h01:patient-zhang rx show {rx_id}",
        f"     {env}.venv/bin/rxchain --as reg01:auditor-1 rx audit {rx_id}",
        f"Stop it with:  {env}make network-down   (or: {env}.venv/bin/rxchain network down)",
    ]


def main() -> int:
    """Run the demo end to end."""
    home = default_home()
    t0 = time.monotonic()
    print(f"rxchain demo -- home {home}")
    try:
        if generate_material(home):
            print(f"generated the sample consortium (18 organisations) in {home}")
        print("starting the network (3 Raft orderers, 16 peers) ...")
        Launcher(home).up(timeout_s=180, progress=print)
        boot = Bootstrapper(home, progress=print)
        try:
            boot.ensure()
        finally:
            boot.close()
        story = Story(home)
        try:
            results = story.run()
        finally:
            story.close()
    except RxClientError as exc:
        print(f"demo failed: {exc.reason}: {exc.message}", file=sys.stderr)
        print("logs: " + str(home / "logs"), file=sys.stderr)
        return 1
    print(f"\nDone in {time.monotonic() - t0:.0f}s. The network is still running "
          f"(logs in {home / 'logs'}).")
    for line in closing_hints(home, results["rx_id"]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
