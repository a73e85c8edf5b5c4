"""The end-to-end benchmark's network: 3 orderers, 4 peers (h01, h02, p01, ins01) on 127.0.0.1.

The consortium is the sample one (``network-config/consortium.yaml``) cut down to the
organisations of the prescription story -- hospitals h01 and h02, pharmacy p01, insurers
ins01..ins03 (one orderer each; ins01 also runs a peer) and the regulator (no peer) -- on a
free run of ports, with TLS and fsync on (the node defaults). The contracts are deployed
and the sample data loaded exactly as ``rxchain network up`` does (:mod:`client.bootstrap`),
then synthetic patients are enrolled so that concurrent settlements touch different
patients' counters (as in a real insurer's day).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from netgen import generate
from netgen.ports import free_base_port

from client.bootstrap import CONTRACTS_DIR, DEFAULT_SAMPLE_DATA, Bootstrapper
from client.errors import RxClientError
from client.launcher import DEFAULT_CONSORTIUM, Launcher
from client.network import NetworkInfo, load_network
from client.records import pseudonym

STORY_ORGS = ("h01", "h02", "p01", "ins01", "ins02", "ins03", "reg01")
PEER_ORGS = ("h01", "h02", "p01", "ins01")


def consortium(base_port: int, max_tx_count: int = 500, timeout_ms: int = 50) -> dict[str, Any]:
    """The sample consortium restricted to the story's organisations."""
    raw = yaml.safe_load(DEFAULT_CONSORTIUM.read_text())
    orgs = []
    for org in raw["organizations"]:
        if org["id"] not in STORY_ORGS:
            continue
        org = dict(org)
        org["peer"] = org["id"] in PEER_ORGS
        orgs.append(org)
    raw["organizations"] = orgs
    raw["base_port"] = base_port
    raw["consortium_id"] = "bench-rx"
    raw["batch"] = {**raw["batch"], "max_tx_count": max_tx_count, "timeout_ms": timeout_ms}
    return dict(raw)


@dataclass(frozen=True)
class BenchPatient:
    """A synthetic patient: handle, ID number, enrolling hospital, pseudonym."""

    id_number: str
    hospital: str
    pseudonym: str
    birth_date: str


@dataclass
class BenchNetwork:
    """A running benchmark network."""

    home: Path
    launcher: Launcher
    net: NetworkInfo
    pids: dict[str, int]
    patients: list[BenchPatient]

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) every node."""
        self.launcher.down(grace_s=10.0)


def _id_number(i: int, hospital: str) -> str:
    district = "500103" if hospital == "h01" else "500106"
    body = f"{district}1960{(i % 12) + 1:02d}{(i % 28) + 1:02d}{i % 1000:03d}"
    return body + str(i % 10)


# patients per sample-data file: ~400 bytes each as YAML, so a file stays far below the
# strict reader's bound (node.yamlfile.MAX_CONFIG_BYTES, 4 MiB: ~10,900 patients)
PATIENTS_PER_FILE = 4000


def enrol_patients(boot: Bootstrapper, net: NetworkInfo, count: int, home: Path,
                   sample: Path = DEFAULT_SAMPLE_DATA, per_file: int = PATIENTS_PER_FILE) -> list[BenchPatient]:
    """Enrol ``count`` patients (half at h01, half at h02, insured by ins01, each with a
    physical I10 diagnosis and a large account balance) through the client's own sample
    data loader: the sample file's first patient is the template, so whatever the registry
    and settlement contracts expect at enrolment the client already sends. Written and
    loaded ``per_file`` patients a file (``bench-patients-NNN.yaml``)."""
    raw = yaml.safe_load(sample.read_text()) or {}
    template = dict((raw.get("patients") or [{}])[0])
    entries, patients = [], []
    for i in range(count):
        hosp = "h01" if i % 2 == 0 else "h02"
        idn = _id_number(i, hosp)
        birth = f"1960-{(i % 12) + 1:02d}-{(i % 28) + 1:02d}"
        # a deep copy: nested values shared between entries would be dumped as YAML aliases,
        # which the strict sample-data reader refuses (node.yamlfile)
        entry = {**copy.deepcopy(template), "name": f"bench-patient-{i:04d}", "display_name": f"Bench Patient {i}",
                 "id_number": idn, "birth_date": birth, "enrolled_by": hosp, "insurer": "ins01",
                 "user": {"org": hosp, "name": "patient-zhang" if hosp == "h01" else "patient-sun"},
                 "diagnoses": [{"icd10": "I10", "date": "2023-05-18", "hospital": hosp, "physical": True}],
                 "account_balance_fen": 10_000_000, "deductible_used_fen": 20_000}
        entries.append(entry)
        patients.append(BenchPatient(idn, hosp, pseudonym(net.secret, idn), birth))
    for n, first in enumerate(range(0, count, per_file)):
        path = home / f"bench-patients-{n:03d}.yaml"
        chunk = entries[first:first + per_file]
        path.write_text(yaml.safe_dump({"version": raw.get("version", 1), "patients": chunk}, sort_keys=True))
        boot.load_sample_data(path)
    return patients


def _ensure(boot: Bootstrapper, progress: Callable[[str], None], contracts: Path, sample: Path,
            attempts: int = 4) -> None:
    """Deploy and load the sample data, repeated when a peer had not yet committed the install.

    ``Bootstrapper.deploy`` does not wait for the other peers to commit the install block
    before asking them to endorse the approvals (UNKNOWN_PACKAGE); every step is
    idempotent, so retrying after a pause completes it.
    """
    for attempt in range(attempts):
        try:
            boot.deploy(contracts)
            boot.load_sample_data(sample)
            return
        except RxClientError as exc:
            if attempt == attempts - 1 or "UNKNOWN_PACKAGE" not in exc.message + exc.reason:
                raise
            progress(f"  bootstrap retry after {exc.reason}")
            time.sleep(1.0 + attempt)


def start_network(home: Path, patients: int = 240, progress: Callable[[str], None] = print,
                  max_tx_count: int = 500, timeout_ms: int = 50) -> BenchNetwork:
    """Generate, start, deploy, load the sample data and enrol the synthetic patients."""
    n_nodes = 7
    spec = consortium(free_base_port(n_nodes), max_tx_count, timeout_ms)
    generate(spec, home)
    launcher = Launcher(home)
    launcher.up(timeout_s=120.0)
    net = load_network(home)
    pids = {}
    for node in net.all_nodes:
        pid = launcher.running_pid(node.name)
        if pid is None:
            raise RuntimeError(f"{node.name} is not running")
        pids[node.name] = pid
    progress(f"network up: {', '.join(sorted(pids))}")
    bench_net = BenchNetwork(home, launcher, net, pids, [])
    try:
        boot = Bootstrapper(home, progress=progress)
        try:
            _ensure(boot, progress, CONTRACTS_DIR, DEFAULT_SAMPLE_DATA)
            bench_net.patients = enrol_patients(boot, net, patients, home)
        finally:
            boot.close()
    except BaseException:
        bench_net.stop()
        raise
    progress(f"contracts deployed, sample data loaded, {patients} patients enrolled")
    return bench_net

