"""ops1: a key release the peer refused because its access-audit log could not take the record
(AUDIT_FULL: the log holds audit_max_records; AUDIT_WRITE_FAILED: the write failed; README
"Access-audit log"), or because its log could not be read (AUDIT_LOG_CORRUPT), and any call the
peer refused because it holds as many streams as it allows (TOO_MANY_STREAMS), was answered 422
by the FHIR gateway -- "a business rule refused the request: fix it" -- though nothing in the
request is wrong: these are conditions of the peer, answered 503 like SERVICE_UNAVAILABLE."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.errors import RxClientError
from client.fhir.server import error_reply
from node.errors import RxError

SERVER_SIDE = {
    "AUDIT_FULL": "the access-audit log holds 1000 records within retention: key releases are refused",
    "AUDIT_WRITE_FAILED": "the access-audit log could not be written: disk I/O error",
    "AUDIT_LOG_CORRUPT": "unreadable head of the access-audit log",
    "TOO_MANY_STREAMS": "the peer holds 64 client streams, its max_streams",
}


@pytest.mark.parametrize("reason", sorted(SERVER_SIDE))
def test_a_condition_of_the_peer_is_503_naming_it(tmp_path: Path, reason: str) -> None:
    for exc in (RxClientError(reason, SERVER_SIDE[reason]), RxError(reason, SERVER_SIDE[reason])):
        reply = error_reply(exc, tmp_path)
        assert reply.status == 503, (reason, reply.status)
        assert reply.resource["resourceType"] == "OperationOutcome"
        details = reply.resource["issue"][0]["details"]
        assert details["coding"][0]["code"] == reason and SERVER_SIDE[reason] in details["text"]
        assert "Location" not in reply.headers  # nothing was submitted: no prescription to read


def test_refusals_of_the_request_keep_their_4xx(tmp_path: Path) -> None:
    assert error_reply(RxClientError("NO_KEY_GRANT", "no grant"), tmp_path).status == 403
    assert error_reply(RxClientError("TOO_EARLY", "next fill not due"), tmp_path).status == 422
    assert error_reply(RxClientError("AUDIT_RATE_LIMITED", "refused (NO_KEY_GRANT)"), tmp_path).status == 429
