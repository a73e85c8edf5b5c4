"""Exceptions of the sandbox.

``Abort`` and its subclasses derive from BaseException so that contract code (which may only
catch ``Exception`` subclasses, see checker.py) can never swallow them.
"""

from __future__ import annotations

from node.sandbox import types as t


class Abort(BaseException):
    """Stops the running contract with a runtime reason code."""

    reason = t.CONTRACT_EXCEPTION

    def __init__(self, message: str = "", reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class OutOfGas(Abort):
    reason = t.OUT_OF_GAS


class RecursionLimit(Abort):
    reason = t.RECURSION_LIMIT


class SizeLimit(Abort):
    reason = t.SIZE_LIMIT


class WriteSetLimit(Abort):
    reason = t.WRITE_SET_LIMIT


class MemoryLimit(Abort):
    reason = t.MEMORY_LIMIT


class BadValue(Abort):
    reason = t.BAD_VALUE


class StateError(Abort):
    """The host refused a state request. ``gas``: what the host spent on it before refusing
    (a history read's versions read before it failed SIZE_LIMIT; the same on every peer),
    which the Context charges before the call ends."""

    reason = t.STATE_ERROR

    def __init__(self, message: str = "", reason: str | None = None, gas: int = 0) -> None:
        super().__init__(message, reason)
        self.gas = gas


class ContractRejected(Exception):
    """Static check failure at deploy time (or first compile): names the offending line."""

    reason = t.CONTRACT_REJECTED

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class ContractError(Exception):
    """Raised by a contract to fail the call with a reason code and a message.

    Contract code imports it from the virtual module ``rxchain_contract``.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else str(self.reason)
