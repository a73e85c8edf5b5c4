"""The peer's ledger: block store, world state (LevelDB), indexes, recovery, verification."""
