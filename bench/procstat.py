"""CPU time of processes (and their process groups) from /proc, for per-tx CPU figures."""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgrp) of every live process (one pass over /proc)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                table[int(entry)] = (int(f[1]), int(f[2]))  # ppid (field 4), pgrp (field 5)
    return table


def node_families(groups: Mapping[str, int]) -> dict[str, list[int]]:
    """name -> pids of each node (``name -> leader pid``), leader first, from one pass over
    /proc: the leader, the other members of its process group and every descendant of any
    of them (a peer's sandbox workers run in sessions of their own, children of the peer)."""
    table = _process_table()
    out: dict[str, list[int]] = {}
    for name, leader in groups.items():
        family = {leader, *(pid for pid, (_, pgrp) in table.items() if pgrp == leader)}
        grew = True
        while grew:  # bounded: each round adds at least one pid of a finite table
            grew = False
            for pid, (ppid, _) in table.items():
                if ppid in family and pid not in family:
                    family.add(pid)
                    grew = True
        out[name] = [leader, *sorted(family - {leader})]
    return out


def node_processes(groups: Mapping[str, int]) -> dict[int, str]:
    """pid -> owner: a node's leader is ``name``, its other processes ``"<name> workers"``."""
    return {pid: name if i == 0 else f"{name} workers"
            for name, pids in node_families(groups).items() for i, pid in enumerate(pids)}


def cpu_by_node(groups: Mapping[str, int]) -> dict[str, CpuSample]:
    """CPU of every node: its leader (with reaped children) and its other processes (with
    theirs), from one pass over /proc (see :func:`node_families`)."""
    out: dict[str, CpuSample] = {}
    for name, pids in node_families(groups).items():
        cpu = [_cpu(f, True) if (f := _stat_fields(pid)) else 0.0 for pid in pids]
        out[name] = CpuSample(cpu[0], sum(cpu[1:]))
    return out


def group_cpu(leader: int) -> CpuSample:
    """CPU of one node (see :func:`cpu_by_node`)."""
    return cpu_by_node({"": leader})[""]
