"""A real local network (9 node processes on 127.0.0.1) shared by every e2e test.

Started through the CLI (``rxchain network up --consortium FILE --base-port N --home TMP``)
with free ports, and always stopped (``network down``, then SIGKILL of anything left) in the
finalizer.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.launcher import is_node_process
from tests.client.ports import free_base_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = yaml.safe_load((ROOT / "network-config" / "consortium.yaml").read_text())
KEEP = ("h01", "h02", "p01", "p02", "ins01", "ins02", "ins03", "reg01")


def e2e_consortium(base_port: int) -> dict[str, Any]:
    """The sample consortium reduced to the organisations the story needs (3 orderers, 6 peers)."""
    raw = dict(SAMPLE)
    raw["consortium_id"] = "rx-e2e"
    raw["base_port"] = base_port
    raw["organizations"] = [o for o in SAMPLE["organizations"] if o["id"] in KEEP]
    return raw


def rxchain(home: Path, *args: str, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """Run the CLI with --json; returns (exit status, parsed JSON)."""
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", "--json", "--home", str(home), *args],
        capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one JSON line, got {proc.stdout!r} / {proc.stderr[-2000:]}"
    return proc.returncode, json.loads(lines[0])


def rxchain_inproc(home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """The same CLI entry point, called in this process (no interpreter start-up per call)."""
    from client.cli import main

    out, err = io.StringIO(), io.StringIO()
    rc = main(["--json", "--home", str(home), *args], out=out, err=err)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one JSON line, got {out.getvalue()!r} / {err.getvalue()}"
    return rc, json.loads(lines[0])


@dataclass
class Net:
    """The running test network. ``cli`` runs the CLI in-process, ``cli_proc`` as a process."""

    home: Path
    base_port: int
    trace_codes: list[str] = field(default_factory=list)  # every trace code the tests used

    def cli(self, *args: str) -> dict[str, Any]:
        """A CLI command that must succeed."""
        rc, out = rxchain_inproc(self.home, *args)
        assert rc == 0, out
        return out

    def cli_error(self, *args: str) -> dict[str, Any]:
        """A CLI command that must be refused (exit 1, JSON error shape)."""
        rc, out = rxchain_inproc(self.home, *args)
        assert rc == 1, out
        assert set(out) == {"error", "message"}, out
        return out

    def cli_proc(self, *args: str) -> dict[str, Any]:
        """A CLI command run as ``python -m client.cli`` that must succeed."""
        rc, out = rxchain(self.home, *args)
        assert rc == 0, out
        return out

    def cli_proc_error(self, *args: str) -> dict[str, Any]:
        """A CLI process that must be refused (exit 1, JSON error shape)."""
        rc, out = rxchain(self.home, *args)
        assert rc == 1, out
        assert set(out) == {"error", "message"}, out
        return out


def kill_leftovers(home: Path) -> list[int]:
    """SIGKILL the process group of every node a pid file of ``home`` names; the pids killed.

    A pid is signalled only if its ``/proc/<pid>/cmdline`` is that node (module and config
    path): a pid reused by an unrelated process after the node died is left alone.
    """
    killed = []
    for pid_file in sorted((home / "run").glob("*.pid")):
        config = home / "nodes" / pid_file.stem / "node.yaml"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            continue
        if pid <= 1 or not is_node_process(pid, config):
            continue
        try:
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:
            pass
    return killed


def _start(home: Path) -> tuple[int, dict[str, Any], int]:
    base = free_base_port()
    consortium = home.parent / f"{home.name}-consortium.yaml"
    consortium.write_text(yaml.safe_dump(e2e_consortium(base)))
    rc, out = rxchain(home, "network", "up", "--consortium", str(consortium),
                      "--base-port", str(base), "--timeout", "90", timeout=240)
    return rc, out, base


@pytest.fixture(scope="package")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    homes: list[Path] = []
    try:
        failures = []
        for _ in range(2):  # a port taken between the free-port check and the bind: retry once
            home = tmp_path_factory.mktemp("rxnet")
            homes.append(home)
            rc, out, base = _start(home)
            if rc == 0:
                break
            failures.append(out)
            rxchain(home, "network", "down", "--grace", "5", timeout=60)
        assert rc == 0, failures
        assert sorted(out["contracts"]) == ["prescription", "registry", "settlement"]
        yield Net(home, base)
    finally:
        for h in homes:
            try:
                rxchain(h, "network", "down", "--grace", "5", timeout=60)
            finally:
                kill_leftovers(h)
