"""CLI parsing, the JSON error shape and exit codes (no network needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from client.cli import build_parser, main
from client.errors import RxClientError
from client.launcher import Launcher, generate_material
from client.rxops import parse_drug


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def _json_error(rc_expected: int, *argv: str) -> dict[str, Any]:
    rc, out, _ = run(*argv)
    assert rc == rc_expected
    lines = out.strip().splitlines()
    assert len(lines) == 1
    body: dict[str, Any] = json.loads(lines[0])
    assert set(body) == {"error", "message"} and body["message"]
    return body


def test_usage_errors_are_json_with_bad_arguments(tmp_path: Path):
    body = _json_error(2, "--json", "rx", "issue", "--patient", "p")
    assert body["error"] == "BAD_ARGUMENTS" and "--diagnosis" in body["message"]
    assert _json_error(2, "--json", "nonsense")["error"] == "BAD_ARGUMENTS"
    body = _json_error(2, "--home", str(tmp_path), "rx", "review", "RX1", "--json")
    assert body["error"] == "BAD_ARGUMENTS"  # --as missing, --json after the sub-command


def test_review_needs_exactly_one_decision(net_home):
    home = str(net_home.home)
    for extra in ([], ["--approve", "--reject", "bad"]):
        body = _json_error(2, "--json", "--home", home, "--as", "p01:pharm-wang", "rx", "review",
                           "RX1", *extra)
        assert body["error"] == "BAD_ARGUMENTS"


def test_missing_network_and_wallet(tmp_path: Path, net_home):
    body = _json_error(1, "--json", "--home", str(tmp_path), "--as", "h01:dr-jiang", "rx", "show",
                       "RX1")
    assert body["error"] == "NO_NETWORK"
    body = _json_error(1, "--json", "--home", str(net_home.home), "--as", "h01:ghost", "rx",
                       "show", "RX1")
    assert body["error"] == "NO_WALLET"
    body = _json_error(2, "--json", "--home", str(net_home.home), "--as", "h01", "rx", "trace",
                       "RX1")
    assert body["error"] == "BAD_ARGUMENTS"  # a usage error, as a missing --as


def test_bad_drug_argument(net_home):
    body = _json_error(2, "--json", "--home", str(net_home.home), "--as", "h01:dr-jiang", "rx",
                       "issue", "--patient", "patient-zhang", "--diagnosis", "I10", "--days", "7",
                       "--drug", "amlodipine")
    assert body["error"] == "BAD_ARGUMENTS"


def test_human_error_goes_to_stderr(tmp_path: Path):
    rc, out, err = run("--home", str(tmp_path), "--as", "h01:x", "rx", "show", "RX1")
    assert rc == 1 and out == "" and err.startswith("error: NO_NETWORK:")


def test_parse_drug():
    assert (parse_drug("amlodipine:2").drug, parse_drug("amlodipine:2").qty) == ("amlodipine", 2)
    assert parse_drug("XC08CAA001A001010100001:3").qty == 3
    for bad in ("amlodipine", ":2", "amlodipine:x", "amlodipine:0"):
        with pytest.raises(RxClientError):
            parse_drug(bad)


def test_parser_knows_every_public_command():
    p = build_parser()
    for argv in (["network", "up", "--consortium", "c.yaml", "--home", "h"],
                 ["network", "status"], ["network", "down"],
                 ["--as", "h01:dr-jiang", "rx", "issue", "--patient", "p", "--diagnosis", "I10",
                  "--drug", "amlodipine:2", "--drug", "benidipine:2", "--days", "28", "--long",
                  "--chronic-reason", "x", "--valid-days", "2", "--pharmacy", "p01",
                  "--max-fills", "2", "--fill-interval-days", "28"],
                 ["rx", "review", "R", "--approve"], ["rx", "review", "R", "--reject", "why"],
                 ["rx", "route", "R", "--pharmacy", "p02"], ["rx", "lock", "R"],
                 ["rx", "release", "R"], ["rx", "release", "R", "--lock-id", "ab" * 32],
                 ["rx", "dispense", "R", "--trace-code", "A"],
                 ["rx", "deliver", "R"], ["rx", "revoke", "R", "--reason", "x"],
                 ["rx", "show", "R"], ["rx", "trace", "R"], ["claim", "settle", "R"],
                 ["claim", "reverse", "C"], ["patient", "show", "patient-zhang"],
                 ["patient", "transfer", "patient-zhang", "--to", "ins02"],
                 ["patient", "accept-transfer", "patient-zhang"],
                 ["patient", "cancel-transfer", "patient-zhang"],
                 ["--as", "h01:dr-jiang", "wallet", "rotate-records-key", "--key", "new.pem"],
                 ["ledger", "verify", "--peer", "h01"], ["ledger", "height"],
                 ["netgen"], ["fhir", "serve", "--port", "0"]):
        args = p.parse_args(argv)
        assert callable(args.handler)


def test_netgen_with_base_port_and_launcher_status_when_stopped(tmp_path: Path):
    home = tmp_path / "home"
    consortium = Path(__file__).resolve().parents[2] / "network-config" / "consortium.yaml"
    raw = yaml.safe_load(consortium.read_text())
    raw["organizations"] = [o for o in raw["organizations"] if o["id"] in ("h01", "ins01")]
    small = tmp_path / "c.yaml"
    small.write_text(yaml.safe_dump(raw))
    rc, out, _ = run("--json", "--home", str(home), "netgen", "--consortium", str(small),
                     "--base-port", "31000")
    assert rc == 0 and json.loads(out)["generated"] is True
    net = yaml.safe_load((home / "network.yaml").read_text())
    assert [n["port"] for n in net["orderers"] + net["peers"]] == [31000, 31001, 31002]
    assert generate_material(home) is False  # idempotent: existing material is kept
    rows = Launcher(home).status()
    assert [r["serving"] for r in rows] == [False, False, False]
    assert all("last_log" not in r for r in rows)  # never started: no log
    stopped = net["peers"][0]["name"]
    log = Launcher(home).log_path(stopped)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text('{"msg": "started"}\nrxchain peer: PROTOCOL_UNSUPPORTED: peer.h01: the consortium runs '
                   'protocol version 2\n')
    by_node = {r["node"]: r for r in Launcher(home).status()}
    assert by_node[stopped]["last_log"].startswith("rxchain peer: PROTOCOL_UNSUPPORTED")
    assert Launcher(home).down(grace_s=0.1) == []


def test_network_up_reads_the_consortium_file_strictly(tmp_path: Path):
    """The launcher's path to netgen (``network up``, ``netgen``) refuses what the generator's
    own reader refuses: a key given twice used to let the last one win silently."""
    consortium = Path(__file__).resolve().parents[2] / "network-config" / "consortium.yaml"
    doubled = tmp_path / "c.yaml"
    doubled.write_text(consortium.read_text() + "\nconsortium_id: other\n")
    home = tmp_path / "home"
    with pytest.raises(RxClientError) as exc:
        generate_material(home, doubled)
    assert exc.value.reason == "BAD_CONFIG" and "duplicate key 'consortium_id'" in exc.value.message
    assert not home.exists()
    rc, _, err = run("--home", str(home), "netgen", "--consortium", str(doubled))
    assert rc == 1 and "BAD_CONFIG" in err and "duplicate key" in err  # the CLI: 1, refused


def test_rx_deliver_names_the_fill_only_when_given():
    """``rx deliver RX --fill N`` hands over fill N (any fill the caller's pharmacy dispensed);
    without it the contract's default (the latest of its fills not handed over) -- the call
    carries no ``fill`` then, as before, so a contract that takes none still serves it."""
    from types import SimpleNamespace

    from client.gateway import SubmitResult
    from client.rxops import RxOperations

    p = build_parser()
    assert p.parse_args(["rx", "deliver", "R", "--fill", "2"]).fill == 2
    assert p.parse_args(["rx", "deliver", "R"]).fill == 0
    for bad in ("0", "-1", "x"):
        with pytest.raises(RxClientError, match="--fill"):
            p.parse_args(["rx", "deliver", "R", "--fill", bad])
    sent: list[dict[str, object]] = []

    def submit(contract: str, fn: str, args: dict[str, object], transient: object = None) -> SubmitResult:
        sent.append({"fn": f"{contract}.{fn}", **args})
        return SubmitResult("ab" * 32, "VALID", 7, {"fill": args.get("fill", 3)})

    ops = RxOperations(SimpleNamespace(gateway=SimpleNamespace(submit=submit)))  # type: ignore[arg-type]
    assert ops.deliver("R")["fill"] == 3 and ops.deliver("R", 2)["fill"] == 2
    assert sent == [{"fn": "prescription.deliver", "rx_id": "R"},
                    {"fn": "prescription.deliver", "rx_id": "R", "fill": 2}]


def test_registry_reindex_sends_one_registration(monkeypatch: pytest.MonkeyPatch):
    """``registry reindex ORG [--name NAME]`` submits ``registry.reindex`` (its two arguments,
    the pharmacy registration without ``--name``) and prints the contract's answer."""
    from types import SimpleNamespace

    from client import cli
    from client.gateway import SubmitResult
    from client.rxops import RxOperations

    p = build_parser()
    assert (p.parse_args(["registry", "reindex", "h01", "--name", "dr-li"]).name,
            p.parse_args(["registry", "reindex", "p03"]).name) == ("dr-li", "")
    sent: list[tuple[str, str, dict[str, object]]] = []

    def submit(contract: str, fn: str, args: dict[str, object], transient: object = None) -> SubmitResult:
        sent.append((contract, fn, args))
        return SubmitResult("ab" * 32, "VALID", 7, {"changed": True, **args})

    ops = RxOperations(SimpleNamespace(gateway=SimpleNamespace(submit=submit)))  # type: ignore[arg-type]
    assert ops.reindex("h01", "dr-li") == {"tx_id": "ab" * 32, "block": 7, "changed": True,
                                           "org": "h01", "name": "dr-li"}
    assert ops.reindex("p03")["name"] == ""
    assert sent == [("registry", "reindex", {"org": "h01", "name": "dr-li"}),
                    ("registry", "reindex", {"org": "p03", "name": ""})]
    sent.clear()
    monkeypatch.setattr(cli, "_ops", lambda a: SimpleNamespace(reindex=ops.reindex, s=SimpleNamespace(close=lambda: None)))
    rc, out, _ = run("--json", "--as", "reg01:admin", "registry", "reindex", "h01", "--name", "dr-li")
    assert rc == 0 and json.loads(out)["changed"] is True
    assert sent == [("registry", "reindex", {"org": "h01", "name": "dr-li"})]


def test_registry_revoke_sends_one_registration_and_a_reason_code(monkeypatch: pytest.MonkeyPatch):
    """``registry revoke ORG [--name NAME] --reason CODE`` submits
    ``registry.revoke_registration``; a reason that is no code is refused before anything is
    sent (free text never reaches the ledger)."""
    from types import SimpleNamespace

    from client import cli
    from client.gateway import SubmitResult
    from client.rxops import RxOperations

    sent: list[tuple[str, str, dict[str, object]]] = []

    def submit(contract: str, fn: str, args: dict[str, object], transient: object = None) -> SubmitResult:
        sent.append((contract, fn, args))
        return SubmitResult("ab" * 32, "VALID", 7, {"changed": True, **args})

    ops = RxOperations(SimpleNamespace(gateway=SimpleNamespace(submit=submit)))  # type: ignore[arg-type]
    assert ops.revoke_registration("p03", reason="ORGANISATION_CLOSED")["name"] == ""
    assert sent == [("registry", "revoke_registration",
                     {"org": "p03", "name": "", "reason": "ORGANISATION_CLOSED"})]
    sent.clear()
    monkeypatch.setattr(cli, "_ops", lambda a: SimpleNamespace(
        revoke_registration=ops.revoke_registration, s=SimpleNamespace(close=lambda: None)))
    rc, out, _ = run("--json", "--as", "reg01:admin", "registry", "revoke", "h01", "--name",
                     "dr-li", "--reason", "DUPLICATE_REGISTRATION")
    assert rc == 0 and json.loads(out)["changed"] is True
    assert sent == [("registry", "revoke_registration",
                     {"org": "h01", "name": "dr-li", "reason": "DUPLICATE_REGISTRATION"})]
    sent.clear()
    rc, _, _ = run("--json", "--as", "reg01:admin", "registry", "revoke", "h01", "--name", "dr-li",
                   "--reason", "misconduct")
    assert rc != 0 and sent == []


def test_registry_reinstate_sends_one_registration(monkeypatch: pytest.MonkeyPatch):
    """``registry reinstate ORG [--name NAME]`` submits ``registry.reinstate_registration``
    (no reason: only a suspension is lifted, the contract decides)."""
    from types import SimpleNamespace

    from client import cli
    from client.gateway import SubmitResult
    from client.rxops import RxOperations

    sent: list[tuple[str, str, dict[str, object]]] = []

    def submit(contract: str, fn: str, args: dict[str, object], transient: object = None) -> SubmitResult:
        sent.append((contract, fn, args))
        return SubmitResult("ab" * 32, "VALID", 7, {"changed": True, **args})

    ops = RxOperations(SimpleNamespace(gateway=SimpleNamespace(submit=submit)))  # type: ignore[arg-type]
    assert ops.reinstate_registration("p03")["name"] == ""
    assert sent == [("registry", "reinstate_registration", {"org": "p03", "name": ""})]
    sent.clear()
    monkeypatch.setattr(cli, "_ops", lambda a: SimpleNamespace(
        reinstate_registration=ops.reinstate_registration, s=SimpleNamespace(close=lambda: None)))
    rc, out, _ = run("--json", "--as", "reg01:admin", "registry", "reinstate", "h01", "--name",
                     "dr-li")
    assert rc == 0 and json.loads(out)["changed"] is True
    assert sent == [("registry", "reinstate_registration", {"org": "h01", "name": "dr-li"})]
    sent.clear()
    rc, _, _ = run("--json", "--as", "reg01:admin", "registry", "reinstate", "h01", "--name",
                   "dr-li", "--reason", "OTHER")
    assert rc != 0 and sent == []
