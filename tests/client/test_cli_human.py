"""The CLI's human output (no --json) never shows a Python repr: None is "-", booleans are
yes/no, lists are their items joined with ", " (in [...] inside a list item), mappings k=v
pairs, an empty list or mapping "-", and a list item too deep for one line is indented below
it; text that would read as one of those is quoted. --json prints the same results unchanged. Each command runs through main() over a stand-in
for what it reads (the nodes' status, a peer's answers, the ledger check)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from client import cli

REPRS = ("None", "True", "False", "'", "{'", "['")


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def _both(result: Any, *argv: str) -> str:
    """The human output of a command; its --json output is ``result`` exactly."""
    rc, out, err = _run(*argv)
    assert (rc, err) == (0, "")
    assert not any(r in out for r in REPRS), out
    rc, js, _ = _run("--json", *argv)
    assert rc == 0 and json.loads(js) == json.loads(json.dumps(result))
    return out


ROWS: list[dict[str, Any]] = [
    {"node": "orderer.ins01", "org": "ins01", "kind": "orderer", "port": 7050, "pid": 4242,
     "serving": True, "detail": "", "height": 9, "protocol_versions": [1, 2], "protocol_version": 1,
     "raft_leader": 1, "raft_term": 3, "peer_protocol_versions": {"peer.h01a": [1, 2], "peer.p01a": [1]},
     "peers_unsigned": []},
    {"node": "peer.h01a", "org": "h01", "kind": "peer", "port": 7051, "pid": None, "serving": False,
     "detail": "not running", "last_log": '{"msg": "event=peer_stopped node=peer.h01a"}'},
]


def test_network_status_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Was: pid=None, serving=False, peer_protocol_versions={'peer.h01a': [1, 2], ...},
    peers_unsigned=[]."""
    import client.launcher

    class Launcher:
        def __init__(self, home: Path) -> None:
            pass

        def status(self) -> list[dict[str, Any]]:
            return [dict(r) for r in ROWS]

    monkeypatch.setattr(client.launcher, "Launcher", Launcher)
    out = _both({"nodes": ROWS, "serving": 1, "total": 2}, "--home", str(tmp_path), "network", "status")
    assert out.splitlines() == [
        "nodes:",
        "  - node=orderer.ins01, org=ins01, kind=orderer, port=7050, pid=4242, serving=yes, detail=, height=9, "
        "protocol_versions=[1, 2], protocol_version=1, raft_leader=1, raft_term=3, "
        "peer_protocol_versions={peer.h01a=[1, 2], peer.p01a=[1]}, peers_unsigned=-",
        '  - node=peer.h01a, org=h01, kind=peer, port=7051, pid=-, serving=no, detail=not running, '
        'last_log={"msg": "event=peer_stopped node=peer.h01a"}',
        "serving: 1",
        "total: 2",
    ]


def test_netgen_generated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Was: generated: True."""
    import client.launcher

    monkeypatch.setattr(client.launcher, "generate_material", lambda *a, **k: True)
    out = _both({"home": str(tmp_path), "generated": True}, "--home", str(tmp_path), "netgen")
    assert out == f"home: {tmp_path}\ngenerated: yes\n"


SHOWN = {"rx_id": "RX-1", "status": "REVIEWED", "long_rx": True, "first_visit": False,
         "drugs": [{"code": "X01", "qty": 2, "tags": ["chronic", "oral"]}],
         "review": {"approve": True, "reason": "", "note": None},
         "content": None, "grant": None, "denied": "NO_KEY_GRANT"}
TRACE = {"rx_id": "RX-1", "status": "REVIEWED", "truncated": False, "unreadable": [],
         "steps": [{"step": "ISSUE", "actor": "dr-jiang", "org": "h01", "role": "doctor", "time": 1,
                    "tx_id": "ab", "block": 4},
                   {"step": "REVIEW", "actor": None, "org": "p01", "role": "pharmacist", "time": 2,
                    "tx_id": "cd", "block": None, "note": None}]}
REPORT = {"from_block": 0, "next_block": 7, "insurer": "ins01",
          "claims": [{"claim_id": "C-1", "event": "settled", "fund_fen": 1200, "lines": [
              {"code": "X01", "qty": 2}, {"code": "X02", "qty": 1}]}],
          "totals": {"settled": {"fund_fen": 1200}, "reversed": {}, "net": {"fund_fen": 1200}},
          "unreadable": [], "inconsistent": [], "malformed": []}


class _Ops:
    s = SimpleNamespace(close=lambda: None)

    def show(self, rx_id: str) -> dict[str, Any]:
        return copy.deepcopy(SHOWN)

    def trace(self, rx_id: str) -> dict[str, Any]:
        return copy.deepcopy(TRACE)

    def claim_report(self, start: int, max_blocks: int, insurer: str | None) -> dict[str, Any]:
        return copy.deepcopy(REPORT)


def test_rx_show_trace_and_claim_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: long_rx: True, content: None, drugs: - code=X01, qty=2, tags=['chronic', 'oral'],
    review: note: None; a trace step actor=None, block=None, truncated: False, unreadable: [];
    a report claim's lines=[{'code': 'X01', ...}], reversed: {}."""
    monkeypatch.setattr(cli, "_ops", lambda a: _Ops())
    out = _both(SHOWN, "--as", "p01:ph-wang", "rx", "show", "RX-1")
    assert out.splitlines() == [
        "rx_id: RX-1", "status: REVIEWED", "long_rx: yes", "first_visit: no",
        "drugs:", "  - code=X01, qty=2, tags=[chronic, oral]",
        "review:", "  approve: yes", "  reason: ", "  note: -",
        "content: -", "grant: -", "denied: NO_KEY_GRANT",
    ]
    out = _both(TRACE, "--as", "p01:ph-wang", "rx", "trace", "RX-1")
    assert out.splitlines() == [
        "rx_id: RX-1", "status: REVIEWED", "truncated: no", "unreadable: -",
        "steps:",
        "  - step=ISSUE, actor=dr-jiang, org=h01, role=doctor, time=1, tx_id=ab, block=4",
        "  - step=REVIEW, actor=-, org=p01, role=pharmacist, time=2, tx_id=cd, block=-, note=-",
    ]
    out = _both(REPORT, "--as", "ins01:clerk-zhao", "claim", "report")
    assert out.splitlines() == [
        "from_block: 0", "next_block: 7", "insurer: ins01",
        "claims:",
        "  - claim_id=C-1, event=settled, fund_fen=1200",
        "    lines:",
        "      - code=X01, qty=2",
        "      - code=X02, qty=1",
        "totals:",
        "  settled:", "    fund_fen: 1200",
        "  reversed: -",
        "  net:", "    fund_fen: 1200",
        "unreadable: -", "inconsistent: -", "malformed: -",
    ]


def test_events_blocks_with_payloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Was: - block=3, txs=[{'tx_id': 'ab', 'code': 'VALID'}], events=[{'contract': ..., 'payload':
    {...}}] on one line."""
    import client.events
    import client.session

    class Session:
        def __init__(self, *a: Any, **k: Any) -> None:
            self.gateway = SimpleNamespace(events=None)

        def __enter__(self) -> Session:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    class Listener:
        def __init__(self, events: Any, cp: Any, contract: str = "") -> None:
            self.cp = cp

        def blocks(self, follow: bool = False) -> Any:
            ev = SimpleNamespace(contract="rx", name="issued", tx_id="ab",
                                 payload={"rx_id": "RX-1", "long_rx": True, "drugs": [{"code": "X01", "qty": 2}]})
            yield SimpleNamespace(block=3, txs=[("ab", "VALID")], events=[ev])
            self.cp.save(4)
            yield SimpleNamespace(block=4, txs=[], events=[])
            self.cp.save(5)

    monkeypatch.setattr(client.session, "Session", Session)
    monkeypatch.setattr(client.events, "EventListener", Listener)
    blocks = [{"block": 3, "txs": [{"tx_id": "ab", "code": "VALID"}],
               "events": [{"contract": "rx", "name": "issued", "tx_id": "ab",
                           "payload": {"rx_id": "RX-1", "long_rx": True, "drugs": [{"code": "X01", "qty": 2}]}}]},
              {"block": 4, "txs": [], "events": []}]
    out = _both({"blocks": blocks, "next_block": 5}, "--home", str(tmp_path), "--as", "h01:dr-jiang", "events")
    assert out.splitlines() == [
        "blocks:",
        "  - block=3",
        "    txs:",
        "      - tx_id=ab, code=VALID",
        "    events:",
        "      - contract=rx, name=issued, tx_id=ab",
        "        payload:",
        "          rx_id: RX-1",
        "          long_rx: yes",
        "          drugs:",
        "            - code=X01, qty=2",
        "  - block=4, txs=-, events=-",
        "next_block: 5",
    ]


def test_refusal_detail_on_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ledger verify's LEDGER_INVALID detail was printed as reprs: ok: False,
    peers: [{'peer': 'peer.h01a', 'ok': False, ...}]; --json keeps its detail object."""
    detail = {"ok": False, "local": True, "peers": [
        {"peer": "peer.h01a", "ok": False, "height": 5, "state_hash": "", "first_bad_block": 3,
         "reason": "BAD_HASH", "message": "block 3 data hash"},
        {"peer": "peer.p01a", "ok": True, "height": 5, "state_hash": "ee", "first_bad_block": None,
         "reason": "", "message": ""}]}

    def refuse(a: Any) -> dict[str, Any]:
        raise cli.LedgerInvalid("peer.h01a: block 3 BAD_HASH block 3 data hash", copy.deepcopy(detail),
                                ["BAD_HASH"])

    monkeypatch.setattr(cli, "_verify_local", refuse)
    rc, out, err = _run("--home", str(tmp_path), "ledger", "verify", "--local")
    assert rc == 1 and out == ""
    assert err.splitlines() == [
        "error: LEDGER_INVALID: peer.h01a: block 3 BAD_HASH block 3 data hash",
        "ok: no",
        "local: yes",
        "peers:",
        "  - peer=peer.h01a, ok=no, height=5, state_hash=, first_bad_block=3, reason=BAD_HASH, "
        "message=block 3 data hash",
        "  - peer=peer.p01a, ok=yes, height=5, state_hash=ee, first_bad_block=-, reason=, message=",
    ]
    rc, out, _ = _run("--json", "--home", str(tmp_path), "ledger", "verify", "--local")
    assert rc == 1 and json.loads(out) == {"error": "LEDGER_INVALID", "message": "peer.h01a: block 3 BAD_HASH "
                                           "block 3 data hash", "detail": detail}


@pytest.mark.parametrize(("value", "lines"), [
    (None, ["-"]),
    (True, ["yes"]),
    ({"k": []}, ["k: -"]),
    ({"k": {}}, ["k: -"]),
    ([[1, "a"], [], [{"x": None}], [[1]]], ["- 1, a", "- -", "-", "  - x=-", "-", "  - 1"]),
    ([{}], ["- -"]),
    ([{"deep": [{"a": 1}]}], ["-", "  deep:", "    - a=1"]),
    ([{"m": {"a": [1, 2], "b": False}}], ["- m={a=[1, 2], b=no}"]),
    ((1, (2, 3)), ["- 1", "- 2, 3"]),
    ({"t": ("a", None)}, ["t:", "  - a", "  - -"]),
])
def test_shapes_not_reached_by_todays_commands(value: Any, lines: list[str]) -> None:
    out = io.StringIO()
    cli._human(value, out)
    assert out.getvalue().splitlines() == lines


@pytest.mark.parametrize(("value", "lines"), [
    # another party's text that reads as None, a boolean, an empty list or more fields
    ({"note": "-", "ok": "yes", "flag": "no", "none": None, "true": True}, [
        'note: "-"', 'ok: "yes"', 'flag: "no"', "none: -", "true: yes"]),
    ([{"by": "ph01", "note": "ok, status=REVOKED"}], ['- by=ph01, note="ok, status=REVOKED"']),
    ([{"x": ["a, b"]}, {"x": ["a", "b"]}, ["c, d"], "e, f"], [
        '- x=["a, b"]', "- x=[a, b]", '- "c, d"', "- e, f"]),
    ([{"q": 'say "hi", then\x1b[2J'}], ['- q="say \\"hi\\", then\\u001b[2J"']),
])
def test_text_that_reads_as_another_value_is_quoted(value: Any, lines: list[str]) -> None:
    """A string "-", "yes" or "no" printed as None, True or False would print, and a string
    holding ", " inside a list item read as more fields or items (a note
    "ok, status=REVOKED" showed as a status field of its own)."""
    out = io.StringIO()
    cli._human(value, out)
    assert out.getvalue().splitlines() == lines
