"""The Gateway service thin clients call: one RPC per module, shared deps in deps.py."""
