"""The ordering service run by the insurers (``python -m node.orderer --config PATH``).

Modules, in the order an envelope meets them:

* ``broadcast``   -- Broadcast stream: size, parse, creator membership and signature, config
                     update checks; answers accepted or a reason code, always in bounded time.
* ``transport``   -- orderer-to-orderer gRPC over mTLS: Raft messages (Cluster.Step), and
                     follower-to-leader forwarding (OrdererCluster.ForwardBatch, Cluster.Forward);
                     only orderers of the current config are accepted (TLS certificate).
* ``blockcutter`` -- batches envelopes by count, bytes and timeout (BatchParameters).
* ``chain``       -- the Raft driver: tick/step/propose, persist (WAL fsync), send, apply one
                     block per entry (chain checks, orderer signature, block store), snapshots,
                     catch-up, membership changes, leadership hand-over.
* ``configtx``    -- config transactions: validation, adoption, orderer-set changes.
* ``deliver``     -- Deliver stream (from any block, follow, resumable) and the catch-up client.
* ``raft_codec``  -- Raft messages <-> ``rxchain.v1.RaftMessage``.
* ``metrics``     -- Prometheus metrics; ``server`` composes everything in ``serve(config)``.

Durable Raft storage lives in ``node.raft.wal``, ``node.raft.snapshotter`` and
``node.raft.durable``.
"""
