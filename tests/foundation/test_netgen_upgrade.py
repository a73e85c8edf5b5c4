"""Second look at the strict readers from an operator's side: an existing home (a previous
release's layout, a running network's secret), the files the project writes for itself, and
refusals that name the file they are about."""

from __future__ import annotations

import copy
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from netgen import generate
from netgen.__main__ import main as netgen_main

from client.cli import main as cli_main
from client.errors import RxClientError
from client.launcher import generate_material
from node.config import load_node_config
from node.errors import RxError
from tests.harness.nodeyaml import edited_node_yaml

from .conftest import FIXED_NOW, small_consortium
from .test_netgen_hardening import _digest_tree


def _with_patient() -> dict[str, Any]:
    raw = copy.deepcopy(small_consortium())
    raw["organizations"][0]["users"].append({"name": "patient-zhang", "role": "patient"})
    return raw


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A generated home whose consortium has a patient (her certificate name derives from
    the consortium secret)."""
    out = tmp_path / "home"
    generate(_with_patient(), out, clock=lambda: FIXED_NOW)
    return out


def test_a_home_laid_out_by_the_previous_release_is_completed_unchanged(home: Path) -> None:
    # the previous release created directories with the umask's mode and public files with
    # 0666 under umask 0 (private files were already 0600): an upgrade must take it as it is
    for path in [home, *home.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        elif path.stat().st_mode & 0o077:  # a public file (private ones are 0600 in both)
            path.chmod(0o666)
    before = _digest_tree(home)
    generate(_with_patient(), home, clock=lambda: FIXED_NOW)
    assert _digest_tree(home) == before
    for node_yaml in sorted(home.glob("nodes/*/node.yaml")):
        assert load_node_config(node_yaml).name == node_yaml.parent.name


def test_a_lost_consortium_secret_of_an_existing_network_is_refused(home: Path) -> None:
    (home / "consortium-secret").unlink()
    before = _digest_tree(home)
    with pytest.raises(RxError) as err:
        generate(_with_patient(), home, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG"
    assert "consortium-secret is missing" in err.value.message and "restore it" in err.value.message
    assert _digest_tree(home) == before  # no new secret, no patient binding rewritten


def test_another_consortium_secret_in_an_existing_network_is_refused(home: Path) -> None:
    secret = home / "consortium-secret"
    secret.write_text("ab" * 32)
    secret.chmod(0o600)
    before = _digest_tree(home)
    with pytest.raises(RxError) as err:
        generate(_with_patient(), home, clock=lambda: FIXED_NOW)
    assert err.value.reason == "BAD_CONFIG"
    assert "is not the secret" in err.value.message and "patient-zhang" in err.value.message
    assert _digest_tree(home) == before


def test_a_new_home_still_gets_a_secret_and_its_own_secret_is_kept(tmp_path: Path, home: Path) -> None:
    secret = (home / "consortium-secret").read_bytes()
    generate(_with_patient(), home, clock=lambda: FIXED_NOW)  # its own secret: accepted
    assert (home / "consortium-secret").read_bytes() == secret
    assert stat.S_IMODE((home / "consortium-secret").stat().st_mode) == 0o600


def _typo_file(tmp_path: Path) -> Path:
    raw = small_consortium()
    raw["batch_timout_ms"] = 5
    path = tmp_path / "my-consortium.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_netgen_names_the_consortium_file_whose_content_it_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _typo_file(tmp_path)
    assert netgen_main(["--home", str(tmp_path / "h"), "--consortium", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"consortium file {path}: top level: unknown keys ['batch_timout_ms']" in err
    assert "Traceback" not in err and not (tmp_path / "h").exists()


def test_netgen_names_the_consortium_file_whose_genesis_rules_fail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = small_consortium()
    raw["policies"]["config_update"] = "h01.admin"  # one organisation alone: refused by the config rules
    path = tmp_path / "one-org.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert netgen_main(["--home", str(tmp_path / "h"), "--consortium", str(path)]) == 2
    assert f"consortium file {path}: " in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_the_launcher_names_the_consortium_file_whose_content_it_refuses(tmp_path: Path) -> None:
    path = _typo_file(tmp_path)
    with pytest.raises(RxClientError) as err:
        generate_material(tmp_path / "h", path, base_port=None)
    assert err.value.reason == "BAD_CONFIG" and str(path) in err.value.message
    assert not (tmp_path / "h").exists()


def test_network_up_refuses_bad_sample_data_before_generating_or_starting_anything(tmp_path: Path) -> None:
    sample = tmp_path / "my-sample.yaml"
    sample.write_text("practitioner: []\n")  # a misspelt section
    home = tmp_path / "h"
    out, err = io.StringIO(), io.StringIO()
    # a missing consortium file: a regression fails on it, never launching nodes from this test
    rc = cli_main(["--json", "--home", str(home), "network", "up", "--consortium", str(tmp_path / "none.yaml"),
                   "--sample-data", str(sample)], out=out, err=err)
    assert rc == 1
    body = json.loads(out.getvalue())
    assert body["error"] == "BAD_CONFIG" and str(sample) in body["message"], body
    assert "unknown sections ['practitioner']" in body["message"]
    assert not home.exists()


def test_network_up_does_not_recheck_sample_data_it_loaded_already(tmp_path: Path) -> None:
    sample = tmp_path / "old-sample.yaml"
    sample.write_text("practitioner: []\n")
    home = tmp_path / "h"
    home.mkdir()
    (home / "bootstrap.json").write_text('{"contracts": {}, "sample_data": {"patients": 1}}')
    out, err = io.StringIO(), io.StringIO()
    rc = cli_main(["--json", "--home", str(home), "network", "up", "--consortium", str(tmp_path / "none.yaml"),
                   "--sample-data", str(sample)], out=out, err=err)
    body = json.loads(out.getvalue())
    # it goes on to the consortium file (missing here): the loaded file is never read again
    assert rc == 1 and "none.yaml" in body["message"] and str(sample) not in body["message"], body


def test_a_huge_bad_integer_in_node_yaml_is_reported_short(home: Path, tmp_path: Path) -> None:
    path = edited_node_yaml(home / "nodes" / "peer.h01", tmp_path, lambda d: d.update(port="9" * 100_000))
    with pytest.raises(RxError) as err:
        load_node_config(path)
    assert err.value.reason == "BAD_CONFIG" and f"{path}: port must be an integer" in err.value.message
    assert len(err.value.message) < 1000
