"""A small throwaway consortium on 127.0.0.1 for multi-process tests.

:func:`generate_consortium` runs netgen into a temporary directory on a free run of
ports; :class:`Consortium` knows every node's paths, target, credentials and command
line; :func:`route_through_proxies` rewrites every node's endpoints so that each
caller→node connection goes through its own :class:`~tests.harness.proxy.Link`.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from netgen import GeneratedNetwork, generate
from netgen.generate import NodeSpec

from tests.harness.ports import free_base_port, free_ports
from tests.harness.procs import ManagedProcess, ProcessManager
from tests.harness.proxy import FaultProxy, Link
from tests.harness.rpc import Creds, admin_healthy

BATCH = {"max_tx_count": 50, "max_bytes": 1 << 20, "timeout_ms": 50}
# max_value_bytes as the sample consortium (network-config/consortium.yaml): the lifecycle
# stores a contract package as one state value, and the real prescription contract's record
# is past 64 KiB (tests/contracts/test_sources.py)
LIMITS = {
    "max_message_bytes": 4 << 20, "max_envelope_bytes": 1 << 20, "gas_limit": 1_000_000,
    "max_write_set_keys": 100, "max_value_bytes": 262144, "max_clock_skew_ms": 60000,
}


def consortium_dict(base_port: int, orderers: int = 3, hospitals: int = 2, pharmacies: int = 1,
                    insurer_peer: bool = True, consortium_id: str = "fault-rx") -> dict[str, Any]:
    """``orderers`` insurers (one orderer each; the first also runs a peer), hospitals,
    pharmacies and a regulator without a peer."""
    orgs: list[dict[str, Any]] = []
    for i in range(1, hospitals + 1):
        orgs.append({
            "id": f"h{i:02d}", "name": f"Hospital {i}", "kind": "hospital",
            "level": "tertiary" if i == 1 else "community", "peer": True,
            "users": [{"name": "dr-test", "role": "doctor", "attrs": {"practice_years": "10"}},
                      {"name": "nurse-test", "role": "nurse"},
                      {"name": "patient-test", "role": "patient"}],
        })
    for i in range(1, pharmacies + 1):
        orgs.append({"id": f"p{i:02d}", "name": f"Pharmacy {i}", "kind": "pharmacy", "peer": True,
                     "users": [{"name": "pharm-test", "role": "pharmacist"},
                               {"name": "courier-test", "role": "courier"}]})
    for i in range(1, orderers + 1):
        orgs.append({"id": f"ins{i:02d}", "name": f"Insurer {i}", "kind": "insurer",
                     "peer": insurer_peer and i == 1, "orderer": True,
                     "users": [{"name": "clerk-test", "role": "clerk"}]})
    orgs.append({"id": "reg01", "name": "Regulator", "kind": "regulator",
                 "users": [{"name": "auditor-test", "role": "auditor"}]})
    return {
        "consortium_id": consortium_id, "base_port": base_port, "batch": dict(BATCH),
        "limits": dict(LIMITS),
        "policies": {"config_update": "MAJORITY(admin)", "lifecycle": "MAJORITY(admin)"},
        "organizations": orgs,
    }


@dataclass
class Consortium:
    """Generated material of a test consortium plus how to run its nodes."""

    net: GeneratedNetwork
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    fronts: dict[str, Link] = field(default_factory=dict)  # public port -> node, see front_proxies
    real_ports: dict[str, int] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """Root directory of the generated material."""
        return self.net.home

    def orderer_names(self) -> list[str]:
        """Orderer node names, Raft id order."""
        return [n.name for n in sorted(self.net.orderers(), key=lambda n: n.raft_id)]

    def peer_names(self) -> list[str]:
        """Peer node names."""
        return [n.name for n in self.net.peers()]

    def node(self, name: str) -> NodeSpec:
        """The generator's record of a node."""
        for n in self.net.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def node_dir(self, name: str) -> Path:
        """``nodes/<name>``."""
        return self.home / "nodes" / name

    def config_path(self, name: str) -> Path:
        """The node's YAML."""
        return self.node_dir(name) / "node.yaml"

    def data_dir(self, name: str) -> Path:
        """The node's data directory."""
        return self.node_dir(name) / "data"

    def log_path(self, name: str) -> Path:
        """Where the harness writes the node's output."""
        return self.home / "logs" / f"{name}.log"

    def port(self, name: str) -> int:
        """The port the node really listens on (differs from the public one behind a front proxy)."""
        return self.real_ports.get(name, self.node(name).port)

    def target(self, name: str) -> str:
        """``127.0.0.1:port`` of the node itself (not through a proxy)."""
        return f"{self.net.spec.host}:{self.port(name)}"

    def public_target(self, name: str) -> str:
        """``127.0.0.1:port`` as the consortium config and network.yaml name it."""
        return f"{self.net.spec.host}:{self.node(name).port}"

    def node_creds(self, name: str) -> Creds:
        """The node's own certificate (a member of its organisation)."""
        return Creds.of_dir(self.node_dir(name))

    def user_creds(self, org: str, user: str) -> Creds:
        """A wallet entry's credentials."""
        return Creds.of_dir(self.net.user_dir(org, user), self.net.ca_bundle_path)

    def argv(self, name: str) -> list[str]:
        """Command line starting the node."""
        module = "node.orderer" if self.node(name).kind == "orderer" else "node.peer"
        return [sys.executable, "-m", module, "--config", str(self.config_path(name))]

    def healthy(self, name: str) -> bool:
        """Admin.Health says serving."""
        return admin_healthy(self.target(name), self.node_creds(name))

    def start(self, procs: ProcessManager, name: str, env: dict[str, str] | None = None,
              fsize_limit: int | None = None) -> ManagedProcess:
        """Start a node (not waiting)."""
        return procs.start(name, self.argv(name), self.log_path(name), env=env, fsize_limit=fsize_limit)

    def start_and_wait(self, procs: ProcessManager, names: list[str], timeout_s: float = 60.0,
                       env: dict[str, str] | None = None) -> dict[str, float]:
        """Start ``names`` and wait until each is healthy; seconds each took."""
        for n in names:
            self.start(procs, n, env=env)
        return {n: procs.wait_healthy(n, functools.partial(self.healthy, n), timeout_s) for n in names}


def generate_consortium(home: Path, raw: dict[str, Any] | None = None, **kwargs: Any) -> Consortium:
    """Generate a consortium under ``home`` on free ports (``raw`` overrides the default dict;
    its base_port is replaced)."""
    spec = dict(raw) if raw is not None else consortium_dict(0, **kwargs)
    n_nodes = sum(1 for o in spec["organizations"] if o.get("peer")) + sum(
        1 for o in spec["organizations"] if o.get("orderer"))
    spec["base_port"] = free_base_port(n_nodes)
    return Consortium(generate(spec, home))


def _rewrite_endpoints(entries: list[dict[str, Any]], caller: str, links: dict[tuple[str, str], Link]) -> None:
    for e in entries:
        link = links.get((caller, str(e["name"])))
        if link is not None:
            e["host"] = "127.0.0.1"
            e["port"] = link.port


def route_through_proxies(cons: Consortium, proxy: FaultProxy) -> dict[tuple[str, str], Link]:
    """One link per (caller, callee) pair of nodes; rewrite each caller's node.yaml so that its
    ``orderers`` and ``peers`` endpoints go through the links. Returns the links by pair
    (also kept in ``cons.links``). Call before starting the nodes."""
    names = [n.name for n in cons.net.nodes]
    for src in names:
        for dst in names:
            if src == dst:
                continue
            node = cons.node(dst)
            cons.links[(src, dst)] = proxy.add(f"{src}->{dst}", cons.net.spec.host, node.port)
    for src in names:
        path = cons.config_path(src)
        doc = yaml.safe_load(path.read_text())
        _rewrite_endpoints(doc.get("orderers") or [], src, cons.links)
        _rewrite_endpoints(doc.get("peers") or [], src, cons.links)
        path.write_text(yaml.safe_dump(doc, sort_keys=True))
    return cons.links


def front_proxies(cons: Consortium, proxy: FaultProxy, names: list[str] | None = None) -> dict[str, Link]:
    """Put a link in front of each node: the node moves to a fresh port, and its public port
    (in the genesis config, network.yaml and every node.yaml) is served by the link. Every
    connection to the node -- Raft between orderers (dialled from the config), deliver,
    broadcast, endorsement -- then crosses the link. Call before starting the nodes."""
    for name in names or [n.name for n in cons.net.nodes]:
        real = free_ports(1)[0]
        path = cons.config_path(name)
        doc = yaml.safe_load(path.read_text())
        doc["port"] = real
        path.write_text(yaml.safe_dump(doc, sort_keys=True))
        cons.real_ports[name] = real
        cons.fronts[name] = proxy.add(f"*->{name}", cons.net.spec.host, real, listen_port=cons.node(name).port)
    return cons.fronts


def links_to(cons: Consortium, name: str) -> list[Link]:
    """Every link whose callee is ``name`` (isolating a node = all links to and from it)."""
    return [link for (src, dst), link in cons.links.items() if dst == name]


def links_of(cons: Consortium, name: str) -> list[Link]:
    """Every link to or from ``name``."""
    return [link for (src, dst), link in cons.links.items() if name in (src, dst)]
