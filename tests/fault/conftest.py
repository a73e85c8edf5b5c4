"""Fixtures of the fault suite (the shared harness's process manager and proxy)."""

from tests.harness.fixtures import fault_proxy, procs

__all__ = ["fault_proxy", "procs"]
