"""Small filesystem helpers shared by every durable store (WAL, snapshots, block store)."""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that file creations, renames and deletions in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: str, *, sync: bool = True) -> None:
    """``os.makedirs(path, exist_ok=True)``; with ``sync``, the parent of every directory it
    created is fsynced, so the new entries survive a power loss (OSError on failure)."""
    created: list[str] = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        created.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    os.makedirs(path, exist_ok=True)
    if sync:
        for d in reversed(created):
            fsync_dir(os.path.dirname(d))
