"""rxchain client SDK, the `rxchain` CLI, the FHIR gateway and the local launcher.

Start with :class:`client.session.Session` (a wallet identity and its own peer) and
:class:`client.rxops.RxOperations` (prescriptions, claims, patients); the lower-level
:class:`client.gateway.Gateway` submits any contract call. See client/README.md.
"""
