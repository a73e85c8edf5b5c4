"""A client home where no peer runs, for tests of what the SDK, the CLI and the demo tell a
caller about an ``issue``: a copy of the generated home with the sample data loaded, and
``Gateway.submit``, ``evaluate`` and ``status`` replaced for the test's duration."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.errors import RxClientError
from client.gateway import Gateway, SubmitResult

# Called with the rx id of every ``issue`` proposed; it raises what the chain answers (a
# refusal, CommitUnknown ...) or returns for a VALID commit.
OnIssue = Callable[[str], None]


def offline_home(net_home: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_issue: OnIssue) -> Path:
    """A copy of ``net_home``'s home under ``tmp_path`` with the sample data loaded; every
    submit commits VALID except what ``on_issue`` decides for an ``issue``; ``evaluate``
    answers the drug price and the patient's insurer; nothing talks to a peer."""
    from client.bootstrap import Bootstrapper

    home = tmp_path / "home"
    shutil.copytree(net_home.home, home)

    def submit(self: Gateway, contract: str, function: str, args: Any = None, transient: Any = None,
               endorsing_orgs: list[str] | None = None) -> SubmitResult:
        if function == "issue":
            on_issue(str((args or {}).get("rx_id", "")))
        return SubmitResult("cd" * 32, "VALID", 3, {})

    def evaluate(self: Gateway, contract: str, function: str, args: Any = None, transient: Any = None) -> Any:
        if function == "get_drug":
            return {"code": args["code"], "price_fen": 1250}
        if function == "get_account":
            return {"insurer": "ins01"}
        raise RxClientError("NOT_FOUND", f"{function} is not served in this test")

    def no_peer(self: Gateway, *_: Any, **__: Any) -> Any:
        raise RxClientError("SERVICE_UNAVAILABLE", "no peer in this test")

    monkeypatch.setattr(Gateway, "submit", submit)
    monkeypatch.setattr(Gateway, "evaluate", evaluate)
    monkeypatch.setattr(Gateway, "status", no_peer)
    boot = Bootstrapper(home)
    try:
        boot.load_sample_data()
    finally:
        boot.close()
    return home
