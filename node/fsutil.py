"""Small filesystem helpers shared by every durable store (WAL, snapshots, block store)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile


def replace_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, atomically: written to a new temporary file
    beside it (mode 0600 from its creation on: never readable by others, not even for a moment
    or after a crash), fsynced, renamed over ``path``; the temporary file is removed on any
    failure (OSError raised). The caller fsyncs the directory when the rename itself must
    outlive a power loss."""
    directory, name = os.path.split(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that file creations, renames and deletions in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: str, *, sync: bool = True) -> None:
    """``os.makedirs(path, exist_ok=True)``; with ``sync``, the parent of every directory on
    the way to ``path`` is fsynced, so its entries survive a power loss (OSError on failure).

    Directories that already exist are synced too: a process that crashed between its
    ``makedirs`` and the fsync left them in the page cache only, and the restart must not
    take them for durable. A parent this process did not create and may not open or sync
    (EACCES, EPERM, EROFS, EINVAL: a directory it cannot read, a file system without
    directory fsync) is skipped; any other error of such a parent (EIO) still fails."""
    created: list[str] = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        created.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    os.makedirs(path, exist_ok=True)
    if not sync:
        return
    for d in reversed(created):
        fsync_dir(os.path.dirname(d))
    # what existed before: ``p`` and its ancestors (entries possibly made by a crashed run)
    while True:
        parent = os.path.dirname(p)
        if parent == p:
            break
        try:
            fsync_dir(parent)
        except OSError as exc:
            if exc.errno not in _UNSYNCABLE:
                raise
        p = parent


_UNSYNCABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EINVAL})
