"""The peer: endorses proposals, validates and commits blocks, serves clients.

Services (all over mutual TLS, errors as gRPC status + ``rxchain-reason`` metadata):

* ``Endorser.ProcessProposal`` (:mod:`endorser`): check, simulate on a state snapshot
  (:mod:`simulator`), sign. ``_lifecycle`` calls run natively (:mod:`lifecycle`).
* ``Gateway`` (:mod:`gateway`): Evaluate, Endorse, Submit, CommitStatus, Events, Transact.
* ``PeerDeliver.Deliver`` (:mod:`deliver_service`): committed blocks with validation codes.
* ``Admin`` (:mod:`admin_service`): Health, Status (height, last block hash, state hash).

Blocks come from the orderers through :mod:`deliver_client` and are committed by
:mod:`committer` (validation in :mod:`validator`); contract definitions for validation
come from :mod:`policy_provider`. :func:`node.peer.server.serve` wires it all;
``python -m node.peer --config node.yaml`` runs it.
"""
