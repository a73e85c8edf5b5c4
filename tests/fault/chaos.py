"""A chaos run on real processes: a consortium on 127.0.0.1 behind fault proxies, under
prescription-like load, while a seeded schedule kills, pauses, cuts, partitions, delays and
fills a disk; then heal, converge, and run the checker.

Used by ``tests/fault/test_chaos.py`` (short in ``make test``, long with
``RXCHAIN_CHAOS_LONG=1`` / ``make chaos``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from tests.fault.schedule import PlannedFault
from tests.harness.checker import CheckReport, FaultEvent, check, orderer_view, peer_view, tx_ids_of
from tests.harness.consortium import Consortium
from tests.harness.diskfull import SmallDisk
from tests.harness.load import LoadRecord
from tests.harness.procs import ProcessManager
from tests.harness.proxy import Mode
from tests.harness.rpc import admin_status

Log = Callable[[str], None]


class Load(Protocol):
    """What a chaos run needs of a load generator."""

    rec: LoadRecord

    def start(self) -> None:
        """Start the workers."""

    def stop(self, timeout_s: float = ...) -> None:
        """Stop the workers."""


@dataclass
class ChaosRun:
    """Everything a chaos run needs; :meth:`run` returns the checker's report."""

    cons: Consortium
    procs: ProcessManager
    load: Load
    disk: SmallDisk | None
    disk_peer: str
    schedule: list[PlannedFault]
    log: Log = print
    heal_timeout_s: float = 60.0
    stuck_timeout_s: float = 10.0
    t0: float = field(default_factory=time.monotonic)
    faults: list[FaultEvent] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    allowed_below_height: int = 0  # every tx in blocks below this height is set-up, not load
    prescription_ns: str = "rxload"
    settlement_ns: str = "rxload"

    # ------------------------------------------------------------------ helpers

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.t0

    def leader(self) -> str:
        """The orderer that currently leads (asked of every live orderer; majority answer)."""
        votes: dict[int, int] = {}
        for name in self.cons.orderer_names():
            if not self.procs[name].running() or self.procs[name].paused:
                continue
            try:
                st = admin_status(self.cons.target(name), self.cons.node_creds(name))
            except grpc.RpcError:
                continue
            if st.raft_leader:
                votes[st.raft_leader] = votes.get(st.raft_leader, 0) + 1
        if not votes:
            return self.cons.orderer_names()[0]
        raft_id = max(votes, key=lambda k: votes[k])
        return next(n for n in self.cons.orderer_names() if self.cons.node(n).raft_id == raft_id)

    def _restart(self, name: str) -> None:
        mp = self.procs[name]
        if mp.running():
            return
        self.procs.restart(name)
        self.procs.wait_healthy(name, lambda: self.cons.healthy(name), self.heal_timeout_s)

    def _height(self, name: str) -> int:
        try:
            return int(admin_status(self.cons.target(name), self.cons.node_creds(name)).height)
        except grpc.RpcError:
            return -1

    def _orderer_height(self) -> int:
        return max(self._height(o) for o in self.cons.orderer_names())

    def _progresses(self, name: str, before: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._height(name) > before:
                return True
            time.sleep(0.2)
        return False

    def _front(self, name: str) -> list:  # type: ignore[type-arg]
        return [self.cons.fronts[name]] if name in self.cons.fronts else []

    # ------------------------------------------------------------------ one fault

    def inject(self, pf: PlannedFault) -> FaultEvent:
        """Inject ``pf``, hold it, heal it; returns the event (heal time = node serving again)."""
        target = self.leader() if pf.target == "leader" else pf.target
        ev = FaultEvent(pf.kind, target, self.now())
        self.log(f"[{ev.at_s:6.1f}s] inject {pf.kind} on {target} for {pf.hold_s}s")
        kind = pf.kind
        if kind.startswith("kill9"):
            self.procs.kill9(target)
            time.sleep(pf.hold_s)
            self._restart(target)
        elif kind == "compound":
            peer, orderer = target.split("+")
            self.procs.kill9(peer)
            for link in self._front(orderer):
                link.set_mode(Mode.DROP)
            time.sleep(pf.hold_s)
            for link in self._front(orderer):
                link.heal()
                link.cut()
            self._restart(peer)
        elif kind == "quorum_loss":
            # pause a majority of orderers: clients must get answers (SERVICE_UNAVAILABLE /
            # timeouts), not hang; ordering resumes when they come back
            others = [o for o in self.cons.orderer_names() if o != target][: len(self.cons.orderer_names()) // 2]
            victims = [target, *others]
            ev.target = "+".join(victims)
            for v in victims:
                self.procs.pause(v)
            time.sleep(pf.hold_s)
            for v in victims:
                self.procs.resume(v)
        elif kind.startswith("pause"):
            self.procs.pause(target)
            time.sleep(pf.hold_s)
            self.procs.resume(target)
        elif kind == "cut":
            for link in self._front(target):
                link.cut()
            time.sleep(pf.hold_s)
        elif kind in ("partition", "oneway", "delay"):
            mode = {"partition": Mode.DROP, "oneway": Mode.BLACKHOLE_DOWN, "delay": Mode.DELAY}[kind]
            for link in self._front(target):
                link.set_mode(mode, delay_s=0.15 if mode is Mode.DELAY else 0.0)
            time.sleep(pf.hold_s)
            for link in self._front(target):
                link.heal()
                if mode is not Mode.DELAY:
                    link.cut()  # half-dead streams reconnect now instead of after keepalive
        elif kind == "disk_full":
            if self.disk is None:
                raise ValueError("disk_full needs a small-disk peer")
            self.disk.attach(self.procs[target].pid)
            self.disk.fill()
            time.sleep(0.5)  # a commit already past its writes may still land
            p0, o0 = self._height(target), self._orderer_height()
            time.sleep(max(0.0, pf.hold_s - 0.5))
            p1, o1 = self._height(target), self._orderer_height()
            # tmpfs counts pages, so a block or two may still fit in a segment's last page
            ev.full_disk_effective = not (o1 > o0 + 3 and p1 > p0 + 3)
            ev.note = f"peer held at {p1 - p0:+d} blocks while the orderers moved {o1 - o0:+d}; "
            self.disk.drain()
            before = self._height(target)
            if not self.procs[target].running():
                ev.note += f"exited ({self.procs[target].returncode()}) on ENOSPC; restarted"
            elif not self._progresses(target, before, self.stuck_timeout_s):
                # The peer stays up but does not commit once space is back: restart it so the
                # run can still check everything else; the test then fails on the note.
                ev.note += f"stuck after drain ({self.stuck_timeout_s:.0f}s without a commit); restarted"
                self.procs.kill9(target)
            if ev.note:
                self.log(f"          {target}: {ev.note}")
            self._restart(target)
        else:
            raise ValueError(f"unknown fault kind {kind}")
        ev.healed_at_s = self.now()
        self.log(f"[{ev.healed_at_s:6.1f}s] healed {pf.kind} on {target}")
        return ev

    # ------------------------------------------------------------------ the run

    def heights(self) -> dict[str, int]:
        """Height of every node (-1 when it does not answer)."""
        out = {}
        for name in self.cons.orderer_names() + self.cons.peer_names():
            try:
                out[name] = int(admin_status(self.cons.target(name), self.cons.node_creds(name)).height)
            except grpc.RpcError:
                out[name] = -1
        return out

    def converge(self, timeout_s: float) -> dict[str, int]:
        """Wait until every peer and orderer reports the same height (bounded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            hs = self.heights()
            if len(set(hs.values())) == 1 and -1 not in hs.values():
                return hs
            if time.monotonic() > deadline:
                self.log(f"not converged after {timeout_s}s: {hs}")
                return hs
            time.sleep(0.25)

    def run(self, warmup_s: float = 3.0, progress_timeout_s: float = 30.0) -> CheckReport:
        """Load, faults, heal, converge, stop the peers, check."""
        self.load.start()
        time.sleep(warmup_s)
        for pf in self.schedule:
            time.sleep(pf.gap_s)
            self.faults.append(self.inject(pf))
        # Heal everything (already healed fault by fault; this is the safety net), then make
        # sure the system makes progress again before stopping the load.
        for link in self.cons.fronts.values():
            link.heal()
        for name in self.cons.orderer_names() + self.cons.peer_names():
            if self.procs[name].paused:
                self.procs.resume(name)
            self._restart(name)
        healed = time.monotonic()
        deadline = healed + progress_timeout_s
        while self.load.rec.acks_since(healed) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.log(f"[{self.now():6.1f}s] all healed; {self.load.rec.acks_since(healed)} acks since; stopping load")
        self.load.stop()
        hs = self.converge(self.heal_timeout_s)
        self.log(f"heights after convergence: {hs}")
        for ev in self.faults:
            first = self.load.rec.first_ack_after(self.t0 + ev.at_s)
            ev.during_s = None if first is None else first - (self.t0 + ev.at_s)
            if ev.healed_at_s is not None:
                first = self.load.rec.first_ack_after(self.t0 + ev.healed_at_s)
                ev.recovered_s = None if first is None else first - (self.t0 + ev.healed_at_s)
        for name in self.cons.peer_names():
            self.procs.terminate(name, grace_s=15.0)
        views = [peer_view(n, self.cons.data_dir(n), self.cons.net.genesis_path) for n in self.cons.peer_names()]
        orderers = [orderer_view(n, self.cons.data_dir(n)) for n in self.cons.orderer_names()]
        allowed = list(self.allowed)
        for b in views[0].blocks[: self.allowed_below_height]:
            allowed.extend(t for t in tx_ids_of(b) if t)
        return check(views, self.load.rec.acks, self.load.rec.submitted, faults=self.faults,
                     allowed=allowed, orderers=orderers, prescription_ns=self.prescription_ns,
                     settlement_ns=self.settlement_ns)
