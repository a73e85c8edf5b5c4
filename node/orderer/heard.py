"""Which orderers this orderer has received a Raft message from, kept durably.

An orderer whose data directory was lost looks, locally, exactly like one that never ran
(node.orderer.statecheck). The others keep the evidence: every Raft message an orderer sends --
an acknowledgement, a vote, a leader's append -- reaches another orderer, which records the
sender's raft id here *before* acting on the message (the driver's step), so no acknowledgement
is counted and no vote is granted without it surviving a crash. ``Admin.Status`` tells the ids
(``raft_heard_from``); an orderer started with ``--first-start`` (the operator's word that it
never ran) is refused if any other orderer has heard from it, and starts only once every other
voter has answered that it has not.

Layout: ``raft/HEARD``, a serialized ``RaftHeard`` (raft ids ascending; ``tracked``: the record
was started with blank Raft storage, so it covers everything this orderer ever received; false
when it was first written over existing storage, e.g. after an upgrade to a release that keeps
it, or once a leader told the orderer it lost entries it had acknowledged), replaced
atomically (``fsutil.replace_file``, then the directory synced) once per new id: a handful of
writes in an orderer's life.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from google.protobuf.message import DecodeError
from rxchain.v1 import raft_pb2

from node.fsutil import fsync_dir, replace_file

FILE = "HEARD"

_log = logging.getLogger(__name__)


class HeardRecord:
    """The raft ids heard from (see the module docstring); thread-safe."""

    def __init__(self, path: Path, ids: set[int], tracked: bool, fsync: bool) -> None:
        self._path = path
        self._ids = ids
        self._tracked = tracked
        self._fsync = fsync
        self._lock = threading.Lock()

    @classmethod
    def open(cls, raft_dir: Path, *, blank: bool, fsync: bool = True) -> HeardRecord:
        """The record in ``raft_dir``, started (and written) if there is none: ``tracked`` when
        the Raft storage beside it is ``blank``; one that does not parse is started again,
        untracked (logged)."""
        path = raft_dir / FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            record = cls(path, set(), blank, fsync)
            record._write()
            return record
        try:
            msg = raft_pb2.RaftHeard.FromString(raw)
        except DecodeError as exc:
            # evidence for the others' --first-start, not this orderer's Raft state: started
            # again untracked, the safe side (an untracked answer clears nobody)
            _log.warning("event=heard_record_unreadable path=%s error=%r: started again, untracked",
                         path, str(exc))
            record = cls(path, set(), False, fsync)
            record._write()
            return record
        return cls(path, set(msg.raft_ids), msg.tracked, fsync)

    @property
    def tracked(self) -> bool:
        """Kept since the Raft storage was blank (everything ever received is in it)."""
        return self._tracked

    def ids(self) -> frozenset[int]:
        """The raft ids heard from."""
        with self._lock:
            return frozenset(self._ids)

    def note(self, raft_id: int) -> None:
        """Record ``raft_id`` (durably, before returning) unless it is known already."""
        if raft_id in self._ids:  # the common case, without the lock: the set only grows
            return
        with self._lock:
            if raft_id in self._ids:
                return
            self._ids.add(raft_id)
            self._write()

    def untrack(self) -> None:
        """No longer claim to cover everything ever received (durably): a leader told this
        orderer it lost entries it had acknowledged -- what it had heard was lost with them."""
        with self._lock:
            if not self._tracked:
                return
            self._tracked = False
            self._write()

    def _write(self) -> None:
        data = raft_pb2.RaftHeard(raft_ids=sorted(self._ids), tracked=self._tracked).SerializeToString()
        if not self._fsync:  # tests and benchmarks without fsync
            self._path.write_bytes(data)
            return
        replace_file(self._path, data)
        fsync_dir(self._path.parent)
