"""RxOperations' gateway over the contract test chain (tests/contracts): the real contracts in
the sandbox, as one caller, with hooks for what other calls commit in between."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from client.errors import EndorsementError
from client.gateway import SubmitResult
from tests.contracts.chain import Who
from tests.contracts.rxclient import World


class ContractGateway:
    """``evaluate``/``submit`` of RxOperations over the contract test chain as one caller;
    ``before[fn]`` runs once just before that function's first submit (what another call of
    the same pharmacy, or anyone, commits meanwhile)."""

    def __init__(self, w: World, caller: Who, before: dict[str, Callable[[], None]] | None = None) -> None:
        self.world, self.caller, self.before = w, caller, dict(before or {})
        self.default_transient: dict[str, Any] = {}  # (the chain adds a patient's binding itself)
        self.calls: list[tuple[str, dict[str, Any], str]] = []  # (fn, args, outcome)

    def evaluate(self, contract: str, fn: str, args: Any, transient: Any = None) -> Any:
        out = self.world.chain.query(contract, fn, self.caller, transient=transient, **args)
        if not out.ok:
            raise EndorsementError(out.reason, out.message)
        return out.value

    def submit(self, contract: str, fn: str, args: Any, transient: Any = None,
               endorsing_orgs: Any = None) -> SubmitResult:
        hook = self.before.pop(fn, None)
        if hook is not None:
            hook()
        out = self.world.chain.submit(contract, fn, self.caller, transient=transient, **args)
        self.calls.append((fn, dict(args), "OK" if out.ok else out.reason))
        if not out.ok:
            raise EndorsementError(out.reason, out.message)
        assert out.block is not None
        return SubmitResult(out.tx_id, "VALID", out.block, out.value)

    def tx_block(self, tx_id: str, timeout_ms: int = 2_000) -> int | None:
        """The block of a transaction, as ``client.gateway.Gateway.tx_block``: unknown (None) here
        -- the contract chain keeps no index of transactions (the trace names most steps' blocks)."""
        return None
