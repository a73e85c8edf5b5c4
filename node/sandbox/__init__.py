"""Sandboxed contract runtime: static checks, gas metering, isolated worker processes.

Host side: ``runtime.Sandbox`` (worker pool), ``inprocess.InProcessRunner`` (tests/bench),
``checker.check_source`` (deploy-time checks), ``package.ContractPackage`` (code hash).
Contract authors: read ``api.py``.
"""
