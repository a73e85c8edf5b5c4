"""Red-team review of what operators feed by hand: the consortium file (netgen) and node.yaml.

Bad input is BAD_CONFIG naming the cause (exit 2 from the binaries, never a traceback) and
changes nothing: no partial home, no key rewritten, no other network's home completed.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import importlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from netgen import generate, load_spec
from netgen.__main__ import main as netgen_main
from netgen.generate import GeneratedNetwork

from node.config import load_node_config
from node.errors import RxError
from node.genesis import config_from_genesis, make_genesis, read_genesis
from node.yamlfile import MAX_CONFIG_BYTES
from tests.harness.nodeyaml import edited_node_yaml

from .conftest import FIXED_NOW, small_consortium

ROOT = Path(__file__).resolve().parents[2]
Mutation = Callable[[dict[str, Any]], Any]


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mutated(fn: Mutation) -> dict[str, Any]:
    raw = copy.deepcopy(small_consortium())
    fn(raw)
    return raw


def _org(raw: dict[str, Any], org_id: str) -> dict[str, Any]:
    org: dict[str, Any] = next(o for o in raw["organizations"] if o["id"] == org_id)
    return org


def _many_peers(raw: dict[str, Any]) -> None:
    raw["organizations"] += [{"id": f"c{i:03d}", "name": "Clinic", "kind": "hospital", "level": "community",
                              "peer": True} for i in range(200)]
    raw["policies"] = {"config_update": "OutOf(2, h01.admin, ins01.admin)",
                       "lifecycle": "OutOf(2, h01.admin, ins01.admin)",
                       "lifecycle_endorsement": "OutOf(2, h01.peer, h02.peer)"}


# (mutation of the consortium document, fragment of the BAD_CONFIG message)
BAD_DOCUMENTS: list[tuple[str, Mutation, str]] = [
    ("typo-top", lambda r: r.update(batch_timout_ms=5), "top level: unknown keys ['batch_timout_ms']"),
    ("typo-org", lambda r: _org(r, "p01").update(peers=True), "organisation p01: unknown keys ['peers']"),
    ("typo-user", lambda r: _org(r, "h01")["users"][0].update(attr={"a": "b"}), "user dr-jiang: unknown keys"),
    ("peer-string", lambda r: _org(r, "p01").update(peer="false"), "peer must be true or false"),
    ("orderer-string", lambda r: _org(r, "ins01").update(orderer="yes"), "orderer must be true or false"),
    ("users-int", lambda r: _org(r, "p01").update(users=5), "users must be a list"),
    ("name-list", lambda r: _org(r, "p01").update(name=["a", "b"]), "name must be a non-empty string"),
    ("name-huge", lambda r: _org(r, "p01").update(name="N" * 10_000), "at most 256 characters"),
    ("attr-list", lambda r: _org(r, "h01")["users"][0]["attrs"].update(practice_years=[1, 2]),
     "values strings or integers"),
    ("attr-bool", lambda r: _org(r, "h01")["users"][0]["attrs"].update(internet=True),
     "values strings or integers"),
    # a certificate larger than limits.max_envelope_bytes: every transaction of the user refused
    ("attr-huge", lambda r: _org(r, "h01")["users"][0]["attrs"].update(dr_code="D" * 1_200_000),
     "values at most 256"),
    ("attr-name-empty", lambda r: _org(r, "h01")["users"][0]["attrs"].update({"": "x"}), "names are 1 to 64"),
    ("attrs-many", lambda r: _org(r, "h01")["users"][0]["attrs"].update({f"a{i}": "x" for i in range(40)}),
     "at most 32 attrs"),
    ("host-bad", lambda r: r.update(host="not a host!"), "must be an IP address or a DNS host name"),
    ("host-list", lambda r: r.update(host=["127.0.0.1"]), "must be an IP address or a DNS host name"),
    ("host-wildcard", lambda r: r.update(host="0.0.0.0"), "cannot be a wildcard"),
    ("host-ipv6", lambda r: r.update(host="::1"), "IPv6 literals are not supported"),
    ("host-numeric-tld", lambda r: r.update(host="10.0.0"), "must be an IP address or a DNS host name"),
    ("batch-huge", lambda r: r["batch"].update(max_tx_count=1 << 40), "batch.max_tx_count must be an integer in"),
    ("gas-beyond-uint64", lambda r: r["limits"].update(gas_limit=1 << 70), "limits.gas_limit must be an integer in"),
    ("org-id-leading-dash", lambda r: _org(r, "p01").update(id="-p01"), "organizations[2].id '-p01'"),
    ("org-id-trailing-dash", lambda r: _org(r, "p01").update(id="p01-"), "organizations[2].id 'p01-'"),
    ("org-id-too-long", lambda r: _org(r, "p01").update(id="p" * 57), "must be 1 to 56"),
    ("org-id-path-too-long", lambda r: _org(r, "p01").update(id="p" * 300), "must be 1 to 56"),
    ("user-too-long", lambda r: _org(r, "h01")["users"][0].update(name="d" * 65), "must be 1 to 64"),
    ("user-leading-dash", lambda r: _org(r, "h01")["users"][0].update(name="-dr"), "user name '-dr'"),
    ("consortium-id-too-long", lambda r: r.update(consortium_id="c" * 65), "consortium_id"),
    ("ports-collide", _many_peers, "205 nodes: at most 200"),
]


@pytest.mark.parametrize(("mutation", "fragment"), [b[1:] for b in BAD_DOCUMENTS], ids=[b[0] for b in BAD_DOCUMENTS])
def test_bad_consortium_documents_are_bad_config_and_write_nothing(tmp_path: Path, mutation: Mutation,
                                                                   fragment: str) -> None:
    with pytest.raises(RxError) as err:
        generate(_mutated(mutation), tmp_path / "net", clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG" and fragment in err.value.message, err.value.message
    assert len(err.value.message) < 600
    assert not (tmp_path / "net").exists()


def _laughs() -> list[Any]:
    """What yaml.safe_load makes of a "billion laughs" document: 10**8 shared references."""
    bomb: list[Any] = ["lol"]
    for _ in range(8):
        bomb = [bomb] * 10
    return bomb


@pytest.mark.parametrize("where", ["level", "attrs", "policy", "id"])
def test_a_shared_structure_in_a_loaded_document_is_never_walked(tmp_path: Path, where: str) -> None:
    """The launcher passes a document it loaded itself: a bad value is named by its type
    (the old messages and str() conversions expanded it for minutes)."""
    def plant(r: dict[str, Any]) -> None:
        if where == "level":
            _org(r, "h01")["level"] = _laughs()
        elif where == "attrs":
            _org(r, "h01")["users"][0]["attrs"]["practice_years"] = _laughs()
        elif where == "policy":
            r["policies"]["lifecycle"] = _laughs()
        else:
            _org(r, "p01")["id"] = _laughs()
    with pytest.raises(RxError) as err:
        generate(_mutated(plant), tmp_path / "net", clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG" and "a list" in err.value.message, err.value.message
    assert not (tmp_path / "net").exists()


def _consortium_text() -> str:
    return yaml.safe_dump(small_consortium(), sort_keys=False)


LAUGHS = "l0: &l0 [lol]\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))

# (consortium file bytes, fragment of the BAD_CONFIG message)
BAD_FILES: list[tuple[str, bytes, str]] = [
    ("duplicate-top-key", (_consortium_text() + "batch: {max_tx_count: 99}\n").encode(), "found duplicate key 'batch'"),
    ("duplicate-nested-key", _consortium_text().replace("  timeout_ms: 20\n", "  timeout_ms: 20\n  timeout_ms: 900\n")
     .encode(), "found duplicate key 'timeout_ms'"),
    ("billion-laughs", (LAUGHS + _consortium_text().replace("level: tertiary", "level: *l8")).encode(),
     "aliases are not allowed"),
    ("not-utf8", _consortium_text().encode().replace(b"Pharmacy", b"Pharm\xffacy"), "not UTF-8 text (byte 0xff"),
    ("utf16", _consortium_text().encode("utf-16"), "not UTF-8 text"),
    ("too-large", (_consortium_text() + "#" + "x" * MAX_CONFIG_BYTES + "\n").encode(), "larger than"),
    ("deep-nesting", ("x: " + "[" * 100_000 + "]" * 100_000 + "\n").encode(), "nested too deeply"),
    ("python-tag", (_consortium_text() + "x: !!python/object/apply:os.getcwd []\n").encode(),
     "could not determine a constructor"),
]


@pytest.mark.parametrize(("content", "fragment"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_consortium_files_are_bad_config(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "consortium.yaml"
    path.write_bytes(content)
    with pytest.raises(RxError) as err:
        load_spec(path)
    assert err.value.reason == "BAD_CONFIG" and fragment in err.value.message, err.value.message
    assert str(path) in err.value.message and "\n" not in err.value.message


def test_an_anchor_without_alias_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "consortium.yaml"
    path.write_text(_consortium_text().replace("batch:", "batch: &batch", 1))
    assert load_spec(path).batch["max_tx_count"] == 10


def test_the_cli_exits_2_in_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"consortium_id: \xff\n")
    assert netgen_main(["--home", str(tmp_path / "net"), "--consortium", str(bad)]) == 2
    assert "BAD_CONFIG" in capsys.readouterr().err and not (tmp_path / "net").exists()
    home_is_a_file = tmp_path / "file"
    home_is_a_file.write_text("x")
    good = tmp_path / "good.yaml"
    good.write_text(_consortium_text())
    assert netgen_main(["--home", str(home_is_a_file), "--consortium", str(good)]) == 2
    assert "is not a directory" in capsys.readouterr().err and home_is_a_file.read_text() == "x"


def test_the_cli_never_prints_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(_consortium_text().replace("- name: nurse-liu", "- name: nurse-liu\n      attrs: 5"))
    proc = subprocess.run([sys.executable, "-m", "netgen", "--home", str(tmp_path / "net"), "--consortium",
                           str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: BAD_CONFIG")
    assert not (tmp_path / "net").exists()


def test_another_consortium_in_an_existing_home_is_refused(tmp_path: Path) -> None:
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    before = _digest_tree(tmp_path)
    moved_and_other = _mutated(lambda r: r.update(base_port=22050, consortium_id="other-rx"))
    for other in (moved_and_other, _mutated(lambda r: _org(r, "p01").update(peer=False)),
                  _mutated(lambda r: r.update(consortium_id="other-rx"))):
        with pytest.raises(RxError) as err:
            generate(other, tmp_path, clock=lambda: FIXED_NOW)
        assert err.value.reason == "BAD_CONFIG" and "already holds the network 'test-rx'" in err.value.message
    assert _digest_tree(tmp_path) == before
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)  # the same one still completes
    assert _digest_tree(tmp_path) == before


def test_a_home_generated_on_other_ports_is_completed_on_its_own_ports(tmp_path: Path) -> None:
    """A home made with ``--base-port`` (or before the file's base_port changed): a plain
    re-run with the file completes it on the ports its genesis names, never other ports."""
    generate(small_consortium(base_port=22050), tmp_path, clock=lambda: FIXED_NOW)
    before = _digest_tree(tmp_path)
    node_yaml = tmp_path / "nodes" / "peer.h02" / "node.yaml"
    node_yaml.unlink()
    good = tmp_path.parent / f"{tmp_path.name}-consortium.yaml"
    good.write_text(yaml.safe_dump(small_consortium()))  # the file's own base_port: 21050
    assert netgen_main(["--home", str(tmp_path), "--consortium", str(good)]) == 0
    assert _digest_tree(tmp_path) == before  # node.yaml written again, on the home's ports
    assert load_node_config(node_yaml).port == 22052


def test_only_a_whole_network_moved_is_completed_on_its_genesis_ports(tmp_path: Path) -> None:
    """The ports of an existing home are adopted only from a genesis that reads and whose
    nodes all sit base_port + i: a genesis that does not verify, or one where a single node
    moved, leaves the file's ports, and the re-run is refused with nothing written."""
    generate(small_consortium(base_port=22050), tmp_path, clock=lambda: FIXED_NOW)
    genesis = tmp_path / "genesis.block"
    good = genesis.read_bytes()
    config = config_from_genesis(read_genesis(genesis))
    config.peers[-1].port += 7  # one node elsewhere: no shift of the file's base_port gives it
    moved_one = make_genesis(config, 1).SerializeToString()
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 1
    (tmp_path / "nodes" / "peer.h02" / "node.yaml").unlink()
    for block, why in ((bytes(corrupt), "genesis"), (moved_one, "differs from the consortium file in orderers, peers")):
        genesis.write_bytes(block)
        before = _digest_tree(tmp_path)
        with pytest.raises(RxError) as err:
            generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
        assert err.value.reason == "BAD_CONFIG" and why in err.value.message
        assert _digest_tree(tmp_path) == before
    genesis.write_bytes(good)
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    assert load_node_config(tmp_path / "nodes" / "peer.h02" / "node.yaml").port == 22052


def test_an_existing_private_file_others_can_read_is_refused(tmp_path: Path) -> None:
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    key = tmp_path / "orgs" / "h01" / "users" / "dr-jiang" / "key.pem"
    key.chmod(0o644)
    before = _digest_tree(tmp_path)
    with pytest.raises(RxError) as err:
        generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG" and str(key) in err.value.message and "mode 644" in err.value.message
    assert _digest_tree(tmp_path) == before and stat.S_IMODE(key.stat().st_mode) == 0o644


@pytest.mark.parametrize(("lost", "cert_too"), [
    ("orgs/h01/ca.key", False), ("orgs/h01/ca.key", True), ("orgs/p01/records/key.pem", True),
    ("nodes/orderer.ins01/key.pem", True), ("orgs/h01/users/dr-jiang/key.pem", False),
])
def test_a_lost_key_whose_certificate_remains_is_refused(tmp_path: Path, lost: str, cert_too: bool) -> None:
    """A new key was generated under the old certificate (a CA key that no longer matches its
    ca.pem, a wallet whose cert.pem is another key's, a node the genesis pins to another key):
    a broken network, silently. ``cert_too``: the certificate file is lost as well, only the
    genesis still carries it."""
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    (tmp_path / lost).unlink()
    if cert_too:
        (tmp_path / lost).with_name("ca.pem" if lost.endswith("ca.key") else "cert.pem").unlink()
    before = _digest_tree(tmp_path)
    with pytest.raises(RxError) as err:
        generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG" and f"{tmp_path / lost} is missing" in err.value.message
    assert _digest_tree(tmp_path) == before


@pytest.mark.parametrize(("key", "other", "cert_too"), [
    ("orgs/h01/ca.key", "orgs/h02/ca.key", False),
    ("orgs/h01/users/dr-jiang/key.pem", "orgs/h02/users/admin/key.pem", False),
    ("nodes/peer.h01/key.pem", "nodes/peer.h02/key.pem", True),
])
def test_a_key_that_is_not_its_certificates_is_refused(tmp_path: Path, key: str, other: str,
                                                       cert_too: bool) -> None:
    """A key restored from the wrong backup was kept beside its certificate: a CA key that is
    not its ca.pem's issued a new user's certificate chaining to no CA, silently. ``cert_too``:
    the certificate file is lost as well, only the genesis still carries it."""
    raw = _mutated(lambda r: _org(r, "h01").setdefault("users", []).append({"name": "dr-new", "role": "doctor"}))
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    (tmp_path / key).write_bytes((tmp_path / other).read_bytes())
    if cert_too:
        (tmp_path / key).with_name("cert.pem").unlink()
    before = _digest_tree(tmp_path)
    with pytest.raises(RxError) as err:
        generate(raw, tmp_path, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG" and f"{tmp_path / key} is not the key" in err.value.message
    assert _digest_tree(tmp_path) == before


def test_a_lost_certificate_the_genesis_carries_is_restored_from_it(tmp_path: Path) -> None:
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    before = _digest_tree(tmp_path)
    for cert in ("nodes/orderer.ins01/cert.pem", "nodes/peer.h01/cert.pem", "orgs/p01/ca.pem",
                 "orgs/p01/records/cert.pem"):
        (tmp_path / cert).unlink()
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    assert _digest_tree(tmp_path) == before


def test_an_existing_key_that_does_not_parse_is_bad_config(tmp_path: Path) -> None:
    generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    key = tmp_path / "nodes" / "peer.h01" / "key.pem"
    key.write_bytes(b"not a key")
    (tmp_path / "nodes" / "peer.h01" / "cert.pem").unlink()
    with pytest.raises(RxError) as err:
        generate(small_consortium(), tmp_path, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG" and str(key) in err.value.message


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


PRIVATE_NAMES = {"ca.key", "key.pem", "consortium-secret", "org-records-key.pem", "patient-binding"}


def test_modes_under_a_permissive_umask(tmp_path: Path, umask_zero: None) -> None:
    """Directories 0700, private files 0600, the rest 0644 even under umask 0 (pathlib's
    mkdir(parents=True) and write_bytes gave 0777 directories and 0666 node.yaml files)."""
    raw = _mutated(lambda r: _org(r, "h01")["users"].append({"name": "pt-1", "role": "patient"}))
    generate(raw, tmp_path / "net", clock=lambda: FIXED_NOW)
    paths = [tmp_path / "net", *(tmp_path / "net").rglob("*")]
    assert any(p.name == "patient-binding" for p in paths) and any(p.name == "org-records-key.pem" for p in paths)
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        want = 0o700 if p.is_dir() else 0o600 if p.name in PRIVATE_NAMES else 0o644
        assert mode == want, f"{p}: {mode:o}"


def test_private_files_are_durable_before_anything_depends_on_them(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key (and the consortium secret, records key copies, patient bindings) is fsynced,
    and so is its directory entry, before the next file is written: a power loss no longer
    leaves an empty or vanished CA key beside the certificates issued under it (written but not
    synced, a key could be lost while the certificate written after it survived)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    raw = _mutated(lambda r: _org(r, "h01")["users"].append({"name": "pt-1", "role": "patient"}))
    generate(raw, tmp_path / "net", clock=lambda: FIXED_NOW)
    private = [p for p in (tmp_path / "net").rglob("*") if p.name in PRIVATE_NAMES]
    assert {p.name for p in private} == PRIVATE_NAMES
    for p in private:
        assert f"{p}.tmp" in synced, p  # its content, under the temporary name it is renamed from
        assert str(p.parent) in synced[synced.index(f"{p}.tmp"):], p  # then the rename


@pytest.mark.parametrize("existing_empty_home", [False, True])
def test_a_write_failure_leaves_no_partial_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                existing_empty_home: bool) -> None:
    gen = importlib.import_module("netgen.generate")  # the package's `generate` attribute is the function

    def disk_full(*_: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    home = tmp_path / "deep" / "net"
    if existing_empty_home:
        home.mkdir(parents=True)
    monkeypatch.setattr(gen, "make_genesis", disk_full)
    with pytest.raises(RxError) as err:
        generate(small_consortium(), home, clock=lambda: FIXED_NOW)
    assert err.value.reason == "IO_ERROR" and "No space left" in err.value.message
    if existing_empty_home:
        assert home.is_dir() and not any(home.iterdir())
    else:
        assert not (tmp_path / "deep").exists()


# ------------------------------------------------------------------ node.yaml

def _append(text: str) -> Mutation:
    return lambda d: d.__setitem__("__append__", text)


def _node_yaml(network: GeneratedNetwork, tmp_path: Path, change: Mutation) -> Path:
    appended: list[str] = []

    def apply(doc: dict[str, Any]) -> None:
        change(doc)
        appended.append(doc.pop("__append__", ""))

    path = edited_node_yaml(network.home / "nodes" / "peer.h01", tmp_path, apply)
    with path.open("a") as f:
        f.write(appended[0])
    return path


BAD_NODE_YAML: list[tuple[str, Mutation, str]] = [
    ("duplicate-key", _append("port: 9999\n"), "found duplicate key 'port'"),
    ("typo", lambda d: d.update(fsycn=False), "unknown keys: fsycn"),
    ("fsync-string", lambda d: d.update(fsync="false"), "fsync must be true or false"),
    ("log-level", lambda d: d.update(log_level="VERBOSE"), "log_level must be one of"),
    ("name-list", lambda d: d.update(name=["peer.h01"]), "name must be a non-empty string"),
    ("host-list", lambda d: d.update(host=["127.0.0.1"]), "host must be a non-empty string"),
    ("data-dir-list", lambda d: d.update(data_dir=["data"]), "data_dir must be a non-empty string"),
    ("endpoint-twice", lambda d: d["orderers"].append(dict(d["orderers"][0])), "'orderer.ins01' is listed twice"),
    ("endpoint-name-list", lambda d: d["orderers"][0].update(name=["x"]), "orderers[0].name must be"),
    ("endpoint-typo", lambda d: d["orderers"][0].update(prot=1), "orderers[0] needs name, org, host, port"),
    ("metrics-is-grpc-port", lambda d: d.update(metrics_port=d["port"]), "is the gRPC port"),
    ("alias", _append("x: &a [1]\ny: *a\n"), "aliases are not allowed"),
]


@pytest.mark.parametrize(("change", "fragment"), [b[1:] for b in BAD_NODE_YAML], ids=[b[0] for b in BAD_NODE_YAML])
def test_bad_node_yaml_is_bad_config(network: GeneratedNetwork, tmp_path: Path, change: Mutation,
                                     fragment: str) -> None:
    path = _node_yaml(network, tmp_path, change)
    with pytest.raises(RxError) as err:
        load_node_config(path)
    assert err.value.reason == "BAD_CONFIG" and fragment in err.value.message, err.value.message
    assert str(path) in err.value.message


def test_a_non_utf8_node_yaml_is_bad_config(network: GeneratedNetwork, tmp_path: Path) -> None:
    path = _node_yaml(network, tmp_path, lambda d: None)
    path.write_bytes(path.read_bytes() + b"# \xff\n")
    with pytest.raises(RxError) as err:
        load_node_config(path)
    assert err.value.reason == "BAD_CONFIG" and "not UTF-8" in err.value.message


def test_the_generated_node_yaml_still_loads(network: GeneratedNetwork) -> None:
    for node in network.nodes:
        cfg = load_node_config(network.node_config_path(node.name))
        assert (cfg.fsync, cfg.log_level, cfg.port, cfg.metrics_port) == (True, "INFO", node.port, node.metrics_port)


def test_the_peer_binary_refuses_an_unknown_log_level_in_one_line(network: GeneratedNetwork, tmp_path: Path) -> None:
    """It passed the loader, then crashed in logging.basicConfig with a traceback (exit 1)."""
    path = _node_yaml(network, tmp_path, lambda d: d.update(log_level="VERBOSE"))
    proc = subprocess.run([sys.executable, "-m", "node.peer", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "log_level" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------ sample-data.yaml

SAMPLE_DATA = ROOT / "network-config" / "sample-data.yaml"


def test_the_sample_data_file_passes_unchanged() -> None:
    from netgen.sampledata import read_sample_data
    assert read_sample_data(SAMPLE_DATA) == yaml.safe_load(SAMPLE_DATA.read_text())


def _patient(d: dict[str, Any]) -> dict[str, Any]:
    patient: dict[str, Any] = d["patients"][0]
    return patient


BAD_SAMPLE_DATA: list[tuple[str, Mutation, str]] = [
    ("section-typo", lambda d: d.update(practitioner=d.pop("practitioners")), "unknown sections ['practitioner']"),
    ("field-typo", lambda d: d["practitioners"][0].update(licence_activ=True), "practitioners[0]: unknown fields"),
    ("missing-field", lambda d: d["formulary"][2].pop("price_fen"), "formulary[2]: missing price_fen"),
    ("bool-as-string", lambda d: d["pharmacies"][1].update(active="yes"), "pharmacies[1].active must be true or false"),
    ("int-as-bool", lambda d: d["policies"][0].update(cap_fen=True), "policies[0].cap_fen must be an integer"),
    ("nested-map", lambda d: d["policies"][0]["ratio_bp"].update(community="85%"), "ratio_bp.community must be"),
    ("diagnosis", lambda d: _patient(d)["diagnoses"][0].update(physical="true"), "diagnoses[0].physical must be"),
    ("user", lambda d: _patient(d)["user"].pop("org"), "patients[0].user: missing org"),
    ("id-number-type", lambda d: _patient(d).update(id_number=500103195803124428), "id_number must be a string"),
    ("section-not-list", lambda d: d.update(pharmacies={"org": "p01"}), "pharmacies must be a list"),
    ("version", lambda d: d.update(version=2), "version must be 1"),
    # one handle twice: the directory would resolve it to the last, bootstrap bind both to one user
    ("patient-twice", lambda d: d["patients"].append({**copy.deepcopy(_patient(d)), "id_number": "500103195803120000"}),
     "patients[2].name: patient 'patient-zhang' is listed twice"),
]


@pytest.mark.parametrize(("change", "fragment"), [b[1:] for b in BAD_SAMPLE_DATA], ids=[b[0] for b in BAD_SAMPLE_DATA])
def test_bad_sample_data_is_bad_config_before_anything_is_submitted(tmp_path: Path, change: Mutation,
                                                                    fragment: str) -> None:
    from netgen.sampledata import read_sample_data
    doc = yaml.safe_load(SAMPLE_DATA.read_text())
    change(doc)
    path = tmp_path / "sample-data.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(RxError) as err:
        read_sample_data(path)
    assert err.value.reason == "BAD_CONFIG" and fragment in err.value.message, err.value.message
    assert "500103195803124428" not in err.value.message  # never a patient's value


@pytest.mark.parametrize(("content", "fragment"), [
    (lambda: SAMPLE_DATA.read_bytes() + b"patients: []\n", "found duplicate key 'patients'"),
    (lambda: SAMPLE_DATA.read_bytes().replace(b"Zhang Guilan", b"Zhang \xff"), "not UTF-8"),
    (lambda: b"a: &a [1]\nversion: 1\nb: *a\n", "aliases are not allowed"),
])
def test_bad_sample_data_files_are_bad_config(tmp_path: Path, content: Callable[[], bytes], fragment: str) -> None:
    from netgen.sampledata import read_sample_data
    path = tmp_path / "sample-data.yaml"
    path.write_bytes(content())
    with pytest.raises(RxError) as err:
        read_sample_data(path)
    assert err.value.reason == "BAD_CONFIG" and fragment in err.value.message, err.value.message
