"""The local network launcher: every node of a consortium as a process on 127.0.0.1.

``up``: generate the material if missing, start orderers first and then peers (logs in
``HOME/logs/<node>.log``, pid files in ``HOME/run/<node>.pid``), then wait -- bounded --
until every node's Admin.Health reports serving. ``down``: SIGTERM each node's process
group, SIGKILL after a bound. ``status``: pid liveness plus Admin.Status of every node.
A pid read from a pid file is trusted only if ``/proc/<pid>/cmdline`` shows our node module
and that node's config (``is_node_process``): a reused pid is never signalled (nor is a pid
file's 0 or negative number, which would name process groups, nor one too large to be
a pid).
Before starting anything ``up`` checks that every port of the nodes it is about to start is
free (``PORT_IN_USE``), before any node of this call writes anything (nodes also refuse a taken
port themselves). If a node exits or does not
become healthy, ``up`` stops the nodes *it* started (not ones already running) before raising.
``up`` and ``down`` hold an exclusive lock on ``HOME/run/launcher.lock`` (``flock``): a second
one on the same home at the same time is refused with ``LAUNCHER_BUSY`` instead of racing.
The same node binaries run one per host in a real deployment (see client/README.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.admin import AdminClient, NodeHealth
from client.errors import RxClientError
from client.network import NetworkInfo, NodeEndpoint, load_network
from client.wallet import WalletIdentity, load_identity
from node.config import load_node_config
from node.errors import RxError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONSORTIUM = PROJECT_ROOT / "network-config" / "consortium.yaml"
DEFAULT_HOME = PROJECT_ROOT / ".rxchain"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def default_home() -> Path:
    """``$RXCHAIN_HOME`` or ``<project>/.rxchain``."""
    env = os.environ.get("RXCHAIN_HOME")
    return Path(env) if env else DEFAULT_HOME


def generate_material(home: Path, consortium: Path | None = None,
                      base_port: int | None = None, complete: bool = False) -> bool:
    """Run the generator unless ``home`` already holds a network (``complete``: over one too, as
    ``python -m netgen`` does: it refuses another consortium, a lost or readable key, and adds
    what is missing); True if it generated a network the home did not hold."""
    from netgen import generate
    from netgen.spec import naming_file, read_consortium_file

    existing = (home / "network.yaml").exists() and (home / "genesis.block").exists()
    if existing and not complete:
        return False
    path = consortium or DEFAULT_CONSORTIUM
    try:  # strictly: duplicate keys, aliases, non-UTF-8 and oversized files are refused
        raw = read_consortium_file(path)
    except RxError as exc:
        raise RxClientError(exc.reason, exc.message) from None  # "consortium file: <path>: <why>"
    if not isinstance(raw, dict):
        raise RxClientError("BAD_CONFIG", f"{path}: not a mapping")
    if base_port is not None:
        raw["base_port"] = base_port
    try:
        generate(raw, home)
    except Exception as exc:
        if isinstance(exc, RxError):  # the consortium file's content: name the file
            exc = naming_file(exc, path)
        reason = getattr(exc, "reason", "BAD_CONFIG")
        raise RxClientError(str(reason), str(getattr(exc, "message", exc))) from exc
    return not existing


NODE_MODULES = ("node.peer", "node.orderer")
# What log_tail reads of a node's log: its end.
LOG_TAIL_BYTES = 64 * 1024
# Above every pid the kernel gives (a pid_t; Linux's limit is 2**22).
PID_MAX = (1 << 31) - 1


def is_node_process(pid: int, config: Path) -> bool:
    """True if process ``pid`` is a node started with ``-m node.peer|node.orderer --config config``.

    Reads ``/proc/<pid>/cmdline``; a missing process, an unreadable cmdline or any other
    command line (e.g. a pid reused after the node died) gives False.
    """
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not any(a in NODE_MODULES for a in args):
        return False
    want = Path(config).resolve()
    for i, arg in enumerate(args[:-1]):
        if arg == "--config":
            try:
                return Path(args[i + 1]).resolve() == want
            except (OSError, RuntimeError):
                return False
    return False


@dataclass(frozen=True)
class NodeProcess:
    """A launched node."""

    name: str
    kind: str
    pid: int


class Launcher:
    """Starts, checks and stops the nodes of one home directory."""

    def __init__(self, home: Path, python: str = sys.executable,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.home = Path(home)
        self.python = python
        self._clock = clock
        self._sleep = sleep
        # Children started by this Launcher object (reaped by ``down``); nodes started by an
        # earlier invocation are known through their pid files only.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ paths
    def pid_path(self, name: str) -> Path:
        """Pid file of a node."""
        return self.home / "run" / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        """Log file of a node."""
        return self.home / "logs" / f"{name}.log"

    def config_path(self, name: str) -> Path:
        """Absolute path of a node's config (as passed on its command line)."""
        return (self.home / "nodes" / name / "node.yaml").resolve()

    def _operator(self, net: NetworkInfo) -> WalletIdentity:
        """The identity the launcher uses for Admin calls: the first orderer org's admin."""
        org = net.orderers[0].org if net.orderers else net.peers[0].org
        return load_identity(self.home, org, "admin")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold HOME/run/launcher.lock (released by the kernel if this process dies)."""
        path = self.home / "run" / "launcher.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise RxClientError("LAUNCHER_BUSY", f"another `rxchain network up/down` is running "
                                    f"on {self.home}; wait for it") from exc
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------ processes
    def running_pid(self, name: str) -> int | None:
        """The pid of a live node process, or None.

        A pid file naming a live process that is not this node (a reused pid) counts as dead.
        """
        child = self._children.get(name)
        if child is not None:
            return child.pid if child.poll() is None else None
        path = self.pid_path(name)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid <= 1:  # 0 and negatives name process groups (kill/waitpid), 1 is init: never a node
            return None
        if pid > PID_MAX:  # a corrupt file: no process (os.kill would raise OverflowError)
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid if is_node_process(pid, self.config_path(name)) else None
        # A zombie counts as dead: its cmdline reads empty. Never reaped here: a stale pid file
        # may name another child of this process (its owner would lose its exit status).
        return pid if is_node_process(pid, self.config_path(name)) else None

    def node_ports(self, node: NodeEndpoint) -> list[int]:
        """The ports a node listens on: gRPC, and metrics when its node.yaml sets one."""
        ports = [node.port]
        try:
            metrics = load_node_config(self.config_path(node.name)).metrics_port
        except RxError:
            metrics = 0  # the node itself reports its bad config when started
        return ports + ([metrics] if metrics else [])

    def check_ports_free(self, nodes: tuple[NodeEndpoint, ...] | list[NodeEndpoint]) -> None:
        """RxClientError PORT_IN_USE if a port of these nodes is taken (bound by any process)."""
        for node in nodes:
            for port in self.node_ports(node):
                try:  # the node's own family: an IPv6 host (``::1``) is probed as IPv6
                    family, kind, proto, _, addr = socket.getaddrinfo(node.host, port, type=socket.SOCK_STREAM)[0]
                except OSError as exc:
                    raise RxClientError("BAD_CONFIG", f"{node.name}: host {node.host!r}: {exc}") from None
                probe = socket.socket(family, kind, proto)
                try:
                    # SO_REUSEADDR: our own node's connections in TIME_WAIT do not count, a
                    # listener (even one with SO_REUSEPORT, as every gRPC server) does
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(addr)
                except OSError as exc:
                    raise RxClientError(
                        "PORT_IN_USE", f"{node.name}: port {port} on {node.host} is already in use "
                        f"({exc.strerror}); stop what holds it or generate with another --base-port",
                    ) from exc
                finally:
                    probe.close()

    def start_node(self, node: NodeEndpoint) -> NodeProcess:
        """Start one node (no-op if its pid file names a live process)."""
        pid = self.running_pid(node.name)
        if pid is not None:
            return NodeProcess(node.name, node.kind, pid)
        config = self.config_path(node.name)
        if not config.exists():
            raise RxClientError("BAD_CONFIG", f"missing node config {config}")
        self.log_path(node.name).parent.mkdir(parents=True, exist_ok=True)
        self.pid_path(node.name).parent.mkdir(parents=True, exist_ok=True)
        self.check_ports_free([node])
        module = "node.orderer" if node.kind == "orderer" else "node.peer"
        env = dict(os.environ)
        extra = [str(PROJECT_ROOT), str(PROJECT_ROOT / "gen"), str(PROJECT_ROOT / "network-config")]
        env["PYTHONPATH"] = os.pathsep.join([*extra, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with self.log_path(node.name).open("ab") as log:
            proc = subprocess.Popen(
                [self.python, "-m", module, "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(PROJECT_ROOT), env=env, start_new_session=True,
            )
        self._children[node.name] = proc
        self.pid_path(node.name).write_text(f"{proc.pid}\n")
        return NodeProcess(node.name, node.kind, proc.pid)

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last lines of a node's log, from its last LOG_TAIL_BYTES (a log grows for as long
        as its node runs, across restarts: it was read whole, for its last line)."""
        try:
            with self.log_path(name).open("rb") as f:
                start = max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES)
                f.seek(start)
                found = f.read(LOG_TAIL_BYTES).decode(errors="replace").splitlines()
        except OSError:
            return ""
        if start and len(found) > 1:
            found = found[1:]  # the first line read is cut
        return "\n".join(found[-lines:])

    def wait_healthy(self, net: NetworkInfo, nodes: tuple[NodeEndpoint, ...],
                     timeout_s: float, progress: Progress = _quiet) -> dict[str, NodeHealth]:
        """Poll Admin.Health until every node serves; raise after ``timeout_s``."""
        ident = self._operator(net)
        deadline = self._clock() + timeout_s
        pending = {n.name: n for n in nodes}
        healthy: dict[str, NodeHealth] = {}
        clients = {n.name: AdminClient(ident, n.target) for n in nodes}
        try:
            while pending:
                for name in list(pending):
                    if self.running_pid(name) is None:
                        raise RxClientError(
                            "NODE_EXITED",
                            f"{name} exited during start-up; log tail:\n{self.log_tail(name)}",
                        )
                    h = clients[name].health(name, timeout=1.0)
                    if h.serving:
                        healthy[name] = h
                        del pending[name]
                        progress(f"  {name} serving ({len(healthy)}/{len(nodes)})")
                if not pending:
                    break
                if self._clock() > deadline:
                    raise RxClientError(
                        "TIMEOUT", f"nodes not healthy after {timeout_s:.0f}s: {sorted(pending)}"
                    )
                self._sleep(0.3)
        finally:
            for c in clients.values():
                c.close()
        return healthy

    def up(self, timeout_s: float = 120.0, progress: Progress = _quiet) -> list[NodeProcess]:
        """Start every node (orderers first) and wait until all are healthy."""
        net = load_network(self.home)
        with self._exclusive():
            return self._up(net, timeout_s, progress)

    def _up(self, net: NetworkInfo, timeout_s: float, progress: Progress) -> list[NodeProcess]:
        self.check_ports_free([n for n in net.all_nodes if self.running_pid(n.name) is None])
        started: list[NodeProcess] = []
        fresh: set[str] = set()  # nodes this call started (stopped again if start-up fails)
        try:
            for group, label in ((net.orderers, "orderers"), (net.peers, "peers")):
                already = 0
                for node in group:
                    running = self.running_pid(node.name) is not None
                    if running:
                        already += 1
                    else:  # before it starts: one started whose pid file fails is stopped too
                        fresh.add(node.name)
                    started.append(self.start_node(node))
                ran = f" ({already} already running)" if already else ""
                progress(f"started {len(group) - already} {label}{ran}; waiting for them")
                self.wait_healthy(net, group, timeout_s, progress)
        except BaseException:
            if fresh:
                progress(f"start-up failed: stopping the {len(fresh)} nodes started now")
                self._down(net, 5.0, fresh)
            raise
        return started

    def down(self, grace_s: float = 10.0, only: set[str] | None = None) -> list[dict[str, Any]]:
        """Stop every node (or the nodes named in ``only``): SIGTERM, then SIGKILL after
        ``grace_s``. Peers first."""
        net = load_network(self.home)
        with self._exclusive():
            return self._down(net, grace_s, only)

    def _down(self, net: NetworkInfo, grace_s: float, only: set[str] | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        victims: dict[str, int] = {}
        for node in (*net.peers, *net.orderers):
            if only is not None and node.name not in only:
                continue
            pid = self.running_pid(node.name)
            if pid is None:
                self._drop_pid_file(node.name)
                continue
            victims[node.name] = pid
            _signal_group(pid, signal.SIGTERM)
        deadline = self._clock() + grace_s
        while victims and self._clock() < deadline:
            for name in list(victims):
                if self.running_pid(name) is None:
                    pid = victims.pop(name)
                    self._reap(pid)
                    out.append({"node": name, "pid": pid, "stopped": "SIGTERM"})
                    self._drop_pid_file(name)
            if victims:
                self._sleep(0.1)
        for name, pid in victims.items():
            _signal_group(pid, signal.SIGKILL)
            self._reap(pid)
            out.append({"node": name, "pid": pid, "stopped": "SIGKILL"})
            self._drop_pid_file(name)
        return out

    def _drop_pid_file(self, name: str) -> None:
        """Remove ``name``'s pid file; one that cannot be removed (a directory in its place, a
        read-only run/) must not stop ``_down`` half-way: the nodes after it would be left
        running, and a failed ``up`` stops the nodes it started with it."""
        with contextlib.suppress(OSError):  # (a stale file naming a dead pid reads as not running)
            self.pid_path(name).unlink(missing_ok=True)

    def _reap(self, pid: int) -> None:
        for name, child in list(self._children.items()):
            if child.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=5)
                del self._children[name]
                return
        for _ in range(50):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done == pid:
                return
            self._sleep(0.02)

    def chain_height(self) -> int | None:
        """The height of the ordering chain: the highest an orderer serving now answers (None
        when none answers). Unlike a peer's, an orderer's serves only once it onboarded."""
        net = load_network(self.home)
        ident = self._operator(net)
        heights = []
        for node in net.orderers:
            if self.running_pid(node.name) is None:
                continue
            try:
                with AdminClient(ident, node.target) as c:
                    h = c.status(node.name)
            except RxClientError:
                continue
            if h.serving:
                heights.append(h.height)
        return max(heights) if heights else None

    def status(self) -> list[dict[str, Any]]:
        """Every node: pid (if running), serving, height, leader; for a node not running,
        the last line of its log (``last_log``: e.g. why it stopped, PROTOCOL_UNSUPPORTED)."""
        net = load_network(self.home)
        ident = self._operator(net)
        rows = []
        for node in net.all_nodes:
            pid = self.running_pid(node.name)
            row: dict[str, Any] = {"node": node.name, "org": node.org, "kind": node.kind,
                                   "port": node.port, "pid": pid}
            if pid is None:
                row.update(serving=False, detail="not running")
                last = self.log_tail(node.name, 1)
                if last:
                    row["last_log"] = last[:500]
            else:
                with AdminClient(ident, node.target) as c:
                    h = c.status(node.name)
                row.update(serving=h.serving, detail=h.detail, height=h.height,
                           protocol_versions=list(h.protocol_versions),
                           protocol_version=h.protocol_version)
                if node.kind == "orderer":
                    row.update(raft_leader=h.raft_leader, raft_term=h.raft_term,
                               peer_protocol_versions=dict(h.peer_protocol_versions),
                               peers_unsigned=list(h.peers_unsigned),
                               raft_state_unconfirmed=h.raft_state_unconfirmed)
            rows.append(row)
        return rows


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the node leads (it was started in its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
