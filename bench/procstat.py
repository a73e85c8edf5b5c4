"""CPU time of processes (and their process groups) from /proc, for per-tx CPU figures."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds of a process group: the leader (own + reaped children) and the rest."""

    leader_s: float
    members_s: float

    @property
    def total_s(self) -> float:
        """Everything the group used."""
        return self.leader_s + self.members_s


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            raw = fh.read()
    except OSError:
        return None
    # comm may hold spaces or parentheses: split after the last ')'
    return raw[raw.rfind(")") + 2:].split()


def _cpu(fields: list[str], children: bool) -> float:
    # fields[0] is state (field 3); utime is field 14 -> index 11
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def process_cpu_s(pid: int) -> float:
    """utime+stime of one process (0 if gone)."""
    f = _stat_fields(pid)
    return _cpu(f, False) if f else 0.0


def group_pids(leader: int) -> list[int]:
    """Live pids of a node, leader first: the leader, the other members of its process group
    and every descendant of any of them (a peer's sandbox workers run in sessions of their
    own, children of the peer)."""
    parent: dict[int, int] = {}
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        f = _stat_fields(pid)
        if f is None:
            continue
        parent[pid] = int(f[1])  # ppid (field 4)
        if pid != leader and int(f[2]) == leader:  # pgrp (field 5)
            members.append(pid)
    family = {leader, *members}
    grew = True
    while grew:  # bounded: each round adds at least one pid of a finite table
        grew = False
        for pid, ppid in parent.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    return [leader, *sorted(family - {leader})]


def group_cpu(leader: int) -> CpuSample:
    """CPU of a process-group leader (with reaped children) and of the other live members of
    its group and their descendants (see :func:`group_pids`)."""
    own = _stat_fields(leader)
    leader_s = _cpu(own, True) if own else 0.0
    members = 0.0
    for pid in group_pids(leader)[1:]:
        f = _stat_fields(pid)
        if f is not None:
            members += _cpu(f, True)
    return CpuSample(leader_s, members)

