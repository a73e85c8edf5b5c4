"""review17: a key request refused over the peer's access-audit limit (AUDIT_RATE_LIMITED,
audit2) was answered 422 by the FHIR gateway -- "a business rule refused the request: fix
it" -- where nothing is to fix: too many refused requests, HTTP 429."""

from __future__ import annotations

from pathlib import Path

from client.errors import RxClientError
from client.fhir.server import error_reply


def test_a_refusal_over_the_audit_limit_is_429_naming_the_refusal(tmp_path: Path) -> None:
    message = ("refused (NO_KEY_GRANT); this certificate's refusals of prescription.get_key are over the "
               "access-audit limit (extra.audit_refusals_per_minute): counted, not recorded one by one")
    reply = error_reply(RxClientError("AUDIT_RATE_LIMITED", message), tmp_path)
    assert reply.status == 429
    details = reply.resource["issue"][0]["details"]
    assert details["coding"][0]["code"] == "AUDIT_RATE_LIMITED" and "NO_KEY_GRANT" in details["text"]
    assert error_reply(RxClientError("NO_KEY_GRANT", "no grant"), tmp_path).status == 403  # (unchanged)
