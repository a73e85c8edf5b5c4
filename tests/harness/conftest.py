"""Fixtures for the harness's own tests."""

from tests.harness.fixtures import fault_proxy, procs

__all__ = ["fault_proxy", "procs"]
