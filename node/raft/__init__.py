"""Raft consensus for rxchain.

Pure core (no sockets, clocks, threads, files or global randomness):

* ``node.raft.types``     values: Entry, HardState, ConfState, Snapshot, Message, Ready, ...
* ``node.raft.errors``    RaftError (``reason`` code) and ProposalDropped, Compacted, ...
* ``node.raft.storage``   Storage protocol + MemoryStorage
* ``node.raft.bootstrap`` founding membership as log entries
* ``node.raft.config``    Config (ids, ticks, injected random.Random, limits)
* ``node.raft.node``      RawNode and the Ready contract (persist -> send -> apply -> advance)
* ``node.raft.core``      the state machine (roles as swapped step functions)
* ``node.raft.log``, ``quorum``, ``tracker``  log/unstable, quorum math, replication progress

Durable storage (WAL, snapshot files) lives in ``wal``, ``snapshotter`` and ``durable``.
"""
