"""One-time network bootstrap: deploy the contracts through the lifecycle, load sample data.

Both steps are ordinary transactions and are recorded in ``HOME/bootstrap.json`` so a
second ``network up`` does not repeat them.

Deployment: the first peer organisation's admin installs each contract package
(``_lifecycle.install``), a majority of organisation admins approve the definition
(``_lifecycle.approve``, concurrently: each approval writes its own key) and one admin
commits it (``_lifecycle.commit``). Definitions (:func:`contract_definitions`):
endorsement by two peers of different organisations, and for settlement one of them an
insurer's; access ``{"*": ["*"]}`` because every contract function checks the caller's
role and organisation itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from client.errors import RxClientError
from client.formulary import write_catalogue
from client.gateway import SubmitResult
from client.network import NetworkInfo, load_network
from client.patients import patient_from_yaml, write_directory
from client.records import dx_key, patient_binding
from client.session import LAST_BLOCK_FILE, Session, read_last_block
from client.wallet import wallet_cert_name
from node.errors import RxError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = PROJECT_ROOT / "contracts"
DEFAULT_SAMPLE_DATA = PROJECT_ROOT / "network-config" / "sample-data.yaml"
CONTRACTS = ("registry", "prescription", "settlement")
STATE_FILE = "bootstrap.json"
VERSION = "1.0"
LIFECYCLE = "_lifecycle"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def contract_definitions(net: NetworkInfo) -> dict[str, dict[str, Any]]:
    """Endorsement policy and access rules of each contract.

    Prescriptions need two peers of different organisations. Registry data (formulary, policy,
    practitioners, enrolment) and settlements need an insurer's peer plus one other peer: money
    and reference data are never written on the word of hospitals alone. Every contract function
    checks its caller's role itself, so the access rules admit every role.
    """
    peer_orgs = sorted({p.org for p in net.peers})
    all_peers = ", ".join(f"{o}.peer" for o in peer_orgs)
    insurer_peers = [o for o in net.insurers() if o in peer_orgs]
    two = f"OutOf(2, {all_peers})" if len(peer_orgs) >= 2 else f"OutOf(1, {all_peers})"
    if insurer_peers and len(peer_orgs) >= 2:
        ins = ", ".join(f"{o}.peer" for o in insurer_peers)
        # Each signer satisfies one principal, so this is an insurer peer plus one other peer.
        with_insurer = f"AND(OutOf(1, {ins}), OutOf(1, {all_peers}))"
    else:
        with_insurer = two
    return {
        "registry": {"endorsement_policy": with_insurer, "access": {"*": ["*"]}},
        "prescription": {"endorsement_policy": two, "access": {"*": ["*"]}},
        "settlement": {"endorsement_policy": with_insurer, "access": {"*": ["*"]}},
    }


def _retry_lagging(call: Callable[[], SubmitResult], reason: str, attempts: int = 6) -> SubmitResult:
    """Run ``call``, retrying (bounded, with backoff) while an endorser lags with ``reason``."""
    for attempt in range(attempts):
        try:
            return call()
        except RxClientError as exc:
            if exc.reason != reason or attempt == attempts - 1:
                raise
            time.sleep(0.3 * (attempt + 1))
    raise AssertionError("unreachable")


def _state(home: Path) -> dict[str, Any]:
    path = home / STATE_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RxClientError("BAD_CONFIG", f"{path}: {exc}") from exc
    return raw if isinstance(raw, dict) else {}


def sample_data_loaded(home: Path) -> bool:
    """True if :meth:`Bootstrapper.ensure` loaded sample data into ``home``'s network already
    (it is never loaded twice)."""
    return "sample_data" in _state(home)


def recorded_block(state: dict[str, Any]) -> int | None:
    """The last block a bootstrap record says it committed a contract definition in (None:
    no such block recorded -- none deployed, or each found defined already)."""
    contracts = state.get("contracts")
    blocks = [c.get("block") for c in contracts.values() if isinstance(c, dict)] if isinstance(contracts, dict) else []
    numbers = [b for b in blocks if isinstance(b, int) and not isinstance(b, bool)]
    return max(numbers) if numbers else None


def _save_state(home: Path, state: dict[str, Any]) -> None:
    path = home / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


def _parallel(jobs: list[Callable[[], SubmitResult]], workers: int = 6) -> list[SubmitResult]:
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        futures = [pool.submit(j) for j in jobs]
        return [f.result() for f in futures]


class Bootstrapper:
    """Deploys contracts and loads the sample data of one home directory."""

    def __init__(self, home: Path, progress: Progress = _quiet):
        self.home = Path(home)
        self.net = load_network(self.home)
        self.progress = progress
        self._sessions: dict[str, Session] = {}

    def close(self) -> None:
        """Close every session."""
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()

    def admin(self, org: str) -> Session:
        """A session as ``org:admin`` (cached)."""
        if org not in self._sessions:
            self._sessions[org] = Session(self.home, f"{org}:admin", network=self.net)
        return self._sessions[org]

    def user(self, as_: str) -> Session:
        """A session as ``as_`` (``ORG:USER``, e.g. a patient's wallet; cached)."""
        if as_ not in self._sessions:
            self._sessions[as_] = Session(self.home, as_, network=self.net)
        return self._sessions[as_]

    def _job(self, org: str, contract: str, fn: str, args: dict[str, Any],
             transient: dict[str, Any] | None = None,
             endorsers: list[str] | None = None, as_: str = "") -> Callable[[], SubmitResult]:
        # created here, not inside the worker threads
        session = self.user(as_) if as_ else self.admin(org)
        return lambda: session.gateway.submit(contract, fn, args, transient, endorsing_orgs=endorsers)

    def _parties(self, *orgs: str) -> list[str]:
        """Endorsers for a call whose transient input is a patient's medical data (diagnosis
        history, per-disease usage): only the organisations concerned -- the enrolling hospital
        and the patient's insurer -- that run a peer, never a peer the gateway would pick by
        rotation (it was left to choose when fewer than two of them ran one: another insurer's
        peer then received the diagnoses). When they cannot satisfy the policy the call fails
        rather than reach anyone else (none of them: ENDORSERS_REQUIRED, nothing sent)."""
        with_peer = {p.org for p in self.net.peers}
        return [o for o in dict.fromkeys(orgs) if o and o in with_peer]

    # ------------------------------------------------------------ contracts
    def deploy(self, contracts_dir: Path = CONTRACTS_DIR) -> dict[str, Any]:
        """Install, approve and commit every contract whose definition is not yet active."""
        defs = contract_definitions(self.net)
        peer_orgs = [o.id for o in self.net.config.organizations
                     if any(p.org == o.id for p in self.net.peers)]
        n_orgs = len(self.net.config.organizations)
        approvers = peer_orgs[: n_orgs // 2 + 1]
        if len(approvers) < n_orgs // 2 + 1:
            raise RxClientError("BAD_CONFIG", "too few organisations with peers to approve")
        lead = self.admin(peer_orgs[0])
        out: dict[str, Any] = {}
        for name in CONTRACTS:
            source = (contracts_dir / f"{name}.py").read_text()
            installed = lead.gateway.submit(LIFECYCLE, "install",
                                            {"name": name, "version": VERSION, "source": source})
            code_hash = str(installed.result["code_hash"])
            try:
                current = lead.gateway.evaluate(LIFECYCLE, "definition", {"name": name})
            except RxClientError as exc:
                if exc.reason != "UNKNOWN_CONTRACT":
                    raise
                current = None
            if isinstance(current, dict) and current.get("code_hash") == code_hash:
                out[name] = {"code_hash": code_hash, "sequence": current["sequence"],
                             "block": None}
                continue
            seq = int(current["sequence"]) + 1 if isinstance(current, dict) else 1
            definition = {"name": name, "version": VERSION, "sequence": seq,
                          "code_hash": code_hash, **defs[name]}
            self.progress(f"  {name}: installed in block {installed.block}; "
                          f"{len(approvers)} admins approving")
            _parallel([self._approve(org, definition) for org in approvers])
            committed = self._commit(lead, definition)
            self.progress(f"  {name}: committed in block {committed.block} "
                          f"(policy {defs[name]['endorsement_policy'][:48]}...)")
            out[name] = {"code_hash": code_hash, "sequence": seq, "block": committed.block}
        return out

    def _commit(self, lead: Session, definition: dict[str, Any]) -> SubmitResult:
        # An endorser that has not yet committed every approval sees too few.
        return _retry_lagging(lambda: lead.gateway.submit(LIFECYCLE, "commit", definition),
                              "LIFECYCLE_POLICY_FAILURE")

    def _approve(self, org: str, definition: dict[str, Any]) -> Callable[[], SubmitResult]:
        job = self._job(org, LIFECYCLE, "approve", definition)
        # A remote endorser that has not yet committed the install does not know the package.
        return lambda: _retry_lagging(job, "UNKNOWN_PACKAGE")

    # ------------------------------------------------------------ sample data
    def load_sample_data(self, path: Path = DEFAULT_SAMPLE_DATA) -> dict[str, int]:
        """Register practitioners, pharmacies, formulary, policies and patients."""
        from netgen.sampledata import read_sample_data

        try:  # strictly, and every entry checked before anything is submitted
            data = read_sample_data(path)
        except RxError as exc:
            raise RxClientError(exc.reason, exc.message) from None
        counts: dict[str, int] = {}

        def run(kind: str, jobs: list[Callable[[], SubmitResult]]) -> None:
            if jobs:
                res = _parallel(jobs)
                counts[kind] = len(res)
                self.progress(f"  {kind}: {len(res)} in blocks "
                              f"{min(r.block for r in res)}-{max(r.block for r in res)}")

        def call(org: str, fn: str, args: dict[str, Any], transient: dict[str, Any] | None = None,
                 endorsers: list[str] | None = None) -> Callable[[], SubmitResult]:
            return self._job(org, "registry", fn, args, transient, endorsers)

        known = {o.id for o in self.net.config.organizations}
        run("practitioners", [
            call(p["org"], "register_practitioner", {k: p[k] for k in (
                "name", "role", "code", "licence_active", "practice_years", "internet_practice")})
            for p in data.get("practitioners") or [] if p["org"] in known])
        run("pharmacies", [
            call(p["org"], "register_pharmacy", {"licence_no": p["licence_no"], "active": p["active"]})
            for p in data.get("pharmacies") or [] if p["org"] in known])
        formulary = [d for d in data.get("formulary") or [] if d["insurer"] in known]
        run("formulary", [
            call(d["insurer"], "set_drug", {k: d[k] for k in (
                "code", "spec", "cls", "standard_fen", "price_fen", "controlled")})
            for d in formulary])
        write_catalogue(self.home, formulary)
        run("policies", [
            call(p["insurer"], "set_policy", {
                "effective_ms": int(p.get("effective_ms", 0)),
                "deductible_fen": p["deductible_fen"], "ratio_bp": p["ratio_bp"],
                "cap_fen": p["cap_fen"], "cap_by_disease": p["cap_by_disease"],
                "b_share_bp": p["b_share_bp"]})
            for p in data.get("policies") or [] if p["insurer"] in known])
        patients = [p for p in data.get("patients") or [] if p.get("enrolled_by") in known]
        secret = self.net.secret
        key = dx_key(secret)
        enrolled = [patient_from_yaml(raw) for raw in patients]
        # The certificate names patients sign with are pseudonyms (netgen.patient_cert_name).
        cns = {pat.handle: wallet_cert_name(self.home, pat.user_org, pat.user_name) for pat in enrolled}
        run("patients", [
            call(pat.enrolled_by, "enrol_patient", {"pseudonym": pat.pseudonym(secret)}, {
                "dx_key": key, "diagnoses": [dict(d) for d in pat.diagnoses],
                "patient_binding": patient_binding(secret, pat.user_org, cns[pat.handle]),
                "patient_user": {"org": pat.user_org, "name": cns[pat.handle]}},
                endorsers=self._parties(pat.enrolled_by, pat.insurer if pat.insurer in known else ""))
            for pat in enrolled])
        # each patient asks her insurer to open her account (settlement.open_account takes her
        # own request: an insurer she did not ask cannot tell whether she is enrolled); her
        # session adds her binding, sent to her insurer's and her hospital's peers only
        run("requests", [
            self._job(pat.user_org, "settlement", "request_transfer", {
                "pseudonym": pat.pseudonym(secret), "to_insurer": pat.insurer,
            }, endorsers=self._parties(pat.insurer, pat.enrolled_by),
                as_=f"{pat.user_org}:{pat.user_name}")
            for pat in enrolled if pat.insurer in known])
        run("accounts", [
            self._job(pat.insurer, "settlement", "open_account", {
                "pseudonym": pat.pseudonym(secret), "year": 0,
                "balance_fen": pat.account_balance_fen,
                "deductible_used_fen": pat.deductible_used_fen,
            }, {"dx_key": key, "cap_used_by_disease": dict(pat.cap_used_by_disease)},
                endorsers=self._parties(pat.insurer, pat.enrolled_by))
            for pat in enrolled if pat.insurer in known])
        write_directory(self.home, patients)
        return counts

    # ------------------------------------------------------------ once
    def ensure(self, sample_data: Path | None = DEFAULT_SAMPLE_DATA,
               chain_height: int | None = None) -> dict[str, Any]:
        """Deploy and load once; what was done is recorded in HOME/bootstrap.json. With
        ``chain_height`` (the orderers' height now), a record of contracts committed at a block
        that chain does not reach is of another chain -- the network started again from
        ``genesis.block``, its ledgers emptied (README "Recovery") -- and both steps run again;
        the home's ``run/last-block``, of the old chain, is removed (every call of every client
        would first wait for its peer to reach it, up to the catch-up bound, 15 s)."""
        state = _state(self.home)
        last = recorded_block(state)
        if chain_height is not None and last is not None and chain_height <= last:
            self.progress(f"{STATE_FILE} records contracts committed up to block {last}, but the chain holds "
                          f"{chain_height} block(s): it was started again from genesis.block -- deploying again")
            state = {}
            if read_last_block(self.home) >= chain_height:  # the old chain's: each call would wait for it (15 s)
                (self.home / LAST_BLOCK_FILE).unlink(missing_ok=True)
        if "contracts" not in state:
            self.progress("deploying contracts through the lifecycle")
            state["contracts"] = self.deploy()
            _save_state(self.home, state)
        if sample_data is not None and "sample_data" not in state:
            self.progress(f"loading sample data from {sample_data.name}")
            state["sample_data"] = self.load_sample_data(sample_data)
            _save_state(self.home, state)
        return state
