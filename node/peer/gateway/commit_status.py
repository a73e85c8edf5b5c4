"""Gateway.CommitStatus: a transaction's validation code and block, waiting (bounded)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable

from rxchain.v1 import services_pb2

from node.errors import RxError
from node.peer.gateway.deps import DEFAULT_COMMIT_TIMEOUT_MS, MAX_COMMIT_TIMEOUT_MS, GatewayDeps
from node.peer.notifier import TxCommitted

_TX_ID = re.compile(r"^[0-9a-f]{64}$")
POLL_S = 0.5  # how often a wait checks that the caller is still there


def commit_status(
    deps: GatewayDeps,
    request: services_pb2.CommitStatusRequest,
    is_active: Callable[[], bool] = lambda: True,
    wait_slot: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> services_pb2.CommitStatusResponse:
    """Answer at once if committed (tx index), else wait up to ``timeout_ms`` holding
    ``wait_slot()`` (a stream cap: it may refuse with TOO_MANY_STREAMS) while the caller
    ``is_active()``."""
    tx_id = request.tx_id
    if not _TX_ID.match(tx_id):
        raise RxError("BAD_REQUEST", "tx_id must be 64 lower-case hex digits")
    timeout_ms = min(request.timeout_ms or DEFAULT_COMMIT_TIMEOUT_MS, MAX_COMMIT_TIMEOUT_MS)
    done = threading.Event()
    seen: list[TxCommitted] = []

    def on_commit(info: TxCommitted) -> None:
        seen.append(info)
        done.set()

    cancel = deps.notifier.watch(tx_id, on_commit)
    try:
        loc = deps.ledger.tx_location(tx_id)
        if loc is not None:
            return services_pb2.CommitStatusResponse(
                tx_id=tx_id, code=loc.code, block_number=loc.block  # type: ignore[arg-type]
            )
        with wait_slot():
            clock = deps.clock
            deadline = clock() + timeout_ms / 1000
            while not done.wait(max(0.0, min(POLL_S, deadline - clock()))):
                if clock() >= deadline:
                    raise RxError("TIMEOUT", f"tx {tx_id} not committed within {timeout_ms} ms")
                if not is_active():
                    raise RxError("TIMEOUT", f"tx {tx_id}: the caller went away")
    finally:
        cancel()
    info = seen[0]
    return services_pb2.CommitStatusResponse(
        tx_id=tx_id, code=info.code, block_number=info.block  # type: ignore[arg-type]
    )
