"""Typed client-side errors; every one carries a reason code and a message.

* :class:`RxClientError` -- base class; ``reason`` is a machine-readable code
  (``NOT_FOLLOW_UP``, ``SERVICE_UNAVAILABLE``, ``NO_KEY_GRANT`` ...).
* :class:`EndorsementError` -- the contract or the endorsers refused the proposal.
* :class:`CommitError` -- the transaction was ordered but committed as invalid; the reason is
  the validation code name (``MVCC_READ_CONFLICT``, ``ENDORSEMENT_POLICY_FAILURE`` ...).
* :class:`CommitUnknown` -- the transaction was submitted and may have committed (reason
  ``COMMIT_UNKNOWN``): never propose the call again, look its outcome up.
* :class:`DuplicateRx` -- ``issue`` was refused because the rx id already exists (reason
  ``DUPLICATE_RX``): a rerun of an issue that had committed.
* :class:`WalletError` -- the wallet is missing or inconsistent.
"""

from __future__ import annotations

from typing import Any


class RxClientError(Exception):
    """A refusal or failure seen by a client, with its reason code."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


class EndorsementError(RxClientError):
    """The proposal was rejected at endorsement (contract rule, policy, peer refusal)."""


class CommitError(RxClientError):
    """The transaction was committed but marked invalid by validation."""

    def __init__(self, reason: str, message: str, tx_id: str, block: int):
        super().__init__(reason, message)
        self.tx_id = tx_id
        self.block = block


class CommitUnknown(RxClientError):
    """The transaction was submitted but its answer was lost (stream broken, peer stopping):
    it may still commit. Ask ``CommitStatus`` for ``tx_id``; never re-propose the call as a
    new transaction (it would be a second prescription).

    ``detail`` (printed by the CLI's ``--json``) names the tx id and, when the caller made
    them up, the ids to look the outcome up by (e.g. ``rx_id`` of an issued prescription).
    ``envelope``, when the SDK built it, is the signed ``Envelope`` to submit again
    (``Gateway.submit_envelope``): the same tx id, so it can never commit twice."""

    def __init__(self, tx_id: str, message: str, envelope: Any = None, **ids: str):
        super().__init__("COMMIT_UNKNOWN", message)
        self.tx_id = tx_id
        self.envelope = envelope
        self.detail: dict[str, str] = {"outcome": "unknown", "tx_id": tx_id, **ids}


class DuplicateRx(EndorsementError):
    """The contract refused ``issue`` with DUPLICATE_RX: a prescription ``rx_id`` exists (the
    caller chose the id, e.g. ``rx issue --rx-id`` run again after an unknown outcome).
    ``detail`` is ``{"outcome": "exists", "rx_id": ...}``; whether the existing prescription
    is the one meant is for the caller to check (``rx show``)."""

    def __init__(self, rx_id: str, message: str):
        super().__init__("DUPLICATE_RX", message)
        self.rx_id = rx_id
        self.detail: dict[str, str] = {"outcome": "exists", "rx_id": rx_id}


class WalletError(RxClientError):
    """The wallet directory is missing, unreadable or inconsistent."""


class NoKeyGrant(RxClientError):
    """The caller holds no key grant for a record."""

    def __init__(self, message: str = "no key grant for this record"):
        super().__init__("NO_KEY_GRANT", message)


class KeyNotHeld(NoKeyGrant):
    """The caller holds a key grant, but its wrapped key opens with none of the caller's keys
    (KEY_NOT_HELD): a grant wrapped for an organisation's earlier records certificate, opened
    by a wallet that keeps only the current records key (client.wallet: previous-records-keys/),
    or a writer's bad wrap. A NoKeyGrant for callers that only tell readable from not."""

    def __init__(self, message: str):
        RxClientError.__init__(self, "KEY_NOT_HELD", message)
