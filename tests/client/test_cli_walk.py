"""What a new operator met following client/README.md: repeated `events --checkpoint` calls
handing a block out twice, output cut by a closed pipe, `netgen` over an existing home and
command-line mistakes answered with exit status 1 (no network needed: stand-ins)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import grpc
import pytest
from rxchain.v1 import services_pb2

import client.session
from client.cli import main
from client.errors import RxClientError
from tests.client.test_events import _block


class _EventsSession:
    """Stands in for a Session whose peer holds blocks 0..top."""

    top = 9
    starts: ClassVar[list[int]] = []

    def __init__(self, home: Path, as_: str, peer_org: str | None = None):
        self.gateway = self

    def __enter__(self) -> _EventsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def events(self, start: int, contract: str, follow: bool) -> Iterator[services_pb2.EventsResponse]:
        type(self).starts.append(start)
        for n in range(start, self.top + 1):
            yield _block(n)


def _events(tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--json", "--home", str(tmp_path), "--as", "h01:dr-jiang", "events", *argv], out=out, err=err)
    assert "Traceback" not in err.getvalue()
    return rc, json.loads(out.getvalue())


@pytest.fixture
def events_peer(monkeypatch: pytest.MonkeyPatch) -> type[_EventsSession]:
    _EventsSession.starts = []
    monkeypatch.setattr(client.session, "Session", _EventsSession)
    return _EventsSession


def test_events_with_a_checkpoint_resume_after_the_last_block_printed(tmp_path: Path,
                                                                     events_peer: type[_EventsSession]) -> None:
    """`--limit` used to stop before the last printed block was checkpointed: every call
    printed the previous call's last block again and named it as `next_block`."""
    cp = tmp_path / "cp"
    seen: list[int] = []
    for _ in range(3):
        rc, body = _events(tmp_path, "--checkpoint", str(cp), "--limit", "2")
        assert rc == 0
        blocks = [b["block"] for b in body["blocks"]]
        assert body["next_block"] == blocks[-1] + 1
        seen += blocks
    assert seen == [0, 1, 2, 3, 4, 5]  # each block once, in order
    assert cp.read_text().strip() == "6"
    rc, body = _events(tmp_path, "--checkpoint", str(cp))  # the rest, up to the peer's height
    assert [b["block"] for b in body["blocks"]] == [6, 7, 8, 9] and body["next_block"] == 10


def test_events_from_a_start_block_name_the_block_after_the_last_printed(
        tmp_path: Path, events_peer: type[_EventsSession]) -> None:
    rc, body = _events(tmp_path, "--start", "4", "--limit", "2")
    assert rc == 0 and [b["block"] for b in body["blocks"]] == [4, 5] and body["next_block"] == 6


def test_events_start_and_checkpoint_together_are_a_usage_error(
        tmp_path: Path, events_peer: type[_EventsSession]) -> None:
    """The README gives them as alternatives; --start used to be ignored silently."""
    cp = tmp_path / "cp"
    cp.write_text("7\n")
    rc, body = _events(tmp_path, "--start", "2", "--checkpoint", str(cp))
    assert (rc, body["error"]) == (2, "BAD_ARGUMENTS") and "--start" in body["message"]
    assert events_peer.starts == [] and cp.read_text() == "7\n"


class _ClosedPipe(io.StringIO):
    """stdout whose reader went away (`rxchain ... | head`)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_output_to_a_closed_pipe_keeps_the_outcome_and_status(tmp_path: Path,
                                                              events_peer: type[_EventsSession]) -> None:
    """`rxchain claim settle ... | head -5` used to end in a BrokenPipeError traceback with exit
    status 1 ("did not commit") after the step had committed."""
    cp = tmp_path / "cp"
    for json_flag in ((), ("--json",)):
        err = io.StringIO()
        rc = main([*json_flag, "--home", str(tmp_path), "--as", "h01:dr-jiang", "events", "--checkpoint",
                   str(cp), "--limit", "3"], out=_ClosedPipe(), err=err)
        assert rc == 0 and err.getvalue() == ""
    assert cp.read_text().strip() == "6"  # both calls were carried out


def test_progress_lines_to_a_closed_pipe_do_not_abort_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """`rxchain network up | head` raised at a progress line, and the launcher then stopped the
    nodes it had just started."""
    import argparse

    from client.cli import _progress

    for as_json, stream in ((False, "stdout"), (True, "stderr")):
        monkeypatch.setattr(sys, stream, _ClosedPipe())
        say = _progress(argparse.Namespace(json=as_json))
        say("started 3 orderers; waiting for them")
        say("  orderer.ins01 serving (1/3)")


def test_a_reader_gone_before_the_output_is_no_traceback(net_home: Any) -> None:
    """End to end: the CLI's stdout is a pipe whose reader has closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "client.cli", "--home", str(net_home.home), "network",
                               "status"], check=False, stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""


def _netgen(home: Path, consortium: Path) -> tuple[int, dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--json", "--home", str(home), "netgen", "--consortium", str(consortium)], out=out, err=err)
    assert "Traceback" not in err.getvalue()
    return rc, json.loads(out.getvalue())


def test_netgen_over_an_existing_home_checks_it_as_python_m_netgen_does(tmp_path: Path) -> None:
    """`rxchain netgen` answered `generated: false` over any existing home, so none of the
    checks the README promises for a second run (another consortium, a readable key) ran."""
    import yaml

    from tests.client.conftest import client_consortium

    home, spec = tmp_path / "home", tmp_path / "consortium.yaml"
    spec.write_text(yaml.safe_dump(client_consortium()))
    assert _netgen(home, spec) == (0, {"home": str(home), "generated": True})
    assert _netgen(home, spec) == (0, {"home": str(home), "generated": False})  # idempotent

    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**client_consortium(), "consortium_id": "another-net"}))
    genesis = (home / "genesis.block").read_bytes()
    rc, body = _netgen(home, other)
    assert (rc, body["error"]) == (1, "BAD_CONFIG") and "consortium_id" in body["message"]
    assert (home / "genesis.block").read_bytes() == genesis

    key = home / "nodes" / "peer.h01" / "key.pem"
    key.chmod(0o644)
    rc, body = _netgen(home, spec)
    assert (rc, body["error"]) == (1, "BAD_CONFIG") and "key.pem" in body["message"]


@pytest.mark.parametrize("argv", [
    ("--as", "h01", "rx", "show", "RX1"),                # no user: exit 1 while a missing --as was 2
    ("--as", "h01:../admin", "rx", "show", "RX1"),
    ("--as", "h01:dr-jiang", "rx", "issue", "--patient", "p", "--diagnosis", "I10", "--days", "7",
     "--drug", "amlodipine:0"),
    ("--as", "h01:dr-jiang", "rx", "issue", "--patient", "p", "--diagnosis", "I10", "--days", "7",
     "--drug", "amlodipine"),
    ("--as", "h01:dr-jiang", "rx", "issue", "--patient", "p", "--diagnosis", "I10", "--days", "7",
     "--drug", "amlodipine:two"),
])
def test_a_malformed_identity_or_drug_line_is_a_usage_error(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """BAD_ARGUMENTS of the command line is exit status 2 ("fix the command line"), never 1."""
    out = io.StringIO()
    rc = main(["--json", "--home", str(tmp_path), *argv], out=out, err=io.StringIO())
    body = json.loads(out.getvalue())
    assert (rc, body["error"]) == (2, "BAD_ARGUMENTS")
    assert list(tmp_path.iterdir()) == []  # nothing looked up, nothing written


def test_fhir_serve_on_a_taken_port_names_it(net_home: Any) -> None:
    """Was IO_ERROR "Address already in use", naming neither the address nor the port."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = io.StringIO()
        rc = main(["--json", "--home", str(net_home.home), "fhir", "serve", "--port", str(port)], out=out,
                  err=io.StringIO())
    body = json.loads(out.getvalue())
    assert (rc, body["error"]) == (1, "PORT_IN_USE") and f"127.0.0.1:{port}" in body["message"]


class _DeviceSession:
    """A patient's device: her wallet and binding, no consortium secret, no HIS directory."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.gateway = self
        self.directory = self
        self.net = self

    @property
    def secret(self) -> bytes:
        raise RxClientError("NO_SECRET", "this needs the consortium secret")

    def resolve(self, ref: str) -> Any:
        raise RxClientError("UNKNOWN_PATIENT", "no patient in the local directory")

    def evaluate(self, contract: str, fn: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((contract, fn, args))
        return {"prescriptions": [], "next": ""} if fn == "patient_prescriptions" else {"year": 2026}


def test_a_patient_without_the_secret_names_herself_by_her_pseudonym() -> None:
    """On her own device (README: no consortium-secret, her patient-binding) a patient could
    neither list her prescriptions nor read her account: both wanted a handle or an ID number,
    turned into the pseudonym with the secret she does not hold."""
    from client.rxops import RxOperations

    me = "cb815fca5f8de7a593da3a6db474cffafc902f215e5705bfe0ef71f4fd6f6c8f"
    s = _DeviceSession()
    ops = RxOperations.__new__(RxOperations)
    ops.s = cast(Any, s)
    assert ops.list_prescriptions(patient=me)["prescriptions"] == []
    assert ops.patient_status(me)["patient"] == me
    assert [(fn, a.get("patient", a.get("pseudonym"))) for _, fn, a in s.calls] == [
        ("patient_prescriptions", me), ("patient_status", me)]
    with pytest.raises(RxClientError) as exc:  # anything else still goes through the directory
        ops.patient_status(me.upper())
    assert exc.value.reason == "UNKNOWN_PATIENT"


def test_catch_up_wait_is_bounded_by_elapsed_time_not_by_pauses() -> None:
    """Before a call the SDK waits (README: at most 15 s) for its peer to reach the last block
    seen; only the 50 ms pauses were counted, so a peer answering Status slowly (up to the 3 s
    timeout each) held every call for up to 300 x 3 s."""
    import time

    from client.gateway import Gateway

    class SlowAdmin:
        timeouts: ClassVar[list[float]] = []

        def Status(self, request: services_pb2.StatusRequest, timeout: float) -> services_pb2.StatusResponse:
            self.timeouts.append(timeout)
            time.sleep(min(timeout, 0.2))
            return services_pb2.StatusResponse(height=3)  # behind block 5, for good

    gw = Gateway.__new__(Gateway)
    gw._admin = cast(Any, SlowAdmin())
    gw._peer_height = 0
    gw._sleep = time.sleep
    t0 = time.monotonic()
    assert gw.wait_for_block(5, timeout_s=0.5) is False
    assert time.monotonic() - t0 < 1.2  # was ~2.5 s: 10 pauses of 50 ms, each after a 0.2 s call
    assert max(SlowAdmin.timeouts) <= 0.5


class _Unreachable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"


def _gateway_seen_block(status: Any, sleeps: list[float]) -> Any:
    from client.gateway import Gateway, RetryPolicy

    gw = Gateway.__new__(Gateway)
    gw._admin = status
    gw._peer_height = 0
    gw._sleep = sleeps.append  # the retry delays are recorded, not slept
    gw._retry = RetryPolicy()
    gw.last_block = 5  # this client saw block 5 committed
    gw._min_block = None
    gw._catch_up_timeout_s = 1.0
    gw._on_commit = None
    return gw


def test_a_down_peer_answers_service_unavailable_after_the_retries_not_the_catch_up_wait() -> None:
    """A call to a peer that is down took ~18 s to fail: the read-your-writes wait asked the
    peer's Status until its 15 s bound, then the call retried. Unreachable now ends the wait
    at once and the call's own retries (3.1 s of backoff) decide; the call is never made."""
    import time

    class DownAdmin:
        calls = 0

        def Status(self, request: services_pb2.StatusRequest, timeout: float) -> services_pb2.StatusResponse:
            self.calls += 1
            raise _Unreachable()

    made: list[int] = []
    sleeps: list[float] = []
    admin = DownAdmin()
    gw = _gateway_seen_block(admin, sleeps)
    t0 = time.monotonic()
    with pytest.raises(RxClientError) as exc:
        gw._call(lambda: made.append(1))
    assert exc.value.reason == "SERVICE_UNAVAILABLE"
    assert time.monotonic() - t0 < 0.5  # was the whole catch-up bound (here 1 s; 15 s by default)
    assert made == []  # nothing asked of a peer not known to hold block 5
    assert sleeps == gw._retry.delays() and admin.calls == len(sleeps) + 1


def test_a_peer_back_after_a_restart_is_caught_up_before_the_call() -> None:
    """The retry after an unreachable peer waits again for the block this client saw: a
    restarted peer that still lags is not read."""
    heights: list[int | None] = [None, None, 3, 4, 6]

    class RestartingAdmin:
        def Status(self, request: services_pb2.StatusRequest, timeout: float) -> services_pb2.StatusResponse:
            h = heights.pop(0)
            if h is None:
                raise _Unreachable()
            return services_pb2.StatusResponse(height=h)

    seen: list[int] = []
    sleeps: list[float] = []
    gw = _gateway_seen_block(RestartingAdmin(), sleeps)

    def read() -> str:
        seen.append(gw._peer_height)
        return "read"

    assert gw._call(read) == "read"
    assert seen == [6] and heights == []


@pytest.mark.parametrize("argv", [
    ("netgen", "--base-port", "80"),
    ("netgen", "--base-port", "64000"),
    ("network", "up", "--base-port", "1023", "--no-bootstrap"),
])
def test_base_port_outside_the_generators_range_is_a_usage_error(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """--base-port 80 passed the parser (1..65535) and came back BAD_CONFIG, exit 1, blaming
    the consortium file for a number it does not hold."""
    out = io.StringIO()
    rc = main(["--json", "--home", str(tmp_path / "home"), *argv], out=out, err=io.StringIO())
    body = json.loads(out.getvalue())
    assert (rc, body["error"]) == (2, "BAD_ARGUMENTS") and "1024..60000" in body["message"]
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize(("codes", "shown"), [
    (("8312345678901234567", "8312345678901234567"), "given twice"),
    (("bad code!",), "1-64 characters"),
    (("x" * 65,), "1-64 characters"),
])
def test_dispense_trace_codes_are_checked_before_anything_is_locked(tmp_path: Path, codes: tuple[str, ...],
                                                                    shown: str) -> None:
    """The contract refuses these (TRACE_CODE_REUSED, BAD_TRANSIENT) only after the CLI has
    locked the prescription: a lock and a release on the ledger for a typo. The FHIR gateway
    checks them first (400 FHIR_INVALID); so does the CLI now, as a usage error."""
    out = io.StringIO()
    argv = ["--json", "--home", str(tmp_path), "--as", "p01:pharm-wang", "rx", "dispense", "RX1"]
    for code in codes:
        argv += ["--trace-code", code]
    rc = main(argv, out=out, err=io.StringIO())
    body = json.loads(out.getvalue())
    assert (rc, body["error"]) == (2, "BAD_ARGUMENTS") and shown in body["message"]


def test_ledger_height_with_no_peer_answering_is_a_failure_not_height_0(net_home: Any) -> None:
    """With the peer asked down, `ledger height --peer h01` answered `height: 0` with status 0
    (a ledger always holds its genesis block: 0 is no height)."""
    out = io.StringIO()
    rc = main(["--json", "--home", str(net_home.home), "--as", "h01:dr-jiang", "ledger", "height", "--peer", "h01"],
              out=out, err=io.StringIO())  # net_home: material only, no node runs
    body = json.loads(out.getvalue())
    assert (rc, body["error"]) == (1, "SERVICE_UNAVAILABLE") and "peer.h01" in body["message"]


def test_rx_list_limit_beyond_a_page_is_a_usage_error(tmp_path: Path) -> None:
    """The parser took 1..100000 and the contract answered BAD_ARGUMENTS (exit 1) above 200."""
    out = io.StringIO()
    rc = main(["--json", "--home", str(tmp_path), "--as", "reg01:auditor-1", "rx", "list", "--limit", "201"],
              out=out, err=io.StringIO())
    body = json.loads(out.getvalue())
    assert (rc, body["error"]) == (2, "BAD_ARGUMENTS") and "1..200" in body["message"]


def test_a_last_block_file_that_cannot_be_written_does_not_fail_a_committed_step(tmp_path: Path) -> None:
    """The read-your-writes bookkeeping runs after the commit: with HOME/run unusable (here a
    file), `rx revoke` committed and the CLI answered IO_ERROR, status 1 ("did not commit")."""
    from client.session import read_last_block, record_last_block

    (tmp_path / "run").write_text("not a directory\n")
    record_last_block(tmp_path, 41)  # no exception: the step's outcome stands
    assert read_last_block(tmp_path) == -1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    home = tmp_path / "ok"
    record_last_block(home, 7)  # a usable home keeps recording
    record_last_block(home, 5)
    assert read_last_block(home) == 7


def test_a_checkpoint_in_a_missing_directory_is_bad_checkpoint_naming_it(tmp_path: Path) -> None:
    """Was IO_ERROR naming a temporary file (.cp.jz7fx_02.tmp) the user never asked for."""
    from client.events import FileCheckpoint

    cp = FileCheckpoint(tmp_path / "missing" / "cp")
    assert cp.load() == 0
    with pytest.raises(RxClientError) as exc:
        cp.save(3)
    assert exc.value.reason == "BAD_CHECKPOINT" and str(tmp_path / "missing" / "cp") in exc.value.message


def test_network_up_with_sample_data_and_no_sample_data_is_a_usage_error(tmp_path: Path) -> None:
    """The README gives them as alternatives; --sample-data FILE was ignored silently.
    (A consortium file that does not exist: a regression can never launch nodes here.)"""
    out = io.StringIO()
    rc = main(["--json", "--home", str(tmp_path / "home"), "network", "up", "--consortium", "/nonexistent.yaml",
               "--sample-data", str(tmp_path / "mine.yaml"), "--no-sample-data"], out=out, err=io.StringIO())
    body = json.loads(out.getvalue())
    assert (rc, body["error"]) == (2, "BAD_ARGUMENTS") and "--no-sample-data" in body["message"]
    assert not (tmp_path / "home").exists()
