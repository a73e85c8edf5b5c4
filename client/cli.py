"""``rxchain``: the command-line client of every organisation.

Every command accepts ``--json`` and then prints exactly one JSON object; a failed command
prints, with ``--json``, ``{"error": "<REASON_CODE>", "message": "..."[, "detail": {...}]}``
(else ``error: REASON: message`` and the detail's ``key: value`` lines on stderr, see ``_human``; a step after
the result is printed -- ``claim report``/``rx inbox --checkpoint`` saving its checkpoint -- fails with the
``error:`` line on stderr in both modes). Exit status:

* 0 -- done;
* 1 -- refused or failed: the failing step did not commit (fix the cause and run it again);
  except INTERNAL, a fault of the CLI itself, which may have come after a submit;
* 2 -- usage error (bad command line);
* 3 -- COMMIT_UNKNOWN: the transaction was submitted and its answer lost; it MAY have committed.
  ``detail`` names ``tx_id`` and, for ``rx issue``, ``rx_id``. Look it up (``rx show RX_ID``)
  before anything else; run ``rx issue`` again only with ``--rx-id RX_ID`` (never without: that
  would be a second prescription);
* 4 -- DUPLICATE_RX: ``rx issue --rx-id RX_ID`` found that prescription already issued (a rerun of
  an issue that had committed); ``detail.rx_id`` names it. Not 0: the CLI does not compare the
  existing prescription with the one asked for -- ``rx show`` does;
* 130 -- interrupted (nothing printed): a transaction already submitted may have committed.

``--home`` defaults to ``$RXCHAIN_HOME`` or ``<project>/.rxchain``; ``--as ORG:USER`` picks the
wallet. See client/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from client.errors import CommitUnknown, DuplicateRx, RxClientError
from client.fhir.admission import MAX_CONNECTIONS, MAX_PER_SOURCE
from node.errors import RxError
from node.protocol import PROTOCOL_UNSUPPORTED

Handler = Callable[[argparse.Namespace], dict[str, Any]]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_COMMIT_UNKNOWN = 3  # submitted, answer lost: may have committed (detail: tx_id, rx_id)
EXIT_DUPLICATE_RX = 4  # rx issue --rx-id: that prescription exists already (detail: rx_id)


class UsageError(RxClientError):
    """Bad command line."""

    def __init__(self, message: str):
        super().__init__("BAD_ARGUMENTS", message)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so --json errors stay JSON."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a decimal integer in ``low..high`` (else a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value
    parse.__name__ = "integer"
    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds (``nan``/``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0 or value > 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not in 0..86400 seconds")
    return value


_seconds.__name__ = "seconds"


def _idle_seconds(text: str) -> float:
    """An argparse type: how long a peer may send no block while a bounded read awaits one
    (``client.gateway.Gateway.events_idle_s``): seconds as :func:`_seconds`, above 0 (a bound
    of 0 would fail every read at once)."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0 seconds")
    return value


_idle_seconds.__name__ = "seconds"


def _session_options(a: argparse.Namespace) -> dict[str, Any]:
    """The Session options a command's arguments set (``--idle-timeout``)."""
    idle = getattr(a, "idle_timeout", None)
    return {} if idle is None else {"events_idle_s": idle}


def _rx_id_arg(text: str) -> str:
    """An argparse type: an rx id the prescription contract accepts (client.rxid)."""
    from client.rxid import check_rx_id

    try:
        return check_rx_id(text)
    except RxClientError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


_rx_id_arg.__name__ = "rx id"


def _lock_id_arg(text: str) -> str:
    """An argparse type: a lock token as ``prescription.lock`` returns it (its tx id)."""
    if len(text) != 64 or any(ch not in "0123456789abcdef" for ch in text):
        raise argparse.ArgumentTypeError("a lock id is the 64 lower-case hex lock_id rx lock printed")
    return text


_lock_id_arg.__name__ = "lock id"


def _trace_code_arg(text: str) -> str:
    """An argparse type: a box trace code as ``prescription.dispense`` takes it (1-64 of
    ``[A-Za-z0-9-_.]``, the contract's check of an rx id too), refused here rather than after
    the command has locked the prescription (a lock and a release on the ledger for nothing)."""
    from client.rxid import is_rx_id

    if not is_rx_id(text):
        raise argparse.ArgumentTypeError(f"a trace code is 1-64 characters of [A-Za-z0-9-_.], got {text[:80]!r}")
    return text


_trace_code_arg.__name__ = "trace code"


def _base_port_arg(text: str) -> int:
    """An argparse type: a base port in the generator's range (netgen.spec), so --base-port 80 is a
    usage error, not a BAD_CONFIG blaming the consortium file for it."""
    from netgen.spec import BASE_PORT_MAX, BASE_PORT_MIN

    return _int_in(BASE_PORT_MIN, BASE_PORT_MAX)(text)


_base_port_arg.__name__ = "base port"


def _checked(check: Callable[[str], object], name: str, doc: str) -> Callable[[str], str]:
    """An argparse type: the text as given once ``check`` accepts it; its RxClientError is a
    usage error (exit 2) like a missing argument, not a refusal."""
    def arg(text: str) -> str:
        try:
            check(text)
        except RxClientError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
        return text
    arg.__name__ = name
    arg.__doc__ = doc
    return arg


def _parse_as(text: str) -> object:
    from client.wallet import parse_as
    return parse_as(text)


def _parse_drug(text: str) -> object:
    from client.rxops import parse_drug
    return parse_drug(text)


_as_arg = _checked(_parse_as, "ORG:USER", "``ORG:USER`` (client.wallet.parse_as)")
_drug_arg = _checked(_parse_drug, "drug", "``CODE:QTY`` with a positive QTY (client.rxops.parse_drug)")


def _org_or_all(text: str) -> str:
    """An argparse type: an organisation id (1-32 of A-Za-z0-9-_.) or ``all``."""
    if not 1 <= len(text) <= 32 or any(not (ch.isascii() and (ch.isalnum() or ch in "-_.")) for ch in text):
        raise argparse.ArgumentTypeError("an organisation id (1-32 of A-Za-z0-9-_.) or all")
    return text


_org_or_all.__name__ = "organisation"
_COUNT = _int_in(0, 2**63 - 1)


class _GlobalPeer(argparse.Action):
    """The --peer given before the sub-command: ``peer`` as every command reads it (the last one
    given), and each one given in ``global_peers`` (audit list refuses them with its own)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.global_peers = [*getattr(namespace, "global_peers", []), values]


def _common(*, peer: bool = True, top: bool = False) -> argparse.ArgumentParser:
    """Options accepted before and after the sub-command (``peer``: with --peer ORG, once; ``top``:
    the parser before the sub-command, which notes each --peer given there)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print one JSON object")
    p.add_argument("--home", type=Path, default=argparse.SUPPRESS,
                   help="network home (default $RXCHAIN_HOME or <project>/.rxchain)")
    p.add_argument("--as", dest="as_", metavar="ORG:USER", type=_as_arg, default=argparse.SUPPRESS,
                   help="wallet identity to act as")
    if peer:
        p.add_argument("--peer", default=argparse.SUPPRESS, metavar="ORG", action=_GlobalPeer if top else "store",
                       help="peer organisation to connect to (default: your own)")
    return p


# ---------------------------------------------------------------- handlers

def _home(a: argparse.Namespace) -> Path:
    from client.launcher import default_home

    return Path(getattr(a, "home", None) or default_home())


def _require_as(a: argparse.Namespace) -> str:
    value = getattr(a, "as_", None)
    if not value:
        raise UsageError("this command needs --as ORG:USER")
    return str(value)


def _ops(a: argparse.Namespace) -> Any:
    from client.rxops import RxOperations
    from client.session import Session

    session = Session(_home(a), _require_as(a), peer_org=getattr(a, "peer", None), **_session_options(a))
    return RxOperations(session)


def _with_ops(fn: Callable[[Any, argparse.Namespace], dict[str, Any]]) -> Handler:
    def run(a: argparse.Namespace) -> dict[str, Any]:
        ops = _ops(a)
        try:
            return fn(ops, a)
        finally:
            ops.s.close()
    return run


def cmd_netgen(a: argparse.Namespace) -> dict[str, Any]:
    from client.launcher import generate_material

    home = _home(a)
    generated = generate_material(home, a.consortium, a.base_port, complete=True)
    return {"home": str(home), "generated": generated}


def cmd_network_up(a: argparse.Namespace) -> dict[str, Any]:
    from client.bootstrap import DEFAULT_SAMPLE_DATA, Bootstrapper, sample_data_loaded
    from client.launcher import Launcher, generate_material

    home = _home(a)
    say = _progress(a)
    sample = None if a.no_sample_data else (a.sample_data or DEFAULT_SAMPLE_DATA)
    if not a.no_bootstrap and sample is not None and not sample_data_loaded(home):
        # a file it will load is checked before anything is generated, started or deployed
        from netgen.sampledata import read_sample_data

        try:
            read_sample_data(sample)
        except RxError as exc:
            raise RxClientError(exc.reason, exc.message) from None
    generated = generate_material(home, a.consortium, a.base_port)
    if generated:
        say(f"generated network material in {home}")
    launcher = Launcher(home)
    procs = launcher.up(timeout_s=a.timeout, progress=say)
    state: dict[str, Any] = {}
    if not a.no_bootstrap:
        boot = Bootstrapper(home, progress=say)
        try:
            state = boot.ensure(sample, chain_height=launcher.chain_height())
        finally:
            boot.close()
    return {"home": str(home), "generated": generated,
            "nodes": [{"node": p.name, "kind": p.kind, "pid": p.pid} for p in procs],
            "contracts": sorted(state.get("contracts", {})),
            "sample_data": state.get("sample_data", {})}


def cmd_network_status(a: argparse.Namespace) -> dict[str, Any]:
    from client.launcher import Launcher

    rows = Launcher(_home(a)).status()
    return {"nodes": rows, "serving": sum(1 for r in rows if r["serving"]), "total": len(rows)}


def cmd_network_down(a: argparse.Namespace) -> dict[str, Any]:
    from client.launcher import Launcher
    from client.network import load_network

    home = _home(a)
    only = None
    if a.node:
        known = {n.name for n in load_network(home).all_nodes}
        unknown = sorted(set(a.node) - known)
        if unknown:
            raise UsageError(f"network down --node: no node {', '.join(unknown)} in {home} "
                             f"(nodes: {', '.join(sorted(known))})")
        only = set(a.node)
    stopped = Launcher(home).down(grace_s=a.grace, only=only)
    return {"stopped": stopped}


def _issue(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
    from client.rxops import IssueRequest, parse_drug

    if not a.drug:
        raise UsageError("rx issue needs at least one --drug CODE:QTY")
    req = IssueRequest(
        patient=a.patient, diagnosis=a.diagnosis, drugs=[parse_drug(d) for d in a.drug],
        days=a.days, long_rx=a.long, chronic_reason=a.chronic_reason or "",
        valid_days=a.valid_days, pharmacy=a.pharmacy or "", max_fills=a.max_fills,
        fill_interval_days=a.fill_interval_days, first_visit=a.first_visit,
        stability_assessment=a.stability_assessment or "",
        patient_confirmed=a.patient_confirmed, guardian=a.guardian or "",
    )
    res: dict[str, Any] = ops.issue(req, rx_id=a.rx_id)
    return res


def _review(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
    if a.approve == (a.reject is not None):
        raise UsageError("rx review needs exactly one of --approve or --reject REASON")
    res: dict[str, Any] = ops.review(a.rx_id, a.approve, a.reject or "", a.note or "")
    return res


def cmd_rx_dispense(a: argparse.Namespace) -> dict[str, Any]:
    twice = sorted({c for c in a.trace_code if a.trace_code.count(c) > 1})
    if twice:  # one code per box: the contract refuses it TRACE_CODE_REUSED, after the lock
        raise UsageError(f"--trace-code {twice[0]} given twice (one code per box)")
    return _with_ops(_dispense)(a)


def _dispense(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
    if a.lock_id:  # the caller's own lock (rx lock): dispense under it, take none
        res: dict[str, Any] = ops.dispense(a.rx_id, a.trace_code, auto_lock=False, lock_id=a.lock_id)
    else:
        res = ops.dispense(a.rx_id, a.trace_code)
    return res


def _block_range(a: argparse.Namespace, read: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """``read(start)`` from ``--start`` or the ``--checkpoint`` file, which moves to the
    answer's ``next_block`` only once the read is complete (a failed one changes nothing)."""
    from client.events import FileCheckpoint

    cp = FileCheckpoint(a.checkpoint) if a.checkpoint else None
    rep = read(cp.load() if cp is not None else a.start)
    if cp is not None:
        # only a complete read moves the checkpoint, once it is written out (main): a read lost
        # on the way (full disk, closed pipe) is read again by the next run
        next_block = int(rep["next_block"])
        a.after_output = lambda: cp.save(next_block)
    return rep


def _range_args(p: argparse.ArgumentParser, what: str) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--start", type=_COUNT, default=0, help="first block (without --checkpoint)")
    where.add_argument("--checkpoint", type=Path,
                       help=f"file remembering the next block: each {what} goes on where the last ended "
                            f"(saved only once the {what} is complete)")
    p.add_argument("--limit", type=_int_in(1, 100_000), default=10_000, help="blocks read at most")
    _idle_arg(p)


def _idle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--idle-timeout", type=_idle_seconds, metavar="SECONDS",
                   help="fail TIMEOUT when the peer sends no block for this long (default 5; it stalls)")


def _claim_report(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
    insurer = "" if a.insurer is None else (None if a.insurer == "all" else a.insurer)
    rep = _block_range(a, lambda start: dict(ops.claim_report(start, a.limit, insurer)))
    if rep.get("insurer") is None:
        rep["insurer"] = "all"  # as --insurer names it (printed "None" before)
    return rep


def _inbox(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
    return _block_range(a, lambda start: dict(ops.inbox(start, a.limit)))


def _settle(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
    rec: dict[str, Any] = ops.settle(a.rx_id, a.fill)
    keys = ("claim_id", "rx_id", "fill", "medfee_fen", "fund_fen", "account_fen", "cash_fen",
            "deductible_fen", "fulamt_fen", "overlmt_fen", "preself_fen", "inscp_fen",
            "patient_fen", "ratio_bp", "balance_after_fen", "deductible_remaining_fen",
            "cap_remaining_fen", "tx_id", "block")
    return {k: rec.get(k) for k in keys}


def _patient_show(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = ops.patient_status(a.patient, a.year)
    return res


def _simple(method: str, *fields: str) -> Handler:
    def fn(ops: Any, a: argparse.Namespace) -> dict[str, Any]:
        res: dict[str, Any] = getattr(ops, method)(*(getattr(a, f) for f in fields))
        return res
    return _with_ops(fn)


def _ledger_identity(a: argparse.Namespace) -> Any:
    from client.network import load_network
    from client.wallet import load_identity, parse_as

    home = _home(a)
    net = load_network(home)
    if getattr(a, "as_", None):
        org, user = parse_as(a.as_)
    else:
        org, user = (net.orderers[0].org if net.orderers else net.peers[0].org), "admin"
    return home, net, load_identity(home, org, user)


def _peers(net: Any, a: argparse.Namespace) -> list[Any]:
    org = getattr(a, "peer", None)
    return [net.peer_of(org)] if org else list(net.peers)


def _config_peer(net: Any, ident: Any, a: argparse.Namespace) -> str:
    """The peer a config command reads from: --peer, else the caller's organisation's, else the first."""
    org = getattr(a, "peer", None)
    if org:
        return str(net.peer_of(org).target)
    own = [p for p in net.peers if p.org == ident.org]
    return str((own or list(net.peers))[0].target)


def _config_chain(home: Path) -> Any:
    """The verifier of the config in force a config command reads (configtool.ChainConfig),
    anchored in the local genesis block, going on from the prefix the last command verified."""
    from client import configtool
    from node.crypto.signing import Verifier
    from node.genesis import read_genesis

    return configtool.ChainConfig(read_genesis(home / "genesis.block"), Verifier(), home / configtool.CHAIN_STATE)


def _config_confirm(home: Path, net: Any, ident: Any, peer: str) -> Any:
    """The orderers' confirmation of the blocks a config command's peer serves, before they are
    saved (client.follow.orderers_confirm): one peer's word -- a fork one compromised orderer
    signed -- was saved, its CA pinned by the home's sessions and the genuine CA denied."""
    from client.follow import orderers_confirm

    return orderers_confirm(home, net, ident, peer)


def cmd_config_show(a: argparse.Namespace) -> dict[str, Any]:
    from client import configtool

    home, net, ident = _ledger_identity(a)
    peer = _config_peer(net, ident, a)
    chain = _config_chain(home)
    block, config = configtool.config_in_force(ident, peer, chain, _config_confirm(home, net, ident, peer))
    out: dict[str, Any] = {"block": block, "sequence": config.sequence,
                           "protocol_version": config.protocol_version or 1}
    if getattr(a, "json", False):
        out["config"] = configtool.to_json(config)  # whole, certificates included: edit, then propose --from-json
    else:
        out.update(configtool.summary(config))
    # the home's trust state beside it: how full the denylist of rotated-away CAs is, once this
    # command saved the chain (a save it refused DENYLIST_FULL was only a log line, ca_denylist_full)
    out["denylist"] = chain.denylist_fill([o.id for o in config.organizations])
    return out


def _denylist_due(chain: Any, config: Any) -> dict[str, Any]:
    """``{"denylist": ...}``, config show's field, for the other config commands reading the chain
    (propose, sign, submit: each saves it, and a save refused DENYLIST_FULL was only the log line
    ca_denylist_full), when the denylist needs an operator -- a ``warning`` (full, or CAs rotated
    away from it lacks) or a file that cannot be read; ``{}`` otherwise (their output is the update's)."""
    fill = chain.denylist_fill([o.id for o in config.organizations])
    return {"denylist": fill} if fill is not None and ("warning" in fill or "error" in fill) else {}


def cmd_config_propose(a: argparse.Namespace) -> dict[str, Any]:
    from rxchain.v1 import config_pb2

    from client import configtool

    if not a.force and os.path.lexists(a.out):  # (before the chain is read; again when it is written)
        raise RxClientError("FILE_EXISTS", f"{a.out} exists (a proposal other admins may have signed): "
                            "choose another file, or --force to replace it")
    home, net, ident = _ledger_identity(a)
    peer = _config_peer(net, ident, a)
    chain = _config_chain(home)
    _, current = configtool.config_in_force(ident, peer, chain, _config_confirm(home, net, ident, peer))
    wanted: config_pb2.ConsortiumConfig | None = None
    if a.from_json is not None:
        wanted = configtool.read_config_json(a.from_json)

    def edit(new: config_pb2.ConsortiumConfig) -> None:
        if wanted is not None:
            new.CopyFrom(wanted)
        if a.protocol_version is not None:
            new.protocol_version = a.protocol_version

    update = configtool.propose(current, edit)
    configtool.create_update(a.out, update, force=a.force)
    proposed = config_pb2.ConsortiumConfig.FromString(update.config)
    return {"file": str(a.out), "sequence": proposed.sequence, "changes": configtool.changes(current, proposed),
            "signatures": 0, **_denylist_due(chain, current)}


def _config_file(a: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """(identity, network, update, (config in force, proposed config, organisations signed, the
    chain verified)) for sign/submit, checked against the config in force: successor, signatures
    as the orderers check them."""
    from client import configtool
    from client.network import load_network
    from client.wallet import load_identity, parse_as
    from node.crypto.signing import Verifier

    org, user = parse_as(_require_as(a))
    home = _home(a)
    net = load_network(home)
    ident = load_identity(home, org, user)
    update, proposed = configtool.read_update(a.file)
    chain = _config_chain(home)
    peer = _config_peer(net, ident, a)
    _, current = configtool.config_in_force(ident, peer, chain, _config_confirm(home, net, ident, peer))
    configtool.check_successor(current, proposed)
    signed = configtool.check_signatures(update, current, Verifier(), int(time.time() * 1000))
    return ident, net, update, (current, proposed, signed, chain)


def cmd_config_sign(a: argparse.Namespace) -> dict[str, Any]:
    from client import configtool
    from node.crypto.signing import Verifier

    ident, _, update, (current, proposed, _, chain) = _config_file(a)
    # the file read again under its lock: its config must be the one shown, signatures added meanwhile kept
    _, orgs = configtool.sign_file(a.file, update, ident, current, Verifier(), int(time.time() * 1000))
    return {"file": str(a.file), "sequence": proposed.sequence, "changes": configtool.changes(current, proposed),
            "signed_by": orgs, **_denylist_due(chain, current)}


def cmd_config_submit(a: argparse.Namespace) -> dict[str, Any]:
    from client import configtool

    ident, net, update, (current, proposed, signed, chain) = _config_file(a)
    if ident.role != "admin":
        raise RxClientError("WRONG_ROLE", f"{ident.label} is no admin: only admins submit config updates")
    tx_id, raw = configtool.envelope(update, ident, current.consortium_id, int(time.time() * 1000))
    configtool.broadcast(ident, [o.target for o in net.orderers], raw)
    peer = _config_peer(net, ident, a)
    confirm = _config_confirm(_home(a), net, ident, peer)
    block, config = configtool.wait_in_force(lambda: configtool.config_in_force(ident, peer, chain, confirm),
                                             proposed.sequence, timeout_s=a.wait_s, tx_id=tx_id)
    if config.sequence > proposed.sequence:  # a later update went in too: whether this one did, the history tells
        raise CommitUnknown(tx_id, f"the config in force is already sequence {config.sequence} (block {block}); "
                            f"whether this update {tx_id} (sequence {proposed.sequence}) went in before it, the "
                            "config blocks tell")
    if config.SerializeToString(deterministic=True) != update.config:
        raise RxClientError("STALE_CONFIG_UPDATE", f"the config in force is sequence {config.sequence} (block "
                            f"{block}), not this update {tx_id}: another update went in first")
    return {"tx_id": tx_id, "block": block, "sequence": config.sequence,
            "protocol_version": config.protocol_version or 1, "signed_by": signed, **_denylist_due(chain, config)}


def cmd_wallet_rotate_records_key(a: argparse.Namespace) -> dict[str, Any]:
    """After the organisation's records certificate was rotated: keep the wallet's current
    records key in previous-records-keys/ and install the key of the certificate in force -- in
    the newest configuration this home verified (config-chain.json, else the genesis one), which
    is what a session checks the key against (client.wallet.rotate_records_key)."""
    from client.errors import WalletError
    from client.network import load_network
    from client.session import verified_network
    from client.wallet import load_identity, parse_as, rotate_records_key, wallet_dir

    org, user = parse_as(_require_as(a))
    home = _home(a)
    net = load_network(home)
    load_identity(home, org, user)  # the wallet as it is must load (certificate, keys, earlier keys)
    verified = verified_network(home, net)
    try:
        done = rotate_records_key(wallet_dir(home, org, user), a.key, verified.org(org).records_cert_der)
    except WalletError as exc:
        if exc.reason != "RECORDS_KEY_MISMATCH":
            raise
        raise WalletError(exc.reason, f"{exc.message} -- the certificate of {org} in the newest configuration "
                          f"this home verified (sequence {verified.config.sequence}); a rotation committed "
                          "since is verified here by `rxchain config show`") from None
    if not done["changed"]:  # (a rerun after the rotation went through)
        done["note"] = "org-records-key.pem is the key given already: nothing changed"
    return {"wallet": f"{org}:{user}", "config_sequence": verified.config.sequence, **done}


def cmd_ledger_height(a: argparse.Namespace) -> dict[str, Any]:
    from client.admin import AdminClient

    _, net, ident = _ledger_identity(a)
    rows = []
    down: list[str] = []
    for p in _peers(net, a):
        with AdminClient(ident, p.target) as c:
            h = c.status(p.name)
        rows.append({"peer": p.name, "org": p.org, "height": h.height, "serving": h.serving,
                     "last_block_hash": h.last_block_hash, "state_hash": h.state_hash})
        if not h.serving:
            down.append(f"{p.name} ({h.detail or 'not serving'})")
    if rows and len(down) == len(rows):  # no height known: not a ledger of height 0
        raise RxClientError("SERVICE_UNAVAILABLE", "no peer answered: " + ", ".join(down))
    out: dict[str, Any] = {"peers": rows}
    if len(rows) == 1:
        out["height"] = rows[0]["height"]
    else:
        out["height"] = max((r["height"] for r in rows), default=0)
    return out


def _verify_local(a: argparse.Namespace) -> dict[str, Any]:
    """Re-check the block files of this home's peers with node.ledger.verify_ledger."""
    from client.network import load_network
    from node.genesis import read_genesis
    from node.ledger.verify import verify_ledger

    home = _home(a)
    net = load_network(home)
    genesis = read_genesis(home / "genesis.block")
    rows = []
    for p in _peers(net, a):
        rep = verify_ledger(home / "nodes" / p.name / "data", genesis)
        rows.append({"peer": p.name, "ok": rep.ok, "height": rep.height,
                     "state_hash": rep.state_hash, "first_bad_block": rep.first_bad_block,
                     "reason": rep.reason, "message": rep.message})
    ok = all(r["ok"] for r in rows)
    out = {"ok": ok, "local": True, "peers": rows}
    if not ok:
        bad = [f"{r['peer']}: block {r['first_bad_block']} {r['reason']} {r['message']}"
               for r in rows if not r["ok"]]
        raise LedgerInvalid("; ".join(bad), out, [r["reason"] for r in rows if not r["ok"]])
    return out


def cmd_ledger_verify(a: argparse.Namespace) -> dict[str, Any]:
    from client.verify import verify_peer

    if a.local:
        return _verify_local(a)
    home, net, ident = _ledger_identity(a)
    results = [verify_peer(ident, p.name, p.target, home / "genesis.block", net.config)
               for p in _peers(net, a)]
    rows = [{"peer": r.peer, "ok": r.ok, "height": r.height, "txs": r.txs,
             "last_hash": r.last_hash, "state_hash": r.state_hash, "errors": r.errors}
            for r in results]
    # Peers at the same height must agree on the last header hash and the state hash.
    by_height: dict[int, set[tuple[str, str]]] = {}
    for r in results:
        by_height.setdefault(r.height, set()).add((r.last_hash, r.state_hash))
    agree = all(len(v) == 1 for v in by_height.values())
    ok = all(r.ok for r in results) and agree
    out = {"ok": ok, "agree": agree, "peers": rows}
    if not ok:
        bad = [f"{r.peer}: {'; '.join(r.errors[:3])}" for r in results if not r.ok]
        reasons = [_verify_reason(r.errors) for r in results if not r.ok]
        if not agree:
            bad.append("peers at the same height disagree on the block or state hash")
            reasons.append("LEDGER_INVALID")
        raise LedgerInvalid("; ".join(bad), out, reasons)
    return out


def _verify_reason(errors: list[str]) -> str:
    """PROTOCOL_UNSUPPORTED when a peer's only finding is that its chain raised the protocol
    version beyond this release (client.verify), else LEDGER_INVALID."""
    only = len(errors) == 1 and f": {PROTOCOL_UNSUPPORTED}: " in errors[0]
    return PROTOCOL_UNSUPPORTED if only else "LEDGER_INVALID"


class LedgerInvalid(RxClientError):
    """Ledger verification found a problem. Reason LEDGER_INVALID, or PROTOCOL_UNSUPPORTED when
    every finding is a chain this release cannot judge (the consortium raised its protocol
    version: upgrade the client, nothing is known wrong with the ledger)."""

    def __init__(self, message: str, detail: dict[str, Any], reasons: list[str] | None = None):
        unjudged = bool(reasons) and all(r == PROTOCOL_UNSUPPORTED for r in reasons or [])
        super().__init__(PROTOCOL_UNSUPPORTED if unjudged else "LEDGER_INVALID", message)
        self.detail = detail


def _audit_peer(a: argparse.Namespace) -> tuple[Any, Any]:
    """(identity, peer) of an audit command: --peer, else the caller's organisation's peer."""
    _, net, ident = _ledger_identity(a)
    org = getattr(a, "peer", None)
    if isinstance(org, list):  # audit list takes --peer more than once (a merged view)
        org = org[0]
    if org:
        return ident, net.peer_of(org)
    own = [p for p in net.peers if p.org == ident.org]
    if not own:
        raise RxClientError("BAD_ARGUMENTS", f"{ident.org} runs no peer: name one with --peer ORG")
    return ident, own[0]


def _audit_list_peers(a: argparse.Namespace) -> None:
    """BAD_ARGUMENTS for --peer options audit list cannot read as meant: more than one before the
    sub-command (`rxchain --peer A --peer B audit list`: the last alone would be read), or any
    before it with others after (`--peer A audit list --peer B`: those after alone would be)."""
    before = getattr(a, "global_peers", [])
    if len(before) > 1 or (before and isinstance(getattr(a, "peer", None), list)):
        raise RxClientError("BAD_ARGUMENTS", "audit list reads the peers named by --peer AFTER the sub-command: "
                                             "`rxchain audit list --peer A --peer B` (a --peer before `audit list` "
                                             "names one peer and is not merged with others)")


def cmd_audit_list(a: argparse.Namespace) -> dict[str, Any]:
    from client.audit import AuditClient

    _audit_list_peers(a)
    orgs = getattr(a, "peer", None)
    if isinstance(orgs, list) and len(orgs) > 1:
        return _audit_merged(a, orgs)
    ident, peer = _audit_peer(a)
    with AuditClient(ident, peer.target) as c:
        page = c.query(start_id=a.start, by_time=a.since is not None or a.until is not None,
                       start_ms=a.since or 0, end_ms=a.until or 0, record_id=a.rx or "", limit=a.limit)
    return {"peer": peer.name, "records": page.records, "more": page.more, "next_id": page.next_id,
            "next_ms": page.next_ms, "head": page.head}


def _audit_merged(a: argparse.Namespace, orgs: list[str]) -> dict[str, Any]:
    """audit list --peer A --peer B ...: every log read whole (the peers at once), its chain checked
    here, the records merged by time, each with the peer it came from (client.audit.merged; a peer
    still being read when the view fails has its client closed there, every client here)."""
    from client.audit import AuditClient, merged

    if a.start:
        raise RxClientError("BAD_ARGUMENTS", "--start pages one peer's log by id: a merged view goes on from "
                                             "--since (its next_ms)")
    _, net, ident = _ledger_identity(a)
    peers = [net.peer_of(org) for org in orgs]
    clients = [(p.name, AuditClient(ident, p.target)) for p in peers]
    try:
        return merged(clients, since_ms=a.since or 0, until_ms=a.until or 0, record_id=a.rx or "", limit=a.limit,
                      deadline_s=a.deadline_s)
    finally:
        for _, c in clients:
            c.close()


def cmd_audit_verify(a: argparse.Namespace) -> dict[str, Any]:
    from client.audit import AuditClient, Deadline

    anchor = None
    if a.anchor:
        rid, _, digest = a.anchor.partition(":")
        try:
            anchor = (int(rid), bytes.fromhex(digest))
        except ValueError:
            raise RxClientError("BAD_ARGUMENTS", "--anchor is ID:SHA256HEX (a record id and its hash)") from None
        if anchor[0] < 1 or len(anchor[1]) != 32:
            raise RxClientError("BAD_ARGUMENTS", "--anchor is ID:SHA256HEX (a record id and its hash)")
    ident, peer = _audit_peer(a)
    with AuditClient(ident, peer.target) as c:
        out = {"peer": peer.name, **c.verify(start_id=a.start, anchor=anchor, deadline=Deadline(a.deadline_s))}
    if not out["ok"]:
        raise RxClientError("AUDIT_CHAIN_BROKEN", f"{peer.name}: record {out['first_bad_id']} {out['reason']}: "
                                                  f"{out['detail']}")
    if anchor is not None and not out["anchor_checked"]:
        raise RxClientError("AUDIT_ANCHOR_PRUNED", f"{peer.name}: record {anchor[0]} is declared pruned (the oldest "
                                                   f"kept is {out['head']['first_id']}): the anchor proves nothing "
                                                   "-- a rewritten log could declare it so; note a newer one")
    return out


def cmd_events(a: argparse.Namespace) -> dict[str, Any]:
    from client.events import EventListener, FileCheckpoint, MemoryCheckpoint
    from client.session import Session

    cp: Any = FileCheckpoint(a.checkpoint) if a.checkpoint else MemoryCheckpoint(a.start)
    with Session(_home(a), _require_as(a), peer_org=getattr(a, "peer", None), **_session_options(a)) as s:
        listener = EventListener(s.gateway.events, cp, contract=a.contract or "")
        blocks = []
        for b in listener.blocks(follow=False):
            blocks.append({"block": b.block,
                           "txs": [{"tx_id": t, "code": c} for t, c in b.txs],
                           "events": [{"contract": e.contract, "name": e.name, "tx_id": e.tx_id,
                                       "payload": e.payload} for e in b.events]})
            if len(blocks) >= a.limit:
                # leaving the loop closes the listener at its yield, before it records this block
                # as handled: without this the next call (--checkpoint) would hand it out again
                cp.save(b.block + 1)
                break
    return {"blocks": blocks, "next_block": cp.load()}


def cmd_fhir_serve(a: argparse.Namespace) -> dict[str, Any]:
    from client.fhir.server import serve_forever

    follow = {} if a.follow_every is None else {"follow_every_s": a.follow_every}  # (None: the sessions' default)
    serve_forever(_home(a), a.host, a.port, progress=_progress(a), server_node=a.node,
                  max_per_source=a.max_per_source, **follow)
    return {"stopped": True}


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = _common()
    p = _Parser(prog="rxchain", parents=[_common(top=True)],
                description="rxchain: e-prescription and insurance-settlement ledger client")
    groups = p.add_subparsers(dest="group", required=True, parser_class=_Parser)

    def sub(parent: Any, name: str, handler: Handler, help_: str,
            options: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, parents=[options or common], help=help_)
        sp.set_defaults(handler=handler)
        return sp

    ng = sub(groups, "netgen", cmd_netgen, "generate keys, certificates, node configs, genesis")
    ng.add_argument("--consortium", type=Path)
    ng.add_argument("--base-port", type=_base_port_arg, help="first port of a new network (an existing home keeps "
                                                  "the ports its genesis names)")

    net = groups.add_parser("network", help="the local network").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    up = sub(net, "up", cmd_network_up, "generate if missing, start all nodes, bootstrap once")
    up.add_argument("--consortium", type=Path)
    up.add_argument("--base-port", type=_base_port_arg, help="first port if the home is generated now")
    up.add_argument("--timeout", type=_seconds, default=120.0)
    data = up.add_mutually_exclusive_group()  # the README's [--sample-data FILE | --no-sample-data]
    data.add_argument("--sample-data", type=Path)
    data.add_argument("--no-sample-data", action="store_true")
    up.add_argument("--no-bootstrap", action="store_true")
    sub(net, "status", cmd_network_status, "pid, health and height of every node")
    down = sub(net, "down", cmd_network_down, "stop every node (SIGTERM, then SIGKILL)")
    down.add_argument("--grace", type=_seconds, default=10.0)
    down.add_argument("--node", action="append", metavar="NAME",
                      help="stop only this node (repeatable; `network up` starts it again)")

    rx = groups.add_parser("rx", help="prescriptions").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    iss = sub(rx, "issue", _with_ops(_issue), "issue a prescription (doctor)")
    iss.add_argument("--patient", required=True)
    iss.add_argument("--diagnosis", required=True, metavar="ICD10")
    iss.add_argument("--drug", action="append", type=_drug_arg, metavar="CODE:QTY")
    iss.add_argument("--days", type=int, required=True)
    iss.add_argument("--long", action="store_true")
    iss.add_argument("--chronic-reason")
    iss.add_argument("--valid-days", type=int, default=1)
    iss.add_argument("--pharmacy", metavar="ORG")
    iss.add_argument("--max-fills", type=int, default=1)
    iss.add_argument("--fill-interval-days", type=int, default=0)
    iss.add_argument("--first-visit", action="store_true")
    iss.add_argument("--stability-assessment")
    iss.add_argument("--patient-confirmed", action="store_true")
    iss.add_argument("--guardian")
    iss.add_argument("--rx-id", type=_rx_id_arg, metavar="RX_ID",
                     help="issue under this prescription number (1-64 of A-Za-z0-9-_.) instead of a "
                          "fresh one: running it again is then safe (exit 4, DUPLICATE_RX, if it had "
                          "been issued; exit 3 leaves the outcome unknown)")
    rev = sub(rx, "review", _with_ops(_review), "approve or reject (pharmacist)")
    rev.add_argument("rx_id")
    rev.add_argument("--approve", action="store_true")
    rev.add_argument("--reject", metavar="REASON",
                     help="INTERACTION, DOSE, CONTRAINDICATION, NOT_INDICATED, INCOMPLETE or OTHER; "
                          "other text becomes OTHER plus an encrypted note")
    rev.add_argument("--note", help="free text, encrypted under the record key (grant holders read it)")
    rt = sub(rx, "route", _simple("route", "rx_id", "pharmacy"), "route to a pharmacy")
    rt.add_argument("rx_id")
    rt.add_argument("--pharmacy", required=True, metavar="ORG")
    rel = sub(rx, "release", _simple("release", "rx_id", "lock_id"),
              "release a lock (of the caller's pharmacy)")
    rel.add_argument("rx_id")
    rel.add_argument("--lock-id", type=_lock_id_arg, metavar="LOCK_ID",
                     help="release only this lock (the lock_id rx lock printed): refused ALREADY_LOCKED "
                          "when the pharmacy holds another one by now; without it any lock the pharmacy holds")
    dlv = sub(rx, "deliver", _simple("deliver", "rx_id", "fill"),
              "confirm delivery (courier; a hospital pharmacy's pharmacist at its counter)")
    dlv.add_argument("rx_id")
    dlv.add_argument("--fill", type=_int_in(1, 99), default=0,
                     help="the fill handed over (any fill the caller's pharmacy dispensed); without it the "
                          "latest fill of the caller's pharmacy not handed over yet")
    for name, help_ in (("lock", "lock for dispensing (prints its lock_id)"),
                        ("show", "metadata and decrypted content if granted"),
                        ("trace", "the whole trail")):
        sub(rx, name, _simple(name, "rx_id"), help_).add_argument("rx_id")
    dis = sub(rx, "dispense", cmd_rx_dispense,
              "dispense (pharmacist of the routed pharmacy)")
    dis.add_argument("rx_id")
    dis.add_argument("--trace-code", action="append", default=[], type=_trace_code_arg, metavar="CODE")
    dis.add_argument("--lock-id", type=_lock_id_arg, metavar="LOCK_ID",
                     help="dispense under this lock only (the lock_id rx lock printed; nothing is locked "
                          "here): refused ALREADY_LOCKED when the pharmacy holds another one by now; without "
                          "it the command locks, or runs under the lock its pharmacy holds")
    ib = sub(rx, "inbox", _with_ops(_inbox),
             "prescriptions your pharmacy serves: what changed in a range of blocks and what to do")
    _range_args(ib, "read")
    ls = sub(rx, "list", _simple("list_prescriptions", "patient", "start", "limit"),
             "prescription metadata of a patient (or all, for auditors)")
    ls.add_argument("--patient")
    ls.add_argument("--start", default="")
    ls.add_argument("--limit", type=_int_in(1, 200), default=50,  # the contracts' page bound
                    help="prescriptions per page, 1-200 (default 50); `next` starts the following page")
    au = sub(rx, "audit", _simple("audit", "rx_id"),
             "grants, key fetches and denials (patient, hospital admin, auditors)")
    au.add_argument("rx_id")
    for name, help_ in (("consent", "the patient shares the prescription with ORG"),
                        ("withdraw", "the patient withdraws ORG's consent grant")):
        method = "grant_consent" if name == "consent" else "revoke_consent"
        cs = sub(rx, name, _simple(method, "rx_id", "org"), help_)
        cs.add_argument("rx_id")
        cs.add_argument("--org", required=True)
    gk = sub(rx, "grant-claim-key", _simple("grant_claim_key", "rx_id", "to"),
             "hand the claim key to the insurer of later fills after the patient's move (an insurer clerk "
             "holding it, or a doctor of the issuing hospital)")
    gk.add_argument("rx_id", type=_rx_id_arg)
    gk.add_argument("--to", required=True, metavar="ORG", help="the insurer the move named (cover/)")
    rvk = sub(rx, "revoke", _simple("revoke", "rx_id", "reason", "note"), "revoke before dispensing")
    rvk.add_argument("rx_id")
    rvk.add_argument("--reason", required=True,
                     help="PRESCRIBING_ERROR, PATIENT_REQUEST, ADVERSE_REACTION, DUPLICATE, CLINICAL_CHANGE "
                          "or OTHER; other text becomes OTHER plus an encrypted note")
    rvk.add_argument("--note", default="", help="free text, encrypted under the record key")

    cl = groups.add_parser("claim", help="insurance claims").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    st = sub(cl, "settle", _with_ops(_settle), "settle a dispense (insurer clerk)")
    st.add_argument("rx_id")
    st.add_argument("--fill", type=_int_in(0, 2**31 - 1), default=0)
    rv = sub(cl, "reverse", _simple("reverse", "claim_id", "reason", "note"), "reverse a claim")
    rv.add_argument("claim_id")
    rv.add_argument("--reason", default="OTHER",
                    help="BILLING_ERROR, RETURNED_GOODS, DUPLICATE or OTHER; other text becomes OTHER "
                         "plus a note encrypted under the claim key")
    rv.add_argument("--note", default="", help="free text, encrypted under the claim key")
    rp = sub(cl, "report", _with_ops(_claim_report),
             "claims settled and reversed over a range of blocks, with totals (insurer, auditor)")
    _range_args(rp, "report")
    rp.add_argument("--insurer", type=_org_or_all, metavar="ORG|all",
                    help="whose claims (default: your organisation when it is an insurer, else all)")

    pa = groups.add_parser("patient", help="patients").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    ps = sub(pa, "show", _with_ops(_patient_show), "deductible, cap used and account balance")
    ps.add_argument("patient")
    ps.add_argument("--year", type=_int_in(0, 9999), default=0)
    pt = sub(pa, "transfer", _simple("request_transfer", "patient", "to"),
             "ask to move the patient's account to another insurer (the patient, or her insurer)")
    pt.add_argument("patient")
    pt.add_argument("--to", required=True, metavar="ORG", help="the insurer asked")
    pac = sub(pa, "accept-transfer", _simple("accept_transfer", "patient"),
              "take over a patient's account (clerk/admin of the insurer asked)")
    pac.add_argument("patient")
    pcn = sub(pa, "cancel-transfer", _simple("cancel_transfer", "patient"),
              "withdraw (the patient; her insurer its own request) or decline (the insurer asked) a pending move")
    pcn.add_argument("patient")

    rg = groups.add_parser("registry", help="registry upkeep (admins)").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    ri = sub(rg, "reindex", _simple("reindex", "org", "name"),
             "index a registration from before codes and licences were indexed (its organisation's"
             " admin, or a regulator admin)")
    ri.add_argument("org")
    ri.add_argument("--name", default="", metavar="NAME",
                    help="the practitioner (default: the organisation's pharmacy registration)")
    rr = sub(rg, "revoke", _simple("revoke_registration", "org", "name", "reason"),
             "revoke a practitioner's or pharmacy's registration for good (a regulator admin): made"
             " inactive, its code or licence freed, a code holder's sites withdrawn (a suspended"
             " one: LICENCE_REVOKED makes the suspension final, another reason ends the"
             " registration while the suspension's bar stays)")
    rr.add_argument("org")
    rr.add_argument("--name", default="", metavar="NAME",
                    help="the practitioner (default: the organisation's pharmacy registration)")
    rr.add_argument("--reason", required=True,
                    choices=("LICENCE_REVOKED", "LICENCE_SUSPENDED", "ORGANISATION_CLOSED",
                             "DUPLICATE_REGISTRATION", "OTHER"),
                    help="why (a code: no free text reaches the ledger)")
    rs = sub(rg, "reinstate", _simple("reinstate_registration", "org", "name"),
             "lift a suspension (a LICENCE_SUSPENDED revocation; a regulator admin): the code or"
             " licence freed once no other suspension holds it, the registration active again"
             " with its sites still in force (else `reason` says why not; held back by another"
             " suspension only, it waits: the last one lifted reactivates those waiting,"
             " `pending_reactivated`); a registration ended while suspended stays ended")
    rs.add_argument("org")
    rs.add_argument("--name", default="", metavar="NAME",
                    help="the practitioner (default: the organisation's pharmacy registration)")

    lg = groups.add_parser("ledger", help="ledger checks").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    lv = sub(lg, "verify", cmd_ledger_verify, "verify the hash chain and signatures of peers")
    lv.add_argument("--local", action="store_true",
                    help="re-check the local peers' block files and state hash (node.ledger)")
    sub(lg, "height", cmd_ledger_height, "block height of peers")

    pa_audit = groups.add_parser("audit", help="a peer's access-audit log of key releases (its org's admins, "
                                         "regulators)").add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    al = sub(pa_audit, "list", cmd_audit_list,
             "one page of the peer's access-audit records (who got or was refused a prescription's key, when); "
             "with --peer more than once, the peers' logs each verified and merged by time",
             _common(peer=False))  # its own --peer, repeatable
    al.add_argument("--peer", action="append", default=argparse.SUPPRESS, metavar="ORG",
                    help="peer organisation to read (default: your own); more than once: one view of their "
                         "logs, each read whole and its chain checked here, merged by time")
    al.add_argument("--start", type=_COUNT, default=0, help="first record id (a page's next_id)")
    al.add_argument("--since", type=_COUNT, default=None, metavar="MS",
                    help="page by time from this Unix ms (with --start: a page's next_ms and next_id)")
    al.add_argument("--until", type=_COUNT, default=None, metavar="MS", help="only records before this Unix ms")
    al.add_argument("--rx", metavar="RX_ID", help="only this prescription's records")
    al.add_argument("--limit", type=_int_in(1, 1000), default=100)
    al.add_argument("--deadline-s", type=_int_in(1, 86400), default=120, metavar="S",
                    help="a merged view (--peer more than once): read every peer's log within this many seconds "
                         "(default 120; the peers read at once), else AUDIT_DEADLINE_EXCEEDED naming the peers "
                         "not read by then")
    av = sub(pa_audit, "verify", cmd_audit_verify,
             "verify the hash chain of the peer's whole access-audit log (AUDIT_CHAIN_BROKEN if a record was "
             "changed or removed)")
    av.add_argument("--start", type=_COUNT, default=0, help="first record id to check")
    av.add_argument("--anchor", metavar="ID:SHA256",
                    help="a record id and hash noted earlier (e.g. the head's last_id:last_hash): it must still "
                         "hash so")
    av.add_argument("--deadline-s", type=_int_in(1, 86400), default=120, metavar="S",
                    help="verify the log within this many seconds, every page (default 120), else "
                         "AUDIT_DEADLINE_EXCEEDED")

    cf = groups.add_parser("config", help="consortium config updates (admins)").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    sub(cf, "show", cmd_config_show,
        "the consortium config in force (JSON with --json), as the peer's chain shows it: every block "
        "verified from the local genesis.block (hash chain, orderer signatures) and every config "
        "transaction judged as the orderers judge it; a peer whose last_config_block or validation code "
        "says otherwise is LEDGER_INVALID (every config command reads the config in force so); with the "
        "fill of the home's denylist of rotated-away CAs (rotated-cas.json: full, and the CAs it left out)")
    pr = sub(cf, "propose", cmd_config_propose,
             "write a config update proposal (the config in force with a change, sequence + 1) to sign")
    pr.add_argument("--out", type=Path, required=True, metavar="FILE",
                    help="the new proposal file: an existing FILE is FILE_EXISTS (other admins may have "
                         "signed it) unless --force")
    pr.add_argument("--force", action="store_true",
                    help="replace an existing FILE, and the signatures it holds")
    what = pr.add_mutually_exclusive_group(required=True)
    what.add_argument("--protocol-version", type=_int_in(1, 2**32 - 1), metavar="N",
                      help="raise the protocol version (every node must run a release implementing it)")
    what.add_argument("--from-json", type=Path, metavar="CONFIG.json",
                      help="the whole new config, e.g. config show --json edited (sequence is set here)")
    sg = sub(cf, "sign", cmd_config_sign,
             "review and add your organisation's admin signature (under the file's lock, .FILE.lock: "
             "signatures other admins add meanwhile are kept; FILE_CHANGED if its config is no longer "
             "the one shown, FILE_BUSY after 5 s)")
    sg.add_argument("file", type=Path)
    sm = sub(cf, "submit", cmd_config_submit, "send a signed update to the ordering service and wait for it")
    sm.add_argument("file", type=Path)
    sm.add_argument("--wait-s", type=_int_in(1, 600), default=30, help="seconds to wait for a peer to hold it")

    wl = groups.add_parser("wallet", help="your wallet's files").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    rk = sub(wl, "rotate-records-key", cmd_wallet_rotate_records_key,
             "after your organisation's records certificate was rotated (and config show verified it "
             "here): keep the current org-records-key.pem in previous-records-keys/ and install the new "
             "certificate's key")
    rk.add_argument("--key", type=Path, required=True, metavar="NEW.pem",
                    help="the new records certificate's private key (unencrypted P-256 PEM, mode 0600); "
                         "refused unless it is the key of the certificate in force")

    ev = sub(groups, "events", cmd_events, "block and contract events from a checkpoint")
    where = ev.add_mutually_exclusive_group()  # a checkpoint says where to start: --start with it is an error
    where.add_argument("--start", type=_COUNT, default=0, help="first block (without --checkpoint)")
    where.add_argument("--checkpoint", type=Path, help="file remembering the next block")
    ev.add_argument("--contract", help="only this contract's events")
    ev.add_argument("--limit", type=_int_in(1, 100_000), default=1000)
    _idle_arg(ev)

    fh = groups.add_parser("fhir", help="FHIR gateway").add_subparsers(
        dest="cmd", required=True, parser_class=_Parser)
    fs = sub(fh, "serve", cmd_fhir_serve, "serve the FHIR R5 HTTP gateway over mutual TLS")
    fs.add_argument("--host", default="127.0.0.1")
    fs.add_argument("--port", type=_int_in(0, 65535), default=8443)
    fs.add_argument("--node", metavar="PEER",
                    help="the peer whose TLS certificate the gateway presents (default: the first "
                         "peer; an organisation uses its own, e.g. peer.p01)")
    fs.add_argument("--max-per-source", type=_int_in(1, MAX_CONNECTIONS), default=MAX_PER_SOURCE, metavar="N",
                    help=f"connections one source address may hold of the gateway's {MAX_CONNECTIONS} "
                         f"(default {MAX_PER_SOURCE}; all local clients count as one address)")
    fs.add_argument("--follow-every", type=_seconds, metavar="SECONDS",
                    help="follow the config chain from the other nodes before a call once the home's last "
                         "follow is older than this (default 300, client.session.FOLLOW_EVERY_S; 0: only when "
                         "a peer shows a CA the pin lacks): a CA the consortium rotated away from is then refused")
    return p


# ---------------------------------------------------------------- output

def _progress(a: argparse.Namespace) -> Callable[[str], None]:
    stream = sys.stderr if getattr(a, "json", False) else sys.stdout
    return lambda msg: _say(msg, stream)


def _say(text: str, stream: TextIO) -> None:
    """Print one line. A reader that went away (``rxchain network up | head``) loses the rest
    of the output, never the command: a progress line must not abort a start-up half done (and
    stop the nodes it started), nor a result line turn a committed step into a failure."""
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        _GONE.add(id(stream))
        _drop_output(stream)


_GONE: set[int] = set()  # the streams (id) whose reader went away during this run of main


def _drop_output(stream: TextIO) -> None:
    """Send what is still written to ``stream`` (and its flush at exit, which would raise
    again) to /dev/null."""
    with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor: nothing to do
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, stream.fileno())
        finally:
            os.close(fd)


def _clean(value: Any, keep_newlines: bool = False) -> str:
    """Text for a terminal: control and format characters (ESC sequences, bidi overrides, and in
    values newlines that could fake more output lines) that another party could have put in a
    note or event are shown escaped, never interpreted."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if _shown(c) or (keep_newlines and c == "\n") else f"\\u{ord(c):04x}"
                   for c in text)


def _shown(c: str) -> bool:
    """Printable, or a space separator (U+3000 ideographic, U+00A0 no-break: common in Chinese
    records and harmless; ``isprintable`` counts only the ASCII space)."""
    return c.isprintable() or unicodedata.category(c) == "Zs"


def _human(value: Any, out: TextIO, indent: str = "") -> None:
    """The human form of a result (``--json`` prints it as it is): ``key: value`` lines, a
    non-empty list or mapping indented below its key, a list's items as ``- `` lines (a mapping
    item as ``k=v, ...``, a part of it too deep for one line indented below it); no Python
    repr anywhere (see ``_inline``)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list | tuple) and v:
                _say(f"{indent}{_clean(k)}:", out)
                _human(v, out, indent + "  ")
            else:
                _say(f"{indent}{_clean(k)}: {_inline(v)}", out)
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, dict):
                deep = [k for k, v in item.items() if not _one_line(v)]
                flat = ", ".join(f"{_clean(k)}={_inline(v, nested=True)}" for k, v in item.items()
                                 if k not in deep)
                _say(f"{indent}- {flat}" if flat else f"{indent}-" if deep else f"{indent}- -", out)
                for k in deep:
                    _say(f"{indent}  {_clean(k)}:", out)
                    _human(item[k], out, indent + "    ")
            elif _one_line(item):
                _say(f"{indent}- {_inline(item)}", out)
            else:
                _say(f"{indent}-", out)
                _human(item, out, indent + "  ")
    else:
        _say(f"{indent}{_inline(value)}", out)


def _inline(value: Any, nested: bool = False) -> str:
    """A value on one line: None is ``-``, a boolean ``yes``/``no``, a list its items joined
    with ", ", a mapping its ``k=v`` pairs (inside another value, in ``[...]``/``{...}``), an
    empty list or mapping ``-``; text through ``_clean``, in double quotes (JSON) where it would
    read as one of those (``-``, ``yes``, ``no``) or, inside another value, holds ", "."""
    if isinstance(value, dict | list | tuple):
        if not value:
            return "-"
        if isinstance(value, dict):
            text = ", ".join(f"{_clean(k)}={_inline(v, nested=True)}" for k, v in value.items())
            return f"{{{text}}}" if nested else text
        text = ", ".join(_inline(v, nested=True) for v in value)
        return f"[{text}]" if nested else text
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and (value in _LOOKALIKES or (nested and ", " in value)):
        # text that would read as None, a boolean, or (joined with ", ") as more items or
        # fields -- another party's note "ok, status=REVOKED" -- is shown quoted (JSON)
        return _clean(json.dumps(value, ensure_ascii=False))
    return _clean(value)


# how None, an empty list or mapping, and booleans are shown: a string that reads the same is quoted
_LOOKALIKES = frozenset({"-", "yes", "no"})


def _one_line(value: Any) -> bool:
    """Whether ``value`` reads well inline in a list item: not a list or mapping, one of plain
    values, or a mapping whose values are (a list of lists or of mappings is not)."""

    def plain(v: Any) -> bool:
        return not isinstance(v, dict | list | tuple) or not any(
            isinstance(x, dict | list | tuple) for x in (v.values() if isinstance(v, dict) else v))

    return plain(value) or (isinstance(value, dict) and all(plain(v) for v in value.values()))


def _fail(want_json: bool, reason: str, message: str, out: TextIO, err: TextIO) -> int:
    if want_json:
        _say(json.dumps({"error": reason, "message": message}, ensure_ascii=False), out)
    else:
        _say(f"error: {_clean(reason)}: {_clean(message, keep_newlines=True)}", err)
    return EXIT_REFUSED


def _exit_status(exc: RxClientError) -> int:
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, CommitUnknown):
        return EXIT_COMMIT_UNKNOWN
    if isinstance(exc, DuplicateRx):
        return EXIT_DUPLICATE_RX
    return EXIT_REFUSED


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run one command; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    args_list = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in args_list
    _GONE.clear()
    try:
        args = build_parser().parse_args(args_list)
        result = args.handler(args)
    except RxClientError as exc:
        detail = getattr(exc, "detail", None)
        if want_json:
            body: dict[str, Any] = {"error": exc.reason, "message": exc.message}
            if isinstance(detail, dict):
                body["detail"] = detail
            _say(json.dumps(body, ensure_ascii=False), out)
        else:
            _say(f"error: {_clean(exc.reason)}: {_clean(exc.message, keep_newlines=True)}", err)
            if isinstance(detail, dict):
                _human(detail, err)
        return _exit_status(exc)
    except RxError as exc:
        return _fail(want_json, exc.reason, exc.message, out, err)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a file or socket the command needed: a reason, never a traceback
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return _fail(want_json, "IO_ERROR", f"{exc.strerror or type(exc).__name__}{where}", out, err)
    except Exception as exc:  # noqa: BLE001 - a bug must still answer in the documented shape
        return _fail(want_json, "INTERNAL", f"{type(exc).__name__}: {exc}", out, err)
    if want_json:
        _say(json.dumps(result, ensure_ascii=False, sort_keys=True), out)
    else:
        _human(result, out)
    after: Callable[[], None] | None = getattr(args, "after_output", None)
    if after is not None and id(out) in _GONE:  # the result never reached its reader: read it again
        return EXIT_OK
    if after is not None:  # a step for once the result is out (claim report, rx inbox: the checkpoint)
        try:
            out.flush()
            after()
        except RxClientError as exc:  # on stderr: the result already printed is the one JSON object
            print(f"error: {_clean(exc.reason)}: {_clean(exc.message, keep_newlines=True)}", file=err)
            return _exit_status(exc)
        except OSError as exc:
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            print(f"error: IO_ERROR: {_clean(exc.strerror or type(exc).__name__)}{_clean(where)}", file=err)
            return EXIT_REFUSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
