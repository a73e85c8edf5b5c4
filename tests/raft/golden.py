"""Tiny datadriven interpreter for golden Raft scenarios (tests/raft/testdata/*.txt).

File format (after etcd's datadriven)::

    # comment
    command arg arg
    ----
    expected output lines
    (a blank line ends the block)

Set ``RXCHAIN_GOLDEN_REWRITE=1`` to rewrite the expected output (then review the diff!).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.raft.errors import RaftError
from node.raft.types import ConfChange, ConfChangeType, StateRole
from tests.raft.harness import Cluster, fmt_entry


@dataclass
class Case:
    """One command and its expected output."""

    line: int
    command: str
    expected: str


def parse(text: str) -> list[Case]:
    """Split a scenario file into cases."""
    cases: list[Case] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i].strip()
        if not raw or raw.startswith("#"):
            i += 1
            continue
        start = i + 1
        cmd = raw
        i += 1
        if i >= len(lines) or lines[i].strip() != "----":
            raise ValueError(f"line {start}: expected '----' after {cmd!r}")
        i += 1
        out: list[str] = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i].rstrip())
            i += 1
        cases.append(Case(start, cmd, "\n".join(out)))
    return cases


def render(cases: list[Case], outputs: list[str], header: str) -> str:
    """Scenario text with the given outputs."""
    parts = [header.rstrip() + "\n"] if header.strip() else []
    for c, out in zip(cases, outputs, strict=True):
        parts.append(f"{c.command}\n----\n{out}\n")
    return "\n".join(parts)


def header_of(text: str) -> str:
    """Leading comment block of a scenario file."""
    head = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            head.append(line)
        else:
            break
    return "\n".join(head)


class Driver:
    """Executes scenario commands against a harness Cluster."""

    def __init__(self) -> None:
        self.c: Cluster | None = None

    @property
    def cluster(self) -> Cluster:
        assert self.c is not None, "first command must be 'cluster ...'"
        return self.c

    def run(self, command: str) -> str:
        """Execute one command and return its output ('ok' when silent)."""
        words = command.split()
        name, args = words[0], words[1:]
        fn = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if fn is None:
            raise ValueError(f"unknown command {name!r}")
        try:
            out: str = fn(*args)
        except RaftError as exc:
            out = f"error: {exc.reason}: {exc.detail}"
        return out or "ok"

    # commands -------------------------------------------------------------------------
    def cmd_cluster(self, *args: str) -> str:
        opts = dict(a.split("=", 1) for a in args)
        ids = [int(x) for x in opts.pop("ids").split(",")]
        kw: dict[str, int | bool] = {}
        for k, v in opts.items():
            kw[k] = v == "true" if v in ("true", "false") else int(v)
        self.c = Cluster(ids, **kw)  # type: ignore[arg-type]
        return self.cmd_status_all()

    def cmd_campaign(self, nid: str) -> str:
        self.cluster.node(int(nid)).campaign()
        return ""

    def cmd_propose(self, nid: str, data: str) -> str:
        self.cluster.node(int(nid)).propose(data.encode())
        return ""

    def cmd_propose_conf_change(self, nid: str, op: str, target: str) -> str:
        typ = {
            "add": ConfChangeType.ADD_NODE,
            "remove": ConfChangeType.REMOVE_NODE,
            "add-learner": ConfChangeType.ADD_LEARNER_NODE,
        }[op]
        self.cluster.node(int(nid)).propose_conf_change(ConfChange(typ, int(target)))
        return ""

    def cmd_transfer_leader(self, nid: str, to: str) -> str:
        self.cluster.node(int(nid)).transfer_leader(int(to))
        return ""

    def cmd_stabilize(self) -> str:
        return "\n".join(self.cluster.stabilize())

    def cmd_tick(self, nid: str, n: str = "1") -> str:
        self.cluster.tick(int(nid), int(n))
        return ""

    def cmd_isolate(self, nid: str) -> str:
        self.cluster.isolate(int(nid))
        return ""

    def cmd_cut(self, a: str, b: str) -> str:
        self.cluster.cut(int(a), int(b))
        return ""

    def cmd_heal(self) -> str:
        self.cluster.heal()
        return ""

    def cmd_add_node(self, nid: str) -> str:
        self.cluster.add_member(int(nid))
        return ""

    def cmd_restart(self, nid: str) -> str:
        self.cluster.restart(int(nid))
        return self.cmd_status(nid)

    def cmd_snapshot(self, nid: str) -> str:
        s = self.cluster.snapshot(int(nid))
        return (
            f"snapshot at {s.meta.term}/{s.meta.index} voters={list(s.meta.conf_state.voters)}"
            f"; log compacted to {s.meta.index}"
        )

    def cmd_raft_log(self, nid: str) -> str:
        mem = self.cluster.members[int(nid)]
        r = mem.node.raft
        lines = []
        snap = mem.storage.snapshot()
        if not snap.is_empty:
            lines.append(f"snapshot {snap.meta.term}/{snap.meta.index}")
        for e in r.log.all_entries():
            mark = "" if e.index <= r.log.committed else " (uncommitted)"
            lines.append(fmt_entry(e) + mark)
        return "\n".join(lines) or "empty"

    def cmd_applied(self, nid: str) -> str:
        mem = self.cluster.members[int(nid)]
        vals = " ".join(v.decode() for v in mem.applied)
        return f"applied={mem.applied_index} values=[{vals}]"

    def cmd_status(self, nid: str) -> str:
        st = self.cluster.node(int(nid)).status()
        line = (
            f"{st.id}: {st.role.name} term={st.term} vote={st.vote} leader={st.leader} "
            f"commit={st.commit} applied={st.applied} last={st.last_index} "
            f"voters={list(st.conf_state.voters)}"
        )
        if st.conf_state.learners:
            line += f" learners={list(st.conf_state.learners)}"
        out = [line]
        if st.role == StateRole.LEADER:
            for pid, pr in st.progress.items():
                out.append(f"  {pid}: match={pr.match} next={pr.next} {pr.state.name}")
        return "\n".join(out)

    def cmd_status_all(self) -> str:
        return "\n".join(self.cmd_status(str(n)) for n in sorted(self.cluster.members))


def run_file(path: Path, rewrite: bool) -> list[tuple[Case, str]]:
    """Run a scenario; returns mismatches (case, actual). Rewrites the file if asked."""
    text = path.read_text()
    cases = parse(text)
    d = Driver()
    outputs = [d.run(c.command) for c in cases]
    if rewrite:
        path.write_text(render(cases, outputs, header_of(text)))
        return []
    return [(c, o) for c, o in zip(cases, outputs, strict=True) if c.expected != o]
